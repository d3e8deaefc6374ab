"""Every fused kernel against the reference it is registered for: equal values and gradients on
random shapes, so that an edit to a reference without its stand-in fails here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rlgrad.agents  # noqa: F401  (agents register their own kernels on import)
from rlgrad import kernels
from rlgrad.agents import AGENT_NAMES, agent_spec

for _name in AGENT_NAMES:
    agent_spec(_name)  # imports each agent module, and with it its registrations

REGISTERED = {k.name: k for k in kernels.registered()}


def _tensors(x: object) -> list[torch.Tensor]:
    """Every tensor in a (nested) output: a tensor, a tuple/list, or a dict of them."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _leaves(static: tuple, inputs: tuple) -> list[torch.Tensor]:
    """What gradients are taken for: input tensors that require them and module parameters."""
    leaves = [t for t in _tensors(inputs) if t.requires_grad]
    for s in static:
        modules = s if isinstance(s, (list, tuple)) else [s]
        for m in modules:
            if isinstance(m, nn.Module):
                leaves += [p for p in m.parameters() if p.requires_grad]
    return leaves


def test_the_shipped_kernels_are_registered():
    assert {"mlp_heads", "ensemble_mlp", "squashed_gaussian_sample", "ppo_loss"} <= set(REGISTERED)


@pytest.mark.parametrize("name", sorted(REGISTERED))
@pytest.mark.parametrize("seed", range(6))
def test_fused_kernel_equals_its_reference_in_values_and_gradients(name: str, seed: int):
    kernel = REGISTERED[name]
    generator = torch.Generator().manual_seed(seed)
    static, inputs = kernel.example(generator)
    assert kernel.supports(*static), f"{name}: its own example is not supported"
    ref_out = _tensors(kernel.reference(*static, *inputs))
    fused_out = _tensors(kernel.fused(*static, *inputs))
    assert len(ref_out) == len(fused_out)
    for got, want in zip(fused_out, ref_out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)

    # Gradients of a random linear function of every differentiable output.
    leaves = _leaves(static, inputs)
    assert leaves, f"{name}: the example has nothing to differentiate"
    weights = [
        torch.randn(t.shape, generator=generator, dtype=t.dtype) if t.requires_grad else None
        for t in ref_out
    ]

    def grads(outputs: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        total = sum((w * o).sum() for w, o in zip(weights, outputs, strict=True) if w is not None)
        return torch.autograd.grad(total, leaves, allow_unused=True)

    ref_out = _tensors(kernel.reference(*static, *inputs))
    fused_out = _tensors(kernel.fused(*static, *inputs))
    for got, want in zip(grads(fused_out), grads(ref_out), strict=True):
        if want is None or got is None:
            assert (got is None or not got.any()) and (want is None or not want.any())
            continue
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_reference_mode_binds_the_reference_and_fused_mode_refuses_unsupported_networks():
    from rlgrad.networks import EnsembleMLP

    relu, tanh = EnsembleMLP(2, [3, 8, 1]), EnsembleMLP(2, [3, 8, 1], activation="tanh")
    assert kernels.bind(EnsembleMLP.forward, "auto", relu).kind == "fused"
    assert kernels.bind(EnsembleMLP.forward, "reference", relu).kind == "reference"
    assert kernels.bind(EnsembleMLP.forward, "auto", tanh).kind == "reference"
    with pytest.raises(kernels.KernelError, match="learner.kernels=auto"):
        kernels.bind(EnsembleMLP.forward, "fused", tanh)
    assert kernels.bind(EnsembleMLP.forward, "auto", relu, compiled=True).kind == "reference"


def test_an_edited_reference_fails_the_equivalence_check(monkeypatch):
    """The check can fail: a reference changed without its stand-in no longer matches."""
    kernel = REGISTERED["squashed_gaussian_sample"]
    static, inputs = kernel.example(torch.Generator().manual_seed(0))
    mean, raw, eps, lo, hi = inputs
    edited = kernel.reference(mean, raw, eps, lo - 1.0, hi)  # e.g. a changed log-std clamp
    fused = kernel.fused(*inputs)
    assert not all(torch.allclose(a, b) for a, b in zip(edited, fused, strict=True))
