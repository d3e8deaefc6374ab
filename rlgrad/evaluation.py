"""Evaluate a trained run: rebuild its agent from a checkpoint and play fresh episodes.

The agent is rebuilt from the run's ``config.yaml`` and its weights, observation-normaliser
statistics included, come from the checkpoint; the episodes use seeds the run never saw. The
checkpoint's training buffers (a replay buffer, a half-filled rollout of the training envs) are
not loaded: the evaluation agent keeps its own, shaped for its own number of envs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rlgrad.agent import Agent
from rlgrad.agents import agent_spec
from rlgrad.checkpoint import CheckpointError, load_checkpoint
from rlgrad.config import LearnerConfig, RunConfig, load_config
from rlgrad.envs import RunningMeanStd, env_spec, make_env
from rlgrad.errors import BuildError, UsageError
from rlgrad.learner import Learner
from rlgrad.runner import CHECKPOINT_FILE, check_checkpoint_matches, evaluate


@dataclass
class EvalResult:
    returns: np.ndarray
    checkpoint: Path
    global_step: int
    seed: int


def saved_obs_stats(checkpoint: dict) -> RunningMeanStd | None:
    """The training env's observation-normalisation statistics, if the run normalised."""
    for wrapper in checkpoint.get("envs", {}).get("wrappers", []):
        if "obs_rms" in wrapper:
            state = {k: v.numpy() for k, v in wrapper["obs_rms"].items()}
            stats = RunningMeanStd(tuple(state["mean"].shape))
            stats.load_state_dict(state)
            return stats
    return None


def check_obs_stats(
    cfg: RunConfig, stats: RunningMeanStd | None, path: Path, run_dir: Path
) -> None:
    """Refuse a checkpoint whose observation-normaliser statistics do not match the run's
    config: a policy trained on normalised observations is wrong on raw ones, and the other
    way round."""
    if cfg.env.normalize_obs and stats is None:
        raise CheckpointError(
            f"{path} holds no observation-normaliser statistics, but {run_dir / 'config.yaml'} "
            "normalises observations (env.normalize_obs=true): its policy would see "
            "unnormalised observations; evaluate it with the run directory it came from"
        )
    if not cfg.env.normalize_obs and stats is not None:
        raise CheckpointError(
            f"{path} was trained on normalised observations, but {run_dir / 'config.yaml'} "
            "does not normalise them (env.normalize_obs=false); evaluate it with the run "
            "directory it came from"
        )


def load_run_agent(
    run_dir: Path, checkpoint_path: Path | None = None, device: str = "cpu"
) -> tuple[RunConfig, dict, Path]:
    """The run's config, its checkpoint and that checkpoint's path (refusing foreign ones)."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(
            f"{run_dir} is not a run directory (no config.yaml); give the directory "
            "rlgrad train wrote"
        )
    cfg = load_config(config_path)
    cfg = cfg.model_copy(update={"learner": LearnerConfig(device=device)})
    path = checkpoint_path or run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path)
    check_checkpoint_matches(checkpoint, cfg, path)
    return cfg, checkpoint, path


def evaluate_run(
    run_dir: Path,
    episodes: int,
    deterministic: bool = True,
    checkpoint_path: Path | None = None,
    seed: int | None = None,
    video_dir: Path | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Mean and spread of the return over ``episodes`` fresh episodes (one per sub-env)."""
    cfg, checkpoint, path = load_run_agent(run_dir, checkpoint_path, device)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    extra_wrappers, make_kwargs = [], {}
    if video_dir is not None:
        require_moviepy()  # first: the more basic need, and one that every task shares
        check_rendering(cfg)
        extra_wrappers = [video_recorder(video_dir)]
        make_kwargs = {"render_mode": "rgb_array"}
    obs_stats = saved_obs_stats(checkpoint)
    check_obs_stats(cfg, obs_stats, path, run_dir)
    try:
        learner = Learner(cfg.learner)
    except RuntimeError as exc:  # --device cuda without a GPU
        raise BuildError(" ".join(str(exc).split())) from None
    gamma = float(getattr(cfg.agent, "gamma", 0.99))
    envs = make_env(
        cfg.env,
        seed,
        gamma=gamma,
        n_envs=episodes,
        obs_stats=obs_stats,
        training=False,
        extra_wrappers=extra_wrappers,
        **make_kwargs,
    )
    try:
        agent: Agent = agent_spec(cfg.agent.name).agent(
            cfg.agent, env_spec(envs), learner, envs.num_envs, cfg.total_steps
        )
        load_policy_state(agent, checkpoint["agent"], path, run_dir, checkpoint_path)
        step = int(checkpoint["global_step"])
        with torch.no_grad():
            returns = evaluate(agent, envs, learner.device, seed, deterministic, step)
    finally:
        envs.close()
    return EvalResult(returns, path, step, seed)


