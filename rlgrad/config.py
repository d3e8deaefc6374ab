"""Typed run configuration: YAML file + ``key=value`` overrides, validated against a schema.

OmegaConf reads the YAML (a safe loader) and merges the dotted overrides; pydantic validates the
merged tree against the schema below, where every section forbids unknown keys. Every failure
becomes a :class:`ConfigError` whose message is one line naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration the user must fix; its message is a single line."""

    def __init__(self, message: str):
        # A user's value can hold a line break of its own (e.g. U+2028): still one line.
        super().__init__(" ".join(str(message).splitlines()))


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    # strict: no silent coercion (a YAML ``true`` is not batch_size 1, "5" is not 5).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


class AgentConfig(Section):
    """Base of the agents' configs; each agent subclasses it with its hyperparameters."""

    action_spaces: ClassVar[tuple[str, ...]] = ("continuous",)
    """The action spaces the agent takes: ``continuous`` (Box), ``discrete`` (Discrete)."""

    name: str


class EnvConfig(Section):
    id: str = "Pendulum-v1"
    """Gymnasium env id; ``package.module:EnvName-v0`` imports the module that registers it."""
    n_envs: int = Field(1, gt=0)
    """Copies of the env stepped together (one vector step = n_envs env steps)."""
    vectorization: Literal["sync", "async"] = "sync"
    """``sync``: all copies in this process; ``async``: one worker process per copy."""
    normalize_obs: bool = False
    """Normalise observations by running mean and variance (saved in checkpoints)."""
    normalize_reward: bool = False
    """Scale rewards by the running standard deviation of the discounted return."""
    clip_obs: float = Field(10.0, gt=0)
    """Normalised observations are clipped to [-clip_obs, clip_obs]."""
    rescale_actions: bool = True
    """Present the action space to the agent as [-1, 1]^d and rescale to the env's bounds."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``gymnasium.make``."""
    wrappers: list[str | dict[str, dict[str, Any]]] = Field(default_factory=list)
    """Gymnasium wrappers (class names from ``gymnasium.wrappers``) applied in order to each
    sub-env, innermost first, e.g. [FlattenObservation] for a Dict observation; a wrapper that
    needs arguments is written {Name: {arg: value}}."""

    @field_validator("wrappers")
    @classmethod
    def _known_wrappers(cls, wrappers: list) -> list:
        if wrappers:
            from rlgrad.envs import wrapper_factories  # gymnasium: imported only when needed

            wrapper_factories(wrappers)
        return wrappers


class LoggingConfig(Section):
    wandb: Literal["auto", "offline", "online", "disabled"] = "auto"
    """``auto``: online when a W&B key is configured, offline otherwise."""
    project: str = "rlgrad"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); None: the account's default."""
    group: str | None = None
    """W&B group (rlgrad compare sets it to the study's name)."""
    job_type: str | None = None
    """W&B job type (rlgrad compare sets it to the estimator's label)."""
    tags: list[str] = Field(default_factory=list)
    """W&B tags."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory."""
    interval: int = Field(1000, gt=0)
    """Environment steps between two records of training metrics (losses, sps)."""


class EvalConfig(Section):
    interval: int = Field(5000, ge=0)
    """Environment steps between evaluations; 0 evaluates only at the end."""
    episodes: int = Field(10, gt=0)
    """Episodes per evaluation (fresh seeds, one env each)."""
    deterministic: bool = True
    """Evaluate the policy's mean action (false: sample actions)."""


class CheckpointConfig(Section):
    interval: int = Field(10_000, ge=0)
    """Environment steps between checkpoints; 0 saves only at the end."""


class LearnerConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: cuda when a GPU is there, else cpu."""
    max_nonfinite: int = Field(100, gt=0)
    """Consecutive updates with a non-finite loss or gradient before the run stops."""
    torch_threads: int | None = Field(None, gt=0)
    """Threads for torch's CPU kernels; None: 1 on CPU (small networks lose to oversubscription)."""
    compile: bool = False
    """``torch.compile`` the agents' loss computations. For GPUs: on CPU compiling costs tens of
    seconds and the compiled SAC update runs slower than the eager one. Where compiling fails
    (e.g. no C++ compiler), the run warns and goes on eagerly."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """``torch.compile``'s mode; ``reduce-overhead`` also captures CUDA graphs (GPU only)."""
    kernels: Literal["auto", "reference", "fused"] = "auto"
    """Fast kernels (``rlgrad.kernels``): ``auto`` uses a registered fused stand-in wherever it
    supports the network at hand and the reference elsewhere; ``reference`` trains through the
    code the agent file shows; ``fused`` is ``auto`` that refuses to fall back. The run's first
    console line and config.yaml record which kernels are active."""
    nonfinite_check_interval: int = Field(1, gt=0)
    """Optimiser steps between host reads of the non-finite guard. 1: at every step (a host
    sync, free on CPU). N > 1: a non-finite step is still skipped at once, on the device, but
    the skips are counted, warned about and checked against ``max_nonfinite`` every N steps,
    so that a GPU update never waits for the host."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_grad_norm" in data:
            raise ValueError(  # reported as "config key 'learner': <this>"
                "no key max_grad_norm here (did you mean 'agent.max_grad_norm'? gradient "
                "clipping is an agent setting, of PPO and REINFORCE)"
            )
        return data


class DiagnosticsConfig(Section):
    interval: int | None = Field(None, ge=0)
    """Updates between two gradient-variance measurements; 0 turns them off; None (the default)
    takes the agent's: SAC every 100 updates, REINFORCE and PPO at the first update after each
    2048 env steps (every rollout at PPO's defaults), each costing a few per cent of training."""
    batch: int | None = Field(None, gt=1)
    """States per SAC measurement (its precision; ``batch_variance`` and ``snr`` always describe
    the training batch); None takes half of ``agent.batch_size``. REINFORCE and PPO measure on
    the whole rollout of their last update."""
    reference_batch: int = Field(1024, gt=1)
    """Samples of the reference gradient that ``cosine_reference`` compares with (SAC)."""
    reference_interval: int = Field(500, ge=0)
    """Updates between two reference gradients (SAC: each costs about 2 updates at the default
    sizes): a measurement whose last ``interval`` updates cross a multiple of it takes one and
    logs ``cosine_reference``, so with ``interval`` ≥ this value every measurement does; 0
    never."""
    per_layer: bool = False
    """Also ``<parameter>/snr`` and ``<parameter>/variance`` for each parameter tensor."""


A = TypeVar("A", bound=AgentConfig)


class RunConfig(Section, Generic[A]):
    agent: A
    env: EnvConfig = Field(default_factory=EnvConfig)
    total_steps: int = Field(gt=0)
    """Environment steps to train for (1e6 is accepted for 1000000)."""
    seed: int = Field(0, ge=0)
    """Seeds the envs, the networks' initialisation and every random number of the run."""
    name: str | None = None
    """The run's name in W&B; None: the run directory's name."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=.*$", re.DOTALL)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["agent.lr=3e-4", "seed=2"]`` → nested dict with YAML-typed values."""
    for item in overrides:
        if not _OVERRIDE.match(item):
            raise ConfigError(
                f"malformed override {item!r}: expected KEY=VALUE with a dotted key, "
                "e.g. agent.batch_size=512"
            )
    merged = OmegaConf.create({})
    for item in overrides:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"bad override {item!r}: its value is not valid YAML ({_one_line(str(exc))}); "
                "fix or quote the value, e.g. agent.hidden_sizes=[64,64] or name='my run'"
            ) from None
        # ValueError: an integer of more than 4300 digits; RecursionError: [[[[…]]]] too deep;
        # TypeError: a section set by an earlier override replaced by a list (agent=[]).
        except (OmegaConfBaseException, ValueError, RecursionError, TypeError) as exc:
            raise ConfigError(
                f"bad override {item!r}: {_one_line(str(exc))}; an override replaces a value of "
                "the same kind (set a section's keys one by one, e.g. agent.batch_size=64)"
            ) from None
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}; pass the path of a YAML config, "
            "e.g. configs/sac_pendulum.yaml"
        )
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"cannot parse {path}: {_one_line(str(exc))}; fix the YAML there"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {_one_line(str(exc))}") from None
    container = OmegaConf.to_container(loaded, resolve=False)
    if not isinstance(container, dict):
        raise ConfigError(
            f"{path} must hold a mapping of config keys, not {type(container).__name__}, "
            "e.g. 'agent: {name: sac}' and 'total_steps: 20000' on two lines"
        )
    return container  # type: ignore[return-value]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base`` (OmegaConf semantics), resolving interpolations."""
    try:
        merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides))
        return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
    # TypeError: a section replaced by a list (logging=[1]); RecursionError: ${…} too deep.
    except (OmegaConfBaseException, TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"cannot merge the overrides into the config: {_one_line(str(exc))}; an override "
            "replaces a value of the same kind (set a section's keys one by one, e.g. "
            "logging.interval=100), and ${...} must name an existing key"
        ) from None


