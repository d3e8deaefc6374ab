"""Hand-written backward passes for the networks on SAC's hot path.

Autograd builds one graph node per operation and picks its backward kernels generically; at
SAC's sizes on CPU that overhead is comparable to the matrix arithmetic (the measurements are in
experiments/README.md). These stand-ins use an element-wise product and sum for the critics'
1-wide output layer instead of a batched matrix-vector ``bmm``, ``threshold_backward`` for
ReLU's gradient instead of a mask, and one graph node per network. The three
:class:`torch.autograd.Function` s here compute the same values as the module code they stand in
for, with one graph node each and the cheapest kernels for the backward pass:

* :func:`ensemble_mlp`: ``n`` ReLU MLPs evaluated in one batched call (``EnsembleMLP``'s maths);
  gradients for the weights only when they require them (the actor step needs ∂Q/∂a only).
* :func:`relu_mlp_heads`: a ReLU trunk of ``nn.Linear`` layers followed by linear heads (SAC's
  actor: mean and log-std).
* :func:`tanh_gaussian_rsample`: a = tanh(μ + σ ε) and log π(a) from (μ, raw log σ, ε), with the
  log σ clamp; the same forward values as ``TanhGaussian.rsample_with_log_prob``.

The actor's forward values are bit-identical to the module code's; the critics' and all
gradients agree with it to float rounding (some kernels sum in a different order). None of these
supports double backward or ``torch.func`` transforms: the modules remain the reference and
serve those uses.

Each is registered in :mod:`rlgrad.kernels` against the reference it stands in for
(:func:`rlgrad.networks.mlp_heads`, ``EnsembleMLP.forward``,
:func:`rlgrad.distributions.squashed_gaussian_sample`), with the adapters at the end of this
module: the same signature as the reference, a ``supports`` predicate and random examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlgrad.distributions import _HALF_LOG_TWO_PI, squashed_gaussian_sample
from rlgrad.networks import EnsembleMLP, mlp, mlp_heads

_LOG_TWO = math.log(2.0)


def relu_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """∂/∂input of ReLU given its output: ``grad`` where ``output > 0``, else 0."""
    return torch.ops.aten.threshold_backward(grad, output, 0.0)


def tanh_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """∂/∂input of tanh given its output: ``grad · (1 − output²)``."""
    return torch.ops.aten.tanh_backward(grad, output)


class _EnsembleReLUMLP(torch.autograd.Function):
    """x (B, in) shared by n members; weights (n, in, out), biases (n, 1, out) → (n, B, out)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        depth = len(params) // 2
        weights, biases = params[:depth], params[depth:]
        h = x.expand(weights[0].shape[0], *x.shape)
        hidden = []
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            h = torch.baddbmm(b, h, w).relu_()
            hidden.append(h)
        w, b = weights[-1], biases[-1]
        if w.shape[-1] == 1:  # cheaper than a batched mat-vec through bmm
            out = torch.mul(h, w.transpose(1, 2)).sum(-1, keepdim=True).add_(b)
        else:
            out = torch.baddbmm(b, h, w)
        ctx.save_for_backward(x, *weights, *hidden)
        ctx.depth = depth
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        depth = ctx.depth
        saved = ctx.saved_tensors
        x, weights, hidden = saved[0], saved[1 : 1 + depth], saved[1 + depth :]
        needs = ctx.needs_input_grad
        grad_w: list[torch.Tensor | None] = [None] * depth
        grad_b: list[torch.Tensor | None] = [None] * depth
        inputs = [x.expand(weights[0].shape[0], *x.shape), *hidden]
        grad_x = None
        g = grad
        for layer in range(depth - 1, -1, -1):
            w, h_in = weights[layer], inputs[layer]
            vector = w.shape[-1] == 1
            if needs[1 + layer]:
                if vector:
                    grad_w[layer] = (h_in * g).sum(1).unsqueeze(-1)
                else:
                    grad_w[layer] = torch.bmm(h_in.transpose(1, 2), g)
            if needs[1 + depth + layer]:
                grad_b[layer] = g.sum(1, keepdim=True)
            if layer == 0:
                if needs[0]:
                    grad_x = torch.bmm(g, w.transpose(1, 2)).sum(0)
                break
            g = g * w.transpose(1, 2) if vector else torch.bmm(g, w.transpose(1, 2))
            g = relu_grad(g, h_in)
        return (grad_x, *grad_w, *grad_b)


