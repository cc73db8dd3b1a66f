"""The model registry: name -> architecture family, ordered bands, stamp size.

This module is pure Python (no torch) so that the engine and the training
code read one definition of the seven networks' contracts (SPEC §3).  The
survey vocabulary (band names ``VIS``, ``Y``, ``J``, ``H``, native stamps,
pixel scales) lives one layer down in :mod:`lensengine.catalogs.vocabulary`
and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lensengine.catalogs.vocabulary import BANDS, FIELD_ARCSEC, NATIVE_STAMP, NISP_BANDS, PIXEL_SCALE

__all__ = ["BANDS", "NISP_BANDS", "NATIVE_STAMP", "PIXEL_SCALE", "FAMILY_STAMP", "ModelSpec", "MODEL_SPECS",
           "MODEL_NAMES", "get_spec"]

#: The two architecture families and the stamp size each one takes.
FAMILY_STAMP = {"OU-66": 66, "OU-200": 200}


@dataclass(frozen=True)
class ModelSpec:
    """The input contract of one network.

    ``bands`` is the ordered list of input channels; each band is resampled
    from its native size to ``stamp`` (if needed) and min-max scaled to [0, 1]
    per cutout and band (SPEC §4).  ``stamp`` defaults to the family's size;
    a model with its own stamp (a third-party network) states it, and then
    ``family`` is only a label.
    """

    name: str
    family: str  # "OU-66" or "OU-200" for the paper's networks; free text otherwise
    bands: tuple[str, ...]
    n_params: int  # parameter count of the published network (0 when unknown)
    stamp: int = 0  # input side in pixels; 0 takes the family's (FAMILY_STAMP)

    def __post_init__(self) -> None:
        if not self.stamp:
            if self.family not in FAMILY_STAMP:
                raise ValueError(f"model {self.name}: family {self.family!r} has no known stamp size "
                                 f"(known: {FAMILY_STAMP}); give the stamp explicitly")
            object.__setattr__(self, "stamp", FAMILY_STAMP[self.family])

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def pixel_scale(self) -> float:
        """Arcsec per input pixel: the survey's own scale at 66/200 px, else the 20 arcsec field over ``stamp``."""
        return {66: 0.3, 200: 0.1}.get(self.stamp, FIELD_ARCSEC / self.stamp)

    @property
    def file_stem(self) -> str:
        """File-name form of the model name, e.g. ``OU_JYH``."""
        return self.name.replace("-", "_")


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("OU-J", "OU-66", ("J",), 201_842),
        ModelSpec("OU-Y", "OU-66", ("Y",), 201_842),
        ModelSpec("OU-H", "OU-66", ("H",), 201_842),
        ModelSpec("OU-JYH", "OU-66", ("J", "Y", "H"), 202_742),
        ModelSpec("OU-66", "OU-66", ("J", "Y", "H", "VIS"), 203_192),
        ModelSpec("OU-VIS", "OU-200", ("VIS",), 327_882),
        ModelSpec("OU-200", "OU-200", ("J", "Y", "H", "VIS"), 331_632),
    )
}

#: Model names in the paper's table order.
MODEL_NAMES = tuple(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a built-in network, with a clear error for unknown names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_SPECS)}") from None
