"""The genetic-programming search over pruning metrics.

Batch steady-state: each batch of ``batch`` new children (distinct pruning rules never seen
before) is evaluated asynchronously — a worker that finishes takes the next candidate at once —
and results are integrated *in candidate order* when the batch completes, followed by
(mu + lambda) survival. The trajectory therefore depends only on the seed and the settings,
never on the backend, the number of workers or their timing, which is what makes
``--resume`` reproduce an uninterrupted run exactly and lets the Ray and process backends
agree with the in-process one.

Every evaluated candidate is appended to ``candidates.jsonl`` the moment it is known; the RNG
and population are saved after every batch. On resume, the last saved state is restored and
the interrupted batch is regenerated deterministically; its candidates already in the log are
not evaluated again. Finals already in the log are reused, not recomputed, and the state says
when the final stage is done: resuming a finished run changes nothing.

Why this module is longer than the others (~570 lines): it is one class, the driver, whose
methods share the run's state (population, RNG, log, backend); the checks of a run directory
already live in :mod:`.runlog`, the operators in :mod:`.gp`, the ranking in :mod:`.ranking`.

A resumed directory is checked before anything runs (:mod:`.runlog`): settings against their
digest (kept in settings.json and in state.json), the state against the log (every candidate
the state counts must be logged), and every file for damage; each problem is a
:class:`SearchError` naming the file. A fresh run's directory is created only once its backend
is up, so settings that cannot run leave nothing behind.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..engine.stats import save_gradients
from ..lang import Node, load_metric, to_infix, to_json_obj
from ..lang.algebra import canonical, simplify
from ..lang.random_trees import ramped_half_and_half, random_tree
from ..lang.tree import from_json_obj, save_tree_file
from .backends import InProcessBackend, ProcessBackend, RayBackend, Task
from .cache import FitnessCache
from .events import CandidateDone, SearchFinished, SearchMessage, SearchProgress, SearchStarted
from .fitness import WORST
from .gp import crossover, mutate, tournament
from .ranking import (
    choose_best,
    finalists,
    multifidelity,
    pareto_front,
    pareto_records,
    percentiles,
    selection_key,
    sort_key,
    spearman,
)
from .runlog import (
    GRADIENTS_NAME,
    LOG_NAME,
    SETTINGS_NAME,
    STATE_NAME,
    RunLog,
    check_consistent,
    check_run_dir,
    load_settings,
    load_state,
)
from .settings import KNOWN_SEEDS, SearchError, SearchSettings, settings_diff

REFERENCE_ID = -1  # the task id of the reference rule's final


class Search:
    """A resumable GP search. Drive it with :meth:`run`; control it from another thread with
    :meth:`pause`, :meth:`resume`, :meth:`stop` and :meth:`inject`."""

    def __init__(
        self,
        settings: SearchSettings,
        out_dir: str | Path,
        *,
        backend: str = "in-process",
        workers: int = 1,
        ray_address: str | None = None,
        device: str | None = "cpu",
        threads: int | None = None,
        cache: FitnessCache | None = None,
        on_event: Callable[[object], None] | None = None,
        resume: bool = False,
    ):
        # everything is checked before anything is written: a setting that cannot run, an
        # option out of range, a run directory that is a file or damaged all fail here, and a
        # fresh run's directory is only made once its backend is up (model, text, statistics)
        settings.validate()
        _check_options(backend, workers, threads)
        self.s = settings
        self.log = RunLog(out_dir)
        self.out_dir = Path(out_dir)
        self.on_event = on_event or (lambda ev: None)
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._inject: list[Node] = []
        self._evaluated_at_start = 0
        self._lock = threading.Lock()
        self.backend_name, self.workers, self.ray_address = backend, workers, ray_address
        self.device, self.threads = device, threads
        self.cache = cache
        check_run_dir(out_dir, resume=resume)
        self._state: dict | None = None
        self._records: list[dict] = []
        self._warnings: list[str] = []
        if resume:
            old, _ = load_settings(out_dir)
            if old.identity() != settings.identity():
                diff = settings_diff(settings.identity(), old.identity())
                raise SearchError(
                    f"cannot resume {out_dir}: it was run with other settings ({', '.join(diff)} "
                    f"differ); resume with the same settings or start a new --out directory"
                )
            self._records, self._warnings = self.log.read()
            self._state = load_state(out_dir)
            if self._state is not None:
                check_consistent(out_dir, self._state, self._records, settings.digest())
        elif any((self.out_dir / n).exists() for n in (LOG_NAME, STATE_NAME)):
            raise SearchError(
                f"{out_dir} already holds a search; use --resume {out_dir} or another --out"
            )
        self.context = ""
        # the reference rule's final (set by the final stage; None without one)
        self.reference_final: dict | None = None

    @property
    def finished(self) -> bool:
        """A resumed run with nothing left to do: its final stage is done, and its budget was
        reached (or no new candidate could be made) with the same final-top."""
        st = self._state
        if not st or not st.get("finished"):
            return False
        spent = st["evaluations"] >= self.s.budget or st.get("exhausted", False)
        same = st.get("final_top", self.s.final_top) == self.s.final_top
        # another reference needs its own final (a state from before references: the same)
        return spent and same and st.get("reference", self.s.reference) == self.s.reference

    def options(self) -> dict:
        """How this run is run (not what it finds): kept in settings.json, so that a resumed
        run is run the same way unless told otherwise."""
        return {
            "backend": self.backend_name,
            "workers": self.workers,
            "ray_address": self.ray_address,
            "device": self.device,
            "threads": self.threads,
            "cache": self.cache is not None,
        }

    # ---- control (thread-safe) ------------------------------------------------------------------
    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    def inject(self, formula: str | Node) -> Node:
        tree = formula if isinstance(formula, Node) else load_metric(formula)
        with self._lock:
            self._inject.append(tree)
        return tree

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    # ---- helpers --------------------------------------------------------------------------------
    def _make_backend(self):
        f = self.s.fitness
        if self.backend_name == "ray":
            return RayBackend(
                f, self.workers, self.ray_address, device=self.device, threads=self.threads
            )
        if self.backend_name == "processes" and self.workers > 1:
            return ProcessBackend(f, self.workers, device=self.device, threads=self.threads)
        return InProcessBackend(f, device=self.device, threads=self.threads)

    def _fits(self, t: Node) -> bool:
        return t.depth <= self.s.max_depth and t.size <= self.s.max_size and bool(t.terminals)

    def _child(self, rng: random.Random, pop: list[dict]) -> tuple[Node, str, list[int]]:
        s = self.s
        if s.strategy == "random":  # the ablation baseline: no parents at all
            depth = rng.randint(2, s.init_depth)
            method = rng.choice(("full", "grow"))
            tree = random_tree(
                rng, depth, method, s.op_names, s.terminal_names, s.p_const, min_depth=min(3, depth)
            )
            return tree, "random", []
        r = rng.random()

        def key(rec: dict) -> tuple:
            return selection_key(rec, s.parsimony)

        a = tournament(rng, pop, s.tournament, key)
        if r < s.p_crossover:
            b = tournament(rng, pop, s.tournament, key)
            child = crossover(rng, a["_tree"], b["_tree"])
            return child, "crossover", [a["id"], b["id"]]
        child = mutate(rng, a["_tree"], s.max_depth, s.op_names, s.p_const, s.terminal_names)
        return child, "mutation", [a["id"]]

    def _skip_message(self, startup: dict) -> SearchMessage:
        """What ``--heldout-skip`` leaves out of the held-out perplexities; a warning when it
        matches no held-out token (a typo in the piece changes nothing, silently otherwise)."""
        pieces = self.s.fitness.heldout_skip
        (a, n), (b, m) = startup["heldout_skipped"], startup["final_skipped"]
        if not a and not b:
            return SearchMessage(
                f"--heldout-skip {pieces!r} matches no held-out token of {self.s.fitness.calib}: "
                f"every token is scored (is the piece written as the text writes it?)",
                "warning",
            )
        return SearchMessage(
            f"--heldout-skip {pieces!r}: {a:,} of {n:,} held-out tokens ({a / n:.1%}) and {b:,} "
            f"of the finals' {m:,} ({b / m:.1%}) are read as context but not scored"
        )

    # ---- the run --------------------------------------------------------------------------------
    def run(self) -> SearchFinished:
        s = self.s
        all_records, warnings = self._records, self._warnings
        for w in warnings:
            self.on_event(SearchMessage(w, "warning"))
        final_logged = {r["canonical"]: r for r in all_records if r.get("stage") == "final"}
        records = [r for r in all_records if r.get("stage") != "final"]
        logged = {r["canonical"]: r for r in records}
        state = self._state
        done_batches = state["batch"] if state else 0
        # candidates of batches completed before the last saved state; those of an interrupted
        # batch stay in `logged` only, to be reused when the batch is regenerated
        records = [r for r in records if r.get("batch", 0) < done_batches]
        if self.finished:
            return self._already_finished(state, records, final_logged)
        self._t_run = time.perf_counter()  # the time limit counts model and statistics too
        self.on_event(
            SearchMessage(
                f"loading {s.fitness.model} and its statistics on the calibration text "
                f"(computed once, then read from the cache) ...",
                topic="statistics",
            )
        )
        backend = self._make_backend()
        self.startup = dict(getattr(backend, "startup", {}))
        if self.startup:
            cached = "read from the cache" if self.startup["statistics_cached"] else "computed"
            self.on_event(
                SearchMessage(
                    f"model loaded in {self.startup['load_seconds']:.1f} s; statistics {cached} "
                    f"in {self.startup['statistics_seconds']:.1f} s",
                    topic="statistics",
                )
            )
        if "heldout_skipped" in self.startup:
            self.on_event(self._skip_message(self.startup))
        try:
            # the backend is up (model, text, statistics): the run directory can be written
            self.log.create()
            self.log.write_json_if_changed(
                SETTINGS_NAME,
                {"settings": s.to_dict(), "digest": s.digest(), "options": self.options()},
            )
            self._write_gradients(backend)
            return self._run(backend, state, records, logged, final_logged)
        finally:
            backend.close()

    def _write_gradients(self, backend) -> None:
        """The G every candidate is scored with, as ``grads.pth`` in the run directory (the
        published gradient file format): a rule that reads G is pruned with this file to get the
        masks the search scored (G's scale grows with its windows, and ``tanh(G)`` or ``G + W``
        see that). Rewritten on resume: it is the G of the statistics this session uses."""
        grads = getattr(backend, "gradients", None)
        if grads is None:
            return
        save_gradients(grads, self.out_dir / GRADIENTS_NAME)
        backend.gradients = None  # the backend's workers hold their own

    def _run(self, backend, state, records, logged, final_logged) -> SearchFinished:
        s = self.s
        ev = getattr(backend, "ev", None)
        self.context = f"{s.fitness.digest()}"
        if ev is not None:
            self.context += f"-{ev.fingerprint}-{ev.text_digest}"
        t_start = time.perf_counter()
        self.on_event(SearchStarted(str(self.out_dir), s.budget, len(records)))

        if state is None:
            rng = random.Random(s.seed)
            pop: list[dict] = []
            batch_no = 0
            init = self._initial_trees(rng)
        else:
            rng = random.Random()
            rng.setstate(_to_state(state["rng"]))
            by_id = {r["id"]: r for r in records}
            pop = [self._rehydrate(by_id[i]) for i in state["population"]]
            batch_no = state["batch"]
            init = []
        c = self._counts = {
            "evaluations": state["evaluations"] if state else 0,
            "cache_hits": state["cache_hits"] if state else 0,
            "mask_hits": state.get("mask_hits", 0) if state else 0,
            "full": state.get("full", 0) if state else 0,
            "stale": state.get("stale", 0) if state else 0,
            "best": state.get("best", None) if state else None,
            "restarts": state.get("restarts", 0) if state else 0,
        }
        self._evaluated_at_start = c["evaluations"]  # the rate counts this session's only
        self._full_at_start = c["full"]
        next_id = state["next_id"] if state else 0
        exhausted = bool(state and state.get("exhausted"))
        history: list[dict] = [self._rehydrate(r) for r in records]
        seen_keys = {r["canonical"] for r in records}
        masks = _mask_index(history)
        stopped = False

        def saved_state(**extra) -> dict:
            return {
                "batch": batch_no,
                "rng": _from_state(rng.getstate()),
                "population": [p["id"] for p in pop],
                "next_id": next_id,
                "settings_digest": s.digest(),
                "exhausted": exhausted,
                **{k: c[k] for k in ("evaluations", "cache_hits", "mask_hits", "full")},
                **{k: c[k] for k in ("stale", "best", "restarts")},
                **extra,
            }

        while c["evaluations"] < s.budget and not exhausted:
            if self._stop.is_set():
                stopped = True
                break
            if s.time_limit and pop and time.perf_counter() - self._t_run > s.time_limit:
                # a budget, not an interruption: the final re-runs still happen
                self.on_event(SearchMessage("time limit reached"))
                break
            while self._pause.is_set() and not self._stop.is_set():
                time.sleep(0.1)
            if pop and s.stagnation and c["stale"] >= s.stagnation:
                pop, init = self._restart(rng, pop)
                c["stale"] = 0
                c["restarts"] += 1
                self.on_event(
                    SearchMessage(
                        f"no better fitness in {s.stagnation} batches: restart {c['restarts']} "
                        f"(the Pareto front kept, {len(init)} fresh random formulas)"
                    )
                )
            want = min(
                max(s.batch, len(init)) if pop else s.population, s.budget - c["evaluations"]
            )
            batch, rng_hits, next_id = self._make_batch(
                rng, pop, init, want, seen_keys, next_id, batch_no
            )
            init = []
            c["cache_hits"] += rng_hits
            if not batch:
                # no progress is possible: stop instead of saving empty batches forever
                exhausted = True
                self.on_event(
                    SearchMessage(
                        "no new candidate could be made (every child was seen before); the "
                        "search ends here",
                        "warning",
                    )
                )
                self.log.write_json(STATE_NAME, saved_state())
                break
            results = self._evaluate_batch(backend, batch, logged, history, masks, t_start)
            if results is None:
                stopped = True
                break  # the batch is incomplete: state stays at its start, resume redoes it
            new = [self._rehydrate(results[cand["id"]]) for cand in batch]
            c["evaluations"] += sum(1 for r in new if not r.get("cached"))
            c["mask_hits"] += sum(1 for r in new if r.get("hit") == "mask" and not r.get("cached"))
            c["full"] += sum(
                1
                for r in new
                if r.get("full") is not None and not r.get("hit") and not r.get("cached")
            )
            history.extend(new)
            for r in new:
                logged[r["canonical"]] = r
                if r.get("mask_hash") and not r.get("hit"):
                    masks.setdefault(r["mask_hash"], r)
            pop = self._survive(pop + new)
            self._note_progress(history)
            batch_no += 1
            self.log.write_json(STATE_NAME, saved_state())
            self._progress(history, t_start)
        self.search_seconds = time.perf_counter() - t_start
        if stopped:
            return self._finish(history, [], c["evaluations"], stopped)
        # the final stage: finals already in the log (a kill during or after it) are reused
        t_final = time.perf_counter()
        finals = self._finals(backend, history, final_logged)
        self.final_seconds = time.perf_counter() - t_final
        if finals:
            ref = self.reference_final
            extra = ref is not None and all(f["canonical"] != ref["canonical"] for f in finals)
            self.on_event(
                SearchMessage(
                    f"{len(finals)} layer-sequential prune{'s' if len(finals) != 1 else ''}"
                    f"{' and the reference' if extra else ''} in {self.final_seconds:.0f} s "
                    f"(after the search loop)",
                    topic="finals",
                )
            )
        fin = self._finish(history, finals, c["evaluations"], stopped)
        self.log.write_json(
            STATE_NAME, saved_state(finished=True, final_top=s.final_top, reference=s.reference)
        )
        return fin

    # ---- one batch: the fidelity ladder ---------------------------------------------------------
    def _evaluate_batch(self, backend, batch, logged, history, masks, t_start) -> dict | None:
        """Every candidate of ``batch`` up the ladder; ``{id: record}``, or None when stopped
        before the batch was complete. The gates come from the history before the batch and
        mask equivalences are resolved in candidate order, so the outcome does not depend on
        which worker finished first."""
        s, cache = self.s, self.cache
        results: dict[int, dict] = {}
        proxy_on = s.fitness.proxy_rows > 0
        fresh = []
        for cand in batch:
            key = cand["canonical"]
            if key in logged:  # evaluated before an interruption: reuse, don't repeat
                results[cand["id"]] = logged[key]
                continue
            hit = cache.get(self.context, key) if cache is not None else None
            if hit is not None:
                rec = dict(cand, **hit, worker="cache", seconds=0.0, cached=True, hit="cache")
                results[cand["id"]] = rec
                self._counts["cache_hits"] += 1
                self._record(rec)
                continue
            fresh.append(cand)
        # stage 1, the proxy (no forward pass): every fresh candidate
        screened: dict[int, dict] = {}
        if proxy_on and fresh:
            tasks = [Task(cand["id"], cand["_tree"], kind="screen") for cand in fresh]
            for res in backend.map_unordered(tasks):
                screened[res["cid"]] = res
                self._progress(history, t_start, screening=len(screened))
                if self._stop.is_set():
                    return None
        # gates and mask equivalences, in candidate order
        gate = self._proxy_threshold(history) if proxy_on else None
        in_batch: dict[str, int] = {}  # mask hash -> the id of its first candidate in the batch
        twins: dict[int, int] = {}  # id -> the id of the earlier candidate with its masks
        promoted = []
        for cand in batch:
            cid = cand["id"]
            if cid in results:  # reused: its masks still count as seen, in order
                h = results[cid].get("mask_hash")
                if h and results[cid].get("hit") != "mask":
                    in_batch.setdefault(h, cid)
                continue
            sc = screened.get(cid)
            if sc is None:
                promoted.append(cand)
                continue
            if sc["stage"] == "degenerate":
                results[cid] = self._record(self._merge(cand, sc, None, gate))
                if cache is not None:
                    cache.put(self.context, cand["canonical"], _cacheable(results[cid]))
                if self._stop.is_set():
                    return None
                continue
            h = sc["mask_hash"]
            if h in masks:
                results[cid] = self._record(self._twin(cand, sc, masks[h], gate))
                if self._stop.is_set():
                    return None
                continue
            if h in in_batch:
                twins[cid] = in_batch[h]
                continue
            in_batch[h] = cid
            if gate is not None and sc["proxy"] > gate:
                rec = self._merge(cand, sc, None, gate)
                rec.update(stage="proxy", fitness=WORST)
                results[cid] = self._record(rec)
                if self._stop.is_set():
                    return None
                continue
            promoted.append(cand)
        if gate is not None:  # at most promote_max of the batch: the best proxies, in order
            cap = max(1, math.ceil(s.promote_max * len(batch)))
            ranked = sorted(
                (c for c in promoted if c["id"] in screened),
                key=lambda c: (screened[c["id"]]["proxy"], c["id"]),
            )
            for cand in ranked[cap:]:
                rec = self._merge(cand, screened[cand["id"]], None, gate)
                rec.update(stage="proxy", fitness=WORST, reason="outside the batch's best")
                results[cand["id"]] = self._record(rec)
            cut = {c["id"] for c in ranked[cap:]}
            promoted = [c for c in promoted if c["id"] not in cut]
        if self._stop.is_set() and len(results) + len(twins) < len(batch):
            return None
        # stage 2 and 3, perplexity: the promoted only
        threshold = self._threshold(history)
        by_id = {cand["id"]: cand for cand in batch}
        tasks = [Task(cand["id"], cand["_tree"], threshold) for cand in promoted]
        for res in backend.map_unordered(tasks):
            cand = by_id[res["cid"]]
            rec = self._merge(cand, screened.get(cand["id"]), res, gate)
            rec["threshold"] = threshold
            results[cand["id"]] = self._record(rec)
            if cache is not None and rec["stage"] in ("full", "degenerate"):
                cache.put(self.context, rec["canonical"], _cacheable(rec))
            self._progress(history + list(results.values()), t_start, screening=len(screened))
            if self._stop.is_set():
                break
        if self._stop.is_set() and len(results) + len(twins) < len(batch):
            return None
        for cid, rep_id in twins.items():
            results[cid] = self._record(
                self._twin(by_id[cid], screened[cid], results[rep_id], gate)
            )
        return results

    @staticmethod
    def _merge(cand: dict, screen: dict | None, res: dict | None, gate) -> dict:
        """A candidate's log record from its stages' results."""
        sc, res = screen or {}, res or {}
        per: dict = {}
        for part in (sc.get("settings") or {}, res.get("settings") or {}):
            for label, vals in part.items():
                per.setdefault(label, {}).update(vals)
        last = res or sc
        rec = dict(
            cand,
            proxy=sc.get("proxy"),
            mask_hash=sc.get("mask_hash"),
            cheap=res.get("cheap"),
            full=res.get("full"),
            fitness=last.get("fitness", WORST),
            stage=last.get("stage", "degenerate"),
            reason=last.get("reason"),
            settings=per,
            screen_seconds=round(sc["seconds"], 3) if sc else None,
            eval_seconds=round(res["seconds"], 3) if res else None,
            seconds=round(sc.get("seconds", 0.0) + res.get("seconds", 0.0), 3),
            worker=last.get("worker"),
            cached=False,
            gate=gate,
        )
        return rec

    def _twin(self, cand: dict, screen: dict, rep: dict, gate) -> dict:
        """A candidate whose sampled masks equal ``rep``'s: ``rep``'s fitness, no perplexity
        (kept in the fitness cache when it is a final one)."""
        rec = self._merge(cand, screen, None, gate)
        for k in ("cheap", "full", "fitness", "stage", "reason"):
            rec[k] = rep.get(k)
        rec["fitness"] = WORST if rec["fitness"] is None else rec["fitness"]
        rec.update(hit="mask", equivalent_to=rep["id"])
        if self.cache is not None and rec["stage"] in ("full", "degenerate"):
            self.cache.put(self.context, rec["canonical"], _cacheable(rec))
        return rec

    def _proxy_threshold(self, history: list[dict]) -> float | None:
        """Proxy-stage gate: the ``proxy_quantile`` of the distinct proxy values seen so far."""
        vals = sorted(
            r["proxy"]
            for r in history
            if r.get("proxy") is not None and not r.get("hit") and math.isfinite(r["proxy"])
        )
        if len(vals) < self.s.population // 2:
            return None  # too little information yet: everyone goes on
        return vals[min(len(vals) - 1, int(self.s.proxy_quantile * len(vals)))]

    def _restart(self, rng: random.Random, pop: list[dict]) -> tuple[list[dict], list]:
        """Stagnation: keep the Pareto front (at most half the population), replace the rest
        by fresh random formulas (evaluated in the next batch)."""
        s = self.s
        front = pareto_records(pop)[: max(1, s.population // 2)]
        n = s.population - len(front)
        fresh = ramped_half_and_half(
            rng, n, s.init_depth, s.op_names, s.terminal_names, p_const=s.p_const
        )
        return front, [(t, "restart") for t in fresh]

    def _note_progress(self, history: list[dict]) -> None:
        c = self._counts
        ok = [r["fitness"] for r in history if r["stage"] == "full"]
        best = min(ok) if ok else None
        if best is not None and (c["best"] is None or best < c["best"]):
            c["best"], c["stale"] = best, 0
        else:
            c["stale"] += 1

    def _already_finished(self, state, records, final_logged) -> SearchFinished:
        """A finished run, resumed with nothing to do: its result, and no file changed."""
        history = [self._rehydrate(r) for r in records]
        finals = self._finals(None, history, final_logged)
        self.on_event(
            SearchMessage(
                f"{self.out_dir}: this search is already finished ({state['evaluations']} "
                f"evaluations of a budget of {self.s.budget}, final stage done); nothing to do "
                f"(give a larger --budget to continue it)"
            )
        )
        best, verdict = self._choose(history, finals)
        fin = self._result(
            best, verdict, finals, state["evaluations"], False, already_finished=True
        )
        self.on_event(fin)
        return fin

    def _initial_trees(self, rng: random.Random) -> list[tuple[Node, str]]:
        s = self.s
        trees: list[tuple[Node, str]] = []
        if s.seed_known:
            known = [load_metric(f) for f in KNOWN_SEEDS]
            leaves = set(s.terminal_names)
            trees += [(t, "known") for t in known if t.terminals <= leaves]
        trees += [(load_metric(f), "seed") for f in s.seed_formulas]
        trees = [
            (t, o) for t, o in trees if all(n.data in s.op_names for _, n in t.walk() if n.is_op)
        ]
        n_random = max(0, s.population - len(trees))
        extra = ramped_half_and_half(
            rng, n_random * 3, s.init_depth, s.op_names, s.terminal_names, p_const=s.p_const
        )
        trees += [(t, "init") for t in extra]
        return trees

    def _make_batch(self, rng, pop, init, want, seen_keys, next_id, batch_no):
        """``want`` candidates with pruning rules not seen before (duplicates are cache hits)."""
        out: list[dict] = []
        hits = 0
        with self._lock:
            injected, self._inject = self._inject, []
        queue = [(t, "injected", []) for t in injected] + [(t, o, []) for t, o in init]
        tries = 0
        while len(out) < want and tries < 50 * max(want, 1):
            tries += 1
            if queue:
                tree, origin, parents = queue.pop(0)
            elif pop:
                tree, origin, parents = self._child(rng, pop)
            else:
                break
            tree = simplify(tree)
            if origin not in ("known", "seed", "injected") and not self._fits(tree):
                continue
            key = canonical(tree).key
            if key in seen_keys:
                if origin in ("crossover", "mutation", "random"):
                    hits += 1
                continue
            seen_keys.add(key)
            out.append(
                {
                    "id": next_id,
                    "batch": batch_no,
                    "formula": to_infix(tree),
                    "canonical": key,
                    "size": tree.size,
                    "depth": tree.depth,
                    "origin": origin,
                    "parents": parents,
                    "tree": to_json_obj(tree),
                    "_tree": tree,
                }
            )
            next_id += 1
        return out, hits, next_id

    def _threshold(self, history: list[dict]) -> float | None:
        """Cheap-stage gate: the ``promote_quantile`` of cheap values seen so far."""
        if not self.s.fitness.cheap_windows:
            return None
        vals = sorted(
            r["cheap"] for r in history if r.get("cheap") is not None and math.isfinite(r["cheap"])
        )
        if len(vals) < self.s.population // 2:
            return None  # too little information yet: everyone gets the full stage
        return vals[min(len(vals) - 1, int(self.s.promote_quantile * len(vals)))]

    def _survive(self, pool: list[dict]) -> list[dict]:
        """(mu + lambda) survival: one candidate per pruning rule *and* per mask hash (novelty:
        equal masks are one candidate, the smallest formula kept), the Pareto front of fitness
        vs size first (up to a quarter of the population), then the best by fitness with
        parsimony pressure."""
        s = self.s

        def key(r: dict) -> tuple:
            return selection_key(r, s.parsimony)

        best: dict[str, dict] = {}
        for r in pool:
            ident = r.get("mask_hash") or r["canonical"]
            if ident not in best or key(r) < key(best[ident]):
                best[ident] = r
        kept = list(best.values())
        front = pareto_records(kept)[: max(1, s.population // 4)]
        ids = {r["id"] for r in front}
        rest = sorted((r for r in kept if r["id"] not in ids), key=key)
        return sorted(front + rest[: s.population - len(front)], key=key)

    def _record(self, rec: dict) -> dict:
        out = {k: v for k, v in rec.items() if not k.startswith("_")}
        out["fitness"] = _json_num(out.get("fitness"))
        self.log.append(out)
        self.on_event(CandidateDone(out))
        return rec

    @staticmethod
    def _rehydrate(rec: dict) -> dict:
        r = dict(rec)
        r["fitness"] = WORST if rec.get("fitness") is None else rec["fitness"]
        r["_tree"] = from_json_obj(rec["tree"])
        return r

    def _progress(self, history, t_start, screening: int = 0) -> None:
        """A progress event; ``screening``: candidates of the current batch screened so far."""
        c = self._counts
        ok = [r for r in history if r["stage"] == "full"]
        best = min(ok, key=sort_key) if ok else None
        hours = max((time.perf_counter() - t_start) / 3600, 1e-9)
        new = c["evaluations"] - self._evaluated_at_start + screening
        full = c["full"] - self._full_at_start
        own = [r for r in history if not r.get("cached")][-200:]
        stage = {
            name: percentiles([r[k] for r in own if r.get(k) is not None])["p50"]
            for name, k in (("screen", "screen_seconds"), ("eval", "eval_seconds"))
        }
        self.on_event(
            SearchProgress(
                c["evaluations"] + screening,
                self.s.budget,
                c["cache_hits"],
                new / hours / 60 if new > 0 else 0.0,
                best["fitness"] if best else WORST,
                best["formula"] if best else "-",
                pareto_front(history),
                self.paused,
                full=c["full"],
                mask_hits=c["mask_hits"],
                rates={"screened": new / hours, "full": full / hours},
                restarts=c["restarts"],
                stage_seconds=stage,
            )
        )

    def _finals(self, backend, history: list[dict], logged: dict[str, dict]) -> list[dict]:
        """The top ``final_top`` re-run with a full layer-sequential prune; a final already in
        the log (keyed by its pruning rule) is reused, never recomputed nor logged twice."""
        top, twins = finalists(history, self.s.final_top)
        finals = [logged[r["canonical"]] for r in top if r["canonical"] in logged]
        todo = [r for r in top if r["canonical"] not in logged]
        if todo and backend is not None:
            if twins:
                said = "; ".join(f"{a['formula']} (as {b['formula']})" for a, b in twins)
                self.on_event(
                    SearchMessage(
                        f"{len(twins)} with the held-out fitness of a better-ranked rule (the "
                        f"same masks in effect) left out of the finals: {said}",
                        topic="finals",
                    )
                )
            self.on_event(
                SearchMessage(
                    f"re-running the top {len(todo)} with a full layer-sequential prune, "
                    f"judged on up to {self.s.fitness.final_windows} held-out windows",
                    topic="finals",
                )
            )
        ref = self._reference_candidate(history) if top else None  # no finals: no comparison
        self.reference_final = logged.get(ref["canonical"]) if ref else None
        ref_todo = ref is not None and self.reference_final is None
        if ref_todo and any(r["canonical"] == ref["canonical"] for r in todo):
            ref_todo = False  # the reference is a finalist: its final serves both
        if (todo or ref_todo) and backend is not None:
            tasks = [Task(r["id"], r["_tree"], kind="final") for r in todo]
            by_id = {r["id"]: r for r in todo}
            if ref_todo:
                self.on_event(
                    SearchMessage(
                        f"the reference {ref['formula']} is pruned the same way, for a "
                        f"window-by-window comparison",
                        topic="finals",
                    )
                )
                tasks.append(Task(REFERENCE_ID, ref["_tree"], kind="final"))
                by_id[REFERENCE_ID] = ref
            for res in backend.map_unordered(tasks):
                r = by_id[res["cid"]]
                rec = {
                    "id": r["id"],
                    "formula": r["formula"],
                    "canonical": r["canonical"],
                    "fitness": _json_num(res["final"]),
                    "fast_fitness": r.get("fitness"),
                    "final_tokens": res.get("final_tokens"),
                    "stage": "final",
                    "reason": res["reason"],
                    "seconds": round(res["seconds"], 3),
                    "worker": res["worker"],
                    "size": r["size"],
                    "tree": r["tree"],
                    "settings": res.get("settings", {}),
                }
                if res["cid"] == REFERENCE_ID:
                    rec["reference"] = True
                    self.reference_final = rec
                self.log.append(rec)
                self.on_event(CandidateDone(rec))
                if res["cid"] != REFERENCE_ID:
                    finals.append(rec)
        if ref is not None and self.reference_final is None:
            self.reference_final = next(
                (f for f in finals if f["canonical"] == ref["canonical"]), None
            )
        return sorted(
            finals, key=lambda f: (f["fitness"] if f["fitness"] is not None else WORST, f["id"])
        )

    def _reference_candidate(self, history: list[dict]) -> dict | None:
        """The ``reference`` rule as a candidate record (its full-stage one when the search
        evaluated it, as it does Wanda among the known seeds), or None without a reference."""
        if self.s.reference is None:
            return None
        tree = simplify(load_metric(self.s.reference))
        key = canonical(tree).key
        seen = next((r for r in history if r["canonical"] == key), None)
        if seen is not None:
            return seen
        return {
            "id": REFERENCE_ID,
            "formula": to_infix(tree),
            "canonical": key,
            "fitness": None,
            "size": tree.size,
            "tree": to_json_obj(tree),
            "_tree": tree,
        }

    def _choose(self, history: list[dict], finals: list[dict]) -> tuple[dict | None, str]:
        """The answer and the verdict (:func:`.ranking.choose_best`); without finals (a stopped
        search), the best full-stage candidate, compared with nothing."""
        if not finals:
            ranked = sorted((r for r in history if r["stage"] == "full"), key=sort_key)
            return (ranked[0] if ranked else None), ""
        labels = [p.label for p in self.s.fitness.settings()]
        ref = self.reference_final if self.s.reference is not None else None
        if self.s.reference is not None and ref is None:
            return finals[0], "no final of the reference: the best final is the answer"
        return choose_best(finals, ref, labels, self.s.margin)

    def _finish(self, history, finals, evaluated, stopped) -> SearchFinished:
        best, verdict = self._choose(history, finals)
        out = self.out_dir
        if best is not None:
            save_tree_file(from_json_obj(best["tree"]), out / "best.json")
        self.log.write_json(
            "hall_of_fame.json",
            [{"size": s, "fitness": f, "formula": t} for s, f, t in pareto_front(history)],
        )
        summary = self._summary(history, finals, evaluated, stopped)
        summary["best"] = best["formula"] if best else None
        ref = self.reference_final if finals else None
        summary["reference"] = (
            None
            if self.s.reference is None
            else {
                "formula": self.s.reference,
                "margin": self.s.margin,
                "final": ref,
                "best_is_reference": bool(ref and best and best["canonical"] == ref["canonical"]),
            }
        )
        summary["verdict"] = verdict
        self.log.write_json("summary.json", summary)
        try:
            from .plot import plot_history

            # the reference's full-stage record (not its final): the plot's values are full-stage
            full = self._reference_candidate(history)
            line = None
            if full is not None and full.get("fitness") is not None and full["stage"] == "full":
                line = (f"reference {full['formula']} (full stage)", full["fitness"])
            plot_history(history, out / "fitness.png", title=self._plot_title(), reference=line)
        except Exception as e:  # a plot must never cost the results
            self.on_event(SearchMessage(f"could not draw the plot: {e}", "warning"))
        fin = self._result(best, verdict, finals, evaluated, stopped)
        self.on_event(fin)
        return fin

    def _summary(self, history, finals, evaluated, stopped) -> dict:
        """summary.json: the counts, each stage's seconds (p50, p95) and its rank agreement
        with the full stage, the rates of this session, and where the time outside the
        search's budget went (statistics, finals)."""
        c = getattr(self, "_counts", {})
        own = [r for r in history if not r.get("cached")]
        search_s = getattr(self, "search_seconds", None)
        new = evaluated - self._evaluated_at_start
        new_full = c.get("full", 0) - getattr(self, "_full_at_start", 0)
        hours = search_s / 3600 if search_s else None
        stages = {
            "screen": percentiles([r["screen_seconds"] for r in own if r.get("screen_seconds")]),
            "eval": percentiles([r["eval_seconds"] for r in own if r.get("eval_seconds")]),
            "final": percentiles([f["seconds"] for f in finals if f.get("seconds")]),
        }
        by_stage: dict[str, int] = {}
        for r in own:
            by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
        return {
            "strategy": self.s.strategy,
            "settings": self.s.fitness.describe(),
            "evaluations": evaluated,
            "screened": evaluated,
            "full": c.get("full"),
            "outcomes": by_stage,
            "cache_hits": c.get("cache_hits"),
            "mask_hits": c.get("mask_hits"),
            "restarts": c.get("restarts"),
            "stage_seconds": stages,
            **multifidelity(history),
            "search_seconds": round(search_s, 1) if search_s else None,
            "screened_per_hour": round(new / hours, 1) if hours else None,
            "full_per_hour": round(new_full / hours, 1) if hours else None,
            **getattr(self, "startup", {}),
            **self._gradient_summary(),
            "final_seconds": round(getattr(self, "final_seconds", 0.0), 1),
            "stopped": stopped,
            "finals": finals,
            "hall_of_fame": [
                {
                    "size": r["size"],
                    "fitness": r["fitness"],
                    "formula": r["formula"],
                    "settings": r.get("settings", {}),
                }
                for r in pareto_records(history)
            ],
        }

    def _gradient_summary(self) -> dict:
        """Where the G of the candidates' fitness is (``grads.pth``) and what windows it sums."""
        if not (self.out_dir / GRADIENTS_NAME).exists():
            return {}
        f = self.s.fitness
        return {
            "gradient_file": GRADIENTS_NAME,
            "gradient_windows": {
                "calib": f.calib,
                "windows": f.grad_samples,
                "seqlen": f.seqlen,
                "seed": f.seed,
            },
        }

    def _result(self, best, verdict, finals, evaluated, stopped, **kw) -> SearchFinished:
        """The end event for the answer ``best`` and its ``verdict`` (:meth:`_choose`)."""
        return SearchFinished(
            str(self.out_dir),
            best["formula"] if best else "-",
            (best["fitness"] if best and best["fitness"] is not None else WORST),
            evaluated,
            stopped,
            finals,
            verdict=verdict,
            **kw,
        )

    def _plot_title(self) -> str:
        f = self.s.fitness
        how = [" inside SparseGPT's loop"] if f.reconstruct == "iterative" else []
        how += [f" with a {f.refit}-iteration refit"] if f.refit else []
        return (
            f"{f.model}, {f.describe()}, held-out {f.heldout_windows}x{f.heldout_seqlen} "
            f"tokens of {Path(f.calib).name}, seed {self.s.seed}"
            + (f" (pruned{' and'.join(how)})" if how else "")
        )


def _check_options(backend: str, workers, threads) -> None:
    if backend not in ("in-process", "processes", "ray"):
        raise SearchError(f"unknown backend {backend!r} (use 'in-process', 'processes' or 'ray')")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SearchError(f"--workers must be at least 1, got {workers!r}")
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise SearchError(f"threads must be at least 1, got {threads!r}")


def _mask_index(history: list[dict]) -> dict[str, dict]:
    """Mask hash -> the first candidate (not itself a mask hit) with those masks."""
    out: dict[str, dict] = {}
    for r in history:
        if r.get("mask_hash") and r.get("hit") != "mask":
            out.setdefault(r["mask_hash"], r)
    return out


def _json_num(x):
    return None if x is None or not math.isfinite(x) else x


def _cacheable(rec: dict) -> dict:
    keys = ("proxy", "mask_hash", "cheap", "full", "fitness", "stage", "reason", "settings")
    return {k: rec.get(k) for k in keys}


def _from_state(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _to_state(obj) -> tuple:
    return (obj[0], tuple(obj[1]), obj[2])


__all__ = ["Search", "SearchError", "SearchSettings", "sort_key", "spearman"]
