"""Generation: cache vs no cache, batching, EOS, sampling filters, transformers' greedy output."""

import pytest
import torch

import llama_course as lc

from references import hf_reference, small_args


@pytest.fixture
def model():
    m = lc.Transformer(small_args()).eval()
    for p in m.parameters():  # peaked distributions: greedy ties are impossible in practice
        torch.nn.init.normal_(p, std=0.3)
    return m


def test_greedy_same_tokens_with_and_without_cache(model):
    prompts = [[1, 2, 3, 4], [5, 6]]
    with_cache = lc.generate(model, prompts, 30, temperature=0)
    without = lc.generate(model, prompts, 30, temperature=0, use_cache=False)
    assert with_cache == without
    assert [len(x) for x in with_cache] == [30, 30]


def test_batched_prompts_of_different_lengths_equal_one_by_one(model):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    batched = lc.generate(model, prompts, 12, temperature=0)
    alone = [lc.generate(model, [p], 12, temperature=0)[0] for p in prompts]
    assert batched == alone


def test_greedy_equals_transformers_generate(model):
    hf = hf_reference(model)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ours = lc.generate(model, [prompt], 20, temperature=0)[0]
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                      min_new_tokens=20, pad_token_id=0)
    assert ours == ref[0, len(prompt):].tolist()


def test_sampling_is_seeded_and_cache_agnostic(model):
    a = lc.generate(model, [[1, 2]], 25, temperature=1.0, top_p=0.9, seed=7)
    b = lc.generate(model, [[1, 2]], 25, temperature=1.0, top_p=0.9, seed=7)
    c = lc.generate(model, [[1, 2]], 25, temperature=1.0, top_p=0.9, seed=7, use_cache=False)
    d = lc.generate(model, [[1, 2]], 25, temperature=1.0, top_p=0.9, seed=8)
    assert a == b == c and a != d


def test_stops_at_eos(model):
    free = lc.generate(model, [[1, 2, 3]], 20, temperature=0)[0]
    eos = free[5]
    first = free.index(eos)
    stopped = lc.generate(model, [[1, 2, 3], [4]], 20, temperature=0, eos_id=eos)
    assert stopped[0] == free[:first]
    assert eos not in stopped[1]


def test_context_window_slides_identically_with_and_without_cache():
    m = lc.Transformer(small_args(max_seq_len=16)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    a = lc.generate(m, prompts, 50, temperature=0)
    b = lc.generate(m, prompts, 50, temperature=0, use_cache=False)
    assert a == b and len(a[0]) == 50


def test_stream_yields_the_generate_tokens(model):
    streamed = list(lc.stream(model, [1, 2, 3], 15, temperature=0))
    assert streamed == lc.generate(model, [[1, 2, 3]], 15, temperature=0)[0]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    p = lc.next_token_probs(logits, temperature=1.0, top_k=2)
    torch.testing.assert_close(p, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]))
    p = lc.next_token_probs(logits, temperature=1.0, top_p=0.8)  # 0.5+0.2 < 0.8 -> keep 3
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)
    p = lc.next_token_probs(logits, temperature=1.0, top_p=0.01)  # the top token always stays
    torch.testing.assert_close(p, torch.tensor([[1.0, 0, 0, 0, 0]]))
    cold = lc.next_token_probs(logits, temperature=0.1)
    hot = lc.next_token_probs(logits, temperature=10.0)
    assert cold[0, 0] > 0.99 and hot.max() < 0.3


def test_sample_frequencies_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    draws = lc.sample_next(logits, 1.0, 0.75, None, g)  # nucleus {0, 1}
    freq = torch.bincount(draws, minlength=3) / 20000
    assert freq[2] == 0 and abs(freq[0] - 0.625) < 0.02


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[]), "non-empty list"),
    (dict(prompts=[1, 2]), "wrap a single prompt"),
    (dict(prompts=[[]]), "prompt 0 is empty"),
    (dict(prompts=[[1], [200]]), "prompt 1 holds token 200"),
    (dict(prompts=[[1.5]]), "non-integer token"),
    (dict(prompts=[list(range(65))]), r"prompt 0 has 65 tokens, more than .* max_seq_len \(64\)"),
    (dict(temperature=-1), r"temperature \(-1\) must be >= 0"),
    (dict(top_p=0), r"top_p \(0\) must be in \(0, 1\]"),
    (dict(top_k=0), r"top_k \(0\) must be a positive integer"),
    (dict(max_new_tokens=-3), r"max_new_tokens \(-3\) must be a non-negative"),
])
def test_bad_arguments(model, kwargs, message):
    call = dict(prompts=[[1, 2]], max_new_tokens=5, temperature=0.6)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        lc.generate(model, **call)


def test_generation_leaves_no_state_on_the_model_or_the_process(model):
    """The plain path runs the model's own forward: nothing is stored on the model, no
    process-wide setting changes."""
    attributes, threads = dict(vars(model)), torch.get_num_threads()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lc.generate(model, [[1, 2, 3], [4]], 8, temperature=0.8, seed=1)
    list(lc.stream(model, [1, 2], 4, temperature=0))
    assert dict(vars(model)).keys() == attributes.keys() and torch.get_num_threads() == threads
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_generate_calls_the_models_public_forward_with_its_cache(model, monkeypatch):
    """One forward pass: the cached path is model(tokens, start_pos, cache)."""
    calls = []
    forward = lc.Transformer.forward

    def spy(self, tokens, start_pos=0, cache=None):
        calls.append((tokens.shape[1], start_pos, type(cache).__name__))
        return forward(self, tokens, start_pos, cache)

    monkeypatch.setattr(lc.Transformer, "forward", spy)
    lc.generate(model, [[1, 2, 3]], 3, temperature=0)
    assert calls == [(3, 0, "list"), (1, 3, "list"), (1, 4, "list")]


def test_old_compile_flag_and_decoder_misuse_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"FastDecoder\(model, compile=True\)"):
        lc.generate(model, [[1, 2]], 3, compile=True)
    with pytest.raises(ValueError, match="leave use_cache=True"):
        lc.generate(model, [[1, 2]], 3, use_cache=False, decoder=lc.FastDecoder(model))
    other = lc.Transformer(small_args())
    with pytest.raises(ValueError, match="built for another model"):
        lc.generate(model, [[1, 2]], 3, decoder=lc.FastDecoder(other))


def test_generation_ignores_dropout_and_restores_the_mode():
    """A model still in training mode (just trained, with dropout) generates as in eval mode,
    by either path, and stays in training mode."""
    torch.manual_seed(0)
    m = lc.Transformer(small_args(dropout=0.5))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.3)  # confident predictions, which dropout would disturb
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    cached = lc.generate(m, prompts, 20, temperature=0)
    uncached = lc.generate(m, prompts, 20, temperature=0, use_cache=False)
    assert m.training
    assert cached == uncached == lc.generate(m.eval(), prompts, 20, temperature=0,
                                             use_cache=False)
