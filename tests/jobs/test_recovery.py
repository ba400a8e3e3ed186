"""Recovery through the command line: `prune --finetune`, `finetune` on a saved model, a report
of the lot (all on `tiny`)."""

from __future__ import annotations

import json

import pytest
import torch

from pzshell.cli import main
from pzshell.jobs.provenance import PROVENANCE_FILE
from pzshell.models import count_block_params, load_model

FT = ["--finetune_samples", "3", "--finetune_seqlen", "32", "--finetune_lr", "1e-3"]
EVAL = ["--eval-seqlen", "64", "--eval-windows", "2"]


def test_prune_finetune_finetune_report(tmp_path):
    run1, model1 = tmp_path / "runs" / "wanda50", tmp_path / "models" / "wanda50"
    rc = main(
        [
            "prune",
            "--model",
            "tiny",
            "--prune_method",
            "wanda",
            "--sparsity_type",
            "2:4",
            "--nsamples",
            "2",
            "--seqlen",
            "64",
            *EVAL,
            "--finetune",
            *FT,
            "--tasks",
            "pzshell_mc",
            "--zero_shot_limit",
            "3",
            "--save",
            str(run1),
            "--save_model",
            str(model1),
        ]
    )
    assert rc == 0
    res = json.loads((run1 / "results.json").read_text())
    # the LoRA merge kept the 2:4 mask exactly; perplexity measured before and after
    assert res["sparsity_before_finetune"] == res["sparsity_after_finetune"] == 0.5
    assert res["finetune"]["sparsity_after_merge"] < 0.5
    assert res["finetune"]["method"] == "lora" and res["finetune"]["steps"] == 3
    assert res["ppl"] > 1 and res["ppl_after_finetune"] > 1
    assert res["zero_shot"]["tasks"]["pzshell_mc"]["n"] == 3
    assert "zero_shot_after_finetune" in res
    # the saved model is the recovered one, still 2:4 sparse, and says how it was made
    prov = json.loads((model1 / PROVENANCE_FILE).read_text())
    assert prov["method"] == "wanda" and prov["sparsity_type"] == "2:4"
    assert prov["finetuned"] == "lora"
    lm = load_model(str(model1), device="cpu")
    zeros, total = count_block_params(lm.model)
    assert zeros / total == 0.5
    w = lm.model.model.layers[0].mlp.up_proj.weight.view(-1, 4)
    assert torch.all((w == 0).sum(dim=1) >= 2)

    # `pzshell finetune` on the saved model: inherits the provenance, keeps the mask
    run2, model2 = tmp_path / "runs" / "wanda50-ft", tmp_path / "models" / "wanda50-ft"
    rc = main(
        [
            "finetune",
            "--model",
            str(model1),
            *FT,
            *EVAL,
            "--save",
            str(run2),
            "--save_model",
            str(model2),
        ]
    )
    assert rc == 0
    res2 = json.loads((run2 / "results.json").read_text())
    assert res2["method"] == "wanda" and res2["base_model"] == "tiny"
    assert res2["sparsity_before_finetune"] == res2["sparsity_after_finetune"] == 0.5
    assert res2["ppl"] == res["ppl_after_finetune"]  # same model, same windows
    assert res2["ppl_after_finetune"] > 1
    assert json.loads((model2 / PROVENANCE_FILE).read_text())["base_model"] == "tiny"

    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| wanda50 | tiny | wanda |" in md and "| wanda50-ft | tiny | wanda + lora |" in md
    assert (tmp_path / "report" / "zero_shot.png").exists()


def test_finetune_command_errors(tmp_path, capsys):
    assert main(["finetune", "--model", str(tmp_path / "nope")]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main(["finetune", "--model", "tiny", "--finetune_samples", "0"]) == 2


@pytest.mark.smollm2
def test_lora_recovery_on_smollm2(smollm2):
    """SmolLM2 at 50% magnitude, a few LoRA steps: same zeros after the merge, lower perplexity."""
    from pzshell.data import calibration_windows, eval_windows, load_text
    from pzshell.engine.finetune import lora_finetune
    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.evaluate import perplexity

    from ..conftest import shared_texts, zero_pattern

    calib_src, eval_src = shared_texts()
    tok, model = smollm2.tokenizer, smollm2.model
    prune_model(model, PruneConfig("magnitude", 0.5))
    zeros_before = zero_pattern(model)
    ev = eval_windows(tok, load_text(eval_src), 256, 1)
    before = perplexity(model, ev).ppl
    train = calibration_windows(tok, load_text(calib_src, role="calib"), 6, 128, 1)
    rep = lora_finetune(model, tok, train, lr=1e-3, preserve_sparsity=True, seed=0)
    after = perplexity(model, ev).ppl
    assert all(torch.equal(a, b) for a, b in zip(zeros_before, zero_pattern(model), strict=True))
    assert rep["sparsity_after"] == rep["sparsity_before"] == pytest.approx(0.5, abs=1e-3)
    assert rep["adapted_linears"] == 30 * 7 and rep["steps"] == 6
    assert after < before  # recovery recovers
