"""The training loop: it learns, it resumes exactly, its checkpoints and metrics are sound."""

import math

import pandas as pd
import pytest
import torch

import llama_course as lc
import llama_course.train as T

TEXT = lc.load_tiny_shakespeare()[:200_000]  # enough real text for a few dozen steps


def cfg(tmp_path, **kw):
    base = dict(preset="tiny", out_dir=str(tmp_path / "run"), batch_size=16, block_size=32,
                max_steps=40, lr=3e-3, warmup_steps=5, eval_interval=20, eval_batches=4,
                log_interval=1, progress=False, device="cpu", seed=0, dtype="fp32")
    return lc.TrainConfig(**{**base, **kw})


def test_untrained_loss_is_ln_vocab():
    tok = lc.CharTokenizer.from_text(TEXT)
    model = lc.Transformer(lc.get_preset("tiny", vocab_size=tok.vocab_size))
    _, val = lc.train_val_split(lc.encode_text(TEXT, tok))
    loss = lc.evaluate(model, val[:5000], 64, torch.device("cpu"))
    assert abs(loss - math.log(tok.vocab_size)) < 0.05


def test_evaluation_turns_dropout_off_and_restores_the_mode():
    """With dropout the loss of a model in training mode is the loss of a randomly thinned
    network. Both evaluations must measure the model itself, and leave its mode as it was."""
    tok = lc.CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = lc.Transformer(lc.get_preset("tiny", vocab_size=tok.vocab_size, dropout=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)  # confident predictions, which dropout visibly disturbs
    _, val = lc.train_val_split(lc.encode_text(TEXT, tok))
    cpu = torch.device("cpu")
    x, y = lc.get_batch(val, 8, 64, torch.Generator().manual_seed(0))  # estimate_loss's batch

    def batch_loss():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()

    thinned = batch_loss()
    whole = lc.evaluate(model, val[:3000], 64, cpu)
    estimate = T.estimate_loss(model, val, 64, 8, 1, cpu, T.nullcontext, seed=0)
    assert model.training  # the mode it had
    model.eval()
    assert estimate == batch_loss() and abs(thinned - estimate) > 0.1
    assert whole == lc.evaluate(model, val[:3000], 64, cpu)


def test_training_resumes_in_training_mode(tmp_path, monkeypatch):
    """from_pretrained returns a model in eval mode (as transformers does); a resumed run must
    switch dropout back on."""
    T.train(cfg(tmp_path, max_steps=6, model_overrides={"dropout": 0.1}), text=TEXT)
    loaded = []
    original = lc.Transformer.from_pretrained.__func__

    def spy(cls, *a, **kw):
        model = original(cls, *a, **kw)
        assert not model.training  # ready to predict
        loaded.append(model)
        return model

    monkeypatch.setattr(lc.Transformer, "from_pretrained", classmethod(spy))
    T.train(cfg(tmp_path, max_steps=8, model_overrides={"dropout": 0.1}), resume=True, text=TEXT)
    assert loaded and loaded[0].training and loaded[0].layers[0].dropout == 0.1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_few_dozen_steps_drive_the_loss_down(tmp_path, optimizer):
    result = T.train(cfg(tmp_path, optimizer=optimizer), text=TEXT)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics.columns) == ["step", "elapsed_s", "lr", "train_loss", "val_loss"]
    first, last = metrics.train_loss.iloc[:5].mean(), metrics.train_loss.iloc[-5:].mean()
    assert first > 3.5 and last < first - 0.8
    assert result.final_val_loss < math.log(68) - 0.8
    assert result.steps == 40 and not result.interrupted


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = lc.Transformer(lc.get_preset("tiny"))
    x = torch.randint(0, 68, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_run_folder_round_trip(tmp_path):
    T.train(cfg(tmp_path, max_steps=10), text=TEXT)
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "char_tokenizer.json", "train_state.pt",
                 "metrics.csv", "metrics.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    model = lc.Transformer.from_pretrained(run)
    tok = lc.CharTokenizer.from_pretrained(run)
    assert model.params.max_seq_len == 32  # the context it was trained on
    assert tok.vocab_size == model.vocab_size == len(set(TEXT)) + 3
    state = T.load_train_state(run)
    assert state["step"] == 10
    # the saved weights reproduce the saved final validation loss
    summary = pd.read_json(run / "metrics.json", typ="series")
    _, val = lc.train_val_split(lc.encode_text(TEXT, tok))
    assert lc.evaluate(model, val, 32, torch.device("cpu")) == pytest.approx(
        summary["final_val_loss"], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, optimizer):
    full = cfg(tmp_path / "a", max_steps=30, eval_interval=10, optimizer=optimizer)
    T.train(full, text=TEXT)

    def ctrl_c_at_13(step, loss):
        if step == 13:
            raise KeyboardInterrupt

    part = cfg(tmp_path / "b", max_steps=30, eval_interval=10, optimizer=optimizer)
    result = T.train(part, text=TEXT, callback=ctrl_c_at_13)
    assert result.interrupted and result.steps == 13
    assert T.load_train_state(tmp_path / "b" / "run")["step"] == 13  # saved on the way out
    T.train(part, resume=True, text=TEXT)

    a = pd.read_csv(tmp_path / "a" / "run" / "metrics.csv")
    b = pd.read_csv(tmp_path / "b" / "run" / "metrics.csv")
    assert list(a.step) == list(b.step) == list(range(1, 31))
    pd.testing.assert_series_equal(a.train_loss, b.train_loss, rtol=0, atol=0)
    pd.testing.assert_series_equal(a.val_loss, b.val_loss, rtol=0, atol=0)
    wa = lc.Transformer.from_pretrained(tmp_path / "a" / "run").state_dict()
    wb = lc.Transformer.from_pretrained(tmp_path / "b" / "run").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    T.train(cfg(tmp_path, max_steps=5), text=TEXT)
    run = tmp_path / "run"
    before = T.load_train_state(run)["step"]

    def crash(obj, path, *a, **k):
        open(path, "wb").write(b"half a file")  # the temp file is half written...
        raise OSError("disk full")  # ...when the process dies

    monkeypatch.setattr(T.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        T.train(cfg(tmp_path, max_steps=8), resume=True, text=TEXT)
    monkeypatch.undo()
    assert T.load_train_state(run)["step"] == before  # the old state file is intact


def test_resume_refuses_a_state_that_belongs_to_other_weights(tmp_path):
    T.train(cfg(tmp_path, max_steps=5), text=TEXT)
    other = lc.Transformer(lc.Transformer.from_pretrained(tmp_path / "run").params)
    other.save_pretrained(tmp_path / "run")  # weights replaced, state file not
    with pytest.raises(ValueError, match="does not belong to model.safetensors"):
        T.train(cfg(tmp_path, max_steps=8), resume=True, text=TEXT)


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        T.train(cfg(tmp_path), resume=True, text=TEXT)


def test_time_budget_ends_the_schedule_on_time(tmp_path):
    result = T.train(cfg(tmp_path, max_steps=100_000, time_budget=2.0, eval_interval=0),
                      text=TEXT)
    assert 2.0 <= result.train_time < 3.0
    m = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["train_loss"])
    assert m.lr.iloc[-1] < 0.15 * 3e-3  # the cosine reached its floor when the time was up


def test_learning_rate_schedule():
    c = lc.TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=100)
    assert T.lr_at(c, 0, 0.0) == pytest.approx(0.1)  # warm-up starts small
    assert T.lr_at(c, 4, 0.04) < T.lr_at(c, 8, 0.08) < T.lr_at(c, 9, 0.09)  # and rises
    assert T.lr_at(c, 50, 0.5) == pytest.approx(0.55)  # cosine midpoint between 1 and 0.1
    assert T.lr_at(c, 100, 1.0) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = lc.Transformer(lc.get_preset("tiny"))
    opt = T.configure_optimizer(model, lc.TrainConfig(), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_precision_follows_the_device():
    native = T.cpu_has_native_bf16()
    assert T.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native
                                                            else torch.float32)
    assert T.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert T.resolve_dtype("fp32", torch.device("cpu")) == torch.float32


