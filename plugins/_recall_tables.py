"""Recall tables, the paper's reference values, and selection-function tables and plots.

Recall is the fraction of true lenses with P(lens) >= 0.5 (SPEC §8); a lens a
model could not score (NaN) counts as missed and is reported in ``n_unscored``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensengine.training.metrics import PAPER_TABLE6

__all__ = ["THRESHOLD", "SETS", "PAPER_TABLE6", "PAPER_TABLE7", "recall", "recall_table", "format_table6",
           "format_table7", "selection_function", "selection_variables", "write_selection", "plot_selection"]

THRESHOLD = 0.5
SETS = ("compound-arcs", "double-rings")

#: Paper Table 7, P(lens) of known compound lenses: name -> (OU-66, OU-200).
PAPER_TABLE7 = {
    "SL2S J02176-0513": (0.9993, 0.9852),
    "HSC J142449-005322": (0.9302, 0.7104),
    "SDSS J1148+1930": (1.0000, 0.9953),
    "SDSS J0946+1006": (0.6873, 0.8228),
}
_TABLE6_COLUMN = {"compound-arcs": "compound_arcs", "double-rings": "double_rings"}


def recall(p: np.ndarray, lenses: np.ndarray | None = None, threshold: float = THRESHOLD) -> float:
    """Fraction of lenses with P >= threshold (NaN counts as missed); NaN when there are no lenses."""
    p = np.asarray(p, dtype=float)
    if lenses is not None:
        p = p[lenses]
    if len(p) == 0:
        return float("nan")
    return float(np.mean(np.nan_to_num(p, nan=-1.0) >= threshold))


def recall_table(scored_sets: dict, threshold: float = THRESHOLD) -> dict:
    """``{set: {model: recall}, "n": {set: lenses}, "n_unscored": {set: {model: count}}}``."""
    out: dict = {"n": {}, "n_unscored": {}}
    for set_name, s in scored_sets.items():
        lenses = s.lenses
        out[set_name] = {m: recall(p, lenses, threshold) for m, p in s.scores.items()}
        out["n"][set_name] = int(lenses.sum())
        out["n_unscored"][set_name] = {m: int(np.isnan(p[lenses]).sum()) for m, p in s.scores.items()}
    return out


def _fmt(v) -> str:
    return "   —  " if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def format_table6(table: dict, models: list[str]) -> str:
    """The paper's Table 6 layout (recall at 0.5), paper rows beside ours, one column per model."""
    header = f"{'recall at 0.5':30s}" + "".join(f"{m:>9s}" for m in models)
    lines = [header, "-" * len(header)]
    for set_name in SETS:
        if set_name not in table:
            continue
        col = _TABLE6_COLUMN[set_name]
        paper = [PAPER_TABLE6[m][col] if m in PAPER_TABLE6 else None for m in models]
        lines.append(f"{set_name + ' (paper)':30s}" + "".join(f"{_fmt(v):>9s}" for v in paper))
        ours = [table[set_name].get(m) for m in models]
        label = f"{set_name} (ours, n={table['n'][set_name]})"
        lines.append(f"{label:30s}" + "".join(f"{_fmt(v):>9s}" for v in ours))
    return "\n".join(lines)


def format_table7(rows: list[dict]) -> str:
    """Known compound lenses: our P(lens) per model beside the paper's OU-66 / OU-200 values."""
    order = list(PAPER_TABLE6) + ["OU-T-SNE"]
    models = sorted({m for r in rows for m in r["scores"]}, key=lambda m: (order.index(m) if m in order else 99, m))
    lines = [f"{'lens':22s}" + "".join(f"{m:>9s}" for m in models) + f"{'paper OU-66':>13s}{'paper OU-200':>14s}"]
    for r in rows:
        paper = PAPER_TABLE7.get(r["name"], (None, None))
        lines.append(f"{r['name']:22s}" + "".join(f"{_fmt(r['scores'].get(m)):>9s}" for m in models)
                     + f"{_fmt(paper[0]):>13s}{_fmt(paper[1]):>14s}")
    return "\n".join(lines)


