"""Network building blocks shared by the agents."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


# Activation modules whose function PlainForward (and rlgrad.fused_ppo) call directly.
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
        self.steps: list[tuple[dict[str, torch.Tensor], None] | tuple[None, object]] = []
        for layer in layers:
            if type(layer) is nn.Linear:
                self.steps.append((layer._parameters, None))  # type: ignore[arg-type]
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
