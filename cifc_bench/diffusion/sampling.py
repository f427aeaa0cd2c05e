"""Text encoding and a classifier-free-guidance sampling loop shared by methods.

It mirrors diffusers' ``StableDiffusionPipeline.__call__`` but takes the noise predictor as an argument, so a
method can change what the UNet sees (layer-wise tokens, merged adapters, region attention) without copying
the loop. One generator per image makes every image's noise independent of batching.

A request may start from an input image (:class:`~cifc_bench.api.ImageInit`): SDEdit style transfer (the input
noised to ``strength``, then denoised; diffusers' img2img timestep rule) and blended editing (outside the box the
latent is the noised input at every step, and after the final step the input's own pixels; diffusers'
inpainting rule). :class:`Trajectory` holds that logic once, for this loop and for a method's own loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def encode_prompts(bundle, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text-encoder hidden states for padded, truncated prompts (SD-1.x conditioning); for an SDXL bundle,
    its two encoders' :class:`~cifc_bench.diffusion.sdxl.XLCondition`."""
    from cifc_bench.diffusion.sdxl import SDXLBundle, encode_xl

    if isinstance(bundle, SDXLBundle):
        return encode_xl(bundle, prompts)
    tok = bundle.tokenizer(
        list(prompts), padding="max_length", max_length=bundle.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    return bundle.text_encoder(tok.input_ids.to(bundle.text_encoder.device))[0]


def encode_unpadded(bundle, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's token ids and context rows ``[T, d]`` unpadded, BOS to EOS (the inputs a closed-form merge
    fits K and V to): the text encoder's output on SD-1.x, both encoders' penultimate states on SDXL."""
    from cifc_bench.diffusion.sdxl import SDXLBundle, encode_xl_unpadded

    if isinstance(bundle, SDXLBundle):
        return encode_xl_unpadded(bundle, prompt)
    ids = bundle.tokenizer(prompt, truncation=True, max_length=bundle.tokenizer.model_max_length).input_ids
    ids = torch.tensor([ids], device=bundle.text_encoder.device)
    return ids[0], bundle.text_encoder(ids)[0][0]


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


def encode_images(bundle, images) -> torch.Tensor:
    """The latents of RGB images at the bundle's scale (the VAE posterior's mean; pixels for a pixel-space
    bundle): what an input image is to the sampler."""
    pixels = to_pixels(images).to(bundle.device)
    if bundle.vae is None:
        return pixels
    pixels = pixels.to(bundle.vae.dtype)
    return bundle.vae.encode(pixels).latent_dist.mode() * bundle.vae.config.scaling_factor


def box_mask(box, height: int, width: int, device=None) -> torch.Tensor:
    """A ``[1, 1, height, width]`` mask, 1 inside the normalised box (the suite's one box rounding)."""
    top, left, bottom, right = box.pixels(height, width)
    mask = torch.zeros(1, 1, height, width, device=device)
    mask[..., top:bottom, left:right] = 1.0
    return mask


class Trajectory:
    """One batch's path through the sampler: its scheduler and timesteps, its start latents and, for an edit,
    the blend after every step and the paste of the input's pixels at the end.

    Text-to-image (no ``inits``): every timestep, from the seeds' noise. With inputs (all with one strength
    and one box): diffusers' img2img rule keeps the last ``int(steps × strength)`` timesteps and noises the
    input to the first of them (strength 1: the seeds' noise alone, as in the inpainting pipeline); with a box,
    after each step the latent outside it becomes the input noised to the next timestep, and after the last
    step the input itself. A method with its own loop uses it as ``for i, t in enumerate(traj.timesteps):
    ...; latents = traj.step(eps, t, latents, i)`` then ``traj.finish(latents)``.
    """

    def __init__(self, bundle, seeds: Sequence[int], settings, inits=None) -> None:
        self.bundle = bundle
        self.scheduler = type(bundle.scheduler).from_config(bundle.scheduler.config)
        self.scheduler.set_timesteps(settings.num_inference_steps, device=bundle.device)
        self.timesteps = self.scheduler.timesteps
        noise = initial_latents(bundle, seeds, settings.resolution)
        self.inits = list(inits) if inits is not None and any(i is not None for i in inits) else None
        self.mask = None
        if self.inits is None:
            self.latents = noise * self.scheduler.init_noise_sigma
            return
        if any(i is None for i in self.inits) or len({(i.strength, i.box) for i in self.inits}) > 1:
            raise ValueError("one batch of image-conditioned requests must share one strength and one box; "
                             "generate_batched groups them")
        first = self.inits[0]
        from cifc_bench.core.images import fit_input

        images = [fit_input(i.image, settings.resolution) for i in self.inits]
        self.images = images
        self.clean = encode_images(bundle, images).to(noise.dtype)
        self.noise = noise
        n, order = settings.num_inference_steps, self.scheduler.order
        start = n - min(int(n * first.strength), n)  # diffusers' StableDiffusionImg2ImgPipeline.get_timesteps
        self.timesteps = self.scheduler.timesteps[start * order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start * order)
        if first.strength >= 1.0:
            self.latents = noise * self.scheduler.init_noise_sigma
        elif len(self.timesteps):
            self.latents = self.scheduler.add_noise(self.clean, noise, self.timesteps[:1].repeat(len(seeds)))
        else:  # a strength too small for one step: the input, through the codec
            self.latents = self.clean
        if first.box is not None:
            h, w = self.clean.shape[-2:]
            self.mask = box_mask(first.box, h, w, self.clean.device)

    def step(self, eps: torch.Tensor, t, latents: torch.Tensor, i: int) -> torch.Tensor:
        latents = self.scheduler.step(eps, t, latents).prev_sample
        if self.mask is None:
            return latents
        if i + 1 < len(self.timesteps):  # the input at the noise level of the next step
            outside = self.scheduler.add_noise(self.clean, self.noise, self.timesteps[i + 1 : i + 2].repeat(len(latents)))
        else:
            outside = self.clean
        return self.mask * latents + (1 - self.mask) * outside.to(latents.dtype)

    def finish(self, latents: torch.Tensor) -> list:
        """The images; with a box, every pixel outside it is the input's own (a decoder mixes neighbours)."""
        images = decode(self.bundle, latents)
        if self.mask is None:
            return images
        box = self.inits[0].box
        out = []
        for image, source in zip(images, self.images, strict=True):
            top, left, bottom, right = box.pixels(image.height, image.width)
            kept = source.copy()
            kept.paste(image.crop((left, top, right, bottom)), (left, top))
            out.append(kept)
        return out


def unet_predictor(bundle) -> NoisePredictor:
    from cifc_bench.diffusion.sdxl import SDXLBundle, unet_xl

    if isinstance(bundle, SDXLBundle):
        return lambda latents, t, cond: unet_xl(bundle, latents, t, cond)

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
    inits=None,
) -> list:
    """Denoise from per-seed noise (or from ``inits``, one :class:`~cifc_bench.api.ImageInit` or None per
    seed) with classifier-free guidance and the bundle's scheduler."""
    predict = predict or unet_predictor(bundle)
    traj = Trajectory(bundle, seeds, settings, inits)
    latents = traj.latents
    guided = settings.guidance_scale > 1.0
    context = join_conditions([uncond, cond]) if guided else cond  # one batch for every step
    for i, t in enumerate(traj.timesteps):
        model_in = traj.scheduler.scale_model_input(latents, t)
        if guided:
            both = predict(torch.cat([model_in, model_in]), t, context)
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + settings.guidance_scale * (eps_c - eps_u)
        else:
            eps = predict(model_in, t, context)
        latents = traj.step(eps, t, latents, i)
    return traj.finish(latents)


