"""rlgrad.kernels.sac and the learner's direct fused-Adam step: the same numbers as the module code
and ``torch.optim.Adam.step`` (values, not timings)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import filled_sac_agent
from torch import nn

from rlgrad.agents import sac
from rlgrad.config import LearnerConfig
from rlgrad.kernels.sac import ensemble_mlp, relu_mlp_heads, relu_trunk, tanh_gaussian_rsample
from rlgrad.learner import Learner
from rlgrad.networks import EnsembleMLP, mlp

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize(("n", "sizes"), [(2, [4, 32, 32, 1]), (3, [5, 16, 8, 16, 3])])
def test_ensemble_mlp_matches_the_module_in_values_and_all_gradients(n, sizes):
    torch.manual_seed(0)
    net = EnsembleMLP(n, sizes)
    params = [*net.weights, *net.biases]
    x = torch.randn(64, sizes[0], requires_grad=True)
    w_out = torch.randn(n, 64, sizes[-1])  # a loss that weighs every output differently

    reference = net(x, params)
    fused = ensemble_mlp(x, params)
    torch.testing.assert_close(fused, reference, **TOL)
    for g_fused, g_ref in zip(
        _grads((fused * w_out).sum(), [x, *params]),
        _grads((reference * w_out).sum(), [x, *params]),
        strict=True,
    ):
        torch.testing.assert_close(g_fused, g_ref, **TOL)


def test_ensemble_mlp_with_detached_weights_differentiates_the_input_only():
    torch.manual_seed(1)
    net = EnsembleMLP(2, [4, 32, 32, 1])
    x = torch.randn(16, 4, requires_grad=True)
    out = ensemble_mlp(x, net.detached_params())
    (g_x,) = torch.autograd.grad(out.min(0).values.sum(), x)
    (g_ref,) = torch.autograd.grad(net(x, net.detached_params()).min(0).values.sum(), x)
    torch.testing.assert_close(g_x, g_ref, **TOL)
    out = ensemble_mlp(x, net.detached_params())
    out.sum().backward()
    assert all(p.grad is None for p in net.parameters())


def _actor_pair(log_std_bias: float) -> tuple[sac.Actor, sac.Actor]:
    torch.manual_seed(2)
    actor = sac.Actor(3, 2, sac.Config(hidden_sizes=[32, 32]))
    with torch.no_grad():  # push some log-stds past the clamp, whose gradient is then zero
        actor.log_std.bias.fill_(log_std_bias)
    return actor, copy.deepcopy(actor)


# 2.5: σ clamped at exp(2). (Near the lower clamp, σ ≈ e^-20, the module path's gradient is
# float32 cancellation noise — (u − μ)/σ differentiated both ways — and the fused one exact.)
@pytest.mark.parametrize("log_std_bias", [0.0, 2.5, -4.0])
def test_actor_fused_sample_equals_the_distribution_path_to_the_bit_and_its_gradients(
    log_std_bias,
):
    fused_actor, ref_actor = _actor_pair(log_std_bias)
    obs = torch.randn(128, 3)
    alpha = 0.3
    torch.manual_seed(3)
    heads = (fused_actor.mean, fused_actor.log_std)
    mean, raw_log_std = relu_mlp_heads(obs, relu_trunk(fused_actor.trunk), heads)
    eps = torch.randn(mean.shape)
    bounds = (fused_actor.log_std_min, fused_actor.log_std_max)
    a_fused, lp_fused = tanh_gaussian_rsample(mean, raw_log_std, eps, *bounds)
    torch.manual_seed(3)
    a_ref, lp_ref = ref_actor(obs).rsample_with_log_prob()
    assert torch.equal(a_fused, a_ref) and torch.equal(lp_fused, lp_ref)

    # A loss using both outputs, like SAC's actor loss (Q stands in as a fixed function of a).
    def loss(a, lp):
        return (alpha * lp - (a.sin() * torch.tensor([1.0, -2.0])).sum(-1)).mean()

    fused_grads = _grads(loss(a_fused, lp_fused), list(fused_actor.parameters()))
    ref_grads = _grads(loss(a_ref, lp_ref), list(ref_actor.parameters()))
    for g_fused, g_ref in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(g_fused, g_ref, **TOL)


def test_tanh_gaussian_rsample_gradient_passes_the_log_std_clamp_inclusively():
    mean = torch.zeros(4, 1, requires_grad=True)
    raw = torch.tensor([[-3.0], [-2.0], [0.0], [1.5]], requires_grad=True)
    _, log_prob = tanh_gaussian_rsample(mean, raw, torch.zeros(4, 1), -2.0, 1.0)
    log_prob.sum().backward()
    # With ε = 0: ∂ log π / ∂ log σ = −1 inside [−2, 1] (bounds included), 0 outside.
    assert raw.grad.flatten().tolist() == [0.0, -1.0, -1.0, 0.0]


def test_relu_trunk_recognises_only_linear_relu_stacks():
    assert relu_trunk(mlp([3, 8, 8], output_activation=True)) is not None
    assert relu_trunk(mlp([3, 8, 8], output_activation=False)) is None
    assert relu_trunk(mlp([3, 8, 8], activation="tanh", output_activation=True)) is None


def test_relu_mlp_heads_input_gradient_matches_autograd():
    torch.manual_seed(4)
    trunk = mlp([5, 16, 16], output_activation=True)
    heads = [nn.Linear(16, 2), nn.Linear(16, 3)]
    x = torch.randn(32, 5, requires_grad=True)
    outs = relu_mlp_heads(x, relu_trunk(trunk), heads)
    refs = [head(trunk(x)) for head in heads]
    for out, ref in zip(outs, refs, strict=True):
        assert torch.equal(out, ref)
    (g_fused,) = torch.autograd.grad(outs[0].sum() + outs[1].pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(refs[0].sum() + refs[1].pow(2).sum(), x)
    torch.testing.assert_close(g_fused, g_ref, **TOL)


def _filled_agent(kernels: str = "auto") -> sac.Agent:
    return filled_sac_agent(LearnerConfig(device="cpu", kernels=kernels), seed=5)


def _updates(agent: sac.Agent, n: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    return [agent.update_once(agent.buffer.sample(64)) for _ in range(n)]


def test_sac_update_with_fused_paths_tracks_the_module_path():
    """Twenty updates through rlgrad.kernels.sac (learner.kernels=auto) and twenty through the
    references they stand in for (learner.kernels=reference), from one seed: the same losses
    and parameters up to float rounding."""
    fused, reference = _filled_agent("auto"), _filled_agent("reference")
    assert set(fused.learner.active_kernels.values()) == {"fused"}
    assert set(reference.learner.active_kernels.values()) == {"reference"}
    fused_metrics = _updates(fused, 20)
    ref_metrics = _updates(reference, 20)

    for got, want in zip(fused_metrics, ref_metrics, strict=True):
        for key in ("losses/critic", "losses/actor", "losses/alpha"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    for module in ("actor", "critic", "critic_target"):
        for p, q in zip(
            getattr(fused, module).parameters(),
            getattr(reference, module).parameters(),
            strict=True,
        ):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.log_alpha, reference.log_alpha, rtol=1e-5, atol=1e-6)


def test_learner_direct_fused_adam_step_equals_optimizer_step_exactly():
    """The learner's step and ``Adam.step`` on copies of one net: bit-equal parameters and
    optimiser state after several steps, and a state dict that the other can load."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    twin = copy.deepcopy(net)
    learner = Learner(LearnerConfig(device="cpu"))
    learner.add_optimizer("net", net.parameters(), lr=1e-2, eps=1e-5)
    reference = torch.optim.Adam(twin.parameters(), lr=1e-2, eps=1e-5, fused=True)
    for step in range(5):
        x = torch.randn(32, 4)
        learner.step("net", net(x).pow(2).mean())
        reference.zero_grad()
        twin(x).pow(2).mean().backward()
        reference.step()
        if step == 2:
            learner.set_lr("net", 3e-3)
            reference.param_groups[0]["lr"] = 3e-3
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    state, ref_state = learner.optimizers["net"].state_dict(), reference.state_dict()
    for k, v in ref_state["state"].items():
        for name, tensor in v.items():
            assert torch.equal(state["state"][k][name], tensor), name
    reference.load_state_dict(state)


def test_learner_falls_back_to_optimizer_step_when_a_parameter_has_no_gradient():
    torch.manual_seed(9)
    used, unused = nn.Linear(3, 1), nn.Linear(3, 1)
    learner = Learner(LearnerConfig(device="cpu"))
    learner.add_optimizer("net", [*used.parameters(), *unused.parameters()], lr=0.1)
    before = [p.detach().clone() for p in unused.parameters()]
    learner.step("net", used(torch.randn(8, 3)).sum())
    for b, p in zip(before, unused.parameters(), strict=True):
        assert torch.equal(b, p)
    assert all(len(learner.optimizers["net"].state[p]) == 0 for p in unused.parameters())
