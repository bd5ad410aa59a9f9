"""The exercise checkers accept a right answer and reject a wrong one (with a useful message)."""

import pytest
import torch

import llama_course as lc
from llama_course import checks
from llama_course.generate import filter_top_p


CASES = [  # checker, a correct answer, a wrong answer, what the message must say
    (checks.check_num_parameters, lc.num_parameters,
     lambda a: lc.num_parameters(a) + (a.vocab_size * a.dim if a.tie_word_embeddings else 0),
     "tied embeddings"),
    (checks.check_causal_mask, lc.causal_mask,
     lambda T, s: torch.tril(torch.ones(T, T, dtype=torch.bool)), "seqlen"),
    (checks.check_top_p, filter_top_p, lambda probs, p: probs, "top_p"),
]


@pytest.mark.parametrize("checker, right, wrong, message", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_checker(checker, right, wrong, message, capsys):
    assert checker(right) is True
    assert "correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_check_greedy():
    def greedy(model, prompt, n):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt):]

    assert checks.check_greedy(greedy)
    with pytest.raises(AssertionError, match="return only the new tokens"):
        checks.check_greedy(lambda m, p, n: list(p) + greedy(m, p, n))
