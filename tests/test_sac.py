"""SAC: a learning check on a tiny task, and the actor losses' gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlgrad.agents.sac import Agent, Config
from rlgrad.config import validate
from rlgrad.envs import EnvSpec, make_env
from rlgrad.learner import Learner
from rlgrad.runner import evaluate, train

POINT_MASS = {
    "agent": {"name": "sac", "hidden_sizes": [64, 64], "learning_starts": 200, "batch_size": 64},
    "env": {"id": "rlgrad/PointMass-v0"},
    "total_steps": 2000,
    "eval": {"interval": 0, "episodes": 10},
    "logging": {"wandb": "disabled", "tensorboard": False},
    "learner": {"torch_threads": 1},
}
RANDOM_POLICY_FAILS_BELOW = -8.0


class UniformRandomPolicy:
    def act(self, obs: torch.Tensor, global_step: int = 0) -> torch.Tensor:
        return torch.rand(obs.shape[0], 1) * 2 - 1

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.act(obs)


@pytest.mark.slow
def test_sac_learns_point_mass_that_random_policy_fails(tmp_path):
    cfg = validate(POINT_MASS)
    envs = make_env(cfg.env, seed=123, n_envs=10)
    torch.manual_seed(0)
    random_returns = evaluate(UniformRandomPolicy(), envs, torch.device("cpu"), 123, True, 0)
    assert random_returns.mean() < RANDOM_POLICY_FAILS_BELOW

    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.eval_return_mean > -5.0, result


def _agent(estimator: str) -> Agent:
    torch.manual_seed(0)
    cfg = Config(hidden_sizes=[16], actor_estimator=estimator, score_samples=4)
    return Agent(cfg, EnvSpec(obs_dim=3, act_dim=2), Learner(), n_envs=1)


def test_pathwise_actor_loss_leaves_critic_weights_without_gradient():
    agent = _agent("pathwise")
    obs = torch.randn(8, 3)
    policy = agent.policy(obs)
    objective = agent.actor_objective(obs, torch.tensor(0.2))
    loss, _ = agent.estimator.loss(policy, agent.estimator.draw(policy), objective)
    loss.backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())


def test_score_actor_loss_matches_hand_written_estimator():
    """∇ of the surrogate = mean_{k,b} [(h_kb − b_kb + α) ∇ log π(a_kb|s_b)], b the LOO mean."""
    agent = _agent("score")
    alpha = torch.tensor(0.3)
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    policy = agent.policy(obs)
    objective = agent.actor_objective(obs, alpha)
    loss, _ = agent.estimator.loss(policy, agent.estimator.draw(policy), objective)
    surrogate_grad = torch.autograd.grad(loss, list(agent.actor.parameters()))

    torch.manual_seed(1)
    policy = agent.actor(obs)
    u = policy.rsample_pre_tanh((4,)).detach()
    k, b = u.shape[:2]
    expected = [torch.zeros_like(p) for p in agent.actor.parameters()]
    with torch.no_grad():
        q = torch.stack([agent.critic(obs, torch.tanh(u[i])).min(0).values for i in range(k)])
        h = alpha * policy.log_prob_pre_tanh(u) - q
    for i in range(k):
        for j in range(b):
            baseline = (h[:, j].sum() - h[i, j]) / (k - 1)
            log_prob = agent.actor(obs[j : j + 1]).log_prob_pre_tanh(u[i, j : j + 1])
            grads = torch.autograd.grad(log_prob.sum(), list(agent.actor.parameters()))
            for e, g in zip(expected, grads, strict=True):
                e += (h[i, j] - baseline + alpha) * g / (k * b)
    for got, want in zip(surrogate_grad, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", ["pathwise", "score"])
def test_score_value_baseline_is_fitted_by_every_update(estimator):
    """V_ψ regresses the soft value min Q − α log π whichever estimator trains the actor."""
    torch.manual_seed(0)
    cfg = Config(
        hidden_sizes=[16],
        actor_estimator=estimator,
        score_baseline="value",
        score_samples=1,  # no leave-one-out: one action per state is enough
        batch_size=32,
        learning_rate=3e-3,
    )
    agent = Agent(cfg, EnvSpec(obs_dim=3, act_dim=2), Learner(), n_envs=1)
    agent.observe(
        torch.randn(64, 3),
        torch.rand(64, 2) * 2 - 1,
        torch.randn(64),
        torch.randn(64, 3),
        torch.zeros(64, dtype=torch.bool),
        torch.zeros(64, dtype=torch.bool),
    )
    obs = torch.randn(256, 3)

    def value_error(value: torch.nn.Module) -> float:
        """Mean squared error of ``value`` against a 256-action Monte Carlo soft value."""
        alpha = agent.log_alpha.detach().exp()
        with torch.no_grad():
            policy = agent.actor(obs)
            u = policy.rsample_pre_tanh((256,))
            q = agent.frozen_q(obs.expand(256, -1, -1).reshape(-1, 3), torch.tanh(u).view(-1, 2))
            soft = (q.view(256, -1) - alpha * policy.log_prob_pre_tanh(u)).mean(0)
            return (value(obs).squeeze(-1) - soft).pow(2).mean().item()

    untrained = copy.deepcopy(agent.score_value)
    for _ in range(300):
        metrics = agent.update_once(agent.buffer.sample(32))
    assert "losses/score_value" in metrics
    assert value_error(agent.score_value) < value_error(untrained) / 3


def test_score_baseline_config():
    assert Config(score_baseline="value", score_samples=1).score_samples == 1
    with pytest.raises(ValueError, match="loo needs score_samples"):
        Config(score_baseline="loo", score_samples=1)


def test_a_run_logs_the_learner_grad_norm_of_every_loss_and_no_non_loss_under_losses(
    tmp_path,
):
    import json

    from conftest import run_tiny_training

    code, _, err = run_tiny_training(tmp_path / "run", "logging.interval=100")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = [row for row in rows if "losses/critic" in row]
    assert len(logged) >= 2
    for row in logged:
        for loss in ("critic", "actor", "alpha"):
            assert row[f"learner/grad_norm/{loss}"] > 0
        assert {k for k in row if k.startswith("losses/")} == {
            "losses/critic",
            "losses/actor",
            "losses/alpha",
        }
        assert "train/q_mean" in row and "train/entropy" in row
