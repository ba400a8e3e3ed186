"""``pzshell search``: evolve pruning metrics with a live display; Ctrl-C leaves it resumable."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import PzError
from ..search import FitnessSettings, Search, SearchSettings
from ..search.events import CandidateDone, SearchFinished, SearchMessage, SearchProgress
from ..search.runlog import SETTINGS_NAME, RunLog
from .common import console


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="evolve new pruning metrics with genetic programming (resumable, parallel)",
        description="GP search over metric trees. Fitness is the perplexity after pruning with "
        "the candidate, on held-out windows of the calibration text (never the evaluation set). "
        "Every candidate is appended to OUT/candidates.jsonl as it is known; Ctrl-C stops cleanly "
        "and `pzshell search --resume OUT` continues without repeating an evaluation.",
    )
    p.add_argument("--model", default="smollm2")
    p.add_argument("--sparsity_ratio", type=float, default=0.5)
    p.add_argument("--sparsity_type", default="unstructured")
    p.add_argument("--calib", default="builtin", help="calibration-domain text (file, builtin)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows for X")
    p.add_argument("--grad_samples", type=int, default=8, help="calibration windows for G")
    p.add_argument("--seqlen", type=int, default=256, help="calibration window length")
    p.add_argument("--heldout_windows", type=int, default=4)
    p.add_argument("--heldout_seqlen", type=int, default=256)
    p.add_argument(
        "--cheap_windows",
        type=int,
        default=1,
        help="cheap first stage windows (0: no multi-fidelity)",
    )
    p.add_argument("--cheap_seqlen", type=int, default=64)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--budget", type=int, default=64, help="evaluations (distinct pruning rules)")
    p.add_argument("--batch", type=int, default=8, help="children per steady-state batch")
    p.add_argument(
        "--time-limit",
        "--time_limit",
        dest="time_limit",
        type=float,
        default=None,
        help="stop after this many minutes",
    )
    p.add_argument("--tournament", type=int, default=3)
    p.add_argument("--p-crossover", "--p_crossover", dest="p_crossover", type=float, default=0.7)
    p.add_argument("--p-mutation", "--p_mutation", dest="p_mutation", type=float, default=0.3)
    p.add_argument("--max-depth", "--max_depth", dest="max_depth", type=int, default=6)
    p.add_argument("--max-size", "--max_size", dest="max_size", type=int, default=31)
    p.add_argument("--ops", default="published", choices=("published", "extended"))
    p.add_argument(
        "--seed-formula",
        dest="seed_formulas",
        action="append",
        default=[],
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
        default=3,
        help="re-run the best N with a full layer-sequential prune",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="Ray actors: a local Ray, or the cluster at ADDRESS",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="do not use the persistent fitness cache",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/search-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the search in DIR")
    p.set_defaults(func=run)


def settings_from_args(args) -> SearchSettings:
    fit = FitnessSettings(
        model=args.model,
        sparsity_ratio=args.sparsity_ratio,
        sparsity_type=args.sparsity_type,
        calib=args.calib,
        nsamples=args.nsamples,
        grad_samples=args.grad_samples,
        seqlen=args.seqlen,
        heldout_windows=args.heldout_windows,
        heldout_seqlen=args.heldout_seqlen,
        cheap_windows=args.cheap_windows,
        cheap_seqlen=args.cheap_seqlen,
        seed=args.seed,
    )
    return SearchSettings(
        fitness=fit,
        population=args.population,
        budget=args.budget,
        batch=args.batch,
        tournament=args.tournament,
        p_crossover=args.p_crossover,
        p_mutation=args.p_mutation,
        max_depth=args.max_depth,
        max_size=args.max_size,
        ops=args.ops,
        seed=args.seed,
        seed_known=args.seed_known,
        seed_formulas=tuple(args.seed_formulas),
        final_top=args.final_top,
        time_limit=args.time_limit * 60 if args.time_limit else None,
    )


class _Display:
    """Rich renderable state: progress line, best formula, hall of fame, recent candidates."""

    def __init__(self, budget: int):
        self.progress: SearchProgress | None = None
        self.recent: list[dict] = []
        self.messages: list[str] = []
        self.budget = budget

    def __call__(self, ev) -> None:
        if isinstance(ev, SearchProgress):
            self.progress = ev
        elif isinstance(ev, CandidateDone):
            self.recent = ([ev.record] + self.recent)[:6]
        elif isinstance(ev, SearchMessage):
            self.messages = ([ev.text] + self.messages)[:3]

    def render(self):
        p = self.progress
        head = Text()
        if p:
            rate = p.cache_hits / max(p.cache_hits + p.evaluations, 1)
            head.append(f"evaluations {p.evaluations}/{p.budget}   ", style="bold")
            head.append(f"{p.evals_per_minute:.1f}/min   cache hits {p.cache_hits} ({rate:.0%})")
            head.append(f"\nbest {p.best_fitness:.3f}  ", style="bold green")
            head.append(p.best_formula)
        else:
            head.append("preparing model and statistics ...")
        head.append("\nCtrl-C stops cleanly (resume with --resume DIR)", style="dim")
        hof = Table(title="hall of fame (best per size)", title_justify="left", expand=False)
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
                r.get("stage", ""),
                fs,
                (r.get("reason") or r.get("formula", ""))[:70],
            )
        parts = [head, hof, rec]
        if self.messages:
            parts.append(Text("\n".join(self.messages), style="yellow"))
        return Group(*parts)


def run(args: argparse.Namespace) -> int:
    resume = args.resume is not None
    if resume:
        saved = RunLog(args.resume).read_json(SETTINGS_NAME)
        if saved is None:
            raise PzError(f"--resume {args.resume}: not a search directory (no {SETTINGS_NAME})")
        settings = SearchSettings.from_dict(saved["settings"])
        # budget and time limit may be raised when resuming
        defaults = {"budget": 64, "time_limit": None}
        if args.budget != defaults["budget"]:
            settings.budget = args.budget
        if args.time_limit:
            settings.time_limit = args.time_limit * 60
        out = Path(args.resume)
    else:
        if not 0 <= args.sparsity_ratio < 1:
            raise PzError(f"--sparsity_ratio must be in [0, 1), got {args.sparsity_ratio}")
        settings = settings_from_args(args)
        out = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
    cache = None
    if args.use_cache:
        from ..search.cache import FitnessCache

        cache = FitnessCache()
    backend = "ray" if args.ray else ("processes" if args.workers > 1 else "in-process")
    display = _Display(settings.budget)
    search = Search(
        settings,
        out,
        backend=backend,
        workers=max(1, args.workers),
        ray_address=None if args.ray in (None, "local") else args.ray,
        device=args.device,
        cache=cache,
        on_event=display,
        resume=resume,
    )
    console.print(f"[bold]pzshell search[/] -> {out}  (backend {backend}, workers {args.workers})")
    try:
        with Live(display.render(), console=console, refresh_per_second=4) as live:
            display_update = display.__call__

            def on_event(ev):
                display_update(ev)
                live.update(display.render())

            search.on_event = on_event
            fin: SearchFinished = search.run()
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped.[/] Continue with: pzshell search --resume {out}")
        return 130
    console.print(
        f"best: [bold]{fin.best_formula}[/] held-out ppl {fin.best_fitness:.3f} after "
        f"{fin.evaluations} evaluations; {out}/best.json, hall_of_fame.json, fitness.png"
    )
    return 0
