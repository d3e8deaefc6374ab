"""Gymnasium vector environments for Gaussian policies.

``make_env`` builds ``n_envs`` copies of one task, seeded, in same-step autoreset mode (a step
that ends an episode returns the next episode's first observation and puts the last one in
``info["final_obs"]``), with episode statistics, actions presented as [-1, 1]^d and optional
observation/reward normalisation. Only Box action and observation spaces are accepted.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from rlgrad import toy_envs
from rlgrad.config import ConfigError, EnvConfig
from rlgrad.env_state import EpisodeRecorder

toy_envs.register()


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know about the task to build its networks."""

    obs_dim: int
    act_dim: int


class RunningMeanStd:
    """Running mean and variance over a stream of batches (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, np.ndarray | float]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var = np.array(state["mean"]), np.array(state["var"])
        self.count = float(state["count"])


class NormalizeObservation(VectorWrapper):
    """(obs − mean) / sqrt(var + 1e-8), clipped, applied to ``obs`` and ``info["final_obs"]``.

    Gymnasium's own vector wrapper leaves ``final_obs`` raw, which would bootstrap truncated
    episodes from unnormalised observations. ``stats`` may be shared with an evaluation env,
    which then sets ``update=False``.
    """

    def __init__(self, env: VectorEnv, stats: RunningMeanStd, clip: float, update: bool = True):
        super().__init__(env)
        self.stats, self.clip, self.update = stats, clip, update

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        scaled = (obs - self.stats.mean) / np.sqrt(self.stats.var + 1e-8)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.update:
            self.stats.update(obs)
        return self._normalize(obs), info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if self.update:
            self.stats.update(obs)
        if "final_obs" in info:
            final = info["final_obs"].copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = self._normalize(final[i][None])[0]
            info = {**info, "final_obs": final}
        return self._normalize(obs), rewards, terminated, truncated, info


class UnitActions(gym.ActionWrapper):
    """Present the action space as [-1, 1]^d: a ↦ low + (clip(a, −1, 1) + 1)(high − low)/2.

    Clipping first lets unbounded Gaussian actions through safely; tanh-squashed ones are
    already inside. Needs finite bounds.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ConfigError("env.rescale_actions needs finite action bounds; set it to false")
        self.low, self.half_range = space.low, (space.high - space.low) / 2.0
        self.action_space = gym.spaces.Box(-1.0, 1.0, space.shape, np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        unit = np.clip(action, -1.0, 1.0)
        return (self.low + (unit + 1.0) * self.half_range).astype(self.env.action_space.dtype)


def unit_actions(env: gym.Env) -> gym.Env:
    return UnitActions(env)


@contextlib.contextmanager
def _quiet_probe() -> Iterator[None]:
    """Silence Python warnings (e.g. a deprecated env id, whose error says it all) and MuJoCo's
    model-compiler warnings, which MuJoCo prints straight to the process's stderr: a refused
    config must print exactly one line."""
    try:
        import mujoco
    except ImportError:
        mujoco = None
    previous = mujoco.get_mju_user_warning() if mujoco is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mujoco is not None:
            mujoco.set_mju_user_warning(lambda text: warnings.warn(text, stacklevel=1))
        try:
            yield
        finally:
            if mujoco is not None:
                mujoco.set_mju_user_warning(previous)


def check_spaces(env_id: str, **kwargs) -> None:
    """Refuse tasks whose action or observation space is not a flat Box."""
    try:
        with _quiet_probe():
            probe = gym.make(env_id, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"env '{env_id}' rejects env.kwargs {kwargs}: {exc}; fix or remove those env.kwargs"
        ) from None
    except gym.error.DependencyNotInstalled as exc:
        reason = " ".join(str(exc).split())
        hint = "" if "pip install" in reason else "; install the package it names and rerun"
        raise ConfigError(
            f"env '{env_id}' needs a package that is not installed: {reason}{hint}"
        ) from None
    except gym.error.Error as exc:
        raise ConfigError(
            f"unknown env id '{env_id}' ({exc}); list the registered ids with "
            "python -c 'import gymnasium; gymnasium.pprint_registry()'"
        ) from None
    try:
        action_space, obs_space = probe.action_space, probe.observation_space
    finally:
        probe.close()
    if not isinstance(action_space, gym.spaces.Box):
        raise ConfigError(
            f"env '{env_id}' has a {type(action_space).__name__} action space; rlgrad's policies "
            "are Gaussian and need a continuous (Box) action space: choose a continuous-control "
            "env, e.g. env.id=Pendulum-v1 or env.id=HalfCheetah-v5"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(
            f"env '{env_id}' has observation space {obs_space}; rlgrad needs a flat Box: "
            "choose an env with vector observations, e.g. env.id=Pendulum-v1"
        )


def make_env(
    cfg: EnvConfig,
    seed: int,
    gamma: float = 0.99,
    n_envs: int | None = None,
    obs_stats: RunningMeanStd | None = None,
    training: bool = True,
    extra_wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
    **make_kwargs: Any,
) -> VectorEnv:
    """The vector env a config describes; reset it with ``seed`` (sub-env i gets ``seed + i``).

    ``obs_stats`` shares observation-normalisation statistics (an evaluation env passes the
    training env's and ``training=False`` so that it neither updates them nor normalises rewards).
    ``extra_wrappers`` wrap each sub-env outermost (e.g. video recording); ``make_kwargs`` go
    to ``gym.make`` beside ``env.kwargs`` (e.g. ``render_mode``).
    """
    check_spaces(cfg.id, **cfg.kwargs)
    n = n_envs or cfg.n_envs
    envs = gym.make_vec(
        cfg.id,
        num_envs=n,
        vectorization_mode=cfg.vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        wrappers=[
            EpisodeRecorder,
            *([unit_actions] if cfg.rescale_actions else []),
            *extra_wrappers,
        ],
        **cfg.kwargs,
        **make_kwargs,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    if cfg.normalize_obs:
        stats = obs_stats or RunningMeanStd(envs.single_observation_space.shape)
        envs = NormalizeObservation(envs, stats, cfg.clip_obs, update=training)
    if cfg.normalize_reward and training:
        envs = gym.wrappers.vector.NormalizeReward(envs, gamma=gamma)
    envs.action_space.seed(seed)
    return envs


def env_spec(envs: VectorEnv) -> EnvSpec:
    return EnvSpec(
        obs_dim=int(np.prod(envs.single_observation_space.shape)),
        act_dim=int(np.prod(envs.single_action_space.shape)),
    )


def find_wrapper(envs: VectorEnv, kind: type) -> VectorEnv | None:
    """The first wrapper of type ``kind`` in the stack, or None."""
    while isinstance(envs, VectorWrapper):
        if isinstance(envs, kind):
            return envs
        envs = envs.env
    return None
