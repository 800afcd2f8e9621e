"""Priors a user states: Gaussian prior std per layer group, and the checks of a saved posterior used as a prior.

A *layer group* is a module name of the network or a dotted prefix of it: ``"features"`` covers every layer of the
backbone, ``"head"`` the head, ``"features.0"`` one layer. The most specific group that covers a layer sets its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["check_prior_shapes", "group_values"]


def _covers(group: str, layer: str) -> bool:
    return layer == group or layer.startswith(f"{group}.")


def group_values(
    layers: Sequence[str], default: float, groups: Sequence[tuple[str, float]], *, what: str = "prior std"
) -> list[float]:
    """One value per layer of ``layers``: that of the longest group in ``groups`` covering it, else ``default``.

    A group that covers no layer is an error naming it and the layers there are (a typo never falls back silently).
    """
    unknown = [group for group, _ in groups if not any(_covers(group, layer) for layer in layers)]
    if unknown:
        raise ValueError(f"{what} names layer group(s) {unknown} that match no layer; the layers are {list(layers)}")
    values = []
    for layer in layers:
        covering = [(len(group), value) for group, value in groups if _covers(group, layer)]
        values.append(max(covering)[1] if covering else default)
    return values


def check_prior_shapes(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """A saved posterior fits this model: the same parameter names with the same shapes; else one line naming the
    first mismatched layer, expected vs got."""
    saved = {name: t for name, t in saved.items() if isinstance(t, torch.Tensor)}  # not a layer's extra state
    expected = {name: t for name, t in expected.items() if isinstance(t, torch.Tensor)}
    for name, tensor in expected.items():
        if name not in saved:
            raise ValueError(
                f"prior from {source}: the saved posterior has no {name!r} (expected shape {_shape(tensor)})"
            )
        if saved[name].shape != tensor.shape:
            raise ValueError(
                f"prior from {source}: layer {name!r} has shape {_shape(saved[name])} in the saved posterior, "
                f"expected {_shape(tensor)} for this model"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise ValueError(f"prior from {source}: the saved posterior has layers this model lacks: {extra}")


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)
