"""The training loop shared by every agent: collect, store, update, log, evaluate, checkpoint.

A checkpoint holds everything the loop needs to go on as if it had never stopped: the agent
(networks, targets, buffers, counters), the optimisers, every RNG state, the envs' state (see
:mod:`rlgrad.env_state`), the loop's counters and the logger's position. ``train(...,
resume=True)`` rebuilds the run from its ``config.yaml``, loads the latest checkpoint and
continues: on CPU a resumed run writes the same metrics and ends with bitwise the same
parameters as one that never stopped. SIGINT/SIGTERM save a checkpoint and stop the run with
:class:`TrainingInterrupted`.

A checkpoint also stores the config it was written with; a resume refuses any difference
from it but a raised ``total_steps`` (:func:`check_resume_config`), and ``config.yaml`` is
rewritten only once the resume has loaded.

Non-finite data. A vector step whose observation (the one acted from or the one reached) or
reward is NaN/Inf in any sub-env is not stored: ``agent.observe`` is skipped for the whole
vector step (on-policy rollouts keep their fixed length; the rollout then joins the steps on
either side of the gap), its non-finite transitions are counted in
``env/nonfinite_transitions``, and a warning names the env at the first of a streak. The policy
acts from a non-finite observation with its non-finite entries read as 0. After
``learner.max_nonfinite`` such vector steps in a row the run stops (:class:`NonFiniteEnv`). No
checkpoint is written from non-finite agent, learner or normaliser state
(:class:`NonFiniteState`), and a non-finite final evaluation is an error, not a result.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
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
from rlgrad.config import ConfigError, RunConfig, read_yaml, to_yaml, validate
from rlgrad.env_state import load_vector_env_state, vector_env_state
from rlgrad.envs import NormalizeObservation, env_actions, env_spec, find_wrapper, make_env
from rlgrad.errors import BuildError, UsageError
from rlgrad.learner import Learner, NonFiniteError
from rlgrad.logging import (
    JsonlSink,
    Logger,
    Sink,
    TensorBoardSink,
    WandbSink,
    make_progress,
    resolve_wandb_mode,
)
from rlgrad.rng import load_rng_state, rng_state, seed_everything
from rlgrad.run_lock import hold_run_dir

EVAL_SEED_OFFSET = 1_000_003
RESULT_FILE = "result.json"
CHECKPOINT_FILE = Path("checkpoints") / "latest.pt"
POLICY_FILE = Path("checkpoints") / "policy.pt"  # the acting weights and normaliser, at the end
BEST_FILE = Path("checkpoints") / "best.pt"  # the same at the best evaluation so far


class NonFiniteEnv(NonFiniteError):
    """Too many consecutive vector steps had a non-finite observation or reward."""


class NonFiniteState(NonFiniteError):
    """The agent, learner or normaliser state holds NaN/Inf: no checkpoint is written from it."""


class NonFiniteResult(NonFiniteError):
    """The final evaluation's return is not finite: it is not written as the run's result."""


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
    obs_finite: bool = True  # whether every entry of ``obs`` is finite
    final_returns: list[float] | None = None  # set once the final evaluation has run
    nonfinite_transitions: int = 0  # sub-env transitions dropped for a NaN/Inf in them
    nonfinite_streak: int = 0  # consecutive vector steps not stored for that reason
    best_return: float | None = None  # the best evaluation so far (checkpoints/best.pt)

    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "n_evals": self.n_evals,
            "latest": {k: float(v) for k, v in self.latest.items()},
            "obs": self.obs.cpu(),
            "final_returns": self.final_returns,
            "nonfinite_transitions": self.nonfinite_transitions,
            "nonfinite_streak": self.nonfinite_streak,
            "best_return": self.best_return,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.global_step, self.n_evals = int(state["global_step"]), int(state["n_evals"])
        self.latest = {k: float(v) for k, v in state["latest"].items()}
        self.obs = state["obs"].to(device)
        self.obs_finite = bool(torch.isfinite(self.obs).all())
        self.final_returns = state.get("final_returns")
        self.best_return = state.get("best_return")
        self.nonfinite_transitions = int(state.get("nonfinite_transitions", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))


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
    spec = env_spec(envs)
    returns = np.zeros(envs.num_envs)
    finished = np.zeros(envs.num_envs, dtype=bool)
    while not finished.all():
        obs_t = to_tensor(obs, device)
        actions = agent.act_deterministic(obs_t) if deterministic else agent.act(obs_t, step)
        obs, rewards, terminated, truncated, _ = envs.step(env_actions(actions, spec))
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
    try:
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
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    progress = None if quiet else make_progress(cfg.total_steps, initial=start)
    logger = Logger(sinks, progress)
    logger.last_return = logger_state.get("last_return")
    logger.last_eval = logger_state.get("last_eval")
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


def all_finite(array: np.ndarray) -> bool:
    """Whether every entry is finite: one sum on the common path (a finite sum means no NaN or
    Inf), the entry-wise test only when the sum is not finite (NaN, Inf, or an overflow)."""
    return math.isfinite(float(array.sum())) or bool(np.isfinite(array).all())


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


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """A nested config as ``{dotted key: value}``; lists are values, empty sections vanish."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def saved_config(checkpoint: dict, run_dir: Path) -> dict:
    """The config a checkpoint was written with, read by the current schema (keys added since
    take their defaults); for a checkpoint that stores none, the run's config.yaml."""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        saved = read_yaml(run_dir / "config.yaml")
    try:
        return validate(saved).model_dump(mode="json")
    except ConfigError:
        return saved


