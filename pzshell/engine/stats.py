"""The statistics core: every statistic of the calibration windows that the engine uses.

* **activations**: for each linear, ``X`` = the mean over calibration tokens of ``x_j^2`` per input
  column (shape ``(1, in)``), and for SparseGPT the second moment ``H = 2/n sum x x^T``
  (:class:`InputStats`, filled by a :class:`StatsCollector` of forward pre-hooks);
* **gradients**: one forward and backward pass per calibration window ``s`` (per-window
  gradients ``g_s = dL_s/dw`` of the block linear weights; :func:`gradient_stats`), giving

  - the gradient statistic ``G = sqrt(sum_s (100 g_s)^2)`` of the metric language
    (:func:`compute_gradients`), read and written in the published Pruner-Zero file format
    (:func:`save_gradients`, :func:`load_gradients`);
  - the first and second moments ``mean_s g_s`` and ``mean_s g_s^2`` of Taylor importance
    (structured pruning).

Users: the layer-sequential prune driver (a block's statistics, block by block, through
:mod:`.calib`), structured pruning (whole-model activations, gradients and block distances) and
the search's fitness (whole-model ``X`` and ``G`` once per search).

**Key scheme.** One for every statistic: ``"{linear}_layer_{block}"`` (:func:`stat_key`, e.g.
``"self_attn.q_proj_layer_0"``), the key of the published gradient file, so that a dict of
``G`` *is* the file's content. Inside one block (the prune driver's per-block pass) statistics are
keyed by the linear's name alone, the block being implied.

**Precision policy.** Inputs and gradients are cast to fp32 and every sum is accumulated in fp32
on the model's device, whatever the model's dtype: fp16 sums of squares over thousands of tokens
lose digits and overflow. The one rounding is ``G``'s published form, fp16 on the CPU, as the
Pruner-Zero code writes it: the unstructured prune path always uses that fp16 ``G`` (loaded from a
file or computed in process alike), so a file made by the original code, a file made here and a
``G`` computed on the fly prune identically. Structured (Taylor) importance uses unrounded fp32
moments. Squares are accumulated at the scale their user reads them at: ``(100 g)^2`` for ``G``,
as the original code does, ``g^2`` for the Taylor moments; the two differ only in rounding, and
keeping each as it always was keeps every result bit-identical to the earlier code.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..errors import PzError
from ..models.arch import block_linears
from ..models.load import hash_tensor_sample
from ..progress import ProgressFn, emit

G_SCALE = 100.0  # G = sqrt(sum_s (G_SCALE * dL_s/dw)^2), as in the Pruner-Zero code


def stat_key(name: str, block: int) -> str:
    """The key of a linear's statistics (the Pruner-Zero gradient file's key)."""
    return f"{name}_layer_{block}"


def model_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every block linear of ``model``, keyed by :func:`stat_key`, block by block."""
    return {
        stat_key(n, i): lin
        for i, lin_map in enumerate(block_linears(model))
        for n, lin in lin_map.items()
    }


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------


class InputStats:
    """Statistics of one linear layer's inputs, in fp32.

    ``X``: mean over calibration tokens of ``x_j^2`` (shape (1, in)); ``H``: ``2/n sum x x^T``;
    the column sums give DSnoT its ``mu`` and variances.
    Linears that receive the very same input tensor (q/k/v, gate/up) share one object, so the
    Hessian of a shared input is accumulated once.
    """

    def __init__(self, in_features: int, want_h: bool, device: torch.device):
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.H = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
            if want_h
            else None
        )
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0
        self.windows = 0

    def add(self, x: torch.Tensor) -> None:
        self.windows += x.shape[0] if x.dim() == 3 else 1
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum += x.sum(dim=0)
        self.sq_sum += (x * x).sum(dim=0)
        if self.H is not None:
            self.H.addmm_(x.T, x)
        self.tokens += x.shape[0]

    @property
    def X(self) -> torch.Tensor:
        return (self.sq_sum / max(self.tokens, 1)).reshape(1, -1)

    @property
    def window_sums(self) -> torch.Tensor:
        """Each input column summed over a window's tokens, averaged over windows (DSnoT's
        ``mu``), shape (in,)."""
        return self.sum / max(self.windows, 1)

    @property
    def variance(self) -> torch.Tensor:
        """The variance over tokens of each input column, shape (in,)."""
        mean = self.sum / max(self.tokens, 1)
        return (self.X.reshape(-1) - mean * mean).clamp_min(0)

    def hessian(self) -> torch.Tensor:
        assert self.H is not None
        return self.H * (2.0 / max(self.tokens, 1))


