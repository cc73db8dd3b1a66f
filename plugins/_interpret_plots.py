"""Figures for the interpretability maps (matplotlib, Agg backend, PNG).

Display conventions (paper §5, made readable): NISP bands as a Lupton colour composite with red = H,
green = J, blue = Y; VIS twice, under a noise-scaled asinh stretch and with the lens light removed (the
image minus a smooth elliptical model of the galaxy), because a faint arc beside a bright lens galaxy
disappears under a log stretch scaled to the galaxy's core.  The stretches are the gallery's
(:mod:`lensengine.plugins._gallery_images`).  Maps are drawn over the image, each with a colour bar: occlusion
on a diverging colour map centred on zero with blue where occluding lowers P(lens) (a lens feature) and red
where it raises it; Grad-CAM and guided Grad-CAM on ``inferno`` from 0 to 1.  A map that is zero everywhere
(nothing to explain: P(lens) saturated at 0 or 1) says so on the panel instead of showing a blank square.
Panels are 4.5 inches at 110 dpi (about 400 px of image each after the colour bars), titles 11 pt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensengine.plugins import _gallery_images as _views

__all__ = ["rgb_image", "vis_asinh", "vis_lens_subtracted", "display_image", "plot_occlusion", "plot_gradcam",
           "plot_generated", "plot_kav_grid", "ZERO_NOTE"]

#: field every network input covers (arcsec), whatever its stamp
_FIELD_ARCSEC = 20.0
#: panel side (inches) and resolution of the saved figures
_PANEL_INCHES = 4.5
_DPI = 110
_TITLE = 11
#: what a panel says instead of showing a map that is zero everywhere
ZERO_NOTE = "map is zero everywhere:\nnothing to explain\n(P(lens) saturated at 0 or 1)"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def vis_asinh(img: np.ndarray) -> np.ndarray:
    """VIS under the noise-scaled asinh stretch, in [0, 1]."""
    return _views.asinh_stretch(img)


def vis_lens_subtracted(img: np.ndarray) -> np.ndarray:
    """VIS minus a smooth elliptical model of the central galaxy (arcs stay), in [0, 1]."""
    return _views.lens_subtracted(img)


def rgb_image(x: np.ndarray, bands: tuple[str, ...]) -> np.ndarray | None:
    """(S, S, 3) Lupton composite of a (C, S, S) input, red = H, green = J, blue = Y; None without NISP bands.

    A model reading only some NISP bands shows the missing ones as black.
    """
    idx = {b: i for i, b in enumerate(bands)}
    if not any(b in idx for b in ("Y", "J", "H")):
        return None
    return _views.lupton_rgb(*[x[idx[b]] if b in idx else None for b in ("H", "J", "Y")])


def display_image(x: np.ndarray, bands: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """The best single view of an input: asinh VIS if present, else the NISP composite."""
    if "VIS" in bands:
        return vis_asinh(x[bands.index("VIS")]), "VIS (asinh)"
    return rgb_image(x, bands), "RGB = H, J, Y"


def _grey(view: np.ndarray) -> np.ndarray:
    """A view as grey levels (the luminance of a colour one), the background of an overlay."""
    return view.mean(axis=-1) if view.ndim == 3 else view


def _panels(plt, n: int, size: float = _PANEL_INCHES):
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.6), squeeze=False)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes[0]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def _input_panels(axes, x, bands) -> int:
    """Draw the colour composite, the asinh VIS and the lens-light-subtracted VIS that exist; return how many."""
    k = 0
    rgb = rgb_image(x, bands)
    if rgb is not None:
        axes[k].imshow(rgb, origin="lower")
        axes[k].set_title("NISP: red H, green J, blue Y", fontsize=_TITLE)
        k += 1
    if "VIS" in bands:
        vis = x[bands.index("VIS")]
        axes[k].imshow(vis_asinh(vis), origin="lower", cmap="gray", vmin=0, vmax=1)
        axes[k].set_title("VIS (asinh)", fontsize=_TITLE)
        axes[k + 1].imshow(vis_lens_subtracted(vis), origin="lower", cmap="gray", vmin=0, vmax=1)
        axes[k + 1].set_title("VIS \u2212 lens light model", fontsize=_TITLE)
        k += 2
    return k


def _n_input_panels(bands) -> int:
    return int(any(b in bands for b in ("Y", "J", "H"))) + 2 * int("VIS" in bands)


def _zero_note(ax) -> None:
    ax.text(0.5, 0.5, ZERO_NOTE, transform=ax.transAxes, ha="center", va="center", fontsize=_TITLE,
            color="white", bbox={"facecolor": "black", "alpha": 0.7, "edgecolor": "white"})


def _overlay(fig, ax, background, heat, *, cmap, norm, label, alpha=0.85):
    """``heat`` over the grey ``background`` with a labelled colour bar.

    Each pixel's opacity grows with ``|heat|`` (up to ``alpha`` at the map's largest magnitude), so the
    image stays visible where the map is near zero and the map's structure is what catches the eye.
    """
    import matplotlib.cm as cm

    heat = np.asarray(heat, dtype=float)
    ax.imshow(_grey(background), origin="lower", cmap="gray", vmin=0, vmax=1)
    top = float(np.abs(heat).max())
    if top > 0:
        ax.imshow(heat, origin="lower", cmap=cmap, norm=norm, alpha=alpha * np.abs(heat) / top)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=_TITLE - 1)
    bar.ax.tick_params(labelsize=_TITLE - 2)
    if top == 0:
        _zero_note(ax)


def plot_occlusion(x: np.ndarray, pixel_map: np.ndarray, bands: tuple[str, ...], path, *, title: str = "",
                   label: str = "ΔP(lens)") -> Path:
    """Input panels, then the occlusion map over the input (blue = lens feature, centred on 0, colour bar)."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = _panels(plt, _n_input_panels(bands) + 1)
    k = _input_panels(axes, x, bands)
    bg, _ = display_image(x, bands)
    m = float(np.abs(pixel_map).max()) or 1e-12
    _overlay(fig, axes[k], bg, pixel_map, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -m, m), label=label)
    axes[k].set_title(f"occlusion {label}\nblue = lens feature", fontsize=_TITLE)
    if title:
        fig.suptitle(title, fontsize=_TITLE + 1)
    return _save(fig, path)


