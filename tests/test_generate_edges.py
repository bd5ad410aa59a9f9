"""Generation at its edges: the window slide against a hand-written reference, early stopping
once every row has met EOS, which cache is allocated, top-k and the seed reaching the decoding
loop through generate and stream, a custom decoder, the defaults, shapes other than (B, V),
top_p=1 meaning no filter, wrong models, inference mode, and (with a GPU) the device.
"""

import pytest
import torch

import llama_course as lc
from llama_course.generate import generate_steps

from references import small_args


def peaked_model(**overrides):
    torch.manual_seed(0)
    m = lc.Transformer(small_args(**overrides)).eval()
    for p in m.parameters():  # peaked distributions: greedy ties are impossible in practice
        torch.nn.init.normal_(p, std=0.3)
    return m


@pytest.fixture
def model():
    return peaked_model()


class Recorder:
    """A `decoder=` that follows the Decoder protocol: the model's own calls, recorded."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def new_cache(self, batch_size, max_seq_len=None):
        return self.model.new_cache(batch_size, max_seq_len)

    def __call__(self, tokens, start_pos, cache):
        self.calls.append((tokens.shape[1], start_pos))
        return self.model(tokens, start_pos, cache)


def count_forwards(monkeypatch):
    calls = []
    forward = lc.Transformer.forward

    def spy(self, tokens, start_pos=0, cache=None):
        calls.append(tokens.shape[1])
        return forward(self, tokens, start_pos, cache)

    monkeypatch.setattr(lc.Transformer, "forward", spy)
    return calls


# ---------------------------------------------------------------------------- the window
def reference_greedy(model, prompt, n):
    """The documented rule, written independently: the model sees at most max_seq_len tokens;
    when the next prediction would need more, only the last half of the context (at least one
    token) is kept and processed again from position 0. No cache, one list."""
    ctx = model.params.max_seq_len
    keep = max(1, ctx // 2)
    seq, start = list(prompt), 0
    with torch.no_grad():
        for _ in range(n):
            if len(seq) - start > ctx:
                start = len(seq) - keep
            logits = model(torch.tensor([seq[start:]]))  # (1, T, V)
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("ctx", [1, 3, 16])
@pytest.mark.parametrize("use_cache", [True, False])
def test_window_slides_as_documented(ctx, use_cache):
    """The full context is used before sliding (not one token less), half of it is kept, the
    window slides again each time it fills, and a context of 1 or 3 still works."""
    m = peaked_model(max_seq_len=ctx)
    prompt = [5, 6, 7][:ctx]
    n = 3 * ctx + 4
    want = reference_greedy(m, prompt, n)
    assert lc.generate(m, [prompt], n, temperature=0, use_cache=use_cache)[0] == want


# ---------------------------------------------------------------------------- EOS
def test_generation_stops_once_every_row_has_met_eos(model, monkeypatch):
    """Rows meeting EOS at different steps: the loop runs until the later one, not one step
    more (and not to max_new_tokens): every extra step is a wasted forward pass."""
    prompts, n = [[7, 8, 9], [10, 11, 12, 13, 14]], 20
    free = lc.generate(model, prompts, n, temperature=0)
    lens = [len(p) for p in prompts]
    # a token both rows produce, first met at different positions, both before the end
    stop = None
    for t in free[0][1:]:
        if t in free[1][1:]:
            ends = [lens[b] + free[b].index(t) for b in range(2)]  # absolute positions
            first = ends.index(min(ends))  # the row done first goes on producing (unseen) tokens
            after = free[first][max(ends) - lens[first]]  # its token when the other meets EOS
            if ends[0] != ends[1] and max(ends) < lens[1] + n - 2 and after != t:
                stop = t
                break
    assert stop is not None, "no shared token; change the prompts"
    calls = count_forwards(monkeypatch)
    out = lc.generate(model, prompts, n, temperature=0, eos_id=stop)
    assert out == [f[:f.index(stop)] for f in free]
    assert len(calls) == max(ends) - min(lens) + 1  # one forward per position, up to the last EOS
    positions = [pos for pos, _ in generate_steps(model, prompts, n, 0, eos_id=stop)]
    assert positions == list(range(min(lens), max(ends) + 1))


def test_stream_stops_at_a_later_eos(model):
    free = lc.generate(model, [[1, 2, 3]], 20, temperature=0)[0]
    i = next(i for i, t in enumerate(free) if i > 0 and t not in free[:i])  # first seen late
    assert list(lc.stream(model, [1, 2, 3], 20, temperature=0, eos_id=free[i])) == free[:i]


# ---------------------------------------------------------------------------- the cache
def test_cache_is_sized_to_the_generation_and_absent_without_one(model, monkeypatch):
    """A short generation allocates the positions it needs (not the whole max_seq_len, which
    is 131072 for Llama 3.1); use_cache=False allocates no cache at all."""
    made = []
    new_cache = lc.Transformer.new_cache

    def spy(self, batch_size, max_seq_len=None):
        cache = new_cache(self, batch_size, max_seq_len)
        made.append(cache)
        return cache

    monkeypatch.setattr(lc.Transformer, "new_cache", spy)
    lc.generate(model, [[1, 2, 3], [4]], 5, temperature=0)
    assert len(made) == 1
    assert [(c.cache_k.shape[0], c.max_seq_len) for c in made[0]] == [(2, 3 + 5)] * 2  # 2 layers
    made.clear()
    lc.generate(model, [[1, 2, 3]], 5, temperature=0, use_cache=False)
    assert made == []


# ------------------------------------------------------------- arguments reach the loop
def test_top_k_one_is_greedy_through_generate_and_stream(model):
    greedy = lc.generate(model, [[1, 2, 3]], 12, temperature=0)[0]
    assert lc.generate(model, [[1, 2, 3]], 12, temperature=1.5, top_p=1.0, top_k=1,
                       seed=3)[0] == greedy
    assert list(lc.stream(model, [1, 2, 3], 12, temperature=1.5, top_p=1.0, top_k=1,
                          seed=3)) == greedy


def test_stream_seed_gives_generates_tokens(model):
    """stream and generate draw the same tokens from the same seed (and the seed matters)."""
    kw = dict(temperature=1.0, top_p=0.95)
    want = lc.generate(model, [[1, 2]], 20, seed=11, **kw)[0]
    assert list(lc.stream(model, [1, 2], 20, seed=11, **kw)) == want
    assert list(lc.stream(model, [1, 2], 20, seed=11, **kw)) == want
    assert list(lc.stream(model, [1, 2], 20, seed=12, **kw)) != want


def test_stream_and_generate_decode_through_the_given_decoder(model):
    greedy = lc.generate(model, [[1, 2, 3]], 3, temperature=0)[0]
    rec = Recorder(model)
    assert list(lc.stream(model, [1, 2, 3], 3, temperature=0, decoder=rec)) == greedy
    assert rec.calls == [(3, 0), (1, 3), (1, 4)]  # prefill, then one token a step
    rec = Recorder(model)
    assert lc.generate(model, [[1, 2, 3]], 3, temperature=0, decoder=rec)[0] == greedy
    assert rec.calls == [(3, 0), (1, 3), (1, 4)]
    rec = Recorder(model)  # generate_steps' defaults use the cache, so a decoder is accepted
    steps = [int(t) for _, t in generate_steps(model, [[1, 2, 3]], 3, 0, decoder=rec)]
    assert steps == greedy and rec.calls == [(3, 0), (1, 3), (1, 4)]


def test_decoder_misuse_messages_in_full(model):
    with pytest.raises(ValueError, match=r"^decoder= decodes with a KV cache: leave "
                                         r"use_cache=True$"):
        lc.generate(model, [[1, 2]], 3, use_cache=False, decoder=Recorder(model))
    with pytest.raises(ValueError, match=r"^decoder was built for another model: build one "
                                         r"for this model$"):
        lc.generate(model, [[1, 2]], 3, decoder=Recorder(peaked_model()))


def test_default_temperature_is_0_6(model):
    """Meta's default; the sampled tokens differ at any other temperature."""
    logits = torch.randn(3, 97, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lc.next_token_probs(logits),
                               torch.softmax(logits / 0.6, dim=-1))
    want = lc.generate(model, [[1, 2]], 30, temperature=0.6, seed=5)[0]
    assert lc.generate(model, [[1, 2]], 30, seed=5)[0] == want
    assert list(lc.stream(model, [1, 2], 30, seed=5)) == want
    steps = generate_steps(model, [[1, 2]], 30, generator=torch.Generator().manual_seed(5))
    assert [int(t) for _, t in steps] == want


