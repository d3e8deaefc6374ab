"""rlgrad's Python API: train a run, load its policy, act with it.

>>> result = rlgrad.train("sac_pendulum", total_steps=300, logging__wandb="disabled")
>>> policy = rlgrad.load(result.run_dir)
>>> action = policy.predict(obs)              # numpy in, numpy out, in the env's action space

:func:`train` takes what ``rlgrad train`` takes (a shipped config's name, a YAML file, or a
dict) with overrides as keyword arguments: ``agent__batch_size=64`` or, with dots,
``**{"agent.batch_size": 64}``. :func:`load` rebuilds a run's policy from its policy file
(``checkpoints/policy.pt``, written by :func:`save_policy`) or its latest checkpoint, with the
run's observation normalisation. ``import rlgrad`` stays cheap: this module (and torch) is
imported on first use of ``rlgrad.train`` or ``rlgrad.load``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlgrad.agent import Agent
from rlgrad.agents import agent_spec
from rlgrad.checkpoint import load_checkpoint, save_checkpoint
from rlgrad.config import (
    ConfigError,
    LearnerConfig,
    RunConfig,
    find_config,
    merge,
    read_yaml,
    validate,
)
from rlgrad.envs import (
    EnvSpec,
    RunningMeanStd,
    apply_wrappers,
    check_env,
    check_spaces,
    env_actions,
    wrapper_factories,
)
from rlgrad.errors import UsageError
from rlgrad.evaluation import load_policy_state, load_run_agent, saved_obs_stats
from rlgrad.runner import BEST_FILE, CHECKPOINT_FILE, POLICY_FILE, TrainResult

__all__ = ["BEST_FILE", "POLICY_FILE", "Policy", "TrainResult", "load", "save_policy", "train"]

NAMED_CHECKPOINTS = {"policy": POLICY_FILE, "best": BEST_FILE, "latest": CHECKPOINT_FILE}
_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# ---- train -------------------------------------------------------------------------------------


def resolve_config(
    config: str | Path | Mapping[str, Any] | RunConfig, **overrides: Any
) -> RunConfig:
    """The validated config ``config`` names (shipped name, YAML path, dict or RunConfig) with
    ``overrides`` (``agent__batch_size=64`` or ``**{"agent.batch_size": 64}``) applied."""
    if isinstance(config, RunConfig):
        base = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        base = dict(config)
    elif isinstance(config, str | Path):
        base = read_yaml(find_config(config))
    else:
        raise ConfigError(
            f"rlgrad.train takes a config name, a YAML path or a dict, not {type(config).__name__}"
        )
    return validate(merge(base, nested_overrides(overrides)))


def nested_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"agent__batch_size": 64, "env.id": "X"}`` → ``{"agent": {"batch_size": 64}, "env":
    {"id": "X"}}``; later keys win."""
    nested: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        key = raw_key.replace("__", ".")
        if not _KEY.match(key):
            raise ConfigError(
                f"malformed override key {raw_key!r}: expected a config key with double "
                "underscores or dots, e.g. agent__batch_size=64 or **{'agent.batch_size': 64}"
            )
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            child = node.get(section)
            if not isinstance(child, dict):
                child = node[section] = {}
            node = child
        node[leaf] = value
    return nested


