"""Gallery benchmark: build a large candidate gallery and time how fast it opens in headless Chromium.

    nice python benchmarks/bench_gallery.py --n 2000 --json bench_gallery.json

1. A store of ``--n`` survey-like cutouts (a galaxy with an arc on sky noise, gamma-noise NISP; kept in
   ``--work`` and reused) and a catalogue of all of them with two model scores, the ensemble and flags.
2. ``lensengine gallery`` on it: build time, total bytes and bytes per candidate.
3. The page opened ``--repeat`` times in Debian's headless Chromium (selenium + chromium-driver; nothing is
   downloaded): navigationStart to DOMContentLoaded, to the load event (the lazy images in view included),
   to the end of the script's first render (the first 60 cards) and to the last card built (the rest follow
   in batches after the load event), from the browser's Navigation and High Resolution Time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


_TIMES = ("dcl", "load", "first_render", "all_cards")


def repage(index: Path) -> None:
    """Rewrite an existing gallery's index.html with the current page template (its images are kept)."""
    from lensengine.plugins._gallery_page import render_page

    text = index.read_text(encoding="utf-8")
    tag = '<script id="gallery-data" type="application/json">'
    start = text.index(tag) + len(tag)
    data = json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))
    index.write_text(render_page(data["gallery"], data["rows"], title="benchmark gallery", meta="benchmark",
                                 views_help="", filter_label="ensemble"), encoding="utf-8")


def make_inputs(work: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    from astropy.table import Table

    from lensengine.catalogs.catalog import standard_provenance, write_candidates
    from lensengine.catalogs.flags import describe
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    store, catalog = work / f"bench{n}.zarr", work / f"bench{n}.fits"
    if catalog.is_file() and store.exists():
        return store, catalog
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:200, :200] - 99.5
    r, angle = np.hypot(xx, yy), np.degrees(np.arctan2(yy, xx))
    galaxy = 400.0 * np.exp(-r / 3.0)
    with SurveyStore.build(store, overwrite=True, survey="gallery benchmark", chunk_size=256) as s:
        for start in range(0, n, 256):
            m = min(256, n - start)
            arcs = [6.0 * np.exp(-0.5 * ((r - rng.uniform(6, 15)) / 0.8) ** 2)
                    * (np.abs(angle - rng.uniform(-180, 180)) < 60) for _ in range(m)]
            vis = (galaxy + np.stack(arcs) + rng.normal(0, 1.0, (m, 200, 200))).astype(np.float32)
            nisp = rng.gamma(2.0, 5.0, (m, 3, 66, 66)).astype(np.float32)
            s.append("T0", CutoutBatch(object_id=np.arange(start, start + m, dtype=np.int64),
                                       ra=rng.uniform(150, 151, m), dec=rng.uniform(2, 3, m), vis=vis, nisp=nisp,
                                       flags=np.zeros(m, np.uint32)))
    p1, p2 = rng.uniform(0.5, 1, n).astype(np.float32), rng.uniform(0.5, 1, n).astype(np.float32)
    flags = np.where(rng.uniform(size=n) < 0.05, 1, 0).astype(np.uint32)
    scores = Table({"OBJECT_ID": np.arange(n, dtype=np.int64), "TILE": np.array(["T0"] * n),
                    "CHUNK": (np.arange(n) // 256).astype(np.int32), "ROW": np.arange(n, dtype=np.int64),
                    "RA": rng.uniform(150, 151, n), "DEC": rng.uniform(2, 3, n), "P_OU_66": p1, "P_OU_200": p2,
                    "P_ENSEMBLE": (p1 + p2) / 2, "FLAGS": flags,
                    "FLAG_TEXT": np.array([describe(int(f)) for f in flags])})
    write_candidates(scores, catalog, threshold=0.0, provenance=standard_provenance(store=store))
    return store, catalog


def open_times(index: Path, repeat: int) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    out = []
    try:
        for _ in range(repeat):
            driver.get("about:blank")
            driver.get(index.as_uri())
            end = time.monotonic() + 30
            while time.monotonic() < end:
                timing = driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "const g = window.lensGallery;"
                    "return n && n.loadEventEnd > 0 && g && g.completeAt ? "
                    "{dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, first_render: g.renderedAt,"
                    " all_cards: g.completeAt, shown: g.shown(), cards: g.built(), images: document.images.length,"
                    " loaded: Array.from(document.images).filter(i => i.complete && i.naturalWidth).length} : null")
                if timing:
                    out.append(timing)
                    break
                time.sleep(0.05)
    finally:
        driver.quit()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lensengine-bench-gallery")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--page-only", action="store_true",
                        help="Reuse the gallery in --work and only rewrite its index.html (page changes).")
    args = parser.parse_args()
    from lensengine.plugins.gallery import build_gallery

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store, catalog = make_inputs(args.work, args.n)
    t_inputs = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = args.work / f"gallery{args.n}"
    if args.page_only and (out / "index.html").is_file():
        repage(out / "index.html")
        index = out / "index.html"
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        n_candidates = args.n
    else:
        result = build_gallery(catalog, store, out)
        index, total, n_candidates = result.index, result.bytes_total, result.n_candidates
    t_build = time.perf_counter() - t0
    html_bytes = index.stat().st_size
    runs = open_times(index, args.repeat)
    report = {
        "n_candidates": n_candidates, "inputs_s": round(t_inputs, 1), "build_s": round(t_build, 1),
        "bytes_total": total, "bytes_per_candidate": round(total / n_candidates),
        "html_bytes": html_bytes,
        "open_ms_median": {k: round(statistics.median(r[k] for r in runs), 1) for k in _TIMES},
        "open_ms_max": {k: round(max(r[k] for r in runs), 1) for k in _TIMES},
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
