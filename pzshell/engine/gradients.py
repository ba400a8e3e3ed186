"""The gradient statistic ``G`` (SPEC): per calibration sequence one backward pass, accumulate
``(100 * dL/dw)^2`` in fp32, take the square root; stored as fp16 in a ``torch.save`` dict keyed
``"{module}_layer_{i}"`` exactly as the Pruner-Zero code writes and reads it.

Memory-frugal: only the block Linear weights require grad, everything else is frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PzError
from ..models.arch import block_linears
from .events import ProgressFn, emit
from .prune import grad_key


class GradientError(PzError):
    pass


def compute_gradients(
    model: torch.nn.Module,
    calib_ids: torch.Tensor,
    *,
    scale: float = 100.0,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    layers = block_linears(model)
    params = {
        grad_key(n, i): lin.weight for i, lin_map in enumerate(layers) for n, lin in lin_map.items()
    }
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in params.values():
        w.requires_grad_(True)
    acc = {k: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for k, w in params.items()}
    dev = next(model.parameters()).device
    try:
        for s in range(calib_ids.shape[0]):
            ids = calib_ids[s : s + 1].to(dev)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
            for k, w in params.items():
                if w.grad is not None:
                    g = w.grad.float() * scale
                    acc[k].addcmul_(g, g)
                    w.grad = None
            emit(progress, "grad", s + 1, calib_ids.shape[0], f"sample {s + 1}")
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
    return {k: torch.sqrt(v).to(torch.float16).cpu() for k, v in acc.items()}


def save_gradients(grads: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save(grads, f)


def load_gradients(
    path: str | Path, model: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Load a gradient file (ours or the original code's); check it against ``model``."""
    path = Path(path)
    if not path.exists():
        raise GradientError(f"gradient file not found: {path}")
    try:
        grads = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GradientError(f"{path}: not a gradient file saved with torch.save ({e})") from None
    if not isinstance(grads, dict) or not all(isinstance(v, torch.Tensor) for v in grads.values()):
        raise GradientError(f"{path}: expected a dict of tensors keyed '<module>_layer_<i>'")
    if model is not None:
        for i, lin_map in enumerate(block_linears(model)):
            for n, lin in lin_map.items():
                k = grad_key(n, i)
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
