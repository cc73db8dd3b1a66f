"""What a run keeps on disk: the lock on its outputs, the parts folder, and the commit of the output pair.

Everything here exists so that a run never mixes, loses or silently overwrites results:

- **Lock.** ``<out>.lock`` is created atomically (written complete under another name, then hard-linked
  into place, which fails if it exists) and names the holder's pid, host and command.  A second run
  on the same ``--out`` refuses; a lock whose pid is dead on this host is stale and taken over with a
  warning (a lock from another host is never guessed about).
- **Parts folder.** ``<out>.parts/`` holds ``run.json``, the manifest (it marks the folder as
  lensengine's and fingerprints what the parts depend on: store content, model files, ensemble file,
  batch size, precision, task size), and ``scores/``, the score table being built: a Parquet dataset
  partitioned by tile, one file per finished task (``scores/tile=<tile>/part-<first row>.parquet``).
  Each part records its tile, row range, the SHA-256 of its object IDs and the run it belongs to,
  and is checked against the store before it is trusted.  Only files this module names (parts,
  manifest, journal, scratch, spill runs) are ever deleted; a folder it did not make is refused,
  never emptied.
- **Commit.** The parts are already the score table's files: committing moves ``scores/`` to
  ``--scores`` (one rename, no copy) beside the catalogue, written to a hidden temporary.  A journal
  (``commit.json``) naming the renames is written first, then both are renamed (a score table already
  at ``--scores`` is first moved aside and deleted after).  A run killed between the renames is
  completed by the next start (roll forward), so the destination never holds a new score table
  beside an old catalogue.  Temporaries of dead processes are removed at the next start.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np

from lensengine.catalogs.store import pid_alive

log = logging.getLogger(__name__)

__all__ = ["RunRefused", "OutputLock", "PartsFolder", "part_name", "commit_outputs", "finish_interrupted_commit",
           "remove_stale_temporaries", "ids_sha256", "is_score_dataset", "PARTS_SUFFIX", "COMMON_METADATA"]

PARTS_SUFFIX = ".parts"
LOCK_SUFFIX = ".lock"
MANIFEST = "run.json"
JOURNAL = "commit.json"
PARTS_KIND = "lensengine-run-parts"
PART_META = b"lensengine.part"
SCORES_DIR = "scores"
COMMON_METADATA = "_common_metadata"  # the dataset's schema and provenance (the Parquet convention)
SPILL_PREFIX = "candidates-"
_PART_RE = re.compile(r"^part-\d{12}\.parquet$")
#: a part being written (pid, thread); hidden, so that dataset readers skip one a killed writer left
_PART_TMP_RE = re.compile(r"^\.part-\d{12}\.parquet\.tmp-\d+-\d+$")
_TILE_DIR_RE = re.compile(r"^tile=[^/]+$")
_SPILL_RE = re.compile(r"^candidates-\d+-\d+\.parquet$")
_SCRATCH_RE = re.compile(r"^scratch-(\d+)$")
_TMP_RE = re.compile(r"\.tmp-(\d+)")


class RunRefused(Exception):
    """The run cannot start as asked (bad usage or input found before any work): exit code 2."""


def ids_sha256(object_ids) -> str:
    """SHA-256 of object IDs as little-endian int64: the identity of a chunk's rows."""
    return hashlib.sha256(np.ascontiguousarray(object_ids, dtype="<i8").tobytes()).hexdigest()


# --- the lock --------------------------------------------------------------------------------------

