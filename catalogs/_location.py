"""Where a survey store lives: a local directory or an fsspec URL (``s3://``, ``gs://``, ``https://``).

zarr reads and writes the store through its own stores (``LocalStore`` for a
directory, ``FsspecStore`` for a URL).  The store also needs a few file-level
operations zarr does not offer: whether one chunk's object exists (zarr reads
a missing chunk as fill values, which must not pass for data), a listing with
sizes and version stamps (the run's resume fingerprint), the total size, and
removal.  :class:`Location` gives those for both kinds.

Credentials come only from the environment and the standard configuration
files of each filesystem package (for S3: ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, ``~/.aws/config`` and
``~/.aws/credentials``, ``AWS_ENDPOINT_URL`` for S3-compatible servers; for
GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` or gcloud's defaults), never from the
command line, so they never land in shell history, logs or catalogue headers.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = ["Location", "as_location", "is_url", "location_key"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: The pip package that gives fsspec each scheme (named in the error when it is missing).
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}
#: Schemes that can only be read (plain HTTP servers take no writes).
READ_ONLY = {"http", "https"}
#: Object metadata that changes when an object is rewritten (S3, GCS, Azure, HTTP headers, fsspec's own).
_STAMP_KEYS = ("ETag", "etag", "LastModified", "Last-Modified", "last_modified", "mtime", "updated", "generation",
               "Content-MD5")


def is_url(value) -> bool:
    """True for an fsspec URL other than ``file://`` (which is a local path)."""
    if not isinstance(value, str):
        return False
    match = _SCHEME.match(value)
    return bool(match) and match.group(1).lower() != "file"


def as_location(value) -> Path | str:
    """A store argument as given: a URL stays a string (``Path`` would fold ``s3://`` into ``s3:/``), else a Path."""
    if is_url(value):
        return value.rstrip("/")
    if isinstance(value, str) and value.lower().startswith("file://"):
        return Path(value[len("file://"):])
    return Path(value)


def location_key(value) -> str:
    """The store's stable name across processes: the URL, or the absolute local path."""
    loc = as_location(value)
    return loc if isinstance(loc, str) else str(loc.resolve())


class Location:
    """The files of one store, local or remote (see the module docstring)."""

    def __init__(self, value):
        loc = as_location(value)
        self.url: str | None = loc if isinstance(loc, str) else None
        self.local: Path | None = None if self.url else loc
        if self.url and "@" in self.url.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(f"store {self.url.split('://', 1)[0]}://...: the URL holds credentials (user@ or "
                             f"user:password@); they would be logged and written into catalogue headers. Give them "
                             f"through the environment or config files instead (AWS_PROFILE, ~/.aws/credentials, "
                             f"GOOGLE_APPLICATION_CREDENTIALS)")
        self._fs = None
        self._root = ""

    def __str__(self) -> str:
        return self.url or str(self.local)

    @property
    def scheme(self) -> str | None:
        return _SCHEME.match(self.url).group(1).lower() if self.url else None

    @property
    def read_only(self) -> bool:
        return self.scheme in READ_ONLY

    def _missing_package(self, exc: ImportError) -> ValueError:
        package = PACKAGES.get(self.scheme or "", "the fsspec implementation for this scheme")
        return ValueError(f"store {self.url}: {self.scheme}:// stores need the Python package {package} "
                          f"(pip install {package}); {exc}")

    def fs(self):
        """The synchronous fsspec filesystem and the store's root path in it (URL stores only)."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            try:
                self._fs, self._root = url_to_fs(self.url)
            except ImportError as exc:
                raise self._missing_package(exc) from None
            self._root = self._root.rstrip("/")
        return self._fs, self._root

    def zarr_store(self, read_only: bool):
        """The zarr store for this location: a LocalStore path string, or an FsspecStore."""
        if self.local is not None:
            return str(self.local)
        if not read_only and self.read_only:
            raise ValueError(f"store {self.url}: {self.scheme}:// is read-only; write to a local path, s3:// or gs://")
        from zarr.storage import FsspecStore

        try:
            return FsspecStore.from_url(self.url, read_only=read_only)
        except ImportError as exc:
            raise self._missing_package(exc) from None

    def exists(self) -> bool:
        """Whether anything is at the location (a file, a folder, or objects under the prefix)."""
        if self.local is not None:
            return self.local.exists()
        fs, root = self.fs()
        fs.invalidate_cache(root)
        return bool(fs.exists(root)) or bool(fs.exists(f"{root}/zarr.json"))

    def describe_missing(self) -> str:
        """What is at the location when it holds no store: for the error message."""
        if self.local is not None:
            if not self.local.exists():
                return "nothing"
            return "a file" if self.local.is_file() else "a directory without zarr.json"
        return "no zarr.json object" if self.exists() else "nothing"

    def is_file(self, key: str) -> bool:
        """Whether the object ``key`` (a ``/``-separated path below the store root) exists."""
        if self.local is not None:
            return (self.local / key).is_file()
        fs, root = self.fs()
        try:
            return bool(fs.isfile(f"{root}/{key}"))
        except OSError:
            return False

    def stamps(self, prefix: str) -> list[tuple[str, int, str]]:
        """``(key below prefix, size, version stamp)`` of every object under ``prefix``, sorted.

        The stamp changes whenever an object is rewritten: the modification time in ns on a
        local disk; the ETag (and last-modified time, or generation) an object store reports.
        """
        if self.local is not None:
            base = self.local / prefix
            return sorted((p.relative_to(base).as_posix(), (st := p.stat()).st_size, str(st.st_mtime_ns))
                          for p in base.rglob("*") if p.is_file())
        fs, root = self.fs()
        base = f"{root}/{prefix}".rstrip("/")
        fs.invalidate_cache(base)
        found = fs.find(base, detail=True)
        out = []
        for name, info in found.items():
            if not any(info.get(k) for k in _STAMP_KEYS):
                info = fs.info(name)  # a plain HTTP folder listing has no stamps: ask for the object's headers
            stamp = ":".join(str(info.get(k, "")) for k in _STAMP_KEYS)
            out.append((name[len(base):].lstrip("/"), int(info.get("size") or 0), stamp))
        return sorted(out)

    def total_bytes(self) -> int:
        if self.local is not None:
            return sum(p.stat().st_size for p in self.local.rglob("*") if p.is_file())
        return sum(size for _, size, _ in self.stamps(""))

    def remove(self) -> None:
        """Delete everything at the location (a store being replaced)."""
        if self.local is not None:
            if self.local.is_dir():
                shutil.rmtree(self.local)
            elif self.local.exists():
                self.local.unlink()
            return
        fs, root = self.fs()
        if fs.exists(root):
            fs.rm(root, recursive=True)
        fs.invalidate_cache(root)
