"""Comparison reports from saved runs: table content, plots, and the CLI."""

from __future__ import annotations

import json

import pytest

from pzshell.cli import main
from pzshell.report import ReportError, find_runs, markdown_table, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _layers(blocks: int, sparsity: float) -> list[dict]:
    return [
        {
            "block": b,
            "linear": n,
            "shape": [8, 8],
            "pruned": int(64 * sparsity),
            "sparsity": sparsity,
        }
        for b in range(blocks)
        for n in ("q_proj", "down_proj")
    ]


def _run(tmp_path, name: str, **fields) -> None:
    base = {
        "model": "smollm2",
        "model_source": "test",
        "method": "wanda",
        "metric": "W * sqrt(X)",
        "sparsity_ratio": 0.5,
        "sparsity_type": "unstructured",
        "actual_sparsity": 0.5,
        "nsamples": 32,
        "seqlen": 512,
        "seed": 0,
        "calib_data": "/data/wikitext-2/valid.txt",
        "eval_data": "/data/wikitext-2-raw/wiki.test.raw",
        "eval_seqlen": 1024,
        "eval_windows": 8,
        "eval_tokens": 8192,
        "ppl": 40.0,
        "layers": _layers(3, 0.5),
    }
    base.update(fields)
    d = tmp_path / "runs" / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(base))


def _zs(acc: float) -> dict:
    return {
        "tasks": {
            "pzshell_mc": {
                "acc": acc,
                "acc_stderr": 0.05,
                "acc_norm": acc - 0.1,
                "acc_norm_stderr": 0.05,
                "n": 64,
                "n_total": 64,
            }
        },
        "mean_acc": acc,
        "limit": None,
        "lm_eval_version": "0.4.13",
    }


@pytest.fixture
def runs_dir(tmp_path):
    _run(
        tmp_path,
        "dense",
        method="dense",
        metric=None,
        sparsity_ratio=0.0,
        actual_sparsity=0.0,
        ppl=29.2,
        layers=_layers(3, 0.0),
        zero_shot=_zs(0.77),
        zero_shot_mean=0.77,
        nsamples=0,
        calib_data=None,
    )
    _run(
        tmp_path,
        "wanda50",
        ppl=45.1,
        ppl_after_finetune=38.2,
        zero_shot=_zs(0.6),
        zero_shot_mean=0.6,
        zero_shot_after_finetune=_zs(0.65),
        zero_shot_mean_after_finetune=0.65,
        sparsity_before_finetune=0.5,
        sparsity_after_finetune=0.5,
        finetune={"method": "lora", "r": 8, "samples": 16, "seqlen": 256, "steps": 16},
    )
    _run(
        tmp_path,
        "wanda60",
        sparsity_ratio=0.6,
        actual_sparsity=0.6,
        ppl=80.0,
        layers=_layers(3, 0.6),
    )
    _run(
        tmp_path,
        "pz50",
        method="pruner-zero",
        metric="abs(W * W) * mms(G)",
        ppl=52.3,
        nsamples=0,
        calib_data=None,
        gradient_path="/g/grads_32x512_seed0.pth",
    )
    _run(tmp_path, "nm24", sparsity_type="2:4", ppl=70.5)
    (tmp_path / "runs" / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "runs" / "nested" / "notes.txt").write_text("not a run")
    _run(tmp_path, "nested/deeper/mag50", method="magnitude", metric="W", ppl=300.0)
    return tmp_path / "runs"


