"""Gradient-variance diagnostics: per-sample gradients of a policy loss, and their statistics.

Two ways to the per-sample gradients g_i = ∇θ ℓ(θ; sample_i), i = 1 … B:

* **the definition** (:func:`per_sample_grads`): ``vmap(grad(ℓ))`` from ``torch.func`` over the
  samples, with ℓ the loss of one sample written through ``functional_call`` on the module's
  parameters, so there is no Python loop over samples. It materialises the (B, P) matrix.
* **the fast path** (:class:`LinearTape`), for a module whose parameters all sit in
  ``nn.Linear`` layers applied once per forward pass to a (B, ·) batch, row i belonging to
  sample i only. With h_i the layer's input and δ_i = ∂ℓ_i/∂z_i the gradient at its output
  z_i = W h_i + b for sample i, the per-sample gradients are ∂W_i = δ_i h_iᵀ and ∂b_i = δ_i, so

      Σ_i ∂W_i = δᵀh,   ‖∂W_i‖² = ‖δ_i‖² ‖h_i‖²,   ‖∂b_i‖² = ‖δ_i‖²

  from one ordinary backward of Σ_i ℓ_i to the layer outputs: the (B, P) matrix never exists.
  For many losses per row that reach the module only through its output layers (K
  score-function draws per state through a policy's heads), :class:`HeadJacobians` gives their
  δ and norms from as many backward passes as the heads have outputs, instead of K.

Random draws (ε, sampled actions) are made outside and passed in.

Both paths reduce to the sufficient statistics of :class:`GradientMoments`: n, Σ_i g_i and
Σ_i ‖g_i‖² (per parameter tensor), from which the statistics of docs/estimators.md §4 follow:

    ḡ = (1/n) Σ g_i,   tr Σ̂ = n/(n−1) ((1/n) Σ ‖g_i‖² − ‖ḡ‖²)   (= (1/(n−1)) Σ ‖g_i − ḡ‖²),
    batch variance tr Σ̂ / n,   SNR = ‖ḡ‖² / (tr Σ̂ / n),

* gradient noise scale B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018), estimated from the two
  batch sizes B_s = 1 and B_b = n:  ‖G‖² ≈ (n ‖ḡ‖² − mean_i ‖g_i‖²)/(n − 1),
  tr Σ ≈ (mean_i ‖g_i‖² − ‖ḡ‖²)/(1 − 1/n);
* cosine of ḡ to a reference gradient g_ref from a larger batch (Ilyas et al. 2020).

For on-policy rollouts the independent unit is the episode, not the time step
(:func:`step_and_episode_statistics` reports both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

# ----------------------------------------------------------------------------- per-sample


def per_sample_grads(
    module: nn.Module,
    loss: Callable[..., Tensor],
    *batch: Tensor,
    params: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """∇θ ℓ(θ; batch_i) for every row i, as {parameter name: (B, *shape)}.

    ``loss(forward, *sample)`` computes the loss of one sample (each tensor with a leading dim of
    1) calling ``forward(x)`` wherever it would call ``module(x)``. ``params`` (default: the
    module's own) are the parameter values θ at which the gradients are taken.
    """
    if params is None:
        params = {name: p.detach() for name, p in module.named_parameters()}

    def loss_of_params(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        def forward(*args, **kwargs):
            return functional_call(module, p, args, kwargs)

        return loss(forward, *(s.unsqueeze(0) for s in sample))

    return vmap(grad(loss_of_params), in_dims=(None, *([0] * len(batch))))(params, *batch)


def flatten(grads: dict[str, Tensor]) -> Tensor:
    """{name: (B, *shape)} → (B, P) in the dict's order."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def group_sums(grads: dict[str, Tensor], index: Tensor, n_groups: int) -> dict[str, Tensor]:
    """{name: (n_groups, *shape)}: row j is Σ_{i: index_i = j} g_i (e.g. an episode's sum)."""
    return {
        name: g.new_zeros(n_groups, *g.shape[1:]).index_add_(0, index, g)
        for name, g in grads.items()
    }


# ----------------------------------------------------------------------------- moments


@dataclass
class GradientMoments:
    """Sufficient statistics of n per-sample gradient estimates, per parameter tensor.

    ``sums[name]`` = Σ_i g_i[name] (the parameter's shape), ``sq_sums[name]`` = Σ_i ‖g_i[name]‖²
    (a float64 scalar). Everything in :func:`moment_statistics` follows from them.
    """

    n: int
    sums: dict[str, Tensor]
    sq_sums: dict[str, Tensor]
    row_sq: Tensor | None = None
    """‖g_i‖² of each row over all parameters (n,), when the path that made these knows it."""

    @classmethod
    def from_per_sample(cls, grads: dict[str, Tensor]) -> GradientMoments:
        """From {name: (n, *shape)}; row norms in float32, their squares summed in float64
        (no float64 copy of the (n, P) matrix)."""
        n = next(iter(grads.values())).shape[0]
        sums, sq_sums = {}, {}
        row_sq: Tensor | None = None
        for name, g in grads.items():
            g = g.detach()
            sums[name] = g.sum(0)
            rows = torch.linalg.vector_norm(g.reshape(n, -1), dim=1).double().pow(2)
            sq_sums[name] = rows.sum()
            row_sq = rows if row_sq is None else row_sq + rows
        return cls(n, sums, sq_sums, row_sq)

    def scaled(self, c: float) -> GradientMoments:
        """The moments of the estimates c·g_i."""
        return GradientMoments(
            self.n,
            {k: v * c for k, v in self.sums.items()},
            {k: v * (c * c) for k, v in self.sq_sums.items()},
            None if self.row_sq is None else self.row_sq * (c * c),
        )

    def mean(self) -> Tensor:
        """ḡ flattened in the dicts' order (float32)."""
        return torch.cat([s.flatten() for s in self.sums.values()]) / self.n

    def sq_sum(self) -> Tensor:
        """Σ_i ‖g_i‖² over all parameters (float64)."""
        return torch.stack(list(self.sq_sums.values())).sum()


def _statistics(
    n: int, sum_vec: Tensor, sq_sum: Tensor, batch_size: int | None = None
) -> dict[str, Tensor]:
    if n < 2:
        raise ValueError("gradient statistics need at least 2 per-sample estimates")
    b = batch_size or n
    mean = sum_vec.double() / n
    mean_sq = mean.pow(2).sum()
    sample_sq = sq_sum.double() / n
    trace_var = (sample_sq - mean_sq) * n / (n - 1)
    true_sq = (n * mean_sq - sample_sq) / (n - 1)
    # E‖ḡ_B‖² = ‖G‖² + tr Σ / B for the mean of B samples: ‖ḡ‖² itself when B = n, else the
    # unbiased ‖G‖² plus tr Σ̂ / B (so pure noise reads snr ≈ 1 whatever n and B are).
    signal = mean_sq if b == n else true_sq + trace_var / b
    return {
        "grad_norm": mean_sq.sqrt(),
        "variance": trace_var,
        "batch_variance": trace_var / b,
        "snr": signal / (trace_var / b),
        # ‖G‖² is estimated unbiasedly and can come out ≤ 0 when the mean is lost in the noise;
        # the noise scale is then reported as +inf, not as a meaningless negative number.
        "noise_scale": torch.where(true_sq > 0, trace_var / true_sq, torch.inf),
    }


def moment_statistics(
    moments: GradientMoments, reference: Tensor | None = None, batch_size: int | None = None
) -> dict[str, Tensor]:
    """``grad_norm`` ‖ḡ‖, ``variance`` tr Σ̂, ``batch_variance`` tr Σ̂/B, ``snr`` ‖ḡ‖²/(tr Σ̂/B),
    ``noise_scale`` and, given a reference gradient (flattened in the same order),
    ``cosine_reference`` = cos(ḡ, g_ref). Float64 scalars.

    B is ``batch_size``, the batch of the estimate the statistics describe (e.g. the one an
    update averages over), and defaults to the n samples measured: n sets the precision of
    tr Σ̂ and ḡ, B what ``batch_variance`` and ``snr`` are the variance and SNR of. When B ≠ n,
    the ‖ḡ‖² of ``snr`` is that of a B-sample mean, estimated as ‖Ĝ‖²_unbiased + tr Σ̂/B."""
    flat_sum = torch.cat([s.flatten() for s in moments.sums.values()])
    stats = _statistics(moments.n, flat_sum, moments.sq_sum(), batch_size)
    if reference is not None:
        stats["cosine_reference"] = cosine(flat_sum, reference)
    return stats


def layer_statistics(moments: GradientMoments, batch_size: int | None = None) -> dict[str, Tensor]:
    """``<parameter>/snr`` and ``<parameter>/variance`` for each parameter tensor (``snr`` for
    a batch of ``batch_size``, as in :func:`moment_statistics`)."""
    out: dict[str, Tensor] = {}
    for name, s in moments.sums.items():
        stats = _statistics(moments.n, s.flatten(), moments.sq_sums[name], batch_size)
        out[f"{name}/snr"] = stats["snr"]
        out[f"{name}/variance"] = stats["variance"]
    return out


def gradient_statistics(per_sample: Tensor, reference: Tensor | None = None) -> dict[str, Tensor]:
    """The statistics of :func:`moment_statistics` for a (B, P) matrix of per-sample estimates.

    tr Σ̂ = B/(B−1) (mean_i ‖g_i‖² − ‖ḡ‖²) equals :func:`rlgrad.estimators.summarize`'s
    ``trace_var``.
    """
    if per_sample.shape[0] < 2:
        raise ValueError("gradient statistics need at least 2 per-sample estimates")
    return moment_statistics(GradientMoments.from_per_sample({"": per_sample}), reference)


def per_layer_statistics(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """``<layer>/snr`` and ``<layer>/variance`` for each parameter tensor of {name: (B, …)}."""
    return layer_statistics(GradientMoments.from_per_sample(grads))


def tail_share(row_sq: Tensor, unlikeliness: Tensor, fraction: float = 0.05) -> Tensor:
    """Σ_{i∈T} ‖g_i‖² / Σ_i ‖g_i‖², T the ⌈fraction·n⌉ draws with the largest ``unlikeliness``
    (‖ε‖ for pathwise, −log π for the score function): how much of the estimate's second moment
    rare draws carry (``fraction`` means their share; near 1, a few rare draws carry it)."""
    row_sq, order = row_sq.reshape(-1).double(), unlikeliness.reshape(-1)
    k = max(1, math.ceil(fraction * row_sq.numel()))
    tail = torch.topk(order, k).indices
    return row_sq[tail].sum() / row_sq.sum().clamp_min(1e-300)


def mixing_weights_from(
    a: GradientMoments,
    b: GradientMoments,
    cross: dict[str, Tensor],
    group: Callable[[str], str] = lambda name: name,
) -> dict[str, Tensor]:
    """Per group of parameters (default: each parameter tensor), the weight w of ``a`` that
    minimises the variance of w g_a + (1 − w) g_b over the group:
    w* = (σ_b² − σ_ab)/(σ_a² + σ_b² − 2σ_ab) clipped to [0, 1], with σ² and σ_ab the traces of
    the per-sample covariances from paired moments (row i of both from the same state) and their
    cross sums Σ_i ⟨g_a,i, g_b,i⟩ (docs/estimators.md §6)."""
    n = a.n
    totals: dict[str, list[Tensor]] = {}
    for name in a.sums:
        mean_a, mean_b = a.sums[name].double() / n, b.sums[name].double() / n
        parts = (
            (a.sq_sums[name] - n * mean_a.pow(2).sum()) / (n - 1),
            (b.sq_sums[name] - n * mean_b.pow(2).sum()) / (n - 1),
            (cross[name] - n * (mean_a * mean_b).sum()) / (n - 1),
        )
        key = group(name)
        totals[key] = (
            [x + y for x, y in zip(totals[key], parts, strict=True)]
            if key in totals
            else list(parts)
        )
    out = {}
    for key, (var_a, var_b, cov) in totals.items():
        denom = var_a + var_b - 2 * cov
        w = torch.where(denom > 0, (var_b - cov) / denom.clamp_min(1e-300), 0.5)
        out[key] = w.clamp(0.0, 1.0)
    return out


def cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(1e-300)


def batch_gradient(module: nn.Module, loss: Tensor) -> Tensor:
    """∇θ of a batch loss, flattened in ``named_parameters`` order (for the reference)."""
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def prefixed(prefix: str, stats: dict[str, Tensor], suffix: str = "") -> dict[str, Tensor]:
    """{``prefix/name[suffix]``: value}."""
    return {f"{prefix}/{name}{suffix}": value for name, value in stats.items()}


# ----------------------------------------------------------------------------- fast path


class PairedMoments(NamedTuple):
    """E sets of per-row gradients of one forward, row i of every set from the same sample."""

    moments: list[GradientMoments]
    """Set e's moments, as :meth:`LinearTape.moments_from` gives them."""
    cross: dict[str, Tensor]
    """{parameter: (E, E)}: Σ_i ⟨g_a,i, g_b,i⟩ (float64), the sets' ``sq_sums`` on the diagonal."""
    deltas: dict[str, Tensor]
    """{layer: (B, E, out)}: the δ of every set (``deltas[layer][:, e]`` is set e's)."""


class LinearTape:
    """Per-sample gradient moments of a module built from ``nn.Linear`` layers, without
    per-sample gradients (see the module docstring for the maths).

    Use as a context manager around the forward pass, then call :meth:`moments` with the
    per-sample losses (B,) computed from that forward (several times, with ``retain_graph``,
    for several losses on one forward)::

        with LinearTape(actor) as tape:
            policy = actor(obs)
        m = tape.moments(row_losses(policy))

    Requirements, checked: every parameter of the module belongs to an ``nn.Linear``; each layer
    runs exactly once in the forward, on a 2-D input whose row i belongs to sample i alone (no
    batch norm, attention or other mixing of rows).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.layers: dict[str, nn.Linear] = {
            name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)
        }
        covered = {id(p) for m in self.layers.values() for p in m.parameters()}
        others = [n for n, p in module.named_parameters() if id(p) not in covered]
        if others:
            raise ValueError(f"LinearTape: parameters outside nn.Linear layers: {others}")
        self._parameter_order = [n for n, _ in module.named_parameters()]
        self._records: dict[str, tuple[Tensor, Tensor]] = {}
        self._input_sq: dict[str, Tensor] = {}  # ‖h_i‖² per layer, shared by every loss
        self._handles: list = []

    def __enter__(self) -> LinearTape:
        self._records.clear()
        self._input_sq.clear()
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in self._records:
                raise RuntimeError(f"LinearTape: layer {name!r} ran twice in one forward")
            if inputs[0].dim() != 2:
                raise RuntimeError(f"LinearTape: layer {name!r} got a {inputs[0].dim()}-D input")
            self._records[name] = (inputs[0].detach(), output)

        return record

    def _check_recorded(self) -> None:
        missing = [n for n in self.layers if n not in self._records]
        if missing:
            raise RuntimeError(f"LinearTape: layers {missing} did not run in the forward")

    def deltas(self, row_losses: Tensor, retain_graph: bool = False) -> dict[str, Tensor]:
        """δ_i = ∂ℓ_i/∂z_i at every layer's output z (B, out), from one backward of Σ_i ℓ_i.

        ``row_losses`` (B,); or (K, B) for K losses per row, giving δ of shape (K, B, out) from
        one batched backward (``is_grads_batched``): e.g. one score-function draw at a time."""
        self._check_recorded()
        names = list(self.layers)
        outputs = [self._records[n][1] for n in names]
        if row_losses.dim() == 1:
            grads = torch.autograd.grad(
                row_losses.sum(), outputs, retain_graph=retain_graph, allow_unused=True
            )
        else:
            k = row_losses.shape[0]
            cotangents = torch.eye(k, dtype=row_losses.dtype, device=row_losses.device)
            grads = torch.autograd.grad(
                row_losses.sum(1),
                outputs,
                grad_outputs=cotangents,
                retain_graph=retain_graph,
                allow_unused=True,
                is_grads_batched=True,
            )
        shape = row_losses.shape
        return {
            name: torch.zeros(*shape, out.shape[-1], dtype=out.dtype, device=out.device)
            if delta is None
            else delta
            for name, out, delta in zip(names, outputs, grads, strict=True)
        }

    def heads(self, names: Sequence[str], retain_graph: bool = False) -> HeadJacobians:
        """The per-row Jacobians of the head layers ``names`` (the module's output layers), for
        losses that depend on the module only through those layers' outputs
        (:class:`HeadJacobians`: as many backward passes as the heads have outputs)."""
        return HeadJacobians(self, names, retain_graph)

    def _input_norms_sq(self, name: str) -> Tensor:
        """‖h_i‖² of the layer's input rows (B,), float64, computed once per forward."""
        if name not in self._input_sq:
            h = self._records[name][0]
            self._input_sq[name] = torch.linalg.vector_norm(h, dim=1).double().pow(2)
        return self._input_sq[name]

    def moments(self, row_losses: Tensor, retain_graph: bool = False) -> GradientMoments:
        """Moments of g_i = ∇θ ``row_losses[i]``, in ``named_parameters`` order."""
        return self.moments_from(self.deltas(row_losses, retain_graph))

    def moments_from(self, deltas: dict[str, Tensor]) -> GradientMoments:
        """Moments of the per-row gradients that the layer-output gradients ``deltas`` (B, out)
        give: ∂W_i = δ_i h_iᵀ, ∂b_i = δ_i (any linear combination of :meth:`deltas` results of
        the same forward is again valid, e.g. a per-layer mix of two estimators)."""
        sums: dict[str, Tensor] = {}
        sq_sums: dict[str, Tensor] = {}
        row_sq: Tensor | None = None
        for name, delta in deltas.items():
            h = self._records[name][0]
            # Row norms in float32 (one row: a few hundred terms), their products in float64.
            delta_sq = torch.linalg.vector_norm(delta, dim=1).double().pow(2)  # (B,) ‖δ_i‖²
            weight_sq = delta_sq * self._input_norms_sq(name)
            prefix = f"{name}." if name else ""
            sums[f"{prefix}weight"] = delta.T @ h
            sq_sums[f"{prefix}weight"] = weight_sq.sum()
            rows = weight_sq
            if self.layers[name].bias is not None:
                sums[f"{prefix}bias"] = delta.sum(0)
                sq_sums[f"{prefix}bias"] = delta_sq.sum()
                rows = rows + delta_sq
            row_sq = rows if row_sq is None else row_sq + rows
        order = self._parameter_order
        n = next(iter(deltas.values())).shape[0]
        return GradientMoments(
            n, {k: sums[k] for k in order}, {k: sq_sums[k] for k in order}, row_sq
        )

    def paired_moments(self, deltas: dict[str, Tensor]) -> PairedMoments:
        """:meth:`moments_from` for E sets of per-row gradients at once, with their cross sums
        (:class:`PairedMoments`): ``deltas[layer]`` (B, E, out) holds set e's δ of row i at
        [i, e] (e.g. two estimators' on the same states). The squared norms and inner products
        come from each row's E × E matrix δ_i δ_iᵀ (float64): ⟨∂W_a,i, ∂W_b,i⟩ =
        (δ_a,i · δ_b,i) ‖h_i‖², ⟨∂b_a,i, ∂b_b,i⟩ = δ_a,i · δ_b,i."""
        n, sets = next(iter(deltas.values())).shape[:2]
        sums: list[dict[str, Tensor]] = [{} for _ in range(sets)]
        cross: dict[str, Tensor] = {}
        row_sq: Tensor | None = None
        for name, delta in deltas.items():
            h = self._records[name][0]
            input_sq = self._input_norms_sq(name)
            wide = delta.double()
            inner = torch.bmm(wide, wide.transpose(1, 2))  # (B, E, E): δ_a,i · δ_b,i
            prefix = f"{name}." if name else ""
            width = delta.shape[-1]
            weights = (delta.reshape(n, sets * width).T @ h).view(sets, width, -1)
            cross[f"{prefix}weight"] = input_sq @ inner.view(n, sets * sets)
            factor = input_sq
            for e, weight in enumerate(weights.unbind(0)):
                sums[e][f"{prefix}weight"] = weight
            if self.layers[name].bias is not None:
                cross[f"{prefix}bias"] = inner.sum(0).view(-1)
                for e, bias in enumerate(delta.sum(0).unbind(0)):
                    sums[e][f"{prefix}bias"] = bias
                factor = input_sq + 1.0
            rows = inner.diagonal(dim1=1, dim2=2) * factor.unsqueeze(1)  # (B, E)
            row_sq = rows if row_sq is None else row_sq + rows
        assert row_sq is not None
        order = self._parameter_order
        matrices = {k: cross[k].view(sets, sets) for k in order}
        squares = {k: m.diagonal().unbind(0) for k, m in matrices.items()}
        moments = [
            GradientMoments(
                n, {k: sums[e][k] for k in order}, {k: squares[k][e] for k in order}, row_sq[:, e]
            )
            for e in range(sets)
        ]
        return PairedMoments(moments, matrices, deltas)

    def row_norms_sq(self, deltas: dict[str, Tensor]) -> Tensor:
        """‖g‖² of every row's gradient over all parameters, for deltas (..., B, out)."""
        total: Tensor | None = None
        for name, delta in deltas.items():
            delta_sq = torch.linalg.vector_norm(delta, dim=-1).double().pow(2)
            rows = delta_sq * self._input_norms_sq(name)
            if self.layers[name].bias is not None:
                rows = rows + delta_sq
            total = rows if total is None else total + rows
        assert total is not None
        return total

    def cross_sums(self, a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        """Σ_i ⟨g_a,i, g_b,i⟩ per parameter for two sets of deltas of the same forward (paired
        rows): (δ_a,i · δ_b,i) ‖h_i‖² for a weight, δ_a,i · δ_b,i for a bias (float64)."""
        out: dict[str, Tensor] = {}
        for name in a:
            dot = (a[name].double() * b[name].double()).sum(-1)  # (B,)
            prefix = f"{name}." if name else ""
            out[f"{prefix}weight"] = (dot * self._input_norms_sq(name)).sum()
            if self.layers[name].bias is not None:
                out[f"{prefix}bias"] = dot.sum()
        return {k: out[k] for k in self._parameter_order}


class HeadJacobians:
    """Layer-output gradients of losses that reach a :class:`LinearTape`'s module only through
    the outputs z_H of its head layers (its output layers: SAC's actor has a mean and a log-σ
    head on a shared trunk), for as many losses per row as one likes.

    With M the heads' total width, row i's loss ℓ_i reaches layer L's output z^L_i only through
    z_H,i (rows do not mix), so its gradient there is

        δ^L_i = J^L_iᵀ c_i,   c_i = ∂ℓ_i/∂z_H,i ∈ R^M,   J^L_i = ∂z_H,i/∂z^L_i ∈ R^{M × out},

    and δ^H_i = c_i at a head. M backward passes of B rows from the heads (one per head
    component e_m; batched within a head wider than 1) give every J^L (:attr:`jacobians`,
    (B, M, out)). Cotangents c, which the caller takes from the cheap graph above the heads
    (e.g. on detached copies of :attr:`outputs`), then give the δ (:meth:`deltas`, for
    :meth:`LinearTape.moments_from` and :meth:`LinearTape.paired_moments`) and each loss's
    squared gradient norm as a quadratic form in the row's M × M matrix
    G_i = Σ_L (‖h^L_i‖² + 1[bias]) J^L_i J^L_iᵀ (:meth:`row_norms_sq`; a head's J is the
    identity on its components). K losses per row (e.g. one per score-function draw) so cost M
    backward passes through the module instead of K, and no (K, B, out) tensor. The condition
    is the caller's (the tape cannot check it): a loss that used an inner layer's output other
    than through the heads would get wrong δ.
    """

    def __init__(self, tape: LinearTape, heads: Sequence[str], retain_graph: bool = False):
        tape._check_recorded()
        unknown = [n for n in heads if n not in tape.layers]
        if unknown or not heads:
            raise ValueError(f"HeadJacobians: {unknown or 'no'} heads among {list(tape.layers)}")
        self.tape = tape
        self.heads = list(heads)
        self.outputs = [tape._records[n][1] for n in self.heads]
        """The heads' outputs z_H (B, width), with the module's graph."""
        self.widths = [z.shape[-1] for z in self.outputs]
        inner = [n for n in tape.layers if n not in self.heads]
        inner_outputs = [tape._records[n][1] for n in inner]
        per_head: list[list[Tensor]] = [[] for _ in inner]
        for i, z in enumerate(self.outputs):
            last = i == len(self.outputs) - 1
            if z.shape[-1] == 1:
                grads = torch.autograd.grad(
                    z,
                    inner_outputs,
                    torch.ones_like(z),
                    retain_graph=retain_graph or not last,
                    allow_unused=True,
                )
                grads = tuple(None if g is None else g.unsqueeze(1) for g in grads)
            else:  # one batched backward of the head's unit cotangents
                unit = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
                grads = torch.autograd.grad(
                    z,
                    inner_outputs,
                    unit.unsqueeze(1).expand(z.shape[-1], *z.shape).contiguous(),
                    retain_graph=retain_graph or not last,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                grads = tuple(None if g is None else g.transpose(0, 1) for g in grads)
            for rows, g, out in zip(per_head, grads, inner_outputs, strict=True):
                rows.append(
                    out.new_zeros(out.shape[0], z.shape[-1], out.shape[1]) if g is None else g
                )
        self.jacobians: dict[str, Tensor] = {
            name: torch.cat(rows, dim=1) for name, rows in zip(inner, per_head, strict=True)
        }
        """J^L for every layer L but the heads, (B, M, out)."""
        self._gram: Tensor | None = None

    def deltas(self, cotangent: Tensor) -> dict[str, Tensor]:
        """δ = J^Lᵀ c at every layer's output, (B, out) or (B, E, out), for head cotangents
        c = ∂ℓ/∂z_H (B, M) or (B, E, M) (E losses per row, each its own; or any linear
        combination of cotangents), in the tape's order."""
        per_head = dict(zip(self.heads, cotangent.split(self.widths, dim=-1), strict=True))
        several = cotangent.dim() == 3
        rows = cotangent if several else cotangent.unsqueeze(1)  # (B, E|1, M)
        out: dict[str, Tensor] = {}
        for name in self.tape.layers:
            if name in per_head:
                out[name] = per_head[name]
                continue
            delta = torch.bmm(rows, self.jacobians[name])  # (B, E|1, out)
            out[name] = delta if several else delta.squeeze(1)
        return out

    def row_norms_sq(self, cotangent: Tensor) -> Tensor:
        """‖g‖² over all parameters of each loss's gradient, (B,) or (B, E) float64, for head
        cotangents c (B, M) or (B, E, M): what ``tape.row_norms_sq(self.deltas(c))`` gives,
        as cᵀ G_i c per row (G_i of the class docstring, computed once)."""
        if self._gram is None:
            factors = {
                name: self.tape._input_norms_sq(name)
                + (1.0 if self.tape.layers[name].bias is not None else 0.0)
                for name in self.tape.layers
            }
            head_factors = [
                factors[name].unsqueeze(1).expand(-1, w)
                for name, w in zip(self.heads, self.widths, strict=True)
            ]
            gram = torch.diag_embed(torch.cat(head_factors, dim=1))  # (B, M, M)
            for name, jac in self.jacobians.items():
                jac = jac.double()
                gram.baddbmm_(jac * factors[name].view(-1, 1, 1), jac.transpose(1, 2))
            self._gram = gram
        c = cotangent.double()
        rows = c if c.dim() == 3 else c.unsqueeze(1)  # (B, E|1, M)
        norms = (torch.bmm(rows, self._gram) * rows).sum(-1)
        return norms if c.dim() == 3 else norms.squeeze(1)


# ----------------------------------------------------------------------------- on-policy units


def episode_index(terminated: Tensor, truncated: Tensor) -> tuple[Tensor, int]:
    """Episode number of every step of a (T, N) rollout, flat in (time, env) order, and the
    number of episodes. An episode is a maximal run of one env's steps inside the rollout that
    no episode end interrupts: the first and last of an env may be fragments of episodes that
    began before the rollout or go on after it."""
    done = (terminated | truncated).to(torch.int64)
    # Steps after an end of episode belong to the next one: exclusive cumulative sum over time.
    local = done.cumsum(0) - done  # (T, N)
    per_env = local[-1] + 1  # episodes touched by each env
    offset = per_env.cumsum(0) - per_env
    index = (local + offset).reshape(-1)
    return index, int(per_env.sum())


def step_and_episode_statistics(
    grads: dict[str, Tensor], episode: Tensor, n_episodes: int, per_layer: bool = False
) -> dict[str, Tensor]:
    """Statistics with the time step and with the episode as the sample unit.

    ``grads``: per-step gradients {name: (T, …)} of a loss that is their mean; ``episode``: the
    episode of each step (0 … n_episodes − 1). ``<stat>_per_step`` treats the T steps as
    independent; ``<stat>_per_episode`` uses one estimate per episode e,
    (E/T) Σ_{t∈e} g_t, whose mean over the E episodes is the same batch gradient (1/T) Σ_t g_t,
    so the two ``batch_variance`` values estimate the variance of that one gradient under the
    two assumptions (steps of an episode are correlated; episodes are independent). Episode
    statistics need E ≥ 2.
    """
    steps = GradientMoments.from_per_sample(grads)
    out = {f"{k}_per_step": v for k, v in moment_statistics(steps).items()}
    if per_layer:
        out.update({f"{k}_per_step": v for k, v in layer_statistics(steps).items()})
    if n_episodes >= 2:
        t = next(iter(grads.values())).shape[0]
        episodes = GradientMoments.from_per_sample(group_sums(grads, episode, n_episodes))
        episodes = episodes.scaled(n_episodes / t)
        out.update({f"{k}_per_episode": v for k, v in moment_statistics(episodes).items()})
        if per_layer:
            out.update({f"{k}_per_episode": v for k, v in layer_statistics(episodes).items()})
    out["episodes"] = torch.tensor(float(n_episodes))
    return out
