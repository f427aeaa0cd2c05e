"""Building blocks that customization methods share: new placeholder tokens, a concept's training data and
the denoising loss. A method's own module still holds its whole algorithm; these are the SD-1.x basics.

Training prompts follow the CIDM release (spec D.4): the BLIP caption, with its class phrase replaced by the
placeholders, wrapped in a random object or style template.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cifc_bench.api import Concept, DivergenceError
from cifc_bench.core.loggers import logging, report
from cifc_bench.diffusion.sdxl import XLCondition, unet_xl
from cifc_bench.diffusion.tokens import embedding_tables

OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
# the release's 16 style templates as it lists them (lib/data/pil_transform.py, EnhanceText), repeats included:
# "a cropped {}" and "a close-up {}" appear twice, so they are drawn twice as often
STYLE_TEMPLATES = (
    "a {}", "a rendering {}", "a cropped {}", "the {}", "a clean {}", "a dirty {}", "a cool painting {}",
    "a close-up {}", "a bright {}", "a cropped {}", "a good {}", "a close-up {}", "a nice {}", "a small {}",
    "a weird {}", "a large {}",
)


#: q/k/v/out of every cross-attention layer: CIDM's LoRA placement, which the LoRA baselines share
CROSS_ATTENTION = r".*attn2\.(to_q|to_k|to_v|to_out\.0)"


def lora_config(rank: int, targets: str):
    """The peft LoRA config every LoRA baseline uses: rank ``rank`` at scale 1 (alpha = r) on the modules matching
    ``targets``, with peft's default init, Kaiming-uniform A (a = √5, |A| ≤ 1/√fan_in) and zero B. That is the
    init of CIDM's own LoRA and of both official codes (CIDM ``edlora.py``, Mix-of-Show ``edlora.py``); peft's
    ``"gaussian"`` (A ~ N(0, 1/r)) would let ΔW grow 8-15× faster per Adam step at SD-1.5 widths.
    """
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=int(rank), target_modules=targets, init_lora_weights=True)


def training_prompt(concept: Concept, caption: str, rng: random.Random) -> str:
    """Caption with the class phrase replaced by the placeholders, inside a random template."""
    phrase = concept.caption_phrase or concept.class_word
    text = caption.strip()
    text = text.replace(phrase, concept.token_string) if phrase in text else f"{concept.token_string} {text}"
    templates = STYLE_TEMPLATES if concept.kind == "style" else OBJECT_TEMPLATES
    return " ".join(rng.choice(templates).format(text).split())


def concept_dataset(concept: Concept):
    """The concept's (image, caption) pairs as a ``datasets.Dataset`` with a decoded Image column."""
    from datasets import Dataset, Image

    paths = [str(p) for p in concept.image_paths()]
    captions = []
    for p in concept.image_paths():
        cap = concept.caption_dir / f"{p.stem}.txt" if concept.caption_dir else None
        captions.append(cap.read_text().splitlines()[0] if cap is not None and cap.exists() else concept.class_word)
    return Dataset.from_dict({"image": paths, "caption": captions}).cast_column("image", Image(mode="RGB"))


def default_augment(image, resolution: int):
    """Resize the short side, random square crop; the whole canvas is valid (mask of ones)."""
    from torchvision import transforms

    t = transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomCrop(resolution),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])
    return t(image), torch.ones(1, resolution, resolution)


