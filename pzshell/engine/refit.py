"""Least-squares refit: the best kept weights for a mask that is already chosen.

Once a layer's mask is fixed, the weights that reproduce its unpruned output best on the
calibration inputs solve, row by row, a least-squares problem. With ``D = W - W0`` (``W0``: the
weight before pruning, ``H = 2/n sum x x^T`` of the layer's inputs, damped by 1% of its mean
diagonal as SparseGPT damps it), the layer's output error is

    f(D) = sum over rows of  d H d^T,

``D`` is fixed (``-w0``) on the pruned weights and free on the kept ones. SparseGPT's loop
(:mod:`.sparsegpt`) lowers ``f`` greedily, column by column: a column it has passed is never
changed again, so its result is not the minimum for its own mask; a metric's mask with no
update is further from it. :func:`least_squares_refit` runs preconditioned conjugate gradients
(Jacobi preconditioner ``diag(H)``) on every row at once from the weights it is given: each
iteration is one ``rows x in x in`` product, ``f`` never grows from one iteration to the next,
and the mask (and so the sparsity, N:M included) is unchanged. Inputs that never fire (a zero
diagonal in ``H``) do not move the output; their weights are left as given. Pure functions on
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparsegpt import damped_hessian

REFIT_ITERS = 30  # the default when --refit is given without a count (see bench/refit.py)
PERCDAMP = 0.01


@dataclass
class RefitReport:
    before: float  # the layer's damped output error f(D) as given
    after: float  # ... after the refit

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else 1.0


def output_error(D: torch.Tensor, H: torch.Tensor) -> float:
    """``tr(D H D^T)``: the summed squared outputs ``|D x|^2`` of rows ``D`` over the inputs whose
    second-moment matrix is ``H``; for a weight change ``D``, the layer's output error (the
    search's proxy uses it too, and for the dense weights' output energy)."""
    return float(((D @ H) * D).sum())


def output_error_rows(D: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """:func:`output_error` row by row, in float64: ``d_i H d_iᵀ`` for every row ``d_i`` of ``D``
    (for the pruned part of a weight, the least-squares swaps' ``E_i``)."""
    D = D.double()
    return ((D @ H.double()) * D).sum(dim=1)


def least_squares_refit(
    W0: torch.Tensor,
    W: torch.Tensor,
    mask: torch.Tensor,
    H: torch.Tensor,
    *,
    iters: int = REFIT_ITERS,
    percdamp: float = PERCDAMP,
) -> tuple[torch.Tensor, RefitReport]:
    """Return ``(new_weight, report)`` in fp32: ``W`` (pruned with ``mask``, True = pruned;
    ``W0`` the weight before pruning) with its kept weights moved by ``iters`` iterations of
    preconditioned conjugate gradients towards the least-squares optimum of the layer's output
    error. ``new_weight`` is zero wherever ``mask`` is set."""
    if iters < 1:
        raise ValueError(f"a refit needs at least 1 iteration, got {iters}")
    W0 = W0.detach().float()
    pruned = mask.to(torch.bool)
    Hd, dead = damped_hessian(H, percdamp)
    free = (~pruned).float()
    free[:, dead] = 0
    given = W.detach().float() - W0
    given[pruned] = -W0[pruned]  # the pruned weights are exactly zero
    D = given.clone()
    before = output_error(D, Hd)
    R = -(D @ Hd) * free  # minus the gradient, on the free weights
    precond = (1.0 / torch.diag(Hd)).reshape(1, -1)
    Z = R * precond
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    tiny = torch.finfo(torch.float32).tiny
    for _ in range(iters):
        Q = (P @ Hd) * free
        pq = (P * Q).sum(1, keepdim=True)
        alpha = torch.where(pq > tiny, rz / pq.clamp_min(tiny), torch.zeros_like(pq))
        D += alpha * P
        R -= alpha * Q
        Z = R * precond
        rz_next = (R * Z).sum(1, keepdim=True)
        beta = torch.where(rz > tiny, rz_next / rz.clamp_min(tiny), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_next
    after = output_error(D, Hd)
    if not after <= before:  # rounding at convergence: keep what was given
        D, after = given, before
    new = W0 + D
    new[pruned] = 0
    return new, RefitReport(before, after)
