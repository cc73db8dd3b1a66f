"""lensengine.catalogs: the survey store (zarr v3 cutouts), FITS ingestion and candidate catalogues.

See docs/store-format.md for the store layout, codecs, ingestion rules and catalogue formats.
"""

from lensengine.catalogs.catalog import (ScoreTableWriter, read_catalog, read_scores, score_column,
                                         standard_provenance, write_candidates)
from lensengine.catalogs.crossmatch import crossmatch_known
from lensengine.catalogs.flags import BAD_MASK, Flag, describe
from lensengine.catalogs.ingest import ingest_fits
from lensengine.catalogs.store import FORMAT_VERSION, ChunkReadError, CutoutBatch, SurveyStore
from lensengine.catalogs.validate import Problem, store_info, validate_store

__all__ = [
    "BAD_MASK", "Flag", "describe",
    "FORMAT_VERSION", "ChunkReadError", "CutoutBatch", "SurveyStore",
    "Problem", "store_info", "validate_store", "ingest_fits",
    "score_column", "ScoreTableWriter", "read_scores", "write_candidates", "standard_provenance", "read_catalog",
    "crossmatch_known",
]
