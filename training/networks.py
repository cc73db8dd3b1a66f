"""The seven CNNs of Wilde et al. (2022), one definition for both families.

``LensCNN(family, in_channels)`` builds the OU-66 or OU-200 architecture
exactly as SPEC §3: a sequential trunk whose indices match the published
state_dicts (``layer.N.weight``) and a ``fc_layer`` head.  The forward pass is
batch-safe and returns the two logits (index 0 = non-lens, 1 = lens); use
:func:`p_lens` or :class:`PLensModel` for P(lens) = softmax(logits)[:, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from lensengine.engine.specs import ModelSpec, get_spec

__all__ = ["LensCNN", "PLensModel", "build_model", "p_lens", "count_parameters"]

DROPOUT = 0.2

# Each block: (kernel, out_channels, pool after the block).  Every conv is
# followed by ReLU, an optional 2x2 max-pool, then dropout (SPEC §3).
_TRUNKS = {
    "OU-66": [(3, 50, True), (3, 50, False), (3, 50, False), (3, 50, False), (3, 40, True),
              (3, 40, False), (3, 40, False), (3, 40, False), (3, 30, True)],
    "OU-200": [(5, 50, True), (5, 40, True), (3, 30, True), (3, 20, True), (3, 20, False),
               (3, 20, False)],
}
# (flattened features, hidden units) of the fully connected head.
_HEADS = {"OU-66": (30 * 2 * 2, 500), "OU-200": (20 * 6 * 6, 350)}


def _trunk(family: str, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for kernel, out, pool in _TRUNKS[family]:
        layers += [nn.Conv2d(channels, out, kernel), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.Dropout(DROPOUT))
        channels = out
    return nn.Sequential(*layers)


class LensCNN(nn.Module):
    """One of the two architecture families, for ``in_channels`` input bands."""

    def __init__(self, family: str, in_channels: int):
        super().__init__()
        if family not in _TRUNKS:
            raise ValueError(f"unknown architecture family {family!r}; expected one of {sorted(_TRUNKS)}")
        self.family = family
        self.in_channels = in_channels
        self.layer = _trunk(family, in_channels)
        features, hidden = _HEADS[family]
        self.fc_layer = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) normal weights and zero biases for every conv and linear layer."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, 2) for a normalised batch of shape (N, C, S, S)."""
        return self.fc_layer(self.layer(x).flatten(1))


class PLensModel(nn.Module):
    """Wraps a :class:`LensCNN` so that the forward pass returns P(lens), shape (N,)."""

    def __init__(self, net: LensCNN):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return p_lens(self.net(x))


def p_lens(logits: torch.Tensor) -> torch.Tensor:
    """P(lens) = softmax over the class axis, lens column."""
    return torch.softmax(logits, dim=1)[:, 1]


def build_model(spec: ModelSpec | str) -> LensCNN:
    """Build the network for a registry entry (``"OU-66"`` or a :class:`ModelSpec`)."""
    if isinstance(spec, str):
        spec = get_spec(spec)
    return LensCNN(spec.family, spec.channels)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
