"""Candidate catalogues (FITS) and score tables (Parquet).

Score table: one row per scored cutout, written incrementally chunk by chunk
with :class:`ScoreTableWriter` (Parquet row groups into a temporary file,
renamed on close).  Candidate catalogue: the rows at or above a threshold,
ranked, named (IAU style ``LENS Jhhmmss.ss+ddmmss.s``) and written by
:func:`write_candidates` as a FITS BINTABLE with units, column descriptions
(in the ``TTYPEn`` comments) and flat provenance cards (keys of at most 8
characters, each with a comment).  Both are written to a temporary file and
renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from pathlib import Path

import numpy as np

from lensengine.catalogs.flags import describe

__all__ = ["score_column", "ScoreTableWriter", "read_scores", "score_arrow", "score_table_files", "score_table_schema",
           "write_candidates", "candidate_table",
           "CatalogueStream", "text_width", "standard_provenance",
           "read_catalog",
           "write_table", "fits_text", "temporary_path", "iau_name", "describe_file", "COLUMN_DESCRIPTIONS"]

ENSEMBLE_COLUMN = "P_ENSEMBLE"
#: Fixed columns: name -> (unit, description).  The unit is an astropy unit string (FITS ``TUNITn``, the
#: Parquet field's ``unit`` metadata); "" means dimensionless by design (IDs, counts, probabilities, flags, text).
COLUMNS: dict[str, tuple[str, str]] = {
    "NAME": ("", "IAU-style name from RA/DEC (truncated)"),
    "RANK": ("", "rank by score, 1 = most lens-like"),
    "OBJECT_ID": ("", "object ID in the survey store"),
    "TILE": ("", "store tile holding the cutout"),
    "CHUNK": ("", "store chunk holding the cutout"),
    "ROW": ("", "row of the cutout in its tile (0-based)"),
    "RA": ("deg", "right ascension (ICRS)"),
    "DEC": ("deg", "declination (ICRS)"),
    "P_ENSEMBLE": ("", "ensemble P(lens)"),
    "P_OU_TSNE": ("", "OU-T-SNE P(lens): the cell's lens fraction"),
    "TSNE_CELL": ("", "OU-T-SNE grid cell index (-1: not placed)"),
    "TSNE_X": ("", "t-SNE embedding x (map coordinate)"),
    "TSNE_Y": ("", "t-SNE embedding y (map coordinate)"),
    "FLAGS": ("", "quality flags (lensengine.catalogs.flags.Flag)"),
    "FLAG_TEXT": ("", "quality flags as text"),
    "ERROR": ("", "why the cutout could not be read (empty: read)"),
    "KNOWN_LENS": ("", "matching known lens (empty: none)"),
    "KNOWN_SEP": ("arcsec", "separation to the known lens (NaN: none)"),
    "EXPLAIN": ("", "interpretability figures, relative paths"),
}
COLUMN_DESCRIPTIONS = {name: desc for name, (_, desc) in COLUMNS.items()}
#: Truth columns of the simulated and real-check stores (lower-case store name -> (unit, description)); the
#: score table calls them TRUTH_<NAME>.  docs/simulation.md and docs/realcheck.md define them.
TRUTH_COLUMNS: dict[str, tuple[str, str]] = {
    "label": ("", "truth: 1 lens, 0 non-lens"),
    "label_easy": ("", "truth: 1 when the easy labelling rule holds"),
    "is_lens": ("", "truth: 1 for a known lens"),
    "kind": ("", "truth: what was simulated or observed"),
    "seed": ("", "truth: the cutout's own simulation seed"),
    "theta_e": ("arcsec", "truth: Einstein radius"),
    "theta_e2": ("arcsec", "truth: second deflector's Einstein radius"),
    "sigma_v": ("km / s", "truth: velocity dispersion"),
    "sigma_v2": ("km / s", "truth: second deflector's velocity dispersion"),
    "z_lens": ("", "truth: lens redshift"),
    "z_lens2": ("", "truth: second deflector's redshift"),
    "z_source": ("", "truth: source redshift"),
    "z": ("", "truth: redshift"),
    "source_colour": ("", "truth: spectral class of the source"),
    "colour_class": ("", "truth: colour class"),
    "n_images": ("", "truth: lensed-image groups above threshold"),
    "arc_snr": ("", "truth: arc signal-to-noise ratio"),
    "arc_pixels": ("", "truth: lensed pixels above threshold (count)"),
    "magnification": ("", "truth: total magnification"),
    "x_lens": ("arcsec", "truth: lens x offset from the stamp centre"),
    "y_lens": ("arcsec", "truth: lens y offset from the stamp centre"),
    "offset_x": ("arcsec", "truth: x offset from the stamp centre"),
    "offset_y": ("arcsec", "truth: y offset from the stamp centre"),
    "attempts": ("", "truth: draws until the system met its rule"),
    "lens_type": ("", "truth: survey-lens sub-population"),
    "n_deflectors": ("", "truth: number of deflectors"),
    "source_type": ("", "truth: source light (sersic or real stamp)"),
    "source_re": ("arcsec", "truth: unlensed source half-light radius"),
    "n_neighbours": ("", "truth: neighbours brighter than VIS 24.5"),
    "depth_offset": ("mag", "truth: depth vs the median (+ = shallower)"),
    "name": ("", "truth: name of the real object"),
    "role": ("", "truth: real-galaxy role (check or sim)"),
    "nisp_from": ("", "truth: source of the NISP bands"),
    "native_noise_vis": ("", "truth: native VIS noise / Euclid floor"),
}
#: Per-band truth columns (prefix -> unit, description with {band}).
_TRUTH_BAND_COLUMNS = {
    "mag_lens_": ("mag", "truth: lens AB magnitude in {band}"),
    "mag_source_": ("mag", "truth: unlensed source AB magnitude in {band}"),
    "psf_fwhm_": ("arcsec", "truth: PSF FWHM in {band}"),
    "mag_": ("mag", "truth: AB magnitude in {band}"),
}
REQUIRED_SCORE_COLUMNS = ("OBJECT_ID", "RA", "DEC", "FLAGS")
REQUIRED_CATALOG_COLUMNS = ("NAME", "RANK", "OBJECT_ID", "RA", "DEC", "FLAGS")
_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")


def score_column(model_name: str) -> str:
    """Score-table column of a model: ``"OU-66"`` -> ``"P_OU_66"``; ``"ensemble"`` -> ``"P_ENSEMBLE"``."""
    if model_name.lower() == "ensemble":
        return ENSEMBLE_COLUMN
    return "P_" + re.sub(r"[^A-Za-z0-9]+", "_", model_name).strip("_").upper()


def _column_info(name: str) -> tuple[str | None, str]:
    """``(unit, description)`` of a column; the unit is None when lensengine does not know it."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name.startswith("P_"):
        return "", f"P(lens) from model {name[2:].replace('_', '-')} (NaN: not scored)"
    if name.startswith("TRUTH_"):
        truth = name[6:].lower()
        if truth in TRUTH_COLUMNS:
            return TRUTH_COLUMNS[truth]
        for prefix, (unit, desc) in _TRUTH_BAND_COLUMNS.items():
            if truth.startswith(prefix):
                return unit, desc.format(band=name[6 + len(prefix):])
        return None, f"truth column {truth!r} of the input store"
    return None, "column added by a plugin (process_batch)"