# ---------------------------------------------------------------------------- sampling shapes
def test_probabilities_for_any_leading_shape():
    """The last dimension is the vocabulary: (B, T, V) logits (a distribution per position)
    and a single (V,) vector give, row by row, what (N, V) gives, for every filter."""
    logits = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(1)) * 3
    for kw in [dict(temperature=0.7), dict(temperature=1.3, top_k=5),
               dict(temperature=0.9, top_p=0.6), dict(temperature=1.0, top_k=8, top_p=0.7)]:
        flat = lc.next_token_probs(logits.reshape(6, 20), **kw)  # (6, V)
        torch.testing.assert_close(lc.next_token_probs(logits, **kw), flat.reshape(2, 3, 20))
        torch.testing.assert_close(lc.next_token_probs(logits[1, 2], **kw), flat[5])
        if "top_p" not in kw and "top_k" not in kw:
            want = torch.softmax(logits.reshape(6, 20) / kw["temperature"], dim=-1)
            torch.testing.assert_close(flat, want)
    kept = (lc.next_token_probs(logits, 1.0, top_k=5) > 0).sum(-1)  # (2, 3)
    assert (kept == 5).all()


def test_sampling_one_vector_gives_one_token():
    logits = torch.tensor([0.0, 4.0, 1.0])
    assert lc.sample_next(logits, 0, 1.0, None).shape == ()
    assert int(lc.sample_next(logits, 0, 1.0, None)) == 1
    token = lc.sample_next(logits, 1.0, 1.0, 1, torch.Generator().manual_seed(0))
    assert token.shape == () and int(token) == 1


