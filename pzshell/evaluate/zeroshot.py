"""Zero-shot accuracy through the ``lm-eval`` package's own API (no fork).

The in-memory model (dense, pruned or fine-tuned) is wrapped in lm-eval's Hugging Face model
class, ``HFLM(pretrained=model, tokenizer=tokenizer, batch_size=...)``, and evaluated with
``lm_eval.simple_evaluate`` and a ``TaskManager`` that also indexes pzshell's own task
directory (``pzshell/evaluate/tasks``).

Tasks:

* ``pzshell_mc``: pzshell's offline task, 64 original four-way multiple-choice questions shipped
  in the package (lm-eval YAML + JSONL). Needs no network.
* The hub tasks of the Pruner-Zero / Wanda papers (:data:`DEFAULT_TASKS`: BoolQ, RTE, HellaSwag,
  WinoGrande, ARC-e, ARC-c, OpenBookQA) and any other lm-eval task: their data comes from the
  Hugging Face hub through ``datasets``. When the hub is unreachable they are loaded in offline
  mode (a cached copy works) and otherwise fail at once with a clear :class:`ZeroShotError`
  rather than after ``datasets``' minute of retries.

Tasks are prepared (data loaded) by :func:`prepare_tasks` *before* the caller loads the model, so
a bad task name or missing data is reported in seconds.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import PzError
from ..progress import ProgressFn, emit

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASK = "pzshell_mc"
# The zero-shot suite of the Wanda and Pruner-Zero papers (lm-eval task names).
DEFAULT_TASKS = (
    "boolq",
    "rte",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
# Where lm-eval keeps those (and a few more common) tasks: indexing only these directories takes
# well under a second, where indexing all of lm-eval's ~15,000 task files takes ~25 s.
_KNOWN_TASK_DIRS = {
    "boolq": "super_glue/boolq",
    "rte": "glue/rte",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
}
HUB_TIMEOUT_S = 3.0


class ZeroShotError(PzError):
    pass


def parse_tasks(spec: str | Iterable[str]) -> list[str]:
    """``"boolq, rte"`` or a list -> ``["boolq", "rte"]`` (order kept, duplicates dropped)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        name = item.strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise ZeroShotError("no zero-shot task given; e.g. --tasks pzshell_mc")
    return names


def local_tasks() -> dict[str, Path]:
    """pzshell's own lm-eval tasks: name -> YAML file (the top-level ``task:`` key)."""
    out = {}
    for path in sorted(TASKS_DIR.rglob("*.yaml")):
        m = re.search(r"^task:\s*([\w.-]+)\s*$", path.read_text(encoding="utf-8"), re.M)
        if m:
            out[m.group(1)] = path
    return out


