"""The study spec: which configs, estimators, envs, grid points and seeds a study runs.

A study spec is YAML (``configs/compare/pendulum.yaml``)::

    name: pendulum                 # W&B group of every run; default: the spec file's name
    config: ../sac_pendulum.yaml   # base config (paths are relative to the spec file)
    overrides: [eval.interval=1000]            # for every run
    estimators:                    # label -> its config (default: the base) and overrides
      sac-pathwise: {overrides: [agent.actor_estimator=pathwise]}
      ppo: {config: ../ppo_pendulum.yaml}
    seeds: 5                       # or a list: [0, 1, 2, 3, 4]
    envs: [Pendulum-v1]            # optional: env.id values (default: each config's own)
    grid: {agent.gamma: [0.9, 0.99]}           # optional: any other config key
    threshold: -400                # or {env id: value}: for "steps to threshold" in the report
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlgrad.config import ConfigError, read_yaml

SPEC_FILE = "study.yaml"
"""The study's resolved spec, written into its folder (the report reads its thresholds)."""
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class EstimatorSpec(BaseModel):
    """One line of the comparison: a config file (default: the study's) and its overrides."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = None
    overrides: list[str] = Field(default_factory=list)


class StudySpec(BaseModel):
    """A study: estimators × envs × grid points × seeds, each one run."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    config: str | None = None
    overrides: list[str] = Field(default_factory=list)
    estimators: dict[str, EstimatorSpec] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    envs: list[str] | None = Field(None, min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    threshold: float | dict[str, float] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The name is a folder under the output folder (``studies/NAME``): it must stay there."""
        if value in (".", "..") or any(sep in value for sep in ("/", "\\", "\0")):
            raise ValueError(
                f"{value!r} is not a plain folder name; a study name may not be '.' or '..' "
                "or contain '/', '\\' or NUL (it names the folder studies/NAME)"
            )
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ValueError("a seed count must be positive")
            return list(range(value))
        return value

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        for label, estimator in self.estimators.items():
            if not _LABEL.match(label):
                raise ValueError(f"estimator label {label!r}: use letters, digits and _.+-")
            if estimator.config is None and self.config is None:
                raise ValueError(f"estimator {label!r} has no config and the study names none")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError("seeds must be distinct and non-negative")
        for key, values in self.grid.items():
            if key in ("seed", "env.id"):
                raise ValueError(f"grid key {key!r}: use 'seeds' or 'envs' instead")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return self

    def threshold_for(self, env_id: str) -> float | None:
        if isinstance(self.threshold, dict):
            return self.threshold.get(env_id)
        return self.threshold


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec; config paths come back absolute (relative to ``path``)."""
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    base = path.resolve().parent
    spec.config = _resolve(base, spec.config, path)
    for estimator in spec.estimators.values():
        estimator.config = _resolve(base, estimator.config, path)
    return spec


def _resolve(base: Path, config: str | None, spec_path: Path) -> str | None:
    if config is None:
        return None
    resolved = (base / config).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{spec_path}: config file not found: {config} (looked for {resolved})")
    return str(resolved)


def write_spec(spec: StudySpec, out_dir: Path) -> Path:
    """``OUT/study.yaml``: the resolved spec, for ``rlgrad report`` and for the record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SPEC_FILE
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path


def read_spec(out_dir: Path) -> StudySpec | None:
    """The spec ``rlgrad compare`` wrote into ``out_dir``, if any."""
    path = out_dir / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return StudySpec.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """The first validation error as one line, naming the spec key where there is one."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        model = EstimatorSpec if error["loc"][0] == "estimators" else StudySpec
        valid = ", ".join(model.model_fields)
        return f"unknown study key '{key}'; valid keys: {valid}"
    return f"study key '{key}': {message}" if key else message