def test_top_p_one_keeps_every_token():
    """top_p=1.0 is no filter: a token far below float precision of the top one keeps its
    probability (a nucleus filter at p=1 would drop it, its mass before being 1.0)."""
    logits = torch.tensor([[0.0, -30.0, -31.0]])
    want = torch.softmax(logits, dim=-1)
    got = lc.next_token_probs(logits, temperature=1.0, top_p=1.0)
    assert (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(lc.next_token_probs(logits, temperature=1.0), want, rtol=1e-5,
                               atol=0)


# ---------------------------------------------------------------------------- errors, modes
def test_a_model_that_is_not_a_transformer_is_named():
    wrong = torch.nn.Linear(2, 2)
    msg = r"^model must be an lc\.Transformer, got Linear$"
    with pytest.raises(ValueError, match=msg):
        lc.generate(wrong, [[1]], 2)
    with pytest.raises(ValueError, match=msg):
        list(lc.stream(wrong, [1], 2, seed=0))
    with pytest.raises(ValueError, match=msg):
        list(generate_steps(wrong, [[1]], 2))


def test_the_loop_runs_in_inference_mode_and_the_caller_does_not(model, monkeypatch):
    """No autograd graph is built while decoding, but the code consuming stream() between two
    tokens runs in its own mode (torch's decorator leaves inference mode at each yield)."""
    modes = []
    forward = lc.Transformer.forward

    def spy(self, tokens, start_pos=0, cache=None):
        modes.append(torch.is_inference_mode_enabled())
        return forward(self, tokens, start_pos, cache)

    monkeypatch.setattr(lc.Transformer, "forward", spy)
    for _ in lc.stream(model, [1, 2], 4, temperature=0):
        assert not torch.is_inference_mode_enabled()
    assert modes == [True] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tokens_and_generator_stay_on_the_models_device(model):
    """On a GPU every tensor of the loop (tokens, prompt mask, EOS flags) and the seeded
    generator live on the model's device; the tokens equal the CPU run's."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    cpu = lc.generate(model, prompts, 10, temperature=0)
    gpu_model = model.cuda()
    eos = cpu[0][4]
    want = [c[:c.index(eos)] if eos in c else c for c in cpu]
    assert lc.generate(gpu_model, prompts, 10, temperature=0, eos_id=eos) == want
    steps = list(generate_steps(gpu_model, prompts, 4, 0, eos_id=eos))
    assert all(t.device == gpu_model.tok_embeddings.weight.device for _, t in steps)
    a = lc.generate(gpu_model, prompts, 8, temperature=1.0, seed=0, eos_id=eos)
    assert a == lc.generate(gpu_model, prompts, 8, temperature=1.0, seed=0, eos_id=eos)
    assert len(list(lc.stream(gpu_model, [1, 2], 5, temperature=1.0, seed=0))) == 5
