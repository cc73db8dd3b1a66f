"""Stop 46: every OU-66 arm in the stack (the other six members shipped, the stack refitted on val4), judged by
``benchmarks/sky_check.py compare`` against the shipped set and against its own control (same store, same
seed, the network's own loss alone). Writes ``compare_<reference>/`` per reference and ``summary.md``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = ("OU-J", "OU-Y", "OU-H", "OU-JYH", "OU-66", "OU-VIS", "OU-200")
#: arm -> (its control, what it is)
ARMS = {
    "A0": (None, "control, 16 000 cutouts, seed 0"),
    "S0": ("A0", "stack-aware, weight 0.5"),
    "P0": ("A0", "stack-aware, weight 1"),
    "A1": (None, "control, seed 1"),
    "S1": ("A1", "stack-aware, weight 0.5, seed 1"),
    "P1": ("A1", "stack-aware, weight 1, seed 1"),
    "BA0": (None, "control, 40 000 cutouts"),
    "BP0": ("BA0", "stack-aware, weight 1, 40 000 cutouts"),
    "BA1": (None, "control, 40 000 cutouts, seed 1"),
    "BP1": ("BA1", "stack-aware, weight 1, 40 000 cutouts, seed 1"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="the folder chain.sh worked in (scores/ under it)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    have = [a for a in ARMS if any((args.work / "scores").glob(f"{a}__v4_lenses.parquet"))]

    def one(label: str) -> dict:
        return {"models": {m: label if m == "OU-66" else "s45" for m in MODELS}, "ensemble": "stack", "refit": "val4"}

    sets = {"shipped": one("s45"), **{a: one(a) for a in have}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sets.json").write_text(json.dumps(sets, indent=1) + "\n")
    lines = ["# Stop 46: stack-aware training of OU-66", "",
             "Each arm's OU-66 in the shipped set, the stack refitted on val4; judged on the v4 stores. "
             "Differences paired over the same bootstrap resamples (1 000) of lenses and negatives.", ""]
    keys = ("auroc", "tpr_fpr1", "tpr_fpr01", "hard_tpr_fpr1", "proxy ellipticals", "proxy ordinary mix", "proxy all")
    for reference in ["shipped"] + sorted({c for a in have if (c := ARMS[a][0]) in have}):
        out = args.out / f"compare_{reference}"
        subprocess.run([sys.executable, str(Path(__file__).resolve().parents[3] / "benchmarks" / "sky_check.py"),
                        "compare", "--scores", str(args.work / "scores"), "--sets", str(args.out / "sets.json"),
                        "--reference", reference, "--out", str(out), "--bootstrap", "1000"], check=True,
                       stdout=subprocess.DEVNULL)
        results = json.loads((out / "compare.json").read_text())["results"]
        if reference == "shipped":
            lines += ["| set | AUROC v4 sky | TPR@FPR1% | TPR@FPR0.1% | hard TPR@FPR1% | J0946 P | real above 1 % / 0.1 % "
                      "| OU-66 alone: AUROC / TPR@1% / @0.1% / hard | stack weight of OU-66 |", "|---" * 9 + "|"]
            for name, r in results.items():
                f, alone = r["figures"], r["singles"]["OU-66"]
                lines.append((f"| {name} ({ARMS[name][1]}) " if name in ARMS else f"| {name} ") + (f"| {f['auroc']:.3f} | {f['tpr_fpr1']:.3f} | {f['tpr_fpr01']:.3f} | {f['hard_tpr_fpr1']:.3f} "
                              f"| {f['j0946_P']:.3f} | {f['real_above_fpr1']} / {f['real_above_fpr01']} "
                              f"| {alone['auroc']:.3f} / {alone['tpr_fpr1']:.3f} / {alone['tpr_fpr01']:.3f} / "
                              f"{alone['hard_tpr_fpr1']:.3f} | {r['weights']['OU-66']:+.2f} |"))
            lines.append("")
        lines += [f"Paired against {reference}" + ("" if reference == "shipped" else f" ({ARMS[reference][1]})")
                  + ": difference [95 % interval]", ""]
        for name, r in results.items():
            if name == reference or (reference != "shipped" and ARMS.get(name, (None,))[0] != reference):
                continue
            paired = r.get("paired") or {}
            lines.append(f"- {name}: " + "; ".join(f"{k} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
                                                   for k, v in paired.items() if k in keys))
        lines.append("")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
