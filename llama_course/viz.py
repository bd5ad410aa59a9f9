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
