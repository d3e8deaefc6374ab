"""Fast kernels as checked stand-ins for reference functions, chosen by ``learner.kernels``.

A *reference* is the plain torch code that defines a computation (a network's forward pass, a
reparameterized sample, a loss) and that an agent file shows. A *fused* kernel computes the same
values with a hand-written backward pass (one autograd node, the cheapest kernels; see
:mod:`rlgrad.kernels.sac` and :mod:`rlgrad.kernels.ppo`). Each fused kernel is registered here
against its reference with

* ``supports(*static)``: whether it covers the given static arguments (modules, options), and
* ``example(generator)``: random static arguments and inputs, from which
  ``tests/test_kernels.py`` checks for every registered pair that values and gradients agree.

An agent binds a reference once, ``learner.kernel(reference, *static)``, and calls what it gets
back with the remaining arguments. ``learner.kernels`` decides:

* ``reference``: the reference everywhere;
* ``auto`` (default): the fused stand-in where one is registered and supports the static
  arguments, the reference elsewhere (and everywhere under ``learner.compile``, which fuses
  the reference itself);
* ``fused``: like ``auto``, but a registered kernel that does not support its arguments is an
  error instead of a silent fallback.

Fused kernels support neither double backward nor ``torch.func`` transforms: the diagnostics
call the references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

KernelMode = Literal["auto", "reference", "fused"]
KERNEL_MODES: tuple[str, ...] = ("auto", "reference", "fused")


@dataclass(frozen=True)
class Kernel:
    """A fused stand-in registered against the reference it replaces."""

    name: str
    reference: Callable[..., Any]
    fused: Callable[..., Any]
    supports: Callable[..., bool]
    """``supports(*static)``: whether ``fused`` computes what ``reference`` does for them."""
    example: Callable[[torch.Generator], tuple[tuple[Any, ...], tuple[Any, ...]]]
    """Random ``(static, inputs)`` with float64 tensors for the equivalence test."""


_REGISTRY: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    """Add ``kernel`` to the registry (one per reference and per name)."""
    for other in _REGISTRY.values():
        if other.name != kernel.name and other.reference is kernel.reference:
            raise ValueError(f"{kernel.reference} already has a fused kernel: {other.name}")
    _REGISTRY[kernel.name] = kernel
    return kernel


def registered() -> list[Kernel]:
    """Every registered kernel (import the agents first to include theirs)."""
    return list(_REGISTRY.values())


def kernel_for(reference: Callable[..., Any]) -> Kernel | None:
    return next((k for k in _REGISTRY.values() if k.reference is reference), None)


def reference_name(reference: Callable[..., Any]) -> str:
    kernel = kernel_for(reference)
    return kernel.name if kernel else getattr(reference, "__qualname__", repr(reference))


class KernelError(ValueError):
    """``learner.kernels=fused`` asked for a stand-in that does not support its arguments."""


def choose(
    reference: Callable[..., Any], mode: str, static: tuple[Any, ...], compiled: bool = False
) -> tuple[Callable[..., Any], str]:
    """The implementation ``mode`` selects for ``reference`` with ``static``, and its kind
    (``"fused"`` or ``"reference"``)."""
    if mode not in KERNEL_MODES:
        raise KernelError(f"unknown learner.kernels={mode!r}; expected one of {KERNEL_MODES}")
    kernel = kernel_for(reference)
    if kernel is None or mode == "reference" or (compiled and mode == "auto"):
        return reference, "reference"
    if not kernel.supports(*static):
        if mode == "fused":
            raise KernelError(
                f"learner.kernels=fused, but the fused kernel {kernel.name} does not support "
                "this network (e.g. an activation other than the ones it implements); use "
                "learner.kernels=auto"
            )
        return reference, "reference"
    return kernel.fused, "fused"


class Bound:
    """``fn(*static, *args)``: a reference or its stand-in with its static arguments bound."""

    __slots__ = ("fn", "static", "kind", "name")

    def __init__(self, fn: Callable[..., Any], static: tuple[Any, ...], kind: str, name: str):
        self.fn, self.static, self.kind, self.name = fn, static, kind, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*self.static, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<kernel {self.name}: {self.kind}>"


def bind(reference: Callable[..., Any], mode: str, *static: Any, compiled: bool = False) -> Bound:
    fn, kind = choose(reference, mode, static, compiled)
    return Bound(fn, static, kind, reference_name(reference))


# The SAC stand-ins (rlgrad.kernels.sac) for references that live in the core. PPO's loss is
# registered next to its reference in agents/ppo.py.
from rlgrad.kernels import sac as _sac  # noqa: E402

# Kernel name → the stem of its adapters in rlgrad.kernels.sac (reference_*, fused_*, …).
_SAC_KERNELS = {
    "mlp_heads": "mlp_heads",
    "ensemble_mlp": "ensemble",
    "squashed_gaussian_sample": "squashed_sample",
}
for _name, _stem in _SAC_KERNELS.items():
    register(
        Kernel(
            name=_name,
            reference=getattr(_sac, f"reference_{_stem}"),
            fused=getattr(_sac, f"fused_{_stem}"),
            supports=getattr(_sac, f"supports_{_stem}", _sac.supports_always),
            example=getattr(_sac, f"example_{_stem}"),
        )
    )
