"""Issue 14 (partitioned outputs) and issue 16 (run summary): the score table as a dataset partitioned by
tile, the streamed candidate catalogue, task sizes, and what the summary and ``--resume`` say.

Runs go through :func:`lensengine.engine.run.execute_run` on one small Dask cluster in this process,
over a NISP-only store of tiny chunks scored by a tiny ONNX graph (no torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def _models_module():
    spec = importlib.util.spec_from_file_location("reliability_models", REPO / "tests" / "reliability" / "_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A model scoring about 0.8 (P = 0.01 mean(x)) and one scoring 0.7 everywhere (every candidate ties)."""
    onnx_model = _models_module().onnx_model
    root = tmp_path_factory.mktemp("models")
    onnx_model(root / "mean" / "OU_J.onnx", "OU-J", ("J",), 66, scale=0.01)
    onnx_model(root / "flat" / "OU_J.onnx", "OU-J", ("J",), 66, scale=0.0, offset=0.7)
    return {"mean": root / "mean", "flat": root / "flat"}


def _store(path: Path, tiles=("A", "B"), n: int = 40, chunk_size: int = 16) -> Path:
    """NISP-only cutouts; object IDs ``1000 * tile index + row``."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    rng = np.random.default_rng(3)
    store = SurveyStore.create(path, survey="partitioned test", bands=("Y", "J", "H"), chunk_size=chunk_size,
                               truth_columns={"label": "int8"})
    for t, tile in enumerate(tiles):
        store.append(tile, CutoutBatch(
            object_id=1000 * t + np.arange(n, dtype=np.int64), ra=rng.uniform(150, 151, n), dec=rng.uniform(2, 3, n),
            vis=None, nisp=rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32), flags=np.zeros(n, np.uint32),
            truth={"label": (np.arange(n) % 2).astype(np.int8)}))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("store") / "s.zarr")


def _run(store: Path, out: Path, models: Path, scheduler: str, **options):
    from lensengine.engine.registry import resolve_models
    from lensengine.engine.run import RunOptions, execute_run

    options.setdefault("threshold", 0.0)
    opts = RunOptions(store=store, out=out, scores=out.with_name(out.stem + "_scores.parquet"),
                      models=resolve_models(models), models_dir=models, scheduler=scheduler, progress=False,
                      **options)
    return execute_run(opts), opts


def _columns(path: Path) -> dict[str, np.ndarray]:
    from lensengine.catalogs.catalog import read_scores

    table = read_scores(path)
    return {name: np.asarray(table[name]) for name in table.colnames}


# dask 2026.8 calls reset_index(inplace=True), which pandas 3.1 deprecates: dask's, not ours
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index is deprecated")
def test_score_table_is_a_dataset_partitioned_by_tile(tmp_path, store, model_dirs, scheduler):
    dd = pytest.importorskip("dask.dataframe", reason="dask.dataframe needs pandas (the dev extra)")
    import pyarrow.dataset as ds

    from lensengine.catalogs.catalog import describe_file, read_scores

    summary, opts = _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler)
    scores = opts.scores
    assert scores.is_dir() and summary.n_tasks == 6 and summary.n_candidates == 80
    files = sorted(p.relative_to(scores).as_posix() for p in scores.rglob("*") if p.is_file())
    assert files == ["_common_metadata"] + [f"tile={t}/part-{s:012d}.parquet" for t in "AB" for s in (0, 16, 32)]
    assert not (tmp_path / "c.fits.parts").exists()

    dataset = ds.dataset(scores, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 80
    assert table.column("tile").to_pylist() == table.column("TILE").to_pylist()
    only_b = dataset.to_table(filter=ds.field("tile") == "B", columns=["TILE", "ROW", "OBJECT_ID"])
    assert set(only_b.column("TILE").to_pylist()) == {"B"} and only_b.num_rows == 40
    assert sorted(only_b.column("OBJECT_ID").to_pylist()) == list(range(1000, 1040))

    frame = dd.read_parquet(scores).compute()
    assert len(frame) == 80
    assert sorted(zip(frame["TILE"], frame["ROW"])) == [(t, r) for t in "AB" for r in range(40)]
    np.testing.assert_array_equal(np.sort(frame["P_ENSEMBLE"].to_numpy()),
                                  np.sort(table.column("P_ENSEMBLE").to_numpy()))

    read = read_scores(scores)  # the library's reader: store order, the provenance from _common_metadata
    assert list(read["OBJECT_ID"]) == [*range(40), *range(1000, 1040)]
    assert read.meta["THRESH"] == "0.0" and read.meta["NCUTOUT"] == "80" and read.meta["RUNID"]
    assert read["RA"].unit == "deg" and read["P_ENSEMBLE"].description
    assert "80 rows" in describe_file(scores)


def test_task_size_changes_the_tasks_not_the_results(tmp_path, store, model_dirs, scheduler):
    base, base_opts = _run(store, tmp_path / "base.fits", model_dirs["mean"], scheduler)
    expected = _columns(base_opts.scores)
    for size, n_tasks, parts_a in ((8, 10, [0, 8, 16, 24, 32]), (32, 4, [0, 32]), (20, 6, [0, 16, 32])):
        summary, opts = _run(store, tmp_path / f"t{size}.fits", model_dirs["mean"], scheduler, task_size=size)
        assert summary.n_tasks == n_tasks, size
        assert sorted(int(p.stem[5:]) for p in (opts.scores / "tile=A").glob("part-*.parquet")) == parts_a
        got = _columns(opts.scores)
        for name in ("OBJECT_ID", "TILE", "CHUNK", "ROW", "P_OU_J", "P_ENSEMBLE", "FLAGS"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{name}, task size {size}")


@pytest.mark.parametrize("model", ["mean", "flat"])
def test_streamed_catalogue_equals_the_in_memory_one(tmp_path, store, model_dirs, scheduler, monkeypatch, model):
    """Candidates spilled in sorted runs of 7 and merged 2 at a time (three levels) give the same catalogue;
    with every score tied ("flat"), the rank follows the store order, as the in-memory stable sort does."""
    import lensengine.engine.run as run
    from lensengine.catalogs.catalog import read_catalog

    _run(store, tmp_path / "memory.fits", model_dirs[model], scheduler)
    monkeypatch.setattr(run, "CANDIDATE_BLOCK", 7)
    monkeypatch.setattr(run, "SPILL_FAN_IN", 2)
    monkeypatch.setattr(run, "SPILL_BATCH", 3)
    _run(store, tmp_path / "stream.fits", model_dirs[model], scheduler)
    a, b = read_catalog(tmp_path / "memory.fits"), read_catalog(tmp_path / "stream.fits")
    assert a.colnames == b.colnames and len(a) == len(b) == 80
    for name in a.colnames:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name
        assert a[name].info.description == b[name].info.description, name
    assert list(b["RANK"]) == list(range(1, 81))
    if model == "flat":
        assert list(b["OBJECT_ID"]) == [*range(40), *range(1000, 1040)]
    differ = {"DATE", "DATE-RUN", "RUNID", "CMDLINE"}
    assert {k: v for k, v in a.meta.items() if k not in differ} == {k: v for k, v in b.meta.items() if k not in differ}
    assert not list(tmp_path.glob("*.parts"))  # the spill runs went with the parts folder


def test_merge_of_sorted_runs_holds_one_batch_per_run(tmp_path, monkeypatch):
    import lensengine.engine.run as run

    monkeypatch.setattr(run, "SPILL_BATCH", 4)
    rng = np.random.default_rng(0)
    score = rng.choice(np.float32([0.5, 0.6, 0.7, 0.9]), 60)  # many ties
    runs = []
    for i, rows in enumerate(np.array_split(np.arange(60), 5)):
        order = rows[np.lexsort((rows, -score[rows].astype(np.float64)))]
        runs.append(tmp_path / f"r{i}.parquet")
        run._write_rows(runs[-1], {"P_ENSEMBLE": score[order], "_SEQ": order.astype(np.int64)})
    blocks = list(run._merge_sorted(runs, "_SEQ"))
    assert max(len(b["_SEQ"]) for b in blocks) <= 5 * 4
    merged = np.concatenate([b["_SEQ"] for b in blocks])
    np.testing.assert_array_equal(merged, np.lexsort((np.arange(60), -score.astype(np.float64))))


def test_resume_of_a_finished_run_says_so_and_redoes_nothing(tmp_path, store, model_dirs, scheduler):
    from lensengine.engine.run import format_summary

    _, opts = _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler)
    stamps = {p: p.stat().st_mtime_ns for p in [opts.out, *opts.scores.rglob("*")]}
    summary, opts = _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler, resume=True)
    assert summary.already_complete and summary.n_cutouts_now == 0 and summary.n_candidates == 80
    text = format_summary(summary, opts)
    assert text.startswith("already complete") and "--restart" in text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another threshold is another result: not complete, scored again
    summary, _ = _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler, resume=True, threshold=0.9)
    assert not summary.already_complete and summary.n_cutouts_now == 80


def test_resumed_cutouts_do_not_count_in_the_speed(tmp_path, store, model_dirs, scheduler, monkeypatch):
    import lensengine.engine.run as run
    from lensengine.engine.run import RunFailed, format_summary

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the merge")

    with monkeypatch.context() as m:
        m.setattr(run, "_merge", crash)
        with pytest.raises(RunFailed):
            _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler)
    with pytest.raises(run.RunRefused, match="task size"):  # the parts were cut for the default task size
        _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler, resume=True, task_size=8)
    summary, opts = _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler, resume=True)
    assert (summary.n_resumed, summary.n_resumed_cutouts, summary.n_cutouts_now) == (6, 80, 0)
    assert summary.rate == 0.0
    assert format_summary(summary, opts).splitlines()[0].startswith(
        "80 cutouts in 6 tasks of up to 16 (6 resumed): 0 scored now in ")


def test_summary_separates_bad_input_from_informational_flags():
    from types import SimpleNamespace

    from lensengine.engine.run import RunSummary, format_summary

    summary = RunSummary(n_cutouts=1000, n_scored=998, n_flagged=2, n_unreadable=0, n_tasks=10, task_size=100,
                         n_resumed=9, n_resumed_cutouts=900, n_cutouts_now=100, seconds=10.0,
                         flag_counts={"NONFINITE": 2, "BAND_DUPLICATED": 1, "EDGE_CLIPPED": 1})
    lines = format_summary(summary, SimpleNamespace(threshold=0.5, scores="s", out="o")).splitlines()
    assert "100 scored now in 10.0 s (10.0 cutouts/s), 900 by an earlier run" in lines[0]
    assert lines[1] == "998 with an ensemble score; 2 with a bad-input flag (0 unreadable): NONFINITE 2"
    assert lines[2] == "informational flags (those cutouts are scored): BAND_DUPLICATED 1, EDGE_CLIPPED 1"


def test_scores_folder_that_is_not_a_score_table_is_refused(tmp_path, store, model_dirs, scheduler):
    from lensengine.engine.run import RunRefused

    mine = tmp_path / "c_scores.parquet"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunRefused, match="not a lensengine score table"):
        _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler)
    assert (mine / "notes.txt").read_text() == "mine"
    # a single-file score table of an earlier version is replaced by the folder
    (mine / "notes.txt").unlink()
    mine.rmdir()
    mine.write_bytes(b"PAR1 an earlier single-file score table")
    _run(store, tmp_path / "c.fits", model_dirs["mean"], scheduler)
    assert mine.is_dir() and pq.read_schema(mine / "_common_metadata").metadata[b"lensengine.kind"] == b"score-table"
