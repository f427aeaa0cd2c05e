"""Retention on the synthetic world: a broken model drifts far from the base model, and the exact checks see it."""

import pytest

from cifc_bench.core.config import RunSpec
from cifc_bench.evaluation.retention import evaluate_retention
from cifc_bench.run.rundir import new_result
from cifc_bench.run.setup import load_context


def test_a_reinitialised_unet_drifts_far_and_fails_the_exact_checks(tmp_path):
    """The base model's own state has zero drift; the same model with its UNet re-initialised draws noise for the
    same prompts: drift near 1, and the generic prompts' TA, class and context collapse (measured: drift 0 and
    1.12, TA 2.03 and 0.20, class_acc 0.80 and 0.20, context_acc 0.95 and 0.18)."""
    ctx = load_context(RunSpec(method="base", protocol="synth10", calibration_images=1, eval_workers=0), tmp_path)
    part = new_result(ctx)["retention"]
    assert part["metrics"] == ["drift", "ta", "class_acc", "context_acc"]
    evaluate_retention(ctx, 0, part, {})
    for module in ctx.method.bundle.unet.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    evaluate_retention(ctx, 1, part, {})
    rows = part["rows"]
    assert rows["drift"][0] == pytest.approx(0.0, abs=1e-6) and rows["drift"][1] > 0.5
    for name in ("ta", "class_acc", "context_acc"):
        assert rows[name][0] > 0.6 and rows[name][1] < rows[name][0] - 0.3, name
    assert part["summary"]["drift"]["worst"] == rows["drift"][1]