# ------------------------------------------------------------------------------------------------
# the hub: reachability and offline mode
# ------------------------------------------------------------------------------------------------


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Can a TCP connection reach the hub (or the HTTPS proxy) within ``timeout`` seconds?

    ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` in the environment count as unreachable.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme in ("https", "") else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_offline() -> Iterator[None]:
    """Put ``huggingface_hub`` and ``datasets`` in offline mode (cached data only), then restore.

    Both read their offline flags at import time, so the module constants are set as well as
    the environment variables.
    """
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    attrs = [(hcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_DATASETS_OFFLINE")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in attrs if hasattr(mod, name)]
    os.environ.update({k: "1" for k in env})
    for mod, name, _ in saved:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for mod, name, value in saved:
            setattr(mod, name, value)


def _hub_cache_has_datasets() -> bool:
    """Is there any data set in the local hub / datasets caches that offline mode could use?"""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    hub = Path(hcfg.HF_HUB_CACHE)
    if hub.is_dir() and any(p.name.startswith("datasets--") for p in hub.iterdir()):
        return True
    local = Path(dcfg.HF_DATASETS_CACHE)
    skip = {"downloads", "modules"}
    return local.is_dir() and any(
        p.is_dir() and p.name not in skip and not p.name.startswith((".", "_"))
        for p in local.iterdir()
    )


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO/WARNING and draws a tqdm bar per task while building
    requests; keep errors only (our own progress events report the work)."""
    import functools

    import lm_eval.api.task as task_mod

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bar = getattr(task_mod, "tqdm", None)
    if bar is not None:
        task_mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bar is not None:
            task_mod.tqdm = bar


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------


@dataclass
class PreparedTasks:
    """Tasks with their data loaded, ready for :func:`evaluate_zero_shot`."""

    names: list[str]
    tasks: dict = field(repr=False)  # lm-eval's {"tasks": {name: Task}, "groups": ..., ...}
    manager: object = field(repr=False)
    hub_tasks: list[str] = field(default_factory=list)
    offline: bool = False  # hub tasks were loaded from the local cache


def _task_manager(names: list[str]):
    import lm_eval
    from lm_eval.tasks import TaskManager

    base = Path(lm_eval.__file__).resolve().parent / "tasks"
    local = local_tasks()
    dirs = {_KNOWN_TASK_DIRS[n] for n in names if n in _KNOWN_TASK_DIRS}
    if all(n in local or n in _KNOWN_TASK_DIRS for n in names) and all(
        (base / d).is_dir() for d in dirs
    ):
        paths = [base / d for d in sorted(dirs)] + [TASKS_DIR]
        return TaskManager(include_defaults=False, include_path=[str(p) for p in paths])
    return TaskManager(include_path=str(TASKS_DIR))


def prepare_tasks(tasks: str | Iterable[str], *, hub_timeout: float = HUB_TIMEOUT_S):
    """Resolve task names and load their data (no model needed): fails fast on a bad name or
    on hub data that cannot be had offline."""
    names = parse_tasks(tasks)
    local = local_tasks()
    hub_tasks = [n for n in names if n not in local]
    with _quiet_lm_eval():
        # a name that no task has is the error to report, whether or not the hub is reachable
        manager = _task_manager(names)
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            raise ZeroShotError(
                f"unknown zero-shot task(s): {', '.join(unknown)}. pzshell's offline task: "
                f"{', '.join(local)}; lm-eval tasks (data from the hub) such as "
                f"{', '.join(DEFAULT_TASKS)}"
            )
        offline = bool(hub_tasks) and not hub_reachable(hub_timeout)
        if offline and not _hub_cache_has_datasets():
            raise ZeroShotError(
                f"zero-shot task(s) {', '.join(hub_tasks)} load their data from the Hugging "
                f"Face hub (lm-eval tasks), which is not reachable from this machine, and the "
                f"local datasets cache is empty. Run them where the hub is reachable, or use "
                f"pzshell's offline task: --tasks {LOCAL_TASK}"
            )
        try:
            if offline:
                with hub_offline():
                    loaded = manager.load(names)
            else:
                loaded = manager.load(names)
        except Exception as e:  # datasets / hub errors come in many types
            text = str(e).strip()
            first = text.splitlines()[0] if text else type(e).__name__
            hint = f"or use pzshell's offline task: --tasks {LOCAL_TASK}"
            if offline:
                msg = (
                    f"zero-shot task(s) {', '.join(hub_tasks)} need data from the Hugging Face "
                    f"hub, which is not reachable from this machine, and they are not in the "
                    f"local datasets cache ({first}). Run them where the hub is reachable, {hint}"
                )
            else:
                msg = f"could not load the data of zero-shot task(s) {', '.join(names)} ({first})"
                msg += f"; {hint}" if hub_tasks else ""
            raise ZeroShotError(msg) from None
    return PreparedTasks(names, loaded, manager, hub_tasks, offline)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def _progress_lm_class():
    """lm-eval's HFLM, reporting loglikelihood progress as pzshell events instead of tqdm."""
    from lm_eval.models.huggingface import HFLM

    class ProgressHFLM(HFLM):
        progress: ProgressFn | None = None
        chunks: int = 20

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            n = len(requests)
            step = max(1, math.ceil(n / self.chunks))
            out = []
            emit(self.progress, "zero-shot", 0, n, "loglikelihood requests")
            for start in range(0, n, step):
                out.extend(super().loglikelihood(requests[start : start + step], True))
                emit(self.progress, "zero-shot", len(out), n, "loglikelihood requests")
            return out

    return ProgressHFLM


def _metric(res: dict, name: str) -> float | None:
    for key in (f"{name},none", name):
        v = res.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def evaluate_zero_shot(
    model,
    tokenizer,
    tasks: str | Iterable[str] | PreparedTasks,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    bootstrap_iters: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict:
    """Zero-shot accuracy of ``model`` on ``tasks``; a JSON-ready dict.

    ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "n_total"}},
    "mean_acc", "limit", ...}``; ``acc_norm`` is ``None`` for tasks without it. ``limit`` caps
    the items per task (for quick checks; the full tasks are the figures to report).
    """
    import lm_eval

    prepared = tasks if isinstance(tasks, PreparedTasks) else prepare_tasks(tasks)
    if limit is not None and limit < 1:
        raise ZeroShotError(f"zero-shot item limit must be at least 1, got {limit}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    with _quiet_lm_eval():
        lm = _progress_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        lm.progress = progress
        ctx = hub_offline() if prepared.offline else nullcontext()
        with ctx:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(prepared.tasks["tasks"].values()),
                num_fewshot=0,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                task_manager=prepared.manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    model.train(was_training)
    per_task = {}
    for name, res in sorted(out["results"].items()):
        if name not in prepared.tasks["tasks"]:
            continue  # a group's aggregate row
        counts = out.get("n-samples", {}).get(name, {})
        per_task[name] = {
            "acc": _metric(res, "acc"),
            "acc_stderr": _metric(res, "acc_stderr"),
            "acc_norm": _metric(res, "acc_norm"),
            "acc_norm_stderr": _metric(res, "acc_norm_stderr"),
            "n": counts.get("effective"),
            "n_total": counts.get("original"),
        }
    accs = [r["acc"] for r in per_task.values() if r["acc"] is not None]
    return {
        "tasks": per_task,
        "mean_acc": sum(accs) / len(accs) if accs else None,
        "num_fewshot": 0,
        "limit": limit,
        "offline": prepared.offline,
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        "seconds": time.perf_counter() - t0,
    }


__all__ = [
    "DEFAULT_TASKS",
    "LOCAL_TASK",
    "PreparedTasks",
    "TASKS_DIR",
    "ZeroShotError",
    "evaluate_zero_shot",
    "hub_offline",
    "hub_reachable",
    "local_tasks",
    "parse_tasks",
    "prepare_tasks",
]
