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

from cifc_bench.core.progress import progress
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
EMA_DECAY = 0.999
MIN_SNR_GAMMA = 5.0  # clean-image loss weight min(SNR + 1, 5): at least 1 at high noise, capped at low noise


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    text_steps: int = 1200
    unet_steps: int = 5700
    scorer_steps: int = 1200
    text_batch_size: int = 256
    batch_size: int = 64
    scorer_batch_size: int = 128
    lr: float = 1e-3
    scorer_lr: float = 1e-3
    caption_keep: float = 0.75  # fill, pattern and background are each named with this probability
    place_keep: float = 0.9  # position and size: without them shape hardly lowers the loss (measured 4.5x less)
    two_object_fraction: float = 0.35
    uncond_fraction: float = 0.1
    threads: int = 2
    chunk_steps: int = 1900  # UNet steps per resumable chunk
    save_every: int = 250  # UNet steps between saved states within a chunk


def held_out(scene: world.Scene) -> bool:
    """One in ten (shape, fill, position, background) combinations is never shown in pretraining."""
    key = f"{scene.shape}|{scene.fill}|{scene.position}|{scene.background}".encode()
    return hashlib.sha256(key).digest()[0] % 10 == 0


#: (class, fill, pattern, pattern colour) of the personal objects that pretraining never shows: those of protocol
#: ``synth10`` 2.0, for which the shipped weights were pretrained. Fixed here, so that ``synth pretrain`` still
#: reproduces those weights after a redesign of the concepts (3.0 gave both boxes stripes instead of 2-pixel dots;
#: box / yellow / stripes / purple and red were in pretraining, as every unlisted combination is)
PRETRAIN_EXCLUDED = frozenset({
    ("ball", "orange", "zigzag", "blue"), ("kite", "pink", "checker", "green"), ("box", "yellow", "dots", "purple"),
    ("dome", "cyan", "stripes", "red"), ("ring", "purple", "checker", "yellow"), ("ball", "orange", "zigzag", "purple"),
    ("box", "yellow", "dots", "red"),
})


def personal_identities() -> set[tuple]:
    return set(PRETRAIN_EXCLUDED)


#: the two layouts of two-object scenes, in caption order
PAIR_LAYOUTS = (("left", "right"), ("top", "bottom"))


def training_scenes(rng: np.random.Generator, cfg: PretrainConfig, exclude: set[tuple]) -> tuple[list, str]:
    """The scene(s) and caption of one draw from the pretraining distribution: one object, or (a
    ``two_object_fraction`` of draws) two small ones side by side or one above the other, each with its own
    attributes, so that the boxed prompts of the protocol are in distribution."""
    while True:
        scene = world.random_scene(rng, exclude)
        if not held_out(scene):
            break
    if rng.random() < cfg.two_object_fraction:
        first, second = PAIR_LAYOUTS[int(rng.integers(len(PAIR_LAYOUTS)))]
        while True:
            other = world.random_scene(rng, exclude)
            if not world.low_contrast(other.fill, scene.background):
                break
        a = world.replace(scene, size="small", position=first, style="plain")
        b = world.replace(other, size="small", position=second, style="plain", background=scene.background)
        return [a, b], world.caption_many([a, b], rng, cfg.caption_keep, place_keep=cfg.place_keep)
    text = world.caption(scene, rng, cfg.caption_keep, place_keep=cfg.place_keep)
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
            return world.render_many(sc, seed), world.caption_many(sc, crng, cfg.caption_keep, place_keep=cfg.place_keep)
        return world.render_many(sc, seed), world.caption(sc[0], crng, cfg.caption_keep, place_keep=cfg.place_keep)

    return example(scenes), example(other)


def build_base_model(seed: int):
    """Tokenizer, text encoder, UNet and scheduler of the synthetic base model, freshly initialised."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cifc_bench.diffusion.tokenizer import build_clip_tokenizer

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
# Stage 2: the UNet, conditioned on the frozen text encoder, in resumable chunks of steps.

def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to a twentieth: a pure function of the
    step, so that a resumed run needs no scheduler state."""
    total = max(cfg.unet_steps, 1)
    warm = max(int(0.05 * total), 1)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress_ = (step - warm) / max(total - warm, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(progress_, 1.0))))


