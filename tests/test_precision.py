"""Mixed precision (``--dtype``): frozen weights in bf16/fp16, what a method trains in fp32, under autocast.

Every registered method learns and samples on a bf16 bundle on the CPU (autocast's CPU kernels raise the same
dtype-mismatch errors as CUDA's), and every weight it changed must be fp32 while the untouched ones stay bf16.
"""

import numpy as np
import pytest
import torch

from cifc_bench.api import GenerationRequest, GenerationSettings, TrainBudget
from cifc_bench.core.config import ConfigError, RunSpec
from cifc_bench.core.precision import autocast, cast_frozen, loss_scaler
from cifc_bench.core.registry import METHODS, list_plugins, load_method
from cifc_bench.diffusion.models import load_bundle
from cifc_bench.testing import QUICK_METHOD_ARGS


@pytest.fixture(scope="module")
def sequence(tiny_protocol):
    from cifc_bench.core.protocol import load_protocol

    return load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_method_trains_fp32_masters_on_a_bf16_bundle_and_samples(name, sequence, monkeypatch):
    stepped: dict[int, torch.nn.Parameter] = {}
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):  # every parameter any optimiser updates
        stepped.update({id(p): p for g in self.param_groups for p in g["params"]})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    torch.manual_seed(0)
    bundle = cast_frozen(load_bundle("tiny-random"), "bf16")
    method = load_method(name)(bundle, **QUICK_METHOD_ARGS.get(name, {}))
    with autocast("cpu", "bf16"):
        for task in sequence.tasks[:2]:  # the second task exercises what methods do with earlier tasks
            method.learn_task(task, TrainBudget(steps=2, batch_size=2, resolution=32, seed=task.index))
        c = sequence.concepts[0]
        images = method.generate([GenerationRequest(prompt=c.eval_prompts[0], seed=k, concepts=(c,)) for k in (1, 2)],
                                 GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=2))
    assert all(p.dtype == torch.float32 for p in stepped.values()), \
        f"trained parameters must be fp32 masters, got {sorted({str(p.dtype) for p in stepped.values()})}"
    assert bool(stepped) == (method.trainable_parameters() > 0)
    frozen = [(n, p.dtype) for n, p in bundle.unet.named_parameters() if id(p) not in stepped]
    assert frozen and all(d == torch.bfloat16 for _, d in frozen), \
        f"frozen (and merged) UNet weights must stay bf16: {[f for f in frozen if f[1] != torch.bfloat16][:3]}"
    assert bundle.text_encoder.dtype == torch.float32  # its token rows train
    state = method.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert len(images) == 2 and all(np.ptp(np.asarray(im)) > 0 for im in images)


def test_bf16_run_records_its_dtype_and_its_images_differ_from_fp32(tiny_protocol, tmp_path):
    from cifc_bench.core.images import load_rgb
    from cifc_bench.evaluation.image_cache import image_dir
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    runs = {d: run_benchmark(tiny_run_config(tiny_protocol, dtype=d), tmp_path / d) for d in ("fp32", "bf16")}
    assert runs["bf16"]["status"] == "completed"
    assert runs["bf16"]["run_info"]["dtype"] == "bf16" and runs["fp32"]["run_info"]["dtype"] == "fp32"
    assert runs["bf16"]["run_info"]["identity"] != runs["fp32"]["run_info"]["identity"]
    first = runs["fp32"]["concepts"][0]
    pixels = {d: np.asarray(load_rgb(image_dir(tmp_path / d, 0, first) / "p000_s000.png"), dtype=float) for d in runs}
    assert np.abs(pixels["bf16"] - pixels["fp32"]).max() > 0, "a bf16 run must actually sample in bf16"
    assert all(v is not None for v in runs["bf16"]["matrices"]["ia"][-1])


def test_dtype_defaults_to_bf16_on_cuda_and_fp32_elsewhere():
    assert RunSpec(device="cuda").resolved({}).dtype == "bf16"
    assert RunSpec(device="cuda:1").resolved({}).dtype == "bf16"
    assert RunSpec(device="cpu").resolved({}).dtype == "fp32"
    assert RunSpec(device="cuda", dtype="fp32").resolved({}).dtype == "fp32"


def test_unknown_dtype_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"--dtype 'float8'.*fp32.*bf16.*fp16"):
        RunSpec(dtype="float8")


def test_loss_scaling_is_on_for_fp16_only():
    assert loss_scaler(cast_frozen(load_bundle("tiny-random"), "fp16")).is_enabled()
    assert not loss_scaler(cast_frozen(load_bundle("tiny-random"), "bf16")).is_enabled()
    assert not loss_scaler(load_bundle("tiny-random")).is_enabled()
