"""``lensengine run``: stream a survey store through the models on Dask into catalogues.

Planning checks everything it can before work starts (the options, the store's
layout, every model's contract, the lock on the outputs, the parts of an
earlier run) and refuses with exit code 2; anything that fails after work
started is a failed job (exit code 1, naming what failed); Ctrl-C stops
cleanly (exit code 130) and keeps the finished tasks for ``--resume``.

The run is cut into tasks of ``--task-size`` cutouts, independent of the
store's chunks: a task covers several whole chunks (fewer, larger tasks for a
fast device) or a row range of one chunk (a small store is split so that its
progress moves).  Tasks are made lazily and go to a Dask cluster (a local one
by default, any existing scheduler by address) through a sliding window: at
most ``IN_FLIGHT_PER_WORKER`` per worker are in flight, refilled as they
finish, so the client and the scheduler hold the same few tasks whatever the
size of the survey.  Each worker keeps its ONNX Runtime
sessions.  Each finished task's rows go to a part file (atomically), written by
the worker itself where it shares the parts folder's file system, else by the
client: the parts are the score table's files, a Parquet dataset partitioned by
tile, so a killed run can be resumed and the score table is never copied.  At
the end one pass over the parts checks them, counts the flags and collects the
candidates (held in memory up to a block, spilled to sorted runs on disk
beyond, so any number fits), the ranked FITS catalogue is
written (streamed block by block from the runs when they were spilled), and
both outputs are committed together (:mod:`lensengine.engine.run_state` keeps
the lock, the parts and the commit honest).  Every input cutout appears
exactly once: scored, or flagged with a reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lensengine import __version__
from lensengine.catalogs.store import location_key
from lensengine.engine.arrow import array_from_numpy, column_to_numpy, empty_columns, read_parquet
from lensengine.engine.models import ContractError, ModelEntry, check_bands_available, file_sha256
from lensengine.engine.run_state import (
    COMMON_METADATA,
    OutputLock,
    PartsFolder,
    RunRefused,
    commit_outputs,
    finish_interrupted_commit,
    ids_sha256,
    is_score_dataset,
    remove_stale_temporaries,
)
from lensengine.engine.runners import runner_cards, runner_for, uses_torch_weights
from lensengine.engine.cascade import plan_cascade
from lensengine.engine.scoring import ChunkTask, open_store, row_schema, score_chunk, split_lanes, with_read_ahead

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "RunSummary", "RunFailed", "RunRefused", "RunTask", "PartWriter", "PartChecker", "plan_run",
           "execute_run",
           "run_tasks", "score_task", "default_task_size", "IN_FLIGHT_PER_WORKER"]

#: Tasks in flight per worker: enough that a worker never waits for the client between two tasks,
#: few enough that the client and the scheduler hold a bounded number whatever the store's size.
IN_FLIGHT_PER_WORKER = 4
#: A store of fewer chunks than this is split into about this many row-range tasks (progress that moves) ...
MIN_TASKS = 16
#: ... of at least this many cutouts each: each task pays a fixed cost (a Dask round trip, decoding its
#: chunk, reading the truth columns), which at 32-cutout tasks cost 20 % of a small store's throughput.
MIN_TASK_SIZE = 128
#: The plan's last ``TAIL_TASKS`` tasks are each cut into up to ``TAIL_SPLIT`` row ranges of at least
#: ``MIN_TASK_SIZE`` cutouts: with several workers, the last whole-chunk task otherwise runs on one worker while
#: the others have nothing left (a two-worker run of 20 000 cutouts on 2 cores: 21 of its 23 idle core-seconds
#: at the end; 7.6 of 9.2 with the cut, docs/performance.md).  It depends on the store alone, as the task size does.
TAIL_TASKS = 2
TAIL_SPLIT = 4
#: Candidate rows the merge holds in memory; beyond it they are spilled to disk as sorted runs.
CANDIDATE_BLOCK = 65_536
#: Rows of parts one merge check task covers (whole parts): few tasks for the scheduler, enough work per task.
CHECK_ROWS = 16_384
#: Sorted runs merged at once (a larger number of runs is merged in levels), and rows read per run at a time.
SPILL_FAN_IN = 32
SPILL_BATCH = 1024


class RunFailed(Exception):
    """The job failed after work started (exit code 1); the message names what failed."""


@dataclass
class RunOptions:
    store: Path
    out: Path
    scores: Path               # the score table: a folder (Parquet dataset partitioned by tile)
    models: list[ModelEntry]
    models_dir: Path | None = None
    threshold: float = 0.5
    scheduler: str | None = None
    workers: int = 1
    threads: int = 0           # ONNX Runtime threads per worker (0: cores / workers)
    lanes: int = 0             # networks run side by side in a worker (0: auto, see plan_lanes)
    device: str = "auto"
    batch_size: int = 32
    task_size: int = 0         # cutouts per task (0: default_task_size)
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
    cascade: bool = False           # expensive networks only where the cheap ones pass a gate (engine/cascade.py)


@dataclass
class RunSummary:
    n_cutouts: int = 0
    n_scored: int = 0          # cutouts with an ensemble score
    n_flagged: int = 0         # cutouts with a bad-input flag (bits of BAD_MASK)
    n_unreadable: int = 0
    n_candidates: int = 0
    n_chunks: int = 0          # store chunks
    n_tasks: int = 0
    task_size: int = 0
    n_resumed: int = 0         # tasks an earlier run finished
    n_resumed_cutouts: int = 0
    n_cutouts_now: int = 0     # cutouts scored by this invocation
    n_redone: int = 0
    seconds: float = 0.0       # scoring time of this invocation
    ensemble: str = "mean"
    providers: dict = field(default_factory=dict)
    flag_counts: dict = field(default_factory=dict)
    already_complete: bool = False
    lanes: int = 0             # networks run side by side per worker (0: no scoring in this invocation)
    threads: int = 0           # threads per network (0: ONNX Runtime's default)

    @property
    def rate(self) -> float:
        """Cutouts per second scored by this invocation (resumed cutouts do not count)."""
        return self.n_cutouts_now / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class RunTask:
    """One scheduled unit: rows ``[start, stop)`` of a tile, as pieces that each lie in one store chunk."""

    tile: str
    start: int
    stop: int
    pieces: tuple[ChunkTask, ...]

    @property
    def key(self) -> str:
        return f"{self.tile}/{self.start}"

    def __len__(self) -> int:
        return self.stop - self.start


def reading_ahead(tasks: Iterable[RunTask]) -> Iterator[RunTask]:
    """``tasks`` in order, each piece told the range scored after it
    (:func:`~lensengine.engine.scoring.with_read_ahead`): for a cluster of one worker, which runs them in the
    order they are handed out.  Lazy."""
    for_pieces, for_tasks = itertools.tee(tasks)
    pieces = with_read_ahead(piece for task in for_pieces for piece in task.pieces)
    for task in for_tasks:
        yield dataclasses.replace(task, pieces=tuple(itertools.islice(pieces, len(task.pieces))))


def score_task(task: RunTask, writer: "PartWriter | None" = None):
    """Score a task's rows on a worker: each piece through the scoring core, the rows joined in order.

    With a ``writer`` the worker writes the task's part itself and returns only the number of rows
    (the client then moves no score-table rows at all); without, it returns the rows.
    """
    pieces = [score_chunk(piece) for piece in task.pieces]
    rows = pieces[0] if len(pieces) == 1 else {name: np.concatenate([r[name] for r in pieces]) for name in pieces[0]}
    if writer is None:
        return rows
    writer.write(task, rows)
    return len(task)


@dataclass(frozen=True)
class PartWriter:
    """What writing a task's part needs, small enough to travel with every task to the workers."""

    folder: str       # the parts folder (``<out>.parts``)
    run_id: str
    schema: object    # the row schema (pyarrow.Schema)

    def write(self, task: RunTask, rows: dict[str, np.ndarray]) -> None:
        parts = PartsFolder(Path(self.folder))
        identity = {"tile": task.tile, "start": task.start, "stop": task.stop, "run": self.run_id,
                    "ids": ids_sha256(rows["OBJECT_ID"])}
        parts.write_part(parts.part_path(task.tile, task.start), _to_arrow(rows, self.schema), identity)


