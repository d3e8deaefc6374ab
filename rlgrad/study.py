"""A study run: its spec expanded into one run per grid point, each trained by a backend.

A run's overrides apply in this order: the spec's, the estimator's, ``env.id``, the grid's,
``seed``, then the command line's. Every run gets ``logging.group`` = the study's name,
``logging.job_type`` = its label (the estimator, plus ``[key=value,...]`` of its grid point)
and ``logging.tags`` = [estimator, env id, grid values...]. It lives in
``OUT/runs/<env>/<label>/seed<k>/``. Runs train seed by seed (:func:`training_order`); a run
whose ``result.json`` exists is finished and skipped; an unfinished one resumes from its
checkpoint (``rlgrad train --resume``) when it has one made with the same config, and starts
again otherwise.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from rlgrad.backends import (
    BACKENDS,
    ERROR_FILE,
    RunJob,
    RunResult,
    default_workers,
    require_ray,
    run_local,
    run_ray,
)
from rlgrad.config import (
    ConfigError,
    EnvConfig,
    merge,
    parse_overrides,
    read_yaml,
    to_yaml,
    validate,
)
from rlgrad.errors import UsageError
from rlgrad.runner import CHECKPOINT_FILE, RESULT_FILE
from rlgrad.study_spec import StudySpec, write_spec

RUNS_DIR = "runs"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: where it runs and its resolved config (or why it has none)."""

    estimator: str
    label: str
    env: str
    seed: int
    run_dir: Path
    config: dict[str, Any] | None
    error: str | None = None

    def describe(self) -> str:
        return f"{self.label} {self.env} seed {self.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / RESULT_FILE).is_file()


def slug(text: str) -> str:
    """``text`` as one safe path component (``rlgrad/PointMass-v0`` → ``rlgrad_PointMass-v0``)."""
    return _UNSAFE.sub("_", text).strip("._") or "_"


def _yaml_value(value: Any) -> str:
    """A value written so that an override parses back to the same value (JSON is YAML)."""
    return json.dumps(value)


def _shown(value: Any) -> str:
    """A grid value as it appears in labels and tags."""
    return value if isinstance(value, str) else json.dumps(value)


def plan_study(
    spec: StudySpec, out_dir: Path, cli_overrides: Sequence[str] = ()
) -> list[PlannedRun]:
    """Every run of the study, in spec order; a run whose config is invalid carries its error."""
    runs: list[PlannedRun] = []
    grid_keys = list(spec.grid)
    for estimator, est in spec.estimators.items():
        config_path = est.config or spec.config
        assert config_path is not None  # checked by StudySpec
        base = read_yaml(config_path)
        for env in spec.envs or [None]:
            for point in itertools.product(*(spec.grid[k] for k in grid_keys)):
                grid = [f"{k}={_yaml_value(v)}" for k, v in zip(grid_keys, point, strict=True)]
                shown = [f"{k}={_shown(v)}" for k, v in zip(grid_keys, point, strict=True)]
                label = f"{estimator}[{','.join(shown)}]" if shown else estimator
                for seed in spec.seeds:
                    overrides = [
                        *spec.overrides,
                        *est.overrides,
                        *([f"env.id={_yaml_value(env)}"] if env else []),
                        *grid,
                        f"seed={seed}",
                        *cli_overrides,
                    ]
                    runs.append(
                        _plan_run(spec, out_dir, estimator, label, shown, seed, base, overrides)
                    )
    seen: dict[Path, PlannedRun] = {}
    for run in runs:
        if run.run_dir in seen:
            raise ConfigError(
                f"runs '{seen[run.run_dir].describe()}' and '{run.describe()}' would share the "
                f"directory {run.run_dir}; rename an estimator or a grid value"
            )
        seen[run.run_dir] = run
    return runs


def _plan_run(
    spec: StudySpec,
    out_dir: Path,
    estimator: str,
    label: str,
    grid: list[str],
    seed: int,
    base: dict[str, Any],
    overrides: list[str],
) -> PlannedRun:
    """Resolve one run's config; a malformed override is the spec's error, an invalid config
    (unknown key, wrong type, impossible combination) is this run's failure."""
    raw = merge(base, parse_overrides(overrides))
    env_section = raw.get("env")
    env_id = str(env_section.get("id", EnvConfig().id) if isinstance(env_section, dict) else "?")
    run_dir = out_dir / RUNS_DIR / slug(env_id) / slug(label) / f"seed{seed}"
    try:
        cfg = validate(raw)
        cfg.logging.group = spec.name
        cfg.logging.job_type = label
        tags = [estimator, env_id, *grid, *cfg.logging.tags]
        cfg.logging.tags = list(dict.fromkeys(tags))
        cfg.name = cfg.name or f"{spec.name}/{label}/{env_id}/seed{seed}"
    except (ConfigError, ValidationError) as exc:
        message = str(exc) if isinstance(exc, ConfigError) else exc.errors()[0]["msg"]
        return PlannedRun(estimator, label, env_id, seed, run_dir, None, message)
    return PlannedRun(estimator, label, env_id, seed, run_dir, cfg.model_dump(mode="json"))


