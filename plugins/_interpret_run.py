"""Running the interpretability methods on cutouts and models, writing maps and figures.

:func:`explain_cutouts` is the entry point the engine calls for
``lensengine run ... --explain-top K``; :func:`explain_model` makes the
model-level images (CGI, GKI); :func:`kav_over_store` ranks a data set's
images per kernel.  Outputs go to ``out_dir/<MODEL_STEM>/``: a PNG per
cutout and method (``<object_id>_<method>.png``) and the raw maps beside it
(``.npy``, or ``.npz`` when a method has several arrays).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensengine.engine.preprocess import Preprocessor
from lensengine.engine.specs import ModelSpec, get_spec

log = logging.getLogger(__name__)

__all__ = ["METHODS", "PER_CUTOUT", "PER_MODEL", "DEFAULT_METHODS", "SLOW_METHODS", "QUICK_OCCLUSION",
           "ExplainOptions", "load_network", "find_cutouts", "explain_cutouts", "explain_model", "kav_over_store",
           "estimate_seconds"]

PER_CUTOUT = ("occlusion", "gradcam", "deepdream", "kav")
PER_MODEL = ("cgi", "gki")
METHODS = ("occlusion", "kav", "cgi", "deepdream", "gki", "gradcam")
#: What ``lensengine explain`` makes unless told otherwise: a few seconds per object and model on a laptop CPU.
DEFAULT_METHODS = ("occlusion", "gradcam", "kav")
#: Input optimisation (one forward and backward pass per update, thousands of updates): minutes per object or
#: model, so only on request, with an estimate printed first (:func:`estimate_seconds`).
SLOW_METHODS = ("deepdream", "cgi")
#: The quick occlusion grid (patch, stride) per family: 11 x 11 and 10 x 10 positions instead of the paper's
#: 66 x 66 and 50 x 50 (``grid="paper"``: :data:`~lensengine.plugins._interpret_methods.OCCLUSION_DEFAULTS`),
#: about 40 times fewer forward passes.
QUICK_OCCLUSION = {"OU-66": (6, 6), "OU-200": (20, 20)}


@dataclass
class ExplainOptions:
    """Settings of every method; defaults are the paper's (SPEC §9)."""

    patch: int | None = None          # occlusion square (default: the grid's, below)
    stride: int | None = None         # occlusion stride (default: the grid's)
    grid: str = "quick"               # occlusion grid: "quick" (QUICK_OCCLUSION) or "paper" (1 OU-66, 4 OU-200)
    score: str = "p"                  # occlusion score: "p" (ΔP(lens)) or "logit"
    batch_size: int = 256             # occluded copies per forward pass
    recipe: str = "paper"             # CGI / Deep Dream recipe: "paper" or "code"
    steps: int | None = None          # override the recipe's number of updates (CGI, Deep Dream, GKI)
    target: int = 1                   # class to maximise: 1 lens, 0 non-lens
    seed: int = 0
    kernels: list[tuple[int, int]] = field(default_factory=list)  # GKI (layer, kernel); default below
    top_k: int = 9                    # KAV: images per kernel
    threshold: float = 0.05           # Guided Grad-CAM display threshold


def load_network(model: str, models_dir=None, weights_dir=None):
    """The torch network and its spec: from an ONNX model dir (the ``.pt`` beside each ``.onnx``),
    the paper's published weights dir, or else the registered default models."""
    from lensengine.training.export import load_published, load_torch_model

    if weights_dir is not None:
        return load_published(weights_dir, model), get_spec(model)
    from lensengine.engine.registry import resolve_models

    entry = resolve_models(models_dir, [model])[0]
    if not entry.path.with_suffix(".pt").is_file():
        raise FileNotFoundError(f"{entry.path}: no torch weights ({entry.path.with_suffix('.pt').name}) beside "
                                "the ONNX file; the gradient methods need them (re-export, or pass --weights)")
    return load_torch_model(entry.path, entry.name), entry.as_spec()