def ensemble_mlp(x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``EnsembleMLP`` with ReLU: ``params`` = [W_1..W_L, b_1..b_L]; x (B, in) → (n, B, out)."""
    return _EnsembleReLUMLP.apply(x, *params)


class _ReLUMLPHeads(torch.autograd.Function):
    """x → ReLU(linear) × n_trunk → each head's linear output. Params in ``nn.Linear`` layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n_trunk: int, *params: torch.Tensor):  # type: ignore[override]
        h = x
        activations = [x]
        for i in range(n_trunk):
            h = torch.addmm(params[2 * i + 1], h, params[2 * i].t()).relu_()
            activations.append(h)
        heads = params[2 * n_trunk :]
        outputs = tuple(
            torch.addmm(heads[2 * j + 1], h, heads[2 * j].t()) for j in range(len(heads) // 2)
        )
        ctx.save_for_backward(*activations, *params)
        ctx.n_trunk = n_trunk
        return outputs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        n_trunk = ctx.n_trunk
        saved = ctx.saved_tensors
        activations, params = saved[: n_trunk + 1], saved[n_trunk + 1 :]
        needs = ctx.needs_input_grad[2:]
        out: list[torch.Tensor | None] = [None] * len(params)
        h = activations[-1]
        g_h = None
        for j, g in enumerate(grads):
            k = 2 * (n_trunk + j)
            if needs[k]:
                out[k] = torch.mm(g.t(), h)
            if needs[k + 1]:
                out[k + 1] = g.sum(0)
            g_h = torch.mm(g, params[k]) if g_h is None else torch.addmm(g_h, g, params[k])
        for i in range(n_trunk - 1, -1, -1):
            g = relu_grad(g_h, activations[i + 1])
            if needs[2 * i]:
                out[2 * i] = torch.mm(g.t(), activations[i])
            if needs[2 * i + 1]:
                out[2 * i + 1] = g.sum(0)
            if i > 0 or ctx.needs_input_grad[0]:
                g_h = torch.mm(g, params[2 * i])
        grad_x = g_h if ctx.needs_input_grad[0] else None
        return (grad_x, None, *out)


def relu_mlp_heads(
    x: torch.Tensor, trunk: Sequence[nn.Linear], heads: Sequence[nn.Linear]
) -> tuple[torch.Tensor, ...]:
    """ReLU(… ReLU(x W_1ᵀ + b_1) …) through ``trunk``, then each head's linear map of it."""
    params = [t for layer in (*trunk, *heads) for t in (layer.weight, layer.bias)]
    return _ReLUMLPHeads.apply(x, len(trunk), *params)


def relu_trunk(module: nn.Sequential) -> list[nn.Linear] | None:
    """The linear layers of ``Linear, ReLU, Linear, ReLU, …`` (each followed by a ReLU), or
    None when ``module`` has another shape (the caller then uses the module itself)."""
    layers = list(module)
    if len(layers) % 2 or not layers:
        return None
    linears = layers[0::2]
    if all(isinstance(m, nn.Linear) for m in linears) and all(
        type(m) is nn.ReLU for m in layers[1::2]
    ):
        return linears
    return None


class _TanhGaussianRsample(torch.autograd.Function):
    """(μ, r, ε) ↦ (tanh u, log π(tanh u)), u = μ + σ ε, σ = exp(clamp(r, lo, hi))."""

    @staticmethod
    def forward(ctx, mean, raw_log_std, eps, lo: float, hi: float):  # type: ignore[override]
        # The same operations, in the same order, as Actor.forward + TanhGaussian: equal values.
        std = raw_log_std.clamp(lo, hi).exp()
        u = mean + std * eps
        action = torch.tanh(u)
        z = (u - mean) / std
        log_prob = (-0.5 * z.pow(2) - std.log() - _HALF_LOG_TWO_PI).sum(-1) - (
            2.0 * (_LOG_TWO - u - F.softplus(-2.0 * u))
        ).sum(-1)
        ctx.save_for_backward(raw_log_std, std, eps, action)
        ctx.bounds = (lo, hi)
        return action, log_prob

    @staticmethod
    def backward(ctx, grad_action, grad_log_prob):  # type: ignore[override]
        raw_log_std, std, eps, action = ctx.saved_tensors
        lo, hi = ctx.bounds
        g_lp = grad_log_prob.unsqueeze(-1)
        # ∂a/∂u = 1 − a²; ∂ log π/∂u = 2a through −log(1 − tanh² u) (the Gaussian term's
        # dependence on u and μ cancels); ∂ log π/∂ log σ = −1; u = μ + σ ε.
        g_mean = grad_action * (1.0 - action * action) + 2.0 * action * g_lp
        g_log_std = g_mean * eps * std - g_lp
        inside = (raw_log_std >= lo) & (raw_log_std <= hi)
        return g_mean, g_log_std * inside, None, None, None


def tanh_gaussian_rsample(
    mean: torch.Tensor, raw_log_std: torch.Tensor, eps: torch.Tensor, lo: float, hi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, log π(a)) for a = tanh(μ + exp(clamp(r, lo, hi)) ε): a reparameterized sample."""
    return _TanhGaussianRsample.apply(mean, raw_log_std, eps, lo, hi)


# ----------------------------------------------------------------------------- registration
# Each stand-in with its reference's signature, what it supports, and random examples.

reference_mlp_heads = mlp_heads
reference_ensemble = EnsembleMLP.forward
reference_squashed_sample = squashed_gaussian_sample


def supports_always(*static: object) -> bool:
    return True


def supports_mlp_heads(trunk: nn.Sequential, heads: Sequence[nn.Module]) -> bool:
    """A trunk ``Linear, ReLU, …, Linear, ReLU`` and linear heads."""
    return relu_trunk(trunk) is not None and all(type(h) is nn.Linear for h in heads)


def fused_mlp_heads(
    trunk: nn.Sequential, heads: Sequence[nn.Linear], x: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    layers = relu_trunk(trunk)
    assert layers is not None
    return relu_mlp_heads(x, layers, heads)


def supports_ensemble(ensemble: EnsembleMLP) -> bool:
    """ReLU ensembles (the kernel's only activation)."""
    return type(ensemble.activation) is nn.ReLU


def fused_ensemble(
    ensemble: EnsembleMLP, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    if params is None:
        params = [*ensemble.weights, *ensemble.biases]
    return ensemble_mlp(x, params)


def fused_squashed_sample(
    mean: torch.Tensor,
    raw_log_std: torch.Tensor,
    eps: torch.Tensor,
    log_std_min: float,
    log_std_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return tanh_gaussian_rsample(mean, raw_log_std, eps, log_std_min, log_std_max)


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (), generator=generator))


def _double(module: nn.Module, generator: torch.Generator) -> nn.Module:
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
    return module


def example_mlp_heads(generator: torch.Generator) -> tuple[tuple, tuple]:
    n_in, width, out = (
        _randint(generator, 1, 9),
        _randint(generator, 2, 33),
        _randint(generator, 1, 5),
    )
    depth = _randint(generator, 1, 4)
    trunk = _double(mlp([n_in, *[width] * depth], output_activation=True), generator)
    heads = [_double(nn.Linear(width, out), generator) for _ in range(2)]
    x = torch.randn(_randint(generator, 1, 17), n_in, generator=generator, dtype=torch.float64)
    return (trunk, heads), (x.requires_grad_(),)


def example_ensemble(generator: torch.Generator) -> tuple[tuple, tuple]:
    n_in, width = _randint(generator, 1, 9), _randint(generator, 2, 33)
    sizes = [n_in, *[width] * _randint(generator, 1, 3), _randint(generator, 1, 3)]
    ensemble = _double(EnsembleMLP(_randint(generator, 1, 4), sizes), generator)
    x = torch.randn(_randint(generator, 1, 17), n_in, generator=generator, dtype=torch.float64)
    return (ensemble,), (x.requires_grad_(),)


def example_squashed_sample(generator: torch.Generator) -> tuple[tuple, tuple]:
    shape = (_randint(generator, 1, 17), _randint(generator, 1, 7))

    def randn(scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64) * scale

    # raw log σ spans the clamp bounds, so the clamp's zero gradient is exercised too.
    return (), (randn(1.0).requires_grad_(), randn(3.0).requires_grad_(), randn(1.0), -2.0, 1.0)