@dataclass
class ConceptBatches:
    """An endless, seeded stream of augmented training batches for one concept (no other task's data).

    Yields (pixels [B,3,R,R] in [-1,1], valid-region masks [B,1,R,R], prompts). ``augment`` maps a PIL image
    and the resolution to (pixels, mask); its randomness comes from torch's global RNG, seeded per task.
    """

    concept: Concept
    resolution: int
    batch_size: int
    seed: int
    augment: Callable = default_augment

    def __post_init__(self) -> None:
        data = concept_dataset(self.concept)
        # decoded once per task, not at every step (a 4k-pixel JPEG takes about half a second to decode)
        self._images, self._captions = list(data["image"]), list(data["caption"])
        self._rng = random.Random(self.seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def __iter__(self):
        n = len(self._images)
        while True:
            order = torch.randperm(n, generator=self._gen).tolist()
            for start in range(0, n - n % self.batch_size or n, self.batch_size):
                rows = order[start : start + self.batch_size]
                pairs = [self.augment(self._images[i], self.resolution) for i in rows]
                prompts = [training_prompt(self.concept, self._captions[i], self._rng) for i in rows]
                yield torch.stack([p for p, _ in pairs]), torch.stack([m for _, m in pairs]), prompts


def diffusion_loss(bundle, noise_scheduler, pixels: torch.Tensor, prompt_embeds: torch.Tensor, unet=None,
                   generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                   noise_offset: float = 0.0) -> torch.Tensor:
    """The denoising loss of SD training on one batch (VAE latents, random timesteps), against the target of the
    bundle's parameterisation (epsilon for SD-1.5, v for SD-2 and the synthetic base model).

    Plain MSE by default. With ``mask`` (valid-image regions at pixel resolution) it is CIDM's masked loss:
    mean over the batch of Σ_{c,h,w} M·(ε̂−ε)² / Σ_{h,w} M, i.e. channels summed, pixels averaged.
    ``noise_offset`` adds a per-channel constant to the noise (ε + offset·ξ, ξ of shape [B, C, 1, 1]).
    """
    unet = unet or bundle.unet
    latents = pixels.to(bundle.device)
    if bundle.vae is not None:
        with torch.no_grad():
            latents = bundle.vae.encode(latents).latent_dist.sample(generator) * bundle.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator).to(latents)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    t = t.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if isinstance(prompt_embeds, XLCondition):  # SDXL: the pooled embedding and the time ids beside the context
        pred = unet_xl(bundle, noisy, t, prompt_embeds, unet)
    else:
        pred = unet(noisy, t, encoder_hidden_states=prompt_embeds).sample
    target = diffusion_target(noise_scheduler, latents, noise, t)
    if mask is None:
        return F.mse_loss(pred.float(), target.float())
    m = F.interpolate(mask.to(latents), size=latents.shape[-2:], mode="nearest")
    per_sample = (m * (pred.float() - target.float()) ** 2).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp(min=1)
    return per_sample.mean()


