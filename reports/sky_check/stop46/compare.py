"""Stop 46 (and later stops' arms): each arm's networks in the shipped set (the other members shipped, the stack
refitted on val4), judged by ``benchmarks/sky_check.py compare`` against the shipped set and against its own
control (same store, same seed, the network's own loss alone). Writes ``compare_<reference>/`` per reference and
``summary.md``.

``--arms FILE`` names other arms: a JSON object ``{"arm": {"control": "arm or null", "what": "...",
"models": {"OU-66": "label", ...}}}``; members not named there are the shipped ones (label ``s45``). Without it,
the stop-46 arms (each an OU-66)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = ("OU-J", "OU-Y", "OU-H", "OU-JYH", "OU-66", "OU-VIS", "OU-200")
#: arm -> (its control, what it is)
STOP46 = {
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


def load_arms(path: Path | None) -> dict:
    """Arm name -> {"control", "what", "models"} (the varied members and their score labels)."""
    if path is None:
        return {a: {"control": c, "what": w, "models": {"OU-66": a}} for a, (c, w) in STOP46.items()}
    arms = json.loads(path.read_text())
    for name, arm in arms.items():
        unknown = set(arm["models"]) - set(MODELS)
        if unknown:
            raise SystemExit(f"{path}: arm {name} names unknown members {sorted(unknown)}")
    return arms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="the folder chain.sh worked in (scores/ under it)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", type=Path, help="a JSON file of arms (see above); default: the stop-46 arms")
    ap.add_argument("--title", default="Stop 46: stack-aware training of OU-66")
    args = ap.parse_args()
    arms = load_arms(args.arms)
    # an arm is judged once every network it varies has scored the v4 lenses
    have = [a for a, arm in arms.items()
            if all((args.work / "scores" / f"{label}__v4_lenses.parquet").exists() for label in arm["models"].values())]
    varied = [m for m in MODELS if any(m in arms[a]["models"] for a in have)]

    def one(labels: dict) -> dict:
        return {"models": {m: labels.get(m, "s45") for m in MODELS}, "ensemble": "stack", "refit": "val4"}

    sets = {"shipped": one({}), **{a: one(arms[a]["models"]) for a in have}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sets.json").write_text(json.dumps(sets, indent=1) + "\n")
    lines = [f"# {args.title}", "",
             f"Each arm's {' and '.join(varied)} in the shipped set, the stack refitted on val4; judged on the v4 "
             "stores. Differences paired over the same bootstrap resamples (1 000) of lenses and negatives.", ""]
    keys = ("auroc", "tpr_fpr1", "tpr_fpr01", "hard_tpr_fpr1", "proxy ellipticals", "proxy ordinary mix", "proxy all")
    for reference in ["shipped"] + sorted({c for a in have if (c := arms[a]["control"]) in have}):
        out = args.out / f"compare_{reference}"
        subprocess.run([sys.executable, str(Path(__file__).resolve().parents[3] / "benchmarks" / "sky_check.py"),
                        "compare", "--scores", str(args.work / "scores"), "--sets", str(args.out / "sets.json"),
                        "--reference", reference, "--out", str(out), "--bootstrap", "1000"], check=True,
                       stdout=subprocess.DEVNULL)
        results = json.loads((out / "compare.json").read_text())["results"]
        if reference == "shipped":
            lines += ["| set | AUROC v4 sky | TPR@FPR1% | TPR@FPR0.1% | hard TPR@FPR1% | J0946 P | real above 1 % / 0.1 % "
                      + "".join(f"| {m} alone: AUROC / TPR@1% / @0.1% / hard | stack weight of {m} " for m in varied)
                      + "|", "|---" * (7 + 2 * len(varied)) + "|"]
            for name, r in results.items():
                f = r["figures"]
                row = ((f"| {name} ({arms[name]['what']}) " if name in arms else f"| {name} ")
                       + f"| {f['auroc']:.3f} | {f['tpr_fpr1']:.3f} | {f['tpr_fpr01']:.3f} | {f['hard_tpr_fpr1']:.3f} "
                       f"| {f['j0946_P']:.3f} | {f['real_above_fpr1']} / {f['real_above_fpr01']} ")
                for m in varied:
                    alone = r["singles"][m]
                    row += (f"| {alone['auroc']:.3f} / {alone['tpr_fpr1']:.3f} / {alone['tpr_fpr01']:.3f} / "
                            f"{alone['hard_tpr_fpr1']:.3f} | {r['weights'][m]:+.2f} ")
                lines.append(row + "|")
            lines.append("")
        lines += [f"Paired against {reference}" + ("" if reference == "shipped" else f" ({arms[reference]['what']})")
                  + ": difference [95 % interval]", ""]
        for name, r in results.items():
            if name == reference or (reference != "shipped" and arms.get(name, {}).get("control") != reference):
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
