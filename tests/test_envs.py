"""rlgrad.envs: Box and Discrete vector envs, seeding, final observations, normalisation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlgrad.config import ConfigError, EnvConfig
from rlgrad.envs import (
    NormalizeObservation,
    env_spec,
    find_wrapper,
    make_env,
    unit_actions,
)
from rlgrad.runner import episode_metrics, true_next_obs

SHORT_PENDULUM = {"id": "Pendulum-v1", "kwargs": {"max_episode_steps": 5}}


def one_line_config_error(cfg: EnvConfig) -> str:
    with pytest.raises(ConfigError) as info:
        make_env(cfg, seed=0)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# ---- refusals -------------------------------------------------------------------------------


def test_discrete_action_env_is_built_without_rescaling() -> None:
    """A Discrete space is kept as it is (no [-1, 1] rescaling) and sized by ``env_spec``."""
    envs = make_env(EnvConfig(id="CartPole-v1", n_envs=2), seed=0)
    try:
        assert isinstance(envs.single_action_space, gym.spaces.Discrete)
        spec = env_spec(envs)
        assert (spec.act_dim, spec.n_actions) == (1, 2)
        envs.reset(seed=0)
        envs.step(np.array([0, 1]))
    finally:
        envs.close()


def test_non_flat_observations_are_refused() -> None:
    message = one_line_config_error(EnvConfig(id="FrozenLake-v1"))
    assert "FrozenLake-v1" in message and "flat Box" in message


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "Pendulum-v99", "not an id!"])
def test_unknown_env_id_is_refused(env_id: str) -> None:
    message = one_line_config_error(EnvConfig(id=env_id))
    assert f"'{env_id}'" in message
    assert "unknown env id" in message


def test_bad_env_kwargs_is_a_config_error() -> None:
    message = one_line_config_error(EnvConfig(id="Pendulum-v1", kwargs={"bogus": 1}))
    assert "bogus" in message


# ---- seeding --------------------------------------------------------------------------------


def rollout(envs: gym.vector.VectorEnv, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Observations and rewards of ``steps`` steps with a fixed action sequence."""
    actions = np.random.default_rng(1234).uniform(-1, 1, (steps, envs.num_envs, 1))
    obs, _ = envs.reset(seed=seed)
    all_obs, all_rewards = [obs], []
    for a in actions.astype(np.float32):
        obs, rewards, *_ = envs.step(a)
        all_obs.append(obs)
        all_rewards.append(rewards)
    return np.stack(all_obs), np.stack(all_rewards)


def test_seeded_vector_env_is_reproducible() -> None:
    cfg = EnvConfig(id="Pendulum-v1", n_envs=2)
    runs = []
    for _ in range(2):
        envs = make_env(cfg, seed=3)
        try:
            assert envs.num_envs == 2
            sampled = envs.action_space.sample()  # make_env seeds the action space too
            runs.append((*rollout(envs, seed=3, steps=8), sampled))
        finally:
            envs.close()
    (obs_a, rew_a, act_a), (obs_b, rew_b, act_b) = runs
    assert obs_a.shape == (9, 2, 3)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    np.testing.assert_array_equal(act_a, act_b)
    # The two sub-envs are seeded differently, and another seed gives other observations.
    assert not np.array_equal(obs_a[0, 0], obs_a[0, 1])
    envs = make_env(cfg, seed=4)
    try:
        obs_c, _ = rollout(envs, seed=4, steps=8)
    finally:
        envs.close()
    assert not np.array_equal(obs_a, obs_c)
    # Sub-env i is reset with seed + i: env 1 of seed 3 starts where env 0 of seed 4 does.
    np.testing.assert_array_equal(obs_a[0, 1], obs_c[0, 0])


def test_env_spec_reports_flat_dimensions() -> None:
    envs = make_env(EnvConfig(id="Pendulum-v1", n_envs=2), seed=0)
    try:
        spec = env_spec(envs)
    finally:
        envs.close()
    assert (spec.obs_dim, spec.act_dim) == (3, 1)


