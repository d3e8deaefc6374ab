"""``rlgrad keys AGENT``: every config key of an agent, with its type, default and meaning.

Generated from the pydantic schema (:class:`rlgrad.config.RunConfig` with the agent's
``Config``); a key's meaning is the docstring written under its field (or its ``description``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin


@dataclass(frozen=True)
class KeyInfo:
    key: str
    type: str
    default: str
    doc: str


def field_docstrings(model: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literals written right under each field of
    ``model`` and its bases (the base's first, so a subclass's own text wins)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                text = inspect.cleandoc(after.value.value).replace("``", "")
                docs[node.target.id] = " ".join(text.split())
    return docs


def type_name(annotation: Any) -> str:
    """A type as a user writes values of it: ``int``, ``float | auto``, ``cpu|cuda``."""
    origin = get_origin(annotation)
    if origin is Annotated:  # a constrained type (PositiveInt): shown as the type itself
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin is not None:
        inner = ", ".join(type_name(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value) if not isinstance(value, str) else value


def schema_keys(agent: str) -> list[KeyInfo]:
    """Every leaf key of the config of ``agent`` (``agent.*`` first, then the other sections
    and the top-level keys), in the schema's order."""
    from pydantic import BaseModel

    from rlgrad.agents import agent_spec
    from rlgrad.config import RunConfig

    def walk(model: type[BaseModel], prefix: str) -> list[KeyInfo]:
        docs = field_docstrings(model)
        keys: list[KeyInfo] = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys += walk(annotation, f"{prefix}{name}.")
                continue
            doc = field.description or docs.get(name, "")
            keys.append(KeyInfo(prefix + name, type_name(annotation), _default(field), doc))
        return keys

    config_cls = agent_spec(agent).config
    keys = walk(RunConfig[config_cls], "")  # type: ignore[valid-type]
    name_default = KeyInfo("agent.name", "str", agent, "the agent; fixes the keys below")
    keys = [name_default if k.key == "agent.name" else k for k in keys]
    return sorted(keys, key=lambda k: (not k.key.startswith("agent."), "." not in k.key))


def run(args: argparse.Namespace) -> int:
    keys = schema_keys(args.agent)
    for info in keys:
        print(f"{info.key}: {info.type} = {info.default}")
        if info.doc:
            print(textwrap.fill(info.doc, 96, initial_indent="    ", subsequent_indent="    "))
    print(f"\n{len(keys)} keys; set any with rlgrad train CONFIG KEY=VALUE")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "keys",
        help="list every config key of an agent with its type, default and meaning",
        description="List every config key of an agent's runs (the agent's own, then env, "
        "logging, eval, checkpoint, learner, diagnostics and the top-level keys) with its "
        "type, default value and meaning, as the config schema defines them.",
        epilog="example: rlgrad keys sac",
    )
    parser.add_argument("agent", help="the agent: sac, ppo or reinforce")
    parser.set_defaults(func=run)
