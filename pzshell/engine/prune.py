"""The layer-sequential pruning driver and the registry of pruning methods.

For each decoder block in order: (1) one pass over the calibration inputs with hooks collects the
statistics the method needs (``X`` column mean squares, the Hessian for SparseGPT), (2) every
linear gets scores -> mask -> [SparseGPT update], (3) a second pass through the *pruned* block
produces the next block's inputs. Methods that need no activation statistics (magnitude, or a
metric over ``W``/``G`` only) skip the passes entirely: their masks do not depend on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import PzError
from ..lang import Node, evaluate, load_metric
from ..lang.diagnostics import DegenerateMetric
from ..models.arch import decoder_blocks, find_linears
from ..progress import ProgressFn, emit
from .alloc_formula import AllocationFormulaError, parse_allocation
from .calib import capture_block_inputs, run_block, run_block_collecting
from .layer_ratios import (
    ALLOCATIONS,
    OWL_LAMBDA,
    OWL_M,
    formula_block_ratios,
    owl_block_ratios,
)
from .masks import SparsityError, make_mask, parse_sparsity_type
from .refine import (
    DSNOT_CYCLES,
    DSNOT_THRESHOLD,
    REFINEMENTS,
    SWAP_ROUNDS,
    SWAP_SHORTLIST,
    RefineError,
    RefineReport,
    check_swaps,
    dsnot,
    swaps,
)
from .refit import REFIT_ITERS, least_squares_refit
from .sparsegpt import column_curvature, hinv_factor, sparsegpt_prune
from .stats import InputStats, stat_key


@dataclass(frozen=True)
class Method:
    """A pruning method: a metric tree and its comparison group, or SparseGPT's own rule."""

    name: str
    formula: str | None  # None: SparseGPT's adaptive OBS mask
    group: str = "row"  # unstructured comparison group: "row" or "layer"
    reconstruct: bool = False  # apply SparseGPT's weight update
    doc: str = ""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("magnitude", "W", group="layer", doc="|w|, compared over the whole layer"),
        Method("wanda", "W*sqrt(X)", doc="|w| * ||x_j||, compared per output row"),
        Method("sparsegpt", None, reconstruct=True, doc="OBS mask + weight reconstruction"),
        Method("pruner-zero", "pruner_zero", doc="Pruner-Zero's published tree abs(W*W)*mms(G)"),
        Method("metric", None, doc="any formula or JSON tree of the metric language"),
    )
}
# Names used by the published Pruner-Zero / Wanda command lines.
METHOD_ALIASES = {
    "pruner_zero": "pruner-zero",
    "prunerzero": "pruner-zero",
    "mag": "magnitude",
    "ablate_mag_seq": "magnitude+reconstruct",
    "ablate_wanda_seq": "wanda+reconstruct",
    "ablate_prunerzero_seq": "pruner-zero+reconstruct",
    # the mask chosen anew inside SparseGPT's loop, from the updated weights
    "ablate_mag_iter": "magnitude+iterative",
    "ablate_wanda_iter": "wanda+iterative",
    "ablate_prunerzero_iter": "pruner-zero+iterative",
}


class PruneError(PzError):
    pass


