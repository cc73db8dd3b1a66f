"""Interpretability methods on the torch networks (SPEC §9, paper §5).

Every function takes a :class:`lensengine.training.networks.LensCNN` and
normalised input tensors (the :class:`~lensengine.engine.preprocess.Preprocessor`
output, shape (C, S, S) or (N, C, S, S)) and returns NumPy arrays, so the
methods are testable without a survey store.  Networks are put in eval mode
(dropout off) for the duration of each call and restored afterwards; weights
are never changed.

- :func:`occlusion_map`: change in P(lens) when a zero-valued square covers all
  bands, batched (one pass over chunks of occluded copies).
- :func:`kernel_activations` / :class:`TopKernelImages`: kernel activation
  values (KAV, the mean pre-ReLU feature map of each kernel) and, over a data
  set, the images that activate each kernel most.
- :func:`class_generated_image`, :func:`deep_dream`: maximise one class by
  gradient steps on the input, from noise (CGI) or a real cutout (Deep Dream).
- :func:`generated_kernel_image`: maximise one kernel's mean activation (GKI).
- :func:`guided_gradcam`: Grad-CAM on the last conv block times guided
  back-propagation, and the paper's display mask (map >= 0.05).
"""

from __future__ import annotations

import contextlib
import heapq
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OCCLUSION_DEFAULTS",
    "GRADCAM_LAYER",
    "RECIPES",
    "Recipe",
    "eval_mode",
    "lens_probability",
    "occlusion_map",
    "expand_grid",
    "conv_layers",
    "kernel_activations",
    "TopKernelImages",
    "class_generated_image",
    "deep_dream",
    "generated_kernel_image",
    "guided_gradcam",
    "gradcam_display_mask",
    "mass_fraction",
]

#: (patch, stride) in input pixels per architecture family (paper §5.1).
OCCLUSION_DEFAULTS = {"OU-66": (1, 1), "OU-200": (4, 4)}
#: Trunk index whose output (the last conv's ReLU) Grad-CAM uses (paper §5.6).
GRADCAM_LAYER = {"OU-66": 27, "OU-200": 20}


@dataclass(frozen=True)
class Recipe:
    """Input-optimisation settings for class-generated images and Deep Dream.

    ``objective``: ``"log_p"`` maximises log P(target) (the paper maximised its
    network's softmax output; the log has the same optimum and usable gradients
    from noise), ``"logit"`` maximises the raw target logit (published code).
    ``rescale``: min-max re-scale the image to [0, 1] after each step before
    clipping (published code); otherwise only clip to [0, 1], the domain of the
    normalised inputs.
    """

    name: str
    cgi_lr: float
    cgi_steps: int
    dream_lr: float
    dream_steps: int
    objective: str
    rescale: bool


RECIPES = {
    # paper §5.3-5.4: lr 0.1 for 5000 updates (CGI), lr 0.001 for 1000 (Deep Dream)
    "paper": Recipe("paper", 0.1, 5000, 0.001, 1000, "log_p", False),
    # published code: SGD lr 0.1, 99 updates on the raw logit, re-scale and clip each step
    "code": Recipe("code", 0.1, 99, 0.1, 99, "logit", True),
}


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """Dropout off and parameters frozen for the duration; restores both afterwards."""
    was_training = net.training
    flags = [p.requires_grad for p in net.parameters()]
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)
        net.train(was_training)


