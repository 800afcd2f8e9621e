r"""Batch-aware acquisition: greedy BatchBALD and stochastic (power / softmax / soft-rank) batch acquisition.

Top-k BALD scores every item alone, so a batch can be filled with near-copies that all answer the same question.

* :func:`batchbald` (Kirsch, van Amersfoort & Gal 2019) grows the batch greedily by the *joint* mutual information

  .. math:: I[y_1, \dots, y_n; \theta] = H[y_1, \dots, y_n] - \sum_i \mathbb{E}_\theta H[y_i \mid \theta],

  where the joint predictive :math:`p(y_{1:n}) = \frac1S \sum_s \prod_i p_s(y_i)` needs the S posterior samples to
  be *the same parameter draws for every item* (consistent MC samples, see ``bayes_models.fast_head``).
* :func:`powerbald` (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal 2023, "Stochastic Batch
  Acquisition") draws k items without replacement with probability :math:`\propto s_i^\beta` (power),
  :math:`\propto e^{\beta s_i}` (softmax) or :math:`\propto r_i^{-\beta}` (soft-rank, :math:`r_i = 1` for the best
  item): top-k of the Gumbel-perturbed log weights :math:`\log w_i + g_i`, :math:`g_i \sim \mathrm{Gumbel}(0, 1)`
  (the Gumbel-top-k trick). :func:`powerbald_scores` is its per-item form (power, β = 1, BALD), usable wherever a
  score function is (registry, streaming top-k).

All sums are in float64 (the input's dtype on MPS, which has no float64). Probabilities are checked
(finite, non-negative, rows summing to 1 within 1e-3) and renormalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from acquisition.scores import ScoreFn, bald, expected_entropy, get_acquisition
from acquisition.topk import _check_k, top_k

__all__ = [
    "POWERBALD_MODES",
    "batchbald",
    "joint_mutual_information",
    "perturbed_scores",
    "powerbald",
    "powerbald_scores",
]

POWERBALD_MODES = ("power", "softmax", "softrank")
ROW_SUM_ATOL = 1e-3
_CHUNK_ELEMENTS = 1 << 20  # [M, B·C] float64 block per matmul: 8 MiB
_LAZY_TOL = 1e-9  # > rounding error of a gain (float64)
_LAZY_TOL_SAMPLED = 1e-5  # > rounding error of a gain in float32
_BOUND_Z = 3.0  # sampled gains: bound = estimate + 3 standard errors


# ---------------------------------------------------------------------------------------------- checks


def _check_probs(probs_S_N_C: torch.Tensor, name: str = "probs_S_N_C") -> torch.Tensor:
    """Validate ``probs[S, N, C]`` and return it in float64, each row renormalised to sum to 1."""
    if not isinstance(probs_S_N_C, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(probs_S_N_C).__name__}")
    if probs_S_N_C.ndim != 3 or probs_S_N_C.shape[0] == 0 or probs_S_N_C.shape[2] == 0:
        raise ValueError(f"{name} must have shape [S, N, C] with S >= 1 and C >= 1, got {tuple(probs_S_N_C.shape)}")
    if not probs_S_N_C.is_floating_point():
        raise TypeError(f"{name} must hold floating-point probabilities, got {probs_S_N_C.dtype}")
    dtype = probs_S_N_C.dtype if probs_S_N_C.device.type == "mps" else torch.float64
    p = probs_S_N_C.detach().to(dtype)
    for bad, what in ((~torch.isfinite(p), "not finite"), (p < 0, "negative")):
        if bad.any():
            s, n, c = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name}[{s}, {n}, {c}] = {p[s, n, c].item()} is {what}; expected probabilities")
    sums_S_N = p.sum(-1)
    off = (sums_S_N - 1).abs() > ROW_SUM_ATOL
    if off.any():
        s, n = (int(i) for i in off.nonzero()[0])
        raise ValueError(
            f"{name}[{s}, {n}, :] sums to {sums_S_N[s, n].item():.6g}, expected 1 (±{ROW_SUM_ATOL}); "
            "pass probabilities (softmax output), not logits"
        )
    return p / sums_S_N.unsqueeze(-1)


def _check_ids(item_ids: Sequence[str] | None, n: int) -> np.ndarray | None:
    if item_ids is None:
        return None
    ids = np.asarray(item_ids, dtype=np.str_).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} item ids for {n} items")
    return ids


def _top_positions(scores_N: torch.Tensor, ids: np.ndarray | None, k: int) -> np.ndarray:
    """First k positions by (score desc, id asc) or, without ids, (score desc, position asc)."""
    scores = scores_N.detach().to("cpu", torch.float64).numpy()
    if ids is not None:
        return top_k(scores, ids, k)
    if np.isnan(scores).any():
        raise ValueError(f"score at position {int(np.flatnonzero(np.isnan(scores))[0])} is NaN")
    return np.lexsort((np.arange(len(scores)), -scores))[:k].astype(np.int64)


# ---------------------------------------------------------------------------------------------- BatchBALD


@dataclass(frozen=True)
class _BatchState:
    """Class configurations ŷ_m of the chosen batch: their posterior over the S samples and their weights.

    ``posterior_M_S[m, s] = p(θ_s | ŷ_m) = ∏_i p_s(ŷ_m,i) / Σ_s' ∏_i p_s'(ŷ_m,i)``; ``weights_M`` sum to 1
    (q(ŷ_m) when enumerated, the share of draws when sampled); ``n_draws`` is 0 when exact. The posterior is
    held in the working precision of the [M, S] @ [S, C] products (see :func:`_conditional_entropies`).
    """

    posterior_M_S: torch.Tensor
    weights_M: torch.Tensor
    n_draws: int


def _extend_exact(joint_S_M: torch.Tensor, probs_S_C: torch.Tensor) -> torch.Tensor:
    """Per-sample probabilities of every configuration of the batch plus one item: ``[S, M] -> [S, M * C]``."""
    return (joint_S_M.unsqueeze(-1) * probs_S_C.unsqueeze(1)).reshape(joint_S_M.shape[0], -1)


def _exact_state(joint_S_M: torch.Tensor) -> _BatchState:
    mass_M = joint_S_M.sum(0)
    keep_M = mass_M > 0  # configurations of probability 0 contribute nothing
    joint_S_M, mass_M = joint_S_M[:, keep_M], mass_M[keep_M]
    return _BatchState((joint_S_M / mass_M).T.contiguous(), mass_M / mass_M.sum(), 0)


def _sampled_state(batch_probs_S_n_C: torch.Tensor, num_samples: int, generator: torch.Generator | None) -> _BatchState:
    r"""Configurations drawn from the joint predictive, as batchbald_redux's ``SampledJointEntropy``.

    For each posterior sample s, ``max(1, num_samples // S)`` configurations :math:`\hat y \sim \prod_i p_s(y_i)`
    are drawn, so the draws follow :math:`q(\hat y) = \frac1S\sum_s\prod_i p_s(\hat y_i)`. Repeated
    configurations are merged (weights = counts / draws), which changes nothing in the estimate. The posterior
    over samples is a softmax of summed log probabilities, so it never underflows, whatever the batch size.
    """
    S, n, C = batch_probs_S_n_C.shape
    per_sample = max(1, num_samples // S)
    device = batch_probs_S_n_C.device
    draw_device = generator.device if generator is not None else device
    flat = batch_probs_S_n_C.reshape(S * n, C).to(draw_device)
    classes = torch.multinomial(flat, per_sample, replacement=True, generator=generator)  # [S * n, per_sample]
    classes_n_D = classes.view(S, n, per_sample).permute(1, 0, 2).reshape(n, S * per_sample).to(device)
    configs_n_M, counts_M = torch.unique(classes_n_D, dim=1, return_counts=True)
    log_probs_S_n_C = batch_probs_S_n_C.log()
    log_joint_S_M = torch.zeros(S, configs_n_M.shape[1], dtype=batch_probs_S_n_C.dtype, device=device)
    for i in range(n):
        log_joint_S_M += log_probs_S_n_C[:, i, :][:, configs_n_M[i]]
    posterior_M_S = torch.softmax(log_joint_S_M, dim=0).T.contiguous()
    n_draws = classes_n_D.shape[1]
    posterior_M_S = posterior_M_S.to(_sampled_dtype(posterior_M_S.dtype))
    return _BatchState(posterior_M_S, counts_M.to(log_joint_S_M.dtype) / n_draws, n_draws)


def _sampled_dtype(dtype: torch.dtype) -> torch.dtype:
    """Working precision with sampled configurations: float32, whose rounding (~1e-7 nats) is far below the
    estimator's own sampling error (~1/√M), at about half float64's cost on CPUs (the logs dominate)."""
    return torch.float32 if dtype == torch.float64 else dtype


def _conditional_entropies(state: _BatchState, probs_S_B_C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and standard error of :math:`H[y_x \mid y_{batch}] = \sum_m w_m H\bigl[\sum_s p(\theta_s|\hat y_m)\,
    p_s(y_x)\bigr]` for each candidate x; one ``[M, S] @ [S, B'·C]`` matmul per block of B' candidates.

    The products and their entropies are computed in the posterior's dtype, the weighted sums over
    configurations in ``weights_M``'s (float64). The standard error is 0 for an enumerated (exact) state.
    """
    S, B, C = probs_S_B_C.shape
    M = state.posterior_M_S.shape[0]
    probs_S_B_C = probs_S_B_C.to(state.posterior_M_S.dtype)
    mean_B = torch.empty(B, dtype=state.weights_M.dtype, device=probs_S_B_C.device)
    se_B = torch.zeros_like(mean_B)
    chunk = max(1, _CHUNK_ELEMENTS // (M * C))
    for start in range(0, B, chunk):
        block_S_b_C = probs_S_B_C[:, start : start + chunk]
        b = block_S_b_C.shape[1]
        cond_M_bC = state.posterior_M_S @ block_S_b_C.reshape(S, b * C)  # p(y_x = c | ŷ_m)
        # r log r with 0 log 0 = 0: clamp, then log and multiply in place (1.5x faster than xlogy)
        plogp_M_bC = cond_M_bC.clamp_min(torch.finfo(cond_M_bC.dtype).tiny).log_().mul_(cond_M_bC)
        h_M_b = -plogp_M_bC.view(M, b, C).sum(-1).to(mean_B.dtype)
        mean_b = state.weights_M @ h_M_b
        mean_B[start : start + b] = mean_b
        if state.n_draws:
            var_b = state.weights_M @ (h_M_b - mean_b).square()
            se_B[start : start + b] = (var_b / state.n_draws).sqrt()
    return mean_B, se_B


def batchbald(
    probs_S_N_C: torch.Tensor,
    k: int,
    *,
    num_samples: int = 10000,
    exact_threshold: int | None = None,
    generator: torch.Generator | None = None,
    item_ids: Sequence[str] | None = None,
    lazy: bool = True,
) -> torch.Tensor:
    r"""Greedy BatchBALD: positions of k items chosen one by one to maximise the batch's joint mutual information.

    Step n adds the candidate x of largest gain

    .. math:: I[y_{1:n}, y_x; \theta] - I[y_{1:n}; \theta]
              = H[y_x \mid y_{1:n}] - \mathbb{E}_\theta H[y_x \mid \theta]
              = \sum_{\hat y} q(\hat y)\, H\Bigl[\sum_s p(\theta_s \mid \hat y)\, p_s(y_x)\Bigr]
                - \frac1S \sum_s H[p_s(y_x)],

    the same argmax as the joint-entropy form :math:`H[y_{1:n}, y_x] - \mathbb{E}H[y_x|\theta]` of Kirsch et al.
    (2019). The sum over configurations :math:`\hat y` of the chosen batch is exact (all :math:`C^n`) while
    :math:`C^n \le` ``exact_threshold``; beyond, ``num_samples`` configurations (``num_samples // S`` per posterior
    sample, at least one) are drawn afresh at each step (batchbald_redux's sampled estimator). The first pick is
    the top BALD item.

    The joint mutual information is submodular, so a candidate's gain never grows as the batch grows; with
    ``lazy=True`` (Minoux's lazy greedy) each step evaluates candidates in decreasing order of their last gain
    (BALD at first) and stops once no remaining bound can reach the best gain found. With enumerated
    configurations this picks exactly what ``lazy=False`` (every candidate, every step) picks; with sampled
    configurations a bound is the last estimate plus 3 standard errors, so a pick may differ from the full
    evaluation's only where the two differ by sampling noise. Cost per evaluated candidate: O(M · S · C) with M ≤
    ``max(exact_threshold, num_samples)`` distinct configurations, in float64 when enumerated and float32 when
    sampled (far below the sampling error; about twice as fast on CPUs).

    Parameters
    ----------
    probs_S_N_C : torch.Tensor
        Class probabilities, S posterior samples × N items × C classes. The samples must be consistent: sample s
        is the same parameter draw for every item (one dropout mask per sample, not per item).
    k : int
        Batch size; ``k > N`` returns all N.
    num_samples : int
        Number of sampled class configurations in the sampled regime.
    exact_threshold : int, optional
        Largest number of configurations :math:`C^n` enumerated exactly; defaults to ``num_samples``.
    generator : torch.Generator, optional
        Source of the sampled configurations (on its own device; CPU is fine for GPU inputs). The result is
        deterministic given its state; without one, torch's global generator is used.
    item_ids : sequence of str, optional
        Break exact ties by item id ascending (as :func:`acquisition.topk.top_k`); without ids, by position.
    lazy : bool
        Lazy greedy evaluation (see above); ``False`` evaluates every candidate at every step.

    Returns
    -------
    torch.Tensor
        int64 positions into N, on the CPU, in the order chosen, length ``min(k, N)``.

    Raises
    ------
    ValueError, TypeError
        On a malformed ``probs_S_N_C`` (the message names the first bad entry), misaligned ``item_ids``, a
        negative k or a non-positive ``num_samples`` / ``exact_threshold``.
    """
    p = _check_probs(probs_S_N_C)
    S, N, C = p.shape
    k = min(_check_k(k), N)
    num_samples = _check_positive(num_samples, "num_samples")
    exact_threshold = num_samples if exact_threshold is None else _check_positive(exact_threshold, "exact_threshold")
    ids = _check_ids(item_ids, N)
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    expected_entropy_N = expected_entropy(p)
    bound_N = bald(p)  # the gain of every item at step 0, and an upper bound on it at every later step
    chosen = [int(_top_positions(bound_N, ids, 1)[0])]
    joint_S_M = torch.ones(S, 1, dtype=p.dtype, device=p.device)
    while len(chosen) < k:
        if C ** len(chosen) <= exact_threshold:  # exact so far, so the joint extends exactly
            joint_S_M = _extend_exact(joint_S_M, p[:, chosen[-1], :])
            state = _exact_state(joint_S_M)
        else:
            state = _sampled_state(p[:, chosen, :], num_samples, generator)
        bound_N[chosen] = -math.inf
        order = _top_positions(bound_N, ids, N - len(chosen))  # candidates by bound, best first
        block = max(1, _CHUNK_ELEMENTS // (state.posterior_M_S.shape[0] * C)) if lazy else N
        gain_N = torch.full((N,), -math.inf, dtype=p.dtype, device=p.device)
        best = -math.inf
        for start in range(0, len(order), block):
            if bound_N[int(order[start])] < best - (_LAZY_TOL if state.n_draws == 0 else _LAZY_TOL_SAMPLED):
                break  # no candidate left can beat (or tie) the best gain found
            pos = torch.from_numpy(order[start : start + block]).to(p.device)
            cond_b, se_b = _conditional_entropies(state, p[:, pos, :])
            gain_b = cond_b - expected_entropy_N[pos]
            gain_N[pos] = gain_b
            bound_N[pos] = torch.minimum(bound_N[pos], gain_b + _BOUND_Z * se_b)
            best = max(best, float(gain_b.max()))
        chosen.append(int(_top_positions(gain_N, ids, 1)[0]))
    return torch.tensor(chosen, dtype=torch.long)


def joint_mutual_information(
    probs_S_N_C: torch.Tensor, positions: Sequence[int] | torch.Tensor, *, max_configurations: int = 1 << 20
) -> float:
    r"""Exact joint mutual information :math:`I[y_{i_1}, \dots, y_{i_n}; \theta]` of the items at ``positions``.

    .. math:: H\Bigl[\tfrac1S \sum_s \prod_i p_s(y_i)\Bigr] - \sum_i \mathbb{E}_s H[p_s(y_i)]

    by enumerating all :math:`C^n` class configurations; clamped at 0 (negative only by rounding).

    Raises
    ------
    ValueError
        Positions out of range or repeated, or :math:`C^n >` ``max_configurations``.
    """
    p = _check_probs(probs_S_N_C)
    S, N, C = p.shape
    pos = [int(i) for i in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
    bad = [i for i in pos if not 0 <= i < N]
    if bad:
        raise ValueError(f"position {bad[0]} is out of range for {N} items")
    if len(set(pos)) != len(pos):
        raise ValueError(f"positions must be distinct, got {pos}")
    if C ** len(pos) > max_configurations:
        raise ValueError(
            f"{C}^{len(pos)} class configurations exceed max_configurations={max_configurations}; "
            "use batchbald's sampled estimator for large batches"
        )
    joint_S_M = torch.ones(S, 1, dtype=p.dtype, device=p.device)
    for i in pos:
        joint_S_M = _extend_exact(joint_S_M, p[:, i, :])
    joint_M = joint_S_M.mean(0)
    joint_entropy = -torch.special.xlogy(joint_M, joint_M).sum()
    conditional = expected_entropy(p[:, pos, :]).sum()
    return max(0.0, float(joint_entropy - conditional))


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------- stochastic


def perturbed_scores(
    scores_N: torch.Tensor,
    *,
    beta: float = 1.0,
    mode: str = "power",
    generator: torch.Generator | None = None,
    item_ids: Sequence[str] | None = None,
) -> torch.Tensor:
    r"""Gumbel-perturbed log weights :math:`\log w_i + g_i`; their top k is a draw of k items without replacement.

    .. math:: \log w_i = \begin{cases} \beta \log s_i & \text{power } (s_i \ge 0)\\
              \beta s_i & \text{softmax}\\ -\beta \log r_i & \text{softrank}\end{cases}

    with :math:`g_i \sim \mathrm{Gumbel}(0, 1)` i.i.d. and :math:`r_i` the rank (1 = best; ties by id, else by
    position). Items of weight 0 (power mode, :math:`s_i = 0`) get ``-inf``: they are taken only when fewer than k
    items have positive weight, then in (id or position) order. ``beta = 0`` is uniform sampling; ``beta → ∞``
    tends to top-k.

    Returns
    -------
    torch.Tensor
        float64 keys on the device of ``scores_N``. The Gumbel noise is drawn on the generator's device.
    """
    if mode not in POWERBALD_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(POWERBALD_MODES)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not isinstance(scores_N, torch.Tensor) or scores_N.ndim != 1:
        raise ValueError(f"scores must be a 1-D tensor, got {getattr(scores_N, 'shape', type(scores_N).__name__)}")
    s = scores_N.detach().to(torch.float64)
    N = s.shape[0]
    nan = torch.isnan(s)
    if nan.any():
        raise ValueError(f"score at position {int(nan.nonzero()[0])} is NaN")
    if mode == "power":
        negative = s < 0
        if negative.any():
            i = int(negative.nonzero()[0])
            raise ValueError(
                f"power mode needs scores >= 0, but the item at position {i} scores {s[i].item()}; "
                "use mode='softmax' or 'softrank' for signed scores"
            )
        log_w = torch.zeros_like(s) if beta == 0 else beta * s.log()
    elif mode == "softmax":
        log_w = beta * s
    else:
        order = _top_positions(s, _check_ids(item_ids, N), N)
        rank = torch.empty(N, dtype=torch.float64)
        rank[torch.from_numpy(order)] = torch.arange(1, N + 1, dtype=torch.float64)
        log_w = (-beta * rank.log()).to(s.device)
    device = generator.device if generator is not None else s.device
    u = torch.rand(N, generator=generator, dtype=torch.float64, device=device)
    u = u.clamp(torch.finfo(torch.float64).tiny, 1.0 - torch.finfo(torch.float64).eps)
    gumbel_N = -(-u.log()).log()
    return log_w + gumbel_N.to(s.device)


def powerbald(
    probs_S_N_C: torch.Tensor,
    k: int,
    *,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    mode: str = "power",
    scores_fn: ScoreFn | str = bald,
    item_ids: Sequence[str] | None = None,
) -> torch.Tensor:
    r"""Stochastic batch acquisition (PowerBALD and friends): k items drawn without replacement ∝ their weight.

    Weights :math:`s_i^\beta` (``"power"``), :math:`e^{\beta s_i}` (``"softmax"``) or :math:`r_i^{-\beta}`
    (``"softrank"``) of the scores :math:`s = ` ``scores_fn(probs_S_N_C)``; drawn as the top k of
    :func:`perturbed_scores` (Gumbel-top-k, Plackett–Luce order: the first position is a draw ∝ w, the next a
    draw ∝ w among the rest, ...). Cost: one score pass plus O(N log N).

    Parameters
    ----------
    probs_S_N_C : torch.Tensor
        Class probabilities, S samples × N items × C classes.
    k : int
        Batch size; ``k > N`` returns all N.
    beta : float
        Inverse temperature ≥ 0 (1 in the paper's PowerBALD).
    generator : torch.Generator, optional
        Seeded generator: same state, same batch.
    mode : {"power", "softmax", "softrank"}
    scores_fn : callable or str
        Score function ``probs[S, N, C] -> scores[N]`` or its registry name; ``"power"`` needs scores ≥ 0.
    item_ids : sequence of str, optional
        Break ties (in ranks and in keys) by item id ascending; without ids, by position.

    Returns
    -------
    torch.Tensor
        int64 positions on the CPU, in draw order, length ``min(k, N)``.
    """
    p = _check_probs(probs_S_N_C)
    N = p.shape[1]
    k = min(_check_k(k), N)
    ids = _check_ids(item_ids, N)
    fn = get_acquisition(scores_fn) if isinstance(scores_fn, str) else scores_fn
    scores_N = fn(p)
    if not isinstance(scores_N, torch.Tensor) or tuple(scores_N.shape) != (N,):
        raise ValueError(f"scores_fn must return scores of shape ({N},), got {getattr(scores_N, 'shape', None)}")
    keys_N = perturbed_scores(scores_N, beta=beta, mode=mode, generator=generator, item_ids=item_ids)
    return torch.from_numpy(_top_positions(keys_N, ids, k))


def powerbald_scores(probs_S_N_C: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""PowerBALD as a per-item score function: :math:`\log \mathrm{BALD}_i + g_i` (power mode, β = 1).

    Top-k of these scores is a PowerBALD batch; each item's score depends on that item only, so it streams over
    a pool in chunks like any score function (the soft-rank mode needs global ranks and does not).

    Returns
    -------
    torch.Tensor
        ``scores_N``, float64, on the input's device; ``-inf`` where BALD is 0.
    """
    return perturbed_scores(bald(_check_probs(probs_S_N_C)), beta=1.0, mode="power", generator=generator)
