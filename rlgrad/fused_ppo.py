"""PPO's minibatch loss as one autograd node with a hand-written backward pass.

At PPO's default sizes (minibatches of 64, two 64-64 MLPs) a minibatch step is a few dozen
operations on tensors of a few thousand numbers, and on CPU each costs more in dispatch, autograd
bookkeeping and allocation than in arithmetic: the module code builds ~40 graph nodes per step.
:func:`ppo_minibatch_loss` computes the same loss (``rlgrad.agents.ppo``'s ``minibatch_loss``,
which stays the reference and the path for every case this one does not cover) and its
gradients in plain tensor calls:

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

Values and gradients agree with the module code to float rounding (tests/test_fused_ppo.py).
No double backward and no ``torch.func`` transforms: the diagnostics use the modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlgrad.distributions import _HALF_LOG_TWO_PI
from rlgrad.fused import relu_grad, tanh_grad
from rlgrad.networks import PLAIN_ACTIVATIONS

# ∂/∂input of each activation given its output, for the activations PlainForward calls.
_ACTIVATION_GRADS = {nn.Tanh: tanh_grad, nn.ReLU: relu_grad}

Layers = list[tuple[torch.Tensor, torch.Tensor]]


def plain_mlp_layers(layers: nn.Sequential) -> tuple[list[nn.Linear], type[nn.Module]] | None:
    """The ``nn.Linear`` layers of ``Linear, act, Linear, act, …, Linear`` and the activation's
    type (one of tanh and ReLU for all), or None when ``layers`` has another shape (the module
    path then)."""
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


def ppo_minibatch_loss(
    data: Sequence[torch.Tensor],
    policy_layers: Sequence[nn.Linear],
    log_std: torch.Tensor,
    value_layers: Sequence[nn.Linear],
    activation: type[nn.Module],
    clip_range: float,
    clip_range_vf: float | None,
    vf_coef: float,
    ent_coef: float,
    normalize_advantage: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss on one minibatch ``data`` = (obs, actions, log π_old, V_old, Â, R) and its
    detached parts, as ``minibatch_loss`` returns them."""
    params = [p for layer in (*policy_layers, *value_layers) for p in (layer.weight, layer.bias)]
    options = (clip_range, clip_range_vf, vf_coef, ent_coef, normalize_advantage, activation)
    loss, pg, value, entropy, kl, clip_fraction = _PPOMinibatchLoss.apply(
        tuple(data), options, len(policy_layers), log_std, *params
    )
    return loss, {
        "policy": pg,
        "value": value,
        "entropy": entropy,
        "approx_kl": kl,
        "clip_fraction": clip_fraction,
    }