def find_cutouts(store_path, object_ids) -> "CutoutBatch":  # noqa: F821
    """Read the cutouts with ``object_ids`` from a survey store (any tile), in the order asked."""
    from lensengine.catalogs.store import CutoutBatch, SurveyStore

    wanted = [int(i) for i in object_ids]
    store = SurveyStore.open(store_path)
    found: dict[int, CutoutBatch] = {}
    for tile in store.tiles:
        for start, stop in store.chunk_slices(tile):
            ids = store.read_index(tile, start, stop)["object_id"] if hasattr(store, "read_index") else None
            if ids is not None and not np.isin(ids, wanted).any():
                continue
            batch = store.read(tile, start, stop)
            for n in np.flatnonzero(np.isin(batch.object_id, wanted)):
                found.setdefault(int(batch.object_id[n]), batch.take([n]))
        if len(found) == len(set(wanted)):
            break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise KeyError(f"object IDs {missing} not found in {store_path}")
    return CutoutBatch.concatenate([found[i] for i in wanted])


def _prepare(spec: ModelSpec, bands_batch, object_ids):
    if hasattr(bands_batch, "bands"):
        ids = bands_batch.object_id if object_ids is None else object_ids
        bands = bands_batch.bands()
    else:
        bands = bands_batch
        n = next(len(a) for a in bands.values() if a is not None)
        ids = np.arange(n) if object_ids is None else object_ids
    prepared = Preprocessor([spec])(bands)
    return prepared.inputs[spec.name], prepared.usable[spec.name], [int(i) for i in ids]


def _spec_for(model_name: str, net, spec: ModelSpec | None) -> ModelSpec:
    if spec is not None:
        return spec
    spec = get_spec(model_name)
    if spec.family != net.family or spec.channels != net.in_channels:
        raise ValueError(f"network is {net.family} with {net.in_channels} channels, but {model_name} is "
                         f"{spec.family} with bands {list(spec.bands)}")
    return spec


def estimate_seconds(net, spec: ModelSpec, methods, n_objects: int, options: ExplainOptions | None = None
                     ) -> dict[str, float]:
    """Estimated seconds of each slow method (:data:`SLOW_METHODS`) asked for, on this machine, now.

    One input update is timed (a forward and a backward pass of one image) and multiplied by the
    recipe's updates: Deep Dream per object (``n_objects`` of them), a class-generated image once per
    model.  Methods that are not slow are left out (seconds each).
    """
    import torch

    from lensengine.plugins._interpret_methods import RECIPES, eval_mode

    opts = options or ExplainOptions()
    slow = [m for m in SLOW_METHODS if m in methods and (m == "cgi" or n_objects)]
    if not slow:
        return {}
    recipe = RECIPES[opts.recipe]
    img = torch.rand(1, net.in_channels, spec.stamp, spec.stamp, requires_grad=True)
    with eval_mode(net):
        net(img)[0, opts.target].backward()  # warm-up: the first pass pays for allocations
        start = time.perf_counter()
        net(img)[0, opts.target].backward()
        step = time.perf_counter() - start
    updates = {"deepdream": (opts.steps or recipe.dream_steps) * n_objects, "cgi": opts.steps or recipe.cgi_steps}
    return {m: updates[m] * step for m in slow}


class _ObjectProgress:
    """Progress over the objects of :func:`explain_cutouts`: a bar with the time left, on a terminal only.

    Each finished object is also logged (INFO) with how many are done, the time so far and the
    estimated time left, so a long run shows progress in a log file or a pipe too.
    """

    def __init__(self, enabled: bool, model_name: str, total: int):
        self.model_name, self.total, self.done, self.start = model_name, total, 0, time.perf_counter()
        self._bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self._bar = Progress(TextColumn(f"explaining with {model_name}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=console, transient=True)
                self._task = self._bar.add_task("", total=total)
                self._bar.start()

    def advance(self, oid: int) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        log.info("%s: object %d done (%d/%d, %.1f s so far, about %.0f s left)", self.model_name, oid, self.done,
                 self.total, elapsed, left)
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def explain_cutouts(model_name: str, net, bands_batch, methods, out_dir, *, object_ids=None,
                    spec: ModelSpec | None = None, options: ExplainOptions | None = None,
                    progress: bool = False) -> dict[int, dict[str, Path]]:
    """Interpretability maps for a batch of cutouts; returns ``{object_id: {method: PNG path}}``.

    ``bands_batch`` is a :class:`~lensengine.catalogs.store.CutoutBatch` or a
    raw band dict ``{band: (n, S, S)}`` (then ``object_ids`` names the rows;
    default 0..n-1).  ``methods`` is any of :data:`PER_CUTOUT` (others are
    ignored here: see :func:`explain_model`).  Raw maps are written beside each
    PNG with the same stem.  Cutouts with bad bands (flags) are skipped with a
    warning.  ``progress`` shows a bar with the time left on a terminal (each
    finished object is logged either way).
    """
    from lensengine.plugins import _interpret_methods as M

    opts = options or ExplainOptions()
    spec = _spec_for(model_name, net, spec)
    x_all, usable, ids = _prepare(spec, bands_batch, object_ids)
    out = Path(out_dir) / spec.file_stem
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Path]] = {}
    probs = M.lens_probability(net, x_all) if len(x_all) else np.zeros(0)
    bar = _ObjectProgress(progress, model_name, int(np.count_nonzero(usable)))
    try:
        for n, oid in enumerate(ids):
            if not usable[n]:
                log.warning("%s: cutout %d has bad or missing bands; not explained", model_name, oid)
                continue
            results[oid] = _explain_one(model_name, net, spec, x_all[n], probs[n], oid, methods, out, opts)
            bar.advance(oid)
    finally:
        bar.close()
    return results


