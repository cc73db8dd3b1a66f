"""Summaries of simulated sets and the realism check against the published networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["summarise", "score_published", "realism_table", "measure_objects", "object_catalogue",
           "compare_pixel_statistics", "MAG_BINS"]


def summarise(batch) -> list[str]:
    """Human-readable lines: label fraction, kinds, θ_E / arc S/N / magnitudes of the lenses."""
    t = batch.truth
    label = np.asarray(t["label"]).astype(int)
    kinds, counts = np.unique(np.asarray(t["kind"]).astype(str), return_counts=True)
    lines = [f"{len(batch)} cutouts, {label.mean():.3f} labelled lenses",
             "kinds: " + ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))]
    if label.any():
        sel = label == 1
        q = lambda name: np.nanpercentile(np.asarray(t[name], dtype=float)[sel], [10, 50, 90])  # noqa: E731
        for name in ("theta_e", "z_lens", "z_source", "arc_snr", "magnification", "mag_lens_VIS", "mag_source_VIS"):
            lo, med, hi = q(name)
            lines.append(f"lenses {name:15s} 10/50/90%: {lo:7.2f} {med:7.2f} {hi:7.2f}")
        lines.append(f"lenses resampled (attempts > 1): {(np.asarray(t['attempts'])[sel] > 1).mean():.2f}")
        if "label_easy" in t:
            lines.append(f"lenses passing the easy rule (arc S/N >= 25): {np.asarray(t['label_easy'])[sel].mean():.2f}")
        types = np.asarray(t.get("lens_type", np.array([""] * len(label)))).astype(str)[sel]
        if types.any():
            names, counts = np.unique(types, return_counts=True)
            lines.append("lens types: " + ", ".join(f"{k} {c}" for k, c in zip(names, counts)))
    return lines


def score_published(batch, weights_dir, names=("OU-66", "OU-200"), chunk: int = 100) -> dict[str, np.ndarray]:
    """P(lens) of the paper's published networks (torch) through the shared preprocessing."""
    import torch

    from lensengine.engine.preprocess import Preprocessor
    from lensengine.engine.specs import get_spec
    from lensengine.training.export import load_published
    from lensengine.training.networks import p_lens

    nets = {n: load_published(Path(weights_dir), n) for n in names}
    prep = Preprocessor([get_spec(n) for n in names])
    out = {n: np.empty(len(batch), dtype=np.float32) for n in names}
    bands = batch.bands()
    with torch.inference_mode():
        for s in range(0, len(batch), chunk):
            prepared = prep({b: (None if a is None else a[s:s + chunk]) for b, a in bands.items()})
            for n in names:
                out[n][s:s + chunk] = p_lens(nets[n](torch.from_numpy(prepared.inputs[n]))).numpy()
    return out


