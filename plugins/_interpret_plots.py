"""Figures for the interpretability maps (matplotlib, Agg backend, PNG).

Display conventions (paper §5): NISP bands as RGB with red = H, green = J,
blue = Y; VIS log-scaled; occlusion maps on a diverging colour map centred on
zero with blue where occluding lowers P(lens) (a lens feature) and red where
it raises it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["rgb_image", "vis_log", "display_image", "plot_occlusion", "plot_gradcam", "plot_generated",
           "plot_kav_grid"]

_LOG_A = 1000.0


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def vis_log(img: np.ndarray) -> np.ndarray:
    """Log stretch of an image scaled to [0, 1]: log(1 + a x) / log(1 + a), a = 1000."""
    x = np.clip(np.asarray(img, dtype=float), 0, None)
    hi = x.max()
    x = x / hi if hi > 0 else x
    return np.log1p(_LOG_A * x) / np.log1p(_LOG_A)


def rgb_image(x: np.ndarray, bands: tuple[str, ...]) -> np.ndarray | None:
    """(S, S, 3) RGB of a (C, S, S) input with red = H, green = J, blue = Y; None without NISP bands.

    A model reading only some NISP bands shows the missing ones as black.
    """
    idx = {b: i for i, b in enumerate(bands)}
    if not any(b in idx for b in ("Y", "J", "H")):
        return None
    planes = [np.clip(x[idx[b]], 0, 1) if b in idx else np.zeros(x.shape[1:]) for b in ("H", "J", "Y")]
    return np.stack(planes, axis=-1)


def display_image(x: np.ndarray, bands: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """The best single view of an input: log VIS if present, else the NISP RGB."""
    if "VIS" in bands:
        return vis_log(x[bands.index("VIS")]), "VIS (log)"
    return rgb_image(x, bands), "RGB = H, J, Y"


def _panels(plt, n: int, size: float = 3.0):
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.4), squeeze=False)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    _plt().close(fig)
    return path


def _input_panels(axes, x, bands) -> int:
    """Draw the RGB and the log VIS panels that exist; return how many were drawn."""
    k = 0
    rgb = rgb_image(x, bands)
    if rgb is not None:
        axes[k].imshow(rgb, origin="lower")
        axes[k].set_title("RGB = H, J, Y", fontsize=9)
        k += 1
    if "VIS" in bands:
        axes[k].imshow(vis_log(x[bands.index("VIS")]), origin="lower", cmap="gray")
        axes[k].set_title("VIS (log)", fontsize=9)
        k += 1
    return k


def _n_input_panels(bands) -> int:
    return int(any(b in bands for b in ("Y", "J", "H"))) + int("VIS" in bands)


def plot_occlusion(x: np.ndarray, pixel_map: np.ndarray, bands: tuple[str, ...], path, *, title: str = "",
                   label: str = "ΔP(lens)") -> Path:
    """Input panels, then the occlusion map over the input (blue = lens feature, centred on 0)."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = _panels(plt, _n_input_panels(bands) + 1)
    k = _input_panels(axes, x, bands)
    bg, _ = display_image(x, bands)
    ax = axes[k]
    ax.imshow(bg if bg.ndim == 3 else bg, origin="lower", cmap="gray")
    m = float(np.abs(pixel_map).max()) or 1e-12
    im = ax.imshow(pixel_map, origin="lower", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -m, m), alpha=0.75)
    ax.set_title(f"occlusion {label}\nblue = lens feature", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_gradcam(x: np.ndarray, result: dict, bands: tuple[str, ...], path, *, threshold: float = 0.05,
                 title: str = "") -> Path:
    """Input, Grad-CAM heat map, Guided Grad-CAM map, and the input where the map >= threshold."""
    plt = _plt()
    fig, axes = _panels(plt, _n_input_panels(bands) + 3)
    k = _input_panels(axes, x, bands)
    bg, _ = display_image(x, bands)
    axes[k].imshow(result["gradcam"], origin="lower", cmap="inferno", vmin=0, vmax=1)
    axes[k].set_title("Grad-CAM", fontsize=9)
    axes[k + 1].imshow(result["map"], origin="lower", cmap="gray", vmin=0, vmax=1)
    axes[k + 1].set_title("Guided Grad-CAM", fontsize=9)
    keep = result["map"] >= threshold
    shown = np.where(keep[..., None], bg, 0.0) if bg.ndim == 3 else np.where(keep, bg, 0.0)
    axes[k + 2].imshow(shown, origin="lower", cmap=None if bg.ndim == 3 else "gray")
    axes[k + 2].set_title(f"input where map ≥ {threshold:g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_generated(img: np.ndarray, bands: tuple[str, ...], path, *, title: str = "",
                   history: list[float] | None = None, history_label: str = "P(target)") -> Path:
    """A generated input (CGI, Deep Dream, GKI) as RGB / log VIS, with its optimisation history."""
    plt = _plt()
    fig, axes = _panels(plt, _n_input_panels(bands) + (1 if history else 0))
    k = _input_panels(axes, img, bands)
    if history:
        ax = axes[k]
        from matplotlib.ticker import AutoLocator

        ax.plot(history)
        ax.xaxis.set_major_locator(AutoLocator())
        ax.yaxis.set_major_locator(AutoLocator())
        ax.set_xlabel("update", fontsize=8)
        ax.set_title(history_label, fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_kav_grid(rows: list[dict], images: dict[int, np.ndarray], bands: tuple[str, ...], path, *,
                  max_kernels: int = 12, title: str = "") -> Path:
    """Grid of the top-k images per kernel: one row per (layer, kernel), ranks left to right."""
    plt = _plt()
    kernels = sorted({(r["layer"], r["kernel"]) for r in rows})[:max_kernels]
    k = max((r["rank"] for r in rows), default=1)
    fig, axes = plt.subplots(len(kernels) or 1, k, figsize=(1.3 * k, 1.35 * max(len(kernels), 1)), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, key in enumerate(kernels):
        axes[i, 0].set_ylabel(f"[{key[0]}, {key[1]}]", fontsize=7)
        for r in rows:
            if (r["layer"], r["kernel"]) == key and r["object_id"] in images:
                view, _ = display_image(images[r["object_id"]], bands)
                axes[i, r["rank"] - 1].imshow(view, origin="lower", cmap=None if view.ndim == 3 else "gray")
                axes[i, r["rank"] - 1].set_title(f"{r['kav']:.2f}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