class StatsComplete(Exception):
    """Raised by :class:`StatsCollector` once every statistic of a chunk is in."""


class StatsCollector:
    """Context manager: pre-hooks on a block's (or model's) linears that fill one
    :class:`InputStats` per linear. The caller runs each chunk (a batch of windows) under
    :meth:`chunk`.

    A linear whose input is the very tensor the previous hooked linear read (q/k/v, gate/up)
    shares that linear's :class:`InputStats`: the statistic is accumulated once.

    With ``stop_early``, once the first chunk has shown the order in which the linears run, every
    later chunk is cut short at the *last* linear's input (:exc:`StatsComplete`, raised from its
    pre-hook): that linear's product and anything after it (the rest of the block, or the LM head
    of a whole model) feed no statistic. On a LLaMA block this skips ``down_proj``, a quarter of
    the statistics pass's matrix products.
    """

    def __init__(self, linears: dict[str, nn.Linear], want_h: bool, stop_early: bool = False):
        self.linears = linears
        self.want_h = want_h
        self.stop_early = stop_early
        self.stats: dict[str, InputStats] = {}
        self.order: list[str] = []  # the linears in the order they ran in the first chunk
        self.last: str | None = None  # known after the first chunk
        # the previous hooked input and its statistics; holding the tensor keeps its memory
        # from being reused, so an equal pointer, shape and stride mean the same input
        self._prev: tuple[torch.Tensor, InputStats] | None = None
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            if self.last is None and name not in self.order:
                self.order.append(name)
            prev = self._prev
            if (
                prev is not None
                and prev[0].data_ptr() == x.data_ptr()
                and prev[0].shape == x.shape
                and prev[0].stride() == x.stride()
                and prev[0].dtype == x.dtype
            ):
                self.stats.setdefault(name, prev[1])
            else:
                st = self.stats.get(name)
                if st is None:
                    st = InputStats(x.shape[-1], self.want_h, x.device)
                    self.stats[name] = st
                st.add(x.detach())
                self._prev = (x, st)
            if self.stop_early and name == self.last:
                raise StatsComplete

        return hook

    @contextlib.contextmanager
    def chunk(self):
        """Run one chunk's forward inside this: ends it (early, when possible) and tidies up."""
        with contextlib.suppress(StatsComplete):
            yield
        self.end_chunk()

    def end_chunk(self) -> None:
        self._prev = None
        if self.last is None and self.order and len(self.order) == len(self.linears):
            self.last = self.order[-1]

    def __enter__(self):
        for name, lin in self.linears.items():
            self._handles.append(lin.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._prev = None
        return False


@torch.no_grad()
def forward_windows(
    model: nn.Module,
    calib_ids: torch.Tensor,
    collector: StatsCollector,
    *,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    stage: str = "stats",
) -> None:
    """Run the windows through ``model`` in batches without autograd, one collector chunk each
    (the collector's hooks must be in place)."""
    dev = model_device(model)
    n = calib_ids.shape[0]
    for start in range(0, n, batch_size):
        with collector.chunk():
            model(input_ids=calib_ids[start : start + batch_size].to(dev), use_cache=False)
        done = min(start + batch_size, n)
        emit(progress, stage, done, n, f"window {done}")


def activation_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    want_h: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, InputStats]:
    """Input statistics of every block linear of the (dense) model in one pass, keyed by
    :func:`stat_key`; from the second batch on the pass ends at the last linear's input."""
    with StatsCollector(model_linears(model), want_h, stop_early=True) as col:
        forward_windows(model, calib_ids, col, batch_size=batch_size, progress=progress)
    return col.stats


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


@dataclass
class GradientStats:
    """Sums over calibration windows of per-window gradients of the block linear weights, fp32,
    on the model's device: ``sq_sum`` of ``(scale * g_s)^2``, ``sum`` of ``g_s`` (empty unless
    first moments were asked for)."""

    windows: int
    scale: float
    sq_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    sum: dict[str, torch.Tensor] = field(default_factory=dict)


