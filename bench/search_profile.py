"""Where a search candidate's seconds go: one candidate's proxy screen and full-fidelity
evaluation, end to end and part by part, on SmolLM2-135M with the search's default fitness
settings (the statistics loaded from the search's disk cache, or computed once first and not
counted). One command, one table:

    .venv/bin/python bench/search_profile.py                  # 50% unstructured
    .venv/bin/python bench/search_profile.py --types 2:4

Parts, each timed on its own (median of ``--repeat`` runs; ``torch.get_num_threads()`` threads):

* proxy: the tree on the sampled rows of every linear, their masks, the relative output error
  ``tr(D H D^T)`` from the cached second moments (no forward pass);
* full: the tree on every linear's whole weight, the masks, the masked copy into the model, the
  forward pass over the held-out windows split into the decoder body and the LM head with the
  loss (256 positions at a time, as `perplexity()` does it), and the restore of the dense
  weights; aside, the LM head and loss over every logit at once (the path before).

The end-to-end rows are the search's own calls (``Evaluator.screen`` and ``Evaluator.run``), so
the parts can be checked against what the search pays. Results: bench/results/search_profile.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time

from benchlib import CALIB, RESULTS, print_table, require_data, table, write_json

CANDIDATES = {
    "wanda": "W * sqrt(X)",
    "pruner-zero": "abs(W * W) * mms(G)",
    "50% pick": "sqrt(X) * (W - coln(W) - coln(W))",
    "2:4 pick": "tanh(tanh(W)) * (W * (rown(W) + sqrt(X)) * G)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--types", default="unstructured", help="the fitness's sparsity type(s)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each part (median reported)")
    ap.add_argument("--json", default=str(RESULTS / "search_profile.json"))
    args = ap.parse_args()
    if "," in args.types:
        ap.error(f"--types: one sparsity type at a time, got {args.types!r}")
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    require_data()

    import torch

    from pzshell.lang import load_metric
    from pzshell.search import SearchSettings
    from pzshell.search.fitness import Evaluator

    fit = dataclasses.replace(
        SearchSettings().fitness, model=args.model, calib=str(CALIB), sparsity_type=args.types
    )
    t0 = time.perf_counter()
    ev = Evaluator(fit)
    setup = time.perf_counter() - t0
    windows = ev.heldout

    results = []
    for name, formula in CANDIDATES.items():
        tree = load_metric(formula)
        parts, ppl = _profile(ev, tree, args.repeat)
        proxy_sum = sum(v for k, v in parts.items() if k.startswith("proxy:"))
        full_sum = sum(v for k, v in parts.items() if k.startswith("full:"))
        results.append(
            {
                "name": name,
                "formula": formula,
                "seconds": {k: round(v, 4) for k, v in parts.items()},
                "proxy_parts_sum": round(proxy_sum, 4),
                "full_parts_sum": round(full_sum, 4),
                "heldout_ppl": ppl,
            }
        )
        print(
            f"{name}: screen {parts['end to end: Evaluator.screen']:.3f} s, "
            f"full {parts['end to end: Evaluator.run (full)']:.3f} s",
            file=sys.stderr,
        )

    tokens = int(windows.numel())
    t = table(
        f"one candidate's seconds: {args.model}, {fit.describe()}, held-out "
        f"{windows.shape[0]}x{windows.shape[1]} tokens, proxy {fit.proxy_rows} rows per linear, "
        f"{len(ev.linears)} linears, {torch.get_num_threads()} threads, median of {args.repeat}",
        ("part", *[r["name"] for r in results]),
    )
    for key in results[0]["seconds"]:
        t.add_row(key, *[f"{r['seconds'][key]:.3f}" for r in results])
    t.add_row("sum of proxy parts", *[f"{r['proxy_parts_sum']:.3f}" for r in results])
    t.add_row("sum of full parts", *[f"{r['full_parts_sum']:.3f}" for r in results])
    for kind, label in (("fp32", "held-out ppl, fp32 (the search's)"), ("bf16", "... bf16")):
        t.add_row(label, *[str(r["heldout_ppl"][kind]) for r in results])
    print_table(t)
    write_json(
        args.json,
        {
            "model": args.model,
            "fitness": dataclasses.asdict(fit),
            "heldout_tokens": tokens,
            "threads": torch.get_num_threads(),
            "repeat": args.repeat,
            "setup_seconds": round(setup, 2),
            "statistics_cached": ev.stats_cached,
            "candidates": results,
        },
    )
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _profile(ev, tree, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each part of one candidate's proxy screen and full evaluation (one setting),
    then of the search's own two calls; and the held-out perplexity in fp32 (the search's) and
    under bf16 autocast."""
    import torch

    from pzshell.engine.masks import make_mask
    from pzshell.engine.refit import output_error as layer_error
    from pzshell.engine.stats import stat_key
    from pzshell.evaluate.perplexity import head_nll_sum, logits_nll_sum
    from pzshell.lang import evaluate

    (p,) = ev.pairs
    _, Xs = ev._x_for(tree, p)
    ratios = ev.block_ratios[p.label]
    body, head = ev.lm.model.get_decoder(), ev.lm.model.get_output_embeddings()
    windows = ev.heldout
    proxy_scores, proxy_masks, scores, masks, state = {}, {}, {}, {}, {}

    def tree_on_rows():
        for i, n, _ in ev.linears:
            proxy_scores[(i, n)] = ev._sampled_scores(tree, i, n, Xs)

    def masks_on_rows():
        for i, n, _ in ev.linears:
            proxy_masks[(i, n)] = make_mask(proxy_scores[(i, n)], ratios[i], p.n, p.m)

    def output_error():
        for i, n, _ in ev.linears:
            W = ev.dense[(i, n)][ev.rows[(i, n)]]
            layer_error(W.float() * proxy_masks[(i, n)], ev.H[stat_key(n, i)])

    def tree_on_all():
        for i, n, _ in ev.linears:
            W, G, X = ev._leaves(tree, i, n, None, Xs)
            scores[(i, n)] = evaluate(tree, W, G=G, X=X)

    def masks_on_all():
        for i, n, _ in ev.linears:
            masks[(i, n)] = make_mask(scores[(i, n)], ratios[i], p.n, p.m)

    @torch.no_grad()
    def masked_copy():  # as Evaluator.apply_masks does it
        for i, n, lin in ev.linears:
            lin.weight.copy_(ev.dense[(i, n)]).masked_fill_(masks[(i, n)], 0)

    @torch.no_grad()
    def forward_body():
        state["h"] = body(input_ids=windows, use_cache=False).last_hidden_state

    @torch.no_grad()
    def head_and_loss():  # what perplexity() does for a plain LM head
        head_nll_sum(head, state["h"][:, :-1], windows[:, 1:])

    @torch.no_grad()
    def forward_head():
        state["z"] = head(state["h"])

    @torch.no_grad()
    def cross_entropy():
        logits_nll_sum(state["z"][:, :-1], windows[:, 1:])

    ppl = {}

    @torch.no_grad()
    def forward_bf16():  # not the search's path: how much a bf16 forward would save, and cost
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = ev.lm.model(input_ids=windows, use_cache=False).logits
        ppl["bf16"] = math.exp(logits_nll_sum(z[:, :-1], windows[:, 1:]) / windows[:, 1:].numel())

    parts = {}
    for label, fn in (
        ("proxy: tree on sampled rows", tree_on_rows),
        ("proxy: masks", masks_on_rows),
        ("proxy: output error from H", output_error),
        ("full: tree on every weight", tree_on_all),
        ("full: masks", masks_on_all),
        ("full: masked copy into the model", masked_copy),
        ("full: forward, decoder body", forward_body),
        ("full: LM head + loss, 256 positions at a time", head_and_loss),
        ("aside: LM head, every logit at once (before)", forward_head),
        ("aside: cross-entropy of those logits (before)", cross_entropy),
    ):
        parts[label] = _median_time(fn, repeat)
    # beside the search's path (the masks still in the model): a bf16 autocast forward
    parts["aside: forward + loss under bf16 autocast"] = _median_time(forward_bf16, repeat)
    parts["full: restore dense weights"] = _median_time(ev.restore, repeat)
    state.clear()
    parts["end to end: Evaluator.screen"] = _median_time(lambda: ev.screen(tree), repeat)
    run = {}

    def full_run():
        run.update(ev.run(tree, None))

    parts["end to end: Evaluator.run (full)"] = _median_time(full_run, repeat)
    if run.get("full") is None:
        raise SystemExit(f"the full evaluation of {tree} failed: {run.get('reason')}")
    return parts, {"fp32": run.get("full"), "bf16": round(ppl["bf16"], 4)}


if __name__ == "__main__":
    sys.exit(main())
