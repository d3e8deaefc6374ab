"""The learner: owns the device and the optimisers, and applies the losses agents hand it.

``Learner.step(name, loss)`` is the only place where parameters change: it back-propagates,
measures the gradient norm, clips it when ``max_grad_norm`` is set, and refuses to apply a
non-finite loss or gradient (the update is skipped and counted; after ``max_nonfinite``
consecutive skips the run stops with :class:`NonFiniteError`). With
``nonfinite_check_interval`` > 1 that decision is taken on the device and read back every so
many steps, so that a GPU update never waits for the host.

Adam steps call the fused kernel directly (the same numbers as ``Optimizer.step``, less
per-call overhead). ``Learner.compile`` wraps an agent's loss computations in
``torch.compile`` when ``learner.compile`` is set.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from rlgrad import kernels, torch_private
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


def _plain_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is a one-group fused Adam without options or hooks that
    :func:`_fused_adam_step` does not reproduce (False where torch's private fused kernel is
    not available: then ``optimizer.step()`` runs)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    if not torch_private.private_available():
        return False
    group = optimizer.param_groups[0]
    return (
        bool(group.get("fused"))
        and not any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable"))
        and not group.get("decoupled_weight_decay")
        and not isinstance(group["lr"], torch.Tensor)
        and not torch_private.optimizer_has_hooks(optimizer)
    )


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖(g_1, …, g_n)‖₂ = ‖(‖g_1‖₂, …, ‖g_n‖₂)‖₂ for tensors on one device: the arithmetic of
    ``torch.nn.utils.get_total_norm(grads, foreach=True)`` (bit-equal) without its per-call
    grouping by device and dtype."""
    return torch.linalg.vector_norm(torch.stack(torch_private.foreach_norm(grads)))


