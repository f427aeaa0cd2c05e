"""``cifc-bench bench``: the device's figures in one command, for the real tier's cost model.

On the device at hand it times, on SD-1.5's architecture with random weights (``sd15-random``: the speed of the
real model, offline), at 512 px and 50 sampler steps:

- seconds per concept image (the harness's sampler) and per CCS image (CIDM with two stored tasks, two boxes:
  U + 2 evaluations per step in one call), in each precision: fp32, bf16, and bf16 compiled;
- the same concept images through diffusers' ``StableDiffusionPipeline`` (same model, scheduler, steps,
  guidance, batch and seeds), and the ratio;
- the UNet's achieved TFLOP/s (its FLOPs counted by ``torch.utils.flop_counter`` on one guided forward) and the
  fraction of the device's dense peak where the device is known;
- one training step of every registered method.

The first call of each kind is timed apart (warm-up, compile). ``--smoke`` runs the same code on the tiny
random model at 32 px in seconds, on any CPU: the test suite runs it. ``--sdxl`` times SDXL base's architecture
(``sdxl-random``) at 1024 px against ``StableDiffusionXLPipeline`` the same way. The JSON goes to
``results/gpu-check/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: dense peak TFLOP/s by device name fragment: (bf16/fp16 tensor cores, fp32 through TF32 tensor cores); vendors'
#: data sheets (H100 SXM5 and H200: 989.4 and 494.7; H100 PCIe: 756 and 378; A100: 312 and 156)
PEAKS = {"H200": (989.4, 494.7), "H100 PCIe": (756.0, 378.0), "H100": (989.4, 494.7), "A100": (312.0, 156.0)}
PRECISIONS = ("fp32", "bf16", "bf16-compiled")
#: arguments that keep a method's per-task work short without changing its training step (as the GPU check)
QUICK_ARGS = {"custom-diffusion": {"reg_images": 4}}


@dataclass(frozen=True)
class BenchSettings:
    """What ``bench`` measures with; the defaults are the real tier's evaluation settings."""

    model: str = "sd15-random"
    resolution: int = 512
    steps: int = 50
    batch: int = 8
    guidance: float = 7.5
    precisions: tuple[str, ...] = PRECISIONS
    methods: tuple[str, ...] | None = None  # None: every registered method
    train_steps: int = 3  # timed after one warm-up step
    train_batch: int = 2  # the real tier's training batch (cifc10)
    train_repeats: int = 1  # each budget is timed this often and the fastest kept (a busy CPU's noise is one-sided)


SMOKE = BenchSettings(model="tiny-random", resolution=32, steps=2, batch=2, precisions=("fp32", "bf16"), train_steps=4,
                      train_batch=1, train_repeats=3)
#: ``--sdxl``: SDXL base's architecture (``sdxl-random``) at its own 1024 px; with ``--smoke``, the tiny SDXL
SDXL_BENCH = BenchSettings(model="sdxl-random", resolution=1024, batch=4)
SDXL_SMOKE = dataclasses.replace(SMOKE, model="sdxl-tiny-random")


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - started, out


