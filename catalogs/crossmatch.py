"""Cross-match candidates against a list of known lenses (e.g. lenscat's table).

The known list is FITS or CSV with RA/Dec (degrees, or sexagesimal strings)
and optionally a name column (``name``, ``NAME``, ``lens_name`` ...).  Each
candidate's nearest known lens within the radius fills ``KNOWN_LENS`` (its
name; empty when none) and ``KNOWN_SEP`` (arcsec; NaN when none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_known_lenses", "crossmatch_known"]

_RA_NAMES = ("ra", "ra_deg", "raj2000", "_raj2000", "right_ascension")
_DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "_dej2000", "declination")
_NAME_NAMES = ("name", "lens_name", "jname", "object", "id")


def _find(table, candidates, what, path, required=True):
    lower = {c.lower(): c for c in table.colnames}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise ValueError(f"{path}: no {what} column (tried {', '.join(candidates)}; columns: "
                         f"{', '.join(table.colnames)})")
    return None


def read_known_lenses(path):
    """(SkyCoord, names) of a known-lens list (FITS or CSV)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    path = Path(path)
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
    """Return a copy of ``catalog`` with ``KNOWN_LENS`` and ``KNOWN_SEP`` filled (match_to_catalog_sky)."""
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
    out.meta["KNOWNCAT"] = (Path(known_path).name, "known-lens list cross-matched")
    out.meta["KNOWNRAD"] = (float(radius_arcsec), "cross-match radius (arcsec)")
    out.meta["NKNOWN"] = (int(hit.sum()) if n and len(coords) else 0, "candidates matching a known lens")
    return out
