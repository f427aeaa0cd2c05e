"""``cifc-bench bench`` and ``--compile``: the device's figures in one command, and the compiled path's images."""

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_bench_smoke_writes_every_figure(tmp_path):
    """The CPU smoke mode runs the GPU bench's code on the tiny model: every figure is there and finite, the
    harness's images come through diffusers' pipeline too, and CCS costs more than a concept image."""
    from cifc_bench.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--methods", "finetune", "cidm", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"]["kind"] == "cpu" and set(result["precisions"]) == {"fp32", "bf16"}
    for figures in result["precisions"].values():
        for key in ("concept_image_s", "ccs_image_s", "pipeline_image_s", "ratio_to_pipeline", "unet_tflops"):
            assert np.isfinite(figures[key]) and figures[key] > 0, key
        assert figures["fraction_of_peak"] is None  # no peak is known for a CPU
        assert figures["ccs_ratio_to_concept"] > 1.0  # U + 2 = 4 evaluations a step against 2
    assert set(result["training"]) == {"finetune", "cidm"}
    assert all(v["step_s"] > 0 for v in result["training"].values())
    assert main(["bench", "--smoke", "--precisions", "fp64"]) == 2  # a clear error, nothing run


def test_bench_covers_sdxl(tmp_path):
    """``--sdxl --smoke``: the same figures on the tiny SDXL, against StableDiffusionXLPipeline, with CIDM's CCS
    and a training step on SDXL."""
    from cifc_bench.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--sdxl", "--precisions", "fp32", "--methods", "cidm", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["model"] == "sdxl-tiny-random"
    figures = result["precisions"]["fp32"]
    for key in ("concept_image_s", "ccs_image_s", "pipeline_image_s", "ratio_to_pipeline", "unet_tflops"):
        assert np.isfinite(figures[key]) and figures[key] > 0, key
    assert result["training"]["cidm"]["step_s"] > 0


def test_the_bench_knows_the_peaks_of_the_lent_devices():
    from cifc_bench.cli.bench import peak_tflops

    h100 = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    assert peak_tflops(h100, "bf16") == pytest.approx(989.4) and peak_tflops(h100, "fp32") == pytest.approx(494.7)
    assert peak_tflops({"kind": "cuda", "name": "NVIDIA H100 PCIe"}, "bf16") == pytest.approx(756.0)
    assert peak_tflops({"kind": "cuda", "name": "NVIDIA H200"}, "bf16") == pytest.approx(989.4)
    assert peak_tflops({"kind": "cpu", "name": "x86_64"}, "bf16") is None


@pytest.mark.slow
def test_compiled_sampling_equals_eager_within_one_intensity_level(tmp_path, pinned_one_thread):
    """``--compile`` compiles the UNet (and a VAE decoder) in place: parameter names and the method's states are
    unchanged, and its images equal eager's within 1 intensity level of 255 (measured: equal on this CPU). The
    compile warm-up is counted apart (``compile_seconds``)."""
    import dataclasses

    from cifc_bench.methods.zero_shot import ZeroShot

    from cifc_bench.api import GenerationRequest
    from cifc_bench.diffusion.models import compile_seconds
    from cifc_bench.run.setup import fresh_bundle
    from cifc_bench.testing import make_tiny_protocol, tiny_run_config

    config = tiny_run_config(make_tiny_protocol(tmp_path / "proto", n_concepts=1), method="base")
    config = config.resolved({})
    requests = [GenerationRequest(prompt=f"a toy {k}", seed=k) for k in range(2)]
    eager_bundle = fresh_bundle(config)[0]
    eager = ZeroShot(eager_bundle).generate(requests, config.generation())
    compiled_bundle = fresh_bundle(dataclasses.replace(config, compile=True))[0]
    assert [n for n, _ in compiled_bundle.unet.named_parameters()] == [n for n, _ in eager_bundle.unet.named_parameters()]
    before = compile_seconds()
    compiled = ZeroShot(compiled_bundle).generate(requests, config.generation())
    assert compile_seconds() > before  # the warm-up is measured
    diffs = [np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(eager, compiled, strict=True)]
    assert max(diffs) <= 1
