"""The settings every job is built from: one dataclass per concern, shared by all jobs.

``pzshell prune``, ``structured``, ``eval``, ``finetune``, the search's final re-runs and the
terminal app's runs all describe their model, their calibration text, their evaluation and their
optional recovery fine-tuning / zero-shot tasks with these same classes, so a default or a check
exists exactly once. ``check()`` validates what needs no model and raises :class:`PzError`
naming the setting (the CLI flag of the same name) and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import BUILTIN
from ..errors import PzError
from ..evaluate.zeroshot import DEFAULT_TASKS

FINETUNE_METHODS = ("lora", "full")
# One default per method, used by every command: LoRA 2e-4 (the value `pzshell prune/finetune`
# always had), full fine-tuning 1e-5 (the value `pzshell structured` always had: every weight
# moves, so the step must be ~20x smaller than an adapter's).
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}


def _positive_int(name: str, value, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PzError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    name: str = "smollm2"
    device: str | None = "auto"


@dataclass(frozen=True)
class CalibSpec:
    """Calibration windows: ``nsamples`` windows of ``seqlen`` tokens drawn with ``seed``."""

    data: str = BUILTIN
    nsamples: int = 128
    seqlen: int | None = None  # None: the job's default (see resolve_seqlen)
    seed: int = 0

    def check(self, *, samples_flag: str = "--nsamples") -> None:
        _positive_int(samples_flag, self.nsamples)
        _positive_int("--seqlen", self.seqlen, allow_none=True, minimum=2)


@dataclass(frozen=True)
class EvalSpec:
    """Perplexity over the first ``windows`` non-overlapping windows of ``seqlen`` tokens of
    ``data`` (``None`` / ``"none"``: no evaluation)."""

    data: str | None = BUILTIN
    seqlen: int | None = None  # None: the calibration window length
    windows: int | None = None  # None: all

    @property
    def enabled(self) -> bool:
        return bool(self.data) and self.data != "none"

    def check(self) -> None:
        _positive_int("--eval_seqlen", self.seqlen, allow_none=True, minimum=2)
        _positive_int("--eval_windows", self.windows, allow_none=True)


@dataclass(frozen=True)
class ZeroShotSpec:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    limit: int | None = None  # items per task (quick checks); None: all
    batch_size: int = 4  # the choices of one question batch well, on a CPU too

    def check(self) -> None:
        if not self.tasks:
            raise PzError("--tasks: give at least one zero-shot task")
        _positive_int("--zero_shot_limit", self.limit, allow_none=True)
        _positive_int("--zero_shot_batch_size", self.batch_size)


@dataclass(frozen=True)
class FinetuneSpec:
    """Recovery fine-tuning. ``data=None``: the job's calibration text, windows drawn with
    ``seed + 1`` so they differ from the calibration windows. ``lr=None``: :data:`DEFAULT_LR`."""

    method: str = "lora"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    samples: int = 64
    seqlen: int | None = None  # None: min(512, the calibration window length)
    lr: float | None = None
    epochs: int = 1
    batch_size: int = 1
    data: str | None = None
    seed: int = 0
    preserve_sparsity: bool = True
    mask_aware: bool = False  # LoRA: train the masked update (see engine.finetune)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def check(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise PzError(
                f"--finetune_method must be one of {', '.join(FINETUNE_METHODS)}, "
                f"got '{self.method}'"
            )
        _positive_int("--finetune_samples", self.samples)
        _positive_int("--finetune_epochs", self.epochs)
        _positive_int("--finetune_batch_size", self.batch_size)
        _positive_int("--finetune_seqlen", self.seqlen, allow_none=True, minimum=2)
        _positive_int("--lora_r", self.r)
        if self.lr is not None and not self.lr > 0:
            raise PzError(f"--finetune_lr must be positive, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise PzError(f"--lora_dropout must be in [0, 1), got {self.dropout}")
