"""The private torch APIs rlgrad's fast paths use, in one place, each with a public fallback.

torch marks these as private (a leading underscore): they may change or vanish in any release.
Everything else in rlgrad calls the functions below, which use the private API when this torch
has it and otherwise do the same thing through public APIs (slower on CPU, same numbers):

* ``torch._foreach_norm``, ``torch._foreach_mul_``, ``torch._foreach_add_``,
  ``torch._foreach_sub_``, ``torch._foreach_lerp_``: one call over a list of tensors, instead of
  one call per tensor;
* ``torch._fused_adam_``: Adam's fused kernel called directly (without ``Optimizer.step``'s
  per-call bookkeeping), and the optimiser-hook registries it must check first
  (``Optimizer._optimizer_step_pre_hooks`` and friends);
* ``nn.Module._parameters``: a linear layer's live parameter dict for plain-function acting;
* ``torch._inductor.config.fallback_random``: compiled code draws the same random numbers as
  eager code.

``tests/test_torch_private.py`` forces the fallback (:func:`public_only`) and checks
that a learner's update is the same to 1e-6. The torch range that is tested is the one
``pyproject.toml`` admits; CI runs torch 2.13.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

_PRIVATE_NAMES = (
    "_foreach_norm",
    "_foreach_mul_",
    "_foreach_add_",
    "_foreach_sub_",
    "_foreach_lerp_",
    "_fused_adam_",
)
_AVAILABLE = all(hasattr(torch, name) for name in _PRIVATE_NAMES) and all(
    hasattr(torch_optimizer, name)
    for name in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
)
_forced_public = False


def private_available() -> bool:
    """Whether the private APIs are there and in use (not forced off by :func:`public_only`)."""
    return _AVAILABLE and not _forced_public


@contextmanager
def public_only() -> Iterator[None]:
    """Use the public fallbacks inside the block (for tests)."""
    global _forced_public
    previous, _forced_public = _forced_public, True
    try:
        yield
    finally:
        _forced_public = previous


def foreach_norm(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[‖t‖₂ for t in tensors]."""
    if private_available():
        return list(torch._foreach_norm(list(tensors)))
    return [torch.linalg.vector_norm(t) for t in tensors]


def foreach_mul_(tensors: Sequence[torch.Tensor], factor: torch.Tensor) -> None:
    """t ← t · factor for every tensor (``factor`` a 0-dim tensor)."""
    if private_available():
        torch._foreach_mul_(list(tensors), factor)
        return
    for t in tensors:
        t.mul_(factor)


def foreach_lerp_(
    targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], weight: float
) -> None:
    """t ← t + weight · (s − t) pairwise (Polyak averaging)."""
    if private_available():
        torch._foreach_lerp_(list(targets), list(sources), weight)
        return
    for t, s in zip(targets, sources, strict=True):
        t.lerp_(s, weight)


def optimizer_has_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step hooks are registered on ``optimizer`` or globally (True when that cannot be
    told without the private registries: the caller then takes ``optimizer.step()``)."""
    if not private_available():
        return True
    hooks = (
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        torch_optimizer._global_optimizer_pre_hooks,
        torch_optimizer._global_optimizer_post_hooks,
    )
    return any(h is None or len(h) for h in hooks)


def fused_adam_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    found_inf: torch.Tensor | None,
) -> None:
    """One step of Adam's fused kernel on the given state (only where
    :func:`private_available`); steps are incremented first, and rolled back where
    ``found_inf`` is 1, when the kernel leaves everything else as it was."""
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        maximize=False,
        grad_scale=None,
        found_inf=found_inf,
    )
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


class _Attributes(Mapping[str, torch.Tensor]):
    """``layer.weight``/``layer.bias`` read at each access: the public stand-in for
    ``layer._parameters``."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self.layer, key)

    def __iter__(self) -> Iterator[str]:
        return iter(("weight", "bias"))

    def __len__(self) -> int:
        return 2


def linear_parameters(layer: nn.Linear) -> Mapping[str, torch.Tensor]:
    """A live view of ``layer``'s weight and bias (a replaced parameter shows at the next read)."""
    if private_available():
        return layer._parameters  # type: ignore[return-value]
    return _Attributes(layer)


def inductor_fallback_random() -> None:
    """Make ``torch.compile``d code draw the same random numbers as eager code (a no-op where
    inductor's config is not importable)."""
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # pragma: no cover - a torch without inductor
        return
    inductor_config.fallback_random = True