def join_conditions(parts):
    """Conditions of several batches as one: tensors concatenated (SD-1.x), or SDXL's context and pooled parts."""
    from cifc_bench.diffusion.sdxl import XLCondition

    return XLCondition.cat(parts) if isinstance(parts[0], XLCondition) else torch.cat(parts)


def unconditional(bundle, negative_prompt: str, n: int, cond, encode=None):
    """The guidance's unconditional batch: the negative prompt encoded; on SDXL an empty one is zeros, as its
    pipeline does (``force_zeros_for_empty_prompt``)."""
    from cifc_bench.diffusion.sdxl import XLCondition

    if isinstance(cond, XLCondition) and not negative_prompt:
        return cond.zeros_like()
    return (encode or encode_prompts)(bundle, [negative_prompt] * n)


def condition_batches(n: int, batch_size: int, inits=None) -> list[list[int]]:
    """Indices 0..n-1 in order, in batches of at most ``batch_size`` that share one image condition (their
    timesteps and box): without ``inits``, the plain consecutive batches."""
    out: list[tuple[object, list[int]]] = []
    for k in range(n):
        init = inits[k] if inits is not None else None
        key = None if init is None else (init.strength, init.box)
        if out and out[-1][0] == key and len(out[-1][1]) < batch_size:
            out[-1][1].append(k)
        else:
            out.append((key, [k]))
    return [idx for _, idx in out]


def generate_batched(bundle, prompts: Sequence[str], seeds: Sequence[int], settings, predict=None,
                     encode=encode_prompts, inits=None) -> list:
    """Generate one image per (prompt, seed[, init]) in batches of ``settings.batch_size``."""
    images: list = []
    for idx in condition_batches(len(prompts), settings.batch_size, inits):
        with torch.no_grad():
            cond = encode(bundle, [prompts[k] for k in idx])
            uncond = unconditional(bundle, settings.negative_prompt, len(idx), cond, encode)
        images.extend(sample(bundle, cond, uncond, [seeds[k] for k in idx], settings, predict,
                             [inits[k] for k in idx] if inits is not None else None))
    return images


def generate_requests(bundle, requests, settings, predict=None, encode=encode_prompts, prompts=None) -> list:
    """:func:`generate_batched` for requests: their prompts (or ``prompts``, e.g. with class words), seeds and
    input images, so a method's ``generate`` gets style transfer and editing without a line of its own."""
    prompts = [r.prompt for r in requests] if prompts is None else list(prompts)
    return generate_batched(bundle, prompts, [r.seed for r in requests], settings, predict, encode,
                            [r.init for r in requests])