def test_report_files_and_table(runs_dir, tmp_path):
    out = tmp_path / "report"
    rep = write_report([runs_dir], out)
    assert len(rep["runs"]) == 6  # found recursively
    md = (out / "report.md").read_text()
    # header and one row per run, with the figures and their provenance
    assert "| run | model | method | metric | sparsity | type |" in md
    assert (
        "| wanda50 | smollm2 | wanda | W * sqrt(X) | 0.50 | unstructured | 0.5000 | 45.100 "
        "| 38.200 | 0.6000 | 0.6500 | wiki.test.raw: 8x1024=8192 | valid.txt: 32x512 "
        "| LoRA r8, 16x256, 16 steps | 0 |" in md
    )
    assert "| dense | smollm2 | dense | - | 0.00 |" in md
    assert "| 2:4 |" in md and "| mag50 |" in md
    # a W/G-only metric had no calibration pass; its data came with the gradient file
    assert "| G from grads_32x512_seed0.pth |" in md
    assert "## Zero-shot accuracy per task" in md and "0.6500 ± 0.0500 (n=64)" in md
    names = sorted(p.name for p in rep["plots"])
    assert names == ["block_sparsity.png", "ppl_smollm2_wiki-test-raw.png", "zero_shot.png"]
    for p in rep["plots"]:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000
        assert f"]({p.name})" in md


def test_report_table_orders_dense_first(runs_dir):
    lines = markdown_table(find_runs([runs_dir])).splitlines()
    assert lines[2].startswith("| dense |")


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="no such"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(ReportError, match="no results.json"):
        find_runs([tmp_path])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match="not a readable"):
        find_runs([tmp_path])


