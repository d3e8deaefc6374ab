"""Where a study's runs execute: worker processes on this machine, or tasks on a Ray cluster.

Both backends take the same :class:`RunJob` list and call ``on_result`` with one
:class:`RunResult` per job as it finishes; a run that fails never stops the others.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rlgrad.errors import UsageError

BACKENDS = ("local", "ray")
STOP_GRACE_S = 60.0
"""Seconds a stopped run gets to write its checkpoint before its process is killed."""
PARENT_POLL_S = 0.2
"""How often a local worker checks that the ``rlgrad compare`` process that started it lives."""
EXIT_ORPHANED = 3
"""Exit status of a local worker whose ``rlgrad compare`` process died."""
ERROR_FILE = "error.txt"
RAY_INSTALL_HINT = (
    "--backend ray needs Ray, an optional extra: pip install 'rlgrad[ray]' "
    "(or pip install 'ray>=2.9')"
)


@dataclass(frozen=True)
class RunJob:
    """One run to train: its directory, its resolved config (``RunConfig.model_dump``), and
    whether to continue the unfinished run there from its checkpoint."""

    run_dir: str
    config: dict[str, Any]
    resume: bool = False


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    ok: bool
    seconds: float
    eval_return: float | None = None
    error: str | None = None


OnResult = Callable[[RunResult], None]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def execute_run(job: RunJob) -> RunResult:
    """Train one run into its directory; never raises an Exception.

    With ``job.resume`` the unfinished run there continues from its checkpoint (or starts
    again if the checkpoint cannot be used); otherwise whatever is there is replaced. A failure
    leaves its traceback in ``RUN_DIR/error.txt`` and no ``result.json``.
    """
    from rlgrad.checkpoint import CheckpointError
    from rlgrad.commands.train import prepare_run_dir
    from rlgrad.config import validate
    from rlgrad.run_lock import RunDirInUse, hold_run_dir
    from rlgrad.runner import TrainingInterrupted, train

    start = time.perf_counter()
    run_dir = Path(job.run_dir)
    _busy.set()
    try:
        cfg = validate(job.config)
        # The run directory's lock for the whole job: a straggler from an earlier invocation
        # that still trains this run makes this one fail (RunDirInUse), never share it.
        with hold_run_dir(run_dir):
            result = None
            if job.resume:
                (run_dir / ERROR_FILE).unlink(missing_ok=True)
                try:
                    result = train(cfg, run_dir, quiet=True, resume=True)
                except CheckpointError:
                    result = None  # an unusable checkpoint (or config): start the run again
            if result is None:
                # everything but the lock file, once the run has been built from its config
                prepare = functools.partial(prepare_run_dir, run_dir, overwrite=True)
                result = train(cfg, run_dir, quiet=True, prepare=prepare)
    except RunDirInUse as exc:  # another process's run: leave its directory alone
        return RunResult(job.run_dir, False, time.perf_counter() - start, error=one_line(exc))
    except TrainingInterrupted as stop:
        error = f"stopped at step {stop.global_step} (checkpoint saved; a rerun resumes it)"
        return RunResult(job.run_dir, False, time.perf_counter() - start, error=error)
    except Exception as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        return RunResult(job.run_dir, False, time.perf_counter() - start, error=one_line(exc))
    finally:
        _busy.clear()
    return RunResult(job.run_dir, True, time.perf_counter() - start, result.eval_return_mean)


_busy = threading.Event()
"""Set while :func:`execute_run` trains a run in this process."""


def _init_worker(parent_pid: int | None = None) -> None:
    """A worker process: its own session, so that a Ctrl-C in the terminal reaches only the
    ``rlgrad compare`` process (which then stops each worker once); one thread for numpy.

    Being a session leader, it would outlive an ``rlgrad compare`` killed with SIGKILL (and
    go on training while a rerun resumes its runs): it watches ``parent_pid`` and, once that
    process is gone, stops like a stopped study: its run checkpoints and the worker exits.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if hasattr(os, "setsid"):
        os.setsid()
    if parent_pid is not None:
        threading.Thread(
            target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
        ).start()


def _exit_with_parent(parent_pid: int) -> None:
    """Wait for ``parent_pid`` to die (this process is then re-parented), then SIGTERM this
    process: a run being trained saves a checkpoint and stops (an idle worker just ends); exit
    once it has, or after :data:`STOP_GRACE_S`. Without this the worker would wait for more
    work forever."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while _busy.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(EXIT_ORPHANED)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


def run_local(jobs: list[RunJob], workers: int, on_result: OnResult) -> None:
    """Run ``jobs`` in ``workers`` spawned processes on this machine.

    At most ``workers`` jobs are submitted at a time, so that none waits in the pool's queue:
    when the study is stopped, no queued run starts after the running ones were told to stop.
    """
    workers = max(1, min(workers, len(jobs)))
    if not jobs:
        return
    pool = _new_pool(workers)
    queue = list(jobs)
    running: dict[Future[RunResult], RunJob] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                try:
                    future = pool.submit(execute_run, job)
                except BrokenProcessPool:  # a worker died: its runs failed, go on in a new pool
                    pool.shutdown(wait=False)
                    pool = _new_pool(workers)
                    future = pool.submit(execute_run, job)
                running[future] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    error = f"worker died: {one_line(exc)}"
                    result = RunResult(job.run_dir, False, 0.0, error=error)
                on_result(result)
    except BaseException:  # Ctrl-C: runs checkpoint and stop; the next rlgrad compare resumes
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        _stop(processes)
        raise
    pool.shutdown()


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM each worker (the runner then checkpoints and stops), wait, kill what still runs."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def require_ray() -> ModuleType:
    """The ``ray`` module, or a UsageError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_INSTALL_HINT) from None
    return ray


def run_ray(
    jobs: list[RunJob], workers: int | None, address: str | None, on_result: OnResult
) -> None:
    """Run ``jobs`` as Ray tasks (one CPU each) on the cluster at ``address``/``RAY_ADDRESS``,
    or on a local Ray with ``workers`` CPUs; reuses a Ray this process already started.

    Every node must have rlgrad installed and see the study's folder (a shared filesystem).
    """
    ray = require_ray()
    if not jobs:
        return
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or None
        local = {"num_cpus": workers} if address is None and workers else {}
        try:
            ray.init(address=address, include_dashboard=False, **local)
        except ConnectionError as exc:
            raise UsageError(f"cannot connect to Ray at {address}: {one_line(exc)}") from None
    task = ray.remote(num_cpus=1, max_retries=0)(execute_run)
    refs = {task.remote(job): job for job in jobs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the task's worker died
                    error = f"Ray task failed: {one_line(exc)}"
                    result = RunResult(refs[ref].run_dir, False, 0.0, error=error)
                on_result(result)
    except BaseException:  # Ctrl-C: stop the tasks, give them a moment to wind down
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=STOP_GRACE_S)
        raise
    finally:
        if started:
            ray.shutdown()
