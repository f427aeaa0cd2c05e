"""``lora-c``: LoRA Composite (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation").

Adaptation to the concept stream: the per-task LoRAs are trained exactly as in ``lora-m``
(:class:`baselines.lora_merge.LoRAMerge`, each from the base weights). There is no weight merge: at every
denoising step the classifier-free-guided noise prediction is computed with each task's LoRA alone and the
predictions are averaged, so a step costs t UNet passes. (CIDM's released "composer" averages identical
passes, spec §B.3.6; this is the real composite.) Storage: one adapter per task; no replay.
"""

from __future__ import annotations

import torch

from cifc_bench.sampling import generate_requests

from .lora_merge import LoRAMerge


class LoRAComposite(LoRAMerge):
    version = 2  # v2: Kaiming-uniform LoRA A, the release's style templates (LoRA-M's v3 sampling is not used here)
    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr)

    @classmethod
    def unet_passes_per_step(cls, request, guided, tasks_learned, method_args):
        """One guided prediction per stored task LoRA."""
        return max(tasks_learned, 1) * super().unet_passes_per_step(request, guided, tasks_learned, method_args)

    def composite_predictor(self):
        """ε(x, t, c) averaged over the task LoRAs, each active alone; CFG is linear, so the guided
        prediction of this average is the average of the per-LoRA guided predictions."""
        unet = self.bundle.unet

        def predict(latents, t, cond):
            preds = []
            for name in self.adapters:
                unet.set_adapters([name])
                preds.append(unet(latents, t, encoder_hidden_states=cond).sample)
            return torch.stack(preds).mean(0)

        return predict

    def generate(self, requests, settings):
        predict = self.composite_predictor() if self.adapters else None
        return generate_requests(self.bundle, requests, settings, predict=predict)