def test_bf16_autocast_training_on_cpu(tmp_path):
    result = T.train(cfg(tmp_path, dtype="bf16"), text=TEXT)
    assert result.summary["dtype"] == "bfloat16"
    assert result.final_val_loss < math.log(68) - 0.8


def test_cpu_attention_runs_in_fp32_under_autocast():
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    mask = lc.causal_mask(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lc.sdpa_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), is_causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.bfloat16(), atol=0, rtol=0)  # fp32 math, one rounding


def test_gradient_accumulation_equals_the_big_batch(tmp_path):
    """2 micro-batches of 8 draw the same 16 windows as one batch of 16 (one generator,
    consumed in order), so every step's loss and the final weights must agree."""
    T.train(cfg(tmp_path / "a", max_steps=6, batch_size=8, grad_accum_steps=2), text=TEXT)
    T.train(cfg(tmp_path / "b", max_steps=6, batch_size=16, grad_accum_steps=1), text=TEXT)
    a = pd.read_csv(tmp_path / "a" / "run" / "metrics.csv")
    b = pd.read_csv(tmp_path / "b" / "run" / "metrics.csv")
    pd.testing.assert_series_equal(a.train_loss, b.train_loss, rtol=1e-5)
    wa = lc.Transformer.from_pretrained(tmp_path / "a" / "run").state_dict()
    wb = lc.Transformer.from_pretrained(tmp_path / "b" / "run").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=0), r"batch_size \(0\) must be a positive integer"),
    (dict(lr=-1.0), r"lr \(-1.0\) must be positive"),
    (dict(time_budget=0), r"time_budget \(0\) must be positive"),
    (dict(device="tpu"), "device 'tpu' must be auto, cpu, cuda or mps"),
    (dict(dtype="fp8"), "dtype 'fp8' must be"),
    (dict(min_lr_ratio=2.0), r"min_lr_ratio \(2.0\)"),
    (dict(optimizer="sgd"), "optimizer 'sgd' must be adamw or muon"),
    (dict(muon_lr=0.0), r"muon_lr \(0.0\) must be positive"),
    (dict(muon_momentum=1.0), r"muon_momentum \(1.0\) must be in \[0, 1\)"),
])
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        lc.TrainConfig(**kw)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        lc.train_config_for("huge")
