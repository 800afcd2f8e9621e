r"""MC-dropout head samples with consistent masks: one dropout mask per sample, shared by every item.

``MCDropout.predictive_samples`` draws an independent mask for every (sample, item) pair, as S full passes
would. That gives the right *per-item* predictive, but sample s of item a and sample s of item b then come
from different networks, so ``probs[s]`` is not one posterior draw applied to the batch. Here sample s is one
network :math:`\theta_s` (one mask :math:`m_s`) applied to all items:

* **the per-item marginals are unchanged** — each item still sees a Bernoulli(1 − p)/(1 − p) mask, the same
  law as before, so BALD, entropy and every per-item score have the same distribution;
* **items are jointly consistent** — :math:`p_s(y_a, y_b) = p_s(y_a)\,p_s(y_b)` under the same
  :math:`\theta_s`, which is what BatchBALD's joint predictive :math:`\frac1S\sum_s\prod_i p_s(y_i)` needs
  anyway (with independent masks it is not a joint of anything);
* **the head becomes one matmul** — Dropout → Linear with a shared mask is
  :math:`(h \odot m_s) W^\top = h\,(W \odot m_s)^\top`, so the S masked weight matrices
  :math:`W_s = W \odot m_s` (``[S, C, H]``, tiny) are stacked into one ``[H, S·C]`` matrix and the chunk's
  features ``[B, H]`` are multiplied by it once: no ``[S, B, H]`` tensor of masked features is ever formed,
  and the cost is one GEMM of B × H × S·C (vs S·B·H mask work plus S small matmuls).

* **only the kept units are computed** — a unit a dropout drops contributes nothing, so when a Linear's outputs
  go (through element-wise layers) to another Dropout → Linear, only the outputs that dropout keeps are computed
  and the next Linear reads only those: between two hidden layers with p = 0.5 that is a quarter of the
  multiply-adds, with the same samples.

Consistency across chunks: a generator seeded the same way for every chunk gives every chunk the same S masks,
so the samples are consistent over the whole pool (:func:`predictive_samples_consistent` does this).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bayes_models.architectures import SplitNet, has_dropout
from bayes_models.softmax import softmax_over_classes

__all__ = ["dropout_masks", "head_samples_consistent", "predictive_samples_consistent"]


def dropout_masks(
    S: int, width: int, p: float, *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``mask[S, width]``: Bernoulli(1 − p) scaled by 1/(1 − p) (inverted dropout, as ``nn.Dropout``).

    Drawn on the generator's device (a CPU generator serves GPU inputs too), then moved to ``device``.
    ``p = 1`` gives zeros, like ``nn.Dropout``.
    """
    draw_device = generator.device if generator is not None else device
    if p >= 1:
        return torch.zeros(S, width, device=device, dtype=dtype)
    keep = torch.empty(S, width, device=draw_device).bernoulli_(1.0 - p, generator=generator)
    return keep.to(device=device, dtype=dtype) / (1.0 - p)


def head_samples_consistent(
    head: nn.Module, features_B_H: torch.Tensor, S: int, *, generator: torch.Generator | None
) -> torch.Tensor:
    r"""``logits[S, B, C]`` of S dropout samples of ``head`` with one mask per sample shared by the B items.

    ``head`` is an ``nn.Sequential`` (or a single module) of ``nn.Dropout``, ``nn.Linear`` and shape-agnostic
    layers (activations, ...). A Dropout directly followed by a Linear is applied as one matmul with the
    masked weights :math:`W_s = W \odot m_s`; other layers act on the last dimension of ``[B, H]`` (before the
    first dropout) or ``[S, B, H]`` (after). Dropout is always sampled, whatever the module's train/eval mode.

    Parameters
    ----------
    head : nn.Module
        E.g. ``nn.Sequential(nn.Dropout(0.5), nn.Linear(H, C))`` (the head of every ``SplitNet`` built here).
    features_B_H : torch.Tensor
        Backbone output for B items.
    S : int
        Number of samples (masks).
    generator : torch.Generator or None
        Source of the masks; seed it the same way for every chunk to use the same S masks for the whole pool.

    Returns
    -------
    torch.Tensor
        ``logits[S, B, C]`` (contiguous).

    Raises
    ------
    TypeError
        On a dropout variant other than ``nn.Dropout`` (alpha / channel dropout have other semantics).
    """
    return _head_logits(head, features_B_H, S, generator=generator).contiguous()


@dataclass
class _Draws:
    """One set of S sampled heads: each dropout's masks and each masked Linear's ``(weight, bias, out_kept)``, made
    on the first chunk of items and reused for the next ones (the same samples for the whole pool at no redrawing
    cost: the masked weights of a 256-wide layer are ~13 MB per chunk otherwise)."""

    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    linears: dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=dict)