# ---- final observations ----------------------------------------------------------------------


def step_until_truncated(envs: gym.vector.VectorEnv, seed: int, max_steps: int = 10):
    """Reset, then step with zero torque until an episode ends; returns the step's outputs."""
    reset_obs, _ = envs.reset(seed=seed)
    zeros = np.zeros((envs.num_envs, 1), np.float32)
    for step in range(1, max_steps + 1):
        next_obs, rewards, terminated, truncated, info = envs.step(zeros)
        if (terminated | truncated).any():
            return step, reset_obs, next_obs, terminated, truncated, info
    raise AssertionError(f"no episode ended in {max_steps} steps")


def test_true_next_obs_is_the_final_obs_at_truncation() -> None:
    envs = make_env(EnvConfig(**SHORT_PENDULUM, n_envs=2), seed=0)
    try:
        step, reset_obs, next_obs, terminated, truncated, info = step_until_truncated(envs, 0)
    finally:
        envs.close()
    assert step == 5
    assert truncated.tolist() == [True, True] and terminated.tolist() == [False, False]
    assert info["_final_obs"].tolist() == [True, True]
    final = np.stack(info["final_obs"])
    given = next_obs.copy()

    real = true_next_obs(next_obs, info)
    np.testing.assert_array_equal(real, final)
    assert real.dtype == next_obs.dtype and real.shape == next_obs.shape
    # The env's own next_obs is the new episode's first observation, not the final one.
    assert not np.allclose(next_obs, final)
    assert not np.allclose(real, reset_obs)
    # Pendulum observations are (cos θ, sin θ, θ'): the final one is a valid state.
    np.testing.assert_allclose(real[:, 0] ** 2 + real[:, 1] ** 2, 1.0, rtol=1e-5)
    # true_next_obs does not modify the observation the agent acts on next.
    np.testing.assert_array_equal(next_obs, given)
    # The episode statistics of that step say 5 steps.
    assert [m["charts/episodic_length"] for m in episode_metrics(info)] == [5.0, 5.0]


def test_true_next_obs_replaces_only_the_ended_envs() -> None:
    next_obs = np.arange(6, dtype=np.float32).reshape(3, 2)
    final = np.empty(3, dtype=object)
    final[:] = [None, np.array([-1.0, -2.0], np.float32), None]
    info = {"final_obs": final, "_final_obs": np.array([False, True, False])}
    real = true_next_obs(next_obs, info)
    np.testing.assert_array_equal(real, [[0, 1], [-1, -2], [4, 5]])
    np.testing.assert_array_equal(next_obs, np.arange(6).reshape(3, 2))
    assert true_next_obs(next_obs, {}) is next_obs


