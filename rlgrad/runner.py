"""The training loop shared by every agent: collect, store, update, log, evaluate, checkpoint."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from rlgrad.agent import Agent
from rlgrad.agents import agent_spec
from rlgrad.checkpoint import save_checkpoint
from rlgrad.config import RunConfig, to_yaml
from rlgrad.envs import NormalizeObservation, env_spec, find_wrapper, make_env
from rlgrad.learner import Learner
from rlgrad.logging import (
    JsonlSink,
    Logger,
    ProgressBar,
    Sink,
    TensorBoardSink,
    WandbSink,
    resolve_wandb_mode,
)

EVAL_SEED_OFFSET = 1_000_003
RESULT_FILE = "result.json"


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    eval_return_mean: float
    eval_return_std: float


def eval_seed(run_seed: int, index: int) -> int:
    """Seed of the ``index``-th evaluation: fresh episodes, unrelated across run seeds."""
    return int(np.random.SeedSequence([EVAL_SEED_OFFSET, run_seed, index]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_tensor(
    array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=dtype).to(device, non_blocking=True)


def true_next_obs(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """The observation each env really reached: where an episode ended, its final one."""
    if "final_obs" not in info:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(info["_final_obs"]):
        real[i] = info["final_obs"][i]
    return real


def episode_metrics(info: dict) -> list[dict[str, float]]:
    """``charts/episodic_return`` and ``charts/episodic_length`` of episodes that just ended."""
    if "episode" not in info:
        return []
    done = np.flatnonzero(info["_episode"])
    return [
        {
            "charts/episodic_return": float(info["episode"]["r"][i]),
            "charts/episodic_length": float(info["episode"]["l"][i]),
        }
        for i in done
    ]


def evaluate(
    agent: Agent, envs: VectorEnv, device: torch.device, seed: int, deterministic: bool, step: int
) -> np.ndarray:
    """The return of the first episode of each of the eval envs (one episode per env)."""
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs)
    finished = np.zeros(envs.num_envs, dtype=bool)
    while not finished.all():
        obs_t = to_tensor(obs, device)
        actions = agent.act_deterministic(obs_t) if deterministic else agent.act(obs_t, step)
        obs, rewards, terminated, truncated, _ = envs.step(actions.cpu().numpy())
        returns += np.where(finished, 0.0, rewards)
        finished |= terminated | truncated
    return returns


def _crossed(before: int, after: int, interval: int) -> bool:
    return interval > 0 and before // interval != after // interval


def build_logger(cfg: RunConfig, run_dir: Path, quiet: bool) -> Logger:
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl")]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    mode = resolve_wandb_mode(cfg.logging.wandb)
    if mode != "disabled":
        name = cfg.name or run_dir.name
        sinks.append(WandbSink(cfg.logging, mode, run_dir, name, cfg.model_dump(mode="json")))
    progress = None if quiet else ProgressBar(cfg.total_steps)
    return Logger(sinks, progress)


def train(cfg: RunConfig, run_dir: Path, quiet: bool = False) -> TrainResult:
    """Train the agent ``cfg`` names for ``cfg.total_steps`` environment steps into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    seed_everything(cfg.seed)
    learner = Learner(cfg.learner)
    device = learner.device
    threads = cfg.learner.torch_threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    gamma = float(getattr(cfg.agent, "gamma", 0.99))
    envs = make_env(cfg.env, cfg.seed, gamma=gamma)
    normalizer = find_wrapper(envs, NormalizeObservation)
    eval_envs = make_env(
        cfg.env,
        cfg.seed + EVAL_SEED_OFFSET,
        gamma=gamma,
        n_envs=cfg.eval.episodes,
        obs_stats=normalizer.stats if normalizer else None,
        training=False,
    )
    agent: Agent = agent_spec(cfg.agent.name).agent(
        cfg.agent, env_spec(envs), learner, envs.num_envs, cfg.total_steps
    )
    logger = build_logger(cfg, run_dir, quiet)
    diagnose = getattr(agent, "diagnose", None)

    def run_eval(step: int, index: int) -> np.ndarray:
        seed = eval_seed(cfg.seed, index)
        returns = evaluate(agent, eval_envs, device, seed, cfg.eval.deterministic, step)
        logger.log(
            {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std())},
            step,
        )
        return returns

    global_step, n_evals = 0, 0
    latest: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    obs, _ = envs.reset(seed=cfg.seed)
    obs_t = to_tensor(obs, device)
    try:
        while global_step < cfg.total_steps:
            actions = agent.act(obs_t, global_step)
            next_obs, rewards, terminated, truncated, info = envs.step(actions.cpu().numpy())
            before, global_step = global_step, global_step + envs.num_envs
            agent.observe(
                obs_t,
                actions,
                to_tensor(rewards, device),
                to_tensor(true_next_obs(next_obs, info), device),
                to_tensor(terminated, device, torch.bool),
                to_tensor(truncated, device, torch.bool),
            )
            obs_t = to_tensor(next_obs, device)
            for episode in episode_metrics(info):
                logger.log(episode, global_step)

            updates_before = getattr(agent, "updates", 0)
            latest = agent.update(global_step) or latest
            if diagnose is not None and _crossed(
                updates_before, agent.updates, cfg.diagnostics.interval
            ):
                logger.log({k: float(v) for k, v in diagnose(cfg.diagnostics).items()}, global_step)
            if _crossed(before, global_step, cfg.logging.interval) and latest:
                metrics = {k: float(v) for k, v in latest.items()}
                metrics["charts/sps"] = global_step / (time.perf_counter() - start)
                metrics["learner/nonfinite_skips"] = float(learner.nonfinite_skips)
                logger.log(metrics, global_step)
            if _crossed(before, global_step, cfg.eval.interval) and global_step < cfg.total_steps:
                run_eval(global_step, n_evals)
                n_evals += 1
            if _crossed(before, global_step, cfg.checkpoint.interval):
                save_run_checkpoint(run_dir, cfg, agent, learner, global_step)
            logger.advance(global_step)

        returns = run_eval(global_step, n_evals)
        save_run_checkpoint(run_dir, cfg, agent, learner, global_step)
    finally:
        logger.close()
        envs.close()
        eval_envs.close()
    result = TrainResult(run_dir, global_step, float(returns.mean()), float(returns.std()))
    write_result(result)
    return result


def write_result(result: TrainResult) -> Path:
    """``result.json``: written last and atomically, so its presence marks a finished run."""
    path = result.run_dir / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "global_step": result.global_step,
                "eval_return_mean": result.eval_return_mean,
                "eval_return_std": result.eval_return_std,
            }
        )
        + "\n"
    )
    os.replace(tmp, path)
    return path


def save_run_checkpoint(
    run_dir: Path, cfg: RunConfig, agent: Agent, learner: Learner, global_step: int
) -> Path:
    return save_checkpoint(
        run_dir / "checkpoints" / "latest.pt",
        {
            "agent_name": cfg.agent.name,
            "env_id": cfg.env.id,
            "global_step": global_step,
            "agent": agent.state_dict(),
            "learner": learner.state_dict(),
        },
    )