def diffusion_target(noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should output for ``add_noise(clean, noise, t)`` under the scheduler's ``prediction_type``."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(clean, noise, t)
    if kind == "sample":
        return clean
    raise ValueError(f"unknown prediction_type {kind!r} in the scheduler config; known: epsilon, v_prediction, sample")


class TokenRows:
    """The new placeholder rows of the text encoder's embedding matrix as a leaf tensor of their own, so that
    the optimiser updates only them (AdamW over the whole 49k-row matrix, then copying every other row back,
    cost a fifth of a synth10 step). Bitwise what that gave: the gradient still comes from the matrix's dense
    backward, and AdamW's update is element-wise. Per step::

        loss.backward(); rows.pull_grad(); optimizer.step(); rows.push()
    """

    def __init__(self, embedding: torch.Tensor, ids: Sequence[int]) -> None:
        self.embedding, self.ids = embedding, list(ids)
        self.rows = embedding.detach()[self.ids].clone().requires_grad_(True)
        embedding.requires_grad_(True)  # the dense backward that gives the rows' gradient

    def pull_grad(self) -> None:
        """Take the rows' gradient from the matrix's (and drop the matrix's)."""
        grad = self.embedding.grad
        self.rows.grad = None if grad is None else grad[self.ids].clone()
        self.embedding.grad = None

    def push(self) -> None:
        """Write the optimised rows into the matrix."""
        with torch.no_grad():
            self.embedding[self.ids] = self.rows.detach().to(self.embedding.dtype)

    def close(self) -> None:
        self.embedding.requires_grad_(False)
        self.embedding.grad = None


def optimizer_step(loss: torch.Tensor, optimizer, scaler, tokens: TokenRows | Sequence[TokenRows],
                   push: bool = True) -> None:
    """One step on ``loss``: reported to the loggers, back-propagated (scaled for fp16), the new token rows'
    gradients pulled into their own tensors (one per embedding table: two on SDXL), the optimiser stepped, and
    the rows pushed back into the embeddings (``push`` False: rows frozen, as CIDM's release freezes them)."""
    tables = [tokens] if isinstance(tokens, TokenRows) else list(tokens)
    if logging():
        report("train/loss", loss.detach())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for rows in tables:
        rows.pull_grad()
    scaler.step(optimizer)
    scaler.update()
    if push:
        for rows in tables:
            rows.push()


def check_loss(loss: torch.Tensor, task, step: int, rates: dict[str, float]) -> None:
    """Stop a task whose loss is no longer finite: a diverged run must fail, never be scored."""
    if not bool(torch.isfinite(loss.detach()).all()):
        shown = ", ".join(f"{k}={v:g}" for k, v in rates.items())
        raise DivergenceError(f"task {task.index + 1} ({task.name}) diverged: the training loss is {float(loss.detach())} at "
                              f"step {step + 1}. The learning rates ({shown}) are the likely cause: lower them with "
                              "--method-args")


def count_parameters(params) -> int:
    return sum(int(p.numel()) for p in params)


def train_lora_and_tokens(bundle, task, budget, lora_params, new_ids, lr: float, embedding_lr: float,
                          generator: torch.Generator, extra_loss=None, encode=None, groups=(), after_step=None):
    """The customisation loop shared by the LoRA methods: AdamW (weight decay 0.01) on ``lora_params`` (``lr``)
    and the embedding rows ``new_ids`` (``embedding_lr``, :class:`TokenRows`: every other row stays as it is);
    loss = diffusion loss on the task's own images + ``extra_loss(pixels, embeds, noise_scheduler, generator)``. ``encode(bundle, prompts)`` turns prompts into UNet context (default: plain text-encoder states).
    ``groups`` are further (parameters, learning rate) pairs trained alongside (Mix-of-Show's text-encoder LoRA).
    Adapter rates, not the token rate, are scaled by the task's ``budget.lr_scale``. ``after_step(n)``, if
    given, is called after step n (1-based) is applied: a learning curve evaluates its snapshots there.
    Returns (trainable parameter count, the task's batch streams, the training noise scheduler).
    """
    from diffusers import DDPMScheduler

    from cifc_bench.core.precision import fp32_trainable, loss_scaler
    from cifc_bench.core.progress import progress
    from cifc_bench.diffusion.sampling import encode_prompts

    adapter_groups = [(list(lora_params), lr), *((list(ps), g_lr) for ps, g_lr in groups)]
    for ps, _ in adapter_groups:
        for p in ps:
            p.requires_grad_(True)
    tables = embedding_tables(bundle)  # SDXL: the rows of both text encoders train
    for emb in tables:
        emb.requires_grad_(True)
    fp32_trainable([bundle.unet, *(e for e in (bundle.text_encoder, getattr(bundle, "text_encoder_2", None)) if e is not None)])
    tokens = [TokenRows(emb, new_ids) for emb in tables]
    scaler = loss_scaler(bundle)
    optimizer = torch.optim.AdamW([*({"params": ps, "lr": g_lr * budget.lr_scale} for ps, g_lr in adapter_groups),
                                   {"params": [t.rows for t in tokens], "lr": embedding_lr}], weight_decay=0.01)
    noise_scheduler = DDPMScheduler.from_config(bundle.scheduler.config)
    streams = [iter(ConceptBatches(c, budget.resolution, budget.batch_size, budget.seed + k))
               for k, c in enumerate(task.concepts)]
    bundle.unet.train()
    for step in progress(range(budget.steps), desc=f"train {task.name}", leave=False):
        pixels, _, prompts = next(streams[step % len(streams)])
        embeds = (encode or encode_prompts)(bundle, prompts)
        loss = diffusion_loss(bundle, noise_scheduler, pixels, embeds, generator=generator)
        if extra_loss is not None:
            loss = loss + extra_loss(pixels, embeds, noise_scheduler, generator)
        check_loss(loss, task, step, {"lr": lr * budget.lr_scale, "embedding_lr": embedding_lr,
                                      **{f"lr[{k + 1}]": g_lr * budget.lr_scale for k, (_, g_lr) in enumerate(groups)}})
        optimizer_step(loss, optimizer, scaler, tokens)
        if after_step is not None:
            after_step(step + 1)
    bundle.unet.eval()
    for rows in tokens:
        rows.close()
    trained = sum(count_parameters(ps) for ps, _ in adapter_groups)
    return trained + len(new_ids) * sum(emb.shape[1] for emb in tables), streams, noise_scheduler
