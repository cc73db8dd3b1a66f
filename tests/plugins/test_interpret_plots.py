"""The explain figures: maps over the image with colour bars, a note for a zero map, readable size, arcs shown."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the explain figures need matplotlib (pip install 'lensengine[training]')")

from lensengine.plugins import _interpret_plots as P  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    """Keep each figure's texts and colour-bar labels before ``_save`` closes it."""
    seen = []
    original = P._save

    def keep(fig, path):
        seen.append({"texts": [t.get_text() for ax in fig.axes for t in ax.texts],
                     "titles": [ax.get_title() for ax in fig.axes],
                     "colorbars": [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]})
        return original(fig, path)

    monkeypatch.setattr(P, "_save", keep)
    return seen


def _width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def _input(rng, bands, stamp=66):
    """A preprocessed-looking input in [0, 1]: a round galaxy with an arc on noise, every band."""
    yy, xx = np.mgrid[:stamp, :stamp] - (stamp - 1) / 2
    r, angle = np.hypot(xx, yy), np.degrees(np.arctan2(yy, xx))
    img = np.exp(-r / 2.0) + 0.05 * np.exp(-0.5 * ((r - 6) / 0.7) ** 2) * (np.abs(angle) < 60)
    x = np.stack([img + rng.normal(0, 0.01, img.shape) for _ in bands])
    return np.clip(x, 0, 1).astype(np.float32)


def test_gradcam_figure_overlays_with_colour_bars_and_is_readable(tmp_path, rng, captured):
    bands = ("VIS", "Y", "J", "H")
    x = _input(rng, bands)
    heat = np.zeros((66, 66))
    heat[28:38, 28:38] = 1.0
    path = P.plot_gradcam(x, {"gradcam": heat, "map": heat * 0.5}, bands, tmp_path / "g.png", title="t")
    fig = captured[-1]
    assert fig["colorbars"] == ["Grad-CAM (relative)", "guided Grad-CAM (relative)"]
    assert P.ZERO_NOTE not in fig["texts"]
    assert any("lens light" in t for t in fig["titles"]) and any("asinh" in t for t in fig["titles"])
    assert _width(path) >= 6 * 350  # six panels (RGB, VIS, VIS - lens light, 2 maps, masked), ~400 px each


def test_zero_maps_say_so(tmp_path, rng, captured):
    bands = ("VIS",)
    x = _input(rng, bands, stamp=200)
    P.plot_gradcam(x, {"gradcam": np.zeros((200, 200)), "map": np.zeros((200, 200))}, bands, tmp_path / "z.png")
    assert captured[-1]["texts"].count(P.ZERO_NOTE) == 3  # both maps and the empty masked input
    P.plot_occlusion(x, np.zeros((200, 200)), bands, tmp_path / "o.png")
    assert captured[-1]["texts"] == [P.ZERO_NOTE] and captured[-1]["colorbars"] == ["ΔP(lens)"]
    pixel = np.zeros((200, 200))
    pixel[90:110, 90:110] = -0.3
    P.plot_occlusion(x, pixel, bands, tmp_path / "o2.png")
    assert captured[-1]["texts"] == []


def test_lens_subtracted_panel_shows_the_arc_that_the_log_stretch_hides(rng):
    x = _input(rng, ("VIS",), stamp=200)[0]
    yy, xx = np.mgrid[:200, :200] - 99.5
    r, angle = np.hypot(xx, yy), np.degrees(np.arctan2(yy, xx))
    on = (np.abs(r - 6) < 0.6) & (np.abs(angle) < 40)
    off = (np.abs(r - 6) < 0.6) & (np.abs(np.abs(angle) - 180) < 40)
    log = np.log1p(1000 * x / x.max()) / np.log1p(1000)  # the old display: the arc is ~lost in the galaxy
    view = P.vis_lens_subtracted(x)
    assert view[on].mean() - view[off].mean() > 3 * (log[on].mean() - log[off].mean())
    assert view[on].mean() - view[off].mean() > 0.2
