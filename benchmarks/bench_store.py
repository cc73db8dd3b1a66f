"""Survey-store benchmark: codec ratios, read throughput, and the precision a lens finder needs.

    nice python benchmarks/bench_store.py --n 256 --json bench_store.json

1. Compression ratio and encode speed of candidate codecs on simulated Euclid-like cutouts
   (``lensengine.training.simulate.simulate_batch``; a cached store is reused).
2. Read throughput of the store layout (32-cutout inner chunks in shards of ``--chunk-size``)
   against plain chunks of the same size: sequential (whole chunks) and random access to
   one cutout.  "Cold" reads drop the files from the page cache first (posix_fadvise).
3. Max |Delta P(lens)| between lossless and bit-rounded cutouts for the published OU-66 and
   OU-200 networks (ONNX Runtime on Preprocessor outputs), and how many cutouts cross 0.5.
4. P(lens) of the real HST image of SDSS J0946+1006 (paper Table 7: 0.6873 / 0.8228), when
   ../shared is present.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lensengine.catalogs import _zarr_layout as layout
from lensengine.catalogs.store import CutoutBatch, SurveyStore
from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import MODEL_SPECS

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LENSENGINE_SHARED", REPO.parent / "shared"))


def cutouts(n: int, cache: Path) -> CutoutBatch:
    if cache.exists():
        store = SurveyStore.open(cache)
        if store.n_cutouts("sim") >= n:
            return store.read("sim", 0, n)
    from lensengine.training.simulate import simulate_batch

    store = SurveyStore.create(cache, survey="bench", chunk_size=256, overwrite=True)
    t0 = time.perf_counter()
    for start in range(0, n, 32):
        b = simulate_batch("mixed", min(32, n - start), seed=2022, start_index=start)
        b.truth = {}
        store.append("sim", b)
        print(f"  simulated {start + len(b)}/{n} cutouts ({time.perf_counter() - t0:.0f} s)", flush=True)
    return store.read("sim", 0, n)


def drop_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")


def bench_codecs(images: dict[str, np.ndarray], tmp: Path) -> list[dict]:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    configs = [
        ("none", None, []),
        ("zstd(3)", None, [ZstdCodec(level=3)]),
        ("blosc-lz4-shuffle", None, [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]),
        ("blosc-zstd5-shuffle", None, [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]),
        ("blosc-zstd5-bitshuffle (lossless default)", None, [BloscCodec(**layout.BLOSC)]),
        ("bitround14 + blosc-zstd5-bitshuffle", 14, [BloscCodec(**layout.BLOSC)]),
        ("bitround12 + blosc-zstd5-bitshuffle (lossy)", 12, [BloscCodec(**layout.BLOSC)]),
        ("bitround10 + blosc-zstd5-bitshuffle", 10, [BloscCodec(**layout.BLOSC)]),
        ("bitround8 + blosc-zstd5-bitshuffle", 8, [BloscCodec(**layout.BLOSC)]),
    ]
    rows = []
    raw = sum(a.nbytes for a in images.values())
    for name, keepbits, compressors in configs:
        root = tmp / f"codec-{len(rows)}"
        t0 = time.perf_counter()
        max_rel = 0.0
        for key, arr in images.items():
            data = layout.bitround(arr, keepbits) if keepbits else arr
            if keepbits:
                nz = arr != 0
                max_rel = max(max_rel, float(np.max(np.abs(data[nz] / arr[nz] - 1))))
            z = zarr.create_array(str(root / key), shape=arr.shape, dtype="float32",
                                  chunks=(32, *arr.shape[1:]), compressors=compressors or None)
            z[:] = data
        seconds = time.perf_counter() - t0
        rows.append({"codec": name, "ratio": raw / dir_bytes(root), "encode_MB_s": raw / 2**20 / seconds,
                     "max_rel_error": max_rel})
        shutil.rmtree(root)
    return rows


def bench_reads(batch: CutoutBatch, tmp: Path, chunk_size: int, copies: int, rng) -> list[dict]:
    import zarr
    from zarr.codecs import BloscCodec

    rows = []
    sharded = SurveyStore.create(tmp / "sharded.zarr", survey="bench", chunk_size=chunk_size)
    for _ in range(copies):
        sharded.append("t", batch)
    n = sharded.n_cutouts("t")
    plain = {k: zarr.create_array(str(tmp / f"plain-{k}"), shape=(n, *a.shape[1:]), dtype="float32",
                                  chunks=(chunk_size, *a.shape[1:]), compressors=[BloscCodec(**layout.BLOSC)])
             for k, a in (("vis", batch.vis), ("nisp", batch.nisp))}
    for k, z in plain.items():
        z[:] = np.concatenate([getattr(batch, k)] * copies)
    idx = rng.integers(0, n, 40)
    for label, cold in (("cold", True), ("warm", False)):
        if cold:
            drop_cache(tmp)
        t0 = time.perf_counter()
        for i in range(len(sharded.chunk_slices("t"))):
            sharded.read_chunk("t", i)
        seq = n / (time.perf_counter() - t0)
        times = []
        for i in idx:
            if cold:
                drop_cache(tmp / "sharded.zarr")
            t0 = time.perf_counter()
            sharded.read("t", int(i), int(i) + 1)
            times.append(time.perf_counter() - t0)
        rows.append({"layout": f"sharded {chunk_size} / inner 32 (store.read)", "cache": label,
                     "seq_cutouts_s": seq, "random_one_ms": 1e3 * float(np.median(times))})
        images = [sharded._tile("t")[k] for k in ("vis", "nisp")]
        times = []
        for i in idx:
            if cold:
                drop_cache(tmp / "sharded.zarr")
            t0 = time.perf_counter()
            for z in images:
                z[int(i)]
            times.append(time.perf_counter() - t0)
        rows.append({"layout": f"sharded {chunk_size} / inner 32 (images)", "cache": label,
                     "seq_cutouts_s": None, "random_one_ms": 1e3 * float(np.median(times))})
        if cold:
            drop_cache(tmp)
        t0 = time.perf_counter()
        for s in range(0, n, chunk_size):
            for z in plain.values():
                z[s:s + chunk_size]
        seq = n / (time.perf_counter() - t0)
        times = []
        for i in idx:
            if cold:
                drop_cache(tmp)
            t0 = time.perf_counter()
            for z in plain.values():
                z[int(i)]
            times.append(time.perf_counter() - t0)
        rows.append({"layout": f"plain chunks of {chunk_size} (images)", "cache": label, "seq_cutouts_s": seq,
                     "random_one_ms": 1e3 * float(np.median(times))})
    return rows


def sessions(weights: Path, tmp: Path) -> dict:
    import onnxruntime as ort

    from lensengine.training.export import import_published

    paths = import_published(weights, tmp / "onnx", ["OU-66", "OU-200"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return {p.stem.replace("_", "-"): ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for p in paths if p.suffix == ".onnx"}


def p_lens(models: dict, bands: dict) -> dict[str, np.ndarray]:
    prepared = Preprocessor([MODEL_SPECS[m] for m in models])(bands)
    out = {}
    for name, sess in models.items():
        x = prepared.inputs[name]
        feed = sess.get_inputs()[0].name
        p = np.concatenate([sess.run(None, {feed: x[i:i + 32]})[0].reshape(-1) for i in range(0, len(x), 32)])
        out[name] = np.where(prepared.usable[name], p, np.nan)
    return out


def bench_precision(batch: CutoutBatch, models: dict) -> list[dict]:
    reference = p_lens(models, batch.bands())
    rows = []
    for keepbits in (14, 12, 10, 8, 6):
        rounded = CutoutBatch(batch.object_id, batch.ra, batch.dec, layout.bitround(batch.vis, keepbits),
                              layout.bitround(batch.nisp, keepbits), batch.flags)
        got = p_lens(models, rounded.bands())
        for name in models:
            diff = np.abs(got[name] - reference[name])
            crossed = int(np.sum((got[name] >= 0.5) != (reference[name] >= 0.5)))
            rows.append({"keepbits": keepbits, "model": name, "max_dP": float(np.nanmax(diff)),
                         "mean_dP": float(np.nanmean(diff)), "crossed_0.5": crossed, "n": int(len(diff))})
    return rows


def hst_check(models: dict, tmp: Path) -> dict | None:
    data = SHARED / "real" / "hst_sdssj0946" / "data.fits"
    if not data.is_file():
        return None
    from lensengine.catalogs.ingest import ingest_fits

    ingest_fits([data], tmp / "hst.zarr", band_map={"VIS": "PRIMARY"}, pixel_scales={"VIS": 0.05}, progress=False)
    batch = SurveyStore.open(tmp / "hst.zarr").read_chunk("fits", 0)
    return {name: float(p[0]) for name, p in p_lens(models, batch.bands()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="simulated cutouts (default 256)")
    parser.add_argument("--chunk-size", type=int, default=256, help="shard/chunk size for the read test")
    parser.add_argument("--copies", type=int, default=4, help="tile = this many copies of the cutouts")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lensengine-bench-cutouts.zarr")
    parser.add_argument("--weights", type=Path, default=SHARED / "published-weights")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batch = cutouts(args.n, args.cache)
    result: dict = {"n_cutouts": len(batch), "source": "lensengine.training.simulate.simulate_batch('mixed')"}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmpdir:
        tmp = Path(tmpdir)
        result["codecs"] = bench_codecs({"vis": batch.vis, "nisp": batch.nisp}, tmp)
        print(f"\nCodecs on {len(batch)} simulated cutouts (VIS + NISP float32)")
        print(f"{'codec':46s} {'ratio':>6s} {'enc MB/s':>9s} {'max rel err':>12s}")
        for r in result["codecs"]:
            print(f"{r['codec']:46s} {r['ratio']:6.2f} {r['encode_MB_s']:9.0f} {r['max_rel_error']:12.2e}")
        result["reads"] = bench_reads(batch, tmp, args.chunk_size, args.copies, rng)
        print(f"\nReads ({len(batch) * args.copies} cutouts, {os.cpu_count()} cores)")
        print(f"{'layout':40s} {'cache':6s} {'seq cutouts/s':>14s} {'random 1 cutout ms':>19s}")
        for r in result["reads"]:
            seq = "-" if r["seq_cutouts_s"] is None else f"{r['seq_cutouts_s']:.0f}"
            print(f"{r['layout']:40s} {r['cache']:6s} {seq:>14s} {r['random_one_ms']:19.1f}")
        if (args.weights / "OU_66_Weights.pt").is_file():
            models = sessions(args.weights, tmp)
            result["precision"] = bench_precision(batch, models)
            print("\nP(lens) change from bit rounding (published weights)")
            print(f"{'keepbits':>8s} {'model':8s} {'max dP':>9s} {'mean dP':>9s} {'crossed 0.5':>12s}")
            for r in result["precision"]:
                print(f"{r['keepbits']:8d} {r['model']:8s} {r['max_dP']:9.2e} {r['mean_dP']:9.2e} "
                      f"{r['crossed_0.5']:8d}/{r['n']}")
            result["hst_sdssj0946"] = hst_check(models, tmp)
            if result["hst_sdssj0946"]:
                print(f"\nSDSS J0946+1006 (HST, VIS <- F814W, NISP duplicated): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in result["hst_sdssj0946"].items())
                      + "  (paper Table 7: OU-66 0.6873, OU-200 0.8228)")
        else:
            print(f"\n(no published weights in {args.weights}: precision test skipped)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