def describe_column(name: str) -> str:
    """The description of a score-table or catalogue column (FITS ``TTYPEn`` comment, Parquet metadata)."""
    return _column_info(name)[1]


def column_unit(name: str) -> str | None:
    """The unit of a column as an astropy unit string, "" when dimensionless by design, None when unknown
    (a plugin's column, a truth column lensengine does not define)."""
    return _column_info(name)[0]


def temporary_path(path: Path) -> Path:
    """The hidden temporary beside ``path`` that this process writes before renaming it into place.

    The name ``.<name>.tmp-<pid>`` lets a later run find (and remove) the leftovers of a killed one.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# --- score tables (Parquet) ---------------------------------------------------------

_ARROW_TYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
                "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "float32": "float32",
                "float64": "float64", "bool": "bool_", "str": "string"}


def _arrow_type(dtype):
    import pyarrow as pa

    name = "str" if np.dtype(dtype).kind in "USO" else ("bool" if np.dtype(dtype).kind == "b" else np.dtype(dtype).name)
    if name not in _ARROW_TYPES:
        raise ValueError(f"score-table column dtype {dtype!r} not supported")
    return getattr(pa, _ARROW_TYPES[name])()


class ScoreTableWriter:
    """Write a Parquet score table incrementally (one row group per batch); tmp + rename on close.

    The columns come from ``schema`` (a ``pyarrow.Schema``, e.g. the engine's row schema, so every
    batch is checked against the same columns whatever produced it), else from ``schema_columns``
    (name -> dtype string: ``"int64"``, ``"float32"``, ``"str"`` ...), else from the first batch.
    Columns of the first batch beyond ``schema`` (plugin columns) are appended to it.  ``metadata``
    (flat str -> str, e.g. provenance) goes into the schema's metadata.  Use as a context manager: on an exception
    the temporary file is removed and nothing appears at ``path``.  :meth:`finish` completes the
    temporary file without moving it, for a caller that commits several outputs together.
    """

    def __init__(self, path, schema_columns: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
                 schema=None):
        self.path = Path(path)
        self.schema_columns = dict(schema_columns) if schema_columns else None
        self.base_schema = schema
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.tmp_path = temporary_path(self.path)
        self._writer = None
        self._schema = None
        self._finished = False
        self.n_rows = 0

    def _open(self, batch: dict[str, np.ndarray] | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.base_schema is not None:
            fields = [f.with_metadata({"description": describe_column(f.name)}) for f in self.base_schema]
            known = set(self.base_schema.names)
            fields += [pa.field(name, _arrow_type(np.asarray(values).dtype),
                                metadata={"description": describe_column(name)})
                       for name, values in (batch or {}).items() if name not in known]
        else:
            if batch is None and self.schema_columns is None:
                raise ValueError(f"score table {self.path}: nothing was written (no batch, so no schema)")
            columns = self.schema_columns or {k: np.asarray(v).dtype for k, v in batch.items()}
            fields = [pa.field(name, _arrow_type(dtype), metadata={"description": describe_column(name)})
                      for name, dtype in columns.items()]
        self._schema = pa.schema(fields, metadata={"lensengine.kind": "score-table", **self.metadata})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.tmp_path, self._schema, compression="zstd")

    @property
    def schema(self):
        """The table's ``pyarrow.Schema`` (None before the first batch)."""
        return self._schema

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Append one batch (dict of equal-length arrays) as a row group."""
        import pyarrow as pa

        if self._writer is None:
            self._open(batch)
        names = self._schema.names
        missing, extra = set(names) - set(batch), set(batch) - set(names)
        if missing or extra:
            raise ValueError(f"score batch columns do not match the table: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        lengths = {len(batch[n]) for n in names}
        if len(lengths) > 1:
            raise ValueError(f"score batch columns have different lengths {sorted(lengths)}")
        arrays = []
        for field in self._schema:
            values = np.asarray(batch[field.name])
            if pa.types.is_string(field.type):
                values = values.astype(str)
            arrays.append(pa.array(values, type=field.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        self.n_rows += lengths.pop() if lengths else 0

    def finish(self) -> Path:
        """Complete the temporary file (footer and metadata) without moving it; returns its path."""
        if self._writer is None:
            self._open(None)
        self._writer.close()
        self._finished = True
        return self.tmp_path

    def close(self) -> None:
        """Finish the file and move it into place."""
        if not self._finished:
            self.finish()
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        """Drop the temporary file (finished or not)."""
        if self._writer is not None and not self._finished:
            self._writer.close()
        self._finished = True
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ScoreTableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def score_table_files(path) -> list[Path]:
    """The Parquet files of a score table, in row order: the file itself, or the parts of a dataset folder.

    ``lensengine run`` writes its score table as a folder partitioned by tile
    (``tile=<tile>/part-<first row>.parquet``, plus ``_common_metadata`` with the schema and provenance);
    its parts sort by tile folder, then by first row.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("tile=*/part-*.parquet"))
    if not files:
        raise ValueError(f"{path} is a folder without score-table parts (tile=*/part-*.parquet)")
    return files