def _as_batch(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected an input of shape (C, S, S) or (N, C, S, S), got {tuple(t.shape)}")
    return t


def _check_input(net, x: torch.Tensor) -> None:
    if x.shape[1] != net.in_channels:
        raise ValueError(f"input has {x.shape[1]} channels but the {net.family} network expects {net.in_channels}")


def lens_probability(net: nn.Module, x, batch_size: int = 256) -> np.ndarray:
    """P(lens) for a normalised batch (N, C, S, S), in eval mode, without gradients."""
    x = _as_batch(x)
    out = []
    with eval_mode(net), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(torch.softmax(net(x[i:i + batch_size]), dim=1)[:, 1])
    return torch.cat(out).numpy()


def _score(logits: torch.Tensor, score: str) -> torch.Tensor:
    if score == "p":
        return torch.softmax(logits, dim=1)[:, 1]
    if score == "logit":
        return logits[:, 1] - logits[:, 0]
    raise ValueError(f"unknown occlusion score {score!r}; expected 'p' or 'logit'")


def occlusion_map(net: nn.Module, x, *, patch: int | None = None, stride: int | None = None,
                  batch_size: int = 256, score: str = "p", fill: float = 0.0) -> np.ndarray:
    """Change in the lens score when a ``patch`` x ``patch`` square of ``fill`` covers all bands.

    Returns the grid map (ny, nx) of ``score(occluded) - score(original)`` with
    the square's top-left corner at multiples of ``stride``: negative (blue in
    the figures) where occluding removes lens evidence.  ``score`` is ``"p"``
    (P(lens), the paper's choice) or ``"logit"`` (lens minus non-lens logit,
    informative where P(lens) is saturated at 0 or 1).  All occluded copies
    are scored in chunks of ``batch_size`` under ``torch.no_grad``.
    Defaults: :data:`OCCLUSION_DEFAULTS` for the network's family.
    """
    d_patch, d_stride = OCCLUSION_DEFAULTS[net.family]
    patch = patch or d_patch
    stride = stride or d_stride
    x = _as_batch(x)
    if len(x) != 1:
        raise ValueError(f"occlusion_map takes one cutout, got a batch of {len(x)}")
    _check_input(net, x)
    size = x.shape[-1]
    starts = list(range(0, size - patch + 1, stride))
    grid = [(i, j) for i in starts for j in starts]
    values = []
    with eval_mode(net), torch.no_grad():
        base = _score(net(x), score)
        cl_net = net.to(memory_format=torch.channels_last)
        for k in range(0, len(grid), batch_size):
            cells = grid[k:k + batch_size]
            copies = x.repeat(len(cells), 1, 1, 1)
            for n, (i, j) in enumerate(cells):
                copies[n, :, i:i + patch, j:j + patch] = fill
            values.append(_score(cl_net(copies.contiguous(memory_format=torch.channels_last)), score) - base)
        net.to(memory_format=torch.contiguous_format)
    return torch.cat(values).reshape(len(starts), len(starts)).numpy()


def expand_grid(grid: np.ndarray, size: int, patch: int, stride: int) -> np.ndarray:
    """Spread a grid map back to input pixels: each pixel takes the mean of the squares covering it."""
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for a in range(grid.shape[0]):
        for b in range(grid.shape[1]):
            total[a * stride:a * stride + patch, b * stride:b * stride + patch] += grid[a, b]
            count[a * stride:a * stride + patch, b * stride:b * stride + patch] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


# --- kernel activation values -------------------------------------------------

def conv_layers(net: nn.Module) -> dict[int, nn.Conv2d]:
    """The trunk's conv layers by their sequential index (the paper's "layer" numbers)."""
    return {i: m for i, m in enumerate(net.layer) if isinstance(m, nn.Conv2d)}


def kernel_activations(net: nn.Module, x, layers=None, batch_size: int = 128) -> dict[int, np.ndarray]:
    """KAV: the mean pre-ReLU feature map of every kernel, ``{layer index: (N, kernels)}``."""
    convs = conv_layers(net)
    layers = sorted(convs) if layers is None else list(layers)
    unknown = [i for i in layers if i not in convs]
    if unknown:
        raise ValueError(f"trunk indices {unknown} are not conv layers; conv layers: {sorted(convs)}")
    x = _as_batch(x)
    _check_input(net, x)
    found: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    handles = [convs[i].register_forward_hook(lambda m, a, out, i=i: found[i].append(out.mean(dim=(2, 3))))
               for i in layers]
    try:
        with eval_mode(net), torch.no_grad():
            for k in range(0, len(x), batch_size):
                # the trunk stops after the deepest requested layer
                h = x[k:k + batch_size]
                for idx, module in enumerate(net.layer):
                    if idx > max(layers):
                        break
                    h = module(h)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v).numpy() for i, v in found.items()}


