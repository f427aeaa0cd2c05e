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
import re
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
    # a small conv tower (open_clip's ModifiedResNet): a ViT of this size stayed blind to object shape. Its stem
    # quarters the input, so 32-pixel pictures go in upsampled to 64 (its preprocessing): at 32 the stem left 8x8
    # maps and the scorer named the class of clean renders 70 % of the time, at 64 it does 94 %
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": TEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
# v-prediction: an epsilon loss hardly rewards getting the picture right at high noise, which is exactly where
# the prompt decides background, position and style; with epsilon targets the first model learnt to ignore text
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
# pixel space with a cosine schedule: DDIM must clip its x0 estimate, or the first steps explode
SAMPLER = dict(SCHEDULE, clip_sample=True, timestep_spacing="trailing", set_alpha_to_one=False)
#: most pixel grain (σ, grey levels) the scorer is trained to see through; samples show about 10
SCORER_GRAIN = 12.0
MIN_SNR_GAMMA = 5.0  # clean-image loss weight min(SNR + 1, 5): at least 1 at high noise, capped at low noise


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    text_steps: int = 1200
    unet_steps: int = 3000
    scorer_steps: int = 1200
    text_batch_size: int = 256
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


def training_scenes(rng: np.random.Generator, cfg: PretrainConfig, exclude: set[tuple]) -> tuple[list, str]:
    """The scene(s) and caption of one draw from the pretraining distribution (one object, or 15% two)."""
    while True:
        scene = world.random_scene(rng, exclude)
        if not held_out(scene):
            break
    if rng.random() < cfg.two_object_fraction:
        other = world.random_scene(rng, exclude)
        a = world.replace(scene, size="small", position="left", style="plain")
        b = world.replace(other, size="small", position="right", style="plain", background=scene.background)
        return [a, b], world.caption_many([a, b], rng, cfg.caption_keep)
    text = world.caption(scene, rng, cfg.caption_keep)
    return [scene], ("a picture of " + text if scene.style == "plain" and rng.random() < 0.1 else text)


def training_example(rng: np.random.Generator, cfg: PretrainConfig, exclude: set[tuple]) -> tuple[np.ndarray, str]:
    """One (image, caption) pair from the pretraining distribution."""
    scenes, text = training_scenes(rng, cfg, exclude)
    return world.render_many(scenes, int(rng.integers(1 << 31))), text


def shape_contrast_pair(rng: np.random.Generator, cfg: PretrainConfig, exclude: set[tuple]):
    """Two examples that differ only in the object's class (same caption drops, same jitter): hard negatives
    that make the scorer see shape, which colour-dominated random batches barely reward."""
    scenes, _ = training_scenes(rng, cfg, exclude)
    first = scenes[0]
    shape = str(rng.choice([s for s in world.SHAPES if s != first.shape]))
    other = [world.replace(first, shape=shape), *scenes[1:]]
    if world.identity(other[0]) in exclude:
        other = scenes  # a personal identity is never shown: fall back to a plain repeat
    seed, caption_seed = int(rng.integers(1 << 31)), int(rng.integers(1 << 31))

    def example(sc):
        crng = np.random.default_rng(caption_seed)
        if len(sc) > 1:
            return world.render_many(sc, seed), world.caption_many(sc, crng, cfg.caption_keep)
        return world.render_many(sc, seed), world.caption(sc[0], crng, cfg.caption_keep)

    return example(scenes), example(other)


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


# ----------------------------------------------------------------------------------------------------------
# Stage 1: the text encoder. A CLIP text transformer trained from scratch *together with* the UNet stays
# uninformative and the UNet learns to ignore it (measured: prompt-shuffled captions gave the same loss). SD-1.5
# instead conditions on a frozen encoder pretrained elsewhere; here the encoder is pretrained text-only to parse
# the world's captions, then frozen.

SLOTS = {  # attribute -> its values; class 0 of every slot means "the caption does not say"
    "shape": world.SHAPES, "fill": tuple(world.COLORS), "pattern": world.PATTERNS,
    "pattern_color": tuple(world.COLORS), "size": tuple(world.SIZES), "position": tuple(world.POSITIONS),
}
GLOBAL_SLOTS = {"background": tuple(world.BACKGROUNDS), "style": ("mosaic", "sketch")}
_OBJECT_RE = re.compile(r"^(?:(small|large) )?(?:(\w+) )?(\w+)(?: with (\w+) (\w+))?(?: on the (\w+))?$")