def validate(data: dict[str, Any]) -> RunConfig:
    """Validate a merged config tree against the schema of the agent it names."""
    from rlgrad.agents import agent_spec  # agents import this module

    agent = data.get("agent")
    if not isinstance(agent, dict) or "name" not in agent:
        raise ConfigError("the config must name its agent: agent.name (e.g. agent.name=sac)")
    config_cls = agent_spec(str(agent["name"])).config
    model = RunConfig[config_cls]  # type: ignore[valid-type]
    try:
        return model.model_validate(integral_floats_to_int(data, model))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_cls)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read ``path`` (a YAML file, or the name of a shipped config such as ``sac_pendulum``),
    apply ``overrides`` and return the validated config."""
    return validate(merge(read_yaml(find_config(path)), parse_overrides(overrides or [])))


def shipped_configs_dir() -> Path | None:
    """The folder of the configs shipped with rlgrad (package ``rlgrad.configs``, which is the
    repository's ``configs/`` folder), or None when neither is there."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("rlgrad.configs")
    except ImportError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    repo = Path(__file__).resolve().parent.parent / "configs"  # an install that predates it
    return repo if repo.is_dir() else None


def shipped_configs() -> dict[str, Path]:
    """Shipped run configs by name (``sac_pendulum`` → its YAML file), sorted by name."""
    folder = shipped_configs_dir()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def find_config(name_or_path: str | Path) -> Path:
    """An existing YAML file, or the shipped config of that name (``sac_pendulum`` or
    ``sac_pendulum.yaml``); otherwise a :class:`ConfigError` suggesting the closest names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    is_name = len(path.parts) == 1 and path.suffix in ("", ".yaml", ".yml")
    if is_name and path.stem in shipped:
        return shipped[path.stem]
    close = difflib.get_close_matches(path.stem, list(shipped), n=3, cutoff=0.5)
    if close:
        names = ", ".join(close[:-1]) + " or " + close[-1] if len(close) > 1 else close[0]
        hint = f"did you mean {names}? (shipped configs, by name)"
    else:
        hint = f"shipped configs: {', '.join(shipped) or 'none'}"
    raise ConfigError(
        f"config file not found: {path}; {hint}; give a shipped config's name or the path of "
        "a YAML file (rlgrad configs lists the shipped ones)"
    )


def integral_floats_to_int(data: Any, model: type[BaseModel]) -> Any:
    """``data`` with integral floats (``1e6``, ``2.0``) turned into ints where the schema wants
    an int, so that ``total_steps=1e6`` works; any other value is left to the validation."""
    if not isinstance(data, dict):
        return data
    converted = dict(data)
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is not None:
            converted[key] = _to_int_where_wanted(value, field.annotation)
    return converted


def _to_int_where_wanted(value: Any, annotation: Any) -> Any:
    if get_origin(annotation) is Annotated:  # e.g. PositiveInt: the type it constrains
        annotation = get_args(annotation)[0]
    if _is_model(annotation):
        return integral_floats_to_int(value, annotation)
    branches = get_args(annotation) if _is_union(annotation) else (annotation,)
    if isinstance(value, float) and int in branches and float not in branches:
        return int(value) if value.is_integer() else value
    if isinstance(value, list) and get_origin(annotation) is list:
        (item,) = get_args(annotation) or (Any,)
        return [_to_int_where_wanted(v, item) for v in value]
    return value


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(exc: ValidationError, agent_cls: type[AgentConfig]) -> str:
    """The first validation error as one line: the dotted key, what is wrong, what to do.

    pydantic reports a value that fails a union (``float | Literal["auto"]``) once per branch,
    with the branch's name in the location (``agent.ent_coef.float``); those errors are folded
    into one "should be A or B" for the key itself.
    """
    errors = exc.errors()
    error = errors[0]
    parts, in_union = _key_parts(error["loc"], agent_cls)
    key, kind, given = _dotted(parts), error["type"], error.get("input")
    if kind == "extra_forbidden":
        valid = _valid_keys(parts[:-1], agent_cls)
        close = difflib.get_close_matches(str(parts[-1]), valid, n=1)
        suggestion = _synonym(parts, agent_cls) or (
            _dotted([*parts[:-1], close[0]]) if close else None
        )
        hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
        return f"unknown config key '{key}'{hint}; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return f"missing config key '{key}': add it to the config file or pass {key}=VALUE"
    if kind in ("model_type", "model_attributes_type"):
        valid = ", ".join(_valid_keys(parts, agent_cls))
        return f"config key '{key}' must be a section of keys (got {given!r}); its keys: {valid}"
    if kind == "value_error":  # a check across several keys (a model validator)
        reason = _one_line(str(error.get("ctx", {}).get("error", error["msg"])))
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        return f"config key '{key or '<root>'}': {reason}{shown}"
    messages = [error["msg"]]
    if in_union:
        messages = [e["msg"] for e in errors if _key_parts(e["loc"], agent_cls)[0] == parts]
    messages = [_one_line(m) for m in dict.fromkeys(messages)]
    prefix = "Input should be "
    if all(m.startswith(prefix) for m in messages):
        wanted = " or ".join(m.removeprefix(prefix) for m in messages)
        return f"config key '{key}' should be {wanted} (got {given!r})"
    return f"config key '{key}': {'; '.join(messages)} (got {given!r})"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _key_parts(
    loc: tuple[int | str, ...], agent_cls: type[AgentConfig]
) -> tuple[list[int | str], bool]:
    """An error location as config-key parts without union-branch names, and whether the
    field it ends on is a union."""
    model: type[BaseModel] | None = RunConfig[agent_cls]  # type: ignore[valid-type]
    annotation: Any = None
    parts: list[int | str] = []
    for part in loc:
        if model is not None and part in model.model_fields:
            annotation = model.model_fields[str(part)].annotation
            model = annotation if _is_model(annotation) else None
            parts.append(part)
        elif model is None and isinstance(part, str) and _is_union(annotation):
            continue  # the name of the union branch that failed, e.g. 'float'
        else:
            if isinstance(part, int) and get_origin(annotation) is list:
                annotation = (get_args(annotation) or (Any,))[0]  # the list's item
            parts.append(part)
    return parts, model is None and _is_union(annotation)


def _dotted(parts: list[int | str]) -> str:
    """``["agent", "hidden_sizes", 1]`` → ``agent.hidden_sizes[1]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _valid_keys(parent: list[int | str], agent_cls: type[AgentConfig]) -> list[str]:
    model: type[BaseModel] = RunConfig[agent_cls]  # type: ignore[valid-type]
    for part in parent:
        if part not in model.model_fields:
            return []
        annotation = model.model_fields[str(part)].annotation
        if not _is_model(annotation):
            return []
        model = annotation
    return sorted(model.model_fields)


# Names users bring from other libraries (SB3, CleanRL, RL Zoo) → the key here.
SYNONYMS: dict[str, str] = {
    "lr": "agent.learning_rate",
    "learning_rate": "agent.learning_rate",
    "alpha": "agent.ent_coef",
    "gamma": "agent.gamma",
    "discount": "agent.gamma",
    "discount_factor": "agent.gamma",
    "batch_size": "agent.batch_size",
    "minibatch_size": "agent.batch_size",
    "buffer_size": "agent.buffer_size",
    "tau": "agent.tau",
    "n_envs": "env.n_envs",
    "num_envs": "env.n_envs",
    "env_id": "env.id",
    "env_name": "env.id",
    "steps": "total_steps",
    "timesteps": "total_steps",
    "total_timesteps": "total_steps",
    "n_timesteps": "total_steps",
    "device": "learner.device",
    "threads": "learner.torch_threads",
    "torch_threads": "learner.torch_threads",
    "wandb": "logging.wandb",
    "project": "logging.project",
}


def _synonym(parts: list[int | str], agent_cls: type[AgentConfig]) -> str | None:
    """The key a common synonym stands for (``lr`` → ``agent.learning_rate``), where it exists."""
    target = SYNONYMS.get(str(parts[-1]))
    if target is None or target == _dotted(parts):
        return None
    *section, leaf = target.split(".")
    return target if leaf in _valid_keys(list(section), agent_cls) else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