@dataclass
class TopKernelImages:
    """Streaming top-k: for each (layer, kernel), the k images with the highest KAV."""

    k: int = 9
    heaps: dict = field(default_factory=dict)  # (layer, kernel) -> heap of (kav, object_id)

    def update(self, kav: dict[int, np.ndarray], object_ids) -> None:
        ids = np.asarray(object_ids)
        for layer, values in kav.items():
            for kernel in range(values.shape[1]):
                heap = self.heaps.setdefault((layer, kernel), [])
                col = values[:, kernel]
                for n in np.argsort(col)[::-1][: self.k]:
                    item = (float(col[n]), int(ids[n]))
                    if len(heap) < self.k:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)

    def rows(self) -> list[dict]:
        """Table rows ``layer, kernel, rank (1 = highest), object_id, kav``."""
        out = []
        for (layer, kernel), heap in sorted(self.heaps.items()):
            for rank, (value, oid) in enumerate(sorted(heap, reverse=True), start=1):
                out.append({"layer": layer, "kernel": kernel, "rank": rank, "object_id": oid, "kav": value})
        return out


# --- input optimisation: CGI, Deep Dream, GKI ----------------------------------

def _objective(logits: torch.Tensor, target: int, objective: str) -> torch.Tensor:
    if objective == "logit":
        return logits[:, target].sum()
    if objective == "log_p":
        return torch.log_softmax(logits, dim=1)[:, target].sum()
    raise ValueError(f"unknown objective {objective!r}; expected 'logit' or 'log_p'")


def _constrain(img: torch.Tensor, rescale: bool) -> None:
    with torch.no_grad():
        if rescale:
            lo = img.amin(dim=(2, 3), keepdim=True)
            hi = img.amax(dim=(2, 3), keepdim=True)
            img.sub_(lo).div_(torch.where(hi > lo, hi - lo, torch.ones_like(hi)))
        img.clamp_(0.0, 1.0)


def _optimise_input(net, start: torch.Tensor, target: int, lr: float, steps: int, objective: str,
                    rescale: bool, stop_at: float | None) -> tuple[np.ndarray, list[float]]:
    img = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([img], lr=lr)
    history = []
    with eval_mode(net):
        for _ in range(steps):
            opt.zero_grad()
            logits = net(img)
            history.append(float(torch.softmax(logits.detach(), 1)[0, target]))
            if stop_at is not None and history[-1] >= stop_at:
                break
            (-_objective(logits, target, objective)).backward()
            opt.step()
            _constrain(img, rescale)
        with torch.no_grad():
            history.append(float(torch.softmax(net(img), 1)[0, target]))
    return img.detach()[0].numpy(), history


def class_generated_image(net: nn.Module, target: int = 1, *, recipe: str = "paper", steps: int | None = None,
                          lr: float | None = None, seed: int = 0, stop_at: float | None = None
                          ) -> tuple[np.ndarray, list[float]]:
    """Class-generated image: maximise class ``target`` (1 = lens) from uniform noise on [0, 1].

    The same noise fills every band (paper §5.3); for the OU-200 family it is
    drawn at 66 x 66 and up-sampled to 200 x 200.  Returns the image (C, S, S)
    and the P(target) history (before each update, then the final value).
    ``stop_at`` ends early once P(target) reaches it.
    """
    r = RECIPES[recipe]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, 66, 66, generator=gen)
    size = 200 if net.family == "OU-200" else 66
    if size != 66:
        noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    start = noise.repeat(1, net.in_channels, 1, 1)
    return _optimise_input(net, start, target, lr or r.cgi_lr, steps or r.cgi_steps, r.objective, r.rescale, stop_at)


def deep_dream(net: nn.Module, x, target: int = 1, *, recipe: str = "paper", steps: int | None = None,
               lr: float | None = None, stop_at: float | None = None) -> tuple[np.ndarray, list[float]]:
    """Deep Dream: as :func:`class_generated_image` but starting from a real normalised cutout."""
    r = RECIPES[recipe]
    x = _as_batch(x)[:1]
    _check_input(net, x)
    return _optimise_input(net, x, target, lr or r.dream_lr, steps or r.dream_steps, r.objective, r.rescale, stop_at)


