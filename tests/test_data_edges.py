"""Edges of data.py: the exact bounds of the split and of a batch, reproducible draws, the
windows of evaluation when the text divides evenly (or leaves one token), and text read as
UTF-8 whatever the machine's default encoding."""

import io

import pytest
import torch

import llama_course as lc


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_a_fraction_that_leaves_a_part_empty(fraction):
    with pytest.raises(ValueError, match=rf"val_fraction \({fraction}\) must be between 0 and 1"):
        lc.train_val_split(torch.arange(100), fraction)


def test_split_at_a_chosen_fraction():
    train, val = lc.train_val_split(torch.arange(100), 0.25)
    assert torch.equal(train, torch.arange(75)) and torch.equal(val, torch.arange(75, 100))


def test_encoded_text_is_long_even_when_empty():
    """Token ids index an embedding table: they must be integers, also for an empty text
    (torch.tensor([]) alone would be a float tensor)."""
    tok = lc.CharTokenizer.from_text("abc")
    assert lc.encode_text("", tok).dtype == torch.long
    ids = lc.encode_text("cab", tok)
    assert ids.dtype == torch.long and ids.tolist() == tok.encode("cab")


def test_a_text_of_exactly_one_window_gives_that_window():
    """block_size + 1 tokens hold exactly one (x, y) pair; block_size tokens hold none."""
    data = torch.arange(11)
    x, y = lc.get_batch(data, 4, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.arange(10).expand(4, 10))
    assert torch.equal(y, torch.arange(1, 11).expand(4, 10))
    with pytest.raises(ValueError, match=r"data has 10 tokens, fewer than block_size \+ 1 \(11\)"):
        lc.get_batch(torch.arange(10), 4, 10)


def test_every_window_start_can_be_drawn():
    """With 13 tokens and windows of 10 + 1, the starts 0, 1 and 2 are all possible."""
    data = torch.arange(13)
    g = torch.Generator().manual_seed(0)
    starts = {int(x[0]) for _ in range(20) for x in lc.get_batch(data, 8, 10, g)[0]}
    assert starts == {0, 1, 2}


def test_batches_follow_the_generator_not_the_global_seed():
    """Training resumes exactly because its batches come from its own generator: the same
    generator state gives the same batch, whatever the global random state."""
    data = torch.arange(1000)
    torch.manual_seed(1)
    a = lc.get_batch(data, 8, 16, torch.Generator().manual_seed(42))
    torch.manual_seed(2)
    b = lc.get_batch(data, 8, 16, torch.Generator().manual_seed(42))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = lc.get_batch(data, 8, 16, torch.Generator().manual_seed(43))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("length, full, tail", [
    (21, 4, 0),  # 20 targets: four full windows of 5, no tail
    (22, 4, 1),  # 21 targets: four full windows and a tail of one token
    (24, 4, 3),
    (4, 0, 3),   # shorter than one window: the tail alone
])
def test_eval_windows_shapes(length, full, tail):
    data = torch.arange(length)
    windows = lc.eval_windows(data, 5)
    assert windows[0][0].shape == windows[0][1].shape == (full, 5)
    if tail:
        assert len(windows) == 2
        x, y = windows[1]
        assert torch.equal(x, torch.arange(length - 1 - tail, length - 1)[None])
        assert torch.equal(y, torch.arange(length - tail, length)[None])
    else:
        assert len(windows) == 1
    assert torch.equal(torch.cat([y.flatten() for _, y in windows]), torch.arange(1, length))
    assert torch.equal(torch.cat([x.flatten() for x, _ in windows]), torch.arange(0, length - 1))


def test_text_is_read_as_utf8_on_a_machine_with_another_default(tmp_path, monkeypatch):
    """On Windows the default text encoding is cp1252, where 'é' in UTF-8 reads as 'Ã©'."""
    path = tmp_path / "text.txt"
    text = "Roméo — ‘thou’ art\n"
    path.write_bytes(text.encode("utf-8"))
    real = io.text_encoding
    monkeypatch.setattr(io, "text_encoding",
                        lambda encoding, stacklevel=2: real(encoding) if encoding else "cp1252")
    assert lc.load_tiny_shakespeare(path) == text
    assert lc.load_tiny_shakespeare(str(path)) == text
    assert lc.load_tiny_shakespeare().startswith("First Citizen:")
