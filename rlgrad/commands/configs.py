"""``rlgrad configs``: the configs shipped with rlgrad, with their agent, env and budget."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from rlgrad.config import read_yaml, shipped_configs, shipped_configs_dir

    shipped = shipped_configs()
    if not shipped:
        print("no shipped configs found (is rlgrad installed with its package data?)")
        return 1
    rows = []
    for name, path in shipped.items():
        data = read_yaml(path)
        agent = data.get("agent", {}).get("name", "?")
        env = data.get("env", {}).get("id", "Pendulum-v1")  # EnvConfig's default id
        steps = data.get("total_steps", "?")
        rows.append((name, str(agent), str(env), f"{steps:,}" if isinstance(steps, int) else "?"))
    header = ("name", "agent", "env", "total_steps")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nin {shipped_configs_dir()}; train one with: rlgrad train NAME [KEY=VALUE ...]")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "configs",
        help="list the shipped configs with their agent and env",
        description="List the configs shipped with rlgrad: their name (what rlgrad train "
        "takes), agent, env and number of environment steps.",
    )
    parser.set_defaults(func=run)
