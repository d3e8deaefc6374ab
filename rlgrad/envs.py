"""Gymnasium vector environments for rlgrad's agents.

``make_env`` builds ``n_envs`` copies of one task, seeded, in same-step autoreset mode (a step
that ends an episode returns the next episode's first observation and puts the last one in
``info["final_obs"]``), with episode statistics, Box actions presented as [-1, 1]^d and optional
observation/reward normalisation. Box or Discrete action spaces and flat Box observation spaces
are accepted; an agent declares which action spaces it takes (``AgentConfig.action_spaces``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import signal
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
    """What an agent needs to know about the task to build its networks.

    ``n_actions``: 0 for a continuous (Box) action space of ``act_dim`` dimensions; for a
    Discrete space, its number of actions, and actions are stored as one float holding the
    index (``act_dim`` = 1; :func:`env_actions` turns them into the env's integers)."""

    obs_dim: int
    act_dim: int
    n_actions: int = 0

    @property
    def discrete(self) -> bool:
        return self.n_actions > 0

    @classmethod
    def of(cls, observation_space: gym.Space, action_space: gym.Space) -> EnvSpec:
        """The spec of one env's spaces (Box or Discrete actions, flat Box observations)."""
        obs_dim = int(np.prod(observation_space.shape))
        if isinstance(action_space, gym.spaces.Discrete):
            return cls(obs_dim=obs_dim, act_dim=1, n_actions=int(action_space.n))
        return cls(obs_dim=obs_dim, act_dim=int(np.prod(action_space.shape)))


ACTION_KINDS = {"continuous": "continuous (Box)", "discrete": "Discrete"}
"""The action spaces agents declare (``AgentConfig.action_spaces``), as messages name them."""


def action_kind(space: gym.Space) -> str | None:
    """``continuous`` for a Box, ``discrete`` for a Discrete space starting at 0, else None."""
    if isinstance(space, gym.spaces.Box):
        return "continuous"
    if isinstance(space, gym.spaces.Discrete) and int(space.start) == 0:
        return "discrete"
    return None


def env_actions(actions: Any, spec: EnvSpec) -> np.ndarray:
    """The agent's (n, act_dim) action tensor as the vector env takes it: as is for a Box
    space, the (n,) integer indices for a Discrete one."""
    array = actions.cpu().numpy()
    if spec.discrete:
        return array.reshape(-1).astype(np.int64)
    return array


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

    def _update_stats(self, obs: np.ndarray) -> None:
        """Update the statistics with the finite rows of ``obs`` only: one NaN observation would
        make the mean and variance NaN for good. (A non-finite row stays non-finite when
        normalised, and the runner drops the transitions it is part of.)"""
        if not self.update:
            return
        finite = np.isfinite(obs).reshape(len(obs), -1).all(axis=1)
        if finite.all():
            self.stats.update(obs)
        elif finite.any():
            self.stats.update(obs[finite])

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._update_stats(obs)
        return self._normalize(obs), info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        self._update_stats(obs)
        if "final_obs" in info:
            final = info["final_obs"].copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = self._normalize(final[i][None])[0]
            info = {**info, "final_obs": final}
        return self._normalize(obs), rewards, terminated, truncated, info


class NormalizeReward(gym.wrappers.vector.NormalizeReward):
    """Gymnasium's reward normaliser (same-step autoreset), except that a non-finite reward
    enters neither the discounted return nor its running variance (one NaN would make every
    later reward NaN); it is passed on unscaled, for the runner to drop."""

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        finite = np.isfinite(reward)
        kept = self.accumulated_reward[finite] * self.gamma * (1 - terminated[finite])
        self.accumulated_reward[finite] = kept + reward[finite]
        if self.update_running_mean and finite.any():
            self.return_rms.update(self.accumulated_reward[finite])
        self._prev_dones = np.logical_or(terminated, truncated).astype(np.float32)
        # The done sub-envs have been reset already (same-step autoreset): start a new return.
        self.accumulated_reward[self._prev_dones.astype(bool)] = 0
        scaled = reward / np.sqrt(self.return_rms.var + self.epsilon)
        return obs, scaled, terminated, truncated, info


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


def wrapper_factories(
    wrappers: Sequence[str | dict[str, dict[str, Any]]],
) -> list[Callable[[gym.Env], gym.Env]]:
    """``env.wrappers`` as callables that wrap one env: each entry names a class of
    ``gymnasium.wrappers`` (``"FlattenObservation"``) or maps it to its keyword arguments
    (``{"ClipReward": {"min_reward": -1}}``). An unknown name is a one-line :class:`ConfigError`."""
    import gymnasium.wrappers as gym_wrappers

    known = sorted(
        name
        for name in dir(gym_wrappers)
        if isinstance(getattr(gym_wrappers, name), type)
        and issubclass(getattr(gym_wrappers, name), gym.Wrapper)
    )
    factories = []
    for entry in wrappers:
        if isinstance(entry, dict) and len(entry) == 1:
            ((name, kwargs),) = entry.items()
        elif isinstance(entry, str):
            name, kwargs = entry, {}
        else:
            raise ConfigError(
                f"env.wrappers entry {entry!r} should be a wrapper's name, e.g. "
                "FlattenObservation, or {Name: {argument: value}}"
            )
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown wrapper '{name}'{hint}; env.wrappers takes class names from "
                f"gymnasium.wrappers: {', '.join(known)}"
            )
        factories.append(functools.partial(getattr(gym_wrappers, name), **(kwargs or {})))
    return factories


