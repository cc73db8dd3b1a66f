"""The survey vocabulary every layer shares: band names, native stamp sizes, pixel scales.

It lives at the bottom, beside the store format, because the store, the
ingestion tools, the engine and training all speak it; nothing here imports
anything of lensengine.  The model registry (:mod:`lensengine.engine.specs`)
re-exports these names for the code that reads them from there.
"""

from __future__ import annotations

__all__ = ["BANDS", "NISP_BANDS", "NATIVE_STAMP", "PIXEL_SCALE", "FIELD_ARCSEC"]

#: The survey bands, in the order the store keeps NISP (Y, J, H) after VIS.
BANDS = ("VIS", "Y", "J", "H")
NISP_BANDS = ("Y", "J", "H")

#: Native cutout sizes (pixels) and pixel scales (arcsec) per band (SPEC §2).
NATIVE_STAMP = {"VIS": 200, "Y": 66, "J": 66, "H": 66}
PIXEL_SCALE = {"VIS": 0.1, "Y": 0.3, "J": 0.3, "H": 0.3}

#: Side of the sky field every cutout covers (arcsec): 200 x 0.1" = 66 x 0.3" (rounded).
FIELD_ARCSEC = 20.0