def check_resume_config(checkpoint: dict, cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume with a config other than the checkpoint's, but for a raised
    ``total_steps``; refuse a lowered one, and a finished run that would not train further."""
    saved = saved_config(checkpoint, run_dir)
    before, now = flatten(saved), flatten(cfg.model_dump(mode="json"))
    changed = [
        key
        for key in dict.fromkeys([*before, *now])
        if key != "total_steps" and before.get(key, _ABSENT) != now.get(key, _ABSENT)
    ]
    if changed:
        shown = ", ".join(
            f"{key} ({_shown(before, key)} in the checkpoint, {_shown(now, key)} now)"
            for key in changed[:4]
        )
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise CheckpointError(
            f"{run_dir / 'config.yaml'} differs from the config its checkpoint was written "
            f"with: {shown}{more}; resuming may only raise total_steps: restore those values, "
            "or start a new run with rlgrad train CONFIG --run-dir DIR"
        )
    planned, reached = int(saved.get("total_steps", 0)), int(checkpoint["global_step"])
    if cfg.total_steps < planned:
        raise UsageError(
            f"total_steps can only be raised when resuming: {run_dir} was set to train "
            f"{planned} steps, got total_steps={cfg.total_steps}; give more than {planned}, or "
            f"evaluate the run as it is with rlgrad eval {run_dir}"
        )
    finished = checkpoint.get("loop", {}).get("final_returns") is not None
    if finished and cfg.total_steps <= reached and (run_dir / RESULT_FILE).is_file():
        raise UsageError(
            f"{run_dir} has finished: it trained {reached} steps (result.json); to train it "
            f"further raise total_steps, e.g. rlgrad train --resume {run_dir} "
            f"total_steps={2 * reached}"
        )


_ABSENT = object()


def _shown(flat: dict[str, object], key: str) -> str:
    return "absent" if key not in flat else json.dumps(flat[key])


def build_run(cfg: RunConfig) -> tuple[Learner, VectorEnv, VectorEnv, Agent]:
    """The learner, the training and evaluation envs and the agent that ``cfg`` describes.

    A value the schema accepts but torch or the env refuses (``agent.hidden_sizes=[-1]``,
    ``learner.device=cuda`` without a GPU) is a one-line :class:`~rlgrad.errors.BuildError`.
    """
    stage, section = "the learner", "learner"
    built: list[VectorEnv] = []
    try:
        learner = Learner(cfg.learner)
        threads = cfg.learner.torch_threads or (1 if learner.device.type == "cpu" else None)
        if threads:
            torch.set_num_threads(threads)
        stage, section = "the envs", "env"
        gamma = float(getattr(cfg.agent, "gamma", 0.99))
        envs = make_env(cfg.env, cfg.seed, gamma=gamma)
        built.append(envs)
        normalizer = find_wrapper(envs, NormalizeObservation)
        eval_envs = make_env(
            cfg.env,
            cfg.seed + EVAL_SEED_OFFSET,
            gamma=gamma,
            n_envs=cfg.eval.episodes,
            obs_stats=normalizer.stats if normalizer else None,
            training=False,
        )
        built.append(eval_envs)
        stage, section = f"agent {cfg.agent.name}", "agent"
        agent: Agent = agent_spec(cfg.agent.name).agent(
            cfg.agent, env_spec(envs), learner, envs.num_envs, cfg.total_steps
        )
    except BaseException as exc:
        for vector_env in built:
            vector_env.close()
        if not isinstance(exc, Exception) or isinstance(
            exc, ConfigError | UsageError | CheckpointError
        ):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BuildError(
            f"cannot build {stage} from this config: {reason}; fix the {section}.* values"
        ) from None
    return learner, envs, eval_envs, agent


def train(
    cfg: RunConfig,
    run_dir: Path,
    quiet: bool = False,
    resume: bool = False,
    prepare: Callable[[], None] | None = None,
) -> TrainResult:
    """Train the agent ``cfg`` names for ``cfg.total_steps`` environment steps into ``run_dir``.

    With ``resume``, continue the run in ``run_dir`` from its latest checkpoint. The run holds
    ``run_dir``'s lock (:mod:`rlgrad.run_lock`) from start to end, so another process that
    would write into it stops first with :class:`~rlgrad.run_lock.RunDirInUse`; once it is
    held, temporary files that killed saves left there are removed. ``prepare`` (a new run) is
    called once the run has been built and before anything is written: ``--overwrite`` empties
    the directory there, so that a config that cannot be built leaves the old run in place.
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
        return _train(cfg, run_dir, quiet, resume, prepare)


def _train(
    cfg: RunConfig,
    run_dir: Path,
    quiet: bool,
    resume: bool,
    prepare: Callable[[], None] | None,
) -> TrainResult:
    """:func:`train`'s body, run while it holds ``run_dir``'s lock."""
    checkpoint = None
    if resume:
        path = run_dir / CHECKPOINT_FILE
        checkpoint = load_checkpoint(path)
        check_checkpoint_matches(checkpoint, cfg, path)
        jsonl_bytes = checkpoint.get("logger", {}).get("jsonl_bytes")
        if jsonl_bytes is not None:  # a torn metrics.jsonl: refuse before anything is written
            JsonlSink.check_resumable(run_dir / "metrics.jsonl", jsonl_bytes)
        check_resume_config(checkpoint, cfg, run_dir)
    seed_everything(cfg.seed)
    learner, envs, eval_envs, agent = build_run(cfg)
    spec = env_spec(envs)
    device = learner.device
    loop = LoopState()
    logger: Logger | None = None
    try:
        continued = False  # a finished run trained further (a raised total_steps)
        if checkpoint is not None:
            restore(checkpoint, agent, learner, envs, loop)
            if loop.final_returns is not None and loop.global_step < cfg.total_steps:
                loop.final_returns = None  # evaluate the final policy at the new end
                continued = True
        else:
            if prepare is not None:
                prepare()
            obs, _ = envs.reset(seed=cfg.seed)
            loop.obs, loop.obs_finite = to_tensor(obs, device), bool(np.isfinite(obs).all())
        logger = build_logger(cfg, run_dir, quiet, resume_from=checkpoint)
        # Only now that the resume has loaded: its config.yaml (total_steps raised), and no
        # result.json claiming the run finished at its old end.
        kernels = describe_kernels(learner)
        write_atomically(run_dir / "config.yaml", f"# kernels: {kernels}\n{to_yaml(cfg)}")
        if continued:
            (run_dir / RESULT_FILE).unlink(missing_ok=True)
        if not quiet:
            print(f"rlgrad: {cfg.agent.name} on {cfg.env.id} into {run_dir} (kernels: {kernels})")
            for line in logger.locations():  # where W&B writes; nothing when it is disabled
                print(f"rlgrad: {line}")
            sys.stdout.flush()  # now, though stdout piped to a log file is block-buffered
    except BaseException:
        if logger is not None:
            logger.close()
        envs.close()
        eval_envs.close()
        raise

    def run_eval(step: int) -> np.ndarray:
        seed = eval_seed(cfg.seed, loop.n_evals)
        returns = evaluate(agent, eval_envs, device, seed, cfg.eval.deterministic, step)
        loop.n_evals += 1
        mean = float(returns.mean())
        logger.log({"eval/return_mean": mean, "eval/return_std": float(returns.std())}, step)
        if np.isfinite(mean) and (loop.best_return is None or mean > loop.best_return):
            loop.best_return = mean
            save_policy_file(BEST_FILE)
        return returns

    def save() -> Path:
        return save_run_checkpoint(run_dir, cfg, agent, learner, envs, loop, logger)

    def save_policy_file(name: Path) -> Path:
        """``checkpoints/policy.pt`` or ``best.pt``: the acting weights and normaliser only."""
        from rlgrad.api import save_policy  # the API module imports this one

        normalizer = find_wrapper(envs, NormalizeObservation)
        stats = normalizer.stats if normalizer else None
        return save_policy(run_dir / name, agent, stats, cfg, loop.global_step)

    def drop(rewards: np.ndarray, reached: np.ndarray, step: int) -> None:
        """Count (and warn about) a vector step that is not stored for a NaN/Inf in it."""
        n = envs.num_envs
        bad = ~np.isfinite(rewards).reshape(n)
        bad |= ~np.isfinite(reached).reshape(n, -1).all(axis=1)
        bad |= ~torch.isfinite(loop.obs).reshape(n, -1).all(dim=1).cpu().numpy()
        loop.nonfinite_transitions += int(bad.sum())
        loop.nonfinite_streak += 1
        if loop.nonfinite_streak == 1:
            warnings.warn(
                f"env {cfg.env.id}: non-finite observation or reward in sub-env(s) "
                f"{np.flatnonzero(bad).tolist()} at step {step}; the vector step is not stored "
                "(counted in env/nonfinite_transitions)",
                RuntimeWarning,
                stacklevel=2,
            )
        if loop.nonfinite_streak >= cfg.learner.max_nonfinite:
            raise NonFiniteEnv(
                f"{loop.nonfinite_streak} consecutive steps of env {cfg.env.id} had a non-finite "
                f"observation or reward (the last at step {step}); stopping; check the env "
                "and its env.kwargs"
            )

    diagnostics = cfg.diagnostics.model_copy(
        update={"interval": diagnostics_interval(agent, cfg.diagnostics)}
    )
    start_step, start_time = loop.global_step, time.perf_counter()
    try:
        with stop_requests() as stop:
            while loop.global_step < cfg.total_steps:
                before = loop.global_step
                acting = loop.obs if loop.obs_finite else finite_or_zero(loop.obs)
                actions = agent.act(acting, before)
                next_obs, rewards, terminated, truncated, info = envs.step(
                    env_actions(actions, spec)
                )
                loop.global_step = step = before + envs.num_envs
                obs = to_tensor(next_obs, device)
                reached = true_next_obs(next_obs, info)
                next_finite = all_finite(next_obs)
                if (
                    loop.obs_finite
                    and all_finite(rewards)
                    and (next_finite if reached is next_obs else all_finite(reached))
                ):
                    agent.observe(
                        loop.obs,
                        actions,
                        to_tensor(rewards, device),
                        obs if reached is next_obs else to_tensor(reached, device),
                        to_tensor(terminated, device, torch.bool),
                        to_tensor(truncated, device, torch.bool),
                    )
                    loop.nonfinite_streak = 0
                else:
                    drop(rewards, reached, step)
                loop.obs, loop.obs_finite = obs, next_finite
                for episode in episode_metrics(info):
                    logger.log(episode, step)

                updates_before = agent.updates
                metrics = agent.update(step, will_measure(updates_before, diagnostics.interval))
                if metrics:
                    loop.latest = dict(metrics)  # with the pre-clip norms of this update's steps
                    loop.latest.update(
                        {f"learner/grad_norm/{k}": v for k, v in learner.grad_norms.items()}
                    )
                if _crossed(updates_before, agent.updates, diagnostics.interval):
                    logger.log({k: float(v) for k, v in agent.diagnose(diagnostics).items()}, step)
                if _crossed(before, step, cfg.logging.interval) and loop.latest:
                    elapsed = time.perf_counter() - start_time
                    logger.log(
                        {
                            **{k: float(v) for k, v in loop.latest.items()},
                            "charts/sps": (step - start_step) / elapsed,
                            "learner/nonfinite_skips": float(learner.nonfinite_skips),
                            "env/nonfinite_transitions": float(loop.nonfinite_transitions),
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
                final = run_eval(loop.global_step)
                if not np.isfinite(final).all():
                    save()  # the training is kept; the result is refused
                    raise NonFiniteResult(
                        f"the final evaluation at step {loop.global_step} on env {cfg.env.id} "
                        f"gave non-finite returns {final.tolist()}; no result.json was written "
                        "(the env or the policy produce NaN/Inf)"
                    )
                loop.final_returns = final.tolist()
                save()
                save_policy_file(POLICY_FILE)  # after latest.pt: rlgrad.load compares their ages
            returns = np.asarray(loop.final_returns)
    finally:
        logger.close()
        envs.close()
        eval_envs.close()
    result = TrainResult(run_dir, loop.global_step, float(returns.mean()), float(returns.std()))
    write_result(result)
    return result


def finite_or_zero(obs: torch.Tensor) -> torch.Tensor:
    """``obs`` with its NaN/Inf entries read as 0, for acting only (never stored)."""
    return torch.nan_to_num(obs, nan=0.0, posinf=0.0, neginf=0.0)


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

    The checkpoint stores the config it was written with (for :func:`check_resume_config`).
    Non-finite agent, learner or normaliser state is never saved: :class:`NonFiniteState`
    stops the run and the previous checkpoint stays. ``logger.state_dict()`` fsyncs
    metrics.jsonl before the checkpoint recording its length is written, so a checkpoint never
    points past rows a crash could lose.
    """
    state = {
        "agent_name": cfg.agent.name,
        "env_id": cfg.env.id,
        "config": cfg.model_dump(mode="json"),
        "global_step": loop.global_step,
        "agent": agent.state_dict(),
        "learner": learner.state_dict(),
        "envs": vector_env_state(envs),
    }
    normalisers = {
        f"{entry['type']}.{key}": entry[key]
        for entry in state["envs"]["wrappers"]
        for key in ("obs_rms", "return_rms", "accumulated_reward")
        if key in entry
    }
    bad = (
        nonfinite_entry(state["agent"], "agent")
        or nonfinite_entry(state["learner"], "learner")
        or nonfinite_entry(normalisers, "envs")
    )
    if bad is not None:
        raise NonFiniteState(
            f"refusing to write a checkpoint at step {loop.global_step}: {bad} holds NaN or "
            "Inf; the run stopped"
        )
    state.update(rng=rng_state(), loop=loop.state_dict(), logger=logger.state_dict())
    return save_checkpoint(run_dir / CHECKPOINT_FILE, state)


def nonfinite_entry(state: object, where: str) -> str | None:
    """The dotted path of the first floating tensor or float in ``state`` holding NaN/Inf."""
    if isinstance(state, torch.Tensor):
        if not state.is_floating_point() or bool(torch.isfinite(state).all()):
            return None
        return where
    if isinstance(state, float):
        return None if math.isfinite(state) else where
    if isinstance(state, dict):
        items = list(state.items())
    elif isinstance(state, list | tuple):
        items = list(enumerate(state))
    else:
        return None
    for key, value in items:
        found = nonfinite_entry(value, f"{where}.{key}")
        if found is not None:
            return found
    return None
