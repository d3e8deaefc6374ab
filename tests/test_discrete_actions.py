"""Discrete action spaces in the on-policy agents and the env layer: the categorical
distribution against torch.distributions, the softmax policy's draws, per-sample gradients
against backward loops, a learning check on CartPole-v1 and predict's integer actions."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlgrad
from rlgrad.agents import ppo, reinforce
from rlgrad.config import LearnerConfig
from rlgrad.distributions import Categorical
from rlgrad.envs import EnvSpec, env_actions
from rlgrad.learner import Learner
from rlgrad.networks import SoftmaxPolicy

OBS, N_ACTIONS, T, N = 4, 3, 10, 2


def test_categorical_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, N_ACTIONS) * 3
    actions = torch.randint(0, N_ACTIONS, (6, 1)).float()
    ours, theirs = Categorical(logits), torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(ours.log_prob(actions), theirs.log_prob(actions.squeeze(-1).long()))
    torch.testing.assert_close(ours.entropy(), theirs.entropy())
    torch.testing.assert_close(ours.probs, theirs.probs)
    assert torch.equal(ours.mode.squeeze(-1).long(), logits.argmax(-1))


def test_softmax_policy_draws_follow_its_probabilities() -> None:
    """Gumbel-max acting draws action a with frequency π_a (within 5 standard errors)."""
    torch.manual_seed(1)
    policy = SoftmaxPolicy(OBS, N_ACTIONS, [8], "tanh", ortho=False)
    with torch.no_grad():
        policy.logits[-1].weight.mul_(200.0)  # a far-from-uniform policy
    obs = torch.randn(1, OBS)
    probs = policy(obs).probs[0]
    n = 40_000
    draws = policy.sample_action(obs.expand(n, OBS)).squeeze(-1).long()
    freq = torch.bincount(draws, minlength=N_ACTIONS).float() / n
    stderr = (probs * (1 - probs) / n).sqrt()
    assert probs.max() > 0.5
    assert ((freq - probs).abs() < 5 * stderr + 1e-4).all(), (freq, probs)
    assert policy.mean_action(obs).item() == probs.argmax().item()


def test_env_spec_and_env_actions() -> None:
    cartpole = gym.make("CartPole-v1")
    spec = EnvSpec.of(cartpole.observation_space, cartpole.action_space)
    assert (spec.obs_dim, spec.act_dim, spec.n_actions, spec.discrete) == (4, 1, 2, True)
    pendulum = gym.make("Pendulum-v1")
    spec_box = EnvSpec.of(pendulum.observation_space, pendulum.action_space)
    assert (spec_box.act_dim, spec_box.discrete) == (1, False)
    actions = torch.tensor([[1.0], [0.0], [1.0]])
    out = env_actions(actions, spec)
    assert out.dtype == np.int64 and out.tolist() == [1, 0, 1]
    assert env_actions(actions, spec_box).dtype == np.float32


def _filled(agent: ppo.Agent | reinforce.Agent, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for t in range(T):
        agent.observe(
            torch.randn(N, OBS, generator=g),
            torch.randint(0, N_ACTIONS, (N, 1), generator=g).float(),
            torch.randn(N, generator=g),
            torch.randn(N, OBS, generator=g),
            torch.tensor([t == 4, False]),
            torch.tensor([False, t == 7]),
        )


def _loop_grads(policy: torch.nn.Module, loss_of_step) -> list[torch.Tensor]:
    """One backward call per step: the per-step gradients, flattened."""
    rows = []
    for t in range(T * N):
        policy.zero_grad()
        loss_of_step(t).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    return rows


def test_ppo_per_sample_gradients_of_a_softmax_policy_match_a_backward_loop() -> None:
    torch.manual_seed(0)
    cfg = ppo.Config(n_steps=T, hidden_sizes=[8], ent_coef=0.01)
    agent = ppo.Agent(cfg, EnvSpec(OBS, 1, N_ACTIONS), Learner(LearnerConfig()), N)
    assert isinstance(agent.policy, SoftmaxPolicy)
    assert agent.learner.active_kernels == {"ppo_loss": "reference"}  # fused is Gaussian-only
    _filled(agent)
    obs, actions = agent.buffer.flat("obs"), agent.buffer.flat("actions")
    with torch.no_grad():
        old_log_prob = agent.policy(obs).log_prob(actions)
    advantages = torch.randn(T * N)
    params = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    rows = agent.policy_loss_per_sample(params, obs, actions, old_log_prob, advantages)
    flat = torch.cat([r.reshape(T * N, -1) for r in rows.values()], dim=1)

    def loss_of_step(t: int) -> torch.Tensor:
        dist = agent.policy(obs[t : t + 1])
        ratio = (dist.log_prob(actions[t : t + 1]) - old_log_prob[t]).exp()
        return -(ratio * advantages[t]).sum() - cfg.ent_coef * dist.entropy().sum()

    torch.testing.assert_close(flat, torch.stack(_loop_grads(agent.policy, loss_of_step)))


def test_reinforce_scores_of_a_softmax_policy_match_a_backward_loop() -> None:
    torch.manual_seed(0)
    cfg = reinforce.Config(n_steps=T, hidden_sizes=[8], baseline="none")
    agent = reinforce.Agent(cfg, EnvSpec(OBS, 1, N_ACTIONS), Learner(LearnerConfig()), N)
    _filled(agent)
    obs, actions = agent.buffer.flat("obs"), agent.buffer.flat("actions")
    params = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    scores = agent.score_per_sample(params, obs, actions)
    flat = torch.cat([r.reshape(T * N, -1) for r in scores.values()], dim=1)
    loop = _loop_grads(
        agent.policy, lambda t: agent.policy(obs[t : t + 1]).log_prob(actions[t : t + 1]).sum()
    )
    torch.testing.assert_close(flat, torch.stack(loop))
    metrics = agent.update(global_step=T * N, measure=True)
    assert "train/policy_std" not in metrics and metrics["train/entropy"] > 0
    stats = agent.diagnose(rlgrad.config.DiagnosticsConfig())
    assert stats["grad/score/variance_per_step"] > 0


def test_learning_ppo_on_cartpole_beats_a_random_policy(tmp_path: Path) -> None:
    """PPO with the shipped CartPole config for 30k steps: a random policy scores about 22."""
    result = rlgrad.train(
        "ppo_cartpole",
        run_dir=tmp_path / "run",
        total_steps=30_000,
        eval={"interval": 30_000, "episodes": 5},
    )
    assert result.eval_return_mean > 150, result
    policy = rlgrad.load(tmp_path / "run")
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    action = policy.predict(obs)
    assert action.dtype == np.int64 and action.shape == () and env.action_space.contains(action)
    batch = policy.predict(np.stack([obs, obs]))
    assert batch.shape == (2,) and batch[0] == action


@pytest.mark.parametrize("agent_module", [ppo, reinforce])
def test_continuous_agents_still_build_gaussian_policies(agent_module) -> None:
    agent = agent_module.Agent(
        agent_module.Config(n_steps=T), EnvSpec(OBS, 2), Learner(LearnerConfig()), N
    )
    assert not isinstance(agent.policy, SoftmaxPolicy)
    assert agent.act(torch.zeros(N, OBS), 0).shape == (N, 2)