def _explain_one(model_name: str, net, spec: ModelSpec, x, p_lens: float, oid: int, methods, out: Path,
                 opts: ExplainOptions) -> dict[str, Path]:
    """The maps of one normalised cutout ``x``: ``{method: PNG path}``."""
    from lensengine.plugins import _interpret_methods as M
    from lensengine.plugins import _interpret_plots as P

    log.info("%s: explaining object %d (%s)", model_name, oid, ", ".join(sorted(set(methods) & set(PER_CUTOUT))))
    title = f"{model_name}  object {oid}  P(lens) = {p_lens:.4f}"
    done: dict[str, Path] = {}
    stem = out / str(oid)
    if "occlusion" in methods:
        patch, stride = (M.OCCLUSION_DEFAULTS if opts.grid == "paper" else QUICK_OCCLUSION)[net.family]
        patch, stride = opts.patch or patch, opts.stride or stride
        grid = M.occlusion_map(net, x, patch=patch, stride=stride, batch_size=opts.batch_size, score=opts.score)
        pixel = M.expand_grid(grid, x.shape[-1], patch, stride)
        np.savez(f"{stem}_occlusion.npz", grid=grid, pixel_map=pixel, patch=patch, stride=stride,
                 score=opts.score, p_lens=p_lens)
        label = "ΔP(lens)" if opts.score == "p" else "Δ logit"
        done["occlusion"] = P.plot_occlusion(x, pixel, spec.bands, f"{stem}_occlusion.png", title=title,
                                             label=label)
    if "gradcam" in methods:
        res = M.guided_gradcam(net, x, target=opts.target)
        np.savez(f"{stem}_gradcam.npz", **res)
        done["gradcam"] = P.plot_gradcam(x, res, spec.bands, f"{stem}_gradcam.png", threshold=opts.threshold,
                                         title=title)
    if "deepdream" in methods:
        img, hist = M.deep_dream(net, x, target=opts.target, recipe=opts.recipe, steps=opts.steps)
        np.save(f"{stem}_deepdream.npy", img)
        done["deepdream"] = P.plot_generated(img, spec.bands, f"{stem}_deepdream.png", history=hist,
                                             title=f"{title}\nDeep Dream ({opts.recipe} recipe), "
                                                   f"target {'lens' if opts.target else 'non-lens'}")
    if "kav" in methods:
        kav = M.kernel_activations(net, x)
        np.savez(f"{stem}_kav.npz", **{f"layer_{k}": v[0] for k, v in kav.items()})
        done["kav"] = _plot_kav_profile(kav, f"{stem}_kav.png", title)
    return done