def is_buffer_key(key: object) -> bool:
    """Whether an agent state entry is a training buffer (``buffer``, ``…_buffer``)."""
    return isinstance(key, str) and (key == "buffer" or key.endswith("_buffer"))


def without_buffers(saved: dict, fresh: dict) -> dict:
    """``saved`` with each training buffer entry swapped for ``fresh``'s own (empty) one.

    An evaluation agent has one sub-env per episode, so a rollout buffer saved by the training
    envs does not fit it, and acting needs no buffer anyway.
    """
    return {
        key: fresh[key] if is_buffer_key(key) and key in fresh else value
        for key, value in saved.items()
    }


def state_differences(saved: object, fresh: object, prefix: str = "") -> list[str]:
    """Where a saved agent state and a freshly built one differ in structure: missing or
    unexpected entries and tensors of another shape (values are not compared)."""
    where = prefix or "the agent state"
    if isinstance(saved, torch.Tensor) and isinstance(fresh, torch.Tensor):
        if saved.shape != fresh.shape:
            return [
                f"{where} has shape {tuple(saved.shape)} in the checkpoint but "
                f"{tuple(fresh.shape)} in the rebuilt agent"
            ]
        return []
    if isinstance(saved, dict) and isinstance(fresh, dict):
        diffs = []
        for key in fresh:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                if fresh[key] is not None:  # an absent optional part is no difference
                    diffs.append(f"{name} is missing from the checkpoint")
            else:
                diffs += state_differences(saved[key], fresh[key], name)
        diffs += [
            f"{prefix + '.' if prefix else ''}{key} is in the checkpoint but not in the "
            "rebuilt agent"
            for key in saved
            if key not in fresh
        ]
        return diffs
    if (saved is None) != (fresh is None):
        present = "the checkpoint" if fresh is None else "the rebuilt agent"
        return [f"{where} is present only in {present}"]
    return []


def load_policy_state(
    agent: Agent, saved: dict, path: Path, run_dir: Path, checkpoint_path: Path | None
) -> None:
    """Load what acting needs from the checkpoint's agent state (every entry but the training
    buffers); a state that does not fit the agent ``config.yaml`` builds is a one-line error
    naming what differs."""
    fresh = agent.state_dict()
    state = without_buffers(saved, fresh)
    diffs = state_differences(state, fresh)
    reason = None
    if diffs:
        more = f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else ""
        reason = diffs[0] + more
    else:
        try:
            agent.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = "; ".join(lines[:3]) or type(exc).__name__
            if isinstance(exc, KeyError):
                reason = f"entry {reason} is missing from the checkpoint"
    if reason is None:
        return
    config = run_dir / "config.yaml"
    foreign = checkpoint_path is not None and not _is_inside(checkpoint_path, run_dir)
    hint = (
        "evaluate it with the run directory it came from"
        if foreign
        else f"was {config} edited after the run was trained?"
    )
    raise CheckpointError(f"{path} does not fit {config}: {reason}; {hint}")


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


def check_rendering(cfg: RunConfig) -> None:
    """Render one frame of the task, so that a missing renderer is a clear error up front."""
    try:
        env = gym.make(cfg.env.id, render_mode="rgb_array", **cfg.env.kwargs)
        try:
            env.reset(seed=0)
            env.render()
        finally:
            env.close()
    except Exception as exc:  # DependencyNotInstalled, a missing GL context, ...
        if _missing_module(exc) == "pygame":
            raise UsageError(
                f"--video needs pygame to render {cfg.env.id}: "
                'pip install "rlgrad[video]" (or pip install pygame)'
            ) from None
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if "install" in reason else " (MuJoCo tasks may need MUJOCO_GL=egl or osmesa)"
        raise UsageError(f"--video cannot render {cfg.env.id}: {reason}{hint}") from None


def _missing_module(exc: BaseException | None) -> str | None:
    """The top-level module whose failed import caused ``exc`` (following its causes), if any:
    gymnasium re-raises a missing ``pygame`` as ``DependencyNotInstalled``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError) and exc.name:
            return exc.name.split(".")[0]
        if "pygame is not installed" in str(exc):
            return "pygame"
        exc = exc.__cause__ or exc.__context__
    return None


def require_moviepy() -> None:
    """A one-line error naming what to install when moviepy (which writes the videos) is absent."""
    try:
        import moviepy  # noqa: F401  (RecordVideo needs it to write the files)
    except ImportError:
        raise UsageError(
            '--video needs moviepy to write videos: pip install "rlgrad[video]" '
            "(or pip install moviepy)"
        ) from None


def video_recorder(video_dir: Path):
    """A wrapper factory recording every episode of each sub-env to ``video_dir``."""
    require_moviepy()
    counter = iter(range(10**6))

    def wrap(env: gym.Env) -> gym.Env:
        index = next(counter)
        return gym.wrappers.RecordVideo(
            env,
            str(video_dir),
            episode_trigger=lambda episode: episode == 0,
            name_prefix=f"env{index}",
            disable_logger=True,
        )

    return wrap
