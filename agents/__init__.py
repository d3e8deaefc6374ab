"""rlgrad's agents, one module per agent, installed as ``rlgrad.agents``.

Each agent module defines ``Config`` (a :class:`rlgrad.config.AgentConfig` subclass) and
``Agent`` (the class the runner drives); :func:`agent_spec` finds them by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

AGENT_NAMES: tuple[str, ...] = ("ppo", "reinforce", "sac", "sac_discrete")


@dataclass(frozen=True)
class AgentSpec:
    name: str
    config: Any
    agent: Any


def agent_spec(name: str) -> AgentSpec:
    """The config class and agent class registered under ``name``."""
    from rlgrad.config import ConfigError

    if name not in AGENT_NAMES:
        raise ConfigError(f"unknown agent '{name}'; valid agents: {', '.join(AGENT_NAMES)}")
    try:
        module = importlib.import_module(f"rlgrad.agents.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"rlgrad.agents.{name}":
            raise ConfigError(f"agent '{name}' is not available in this version") from None
        raise
    return AgentSpec(name, module.Config, module.Agent)
