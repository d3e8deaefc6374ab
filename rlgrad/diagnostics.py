"""Gradient-variance diagnostics: per-sample gradients of a policy loss, and their statistics.

Per-sample gradients come from ``torch.func``: ``vmap(grad(ℓ))`` over the samples, with ℓ the
loss of one sample written through ``functional_call`` on the module's parameters, so there is
no Python loop over samples. Random draws (ε, sampled actions) are made outside and passed in.

Statistics of B per-sample estimates g_1 … g_B ∈ R^P (ESTIMATORS.md §3), from
:func:`rlgrad.estimators.summarize` and:

* gradient noise scale B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018), estimated from the two
  batch sizes B_s = 1 and B_b = B:  ‖G‖² ≈ (B ‖ḡ‖² − mean_i ‖g_i‖²)/(B − 1),
  tr Σ ≈ (mean_i ‖g_i‖² − ‖ḡ‖²)/(1 − 1/B);
* cosine of ḡ to a reference gradient g_ref from a larger batch (Ilyas et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from rlgrad.estimators import summarize


def per_sample_grads(
    module: nn.Module, loss: Callable[..., Tensor], *batch: Tensor
) -> dict[str, Tensor]:
    """∇θ ℓ(θ; batch_i) for every row i, as {parameter name: (B, *shape)}.

    ``loss(forward, *sample)`` computes the loss of one sample (each tensor with a leading dim of
    1) calling ``forward(x)`` wherever it would call ``module(x)``.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}

    def loss_of_params(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        def forward(*args, **kwargs):
            return functional_call(module, p, args, kwargs)

        return loss(forward, *(s.unsqueeze(0) for s in sample))

    return vmap(grad(loss_of_params), in_dims=(None, *([0] * len(batch))))(params, *batch)


def flatten(grads: dict[str, Tensor]) -> Tensor:
    """{name: (B, *shape)} → (B, P) in the dict's order."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def gradient_statistics(per_sample: Tensor, reference: Tensor | None = None) -> dict[str, Tensor]:
    """The statistics of ESTIMATORS.md §3 for a (B, P) matrix of per-sample estimates.

    Computed from the row norms and the mean alone (two passes over the matrix, float32, with
    the scalars in float64): tr Σ̂ = B/(B−1) (mean_i ‖g_i‖² − ‖ḡ‖²), which equals
    :func:`rlgrad.estimators.summarize`'s ``trace_var``.
    """
    b = per_sample.shape[0]
    if b < 2:
        raise ValueError("gradient statistics need at least 2 per-sample estimates")
    g = per_sample.detach()
    mean = g.mean(0)
    mean_sq = mean.double().pow(2).sum()
    sample_sq = torch.linalg.vector_norm(g, dim=1).double().pow(2).mean()
    trace_var = (sample_sq - mean_sq) * b / (b - 1)
    true_sq = (b * mean_sq - sample_sq) / (b - 1)
    stats = {
        "grad_norm": mean_sq.sqrt(),
        "variance": trace_var,
        "batch_variance": trace_var / b,
        "snr": mean_sq / (trace_var / b),
        # ‖G‖² is estimated unbiasedly and can come out ≤ 0 when the mean is lost in the noise;
        # the noise scale is then reported as +inf, not as a meaningless negative number.
        "noise_scale": torch.where(true_sq > 0, trace_var / true_sq, torch.inf),
    }
    if reference is not None:
        stats["cosine_reference"] = cosine(mean, reference)
    return stats


def cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(1e-300)


def batch_gradient(module: nn.Module, loss: Tensor) -> Tensor:
    """∇θ of a batch loss, flattened in ``named_parameters`` order (for the reference)."""
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def prefixed(prefix: str, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{name}": value for name, value in stats.items()}


def per_layer_statistics(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """``<layer>/snr`` and ``<layer>/variance`` for each parameter tensor."""
    out: dict[str, Tensor] = {}
    for name, g in grads.items():
        summary = summarize(g.reshape(g.shape[0], -1))
        out[f"{name}/snr"] = summary.snr
        out[f"{name}/variance"] = summary.trace_var
    return out
