"""Structured pruning of the real default model, SmolLM2-135M (9 q / 3 kv heads, 30 blocks).
Kept short (2 calibration windows x 64 tokens, 1 evaluation window x 128): runs in CI."""

from __future__ import annotations

import math

import pytest
import torch

from pzshell.engine import structured as S
from pzshell.jobs import CalibSpec, EvalSpec, ModelSpec, StructuredJob, run_structured
from pzshell.models import load_model
from pzshell.models.structure import save_structured

from ...conftest import shared_texts

pytestmark = pytest.mark.smollm2


def test_smollm2_global_taylor_2nd_save_reload(smollm2, tmp_path):
    calib, ev = shared_texts()
    job = StructuredJob(
        model=ModelSpec("smollm2", "cpu"),
        pruning_ratio=0.25,
        importance_method="taylor_2nd",
        calib=CalibSpec(data=calib, nsamples=2, seqlen=64),
        test_after_prune=True,
        eval=EvalSpec(data=ev, seqlen=128, windows=1),
        speed_windows=0,
        remove_empty_layers=True,
    )
    out = run_structured(job, lm=smollm2)
    res = out.results
    assert res["params_before"] == 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)
    assert abs(res["achieved_ratio"] - 0.25) < 0.002
    parts = S.model_parts(smollm2.model)
    assert S.prunable_params(parts) == res["params_after"]
    for p in parts:
        assert p.q_heads == 3 * p.kv_heads and p.head_dim == 64
    assert math.isfinite(res["ppl"]) and res["ppl"] > res["ppl_dense"] * 0.9
    ids = torch.arange(100, 132).reshape(1, -1)
    with torch.no_grad():
        want = smollm2.model(input_ids=ids).logits
    save_structured(smollm2.model, smollm2.tokenizer, tmp_path / "m")
    again = load_model(str(tmp_path / "m"), device="cpu")
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=ids).logits, want)
    assert S.model_params(again.model) == res["model_params_after"]
