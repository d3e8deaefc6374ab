"""Evaluate a trained run: rebuild its agent from a checkpoint and play fresh episodes.

The agent is rebuilt from the run's ``config.yaml`` and its weights, observation-normaliser
statistics included, come from the checkpoint; the episodes use seeds the run never saw.
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
from rlgrad.errors import UsageError
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
        check_rendering(cfg)
        extra_wrappers = [video_recorder(video_dir)]
        make_kwargs = {"render_mode": "rgb_array"}
    gamma = float(getattr(cfg.agent, "gamma", 0.99))
    envs = make_env(
        cfg.env,
        seed,
        gamma=gamma,
        n_envs=episodes,
        obs_stats=saved_obs_stats(checkpoint),
        training=False,
        extra_wrappers=extra_wrappers,
        **make_kwargs,
    )
    try:
        learner = Learner(cfg.learner)
        agent: Agent = agent_spec(cfg.agent.name).agent(
            cfg.agent, env_spec(envs), learner, envs.num_envs, cfg.total_steps
        )
        try:
            agent.load_state_dict(checkpoint["agent"])
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{path} does not fit {run_dir / 'config.yaml'} ({reason}); evaluate the "
                "run directory the checkpoint came from"
            ) from None
        step = int(checkpoint["global_step"])
        with torch.no_grad():
            returns = evaluate(agent, envs, learner.device, seed, deterministic, step)
    finally:
        envs.close()
    return EvalResult(returns, path, step, seed)


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
        reason = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if "install" in reason else " (MuJoCo tasks may need MUJOCO_GL=egl or osmesa)"
        raise UsageError(f"--video cannot render {cfg.env.id}: {reason}{hint}") from None


def video_recorder(video_dir: Path):
    """A wrapper factory recording every episode of each sub-env to ``video_dir``."""
    try:
        import moviepy  # noqa: F401  (RecordVideo needs it to write the files)
    except ImportError:
        raise UsageError(
            "--video needs moviepy to write videos: pip install 'rlgrad[video]' "
            "(or pip install moviepy)"
        ) from None
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