class UNetTrainer:
    """The denoising loop of the base model's UNet; :meth:`state` and :meth:`load` capture all of it."""

    def __init__(self, cfg: PretrainConfig, tokenizer, text_encoder) -> None:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        self.cfg, self.tokenizer, self.text_encoder = cfg, tokenizer, text_encoder
        self.unet = build_base_model(cfg.seed)[2]
        self.noise_scheduler = DDPMScheduler(**SCHEDULE)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=0.01)
        self.ema = EMAModel(self.unet.parameters(), decay=EMA_DECAY)
        self.rng, self.generator = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
        self.exclude = personal_identities()
        self.step, self.losses, self.seconds = 0, [], 0.0

    def train_step(self) -> float:
        from cifc_bench.diffusion.sampling import to_pixels
        from cifc_bench.diffusion.training import diffusion_target

        cfg, rng = self.cfg, self.rng
        batch = [training_example(rng, cfg, self.exclude) for _ in range(cfg.batch_size)]
        pixels = to_pixels([b[0] for b in batch])
        texts = [("" if rng.random() < cfg.uncond_fraction else b[1]) for b in batch]
        ids = self.tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             return_tensors="pt").input_ids
        noise = torch.randn(pixels.shape, generator=self.generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(batch),), generator=self.generator)
        with torch.no_grad():
            states = self.text_encoder(ids)[0]
        pred = self.unet(self.noise_scheduler.add_noise(pixels, noise, t), t, encoder_hidden_states=states).sample
        target = diffusion_target(self.noise_scheduler, pixels, noise, t)
        # the v loss is (SNR + 1) × the clean-image loss; reweight it to min(SNR + 1, γ) × the clean-image loss
        # (Min-SNR, Hang et al. 2023, shifted by one so that the noisiest steps keep full weight)
        snr_1 = 1 / (1 - self.noise_scheduler.alphas_cumprod[t])
        weight = torch.clamp(snr_1, max=MIN_SNR_GAMMA) / snr_1
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        self.step += 1
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def state(self) -> tuple[dict, dict]:
        from cifc_bench.synth import training_state

        return training_state.capture(self.unet, self.optimizer, self.ema, self.generator, self.rng,
                                      {"step": self.step, "losses": self.losses, "chunk_seconds": self.seconds})

    def load(self, tensors: dict, meta: dict) -> None:
        from cifc_bench.synth import training_state

        training_state.restore(tensors, meta, self.unet, self.optimizer, self.ema, self.generator, self.rng)
        self.step, self.losses, self.seconds = meta["step"], list(meta["losses"]), float(meta["chunk_seconds"])

    def ema_unet(self):
        """A copy of the UNet holding the EMA weights (what is shipped)."""
        import copy

        unet = copy.deepcopy(self.unet)
        self.ema.copy_to(unet.parameters())
        return unet


def scorer_model():
    """The open_clip architecture of the synthetic scorer, registered under :data:`SCORER_ARCH`."""
    from cifc_bench.diffusion.scoring import register_open_clip_config

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
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in sorted(model.state_dict().items())}, str(tmp))
    tmp.replace(out)
    return {"final_loss": float(np.mean(losses[-100:])) if losses else None}


