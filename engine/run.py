"""``lensengine run``: stream a survey store through the models on Dask into catalogues.

The run is planned as one task per store chunk.  Planning checks everything it
can before work starts (the options, the store's layout, every model's
contract, the lock on the outputs, the parts of an earlier run) and refuses
with exit code 2; anything that fails after work started is a failed job
(exit code 1, naming what failed); Ctrl-C stops cleanly (exit code 130) and
keeps the finished chunks for ``--resume``.

Tasks go to a Dask cluster (a local one by default, any existing scheduler by
address); each worker keeps its ONNX Runtime sessions.  As tasks finish
(``as_completed``) the client writes each chunk's rows to a part file
(atomically), so the client never holds the survey's scores and a killed run
can be resumed.  At the end the parts are checked and merged in store order
into the score table (Parquet) and the ranked FITS candidate catalogue, which
are committed together (:mod:`lensengine.engine.run_state` keeps the lock,
the parts and the commit honest).  Every input cutout appears exactly once:
scored, or flagged with a reason.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine import __version__
from lensengine.engine.models import ContractError, ModelEntry, check_bands_available, file_sha256
from lensengine.engine.run_state import (
    OutputLock,
    PartsFolder,
    RunRefused,
    commit_outputs,
    finish_interrupted_commit,
    ids_sha256,
    remove_stale_temporaries,
)
from lensengine.engine.scoring import ChunkTask, row_schema, score_chunk

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "RunSummary", "RunFailed", "RunRefused", "plan_run", "execute_run"]


class RunFailed(Exception):
    """The job failed after work started (exit code 1); the message names what failed."""


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
    restart: bool = False      # discard the finished parts of an earlier run
    ensemble_path: Path | None = None
    precision: str = "fp32"
    progress: bool = True
    command_line: str = ""
    dashboard: bool = True     # the local cluster's dashboard, on 127.0.0.1 only
    verbose: int = 0           # 1 or more: Dask's INFO logs too
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    security_file: Path | None = None  # YAML of distributed.security.Security arguments
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
    n_redone: int = 0
    seconds: float = 0.0
    ensemble: str = "mean"
    providers: dict = field(default_factory=dict)
    flag_counts: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.n_cutouts - self.n_resumed_cutouts) / self.seconds if self.seconds else 0.0


@dataclass
class _Plan:
    store: object
    tasks: list[ChunkTask]
    ensemble: object
    manifest: dict
    run_id: str
    ids: dict[str, str]          # chunk key -> SHA-256 of the object IDs its part must hold
    provenance_hashes: dict[str, tuple[object, str]]


def plan_run(opts: RunOptions):
    """Open the store, check its layout and every model's contract against it, and list the chunk tasks.

    Raises ``ValueError``/``ContractError`` (exit code 2) before any work starts.
    """
    from lensengine.catalogs.store import SurveyStore
    from lensengine.engine.ensemble import load_ensemble

    store = SurveyStore.open(opts.store)
    store.check_layout()
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


def _weights_path(entry: ModelEntry) -> Path:
    """The torch weights kept beside an ONNX model (what ``--precision bf16`` runs)."""
    return Path(entry.path).with_suffix(".pt")


def _fingerprint(opts: RunOptions, store, tasks: list[ChunkTask], ensemble) -> _Plan:
    """The manifest a resume must match, the object-ID hash of every chunk, and the file hashes for provenance.

    The store is fingerprinted per tile (:meth:`SurveyStore.fingerprint`: IDs, positions, file
    sizes and mtimes; no pixel reads), the models by the SHA-256 of their ONNX files and, when
    bf16 runs them, of their ``.pt`` weights, the ensemble by the SHA-256 of its file.
    """
    tiles, ids = {}, {}
    for tile in store.tiles:
        tiles[tile], hashes = store.fingerprint(tile)
        for index, ((start, stop), digest) in enumerate(zip(store.chunk_slices(tile), hashes)):
            # an unreadable ID column: the rows of that chunk carry -1 (see scoring)
            ids[f"{tile}/{index}"] = digest or ids_sha256(np.full(stop - start, -1))
    models = {}
    hashes: dict[str, tuple[object, str]] = {}
    for i, m in enumerate(opts.models, start=1):
        models[m.name] = {"onnx": m.sha256 or file_sha256(m.path)}
        if opts.precision == "bf16":
            pt = _weights_path(m)
            if not pt.is_file():
                raise ContractError(f"--precision bf16 runs the torch weights {pt} beside model {m.name}; "
                                    f"the file is missing")
            models[m.name]["pt"] = file_sha256(pt)
            hashes[f"PTSHA{i}"] = (models[m.name]["pt"], f"SHA-256 of model {i}'s .pt weights (bf16)")
    ensemble_file = getattr(ensemble, "path", None)
    ens = {"name": ensemble.name, "sha256": file_sha256(ensemble_file) if ensemble_file else None}
    if ensemble_file:
        hashes["ENSFILE"] = (Path(ensemble_file).name, "ensemble file")
        hashes["ENSSHA"] = (ens["sha256"], "SHA-256 of the ensemble file")
    manifest = {
        "kind": "lensengine-run-parts",
        "out": str(Path(opts.out).resolve()),
        "store": str(Path(opts.store).resolve()),
        "store_attrs": hashlib.sha256(json.dumps(store.attrs, sort_keys=True, default=str).encode()).hexdigest(),
        "tiles": tiles,
        "cutouts": store.total_cutouts(),
        "chunk_size": store.chunk_size,
        "models": models,
        "ensemble": ens,
        "batch_size": opts.batch_size,
        "precision": opts.precision,
    }
    run_id = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    return _Plan(store, tasks, ensemble, manifest, run_id, ids, hashes)


def _identity(plan: _Plan, task: ChunkTask) -> dict:
    return {"tile": task.tile, "chunk": task.index, "start": task.start, "stop": task.stop,
            "ids": plan.ids[task.key], "run": plan.run_id}


def _check_options(opts: RunOptions) -> None:
    """Usage errors visible in the options alone."""
    if Path(opts.scores).resolve() == Path(opts.out).resolve():
        raise RunRefused(f"--scores and --out are the same file ({opts.out}): the catalogue would overwrite "
                         f"the score table")
    if opts.resume and opts.restart:
        raise RunRefused("--resume and --restart contradict each other: choose one")
    for path in (opts.out, opts.scores):
        if Path(path).is_dir():
            raise RunRefused(f"{path} is a directory; --out and --scores name files")


def _security(opts: RunOptions):
    """A ``distributed.security.Security`` for ``--scheduler`` from the TLS options, or None (plaintext)."""
    given = [p for p in (opts.tls_ca_file, opts.tls_cert, opts.tls_key) if p is not None]
    if not given and opts.security_file is None:
        if opts.scheduler and opts.scheduler.startswith("tls://"):
            raise RunRefused(f"--scheduler {opts.scheduler} needs TLS: give --tls-ca-file, --tls-cert and "
                             f"--tls-key, or --security FILE")
        return None
    if not opts.scheduler:
        raise RunRefused("TLS options apply to --scheduler; the local cluster stays on 127.0.0.1")
    if not opts.scheduler.startswith("tls://"):
        raise RunRefused(f"TLS options need a tls:// scheduler address, not {opts.scheduler}")
    from distributed.security import Security

    kwargs: dict = {}
    if opts.security_file is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(opts.security_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunRefused(f"--security {opts.security_file}: cannot read it ({exc})") from None
        allowed = set(Security.__slots__) - {"extra_conn_args"}
        if not isinstance(loaded, dict) or set(loaded) - allowed:
            bad = sorted(set(loaded) - allowed) if isinstance(loaded, dict) else type(loaded).__name__
            raise RunRefused(f"--security {opts.security_file}: expected a mapping of {sorted(allowed)}, got {bad}")
        kwargs.update(loaded)
    for key, value in (("tls_ca_file", opts.tls_ca_file), ("tls_client_cert", opts.tls_cert),
                       ("tls_client_key", opts.tls_key)):
        if value is not None:
            kwargs[key] = str(value)
    missing = [k for k in ("tls_ca_file", "tls_client_cert", "tls_client_key") if not kwargs.get(k)]
    if missing:
        raise RunRefused(f"TLS for --scheduler needs {', '.join(missing)} (options --tls-ca-file, --tls-cert, "
                         f"--tls-key or the --security file)")
    for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        value = str(kwargs[key])
        if "-----BEGIN" not in value and not Path(value).is_file():
            raise RunRefused(f"TLS file {value} ({key}) does not exist")
    kwargs.setdefault("require_encryption", True)
    return Security(**kwargs)


def _to_arrow(rows: dict[str, np.ndarray], schema):
    """A chunk's rows as a pyarrow Table: the row schema's columns typed by it, plugin columns appended."""
    import pyarrow as pa

    arrays, fields = [], []
    for f in schema:
        values = np.asarray(rows[f.name])
        arrays.append(pa.array(values.astype(str) if pa.types.is_string(f.type) else values, type=f.type))
        fields.append(f)
    for key, values in rows.items():
        if key not in schema.names:
            values = np.asarray(values)
            arr = pa.array(values.tolist() if values.dtype == object else values)
            arrays.append(arr)
            fields.append(pa.field(key, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


#: Worker processes' log levels unless -v: their warnings and errors only; the heartbeat that races a clean
#: shutdown (the scheduler closing first) logs an ERROR with a traceback, which is noise, not a failure.
#: (dask reads a dict literal from DASK_LOGGING; its keys are logger names, so they cannot be nested variables)
_WORKER_LOG_ENV = {"DASK_LOGGING": repr({"distributed": "warning", "distributed.worker": "critical"})}


def _dask_log_level(opts: RunOptions) -> int:
    return logging.INFO if opts.verbose >= 1 else logging.WARNING


def _client(opts: RunOptions, scratch: Path | None, security):
    """A Dask client: attached to ``--scheduler`` or a fresh local cluster of processes.

    The local cluster listens on 127.0.0.1 only (scheduler, workers and the dashboard, which
    ``--no-dashboard`` turns off), keeps its scratch space in this run's folder, and its worker
    processes ignore SIGINT: Ctrl-C reaches the client, which then shuts the cluster down
    cleanly instead of leaving killed workers (and leaked semaphores) behind.
    """
    import dask
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(_dask_log_level(opts))
    if opts.scheduler:
        return Client(opts.scheduler, timeout="30s", security=security), None
    resources = {"GPU": 1} if opts.device in ("cuda", "tensorrt") else None
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # inherited by the workers
    # the workers read their log level from the environment when they import distributed
    saved = {k: os.environ.get(k) for k in _WORKER_LOG_ENV}
    os.environ.update(_WORKER_LOG_ENV if opts.verbose < 1 else {})
    # --no-dashboard: the scheduler's HTTP server (it always has one) serves no pages at all
    routes = {} if opts.dashboard else {"distributed.scheduler.http.routes": []}
    try:
        with dask.config.set(routes):
            cluster = LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": opts.dashboard},
                                   resources=resources, local_directory=str(scratch) if scratch else None,
                                   silence_logs=logging.INFO if opts.verbose >= 1 else logging.ERROR)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def _close(client, cluster) -> None:
    """Shut the client, then a local cluster (which stops its workers before its scheduler), down."""
    client.close()
    if cluster is not None:
        cluster.close()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("cutouts"),
                    TextColumn("{task.fields[rate]:>7.1f}/s"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def execute_run(opts: RunOptions) -> RunSummary:
    """Plan, check, score and commit a run; returns the summary.

    Raises :class:`RunRefused` (exit 2) for bad usage or input found before work, :class:`RunFailed`
    (exit 1) when the job fails after work started, and lets ``KeyboardInterrupt`` through after
    shutting the cluster down (the finished parts stay for ``--resume``).
    """
    _check_options(opts)
    security = _security(opts)
    try:
        store, tasks, ensemble = plan_run(opts)
        plan = _fingerprint(opts, store, tasks, ensemble)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        raise RunRefused(str(exc).strip("'\"")) from None
    parts = PartsFolder.for_output(opts.out)
    with OutputLock(opts.out, opts.command_line):
        finish_interrupted_commit(parts.path)
        remove_stale_temporaries([opts.out, opts.scores])
        parts.open(plan.manifest, resume=opts.resume, restart=opts.restart)
        summary = RunSummary(n_cutouts=store.total_cutouts(), n_chunks=len(tasks), ensemble=ensemble.name)
        stage = "checking the finished parts"
        try:
            todo = _unfinished(plan, parts, summary)
            stage = "scoring"
            t0 = time.perf_counter()
            if todo:
                _score(opts, plan, parts, todo, summary, t0, security)
            summary.seconds = time.perf_counter() - t0
            stage = f"merging the parts into {opts.scores} and {opts.out}"
            _merge(opts, plan, parts, summary)
        except (KeyboardInterrupt, RunFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure after work started is a failed job (exit 1)
            raise RunFailed(f"{stage} failed: {type(exc).__name__}: {exc}") from exc
        parts.remove()
    if opts.explain_top and summary.n_candidates:
        explain_candidates(opts, store)
    return summary


def _unfinished(plan: _Plan, parts: PartsFolder, summary: RunSummary) -> list[ChunkTask]:
    """The tasks still to score; a finished part that fails its check is removed and redone."""
    todo = []
    for task in plan.tasks:
        path = parts.part_path(task.tile, task.index)
        if not path.is_file():
            todo.append(task)
            continue
        problem, _ = parts.check_part(path, _identity(plan, task))
        if problem:
            log.warning("redoing chunk %s: its part %s is %s", task.key, path.name, problem)
            path.unlink()
            summary.n_redone += 1
            todo.append(task)
    summary.n_resumed = len(plan.tasks) - len(todo)
    summary.n_resumed_cutouts = sum(t.stop - t.start for t in plan.tasks) - sum(t.stop - t.start for t in todo)
    if summary.n_resumed:
        log.info("resuming: %d of %d chunks already done", summary.n_resumed, len(plan.tasks))
    return todo


def _score(opts: RunOptions, plan: _Plan, parts: PartsFolder, todo: list[ChunkTask], summary: RunSummary,
           t0: float, security) -> None:
    """Score the unfinished chunks on Dask, writing each chunk's part as its result arrives."""
    from distributed import as_completed

    if opts.threads == 0 and not opts.scheduler:
        ncores = os.cpu_count() or 1
        threads = max(1, ncores // max(1, opts.workers))
        todo = [dataclasses.replace(t, threads=threads) for t in todo]
    schema = row_schema(opts.models, todo[0].ensemble, plan.store.truth_columns)
    scratch = None if opts.scheduler else parts.scratch()
    try:
        try:
            client, cluster = _client(opts, scratch, security)
        except OSError as exc:
            raise RunFailed(f"could not start or reach the Dask cluster ({opts.scheduler or 'local'}): {exc}") \
                from exc
        try:
            if opts.dashboard and client.dashboard_link:
                log.info("Dask dashboard: %s", client.dashboard_link)
            summary.providers = _providers(client, todo[0])
            log.info("execution provider(s) on the workers: %s", summary.providers)
            resources = {"GPU": 1} if opts.device in ("cuda", "tensorrt") else None
            futures = [client.submit(score_chunk, t, key=f"score-{plan.run_id}-{t.tile}-{t.index}-{os.getpid()}",
                                     resources=resources, pure=False) for t in todo]
            by_key = {f.key: t for f, t in zip(futures, todo)}
            done_cutouts = 0
            with _progress(opts.progress) as bar:
                task_id = bar.add_task("score", total=sum(t.stop - t.start for t in todo), rate=0.0)
                for future in as_completed(futures):
                    task = by_key[future.key]
                    try:
                        rows = future.result()
                    except Exception as exc:  # noqa: BLE001 - name the chunk whose task failed
                        raise RunFailed(f"scoring chunk {task.key} (rows {task.start}..{task.stop - 1}) failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
                    parts.write_part(parts.part_path(task.tile, task.index), _to_arrow(rows, schema),
                                     _identity(plan, task))
                    future.release()
                    done_cutouts += task.stop - task.start
                    rate = done_cutouts / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task_id, advance=task.stop - task.start, rate=rate)
        finally:
            _close(client, cluster)
    finally:
        if scratch is not None:
            parts.remove_scratch()


def explain_candidates(opts: RunOptions, store) -> Path:
    """Interpretability maps for the ``explain_top`` best candidates, made by a plugin.

    The model is ``--explain-model`` (default: OU-200 if run, else the first
    model).  The maps come from the ``explain_candidates`` hook (the built-in
    interpretability plugin: occlusion and guided Grad-CAM, needs torch); they
    go to ``<out>_explain/`` and each row's figures are recorded in the
    catalogue's ``EXPLAIN`` column.
    """
    from lensengine.catalogs.catalog import read_catalog, write_table
    from lensengine.plugins.manager import get_plugin_manager

    by_name = {m.name: m for m in opts.models}
    name = opts.explain_model or ("OU-200" if "OU-200" in by_name else opts.models[0].name)
    if name not in by_name:
        raise ContractError(f"--explain-model {name} is not among the run's models {sorted(by_name)}")
    entry = by_name[name]
    out_dir = opts.out.with_name(opts.out.stem + "_explain")
    cat = read_catalog(opts.out)
    k = min(opts.explain_top, len(cat))
    rows = [(str(cat["TILE"][i]), int(cat["ROW"][i]), int(cat["OBJECT_ID"][i])) for i in range(k)]
    done = get_plugin_manager().hook.explain_candidates(model=entry, store=store, rows=rows, out_dir=out_dir)
    if done is None:
        raise RuntimeError("--explain-top needs a plugin that makes interpretability maps (the built-in one "
                           "needs torch: pip install 'lensengine[training]')")
    files = [""] * len(cat)
    for i, (_, _, oid) in enumerate(rows):
        paths = done.get(oid, {})
        files[i] = ";".join(str(Path(p).relative_to(opts.out.parent)) for p in paths.values())
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


def _provenance(opts: RunOptions, plan: _Plan, summary: RunSummary) -> dict[str, tuple[object, str]]:
    """The provenance cards of both outputs (FITS header cards; the score table's schema metadata)."""
    from lensengine.catalogs.catalog import standard_provenance

    extra: dict[str, tuple[object, str]] = {
        "SOFTWARE": (f"lensengine {__version__}", "software that made this catalogue"),
        "DATE-RUN": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date of the run"),
        "SURVEY": (str(plan.store.attrs.get("survey", ""))[:60], "survey of the input store"),
        "THRESH": (float(opts.threshold), "candidate threshold on P_ENSEMBLE"),
        "ENSEMBLE": (summary.ensemble, "ensemble score: OU-T-SNE or mean stand-in"),
        "PRECISN": (opts.precision, "fp32 (ONNX Runtime) or bf16 (torch autocast)"),
        "RUNID": (plan.run_id, "run fingerprint (store, models, ensemble, options)"),
        "NCUTOUT": (summary.n_cutouts, "cutouts in the input store"),
        "NSCORED": (summary.n_scored, "cutouts with an ensemble score"),
        "NFLAGGED": (summary.n_flagged, "cutouts with a bad-input flag"),
        "NUNREAD": (summary.n_unreadable, "cutouts in unreadable chunks"),
        "NCAND": (summary.n_candidates, "candidates (P_ENSEMBLE >= THRESH)"),
        **plan.provenance_hashes,
    }
    try:
        from lensengine.plugins.manager import get_plugin_manager

        for cards in get_plugin_manager().hook.catalog_provenance():
            extra.update(cards or {})
    except ImportError:  # pragma: no cover
        pass
    return standard_provenance(models=[(m.name, m.sha256) for m in opts.models],
                               store=str(Path(opts.store).resolve()), command=opts.command_line, extra=extra)


def _count(summary: RunSummary, flag_counts: dict[str, int], flags: np.ndarray, score: np.ndarray,
           threshold: float) -> None:
    from lensengine.catalogs.flags import BAD_MASK, Flag

    flags = flags.astype(np.uint32)
    summary.n_scored += int(np.isfinite(score).sum())
    summary.n_flagged += int(((flags & BAD_MASK) != 0).sum())
    summary.n_unreadable += int(((flags & np.uint32(Flag.UNREADABLE)) != 0).sum())
    for f in Flag:
        if f.value:
            k = int(((flags & np.uint32(f.value)) != 0).sum())
            if k:
                flag_counts[f.name] = flag_counts.get(f.name, 0) + k
    with np.errstate(invalid="ignore"):
        summary.n_candidates += int((np.isfinite(score) & (score >= threshold)).sum())


def _merge(opts: RunOptions, plan: _Plan, parts: PartsFolder, summary: RunSummary) -> None:
    """Check every part, then stream them in store order into both outputs and commit the pair.

    Pass 1 checks each part's identity (tile, rows, object IDs, run) and counts the flags and
    candidates, so the provenance is complete before either file is opened; pass 2 writes the
    score table (schema given up front) and collects the candidates.  Both outputs go to hidden
    temporaries, removed on any failure, and are committed together at the end.
    """
    import pyarrow.parquet as pq
    from astropy.table import Table, vstack

    from lensengine.catalogs.catalog import ScoreTableWriter, temporary_path, write_candidates

    flag_counts: dict[str, int] = {}
    for task in plan.tasks:
        path = parts.part_path(task.tile, task.index)
        problem, cols = parts.check_part(path, _identity(plan, task), columns=("FLAGS", "P_ENSEMBLE"))
        if problem:
            path.unlink(missing_ok=True)
            raise RunFailed(f"the part of chunk {task.key} ({path}) is {problem}; it was removed: run again "
                            f"with --resume to redo that chunk")
        _count(summary, flag_counts, cols["FLAGS"], cols["P_ENSEMBLE"].astype(np.float32), opts.threshold)
    summary.flag_counts = flag_counts
    provenance = _provenance(opts, plan, summary)
    schema = row_schema(opts.models, plan.tasks[0].ensemble, plan.store.truth_columns)
    writer = ScoreTableWriter(opts.scores, schema=schema,
                              metadata={k: str(v) for k, (v, _) in provenance.items()})
    fits_tmp = temporary_path(opts.out)
    try:
        candidates, empty = [], None
        for task in plan.tasks:
            table = pq.read_table(parts.part_path(task.tile, task.index))
            rows = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
            writer.write(rows)
            score = rows["P_ENSEMBLE"].astype(np.float32)
            with np.errstate(invalid="ignore"):
                keep = np.isfinite(score) & (score >= opts.threshold)
            if keep.any():
                candidates.append(Table({k: v[keep] for k, v in rows.items()}))
            elif empty is None:
                empty = Table({k: v[:0] for k, v in rows.items()})
        table = vstack(candidates) if candidates else empty
        write_candidates(table, fits_tmp, threshold=opts.threshold, score_col="P_ENSEMBLE", provenance=provenance)
        scores_tmp = writer.finish()
    except BaseException:
        writer.abort()
        fits_tmp.unlink(missing_ok=True)
        raise
    # from here the journal decides: a failure between the renames is completed by the next start
    commit_outputs(parts.path, [(scores_tmp, Path(opts.scores)), (fits_tmp, Path(opts.out))])


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
    if summary.n_redone:
        lines.insert(1, f"redid {summary.n_redone} chunk(s) whose parts failed their check")
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["lensengine", *sys.argv[1:]])