class OutputLock:
    """An exclusive lock on a run's outputs: ``<out>.lock`` (see the module docstring)."""

    def __init__(self, out: Path, command: str = ""):
        self.path = Path(out).with_name(Path(out).name + LOCK_SUFFIX)
        self.command = command
        self._held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _create(self, tmp: Path) -> None:
        """Create the lock from the complete ``tmp``; raises FileExistsError if it exists."""
        try:
            os.link(tmp, self.path)  # atomic, and the lock is never seen half-written
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(tmp.read_text())

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunRefused` naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(2):
                try:
                    self._create(tmp)
                    self._held = True
                    return
                except FileExistsError:
                    holder = self._holder()
                if holder == {}:  # released between our attempt and the read: try again
                    continue
                if holder is None:
                    raise RunRefused(f"{self.path} exists but is not a lensengine lock; if no run is writing "
                                     f"{self.path.with_suffix('')}, remove it and run again")
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and not pid_alive(pid):
                    log.warning("taking over the stale lock %s of a run that is gone (pid %s, started %s)",
                                self.path, pid, holder.get("since"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunRefused(f"another run holds {self.path} (pid {pid} on {host} since {holder.get('since')}: "
                                 f"{holder.get('command') or 'unknown command'}); wait for it to finish, or choose "
                                 f"another --out")
            raise RunRefused(f"could not take the lock {self.path}: another run keeps taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


# --- temporaries and the commit of the output pair -----------------------------------------------

def remove_stale_temporaries(paths) -> list[Path]:
    """Remove the hidden temporaries (``.<name>.tmp-<pid>``, nested ones too) dead processes left beside ``paths``.

    A temporary is a file (a catalogue being written) or a folder (an earlier score table moved aside
    while a new one was committed).
    """
    removed = []
    for path in paths:
        path = Path(path)
        if not path.parent.is_dir():
            continue
        for leftover in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f"..{path.name}.tmp-*")]:
            match = _TMP_RE.search(leftover.name)
            if match and (int(match.group(1)) == os.getpid() or not pid_alive(int(match.group(1)))):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
                log.warning("removed %s, a temporary file left by an interrupted run", leftover)
    return removed


def is_score_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder a lensengine run may replace: empty, or a score table a run wrote.

    A run's score table holds ``_common_metadata`` (kind ``score-table``) and ``tile=*/part-*.parquet``
    files; anything else in the folder means it is someone else's, and it is never replaced.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if not entries:
        return True
    names = {p.name for p in entries}
    if COMMON_METADATA not in names:
        return False
    try:
        import pyarrow.parquet as pq

        kind = (pq.read_schema(path / COMMON_METADATA).metadata or {}).get(b"lensengine.kind")
    except Exception:  # noqa: BLE001 - an unreadable file is not ours to replace
        return False
    if kind != b"score-table":
        return False
    return all(p.name == COMMON_METADATA or (p.is_dir() and _TILE_DIR_RE.match(p.name)) for p in entries)


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``; a folder already at ``final`` (an earlier score table) is moved aside first.

    The moved-aside folder is named like a temporary of this process, so a kill before it is deleted
    leaves something the next start removes.
    """
    tmp, final = Path(tmp), Path(final)
    if not tmp.exists():
        return  # renamed before an interruption (roll forward)
    if final.is_dir() and not final.is_symlink():
        aside = final.with_name(f".{final.name}.tmp-{os.getpid()}-old")
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if tmp.is_dir() and (final.is_file() or final.is_symlink()):
        final.unlink()  # a single-file score table of an earlier version
    os.replace(tmp, final)


def commit_outputs(parts: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Rename complete temporaries (files or folders) onto their destinations as one step (journal first)."""
    journal = parts / JOURNAL
    _write_json(journal, {"renames": [[str(tmp), str(final)] for tmp, final in pairs]})
    for tmp, final in pairs:
        try:
            _install(tmp, final)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise OSError(exc.errno, f"cannot move {tmp} to {final}: they are on different file systems "
                                         f"(--scores must be on the file system of --out)") from exc
            raise
    journal.unlink()


def finish_interrupted_commit(parts: Path) -> bool:
    """Complete the renames of a run killed while committing its outputs; True if there was one."""
    journal = parts / JOURNAL
    if not journal.is_file():
        return False
    try:
        renames = json.loads(journal.read_text())["renames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunRefused(f"{journal} is unreadable ({exc}); the outputs beside it may be from two runs: "
                         f"remove {journal} and run again") from None
    for tmp, final in renames:
        _install(Path(tmp), Path(final))
    log.warning("completed the outputs of a run that was interrupted while writing them: %s",
                ", ".join(final for _, final in renames))
    journal.unlink()
    PartsFolder(parts).remove()
    return True


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


# --- the parts folder ------------------------------------------------------------------------------

def tile_folder(tile: str) -> str:
    """A tile's partition folder, hive style: ``tile=<name>`` with the name URI-escaped (as pyarrow reads it)."""
    return "tile=" + urllib.parse.quote(tile, safe="")


def part_name(tile: str, start: int) -> str:
    """A task's part, relative to the score table: ``tile=<tile>/part-<first row, 12 digits>.parquet``.

    Zero-padded first rows make the names sort in store order within a tile.
    """
    return f"{tile_folder(tile)}/part-{start:012d}.parquet"


class PartsFolder:
    """``<out>.parts/``: finished tasks of one run (``scores/``), its manifest, scratch and spill space."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def for_output(cls, out: Path) -> "PartsFolder":
        out = Path(out)
        return cls(out.with_name(out.name + PARTS_SUFFIX))

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def scores_path(self) -> Path:
        """The score table being built: the finished parts, partitioned by tile."""
        return self.path / SCORES_DIR

    def read_manifest(self) -> dict | None:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def finished_parts(self):
        """The finished parts (an iterator: a run may have very many)."""
        if not self.scores_path.is_dir():
            return
        for folder in self.scores_path.iterdir():
            if folder.is_dir() and _TILE_DIR_RE.match(folder.name):
                yield from (p for p in folder.iterdir() if _PART_RE.match(p.name))

    def open(self, manifest: dict, *, resume: bool, restart: bool) -> None:
        """Make the folder ready for a run with this manifest, or raise :class:`RunRefused`.

        Resuming needs the same manifest.  Without ``resume``, finished parts of an earlier run are
        kept unless ``restart`` discards them.  A folder without a lensengine manifest is never used.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunRefused(f"{self.path} is a file, not a parts folder; move it away or choose another --out")
        if self.path.is_dir():
            old = self.read_manifest()
            if old is None and any(self.path.iterdir()):
                raise RunRefused(f"{self.path} exists and was not made by lensengine run (no readable {MANIFEST}); "
                                 f"it is left as it is: move it away or choose another --out")
            self._remove_stale_scratch()
            if old is not None and resume:
                if old != manifest:
                    raise RunRefused(f"cannot resume: {self.path} belongs to a different run "
                                     f"({describe_change(old, manifest)}); run with --restart to start again")
                self.scores_path.mkdir(exist_ok=True)
                return
            finished = sum(1 for _ in self.finished_parts())
            if old is not None and finished and not restart:
                raise RunRefused(f"{self.path} holds {finished} finished task(s) of an earlier run: use "
                                 f"--resume to continue it or --restart to discard them")
            if old is not None:
                self._discard()
        else:
            self.path.mkdir(parents=True)
        self.scores_path.mkdir(exist_ok=True)
        _write_json(self.manifest_path, manifest)

    def _discard(self) -> None:
        """Delete the files this module writes (parts, manifest, journal, scratch, spill runs); nothing else."""
        for p in self.path.iterdir():
            if p.is_file() and (_SPILL_RE.match(p.name) or p.name in (MANIFEST, JOURNAL, MANIFEST + ".tmp",
                                                                       JOURNAL + ".tmp")):
                p.unlink()
            elif p.is_dir() and _SCRATCH_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
        if self.scores_path.is_dir():
            for folder in self.scores_path.iterdir():
                if folder.is_file() and folder.name == COMMON_METADATA:
                    folder.unlink()
                elif folder.is_dir() and _TILE_DIR_RE.match(folder.name):
                    for p in folder.iterdir():
                        if p.is_file() and (_PART_RE.match(p.name) or _PART_TMP_RE.match(p.name)):
                            p.unlink()
                    _rmdir_if_empty(folder)
            _rmdir_if_empty(self.scores_path)

    def remove_part_temporaries(self) -> None:
        """Delete the temporaries of parts whose writers were killed (before the parts become the score table)."""
        if not self.scores_path.is_dir():
            return
        for folder in self.scores_path.iterdir():
            if folder.is_dir() and _TILE_DIR_RE.match(folder.name):
                for p in folder.iterdir():
                    if _PART_TMP_RE.match(p.name):
                        p.unlink(missing_ok=True)

    def remove_spill(self) -> None:
        """Delete the candidate spill runs of a merge (see :func:`spill_path`)."""
        for p in self.path.glob(f"{SPILL_PREFIX}*.parquet"):
            if _SPILL_RE.match(p.name):
                p.unlink()

    def spill_path(self, level: int, index: int) -> Path:
        """A sorted run of candidates that the merge spills to disk (level 0 from the parts, then merges)."""
        return self.path / f"{SPILL_PREFIX}{level}-{index:06d}.parquet"

    def _remove_stale_scratch(self) -> None:
        for p in self.path.glob("scratch-*"):
            match = _SCRATCH_RE.match(p.name)
            if p.is_dir() and match and not pid_alive(int(match.group(1))):
                shutil.rmtree(p, ignore_errors=True)

    def remove(self) -> None:
        """Remove the folder after a finished run: only our own files; anything else is left and named."""
        if not self.path.is_dir():
            return
        self._discard()
        try:
            self.path.rmdir()
        except OSError:
            left = sorted(p.name for p in self.path.iterdir())
            log.warning("left %s in place: it holds files lensengine did not write (%s)", self.path,
                        ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""))

    def scratch(self) -> Path:
        """This process's scratch folder for the local Dask cluster (removed by :meth:`remove_scratch`)."""
        path = self.path / f"scratch-{os.getpid()}"
        path.mkdir(exist_ok=True)
        return path

    def remove_scratch(self) -> None:
        shutil.rmtree(self.path / f"scratch-{os.getpid()}", ignore_errors=True)

    # --- single parts ---

    def part_path(self, tile: str, start: int) -> Path:
        return self.scores_path / part_name(tile, start)

    def write_part(self, path: Path, table, identity: dict) -> None:
        """Write one task's rows (a pyarrow Table) with its identity in the schema metadata; atomic.

        The client or a worker writes it (a task that runs twice writes the same rows twice: each
        attempt has its own temporary, and the rename is atomic).
        """
        import pyarrow.parquet as pq

        meta = dict(table.schema.metadata or {})
        meta[PART_META] = json.dumps(identity, sort_keys=True).encode()
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
        os.replace(tmp, path)

    def check_part(self, path: Path, identity: dict, columns=(), store_ids=None) -> tuple[str | None, dict]:
        """Check a part against the task it should hold; returns (problem or None, the columns read).

        The part must carry ``identity`` (tile, row range, run) in its metadata *and* its rows must
        agree: ``TILE`` and ``ROW`` are the task's, the SHA-256 of ``OBJECT_ID`` is the one recorded,
        and, given ``store_ids`` (a callable returning the store's hash for the range, read on demand
        so that nothing per task is kept in memory), the store's.  A copied, stale or garbage file fails.
        """
        from lensengine.engine.arrow import column_to_numpy, read_parquet

        wanted = sorted({"TILE", "ROW", "OBJECT_ID", *columns})
        try:
            table = read_parquet(path, columns=wanted)
            meta = json.loads((table.schema.metadata or {}).get(PART_META, b"{}"))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            return f"unreadable ({type(exc).__name__}: {exc})", {}
        recorded = meta.pop("ids", None) if isinstance(meta, dict) else None
        if meta != identity:
            meta = meta if isinstance(meta, dict) else {}
            return (f"made for {meta.get('tile')!r} rows from {meta.get('start')} of run {meta.get('run')}, "
                    f"not this run's {identity['tile']!r} rows from {identity['start']}"), {}
        cols = {name: column_to_numpy(table.column(name)) for name in wanted}
        rows = np.arange(identity["start"], identity["stop"], dtype=np.int64)
        if len(cols["ROW"]) != len(rows) or not np.array_equal(cols["ROW"], rows):
            return f"rows are not {identity['start']}..{identity['stop'] - 1}", {}
        if not all(t == identity["tile"] for t in cols["TILE"]):
            return f"TILE is not {identity['tile']!r} throughout", {}
        ids = ids_sha256(cols["OBJECT_ID"])
        if ids != recorded or (store_ids is not None and ids != store_ids()):
            return "its object IDs are not the store's for these rows", {}
        return None, cols


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def describe_change(old: dict, new: dict) -> str:
    """Which parts of two manifests differ, in words (for refusing a resume)."""
    if old.get("kind") != new.get("kind"):
        return "its manifest is from another lensengine version or not a run's"
    changed = []
    if old.get("store") != new.get("store"):
        changed.append(f"store {old.get('store')} -> {new.get('store')}")
    else:
        tiles_old, tiles_new = old.get("tiles", {}), new.get("tiles", {})
        diff = sorted(t for t in set(tiles_old) | set(tiles_new) if tiles_old.get(t) != tiles_new.get(t))
        if diff or old.get("store_attrs") != new.get("store_attrs"):
            changed.append("the store's content changed" + (f" (tiles {', '.join(diff[:5])})" if diff else ""))
    for key, what in (("models", "models or their files"), ("ensemble", "ensemble or its file"),
                      ("batch_size", "batch size"), ("precision", "precision"), ("out", "output"),
                      ("task_size", "task size (--task-size)")):
        if old.get(key) != new.get(key):
            changed.append(what)
    return ", ".join(changed) or "manifest differs"
