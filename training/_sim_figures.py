"""Example figures of simulated cutouts: VIS log-scaled and NISP as RGB (red = H, green = J, blue = Y)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["rgb_nisp", "log_vis", "plot_examples"]


def log_vis(img: np.ndarray) -> np.ndarray:
    """Log stretch of a VIS cutout to [0, 1] (floor at the 1st percentile, top at the maximum)."""
    lo = np.percentile(img, 1.0)
    x = np.log10(np.clip(img - lo, 0, None) + 1e-3 * (img.max() - lo) + 1e-12)
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


def rgb_nisp(nisp: np.ndarray) -> np.ndarray:
    """(66, 66, 3) RGB from (3, 66, 66) Y, J, H: red = H, green = J, blue = Y; asinh stretch, common scale."""
    y, j, h = nisp
    stack = np.stack([h, j, y], axis=-1)
    scale = np.percentile(stack, 99.5)
    scale = scale if scale > 0 else 1.0
    return np.clip(np.arcsinh(np.clip(stack, 0, None) / (0.1 * scale)) / np.arcsinh(10.0), 0, 1)


def plot_examples(batch, path, title: str, n: int = 4, dpi: int = 70) -> Path:
    """A 2 × n grid: VIS (log) above NISP RGB for the first ``n`` cutouts of ``batch``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(batch))
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(log_vis(batch.vis[i]), origin="lower", cmap="gray")
        axes[1, i].imshow(rgb_nisp(batch.nisp[i]), origin="lower")
        t = batch.truth
        if int(t["label"][i]):
            z2 = float(t["z_lens2"][i])
            sub = f"θE={float(t['theta_e'][i]):.2f}″ zl={float(t['z_lens'][i]):.2f}"
            sub += f"\nzl2={z2:.2f} " if np.isfinite(z2) else "\n"
            sub += f"zs={float(t['z_source'][i]):.2f} S/N={float(t['arc_snr'][i]):.0f}"
            if "lens_type" in t and str(t["lens_type"][i]):
                sub += f" {t['lens_type'][i]}"
        else:
            sub = f"{t['kind'][i]}\nz={float(t['z_lens'][i]):.2f}"
        axes[0, i].set_title(sub, fontsize=7)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("VIS (log)", fontsize=8)
    axes[1, 0].set_ylabel("NISP H,J,Y", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as im:  # noise does not compress: a 256-colour palette keeps the file small
        im.convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


GALLERY = {"lenses": "sim_lenses.png", "non-lenses": "sim_non_lenses.png",
           "compound-arcs": "sim_compound_arcs.png", "double-rings": "sim_double_rings.png",
           "survey-lenses": "sim_survey_lenses.png", "sky-negatives": "sim_sky_negatives.png",
           "hard-negatives": "sim_hard_negatives.png"}


def write_gallery(out_dir, seed: int = 7, n: int = 5) -> list[Path]:
    """The example PNGs of docs/simulation.md (docs/images/sim_*.png)."""
    from lensengine.training.simulate import simulate_batch

    paths = []
    for kind, name in GALLERY.items():
        batch = simulate_batch(kind, n, seed)
        paths.append(plot_examples(batch, Path(out_dir) / name, f"simulated {kind} (seed {seed})", n=n))
    return paths


if __name__ == "__main__":  # python -m lensengine.training._sim_figures docs/images
    import sys

    for p in write_gallery(sys.argv[1] if len(sys.argv) > 1 else "docs/images"):
        print(p)
