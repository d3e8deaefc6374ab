"""The learner: owns the device and the optimisers, and applies the losses agents hand it.

``Learner.step(name, loss)`` is the only place where parameters change: it back-propagates,
measures the gradient norm, clips it when ``max_grad_norm`` is set, and refuses to apply a
non-finite loss or gradient (the update is skipped and counted; after ``max_nonfinite``
consecutive skips the run stops with :class:`NonFiniteError`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch

from rlgrad.config import LearnerConfig


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a NaN/Inf loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


class Learner:
    def __init__(self, cfg: LearnerConfig | None = None):
        self.cfg = cfg or LearnerConfig()
        self.device = resolve_device(self.cfg.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.nonfinite_skips = 0
        # Consecutive skips per loss: a critic that is NaN every step must stop the run even
        # while the actor's loss, which does not see rewards, stays finite.
        self.consecutive: dict[str, int] = {}

    def add_optimizer(
        self, name: str, params: Iterable[torch.nn.Parameter], lr: float, **adam_kwargs
    ) -> torch.optim.Optimizer:
        """Register an Adam optimiser under ``name`` (one per loss the agent hands in)."""
        if name in self.optimizers:
            raise ValueError(f"an optimizer named {name!r} is already registered")
        params = list(params)
        # The fused kernel (one call for all tensors) is far cheaper than the per-tensor loop
        # torch uses by default on CPU; it needs every parameter on one floating device.
        adam_kwargs.setdefault("fused", all(p.is_floating_point() for p in params))
        optimizer = torch.optim.Adam(params, lr=lr, **adam_kwargs)
        self.optimizers[name] = optimizer
        return optimizer

    def params(self, name: str) -> list[torch.Tensor]:
        return [p for group in self.optimizers[name].param_groups for p in group["params"]]

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.optimizers[name].param_groups:
            group["lr"] = lr

    def step(
        self, name: str, loss: torch.Tensor, max_grad_norm: float | None = None
    ) -> torch.Tensor:
        """Minimise ``loss`` by one step of the optimiser ``name``; returns the gradient norm.

        The norm is measured before clipping. A non-finite loss or gradient leaves the
        parameters and the optimiser's state untouched.
        """
        optimizer = self.optimizers[name]
        params = self.params(name)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if not bool(torch.isfinite(norm) & torch.isfinite(loss.detach())):
            self._skip(name, loss)
            optimizer.zero_grad(set_to_none=True)
            return norm
        self.consecutive[name] = 0
        clip = max_grad_norm if max_grad_norm is not None else self.cfg.max_grad_norm
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm, foreach=True)
        optimizer.step()
        return norm

    def _skip(self, name: str, loss: torch.Tensor) -> None:
        self.nonfinite_skips += 1
        self.consecutive[name] = self.consecutive.get(name, 0) + 1
        value = float(loss.detach())
        what = "loss" if not math.isfinite(value) else "gradient"
        warnings.warn(
            f"non-finite {what} in loss '{name}' (loss={value}); update skipped "
            f"({self.consecutive[name]} in a row)",
            RuntimeWarning,
            stacklevel=3,
        )
        if self.consecutive[name] >= self.cfg.max_nonfinite:
            raise NonFiniteError(
                f"{self.consecutive[name]} consecutive non-finite updates (last in loss "
                f"'{name}'); stopping; check rewards and observations for NaN, or lower the lr"
            )

    def state_dict(self) -> dict:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "nonfinite_skips": self.nonfinite_skips,
            "consecutive": dict(self.consecutive),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, opt_state in state["optimizers"].items():
            self.optimizers[name].load_state_dict(opt_state)
        self.nonfinite_skips = int(state["nonfinite_skips"])
        self.consecutive = {k: int(v) for k, v in state["consecutive"].items()}