def caption_attributes(text: str) -> dict[str, str]:
    """What a caption of the world's grammar states, e.g. {"shape0": "ball", "fill0": "red", "background": ...}."""
    out: dict[str, str] = {}
    if m := re.match(r"^an? (mosaic|sketch) of (.*)$", text):
        out["style"], text = m.group(1), m.group(2)
    text = text.removeprefix("a picture of ")
    if m := re.search(r", on an? (\w+) background$", text):
        out["background"], text = m.group(1), text[: m.start()]
    for k, part in enumerate(text.removeprefix("a ").split(" and a ")[:2]):
        if m := _OBJECT_RE.match(part):
            size, fill, shape, pcolor, pattern, position = m.groups()
            for key, value in (("size", size), ("fill", fill), ("shape", shape), ("pattern_color", pcolor),
                               ("pattern", pattern), ("position", position)):
                if value is not None:
                    out[f"{key}{k}"] = value
    return out


#: every (slot, values) the text encoder classifies: the object slots for two objects, then the global ones
SLOT_TABLE = [(f"{k}{i}", v) for i in range(2) for k, v in SLOTS.items()] + list(GLOBAL_SLOTS.items())


def caption_targets(text: str) -> list[int]:
    """One class index per slot of :data:`SLOT_TABLE` (0: not stated)."""
    attrs = caption_attributes(text)
    return [values.index(attrs[slot]) + 1 if attrs.get(slot) in values else 0 for slot, values in SLOT_TABLE]


