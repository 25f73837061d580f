"""What a run shows while it trains and when it ends: the progress bar, the loss and accuracy
curves, the final line.

tqdm and matplotlib (the ``train`` extra) are imported only where used; nothing here touches
the numbers ``fit`` computes.
"""
from __future__ import annotations

import numpy as np

__all__ = ["progress_bar", "postfix", "plot_curves", "final_line"]


class _NoBar:
    def update(self, n): pass
    def set_postfix_str(self, s, refresh=True): pass
    def close(self): pass


def progress_bar(show: bool, total: int, initial: int):
    """A tqdm bar over ``total`` steps on stderr, starting at ``initial`` (a resumed run); one
    that shows nothing where ``show`` is false.  Either has ``update``, ``set_postfix_str``
    and ``close``."""
    if not show:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


def postfix(epoch: int, epochs: int, train_loss, history: list[dict]) -> str:
    """The bar's postfix: ``epoch 2/10, loss 0.1234, train acc 0.987, test acc 0.975``."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    if train_loss is not None:
        parts.append(f"loss {train_loss:.4f}")
    if history:
        h = history[-1]
        if h["train_accuracy"] is not None:
            parts.append(f"train acc {h['train_accuracy']:.3f}")
        if h["test_accuracy"] is not None:
            parts.append(f"test acc {h['test_accuracy']:.3f}")
    return ", ".join(parts)


def plot_curves(history: list[dict], path, title: str = "") -> None:
    """Loss and accuracy per epoch (train and test) to a PNG, with matplotlib's Agg canvas.
    ``path``: a file name or a binary file object (``fit`` writes through a temporary file).
    Non-finite values are drawn as gaps."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    losses = [_finite_or_nan(h.get(k)) for h in history for k in ("train_loss", "test_loss")]
    for key, label, ax in (("train_loss", "train (epoch mean)", ax_loss),
                           ("test_loss", "test", ax_loss),
                           ("train_accuracy", "train", ax_acc),
                           ("test_accuracy", "test", ax_acc)):
        values = [_finite_or_nan(h.get(key)) for h in history]
        if not all(np.isnan(values)):
            ax.plot(epochs, values, marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss",    # log where it can be
                yscale="log" if any(v > 0 for v in losses) else "linear")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100, format="png")


def _finite_or_nan(v) -> float:
    """A history value to plot: ``None`` or non-finite as NaN (a gap)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return np.nan
    return v if np.isfinite(v) else np.nan


def final_line(s: dict, out) -> str:
    """The line ``fit`` prints at the end, from its ``summary``: the test accuracy (or the
    training loss), epochs, steps, seconds and where the outputs are."""
    parts = []
    if s["test_accuracy"] is not None:
        parts.append(f"test accuracy {100 * s['test_accuracy']:.2f}% (loss {s['test_loss']:.4f})")
    elif s["train_loss"] is not None:
        parts.append(f"train loss {s['train_loss']:.4f}")
    parts.append(f"after {s['epochs']} epochs ({s['steps']} steps) in {s['seconds']:.1f} s")
    line = ", ".join(parts)
    return line + (f"; outputs in {out}" if out is not None else "")
