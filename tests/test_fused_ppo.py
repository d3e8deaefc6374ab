"""PPO's fused minibatch loss (rlgrad.fused_ppo) against the module code it stands in for."""

from __future__ import annotations

import copy

import pytest
import torch

from rlgrad.agents.ppo import Agent, Config
from rlgrad.config import LearnerConfig
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner

CASES = [
    ({}, 1),
    ({}, 3),
    ({"activation": "relu"}, 2),
    ({"clip_range_vf": 0.2, "ent_coef": 0.01}, 1),
    ({"normalize_advantage": False, "hidden_sizes": [32]}, 3),
    ({"hidden_sizes": [16, 16, 16], "clip_range": 0.1, "vf_coef": 1.0}, 2),
]


def _agent_and_minibatch(overrides: dict, act_dim: int, n: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    agent = Agent(Config(**overrides), EnvSpec(obs_dim=4, act_dim=act_dim), Learner(), n_envs=1)
    obs, actions = torch.randn(n, 4), torch.randn(n, act_dim) * 0.5
    with torch.no_grad():  # π_old and V_old off the current ones: clips on both sides are hit
        old_log_prob = agent.policy(obs).log_prob(actions) + torch.randn(n) * 0.3
        old_values = agent.value(obs) + torch.randn(n) * 0.3
    return agent, (obs, actions, old_log_prob, old_values, torch.randn(n), torch.randn(n))


@pytest.mark.parametrize(("overrides", "act_dim"), CASES)
def test_fused_loss_stats_and_gradients_equal_the_module_code(overrides, act_dim):
    agent, minibatch = _agent_and_minibatch(overrides, act_dim)
    assert agent.fused_layers is not None
    params = [*agent.policy.parameters(), *agent.value.parameters()]
    loss, stats = agent.minibatch_loss(*minibatch)
    fused_loss, fused_stats = agent.fused_minibatch_loss(minibatch)
    assert fused_loss.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    assert fused_stats.keys() == stats.keys()
    for key in stats:
        assert fused_stats[key].item() == pytest.approx(stats[key].item(), rel=1e-6, abs=1e-7)
    for expected, got in zip(
        torch.autograd.grad(loss, params), torch.autograd.grad(fused_loss, params), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The clips were exercised: some ratios outside 1 ± ε.
    assert 0.0 < stats["clip_fraction"].item() < 1.0


def test_whole_update_takes_the_same_steps_on_both_paths():
    agent, _ = _agent_and_minibatch({"n_steps": 256, "batch_size": 32, "n_epochs": 3}, 2)
    for _ in range(256):
        obs = torch.randn(1, 4)
        agent.observe(
            obs,
            agent.act(obs, 0),
            torch.randn(1),
            torch.randn(1, 4),
            torch.rand(1) < 0.02,
            torch.zeros(1, dtype=torch.bool),
        )
    module_path = copy.deepcopy(agent)
    module_path.fused_layers = None
    torch.manual_seed(5)
    fused_metrics = agent.update(256)
    torch.manual_seed(5)
    module_metrics = module_path.update(256)
    for key, value in module_metrics.items():
        assert fused_metrics[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    pairs = zip(agent.policy.parameters(), module_path.policy.parameters(), strict=True)
    for got, expected in pairs:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "learner", "fused"),
    [
        ({}, {}, True),
        ({"activation": "relu"}, {}, True),
        ({"activation": "elu"}, {}, False),  # no hand-written ELU: the module path
        ({}, {"compile": True}, False),  # torch.compile takes the module code
    ],
)
def test_fused_path_is_taken_only_where_it_applies(overrides, learner, fused):
    agent = Agent(
        Config(**overrides), EnvSpec(obs_dim=3, act_dim=1), Learner(LearnerConfig(**learner)), 1
    )
    assert (agent.fused_layers is not None) == fused
