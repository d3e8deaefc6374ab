"""Network building blocks shared by the agents."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rlgrad.distributions import Categorical, Gaussian
from rlgrad.torch_private import linear_parameters

if TYPE_CHECKING:
    from rlgrad.envs import EnvSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def mlp(
    sizes: Sequence[int], activation: str = "relu", output_activation: bool = False
) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them (and after the last
    one when ``output_activation``)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or output_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def mlp_heads(
    trunk: nn.Sequential, heads: Sequence[nn.Module], x: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Each head applied to ``trunk(x)``: a shared body with several linear outputs (SAC's actor:
    mean and log σ). The reference that ``rlgrad.kernels`` may replace by a fused stand-in."""
    h = trunk(x)
    return tuple(head(h) for head in heads)


# Activation modules whose function PlainForward (and rlgrad.kernels.ppo) call directly.
PLAIN_ACTIVATIONS: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
}


class PlainForward:
    """``layers(x)`` for an ``nn.Sequential`` of ``nn.Linear``, ``nn.Tanh`` and ``nn.ReLU``
    modules as plain function calls, without ``nn.Module``'s per-call machinery: for acting,
    once per env step on a batch of one, where that machinery costs as much as the arithmetic.

    Parameters are read from the layers' own parameter dicts at each call, so a moved or reloaded
    module is evaluated with its current tensors. Hooks on the layers do not run: use the module
    itself wherever something observes its forward (e.g. ``rlgrad.diagnostics.LinearTape``).
    """

    def __init__(self, layers: nn.Sequential):
        self.steps: list[tuple[Mapping[str, torch.Tensor], None] | tuple[None, object]] = []
        for layer in layers:
            if type(layer) is nn.Linear:
                self.steps.append((linear_parameters(layer), None))  # type: ignore[arg-type]
            elif type(layer) in PLAIN_ACTIVATIONS:
                self.steps.append((None, PLAIN_ACTIVATIONS[type(layer)]))
            else:
                raise TypeError(f"PlainForward: unsupported layer {type(layer).__name__}")

    @classmethod
    def supports(cls, layers: nn.Sequential) -> bool:
        return all(type(m) is nn.Linear or type(m) in PLAIN_ACTIVATIONS for m in layers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for params, activation in self.steps:
            if params is not None:
                x = F.linear(x, params["weight"], params["bias"])
            else:
                x = activation(x)  # type: ignore[operator]
        return x


class EnsembleMLP(nn.Module):
    """``n`` independent MLPs of the same shape evaluated in one batched call.

    Layer l holds weights W_l ∈ R^{n × in × out} and biases b_l ∈ R^{n × 1 × out}; an input
    x ∈ R^{B × in} is shared by all members, so the first layer is one broadcast matmul
    x @ W_1 → R^{n × B × out} and the later ones are ``baddbmm`` calls. Each member is
    initialised like ``nn.Linear`` (uniform in ±1/√in). Output: (n, B, sizes[-1]).

    ``forward(x, params=...)`` evaluates with other tensors in place of the parameters, e.g.
    detached ones, so that a loss can differentiate through the ensemble's input without
    computing gradients for its weights.
    """

    def __init__(self, n: int, sizes: Sequence[int], activation: str = "relu"):
        super().__init__()
        self.n = n
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(n, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, n_out).uniform_(-bound, bound)))
        self.activation = ACTIVATIONS[activation]()

    def forward(
        self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        if params is None:
            params = [*self.weights, *self.biases]
        depth = len(params) // 2
        weights, biases = params[:depth], params[depth:]
        h = torch.matmul(x, weights[0]) + biases[0]
        for w, b in zip(weights[1:], biases[1:], strict=True):
            h = torch.baddbmm(b, self.activation(h), w)
        return h

    def detached_params(self) -> list[torch.Tensor]:
        return [p.detach() for p in (*self.weights, *self.biases)]


# ---- the on-policy agents' networks (REINFORCE, PPO) ---------------------------------------


def layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias (as Stable-Baselines3 and CleanRL)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_head(
    sizes: list[int], activation: str, out_dim: int, out_gain: float, ortho: bool
) -> nn.Sequential:
    """Hidden layers of ``sizes`` (gain √2) then a linear output of ``out_dim`` (``out_gain``)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        linear = nn.Linear(n_in, n_out)
        layers += [layer_init(linear, math.sqrt(2)) if ortho else linear, ACTIVATIONS[activation]()]
    head = nn.Linear(sizes[-1], out_dim)
    layers.append(layer_init(head, out_gain) if ortho else head)
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """s ↦ N(μ(s), diag exp(log σ)²), log σ a state-independent parameter."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int],
        activation: str,
        log_std_init: float,
        ortho: bool,
    ):
        super().__init__()
        self.mean = mlp_head([obs_dim, *hidden], activation, act_dim, 0.01, ortho)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        self._acting_mean = PlainForward(self.mean) if PlainForward.supports(self.mean) else None

    def forward(self, obs: torch.Tensor) -> Gaussian:
        return Gaussian.from_log_std(self.mean(obs), self.log_std)

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """a = μ(s) + σ ε, ε ~ N(0, I): the value and random draw of ``self(obs).sample()``,
        without building the distribution, and through :class:`PlainForward` (acting is once
        per env step: its per-call cost counts)."""
        mean = self.mean_action(obs)
        return torch.randn_like(mean).mul_(self.log_std.exp()).add_(mean)

    @torch.no_grad()
    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """μ(s), the Gaussian's mode (deterministic acting), through :class:`PlainForward`."""
        return self._acting_mean(obs) if self._acting_mean is not None else self.mean(obs)