# --- selection function ----------------------------------------------------------

def selection_variables(truth: dict[str, np.ndarray], band: str = "VIS") -> dict[str, np.ndarray]:
    """The truth quantities recall is binned in: θ_E, arc S/N, source magnitude, source colour."""
    out = {}
    for name in ("theta_e", "arc_snr", f"mag_source_{band}"):
        if name in truth:
            out[name] = np.asarray(truth[name], dtype=float)
    if "source_colour" in truth:
        out["source_colour"] = np.asarray(truth["source_colour"])
    if "mag_source_VIS" in truth and "mag_source_H" in truth:
        out["colour_VIS-H"] = np.asarray(truth["mag_source_VIS"], float) - np.asarray(truth["mag_source_H"], float)
    return out


def selection_function(values: np.ndarray, scores: dict[str, np.ndarray], lenses: np.ndarray, n_bins: int = 6,
                       threshold: float = THRESHOLD) -> list[dict]:
    """Recall per bin of ``values`` for each model: rows ``{bin, lo, hi, n, <model>: recall}``.

    Numeric values get quantile bins (equal counts); strings are categories.
    """
    values = np.asarray(values)[lenses]
    scores = {m: np.asarray(p)[lenses] for m, p in scores.items()}
    rows = []
    if values.dtype.kind in "USO":
        for cat in sorted(set(values.tolist())):
            sel = values == cat
            rows.append({"bin": str(cat), "lo": None, "hi": None, "n": int(sel.sum()),
                         **{m: recall(p[sel], None, threshold) for m, p in scores.items()}})
        return rows
    finite = np.isfinite(values)
    if not finite.any():
        return rows
    edges = np.unique(np.quantile(values[finite], np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([values[finite].min(), values[finite].max() + 1e-9])
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    for b in range(len(edges) - 1):
        sel = finite & (idx == b)
        rows.append({"bin": f"[{edges[b]:.3g}, {edges[b + 1]:.3g}]", "lo": float(edges[b]), "hi": float(edges[b + 1]),
                     "n": int(sel.sum()), **{m: recall(p[sel], None, threshold) for m, p in scores.items()}})
    return rows


def write_selection(selection: dict, out_dir) -> Path:
    """One CSV ``selection_function.csv``: set, variable, bin, lo, hi, n, then one recall column per model."""
    import csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = sorted({k for rows in _iter_rows(selection) for k in rows if k not in ("bin", "lo", "hi", "n")})
    path = out / "selection_function.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "variable", "bin", "lo", "hi", "n", *models])
        for set_name, variables in selection.items():
            for var, rows in variables.items():
                for r in rows:
                    w.writerow([set_name, var, r["bin"], r["lo"], r["hi"], r["n"],
                                *[("" if np.isnan(r.get(m, np.nan)) else f"{r[m]:.4f}") for m in models]])
    return path


def _iter_rows(selection):
    for variables in selection.values():
        for rows in variables.values():
            yield from rows


def plot_selection(selection: dict, out_dir) -> list[Path]:
    """One PNG per set: recall against each selection variable, one line per model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for set_name, variables in selection.items():
        if not variables:
            continue
        fig, axes = plt.subplots(1, len(variables), figsize=(3.6 * len(variables), 3.2), squeeze=False)
        for ax, (var, rows) in zip(axes[0], variables.items()):
            models = [k for k in (rows[0] if rows else {}) if k not in ("bin", "lo", "hi", "n")]
            pos = np.arange(len(rows))
            for m in models:
                ax.plot(pos, [r[m] for r in rows], marker="o", label=m)
            ax.set_xticks(pos)
            ax.set_xticklabels([r["bin"] for r in rows], rotation=45, ha="right", fontsize=6)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(var, fontsize=8)
            ax.set_ylabel("recall at 0.5", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"selection function: {set_name}", fontsize=10)
        path = out / f"selection_{set_name}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
