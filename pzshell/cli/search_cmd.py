"""``pzshell search``: evolve pruning metrics with a live display; Ctrl-C leaves it resumable."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..engine.refit import REFIT_ITERS
from ..errors import PzError
from ..lang import load_metric
from ..search import FitnessSettings, Search, SearchSettings
from ..search.backends import local_backend
from ..search.events import CandidateDone, SearchFinished, SearchMessage, SearchProgress
from ..search.runlog import GRADIENTS_NAME, check_run_dir, load_settings
from ..search.settings import reference_rule
from .common import console


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="evolve new pruning metrics with genetic programming (resumable, parallel)",
        description="GP search over metric trees. Fitness is the perplexity after pruning with "
        "the candidate, on held-out windows of the calibration text (never the evaluation set). "
        "Every candidate is appended to OUT/candidates.jsonl as it is known; Ctrl-C stops cleanly "
        "and `pzshell search --resume OUT` continues without repeating an evaluation, with the "
        "original's settings and run options (workers, device, cache) unless given again. "
        "Resuming a finished search says so, changes nothing and exits 0.",
        # an option not given is absent from the namespace: --resume tells given from default
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--model", help="model name or local path (default smollm2)")
    p.add_argument(
        "--sparsity_ratio",
        type=_ratios,
        help="fraction of weights to prune; several, comma-separated (0.5,0.6), make a "
        "multi-setting fitness (default 0.5)",
    )
    p.add_argument(
        "--sparsity_type",
        help="unstructured or N:M; several, comma-separated (unstructured,2:4), make a "
        "multi-setting fitness: the mean log-perplexity over them (default unstructured)",
    )
    p.add_argument("--calib", help="calibration-domain text: a file, or builtin (default)")
    p.add_argument(
        "--calib_windows",
        choices=("prune", "head"),
        help="prune: the calibration windows `pzshell prune` draws with the same --nsamples, "
        "--seqlen and --seed, so the search scores the masks a prune will make, and held-out "
        "windows clear of them (default); head: calibration from the text's first 90%%",
    )
    p.add_argument("--nsamples", type=int, help="calibration windows for X and H (default 32)")
    p.add_argument("--grad_samples", type=int, help="calibration windows for G (default 16)")
    p.add_argument("--seqlen", type=int, help="calibration window length (default 512)")
    p.add_argument("--heldout_windows", type=int, help="full-stage held-out windows (default 2)")
    p.add_argument(
        "--heldout_seqlen",
        type=int,
        help="full-stage held-out window length (default 1024, the evaluation protocol's)",
    )
    p.add_argument(
        "--heldout_skip",
        "--heldout-skip",
        dest="heldout_skip",
        metavar="TEXT",
        type=lambda v: "" if v.strip().lower() == "none" else v,
        help="text pieces, comma-separated, whose tokens every held-out perplexity reads as "
        "context but does not score, e.g. '<unk>', WikiText's placeholder for a word outside "
        "its vocabulary; 'none' scores every token (default: none)",
    )
    p.add_argument(
        "--proxy_rows",
        type=int,
        help="rows per linear of the proxy stage, the layer output error from cached second "
        "moments (no forward pass); 0 leaves the stage out (default 64)",
    )
    p.add_argument(
        "--proxy-quantile",
        "--proxy_quantile",
        dest="proxy_quantile",
        type=float,
        help="only candidates whose proxy is within this quantile of those seen go on to "
        "perplexity (default 0.25)",
    )
    p.add_argument(
        "--promote-max",
        "--promote_max",
        dest="promote_max",
        type=float,
        help="at most this fraction of a batch goes on to perplexity, the best proxies first "
        "(default 0.3)",
    )
    p.add_argument(
        "--allocation",
        metavar="uniform|owl|FORMULA|search",
        help="per-block sparsity of every candidate's masks (unstructured only): uniform "
        "(default), owl, or a formula over D, A, L as in `pzshell prune --allocation`; "
        "'search' searches allocation formulas for the fixed --metric instead of metrics",
    )
    p.add_argument(
        "--metric",
        help="with --allocation search: the metric whose allocation is searched (a formula, a "
        "tree file or a shipped name; default W * sqrt(X), Wanda)",
    )
    p.add_argument(
        "--owl_lambda",
        type=float,
        help="with --allocation owl or a formula: block ratios spread over target +- lambda "
        "(default 0.08; an allocation search prints the lambda it chose)",
    )
    p.add_argument(
        "--statistics",
        choices=("sequential", "dense"),
        help="X behind every candidate's masks: sequential, per setting as a layer-sequential "
        "Wanda prune sees it (what a real prune gives the metric; default), or dense (the "
        "unpruned model's)",
    )
    p.add_argument(
        "--reconstruct",
        choices=("none", "iterative"),
        help="none: score a candidate's masks alone (default); iterative: score it inside "
        "SparseGPT's loop, choosing each block's mask from the updated weights, as `pzshell "
        "prune --method metric+iterative` will use it (finals and reference pruned that way)",
    )
    p.add_argument(
        "--refit",
        type=int,
        nargs="?",
        const=REFIT_ITERS,
        metavar="ITERS",
        help=f"refit every candidate's kept weights by least squares after its masks (and "
        f"loop), as `pzshell prune --refit` does, and score it so (CG iterations; default 0: "
        f"none; --refit alone: {REFIT_ITERS})",
    )
    p.add_argument(
        "--cheap_windows",
        type=int,
        help="windows of an optional cheap perplexity stage between proxy and full "
        "(default 0: off)",
    )
    p.add_argument("--cheap_seqlen", type=int, help="cheap-stage window length (default 128)")
    p.add_argument(
        "--promote-quantile",
        "--promote_quantile",
        dest="promote_quantile",
        type=float,
        help="cheap stage: the quantile of cheap values that goes on to full (default 0.5)",
    )
    p.add_argument(
        "--strategy",
        choices=("gp", "random"),
        help="gp: genetic programming (default); random: fresh random formulas only, under "
        "the same stages and budget (the ablation baseline)",
    )
    p.add_argument("--population", type=int, help="population size (default 24)")
    p.add_argument("--budget", type=int, help="distinct pruning rules to screen (default 100000)")
    p.add_argument("--batch", type=int, help="children per steady-state batch (default 32)")
    p.add_argument(
        "--time-limit",
        "--time_limit",
        dest="time_limit",
        type=float,
        help="stop after this many minutes of search (statistics included; finals after; "
        "the first population is always scored in full, so a very short limit runs over; "
        "default 60)",
    )
    p.add_argument("--tournament", type=int, help="tournament size (default 3)")
    p.add_argument(
        "--p-crossover",
        "--p_crossover",
        dest="p_crossover",
        type=float,
        help="probability that a child is a crossover (default 0.6)",
    )
    p.add_argument(
        "--p-mutation",
        "--p_mutation",
        dest="p_mutation",
        type=float,
        help="probability of mutation (the rest of the children; default 0.4)",
    )
    p.add_argument(
        "--p-const",
        "--p_const",
        dest="p_const",
        type=float,
        help="probability that a new leaf is a random constant; constants are tuned by "
        "mutation (default 0.1)",
    )
    p.add_argument(
        "--parsimony",
        type=float,
        help="log-perplexity charged per formula node in selection (default 0.002)",
    )
    p.add_argument(
        "--stagnation",
        type=int,
        help="batches without a better fitness before a restart that keeps the Pareto front "
        "(default 12; 0: never)",
    )
    p.add_argument(
        "--max-depth", "--max_depth", dest="max_depth", type=int, help="deepest tree (default 6)"
    )
    p.add_argument(
        "--max-size",
        "--max_size",
        dest="max_size",
        type=int,
        help="most nodes in a tree (default 25)",
    )
    p.add_argument(
        "--init-depth",
        "--init_depth",
        dest="init_depth",
        type=int,
        help="depth of random formulas (initial population, restarts; default 4)",
    )
    p.add_argument(
        "--ops",
        choices=("published", "extended"),
        help="operator set: the published Pruner-Zero one, or with pzshell's extensions "
        "(default extended)",
    )
    p.add_argument(
        "--terminals",
        help="the leaves evolution draws from, a comma list (default W,G,X, the published "
        "set); add S, SparseGPT's column curvature 1/[H^-1]_jj, for example W,G,X,S",
    )
    p.add_argument(
        "--seed-formula",
        dest="seed_formulas",
        action="append",
        help="a formula to put in the initial population (repeatable)",
    )
    p.add_argument(
        "--no-known-seeds",
        dest="seed_known",
        action="store_false",
        help="do not seed with magnitude, Wanda and Pruner-Zero",
    )
    p.add_argument(
        "--final-top",
        dest="final_top",
        type=int,
        help="re-run the best N with a full layer-sequential prune (default 5)",
    )
    p.add_argument(
        "--final-windows",
        "--final_windows",
        dest="final_windows",
        type=int,
        help="held-out windows the finals are judged on: the full stage's, then more from the "
        "calibration text's last 10%% as far as it holds them (default 8)",
    )
    p.add_argument(
        "--reference",
        type=reference_rule,
        metavar="FORMULA",
        help="the known rule the finals are compared with, window by window, after the same "
        "prune (default 'W * sqrt(X)', Wanda; 'none': no comparison, the best final wins)",
    )
    p.add_argument(
        "--margin",
        type=float,
        metavar="SE",
        help="how many paired standard errors a final must beat the reference by to be the "
        "answer; when none does, the reference is (default 2)",
    )
    p.add_argument("--seed", type=int, help="random seed of the search and its data (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        help="local worker processes, each with its share of the CPU threads (default: 2 on a "
        "CPU with 2 or more cores, 1 on a GPU)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="Ray actors: a local Ray, or the cluster at ADDRESS",
    )
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="do not use the persistent fitness cache",
    )
    p.add_argument(
        "--cache",
        dest="use_cache",
        action="store_true",
        help="use the persistent fitness cache (the default; resumes a --no-cache run with it)",
    )
    p.add_argument("--out", help="run directory (default runs/search-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue the search in DIR")
    p.set_defaults(func=run)


def _ratios(text: str):
    """``0.5`` or ``0.5,0.6``: one ratio or several."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a ratio or a comma-separated list of ratios (0.5 or 0.5,0.6)"
        ) from None
    return values[0] if len(values) == 1 else values