def _head_logits(
    head: nn.Module,
    features_B_H: torch.Tensor,
    S: int,
    *,
    generator: torch.Generator | None,
    draws: _Draws | None = None,
) -> torch.Tensor:
    """:func:`head_samples_consistent`'s ``logits[S, B, C]``, possibly a view of class-major ``[S, C, B]``; the
    samples are ``draws``' when given (filled on first use)."""
    if isinstance(S, bool) or not isinstance(S, int) or S < 1:
        raise ValueError(f"S must be a positive integer, got {S!r}")
    if features_B_H.ndim != 2:
        raise ValueError(f"features_B_H must have shape [B, H], got {tuple(features_B_H.shape)}")
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    draws = _Draws() if draws is None else draws
    masks = draws.masks  # drawn in layer order, whatever order they are needed in

    def mask(i: int, width: int) -> torch.Tensor:
        layer = layers[i]
        if isinstance(layer, nn.modules.dropout._DropoutNd) and type(layer) is not nn.Dropout:
            raise TypeError(f"{type(layer).__name__} is not supported in a consistent-mask head; use nn.Dropout")
        if i not in masks:
            masks[i] = dropout_masks(S, width, layer.p, generator=generator, device=x.device, dtype=x.dtype)
        return masks[i]

    x = features_B_H  # [B, H] while no dropout has been applied, then [S, B, H], or [S, K, B]: kept units only
    shared = True
    kept: torch.Tensor | None = None  # [S, K]: the units x holds, when it holds only the next dropout's kept ones
    i = 0
    while i < len(layers):
        layer = layers[i]
        if not isinstance(layer, nn.modules.dropout._DropoutNd):
            # a compact x meets only element-wise layers here (see _next_dropout); after the first dropout x is
            # this function's own tensor, so a ReLU may overwrite it
            x = x.relu_() if type(layer) is nn.ReLU and not shared else layer(x)
            i += 1
            continue
        mask_S_H = mask(i, _layer_width(x, kept, layers, i))
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(following, nn.Linear):
            if i not in draws.linears:
                j = _next_dropout(layers, i + 2)
                out_kept = None if j is None else _kept_units(mask(j, following.out_features))
                draws.linears[i] = (*_masked_weight(mask_S_H, following, kept, out_kept), out_kept)
            weight, bias, out_kept = draws.linears[i]
            x = _masked_linear(x, weight, bias, shared, kept is not None, out_kept is not None)
            kept = out_kept
            i += 2
        else:
            x = x * mask_S_H.unsqueeze(1)  # [B, H] or [S, B, H] -> [S, B, H]
            i += 1
        shared = False
    if shared:  # a head without dropout: S identical samples
        x = x.unsqueeze(0).expand(S, *x.shape)
    return x


_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)
"""Layers acting on each unit alone: between a Linear and the next dropout they may run on its kept units only."""


def _layer_width(x: torch.Tensor, kept: torch.Tensor | None, layers: list[nn.Module], i: int) -> int:
    """Width of the full layer a dropout at ``layers[i]`` acts on (x holds only ``kept`` of it when compact)."""
    if kept is None:
        return x.shape[-1]
    return next(layer.out_features for layer in reversed(layers[:i]) if isinstance(layer, nn.Linear))


def _next_dropout(layers: list[nn.Module], start: int) -> int | None:
    """Index of a dropout reached from ``start`` through element-wise layers only and followed by a Linear (which
    then consumes the kept units alone), else ``None``."""
    j = start
    while j < len(layers) and isinstance(layers[j], _ELEMENTWISE):
        j += 1
    if j + 1 < len(layers) and isinstance(layers[j], nn.modules.dropout._DropoutNd):
        return j if isinstance(layers[j + 1], nn.Linear) else None
    return None


def _kept_units(mask_S_H: torch.Tensor) -> torch.Tensor:
    """``index[S, K]`` of each sample's kept units, ascending, padded with dropped ones up to the largest count
    K (a padded unit's mask is 0, so it contributes nothing downstream)."""
    keep = mask_S_H != 0
    width = int(keep.sum(1).max()) if keep.numel() else 0
    return torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]


