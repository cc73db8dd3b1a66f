"""Cross-match candidates against a list of known lenses (e.g. lenscat's table).

The known list is FITS or CSV with RA/Dec (degrees, or sexagesimal strings)
and optionally a name column (``name``, ``NAME``, ``lens_name`` ...); a unit
in brackets after a column name (``RA [deg]``) is ignored.  The word
``lenscat`` names the lenscat catalogue of known strong lenses (MIT), read
from the CSV file its wheel ships: nothing is downloaded, and the lenscat
module itself (which pulls in ligo.skymap) is never imported.  Each
candidate's nearest known lens within the radius fills ``KNOWN_LENS`` (its
name; empty when none) and ``KNOWN_SEP`` (arcsec; NaN when none).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["read_known_lenses", "crossmatch_known", "lenscat_file", "LENSCAT"]

#: the ``known`` argument that selects the lenscat catalogue instead of a file
LENSCAT = "lenscat"

_RA_NAMES = ("ra", "ra_deg", "raj2000", "_raj2000", "right_ascension")
_DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "_dej2000", "declination")
_NAME_NAMES = ("name", "lens_name", "jname", "object", "id")


def lenscat_file() -> tuple[Path, str]:
    """(path, version) of the catalogue CSV inside the installed lenscat wheel.

    Found through the package metadata, so lenscat's own module (slow to import, heavy dependencies) is not
    imported; a missing package or file is a ValueError saying how to install it.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution("lenscat")
    except metadata.PackageNotFoundError:
        raise ValueError("--known lenscat needs the lenscat package (pip install lenscat; its catalogue of "
                         "known lenses ships inside the wheel, so it works offline)") from None
    path = Path(dist.locate_file("lenscat/data/catalog.csv"))
    if not path.is_file():
        raise ValueError(f"lenscat {dist.version} is installed but its catalogue {path} is missing")
    return path, dist.version


def _bare(name: str) -> str:
    """A column name without a trailing unit in brackets, lower case: ``"RA [deg]"`` -> ``"ra"``."""
    return re.sub(r"\s*\[[^\]]*\]\s*$", "", name).strip().lower()


def _find(table, candidates, what, path, required=True):
    lower = {_bare(c): c for c in table.colnames}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise ValueError(f"{path}: no {what} column (tried {', '.join(candidates)}; columns: "
                         f"{', '.join(table.colnames)})")
    return None


def read_known_lenses(path):
    """(SkyCoord, names) of a known-lens list (FITS or CSV, or ``"lenscat"``)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    path = lenscat_file()[0] if str(path) == LENSCAT else Path(path)
    try:
        table = Table.read(path, format="csv" if path.suffix.lower() in (".csv", ".txt") else None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the known-lens list: {exc}") from exc
    ra_col = _find(table, _RA_NAMES, "RA", path)
    dec_col = _find(table, _DEC_NAMES, "Dec", path)
    name_col = _find(table, _NAME_NAMES, "name", path, required=False)
    ra, dec = table[ra_col], table[dec_col]
    if ra.dtype.kind in "US":
        strings = [str(v) for v in ra]
        unit = u.hourangle if any(":" in s or "h" in s or " " in s.strip() for s in strings) else u.deg
        coords = SkyCoord(strings, [str(v) for v in dec], unit=(unit, u.deg), frame="icrs")
    else:
        coords = SkyCoord(np.asarray(ra, float), np.asarray(dec, float), unit="deg", frame="icrs")
    names = (np.array([str(v) for v in table[name_col]], dtype=str) if name_col
             else np.array([f"known-{i}" for i in range(len(table))], dtype=str))
    return coords, names


def crossmatch_known(catalog, known_path, radius_arcsec: float = 2.0):
    """Return a copy of ``catalog`` with ``KNOWN_LENS`` and ``KNOWN_SEP`` filled (match_to_catalog_sky).

    ``known_path`` is a FITS/CSV list or ``"lenscat"``; the ``KNOWNCAT`` card names it (with lenscat's
    version), ``KNOWNRAD`` gives the radius and ``NKNOWN`` the number of candidates matched.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    coords, names = read_known_lenses(known_path)
    out = catalog.copy()
    n = len(out)
    matched = np.full(n, "", dtype=object)
    sep_arcsec = np.full(n, np.nan)
    if n and len(coords):
        ra = np.asarray(getattr(out["RA"], "value", out["RA"]), dtype=float)
        dec = np.asarray(getattr(out["DEC"], "value", out["DEC"]), dtype=float)
        cand = SkyCoord(ra, dec, unit="deg", frame="icrs")
        idx, sep, _ = cand.match_to_catalog_sky(coords)
        hit = sep.to_value(u.arcsec) <= radius_arcsec
        matched[hit] = names[idx[hit]]
        sep_arcsec[hit] = sep.to_value(u.arcsec)[hit]
    width = max([1] + [len(s) for s in matched])
    out["KNOWN_LENS"] = np.array(matched, dtype=f"U{width}")
    out["KNOWN_LENS"].info.description = "matching known lens (empty: none)"
    out["KNOWN_SEP"] = sep_arcsec * u.arcsec
    out["KNOWN_SEP"].info.description = "separation to the known lens"
    out.meta = dict(catalog.meta)
    source = f"lenscat {lenscat_file()[1]}" if str(known_path) == LENSCAT else Path(known_path).name
    out.meta["KNOWNCAT"] = (source, "known-lens list cross-matched")
    out.meta["KNOWNRAD"] = (float(radius_arcsec), "cross-match radius (arcsec)")
    out.meta["NKNOWN"] = (int(hit.sum()) if n and len(coords) else 0, "candidates matching a known lens")
    return out
