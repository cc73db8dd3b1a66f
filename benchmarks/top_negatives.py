"""What the most lens-like non-lenses are: the sky negatives that set a survey's thresholds (issue 11).

Recall at FPR 1 % and 0.1 % is decided by the few negatives that score highest: at FPR 0.1 % of 20 000 sky
negatives, by 20 of them. This reads the score tables of ``lensengine run`` on sky-negative stores (their truth
columns say what each cutout is) and reports, for the ensemble (``P_ENSEMBLE``) or one network:

* per kind of negative (elliptical, spiral, star-forming, pair, blend, merger, ring galaxy, ...): how many there
  are, how many are false positives at each FPR (thresholds as ``lensengine evaluate`` sets them: strictly above
  the (k+1)-th highest negative score), that kind's own false-positive rate and its enrichment (share of the
  false positives over share of the population);
* the top ``--top`` negatives, with what the simulator drew (kind, neighbours, magnitudes) and each network's P;
* a montage of their images (VIS, and NISP H/J/Y as a colour image) read from the stores.

    lensengine run --tiles v4sky_2026.zarr --out v4sky_2026.fits      (and the other stores)
    python benchmarks/top_negatives.py --scores v4sky_2026_scores.parquet --store v4sky_2026.zarr \
        [--scores ... --store ...] --top 20 --out reports/sky_check/stop31/top_negatives

Writes ``top_negatives.md``, ``top_negatives.json`` and ``top_negatives.jpg`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lensengine.catalogs.catalog import score_column
from lensengine.engine.specs import MODEL_NAMES
from lensengine.training.metrics import threshold_at_fpr

FPRS = {"fpr1": 0.01, "fpr01": 0.001}
#: What the top table shows of the truth (column name in the score table, header).
TRUTH = (("TRUTH_N_NEIGHBOURS", "neighbours"), ("TRUTH_MAG_LENS_VIS", "VIS mag"), ("TRUTH_PSF_FWHM_VIS", "VIS PSF"),
         ("TRUTH_DEPTH_OFFSET", "depth offset"))


def load(score_tables: list[Path], column: str = "P_ENSEMBLE") -> dict[str, np.ndarray]:
    """The negatives (``TRUTH_LABEL`` 0) of score tables (``lensengine run``'s, or ``sky_check.py score``'s files)
    with a finite ``column``, with the table index."""
    import pyarrow.dataset as ds

    parts = []
    for i, folder in enumerate(score_tables):
        table = ds.dataset(str(folder), format="parquet").to_table()
        cols = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
        cols["TABLE"] = np.full(table.num_rows, i)
        parts.append(cols)
    names = set.intersection(*(set(p) for p in parts))
    rows = {name: np.concatenate([p[name] for p in parts]) for name in names}
    keep = (rows["TRUTH_LABEL"] == 0) & np.isfinite(rows[column].astype(np.float64))
    return {name: values[keep] for name, values in rows.items()}


def by_kind(score: np.ndarray, kind: np.ndarray, fprs: dict[str, float] = FPRS) -> dict:
    """Per kind of negative: count, share, false positives at each FPR, its own FPR and enrichment."""
    kinds, counts = np.unique(kind, return_counts=True)
    out: dict = {"n": int(score.size), "thresholds": {}, "kinds": {}}
    above = {}
    for key, fpr in fprs.items():
        t, k = threshold_at_fpr(score, fpr)
        above[key] = score > t
        out["thresholds"][key] = {"threshold": t, "k": k, "false_positives": int(above[key].sum())}
    for name, count in zip(kinds, counts):
        mine = kind == name
        entry = {"n": int(count), "share": count / score.size}
        for key in fprs:
            fp = int((above[key] & mine).sum())
            total = out["thresholds"][key]["false_positives"]
            entry[key] = {"false_positives": fp, "own_fpr": fp / count,
                          "enrichment": (fp / total) / (count / score.size) if total else float("nan")}
        out["kinds"][str(name)] = entry
    return out


def top(rows: dict[str, np.ndarray], score: np.ndarray, n: int) -> list[dict]:
    order = np.argsort(-score, kind="stable")[:n]
    networks = [score_column(name) for name in MODEL_NAMES if score_column(name) in rows]
    out = []
    for rank, i in enumerate(order, 1):
        tile = str(rows["TILE"][i]) if "TILE" in rows else ""
        entry = {"rank": rank, "table": int(rows["TABLE"][i]), "tile": tile, "row": int(rows["ROW"][i]),
                 "kind": str(rows["TRUTH_KIND"][i]), "score": float(score[i])}
        entry.update({header: _plain(rows[column][i]) for column, header in TRUTH if column in rows})
        entry["networks"] = {c[2:]: float(rows[c][i]) for c in networks}
        out.append(entry)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def montage(entries: list[dict], stores: list[Path], path: Path) -> None:
    """VIS and a NISP colour image (H, J, Y as red, green, blue) of each entry, asinh-stretched per cutout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lensengine.catalogs.store import SurveyStore

    opened = [SurveyStore.open(s) for s in stores]
    cols = 5
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, e in enumerate(entries):
        store = opened[e["table"]]
        batch = store.read(e["tile"] or store.tiles[0], e["row"], e["row"] + 1)  # sky_check files name no tile
        bands = batch.bands()
        r, c = divmod(j, cols)
        if bands.get("VIS") is not None:
            axes[r, 2 * c].imshow(_stretch(bands["VIS"][0]), cmap="gray", origin="lower")
        nisp = [bands.get(b) for b in ("H", "J", "Y")]
        if all(b is not None for b in nisp):
            axes[r, 2 * c + 1].imshow(np.dstack([_stretch(b[0]) for b in nisp]), origin="lower")
        axes[r, 2 * c].set_title(f"#{e['rank']} {e['kind']}", fontsize=7, loc="left")
        axes[r, 2 * c + 1].set_title(f"P {e['score']:.3f}", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100, pil_kwargs={"quality": 85} if path.suffix == ".jpg" else None)
    plt.close(fig)