def _masked_weight(
    mask_S_H: torch.Tensor, linear: nn.Linear, kept: torch.Tensor | None, out_kept: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The S masked weights :math:`W \odot m_s` ``[S, C, H]`` and biases ``[S, C]`` of ``linear``, reduced to the
    units that count.

    Exact sparsity, no approximation: a dropped input unit contributes nothing, so a compact input (``kept``: the
    units it holds) meets only the matching columns of W; and an output unit the next dropout drops
    (``out_kept``: those it keeps) is never needed, so only the kept rows are computed. With p = 0.5 between two
    hidden layers that is a quarter of the multiply-adds (measured: MNIST pool scoring's largest cost)."""
    weight, bias = linear.weight, linear.bias
    S = mask_S_H.shape[0]
    if out_kept is not None:  # [S, K_out, H_in], [S, K_out]: the rows the next dropout keeps
        weight, bias = weight[out_kept], None if bias is None else bias[out_kept]
    else:
        weight, bias = weight.expand(S, *weight.shape), None if bias is None else bias.expand(S, -1)
    if kept is not None:  # the input holds the kept units only: their columns, scaled by the mask
        scale = torch.gather(mask_S_H, 1, kept)
        weight = torch.gather(weight, 2, kept.unsqueeze(1).expand(-1, weight.shape[1], -1)) * scale.unsqueeze(1)
    else:
        weight = weight * mask_S_H.unsqueeze(1)
    return weight, bias


def _masked_linear(
    x: torch.Tensor,
    weight_S_C_H: torch.Tensor,
    bias_S_C: torch.Tensor | None,
    shared: bool,
    compact_in: bool,
    compact_out: bool,
) -> torch.Tensor:
    r"""``x_s W_sᵀ + b_s`` for every sample s (:func:`_masked_weight`): one GEMM ``[B, H] @ [H, S·C]`` for shared x.

    A compact x is unit-major, ``[S, K, B]``: each layer is then ``W_s @ x_s``, whose output is already in that
    layout, and the last one gives ``[S, C, B]`` (returned as an ``[S, B, C]`` view). Item-major, the compact
    activations were copied to feed every batched GEMM (15% of MNIST pool scoring, measured)."""
    S, C, H = weight_S_C_H.shape
    if shared:
        flat = weight_S_C_H.reshape(S * C, H)
        if compact_out:  # unit-major from the start: [S·K, H] @ [H, B]
            out = flat @ x.T if bias_S_C is None else torch.addmm(bias_S_C.reshape(S * C, 1), flat, x.T)
            return out.view(S, C, x.shape[0])
        # the bias added inside the GEMM (addmm), not as another pass over [S, B, C]
        out = x @ flat.T if bias_S_C is None else torch.addmm(bias_S_C.reshape(1, S * C), x, flat.T)
        return out.view(x.shape[0], S, C).transpose(0, 1)
    x_S_H_B = x if compact_in else x.transpose(1, 2)
    out = (
        torch.bmm(weight_S_C_H, x_S_H_B)
        if bias_S_C is None
        else torch.baddbmm(bias_S_C.unsqueeze(2), weight_S_C_H, x_S_H_B)
    )
    return out if compact_out else out.transpose(1, 2)


@torch.no_grad()
def predictive_samples_consistent(
    network: SplitNet, x: torch.Tensor, S: int, *, seed: int = 0, batch_size: int = 512
) -> torch.Tensor:
    """``probs[S, N, C]``: the backbone once (eval mode), then S consistent-mask samples through the head, in chunks
    of ``batch_size`` items (512: a chunk's unit-major activations, ``S × K × B`` floats, 26 MB for MNIST's 256-wide
    head at S = 100, then stay nearer the cache; 2,048 was 25–35% slower on 2 cores, measured).

    The masks come from a fresh CPU generator seeded with ``seed`` at every call, so every call (every chunk of a
    pool) gets the same S masks and the samples are consistent across the pool (what BatchBALD needs); an item's
    probabilities do not depend on the chunk it is scored in. Use ``functools.partial`` (or a lambda) to pass
    it as ``predict_samples(x_chunk, S)`` to ``acquisition.streaming.score_pool_streaming``.

    Raises
    ------
    ValueError
        If the backbone holds dropout layers (then S full passes are needed, see ``MCDropout``).
    """
    if has_dropout(network.features):
        raise ValueError("the backbone has dropout layers; consistent head sampling needs a deterministic backbone")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else x.device
    dtype = parameter.dtype if parameter is not None else torch.float32
    generator = torch.Generator().manual_seed(seed)
    draws = _Draws()
    previous = network.training
    network.eval()
    try:
        parts = []
        for start in range(0, max(x.shape[0], 1), batch_size):  # an empty x gives [S, 0, C]
            features = network.features(x[start : start + batch_size].to(device=device, dtype=dtype))
            logits = _head_logits(network.head, features, S, generator=generator, draws=draws)
            parts.append(softmax_over_classes(logits))
    finally:
        network.train(previous)
    return torch.cat(parts, dim=1) if len(parts) != 1 else parts[0]