_FITNESS = tuple(f.name for f in dataclasses.fields(FitnessSettings) if f.name != "seed")
_SEARCH = tuple(
    f.name
    for f in dataclasses.fields(SearchSettings)
    if f.name not in ("fitness", "seed", "seed_formulas", "time_limit")
)
# what an option not given means for a new search (absent from the namespace: see register);
# the settings' defaults are the dataclasses', so that the CLI and the library agree
DEFAULTS = {
    **{k: getattr(FitnessSettings(), k) for k in _FITNESS},
    **{k: getattr(SearchSettings(), k) for k in _SEARCH},
    "seed_formulas": [],
    "time_limit": 60.0,  # minutes: SearchSettings().time_limit
    "seed": 0,
    "workers": None,  # local_backend: default_workers(device)
    "ray": None,
    "device": "cpu",
    "use_cache": True,
    "out": None,
    "resume": None,
    "metric": None,
}


def _arg(args, name: str):
    return getattr(args, name, DEFAULTS[name])


def _given(args) -> set[str]:
    return {k for k in DEFAULTS if hasattr(args, k)}


def _time_limit(args) -> float | None:
    """``--time-limit`` in seconds; zero, negative or not a number is an error."""
    t = _arg(args, "time_limit")
    if t is None:
        return None
    if not math.isfinite(t) or t <= 0:
        raise PzError(f"--time-limit must be a positive number of minutes, got {t:g}")
    return t * 60