def _probe(path: str) -> str | None:
    """On a worker: the text of the probe file the client wrote (None if this worker cannot see it)."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _workers_share_parts(client, parts: PartsFolder) -> bool:
    """Whether every worker sees the parts folder (a shared file system): then the workers write the parts."""
    import secrets

    token = secrets.token_hex(16)
    probe = parts.path / f".probe-{token}"
    probe.write_text(token)
    try:
        seen = client.run(_probe, str(probe))
    except Exception as exc:  # noqa: BLE001 - any failure: the client writes the parts, as it always can
        log.warning("could not ask the workers whether they see %s (%s): the client writes the parts", parts.path, exc)
        return False
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(w for w, text in seen.items() if text != token)
    if blind or not seen:
        log.warning("workers %s do not see %s (no shared file system): the client writes the parts, which "
                    "limits the run to what one client process can write", ", ".join(blind) or "(none)", parts.path)
        return False
    return True


def default_task_size(n_cutouts: int, chunk_size: int) -> int:
    """One store chunk per task; a store of fewer than ``MIN_TASKS`` chunks is cut into about
    ``MIN_TASKS`` row-range tasks of at least ``MIN_TASK_SIZE`` cutouts, so that its progress moves.

    It depends on the store alone (not on the workers), so that ``--resume`` finds the same tasks.
    """
    return max(1, min(chunk_size, max(MIN_TASK_SIZE, -(-n_cutouts // MIN_TASKS))))


def effective_task_size(requested: int, n_cutouts: int, chunk_size: int) -> int:
    """``--task-size`` as run: whole chunks when it is at least a chunk (rounded down), else a row range."""
    if requested <= 0:
        return default_task_size(n_cutouts, chunk_size)
    if requested >= chunk_size:
        return requested // chunk_size * chunk_size
    return requested


@dataclass
class _Plan:
    store: object
    ensemble: object
    template: ChunkTask            # what every piece shares (store, models, device, ...)
    tiles: list[tuple[str, int]]   # (tile, committed cutouts), store order
    chunk_size: int
    task_size: int
    manifest: dict = field(default_factory=dict)
    run_id: str = ""
    provenance_hashes: dict[str, tuple[object, str]] = field(default_factory=dict)

    def tasks(self) -> Iterator[RunTask]:
        """The tasks in store order, made as they are needed (nothing per task is kept).

        Each is ``task_size`` rows (whole chunks, or a row range inside one chunk); the last
        :data:`TAIL_TASKS` are cut smaller (:func:`_tail_split`) so that the workers finish together.
        """
        cs = self.chunk_size
        tail = {(tile, start) for tile, start, _ in self._tail()}
        for tile, n in self.tiles:
            for start, stop in self._ranges(tile, n):
                for a, b in (_tail_split(start, stop) if (tile, start) in tail else ((start, stop),)):
                    edges = [a, *range((a // cs + 1) * cs, b, cs), b]
                    pieces = tuple(dataclasses.replace(self.template, tile=tile, index=x // cs, start=x, stop=y)
                                   for x, y in zip(edges[:-1], edges[1:]))
                    yield RunTask(tile, a, b, pieces)

    def _ranges(self, tile: str, n: int, backwards: bool = False) -> Iterator[tuple[int, int]]:
        """A tile's ``task_size`` row ranges (never across a chunk's end when smaller than a chunk)."""
        cs, size = self.chunk_size, self.task_size
        order = reversed if backwards else iter
        if size >= cs:
            return ((a, min(a + size, n)) for a in order(range(0, n, size)))
        return ((a, min(a + size, c + cs, n))
                for c in order(range(0, n, cs)) for a in order(range(c, min(c + cs, n), size)))

    def _tail(self) -> list[tuple[str, int, int]]:
        """The last :data:`TAIL_TASKS` row ranges of the plan, ``(tile, start, stop)``, found from its end."""
        found: list[tuple[str, int, int]] = []
        for tile, n in reversed(self.tiles):
            for start, stop in self._ranges(tile, n, backwards=True):
                if len(found) == TAIL_TASKS:
                    return found
                found.append((tile, start, stop))
        return found

    @property
    def n_tasks(self) -> int:
        cs, size = self.chunk_size, self.task_size
        if size >= cs:
            base = sum(-(-n // size) for _, n in self.tiles)
        else:
            per_chunk = -(-cs // size)
            base = sum((n // cs) * per_chunk + -(-(n % cs) // size) for _, n in self.tiles)
        return base + sum(len(_tail_split(start, stop)) - 1 for _, start, stop in self._tail())

    @property
    def n_chunks(self) -> int:
        return sum(-(-n // self.chunk_size) for _, n in self.tiles)


def _tail_split(start: int, stop: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` cut into up to :data:`TAIL_SPLIT` near-equal ranges of at least
    :data:`MIN_TASK_SIZE` (the range itself when it is shorter than two of them)."""
    k = min(TAIL_SPLIT, (stop - start) // MIN_TASK_SIZE)
    if k < 2:
        return [(start, stop)]
    step = -(-(stop - start) // k)
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def plan_run(opts: RunOptions) -> _Plan:
    """Open the store, check its layout and every model's contract against it, and choose the task size.

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
    cascade = plan_cascade(opts.models, ensemble, opts.threshold, opts.models_dir) if opts.cascade else None
    if cascade is not None:
        log.info("cascade: %s", cascade.describe())
    template = ChunkTask(location_key(opts.store), "", 0, 0, 0, refs, opts.device, opts.threads,
                         opts.batch_size, ensemble_path, opts.precision, cascade)
    tiles = [(tile, store.n_cutouts(tile)) for tile in store.tiles]
    total = sum(n for _, n in tiles)
    if not total:
        raise ValueError(f"store {opts.store} holds no cutouts")
    size = effective_task_size(opts.task_size, total, store.chunk_size)
    if opts.task_size and size != opts.task_size:
        log.warning("--task-size %d is more than a chunk (%d cutouts): tasks of %d cutouts (whole chunks)",
                    opts.task_size, store.chunk_size, size)
    return _Plan(store, ensemble, template, tiles, store.chunk_size, size)


def _weights_path(entry: ModelEntry) -> Path:
    """The torch weights kept beside an ONNX model (what ``--precision bf16`` runs)."""
    return Path(entry.path).with_suffix(".pt")


def _fingerprint(opts: RunOptions, plan: _Plan) -> None:
    """Fill in the manifest a resume must match, the run id, and the file hashes for provenance.

    The store is fingerprinted per tile (:meth:`SurveyStore.fingerprint`: IDs, positions, file
    sizes and mtimes; no pixel reads), the models by the SHA-256 of their ONNX files and, when
    bf16 runs them, of their ``.pt`` weights, the ensemble by the SHA-256 of its file.  Nothing
    per chunk is kept: a part's object IDs are checked against the store when the part is read.
    """
    store, ensemble = plan.store, plan.ensemble
    tiles = {tile: store.fingerprint(tile)[0] for tile, _ in plan.tiles}
    models = {}
    hashes: dict[str, tuple[object, str]] = {}
    for i, m in enumerate(opts.models, start=1):
        models[m.name] = {"onnx": m.sha256 or file_sha256(m.path)}
        if uses_torch_weights(opts.precision, m.name):
            pt = _weights_path(m)
            if not pt.is_file():
                raise ContractError(f"runner {runner_for(opts.precision, m.name)} runs the torch weights {pt} "
                                    f"beside model {m.name}; the file is missing")
            models[m.name]["pt"] = file_sha256(pt)
            hashes[f"PTSHA{i}"] = (models[m.name]["pt"], f"SHA-256 of model {i}'s .pt weights (torch)")
    ensemble_file = getattr(ensemble, "path", None)
    ens = {"name": ensemble.name, "sha256": file_sha256(ensemble_file) if ensemble_file else None}
    if ensemble_file:
        hashes["ENSFILE"] = (Path(ensemble_file).name, "ensemble file")
        hashes["ENSSHA"] = (ens["sha256"], "SHA-256 of the ensemble file")
    plan.manifest = {
        "kind": "lensengine-run-parts",
        "out": str(Path(opts.out).resolve()),
        "store": location_key(opts.store),
        "store_attrs": hashlib.sha256(json.dumps(store.attrs, sort_keys=True, default=str).encode()).hexdigest(),
        "tiles": tiles,
        "cutouts": store.total_cutouts(),
        "chunk_size": store.chunk_size,
        "task_size": plan.task_size,
        "models": models,
        "ensemble": ens,
        "batch_size": opts.batch_size,
        "precision": opts.precision,
        "cascade": plan.template.cascade.as_dict() if plan.template.cascade else None,
    }
    plan.run_id = hashlib.sha256(json.dumps(plan.manifest, sort_keys=True).encode()).hexdigest()[:16]
    plan.provenance_hashes = hashes


def _identity(plan: _Plan, task: RunTask) -> dict:
    """What a task's part records about itself (besides the hash of its object IDs)."""
    return {"tile": task.tile, "start": task.start, "stop": task.stop, "run": plan.run_id}


def _store_ids(store, task: RunTask) -> str:
    """SHA-256 of the object IDs the store holds for a task's rows (-1 for a piece whose IDs are unreadable)."""
    from lensengine.catalogs.store import ChunkReadError

    ids = []
    for piece in task.pieces:
        try:
            ids.append(np.asarray(store.read_index(task.tile, piece.start, piece.stop)["object_id"]))
        except ChunkReadError:
            ids.append(np.full(piece.stop - piece.start, -1))
    return ids_sha256(np.concatenate(ids))


def _check_options(opts: RunOptions) -> None:
    """Usage errors visible in the options alone."""
    if Path(opts.scores).resolve() == Path(opts.out).resolve():
        raise RunRefused(f"--scores and --out are the same file ({opts.out}): the catalogue would overwrite "
                         f"the score table")
    if opts.resume and opts.restart:
        raise RunRefused("--resume and --restart contradict each other: choose one")
    if Path(opts.out).is_dir():
        raise RunRefused(f"{opts.out} is a directory; --out names the FITS catalogue file")
    scores = Path(opts.scores)
    if scores.is_dir() and not is_score_dataset(scores):
        raise RunRefused(f"--scores {scores} is a folder that is not a lensengine score table (no "
                         f"{COMMON_METADATA} of one, or other files in it); it is left as it is: choose "
                         f"another --scores")
    out_dir = Path(opts.out).resolve().parent
    scores_dir = scores.resolve().parent
    if out_dir.is_dir() and scores_dir.is_dir() and os.stat(out_dir).st_dev != os.stat(scores_dir).st_dev:
        raise RunRefused(f"--scores {scores} and --out {opts.out} are on different file systems: the finished "
                         f"parts (beside --out) become the score table by a rename, not a copy")


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


def _field_metadata(name: str) -> dict[str, str]:
    """A score-table column's Parquet field metadata: its description and, when lensengine knows it, its unit."""
    from lensengine.catalogs.catalog import column_unit, describe_column

    meta = {"description": describe_column(name)}
    unit = column_unit(name)
    if unit is not None:
        meta["unit"] = unit
    return meta


def _to_arrow(rows: dict[str, np.ndarray], schema):
    """A task's rows as a pyarrow Table: the row schema's columns typed by it, plugin columns appended.

    The parts are the score table's files, so each field carries its description and unit.
    """
    import pyarrow as pa

    arrays, fields = [], []
    for f in schema:
        arrays.append(array_from_numpy(rows[f.name], f.type))
        fields.append(f.with_metadata(_field_metadata(f.name)))
    for key, values in rows.items():
        if key not in schema.names:
            values = np.asarray(values)
            arr = pa.array(values.tolist() if values.dtype == object else values)
            arrays.append(arr)
            fields.append(pa.field(key, arr.type, metadata=_field_metadata(key)))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


#: Worker processes' log levels unless -v: their warnings and errors only; the heartbeat that races a clean
#: shutdown (the scheduler closing first) logs an ERROR with a traceback, which is noise, not a failure.
#: (dask reads a dict literal from DASK_LOGGING; its keys are logger names, so they cannot be nested variables)
_WORKER_LOG_ENV = {"DASK_LOGGING": repr({"distributed": "warning", "distributed.worker": "critical"})}


#: Dask's periodic work in the processes of a local cluster, made sparse: ``key: (Dask's default, the run's)``.
#: With Dask's defaults an idle one-worker cluster spent 5.2 CPU seconds a minute on it (the worker's
#: statistical profiler every 10 ms, 2.1 s of it; the event-loop watchdog every 20 ms in each process; the
#: worker's memory monitor every 100 ms; the system monitor every 500 ms), with these 0.7: about 4 % of a
#: 2-core machine given back to the networks (docs/performance.md).  Only the local cluster a run starts
#: gets them, and only where Dask's default is in force: a value from a Dask config file or a DASK_*
#: variable is kept (the dashboard's Profile page, empty without the profiler, comes back with
#: ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True``).
LEAN_DASK = {
    "distributed.worker.profile.enabled": (True, False),
    "distributed.admin.tick.interval": ("20ms", "1s"),
    "distributed.worker.memory.monitor-interval": ("100ms", "1s"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
}


def lean_dask_config() -> dict:
    """The :data:`LEAN_DASK` values a local cluster starts with: those the user left at Dask's default."""
    import dask
    import distributed  # noqa: F401 - its import adds its defaults to Dask's config

    out = {}
    for key, (default, lean) in LEAN_DASK.items():
        variable = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        if variable not in os.environ and dask.config.get(key, None) == default:
            out[key] = lean
    return out


def _dask_log_level(opts: RunOptions) -> int:
    return logging.INFO if opts.verbose >= 1 else logging.WARNING


def _client(opts: RunOptions, scratch: Path | None, security):
    """A Dask client: attached to ``--scheduler`` or a fresh local cluster of processes.

    The local cluster listens on 127.0.0.1 only (scheduler, workers and the dashboard, which
    ``--no-dashboard`` turns off), wakes up less often for Dask's own bookkeeping
    (:data:`LEAN_DASK`), keeps its scratch space in this run's folder, and its worker
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
        with dask.config.set({**routes, **lean_dask_config()}):
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
    shutting the cluster down (the finished parts stay for ``--resume``).  ``--resume`` of a run whose
    outputs are already complete does nothing and says so (``summary.already_complete``).
    """
    _check_options(opts)
    security = _security(opts)
    try:
        plan = plan_run(opts)
        _fingerprint(opts, plan)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        raise RunRefused(str(exc).strip("'\"")) from None
    store = plan.store
    parts = PartsFolder.for_output(opts.out)
    with OutputLock(opts.out, opts.command_line):
        finish_interrupted_commit(parts.path)
        remove_stale_temporaries([opts.out, opts.scores])
        summary = RunSummary(n_cutouts=store.total_cutouts(), n_chunks=plan.n_chunks, n_tasks=plan.n_tasks,
                             task_size=plan.task_size, ensemble=plan.ensemble.name)
        if opts.resume and not parts.path.exists():
            if _already_complete(opts, plan, summary):
                return summary
            log.warning("nothing to resume (no %s): scoring from the beginning", parts.path)
        parts.open(plan.manifest, resume=opts.resume, restart=opts.restart)
        stage = "checking the finished parts"
        try:
            if opts.resume:
                _check_finished(plan, parts, summary)
            stage = "scoring"
            t0 = time.perf_counter()
            with _cluster(opts, parts, security) as (client, on_workers, release):
                warming = None
                if summary.n_resumed < plan.n_tasks:
                    warming = _score(opts, plan, parts, summary, t0, client, on_workers)
                summary.seconds = time.perf_counter() - t0
                if warming is not None:
                    warming.join()
                stage = f"merging the parts into {opts.scores} and {opts.out}"
                _merge(opts, plan, parts, summary, client, on_workers, release)
        except (KeyboardInterrupt, RunFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure after work started is a failed job (exit 1)
            raise RunFailed(f"{stage} failed: {type(exc).__name__}: {exc}") from exc
        parts.remove()
    if opts.explain_top and summary.n_candidates:
        explain_candidates(opts, store)
    return summary


def _already_complete(opts: RunOptions, plan: _Plan, summary: RunSummary) -> bool:
    """Whether ``--out`` and ``--scores`` already hold this run's outputs (same run id and threshold).

    Then the summary is filled in from the catalogue's provenance cards.
    """
    from astropy.io import fits

    from lensengine.catalogs.catalog import score_table_schema

    try:
        header = fits.getheader(opts.out, 1)
        meta = score_table_schema(opts.scores).metadata or {}
    except Exception:  # noqa: BLE001 - missing or unreadable outputs are simply not complete
        return False
    same = (header.get("RUNID") == plan.run_id and meta.get(b"RUNID") == plan.run_id.encode()
            and header.get("THRESH") == float(opts.threshold))
    if same:
        summary.already_complete = True
        summary.n_resumed, summary.n_resumed_cutouts = plan.n_tasks, summary.n_cutouts
        summary.n_scored, summary.n_flagged = int(header.get("NSCORED", 0)), int(header.get("NFLAGGED", 0))
        summary.n_unreadable, summary.n_candidates = int(header.get("NUNREAD", 0)), int(header.get("NCAND", 0))
    return same


def _check_finished(plan: _Plan, parts: PartsFolder, summary: RunSummary) -> None:
    """Count the tasks an earlier run finished; a part that fails its check is removed, to be redone."""
    for task in plan.tasks():
        path = parts.part_path(task.tile, task.start)
        if not path.is_file():
            continue
        problem, _ = parts.check_part(path, _identity(plan, task), store_ids=lambda: _store_ids(plan.store, task))
        if problem:
            log.warning("redoing task %s: its part %s is %s", task.key, path.name, problem)
            path.unlink()
            summary.n_redone += 1
            continue
        summary.n_resumed += 1
        summary.n_resumed_cutouts += len(task)
    if summary.n_resumed:
        log.info("resuming: %d of %d tasks already done", summary.n_resumed, plan.n_tasks)


def run_tasks(client, tasks: Iterable, fn: Callable, on_result: Callable, *, key: Callable[[object], str],
              in_flight_per_worker: int = IN_FLIGHT_PER_WORKER, resources: dict | None = None,
              label: str = "task") -> int:
    """Run ``fn(task)`` on the cluster for every task, at most ``in_flight_per_worker`` × workers at a time.

    ``on_result(task, result)`` runs in the client as each task finishes (in completion order), and
    its future is released at once; when half the window has finished, the next tasks are submitted
    (one graph update for several).  So the client holds the tasks in flight and the iterator's
    position, the scheduler only the tasks in flight: memory flat in the number of tasks.  The
    number of workers is read again every few seconds, so a cluster that grows (workers joining a
    batch job) gets a wider window.  A task that raised re-raises here as
    :class:`RunFailed` naming it (``label``, then ``str(task)`` or its ``key`` attribute).  Returns the
    tasks run.
    """
    from distributed import as_completed

    tasks = iter(tasks)
    pending: dict[str, object] = {}
    finished = as_completed()
    workers = {"n": 1, "at": -1e9}

    def window() -> int:
        now = time.monotonic()
        if now - workers["at"] > 5.0:
            info = client.scheduler_info(n_workers=0)
            workers["n"], workers["at"] = max(1, int(info.get("n_workers") or len(info.get("workers") or ()))), now
        return in_flight_per_worker * workers["n"]

    def submit_more() -> None:
        limit = window()
        if len(pending) > limit // 2:
            return  # refill in batches of at least half the window: one graph update for several tasks
        batch = list(itertools.islice(tasks, limit - len(pending)))
        if not batch:
            return
        futures = client.map(fn, batch, key=[key(t) for t in batch], resources=resources, pure=False)
        for future, task in zip(futures, batch):
            pending[future.key] = task
            finished.add(future)

    done = 0
    submit_more()
    for future in finished:
        task = pending.pop(future.key)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - name the task that failed
            what = getattr(task, "key", task)
            rows = f" (rows {task.start}..{task.stop - 1})" if isinstance(task, RunTask) else ""
            raise RunFailed(f"{label} {what}{rows} failed: {type(exc).__name__}: {exc}") from exc
        future.release()
        on_result(task, result)
        done += 1
        submit_more()
    return done


@contextlib.contextmanager
def _cluster(opts: RunOptions, parts: PartsFolder, security):
    """The run's Dask client (scoring and the merge's checks), and whether the workers see the parts folder.

    The workers write and check the parts themselves when they see the parts folder (always on the
    local cluster; checked with a probe file for ``--scheduler``), so the client moves no score-table
    rows and a sweep is not limited by what one process can read and write; otherwise the client does.
    """
    scratch = None if opts.scheduler else parts.scratch()
    with _quiet_dask_after_interrupt():
        try:
            try:
                client, cluster = _client(opts, scratch, security)
            except OSError as exc:
                raise RunFailed(f"could not start or reach the Dask cluster ({opts.scheduler or 'local'}): {exc}") \
                    from exc
            closing = _Closing(client, cluster)
            try:
                if opts.dashboard and client.dashboard_link:
                    log.info("Dask dashboard: %s", client.dashboard_link)
                yield client, not opts.scheduler or _workers_share_parts(client, parts), closing.start
            finally:
                closing.finish()
        finally:
            if scratch is not None:
                parts.remove_scratch()


_DASK_LOGGERS = ("distributed", "tornado")


@contextlib.contextmanager
def _quiet_dask_after_interrupt():
    """From Ctrl-C until the cluster is down, Dask and Tornado log nothing.

    A Ctrl-C that lands while the client waits on the cluster makes Dask cancel and forget the work
    in flight; its loggers then report that as errors ("Couldn't gather keys"), and a Ctrl-C at the
    wrong instant trips a bug in ``distributed.utils.sync`` (``NameError: ... 'future'``, 2026.8)
    whose traceback Tornado prints.  None of it is news to someone who pressed Ctrl-C, so the SIGINT
    handler (installed in the main thread only) turns those loggers off *before* it raises
    ``KeyboardInterrupt``; they are turned back on once the cluster has shut down.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    silenced: list[logging.Logger] = []

    def interrupted(signum, frame):
        for name in [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in _DASK_LOGGERS]:
            logger = logging.getLogger(name)
            if not logger.disabled:
                logger.disabled = True
                silenced.append(logger)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for logger in silenced:
            logger.disabled = False


class _Closing:
    """Shuts the run's client and local cluster down; in the background once the run no longer needs them.

    Stopping a local cluster's workers takes about a second (each process frees its sessions and exits);
    the merge calls :meth:`start` after its last task on the workers, so that second passes while the
    client writes the catalogue.  :meth:`finish` (always called) waits for it, or closes now if nothing
    started it, and raises what the close raised.
    """

    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._close, name="lensengine-close-cluster")
            self.thread.start()

    def _close(self) -> None:
        try:
            _close(self.client, self.cluster)
        except BaseException as exc:  # noqa: BLE001 - raised by finish(), in the run's own thread
            self.error = exc

    def finish(self) -> None:
        if self.thread is None:
            _close(self.client, self.cluster)
            return
        self.thread.join()
        if self.error is not None:
            raise self.error


def plan_lanes(opts: RunOptions, ncores: int) -> tuple[int, int]:
    """``(lanes, threads)`` of each worker: networks run side by side, and threads per network.

    A worker's threads are ``--threads``, or on the local cluster the cores
    shared among its workers (unknown on a ``--scheduler`` cluster: 0, ONNX
    Runtime's default); ``--lanes`` splits them (:func:`~lensengine.engine.scoring.split_lanes`).
    """
    total = opts.threads or (0 if opts.scheduler else max(1, ncores // max(1, opts.workers)))
    return split_lanes(opts.lanes, total, opts.models, opts.precision, opts.device)


def fills_the_cores(opts: RunOptions, lanes: int, threads: int, ncores: int) -> bool:
    """Whether the local cluster's network threads are one per core of this machine (the default CPU run, with
    one worker or one per core): then no worker gives reading and preprocessing a thread of their own
    (:func:`~lensengine.engine.scoring._prep_mode`).  Unknown on a ``--scheduler`` cluster: no."""
    return not opts.scheduler and threads == 1 and opts.workers * lanes >= ncores


def _score(opts: RunOptions, plan: _Plan, parts: PartsFolder, summary: RunSummary, t0: float, client,
           on_workers: bool) -> threading.Thread:
    """Score the unfinished tasks on Dask; each task's part is written (by its worker, see :func:`_cluster`).

    Returns the thread loading the merge's modules meanwhile (:func:`_warm_merge`), for the merge to join.
    """
    ncores = os.cpu_count() or 1
    lanes, threads = plan_lanes(opts, ncores)
    plan.template = dataclasses.replace(plan.template, threads=threads, lanes=lanes,
                                        fills_cores=fills_the_cores(opts, lanes, threads, ncores))
    summary.lanes, summary.threads = lanes, threads
    log.info("per worker: %d network lane(s) of %s thread(s) each", lanes, threads or "ONNX Runtime's default")
    schema = row_schema(opts.models, plan.template.ensemble, plan.store.truth_columns)
    todo = plan.tasks()
    if summary.n_resumed:
        todo = (t for t in todo if not parts.part_path(t.tile, t.start).is_file())
    if not opts.scheduler and opts.workers == 1:  # one worker takes the tasks in this order: it may read ahead
        todo = reading_ahead(todo)
    summary.providers = _providers(client, plan.template)
    log.info("execution provider(s) on the workers: %s", summary.providers)
    resources = {"GPU": 1} if opts.device in ("cuda", "tensorrt") else None
    pid = os.getpid()
    writer = PartWriter(str(parts.path), plan.run_id, schema)
    with _progress(opts.progress) as bar:
        bar_id = bar.add_task("score", total=summary.n_cutouts - summary.n_resumed_cutouts, rate=0.0)

        def finished(task: RunTask, result) -> None:
            if not on_workers:
                writer.write(task, result)
            summary.n_cutouts_now += len(task)
            rate = summary.n_cutouts_now / max(time.perf_counter() - t0, 1e-9)
            bar.update(bar_id, advance=len(task), rate=rate)

        warming = _warm_merge()
        run_tasks(client, todo, functools.partial(score_task, writer=writer) if on_workers else score_task,
                  finished, resources=resources, key=lambda t: f"score-{plan.run_id}-{t.tile}-{t.start}-{pid}",
                  label="scoring task")
    return warming


#: What the merge needs loaded in the client: astropy (the FITS catalogue) and pyarrow's Parquet reader.
#: About 1 s of imports on a 2-core machine.  (pandas is not needed: Arrow columns are read with
#: :mod:`lensengine.engine.arrow`, which does not load it.)
_MERGE_IMPORTS = ("astropy.table", "astropy.io.fits", "pyarrow.parquet")


def _warm_merge() -> threading.Thread:
    """Load what the merge needs in a background thread while the workers score, instead of after them.

    Started once the client's own imports for scoring are done, so that its thread is not importing at
    the same time; the merge joins it first.  A failure here is left for the merge to meet and report.
    """
    def load() -> None:
        import importlib

        try:
            for name in _MERGE_IMPORTS:
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - only a head start; the merge imports again
            log.debug("could not load the merge's modules ahead of it: %s", exc)

    thread = threading.Thread(target=load, name="lensengine-warm-merge", daemon=True)
    thread.start()
    return thread


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
    try:  # under the model's name: the session its ONNX Runtime runner then takes from the cache
        return client.run(session_provider, str(m.path), task.device, task.threads, m.name)
    except Exception as exc:  # noqa: BLE001 - reporting only; the tasks will raise the real error
        log.warning("could not query the workers' execution providers: %s", exc)
        return {}


def _cascade_cards(cascade) -> dict[str, tuple[object, str]]:
    """Provenance of ``--cascade``: whether it ran, and its gate (rows below it carry CASCADE_SKIPPED)."""
    if cascade is None:
        return {"CASCADE": (False, "every model scored every cutout")}
    return {"CASCADE": (True, "expensive models only past the gate (CASCADE_SKIPPED)"),
            "CASCGATE": (round(cascade.gate, 6), "gate on the mean P of the cheap models (CASCEXP: the rest)"),
            "CASCRULE": (cascade.rule, "gate rule: bound (mean, lossless) or validated"),
            "CASCEXP": ("+".join(cascade.expensive)[:60], "models run only past the gate")}


def _provenance(opts: RunOptions, plan: _Plan, summary: RunSummary) -> dict[str, tuple[object, str]]:
    """The provenance cards of both outputs (FITS header cards; the score table's schema metadata)."""
    from lensengine.catalogs.catalog import standard_provenance

    extra: dict[str, tuple[object, str]] = {
        "SOFTWARE": (f"lensengine {__version__}", "software that made this catalogue"),
        "DATE-RUN": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date of the run"),
        "SURVEY": (str(plan.store.attrs.get("survey", ""))[:60], "survey of the input store"),
        "THRESH": (float(opts.threshold), "candidate threshold on P_ENSEMBLE"),
        "ENSEMBLE": (summary.ensemble, "ensemble score: OU-T-SNE, stack or mean"),
        **runner_cards(opts.precision, opts.models),  # PRECISN and RUNNER<i> (engine/runners.py)
        "RUNID": (plan.run_id, "run fingerprint (store, models, ensemble, options)"),
        **_cascade_cards(plan.template.cascade),
        **({"LANES": (summary.lanes, "networks run side by side per worker"),
            "NTHREADS": (summary.threads, "threads per network (0: ONNX Runtime default)")} if summary.lanes else {}),
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
                               store=location_key(opts.store), command=opts.command_line, extra=extra)


def _tally(flags: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """A part's counts for the summary and the provenance (flags per name, candidates)."""
    from lensengine.catalogs.flags import BAD_MASK, Flag

    flags = flags.astype(np.uint32)
    with np.errstate(invalid="ignore"):
        candidates = np.isfinite(score) & (score >= threshold)
    per_flag = {f.name: int(((flags & np.uint32(f.value)) != 0).sum()) for f in Flag if f.value}
    return {"scored": int(np.isfinite(score).sum()), "flagged": int(((flags & BAD_MASK) != 0).sum()),
            "unreadable": per_flag["UNREADABLE"], "candidates": int(candidates.sum()),
            "flags": {k: v for k, v in per_flag.items() if v}}


def _add_tally(summary: RunSummary, tally: dict) -> None:
    summary.n_scored += tally["scored"]
    summary.n_flagged += tally["flagged"]
    summary.n_unreadable += tally["unreadable"]
    summary.n_candidates += tally["candidates"]
    for name, k in tally["flags"].items():
        summary.flag_counts[name] = summary.flag_counts.get(name, 0) + k


@dataclass(frozen=True)
class PartChecker:
    """The merge's first pass over parts, small enough to travel to the workers: check, count, candidates.

    Called with a :class:`_PartBatch`; returns, per task, ``(problem or None, tally, candidate rows or None)``.
    """

    folder: str
    run_id: str
    threshold: float

    def __call__(self, batch: "_PartBatch") -> list:
        return [self.check(task) for task in batch.tasks]

    def check(self, task: RunTask):
        parts = PartsFolder(Path(self.folder))
        path = parts.part_path(task.tile, task.start)
        identity = {"tile": task.tile, "start": task.start, "stop": task.stop, "run": self.run_id}
        problem, cols = parts.check_part(path, identity, columns=("FLAGS", "P_ENSEMBLE"),
                                         store_ids=lambda: _store_ids(open_store(task.pieces[0].store), task))
        if problem:
            return problem, {}, None
        score = cols["P_ENSEMBLE"].astype(np.float32)
        tally = _tally(cols["FLAGS"], score, self.threshold)
        if not tally["candidates"]:
            return None, tally, None
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(score) & (score >= self.threshold)
        table = read_parquet(path)
        return None, tally, {name: column_to_numpy(table.column(name))[keep] for name in table.column_names}


@dataclass(frozen=True)
class _PartBatch:
    """Consecutive tasks whose parts one merge check task covers."""

    tasks: tuple[RunTask, ...]

    @property
    def key(self) -> str:
        return f"{self.tasks[0].key}..{self.tasks[-1].key}"


def _batches(tasks: Iterable[RunTask], size: int) -> Iterator[_PartBatch]:
    tasks = iter(tasks)
    while batch := tuple(itertools.islice(tasks, size)):
        yield _PartBatch(batch)


def _merge(opts: RunOptions, plan: _Plan, parts: PartsFolder, summary: RunSummary, client=None,
           on_workers: bool = False, release: Callable[[], None] | None = None) -> None:
    """Check every part, count, collect the candidates, write the catalogue and commit the pair.

    One pass over the parts (:class:`PartChecker`: each part's identity, its tile, rows, run and
    object IDs against the store; its counts; its candidate rows) runs on the workers when they see
    the parts folder, else in the client; the candidates go to :class:`_Candidates` (bounded
    memory).  Then ``release()`` (if given) lets the cluster shut down, the catalogue goes to a hidden
    temporary, the score table's ``_common_metadata`` (schema and provenance) beside the parts, and both
    outputs are committed together; on any failure the temporary is removed and the parts stay.
    """
    import pyarrow.parquet as pq

    from lensengine.catalogs.catalog import temporary_path

    candidates = _Candidates(parts, opts.threshold)
    order = {tile: i for i, (tile, _) in enumerate(plan.tiles)}
    checker = PartChecker(str(parts.path), plan.run_id, float(opts.threshold))

    def checked(task: RunTask, result) -> None:
        problem, tally, rows = result
        if problem:
            path = parts.part_path(task.tile, task.start)
            path.unlink(missing_ok=True)
            raise RunFailed(f"the part of task {task.key} ({path}) is {problem}; it was removed: run again "
                            f"with --resume to redo that task")
        _add_tally(summary, tally)
        if rows is not None:  # store order, whatever order the checks finish in: the rank's tie-breaker
            candidates.add(rows, (order[task.tile] << 40) + rows["ROW"].astype(np.int64))

    def checked_batch(batch: _PartBatch, results: list) -> None:
        for task, result in zip(batch.tasks, results):
            checked(task, result)

    summary.flag_counts = {}
    try:
        batches = _batches(plan.tasks(), max(1, CHECK_ROWS // plan.task_size))
        if on_workers and client is not None:
            run_tasks(client, batches, checker, checked_batch, label="checking the parts of tasks",
                      key=lambda b: f"check-{plan.run_id}-{b.tasks[0].tile}-{b.tasks[0].start}-{os.getpid()}")
        else:
            for batch in batches:
                checked_batch(batch, checker(batch))
        if release is not None:  # the cluster's work is done: it shuts down while the catalogue is written
            release()
        first = next(plan.tasks())
        schema = pq.read_schema(parts.part_path(first.tile, first.start))
        candidates.set_columns(schema)
        parts.remove_part_temporaries()
        provenance = _provenance(opts, plan, summary)
        metadata = {k: str(v) for k, (v, _) in provenance.items()}
        schema = schema.remove_metadata()
        pq.write_metadata(schema.with_metadata({"lensengine.kind": "score-table", **metadata}),
                          parts.scores_path / COMMON_METADATA)
        fits_tmp = temporary_path(opts.out)
        try:
            candidates.write(Path(opts.out), fits_tmp, provenance)
        except BaseException:
            fits_tmp.unlink(missing_ok=True)
            raise
    finally:
        parts.remove_spill()
    # from here the journal decides: a failure between the renames is completed by the next start
    commit_outputs(parts.path, [(parts.scores_path, Path(opts.scores)), (fits_tmp, Path(opts.out))])


class _Candidates:
    """The candidates of a run in bounded memory, and the ranked catalogue written from them.

    Rows arrive in any order, each with its place in store order.  Up to ``CANDIDATE_BLOCK`` rows are
    held; beyond that each block is ranked (:func:`~lensengine.catalogs.catalog.candidate_table`) and
    spilled to a sorted run in the parts folder.  A catalogue that fits one block is written at once
    (``write_candidates``); otherwise the runs are merged (``SPILL_FAN_IN`` at a time, in levels when
    there are more) into one sorted stream written block by block
    (:class:`~lensengine.catalogs.catalog.CatalogueStream`).  The sort key is (score descending, store
    order), so the result is the single in-memory sort's.
    """

    SEQ = "_SEQ"  # store-order key of a candidate: the tie-breaker, dropped from the catalogue

    def __init__(self, parts: PartsFolder, threshold: float, block: int | None = None):
        self.parts = parts
        self.threshold = threshold
        self.block = block or CANDIDATE_BLOCK
        self.held: list[dict[str, np.ndarray]] = []
        self.n_held = 0
        self.n = 0
        self.runs: list[Path] = []
        self.widths: dict[str, int] = {}
        self.empty: dict[str, np.ndarray] | None = None

    def set_columns(self, schema) -> None:
        """The score table's columns (a part's schema): what an empty catalogue is made from."""
        self.empty = empty_columns(schema)

    def add(self, rows: dict[str, np.ndarray], seq: np.ndarray) -> None:
        """Take candidate rows; ``seq`` is their place in store order (they may arrive in any order)."""
        n = len(rows["P_ENSEMBLE"])
        rows[self.SEQ] = np.asarray(seq, dtype=np.int64)
        self.held.append(rows)
        self.n += n
        self.n_held += n
        if self.n_held >= self.block:
            self._spill()

    def _ranked(self, rows: dict[str, np.ndarray] | None, provenance: dict):
        from astropy.table import Table

        from lensengine.catalogs.catalog import candidate_table

        return candidate_table(Table(rows if rows is not None else {**self.empty, self.SEQ: np.zeros(0, np.int64)}),
                               threshold=self.threshold, score_col="P_ENSEMBLE", provenance=provenance)

    def _take_held(self) -> dict[str, np.ndarray] | None:
        if not self.held:
            return None
        rows = {name: np.concatenate([r[name] for r in self.held]) for name in self.held[0]}
        self.held, self.n_held = [], 0
        order = np.argsort(rows[self.SEQ], kind="stable")  # store order: ranking's stable sort keeps it for ties
        return {name: values[order] for name, values in rows.items()}

    def _spill(self) -> None:
        from lensengine.catalogs.catalog import text_width

        rows = self._take_held()
        if rows is None:
            return
        ranked = self._ranked(rows, {})
        columns = {name: np.asarray(getattr(ranked[name], "value", ranked[name])) for name in ranked.colnames}
        for name, values in columns.items():
            if values.dtype.kind in "OU":
                self.widths[name] = max(self.widths.get(name, 1), text_width(values))
        path = self.parts.spill_path(0, len(self.runs))
        _write_rows(path, columns)
        self.runs.append(path)

    def write(self, out: Path, tmp: Path, provenance: dict) -> None:
        """Write the catalogue of ``out`` to ``tmp``, its hidden temporary (that the commit renames)."""
        from astropy.table import Table

        from lensengine.catalogs.catalog import CatalogueStream, write_candidates

        if not self.runs:
            rows = self._take_held()
            table = Table(rows if rows is not None else self.empty)
            if self.SEQ in table.colnames:
                table.remove_column(self.SEQ)
            write_candidates(table, tmp, threshold=self.threshold, score_col="P_ENSEMBLE", provenance=provenance)
            return
        self._spill()
        runs, level = self.runs, 0
        while len(runs) > SPILL_FAN_IN:  # merge in levels: never more than SPILL_FAN_IN runs open at once
            level += 1
            merged = []
            for i in range(0, len(runs), SPILL_FAN_IN):
                group = runs[i:i + SPILL_FAN_IN]
                merged.append(self.parts.spill_path(level, len(merged)))
                _write_rows(merged[-1], _merge_sorted(group, self.SEQ))
                for run in group:
                    run.unlink()
            runs = merged
        template = self._ranked(None, provenance)
        template.remove_column(self.SEQ)
        stream = CatalogueStream(template, out, n_rows=self.n, widths=self.widths)
        if stream.tmp_path != tmp:  # write to exactly the temporary the commit expects
            stream.abort()
            raise RuntimeError(f"catalogue stream would write {stream.tmp_path}, not {tmp}")
        try:
            rank = 1
            for block in _merge_sorted(runs, self.SEQ):
                n = len(block[self.SEQ])
                block["RANK"] = np.arange(rank, rank + n, dtype=np.int32)
                rank += n
                stream.write(block)
            stream.finish()
        except BaseException:
            stream.abort()
            raise


def _write_rows(path: Path, blocks) -> None:
    """Write a dict of columns, or an iterator of such blocks, to one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for block in [blocks] if isinstance(blocks, dict) else blocks:
            table = pa.table({name: pa.array(values.astype(str) if values.dtype.kind == "U" else values)
                              for name, values in block.items()})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _merge_sorted(paths: list[Path], seq: str) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of the rows of sorted runs, merged by (P_ENSEMBLE descending, ``seq``); memory: one batch per run.

    Each round emits, from every run's current batch, the rows that sort at or before the smallest
    of the batches' last keys: no row still unread can sort before those.  The run that held that
    key is used up and reads its next batch, so every round makes progress.
    """
    import pyarrow.parquet as pq

    readers = [pq.ParquetFile(p).iter_batches(batch_size=SPILL_BATCH) for p in paths]
    current: list[dict[str, np.ndarray] | None] = [None] * len(readers)

    def load(i: int) -> None:
        batch = next(readers[i], None)
        current[i] = None if batch is None else {name: column_to_numpy(batch.column(name))
                                                 for name in batch.schema.names}

    for i in range(len(readers)):
        load(i)
    while True:
        live = [i for i, c in enumerate(current) if c is not None and len(c[seq])]
        if not live:
            return
        cut = min((-float(current[i]["P_ENSEMBLE"][-1]), int(current[i][seq][-1])) for i in live)
        taken = []
        for i in live:
            c = current[i]
            neg = -c["P_ENSEMBLE"].astype(np.float64)
            k = int(((neg < cut[0]) | ((neg == cut[0]) & (c[seq] <= cut[1]))).sum())  # a prefix: runs are sorted
            if k:
                taken.append({name: values[:k] for name, values in c.items()})
                current[i] = {name: values[k:] for name, values in c.items()}
            if not len(current[i][seq]):
                load(i)
        block = {name: np.concatenate([t[name] for t in taken]) for name in taken[0]}
        order = np.lexsort((block[seq], -block["P_ENSEMBLE"].astype(np.float64)))
        yield {name: values[order] for name, values in block.items()}


def format_summary(summary: RunSummary, opts: RunOptions) -> str:
    """The lines ``lensengine run`` prints: what this invocation did, then what the outputs hold."""
    from lensengine.catalogs.flags import BAD_MASK, Flag

    if summary.already_complete:
        return "\n".join([
            f"already complete: {opts.out} and {opts.scores} hold this run's outputs (same store, models, "
            f"options and threshold); nothing was redone (use --restart to score again)",
            f"{summary.n_cutouts} cutouts, {summary.n_scored} with an ensemble score, {summary.n_flagged} with a "
            f"bad-input flag ({summary.n_unreadable} unreadable), {summary.n_candidates} candidates"])
    bad = {k: v for k, v in summary.flag_counts.items() if Flag[k].value & BAD_MASK}
    info = {k: v for k, v in summary.flag_counts.items() if not Flag[k].value & BAD_MASK}
    now = f"{summary.n_cutouts_now} scored now in {summary.seconds:.1f} s ({summary.rate:.1f} cutouts/s)"
    if summary.n_resumed_cutouts:
        now += f", {summary.n_resumed_cutouts} by an earlier run"
    lines = [
        f"{summary.n_cutouts} cutouts in {summary.n_tasks} tasks of up to {summary.task_size} "
        f"({summary.n_resumed} resumed): {now}",
        f"{summary.n_scored} with an ensemble score; {summary.n_flagged} with a bad-input flag "
        f"({summary.n_unreadable} unreadable)"
        + (": " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())) if bad else ""),
    ]
    if info:
        lines.append("informational flags (those cutouts are scored): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(info.items())))
    lines += [
        f"{summary.n_candidates} candidates with P_ENSEMBLE >= {opts.threshold} ({summary.ensemble} ensemble)",
        f"score table: {opts.scores} (Parquet dataset, a folder per tile)",
        f"candidate catalogue: {opts.out}",
    ]
    if summary.n_redone:
        lines.insert(1, f"redid {summary.n_redone} task(s) whose parts failed their check")
    return "\n".join(lines)


def command_line() -> str:
    return " ".join(["lensengine", *sys.argv[1:]])
