"""Pretraining of the synthetic tier's base model and scorer (``cifc-bench synth pretrain``).

Both are trained from a seed on scenes drawn on the fly from :mod:`cifc_bench.synth.world`; no personal
identity, personal style or held-out combination is ever shown. The base model is an SD-1.x-shaped
text-to-image model in pixel space (diffusers ``UNet2DConditionModel`` + transformers ``CLIPTextModel`` with the
real CLIP tokenizer); the scorer is an open_clip ``CLIP`` with separate weights, as CLIP ViT-B/32 is separate
from SD-1.5's text encoder. Thread count and step counts are fixed, so the same seed gives the same weights
on the same kind of machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifc_bench.progress import progress
from cifc_bench.synth import world

TEXT_LENGTH = 32
SCORER_ARCH = "cifc-synth-clip"
SCORER_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "patch_size": 4, "head_width": 32},
    "text_cfg": {"context_length": TEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
# pixel space with a cosine schedule: DDIM must clip its x0 estimate, or the first steps explode
SAMPLER = dict(SCHEDULE, clip_sample=True, timestep_spacing="trailing", set_alpha_to_one=False)
MIN_SNR_GAMMA = 5.0


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    unet_steps: int = 3200
    scorer_steps: int = 1200
    batch_size: int = 32
    scorer_batch_size: int = 128
    lr: float = 1e-3
    scorer_lr: float = 1e-3
    caption_keep: float = 0.6
    two_object_fraction: float = 0.15
    uncond_fraction: float = 0.1
    threads: int = 2


def held_out(scene: world.Scene) -> bool:
    """One in ten (shape, fill, position, background) combinations is never shown in pretraining."""
    key = f"{scene.shape}|{scene.fill}|{scene.position}|{scene.background}".encode()
    return hashlib.sha256(key).digest()[0] % 10 == 0


def personal_identities() -> set[tuple]:
    from cifc_bench.synth.protocol import object_identities

    return object_identities()


def training_example(rng: np.random.Generator, cfg: PretrainConfig, exclude: set[tuple]) -> tuple[np.ndarray, str]:
    """One (image, caption) pair from the pretraining distribution."""
    while True:
        scene = world.random_scene(rng, exclude)
        if not held_out(scene):
            break
    seed = int(rng.integers(1 << 31))
    if rng.random() < cfg.two_object_fraction:
        other = world.random_scene(rng, exclude)
        a = world.replace(scene, size="small", position="left", style="plain")
        b = world.replace(other, size="small", position="right", style="plain", background=scene.background)
        return world.render_many([a, b], seed), world.caption_many([a, b], rng, cfg.caption_keep)
    text = world.caption(scene, rng, cfg.caption_keep)
    if scene.style == "plain" and rng.random() < 0.1:
        text = "a picture of " + text
    return world.render(scene, seed), text


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_base_model(seed: int):
    """Tokenizer, text encoder, UNet and scheduler of the synthetic base model, freshly initialised."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cifc_bench.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    tokenizer.model_max_length = TEXT_LENGTH
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=TEXT_LENGTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=64,
    ))
    unet = UNet2DConditionModel(
        sample_size=world.SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    )
    return tokenizer, text_encoder, unet, DDIMScheduler(**SAMPLER)


def pretrain_base(cfg: PretrainConfig, out: Path) -> dict:
    """Train text encoder and UNet jointly with the denoising loss; save a diffusers folder (fp16 weights)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from cifc_bench.models import save_bundle_folder

    tokenizer, text_encoder, unet, scheduler = build_base_model(cfg.seed)
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    alphas = noise_scheduler.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(cfg.unet_steps, 1),
                                                      pct_start=0.05, final_div_factor=20)
    ema_unet, ema_text = EMAModel(unet.parameters(), decay=0.998), EMAModel(text_encoder.parameters(), decay=0.998)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    exclude = personal_identities()
    losses = []
    bar = progress(range(cfg.unet_steps), desc="pretrain base model")
    for _ in bar:
        batch = [training_example(rng, cfg, exclude) for _ in range(cfg.batch_size)]
        pixels = to_tensor([b[0] for b in batch])
        texts = [("" if rng.random() < cfg.uncond_fraction else b[1]) for b in batch]
        ids = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(pixels.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=gen)
        pred = unet(noise_scheduler.add_noise(pixels, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        # Min-SNR-5 weighting (Hang et al. 2023): same optimum, several times faster convergence
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    save_bundle_folder(out, tokenizer, text_encoder.half(), unet.half(), scheduler)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None}


def scorer_model():
    """The open_clip architecture of the synthetic scorer, registered under :data:`SCORER_ARCH`."""
    from cifc_bench.scoring import register_open_clip_config

    return register_open_clip_config(SCORER_ARCH, SCORER_CFG)


def pretrain_scorer(cfg: PretrainConfig, out: Path) -> dict:
    """Contrastive image-caption training (CLIP loss) of a small open_clip model on the world."""
    import open_clip

    arch = scorer_model()
    torch.manual_seed(cfg.seed + 1)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    tokenizer = open_clip.get_tokenizer(arch)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.scorer_lr, weight_decay=0.1)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.scorer_lr,
                                                      total_steps=max(cfg.scorer_steps, 1), pct_start=0.05)
    rng = np.random.default_rng(cfg.seed + 1)
    exclude = personal_identities()
    losses = []
    model.train()
    bar = progress(range(cfg.scorer_steps), desc="pretrain scorer")
    for _ in bar:
        batch = [training_example(rng, cfg, exclude) for _ in range(cfg.scorer_batch_size)]
        # the scorer sees images exactly as scoring will: through its own preprocessing
        from PIL import Image

        images = torch.stack([preprocess(Image.fromarray(b[0])) for b in batch])
        texts = tokenizer([b[1] for b in batch])
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(out)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None}


def pretrain(cfg: PretrainConfig, out_dir: Path) -> dict:
    """Both models plus a manifest (config, timings, sha256 of every file) in ``out_dir``."""
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    report: dict = {"config": asdict(cfg)}
    started = time.perf_counter()
    report["scorer"] = pretrain_scorer(cfg, out_dir / "scorer.pt")
    report["scorer"]["seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    report["base"] = pretrain_base(cfg, out_dir / "base")
    report["base"]["seconds"] = time.perf_counter() - started
    report["files"] = {
        str(p.relative_to(out_dir)): _sha256(p) for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != "manifest.json"
    }
    report["total_bytes"] = sum((out_dir / f).stat().st_size for f in report["files"])
    (out_dir / "manifest.json").write_text(json.dumps(report, indent=1))
    return report


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
