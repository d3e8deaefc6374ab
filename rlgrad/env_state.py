"""The state of a vector env as checkpointable data, restored by deterministic replay.

Simulator state (a MuJoCo ``MjData``, a Box2D world) cannot be saved without pickling, which
``torch.load(weights_only=True)`` rightly refuses. Gymnasium envs are deterministic given
their seed and actions, though, so each sub-env is wrapped in :class:`EpisodeRecorder`, which
remembers how its current episode began (the reset seed, or the env's generator state just
before an automatic reset) and the actions taken since. Restoring resets the env that way and
replays the actions — at most one episode — then checks that it arrives at the recorded
observation. The vector wrappers' own statistics (episode returns so far, normalisers) are
plain arrays and are saved as such.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.wrappers.vector import NormalizeReward, RecordEpisodeStatistics

from rlgrad.checkpoint import CheckpointError

# Array-valued attributes of gymnasium's vector wrappers that carry state between steps.
WRAPPER_FIELDS: dict[type, tuple[str, ...]] = {
    RecordEpisodeStatistics: ("episode_returns", "episode_lengths", "prev_dones"),
    NormalizeReward: ("accumulated_reward", "_prev_dones"),
}


def _tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


class EpisodeRecorder(gym.Wrapper):
    """Records how the current episode began and its actions, so that it can be replayed."""

    pending_replay: dict[str, Any] | None = None  # set through VectorEnv.set_attr

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._seed: int | None = None
        self._rng_before_reset: dict[str, Any] | None = None
        self._actions: list[np.ndarray] = []
        self._last_obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._seed = seed
        rng = self.env.np_random.bit_generator.state if seed is None else None
        self._rng_before_reset = rng
        self._actions = []
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, info

    def step(self, action):
        self._actions.append(np.array(action, copy=True))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def episode_state(self) -> dict[str, Any]:
        if self._last_obs is None:
            raise RuntimeError("the env has not been reset yet; nothing to record")
        actions = (
            np.stack(self._actions)
            if self._actions
            else np.zeros((0, *self.env.action_space.shape), self.env.action_space.dtype)
        )
        return {
            "seed": self._seed,
            "rng_before_reset": self._rng_before_reset,
            "actions": _tensor(actions),
            "last_obs": _tensor(self._last_obs),
        }

    def replay_pending(self) -> bool:
        """Rebuild the episode in ``pending_replay``; True when it reproduces the recorded obs."""
        state, self.pending_replay = self.pending_replay, None
        if state is None:
            raise RuntimeError("set pending_replay before calling replay_pending")
        if state["seed"] is not None:
            self.reset(seed=int(state["seed"]))
        else:
            self.env.np_random.bit_generator.state = state["rng_before_reset"]
            self.reset()
        for action in state["actions"].numpy():
            self.step(action)
        return bool(np.array_equal(self._last_obs, state["last_obs"].numpy()))


def _wrappers(envs: VectorEnv) -> list[VectorEnv]:
    stack = []
    while isinstance(envs, VectorWrapper):
        stack.append(envs)
        envs = envs.env
    return stack


def vector_env_state(envs: VectorEnv) -> dict[str, Any]:
    """Everything needed to put ``envs`` (built by :func:`rlgrad.envs.make_env`) back as it is."""
    wrappers: list[dict[str, Any]] = []
    for wrapper in _wrappers(envs):
        entry: dict[str, Any] = {"type": type(wrapper).__name__}
        for kind, fields in WRAPPER_FIELDS.items():
            if isinstance(wrapper, kind):
                entry.update({name: _tensor(getattr(wrapper, name)) for name in fields})
        if isinstance(wrapper, RecordEpisodeStatistics):
            entry["episode_count"] = int(wrapper.episode_count)
        if isinstance(wrapper, NormalizeReward):
            rms = wrapper.return_rms
            entry["return_rms"] = {
                "mean": _tensor(rms.mean),
                "var": _tensor(rms.var),
                "count": float(rms.count),
            }
        stats = getattr(wrapper, "stats", None)  # rlgrad's NormalizeObservation
        if stats is not None:
            entry["obs_rms"] = {k: _tensor(v) for k, v in stats.state_dict().items()}
        wrappers.append(entry)
    return {
        "wrappers": wrappers,
        "episodes": list(envs.unwrapped.call("episode_state")),
        "action_space_rng": envs.action_space.np_random.bit_generator.state,
    }


def load_vector_env_state(envs: VectorEnv, state: dict[str, Any]) -> None:
    """Restore what :func:`vector_env_state` saved into freshly built ``envs``."""
    stack = _wrappers(envs)
    names = [type(w).__name__ for w in stack]
    saved_names = [entry["type"] for entry in state["wrappers"]]
    if names != saved_names:
        raise CheckpointError(
            f"the checkpoint's env wrappers {saved_names} differ from this config's {names}; "
            "resume with the config the run was started with"
        )
    for wrapper, entry in zip(stack, state["wrappers"], strict=True):
        for kind, fields in WRAPPER_FIELDS.items():
            if isinstance(wrapper, kind):
                for name in fields:
                    setattr(wrapper, name, entry[name].numpy().copy())
        if isinstance(wrapper, RecordEpisodeStatistics):
            wrapper.episode_count = entry["episode_count"]
        if "return_rms" in entry:
            rms = wrapper.return_rms
            rms.mean = entry["return_rms"]["mean"].numpy().copy()
            rms.var = entry["return_rms"]["var"].numpy().copy()
            rms.count = entry["return_rms"]["count"]
        if "obs_rms" in entry:
            wrapper.stats.load_state_dict({k: v.numpy() for k, v in entry["obs_rms"].items()})
    if len(state["episodes"]) != envs.num_envs:
        raise CheckpointError(
            f"the checkpoint holds {len(state['episodes'])} envs, this config {envs.num_envs}"
        )
    envs.unwrapped.set_attr("pending_replay", list(state["episodes"]))
    replayed = envs.unwrapped.call("replay_pending")
    if not all(replayed):
        bad = [i for i, ok in enumerate(replayed) if not ok]
        raise CheckpointError(
            f"replaying the checkpoint's episodes did not reproduce env(s) {bad}: the env is "
            "not deterministic given its seed and actions, so this run cannot be resumed exactly"
        )
    envs.action_space.np_random.bit_generator.state = state["action_space_rng"]