def describe_device(device: str) -> dict[str, Any]:
    """The device as the bench records it; its name is what --dry-run looks a bench up by."""
    import torch

    from cifc_bench.cli.run import device_name

    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": device_name(device), "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "torch": torch.__version__, "cuda": torch.version.cuda}
    return {"kind": "cpu", "name": device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def peak_tflops(device_info: dict[str, Any], dtype: str) -> float | None:
    """The device's dense peak for ``dtype`` (fp32 through TF32), or None for a device not in :data:`PEAKS`."""
    for fragment, (half, tf32) in PEAKS.items():
        if device_info.get("kind") == "cuda" and fragment in device_info.get("name", ""):
            return tf32 if dtype == "fp32" else half
    return None


def _requests(batch: int, boxed: bool):
    from cifc_bench.api import Box, GenerationRequest

    concepts = tuple(_concept(i) for i in range(2)) if boxed else ()
    prompt = "a photo of a <c0a> <c0b> and a <c1a> <c1b>" if boxed else "a photo of a <c0a> <c0b> on the beach"
    boxes = (Box(0.0, 0.0, 1.0, 0.5), Box(0.0, 0.5, 1.0, 1.0)) if boxed else None
    return [GenerationRequest(prompt=prompt, seed=k, concepts=concepts, boxes=boxes) for k in range(batch)]


def _concept(i: int):
    from cifc_bench.api import Concept

    return Concept(name=f"c{i}", placeholders=(f"<c{i}a>", f"<c{i}b>"), initializers=(0.01, "dog"), class_word="dog",
                   kind="object", image_dir=None, caption_dir=None, prompt_set="x", eval_replacement=f"<c{i}a> <c{i}b>",
                   eval_prompts=())


def _bundle(settings: BenchSettings, device: str, precision: str):
    from cifc_bench.core.precision import cast_frozen
    from cifc_bench.diffusion.models import compile_bundle, load_bundle

    bundle = load_bundle(settings.model, device)
    cast_frozen(bundle, precision.split("-")[0])
    if precision.endswith("-compiled"):
        compile_bundle(bundle)
    return bundle


def unet_flops(bundle, settings: BenchSettings) -> float:
    """FLOPs of one guided UNet forward (batch 2: conditional and unconditional) at the bench's resolution."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cifc_bench.diffusion.sdxl import SDXL, XLCondition, family, unet_xl

    unet = bundle.unet
    side = settings.resolution // bundle.vae_scale_factor
    latents = torch.zeros(2, unet.config.in_channels, side, side, device=bundle.device, dtype=unet.dtype)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, device=bundle.device, dtype=unet.dtype)
    t = torch.tensor([500, 500], device=bundle.device)
    module = getattr(unet, "_orig_mod", unet)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if family(bundle) == SDXL:  # the pooled embedding and the time ids beside the context
            pooled = torch.zeros(2, bundle.text_encoder_2.config.projection_dim, device=bundle.device, dtype=unet.dtype)
            unet_xl(bundle, latents, t, XLCondition(context, pooled), unet=module)
        else:
            module(latents, t, context)
    return float(counter.get_total_flops())


def time_precision(settings: BenchSettings, device: str, precision: str, device_info: dict) -> dict[str, Any]:
    """Seconds per image of the harness's sampler, of CIDM's CCS and of diffusers' pipeline, in one precision."""
    import torch

    from cifc_bench.api import GenerationSettings
    from cifc_bench.core.precision import autocast
    from cifc_bench.methods.cidm import CIDM
    from cifc_bench.methods.zero_shot import ZeroShot
    from cifc_bench.testing import reference_pipeline, store_random_cidm_task

    dtype = precision.split("-")[0]
    gen = GenerationSettings(resolution=settings.resolution, num_inference_steps=settings.steps,
                             guidance_scale=settings.guidance, batch_size=settings.batch)
    out: dict[str, Any] = {}
    bundle = _bundle(settings, device, precision)
    base = ZeroShot(bundle)
    plain = _requests(settings.batch, boxed=False)
    with autocast(device, dtype):
        out["concept_first_call_s"] = _timed(lambda: base.generate(plain, gen), device)[0]  # warm-up, compile
        seconds = _timed(lambda: base.generate(plain, gen), device)[0]
    out["concept_image_s"] = seconds / settings.batch
    flops = unet_flops(bundle, settings) * settings.steps * settings.batch  # guided: 2 samples per image a step
    out["unet_tflops"] = flops / seconds / 1e12  # sampling's other work counts against it: a lower bound
    peak = peak_tflops(device_info, dtype)
    out["fraction_of_peak"] = out["unet_tflops"] / peak if peak else None
    pipe = reference_pipeline(bundle)  # StableDiffusionXLPipeline on SDXL

    def diffusers_batch():
        return pipe([r.prompt for r in plain], height=settings.resolution, width=settings.resolution,
                    num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                    generator=[torch.Generator("cpu").manual_seed(r.seed) for r in plain]).images

    with autocast(device, dtype):
        diffusers_batch()
        out["pipeline_image_s"] = _timed(diffusers_batch, device)[0] / settings.batch
    out["ratio_to_pipeline"] = out["concept_image_s"] / out["pipeline_image_s"]
    torch.manual_seed(0)
    cidm = CIDM(_bundle(settings, device, precision))
    generator = torch.Generator().manual_seed(0)
    for i in range(2):
        store_random_cidm_task(cidm, _concept(i), generator, std=0.02)
    boxed = _requests(settings.batch, boxed=True)
    with autocast(device, dtype):
        out["ccs_first_call_s"] = _timed(lambda: cidm.generate(boxed, gen), device)[0]
        out["ccs_image_s"] = _timed(lambda: cidm.generate(boxed, gen), device)[0] / settings.batch
    out["ccs_ratio_to_concept"] = out["ccs_image_s"] / out["concept_image_s"]
    return out


def time_training(settings: BenchSettings, device: str, methods, echo=print) -> dict[str, Any]:
    """Seconds per training step of each method (``learn_task`` with 1 and 1 + n steps, on fresh bundles, each
    the fastest of ``train_repeats``; the difference over n), at the device's default precision, on a one-concept
    protocol made here."""
    import torch

    from cifc_bench.api import TrainBudget
    from cifc_bench.core.config import default_dtype
    from cifc_bench.core.precision import autocast
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.core.registry import load_method
    from cifc_bench.testing import make_tiny_protocol

    dtype = default_dtype(device)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cifc-bench-") as tmp:
        spec = load_protocol(str(make_tiny_protocol(Path(tmp), n_concepts=1)))
        task = spec.bind(Path(tmp) / "tiny-data").tasks[0]  # make_tiny_protocol writes its data there
        for name in methods:
            cls = load_method(name)
            seconds = {1: math.inf, 1 + settings.train_steps: math.inf}
            try:
                for steps in [s for s in seconds for _ in range(settings.train_repeats)]:
                    torch.manual_seed(0)
                    method = cls(_bundle(settings, device, dtype), **QUICK_ARGS.get(name, {}))
                    budget = TrainBudget(steps=steps, batch_size=settings.train_batch, resolution=settings.resolution, seed=0)
                    with autocast(device, dtype):
                        took = _timed(lambda m=method, b=budget: m.learn_task(task, b), device)[0]
                    seconds[steps] = min(seconds[steps], took)
            except Exception as err:  # a method that cannot train here is reported, not fatal to the bench
                out[name] = {"error": f"{type(err).__name__}: {err}"}
                echo(f"bench: {name}: {out[name]['error']}")
                continue
            few, many = seconds.values()
            out[name] = {"step_s": max(many - few, 0.0) / settings.train_steps, "per_task_s": few}
            echo(f"bench: {name}: {out[name]['step_s']:.3g} s per training step")
    return out


def run_bench(settings: BenchSettings, device: str, echo=print) -> dict[str, Any]:
    """Every figure of the bench on ``device``, as one JSON-ready dict."""
    from cifc_bench.core.registry import METHODS, list_plugins

    info = describe_device(device)
    result: dict[str, Any] = {"command": "cifc-bench bench", "device": info, "settings": dataclasses.asdict(settings),
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "precisions": {}}
    for precision in settings.precisions:
        echo(f"bench: {precision}: sampling {settings.batch} images at {settings.resolution} px, {settings.steps} steps")
        result["precisions"][precision] = figures = time_precision(settings, device, precision, info)
        echo(f"bench: {precision}: {figures['concept_image_s']:.3g} s per concept image "
             f"({figures['ratio_to_pipeline']:.3f} x diffusers' pipeline), {figures['ccs_image_s']:.3g} s per CCS "
             f"image, UNet {figures['unet_tflops']:.3g} TFLOP/s")
    methods = settings.methods or tuple(sorted(list_plugins(METHODS)))
    result["training"] = time_training(settings, device, methods, echo)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def default_output(info: dict[str, Any], smoke: bool, sdxl: bool = False) -> Path:
    name = "".join(c if c.isalnum() else "-" for c in info.get("name", "device").lower()).strip("-")[:40]
    stamp = datetime.now().strftime("%Y-%m-%d")
    return Path("results") / "gpu-check" / f"{stamp}-{name}-bench{'-sdxl' if sdxl else ''}{'-smoke' if smoke else ''}.json"


def cmd_bench(args) -> int:
    from cifc_bench.cli.parser import CLIError
    from cifc_bench.core.config import default_device

    device = args.device or default_device()
    settings = {(False, False): BenchSettings(), (True, False): SMOKE, (False, True): SDXL_BENCH,
                (True, True): SDXL_SMOKE}[(bool(args.smoke), bool(args.sdxl))]
    if args.precisions:
        unknown = [p for p in args.precisions if p not in PRECISIONS]
        if unknown:
            raise CLIError(f"--precisions {' '.join(args.precisions)}: {unknown[0]!r} is not one of {PRECISIONS}")
        settings = dataclasses.replace(settings, precisions=tuple(args.precisions))
    if args.methods:
        settings = dataclasses.replace(settings, methods=tuple(args.methods))
    result = run_bench(settings, device)
    out = args.out or default_output(result["device"], args.smoke, args.sdxl)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"bench: written {out}")
    return 0
