"""One ``log(metrics, step)`` fanned out to every sink: JSONL, TensorBoard, W&B, console.

Metric names share one namespace across sinks (``charts/…``, ``losses/…``, ``eval/…``,
``grad/<estimator>/<statistic>``) and the x-axis is always ``global_step``, the number of
environment steps taken.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from tqdm import tqdm

from rlgrad.config import LoggingConfig

Metrics = dict[str, float]


class Sink(Protocol):
    def write(self, metrics: Metrics, step: int) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """``metrics.jsonl``: one JSON object per record, each with ``global_step``.

    ``truncate_to`` (a byte offset from :meth:`position`) drops the rows a killed run wrote
    after its last checkpoint, so that a resumed run continues without duplicates. It only
    ever shortens the file: one shorter than that (rows before the checkpoint were lost) is
    refused with a :class:`~rlgrad.checkpoint.CheckpointError`, never padded.
    """

    def __init__(self, path: Path, truncate_to: int | None = None):
        if truncate_to is not None:
            self.check_resumable(path, truncate_to)
            if path.is_file():
                with open(path, "r+b") as existing:
                    existing.truncate(truncate_to)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    @staticmethod
    def check_resumable(path: Path, truncate_to: int) -> None:
        """Refuse to continue ``path`` from byte ``truncate_to`` if it is shorter than that."""
        from rlgrad.checkpoint import RESTART_HINT, CheckpointError  # imports torch: only here

        if not path.is_file() and truncate_to > 0:
            raise CheckpointError(
                f"{path} is missing, but its checkpoint recorded {truncate_to} bytes of metrics "
                f"there: the run's metrics were lost; {RESTART_HINT}"
            )
        size = path.stat().st_size if path.is_file() else 0
        if size < truncate_to:
            raise CheckpointError(
                f"{path} is {size} bytes, shorter than the {truncate_to} its checkpoint "
                f"recorded: rows written before the checkpoint were lost; {RESTART_HINT}"
            )

    def position(self) -> int:
        """Bytes written so far, on disk: rows are flushed as written, and fsync-ed here,
        since a checkpoint records this offset and must not point past what survives a crash."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def write(self, metrics: Metrics, step: int) -> None:
        row = {"global_step": step, **{k: _json_number(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """TensorBoard event files; ``purge_step`` hides events a killed run wrote after that step."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, metrics: Metrics, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def wandb_key_configured() -> bool:
    """Whether a W&B API key is set up on this machine, judged without touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` → ``online`` with a configured key, else ``offline``; WANDB_MODE wins over auto."""
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    return "online" if wandb_key_configured() else "offline"


def wandb_settings(wandb: Any, **extra: Any) -> Any:
    """The ``wandb.Settings`` of every W&B run rlgrad starts: quiet, no side processes or
    captures, and bounded waits (W&B must never hang a run)."""
    return wandb.Settings(
        console="off",  # no stdout/stderr wrapping
        silent=True,
        x_disable_stats=True,  # no system-metrics process
        x_disable_meta=True,
        x_disable_machine_info=True,
        disable_git=True,
        disable_code=True,
        save_code=False,
        x_save_requirements=False,  # the slowest part of an offline init
        init_timeout=60.0,
        x_service_wait=60.0,
        finish_timeout=60.0,  # online: never wait forever for uploads
        **extra,
    )


class WandbSink:
    """A W&B run in ``run_dir/wandb``; offline runs never block and can be ``wandb sync``-ed.

    W&B's own console output stays off (``silent``); :meth:`location` is the one line rlgrad
    prints instead: the run's URL online, its offline folder and the ``wandb sync`` command
    offline. A resumed offline run writes a second ``offline-run-*`` folder with the same id
    (wandb cannot append to the first one); ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
    them in order of start time as one run, the later ones as resumptions of the first.
    """

    def __init__(
        self,
        cfg: LoggingConfig,
        mode: str,
        run_dir: Path,
        name: str,
        config: dict[str, Any],
        run_id: str | None = None,
    ):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb, self.mode = wandb, mode
        self.run = wandb.init(
            mode=mode,
            dir=str(run_dir),
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            job_type=cfg.job_type,
            tags=cfg.tags or None,
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            config=config,
            reinit="create_new",
            settings=wandb_settings(wandb, x_transaction_log_flush_interval=5.0),
        )
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    @property
    def run_id(self) -> str:
        return self.run.id

    def location(self) -> str:
        """Where this run goes, for the console: ``W&B run: URL`` online, ``W&B offline run:
        FOLDER (upload: wandb sync …)`` offline."""
        if self.mode == "offline":  # run.url only warns offline
            folder = Path(self.run.settings.sync_dir)
            return f"W&B offline run: {folder} (upload: wandb sync {folder.parent}/offline-run-*)"
        return f"W&B run: {self.run.url or 'no URL (not logged in?)'}"

    def write(self, metrics: Metrics, step: int) -> None:
        self.run.log({**metrics, "global_step": step})

    def close(self) -> None:
        self.run.finish()


PLAIN_LINES_PER_RUN = 20  # a plain progress line every 5 % of total_steps


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` shows a live bar: a terminal, or a Jupyter kernel's output."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def make_progress(
    total: int, initial: int = 0, stream: TextIO | None = None
) -> ProgressBar | ProgressLog:
    """A tqdm bar on a terminal; plain lines (no ``\\r`` frames) when the output is a file or a
    pipe. ``stream`` defaults to stderr, where tqdm writes."""
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        return ProgressBar(total, initial, stream)
    return ProgressLog(total, initial, stream)


def _postfix(last_return: float | None, last_eval: float | None) -> dict[str, str]:
    shown = {"ret": last_return, "eval": last_eval}
    return {key: f"{value:.1f}" for key, value in shown.items() if value is not None}


class ProgressBar:
    """A tqdm bar over environment steps: steps/s, the last episodic return (``ret``) and the
    last evaluation's mean return (``eval``)."""

    def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None):
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
            file=stream,
        )
        self.position = initial

    def advance(self, step: int, last_return: float | None, last_eval: float | None) -> None:
        postfix = _postfix(last_return, last_eval)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self.position)
        self.position = step

    def close(self, last_return: float | None = None, last_eval: float | None = None) -> None:
        postfix = _postfix(last_return, last_eval)
        if postfix:  # the final evaluation runs after the last step
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.close()


