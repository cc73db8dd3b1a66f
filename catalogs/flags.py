"""Per-cutout quality flags, shared by the survey store, the engine and the catalogues.

A flag is a bit in an unsigned 32-bit integer.  Bits below 16 make a cutout
unusable for the models that read the affected band; bits from 16 up are
informational (the cutout is scored).  Band-specific problems are also kept per
band by the engine, so that a model that does not read a bad band still scores
the cutout.
"""

from __future__ import annotations

import enum

__all__ = ["Flag", "BAD_MASK", "describe"]


class Flag(enum.IntFlag):
    OK = 0
    NONFINITE = 1 << 0          # NaN or inf pixels in at least one band
    CONSTANT_BAND = 1 << 1      # a band has max == min (nothing to normalise)
    MISSING_BAND = 1 << 2       # a band the models need is absent and was not filled
    BAD_SHAPE = 1 << 3          # a band array has the wrong shape
    UNREADABLE = 1 << 4         # the chunk holding the cutout could not be read or decoded
    INCOMPLETE_WRITE = 1 << 5   # the cutout lies in a chunk whose write never completed
    # informational bits: the cutout is still scored
    BAND_DUPLICATED = 1 << 16   # a missing band was filled from the adjacent band (SPEC §8)
    EDGE_CLIPPED = 1 << 17      # the stamp runs off the mosaic edge (padded)
    OUTSIDE_TSNE_GRID = 1 << 18  # the OU-T-SNE embedding fell outside the fitted grid
    PARTIAL_SCORES = 1 << 19    # some models could not score the cutout (their band is bad)
    # --cascade: the cheap networks' scores kept the cutout below the gate, so the expensive networks and the
    # ensemble did not run; their columns are unknown (NaN), never filled in as if scored
    CASCADE_SKIPPED = 1 << 20
    # a model returned NaN or a value outside [0, 1] for the cutout: that model's score is withheld
    BAD_MODEL_OUTPUT = 1 << 6


#: Bits that stop a cutout from being scored by a model that reads the band.
BAD_MASK = 0xFFFF


def describe(value: int) -> str:
    """Human-readable names of the bits set in ``value`` (``"OK"`` when none)."""
    value = int(value)
    if value == 0:
        return "OK"
    names = [f.name for f in Flag if f.value and value & f.value]
    unknown = value & ~sum(f.value for f in Flag)
    if unknown:
        names.append(f"0x{unknown:x}")
    return "|".join(names)
