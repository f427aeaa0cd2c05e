"""The model a method starts from (:class:`ModelBundle`), part of the method contract: ``cifc_bench.api``
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelBundle:
    """The frozen text-to-image model a method starts from: SD-1.x's components, on either tier.

    - ``tokenizer``: a transformers ``CLIPTokenizer`` (the real CLIP BPE on both tiers). A method's placeholder
      tokens (``<dog1>``) are not in it: add them (``cifc_bench.diffusion.tokens.add_placeholder_tokens``), or the
      tokenizer silently splits them into pieces.
    - ``text_encoder``: a transformers ``CLIPTextModel``; its ``[0]`` output (last hidden state) is the UNet's
      context.
    - ``unet``: a diffusers ``UNet2DConditionModel``. Its prediction type is the scheduler's
      ``config.prediction_type``: ``epsilon`` for SD-1.5, ``v_prediction`` for the synthetic base model;
      ``cifc_bench.diffusion.training.diffusion_target`` gives the right target for either.
    - ``scheduler``: the evaluation sampler (DPM-Solver++ for SD-1.5); build training schedulers from its config.
    - ``vae``: a diffusers ``AutoencoderKL``, or **None** for a pixel-space model (the synthetic tier): the UNet
      then works on pixels in [-1, 1], and ``vae_scale_factor`` is 1.
    Everything is frozen (``requires_grad`` off, eval mode) on ``device`` when a method receives it: the text
    encoder in float32, the UNet and VAE in the run's ``--dtype`` (float32 on CPU, bfloat16 on CUDA by default).
    ``learn_task`` and ``generate`` run under ``torch.autocast`` for a low dtype; what a method trains must be
    float32 (``cifc_bench.core.precision.fp32_trainable``) and stepped through ``precision.loss_scaler``.
    A method may add tokens, wrap or patch modules and change weights in place, as long as its ``generate``
    sees what it learned; the harness builds a fresh bundle per run.
    """

    name: str
    tokenizer: Any
    text_encoder: Any
    unet: Any
    scheduler: Any
    vae: Any | None = None
    source: str = ""

    @property
    def device(self):
        return self.unet.device

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device) -> ModelBundle:
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.to(device)
        return self

    def freeze(self) -> ModelBundle:
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        return self
