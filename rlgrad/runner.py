"""The training loop shared by every agent: collect, store, update, log, evaluate, checkpoint.

A checkpoint holds everything the loop needs to go on as if it had never stopped: the agent
(networks, targets, buffers, counters), the optimisers, every RNG state, the envs' state (see
:mod:`rlgrad.env_state`), the loop's counters and the logger's position. ``train(...,
resume=True)`` rebuilds the run from its ``config.yaml``, loads the latest checkpoint and
continues: on CPU a resumed run writes the same metrics and ends with bitwise the same
parameters as one that never stopped. SIGINT/SIGTERM save a checkpoint and stop the run with
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from rlgrad.agent import Agent, diagnostics_interval, will_measure
from rlgrad.agents import agent_spec
from rlgrad.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_orphan_temp_files,
    save_checkpoint,
)
from rlgrad.config import RunConfig, to_yaml
from rlgrad.env_state import load_vector_env_state, vector_env_state
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
from rlgrad.rng import load_rng_state, rng_state, seed_everything
from rlgrad.run_lock import hold_run_dir

EVAL_SEED_OFFSET = 1_000_003
RESULT_FILE = "result.json"
CHECKPOINT_FILE = Path("checkpoints") / "latest.pt"


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint."""

    def __init__(self, signum: int, global_step: int, checkpoint: Path, run_dir: Path):
        self.signum, self.global_step = signum, global_step
        self.checkpoint, self.run_dir = checkpoint, run_dir
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {global_step}; checkpoint "
            f"saved to {checkpoint}; continue with: rlgrad train --resume {run_dir}"
        )


@dataclass
class LoopState:
    """The training loop's own position, saved in every checkpoint."""

    global_step: int = 0
    n_evals: int = 0
    # The last update's metrics, kept as the agent returned them (tensors): converting them on
    # every update would cost a host sync per metric on a GPU; they are read when logged.
    latest: dict[str, float | torch.Tensor] = field(default_factory=dict)
    obs: torch.Tensor | None = None
    final_returns: list[float] | None = None  # set once the final evaluation has run

    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "n_evals": self.n_evals,
            "latest": {k: float(v) for k, v in self.latest.items()},
            "obs": self.obs.cpu(),
            "final_returns": self.final_returns,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.global_step, self.n_evals = int(state["global_step"]), int(state["n_evals"])
        self.latest = {k: float(v) for k, v in state["latest"].items()}
        self.obs = state["obs"].to(device)
        self.final_returns = state.get("final_returns")


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    eval_return_mean: float
    eval_return_std: float


def eval_seed(run_seed: int, index: int) -> int:
    """Seed of the ``index``-th evaluation: fresh episodes, unrelated across run seeds."""
    return int(np.random.SeedSequence([EVAL_SEED_OFFSET, run_seed, index]).generate_state(1)[0])


