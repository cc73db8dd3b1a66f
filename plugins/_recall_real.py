"""Known compound lenses on real imaging (the paper's Table 7 procedure).

A single-band image (e.g. the HST image of SDSS J0946+1006 in
``../shared/real/hst_sdssj0946``) is ingested with the store tools
(:func:`lensengine.catalogs.ingest.ingest_fits`): cut to a 20" x 20" stamp on
the image centre (a stamp reaching beyond the image is filled with a sky-like
level and flagged ``EDGE_CLIPPED``), resampled flux-conservingly to 0.1" (VIS)
and 0.3" (NISP), the missing bands filled by duplicating the nearest band
(paper Table 2, flagged ``BAND_DUPLICATED``), then scored like any store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lensengine.plugins._recall_tables import PAPER_TABLE7

log = logging.getLogger(__name__)

__all__ = ["known_lens_info", "ingest_known_lens"]


def known_lens_info(fits_path) -> dict:
    """Name and pixel scale of a known-lens image from an ``info.json`` beside it (if any)."""
    fits_path = Path(fits_path)
    info_path = fits_path.parent / "info.json"
    info = {}
    if info_path.is_file():
        text = info_path.read_text().replace("NaN", "null")
        info = json.loads(text)
    raw = str(info.get("data_name") or fits_path.parent.name)
    name = next((k for k in PAPER_TABLE7 if raw.replace(" ", "") in k.replace(" ", "")), raw)
    return {"name": name, "pixel_scale": info.get("pixel_scale")}


def ingest_known_lens(fits_path, store_path, *, band: str = "VIS", pixel_scale: float | None = None,
                      hdu: str = "0") -> tuple[Path, str]:
    """Ingest one single-band FITS image of a known lens into a new store; returns ``(store, name)``."""
    from lensengine.catalogs.ingest import ingest_fits

    info = known_lens_info(fits_path)
    scale = pixel_scale or info["pixel_scale"]
    if not scale:
        raise ValueError(f"{fits_path}: no pixel scale (no info.json with 'pixel_scale'); pass --pixel-scale")
    ingest_fits([Path(fits_path)], store_path, layout="cutouts", band_map={band: hdu},
                pixel_scales={band: float(scale)}, survey="known-lenses", overwrite=True, progress=False,
                command="lensengine recall-test --fits")
    return Path(store_path), info["name"]
