"""One ``log(metrics, step)`` fanned out to every sink: JSONL, TensorBoard, W&B, console.

Metric names share one namespace across sinks (``charts/…``, ``losses/…``, ``eval/…``,
``grad/<estimator>/<statistic>``) and the x-axis is always ``global_step``, the number of
environment steps taken.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

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


class WandbSink:
    """A W&B run in ``run_dir/wandb``; offline runs never block and can be ``wandb sync``-ed."""

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
        self.wandb = wandb
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
            settings=wandb.Settings(
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
                x_transaction_log_flush_interval=5.0,  # a killed run loses at most ~5 s
            ),
        )
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    @property
    def run_id(self) -> str:
        return self.run.id

    def write(self, metrics: Metrics, step: int) -> None:
        self.run.log({**metrics, "global_step": step})

    def close(self) -> None:
        self.run.finish()


class ProgressBar:
    """A tqdm bar over environment steps showing steps/s and the last episodic return."""

    def __init__(self, total: int, initial: int = 0):
        self.bar = tqdm(
            total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5
        )
        self.position = initial

    def advance(self, step: int, last_return: float | None) -> None:
        if last_return is not None:
            self.bar.set_postfix(ret=f"{last_return:.1f}", refresh=False)
        self.bar.update(step - self.position)
        self.position = step

    def close(self) -> None:
        self.bar.close()


class Logger:
    """Fans each record out to its sinks; drives the progress bar."""

    def __init__(self, sinks: list[Sink], progress: ProgressBar | None = None):
        self.sinks, self.progress = sinks, progress
        self.last_return: float | None = None

    def log(self, metrics: Metrics, step: int) -> None:
        if not metrics:
            return
        if "charts/episodic_return" in metrics:
            self.last_return = metrics["charts/episodic_return"]
        for sink in self.sinks:
            sink.write(metrics, step)

    def state_dict(self) -> dict[str, Any]:
        """Where a resumed run must pick up: the JSONL length, the W&B run id, the last return."""
        state: dict[str, Any] = {"last_return": self.last_return}
        for sink in self.sinks:
            if isinstance(sink, JsonlSink):
                state["jsonl_bytes"] = sink.position()
            if isinstance(sink, WandbSink):
                state["wandb_id"] = sink.run_id
        return state

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.advance(step, self.last_return)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        for sink in self.sinks:
            sink.close()


def _json_number(value: float) -> float | str | None:
    """JSON has no NaN/Inf: write them as strings so a reader sees them, not a parse error."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
