"""Fitness of a candidate metric: perplexity after pruning with it, on held-out calibration text.

Fast path: the statistics ``X`` (column mean squares of every linear's input) and ``G``
(gradient statistic) are computed once on the dense model and cached on disk; a candidate's
masks come from them directly (one shot, no layer-sequential passes), the weights are masked in
place, the perplexity measured on held-out windows, and the dense weights restored. The final
top candidates are re-run with the full layer-sequential prune (:func:`final_fitness`).

The held-out windows come from the *calibration* text (its last 10%, never sampled for
calibration) — never from the evaluation set.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import torch

from .. import atomic
from ..data import load_text, sample_windows, tokenize
from ..engine.masks import make_mask, parse_sparsity_type
from ..engine.prune import PruneConfig, prune_model
from ..engine.stats import activation_stats, compute_gradients, stat_key
from ..evaluate.perplexity import perplexity
from ..lang import DegenerateMetric, MetricError, Node, evaluate
from ..models import LoadedModel, block_linears, load_model
from ..paths import cache_dir

WORST = math.inf


@dataclass(frozen=True)
class FitnessSettings:
    """Everything a fitness value depends on (it is part of the cache key)."""

    model: str = "smollm2"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    calib: str = "builtin"
    nsamples: int = 16  # calibration windows for X
    grad_samples: int = 8  # calibration windows for G
    seqlen: int = 256
    heldout_windows: int = 4  # full-stage fitness
    heldout_seqlen: int = 256
    cheap_windows: int = 1  # cheap stage; 0 disables multi-fidelity
    cheap_seqlen: int = 64
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def round_fitness(x: float) -> float:
    """Fitness rounded to 7 significant digits, so that fp noise between backends (different
    thread counts reduce in different orders) cannot change a selection decision."""
    if not math.isfinite(x):
        return WORST
    return float(f"{x:.7g}")


class Evaluator:
    """Holds the model, dense weights, cached statistics and held-out windows of one worker."""

    def __init__(
        self, settings: FitnessSettings, *, device: str | None = "cpu", threads: int | None = None
    ):
        if threads:
            torch.set_num_threads(threads)
        self.settings = s = settings
        self.n, self.m = parse_sparsity_type(s.sparsity_type)
        self.lm: LoadedModel = load_model(s.model, device=device)
        text = load_text(s.calib, role="calib")
        ids = tokenize(self.lm.tokenizer, text)
        need = s.heldout_windows * s.heldout_seqlen
        split = max(
            int(ids.numel() * 0.9), ids.numel() - max(need, s.cheap_windows * s.cheap_seqlen)
        )
        calib_part, held = ids[:split], ids[split:]
        if held.numel() < need or calib_part.numel() < s.seqlen + 2:
            raise MetricError(
                f"calibration text {text.name} is too short ({ids.numel()} tokens) for "
                f"{s.heldout_windows} held-out windows of {s.heldout_seqlen} plus calibration"
            )
        # the calibration sampler of the prune jobs, over the calibration part only
        self.calib_ids = sample_windows(calib_part, s.nsamples, s.seqlen, s.seed, name=text.name)
        self.heldout = held[:need].reshape(s.heldout_windows, s.heldout_seqlen)
        cheap = s.cheap_windows * s.cheap_seqlen
        self.cheap = held[:cheap].reshape(s.cheap_windows, s.cheap_seqlen) if cheap else None
        self.text_digest = text.digest
        self.linears = [
            (i, n, lin)
            for i, lm in enumerate(block_linears(self.lm.model))
            for n, lin in lm.items()
        ]
        self.dense = {(i, n): lin.weight.detach().clone() for i, n, lin in self.linears}
        self.X, self.G = self._stats()

    # ---- statistics, computed once and cached on disk ------------------------------------------
    def stats_key(self) -> str:
        s = self.settings
        fields = [s.model, self.lm.fingerprint(), self.text_digest, s.nsamples, s.grad_samples]
        blob = json.dumps([*fields, s.seqlen, s.seed])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _stats(self):
        path = cache_dir() / "search_stats" / f"{self.stats_key()}.pt"
        if path.exists():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                return d["X"], d["G"]
            except Exception:
                path.unlink(missing_ok=True)
        # one statistics pass over the dense model (it ends at the last block's last linear from
        # the second batch on: no LM head); G in its published fp16 form, as the prune path uses
        X = {k: st.X.cpu() for k, st in activation_stats(self.lm.model, self.calib_ids).items()}
        G = compute_gradients(self.lm.model, self.calib_ids[: self.settings.grad_samples])
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.writing_file(path) as tmp:
            torch.save({"X": X, "G": G}, tmp)
        return X, G

    # ---- fitness -------------------------------------------------------------------------------
    @torch.no_grad()
    def _apply_masks(self, tree: Node) -> None:
        s = self.settings
        for i, n, lin in self.linears:
            W = self.dense[(i, n)]
            k = stat_key(n, i)
            G = self.G.get(k) if "G" in tree.terminals else None
            X = self.X.get(k) if "X" in tree.terminals else None
            scores = evaluate(tree, W, G=G, X=X)
            mask = make_mask(scores, s.sparsity_ratio, self.n, self.m)  # per-row groups
            lin.weight.copy_(W.masked_fill(mask, 0))

    @torch.no_grad()
    def restore(self) -> None:
        for i, n, lin in self.linears:
            lin.weight.copy_(self.dense[(i, n)])

    def ppl(self, tree: Node, windows: torch.Tensor) -> float:
        try:
            self._apply_masks(tree)
            value = perplexity(self.lm.model, windows).ppl
        finally:
            self.restore()
        return value

    def run(self, tree: Node, threshold: float | None) -> dict:
        """Cheap stage (if enabled), then the full stage unless the cheap value misses
        ``threshold``. Never raises for a bad candidate: it gets the worst fitness and a reason."""
        t0 = time.perf_counter()
        out: dict = {"cheap": None, "full": None, "reason": None}
        try:
            if self.cheap is not None:
                out["cheap"] = round_fitness(self.ppl(tree, self.cheap))
                if not math.isfinite(out["cheap"]):
                    raise DegenerateMetric("perplexity is not finite")
                if threshold is not None and out["cheap"] > threshold:
                    out.update(stage="cheap", fitness=WORST)
                    return out
            out["full"] = round_fitness(self.ppl(tree, self.heldout))
            if not math.isfinite(out["full"]):
                raise DegenerateMetric("perplexity is not finite")
            out.update(stage="full", fitness=out["full"])
        except DegenerateMetric as e:
            out.update(stage="degenerate", fitness=WORST, reason=str(e))
        except Exception as e:  # a crashing candidate must not stop the search
            out.update(stage="degenerate", fitness=WORST, reason=f"crash: {type(e).__name__}: {e}")
        finally:
            out["seconds"] = time.perf_counter() - t0
        return out

    def final_fitness(self, tree: Node) -> dict:
        """The full layer-sequential prune with this tree, perplexity on the held-out windows."""
        t0 = time.perf_counter()
        s = self.settings
        cfg = PruneConfig("metric", s.sparsity_ratio, s.sparsity_type, metric=tree)
        try:
            prune_model(self.lm.model, cfg, self.calib_ids, self.G)
            value = round_fitness(perplexity(self.lm.model, self.heldout).ppl)
            reason = None
        except Exception as e:
            value, reason = WORST, f"{type(e).__name__}: {e}"
        finally:
            self.restore()
        return {"final": value, "reason": reason, "seconds": time.perf_counter() - t0}
