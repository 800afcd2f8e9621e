"""Dense float64 brute force for the Laplace tests: Jacobians from ``torch.autograd.functional.jacobian``, the
GGN ``Σ_n J_nᵀ Λ_n J_n`` with ``Λ_n`` written out, and the Laplace evidence with ``slogdet``.

The tensors here are tiny, so each test runs on one intra-op thread (restored afterwards): on a shared, loaded
machine multi-threaded kernels on 30×8 matrices are several times slower than one thread.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

DT = torch.float64


def rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    """Largest absolute difference over the largest magnitude of ``b``."""
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    return float((a - b).abs().max() / b.abs().max())


def params_of(module: nn.Module) -> tuple[list[str], torch.Tensor]:
    names = [n for n, _ in module.named_parameters()]
    return names, torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def forward(module: nn.Module, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with all weights taken from ``θ`` (``parameters_to_vector`` order)."""
    params, start = {}, 0
    for name, p in module.named_parameters():
        params[name] = theta[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return functional_call(module, params, (x,))


def jacobian(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``J[N, C, P] = ∂f(x_n)_c/∂θ_p`` by ``torch.autograd.functional.jacobian`` of the batch output in ``θ``."""
    _, theta = params_of(module)
    return torch.autograd.functional.jacobian(lambda t: forward(module, t, x), theta)


def output_hessian(out: torch.Tensor, likelihood: str, sigma: float = 1.0) -> torch.Tensor:
    """``Λ[N, C, C]``: ``diag(p) − ppᵀ`` or ``I/σ²``."""
    n, c = out.shape
    if likelihood == "regression":
        return torch.eye(c, dtype=out.dtype).expand(n, c, c) / sigma**2
    p = torch.softmax(out, -1)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def ggn(module: nn.Module, x: torch.Tensor, likelihood: str, sigma: float = 1.0) -> torch.Tensor:
    jac = jacobian(module, x)
    lam = output_hessian(module(x).detach(), likelihood, sigma)
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac)


def log_lik(module: nn.Module, x: torch.Tensor, y: torch.Tensor, likelihood: str, sigma: float = 1.0) -> torch.Tensor:
    out = module(x).detach()
    if likelihood == "classification":
        return torch.log_softmax(out, -1).gather(1, y[:, None]).sum()
    y = y.reshape(out.shape)
    return (-((out - y) ** 2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)).sum()


def log_evidence(loglik: torch.Tensor, diff: torch.Tensor, prior: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """``log p(D|θ*) − ½ (θ*−μ0)ᵀ P0 (θ*−μ0) − ½ log det H + ½ log det P0`` with dense ``slogdet``."""
    return (
        loglik - 0.5 * diff @ prior @ diff - 0.5 * torch.linalg.slogdet(post)[1] + 0.5 * torch.linalg.slogdet(prior)[1]
    )


def mlp(seed: int = 0, sizes: tuple[int, ...] = (4, 8, 6, 3)) -> nn.Sequential:
    """Small tanh MLP in float64 (≤ 500 weights for the default sizes: 40 + 54 + 21 = 115)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(DT)


def classification_data(seed: int = 0, n: int = 30, d: int = 4, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randint(0, c, (n,), generator=g)


def regression_data(
    seed: int = 0, n: int = 40, d: int = 3, c: int = 1, sigma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    w = torch.randn(d, c, generator=g, dtype=DT)
    y = x @ w + 0.3 + sigma * torch.randn(n, c, generator=g, dtype=DT)
    return x, y.squeeze(-1) if c == 1 else y


def one_scale_probit(f_mean: torch.Tensor, f_cov: torch.Tensor) -> torch.Tensor:
    """MacKay's probit with one scale per item from the centred logits ``P f``, ``P = I − 11ᵀ/C`` written out as a
    matrix: ``softmax(μ / √(1 + π/8 · tr(P Σ Pᵀ) / C))``."""
    n_classes = f_mean.shape[-1]
    ones = torch.ones(n_classes, n_classes, dtype=f_mean.dtype)
    centre = torch.eye(n_classes, dtype=f_mean.dtype) - ones / n_classes
    centred_cov = centre @ f_cov @ centre.T
    mean_var = centred_cov.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    return torch.softmax(f_mean / torch.sqrt(1 + math.pi / 8 * mean_var), -1)


@pytest.fixture
def brute() -> SimpleNamespace:
    return SimpleNamespace(
        DT=DT,
        rel=rel,
        params_of=params_of,
        forward=forward,
        jacobian=jacobian,
        output_hessian=output_hessian,
        ggn=ggn,
        log_lik=log_lik,
        log_evidence=log_evidence,
        one_scale_probit=one_scale_probit,
        mlp=mlp,
        classification_data=classification_data,
        regression_data=regression_data,
    )