class SoftmaxPolicy(nn.Module):
    """s ↦ Categorical(softmax(l(s))) over ``n_actions`` actions: the on-policy agents' policy
    for a Discrete action space (logits head initialised with gain 0.01, so π starts near
    uniform, as SB3 and CleanRL)."""

    def __init__(
        self, obs_dim: int, n_actions: int, hidden: list[int], activation: str, ortho: bool
    ):
        super().__init__()
        self.logits = mlp_head([obs_dim, *hidden], activation, n_actions, 0.01, ortho)
        plain = PlainForward.supports(self.logits)
        self._acting_logits = PlainForward(self.logits) if plain else self.logits

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(self.logits(obs))

    @torch.no_grad()
    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        """An action index per state drawn from π(·|s), (B, 1) floats (Gumbel-max:
        argmax_a (l_a + g_a), g ~ Gumbel(0, 1), which is a draw from softmax(l))."""
        logits = self._acting_logits(obs)
        gumbel = -torch.empty_like(logits).exponential_().log()
        return (logits + gumbel).argmax(-1, keepdim=True).to(logits.dtype)

    @torch.no_grad()
    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """argmax_a π(a|s), the mode (deterministic acting), (B, 1) floats."""
        return self._acting_logits(obs).argmax(-1, keepdim=True).to(obs.dtype)


def make_policy(
    spec: EnvSpec,
    hidden: list[int],
    activation: str,
    log_std_init: float,
    ortho: bool,
) -> GaussianPolicy | SoftmaxPolicy:
    """The on-policy agents' policy for ``spec``: Gaussian for Box actions, softmax over the
    actions for a Discrete space (``log_std_init`` is then unused)."""
    if spec.discrete:
        return SoftmaxPolicy(spec.obs_dim, spec.n_actions, hidden, activation, ortho)
    return GaussianPolicy(spec.obs_dim, spec.act_dim, hidden, activation, log_std_init, ortho)


class ValueFunction(nn.Module):
    """s ↦ V(s), a scalar per state: (B, obs_dim) ↦ (B,)."""

    def __init__(self, obs_dim: int, hidden: list[int], activation: str, ortho: bool):
        super().__init__()
        self.net = mlp_head([obs_dim, *hidden], activation, 1, 1.0, ortho)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)
