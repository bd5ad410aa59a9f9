"""The training loop: it learns, it resumes exactly, its checkpoints and metrics are sound."""

import math
import signal

import pandas as pd
import pytest
import torch

import llama_course as lc
import llama_course.optim as O
import llama_course.run_folder as RF
import llama_course.runtime as R

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
    estimate = lc.estimate_loss(model, val, 64, 8, 1, cpu, seed=0)
    assert model.training  # the mode it had
    model.eval()
    assert estimate == batch_loss() and abs(thinned - estimate) > 0.1
    assert whole == lc.evaluate(model, val[:3000], 64, cpu)


def test_training_resumes_in_training_mode(tmp_path, monkeypatch):
    """from_pretrained returns a model in eval mode (as transformers does); a resumed run must
    switch dropout back on."""
    lc.train(cfg(tmp_path, max_steps=6, model_overrides={"dropout": 0.1}), text=TEXT)
    loaded = []
    original = lc.Transformer.from_pretrained.__func__

    def spy(cls, *a, **kw):
        model = original(cls, *a, **kw)
        assert not model.training  # ready to predict
        loaded.append(model)
        return model

    monkeypatch.setattr(lc.Transformer, "from_pretrained", classmethod(spy))
    lc.train(cfg(tmp_path, max_steps=8, model_overrides={"dropout": 0.1}), resume=True, text=TEXT)
    assert loaded and loaded[0].training and loaded[0].layers[0].dropout == 0.1


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_few_dozen_steps_drive_the_loss_down(tmp_path, optimizer):
    result = lc.train(cfg(tmp_path, optimizer=optimizer), text=TEXT)
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
    lc.train(cfg(tmp_path, max_steps=10), text=TEXT)
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "char_tokenizer.json", "train_state.pt",
                 "metrics.csv", "metrics.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    model = lc.Transformer.from_pretrained(run)
    tok = lc.CharTokenizer.from_pretrained(run)
    assert model.params.max_seq_len == 32  # the context it was trained on
    assert tok.vocab_size == model.vocab_size == len(set(TEXT)) + 3
    state = RF.load_train_state(run)
    assert state["step"] == 10
    # the saved weights reproduce the saved final validation loss
    summary = pd.read_json(run / "metrics.json", typ="series")
    _, val = lc.train_val_split(lc.encode_text(TEXT, tok))
    assert lc.evaluate(model, val, 32, torch.device("cpu")) == pytest.approx(
        summary["final_val_loss"], rel=1e-6)


@pytest.mark.parametrize("optimizer, order", [("adamw", "random"), ("muon", "random"),
                                              ("muon", "epochs")])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, optimizer, order):
    full = cfg(tmp_path / "a", max_steps=30, eval_interval=10, optimizer=optimizer,
               data_order=order)
    lc.train(full, text=TEXT)

    def ctrl_c_at_13(step, loss):
        if step == 13:
            raise KeyboardInterrupt

    part = cfg(tmp_path / "b", max_steps=30, eval_interval=10, optimizer=optimizer,
               data_order=order)
    result = lc.train(part, text=TEXT, callback=ctrl_c_at_13)
    assert result.interrupted and result.steps == 13
    assert RF.load_train_state(tmp_path / "b" / "run")["step"] == 13  # saved on the way out
    lc.train(part, resume=True, text=TEXT)

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
    lc.train(cfg(tmp_path, max_steps=5), text=TEXT)
    run = tmp_path / "run"
    before = RF.load_train_state(run)["step"]

    def crash(obj, path, *a, **k):
        open(path, "wb").write(b"half a file")  # the temp file is half written...
        raise OSError("disk full")  # ...when the process dies

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        lc.train(cfg(tmp_path, max_steps=8), resume=True, text=TEXT)
    monkeypatch.undo()
    assert RF.load_train_state(run)["step"] == before  # the old state file is intact


def test_resume_refuses_a_state_that_belongs_to_other_weights(tmp_path):
    lc.train(cfg(tmp_path, max_steps=5), text=TEXT)
    other = lc.Transformer(lc.Transformer.from_pretrained(tmp_path / "run").params)
    other.save_pretrained(tmp_path / "run")  # weights replaced, state file not
    with pytest.raises(ValueError, match="does not belong to model.safetensors"):
        lc.train(cfg(tmp_path, max_steps=8), resume=True, text=TEXT)


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        lc.train(cfg(tmp_path), resume=True, text=TEXT)


def test_time_budget_ends_the_schedule_on_time(tmp_path):
    """The run stops at the first step that ends past the budget, and each step's learning
    rate is the schedule's at the fraction of the budget spent before it (not a timed test:
    it holds however slow the machine is)."""
    result = lc.train(cfg(tmp_path, max_steps=100_000, time_budget=2.0, eval_interval=0),
                      text=TEXT)
    m = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["train_loss"])
    assert len(m) == result.steps >= 2 and result.train_time >= 2.0
    assert m.elapsed_s.iloc[-2] <= 2.0 <= m.elapsed_s.iloc[-1]  # rounded to 1 ms: 1.9996 reads 2.0
    spent_before = [0.0] + list(m.elapsed_s.iloc[:-1])  # train time when each step began
    for i, (lr, t) in enumerate(zip(m.lr, spent_before)):
        want = lc.lr_at(i, max(i / 100_000, t / 2.0), peak_lr=3e-3, warmup_steps=5)
        assert lr == pytest.approx(want, abs=1e-5), i