def score_table_schema(path):
    """The ``pyarrow.Schema`` of a score table with its provenance metadata (a dataset's ``_common_metadata``)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() and (path / "_common_metadata").is_file():
        return pq.read_schema(path / "_common_metadata")
    return pq.read_schema(score_table_files(path)[0])


def score_arrow(path, columns: list[str] | None = None):
    """A score table (a file, or a run's dataset folder) as a ``pyarrow.Table``, with its provenance metadata.

    ``columns``: only these (all when None).  A file that is not a readable score table is a ``ValueError``.
    """
    import pyarrow.dataset as ds

    path = Path(path)
    try:
        schema = score_table_schema(path)
        arrow = ds.dataset([str(f) for f in score_table_files(path)], schema=schema,
                           format="parquet").to_table(columns=columns)
        return arrow.replace_schema_metadata(schema.metadata)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a non-Parquet file
        raise ValueError(f"{path} is not a readable Parquet score table: {exc}") from exc


def read_scores(path):
    """Read a Parquet score table (a file, or a run's dataset folder) into an astropy Table (RA/DEC in deg).

    Validates the columns.  ``meta`` holds the provenance (of a dataset: its ``_common_metadata``).
    """
    import astropy.units as u
    from astropy.table import Column, Table

    path = Path(path)
    arrow = score_arrow(path)
    missing = [c for c in REQUIRED_SCORE_COLUMNS if c not in arrow.column_names]
    if missing:
        raise ValueError(f"{path}: score table lacks columns {missing} (has {arrow.column_names})")
    table = Table(meta={k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()})
    for field, column in zip(arrow.schema, arrow.columns):
        values = column.to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = values.astype(str)
        meta = field.metadata or {}
        desc = meta.get(b"description", b"").decode()
        table[field.name] = Column(values, description=desc or None, unit=meta.get(b"unit", b"").decode() or None)
    for name in ("RA", "DEC"):  # also in tables written before units were recorded
        table[name].unit = u.deg
    return table


# --- candidate catalogues (FITS) --------------------------------------------------

def iau_name(ra_deg, dec_deg, prefix: str = "LENS") -> list[str]:
    """IAU-style names ``LENS Jhhmmss.ss+ddmmss.s`` (coordinates truncated, not rounded)."""
    out = []
    for ra, dec in zip(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)):
        if not (np.isfinite(ra) and np.isfinite(dec)):
            out.append(f"{prefix} J?")
            continue
        cs = int(np.floor((ra % 360.0) / 15.0 * 3600.0 * 100 + 1e-6))  # hundredths of a second of time
        h, rest = divmod(cs, 360000)
        m, rest = divmod(rest, 6000)
        sign = "-" if dec < 0 else "+"
        ds = int(np.floor(abs(dec) * 3600.0 * 10 + 1e-6))  # tenths of an arcsecond
        d, drest = divmod(ds, 36000)
        dm, drest = divmod(drest, 600)
        out.append(f"{prefix} J{h:02d}{m:02d}{rest // 100:02d}.{rest % 100:02d}"
                   f"{sign}{d:02d}{dm:02d}{drest // 10:02d}.{drest % 10:d}")
    return out


def fits_text(value: str) -> str:
    """``value`` as printable ASCII for FITS (headers and table strings allow nothing else).

    Other characters become Python-style escapes (``"\\x07"``, ``"\\xc4"``, ``"\\u2603"``), so the text
    stays readable and distinct; the score table (Parquet, UTF-8) keeps the original.
    """
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _fits_strings(values) -> np.ndarray:
    """A string column FITS can store: printable ASCII, at least one character wide (an empty table too)."""
    text = [fits_text(v) for v in np.asarray(values).tolist()]
    width = max([1, *map(len, text)])
    return np.array(text, dtype=f"U{width}")


def _card(key: str, value, comment: str):
    """A FITS card with its comment when the comment fits whole on the card, else with none.

    A comment never gets cut (a 64-character SHA-256 leaves room for one letter of it):
    :func:`_cards` then puts it on a ``COMMENT`` card of its own.
    """
    from astropy.io import fits

    if not _KEY_RE.match(key):
        raise ValueError(f"provenance key {key!r} must be 1-8 characters A-Z, 0-9, _ or - (a flat FITS keyword)")
    if isinstance(value, (dict, list, tuple, set)):
        raise ValueError(f"provenance {key}: value must be a scalar, not {type(value).__name__} (FITS drops "
                         f"nested values)")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        value = ""
    if isinstance(value, str):
        value = fits_text(value)
    comment = fits_text(comment)
    used = len(str(fits.Card(key, value)).rstrip())
    room = 80 - max(used, 30) - 3 if used <= 80 else 0  # a comment starts at column 32 at the earliest
    return fits.Card(key, value, comment if len(comment) <= room else "")


def _cards(key: str, value, comment: str) -> list:
    """The cards of one provenance entry: :func:`_card`, then ``COMMENT KEY: comment`` when the comment did
    not fit on it (:func:`read_catalog` gives it back as the key's comment)."""
    from astropy.io import fits

    card = _card(key, value, comment)
    if comment and not card.comment:
        return [card, fits.Card("COMMENT", f"{key}: {fits_text(comment)}")]
    return [card]


def _fits_values(values: np.ndarray) -> np.ndarray:
    """``values`` in a dtype FITS stores as it is: int8 becomes int16 (astropy writes int8 as logical)."""
    return values.astype(np.int16) if values.dtype == np.int8 else values


def write_table(table, path) -> None:
    """Write a candidate QTable to FITS (tmp + rename): descriptions in TTYPEn comments, provenance cards.

    ``table.meta`` entries are ``KEY: (value, comment)`` or ``KEY: value``.
    """
    from astropy.io import fits

    path = Path(path)
    plain = table.copy(copy_data=False)
    plain.meta = {}
    for name in plain.colnames:
        if plain[name].dtype.kind in "OU":
            plain[name] = _fits_strings(plain[name])
        elif plain[name].dtype == np.int8:
            plain[name] = _fits_values(np.asarray(plain[name]))
    hdu = _described_hdu(table, plain)
    tmp = temporary_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_candidates(table, path, *, threshold: float, score_col: str = ENSEMBLE_COLUMN,
                     provenance: dict[str, tuple[object, str]]):
    """Select rows with ``score_col >= threshold``, rank, name and write them as a FITS catalogue.

    ``table`` is a score table (astropy Table, e.g. from :func:`read_scores`).
    ``provenance`` maps FITS keys (<= 8 characters) to ``(value, comment)``;
    ``THRESH``, ``SCORECOL``, ``NSCORED``, ``NCAND`` and ``DATE`` are added
    unless given.  Returns the written QTable.
    """
    out = candidate_table(table, threshold=threshold, score_col=score_col, provenance=provenance)
    write_table(out, path)
    return out


def candidate_table(table, *, threshold: float, score_col: str = ENSEMBLE_COLUMN,
                    provenance: dict[str, tuple[object, str]]):
    """The catalogue :func:`write_candidates` writes, as a QTable, without writing it.

    A run with more candidates than fit in memory builds it in sorted pieces and writes them with
    :class:`CatalogueStream`; ``RANK`` then counts within the piece (the stream renumbers it).
    """
    import astropy.units as u
    from astropy.table import QTable

    if score_col not in table.colnames:
        raise ValueError(f"score column {score_col!r} not in the table (columns: {', '.join(table.colnames)})")
    scores = np.asarray(table[score_col], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        keep = np.flatnonzero(np.isfinite(scores) & (scores >= threshold))
    order = keep[np.argsort(-scores[keep], kind="stable")]
    out = QTable()
    ra = np.asarray(getattr(table["RA"], "value", table["RA"]), dtype=np.float64)[order]
    dec = np.asarray(getattr(table["DEC"], "value", table["DEC"]), dtype=np.float64)[order]
    out["NAME"] = np.array(iau_name(ra, dec), dtype=str) if len(order) else np.array([], dtype="U24")
    out["RANK"] = np.arange(1, len(order) + 1, dtype=np.int32)
    for name in table.colnames:
        if name in ("NAME", "RANK", "RA", "DEC"):
            continue
        values = _fits_values(np.asarray(getattr(table[name], "value", table[name]))[order])
        if name.startswith("P_"):
            values = values.astype(np.float32)
        unit = column_unit(name)
        out[name] = values * u.Unit(unit) if unit and values.dtype.kind == "f" else values
        if name == "OBJECT_ID":
            out["RA"] = ra * u.deg
            out["DEC"] = dec * u.deg
    if "RA" not in out.colnames:
        out["RA"] = ra * u.deg
        out["DEC"] = dec * u.deg
    if "FLAGS" in out.colnames and "FLAG_TEXT" not in out.colnames:
        out["FLAG_TEXT"] = np.array([describe(v) for v in out["FLAGS"]], dtype=str)
    if "KNOWN_LENS" not in out.colnames:
        out["KNOWN_LENS"] = np.full(len(out), "", dtype="U1")
    for name in out.colnames:
        out[name].info.description = describe_column(name) or None
    from lensengine import __version__

    meta = {
        "SOFTWARE": (f"lensengine {__version__}", "software that wrote this catalogue"),
        "THRESH": (float(threshold), f"candidates have {score_col} >= THRESH"),
        "SCORECOL": (score_col, "score column used for selection and rank"),
        "NSCORED": (len(table), "cutouts in the score table"),
        "NCAND": (len(out), "candidates in this catalogue"),
        "DATE": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC date written"),
    }
    meta.update({k.upper(): v for k, v in provenance.items()})
    for key, item in meta.items():
        _card(key, *(item if isinstance(item, tuple) and len(item) == 2 else (item, "")))  # validate early
    out.meta = meta
    return out


def _described_hdu(table, plain):
    """The BINTABLE HDU of ``plain`` (``table`` with FITS-ready columns), with ``table``'s descriptions and cards."""
    from astropy.io import fits

    hdu = fits.table_to_hdu(plain)
    for i, name in enumerate(table.colnames, start=1):
        desc = getattr(table[name].info, "description", None) or describe_column(name)
        if desc:
            used = len(str(fits.Card(f"TTYPE{i}", name)).rstrip())
            hdu.header[f"TTYPE{i}"] = (name, desc[:80 - max(used, 30) - 3])  # the comment's room on the card
    for key, item in table.meta.items():
        value, comment = item if isinstance(item, tuple) and len(item) == 2 else (item, "")
        for card in _cards(str(key).upper(), value, comment):
            hdu.header.append(card)
    return hdu


def text_width(values) -> int:
    """The FITS width a text column needs for ``values`` (printable ASCII, see :func:`fits_text`); at least 1."""
    return max([1, *(len(fits_text(v)) for v in np.asarray(values).tolist())])


class CatalogueStream:
    """Write a FITS table of any length block by block, in bounded memory; the file :func:`write_table` writes.

    FITS states the row count and each text column's width in the header, before the rows, so both
    are given up front: ``template`` is the table with no rows (columns, units, descriptions and
    ``meta`` cards, e.g. :func:`candidate_table` of an empty score table), ``n_rows`` the total and
    ``widths`` the widest value of each text column (:func:`text_width`).  :meth:`write` takes
    blocks of rows (a mapping of column to array, in ``template``'s dtypes); :meth:`finish`
    checks the count and completes the hidden temporary without moving it (the caller commits it,
    see :func:`temporary_path`); :meth:`abort` removes it.
    """

    def __init__(self, template, path, *, n_rows: int, widths: dict[str, int]):
        self.path = Path(path)
        self.template = template
        self.n_rows = int(n_rows)
        self.widths = {name: max(1, int(widths.get(name, 1))) for name in template.colnames
                       if template[name].dtype.kind in "OU"}
        self.tmp_path = temporary_path(self.path)
        self.written = 0
        header = self._hdu(self._plain({name: np.asarray(template[name]) for name in template.colnames})).header
        header["NAXIS2"] = self.n_rows
        self._row_bytes = int(header["NAXIS1"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp_path, "wb")
        try:
            self._fh.write(fits_primary_bytes())
            self._fh.write(header.tostring().encode("ascii"))
        except BaseException:
            self.abort()
            raise

    def _plain(self, columns: dict[str, np.ndarray]):
        """A plain Table of the template's columns holding ``columns``, text at the fixed widths."""
        from astropy.table import Table

        plain = Table()
        for name in self.template.colnames:
            values = np.asarray(columns[name])
            if name in self.widths:
                text = [fits_text(v) for v in values.tolist()]
                if any(len(t) > self.widths[name] for t in text):
                    raise ValueError(f"catalogue {self.path}: column {name} holds a value wider than the "
                                     f"{self.widths[name]} characters given")
                values = np.array(text, dtype=f"U{self.widths[name]}")
            else:
                values = _fits_values(values)
            unit = getattr(self.template[name], "unit", None)
            plain[name] = values * unit if unit is not None and values.dtype.kind in "iuf" else values
        return plain

    def _hdu(self, plain):
        return _described_hdu(self.template, plain)

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Append a block of rows (every template column, equal lengths)."""
        import io

        from astropy.io import fits

        plain = self._plain(columns)
        n = len(plain)
        if not n:
            return
        if self.written + n > self.n_rows:
            raise ValueError(f"catalogue {self.path}: more than the {self.n_rows} rows announced")
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(plain)]).writeto(buffer)
        with fits.open(io.BytesIO(buffer.getvalue())) as hdul:
            hdu = hdul[1]
            if int(hdu.header["NAXIS1"]) != self._row_bytes:
                raise ValueError(f"catalogue {self.path}: a block's row layout differs from the header's")
            offset, size = hdu._data_offset, self._row_bytes * n
        self._fh.write(buffer.getvalue()[offset:offset + size])
        self.written += n

    def finish(self) -> Path:
        """Check the row count, pad the file to whole FITS blocks and close it; returns the temporary's path."""
        if self.written != self.n_rows:
            self.abort()
            raise ValueError(f"catalogue {self.path}: {self.written} rows written, {self.n_rows} announced")
        size = self._row_bytes * self.n_rows
        self._fh.write(b"\0" * (-size % 2880))
        self._fh.close()
        return self.tmp_path

    def abort(self) -> None:
        """Close and remove the temporary."""
        if not self._fh.closed:
            self._fh.close()
        self.tmp_path.unlink(missing_ok=True)


def fits_primary_bytes() -> bytes:
    """An empty primary HDU, as the first 2880 bytes of a FITS file."""
    from astropy.io import fits

    return fits.PrimaryHDU().header.tostring().encode("ascii")


def standard_provenance(*, models=(), store=None, command: str | None = None,
                        extra: dict[str, tuple[object, str]] | None = None) -> dict[str, tuple[object, str]]:
    """Provenance cards for :func:`write_candidates`.

    ``models`` is a sequence of ``(name, sha256)`` pairs (e.g. from ModelEntry):
    ``MODEL<i>``/``SHA<i>`` cards, i from 1; ``NMODELS``; ``STORE``; ``CMDLINE``.
    """
    cards: dict[str, tuple[object, str]] = {"NMODELS": (len(models), "models scored")}
    for i, (name, sha256) in enumerate(models, start=1):
        if i > 99:
            raise ValueError("at most 99 models fit the MODEL<i>/SHA<i> provenance keys")
        cards[f"MODEL{i}"] = (str(name), f"model {i} name")
        cards[f"SHA{i}"] = (str(sha256), f"SHA-256 of model {i}")
    if store is not None:
        cards["STORE"] = (str(store), "input survey store")
    if command is not None:
        cards["CMDLINE"] = (command, "command line")
    cards.update(extra or {})
    return cards


def read_catalog(path):
    """Read a candidate catalogue into a QTable; validates columns and units; provenance in ``meta``.

    ``meta`` maps each provenance key to ``(value, comment)``.
    """
    import astropy.units as u
    from astropy.io import fits
    from astropy.table import QTable

    path = Path(path)
    try:
        with fits.open(path) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise ValueError(f"{path}: no BINTABLE in HDU 1 (not a lensengine candidate catalogue)")
            header = hdul[1].header.copy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", u.UnitsWarning)
                table = QTable.read(hdul, hdu=1)
    except OSError as exc:
        raise ValueError(f"{path} is not a readable FITS file: {exc}") from exc
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in table.colnames]
    if missing:
        raise ValueError(f"{path}: catalogue lacks columns {missing} (has {', '.join(table.colnames)})")
    for name in ("RA", "DEC"):
        if getattr(table[name], "unit", None) != u.deg:
            raise ValueError(f"{path}: column {name} has unit {getattr(table[name], 'unit', None)}, expected deg")
    for name in table.colnames:  # FITS is big-endian: hand out native arrays
        if table[name].dtype.byteorder == ">":
            table[name] = table[name].astype(table[name].dtype.newbyteorder("="))
    for i, name in enumerate(table.colnames, start=1):
        comment = header.comments[f"TTYPE{i}"] if f"TTYPE{i}" in header else ""
        if comment:
            table[name].info.description = comment
    structural = re.compile(r"^(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|T[A-Z]+\d+|EXTNAME)$")
    table.meta = {card.keyword: (card.value, card.comment) for card in header.cards
                  if card.keyword and not structural.match(card.keyword) and card.keyword not in ("COMMENT", "HISTORY")}
    for text in header.get("COMMENT", []):  # a comment too long for its card follows it as "KEY: comment"
        key, sep, comment = str(text).partition(": ")
        if sep and key in table.meta and not table.meta[key][1]:
            table.meta[key] = (table.meta[key][0], comment)
    return table


def describe_file(path) -> str:
    """Text summary of a catalogue (FITS) or score table (Parquet): rows, columns, provenance."""
    path = Path(path)
    lines = []
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        table = read_scores(path)
        lines.append(f"score table {path}: {len(table)} rows, {len(table.colnames)} columns")
        provenance = {k: (v, "") for k, v in table.meta.items()}
    else:
        table = read_catalog(path)
        lines.append(f"candidate catalogue {path}: {len(table)} candidates, {len(table.colnames)} columns")
        provenance = table.meta
    for name in table.colnames:
        col = table[name]
        unit = f"[{col.unit}]" if getattr(col, "unit", None) else ""
        lines.append(f"  {name:20s} {str(col.dtype):8s} {unit:9s} {col.info.description or ''}")
    if provenance:
        lines.append("provenance:")
        lines += [f"  {k:10s} = {v!s:40s} {c}" for k, (v, c) in provenance.items()]
    return "\n".join(lines)