class ProgressLog:
    """The progress as plain lines, for logs: one every 5 % of ``total`` steps and one at the
    end (after the final evaluation), e.g.
    ``step 2000/20000 (10%), 145 steps/s, return -812.3, eval -640.1``; steps/s over the
    steps since the previous line."""

    def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None):
        self.total, self.stream = total, stream
        self.every = max(1, math.ceil(total / PLAIN_LINES_PER_RUN))
        self.position = self.shown = initial
        self.position_time = self.shown_time = time.perf_counter()
        self.shown_eval: float | None = None

    def advance(self, step: int, last_return: float | None, last_eval: float | None) -> None:
        before, self.position = self.position, step
        self.position_time = time.perf_counter()
        crossed = before // self.every != step // self.every
        if crossed and step < self.total:  # the line at the end waits for the final evaluation
            self._line(last_return, last_eval)

    def close(self, last_return: float | None = None, last_eval: float | None = None) -> None:
        if self.position != self.shown or last_eval != self.shown_eval:
            self._line(last_return, last_eval)

    def _line(self, last_return: float | None, last_eval: float | None) -> None:
        parts = [f"step {self.position}/{self.total} ({100 * self.position // self.total}%)"]
        if self.position > self.shown:
            elapsed = max(self.position_time - self.shown_time, 1e-9)
            parts.append(f"{(self.position - self.shown) / elapsed:.0f} steps/s")
        if last_return is not None:
            parts.append(f"return {last_return:.1f}")
        if last_eval is not None:
            parts.append(f"eval {last_eval:.1f}")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)
        self.shown, self.shown_time = self.position, self.position_time
        self.shown_eval = last_eval


class Logger:
    """Fans each record out to its sinks; drives the progress bar (or plain progress lines)."""

    def __init__(self, sinks: list[Sink], progress: ProgressBar | ProgressLog | None = None):
        self.sinks, self.progress = sinks, progress
        self.last_return: float | None = None
        self.last_eval: float | None = None  # the last evaluation's mean return

    def log(self, metrics: Metrics, step: int) -> None:
        if not metrics:
            return
        if "charts/episodic_return" in metrics:
            self.last_return = metrics["charts/episodic_return"]
        if "eval/return_mean" in metrics:
            self.last_eval = metrics["eval/return_mean"]
        for sink in self.sinks:
            sink.write(metrics, step)

    def locations(self) -> list[str]:
        """Where the sinks write beyond the run directory, one line each (W&B)."""
        return [sink.location() for sink in self.sinks if isinstance(sink, WandbSink)]

    def state_dict(self) -> dict[str, Any]:
        """Where a resumed run must pick up: the JSONL length, the W&B run id, the last return
        and evaluation."""
        state: dict[str, Any] = {"last_return": self.last_return, "last_eval": self.last_eval}
        for sink in self.sinks:
            if isinstance(sink, JsonlSink):
                state["jsonl_bytes"] = sink.position()
            if isinstance(sink, WandbSink):
                state["wandb_id"] = sink.run_id
        return state

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.advance(step, self.last_return, self.last_eval)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close(self.last_return, self.last_eval)
        for sink in self.sinks:
            sink.close()


def _json_number(value: float) -> float | str | None:
    """JSON has no NaN/Inf: write them as strings so a reader sees them, not a parse error."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
