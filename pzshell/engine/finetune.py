"""Recovery fine-tuning after pruning: LoRA (through ``peft``) or full fine-tuning.

Both train the causal-LM loss on token windows ``(n, seqlen)`` with AdamW and **modify the model
in place**: LoRA adapters are merged back into the base weights (``merge_and_unload``) so the
result is the same plain ``transformers`` model, with no ``peft`` wrapper left behind, that the
rest of pzshell (perplexity, saving, zero-shot) already handles.

Sparsity. A merged LoRA update ``B @ A`` is dense, so merging alone would fill the pruned
weights back in. With ``preserve_sparsity=True`` the zero pattern of every decoder-block linear
is recorded before training and re-applied after merging (full fine-tuning: after every
optimizer step, with the masked gradients zeroed so AdamW's moments stay zero there too). The
returned dict reports the achieved sparsity before and after, so a caller can check it.

The functions return a JSON-ready dict of what was done (steps, tokens, losses, time,
sparsity); the trained model is the one passed in.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PzError
from ..models.arch import block_linears, block_list_path, count_block_params
from ..progress import ProgressFn, emit


class FinetuneError(PzError):
    pass


def default_target_modules(model: nn.Module) -> list[str]:
    """Short names of the decoder-block linears (``q_proj``, ..., ``down_proj``), in order."""
    names: list[str] = []
    for lin_map in block_linears(model):
        for full in lin_map:
            short = full.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names


def _block_linear_paths(model: nn.Module, targets: list[str]) -> list[str]:
    """Full module paths of the block linears whose short name is in ``targets``.

    Naming modules by their full path keeps LoRA off anything outside the decoder blocks
    (``lm_head`` and the like), whatever their names.
    """
    prefix = block_list_path(model)
    paths = []
    for i, lin_map in enumerate(block_linears(model)):
        for full in lin_map:
            if full.rsplit(".", 1)[-1] in targets or full in targets:
                paths.append(f"{prefix}.{i}.{full}")
    return paths


def record_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean zero masks (True = pruned) of the block linear weights, keyed by full path."""
    prefix = block_list_path(model)
    return {
        f"{prefix}.{i}.{name}": lin.weight.detach() == 0
        for i, lin_map in enumerate(block_linears(model))
        for name, lin in lin_map.items()
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the recorded positions again (after a merge or an optimizer step)."""
    modules = dict(model.named_modules())
    for path, mask in masks.items():
        modules[path].weight.data.masked_fill_(mask, 0)


def _make_mask_aware(lora_layer: nn.Module, pruned: torch.Tensor) -> None:
    """Train the update the model will keep: ``W + (B @ A) * scaling`` with the pruned entries
    of the update zeroed, instead of peft's dense low-rank update.

    After training, ``merge_and_unload`` adds the dense ``B @ A`` and the mask is re-applied,
    which leaves exactly ``W + mask(B @ A)``: the function trained here. Without this the merge
    drops the pruned part of an update that was trained as a whole. With no dropout the update
    is folded into one matmul with the frozen weight; with dropout it is a second product.
    """
    keep = (~pruned).to(torch.float32)
    base = lora_layer.get_base_layer()
    (name,) = list(lora_layer.lora_A.keys())  # the one adapter lora_finetune creates
    lora_a, lora_b = lora_layer.lora_A[name], lora_layer.lora_B[name]
    drop, scale = lora_layer.lora_dropout[name], lora_layer.scaling[name]
    keep = keep.to(lora_a.weight.device)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        delta = (lora_b.weight @ lora_a.weight) * scale * keep
        if isinstance(drop, nn.Identity):
            return F.linear(x, base.weight + delta.to(base.weight.dtype), base.bias)
        out = base(x)
        return out + F.linear(drop(x).to(delta.dtype), delta).to(out.dtype)

    lora_layer.forward = forward


def block_sparsity(model: nn.Module) -> float:
    zeros, total = count_block_params(model)
    return zeros / max(total, 1)


def _check_inputs(train_ids: torch.Tensor, epochs: int, batch_size: int, lr: float) -> None:
    if not isinstance(train_ids, torch.Tensor) or train_ids.dim() != 2:
        raise FinetuneError("training data must be a LongTensor of token windows (n, seqlen)")
    if train_ids.shape[0] < 1 or train_ids.shape[1] < 2:
        raise FinetuneError(
            f"need at least one training window of 2+ tokens, got shape {tuple(train_ids.shape)}"
        )
    if epochs < 1:
        raise FinetuneError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise FinetuneError(f"batch size must be at least 1, got {batch_size}")
    if not lr > 0:
        raise FinetuneError(f"learning rate must be positive, got {lr}")


def _train_loop(
    model: nn.Module,
    params: list[nn.Parameter],
    train_ids: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    max_grad_norm: float | None,
    progress: ProgressFn | None,
    after_backward=None,
    after_step=None,
) -> dict:
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n = train_ids.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step = 0
    was_training = model.training
    model.train()
    emit(progress, "finetune", 0, total, "starting")
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                ids = train_ids[order[start : start + batch_size]].to(dev)
                with torch.enable_grad():
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    if not torch.isfinite(loss):
                        raise FinetuneError(
                            f"training loss became {float(loss)} at step {step + 1}; "
                            f"lower the learning rate"
                        )
                    loss.backward()
                if after_backward is not None:
                    after_backward()
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
                step += 1
                losses.append(float(loss.detach()))
                emit(progress, "finetune", step, total, f"loss {losses[-1]:.3f}")
    finally:
        model.train(was_training)
    k = min(len(losses), max(1, steps_per_epoch))
    q = max(1, len(losses) // 4)
    return {
        "steps": step,
        "epochs": epochs,
        "batch_size": batch_size,
        "samples": n,
        "seqlen": int(train_ids.shape[1]),
        "tokens": int(train_ids.numel()) * epochs,
        "lr": lr,
        "seed": seed,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        # mean over the first / last epoch's worth of steps: less noisy than single steps
        "loss_first_epoch": sum(losses[:k]) / k,
        "loss_last_epoch": sum(losses[-k:]) / k,
        # mean over the first / last quarter of all steps (meaningful for a single epoch too)
        "loss_start": sum(losses[:q]) / q,
        "loss_end": sum(losses[-q:]) / q,
        "losses": losses,
    }


def lora_finetune(
    model: nn.Module,
    tokenizer,
    train_ids: torch.Tensor,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    lr: float = 2e-4,  # the jobs layer's default for LoRA (pzshell.jobs.specs.DEFAULT_LR)
    epochs: int = 1,
    batch_size: int = 1,
    target_modules: list[str] | None = None,
    preserve_sparsity: bool = False,
    progress: ProgressFn | None = None,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
    mask_aware: bool = False,
) -> dict:
    """LoRA on the block linears, merged back into ``model`` (in place); returns a report.

    ``target_modules``: short names of block linears (default: all of them, e.g. ``q_proj`` ...
    ``down_proj``). With ``preserve_sparsity`` the pre-training zero masks are re-applied after
    the merge; ``sparsity_after_merge`` reports how dense the plain merge was. ``mask_aware``
    (with ``preserve_sparsity``) trains the masked update itself, so the masked merge is
    exactly the model that was trained (see :func:`_make_mask_aware`). It is off by default:
    on SmolLM2-135M at 50% (Wanda, 24 x 256 tokens, lr 5e-4) plain LoRA masked at the merge
    reached perplexity 33.6 (33.0 unmasked; 44.1 before) and mask-aware LoRA 33.8, at 2.3x the
    time on a CPU (every step then needs the dense weight gradient).
    ``tokenizer`` is accepted for a uniform signature (the windows are already token ids).
    """
    del tokenizer
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency
        raise FinetuneError("LoRA fine-tuning needs the peft package: pip install peft") from None
    _check_inputs(train_ids, epochs, batch_size, lr)
    if r < 1:
        raise FinetuneError(f"LoRA rank must be at least 1, got {r}")
    targets = list(target_modules) if target_modules else default_target_modules(model)
    paths = _block_linear_paths(model, targets)
    if not paths:
        raise FinetuneError(
            f"no decoder-block linear matches {targets}; "
            f"available: {', '.join(default_target_modules(model))}"
        )
    t0 = time.perf_counter()
    sparsity_before = block_sparsity(model)
    masks = record_masks(model) if preserve_sparsity else None
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=paths,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft draws the LoRA A matrices from torch's global generator: seed it (and restore it) so
    # that a run's adapters, and hence its perplexity after recovery, follow from `seed`
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers API
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    try:
        if masks is not None and mask_aware:
            modules = dict(model.named_modules())
            for path in paths:
                _make_mask_aware(modules[path], masks[path])
        params = [p for p in peft_model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        report = _train_loop(
            peft_model,
            params,
            train_ids,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            max_grad_norm=max_grad_norm,
            progress=progress,
        )
    finally:
        # Merge (or, on failure, just unload) so `model` is a plain model again either way.
        merged = peft_model.merge_and_unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(merged):
                delattr(merged, attr)
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
            p.grad = None
    if merged is not model:  # peft replaces the modules inside `model`; it returns that model
        raise FinetuneError("internal error: peft returned a different model object")
    sparsity_after_merge = block_sparsity(model)
    if masks is not None:
        apply_masks(model, masks)
    report.update(
        method="lora",
        r=r,
        alpha=alpha,
        dropout=dropout,
        target_modules=targets,
        adapted_linears=len(paths),
        trainable_params=trainable,
        preserve_sparsity=preserve_sparsity,
        mask_aware=bool(masks is not None and mask_aware),
        sparsity_before=sparsity_before,
        sparsity_after_merge=sparsity_after_merge,
        sparsity_after=block_sparsity(model),
        seconds=time.perf_counter() - t0,
    )
    return report


def full_finetune(
    model: nn.Module,
    tokenizer,
    train_ids: torch.Tensor,
    *,
    lr: float = 1e-5,
    epochs: int = 1,
    batch_size: int = 1,
    preserve_sparsity: bool = False,
    progress: ProgressFn | None = None,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
) -> dict:
    """Train every parameter of ``model`` in place; returns a report.

    With ``preserve_sparsity`` the gradients of pruned block weights are zeroed before each step
    and the masks re-applied after it, so the zero pattern never changes.
    """
    del tokenizer
    _check_inputs(train_ids, epochs, batch_size, lr)
    t0 = time.perf_counter()
    sparsity_before = block_sparsity(model)
    masks = record_masks(model) if preserve_sparsity else None
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    # tied weights (embeddings / lm_head) appear once in parameters(): count each tensor once
    trainable = sum(p.numel() for p in params)
    after_backward = after_step = None
    if masks is not None:
        modules = dict(model.named_modules())
        masked = [(modules[path].weight, m) for path, m in masks.items()]

        def after_backward() -> None:
            for w, m in masked:
                if w.grad is not None:
                    w.grad.masked_fill_(m, 0)

        def after_step() -> None:
            apply_masks(model, masks)

    try:
        report = _train_loop(
            model,
            params,
            train_ids,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            max_grad_norm=max_grad_norm,
            progress=progress,
            after_backward=after_backward,
            after_step=after_step,
        )
    finally:
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
            p.grad = None
    report.update(
        method="full",
        trainable_params=trainable,
        preserve_sparsity=preserve_sparsity,
        sparsity_before=sparsity_before,
        sparsity_after=block_sparsity(model),
        seconds=time.perf_counter() - t0,
    )
    return report


__all__ = [
    "FinetuneError",
    "apply_masks",
    "block_sparsity",
    "default_target_modules",
    "full_finetune",
    "lora_finetune",
    "record_masks",
]