def to_tensor(
    array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.as_tensor(array, dtype=dtype, device=device)


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


def build_logger(
    cfg: RunConfig, run_dir: Path, quiet: bool, resume_from: dict | None = None
) -> Logger:
    """The sinks a config asks for; ``resume_from`` (a checkpoint's logger state) continues them."""
    start = int(resume_from["global_step"]) if resume_from else 0
    logger_state = resume_from["logger"] if resume_from else {}
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl", logger_state.get("jsonl_bytes"))]
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(run_dir, purge_step=start + 1 if resume_from else None))
    mode = resolve_wandb_mode(cfg.logging.wandb)
    if mode != "disabled":
        name = cfg.name or run_dir.name
        sinks.append(
            WandbSink(
                cfg.logging,
                mode,
                run_dir,
                name,
                cfg.model_dump(mode="json"),
                run_id=logger_state.get("wandb_id"),
            )
        )
    progress = None if quiet else ProgressBar(cfg.total_steps, initial=start)
    logger = Logger(sinks, progress)
    logger.last_return = logger_state.get("last_return")
    return logger


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a request the loop honours at the end of a step.

    A second signal while the first is being handled stops at once (the previous checkpoint,
    written atomically, stays intact). Outside the main thread signals cannot be caught and
    the list stays empty.
    """
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum: int, frame: object) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def describe_kernels(learner: Learner) -> str:
    """``name=fused, name=reference, …`` for the kernels the agent bound (``none`` if none)."""
    active = learner.active_kernels
    return ", ".join(f"{name}={kind}" for name, kind in sorted(active.items())) or "none"


def check_checkpoint_matches(checkpoint: dict, cfg: RunConfig, path: Path) -> None:
    """Refuse a checkpoint written by another agent or for another env."""
    saved = (checkpoint.get("agent_name"), checkpoint.get("env_id"))
    if saved != (cfg.agent.name, cfg.env.id):
        raise CheckpointError(
            f"{path} was written by agent {saved[0]} on {saved[1]}, but the config trains "
            f"{cfg.agent.name} on {cfg.env.id}; use the run directory it came from"
        )


def train(cfg: RunConfig, run_dir: Path, quiet: bool = False, resume: bool = False) -> TrainResult:
    """Train the agent ``cfg`` names for ``cfg.total_steps`` environment steps into ``run_dir``.

    With ``resume``, continue the run in ``run_dir`` from its latest checkpoint. The run holds
    ``run_dir``'s lock (:mod:`rlgrad.run_lock`) from start to end, so another process that
    would write into it stops first with :class:`~rlgrad.run_lock.RunDirInUse`; once it is
    held, temporary files that killed saves left there are removed.
    """
    if resume and not (run_dir / CHECKPOINT_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} has no checkpoint ({CHECKPOINT_FILE}) to resume from; start it "
            "again with rlgrad train CONFIG --run-dir DIR --overwrite"
        )
    with hold_run_dir(run_dir):
        remove_orphan_temp_files(run_dir / CHECKPOINT_FILE)
        for name in (RESULT_FILE, "config.yaml"):  # temporary files of killed writes
            (run_dir / f".{name}.tmp").unlink(missing_ok=True)
        return _train(cfg, run_dir, quiet, resume)


def _train(cfg: RunConfig, run_dir: Path, quiet: bool, resume: bool) -> TrainResult:
    """:func:`train`'s body, run while it holds ``run_dir``'s lock."""
    checkpoint = None
    if resume:
        path = run_dir / CHECKPOINT_FILE
        checkpoint = load_checkpoint(path)
        check_checkpoint_matches(checkpoint, cfg, path)
        jsonl_bytes = checkpoint.get("logger", {}).get("jsonl_bytes")
        if jsonl_bytes is not None:  # a torn metrics.jsonl: refuse before anything is written
            JsonlSink.check_resumable(run_dir / "metrics.jsonl", jsonl_bytes)
    run_dir.mkdir(parents=True, exist_ok=True)
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
    loop = LoopState()
    try:
        if checkpoint is not None:
            restore(checkpoint, agent, learner, envs, loop)
        else:
            obs, _ = envs.reset(seed=cfg.seed)
            loop.obs = to_tensor(obs, device)
        kernels = describe_kernels(learner)
        write_atomically(run_dir / "config.yaml", f"# kernels: {kernels}\n{to_yaml(cfg)}")
        if not quiet:
            print(f"rlgrad: {cfg.agent.name} on {cfg.env.id} into {run_dir} (kernels: {kernels})")
        logger = build_logger(cfg, run_dir, quiet, resume_from=checkpoint)
    except BaseException:
        envs.close()
        eval_envs.close()
        raise

    def run_eval(step: int) -> np.ndarray:
        seed = eval_seed(cfg.seed, loop.n_evals)
        returns = evaluate(agent, eval_envs, device, seed, cfg.eval.deterministic, step)
        loop.n_evals += 1
        logger.log(
            {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std())},
            step,
        )
        return returns

    def save() -> Path:
        return save_run_checkpoint(run_dir, cfg, agent, learner, envs, loop, logger)

    diagnostics = cfg.diagnostics.model_copy(
        update={"interval": diagnostics_interval(agent, cfg.diagnostics)}
    )
    start_step, start_time = loop.global_step, time.perf_counter()
    try:
        with stop_requests() as stop:
            while loop.global_step < cfg.total_steps:
                before = loop.global_step
                actions = agent.act(loop.obs, before)
                next_obs, rewards, terminated, truncated, info = envs.step(actions.cpu().numpy())
                loop.global_step = step = before + envs.num_envs
                obs = to_tensor(next_obs, device)
                reached = true_next_obs(next_obs, info)
                agent.observe(
                    loop.obs,
                    actions,
                    to_tensor(rewards, device),
                    obs if reached is next_obs else to_tensor(reached, device),
                    to_tensor(terminated, device, torch.bool),
                    to_tensor(truncated, device, torch.bool),
                )
                loop.obs = obs
                for episode in episode_metrics(info):
                    logger.log(episode, step)

                updates_before = agent.updates
                metrics = agent.update(step, will_measure(updates_before, diagnostics.interval))
                if metrics:
                    loop.latest = dict(metrics)
                if _crossed(updates_before, agent.updates, diagnostics.interval):
                    logger.log({k: float(v) for k, v in agent.diagnose(diagnostics).items()}, step)
                if _crossed(before, step, cfg.logging.interval) and loop.latest:
                    elapsed = time.perf_counter() - start_time
                    logger.log(
                        {
                            **{k: float(v) for k, v in loop.latest.items()},
                            "charts/sps": (step - start_step) / elapsed,
                            "learner/nonfinite_skips": float(learner.nonfinite_skips),
                        },
                        step,
                    )
                if _crossed(before, step, cfg.eval.interval) and step < cfg.total_steps:
                    run_eval(step)
                if _crossed(before, step, cfg.checkpoint.interval):
                    save()
                logger.advance(step)
                if stop:
                    raise TrainingInterrupted(stop[0], step, save(), run_dir)

            if loop.final_returns is None:  # a resumed finished run has evaluated already
                loop.final_returns = run_eval(loop.global_step).tolist()
                save()
            returns = np.asarray(loop.final_returns)
    finally:
        logger.close()
        envs.close()
        eval_envs.close()
    result = TrainResult(run_dir, loop.global_step, float(returns.mean()), float(returns.std()))
    write_result(result)
    return result


def restore(
    checkpoint: dict, agent: Agent, learner: Learner, envs: VectorEnv, loop: LoopState
) -> None:
    """Put a freshly built run back into the state a checkpoint describes."""
    try:
        agent.load_state_dict(checkpoint["agent"])
        learner.load_state_dict(checkpoint["learner"])
        loop.load_state_dict(checkpoint["loop"], learner.device)
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"the checkpoint does not fit this run's config ({reason}); resume with the "
            "config the run was started with"
        ) from None
    load_vector_env_state(envs, checkpoint["envs"])
    load_rng_state(checkpoint["rng"])


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a run
    killed midway) sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_result(result: TrainResult) -> Path:
    """``result.json``: written last and atomically, so its presence marks a finished run."""
    summary = {
        "global_step": result.global_step,
        "eval_return_mean": result.eval_return_mean,
        "eval_return_std": result.eval_return_std,
    }
    return write_atomically(result.run_dir / RESULT_FILE, json.dumps(summary) + "\n")


def save_run_checkpoint(
    run_dir: Path,
    cfg: RunConfig,
    agent: Agent,
    learner: Learner,
    envs: VectorEnv,
    loop: LoopState,
    logger: Logger,
) -> Path:
    """Write ``run_dir/checkpoints/latest.pt`` atomically; returns its path.

    ``logger.state_dict()`` fsyncs metrics.jsonl before the checkpoint recording its length is
    written, so a checkpoint never points past rows a crash could lose.
    """
    return save_checkpoint(
        run_dir / CHECKPOINT_FILE,
        {
            "agent_name": cfg.agent.name,
            "env_id": cfg.env.id,
            "global_step": loop.global_step,
            "agent": agent.state_dict(),
            "learner": learner.state_dict(),
            "envs": vector_env_state(envs),
            "rng": rng_state(),
            "loop": loop.state_dict(),
            "logger": logger.state_dict(),
        },
    )
