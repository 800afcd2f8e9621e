"""Networks split into a deterministic ``features`` backbone and a stochastic ``head``.

Keeping every dropout layer in the head lets MC-dropout scoring run the backbone once per item and draw the S
samples through the head only (``DESIGN.md``, "Fast scoring"): the same predictive distribution as S full passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class SplitNet(nn.Module):
    """``head(features(x))``; any user module with these two children plugs into every model family."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(in_features: int, n_classes: int, *, hidden: int = 128, depth: int = 2, dropout: float = 0.5) -> SplitNet:
    """MLP for vectors with dropout before every weight layer but the first (Gal & Ghahramani 2016).

    ``features`` = Linear–ReLU (deterministic, run once per item); ``head`` = (``depth`` − 1) × (Dropout–Linear–
    ReLU), then Dropout–Linear. Dropping every hidden layer, not only the last, is what lets MC dropout's samples
    disagree where the data say nothing: with a head-only dropout, top-k BALD on MNIST's pool embedding fell below
    random sampling (``benchmarks/results/al_mnist.json``). ``depth`` ≥ 1.
    """
    if depth < 1:
        raise ValueError(f"an MLP needs at least one hidden layer, got depth={depth}")
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU()]
    features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
    return SplitNet(features, nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(hidden, n_classes)))


def gal_cnn(
    in_channels: int,
    image_size: tuple[int, int],
    n_classes: int,
    *,
    hidden: int = 128,
    dropout: float = 0.5,
    backbone_dropout: float = 0.0,
) -> SplitNet:
    """The small CNN of Gal, Islam & Ghahramani (2017): conv(32, 4×4)–ReLU–conv(32, 4×4)–ReLU–maxpool(2)–
    dense(128)–ReLU | dropout–dense(C).

    The paper also drops 25% after pooling; that dropout sits inside the backbone and forces S full passes per
    sample, so it is off by default (``backbone_dropout=0.25`` restores it; sampling then uses full passes).
    """
    height, width = image_size
    conv_out = ((height - 6) // 2) * ((width - 6) // 2) * 32
    features: list[nn.Module] = [
        nn.Conv2d(in_channels, 32, 4),
        nn.ReLU(),
        nn.Conv2d(32, 32, 4),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]
    if backbone_dropout > 0:
        features.append(nn.Dropout(backbone_dropout))
    features += [nn.Flatten(), nn.Linear(conv_out, hidden), nn.ReLU()]
    return SplitNet(nn.Sequential(*features), nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes)))


def build_network(
    feature_shape: Sequence[int], n_classes: int, *, hidden: int = 128, depth: int = 2, dropout: float = 0.5
) -> SplitNet:
    """MLP for vector features ``(D,)`` (``depth`` hidden layers), the Gal et al. CNN for images ``(C, H, W)``."""
    if len(feature_shape) == 1:
        return mlp(feature_shape[0], n_classes, hidden=hidden, depth=depth, dropout=dropout)
    if len(feature_shape) == 3:
        channels, height, width = feature_shape
        return gal_cnn(channels, (height, width), n_classes, hidden=hidden, dropout=dropout)
    raise ValueError(f"no default architecture for feature shape {tuple(feature_shape)}; expected (D,) or (C, H, W)")


def has_dropout(module: nn.Module) -> bool:
    """Whether any dropout layer sits in ``module`` (then MC samples need full passes through it)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on torch's global RNG seeded with ``seed``, restoring the caller's RNG state afterwards
    (CPU, and ``device`` when it is a GPU), so models are repeatable without disturbing anyone else's stream."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def seeded_network(config, device: torch.device, *, dropout: float) -> SplitNet:
    """The default network of a model ``config`` (``feature_shape``, ``n_classes``, ``hidden``, ``depth``),
    initialised from ``config.seed`` so that two models of one config start from the same weights."""
    with seeded(config.seed, device):
        return build_network(
            config.feature_shape, config.n_classes, hidden=config.hidden, depth=config.depth, dropout=dropout
        )