def _grain(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add the pixel grain that sampling leaves (Gaussian, σ uniform in [0, SCORER_GRAIN]): the scorer judges
    generated images, and one trained on clean renders alone misreads grainy ones."""
    return world.grain(pixels, rng, rng.uniform(0.0, SCORER_GRAIN))


# ----------------------------------------------------------------------------------------------------------
# The chunked driver: chunk 0 trains the scorer and the text encoder, chunks 1..n train the UNet in ranges of
# ``chunk_steps``. Each chunk's end state is checksummed in the log; the shipped files are exported after every
# UNet chunk (so the tier stays usable while pretraining is under way) and the manifest says how far it got.

STATE_DIR = "pretrain-state"
LOG = "chunks.json"
EXPORTED = ("base", "scorer.safetensors")


class PretrainError(ValueError):
    """A pretraining request that would lose or mix up finished work."""


def chunk_ranges(cfg: PretrainConfig) -> list[tuple[int, int]]:
    """UNet step ranges of chunks 1..n."""
    return [(a, min(a + cfg.chunk_steps, cfg.unet_steps)) for a in range(0, cfg.unet_steps, cfg.chunk_steps)]


def _first_chunk(cfg: PretrainConfig, state_dir: Path) -> dict:
    """Chunk 0: the scorer, then the text encoder, saved in fp16 (the UNet is trained on exactly the encoder
    that is shipped)."""
    started = time.perf_counter()
    scorer_report = pretrain_scorer(cfg, state_dir / "scorer.safetensors")
    scorer_seconds = time.perf_counter() - started
    tokenizer, text_encoder, _, _ = build_base_model(cfg.seed)
    text_report = pretrain_text_encoder(cfg, tokenizer, text_encoder)
    text_encoder.half().save_pretrained(state_dir / "text_encoder")
    from cifc_bench.core.data import sha256_file

    digest = hashlib.sha256()
    for f in (state_dir / "scorer.safetensors", state_dir / "text_encoder" / "model.safetensors"):
        digest.update(sha256_file(f).encode())
    return {"index": 0, "trains": ["scorer", "text_encoder"], "sha256": digest.hexdigest(),
            "seconds": time.perf_counter() - started, "scorer": {**scorer_report, "seconds": scorer_seconds},
            "text_encoder": {**text_report, "seconds": time.perf_counter() - started - scorer_seconds}}


def _tokenizer():
    """The real CLIP tokenizer, limited to the world's caption length. Built afresh for the export: a fast
    tokenizer that has been called saves its last padding and truncation settings into tokenizer.json."""
    from cifc_bench.diffusion.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    tokenizer.model_max_length = TEXT_LENGTH
    return tokenizer


def _frozen_text_encoder(state_dir: Path):
    from transformers import CLIPTextModel

    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel.from_pretrained(state_dir / "text_encoder", torch_dtype=torch.float32)
    return tokenizer, text_encoder.requires_grad_(False).eval()


def _unet_trainer(cfg: PretrainConfig, state_dir: Path) -> UNetTrainer:
    from cifc_bench.synth import training_state

    trainer = UNetTrainer(cfg, *_frozen_text_encoder(state_dir))
    saved = training_state.load(state_dir, "unet")
    if saved is not None:
        trainer.load(*saved)
    return trainer


def _unet_chunk(cfg: PretrainConfig, state_dir: Path, index: int, trainer: UNetTrainer,
                deadline: float | None = None) -> dict | None:
    """Train the UNet through chunk ``index``'s step range, saving the whole state every ``save_every``
    steps (a kill loses at most that much) and at the end. Past ``deadline`` (``time.monotonic()``) it saves
    and returns None: the chunk continues on ``--resume``."""
    from cifc_bench.core.atomic import fault_point
    from cifc_bench.synth import training_state

    first, last = chunk_ranges(cfg)[index - 1]
    if not first <= trainer.step <= last:
        raise PretrainError(f"the saved UNet state is at step {trainer.step}, outside chunk {index} "
                            f"(steps {first}-{last}): {state_dir} is not this pretraining's state")
    if trainer.step == first:
        trainer.seconds = 0.0
    bar = progress(total=last - first, initial=trainer.step - first,
                   desc=f"pretrain base model, chunk {index}/{len(chunk_ranges(cfg))} (steps {first}-{last})")
    digest = None
    while trainer.step < last:
        started = time.perf_counter()
        trainer.train_step()
        trainer.seconds += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(trainer.losses[-50:]):.4f}")
        fault_point("pretrain-step")
        if trainer.step % cfg.save_every == 0 or trainer.step == last:
            digest = training_state.save(state_dir, "unet", *trainer.state())
        elif deadline is not None and time.monotonic() > deadline:
            training_state.save(state_dir, "unet", *trainer.state())
            bar.close()
            return None
    bar.close()
    if digest is None:  # the state was saved at the end of this chunk before a kill
        digest = training_state.tensor_digest(trainer.state()[0])
    return {"index": index, "trains": ["unet"], "unet_steps": [first, last], "sha256": digest,
            "seconds": trainer.seconds, "mean_loss": float(np.mean(trainer.losses[first:last]))}


def _export(cfg: PretrainConfig, out_dir: Path, state_dir: Path, trainer: UNetTrainer, log: dict) -> dict:
    """Write the shipped files (EMA UNet in fp16, the fp16 text encoder, the scorer) and the manifest."""
    import shutil

    from diffusers import DDIMScheduler

    from cifc_bench.core.data import sha256_file
    from cifc_bench.diffusion.models import save_bundle_folder

    out_dir.mkdir(parents=True, exist_ok=True)
    save_bundle_folder(out_dir / "base", _tokenizer(), trainer.text_encoder.half(), trainer.ema_unet().half(),
                       DDIMScheduler(**SAMPLER))
    trainer.text_encoder.float()
    shutil.copyfile(state_dir / "scorer.safetensors", out_dir / "scorer.safetensors.tmp")
    (out_dir / "scorer.safetensors.tmp").replace(out_dir / "scorer.safetensors")
    (out_dir / "scorer.pt").unlink(missing_ok=True)  # the v1 world's pickled scorer
    files = sorted(p for name in EXPORTED for p in ([out_dir / name] if (out_dir / name).is_file()
                                                     else (out_dir / name).rglob("*")) if p.is_file())
    manifest = {
        "world": world.VERSION, "config": log["config"], "complete": len(log["chunks"]) == 1 + len(chunk_ranges(cfg)),
        "chunks_done": len(log["chunks"]), "chunks_total": 1 + len(chunk_ranges(cfg)), "chunks": log["chunks"],
        "seconds": sum(c["seconds"] for c in log["chunks"]), "scorer_architecture": SCORER_CFG, "grain": SCORER_GRAIN,
        "files": {str(p.relative_to(out_dir)): sha256_file(p) for p in files},
    }
    manifest["total_bytes"] = sum((out_dir / f).stat().st_size for f in manifest["files"])
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / "manifest.json")
    return manifest


def _exported_chunks(out_dir: Path) -> int:
    """How many chunks the shipped files in ``out_dir`` come from (-1: none exported by this recipe's driver)."""
    manifest = out_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("chunks_done", -1) if manifest.exists() else -1


def pretrain(cfg: PretrainConfig, out_dir: Path, state_dir: Path | None = None, resume: bool = False,
             max_chunks: int | None = None, max_seconds: float | None = None) -> dict:
    """Run the chunks of the recipe ``cfg`` that are not done yet (at most ``max_chunks`` of them, and for
    about ``max_seconds``: then the UNet state is saved mid-chunk and ``"paused"`` is set in the returned
    log), exporting the shipped files into ``out_dir`` after each UNet chunk; returns the chunk log.

    A pretraining already under way in ``state_dir`` (default ``out_dir/pretrain-state``) continues only with
    ``resume=True`` and the same recipe, so that finished chunks are never overwritten by mistake. Killed and
    resumed, or run in chunks across sessions, it ends with the same files as one uninterrupted run.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, out_dir, state_dir, resume, max_chunks, max_seconds)
    finally:  # the caller's thread count again: a test suite or a run after it must not inherit the recipe's
        torch.set_num_threads(threads)


def _pretrain(cfg: PretrainConfig, out_dir: Path, state_dir: Path | None, resume: bool, max_chunks: int | None,
              max_seconds: float | None) -> dict:
    from cifc_bench.core.atomic import fault_point

    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir / STATE_DIR
    log_path = state_dir / LOG
    if log_path.exists():
        log = json.loads(log_path.read_text())
        if not resume:
            raise PretrainError(f"{state_dir} holds a pretraining with {len(log['chunks'])} finished chunk(s): pass "
                                f"--resume to continue it, or delete {state_dir} to start again")
        changed = {k: (v, log["config"].get(k)) for k, v in asdict(cfg).items() if log["config"].get(k) != v}
        if changed:
            raise PretrainError(f"the pretraining in {state_dir} used another recipe; changed (new, saved): {changed}. "
                                f"Resume with the saved recipe, or delete {state_dir} to start again")
    else:
        log = {"config": asdict(cfg), "world": world.VERSION, "chunks": []}
    total, ran, trainer = 1 + len(chunk_ranges(cfg)), 0, None
    if len(log["chunks"]) >= 2 and _exported_chunks(out_dir) != len(log["chunks"]):
        # killed after a chunk was logged but before its files were exported: the state is that chunk's end
        trainer = _unet_trainer(cfg, state_dir)
        if trainer.step == chunk_ranges(cfg)[len(log["chunks"]) - 2][1]:
            _export(cfg, out_dir, state_dir, trainer, log)
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    while len(log["chunks"]) < total and (max_chunks is None or ran < max_chunks):
        index = len(log["chunks"])
        if index == 0:
            state_dir.mkdir(parents=True, exist_ok=True)
            entry = _first_chunk(cfg, state_dir)
        else:
            trainer = trainer or _unet_trainer(cfg, state_dir)
            entry = _unet_chunk(cfg, state_dir, index, trainer, deadline)
            if entry is None:
                return {**log, "paused": {"chunk": index, "unet_step": trainer.step}}
        log["chunks"].append(entry)
        tmp = log_path.with_name(LOG + ".tmp")
        tmp.write_text(json.dumps(log, indent=1))
        tmp.replace(log_path)
        if index > 0:
            fault_point("pretrain-export")
            _export(cfg, out_dir, state_dir, trainer, log)
        ran += 1
    return log
