"""PPO's fused minibatch loss (rlgrad.kernels.ppo) against the reference ``ppo_loss`` it stands
in for, and the agent's choice between them (``learner.kernels``)."""

from __future__ import annotations

import pytest
import torch

from rlgrad import kernels
from rlgrad.agents.ppo import Agent, Config, ppo_loss
from rlgrad.config import LearnerConfig
from rlgrad.envs import EnvSpec
from rlgrad.kernels import ppo as fused
from rlgrad.learner import Learner

CASES = [
    ({}, 1),
    ({}, 3),
    ({"activation": "relu"}, 2),
    ({"clip_range_vf": 0.2, "ent_coef": 0.01}, 1),
    ({"normalize_advantage": False, "hidden_sizes": [32]}, 3),
    ({"hidden_sizes": [16, 16, 16], "clip_range": 0.1, "vf_coef": 1.0}, 2),
]


def _agent_and_minibatch(overrides: dict, act_dim: int, n: int = 64, seed: int = 0, **learner):
    torch.manual_seed(seed)
    agent = Agent(
        Config(**overrides),
        EnvSpec(obs_dim=4, act_dim=act_dim),
        Learner(LearnerConfig(**learner)),
        n_envs=1,
    )
    obs, actions = torch.randn(n, 4), torch.randn(n, act_dim) * 0.5
    with torch.no_grad():  # π_old and V_old off the current ones: clips on both sides are hit
        old_log_prob = agent.policy(obs).log_prob(actions) + torch.randn(n) * 0.3
        old_values = agent.value(obs) + torch.randn(n) * 0.3
    return agent, (obs, actions, old_log_prob, old_values, torch.randn(n), torch.randn(n))


def _assert_same_loss(static, inputs, rtol: float, atol: float, grad_rtol: float, grad_atol):
    policy, value, _ = static
    params = [*policy.parameters(), *value.parameters()]
    loss, stats = ppo_loss(*static, *inputs)
    fused_loss, fused_stats = fused.fused_ppo_loss(*static, *inputs)
    assert fused_loss.item() == pytest.approx(loss.item(), rel=rtol, abs=atol)
    assert fused_stats.keys() == stats.keys()
    for key in stats:
        assert fused_stats[key].item() == pytest.approx(stats[key].item(), rel=rtol, abs=atol)
        assert not fused_stats[key].requires_grad
    for expected, got in zip(
        torch.autograd.grad(loss, params), torch.autograd.grad(fused_loss, params), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=grad_rtol, atol=grad_atol)
    return stats


@pytest.mark.parametrize(("overrides", "act_dim"), CASES)
def test_fused_loss_stats_and_gradients_equal_the_reference(overrides, act_dim):
    agent, minibatch = _agent_and_minibatch(overrides, act_dim)
    assert agent.minibatch_loss.kind == "fused"  # what the agent trains with
    static = (agent.policy, agent.value, agent.loss_options)
    assert fused.supports(*static)
    stats = _assert_same_loss(static, minibatch, 1e-6, 1e-7, 1e-5, 1e-6)
    # The clips were exercised: some ratios outside 1 ± ε.
    assert 0.0 < stats["clip_fraction"].item() < 1.0
    # The bound kernel is the fused function with the agent's networks and options.
    loss, _ = agent.minibatch_loss(*minibatch)
    assert loss.item() == fused.fused_ppo_loss(*static, *minibatch)[0].item()


@pytest.mark.parametrize("seed", range(8))
def test_fused_loss_equals_the_reference_on_random_float64_examples(seed):
    """The registered example: random sizes, activations, options, in float64."""
    static, inputs = fused.example(torch.Generator().manual_seed(seed))
    assert fused.supports(*static)
    _assert_same_loss(static, inputs, 1e-10, 1e-12, 1e-9, 1e-11)


def test_ppo_loss_is_registered_with_its_fused_stand_in():
    kernel = kernels.kernel_for(ppo_loss)
    assert kernel is not None and kernel.name == "ppo_loss"
    assert kernel.fused is fused.fused_ppo_loss and kernel.supports is fused.supports
    assert kernel.example is fused.example


def _filled_agent(kernel_mode: str) -> Agent:
    cfg = {"n_steps": 256, "batch_size": 32, "n_epochs": 3, "clip_range_vf": 0.3}
    agent, _ = _agent_and_minibatch(cfg, 2, kernels=kernel_mode)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    for _ in range(256):
        obs = torch.randn(1, 4, generator=gen)
        agent.observe(
            obs,
            agent.act(obs, 0),
            torch.randn(1, generator=gen),
            torch.randn(1, 4, generator=gen),
            torch.rand(1, generator=gen) < 0.02,
            torch.zeros(1, dtype=torch.bool),
        )
    return agent


def test_whole_update_takes_the_same_steps_on_both_paths():
    fused_agent, reference_agent = _filled_agent("auto"), _filled_agent("reference")
    assert fused_agent.learner.active_kernels == {"ppo_loss": "fused"}
    assert reference_agent.learner.active_kernels == {"ppo_loss": "reference"}
    assert reference_agent.minibatch_loss.fn is ppo_loss
    for a, b in zip(fused_agent.buffer._fields, reference_agent.buffer._fields, strict=True):
        assert torch.equal(a, b)  # the same rollout
    torch.manual_seed(5)
    fused_metrics = fused_agent.update(256)
    torch.manual_seed(5)
    reference_metrics = reference_agent.update(256)
    assert fused_metrics.keys() == reference_metrics.keys()
    for key, value in reference_metrics.items():
        assert fused_metrics[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    for module in ("policy", "value"):
        pairs = zip(
            getattr(fused_agent, module).parameters(),
            getattr(reference_agent, module).parameters(),
            strict=True,
        )
        for got, expected in pairs:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "learner", "kind"),
    [
        ({}, {}, "fused"),
        ({"activation": "relu"}, {}, "fused"),
        ({"activation": "elu"}, {}, "reference"),  # no hand-written ELU: the reference
        ({}, {"compile": True}, "reference"),  # torch.compile takes the reference
        ({}, {"kernels": "reference"}, "reference"),
        ({}, {"kernels": "fused"}, "fused"),
    ],
)
def test_fused_path_is_taken_only_where_it_applies(overrides, learner, kind):
    agent = Agent(
        Config(**overrides), EnvSpec(obs_dim=3, act_dim=1), Learner(LearnerConfig(**learner)), 1
    )
    assert agent.learner.active_kernels == {"ppo_loss": kind}
    assert fused.supports(agent.policy, agent.value, agent.loss_options) == (
        overrides.get("activation") != "elu"
    )


def test_kernels_fused_refuses_a_network_it_does_not_cover():
    learner = Learner(LearnerConfig(kernels="fused"))
    with pytest.raises(kernels.KernelError, match="ppo_loss"):
        Agent(Config(activation="elu"), EnvSpec(obs_dim=3, act_dim=1), learner, 1)
