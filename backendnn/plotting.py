"""PNG plots of training: loss and metric curves, layer statistics, first-layer weights.

matplotlib is optional (`pip install 'backendnn[plot]'`). Figures are built with
matplotlib's object API (`matplotlib.figure.Figure`), never pyplot, so plotting
changes no global state and works without a display. Every function returns the
Figure and writes it to `path` as PNG when one is given.
"""
from __future__ import annotations

import math
import os

from .backends import to_host

__all__ = ["plot_history", "plot_layer_stats", "plot_weight_images"]


def _figure(**kw):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        msg = "plotting needs matplotlib: pip install 'backendnn[plot]'"
        raise ImportError(msg) from e
    return Figure(**kw)


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _save(fig, path):
    """Write `fig` to `path`; under data-parallel training (`backendnn.distributed`),
    only rank 0 writes."""
    if path is not None and _is_main():
        fig.savefig(os.fspath(path), dpi=100)
    return fig


def _is_main() -> bool:
    from .distributed import is_main

    return is_main()


def _numbers(values) -> list:
    return [math.nan if v is None else float(v) for v in values]


def plot_history(history, path=None, *, title: str | None = None):
    """Loss curves (every key ending in "loss") beside the metrics (accuracy,
    val_accuracy, ...; "lr" gets its own panel), against the epoch. A column with no
    finite value gets no panel.

    Args:
        history: a `History` (a list of dicts with an "epoch" key).
        path: the PNG to write, or None to only return the Figure.
    """
    rows = list(history)
    if not rows:
        msg = "plot_history: the history is empty; train at least one epoch first"
        raise ValueError(msg)
    keys = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and k != "epoch"
                 and isinstance(v, (int, float)) and not isinstance(v, bool)]
    keys = [k for k in keys if k != "skipped" and any(
        row.get(k) is not None and math.isfinite(row[k]) for row in rows)]  # no empty panel
    panels = [[k for k in keys if k.endswith("loss")],
              [k for k in keys if not k.endswith("loss") and k != "lr"],
              [k for k in keys if k == "lr"]]
    panels = [p for p in panels if p]
    epochs = [row.get("epoch", i) for i, row in enumerate(rows)]
    fig = _figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    for n, keys_ in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        for key in keys_:
            ax.plot(epochs, _numbers(row.get(key) for row in rows), marker=".", label=key)
        _epoch_axis(ax)
        ax.set_ylabel("loss" if keys_[0].endswith("loss") else ", ".join(keys_))
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


_STATS = (
    ("out_std", "output std", False),
    ("grad_rms", "RMS of dL/d(output)", True),
    ("weights_grad_norm", "norm of weight gradient", True),
    ("dead_fraction", "dead ReLU fraction", False),
)


def plot_layer_stats(stats, path=None):
    """One panel per statistic of a `LayerStats` (output std, output-gradient RMS,
    weight-gradient norm, dead ReLU fraction), one line per layer, against the epoch."""
    rows = list(getattr(stats, "rows", stats))
    if not rows:
        msg = "plot_layer_stats: nothing recorded; train with the LayerStats callback first"
        raise ValueError(msg)
    layers = sorted({(r["layer"], r["kind"]) for r in rows})
    panels = [(key, label, log) for key, label, log in _STATS if any(key in r for r in rows)]
    cols = min(2, len(panels))
    fig = _figure(figsize=(5 * cols, 3.4 * math.ceil(len(panels) / cols)), layout="constrained")
    for n, (key, label, log) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / cols), cols, n + 1)
        for i, kind in layers:
            mine = [r for r in rows if r["layer"] == i and key in r]
            if mine:
                ax.plot([r["epoch"] for r in mine], [r[key] for r in mine], marker=".",
                        label=f"{i} {kind}")
        if log and all(r[key] > 0 for r in rows if key in r):
            ax.set_yscale("log")
        ax.set_title(label)
        _epoch_axis(ax)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_weight_images(weights, path=None, *, image_shape=(8, 8), max_images: int = 64,
                       title: str | None = None):
    """Each column of a first-layer weight matrix as an image: what each hidden unit
    looks for in the input.

    Args:
        weights: (n_inp, n_units) array of any backend, n_inp = prod(image_shape)
            (`model.layers[0].weights`).
        image_shape: (height, width) of one input image, e.g. (8, 8) for digits.
        max_images: show at most this many units.

    Each image has its own symmetric colour scale: red positive, blue negative.
    """
    w = to_host(weights)
    h, wd = image_shape
    if w.ndim != 2 or w.shape[0] != h * wd:
        msg = (f"plot_weight_images: expected weights of shape ({h * wd}, n_units) for "
               f"{h}x{wd} images, got {tuple(w.shape)}")
        raise ValueError(msg)
    n = min(w.shape[1], max_images)
    cols = 16 if n > 64 else min(n, 8)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(1.2 * cols, 1.2 * rows + (0.4 if title else 0)), layout="constrained")
    for j in range(n):
        ax = fig.add_subplot(rows, cols, j + 1)
        img = w[:, j].reshape(h, wd)
        lim = float(abs(img).max()) or 1.0
        ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(j), fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
