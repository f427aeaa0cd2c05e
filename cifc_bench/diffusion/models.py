"""Model bundles: the frozen text-to-image components a method starts from.

Every bundle, SD-1.5 from the hub, a local copy, or the built-in ``tiny-random`` one, goes through the same
diffusers/transformers ``from_pretrained`` code, so a method cannot tell the tiers apart::

    bundle = load_bundle("stable-diffusion-v1-5/stable-diffusion-v1-5")   # hub id or local folder
    bundle = load_bundle("tiny-random")                                    # built offline on first use
"""

from __future__ import annotations

import os
from pathlib import Path

from cifc_bench.api import ModelBundle  # the type is part of the method contract; re-exported here
from cifc_bench.core.data import cache_dir  # re-exported: where built-in models are built
from cifc_bench.diffusion.model_folders import built_once, load_scheduler

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_RANDOM = "tiny-random"
_TINY_VERSION = "v1"
_SD15_RANDOM_VERSION = "v1"

# SD-1.5's noise schedule; the tiny model uses it too so training and sampling code is exercised unchanged.
SD15_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


__all__ = ["ModelBundle", "ModelLoadError", "cache_dir", "load_bundle"]


class ModelLoadError(RuntimeError):
    """A model bundle could not be loaded; the message says what to do."""


def load_bundle(spec: str = DEFAULT_MODEL, device: str = "cpu") -> ModelBundle:
    """Load a bundle from a registered model name (entry-point group ``cifc_bench.models``, e.g. ``tiny-random``),
    a ``package.module:function``, a hub id or a local diffusers folder.

    A registered model is a function that returns a diffusers-layout folder, loaded here through the same
    ``from_pretrained`` code as SD-1.5 (or that returns a ready ``ModelBundle``)."""
    from cifc_bench.core.progress import library_bars_off
    from cifc_bench.core.registry import MODELS, list_plugins, load_component

    library_bars_off()
    if spec in list_plugins(MODELS) or (":" in spec and not Path(spec).expanduser().exists()):
        made = load_component(MODELS, spec, "model")()
        bundle = made if isinstance(made, ModelBundle) else _from_pretrained(str(made))
        bundle.name = spec
    else:
        bundle = _from_pretrained(spec)
    return bundle.freeze().to(device)


def tiny_random() -> Path:
    """The ``tiny-random`` model's folder, built offline on first use (entry point ``tiny-random``)."""
    return built_once(tiny_random_path(), save_tiny_random)


def sd15_random() -> Path:
    """The ``sd15-random`` model's folder: SD-1.5's architecture with random weights (fp16 on disk, 2 GB), built
    offline on first use (entry point ``sd15-random``). It lets the real tier's code path, memory and speed be
    checked on a GPU where the weights cannot be downloaded; its images and scores mean nothing."""
    return built_once(cache_dir() / "models" / f"sd15-random-{_SD15_RANDOM_VERSION}", save_sd15_random)


def _from_pretrained(spec: str) -> ModelBundle:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(spec).expanduser()
    source = str(local) if local.exists() else spec
    has_vae = (local / "vae").exists() if local.exists() else True
    import torch

    try:
        from cifc_bench.diffusion.sdxl import is_sdxl_folder, load_xl

        if is_sdxl_folder(source):
            return load_xl(source, spec)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        # weights may be stored in half precision; methods train and sample in float32
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32)
        scheduler = load_scheduler(source, DPMSolverMultistepScheduler)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32) if has_vae else None
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = (
            f"model {spec!r} is not a local folder and could not be loaded from the Hugging Face hub"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + ". Download it once with network access (e.g. `huggingface-cli download "
            f"{spec}`), or pass --model PATH to a local diffusers folder with tokenizer/, text_encoder/, "
            "unet/, scheduler/ and vae/, or use --model tiny-random for a smoke run."
        )
        raise ModelLoadError(f"{hint}\nUnderlying error: {err}") from err
    return ModelBundle(
        name=spec, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler, vae=vae,
        source=source,
    )


def tiny_random_path() -> Path:
    return cache_dir() / "models" / f"tiny-random-{_TINY_VERSION}"


def save_tiny_random(path: Path, seed: int = 0) -> Path:
    """Build the SD-1.x-shaped tiny model from configs with fixed seeds, then save it as a diffusers folder.

    It keeps SD-1.5's structure (VAE with 4 latent channels, text-conditioned UNet with cross-attention in
    every block, the real CLIP tokenizer), at a size that runs a step in milliseconds on a CPU.
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cifc_bench.diffusion.tokenizer import CONTEXT_LENGTH, build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=CONTEXT_LENGTH, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407, projection_dim=32,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32,
    )
    scheduler = DPMSolverMultistepScheduler(**SD15_SCHEDULE)
    save_bundle_folder(path, tokenizer, text_encoder, unet, scheduler, vae)
    return path


def save_sd15_random(path: Path, seed: int = 0) -> Path:
    """SD-1.5's published configs (CLIP ViT-L/14 text tower, the 860M-parameter UNet, the KL VAE, the PNDM
    scheduler that loading turns into DPM-Solver++) with seeded random weights, saved in fp16."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cifc_bench.diffusion.tokenizer import CONTEXT_LENGTH, build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    )
    scheduler = PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True)
    for model in (text_encoder, unet, vae):
        model.to(torch.float16)
    save_bundle_folder(path, tokenizer, text_encoder, unet, scheduler, vae)
    return path


def save_bundle_folder(path: Path, tokenizer, text_encoder, unet, scheduler, vae=None) -> None:
    """Write a diffusers-layout folder atomically (a temp folder renamed into place)."""
    import json

    from cifc_bench.core.atomic import atomic_directory

    with atomic_directory(Path(path)) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        text_encoder.save_pretrained(tmp / "text_encoder")
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", type(scheduler).__name__],
        }
        if vae is not None:
            vae.save_pretrained(tmp / "vae")
            index["vae"] = ["diffusers", "AutoencoderKL"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))


def compile_bundle(bundle) -> None:
    """Compile the UNet and the VAE decoder in place (``nn.Module.compile``): the modules, their parameter names
    and their states stay as they are, so the adapters a method installs later and the states it saves are
    unchanged (dynamo recompiles when a method changes a module). On CUDA they move to channels_last, the layout
    cuDNN's convolutions run fastest in. CUDA graphs are left off: a method changes the weights between calls."""
    import torch

    for module in (bundle.unet, *((bundle.vae.decoder,) if bundle.vae is not None else ())):
        if torch.device(bundle.device).type == "cuda":
            module.to(memory_format=torch.channels_last)
        module.compile()


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (dynamo and inductor), 0.0 where torch does not say."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # a torch without the metrics: the warm-up is then inside the run's time
        return 0.0
    return float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))
