"""Figures of a fitted OU-T-SNE model (matplotlib, imported only here and only when called)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_model"]


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib lives in the `training` extra
        raise ImportError(f"plotting needs matplotlib: pip install 'lensengine[training]' ({exc})") from exc
    return Figure, FigureCanvasAgg


def plot_model(model, path, *, title: str | None = None, max_points: int = 200_000,
               highlight=None) -> Path:
    """Write a two-panel PNG: the training embedding coloured by label, and the grid of lens fractions.

    Left: lenses blue, non-lenses red (the paper's Fig. 9 colours), drawn in random order so neither
    class hides the other.  Right: cell values (0 red -> 1 blue), empty training cells that were
    filled from their neighbours drawn paler, and the 0.5 contour.  ``highlight`` is an optional
    ``(x0, x1, y0, y1)`` box drawn on both panels (``lensengine tsne inspect``).
    """
    Figure, FigureCanvasAgg = _figure_class()
    path = Path(path)
    emb, y = model.embedding_, model.y_train_
    order = np.random.default_rng(0).permutation(len(emb))[:max_points]
    x0, x1, y0, y1 = model.bounds_

    fig = Figure(figsize=(13, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    colours = np.where(y[order] == 1, "#1f4e9c", "#c0392b")
    size = max(0.3, min(6.0, 3e4 / max(len(order), 1)))
    ax1.scatter(emb[order, 0], emb[order, 1], c=colours, s=size, linewidths=0, rasterized=True)
    ax1.scatter([], [], c="#1f4e9c", s=12, label=f"lens ({int((y == 1).sum())})")
    ax1.scatter([], [], c="#c0392b", s=12, label=f"non-lens ({int((y == 0).sum())})")
    ax1.legend(loc="upper right", fontsize=8, markerscale=1.5)
    ax1.set_title("t-SNE embedding of the seven models' P(lens)")

    grid = model.grid_.T  # imshow wants [row=y, col=x]
    im = ax2.imshow(grid, origin="lower", extent=(x0, x1, y0, y1), cmap="RdBu", vmin=0, vmax=1,
                    interpolation="nearest", aspect="auto")
    filled = ~model.defined_.T
    veil = np.zeros(filled.shape + (4,))
    veil[filled] = (1.0, 1.0, 1.0, 0.5)
    ax2.imshow(veil, origin="lower", extent=(x0, x1, y0, y1), interpolation="nearest", aspect="auto")
    g = model.grid_.shape[0]
    xs = x0 + (np.arange(g) + 0.5) * (x1 - x0) / g
    ys = y0 + (np.arange(g) + 0.5) * (y1 - y0) / g
    if np.nanmin(grid) < 0.5 < np.nanmax(grid):
        ax2.contour(xs, ys, grid, levels=[0.5], colors="k", linewidths=0.6)
    fig.colorbar(im, ax=ax2, label="cell value: fraction of lenses (OU-T-SNE P(lens))")
    ax2.set_title(f"{g}x{g} grid ({int(model.defined_.sum())} cells hold training objects; "
                  "pale: filled from neighbours)", fontsize=9)
    for ax in (ax1, ax2):
        mx, my = 0.02 * (x1 - x0), 0.02 * (y1 - y0)
        ax.set_xlim(x0 - mx, x1 + mx)
        ax.set_ylim(y0 - my, y1 + my)
        ax.set_xlabel("t-SNE x")
        ax.set_ylabel("t-SNE y")
        if highlight is not None:
            hx0, hx1, hy0, hy1 = highlight
            ax.plot([hx0, hx1, hx1, hx0, hx0], [hy0, hy0, hy1, hy1, hy0], color="orange", lw=1.2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
