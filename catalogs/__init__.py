"""lensengine.catalogs: the survey store (zarr v3 cutouts), FITS ingestion and candidate catalogues.

See docs/store-format.md for the store layout and the ingestion rules.
"""

from lensengine.catalogs.flags import BAD_MASK, Flag, describe
from lensengine.catalogs.store import FORMAT_VERSION, ChunkReadError, CutoutBatch, SurveyStore

__all__ = ["BAD_MASK", "Flag", "describe", "FORMAT_VERSION", "ChunkReadError", "CutoutBatch", "SurveyStore"]
