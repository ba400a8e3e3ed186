"""Fitness of a candidate metric: a ladder of stages ordered by cost, then perplexity.

The statistics ``X`` (column mean squares of every linear's input), ``G`` (gradient statistic)
and, for the proxy stage, ``H`` (each linear input's second-moment matrix) are computed once on
the dense model and cached on disk. A candidate then goes up a ladder, each stage sending only
promising candidates on (the driver, :mod:`.evolution`, sets the gates):

1. **proxy** (:meth:`Evaluator.screen`, no forward pass): on a fixed sample of ``proxy_rows``
   output rows of every linear, the candidate's mask for those rows and the layer's relative
   output error ``|dW x|^2 / |W x|^2 = tr(D H D^T) / tr(W H W^T)`` (``D`` the pruned weights),
   from the cached ``H``; the proxy is the mean over linears of its logarithm. The sampled rows'
   masks are hashed too: two rules with the same hash prune the same weights on this model (up
   to the rows not sampled) and share one fitness (a *mask hit*).
2. **cheap** (optional, ``cheap_windows``): perplexity on a few hundred held-out tokens.
3. **full**: perplexity on the held-out windows; this is the fitness.

The masks of the cheap and full stages are made at once from cached statistics (no
layer-sequential passes per candidate): the weights are masked in place, the perplexity measured
and the dense weights restored. They come close to the masks a real prune makes: ``X`` is, per
setting, the one a layer-sequential prune sees (``statistics="sequential"``, recorded once from
the reference method's prune: for Wanda the fitness *is* its layer-sequential prune's; for
another metric the blocks before were pruned by Wanda's masks, not its own), and the
calibration windows are the prune jobs' own (``calib_windows="prune"``). The final top
candidates are re-run with their own full layer-sequential prune
(:meth:`Evaluator.final_fitness`).

With ``reconstruct="iterative"`` every stage scores the candidate as `pzshell prune --method
metric+iterative` uses it: inside SparseGPT's loop, the candidate choosing each block's mask from
the weights as updated so far. The proxy runs that loop on the sampled rows and weighs each
row's output error by its mean squared gradient ``G``: the log of ``sum_r g_r |d_r x|^2 / sum_r
g_r |w_r x|^2`` over every sampled row of every linear (the update makes the plain layer errors
of all rules alike, and what tells them apart is which outputs carry the loss: on SmolLM2 at 50%,
over 12 rules, its Spearman correlation with the full stage was 0.95, where the mean log layer
error's was 0.37 over the first 6 of them). The cheap and full stages run the loop on every
linear from the cached ``H`` (one linear at a time from the dense model's inputs, not
layer-sequentially); the finals make the layer-sequential ``metric+iterative`` prune.

With ``refit`` (CG iterations) every stage refits the kept weights by least squares after the
candidate's masks (and loop), as `pzshell prune --refit` does: the proxy on the sampled rows,
the cheap and full stages on every linear, both from the cached dense ``H``; the finals with the
layer-sequential prune's own ``H``. A mask that is best alone need not be best once its weights
are refitted (on SmolLM2 at 2:4 a plain search's pick beat Wanda alone and fell behind it with a
refit), so a rule meant for a refit is searched with one.

Several settings (``sparsity_type`` ``"unstructured,2:4"``, ``sparsity_ratio`` ``(0.5, 0.6)``)
make a *multi-setting* fitness: each stage's value is the mean over the settings of its log
(``exp(mean log ppl)`` for perplexities), and every setting's value is kept in ``settings``.

The held-out windows come from the *calibration* text (its last 10%, clear of every
calibration window) — never from the evaluation set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import atomic
from ..data import load_text, sample_windows, tokenize, window_offsets
from ..engine.layer_ratios import OWL_LAMBDA
from ..engine.masks import make_mask, parse_sparsity_type
from ..engine.prune import PruneConfig, prune_model
from ..engine.refit import least_squares_refit, output_error
from ..engine.sparsegpt import column_curvature, hinv_factor, sparsegpt_prune
from ..engine.stats import activation_stats, compute_gradients, stat_key
from ..evaluate.perplexity import PerplexityResult, perplexity, placeholder_tokens
from ..lang import DegenerateMetric, MetricError, Node, evaluate
from ..models import LoadedModel, block_linears, load_model
from ..paths import cache_dir

WORST = math.inf
# the method whose layer-sequential prune gives the "sequential" statistics
SEQUENTIAL_REFERENCE = "wanda"
HELDOUT_SKIP = ""  # held-out tokens left out of the fitness (FitnessSettings.heldout_skip)


@dataclass(frozen=True)
class Setting:
    """One pruning setting of a (possibly multi-setting) fitness."""

    ratio: float
    sparsity_type: str
    n: int
    m: int

    @property
    def label(self) -> str:
        return self.sparsity_type if self.n else f"{self.ratio:g} {self.sparsity_type}"


@dataclass(frozen=True)
class FitnessSettings:
    """Everything a fitness value depends on (it is part of the cache key)."""

    model: str = "smollm2"
    sparsity_ratio: float | tuple[float, ...] = 0.5  # several: a multi-setting fitness
    sparsity_type: str = "unstructured"  # several, comma-separated: "unstructured,2:4"
    calib: str = "builtin"
    # "prune": the calibration windows `pzshell prune` draws from the whole text with the same
    # nsamples/seqlen/seed (so the search scores the masks a prune will make), held-out windows
    # from the text's last 10% that no calibration window touches; "head": calibration from the
    # first 90% only
    calib_windows: str = "prune"
    nsamples: int = 32  # calibration windows for X and H
    grad_samples: int = 16  # calibration windows for G
    seqlen: int = 512
    heldout_windows: int = 2  # full-stage fitness
    # the finals' held-out windows: the full stage's, then more from the text's last 10% (as
    # many as it holds clear of the calibration windows, never fewer than heldout_windows).
    # Only a handful of rules reach the finals, so they are judged on more text than the
    # search can afford per candidate; not part of any cached value, so not of the digest
    final_windows: int = 8
    heldout_seqlen: int = 1024  # the evaluation protocol's window length
    # text pieces (comma-separated) whose tokens are read as context but whose prediction
    # does not count in any held-out perplexity, such as WikiText's "<unk>" placeholder, which
    # raw text has none of (with SmolLM2 on wikitext-2/valid.txt: 5% of the full stage's
    # held-out tokens, 18% of the finals'); "" counts every token. Left off by measurement:
    # bench/fidelity.py ranks rules no closer to their test perplexity with it
    heldout_skip: str = HELDOUT_SKIP
    cheap_windows: int = 0  # cheap perplexity stage; 0 leaves it out of the ladder
    cheap_seqlen: int = 128
    proxy_rows: int = 64  # rows per linear of the proxy stage; 0 leaves it out of the ladder
    allocation: str = "uniform"  # per-block sparsity: uniform, owl or a formula (unstructured)
    owl_lambda: float = OWL_LAMBDA  # how far a non-uniform allocation spreads the blocks' ratios
    # X of every candidate's masks: "sequential", per setting as a layer-sequential prune with
    # the reference metric sees it (the blocks before already pruned), or "dense" (unpruned)
    statistics: str = "sequential"
    # "iterative": every stage scores the candidate inside SparseGPT's loop (the weight update
    # after each block's mask), as `--method metric+iterative` prunes; "none": masks alone
    reconstruct: str = "none"
    # least-squares refit of the kept weights (CG iterations; 0: none) after every candidate's
    # masks (and loop), as `pzshell prune --refit` does; from the cached dense H
    refit: int = 0
    seed: int = 0

    def __post_init__(self):
        r = self.sparsity_ratio
        if isinstance(r, list | tuple):
            r = tuple(r)
            object.__setattr__(self, "sparsity_ratio", r[0] if len(r) == 1 else r)

    @property
    def ratios(self) -> tuple:
        r = self.sparsity_ratio
        return r if isinstance(r, tuple) else (r,)

    @property
    def types(self) -> tuple[str, ...]:
        t = self.sparsity_type
        return tuple(x.strip() for x in t.split(",")) if isinstance(t, str) else (t,)

    def settings(self) -> list[Setting]:
        """Every (ratio, type) the fitness averages over; an N:M type ignores the ratio and
        appears once."""
        out: list[Setting] = []
        for t in self.types:
            n, m = parse_sparsity_type(t)
            for r in self.ratios[:1] if n else self.ratios:
                if Setting(r, t, n, m) not in out:
                    out.append(Setting(r, t, n, m))
        return out

    def describe(self) -> str:
        return ", ".join(
            s.sparsity_type if s.n else f"{s.ratio:.0%} {s.sparsity_type}" for s in self.settings()
        )

    def digest(self) -> str:
        d = asdict(self)
        del d["final_windows"]  # changes the finals only, which are logged, never cached
        if d["owl_lambda"] == OWL_LAMBDA:  # the digest of a run saved before the setting existed
            del d["owl_lambda"]
        if d["reconstruct"] == "none":  # likewise
            del d["reconstruct"]
        if d["refit"] == 0:  # likewise
            del d["refit"]
        if d["heldout_skip"] == "":  # likewise
            del d["heldout_skip"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _load_cached(*paths):
    """The statistics in ``paths`` (all of them), or None when one is missing or unreadable;
    an unreadable file is removed, so that it is computed again and saved whole."""
    if not all(p.exists() for p in paths):
        return None
    try:
        return [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    except Exception:
        for p in paths:
            p.unlink(missing_ok=True)
        return None


def _save_cached(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing_file(path) as tmp:
        torch.save(obj, tmp)


def round_fitness(x: float) -> float:
    """Fitness rounded to 7 significant digits, so that fp noise between backends (different
    thread counts reduce in different orders) cannot change a selection decision."""
    if not math.isfinite(x):
        return WORST
    return float(f"{x:.7g}")


def mean_log(values: list[float]) -> float:
    """``exp(mean(log v))``: the multi-setting combination (the value itself for one)."""
    if len(values) == 1:
        return values[0]
    if not all(math.isfinite(v) and v > 0 for v in values):
        return WORST
    return math.exp(sum(math.log(v) for v in values) / len(values))


def split_calibration(ids: torch.Tensor, s: FitnessSettings, name: str = "text"):
    """The calibration windows, the held-out windows, the cheap stage's windows (or None) and
    the finals' windows of the calibration text's token ids ``ids``, as ``s.calib_windows``
    says (see :class:`FitnessSettings`). Held-out tokens are never calibration tokens. The
    finals' windows begin with the held-out ones and add as many of ``s.final_windows`` as the
    text's last 10% holds."""
    need = s.heldout_windows * s.heldout_seqlen
    want = max(s.heldout_windows, s.final_windows)
    cheap = s.cheap_windows * s.cheap_seqlen
    n = ids.numel()
    split = max(int(n * 0.9), n - max(need, cheap))
    short = MetricError(
        f"calibration text {name} is too short ({n} tokens) for {s.heldout_windows} held-out "
        f"windows of {s.heldout_seqlen} next to {s.nsamples} calibration windows of {s.seqlen}"
    )
    if s.calib_windows == "head":
        if n - split < need or split < s.seqlen + 2:
            raise short
        calib = sample_windows(ids[:split], s.nsamples, s.seqlen, s.seed, name=name)
        held = ids[split:]
    else:  # the prune jobs' windows over the whole text; held-out windows avoid them
        if n < s.seqlen + 2:
            raise short
        calib = sample_windows(ids, s.nsamples, s.seqlen, s.seed, name=name)
        used = sorted((o, o + s.seqlen) for o in window_offsets(n, s.nsamples, s.seqlen, s.seed))
        parts, start, L = [], int(n * 0.9), s.heldout_seqlen
        while len(parts) < want and start + L <= n:
            hit = next((b for a, b in used if a < start + L and start < b), None)
            if hit is None:
                parts.append(ids[start : start + L])
                start += L
            else:
                start = hit  # the first token after the calibration window it touched
        if len(parts) < s.heldout_windows:
            raise short
        held = torch.cat(parts)
    if cheap > held.numel():
        raise short
    heldout = held[:need].reshape(s.heldout_windows, s.heldout_seqlen)
    cheap_ids = held[:cheap].reshape(s.cheap_windows, s.cheap_seqlen) if cheap else None
    k = min(want, held.numel() // s.heldout_seqlen)
    final = held[: k * s.heldout_seqlen].reshape(k, s.heldout_seqlen)
    return calib, heldout, cheap_ids, final


@contextlib.contextmanager
def _scored(out: dict):
    """A stage of one candidate: never raises for a bad candidate (it gets the worst fitness
    and a reason), and records the stage's seconds in ``out``."""
    t0 = time.perf_counter()
    try:
        yield
    except DegenerateMetric as e:
        out.update(stage="degenerate", fitness=WORST, reason=str(e))
    except Exception as e:  # a crashing candidate must not stop the search
        out.update(stage="degenerate", fitness=WORST, reason=f"crash: {type(e).__name__}: {e}")
    finally:
        out["seconds"] = time.perf_counter() - t0


class Evaluator:
    """Holds the model, dense weights, cached statistics and held-out windows of one worker."""

    def __init__(
        self, settings: FitnessSettings, *, device: str | None = "cpu", threads: int | None = None
    ):
        if threads:
            torch.set_num_threads(threads)
        self.settings = s = settings
        self.pairs = s.settings()
        t0 = time.perf_counter()
        self.lm: LoadedModel = load_model(s.model, device=device)
        # the model and tokenizer as loaded, hashed once: the statistics' cache key, the fitness
        # cache's context and summary.json name it
        self.fingerprint = self.lm.fingerprint()
        text = load_text(s.calib, role="calib")
        ids = tokenize(self.lm.tokenizer, text)
        self.calib_ids, self.heldout, self.cheap, self.final_heldout = split_calibration(
            ids, s, text.name
        )
        # the held-out tokens whose prediction does not count (s.heldout_skip): None for none
        self.heldout_skip, self.cheap_skip, self.final_skip = (
            self._placeholders(w) for w in (self.heldout, self.cheap, self.final_heldout)
        )
        self.text_digest = text.digest
        self.linears = [
            (i, n, lin)
            for i, lm in enumerate(block_linears(self.lm.model))
            for n, lin in lm.items()
        ]
        self.dense = {(i, n): lin.weight.detach().clone() for i, n, lin in self.linears}
        self.load_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.stats_cached = False
        self.X, self.G, self.H = self._stats()
        self.block_ratios = self._allocate()
        self.Xs = self._setting_stats()
        self.iterative = s.reconstruct == "iterative"
        self.stats_seconds = time.perf_counter() - t0
        self._proxy_setup()

    def _placeholders(self, windows: torch.Tensor | None) -> torch.Tensor | None:
        pieces = self.settings.heldout_skip
        if windows is None or not pieces:
            return None
        return placeholder_tokens(windows, self.lm.tokenizer, pieces)

    def heldout_perplexity(self, stage: str = "full") -> PerplexityResult:
        """The perplexity of the model as it is now on a stage's held-out windows (``cheap``,
        ``full``: one batch; ``final``: window by window, for its ``window_nll``), leaving out
        the placeholder tokens of ``heldout_skip``."""
        windows, skip = {
            "cheap": (self.cheap, self.cheap_skip),
            "full": (self.heldout, self.heldout_skip),
            "final": (self.final_heldout, self.final_skip),
        }[stage]
        batch = 1 if stage == "final" else len(windows)
        return perplexity(self.lm.model, windows, batch_size=batch, skip=skip)

    def _allocate(self) -> dict[str, list[float]]:
        """Each setting's per-block ratios (one pass over the dense model for a non-uniform
        allocation; the prune path's own code)."""
        s = self.settings
        n_blocks = 1 + max(i for i, _, _ in self.linears)
        if s.allocation == "uniform":
            return {p.label: [p.ratio] * n_blocks for p in self.pairs}
        from ..engine.layer_ratios import formula_block_ratios, owl_block_ratios

        out = {}
        for p in self.pairs:
            if s.allocation == "owl":
                ratios, _ = owl_block_ratios(
                    self.lm.model, self.calib_ids, p.ratio, lam=s.owl_lambda
                )
            else:
                ratios, _ = formula_block_ratios(
                    s.allocation, self.lm.model, self.calib_ids, p.ratio, lam=s.owl_lambda
                )
            out[p.label] = ratios
        return out

    # ---- statistics, computed once and cached on disk ------------------------------------------
    def stats_key(self) -> str:
        s = self.settings
        fields = [s.model, self.fingerprint, self.text_digest, s.nsamples, s.grad_samples]
        blob = json.dumps([*fields, s.seqlen, s.seed, s.calib_windows])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _stats(self):
        s = self.settings
        want_h = s.proxy_rows > 0 or s.reconstruct == "iterative" or s.refit > 0
        path = cache_dir() / "search_stats" / f"{self.stats_key()}.pt"
        h_path = path.with_name(path.stem + "-H.pt")
        got = _load_cached(path, *([h_path] if want_h else []))
        if got is not None and "X" in got[0] and "G" in got[0]:
            self.stats_cached = True
            return got[0]["X"], got[0]["G"], got[1] if want_h else None
        # one statistics pass over the dense model (it ends at the last block's last linear from
        # the second batch on: no LM head); G in its published fp16 form, as the prune path uses.
        # Linears with one input (q/k/v, gate/up) share one H (torch.save keeps the sharing).
        st = activation_stats(self.lm.model, self.calib_ids, want_h=want_h)
        X = {k: v.X.cpu() for k, v in st.items()}
        H = None
        if want_h:
            shared: dict[int, torch.Tensor] = {}
            H = {k: shared.setdefault(id(v), v.hessian().cpu()) for k, v in st.items()}
        del st
        G = compute_gradients(self.lm.model, self.calib_ids[: self.settings.grad_samples])
        _save_cached(path, {"X": X, "G": G})
        if H is not None:
            _save_cached(h_path, H)
        return X, G, H

    def _setting_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each setting's ``X`` for the candidates' masks. ``dense``: the unpruned model's.
        ``sequential``: as the layer-sequential prune of the reference metric (Wanda) at that
        setting saw it: block ``i``'s inputs come from blocks ``0..i-1`` already pruned. That
        is what a real prune gives a metric, and what the one-shot masks of a dense ``X`` miss
        (at 2:4 on SmolLM2, same calibration windows: Wanda's test perplexity 238.5 from dense
        ``X``, 228.1 from its layer-sequential prune). One
        prune per setting, cached on disk next to the dense statistics."""
        s = self.settings
        if s.statistics == "dense":
            return {p.label: self.X for p in self.pairs}
        out = {}
        for p in self.pairs:
            tag = [SEQUENTIAL_REFERENCE, p.label, p.ratio, s.allocation]
            tag = json.dumps(tag + ([s.owl_lambda] if s.owl_lambda != OWL_LAMBDA else []))
            tag = hashlib.sha256(tag.encode()).hexdigest()[:12]
            path = cache_dir() / "search_stats" / f"{self.stats_key()}-seqX-{tag}.pt"
            got = _load_cached(path)
            if got is not None:
                out[p.label] = got[0]
                continue
            self.stats_cached = False
            rec: dict[str, torch.Tensor] = {}
            cfg = PruneConfig(
                SEQUENTIAL_REFERENCE,
                p.ratio,
                p.sparsity_type,
                allocation=s.allocation,
                owl_lambda=s.owl_lambda,
            )
            try:
                prune_model(self.lm.model, cfg, self.calib_ids, self.G, record_x=rec)
            finally:
                self.restore()
            _save_cached(path, rec)
            out[p.label] = rec
        return out

    def _proxy_setup(self) -> None:
        """The proxy stage's fixed row sample of every linear and its dense output energy; for
        the iterative stages, SparseGPT's factor of every ``H``."""
        self.rows: dict[tuple[int, str], torch.Tensor] = {}
        self.ref: dict[tuple[int, str], float] = {}
        # the iterative proxy's weight of each sampled row: the root of its mean squared G
        self.row_weight: dict[tuple[int, str], torch.Tensor] = {}
        # SparseGPT's factor of each distinct H (q/k/v and gate/up share theirs): for the loop,
        # and for the terminal S (then made on first use, by _curvature)
        self.factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.curvature: dict[int, torch.Tensor] = {}  # the terminal S of each distinct H
        if self.iterative:
            for H in self.H.values():
                if id(H) not in self.factors:
                    self.factors[id(H)] = hinv_factor(H)
        if self.settings.proxy_rows == 0:  # no proxy (iterative: H for the full stage only)
            return
        g = torch.Generator().manual_seed(self.settings.seed)
        for i, n, _ in self.linears:
            W = self.dense[(i, n)]
            k = min(self.settings.proxy_rows, W.shape[0])
            rows = torch.randperm(W.shape[0], generator=g)[:k].sort().values
            Wr = W[rows].float()
            self.rows[(i, n)] = rows
            H = self.H[stat_key(n, i)]
            if self.iterative:
                grad = self.G[stat_key(n, i)][rows].float()
                self.row_weight[(i, n)] = grad.square().mean(1, keepdim=True).sqrt()
                self.ref[(i, n)] = output_error(Wr * self.row_weight[(i, n)], H)
            else:
                self.ref[(i, n)] = max(output_error(Wr, H), 1e-30)

    def _x_for(self, tree: Node, p: Setting):
        """``(key, X)``: setting ``p``'s statistics for ``tree``; settings with one key give
        ``tree`` the same scores (they share ``X``, or ``tree`` does not read it)."""
        Xs = self.Xs[p.label]
        return (id(Xs) if "X" in tree.terminals else 0), Xs

    def _leaves(self, tree: Node, i: int, n: str, rows: torch.Tensor | None = None, Xs=None):
        k = stat_key(n, i)
        W = self.dense[(i, n)]
        G = self.G.get(k) if "G" in tree.terminals else None
        X = (self.X if Xs is None else Xs).get(k) if "X" in tree.terminals else None
        S = self._curvature(k) if "S" in tree.terminals else None
        if rows is not None:
            W = W[rows]
            G = G[rows] if G is not None else None
        return W, G, X, S

    def _curvature(self, key: str) -> torch.Tensor:
        """The terminal ``S`` of one linear, from the cached dense ``H`` (computed once)."""
        if self.H is None:
            raise MetricError(
                "S (SparseGPT's column curvature) needs the calibration Hessian, which this "
                "search did not load (--proxy_rows 0, --reconstruct none, no --refit)"
            )
        H = self.H[key]
        if id(H) not in self.curvature:
            if id(H) not in self.factors:
                self.factors[id(H)] = hinv_factor(H)
            self.curvature[id(H)] = column_curvature(self.factors[id(H)])
        return self.curvature[id(H)]

    def _iterative(self, tree: Node, i: int, n: str, p: Setting, ratio: float, rows=None):
        """``(new weight, mask)`` of linear ``(i, n)`` (its ``rows`` only, when given) from
        SparseGPT's loop with ``tree`` choosing each block's mask from the updated weights, at
        setting ``p`` with sparsity ``ratio``; the cached ``H`` stands for the layer's inputs.
        A column-reading operator reads the rows at hand (a sample's, for the proxy)."""
        W, G, X, S = self._leaves(tree, i, n, rows, self.Xs[p.label])
        H = self.H[stat_key(n, i)]

        def scores(w: torch.Tensor, a: int, b: int) -> torch.Tensor:
            return evaluate(
                tree,
                w,
                G=G[:, a:b] if G is not None else None,
                X=X[:, a:b] if X is not None else None,
                S=S[:, a:b] if S is not None else None,
            )

        return sparsegpt_prune(
            W, H, ratio, p.n, p.m, score_fn=scores, factor=self.factors.get(id(H))
        )

    # ---- the proxy stage -----------------------------------------------------------------------
    def _sampled_scores(self, tree: Node, i: int, n: str, Xs) -> torch.Tensor:
        """``tree``'s scores of linear ``(i, n)``'s sampled rows: the row-local parts of the tree
        on those rows alone, a column-reading operator's operand on the whole weight (see
        :func:`~pzshell.lang.evaluate`'s ``rows``)."""
        W, G, X, S = self._leaves(tree, i, n, None, Xs)
        return evaluate(tree, W, G=G, X=X, S=S, rows=self.rows[(i, n)])

    @torch.no_grad()
    def screen(self, tree: Node) -> dict:
        """The proxy stage: the mean log relative output error of the sampled rows' masks (with
        ``reconstruct``: the log gradient-weighted relative error after SparseGPT's loop), per
        setting and combined (their mean), and the hash of those masks. No forward pass. Never
        raises for a bad candidate: it gets the worst value and a reason."""
        out: dict = {"proxy": None, "mask_hash": None, "reason": None, "settings": {}}
        if self.settings.proxy_rows == 0:
            raise MetricError("the proxy stage is off (proxy_rows = 0)")
        with _scored(out):
            h = hashlib.blake2b(digest_size=10)
            logs = {p.label: 0.0 for p in self.pairs}
            errs = {p.label: 0.0 for p in self.pairs}  # iterative: the weighted sums
            for i, n, _ in self.linears:
                rows = self.rows[(i, n)]
                W = self.dense[(i, n)][rows]
                H = self.H[stat_key(n, i)]
                memo: dict[int, torch.Tensor] = {}  # settings that share X share the scores
                for p in self.pairs:
                    ratio = self.block_ratios[p.label][i]
                    if self.iterative:  # the error left after SparseGPT's update, weighted
                        new, mask = self._iterative(tree, i, n, p, ratio, rows)
                        new = self._refit(W, new, mask, H)
                        D = (W.float() - new) * self.row_weight[(i, n)]
                        errs[p.label] += output_error(D, H)
                    else:
                        key, Xs = self._x_for(tree, p)
                        if key not in memo:
                            memo[key] = self._sampled_scores(tree, i, n, Xs)
                        mask = make_mask(memo[key], ratio, p.n, p.m)
                        if self.settings.refit:  # the error the refitted kept weights leave
                            new = self._refit(W, W.masked_fill(mask, 0), mask, H)
                            err = output_error(W.float() - new, H)
                        else:
                            err = output_error(W.float() * mask, H)
                        logs[p.label] += math.log(max(err / self.ref[(i, n)], 1e-12))
                    h.update(np.packbits(mask.numpy()).tobytes())
            if self.iterative:
                ref = max(sum(self.ref.values()), 1e-30)
                per = {k: math.log(max(v / ref, 1e-12)) for k, v in errs.items()}
            else:
                per = {k: v / len(self.linears) for k, v in logs.items()}
            if not all(math.isfinite(v) for v in per.values()):
                raise DegenerateMetric("the proxy is not finite")
            out["settings"] = {k: {"proxy": round_fitness(v)} for k, v in per.items()}
            out["proxy"] = round_fitness(sum(per.values()) / len(per))
            out["mask_hash"] = h.hexdigest()
            out["stage"] = "screened"
        return out

    # ---- the perplexity stages -----------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(
        self, tree: Node, p: Setting, memo: dict | None = None, ratios: list[float] | None = None
    ) -> None:
        """The candidate's one-shot masks at setting ``p`` (from that setting's statistics),
        applied in place; :meth:`restore` undoes it. ``memo`` keeps the last scores, so that
        the settings (and stages) that share them compute them once. ``ratios``: each block's
        sparsity instead of the setting's allocation (the allocation search's candidates).
        Iterative (``reconstruct``): the weights SparseGPT's loop leaves, linear by linear."""
        ratios = self.block_ratios[p.label] if ratios is None else ratios
        if self.iterative:
            for i, n, lin in self.linears:
                new, mask = self._iterative(tree, i, n, p, ratios[i])
                lin.weight.copy_(self._refit(self.dense[(i, n)], new, mask, self._h(i, n)))
            return
        key, Xs = self._x_for(tree, p)
        memo = {} if memo is None else memo
        if key not in memo:
            memo.clear()  # one set of whole-model scores at a time
            scores = memo[key] = {}
            for i, n, _ in self.linears:
                W, G, X, S = self._leaves(tree, i, n, None, Xs)
                scores[(i, n)] = evaluate(tree, W, G=G, X=X, S=S)
        for i, n, lin in self.linears:
            mask = make_mask(memo[key][(i, n)], ratios[i], p.n, p.m)  # per-row groups
            lin.weight.copy_(self.dense[(i, n)]).masked_fill_(mask, 0)  # no temporary
            if self.settings.refit:
                W = self.dense[(i, n)]
                lin.weight.copy_(self._refit(W, lin.weight, mask, self._h(i, n)))

    def _h(self, i: int, n: str) -> torch.Tensor:
        return self.H[stat_key(n, i)]

    def _refit(self, W0, W, mask, H) -> torch.Tensor:
        """``W`` (pruned with ``mask`` from ``W0``) with its kept weights refitted by least
        squares on the cached ``H``, when the settings ask for it; else ``W`` as it is."""
        if not self.settings.refit:
            return W
        new, _ = least_squares_refit(W0, W, mask, H, iters=self.settings.refit)
        return new.to(W0.dtype)

    @torch.no_grad()
    def restore(self) -> None:
        for i, n, lin in self.linears:
            lin.weight.copy_(self.dense[(i, n)])

    def run(self, tree: Node, threshold: float | None) -> dict:
        """Cheap stage (if enabled), then the full stage unless the cheap value misses
        ``threshold``; every setting in turn, the masks made once per setting. Never raises for
        a bad candidate: it gets the worst fitness and a reason."""
        out: dict = {"cheap": None, "full": None, "reason": None, "settings": {}}
        per = out["settings"]
        with _scored(out):
            memo: dict = {}  # settings and stages that share the scores compute them once
            stages = ["cheap"] if self.cheap is not None else []
            stages.append("full")
            for stage in stages:
                vals = []
                for p in self.pairs:
                    try:
                        self.apply_masks(tree, p, memo)
                        v = round_fitness(self.heldout_perplexity(stage).ppl)
                    finally:
                        self.restore()
                    if not math.isfinite(v):
                        raise DegenerateMetric(f"perplexity at {p.label} is not finite")
                    per.setdefault(p.label, {})[stage] = v
                    vals.append(v)
                out[stage] = round_fitness(mean_log(vals))
                if stage == "cheap" and threshold is not None and out["cheap"] > threshold:
                    out.update(stage="cheap", fitness=WORST)
                    return out
            out.update(stage="full", fitness=out["full"])
        return out

    def final_fitness(self, tree: Node) -> dict:
        """The full layer-sequential prune with this tree at every setting, perplexity on the
        finals' held-out windows (combined as :func:`mean_log`), and each window's mean NLL."""
        t0 = time.perf_counter()
        s = self.settings
        per: dict = {}
        try:
            vals = []
            for p in self.pairs:
                cfg = PruneConfig(
                    "metric",
                    p.ratio,
                    p.sparsity_type,
                    metric=tree,
                    iterative=self.iterative,
                    allocation=s.allocation,
                    owl_lambda=s.owl_lambda,
                    refit=s.refit,
                )
                try:
                    prune_model(self.lm.model, cfg, self.calib_ids, self.G)
                    res = self.heldout_perplexity("final")
                finally:
                    self.restore()
                v = round_fitness(res.ppl)
                # each window's mean NLL: the finals are compared with the reference rule's
                # window by window (:func:`.ranking.choose_best`)
                per[p.label] = {"final": v, "window_nll": [round(x, 6) for x in res.window_nll]}
                vals.append(v)
            value, reason = round_fitness(mean_log(vals)), None
        except Exception as e:
            value, reason = WORST, f"{type(e).__name__}: {e}"
        return {
            "final": value,
            "final_tokens": self.final_heldout.numel(),
            "reason": reason,
            "settings": per,
            "seconds": time.perf_counter() - t0,
        }