def plot_gradcam(x: np.ndarray, result: dict, bands: tuple[str, ...], path, *, threshold: float = 0.05,
                 title: str = "") -> Path:
    """Input panels, Grad-CAM and guided Grad-CAM over the input (colour bars), the input where map >= threshold."""
    plt = _plt()
    from matplotlib.colors import Normalize

    fig, axes = _panels(plt, _n_input_panels(bands) + 3)
    k = _input_panels(axes, x, bands)
    bg, _ = display_image(x, bands)
    _overlay(fig, axes[k], bg, np.asarray(result["gradcam"]), cmap="inferno", norm=Normalize(0, 1),
             label="Grad-CAM (relative)")
    axes[k].set_title("Grad-CAM", fontsize=_TITLE)
    _overlay(fig, axes[k + 1], bg, np.asarray(result["map"]), cmap="inferno", norm=Normalize(0, 1),
             label="guided Grad-CAM (relative)")
    axes[k + 1].set_title("Guided Grad-CAM", fontsize=_TITLE)
    keep = np.asarray(result["map"]) >= threshold
    shown = np.where(keep[..., None], bg, 0.0) if bg.ndim == 3 else np.where(keep, bg, 0.0)
    axes[k + 2].imshow(shown, origin="lower", cmap=None if bg.ndim == 3 else "gray", vmin=0, vmax=1)
    axes[k + 2].set_title(f"input where map ≥ {threshold:g}", fontsize=_TITLE)
    if not keep.any():
        _zero_note(axes[k + 2])
    if title:
        fig.suptitle(title, fontsize=_TITLE + 1)
    return _save(fig, path)


def plot_generated(img: np.ndarray, bands: tuple[str, ...], path, *, title: str = "",
                   history: list[float] | None = None, history_label: str = "P(target)") -> Path:
    """A generated input (CGI, Deep Dream, GKI) as RGB / asinh VIS, with its optimisation history."""
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