def gradient_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    linears: dict[str, nn.Linear] | None = None,
    *,
    scale: float = G_SCALE,
    first_moment: bool = False,
    collector: StatsCollector | None = None,
    progress: ProgressFn | None = None,
    stage: str = "grad",
    describe: Callable[[int], str] = lambda s: f"sample {s}",
) -> GradientStats:
    """One forward and backward pass per calibration window (the loss of that window alone),
    accumulating per-window gradient statistics of ``linears`` (default: every block linear,
    keyed by :func:`stat_key`).

    Memory-frugal: only those linears' weights require grad, everything else is frozen (and
    restored afterwards). A ``collector`` with its hooks in place gathers activation statistics
    from the same forward passes, one chunk per window.
    """
    if collector is not None and collector.stop_early:
        raise ValueError("a collector that stops early would cut the forward before the loss")
    linears = model_linears(model) if linears is None else linears
    n = calib_ids.shape[0]
    params = {k: lin.weight for k, lin in linears.items()}
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in params.values():
        w.requires_grad_(True)
    out = GradientStats(n, scale)
    out.sq_sum = {
        k: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for k, w in params.items()
    }
    if first_moment:
        out.sum = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in params.items()}
    dev = model_device(model)
    chunk = collector.chunk if collector is not None else contextlib.nullcontext
    try:
        for s in range(n):
            ids = calib_ids[s : s + 1].to(dev)
            with chunk(), torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
            for k, w in params.items():
                if w.grad is not None:
                    g = w.grad.float()
                    if scale != 1.0:
                        g = g * scale
                    if first_moment:
                        out.sum[k] += g
                    out.sq_sum[k].addcmul_(g, g)
                    w.grad = None
            emit(progress, stage, s + 1, n, describe(s + 1))
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
    return out


def compute_gradients(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    scale: float = G_SCALE,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """``G = sqrt(sum_s (scale * dL_s/dw)^2)`` of every block linear, in its published form:
    fp16 on the CPU, keyed ``"{linear}_layer_{block}"`` (what :func:`save_gradients` writes)."""
    gs = gradient_stats(model, calib_ids, scale=scale, progress=progress)
    return {k: torch.sqrt(v).to(torch.float16).cpu() for k, v in gs.sq_sum.items()}


# ------------------------------------------------------------------------------------------------
# The published gradient file
# ------------------------------------------------------------------------------------------------


class GradientError(PzError):
    pass


def save_gradients(grads: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``G`` as the Pruner-Zero code does: ``torch.save`` of the dict of fp16 tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing_file(path) as tmp:
        torch.save(grads, tmp)


def _why_unreadable(path: Path, e: Exception) -> str:
    """A short reason why ``torch.load`` failed (its own text runs to a screenful)."""
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    if head[:2] != b"PK" and head[:1] != b"\x80":
        return f"{size:,} bytes that are not a torch.save archive"
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        return "it holds Python objects other than tensors, which are not loaded for safety"
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0].split(". ")[0]  # PyTorch's text goes on to ask for a bug report
    return f"a damaged or truncated torch.save archive: {first[:160]}"


def gradient_fingerprint(grads: dict[str, torch.Tensor]) -> str:
    """A short hash of a gradient statistic (every entry's name, shape and 4,096 values spread
    over it, as the model fingerprint samples the weights): two prunes with the same one used
    the same ``G``. Rules with ``tanh(G)`` or ``G + W`` depend on ``G``'s scale, which grows
    with the number of windows it sums over, so the windows matter, not only the file format."""
    h = hashlib.sha256()
    for k in sorted(grads):
        hash_tensor_sample(h, k, grads[k])
    return h.hexdigest()[:16]


def load_gradients(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Load a gradient file (ours or the original code's); check it against ``model``."""
    path = Path(path)
    if not path.exists():
        raise GradientError(f"gradient file not found: {path}")
    try:
        grads = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GradientError(f"{path}: not a gradient file ({_why_unreadable(path, e)})") from None
    if not isinstance(grads, dict) or not all(isinstance(v, torch.Tensor) for v in grads.values()):
        raise GradientError(f"{path}: expected a dict of tensors keyed '<module>_layer_<i>'")
    if model is not None:
        for k, lin in model_linears(model).items():
            if k not in grads:
                raise GradientError(
                    f"{path}: no entry '{k}'; the file was made for another model "
                    f"(it has {len(grads)} entries, e.g. {next(iter(grads), 'none')!r})"
                )
            if tuple(grads[k].shape) != tuple(lin.weight.shape):
                raise GradientError(
                    f"{path}: '{k}' has shape {tuple(grads[k].shape)} but the model's weight "
                    f"has shape {tuple(lin.weight.shape)}: the file was made for another model"
                )
    return grads


__all__ = [
    "G_SCALE",
    "GradientError",
    "GradientStats",
    "InputStats",
    "StatsCollector",
    "StatsComplete",
    "activation_stats",
    "compute_gradients",
    "forward_windows",
    "gradient_fingerprint",
    "gradient_stats",
    "load_gradients",
    "model_linears",
    "save_gradients",
    "stat_key",
]
