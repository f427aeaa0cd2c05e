"""The synthetic world's three models and how each is trained: the base UNet (min-SNR weighting, EMA), the text
encoder (caption slots), and the contrastive scorer (with sampler-like grain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifc_bench.core.progress import progress
from cifc_bench.synth import world
from cifc_bench.synth.pretrain_data import (
    SLOT_TABLE,
    TEXT_LENGTH,
    PretrainConfig,
    caption_targets,
    personal_identities,
    shape_contrast_pair,
    training_example,
    training_scenes,
)

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