def train(
    config: str | Path | Mapping[str, Any] | RunConfig,
    /,
    *,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a run, as ``rlgrad train`` does, and return its :class:`TrainResult`
    (``run_dir``, ``global_step``, ``eval_return_mean``, ``eval_return_std``).

    ``config``: a shipped config's name (``"sac_pendulum"``), a YAML file, or a dict of config
    keys. ``overrides``: config keys as keyword arguments, sections joined by double
    underscores (``agent__batch_size=64``) or by dots (``**{"agent.batch_size": 64}``).
    ``run_dir`` defaults to ``runs/<agent>-<env>-s<seed>-<time>-<hex>``; a directory that holds
    a run is refused unless ``overwrite``. ``quiet=False`` shows the progress bar.
    Bad input raises :class:`~rlgrad.config.ConfigError` or :class:`~rlgrad.errors.UsageError`
    (one-line messages) before anything is written.
    """
    # The new-run path of ``rlgrad train`` (rlgrad.commands.train.run), without its printing.
    from rlgrad.commands import train as command
    from rlgrad.run_lock import hold_run_dir
    from rlgrad.runner import train as run_training

    cfg = resolve_config(config, **overrides)
    check_env(cfg.env, cfg.agent.name)
    directory = Path(run_dir) if run_dir is not None else command.default_run_dir(cfg)
    command.refuse_a_file(directory)
    with hold_run_dir(directory):
        command.check_run_dir(directory, overwrite)
        prepare = functools.partial(command.prepare_run_dir, directory, overwrite)
        return run_training(cfg, directory, quiet=quiet, prepare=prepare)


# ---- policy files ------------------------------------------------------------------------------


def acting_state(agent: Agent, agent_name: str) -> dict[str, Any]:
    """The entries of ``agent.state_dict()`` that acting needs (no buffers, no critics), as the
    agent declares them (``Agent.policy_state_dict``)."""
    return agent.policy_state_dict()


def save_policy(
    path: str | Path,
    agent: Agent,
    obs_stats: RunningMeanStd | None,
    cfg: RunConfig,
    global_step: int | None = None,
) -> Path:
    """Write a small policy file: the acting networks' weights, the observation normaliser's
    statistics (``obs_stats``, None when the run does not normalise) and the config; no
    buffers, no critics. Atomic and checksummed (:func:`rlgrad.checkpoint.save_checkpoint`),
    read with ``weights_only=True``; :func:`load` reads it."""
    stats = None
    if obs_stats is not None:
        stats = {
            "mean": torch.as_tensor(np.asarray(obs_stats.mean, np.float64)),
            "var": torch.as_tensor(np.asarray(obs_stats.var, np.float64)),
            "count": float(obs_stats.count),
        }
    return save_checkpoint(
        path,
        {
            "kind": "policy",
            "agent_name": cfg.agent.name,
            "env_id": cfg.env.id,
            "global_step": -1 if global_step is None else int(global_step),
            "config": cfg.model_dump(mode="json"),
            "agent": {
                key: _detached(value) for key, value in acting_state(agent, cfg.agent.name).items()
            },
            "obs_rms": stats,
        },
    )


def _detached(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (a GPU run's file loads anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _obs_stats(checkpoint: dict) -> RunningMeanStd | None:
    saved = checkpoint.get("obs_rms")
    if saved is None:
        return saved_obs_stats(checkpoint)  # a training checkpoint: the env wrapper's state
    mean = np.asarray(saved["mean"], np.float64)
    stats = RunningMeanStd(mean.shape)
    stats.load_state_dict({"mean": mean, "var": np.asarray(saved["var"]), "count": saved["count"]})
    return stats


# ---- load --------------------------------------------------------------------------------------


class Policy:
    """A trained run's policy: :meth:`predict` maps observations of the run's env (as
    ``gymnasium.make(policy.env_id)`` returns them) to actions in that env's action space,
    applying the run's ``env.wrappers`` (to a Dict observation) and observation normalisation."""

    def __init__(
        self,
        agent: Agent,
        cfg: RunConfig,
        obs_stats: RunningMeanStd | None,
        env: gym.Env,
        checkpoint: Path,
        global_step: int,
        device: torch.device,
    ):
        self.agent, self.config, self.obs_stats = agent, cfg, obs_stats
        self.env_id: str = cfg.env.id
        self.checkpoint, self.global_step, self.device = checkpoint, global_step, device
        self.observation_space = env.observation_space  # after env.wrappers: what predict takes
        self.action_space = env.action_space  # the env's own: what predict returns
        self._wrapped = env  # applies env.wrappers' observation transforms to raw observations
        self.spec = EnvSpec.of(env.observation_space, env.action_space)
        self.obs_shape: tuple[int, ...] = tuple(env.observation_space.shape)

    def __repr__(self) -> str:
        return (
            f"Policy({self.config.agent.name} on {self.env_id}, obs {self.obs_shape}, "
            f"from {self.checkpoint})"
        )

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """The action for one observation (shape ``obs_shape``) or each of a batch (``(n,
        *obs_shape)``), as an array of shape ``action_space.shape`` or ``(n, ...)``: the env's
        dtype for a Box space, int64 indices for a Discrete one.

        ``deterministic``: the policy's mode (default), else a sampled action."""
        obs = self._observation(obs)
        batched = obs.ndim == len(self.obs_shape) + 1
        rows = obs if batched else obs[None]
        if self.obs_stats is not None:  # exactly rlgrad.envs.NormalizeObservation's arithmetic
            scaled = (rows - self.obs_stats.mean) / np.sqrt(self.obs_stats.var + 1e-8)
            clip = self.config.env.clip_obs
            rows = np.clip(scaled, -clip, clip).astype(np.float32)
        obs_t = torch.as_tensor(rows, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if deterministic:
                actions = self.agent.act_deterministic(obs_t)
            else:
                actions = self.agent.act(obs_t, self.config.total_steps)
        actions = env_actions(actions, self.spec)
        if self.config.env.rescale_actions and not self.spec.discrete:  # as envs.UnitActions
            space = self.action_space
            unit = np.clip(actions, -1.0, 1.0)
            actions = (space.low + (unit + 1.0) * (space.high - space.low) / 2.0).astype(
                space.dtype
            )
        return actions if batched else actions[0]

    def _observation(self, obs: Any) -> np.ndarray:
        if isinstance(obs, Mapping):  # a Dict observation: through env.wrappers (Flatten…)
            obs = self._through_wrappers(obs)
        dtype = np.float64 if self.obs_stats is not None else np.float32
        try:
            array = np.asarray(obs, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"observation {obs!r:.80} is not an array of numbers ({exc}); the policy of "
                f"{self.env_id} takes shape {self.obs_shape}"
            ) from None
        if array.shape == self.obs_shape or (
            array.ndim == len(self.obs_shape) + 1 and array.shape[1:] == self.obs_shape
        ):
            return array
        batch = ", ".join(map(str, ("n", *self.obs_shape)))
        raise ValueError(
            f"observation of shape {array.shape} does not fit the policy of {self.env_id}, "
            f"which takes shape {self.obs_shape} (or a batch ({batch}))"
        )

    def _through_wrappers(self, obs: Any) -> Any:
        """A raw observation of the env through ``env.wrappers``' observation transforms."""
        chain = []
        env = self._wrapped
        while isinstance(env, gym.Wrapper):
            chain.append(env)
            env = env.env
        for wrapper in reversed(chain):  # innermost first
            if isinstance(wrapper, gym.ObservationWrapper):
                obs = wrapper.observation(obs)
        return obs


def _choose_checkpoint(run_dir: Path) -> Path:
    """``checkpoints/policy.pt`` unless ``latest.pt`` is newer (a run resumed after it was
    written), else ``latest.pt``; a one-line :class:`UsageError` when neither is there."""
    policy, latest = run_dir / POLICY_FILE, run_dir / CHECKPOINT_FILE
    if policy.is_file() and (
        not latest.is_file() or policy.stat().st_mtime_ns >= latest.stat().st_mtime_ns
    ):
        return policy
    if latest.is_file():
        return latest
    raise UsageError(
        f"{run_dir} holds no checkpoint ({POLICY_FILE} or {CHECKPOINT_FILE}); the run has not "
        "saved one yet (it saves every checkpoint.interval steps and at the end)"
    )


def load(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> Policy:
    """The policy of the run in ``run_dir`` (a directory ``rlgrad train`` wrote, or a policy
    file itself), rebuilt from its policy file ``checkpoints/policy.pt`` or, when there is
    none (or the run went on after it), its latest checkpoint ``checkpoints/latest.pt``;
    ``checkpoint`` picks another file: a path, or ``"policy"``, ``"best"`` or ``"latest"`` for
    that file of the run's ``checkpoints/``. ``device``: ``cpu`` (default), ``cuda`` or ``auto``.

    A folder that holds no run, or a checkpoint that does not fit the run, raises a one-line
    :class:`~rlgrad.errors.UsageError` or :class:`~rlgrad.checkpoint.CheckpointError`.
    """
    path = Path(run_dir)
    if isinstance(checkpoint, str) and checkpoint in NAMED_CHECKPOINTS:
        checkpoint = path / NAMED_CHECKPOINTS[checkpoint]
        if not checkpoint.is_file():
            raise UsageError(f"{path} has no {checkpoint.relative_to(path)}")
    if checkpoint is None and path.is_file():  # a policy file, inside its run or on its own
        run, file = path.parent.parent, path
    else:
        run = path
        if not run.is_dir():
            raise UsageError(f"no run directory {run}; give a directory rlgrad train wrote")
        if checkpoint is None and not (
            (run / "config.yaml").is_file() or (run / POLICY_FILE).is_file()
        ):
            raise UsageError(
                f"{run} holds no run (no config.yaml); give a directory rlgrad train wrote, "
                "e.g. runs/sac-Pendulum-v1-s0-…"
            )
        file = Path(checkpoint) if checkpoint is not None else _choose_checkpoint(run)
    if (run / "config.yaml").is_file():
        cfg, saved, file = load_run_agent(run, file, device)
    else:
        saved = load_checkpoint(file)
        if not isinstance(saved.get("config"), dict):
            raise UsageError(
                f"{file} is a training checkpoint and {run} has no config.yaml to rebuild its "
                "agent from; load the run directory it came from"
            )
        cfg = validate(saved["config"])
        cfg = cfg.model_copy(update={"learner": LearnerConfig(device=device)})
    env = _probe_env(cfg)
    try:
        agent, learner = _build_agent(cfg, env)
        state = {**agent.state_dict(), **saved["agent"]}  # a policy file: acting entries only
        given = Path(checkpoint) if checkpoint is not None else None
        load_policy_state(agent, state, file, run, given)
    finally:
        env.close()
    step = int(saved.get("global_step", -1))
    return Policy(agent, cfg, _obs_stats(saved), env, file, step, learner.device)


def _probe_env(cfg: RunConfig) -> gym.Env:
    """One copy of the run's env with its ``env.wrappers``: its spaces size the networks."""
    check_spaces(cfg.env.id, cfg.env.wrappers, **cfg.env.kwargs)
    env = gym.make(cfg.env.id, **cfg.env.kwargs)
    return apply_wrappers(env, wrapper_factories(cfg.env.wrappers))


def _build_agent(cfg: RunConfig, env: gym.Env) -> tuple[Agent, Any]:
    from rlgrad.learner import Learner

    agent_cfg = cfg.agent
    if "buffer_size" in type(agent_cfg).model_fields:  # acting needs no replay buffer
        agent_cfg = agent_cfg.model_copy(update={"buffer_size": min(agent_cfg.buffer_size, 1024)})
    spec = EnvSpec.of(env.observation_space, env.action_space)
    learner = Learner(cfg.learner)
    return agent_spec(cfg.agent.name).agent(agent_cfg, spec, learner, 1, cfg.total_steps), learner
