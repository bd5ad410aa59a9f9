"""The run folder: what a training run leaves on disk, and the progress it shows meanwhile.

    config.json, model.safetensors, llama_course.json   the model (Hugging Face format)
    char_tokenizer.json                                  the vocabulary
    train_state.pt                                       optimizer, step, RNG (for --resume)
    metrics.csv                                          step, elapsed_s, lr, train_loss, val_loss
    metrics.json                                         the summary, with the final val loss
    loss_curve.png                                       the picture of metrics.csv

`Transformer.from_pretrained(out_dir)` and `CharTokenizer.from_pretrained(out_dir)` load it.
Every file is written atomically (tensor_io.atomic_write): a run stopped while saving keeps
the previous good file.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .config import ModelArgs
from .model import Transformer
from .runtime import Distributed, flops_per_token, machine_load, peak_flops
from .tensor_io import atomic_write
from .tokenizer import CharTokenizer

STATE_FILE = "train_state.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
LOSS_PNG = "loss_curve.png"
CSV_FIELDS = ["step", "elapsed_s", "lr", "train_loss", "val_loss"]


# ---------------------------------------------------------------------------- training state
def save_checkpoint(out_dir: Path, model: Transformer, optimizer: torch.optim.Optimizer,
                    scaler, tokenizer: CharTokenizer, config: dict, step: int,
                    train_time: float, batch_gen: torch.Generator) -> None:
    """Weights (safetensors), tokenizer, then the training state last: `train_state.pt` names
    the step its weights belong to, and resuming checks that they match."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    state = {
        "step": step,
        "train_time": train_time,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "batch_generator": batch_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": config,
        "weights_sha": weights_fingerprint(model),
    }
    with atomic_write(out_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)


def weights_fingerprint(model: torch.nn.Module) -> float:
    """A cheap checksum of the weights, to detect a state file paired with other weights."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def load_train_state(out_dir: Path) -> dict:
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (was the run saved?)")
    # weights_only: a checkpoint is data, never code to execute
    return torch.load(path, map_location="cpu", weights_only=True)


def check_state_matches(out_dir: Path, model: torch.nn.Module, state: dict) -> None:
    saved = state["weights_sha"]
    if abs(weights_fingerprint(model) - saved) > 1e-6 * (1 + abs(saved)):
        raise ValueError(f"{out_dir}: {STATE_FILE} does not belong to model.safetensors "
                         "(a save was interrupted between the two files); cannot resume")


# ---------------------------------------------------------------------------- metrics
def read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """The rows of an earlier run up to the step it resumes from."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to_step]


def write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def add_train_row(rows: list[dict], step: int, train_time: float, lr: float,
                  loss: float) -> None:
    rows.append({"step": step, "elapsed_s": round(train_time, 3), "lr": lr,
                 "train_loss": round(loss, 6), "val_loss": ""})


def add_val_row(rows: list[dict], step: int, train_time: float, lr: float, val: float) -> None:
    """The validation loss goes on the step's row, or on a row of its own."""
    if rows and int(rows[-1]["step"]) == step:
        rows[-1]["val_loss"] = round(val, 6)
    else:
        rows.append({"step": step, "elapsed_s": round(train_time, 3), "lr": lr,
                     "train_loss": "", "val_loss": round(val, 6)})


def plot_loss_curve(rows: list[dict], path: Path, title: str = "") -> None:
    """loss_curve.png: training loss (logged steps) and validation loss, against steps."""
    from matplotlib.figure import Figure  # no pyplot: works headless and inside notebooks

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"] != ""]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"] != ""]
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


# ---------------------------------------------------------------------------- summary
class Clock:
    """Wall time, CPU time and machine load from the start of a run to `figures()`."""

    def __init__(self) -> None:
        self.load_before = machine_load()
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def figures(self) -> dict:
        wall = time.perf_counter() - self.wall0
        util = (time.process_time() - self.cpu0) / max(wall, 1e-9) / torch.get_num_threads()
        return {"wall_time_s": round(wall, 2), "cpu_utilization": round(util, 3),
                "load_before": self.load_before, "load_after": machine_load()}


def summary(config: dict, args: ModelArgs, model: Transformer, clock: Clock,
            device: torch.device, dtype: torch.dtype, dist: Distributed, *, steps: int,
            train_time: float, final_val_loss: float, tokens_per_s: float,
            interrupted: bool) -> dict:
    """metrics.json: the figures of the run and everything needed to reproduce them."""
    s = {"preset": config["preset"], "parameters": model.num_parameters(), "steps": steps,
         "train_time_s": round(train_time, 2), "final_val_loss": final_val_loss,
         "tokens_per_s": round(tokens_per_s, 1), "device": str(device),
         "dtype": str(dtype).removeprefix("torch."), "world_size": dist.world_size,
         "threads": torch.get_num_threads(), **clock.figures(), "interrupted": interrupted,
         "model_args": args.to_dict(), "train_config": config, "torch": torch.__version__,
         "python": sys.version.split()[0]}
    # a busy machine: our threads did not get the cores they asked for (the load average
    # is reported too, but it also counts this process's own previous runs)
    s["contended"] = bool(device.type == "cpu" and s["cpu_utilization"] < 0.85)
    peak = peak_flops(device)
    if peak:
        s["mfu"] = tokens_per_s * flops_per_token(args, args.max_seq_len) / peak
    if dist.enabled:
        s["rank_checksums"] = rank_checksums(model, device)
    return s


def write_summary(out_dir: Path, s: dict) -> None:
    with atomic_write(Path(out_dir) / METRICS_JSON) as tmp:
        tmp.write_text(json.dumps(s, indent=2))


def rank_checksums(model: torch.nn.Module, device: torch.device) -> list[float]:
    """Every rank's weight checksum: equal when DDP kept the replicas in sync."""
    import torch.distributed as dist
    mine = torch.tensor([weights_fingerprint(model)], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [t.item() for t in gathered]


# ---------------------------------------------------------------------------- progress bar
class ProgressBar:
    """tqdm, filling with the clock when the run has a time budget, else with the steps.

    The text bar (tqdm.std, on stderr), not the notebook widget of tqdm.auto: a widget is
    stored in a notebook as its initial state ("0% 0/120 s") wherever no widget state is saved
    (GitHub, nbviewer), while text is stored as it last read."""

    def __init__(self, enabled: bool, time_budget: Optional[float], max_steps: int,
                 step: int, train_time: float):
        self.bar, self.time_budget, self._t_last = None, time_budget, train_time
        if not enabled:
            return
        from tqdm.std import tqdm
        if time_budget is not None:
            self.bar = tqdm(total=round(time_budget), initial=round(train_time), unit="s",
                            desc="training",
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}")
        else:
            self.bar = tqdm(total=max_steps, initial=step, unit="step", desc="training")

    def update(self, step: int, train_time: float, loss: float, tokens: int) -> None:
        """`tokens`: the tokens trained on since the previous update."""
        if self.bar is None:
            return
        done = round(train_time) if self.time_budget is not None else step
        self.bar.n = min(done, self.bar.total)
        tok_s = tokens / max(train_time - self._t_last, 1e-9)
        self._t_last = train_time
        self.bar.set_postfix_str(f"step {step}, loss {loss:.3f}, {tok_s:,.0f} tok/s",
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