def apply_wrappers(env: gym.Env, factories: Sequence[Callable[[gym.Env], gym.Env]]) -> gym.Env:
    """Wrap ``env`` with ``factories`` in order; a wrapper that rejects the env (or its
    arguments) is a one-line :class:`ConfigError`."""
    for factory in factories:
        try:
            env = factory(env)
        except Exception as exc:  # TypeError (arguments), DependencyNotInstalled, assertions
            name = getattr(factory, "func", factory).__name__
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"env.wrappers: {name} cannot wrap the env: {reason}") from None
    return env


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


def check_spaces(
    env_id: str, wrappers: Sequence[str | dict[str, dict[str, Any]]] = (), **kwargs
) -> str:
    """Refuse tasks whose action space (after ``wrappers``, the config's ``env.wrappers``) is
    neither a Box nor a Discrete space, or whose observation space is not a flat Box; return
    the action kind (:func:`action_kind`)."""
    factories = wrapper_factories(wrappers)
    try:
        with _quiet_probe():
            probe = gym.make(env_id, **kwargs)
    except ModuleNotFoundError as exc:  # env.id=package.module:EnvName-v0
        module = env_id.split(":", 1)[0] if ":" in env_id else exc.name
        raise ConfigError(
            f"env '{env_id}': cannot import module '{module}' ({exc.msg}); an env.id of the "
            "form module:EnvName-v0 needs that module importable (installed, or its folder on "
            "PYTHONPATH)"
        ) from None
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
        with _quiet_probe():
            probe = apply_wrappers(probe, factories)
        action_space, obs_space = probe.action_space, probe.observation_space
    finally:
        probe.close()
    kind = action_kind(action_space)
    if kind is None:
        raise ConfigError(
            f"env '{env_id}' has action space {action_space}; rlgrad's agents take a continuous "
            "(Box) or a Discrete action space (starting at 0): choose such an env, e.g. "
            "env.id=Pendulum-v1 or env.id=CartPole-v1"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(
            f"env '{env_id}' has observation space {obs_space}; rlgrad needs a flat Box: "
            "choose an env with vector observations, e.g. env.id=Pendulum-v1, or flatten "
            "them with env.wrappers=[FlattenObservation]"
        )
    return kind


def check_agent_fits(agent_name: str, env_id: str, kind: str) -> None:
    """Refuse an agent that does not take the env's kind of actions, naming those that do."""
    from rlgrad.agents import AGENT_NAMES, agent_spec

    fits = [n for n in AGENT_NAMES if kind in agent_spec(n).config.action_spaces]
    needs = agent_spec(agent_name).config.action_spaces
    if kind not in needs:
        wanted = " or ".join(ACTION_KINDS[k] for k in needs)
        raise ConfigError(
            f"env '{env_id}' has {ACTION_KINDS[kind]} actions and agent '{agent_name}' needs "
            f"{wanted} actions; agents for {ACTION_KINDS[kind]} actions: {', '.join(fits)}"
        )


def check_env(cfg: EnvConfig, agent_name: str | None = None) -> None:
    """:func:`check_spaces` (and :func:`check_agent_fits` for ``agent_name``), then one reset
    and one step of a probe env: an ``env.kwargs`` value that the env accepts when built but
    fails on (``env.kwargs={g: abc}``) is a one-line :class:`ConfigError` before a run
    directory is touched."""
    kind = check_spaces(cfg.id, cfg.wrappers, **cfg.kwargs)
    if agent_name is not None:
        check_agent_fits(agent_name, cfg.id, kind)
    try:
        with _quiet_probe():
            probe = gym.make(cfg.id, **cfg.kwargs)
            try:
                probe = apply_wrappers(probe, wrapper_factories(cfg.wrappers))
                probe.reset(seed=0)
                probe.step(probe.action_space.sample())
            finally:
                probe.close()
    except ConfigError:
        raise
    except Exception as exc:  # whatever the env raises on a value it cannot use
        reason = " ".join(str(exc).split()) or "no message"
        what = f"with env.kwargs {cfg.kwargs}" if cfg.kwargs else "on its first reset and step"
        hint = "fix or remove those env.kwargs" if cfg.kwargs else "check the env"
        raise ConfigError(
            f"env '{cfg.id}' fails {what}: {type(exc).__name__}: {reason}; {hint}"
        ) from None


class IgnoreSigintInWorker:
    """A sub-env "wrapper" for ``env.vectorization=async`` that leaves the env as it is but,
    in an env worker process, ignores SIGINT: a Ctrl-C in the terminal reaches the whole
    process group, and a worker that died of it would break the run's pipe to it; the run
    itself stops at the end of the step and saves its checkpoint (``rlgrad.runner``). In the
    process that builds the vector env (which builds one env to read the spaces) it does
    nothing."""

    def __init__(self) -> None:
        self.builder_pid = os.getpid()

    def __call__(self, env: gym.Env) -> gym.Env:
        if os.getpid() != self.builder_pid:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return env


@contextlib.contextmanager
def _sigint_blocked(block: bool) -> Iterator[None]:
    """Block SIGINT in this thread while env workers are started, so that they start with it
    blocked (a forked or spawned process inherits the mask) until they ignore it."""
    if not block or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
    kind = check_spaces(cfg.id, cfg.wrappers, **cfg.kwargs)
    n = n_envs or cfg.n_envs
    workers = cfg.vectorization == "async"
    with _sigint_blocked(workers):
        envs = gym.make_vec(
            cfg.id,
            num_envs=n,
            vectorization_mode=cfg.vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=[
                *([IgnoreSigintInWorker()] if workers else []),
                *wrapper_factories(cfg.wrappers),  # the user's, innermost: the rest sees theirs
                EpisodeRecorder,
                *([unit_actions] if cfg.rescale_actions and kind == "continuous" else []),
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
        envs = NormalizeReward(envs, gamma=gamma)
    envs.action_space.seed(seed)
    return envs


def env_spec(envs: VectorEnv) -> EnvSpec:
    return EnvSpec.of(envs.single_observation_space, envs.single_action_space)


def find_wrapper(envs: VectorEnv, kind: type) -> VectorEnv | None:
    """The first wrapper of type ``kind`` in the stack, or None."""
    while isinstance(envs, VectorWrapper):
        if isinstance(envs, kind):
            return envs
        envs = envs.env
    return None
