"""SDXL as a second backbone (issue 38), first part: the bundle, its conditioning and the shared sampler.

SDXL conditions its UNet on two text encoders and on the image size: the context is the concatenation of both
encoders' penultimate hidden states, the pooled embedding is the second encoder's projected EOS feature, and the
added time ids are (original size, crop top-left, target size). With an empty negative prompt the unconditional
embeddings are zeros (the base model's ``force_zeros_for_empty_prompt``). This mirrors diffusers'
``StableDiffusionXLPipeline`` (``encode_prompt``, ``_get_add_time_ids``), so that the harness's sampler draws
its images (``tests/test_sdxl.py``).

``sdxl-tiny-random`` is SDXL's architecture at toy size (two text encoders, a ``text_time`` UNet, a VAE), with
seeded random weights, built offline for tests and smoke runs; its images mean nothing. Methods that learn do not
run on SDXL yet: each declares the families it supports (``Method.families``), and the harness refuses the others
at start with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifc_bench.api import ModelBundle
from cifc_bench.core.data import cache_dir

SDXL = "sdxl"
SD1 = "sd1"
_TINY_VERSION = "v1"


@dataclass
class SDXLBundle(ModelBundle):
    """A :class:`~cifc_bench.api.ModelBundle` with SDXL's second tokenizer and text encoder
    (``CLIPTextModelWithProjection``: its ``text_embeds`` are the pooled embedding)."""

    tokenizer_2: Any = None
    text_encoder_2: Any = None

    def to(self, device) -> SDXLBundle:
        super().to(device)
        self.text_encoder_2.to(device)
        return self

    def freeze(self) -> SDXLBundle:
        super().freeze()
        self.text_encoder_2.requires_grad_(False)
        self.text_encoder_2.eval()
        return self


def family(bundle) -> str:
    """``sdxl`` for an SDXL bundle, else ``sd1``."""
    return SDXL if isinstance(bundle, SDXLBundle) else SD1


@dataclass(frozen=True)
class XLCondition:
    """SDXL's text conditioning of a batch: the context (B × 77 × both widths) and the pooled embedding."""

    context: torch.Tensor
    pooled: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[XLCondition]) -> XLCondition:
        return XLCondition(torch.cat([p.context for p in parts]), torch.cat([p.pooled for p in parts]))

    def zeros_like(self) -> XLCondition:
        return XLCondition(torch.zeros_like(self.context), torch.zeros_like(self.pooled))

    def __len__(self) -> int:
        return len(self.context)


def encode_xl(bundle: SDXLBundle, prompts: Sequence[str]) -> XLCondition:
    """Both encoders' penultimate hidden states, concatenated, and the second's pooled projection."""
    hidden, pooled = [], None
    for tokenizer, encoder in ((bundle.tokenizer, bundle.text_encoder), (bundle.tokenizer_2, bundle.text_encoder_2)):
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the second encoder's text_embeds (the first one's is overwritten, as in diffusers)
    return XLCondition(torch.cat(hidden, dim=-1), pooled)


def time_ids(bundle: SDXLBundle, latents: torch.Tensor) -> torch.Tensor:
    """(original size, crop top-left (0, 0), target size) for every latent: the image size in pixels, uncropped."""
    h, w = (s * bundle.vae_scale_factor for s in latents.shape[-2:])
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=latents.dtype, device=latents.device).repeat(len(latents), 1)


def unet_xl(bundle: SDXLBundle, latents: torch.Tensor, t, cond: XLCondition, unet=None) -> torch.Tensor:
    """SDXL's UNet (``unet``, default the bundle's) on a batch: the context, with the pooled embedding and the
    time ids as added conditions."""
    added = {"text_embeds": cond.pooled.to(latents.dtype), "time_ids": time_ids(bundle, latents)}
    return (unet or bundle.unet)(latents, t, encoder_hidden_states=cond.context, added_cond_kwargs=added).sample


def is_sdxl_folder(source: str) -> bool:
    """Whether a diffusers folder (or hub id) holds an SDXL pipeline (it has a second text encoder)."""
    from diffusers import DiffusionPipeline

    try:
        return "text_encoder_2" in DiffusionPipeline.load_config(source)
    except (OSError, ValueError):
        return False


def load_xl(source: str, name: str) -> SDXLBundle:
    """An SDXL bundle from a diffusers folder or the hub cache, every part in float32 (the run casts later)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cifc_bench.diffusion.model_folders import load_scheduler

    f32 = torch.float32
    return SDXLBundle(
        name=name, source=source,
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=f32),
        tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=f32),
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=f32),
        scheduler=load_scheduler(source, EulerDiscreteScheduler),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=f32),
    )


def sdxl_tiny_random() -> Path:
    """The ``sdxl-tiny-random`` model's folder, built offline on first use (entry point ``sdxl-tiny-random``)."""
    from cifc_bench.diffusion.model_folders import built_once

    return built_once(cache_dir() / "models" / f"sdxl-tiny-random-{_TINY_VERSION}", save_sdxl_tiny_random)


def save_sdxl_tiny_random(path: Path, seed: int = 0) -> Path:
    """SDXL's structure at toy size, from configs with fixed seeds, saved as a ``StableDiffusionXLPipeline``
    folder: two CLIP text encoders (the second with a projection), a UNet with ``text_time`` added conditioning
    whose input width is the pooled width plus six 8-wide time embeddings, a 4-channel VAE, Euler's sampler."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from cifc_bench.core.atomic import atomic_directory
    from cifc_bench.diffusion.tokenizer import CONTEXT_LENGTH, build_clip_tokenizer

    tokenizer = build_clip_tokenizer()

    def text_config(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                              num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=CONTEXT_LENGTH,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=width)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(16))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(32))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16 + 32, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
        transformer_layers_per_block=(1, 2),
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    with atomic_directory(Path(path)) as tmp:
        pipe.save_pretrained(tmp)
    return Path(path)
