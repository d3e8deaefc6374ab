"""Tiny continuous-control tasks for fast learning checks, registered with Gymnasium.

``rlgrad/PointMass-v0``: a point on a line must be driven to the origin and held there.
State x ∈ [−2, 2] starting uniform in ±1.5; action a ∈ [−1, 1] moves it by 0.25·a;
reward −|x| per step; 25 steps per episode (a time-limit truncation, never a termination).
A uniformly random policy scores about −19 per episode; a good one about −3.

``rlgrad/QuadraticBandit-v0`` (:class:`QuadraticBanditEnv`): a one-step contextual bandit with
a known reward, for studying actor-gradient estimators against the true gradient.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class PointMassEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, step_size: float = 0.25):
        self.step_size = step_size
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.5, 1.5))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        move = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], -1.0, 1.0))
        self.x = float(np.clip(self.x + self.step_size * move, -2.0, 2.0))
        return np.array([self.x], np.float32), -abs(self.x), False, False, {}


class QuadraticBanditEnv(gym.Env):
    """A one-step bandit whose reward, and so whose Q-function, is known in closed form.

    Every episode is one step: ``reset`` draws a state s ∈ R^m uniformly from [−1, 1]^m, the
    agent answers with an action a ∈ [−1, 1]^d, and ``step`` returns the reward

        r(s, a) = −scale · ‖a − a*(s)‖²,    a*(s) = tanh(W s),

    and ``terminated=True``. The optimum a*(s) lies inside (−1, 1)^d; W (d × m) has entries
    N(0, 1.5²/m), drawn once from ``seed`` (a kwarg, independent of the reset seed), so that
    W s has a standard deviation of about 0.87 per component and a* spreads over most of the
    box. Because the episode ends after the action, Q(s, a) = r(s, a) exactly for any policy
    and discount: a critic's target, and the true actor gradient, can be computed from
    :meth:`reward` alone. The observation that ``step`` returns is the state again (it is
    never used: the transition is terminal).

    kwargs: ``action_dim`` d (default 1), ``obs_dim`` m (default 4), ``seed`` for W
    (default 0), ``scale`` (default 1). A uniformly random action scores about
    −scale · d · (1/3 + E a*²) ≈ −0.55 · scale · d; the optimum scores 0.
    """

    metadata = {"render_modes": []}

    def __init__(self, action_dim: int = 1, obs_dim: int = 4, seed: int = 0, scale: float = 1.0):
        if action_dim < 1 or obs_dim < 1:
            raise ValueError(f"action_dim and obs_dim must be positive, got {action_dim, obs_dim}")
        self.action_dim, self.obs_dim, self.scale = int(action_dim), int(obs_dim), float(scale)
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(0.0, 1.5 / np.sqrt(obs_dim), (self.action_dim, self.obs_dim))
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (self.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.state = np.zeros(self.obs_dim, np.float32)

    def optimum(self, obs: np.ndarray) -> np.ndarray:
        """a*(s) = tanh(W s) for states (..., m)."""
        return np.tanh(np.asarray(obs, np.float64) @ self.weight.T)

    def reward(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """r(s, a) = −scale · ‖a − a*(s)‖² (= Q(s, a)) for (..., m) and (..., d)."""
        diff = np.asarray(action, np.float64) - self.optimum(obs)
        return -self.scale * (diff * diff).sum(-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1.0, 1.0, self.obs_dim).astype(np.float32)
        return self.state.copy(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(self.action_dim), -1.0, 1.0)
        reward = float(self.reward(self.state, action))
        return self.state.copy(), reward, True, False, {}


def register() -> None:
    if "rlgrad/PointMass-v0" not in gym.registry:
        gym.register("rlgrad/PointMass-v0", entry_point=PointMassEnv, max_episode_steps=25)
    if "rlgrad/QuadraticBandit-v0" not in gym.registry:
        gym.register("rlgrad/QuadraticBandit-v0", entry_point=QuadraticBanditEnv)
