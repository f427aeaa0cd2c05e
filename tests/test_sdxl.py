"""SDXL, first part (issue 38): the bundle, the shared sampler against diffusers' StableDiffusionXLPipeline, and
the clear refusal of methods that do not run on SDXL yet."""

import numpy as np
import pytest
import torch

from cifc_bench.api import GenerationRequest, GenerationSettings
from cifc_bench.core.config import ConfigError
from cifc_bench.core.registry import METHODS, list_plugins
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import sdxl_pipeline_images, tiny_run_config

REQUESTS = [GenerationRequest(prompt=f"a photo of a dog number {i}", seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def bundle():
    from cifc_bench.diffusion.models import load_bundle

    return load_bundle("sdxl-tiny-random")


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_the_shared_sampler_draws_what_the_sdxl_pipeline_draws(bundle, negative):
    """An empty negative prompt is zeros on SDXL (force_zeros_for_empty_prompt); a written one is encoded."""
    from cifc_bench.methods.zero_shot import ZeroShot

    settings = GenerationSettings(resolution=32, num_inference_steps=4, guidance_scale=5.0, batch_size=4,
                                  negative_prompt=negative)
    ours = np.stack([np.asarray(im, dtype=int) for im in ZeroShot(bundle).generate(REQUESTS, settings)])
    theirs = np.stack([np.asarray(im, dtype=int) for im in sdxl_pipeline_images(bundle, REQUESTS, settings)])
    assert ours.shape == theirs.shape == (4, 32, 32, 3) and np.ptp(ours) > 0
    assert np.abs(ours - theirs).max() <= 1, "the shared sampler must draw what StableDiffusionXLPipeline draws"


def test_base_runs_on_sdxl_and_a_method_that_cannot_says_so_at_start(tmp_path, tiny_protocol, monkeypatch):
    """Every registered method runs on SDXL; a plugin that declares only ``sd1`` (the default) is refused before
    any work, naming the model and the families it runs on."""
    import sys
    import types

    from cifc_bench.methods.finetune import SequentialFinetune

    result = run_benchmark(tiny_run_config(tiny_protocol, method="base", model="sdxl-tiny-random",
                                           eval_schedule="final"), tmp_path / "base")
    assert result["status"] == "completed" and all(v is not None for v in result["matrices"]["ia"][-1])
    plugin = types.ModuleType("sd1_only_plugin")
    plugin.SD1Only = type("SD1Only", (SequentialFinetune,), {"families": ("sd1",)})
    monkeypatch.setitem(sys.modules, "sd1_only_plugin", plugin)
    with pytest.raises(ConfigError, match=r"method 'sd1_only_plugin:SD1Only' does not run on sdxl models yet \(model "
                                          r"'sdxl-tiny-random'; it runs on sd1\)"):
        run_benchmark(tiny_run_config(tiny_protocol, method="sd1_only_plugin:SD1Only", model="sdxl-tiny-random"),
                      tmp_path / "plugin")
    assert not (tmp_path / "plugin" / "result.json").exists()


def test_finetune_learns_on_sdxl_in_both_token_tables_and_resumes(tmp_path, tiny_protocol):
    """finetune trains its LoRA and the new token rows of both SDXL text encoders; a restored state draws the
    images the run drew (the harness's resume path)."""
    from cifc_bench.diffusion.tokens import embedding_tables
    from cifc_bench.run.rundir import method_after
    from cifc_bench.run.setup import load_context

    config = tiny_run_config(tiny_protocol, model="sdxl-tiny-random", steps=3, eval_schedule="final")
    result = run_benchmark(config, tmp_path / "run")
    assert result["status"] == "completed" and all(v is not None for v in result["matrices"]["ia"][-1])
    from cifc_bench.core.checkpoint import load_state

    state = load_state(tmp_path / "run" / "state" / "after_task_02.safetensors")
    assert {k.split(".")[0] for k in state if k.startswith("tokens")} == {"tokens", "tokens_2"}
    assert state["tokens.thing0"].shape[1] == 16 and state["tokens_2.thing0"].shape[1] == 32  # both widths
    ctx = load_context(config, tmp_path / "again")
    restored = method_after(dataclasses_replace_run_dir(ctx, tmp_path / "run"), 2)
    tables = embedding_tables(restored.bundle)
    ids = restored.tokens.ids["thing0"]
    assert torch.equal(tables[1][ids], state["tokens_2.thing0"])


def dataclasses_replace_run_dir(ctx, run_dir):
    import dataclasses

    return dataclasses.replace(ctx, run_dir=run_dir)


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_every_method_keeps_the_contract_on_sdxl(name, tmp_path):
    """Every registered method declares SDXL and passes the method contract on it: two tasks learned, single- and
    boxed multi-concept requests generated, deterministic, its state saved and restored (a plugin that cannot is
    refused at start: the test above)."""
    from cifc_bench.core.registry import load_method
    from cifc_bench.testing import QUICK_METHOD_ARGS, check_method

    cls = load_method(name)
    assert "sdxl" in cls.families, f"{name} does not declare sdxl in Method.families"
    check_method(cls, QUICK_METHOD_ARGS.get(name), root=tmp_path, model="sdxl-tiny-random")


def test_sdxls_own_vae_under_fp16_is_refused_at_start_and_the_fp16_fix_vae_is_not(tmp_path, tiny_protocol):
    from cifc_bench.methods.finetune import SequentialFinetune

    from cifc_bench.core.config import RunSpec
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.run.setup import check_family

    bundle = load_bundle("sdxl-tiny-random")
    config = RunSpec(method="finetune", model="sdxl-tiny-random", dtype="fp16")
    with pytest.raises(ConfigError, match=r"--dtype fp16 with model 'sdxl-tiny-random': SDXL's VAE overflows in fp16.*"
                                          r"--dtype bf16 .*madebyollin/sdxl-vae-fp16-fix"):
        check_family(SequentialFinetune, bundle, config)
    check_family(SequentialFinetune, bundle, RunSpec(method="finetune", model="sdxl-tiny-random", dtype="bf16"))
    bundle.vae.register_to_config(force_upcast=False)  # as the fp16-fix VAE's config
    check_family(SequentialFinetune, bundle, config)
    with pytest.raises(ConfigError, match="SDXL's VAE overflows in fp16"):  # a run stops before any work
        run_benchmark(tiny_run_config(tiny_protocol, model="sdxl-tiny-random", dtype="fp16"), tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()


def test_layerwise_tokens_are_one_per_cross_attention_block():
    """SD-1.x: one block per cross-attention layer, so one token per layer (the spec's 16 on SD-1.5). SDXL: the
    layers of a block share its token (sdxl-tiny-random: 8 layers in 4 blocks; SDXL base: 70 in 11)."""
    from cifc_bench.diffusion.layerwise import cross_attention_layers, token_layers
    from cifc_bench.diffusion.models import load_bundle

    sd1 = load_bundle("tiny-random").unet
    assert token_layers(sd1) == list(range(len(cross_attention_layers(sd1))))
    xl = load_bundle("sdxl-tiny-random").unet
    names = [n for n, _ in cross_attention_layers(xl)]
    layers = token_layers(xl)
    assert len(names) == 8 and layers == [0, 0, 1, 1, 2, 2, 3, 3]
    blocks = {n.split(".transformer_blocks.")[0] for n in names}
    assert len(blocks) == 4 and all(len({layers[k] for k, n in enumerate(names) if n.startswith(b + ".")}) == 1
                                    for b in blocks)


def test_sdxl_base_layout_has_eleven_token_layers_over_seventy_cross_attention_layers():
    """The full-size sdxl-random (SDXL base's published configs), built on the meta device: its parameter counts
    are SDXL base's, and its 70 cross-attention layers fall in 11 blocks."""
    from accelerate import init_empty_weights

    from cifc_bench.diffusion.layerwise import token_layers
    from cifc_bench.diffusion.sdxl import FULL, sdxl_parts

    with init_empty_weights():
        parts = sdxl_parts(FULL)
    counts = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "text_encoder", "text_encoder_2")}
    assert counts == {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}
    layers = token_layers(parts["unet"])
    assert len(layers) == 70 and max(layers) + 1 == 11


@pytest.mark.slow
def test_cifc10_smoke_run_on_sdxl_and_the_papers_sdxl_rows_beside_it(cifc10_dir, tmp_path):
    import json
    import subprocess
    import sys

    from cifc_bench.cli import main

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifc_bench.cli", "run", "--method", "finetune", "--protocol", "cifc10",
           "--model", "sdxl-tiny-random", "--scorer", "tiny-random", "--data-dir", str(cifc10_dir), "--steps", "2",
           "--prompts-per-concept", "2", "--images-per-prompt", "1", "--resolution", "32", "--num-inference-steps",
           "4", "--dino", "none", "--calibration-images", "4", "--multi-images-per-prompt", "2",
           "--retention-prompts", "3",
           "--tracks", "style_transfer,editing", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["run_info"]["model_family"] == "sdxl"
    for metric in ("ia", "ta"):
        R = result["matrices"][metric]
        assert all((R[j][i] is None) == (i > j) for j in range(10) for i in range(10))
    assert all(v["final"] is not None for k, v in result["summary"].items() if k not in ("min_sim",)), result["summary"]
    table = tmp_path / "board.md"
    assert main(["leaderboard", "--protocol", "cifc10", "--results", str(tmp_path), "--include-dirty",
                 "--out", str(table)]) == 0
    text = table.read_text()
    assert "| finetune [SDXL]" in text and "[paper] CIDM (SDXL, reported)" in text and "(SD-1.5, reported)" in text