def generated_kernel_image(net: nn.Module, layer: int, kernel: int, *, steps: int = 50, lr: float = 0.1,
                           weight_decay: float = 1e-6, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """GKI: maximise one kernel's mean (pre-ReLU) activation from uniform noise (Adam, published code).

    Returns the image (C, S, S) clipped to [0, 1] and the activation history.
    """
    convs = conv_layers(net)
    if layer not in convs or not 0 <= kernel < convs[layer].out_channels:
        raise ValueError(f"no kernel {kernel} in trunk layer {layer}; conv layers: "
                         f"{ {i: c.out_channels for i, c in convs.items()} }")
    size = 200 if net.family == "OU-200" else 66
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(1, net.in_channels, size, size, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([img], lr=lr, weight_decay=weight_decay)
    history = []
    with eval_mode(net):
        for _ in range(steps):
            opt.zero_grad()
            h = img
            for idx, module in enumerate(net.layer):
                h = module(h)
                if idx == layer:
                    break
            act = h[0, kernel].mean()
            history.append(float(act.detach()))
            (-act).backward()
            opt.step()
    return img.detach()[0].clamp(0, 1).numpy(), history


# --- Guided Grad-CAM -------------------------------------------------------------

def guided_gradcam(net: nn.Module, x, target: int = 1, layer: int | None = None) -> dict[str, np.ndarray]:
    """Guided Grad-CAM for one normalised cutout (C, S, S).

    Grad-CAM: the feature maps of trunk index ``layer`` (default
    :data:`GRADCAM_LAYER`: the last conv block's ReLU) weighted by their
    spatially averaged gradients of the target logit, ReLU'd, normalised to
    [0, 1] and bilinearly up-sampled to the input size.  Guided
    back-propagation: the gradient of the target logit w.r.t. the input with
    negative gradients clamped to zero at every trunk ReLU.  Returns
    ``gradcam`` (S, S), ``guided`` (C, S, S), ``guided_gradcam`` (C, S, S) and
    ``map`` (S, S): |guided Grad-CAM| summed over bands, scaled by its 99th
    percentile and clipped to [0, 1] (the display the paper thresholds at 0.05).
    """
    layer = GRADCAM_LAYER[net.family] if layer is None else layer
    x = _as_batch(x)[:1]
    _check_input(net, x)
    size = x.shape[-1]
    with eval_mode(net):
        # Grad-CAM
        store = {}

        def keep(_m, _a, out):
            out.retain_grad()
            store["act"] = out

        handle = net.layer[layer].register_forward_hook(keep)
        try:
            net(x.clone().requires_grad_(True))[0, target].backward()
        finally:
            handle.remove()
        act, grad = store["act"].detach()[0], store["act"].grad[0]
        cam = torch.relu((grad.mean(dim=(1, 2))[:, None, None] * act).sum(0))
        cam = cam / cam.max() if float(cam.max()) > 0 else cam
        cam = F.interpolate(cam[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        # guided back-propagation
        relus = [m for m in net.layer if isinstance(m, nn.ReLU)]
        hooks = [m.register_full_backward_hook(lambda _m, gin, _gout: (gin[0].clamp(min=0),)) for m in relus]
        try:
            inp = x.clone().requires_grad_(True)
            net(inp)[0, target].backward()
        finally:
            for h in hooks:
                h.remove()
        guided = inp.grad[0]
    ggc = (guided * cam[None]).numpy()
    gray = np.abs(ggc).sum(0)
    hi, lo = np.percentile(gray, 99), gray.min()
    gray = np.clip((gray - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(gray)
    return {"gradcam": cam.numpy(), "guided": guided.numpy(), "guided_gradcam": ggc, "map": gray}


def gradcam_display_mask(gg_map: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The paper's Fig. 17 display: the input pixels where the Guided Grad-CAM map >= ``threshold``."""
    return gg_map >= threshold


def mass_fraction(values: np.ndarray, mask: np.ndarray) -> float:
    """Share of a map's total (non-negative) mass that falls inside ``mask``."""
    v = np.clip(np.asarray(values, dtype=float), 0, None)
    total = v.sum()
    return float(v[mask].sum() / total) if total > 0 else 0.0