def settings_from_args(args, base: SearchSettings | None = None) -> SearchSettings:
    """The settings of a new search; with ``base`` (a resumed run's), those settings with the
    options given on this command line applied (a resumed run refuses one that differs)."""
    given = _given(args)
    if base is None:
        base = SearchSettings()
        given = set(DEFAULTS)
    fit = {k: _arg(args, k) for k in _FITNESS if k in given}
    srch = {k: _arg(args, k) for k in _SEARCH if k in given}
    if "seed" in given:
        fit["seed"] = srch["seed"] = _arg(args, "seed")
    if "seed_formulas" in given:
        srch["seed_formulas"] = tuple(_arg(args, "seed_formulas"))
    if "time_limit" in given:
        srch["time_limit"] = _time_limit(args)
    return dataclasses.replace(base, fitness=dataclasses.replace(base.fitness, **fit), **srch)


class _Display:
    """Rich renderable state: progress line, best formula, hall of fame, recent candidates."""

    def __init__(self, budget: int):
        self.progress: SearchProgress | None = None
        self.recent: list[dict] = []
        self.messages: list[str] = []
        self.topics: dict[str, str] = {}
        self.budget = budget

    def __call__(self, ev) -> None:
        if isinstance(ev, SearchProgress):
            self.progress = ev
        elif isinstance(ev, CandidateDone):
            self.recent = ([ev.record] + self.recent)[:6]
        elif isinstance(ev, SearchMessage) and ev.topic:
            self.topics[ev.topic] = ev.text  # time outside the loop: one line each, kept
        elif isinstance(ev, SearchMessage):
            self.messages = ([ev.text] + self.messages)[:3]

    def render(self):
        p = self.progress
        head = Text()
        if p:
            rate = p.cache_hits / max(p.cache_hits + p.evaluations, 1)
            head.append(f"screened {p.evaluations}/{p.budget}   full {p.full}   ", style="bold")
            head.append(f"hits: rule {p.cache_hits} ({rate:.0%}), mask {p.mask_hits}")
            if p.restarts:
                head.append(f"   restarts {p.restarts}")
            r, st = p.rates or {}, p.stage_seconds or {}
            speed = f"\nper hour: {r.get('screened', 0):.0f} screened, {r.get('full', 0):.0f} full"
            for stage, label in (("screen", "proxy"), ("eval", "perplexity")):
                if st.get(stage) is not None:
                    speed += f"   {label} {st[stage]:.2f} s"
            head.append(speed, style="dim")
            head.append(f"\nbest {p.best_fitness:.3f}  ", style="bold green")
            head.append(p.best_formula)
        else:
            head.append("preparing model and statistics ...")
        for topic in ("statistics", "finals"):
            if topic in self.topics:
                head.append(f"\n{topic}: {self.topics[topic]}", style="cyan")
        head.append("\nCtrl-C stops cleanly (resume with --resume DIR)", style="dim")
        hof = Table(
            title="Pareto front: best held-out ppl per size", title_justify="left", expand=False
        )
        hof.add_column("size", justify="right")
        hof.add_column("held-out ppl", justify="right")
        hof.add_column("formula")
        for size, fit, formula in (p.hall_of_fame if p else [])[:8]:
            hof.add_row(str(size), f"{fit:.3f}", formula)
        rec = Table(title="latest candidates", title_justify="left")
        for c in ("id", "stage", "fitness", "formula"):
            rec.add_column(c)
        for r in self.recent:
            f = r.get("fitness")
            fs = f"{f:.3f}" if isinstance(f, (int, float)) and math.isfinite(f) else "-"
            rec.add_row(
                str(r.get("id")),
                "reference" if r.get("reference") else r.get("stage", ""),
                fs,
                (r.get("reason") or r.get("formula", ""))[:70],
            )
        parts = [head, hof, rec]
        if self.messages:
            parts.append(Text("\n".join(self.messages), style="yellow"))
        return Group(*parts)