def test_normalize_observation_normalizes_final_obs_too() -> None:
    seed = 2
    raw_envs = make_env(EnvConfig(**SHORT_PENDULUM, n_envs=2), seed=seed)
    norm_envs = make_env(EnvConfig(**SHORT_PENDULUM, n_envs=2, normalize_obs=True), seed=seed)
    try:
        wrapper = find_wrapper(norm_envs, NormalizeObservation)
        assert wrapper is not None
        raw_seen = [raw_envs.reset(seed=seed)[0]]
        norm_envs.reset(seed=seed)
        zeros = np.zeros((2, 1), np.float32)
        for _ in range(5):
            raw_next, _, _, raw_trunc, raw_info = raw_envs.step(zeros)
            norm_next, _, _, norm_trunc, norm_info = norm_envs.step(zeros)
            raw_seen.append(raw_next)
    finally:
        raw_envs.close()
        norm_envs.close()
    assert raw_trunc.all() and norm_trunc.all()

    # Running statistics after 12 observed rows, with the prior N(0, 1) of weight 1e-4,
    # merged in one go (Chan et al.) rather than batch by batch as the wrapper does.
    seen = np.concatenate(raw_seen).astype(np.float64)
    n, prior = len(seen), 1e-4
    m, v = seen.mean(0), seen.var(0)
    mean = m * n / (n + prior)
    var = (prior * 1.0 + v * n + m**2 * prior * n / (n + prior)) / (n + prior)
    np.testing.assert_allclose(wrapper.stats.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(wrapper.stats.var, var, rtol=1e-6)

    def normalize(x: np.ndarray) -> np.ndarray:
        return np.clip((x - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)

    raw_final = np.stack(raw_info["final_obs"]).astype(np.float64)
    norm_final = np.stack(norm_info["final_obs"])
    np.testing.assert_allclose(norm_final, normalize(raw_final), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm_next, normalize(raw_next), rtol=1e-5, atol=1e-5)
    assert not np.allclose(norm_final, raw_final, atol=1e-2)  # it really was transformed
    # What the agent stores as s' for the truncated step is the normalised final observation.
    np.testing.assert_allclose(true_next_obs(norm_next, norm_info), normalize(raw_final), atol=1e-5)
    # Clipping applies (clip_obs=10): a far-off observation saturates.
    big = wrapper._normalize(np.full((1, 3), 1e6))
    np.testing.assert_array_equal(big, np.full((1, 3), 10.0, np.float32))


# ---- action rescaling -------------------------------------------------------------------------


class RecordActionEnv(gym.Env):
    """Box(0, 10) actions; remembers the raw action each step received."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(
            np.array([0.0, -4.0], np.float32), np.array([10.0, 4.0], np.float32)
        )
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.received.append(np.asarray(action, np.float64).copy())
        return np.zeros(1, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize(
    ("unit", "raw"),
    [
        ([-1.0, -1.0], [0.0, -4.0]),
        ([1.0, 1.0], [10.0, 4.0]),
        ([0.0, 0.5], [5.0, 2.0]),
        ([3.0, -7.0], [10.0, -4.0]),  # outside [-1, 1]: clipped first
    ],
)
def test_unit_actions_rescale_to_env_bounds(unit: list[float], raw: list[float]) -> None:
    base = RecordActionEnv()
    env = unit_actions(base)
    env.reset(seed=0)
    env.step(np.array(unit, np.float32))
    np.testing.assert_allclose(base.received[-1], raw, rtol=1e-6, atol=1e-6)


def test_rescaled_pendulum_matches_raw_pendulum_at_twice_the_action() -> None:
    # Pendulum's torque is in [-2, 2]: unit action a is torque 2a.
    unit = EnvConfig(id="Pendulum-v1", rescale_actions=True)
    raw = EnvConfig(id="Pendulum-v1", rescale_actions=False)
    results = []
    for cfg, action in ((unit, 0.5), (raw, 1.0), (raw, 0.5)):
        envs = make_env(cfg, seed=0)
        try:
            envs.reset(seed=0)
            obs, reward, *_ = envs.step(np.full((1, 1), action, np.float32))
        finally:
            envs.close()
        results.append((obs, reward))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)
    assert not np.allclose(results[0][0], results[2][0])


def test_raw_pendulum_keeps_its_action_space() -> None:
    envs = make_env(EnvConfig(id="Pendulum-v1", rescale_actions=False), seed=0)
    try:
        space = envs.single_action_space
    finally:
        envs.close()
    np.testing.assert_array_equal(space.low, [-2.0])
    np.testing.assert_array_equal(space.high, [2.0])


def test_rescaled_action_space_is_unit_box() -> None:
    envs = make_env(EnvConfig(id="Pendulum-v1", rescale_actions=True), seed=0)
    try:
        space = envs.single_action_space
    finally:
        envs.close()
    np.testing.assert_array_equal(space.low, [-1.0])
    np.testing.assert_array_equal(space.high, [1.0])