def pretrain_text_encoder(cfg: PretrainConfig, tokenizer, text_encoder) -> dict:
    """Text-only: from the end-of-text state, classify every attribute the caption states; from every word's
    state, name the word (so per-token states, which cross-attention reads, keep their identity)."""
    slots = SLOT_TABLE
    width = text_encoder.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v) + 1) for _, v in slots)
    vocab = sorted({i for w in world.vocabulary() for i in tokenizer(w, add_special_tokens=False).input_ids})
    lookup = torch.full((len(tokenizer),), -100, dtype=torch.long)
    lookup[vocab] = torch.arange(len(vocab))
    word_head = torch.nn.Linear(width, len(vocab))
    params = list(text_encoder.parameters()) + list(heads.parameters()) + list(word_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(cfg.text_steps, 1),
                                                      pct_start=0.05)
    rng, exclude, losses, accs = np.random.default_rng(cfg.seed + 2), personal_identities(), [], []
    bar = progress(range(cfg.text_steps), desc="pretrain text encoder")
    for _ in bar:
        texts = [training_scenes(rng, cfg, exclude)[1] for _ in range(cfg.text_batch_size)]
        ids = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
        out = text_encoder(ids)
        targets = torch.tensor([caption_targets(t) for t in texts])
        logits = [h(out.pooler_output) for h in heads]
        loss = sum(F.cross_entropy(lg, targets[:, k]) for k, lg in enumerate(logits)) / len(heads)
        loss = loss + F.cross_entropy(word_head(out.last_hidden_state).flatten(0, 1), lookup[ids].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.detach()))
        accs.append(float(torch.stack([(lg.argmax(-1) == targets[:, k]).float().mean() for k, lg in enumerate(logits)]).mean()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", acc=f"{np.mean(accs[-50:]):.3f}")
    text_encoder.requires_grad_(False).eval()
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None,
            "attribute_acc": float(np.mean(accs[-100:])) if accs else None}


# ----------------------------------------------------------------------------------------------------------
# Stage 2: the UNet, conditioned on the frozen text encoder.

def pretrain_base(cfg: PretrainConfig, out: Path) -> dict:
    """Pretrain the text encoder (stage 1), freeze it, then train the UNet with the denoising loss; save a
    diffusers folder (fp16 weights)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from cifc_bench.models import save_bundle_folder
    from cifc_bench.sampling import to_pixels
    from cifc_bench.training import diffusion_target

    tokenizer, text_encoder, unet, scheduler = build_base_model(cfg.seed)
    started = time.perf_counter()
    report = {"text_encoder": pretrain_text_encoder(cfg, tokenizer, text_encoder)}
    report["text_encoder"]["seconds"] = time.perf_counter() - started
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    alphas = noise_scheduler.alphas_cumprod
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(cfg.unet_steps, 1),
                                                      pct_start=0.05, final_div_factor=20)
    ema_unet = EMAModel(unet.parameters(), decay=0.998)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    exclude = personal_identities()
    losses = []
    bar = progress(range(cfg.unet_steps), desc="pretrain base model")
    for _ in bar:
        batch = [training_example(rng, cfg, exclude) for _ in range(cfg.batch_size)]
        pixels = to_pixels([b[0] for b in batch])
        texts = [("" if rng.random() < cfg.uncond_fraction else b[1]) for b in batch]
        ids = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(pixels.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=gen)
        with torch.no_grad():
            states = text_encoder(ids)[0]
        pred = unet(noise_scheduler.add_noise(pixels, noise, t), t, encoder_hidden_states=states).sample
        target = diffusion_target(noise_scheduler, pixels, noise, t)
        # the v loss is (SNR + 1) × the clean-image loss; reweight it to min(SNR + 1, γ) × the clean-image loss
        # (Min-SNR, Hang et al. 2023, shifted by one so that the noisiest steps keep full weight)
        snr_1 = 1 / (1 - alphas[t])
        weight = torch.clamp(snr_1, max=MIN_SNR_GAMMA) / snr_1
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        ema_unet.step(unet.parameters())
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ema_unet.copy_to(unet.parameters())
    save_bundle_folder(out, tokenizer, text_encoder.half(), unet.half(), scheduler)
    report["final_loss"] = float(np.mean(losses[-100:])) if losses else None
    return report


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
        batch = [pair for _ in range(cfg.scorer_batch_size // 2) for pair in shape_contrast_pair(rng, cfg, exclude)]
        # the scorer sees images exactly as scoring will: through its own preprocessing
        from PIL import Image

        images = torch.stack([preprocess(Image.fromarray(_grain(b[0], rng))) for b in batch])
        texts = tokenizer([b[1] for b in batch])
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(out)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None}


def _grain(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add the pixel grain that sampling leaves (Gaussian, σ uniform in [0, SCORER_GRAIN]): the scorer judges
    generated images, and one trained on clean renders alone misreads grainy ones."""
    sigma = rng.uniform(0.0, SCORER_GRAIN)
    return np.clip(pixels + rng.normal(0.0, sigma, pixels.shape), 0, 255).round().astype(np.uint8)


PARTS = ("scorer", "base")
#: the config fields each part's weights depend on: retraining one part keeps the other's manifest entry when
#: its own fields are unchanged
PART_FIELDS = {
    "scorer": ("seed", "scorer_steps", "scorer_batch_size", "scorer_lr", "caption_keep", "two_object_fraction",
               "threads"),
    "base": ("seed", "text_steps", "unet_steps", "text_batch_size", "batch_size", "lr", "caption_keep",
             "two_object_fraction", "uncond_fraction", "threads"),
}


def part_config(cfg: PretrainConfig, part: str) -> dict:
    """What ``part``'s weights are a function of: its config fields (and the scorer's architecture)."""
    out = {k: getattr(cfg, k) for k in PART_FIELDS[part]}
    if part == "scorer":
        out |= {"architecture": SCORER_CFG, "grain": SCORER_GRAIN}
    return out


def pretrain(cfg: PretrainConfig, out_dir: Path, parts: tuple[str, ...] = PARTS) -> dict:
    """Both models (or the named ``parts``) plus a manifest (config, timings, sha256 of every file) in ``out_dir``.

    The parts draw from separate seeded streams, so training them in separate calls gives the same files as one
    call; the manifest keeps the entry of a part trained earlier whose own config (:func:`part_config`) is
    unchanged.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown pretraining part(s) {unknown}; choose from {list(PARTS)}")
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.json"
    report: dict = {"config": asdict(cfg)}
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        for part in set(PARTS) - set(parts):
            if part in previous and previous[part].get("config") == part_config(cfg, part):
                report[part] = previous[part]
    for part, train in (("scorer", lambda: pretrain_scorer(cfg, out_dir / "scorer.pt")),
                        ("base", lambda: pretrain_base(cfg, out_dir / "base"))):
        if part in parts:
            started = time.perf_counter()
            report[part] = train()
            report[part]["seconds"] = time.perf_counter() - started
            report[part]["config"] = part_config(cfg, part)
    report["files"] = {
        str(p.relative_to(out_dir)): _sha256(p) for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != "manifest.json"
    }
    report["total_bytes"] = sum((out_dir / f).stat().st_size for f in report["files"])
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(manifest)
    return report


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
