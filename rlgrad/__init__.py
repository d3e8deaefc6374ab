"""rlgrad: score-function and pathwise policy gradients, with gradient-variance diagnostics.

The Python API (:mod:`rlgrad.api`) is imported on first use, so that ``import rlgrad`` (and
the ``rlgrad`` command's start-up) does not import torch::

    result = rlgrad.train("sac_pendulum", total_steps=300)   # TrainResult
    policy = rlgrad.load(result.run_dir)                      # Policy
    action = policy.predict(obs)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("train", "load", "save_policy", "Policy", "TrainResult")
__all__ = ["Policy", "TrainResult", "__version__", "load", "save_policy", "train"]

if TYPE_CHECKING:
    from rlgrad.api import Policy, TrainResult, load, save_policy, train


def __getattr__(name: str) -> Any:
    if name in _API:
        import rlgrad.api

        return getattr(rlgrad.api, name)
    raise AttributeError(f"module 'rlgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