def _clip_(grads: list[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """g ← g · min(1, max_norm / (‖g‖ + 1e-6)) in place, as ``clip_grads_with_norm_`` does."""
    torch_private.foreach_mul_(grads, torch.clamp(max_norm / (total_norm + 1e-6), max=1.0))


def _fused_adam_step(
    optimizer: torch.optim.Adam,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    found_inf: torch.Tensor | None = None,
) -> None:
    """``optimizer.step()`` for a :func:`_plain_fused_adam` whose parameters all have gradients:
    the same state (created as Adam creates it) and the same kernel (torch's private
    ``_fused_adam_``, through :mod:`rlgrad.torch_private`), without the per-call
    bookkeeping of ``Optimizer.step``.

    ``found_inf`` (a float 0-dim tensor on the parameters' device): where it is 1 the kernel
    leaves parameters, moments and step counts as they were, decided on the device (no sync).
    """
    group, state = optimizer.param_groups[0], optimizer.state
    for p in params:
        if not state[p]:
            state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    torch_private.fused_adam_(
        params,
        grads,
        [state[p]["exp_avg"] for p in params],
        [state[p]["exp_avg_sq"] for p in params],
        [state[p]["step"] for p in params],
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        found_inf=found_inf,
    )


class _CompiledOrEager:
    """``torch.compile(fn)``, falling back to ``fn`` itself for good (with one warning) when
    compiling or running the compiled code raises, e.g. where no C++ compiler is installed."""

    def __init__(self, fn: Callable[..., Any], mode: str, backend: str):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, mode=mode, backend=backend)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # dynamo and inductor raise many kinds
                name = getattr(self.fn, "__qualname__", repr(self.fn))
                text = " ".join(str(exc).split())[:300]
                warnings.warn(
                    f"learner.compile: torch.compile of {name} failed "
                    f"({type(exc).__name__}: {text}); running it eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.fn(*args, **kwargs)


class Learner:
    compile_backend = "inductor"
    """``torch.compile`` backend of :meth:`compile` (tests use ``aot_eager``: no C++ build)."""

    def __init__(self, cfg: LearnerConfig | None = None):
        self.cfg = cfg or LearnerConfig()
        self.device = resolve_device(self.cfg.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.nonfinite_skips = 0
        # Consecutive skips per loss: a critic that is NaN every step must stop the run even
        # while the actor's loss, which does not see rewards, stays finite.
        self.consecutive: dict[str, int] = {}
        # nonfinite_check_interval > 1: per loss, (consecutive skips, skips since the last
        # check) as device tensors, read by check_nonfinite every that many steps.
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._steps_since_check = 0
        self.grad_norms: dict[str, torch.Tensor] = {}
        """Loss name → the pre-clip gradient norm of its last step (a device tensor: read it
        when logging, not per step), logged as ``learner/grad_norm/<loss>``."""
        self.active_kernels: dict[str, str] = {}
        """Kernel name → ``"fused"`` or ``"reference"``, for every kernel an agent bound."""

    def kernel(self, reference: Callable[..., Any], *static: Any) -> kernels.Bound:
        """``reference`` with its ``static`` arguments bound, or its registered fused stand-in,
        as ``learner.kernels`` selects (see :mod:`rlgrad.kernels`); recorded in
        ``active_kernels``."""
        bound = kernels.bind(reference, self.cfg.kernels, *static, compiled=self.cfg.compile)
        previous = self.active_kernels.get(bound.name)
        self.active_kernels[bound.name] = bound.kind if previous in (None, bound.kind) else "mixed"
        return bound

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled by ``torch.compile`` when ``learner.compile`` is set, else ``fn``.

        For an agent's loss computations: each compiled function should return losses that are
        back-propagated once (a compiled region is one autograd node). Random draws inside
        match eager ones (inductor's ``fallback_random``), so a seed gives the same run either
        way up to float rounding.
        """
        if not self.cfg.compile:
            return fn
        torch_private.inductor_fallback_random()
        return _CompiledOrEager(fn, self.cfg.compile_mode, self.compile_backend)

    def mark_step(self) -> None:
        """Call before each update (or minibatch step) that runs compiled functions: with
        CUDA graphs (``compile_mode=reduce-overhead`` on a GPU) it starts a new generation, so
        that the graphs may reuse the previous step's output memory. A no-op otherwise."""
        if self.cfg.compile and self.cfg.compile_mode == "reduce-overhead":
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()

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
        for p in params:  # optimizer.zero_grad(set_to_none=True), without its per-call overhead
            p.grad = None
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        clip = max_grad_norm
        # The fused kernel needs all parameters on one device, so the lean norm and clip can too.
        fused = len(grads) == len(params) and _plain_fused_adam(optimizer)
        norm = _total_norm(grads) if fused else torch.nn.utils.get_total_norm(grads, foreach=True)
        self.grad_norms[name] = norm
        if fused and self.cfg.nonfinite_check_interval > 1:
            self._step_without_sync(name, optimizer, params, grads, loss, norm, clip)
            return norm
        norm_value, loss_value = torch.stack((norm, loss.detach().to(norm.dtype))).tolist()
        if not (math.isfinite(norm_value) and math.isfinite(loss_value)):  # one host sync
            self._skip(name, loss)
            optimizer.zero_grad(set_to_none=True)
            return norm
        self.consecutive[name] = 0
        if clip is not None and fused:
            _clip_(grads, clip, norm)
        elif clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm, foreach=True)
        if fused:
            _fused_adam_step(optimizer, params, grads)
        else:
            optimizer.step()
        return norm

    def _step_without_sync(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        loss: torch.Tensor,
        norm: torch.Tensor,
        clip: float | None,
    ) -> None:
        """The guarded step decided on the device: fused Adam's ``found_inf`` skips it."""
        found = (~(torch.isfinite(norm) & torch.isfinite(loss.detach()))).to(norm.dtype)
        if clip is not None:
            _clip_(grads, clip, norm)
        _fused_adam_step(optimizer, params, grads, found_inf=found)  # type: ignore[arg-type]
        if name not in self._pending:
            streak = torch.tensor(float(self.consecutive.get(name, 0)), device=found.device)
            self._pending[name] = (streak, torch.zeros_like(found))
        streak, skipped = self._pending[name]
        self._pending[name] = ((streak + found) * found, skipped + found)
        self._steps_since_check += 1
        if self._steps_since_check >= self.cfg.nonfinite_check_interval:
            self.check_nonfinite()

    def check_nonfinite(self) -> None:
        """Count, warn about and check the skips made without a host sync since the last call
        (``nonfinite_check_interval`` > 1; the learner calls it on that schedule)."""
        self._steps_since_check = 0
        for name, (streak, skipped) in self._pending.items():
            n_skipped, run = int(skipped.item()), int(streak.item())
            self.consecutive[name] = run
            if not n_skipped:
                continue
            self._pending[name] = (streak, torch.zeros_like(skipped))
            self.nonfinite_skips += n_skipped
            warnings.warn(
                f"non-finite loss or gradient in loss '{name}': {n_skipped} update(s) skipped "
                f"since the last check ({run} in a row now)",
                RuntimeWarning,
                stacklevel=3,
            )
            if run >= self.cfg.max_nonfinite:
                raise NonFiniteError(
                    f"{run} consecutive non-finite updates (last in loss '{name}'); stopping; "
                    "check rewards and observations for NaN, or lower the lr"
                )

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
        """Optimisers and non-finite counts. Skips made without a host sync since the last
        check are counted first (:meth:`check_nonfinite`), so that a run resumed from this
        state counts them too."""
        if self._pending:
            self.check_nonfinite()
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
