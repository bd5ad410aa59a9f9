"""CharTokenizer: round trip, Llama 3 special tokens, errors, persistence."""

import pytest

import llama_course as lc


def test_round_trip_and_ids():
    tok = lc.CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    ids = tok.encode("hello")
    assert ids == [tok.chars.index(c) for c in "hello"]
    assert tok.decode(ids) == "hello"


def test_special_tokens_follow_the_characters():
    tok = lc.CharTokenizer.from_text("abc")
    assert tok.vocab_size == 3 + 3
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (3, 4, 5)
    ids = tok.encode("cab", bos=True, eos=True)
    assert ids == [3, 2, 0, 1, 4]
    assert tok.decode(ids) == "<|begin_of_text|>cab<|end_of_text|>"
    assert tok.decode(ids, skip_special_tokens=True) == "cab"


def test_unknown_character_is_a_clear_error():
    tok = lc.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'é' \(U\+00E9\) at position 2 is not in"):
        tok.encode("abé")
    with pytest.raises(ValueError, match="token id 99 is outside the vocabulary"):
        tok.decode([0, 99])
    with pytest.raises(ValueError, match="empty text"):
        lc.CharTokenizer.from_text("")


def test_save_and_load(tmp_path):
    tok = lc.CharTokenizer.from_text("To be, or not to be\n")
    tok.save_pretrained(tmp_path)
    again = lc.CharTokenizer.from_pretrained(tmp_path)
    assert again.chars == tok.chars and again.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="char_tokenizer.json"):
        lc.CharTokenizer.from_pretrained(tmp_path / "nowhere")