def check_finished(runs: list[PlannedRun]) -> None:
    """Refuse to mix a finished run made with another config into the study."""
    for run in runs:
        if run.config is None or not run.finished:
            continue
        if _stored_config(run.run_dir) != to_yaml(validate(run.config)):
            raise UsageError(
                f"{run.run_dir} holds a finished run with another config (was the spec changed?); "
                "choose another --out or delete that directory"
            )


def resumable(run: PlannedRun) -> bool:
    """An unfinished run with a checkpoint, started with the config the study now gives it."""
    return (
        run.config is not None
        and not run.finished
        and (run.run_dir / CHECKPOINT_FILE).is_file()
        and _stored_config(run.run_dir) == to_yaml(validate(run.config))
    )


def _stored_config(run_dir: Path) -> str | None:
    """A finished run's config as the current schema reads it (keys added since: defaults)."""
    try:
        return to_yaml(validate(read_yaml(run_dir / "config.yaml")))
    except ConfigError:
        return None


@dataclass(frozen=True)
class RunOutcome:
    """What became of a planned run: ``trained``, ``skipped`` (finished before) or ``failed``."""

    run: PlannedRun
    status: Literal["trained", "skipped", "failed"]
    error: str | None = None
    seconds: float = 0.0
    eval_return: float | None = None

    def line(self) -> str:
        if self.status == "failed":
            trace = self.run.run_dir / ERROR_FILE
            where = f" (traceback: {trace})" if trace.is_file() else ""
            return f"FAILED {self.run.describe()}: {self.error}{where}"
        if self.status == "skipped":
            return f"skipped {self.run.describe()} (finished before)"
        return (
            f"trained {self.run.describe()}: eval return {self.eval_return:.1f} "
            f"in {self.seconds:.0f} s"
        )


def training_order(runs: list[PlannedRun], seeds: Sequence[int]) -> list[PlannedRun]:
    """``runs`` seed by seed: every estimator × env × grid point of the first seed, then of the
    next (spec order within a seed), so a study stopped partway has each of them at least once."""
    rank = {seed: i for i, seed in enumerate(seeds)}
    return sorted(runs, key=lambda run: rank.get(run.seed, len(rank)))


def run_study(
    spec: StudySpec,
    out_dir: Path,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Train every unfinished run of ``spec`` into ``out_dir``; one outcome per run, in order."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        require_ray()
    out_dir = out_dir.resolve()
    runs = plan_study(spec, out_dir, overrides)
    check_finished(runs)
    write_spec(spec, out_dir)
    outcomes: dict[Path, RunOutcome] = {}
    for run in runs:
        if run.error is not None:
            outcomes[run.run_dir] = RunOutcome(run, "failed", f"invalid config: {run.error}")
        elif run.finished:
            outcomes[run.run_dir] = RunOutcome(run, "skipped")
    todo = {str(run.run_dir): run for run in runs if run.run_dir not in outcomes}
    resumed = sum(resumable(run) for run in todo.values())
    echo(
        f"study {spec.name}: {len(runs)} runs, {len(todo)} to train on {backend} "
        f"({resumed} resumed from checkpoints), {len(runs) - len(todo)} finished before "
        f"or invalid; folder {out_dir}"
    )
    counter = itertools.count(1)

    def collect(result: RunResult) -> None:
        run = todo[result.run_dir]
        error = result.error
        if result.ok and not run.finished:
            error = f"trained, but {run.run_dir} is not visible here: use a shared --out"
        status = "failed" if error else "trained"
        outcome = RunOutcome(run, status, error, result.seconds, result.eval_return)
        outcomes[run.run_dir] = outcome
        echo(f"[{next(counter)}/{len(todo)}] {outcome.line()}")

    jobs = [
        RunJob(str(run.run_dir), run.config or {}, resumable(run))
        for run in training_order(list(todo.values()), spec.seeds)
    ]
    if backend == "ray":
        run_ray(jobs, workers, ray_address, collect)
    else:
        run_local(jobs, workers or default_workers(), collect)
    return [outcomes[run.run_dir] for run in runs]


def summarize(outcomes: list[RunOutcome]) -> str:
    """``N runs: a trained, b skipped, c failed`` and one line per failure."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "skipped", "failed")}
    lines = [f"{len(outcomes)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    lines += [f"  {o.line()}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)
