"""``lora-c``: LoRA Composite (Zhong et al. 2024, "Multi-LoRA Composition for Image Generation").

Adaptation to the concept stream: the per-task LoRAs are trained exactly as in ``lora-m``
(:class:`baselines.lora_merge.LoRAMerge`, each from the base weights). There is no weight merge: at every
denoising step the classifier-free-guided noise prediction is computed with each task's LoRA alone and the
predictions are averaged, so a step costs t UNet passes. (CIDM's released "composer" averages identical
passes, spec §B.3.6; this is the real composite.) Storage: one adapter per task; no replay.

Versions: v2: Kaiming-uniform LoRA A, the release's style templates; v3: its t predictions in one UNet call (a
batch per LoRA through peft's mixed-adapter forward; float rounding changes the images slightly).
"""

from __future__ import annotations

from cifc_bench.diffusion.adapters import mixed_adapter_batch
from cifc_bench.diffusion.sampling import generate_requests, join_conditions, unet_predictor

from .lora_merge import LoRAMerge


class LoRAComposite(LoRAMerge):
    families = ("sd1", "sdxl")  # the composite batches either family's condition
    version = 3  # its history: the module's docstring

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr)

    @classmethod
    def unet_passes_per_step(cls, request, guided, tasks_learned, method_args):
        """One guided prediction per stored task LoRA."""
        return max(tasks_learned, 1) * super().unet_passes_per_step(request, guided, tasks_learned, method_args)

    def composite_predictor(self):
        """ε(x, t, c) averaged over the task LoRAs, each active alone; CFG is linear, so the guided
        prediction of this average is the average of the per-LoRA guided predictions. The t predictions are one
        UNet call: the batch repeated once per LoRA, each copy through its own LoRA (peft's mixed-adapter batch)."""
        unet, call = self.bundle.unet, unet_predictor(self.bundle)

        def predict(latents, t, cond):
            n, k = latents.shape[0], len(self.adapters)
            names = [name for name in self.adapters for _ in range(n)]
            with mixed_adapter_batch(unet, names):
                out = call(latents.repeat(k, 1, 1, 1), t, join_conditions([cond] * k))
            return out.view(k, n, *out.shape[1:]).mean(0)

        return predict

    def generate(self, requests, settings):
        if not self.adapters:
            return generate_requests(self.bundle, requests, settings)
        self.bundle.unet.set_adapters(self.adapters, weights=[1.0] * len(self.adapters))  # each at full strength
        return generate_requests(self.bundle, requests, settings, predict=self.composite_predictor())
