"""Plot and widget helpers shared by the notebooks.

`explore(fn, **controls)` is the one entry point for interactive explorers: in Jupyter or
Colab it shows ipywidgets sliders that re-draw `fn`; where no widget front end can exist
(ipywidgets missing, a static render, CI running the notebook) it draws `fn` once at the
controls' default values, so the notebook still shows a figure.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Sequence

STATIC_ENV = "LLAMA_COURSE_STATIC"  # set to 1 to force static figures (CI sets it)


def widgets_available() -> bool:
    """True when sliders can be shown: ipywidgets imports, a kernel runs, not forced static."""
    if os.environ.get(STATIC_ENV, "") not in ("", "0"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")


def _default(control: Any) -> Any:
    """The starting value of a control given the way ipywidgets.interact accepts it."""
    if isinstance(control, tuple):  # (min, max[, step]) -> the middle, like interact does
        lo, hi = control[0], control[1]
        mid = (lo + hi) / 2
        return type(lo)(mid) if isinstance(lo, int) and isinstance(hi, int) else mid
    if isinstance(control, (list, dict)):  # options -> the first one
        return list(control.values())[0] if isinstance(control, dict) else control[0]
    if hasattr(control, "value"):  # an ipywidgets widget
        return control.value
    return control


def explore(fn: Callable[..., Any], **controls: Any) -> None:
    """Sliders for `fn`'s keyword arguments when a widget front end exists, else one figure
    drawn where the sliders would start (the function's default, as ipywidgets does)."""
    if widgets_available():
        import ipywidgets
        ipywidgets.interact(fn, **controls)
    else:
        defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        fn(**{name: defaults.get(name, _default(c)) for name, c in controls.items()})


def heatmap(ax, matrix, title: str = "", xlabel: str = "key position",
            ylabel: str = "query position", cmap: str = "viridis",
            ticks: Sequence[str] | None = None):
    """An attention-style matrix with labelled axes and a colour bar."""
    m = matrix.detach().float().cpu().numpy() if hasattr(matrix, "detach") else matrix
    im = ax.imshow(m, cmap=cmap, aspect="auto")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def draw_llama(args=None, ax=None):
    """The Llama 3 architecture as boxes and arrows, labelled with the sizes of `args`.

    Drawn by code (no image file to ship): tokens -> embeddings -> n_layers x [RMSNorm ->
    grouped-query attention with RoPE -> add -> RMSNorm -> SwiGLU -> add] -> RMSNorm -> output
    head. Each box names the notebook that builds it. Defaults to Llama 3 8B.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .config import ModelArgs

    a = ModelArgs() if args is None else args
    if ax is None:
        _, ax = plt.subplots(figsize=(10.5, 11))
    ax.set_xlim(0, 11.8)
    ax.set_ylim(0, 13.4)
    ax.axis("off")
    cx, w = 5.2, 5.0  # centre line and width of the main boxes

    def box(y, text, color, note="", h=0.62):
        ax.add_patch(FancyBboxPatch((cx - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04",
                                    facecolor=color, edgecolor="black", linewidth=1.1))
        ax.text(cx, y, text, ha="center", va="center", fontsize=10)
        if note:
            ax.text(cx + w / 2 + 0.15, y, note, ha="left", va="center", fontsize=8.5,
                    color="dimgray")

    def arrow(y0, y1, x0=cx, x1=cx, style="-|>"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14,
                                     linewidth=1.2, color="black", shrinkA=0, shrinkB=0))

    def plus(y):
        ax.add_patch(plt.Circle((cx, y), 0.22, facecolor="white", edgecolor="black", lw=1.2))
        ax.text(cx, y, "+", ha="center", va="center", fontsize=13)

    def residual(y_from, y_to):  # the skip connection: out to the left, up, into the +
        xl = cx - w / 2 - 0.55
        ax.plot([cx, xl, xl], [y_from, y_from, y_to], color="tab:blue", lw=1.6)
        ax.add_patch(FancyArrowPatch((xl, y_to), (cx - 0.22, y_to), arrowstyle="-|>",
                                     mutation_scale=14, color="tab:blue", lw=1.6,
                                     shrinkA=0, shrinkB=0))

    # bottom to top, like the original Transformer figure
    ax.text(cx, 0.25, "token ids  (B, T)", ha="center", va="center", fontsize=10)
    arrow(0.45, 0.85)
    box(1.15, f"Token embedding  {a.vocab_size:,} x {a.dim:,}", "#dddddd",
        "a lookup table (06)")
    arrow(1.46, 2.15)

    # one transformer block, repeated n_layers times
    ax.add_patch(FancyBboxPatch((cx - w / 2 - 1.0, 1.95), w + 5.0, 7.6,
                                boxstyle="round,pad=0.05", facecolor="none",
                                edgecolor="gray", linestyle="--", linewidth=1.2))
    ax.text(cx - w / 2 - 0.9, 9.35, f"x {a.n_layers} blocks  (06)", ha="left",
            va="center", fontsize=11, fontweight="bold", color="dimgray")
    box(2.75, "RMSNorm", "#f6d7a7", "attention_norm (02)")
    arrow(3.06, 3.59)
    box(4.05, "Grouped-query attention\nRoPE on queries and keys", "#a7c7e7",
        f"{a.n_heads} query heads, {a.kv_heads} K/V heads,\nhead_dim {a.head_dim}"
        f"  (03 RoPE, 04 attention)", h=0.9)
    arrow(4.5, 5.03)
    plus(5.25)
    residual(2.2, 5.25)
    arrow(5.47, 6.0)
    box(6.3, "RMSNorm", "#f6d7a7", "ffn_norm (02)")
    arrow(6.61, 7.14)
    box(7.5, "SwiGLU feed-forward", "#b9e3b0",
        f"{a.dim:,} -> {a.ffn_hidden_dim:,} -> {a.dim:,}  (05)")
    arrow(7.81, 8.48)
    plus(8.7)
    residual(5.75, 8.7)
    arrow(8.92, 10.25)

    box(10.55, "RMSNorm", "#f6d7a7", "final norm (02)")
    arrow(10.86, 11.44)
    box(11.75, f"Output head  {a.dim:,} -> {a.vocab_size:,}", "#dddddd",
        "tied to the embedding (06)" if a.tie_word_embeddings else "its own matrix (06)")
    arrow(12.06, 12.6)
    ax.text(cx, 12.85, "logits  (B, T, vocab_size): a score for every next token",
            ha="center", va="center", fontsize=10)
    ax.text(cx - w / 2 - 0.6, 3.65, "residual\nstream", ha="right", va="center",
            fontsize=8.5, color="tab:blue")
    return ax
