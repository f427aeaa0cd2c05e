"""SDXL as a second backbone (issue 38): the bundle, its conditioning, and the random models.

SDXL conditions its UNet on two text encoders and on the image size: the context is the concatenation of both
encoders' penultimate hidden states, the pooled embedding is the second encoder's projected EOS feature, and the
added time ids are (original size, crop top-left, target size). With an empty negative prompt the unconditional
embeddings are zeros (the base model's ``force_zeros_for_empty_prompt``). This mirrors diffusers'
``StableDiffusionXLPipeline`` (``encode_prompt``, ``_get_add_time_ids``), so that the harness's sampler draws
its images (``tests/test_sdxl.py``).

``sdxl-tiny-random`` is SDXL's architecture at toy size, for tests and smoke runs; ``sdxl-random`` is SDXL base's
at full size, for the GPU check. Both have seeded random weights and are built offline; their images mean nothing.
A method declares the families it runs on (``Method.families``); the harness refuses the others at start.
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
_FULL_VERSION = "v1"


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


def context_of(cond):
    """The cross-attention context of a condition: SDXL's ``context`` part, or the SD-1.x tensor itself."""
    return cond.context if isinstance(cond, XLCondition) else cond


def expand_batch(cond, n: int):
    """A condition of one prompt as a batch of ``n`` (a view: no copy), either family."""
    if isinstance(cond, XLCondition):
        return XLCondition(expand_batch(cond.context, n), cond.pooled.expand(n, -1))
    return cond.expand(n, *([-1] * (cond.ndim - 1)))


def _both_encoders(bundle: SDXLBundle, prompts: Sequence[str], padded: bool):
    """(the last ids, both encoders' penultimate states concatenated, the second's pooled projection) of a
    batch, padded to the context length (the UNet's condition) or not (one prompt's rows)."""
    hidden, ids, pooled = [], None, None
    for tokenizer, encoder in ((bundle.tokenizer, bundle.text_encoder), (bundle.tokenizer_2, bundle.text_encoder_2)):
        ids = tokenizer(list(prompts), padding="max_length" if padded else False, max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the second encoder's text_embeds (the first one's is overwritten, as in diffusers)
    return ids, torch.cat(hidden, dim=-1), pooled


def encode_xl(bundle: SDXLBundle, prompts: Sequence[str]) -> XLCondition:
    """Both encoders' penultimate hidden states, concatenated, and the second's pooled projection."""
    _, context, pooled = _both_encoders(bundle, prompts, padded=True)
    return XLCondition(context, pooled)


def encode_xl_unpadded(bundle: SDXLBundle, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_xl`'s context of one prompt without padding: its ids and both encoders' penultimate states,
    concatenated (``[T, d1 + d2]``). Both tokenizers split a prompt alike (they differ in the pad token only)."""
    ids, context, _ = _both_encoders(bundle, [prompt], padded=False)
    return ids[0], context[0]


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


def sdxl_random() -> Path:
    """The ``sdxl-random`` model's folder: SDXL base 1.0's architecture at full size with seeded random weights
    (fp16 on disk, about 7 GB), built offline on first use (entry point ``sdxl-random``). The GPU check runs it
    at 1024 px; its images and scores mean nothing."""
    from cifc_bench.diffusion.model_folders import built_once

    return built_once(cache_dir() / "models" / f"sdxl-random-{_FULL_VERSION}", save_sdxl_random)


#: SDXL's structure at toy size: two CLIP text encoders (the second with a projection), a ``text_time`` UNet
#: whose added-condition input is the pooled width plus six 8-wide time embeddings, a 4-channel VAE.
TINY = {
    "text": dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_hidden_layers=3, projection_dim=16),
    "text_2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                   projection_dim=32),
    "unet": dict(sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16 + 32,
                 attention_head_dim=(2, 4), norm_num_groups=8, addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8, transformer_layers_per_block=(1, 2)),
    "vae": dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32),
}

#: SDXL base 1.0's published configs (stabilityai/stable-diffusion-xl-base-1.0: text_encoder, text_encoder_2,
#: unet, vae): CLIP ViT-L/14's text tower, OpenCLIP ViT-bigG/14's with its projection, the 2.6B UNet.
FULL = {
    "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 projection_dim=768, hidden_act="quick_gelu"),
    "text_2": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                   projection_dim=1280, hidden_act="gelu"),
    "unet": dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), norm_num_groups=32, addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, transformer_layers_per_block=(1, 2, 10)),
    "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                norm_num_groups=32, sample_size=1024, force_upcast=True),
}


def sdxl_parts(sizes: dict, seed: int = 0) -> dict:
    """SDXL's components at ``sizes`` (:data:`TINY` or :data:`FULL`) with seeded random weights, as the keyword
    arguments of a ``StableDiffusionXLPipeline``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from cifc_bench.diffusion.tokenizer import CONTEXT_LENGTH, build_clip_tokenizer

    tokenizer = build_clip_tokenizer()

    def text_config(size: dict) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=CONTEXT_LENGTH, bos_token_id=49406,
                              eos_token_id=49407, pad_token_id=49407, **size)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(sizes["text"]))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(sizes["text_2"]))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True,
                                addition_embed_type="text_time", **sizes["unet"])
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.13025, **sizes["vae"])
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


def save_sdxl_tiny_random(path: Path, seed: int = 0) -> Path:
    """:data:`TINY` SDXL, saved as a ``StableDiffusionXLPipeline`` folder."""
    return _save(path, sdxl_parts(TINY, seed))


def save_sdxl_random(path: Path, seed: int = 0) -> Path:
    """:data:`FULL` SDXL, saved in fp16 as a ``StableDiffusionXLPipeline`` folder (loading casts to fp32)."""
    parts = sdxl_parts(FULL, seed)
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        parts[name].to(torch.float16)
    return _save(path, parts)


def _save(path: Path, parts: dict) -> Path:
    from diffusers import StableDiffusionXLPipeline

    from cifc_bench.core.atomic import atomic_directory

    with atomic_directory(Path(path)) as tmp:
        StableDiffusionXLPipeline(**parts).save_pretrained(tmp)
    return Path(path)