def _stretch(image: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(image, np.float64))
    lo, hi = np.percentile(x, [1, 99.8])
    scale = max(hi - lo, 1e-12)
    y = np.arcsinh(np.clip((x - lo) / scale, 0, None) * 10) / np.arcsinh(10)
    return np.clip(y, 0, 1)


def markdown(kinds: dict, entries: list[dict], column: str) -> str:
    lines = [f"# The most lens-like sky negatives ({column}, {kinds['n']} negatives)", ""]
    t = kinds["thresholds"]
    lines += [f"Thresholds: FPR 1 % {t['fpr1']['threshold']:.4f} ({t['fpr1']['false_positives']} above), "
              f"FPR 0.1 % {t['fpr01']['threshold']:.4f} ({t['fpr01']['false_positives']} above).", "",
              "| kind | negatives | share | false positives at FPR 1 % (own FPR, enrichment) | at FPR 0.1 % |",
              "|---|---|---|---|---|"]
    for name, e in sorted(kinds["kinds"].items(), key=lambda kv: -kv[1]["fpr1"]["false_positives"]):
        cells = [f"{e[k]['false_positives']} ({100 * e[k]['own_fpr']:.2f} %, {e[k]['enrichment']:.1f}×)" for k in FPRS]
        lines.append(f"| {name} | {e['n']} | {100 * e['share']:.1f} % | {cells[0]} | {cells[1]} |")
    nets = list(entries[0]["networks"]) if entries else []
    extra = [h for _, h in TRUTH if entries and h in entries[0]]
    lines += ["", "| rank | store | row | kind | score | " + " | ".join(extra + nets) + " |",
              "|" + "---|" * (5 + len(extra) + len(nets))]
    for e in entries:
        cells = [str(e[h]) if not isinstance(e[h], float) else f"{e[h]:.2f}" for h in extra]
        cells += [f"{e['networks'][n]:.2f}" for n in nets]
        lines.append(f"| {e['rank']} | {e['table']} | {e['row']} | {e['kind']} | {e['score']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scores", type=Path, action="append", required=True, help="score table (repeatable)")
    ap.add_argument("--store", type=Path, action="append", default=[],
                    help="the store of each score table, in the same order (for the montage)")
    ap.add_argument("--column", default="P_ENSEMBLE", help="the score ranked (P_ENSEMBLE or a network's P_ column)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.store and len(args.store) != len(args.scores):
        ap.error("give one --store per --scores, in the same order")
    rows = load(args.scores, args.column)
    score = rows[args.column].astype(np.float64)
    kinds = by_kind(score, rows["TRUTH_KIND"].astype(str))
    entries = top(rows, score, args.top)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "top_negatives.json").write_text(json.dumps({"column": args.column, "by_kind": kinds, "top": entries,
                                                             "scores": [str(s) for s in args.scores]}, indent=1))
    text = markdown(kinds, entries, args.column)
    (args.out / "top_negatives.md").write_text(text)
    if args.store:
        montage(entries, args.store, args.out / "top_negatives.jpg")
    print(text)


if __name__ == "__main__":
    main()