def test_cli_report(runs_dir, tmp_path, capsys):
    assert main(["report", str(runs_dir), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert "6 run(s)" in out.err and (tmp_path / "r" / "report.md").exists()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


@pytest.mark.parametrize(
    "fields,says",
    [
        ({"ppl": "40"}, "field 'ppl': expected a number"),
        ({"layers": [{"block": 0, "sparsity": "0.5", "shape": [8, 8]}]}, "layers[0].sparsity"),
        ({"layers": [{"block": "0", "shape": [8, 8]}]}, "layers[0].block"),
        ({"layers": [{"block": 0, "shape": "8x8"}]}, "layers[0].shape"),
        ({"layers": [{"block": 0, "refine_error": "0.5"}]}, "layers[0].refine_error"),
        ({"layers": [{"block": 0, "refit_error": [0.4]}]}, "layers[0].refit_error"),
        ({"zero_shot": {"tasks": {"t": {"acc": "0.5"}}, "mean_acc": 0.5}}, "tasks.t.acc"),
        ({"zero_shot": {"tasks": {}, "mean_acc": "high"}}, "zero_shot.mean_acc"),
        # an old structured file (before the schema) with a string perplexity
        ({"importance": "wanda", "pruning_ratio": 0.2, "ppl": "40"}, "field 'ppl'"),
    ],
)
def test_strings_where_numbers_belong_are_named(tmp_path, capsys, fields, says):
    """Numbers inside lists and objects used to give tracebacks in the report's arithmetic."""
    _run(tmp_path, "bad", **fields)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "results.json" in err and says in err, err
    assert "Traceback" not in err


def test_results_that_are_not_an_object(tmp_path, capsys):
    d = tmp_path / "runs" / "x"
    d.mkdir(parents=True)
    (d / "results.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 2
    assert "expected a JSON object, got list" in " ".join(capsys.readouterr().err.split())


def test_report_out_onto_a_file_fails_before_reading(tmp_path, capsys, monkeypatch):
    import pzshell.report as report

    def no_reading(paths):
        raise AssertionError("the runs were read before --out was checked")

    monkeypatch.setattr(report, "find_runs", no_reading)
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["report", str(tmp_path), "--out", str(f)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {f}: {f} is a file, not a directory" in err


def test_allocation_and_refinement_are_their_own_curves_with_block_bars(tmp_path):
    """OWL and uniform runs of one method are two perplexity curves (so are DSnoT runs); a
    non-uniform run gets its per-block bars: asked, achieved, outliers."""
    for ratio, ppl in ((0.6, 80.0), (0.7, 300.0)):
        tag = f"{int(ratio * 100)}"
        _run(tmp_path, f"u{tag}", sparsity_ratio=ratio, ppl=ppl)
        _run(
            tmp_path,
            f"owl{tag}",
            sparsity_ratio=ratio,
            ppl=ppl * 0.9,
            allocation="owl",
            refine="none",
            block_sparsity=[ratio - 0.05, ratio, ratio + 0.05],
            block_sparsity_achieved=[ratio - 0.05, ratio, ratio + 0.05],
            block_outliers=[0.02, 0.01, 0.005],
            owl_m=5.0,
            owl_lambda=0.08,
        )
        _run(tmp_path, f"dsnot{tag}", sparsity_ratio=ratio, ppl=ppl * 0.95, refine="dsnot")
    runs = find_runs([tmp_path / "runs"])
    assert {r.series for r in runs} == {"wanda", "wanda, owl", "wanda, dsnot"}
    labels = {r.label for r in runs}
    assert any(lbl.endswith("60%, owl") for lbl in labels)
    rep = write_report([tmp_path / "runs"], tmp_path / "rep")
    bars = [p for p in rep["plots"] if p.name.startswith("allocation_")]
    assert sorted(p.name for p in bars) == ["allocation_owl60.png", "allocation_owl70.png"]
    assert all(p.read_bytes()[:8] == PNG for p in bars)
    assert "allocation_owl70" in rep["report"].read_text()


def _refined_layers(blocks: int, field: str, ratio) -> list[dict]:
    rows = _layers(blocks, 0.5)
    for k, row in enumerate(rows):
        row[field] = ratio(k)
    return rows


def test_layer_error_plot_of_swapped_and_refitted_runs(tmp_path):
    """A run whose layers carry the swaps' or the refit's error ratios gets its per-layer
    picture (one panel per field); a run without them, and the dense one, get none; the table's
    method names the refinement."""
    from pzshell.report.plots import _layer_errors

    swapped = _refined_layers(3, "refine_error", lambda k: 0.4 + 0.05 * k)
    _run(tmp_path, "swaps24", sparsity_type="2:4", refine="swaps", layers=swapped, ppl=150.0)
    both = _refined_layers(3, "refit_error", lambda k: 0.3)
    for row in both:
        row["refine_error"] = 0.5
    _run(tmp_path, "both", method="wanda+refit", refine="swaps", layers=both, ppl=80.0)
    _run(tmp_path, "plain", ppl=210.0)  # no ratios: no picture
    _run(
        tmp_path,
        "dense",
        method="dense",
        sparsity_ratio=0.0,
        layers=_refined_layers(3, "refit_error", lambda k: 0.5),
        ppl=29.0,
    )
    rep = write_report([tmp_path / "runs"], tmp_path / "rep")
    pics = sorted(p.name for p in rep["plots"] if p.name.startswith("layer_error_"))
    assert pics == ["layer_error_both.png", "layer_error_swaps24.png"]
    for name in pics:
        assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG
        assert f"![{name[:-4]}]({name})" in rep["report"].read_text()
    assert "wanda, swaps" in rep["table"]

    # what is plotted: per linear, each block's ratio, the linears of a block side by side
    series = _layer_errors(
        swapped + [{"block": 3, "linear": "q_proj", "refine_error": None}], "refine_error"
    )
    assert list(series) == ["q_proj", "down_proj"]
    assert [v for _, v in series["q_proj"]] == pytest.approx([0.4, 0.5, 0.6])
    assert [v for _, v in series["down_proj"]] == pytest.approx([0.45, 0.55, 0.65])
    for name, pts in series.items():
        assert [round(x) for x, _ in pts] == [0, 1, 2], name
        assert all(abs(x - round(x)) < 0.5 for x, _ in pts)
    q, d = series["q_proj"][0][0], series["down_proj"][0][0]
    assert q < d  # the block's first linear left of its last
    assert _layer_errors(swapped, "refit_error") == {}