def test_learning_rate_schedule():
    def lr(step):
        return lc.lr_at(step, step / 100, peak_lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr(0) == pytest.approx(0.1)  # warm-up starts small
    assert lr(4) < lr(8) < lr(9)  # and rises
    assert lr(50) == pytest.approx(0.55)  # cosine midpoint between 1 and 0.1
    assert lr(100) == pytest.approx(0.1)
    assert lc.lr_at(100, 1.7, 1.0, 10) == pytest.approx(0.1)  # past the end: the floor


def test_weight_decay_only_on_matrices():
    model = lc.Transformer(lc.get_preset("tiny"))
    opt = O.configure_optimizer(model, lc.TrainConfig(), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_precision_follows_the_device():
    native = R.cpu_has_native_bf16()
    assert R.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native
                                                            else torch.float32)
    assert R.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert R.resolve_dtype("fp32", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("gpu, capability, dtype", [
    ("Tesla T4", (7, 5), torch.float16),  # bf16 only emulated: fp16 with a grad scaler
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
])
def test_bf16_only_where_the_gpu_has_bf16_units(monkeypatch, gpu, capability, dtype):
    """torch.cuda.is_bf16_supported() answers True on a T4 (emulation counts): the compute
    capability decides."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: gpu)
    cuda = torch.device("cuda")
    assert R.resolve_dtype("auto", cuda) == dtype
    assert R.resolve_dtype("bf16", cuda) == torch.bfloat16  # asked for explicitly: granted


def test_stop_signals_whatever_was_inherited():
    """A job started in the background inherits SIGINT as ignored: the handlers are installed
    anyway, a first signal asks to stop, a second interrupts, and the old handlers return."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    term_before = signal.getsignal(signal.SIGTERM)
    try:
        with R.StopSignals() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.received == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is term_before
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_stops_after_the_step_and_saves(tmp_path):
    def terminate_at_3(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    term_before = signal.getsignal(signal.SIGTERM)
    result = lc.train(cfg(tmp_path, max_steps=30), text=TEXT, callback=terminate_at_3)
    assert result.interrupted and result.signal == signal.SIGTERM and result.steps == 3
    assert RF.load_train_state(tmp_path / "run")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is term_before


def test_bf16_autocast_training_on_cpu(tmp_path):
    result = lc.train(cfg(tmp_path, dtype="bf16"), text=TEXT)
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


@pytest.mark.parametrize("order", ["random", "epochs"])
def test_gradient_accumulation_equals_the_big_batch(tmp_path, order):
    """2 micro-batches of 8 draw the same 16 windows as one batch of 16 (random: one
    generator, consumed in order; epochs: micro-batch m holds windows 8m .. 8m+7), so every
    step's loss and the final weights must agree."""
    lc.train(cfg(tmp_path / "a", max_steps=6, batch_size=8, grad_accum_steps=2,
                 data_order=order), text=TEXT)
    lc.train(cfg(tmp_path / "b", max_steps=6, batch_size=16, grad_accum_steps=1,
                 data_order=order), text=TEXT)
    a = pd.read_csv(tmp_path / "a" / "run" / "metrics.csv")
    b = pd.read_csv(tmp_path / "b" / "run" / "metrics.csv")
    pd.testing.assert_series_equal(a.train_loss, b.train_loss, rtol=1e-5)
    wa = lc.Transformer.from_pretrained(tmp_path / "a" / "run").state_dict()
    wb = lc.Transformer.from_pretrained(tmp_path / "b" / "run").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_the_data_order_changes_the_batches(tmp_path):
    """The same seed trains on other windows with data_order="epochs" than with "random"."""
    a = lc.train(cfg(tmp_path / "a", max_steps=12, data_order="epochs"), text=TEXT)
    b = lc.train(cfg(tmp_path / "b", max_steps=12, data_order="random"), text=TEXT)
    la, lb = (pd.read_csv(tmp_path / r / "run" / "metrics.csv").train_loss for r in "ab")
    assert a.steps == b.steps == 12 and not la.equals(lb)


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


def test_train_step_is_one_update_of_the_learners_loop():
    """train_step against the plain loop a learner writes: forward, cross-entropy, backward,
    clip, step. Same model, same batch, same optimizer: the same weights and loss."""
    torch.manual_seed(0)
    a = lc.Transformer(lc.get_preset("tiny", vocab_size=68))
    b = lc.Transformer(a.params)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 68, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    for _ in range(3):
        loss = lc.train_step(a, opt_a, (x, y), grad_clip=0.5)
        ref = torch.nn.functional.cross_entropy(b(x).flatten(0, 1), y.flatten())
        ref.backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
        opt_b.step()
        opt_b.zero_grad()
        assert isinstance(loss, float) and loss == pytest.approx(ref.item(), rel=1e-6)
    assert all(p.grad is None for p in a.parameters())  # cleared after the update
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=k)


def test_train_step_accumulates_micro_batches_as_their_mean():
    """Two micro-batches of 4 give the update of the batch of 8 (no clipping, no dropout),
    and the mean of the two losses."""
    torch.manual_seed(0)
    a = lc.Transformer(lc.get_preset("tiny", vocab_size=68))
    b = lc.Transformer(a.params)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 68, (8, 16))
    y = torch.roll(x, -1, dims=1)
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (a, b))
    loss_a = lc.train_step(a, opt_a, [(x[:4], y[:4]), (x[4:], y[4:])], grad_clip=0)
    loss_b = lc.train_step(b, opt_b, (x, y), grad_clip=None)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="batches is empty"):
        lc.train_step(a, opt_a, [])


def test_one_cross_entropy():
    """next_token_loss is F.cross_entropy over every position: training, estimates and the
    final evaluation all report it."""
    logits, y = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    want = torch.stack([torch.nn.functional.cross_entropy(logits[i], y[i], reduction="sum")
                        for i in range(2)]).sum()
    torch.testing.assert_close(lc.next_token_loss(logits, y, reduction="sum"), want)
    torch.testing.assert_close(lc.next_token_loss(logits, y), want / 10)