def realism_table(batch, scores: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """Per model: overall AUROC/precision/recall/accuracy at 0.5, then the fraction P >= 0.5 per kind."""
    from lensengine.training.metrics import binary_metrics

    label = np.asarray(batch.truth["label"]).astype(int)
    kinds = np.asarray(batch.truth["kind"]).astype(str)
    out = {}
    for name, p in scores.items():
        rows = [{"subset": "all", "n": int(len(label)), **binary_metrics(label, p)}]
        for k in sorted(set(kinds)):
            sel = kinds == k
            rows.append({"subset": k, "n": int(sel.sum()), "frac_p>=0.5": float((p[sel] >= 0.5).mean()),
                         "mean_p": float(p[sel].mean())})
        out[name] = rows
    return out


# --- pixel statistics of simulated and real galaxies (the realism report) ----------------------------------
#: VIS magnitude bins of the realism report
MAG_BINS = ((18.0, 21.0), (21.0, 22.5), (22.5, 24.0), (24.0, 25.5))
_SMOOTH_GAIN = 1.0 / (2.0 * np.sqrt(np.pi))  # noise σ after a σ = 1 pixel Gaussian smoothing of white noise


def measure_objects(vis: np.ndarray, nisp: np.ndarray, *, k_sigma: float = 3.0,
                    min_area: int = 10) -> list[dict]:
    """Detect objects in one VIS cutout and measure them the same way for simulated and real images.

    Why one simple, fixed measurement: the report compares simulated and real
    galaxies, so what matters is that both go through identical code, not that
    it is a state-of-the-art photometry.  Detection: the VIS image smoothed by a
    1-pixel Gaussian above ``k_sigma`` times its noise (σ from the median
    absolute deviation of the image), 8-connected segments of ≥ ``min_area``
    pixels (no false detection in 20 blank simulated fields).  Per object:
    ``mag_vis`` (segment flux), ``r50`` (arcsec, circular radius holding half
    the segment flux, PSF included), ``snr`` (segment flux
    over σ √N_pix), ``colour_vis_h`` (VIS − H in a circular aperture of radius
    max(2 r50, 0.45″) on both grids), ``x``, ``y`` (arcsec from the centre).
    """
    from scipy import ndimage

    from lensengine.training._sim_physics import INSTRUMENT

    vis = np.asarray(vis, dtype=np.float64)
    sigma = 1.4826 * float(np.median(np.abs(vis - np.median(vis))))
    if not sigma > 0:
        return []
    smooth = ndimage.gaussian_filter(vis, 1.0)
    labels, n = ndimage.label(smooth > k_sigma * sigma * _SMOOTH_GAIN, structure=np.ones((3, 3)))
    if n == 0:
        return []
    nv = vis.shape[0]
    cv = (np.arange(nv) - (nv - 1) / 2.0) * 0.1
    xv, yv = np.meshgrid(cv, cv)
    h = np.asarray(nisp[2], dtype=np.float64)
    ch = (np.arange(h.shape[0]) - (h.shape[0] - 1) / 2.0) * 0.3
    xh, yh = np.meshgrid(ch, ch)
    objects = []
    for sl, lab in zip(ndimage.find_objects(labels), range(1, n + 1)):
        seg = labels[sl] == lab
        area = int(seg.sum())
        if area < min_area:
            continue
        f = vis[sl][seg]
        flux = float(f.sum())
        if flux <= 0:
            continue
        x0 = float((xv[sl][seg] * f).sum() / flux)
        y0 = float((yv[sl][seg] * f).sum() / flux)
        r = np.hypot(xv[sl][seg] - x0, yv[sl][seg] - y0)
        order = np.argsort(r)
        cum = np.cumsum(f[order]) / flux
        r50 = float(r[order][min(np.searchsorted(cum, 0.5), len(r) - 1)])
        rap = max(2.0 * r50, 0.45)
        f_vis = float(vis[np.hypot(xv - x0, yv - y0) <= rap].sum())
        f_h = float(h[np.hypot(xh - x0, yh - y0) <= rap].sum())
        colour = (INSTRUMENT.zero_point["VIS"] - 2.5 * np.log10(f_vis)) - (
            INSTRUMENT.zero_point["H"] - 2.5 * np.log10(f_h)) if f_vis > 0 and f_h > 0 else float("nan")
        objects.append({"mag_vis": float(INSTRUMENT.zero_point["VIS"] - 2.5 * np.log10(flux)), "r50": r50,
                        "snr": flux / (sigma * np.sqrt(area)), "colour_vis_h": float(colour), "x": x0, "y": y0,
                        "area": area})
    return objects


def object_catalogue(batch, *, centrals_only: bool = False, centre_columns=("x_lens", "y_lens")) -> dict:
    """Measure every cutout of ``batch``: all objects (or only the one nearest the central galaxy's position,
    from the truth ``centre_columns`` when present, else the stamp centre) and the number of other objects."""
    rows, neighbours = [], []
    t = batch.truth
    for i in range(len(batch)):
        objs = measure_objects(batch.vis[i], batch.nisp[i])
        if not objs:
            neighbours.append(0)
            continue
        cx = float(t[centre_columns[0]][i]) if centre_columns[0] in t else 0.0
        cy = float(t[centre_columns[1]][i]) if centre_columns[1] in t else 0.0
        d = [np.hypot(o["x"] - cx, o["y"] - cy) for o in objs]
        c = int(np.argmin(d))
        neighbours.append(len(objs) - 1)
        if centrals_only:
            if d[c] < 1.0:  # the central galaxy was detected where it was put
                rows.append(objs[c])
        else:
            rows.extend(objs)
    cat = {k: np.array([r[k] for r in rows], dtype=float) for k in ("mag_vis", "r50", "snr", "colour_vis_h")}
    cat["neighbours"] = np.array(neighbours, dtype=float)
    return cat


def _median(a):
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def compare_pixel_statistics(sim: dict, real: dict, bins=MAG_BINS) -> dict:
    """Per VIS magnitude bin: N, median r50, VIS − H and S/N of simulated and real objects; KS distances of
    the r50 and colour distributions over the bins' whole range; neighbours per cutout."""
    from scipy.stats import ks_2samp

    out = {"bins": []}
    for lo, hi in bins:
        row = {"mag": [lo, hi]}
        for name, cat in (("sim", sim), ("real", real)):
            sel = (cat["mag_vis"] >= lo) & (cat["mag_vis"] < hi)
            row[name] = {"n": int(sel.sum()), "r50": _median(cat["r50"][sel]),
                         "colour_vis_h": _median(cat["colour_vis_h"][sel]), "snr": _median(cat["snr"][sel])}
        out["bins"].append(row)
    lo, hi = bins[0][0], bins[-1][1]
    for key in ("r50", "colour_vis_h"):
        a = sim[key][(sim["mag_vis"] >= lo) & (sim["mag_vis"] < hi) & np.isfinite(sim[key])]
        b = real[key][(real["mag_vis"] >= lo) & (real["mag_vis"] < hi) & np.isfinite(real[key])]
        if a.size and b.size:
            res = ks_2samp(a, b)
            out[f"ks_{key}"] = {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n_sim": int(a.size),
                                "n_real": int(b.size)}
    out["neighbours_per_cutout"] = {"sim": float(np.mean(sim["neighbours"])) if sim["neighbours"].size else None,
                                    "real": float(np.mean(real["neighbours"])) if real["neighbours"].size else None}
    return out
