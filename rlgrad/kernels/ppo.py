"""PPO's minibatch loss as one autograd node with a hand-written backward pass.

At PPO's default sizes (minibatches of 64, two 64-64 MLPs) a minibatch step is a few dozen
operations on tensors of a few thousand numbers, and on CPU each costs more in dispatch, autograd
bookkeeping and allocation than in arithmetic: the module code builds ~40 graph nodes per step.
:func:`fused_ppo_loss` stands in for the reference ``ppo_loss`` of ``rlgrad.agents.ppo`` (it is
registered there, see :mod:`rlgrad.kernels`), with the same signature, for a
:class:`~rlgrad.networks.GaussianPolicy` and a :class:`~rlgrad.networks.ValueFunction` whose MLPs
are plain tanh or ReLU stacks (:func:`supports`). It computes the same loss and its gradients in
plain tensor calls:

    z = (a − μ(s)) e^{−log σ},  log π(a|s) = −½ Σ_j z_j² − Σ_j log σ_j − (d/2) log 2π
    ρ = exp(log π − log π_old),  L_clip = −mean min(ρ Â, clip(ρ, 1 ± ε) Â)
    L_V = mean (R − V̂)²,  V̂ = V(s) or V_old + clip(V(s) − V_old, ±ε_V)
    H = Σ_j log σ_j + d (½ + ½ log 2π)  (the same for every state)
    loss = L_clip + c_V L_V − c_H H

Backward, with g = ∂/∂loss and B the minibatch size: ∂L_clip/∂ρ_i = −Â_i 1[ρ_i Â_i ≤
clip(ρ_i) Â_i] / B (the minimum is ρÂ inside the clip range, where both terms are equal, and on
the side of it where the unclipped term is the smaller; elsewhere the clip holds and passes no
gradient); ∂ log π_i/∂μ_i = z_i e^{−log σ}; ∂ log π_i/∂ log σ_j = z_ij² − 1; then each MLP's
layers backwards (tanh' = 1 − h², ReLU' = 1[h > 0]).

Values and gradients agree with the reference to float rounding (tests/test_fused_ppo.py, and
:func:`example` for tests/test_kernels.py). No double backward and no ``torch.func``
transforms: the diagnostics use the modules.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from rlgrad.distributions import _HALF_LOG_TWO_PI
from rlgrad.kernels.sac import relu_grad, tanh_grad
from rlgrad.networks import PLAIN_ACTIVATIONS, GaussianPolicy, ValueFunction

# ∂/∂input of each activation given its output, for the activations PlainForward calls.
_ACTIVATION_GRADS = {nn.Tanh: tanh_grad, nn.ReLU: relu_grad}

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def plain_mlp_layers(layers: nn.Sequential) -> tuple[list[nn.Linear], type[nn.Module]] | None:
    """The ``nn.Linear`` layers of ``Linear, act, Linear, act, …, Linear`` and the activation's
    type (one of tanh and ReLU for all), or None when ``layers`` has another shape (the
    reference then)."""
    modules = list(layers)
    linears, activations = modules[0::2], modules[1::2]
    if len(linears) != len(activations) + 1 or any(type(m) is not nn.Linear for m in linears):
        return None
    kinds = {type(m) for m in activations} or {nn.Tanh}  # one linear layer: either will do
    if len(kinds) > 1 or not kinds <= _ACTIVATION_GRADS.keys():
        return None
    return linears, kinds.pop()  # type: ignore[return-value]


def _forward(
    x: torch.Tensor, layers: Layers, activation: type[nn.Module]
) -> tuple[torch.Tensor, list]:
    """Output and the input of every layer (the activations the backward pass needs)."""
    act = PLAIN_ACTIVATIONS[activation]
    inputs = [x]
    h = x
    for weight, bias in layers[:-1]:
        h = act(torch.addmm(bias, h, weight.t()))
        inputs.append(h)
    weight, bias = layers[-1]
    return torch.addmm(bias, h, weight.t()), inputs


def _backward(
    grad: torch.Tensor, layers: Layers, inputs: list, activation: type[nn.Module]
) -> list[torch.Tensor]:
    """[∂W_1, ∂b_1, …, ∂W_L, ∂b_L] from ∂/∂output (rows: samples)."""
    act_grad = _ACTIVATION_GRADS[activation]
    grads: list[torch.Tensor] = []
    for layer in range(len(layers) - 1, -1, -1):
        weight, h_in = layers[layer][0], inputs[layer]
        grads += [grad.sum(0), grad.t().mm(h_in)]  # reversed below: bias, weight
        if layer == 0:
            break
        grad = act_grad(grad.mm(weight), h_in)
    return grads[::-1]  # weight, bias per layer, first layer first


class _PPOMinibatchLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        data: tuple[torch.Tensor, ...],
        options: tuple,
        n_policy: int,
        log_std: torch.Tensor,
        *params: torch.Tensor,
    ):
        obs, actions, old_log_prob, old_values, advantages, returns = data
        clip, clip_vf, vf_coef, ent_coef, normalize, activation = options
        flat_policy, flat_value = params[: 2 * n_policy], params[2 * n_policy :]
        policy_layers = list(zip(flat_policy[0::2], flat_policy[1::2], strict=True))
        value_layers = list(zip(flat_value[0::2], flat_value[1::2], strict=True))
        n, d = actions.shape

        if normalize and n > 1:
            std, mean = torch.std_mean(advantages)
            advantages = (advantages - mean) / (std + 1e-8)
        mean, policy_inputs = _forward(obs, policy_layers, activation)
        inv_std = torch.exp(-log_std)
        z = (actions - mean) * inv_std
        log_std_sum = log_std.sum()
        log_prob = -0.5 * z.pow(2).sum(-1) - (log_std_sum + d * _HALF_LOG_TWO_PI)
        log_ratio = log_prob - old_log_prob
        ratio = log_ratio.exp()
        unclipped = ratio * advantages
        clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
        pg_loss = -torch.minimum(unclipped, clipped).mean()

        values, value_inputs = _forward(obs, value_layers, activation)
        values = values.squeeze(-1)
        if clip_vf is not None:
            delta = values - old_values
            values = old_values + delta.clamp(-clip_vf, clip_vf)
        residual = values - returns
        v_loss = residual.pow(2).mean()
        entropy = log_std_sum + d * (0.5 + _HALF_LOG_TWO_PI)
        loss = pg_loss + vf_coef * v_loss
        if ent_coef:
            loss = loss - ent_coef * entropy

        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip).float().mean()

        # ∂L_clip/∂ρ up to the factor g/B: −Â where min(ρÂ, clip(ρ)Â) is ρÂ (ρ inside the clip
        # range, or outside it on the side that lowers the objective), 0 where the clip holds.
        d_log_prob = torch.where(unclipped <= clipped, -advantages * ratio, 0.0)
        d_values = residual * 2.0  # × g·c_V/B in backward
        if clip_vf is not None:
            d_values = d_values * ((delta >= -clip_vf) & (delta <= clip_vf)).to(delta.dtype)
        ctx.save_for_backward(z, inv_std, d_log_prob, d_values, *policy_inputs, *value_inputs)
        ctx.layers = (policy_layers, value_layers)
        ctx.meta = (n, ent_coef, vf_coef, activation)
        stats = (pg_loss.detach(), v_loss.detach(), entropy.detach(), approx_kl, clip_fraction)
        ctx.mark_non_differentiable(*stats)
        return (loss, *stats)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *unused: torch.Tensor):  # type: ignore[override]
        policy_layers, value_layers = ctx.layers
        n, ent_coef, vf_coef, activation = ctx.meta
        saved = ctx.saved_tensors
        z, inv_std, d_log_prob, d_values = saved[:4]
        policy_inputs = list(saved[4 : 4 + len(policy_layers)])
        value_inputs = list(saved[4 + len(policy_layers) :])

        d_log_prob = d_log_prob * (grad / n)  # (B,)
        d_mean = d_log_prob.unsqueeze(-1) * z * inv_std  # ∂ log π/∂μ = z e^{−log σ}
        d_log_std = (d_log_prob.unsqueeze(-1) * (z * z - 1.0)).sum(0) - ent_coef * grad
        policy_grads = _backward(d_mean, policy_layers, policy_inputs, activation)
        d_v = (d_values * (grad * vf_coef / n)).unsqueeze(-1)
        value_grads = _backward(d_v, value_layers, value_inputs, activation)
        return (None, None, None, d_log_std, *policy_grads, *value_grads)


@functools.lru_cache(maxsize=16)
def _fused_layers(
    policy: nn.Module, value: nn.Module
) -> tuple[list[nn.Linear], list[nn.Linear], type[nn.Module]] | None:
    """(policy MLP's layers, value MLP's layers, their common activation), or None when this
    kernel does not cover the two networks. Cached per pair of modules (looked up at every
    minibatch; a network's layers do not change after it is built)."""
    if type(policy) is not GaussianPolicy or type(value) is not ValueFunction:
        return None
    policy_mlp, value_mlp = plain_mlp_layers(policy.mean), plain_mlp_layers(value.net)
    if policy_mlp is None or value_mlp is None or policy_mlp[1] is not value_mlp[1]:
        return None
    return policy_mlp[0], value_mlp[0], policy_mlp[1]


def supports(policy: nn.Module, value: nn.Module, options: Any) -> bool:
    """A :class:`GaussianPolicy` and a :class:`ValueFunction` whose MLPs are ``Linear, act, …,
    Linear`` with one activation, tanh or ReLU, for both (any options)."""
    return _fused_layers(policy, value) is not None


def fused_ppo_loss(
    policy: GaussianPolicy,
    value: ValueFunction,
    options: Any,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_log_prob: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``rlgrad.agents.ppo.ppo_loss`` (the loss and its detached parts) as one autograd node;
    ``options`` is its ``PPOLossOptions``."""
    layers = _fused_layers(policy, value)
    assert layers is not None, "fused_ppo_loss: unsupported networks (see supports)"
    policy_layers, value_layers, activation = layers
    params = [p for layer in (*policy_layers, *value_layers) for p in (layer.weight, layer.bias)]
    data = (obs, actions, old_log_prob, old_values, advantages, returns)
    flags = (
        options.clip_range,
        options.clip_range_vf,
        options.vf_coef,
        options.ent_coef,
        options.normalize_advantage,
        activation,
    )
    loss, pg, v_loss, entropy, kl, clip_fraction = _PPOMinibatchLoss.apply(
        data, flags, len(policy_layers), policy.log_std, *params
    )
    return loss, {
        "policy": pg,
        "value": v_loss,
        "entropy": entropy,
        "approx_kl": kl,
        "clip_fraction": clip_fraction,
    }


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (), generator=generator))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def example(generator: torch.Generator) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Random float64 networks of small random sizes (tanh or ReLU), options and a minibatch
    whose π_old and V_old are off the current ones, so that both clips are exercised."""
    from rlgrad.agents.ppo import PPOLossOptions  # the agent imports this module

    obs_dim, act_dim, n = (
        _randint(generator, 1, 6),
        _randint(generator, 1, 4),
        _randint(generator, 2, 33),
    )
    hidden = [_randint(generator, 2, 17) for _ in range(_randint(generator, 1, 4))]
    activation = ("tanh", "relu")[_randint(generator, 0, 2)]
    policy = GaussianPolicy(obs_dim, act_dim, hidden, activation, 0.0, ortho=False).double()
    value = ValueFunction(obs_dim, hidden, activation, ortho=False).double()
    with torch.no_grad():
        for p in (*policy.parameters(), *value.parameters()):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
    options = PPOLossOptions(
        clip_range=_uniform(generator, 0.05, 0.3),
        clip_range_vf=(None, _uniform(generator, 0.05, 0.5))[_randint(generator, 0, 2)],
        vf_coef=_uniform(generator, 0.1, 1.0),
        ent_coef=(0.0, _uniform(generator, 0.0, 0.1))[_randint(generator, 0, 2)],
        normalize_advantage=bool(_randint(generator, 0, 2)),
    )

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    obs, actions = randn(n, obs_dim), randn(n, act_dim) * 0.5
    with torch.no_grad():
        old_log_prob = policy(obs).log_prob(actions) + randn(n) * 0.3
        old_values = value(obs) + randn(n) * 0.3
    # The gradients flow to the networks' parameters; the minibatch is data.
    return (policy, value, options), (obs, actions, old_log_prob, old_values, randn(n), randn(n))
