"""Text encoding and a classifier-free-guidance sampling loop shared by methods.

It mirrors diffusers' ``StableDiffusionPipeline.__call__`` but takes the noise predictor as an argument, so a
method can change what the UNet sees (layer-wise tokens, merged adapters, region attention) without copying
the loop. One generator per image makes every image's noise independent of batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def encode_prompts(bundle, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text-encoder hidden states for padded, truncated prompts (SD-1.x conditioning)."""
    tok = bundle.tokenizer(
        list(prompts), padding="max_length", max_length=bundle.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    return bundle.text_encoder(tok.input_ids.to(bundle.text_encoder.device))[0]


def initial_latents(bundle, seeds: Sequence[int], resolution: int) -> torch.Tensor:
    """Start noise: each image gets its own CPU generator, so seed k always yields the same noise."""
    size = resolution // bundle.vae_scale_factor
    noise = [
        torch.randn((1, bundle.latent_channels, size, size), generator=torch.Generator("cpu").manual_seed(s))
        for s in seeds
    ]
    return torch.cat(noise).to(bundle.device)


def decode(bundle, latents: torch.Tensor) -> list:
    """Latents (or pixels, for pixel-space bundles) to PIL images."""
    from PIL import Image

    if bundle.vae is not None:
        latents = bundle.vae.decode(latents / bundle.vae.config.scaling_factor).sample
    pixels = ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(p.numpy()) for p in pixels]


def to_pixels(images) -> torch.Tensor:
    """RGB images (PIL or uint8 HWC arrays) to a [-1, 1] NCHW float batch: the inverse of :func:`decode`."""
    import numpy as np

    arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def unet_predictor(bundle) -> NoisePredictor:
    def predict(latents, t, cond):
        return bundle.unet(latents, t, encoder_hidden_states=cond).sample

    return predict


@torch.no_grad()
def sample(
    bundle,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    seeds: Sequence[int],
    settings,
    predict: NoisePredictor | None = None,
) -> list:
    """Denoise from per-seed noise with classifier-free guidance and the bundle's scheduler."""
    predict = predict or unet_predictor(bundle)
    scheduler = type(bundle.scheduler).from_config(bundle.scheduler.config)
    scheduler.set_timesteps(settings.num_inference_steps, device=bundle.device)
    latents = initial_latents(bundle, seeds, settings.resolution) * scheduler.init_noise_sigma
    guided = settings.guidance_scale > 1.0
    context = torch.cat([uncond, cond]) if guided else cond  # one tensor for every step
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        if guided:
            both = predict(torch.cat([model_in, model_in]), t, context)
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + settings.guidance_scale * (eps_c - eps_u)
        else:
            eps = predict(model_in, t, context)
        latents = scheduler.step(eps, t, latents).prev_sample
    return decode(bundle, latents)


def generate_batched(bundle, prompts: Sequence[str], seeds: Sequence[int], settings, predict=None,
                     encode=encode_prompts) -> list:
    """Generate one image per (prompt, seed) in batches of ``settings.batch_size``."""
    images: list = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = list(prompts[start : start + settings.batch_size])
        with torch.no_grad():
            cond = encode(bundle, batch)
            uncond = encode(bundle, [settings.negative_prompt] * len(batch))
        images.extend(sample(bundle, cond, uncond, seeds[start : start + len(batch)], settings, predict))
    return images
