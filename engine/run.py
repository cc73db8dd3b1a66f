"""``lensengine run``: stream a survey store through the models on Dask into catalogues.

The run is planned as one task per store chunk.  Tasks go to a Dask cluster
(a local one by default, any existing scheduler by address); each worker keeps
its ONNX Runtime sessions.  As tasks finish (``as_completed``) the client
writes each chunk's rows to a part file (atomically), so the client never
holds the survey's scores and a killed run can be resumed: ``--resume`` skips
chunks whose part exists.  At the end the parts are merged in store order into
the score table (Parquet) and the ranked FITS candidate catalogue, each
written to a temporary file and renamed.  Every input cutout appears exactly
once: scored, or flagged with a reason.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine import __version__
from lensengine.engine.models import ContractError, ModelEntry, check_bands_available
from lensengine.engine.scoring import ChunkTask, score_chunk

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "RunSummary", "plan_run", "execute_run"]

PARTS_SUFFIX = ".parts"
MANIFEST = "run.json"


@dataclass
class RunOptions:
    store: Path
    out: Path
    scores: Path
    models: list[ModelEntry]
    models_dir: Path | None = None
    threshold: float = 0.5
    scheduler: str | None = None
    workers: int = 1
    threads: int = 0           # ONNX Runtime threads per worker (0: cores / workers)
    device: str = "auto"
    batch_size: int = 32
    resume: bool = False
    ensemble_path: Path | None = None
    precision: str = "fp32"
    progress: bool = True
    command_line: str = ""
    dashboard: bool = True
    explain_top: int = 0            # occlusion + Grad-CAM maps for the K best candidates
    explain_model: str | None = None


@dataclass
class RunSummary:
    n_cutouts: int = 0
    n_scored: int = 0
    n_flagged: int = 0
    n_unreadable: int = 0
    n_candidates: int = 0
    n_chunks: int = 0
    n_resumed: int = 0
    n_resumed_cutouts: int = 0
    seconds: float = 0.0
    ensemble: str = "mean"
    providers: dict = field(default_factory=dict)
    flag_counts: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.n_cutouts - self.n_resumed_cutouts) / self.seconds if self.seconds else 0.0


def plan_run(opts: RunOptions):
    """Open the store, check every model's contract against it, and list the chunk tasks.

    Raises ``ValueError``/``ContractError`` (exit code 2) before any work starts.
    """
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.ensemble import load_ensemble

    store = SurveyStore.open(opts.store)
    for entry in opts.models:
        check_bands_available(entry, store.bands, f"store {opts.store}")
    names = [m.name for m in opts.models]
    ensemble = load_ensemble(names, opts.models_dir, opts.ensemble_path)
    ensemble_path = str(getattr(ensemble, "path", "")) or None
    refs = tuple(dataclasses.replace(m, path=Path(m.path).resolve()) for m in opts.models)
    tasks = [
        ChunkTask(str(Path(opts.store).resolve()), tile, i, start, stop, refs, opts.device, opts.threads,
                  opts.batch_size, ensemble_path, opts.precision)
        for tile in store.tiles
        for i, (start, stop) in enumerate(store.chunk_slices(tile))
    ]
    if not tasks:
        raise ValueError(f"store {opts.store} holds no cutouts")
    return store, tasks, ensemble


def _manifest(opts: RunOptions, store, ensemble) -> dict:
    return {
        "store": str(Path(opts.store).resolve()),
        "cutouts": store.total_cutouts(),
        "chunk_size": store.chunk_size,
        "models": {m.name: m.sha256 for m in opts.models},
        "ensemble": ensemble.name,
        "batch_size": opts.batch_size,
        "precision": opts.precision,
    }


def _prepare_parts(opts: RunOptions, manifest: dict) -> Path:
    parts = opts.out.with_name(opts.out.name + PARTS_SUFFIX)
    mpath = parts / MANIFEST
    if parts.exists() and opts.resume:
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            raise ContractError(
                f"cannot resume: {parts} belongs to a different run (store, models, ensemble or batch size "
                f"changed, or precision); run without --resume to start again"
            )
        return parts
    if parts.exists():
        log.info("removing the parts of an earlier run in %s (use --resume to continue it)", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    mpath.write_text(json.dumps(manifest, indent=1))
    return parts


def _part_path(parts: Path, task: ChunkTask) -> Path:
    return parts / f"{task.tile}__{task.index:06d}.parquet"


def _to_arrow(rows: dict[str, np.ndarray]):
    import pyarrow as pa

    cols = {}
    for key, values in rows.items():
        values = np.asarray(values)
        cols[key] = pa.array(values.tolist() if values.dtype == object else values)
    return pa.table(cols)


def _write_part(path: Path, rows: dict[str, np.ndarray]) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    pq.write_table(_to_arrow(rows), tmp)
    os.replace(tmp, path)


def _client(opts: RunOptions):
    """A Dask client: attached to ``--scheduler`` or a fresh local cluster of processes."""
    from distributed import Client, LocalCluster

    if opts.scheduler:
        return Client(opts.scheduler, timeout="30s"), None
    resources = {"GPU": 1} if opts.device in ("cuda", "tensorrt") else None
    cluster = LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0" if opts.dashboard else None, resources=resources,
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("cutouts"),
                    TextColumn("{task.fields[rate]:>7.1f}/s"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def execute_run(opts: RunOptions) -> RunSummary:
    """Run a planned job to the end and write both outputs; returns the summary."""
    from distributed import as_completed

    store, tasks, ensemble = plan_run(opts)
    manifest = _manifest(opts, store, ensemble)
    parts = _prepare_parts(opts, manifest)
    summary = RunSummary(n_cutouts=store.total_cutouts(), n_chunks=len(tasks), ensemble=ensemble.name)
    todo = [t for t in tasks if not _part_path(parts, t).is_file()]
    summary.n_resumed = len(tasks) - len(todo)
    summary.n_resumed_cutouts = sum(t.stop - t.start for t in tasks) - sum(t.stop - t.start for t in todo)
    if summary.n_resumed:
        log.info("resuming: %d of %d chunks already done", summary.n_resumed, len(tasks))
    if opts.threads == 0 and not opts.scheduler:
        ncores = os.cpu_count() or 1
        threads = max(1, ncores // max(1, opts.workers))
        todo = [ChunkTask(**{**t.__dict__, "threads": threads}) for t in todo]

    t0 = time.perf_counter()
    if todo:
        client, cluster = _client(opts)
        try:
            if opts.dashboard and client.dashboard_link:
                log.info("Dask dashboard: %s", client.dashboard_link)
            summary.providers = _providers(client, todo[0])
            log.info("execution provider(s) on the workers: %s", summary.providers)
            resources = {"GPU": 1} if opts.device in ("cuda", "tensorrt") else None
            futures = [client.submit(score_chunk, t, key=f"score-{t.tile}-{t.index}-{os.getpid()}",
                                     resources=resources, pure=False) for t in todo]
            by_key = {f.key: t for f, t in zip(futures, todo)}
            done_cutouts = 0
            with _progress(opts.progress) as bar:
                task_id = bar.add_task("score", total=sum(t.stop - t.start for t in todo), rate=0.0)
                for future in as_completed(futures):
                    task = by_key[future.key]
                    rows = future.result()
                    _write_part(_part_path(parts, task), rows)
                    future.release()
                    done_cutouts += task.stop - task.start
                    rate = done_cutouts / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task_id, advance=task.stop - task.start, rate=rate)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    summary.seconds = time.perf_counter() - t0
    _merge(opts, tasks, parts, store, summary)
    shutil.rmtree(parts, ignore_errors=True)
    if opts.explain_top and summary.n_candidates:
        explain_candidates(opts, store)
    return summary


def explain_candidates(opts: RunOptions, store) -> Path:
    """Occlusion and guided Grad-CAM maps for the ``explain_top`` best candidates.

    Uses the torch weights kept beside the chosen model (default: OU-200 if run,
    else the first model), writes ``<out>_explain/`` and records each row's
    figures in the catalogue's ``EXPLAIN`` column.  Needs torch.
    """
    from lensengine.catalogs.catalog import read_catalog, write_table
    from lensengine.plugins.interpret import explain_cutouts
    from lensengine.training.export import load_torch_model

    by_name = {m.name: m for m in opts.models}
    name = opts.explain_model or ("OU-200" if "OU-200" in by_name else opts.models[0].name)
    if name not in by_name:
        raise ContractError(f"--explain-model {name} is not among the run's models {sorted(by_name)}")
    entry = by_name[name]
    net = load_torch_model(entry.path, entry.name)
    out_dir = opts.out.with_name(opts.out.stem + "_explain")
    cat = read_catalog(opts.out)
    k = min(opts.explain_top, len(cat))
    files = [""] * len(cat)
    for i in range(k):
        tile, row, oid = str(cat["TILE"][i]), int(cat["ROW"][i]), int(cat["OBJECT_ID"][i])
        batch = store.read(tile, row, row + 1)
        done = explain_cutouts(entry.name, net, batch, ["occlusion", "gradcam"], out_dir, object_ids=[oid])
        paths = done.get(oid, {})
        files[i] = ";".join(str(Path(p).relative_to(opts.out.parent)) for p in paths.values())
        log.info("explained candidate %d (object %d) with %s", i + 1, oid, name)
    cat["EXPLAIN"] = files
    cat.meta["EXPLMOD"] = (name, "model of the EXPLAIN maps (occlusion, Grad-CAM)")
    write_table(cat, opts.out)
    return out_dir


def _providers(client, task: ChunkTask) -> dict:
    """Ask each worker which provider its sessions use (builds the sessions once, up front)."""
    from lensengine.engine.sessions import session_provider

    m = task.models[0]
    try:
        return client.run(session_provider, str(m.path), task.device, task.threads)
    except Exception as exc:  # noqa: BLE001 - reporting only; the tasks will raise the real error
        log.warning("could not query the workers' execution providers: %s", exc)
        return {}


def _provenance(opts: RunOptions, store, summary: RunSummary) -> dict[str, tuple[object, str]]:
    from lensengine.catalogs.catalog import standard_provenance

    extra: dict[str, tuple[object, str]] = {
        "SOFTWARE": (f"lensengine {__version__}", "software that made this catalogue"),
        "DATE-RUN": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date of the run"),
        "SURVEY": (str(store.attrs.get("survey", ""))[:60], "survey of the input store"),
        "THRESH": (float(opts.threshold), "candidate threshold on P_ENSEMBLE"),
        "ENSEMBLE": (summary.ensemble, "ensemble score: OU-T-SNE or mean stand-in"),
        "PRECISN": (opts.precision, "fp32 (ONNX Runtime) or bf16 (torch autocast)"),
        "NCUTOUT": (summary.n_cutouts, "cutouts in the input store"),
        "NSCORED": (summary.n_scored, "cutouts with an ensemble score"),
        "NFLAGGED": (summary.n_flagged, "cutouts with a bad-input flag"),
        "NUNREAD": (summary.n_unreadable, "cutouts in unreadable chunks"),
        "NCAND": (summary.n_candidates, "candidates (P_ENSEMBLE >= THRESH)"),
    }
    try:
        from lensengine.plugins.manager import get_plugin_manager

        for cards in get_plugin_manager().hook.catalog_provenance():
            extra.update(cards or {})
    except ImportError:  # pragma: no cover
        pass
    return standard_provenance(models=[(m.name, m.sha256) for m in opts.models],
                               store=str(Path(opts.store).resolve()), command=opts.command_line, extra=extra)


def _merge(opts: RunOptions, tasks: list[ChunkTask], parts: Path, store, summary: RunSummary) -> None:
    """Stream the parts in store order into the score table and the candidate catalogue."""
    import pyarrow.parquet as pq
    from astropy.table import Table, vstack

    from lensengine.catalogs.catalog import ScoreTableWriter, write_candidates
    from lensengine.catalogs.flags import BAD_MASK, Flag

    candidates = []
    flag_counts: dict[str, int] = {}
    with ScoreTableWriter(opts.scores) as writer:
        for task in tasks:
            table = pq.read_table(_part_path(parts, task))
            rows = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
            n = len(rows["OBJECT_ID"])
            if n != task.stop - task.start:
                raise RuntimeError(f"part for chunk {task.key} has {n} rows, expected {task.stop - task.start}")
            writer.write(rows)
            flags = rows["FLAGS"].astype(np.uint32)
            score = rows["P_ENSEMBLE"].astype(np.float32)
            summary.n_scored += int(np.isfinite(score).sum())
            summary.n_flagged += int(((flags & BAD_MASK) != 0).sum())
            summary.n_unreadable += int(((flags & np.uint32(Flag.UNREADABLE)) != 0).sum())
            for f in Flag:
                if f.value:
                    k = int(((flags & np.uint32(f.value)) != 0).sum())
                    if k:
                        flag_counts[f.name] = flag_counts.get(f.name, 0) + k
            keep = np.isfinite(score) & (score >= opts.threshold)
            if keep.any():
                candidates.append(Table({k: (v[keep].astype(str) if v.dtype == object else v[keep])
                                         for k, v in rows.items()}))
    summary.flag_counts = flag_counts
    table = vstack(candidates) if candidates else Table({k: np.asarray(v)[:0] for k, v in rows.items()})
    summary.n_candidates = len(table)
    write_candidates(table, opts.out, threshold=opts.threshold, score_col="P_ENSEMBLE",
                     provenance=_provenance(opts, store, summary))


def format_summary(summary: RunSummary, opts: RunOptions) -> str:
    lines = [
        f"scored {summary.n_scored} of {summary.n_cutouts} cutouts in {summary.n_chunks} chunks "
        f"({summary.n_resumed} resumed) in {summary.seconds:.1f} s ({summary.rate:.1f} cutouts/s)",
        f"flagged {summary.n_flagged} (unreadable {summary.n_unreadable})"
        + (": " + ", ".join(f"{k} {v}" for k, v in sorted(summary.flag_counts.items())) if summary.flag_counts else ""),
        f"{summary.n_candidates} candidates with P_ENSEMBLE >= {opts.threshold} ({summary.ensemble} ensemble)",
        f"score table: {opts.scores}",
        f"candidate catalogue: {opts.out}",
    ]
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["lensengine", *sys.argv[1:]])
