"""Tiny continuous-control tasks for fast learning checks, registered with Gymnasium.

``rlgrad/PointMass-v0``: a point on a line must be driven to the origin and held there.
State x ∈ [−2, 2] starting uniform in ±1.5; action a ∈ [−1, 1] moves it by 0.25·a;
reward −|x| per step; 25 steps per episode (a time-limit truncation, never a termination).
A uniformly random policy scores about −19 per episode; a good one about −3.
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


def register() -> None:
    if "rlgrad/PointMass-v0" not in gym.registry:
        gym.register("rlgrad/PointMass-v0", entry_point=PointMassEnv, max_episode_steps=25)
