"""The model registry: name -> architecture family, ordered bands, stamp size.

This module is pure Python (no torch) so that the engine, the store tools and
the training code all read one definition of the seven networks' contracts
(SPEC §3).  Band names use the survey store's spelling: ``VIS``, ``Y``, ``J``,
``H``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The survey bands, in the order the store keeps NISP (Y, J, H) after VIS.
BANDS = ("VIS", "Y", "J", "H")
NISP_BANDS = ("Y", "J", "H")

#: Native cutout sizes (pixels) and pixel scales (arcsec) per band (SPEC §2).
NATIVE_STAMP = {"VIS": 200, "Y": 66, "J": 66, "H": 66}
PIXEL_SCALE = {"VIS": 0.1, "Y": 0.3, "J": 0.3, "H": 0.3}

#: The two architecture families and the stamp size each one takes.
FAMILY_STAMP = {"OU-66": 66, "OU-200": 200}


@dataclass(frozen=True)
class ModelSpec:
    """The input contract of one network.

    ``bands`` is the ordered list of input channels; each band is resampled
    from its native size to ``stamp`` (if needed) and min-max scaled to [0, 1]
    per cutout and band (SPEC §4).
    """

    name: str
    family: str  # "OU-66" or "OU-200"
    bands: tuple[str, ...]
    n_params: int  # parameter count of the published network

    @property
    def stamp(self) -> int:
        return FAMILY_STAMP[self.family]

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def pixel_scale(self) -> float:
        """Arcsec per input pixel (the 20 arcsec field over ``stamp`` pixels)."""
        return 0.3 if self.stamp == 66 else 0.1

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
