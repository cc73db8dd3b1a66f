"""Two versions of lensengine side by side: whole ``lensengine run`` commands of this checkout and of another
version of the code, in turn on the same store, so that both meet the same machine (a shared VM's speed drifts by
10-15 % within minutes).

For each run: cutouts/s over the whole command, peak RSS of the command and its Dask processes, the CPU split
(the share of the cores' time the network threads held; ``bench_engine.cpu_split``) and the candidates; at the
end, whether the two versions' score tables agree bit for bit (every ``P_*`` column and the flags).

    python benchmarks/bench_ab.py --models models --tiles sky4096.zarr --baseline <package folder> \
        --workers 2 --workers 1 --repeat 2 --json results_ab.json

``--baseline`` is a folder holding another version's ``lensengine`` package (put first on ``PYTHONPATH``); for a
commit of this repository: ``git worktree add base <commit>``, then a folder ``pkg/lensengine`` with the commit's
``src/lensengine`` files and links ``engine``, ``catalogs``, ``plugins``, ``training``, ``models`` to the
worktree's folders (the layout ``pyproject.toml`` maps).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from bench_engine import cpu_split, end_to_end


def score_columns(folder: Path) -> dict[str, np.ndarray]:
    """The ``P_*`` and ``FLAGS`` columns of a score table, in (tile, row) order."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(folder), format="parquet").to_table()
    order = np.lexsort((table["ROW"].to_numpy(), np.asarray(table["TILE"].to_pylist())))
    return {name: table[name].to_numpy()[order] for name in table.column_names
            if name.startswith("P_") or name == "FLAGS"}


def same_scores(a: Path, b: Path) -> bool:
    ca, cb = score_columns(a), score_columns(b)
    return ca.keys() == cb.keys() and all(np.array_equal(ca[k], cb[k], equal_nan=True) for k in ca)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--tiles", type=Path, required=True, help="the store both versions score")
    ap.add_argument("--baseline", type=Path, required=True, help="folder holding the other version's package")
    ap.add_argument("--workers", type=int, action="append", default=[], help="worker counts (repeatable)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.77)
    ap.add_argument("--ensemble", default="mean")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="bench_ab_"))
    tmp.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    print(f"{'version':9s} {'workers':>7s} {'run':>3s} {'cutouts/s':>9s} {'peak RSS GiB':>12s} {'net share':>9s} "
          f"{'net ms':>7s} {'rest ms':>7s} {'cands':>5s}")
    for rep in range(args.repeat):
        for workers in args.workers or [1]:
            for label, code in (("baseline", args.baseline), ("this", None)):
                r = end_to_end(args.tiles, args.models, workers, tmp, threshold=args.threshold,
                               ensemble=args.ensemble, code=code)
                r.update(split=cpu_split(r), label=label, workers=workers, rep=rep)
                runs.append(r)
                print(f"{label:9s} {workers:7d} {rep:3d} {r['rate']:9.2f} {r['peak_rss_mb'] / 1024:12.2f} "
                      f"{r['split']['network_share']:9.3f} {r['split']['network_ms']:7.1f} "
                      f"{r['split']['rest_ms']:7.2f} {r['candidates']:5d}", flush=True)
    stem = args.tiles.stem
    agree = {w: same_scores(tmp / f"cands_w{w}_fp32_base_{stem}_scores", tmp / f"cands_w{w}_fp32_{stem}_scores")
             for w in sorted(set(args.workers or [1]))}
    for workers, ok in agree.items():
        print(f"{workers} worker(s): score tables {'identical' if ok else 'DIFFERENT'} (P_* and FLAGS)")
    if args.json:
        args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), "store": str(args.tiles), "runs": runs,
                                         "same_scores": {str(k): v for k, v in agree.items()}}, indent=1,
                                        default=float))


if __name__ == "__main__":
    main()
