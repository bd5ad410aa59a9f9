"""MODULE-LEVEL names (not in lc's top-level API): defaults of helper functions that public
callers always override, pinned so that a changed default cannot slip in unnoticed."""

import torch

import llama_course as lc


def test_rope_frequencies_default_theta_is_llama3s():
    want = 1.0 / 500000.0 ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(lc.rope.rope_frequencies(16), want)