class PlainLog:
    """Progress as plain lines, for output that is not a terminal: every message, and the
    counters when a batch ends, when the best changes, or at most every ``every`` seconds."""

    def __init__(self, write, every: float = 30.0):
        self.write, self.every = write, every
        self.last = -math.inf
        self.seen: tuple | None = None

    def __call__(self, ev) -> None:
        if isinstance(ev, SearchMessage):
            text = f"{ev.topic}: {ev.text}" if ev.topic else ev.text
            self.write(text, markup=False, soft_wrap=True)
        elif isinstance(ev, SearchProgress):
            now = time.monotonic()
            seen = (ev.best_formula, ev.full, ev.restarts)
            if seen == self.seen and now - self.last < self.every:
                return
            self.last, self.seen = now, seen
            rates = ev.rates or {}
            line = (
                f"screened {ev.evaluations}/{ev.budget}  full {ev.full}  hits: rule "
                f"{ev.cache_hits}, mask {ev.mask_hits}  restarts {ev.restarts}  per hour: "
                f"{rates.get('screened', 0):.0f} screened, {rates.get('full', 0):.0f} full  "
                + (
                    f"best {ev.best_fitness:.3f} {ev.best_formula}"
                    if math.isfinite(ev.best_fitness)
                    else "best: none scored yet"
                )
            )
            self.write(line, markup=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    if _arg(args, "allocation") == "search":
        return _run_allocation_search(args)
    if _arg(args, "metric") is not None:
        raise PzError(
            "--metric fixes the metric of an allocation search: give it with --allocation "
            "search (a metric search evolves the metric itself)"
        )
    # every option is checked, and a resumed directory read, before anything is written
    given = _given(args)
    resume = _arg(args, "resume") is not None
    workers = _arg(args, "workers")
    if workers is not None and workers < 1:
        raise PzError(f"--workers must be at least 1, got {workers}")
    _time_limit(args)
    if resume:
        if "out" in given:
            raise PzError("give --resume DIR or --out DIR, not both")
        out = Path(args.resume)
        check_run_dir(out, resume=True)
        saved, options = load_settings(out)
        settings = settings_from_args(args, base=saved)
        # run options: the original's, unless given again
        if "workers" not in given:
            workers = options.get("workers", workers)
        if "ray" in given:
            ray, ray_address = True, args.ray
        else:
            ray = options.get("backend") == "ray"
            ray_address = options.get("ray_address")
        device = args.device if "device" in given else options.get("device", DEFAULTS["device"])
        use_cache = args.use_cache if "use_cache" in given else options.get("cache", True)
        threads = options.get("threads")
    else:
        out = Path(_arg(args, "out") or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
        settings = settings_from_args(args)
        ray = _arg(args, "ray") is not None
        ray_address = args.ray if ray else None
        device, use_cache, threads = _arg(args, "device"), _arg(args, "use_cache"), None
    backend, workers = local_backend(workers, device)
    if ray:
        backend = "ray"
    search = Search(
        settings,
        out,
        backend=backend,
        workers=workers,
        ray_address=None if ray_address in (None, "local") else ray_address,
        device=device,
        threads=threads,
        on_event=None,
        resume=resume,
    )
    if search.finished:
        fin = search.run()  # writes nothing
        console.print(
            f"{out}: this search is already finished ({fin.evaluations} evaluations, budget "
            f"{settings.budget}, final stage done); nothing to do. Best: [bold]"
            f"{escape(fin.best_formula)}[/] held-out ppl {fin.best_fitness:.3f}. Give a larger "
            f"--budget to continue it."
        )
        if fin.verdict:
            console.print(f"  {escape(fin.verdict)}", soft_wrap=True)
        return 0
    if use_cache:
        from ..search.cache import FitnessCache

        search.cache = FitnessCache()
    display = _Display(settings.budget)
    search.on_event = display
    console.print(f"[bold]pzshell search[/] -> {out}  (backend {backend}, workers {workers})")
    try:
        if console.is_terminal:
            with Live(display.render(), console=console, refresh_per_second=4) as live:
                display_update = display.__call__

                def on_event(ev):
                    display_update(ev)
                    live.update(display.render())

                search.on_event = on_event
                fin: SearchFinished = search.run()
        else:  # a log file or a pipe: a live display would print only its first frame
            search.on_event = PlainLog(console.print)
            fin = search.run()
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped.[/] Continue with: pzshell search --resume {out}")
        return 130
    final = fin.finals[0] if fin.finals else None  # the best final is the result, if any
    measured = (
        f" on {final['final_tokens']} held-out tokens after a layer-sequential prune"
        if final is not None and final.get("final_tokens")
        else ""
    )
    console.print(
        f"best: [bold]{escape(fin.best_formula)}[/] held-out ppl {fin.best_fitness:.3f}{measured} "
        f"after {fin.evaluations} evaluations; {out}/best.json, hall_of_fame.json, fitness.png",
        soft_wrap=True,
    )
    if fin.verdict:
        console.print(f"  {escape(fin.verdict)}", soft_wrap=True)
    how = prune_command(settings, out, fin.best_formula)
    if how:
        console.print(f"  prune with it: {escape(how)}", soft_wrap=True)
    return 0


def prune_command(settings, out: Path, formula: str) -> str | None:
    """The ``pzshell prune`` command that makes the masks the search scored for ``formula``:
    its calibration windows and, where the rule reads G, the run's ``grads.pth`` (the G the
    search scored with; G's scale grows with its windows). None without a formula."""
    if not formula or formula == "-":
        return None
    f = settings.fitness
    s = f.settings()[0]
    parts = ["pzshell prune", f"--model {shlex.quote(f.model)}", f"--metric {shlex.quote(formula)}"]
    parts.append(f"--sparsity_type {s.sparsity_type}")
    if not s.n:
        parts.append(f"--sparsity_ratio {s.ratio:g}")
    if f.allocation != "uniform":
        parts.append(f"--allocation {shlex.quote(f.allocation)}")
    parts.append(f"--calib {shlex.quote(f.calib)} --nsamples {f.nsamples} --seqlen {f.seqlen}")
    parts.append(f"--seed {f.seed}")
    if f.reconstruct == "iterative":
        parts.append("--method metric+iterative")
    if f.refit:
        parts.append(f"--refit {f.refit}")
    if "G" in load_metric(formula).terminals and (out / GRADIENTS_NAME).exists():
        parts.append(f"--gradient_path {shlex.quote(str(out / GRADIENTS_NAME))}")
    return " ".join(parts)


def _run_allocation_search(args: argparse.Namespace) -> int:
    """``--allocation search``: allocation formulas for a fixed metric (:mod:`..search.
    alloc_search`); every option checked, and the run directory, before the model loads."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..search.alloc_search import (
        STALE_LIMIT,
        AllocationProgress,
        AllocationSearch,
        AllocationSearchSettings,
    )

    given = _given(args)
    if "owl_lambda" in given:
        raise PzError(
            "--allocation search tries its own lambdas for every formula (0.02 to 0.2); drop "
            "--owl_lambda"
        )
    refused = {"resume", "workers", "ray"} & given
    if refused:
        raise PzError(
            f"--allocation search runs in this process and is not resumable: drop "
            f"{', '.join('--' + k for k in sorted(refused))}"
        )
    args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "allocation"})
    base = settings_from_args(args)
    budget = _arg(args, "budget") if "budget" in given else 120
    time_limit = _time_limit(args) if "time_limit" in given else None
    settings = AllocationSearchSettings(
        metric=_arg(args, "metric") or "W * sqrt(X)",
        fitness=base.fitness,
        budget=budget,
        time_limit=time_limit,
        seed=_arg(args, "seed"),
    )
    out = Path(_arg(args, "out") or f"runs/alloc-search-{time.strftime('%Y%m%d-%H%M%S')}")
    search = AllocationSearch(settings, out, device=_arg(args, "device"))
    console.print(
        f"[bold]pzshell search --allocation search[/] -> {out}  metric {escape(settings.metric)}"
        f", {base.fitness.describe()}, budget {budget}"
        + (f", {time_limit / 60:g} min" if time_limit else "")
    )
    console.print(
        "statistics: loading the model and its statistics (computed once, then read from the "
        "cache) ...",
        markup=False,
    )

    def line(ev: AllocationProgress) -> str:
        last = ev.last or {}
        if "final" in last:
            f = last["final"]
            return (
                f"final (real prune) {f['formula']} @ lambda {f['lambda']:g}: held-out ppl "
                f"{f['final']:.3f} in {f['seconds']:.0f} s"
                + (f" ({f['reason']})" if f["reason"] else "")
            )
        what = (
            f"= {last['hit']}"
            if last.get("hit")
            else (last.get("reason") or f"{last.get('fitness', math.inf):.3f}")
        )
        return (
            f"{ev.screened}/{ev.budget} screened, {ev.ratio_hits} ratio hits, {ev.refused} "
            f"refused; uniform {ev.baseline:.3f}, best {ev.best_fitness:.3f} "
            f"{ev.best_formula} @ {ev.best_lambda:g}; last {last.get('formula')} @ "
            f"{last.get('lambda', 0):g}: {what}"
        )

    try:
        if console.is_terminal:
            with Progress(
                TextColumn("allocations"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=console,
            ) as bar:
                task = bar.add_task("", total=budget)

                def on_event(ev):
                    bar.update(task, completed=ev.screened, description=escape(line(ev)))
                    if ev.last and "final" in ev.last:
                        bar.console.print(escape(line(ev)))

                search.on_event = on_event
                summary = search.run()
        else:
            search.on_event = lambda ev: console.print(line(ev), markup=False, soft_wrap=True)
            summary = search.run()
    except KeyboardInterrupt:
        console.print(
            f"[yellow]stopped.[/] The allocations scored so far are in {out}/allocations.jsonl"
        )
        return 130
    b = summary["best"]
    if not b:
        console.print(f"no allocation scored a finite perplexity; see {out}/allocations.jsonl")
        return 1
    if summary["exhausted"]:
        console.print(
            f"stopped at {summary['screened']}/{budget} screened: {STALE_LIMIT} mutations in a "
            f"row gave only allocations already scored (this model has few distinct ones)",
            markup=False,
        )
    elif summary["screened"] < budget:
        console.print(f"stopped at {summary['screened']}/{budget} screened (time limit)")
    score = b.get("final", b.get("fitness"))
    rs = [f"{p.ratio:g}" for p in base.fitness.settings()]
    where = f"--model {base.fitness.model} --sparsity_ratio " + (
        rs[0] if len(rs) == 1 else f"R (R one of {', '.join(rs)})"
    )
    console.print(
        f"best: [bold]{escape(b['formula'])}[/] lambda {b['lambda']:g}, held-out ppl "
        f"{score:.3f} (real prune; uniform "
        + next((f"{f['final']:.3f}" for f in summary["finals"] if f["formula"] == "uniform"), "-")
        + f"). Prune with: pzshell prune {where} --metric '{settings.metric}' --allocation "
        f"'{b['formula']}' --owl_lambda {b['lambda']:g}; or search metrics under it: "
        f"pzshell search --allocation '{b['formula']}' --owl_lambda {b['lambda']:g}; "
        f"{out}/summary.json",
        soft_wrap=True,
    )
    return 0