@dataclass
class PruneConfig:
    method: str = "wanda"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    metric: Node | None = None  # for method "metric" (or to override a method's tree)
    reconstruct: bool = False
    # with reconstruct: the metric's mask chosen anew for each block of 128 columns (each group
    # of M) inside SparseGPT's loop, from the weights as updated so far (the `_iter` variants)
    iterative: bool = False
    use_variant: bool = False
    batch_size: int = 8
    allocation: str = "uniform"  # per-block ratios: uniform or owl (.layer_ratios)
    owl_m: float = OWL_M
    owl_lambda: float = OWL_LAMBDA
    refine: str = "none"  # training-free mask refinement: none, dsnot or swaps (.refine)
    dsnot_cycles: int = DSNOT_CYCLES
    dsnot_threshold: float = DSNOT_THRESHOLD
    swap_rounds: int = SWAP_ROUNDS  # least-squares swaps: N:M passes over the groups
    swap_shortlist: int = SWAP_SHORTLIST  # least-squares swaps, unstructured: 1-swap candidates
    # least-squares refit of the kept weights after the mask (and any update): CG iterations,
    # 0 = none (.refit)
    refit: int = 0

    def __post_init__(self):
        if not 0 <= self.sparsity_ratio < 1:
            raise PruneError(f"sparsity ratio must be in [0, 1), got {self.sparsity_ratio}")
        self.n, self.m = parse_sparsity_type(self.sparsity_type)
        name = METHOD_ALIASES.get(self.method, self.method)
        if name.endswith("+refit"):  # e.g. sparsegpt+refit, wanda+iterative+refit
            name = METHOD_ALIASES.get(name[: -len("+refit")], name[: -len("+refit")])
            self.refit = self.refit or REFIT_ITERS
        for suffix in ("+reconstruct", "+iterative"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                self.reconstruct = True
                self.iterative = self.iterative or suffix == "+iterative"
        if self.iterative:
            self.reconstruct = True
        if name not in METHODS:
            raise PruneError(
                f"unknown pruning method '{self.method}'; choose from {', '.join(METHODS)}"
            )
        self.method = name
        spec = METHODS[name]
        if name == "metric" and self.metric is None:
            raise PruneError("method 'metric' needs a formula or a metric tree")
        if self.metric is None and spec.formula is not None:
            self.metric = load_metric(spec.formula)
        if self.iterative and self.metric is None:
            raise PruneError(
                "the iterative variant chooses a metric's mask inside SparseGPT's loop: it needs "
                "a metric (magnitude, wanda, pruner-zero or a formula), not SparseGPT's own"
            )
        if self.iterative and self.use_variant:
            raise PruneError("Wanda's cumulative variant has no iterative form")
        if self.n and self.m and self.use_variant:
            raise PruneError("Wanda's cumulative variant applies to unstructured sparsity only")
        if self.allocation not in ALLOCATIONS:
            try:  # anything else is an allocation formula over per-block statistics
                parse_allocation(self.allocation)
            except AllocationFormulaError as e:
                raise PruneError(
                    f"--allocation is 'uniform', 'owl' or a formula over per-block statistics; {e}"
                ) from None
        if self.allocation != "uniform" and self.n:
            raise PruneError(
                f"allocation '{self.allocation}' gives each block its own sparsity, but "
                f"{self.n}:{self.m} fixes every block at {self.n / self.m:g}; use unstructured "
                f"sparsity, or the uniform allocation"
            )
        if self.refine not in REFINEMENTS:
            raise PruneError(
                f"unknown refinement '{self.refine}'; choose from {', '.join(REFINEMENTS)}"
            )
        if self.refine != "none" and self.uses_sparsegpt:
            raise PruneError(
                f"refinement '{self.refine}' swaps weights of a mask and leaves the weights as "
                f"they are, while SparseGPT's update changes them: use one or the other"
            )
        if not (isinstance(self.refit, int) and self.refit >= 0):
            raise PruneError(
                f"--refit takes a number of iterations >= 0 (0: no refit), got {self.refit!r}"
            )
        if not (isinstance(self.swap_rounds, int) and self.swap_rounds >= 1):
            raise PruneError(f"least-squares swaps need at least 1 round, got {self.swap_rounds!r}")
        if not (isinstance(self.swap_shortlist, int) and self.swap_shortlist >= 1):
            raise PruneError(
                f"--swap_shortlist takes the number of candidates on each side of a swap (>= 1), "
                f"got {self.swap_shortlist!r}"
            )
        if self.refine == "swaps":
            try:
                check_swaps(self.n, self.m)
            except RefineError as e:
                raise PruneError(str(e)) from None
        if self.dsnot_cycles < 1:
            raise PruneError(f"DSnoT needs at least 1 cycle, got {self.dsnot_cycles}")
        if not self.dsnot_threshold >= 0:
            raise PruneError(f"DSnoT's threshold must be >= 0, got {self.dsnot_threshold}")
        if not self.owl_m > 0:
            raise PruneError(f"OWL's outlier threshold M must be positive, got {self.owl_m}")
        if not 0 <= self.owl_lambda < 0.5:
            raise PruneError(f"OWL's lambda must be in [0, 0.5), got {self.owl_lambda}")

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def uses_sparsegpt(self) -> bool:
        return self.method == "sparsegpt" or self.reconstruct

    @property
    def needs_hessian(self) -> bool:
        """SparseGPT's update, a metric that reads ``S`` (from the inverse Hessian), the
        least-squares swaps or a least-squares refit."""
        return (
            self.uses_sparsegpt or "S" in self.terminals or self.refine == "swaps" or self.refit > 0
        )

    @property
    def terminals(self) -> frozenset[str]:
        return self.metric.terminals if self.metric is not None else frozenset()

    @property
    def label(self) -> str:
        """The method as a user names it: ``metric+iterative``, ``wanda+reconstruct``,
        ``sparsegpt`` (whose update is its own); ``+refit`` when the kept weights are refitted."""
        label = self.method
        if self.iterative:
            label += "+iterative"
        elif self.reconstruct and self.method != "sparsegpt":
            label += "+reconstruct"
        return label + ("+refit" if self.refit else "")

    @property
    def needs_calibration(self) -> bool:
        return (
            self.uses_sparsegpt
            or "X" in self.terminals
            or "S" in self.terminals
            or self.allocation != "uniform"
            or self.refine != "none"
            or self.refit > 0
        )

    @property
    def needs_gradients(self) -> bool:
        return "G" in self.terminals


@dataclass
class LayerResult:
    block: int
    linear: str
    shape: tuple[int, int]
    pruned: int
    sparsity: float
    swaps: int = 0  # weights swapped by the refinement
    refit_error: float | None = None  # output error after the refit / before it
    refine_error: float | None = None  # least-squares swaps: output error after / before


@dataclass
class PruneResult:
    layers: list[LayerResult] = field(default_factory=list)
    seconds: float = 0.0
    block_ratios: list[float] | None = None  # the requested sparsity of each block
    block_outliers: list[float] | None = None  # OWL's outlier ratio (%) of each block
    block_angular: list[float] | None = None  # a formula allocation's A of each block
    allocation_seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return sum(r.pruned for r in self.layers) / max(total, 1)


def _expected_fraction(cfg: PruneConfig, shape: tuple[int, int], ratio: float) -> float | None:
    if cfg.n:
        return cfg.n / cfg.m
    if cfg.use_variant:
        return None  # bisection reaches the ratio only approximately
    if cfg.method == "sparsegpt" or cfg.iterative:  # adaptive mask per block of 128 columns
        return None
    if cfg.spec.group == "layer":
        return int(shape[0] * shape[1] * ratio) / (shape[0] * shape[1])
    return int(shape[1] * ratio) / shape[1]


def _carried_ratio(
    cfg: PruneConfig, shape: tuple[int, int], ratio: float, carry: float
) -> tuple[float, float]:
    """A non-uniform allocation's ratio for one linear, rounded so that the model-wide total is
    the requested one: each layer prunes a whole number of weights per comparison group (a row,
    or the whole matrix), and what its rounding gives or takes is carried to the next layer.
    Returns ``(ratio, carry)``; ``ratio`` selects exactly the chosen count (``int(n * ratio)``)."""
    rows, cols = shape
    group, per = (1, rows * cols) if cfg.spec.group == "layer" else (rows, cols)
    want = ratio * rows * cols + carry
    k = min(max(round(want / group), 0), per - 1)
    return (k + 0.5) / per, want - k * group


def _prune_iterative(
    cfg: PruneConfig,
    weight: torch.Tensor,
    *,
    X: torch.Tensor | None,
    G: torch.Tensor | None,
    H: torch.Tensor | None,
    where: str,
    ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """SparseGPT's update with the metric's mask chosen inside its loop: for each block of 128
    columns (each group of M), the metric of those columns' *current* weights (and their ``G``,
    ``X`` and ``S``) selects what is pruned, over the block as a whole for unstructured sparsity,
    as the published ``_iter`` variants do."""
    if H is None:
        raise PruneError(f"SparseGPT update needs the Hessian of {where}")
    factor = hinv_factor(H, 0.01)
    S = column_curvature(factor) if "S" in cfg.terminals else None

    def scores(w: torch.Tensor, a: int, b: int) -> torch.Tensor:
        try:
            return evaluate(
                cfg.metric,
                w,
                G=G[:, a:b] if G is not None else None,
                X=X[:, a:b] if X is not None else None,
                S=S[:, a:b] if S is not None else None,
            )
        except DegenerateMetric as e:
            raise DegenerateMetric(f"{e.message} (at {where}, columns {a}:{b})") from None

    new, mask = sparsegpt_prune(
        weight, H, ratio, cfg.n, cfg.m, score_fn=scores, percdamp=0.01, factor=factor
    )
    return new.to(weight.dtype), mask, None


def prune_linear(
    cfg: PruneConfig,
    weight: torch.Tensor,
    *,
    X: torch.Tensor | None = None,
    G: torch.Tensor | None = None,
    H: torch.Tensor | None = None,
    where: str = "",
    ratio: float | None = None,
    inputs: InputStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, RefineReport | None]:
    """Pure: the pruned weight (same dtype), its mask and the refinement's report (or None) for
    one linear layer, at ``ratio`` (default: the configuration's sparsity ratio). ``inputs``:
    the layer's input statistics, which the refinement needs."""
    ratio = cfg.sparsity_ratio if ratio is None else ratio
    mask = report = None
    if cfg.iterative:
        return _prune_iterative(cfg, weight, X=X, G=G, H=H, where=where, ratio=ratio)
    factor = None
    if cfg.metric is not None:
        S = None
        if "S" in cfg.terminals:
            if H is None:
                raise PruneError(f"the metric's S needs the Hessian of {where}")
            factor = hinv_factor(H, 0.01)
            S = column_curvature(factor)
        try:
            scores = evaluate(cfg.metric, weight, G=G, X=X, S=S)
        except DegenerateMetric as e:
            raise DegenerateMetric(f"{e.message} (at {where})") from None
        mask = make_mask(scores, ratio, cfg.n, cfg.m, group=cfg.spec.group, variant=cfg.use_variant)
        if cfg.refine == "dsnot":
            if inputs is None:
                raise PruneError(f"DSnoT needs the input statistics of {where}")
            mask, report = dsnot(
                weight,
                mask,
                scores,
                inputs.window_sums,
                inputs.variance,
                n=cfg.n,
                m=cfg.m,
                cycles=cfg.dsnot_cycles,
                threshold=cfg.dsnot_threshold,
            )
        elif cfg.refine == "swaps":
            if H is None:
                raise PruneError(f"least-squares swaps need the Hessian of {where}")
            mask, report = swaps(
                weight,
                mask,
                H,
                n=cfg.n,
                m=cfg.m,
                rounds=cfg.swap_rounds,
                shortlist=cfg.swap_shortlist,
            )
    if cfg.uses_sparsegpt:
        if H is None:
            raise PruneError(f"SparseGPT update needs the Hessian of {where}")
        new, mask = sparsegpt_prune(
            weight, H, ratio, cfg.n, cfg.m, mask=mask, percdamp=0.01, factor=factor
        )
        return new.to(weight.dtype), mask, None
    new = weight.clone()
    new[mask] = 0
    return new, mask, report


@torch.no_grad()
def prune_model(
    model: torch.nn.Module,
    cfg: PruneConfig,
    calib_ids: torch.Tensor | None = None,
    gradients: dict[str, torch.Tensor] | None = None,
    progress: ProgressFn | None = None,
    record_x: dict[str, torch.Tensor] | None = None,
    block_ratios: list[float] | None = None,
) -> PruneResult:
    """Prune ``model`` in place; returns per-layer sparsity and time. ``record_x``, a dict,
    receives every linear's ``X`` as this prune saw it (block inputs from the already pruned
    blocks before it), keyed like the statistics (:func:`stat_key`). ``block_ratios``: each
    block's sparsity, already computed for ``cfg.allocation`` by the caller (an allocation
    search holds them), so that its dense pass is not run again."""
    t0 = time.perf_counter()
    blocks = decoder_blocks(model)
    if cfg.needs_gradients and gradients is None:
        raise PruneError(
            f"metric {cfg.metric} uses G: it needs the gradient statistic (a gradient file, or "
            f"calibration data to compute it from)"
        )
    chunks = None
    result = PruneResult()
    ratios = [cfg.sparsity_ratio] * len(blocks)
    if cfg.needs_calibration and calib_ids is None:
        raise PruneError(f"method '{cfg.method}' needs calibration data")
    if block_ratios is not None:
        if cfg.allocation == "uniform" or len(block_ratios) != len(blocks):
            raise PruneError(
                f"block_ratios: {len(block_ratios)} ratios for a {cfg.allocation} allocation of "
                f"{len(blocks)} blocks; give one per block, with a non-uniform allocation"
            )
        if not all(0 <= r < 1 for r in block_ratios):
            raise PruneError(f"block_ratios must be in [0, 1), got {list(block_ratios)}")
        ratios = list(block_ratios)
    elif cfg.allocation == "owl":
        t = time.perf_counter()
        ratios, result.block_outliers = owl_block_ratios(
            model,
            calib_ids,
            cfg.sparsity_ratio,
            m=cfg.owl_m,
            lam=cfg.owl_lambda,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        result.allocation_seconds = time.perf_counter() - t
    elif cfg.allocation != "uniform":
        t = time.perf_counter()
        ratios, terms = formula_block_ratios(
            cfg.allocation,
            model,
            calib_ids,
            cfg.sparsity_ratio,
            m=cfg.owl_m,
            lam=cfg.owl_lambda,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        result.block_outliers = terms["D"]
        result.block_angular = terms.get("A")
        result.allocation_seconds = time.perf_counter() - t
    if cfg.allocation != "uniform":
        result.block_ratios = ratios
    carry = 0.0  # weights owed to the model-wide total by the rounding of earlier layers
    if cfg.needs_calibration:
        emit(progress, "calibrate", 0, len(blocks), "capturing block inputs")
        chunks = capture_block_inputs(model, calib_ids, cfg.batch_size)
        emit(progress, "calibrate", len(blocks), len(blocks), f"{calib_ids.shape[0]} windows")
    for i, block in enumerate(blocks):
        linears = find_linears(block)
        stats = {}
        if chunks is not None:
            stats = run_block_collecting(block, linears, chunks, want_h=cfg.needs_hessian)
        for name, lin in linears.items():
            where = f"block {i} {name}"
            G = None
            if cfg.needs_gradients:
                key = stat_key(name, i)
                if key not in gradients:
                    raise PruneError(f"gradient file has no entry '{key}' for {where}")
                G = gradients[key]
                if tuple(G.shape) != tuple(lin.weight.shape):
                    raise PruneError(
                        f"gradient '{key}' has shape {tuple(G.shape)} but the model's weight "
                        f"has shape {tuple(lin.weight.shape)}: the file was made for another model"
                    )
            st = stats.get(name)
            if record_x is not None and st is not None:
                record_x[stat_key(name, i)] = st.X.detach().cpu().clone()
            ratio = ratios[i]
            if cfg.allocation != "uniform" and cfg.metric is not None:  # SparseGPT's own
                # mask is chosen per 128 columns from the whole ratio: no rows to round
                ratio, carry = _carried_ratio(cfg, tuple(lin.weight.shape), ratio, carry)
            H = st.hessian() if st is not None and cfg.needs_hessian else None
            new, mask, report = prune_linear(
                cfg,
                lin.weight.data,
                X=st.X if st is not None and "X" in cfg.terminals else None,
                G=G,
                H=H,
                where=where,
                ratio=ratio,
                inputs=st,
            )
            refit_error = None
            if cfg.refit:
                if H is None:
                    raise PruneError(f"the least-squares refit needs the Hessian of {where}")
                new, fit = least_squares_refit(lin.weight.data, new, mask, H, iters=cfg.refit)
                new, refit_error = new.to(lin.weight.dtype), fit.ratio
            lin.weight.data.copy_(new)
            pruned = int(mask.sum())
            shape = tuple(lin.weight.shape)
            frac = pruned / (shape[0] * shape[1])
            want = _expected_fraction(cfg, shape, ratio)
            if want is not None and abs(frac - want) > 1e-6:
                raise SparsityError(
                    f"{where}: pruned {frac:.6f} of the weights but {want:.6f} was requested "
                    f"(internal error, please report)"
                )
            swapped = report.swaps if report is not None else 0
            refine_error = report.ratio if report is not None and cfg.refine == "swaps" else None
            result.layers.append(
                LayerResult(i, name, shape, pruned, frac, swapped, refit_error, refine_error)
            )
        del stats
        if chunks is not None and i + 1 < len(blocks):
            chunks = run_block(block, chunks)
        emit(progress, "prune", i + 1, len(blocks), f"block {i}")
    result.seconds = time.perf_counter() - t0
    return result
