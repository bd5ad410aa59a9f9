"""data_order="epochs": every window of a pass exactly once, shuffled, resumable by index.
Whole runs with it (resume, accumulation, torchrun): tests/test_train.py, tests/test_cli.py."""

from types import SimpleNamespace

import pytest
import torch

import llama_course as lc
import llama_course.training as training


def one_epoch(n_tokens, block_size, epoch, seed):
    per_epoch = n_tokens // block_size - 1
    return lc.epoch_window_starts(n_tokens, block_size, epoch * per_epoch, per_epoch, seed)


@pytest.mark.parametrize("n_tokens, block_size", [(1000, 10), (1009, 16), (64, 31), (10, 1)])
def test_an_epoch_visits_every_window_of_its_phase_once(n_tokens, block_size):
    for epoch in range(3):
        starts = one_epoch(n_tokens, block_size, epoch, seed=7)
        phase = int(starts.min()) % block_size
        assert phase < block_size and bool(((starts - phase) % block_size == 0).all())
        k = sorted(((starts - phase) // block_size).tolist())
        assert k == list(range(n_tokens // block_size - 1))  # each window once, none missing
        assert int(starts.max()) + block_size + 1 <= n_tokens  # x and its shifted y fit


def test_epochs_differ_in_order_and_phase():
    epochs = [one_epoch(100_000, 64, e, seed=3) for e in range(4)]
    assert len({tuple(e[:20].tolist()) for e in epochs}) == 4  # shuffled afresh every pass
    assert len({int(e.min()) % 64 for e in epochs}) > 1  # window edges move
    other_seed = one_epoch(100_000, 64, 0, seed=4)
    assert not torch.equal(other_seed, epochs[0])


def test_the_order_of_a_seed_stays_the_same_from_version_to_version():
    """Recorded runs (benchmarks/results/) and resumed checkpoints rely on seed s giving the
    same windows tomorrow: two passes of 9 windows of 10 tokens, seed 1, pinned."""
    assert lc.epoch_window_starts(100, 10, 0, 18, seed=1).tolist() == [
        4, 74, 54, 24, 84, 44, 64, 14, 34, 3, 33, 73, 43, 63, 83, 13, 53, 23]


def test_a_window_is_the_same_whoever_asks_for_it():
    """Any slice of the sequence, across an epoch boundary too, equals the whole sequence
    cut there: a resumed run and every rank see what one process sees."""
    whole = lc.epoch_window_starts(500, 10, 0, 150, seed=1)  # 49 windows per epoch: 3 epochs
    for first, count in [(0, 7), (45, 10), (97, 53), (140, 10)]:
        assert torch.equal(lc.epoch_window_starts(500, 10, first, count, seed=1),
                           whole[first:first + count])


@pytest.mark.parametrize("args, message", [
    ((100, 64, 0, 1), "too few for two windows of block_size 64"),
    ((100, 0, 0, 1), r"block_size \(0\) must be >= 1"),
    ((100, 10, -1, 1), r"first \(-1\) and count \(1\) >= 0"),
    ((100, 10, 0, -2), r"count \(-2\) >= 0"),
])
def test_bad_arguments_are_clear_errors(args, message):
    with pytest.raises(ValueError, match=message):
        lc.epoch_window_starts(*args, seed=0)


def test_a_count_of_zero_is_no_windows():
    assert lc.epoch_window_starts(100, 10, 5, 0, seed=0).shape == (0,)


def test_training_draws_the_epoch_windows_in_order():
    """_batch with order "epochs": global batch m is windows m*n .. m*n+n-1 of the sequence,
    each rank taking its slice, as with random windows."""
    data = torch.arange(2000)
    dist = SimpleNamespace(world_size=2, rank=1)
    x, y = training._batch(data, 3, 16, None, dist, "epochs", micro_batch=5, seed=9)
    starts = lc.epoch_window_starts(2000, 16, 5 * 6, 6, seed=9)[3:]
    assert torch.equal(x[:, 0], starts) and torch.equal(y, x + 1)


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="data_order 'sorted' must be random or epochs"):
        lc.TrainConfig(data_order="sorted")