def _plot_kav_profile(kav: dict[int, np.ndarray], path, title: str) -> Path:
    from lensengine.plugins._interpret_plots import _panels, _plt, _save

    plt = _plt()
    fig, axes = _panels(plt, 1, size=5)
    ax = axes[0]
    for layer, values in kav.items():
        ax.plot(values[0], ".", label=f"layer {layer}")
    from matplotlib.ticker import AutoLocator

    ax.xaxis.set_major_locator(AutoLocator())
    ax.yaxis.set_major_locator(AutoLocator())
    ax.set_xlabel("kernel", fontsize=8)
    ax.set_ylabel("KAV (mean pre-ReLU activation)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _default_kernels(net) -> list[tuple[int, int]]:
    from lensengine.plugins._interpret_methods import conv_layers

    layers = sorted(conv_layers(net))
    return [(layers[0], 0), (layers[-1], 0)]


def explain_model(model_name: str, net, methods, out_dir, *, spec: ModelSpec | None = None,
                  options: ExplainOptions | None = None) -> dict[str, list[Path]]:
    """Model-level images: class-generated images (``cgi``) and generated kernel images (``gki``)."""
    from lensengine.plugins import _interpret_methods as M
    from lensengine.plugins import _interpret_plots as P

    opts = options or ExplainOptions()
    spec = _spec_for(model_name, net, spec)
    out = Path(out_dir) / spec.file_stem
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    if "cgi" in methods:
        target = "lens" if opts.target else "non-lens"
        img, hist = M.class_generated_image(net, opts.target, recipe=opts.recipe, steps=opts.steps, seed=opts.seed)
        np.save(out / f"cgi_{target}.npy", img)
        written["cgi"] = [P.plot_generated(img, spec.bands, out / f"cgi_{target}.png", history=hist,
                                           title=f"{model_name} class-generated image, target {target} "
                                                 f"({opts.recipe} recipe): P = {hist[-1]:.4f}")]
    if "gki" in methods:
        written["gki"] = []
        for layer, kernel in opts.kernels or _default_kernels(net):
            img, hist = M.generated_kernel_image(net, layer, kernel, steps=opts.steps or 50, seed=opts.seed)
            np.save(out / f"gki_layer{layer}_kernel{kernel}.npy", img)
            written["gki"].append(P.plot_generated(img, spec.bands, out / f"gki_layer{layer}_kernel{kernel}.png",
                                                   history=hist, history_label="mean activation",
                                                   title=f"{model_name} [layer {layer} kernel {kernel}]"))
    return written


def kav_over_store(model_name: str, net, store_path, out_dir, *, spec: ModelSpec | None = None, top_k: int = 9,
                   limit: int | None = None, max_kernels: int = 12) -> dict[str, Path]:
    """Rank a store's cutouts per kernel by KAV; write ``kav_top.csv`` and ``kav_top.png``."""
    from lensengine.catalogs.store import SurveyStore
    from lensengine.plugins import _interpret_methods as M
    from lensengine.plugins import _interpret_plots as P

    spec = _spec_for(model_name, net, spec)
    out = Path(out_dir) / spec.file_stem
    out.mkdir(parents=True, exist_ok=True)
    store = SurveyStore.open(store_path)
    top = M.TopKernelImages(k=top_k)
    seen = 0
    for tile in store.tiles:
        for index in range(len(store.chunk_slices(tile))):
            batch = store.read_chunk(tile, index)
            if limit is not None:
                batch = batch.take(np.arange(min(len(batch), limit - seen)))
            x, usable, ids = _prepare(spec, batch, None)
            keep = np.flatnonzero(usable)
            if len(keep):
                top.update(M.kernel_activations(net, x[keep]), np.asarray(ids)[keep])
            seen += len(batch)
            if limit is not None and seen >= limit:
                break
        if limit is not None and seen >= limit:
            break
    rows = top.rows()
    csv_path = out / "kav_top.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["layer", "kernel", "rank", "object_id", "kav"])
        writer.writeheader()
        writer.writerows(rows)
    shown = sorted({(r["layer"], r["kernel"]) for r in rows})[:max_kernels]
    wanted = sorted({r["object_id"] for r in rows if (r["layer"], r["kernel"]) in shown})
    batch = find_cutouts(store_path, wanted)
    x, _, ids = _prepare(spec, batch, None)
    images = {oid: x[n] for n, oid in enumerate(ids)}
    png = P.plot_kav_grid([r for r in rows if (r["layer"], r["kernel"]) in shown], images, spec.bands,
                          out / "kav_top.png", max_kernels=max_kernels,
                          title=f"{model_name}: top-{top_k} images per kernel by KAV ({seen} cutouts)")
    (out / "kav_top.json").write_text(json.dumps({"model": model_name, "store": str(store_path), "n": seen,
                                                   "top_k": top_k}))
    return {"csv": csv_path, "png": png}
