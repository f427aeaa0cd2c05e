"""``lwf``: learning without forgetting (Li & Hoiem 2017) for the continual LoRA of ``finetune``.

Adaptation to the concept stream: while task t trains, the model as it was after task t−1 (a frozen copy of
the LoRA, kept as a second peft adapter) predicts the noise on the current task's noisy inputs, and the
current model is pulled toward it: loss + λ_d · MSE(ε_θ(x_t, t, c), ε_θ_{t−1}(x_t, t, c)). Only the current
task's images are used: no replay. Storage: one model (the teacher is rebuilt from it at every task).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from cifc_bench.methods.finetune import ADAPTER, TARGETS, SequentialFinetune

from cifc_bench.diffusion.sampling import unet_predictor
from cifc_bench.diffusion.training import lora_config

TEACHER = "previous"


class LwF(SequentialFinetune):
    families = ("sd1", "sdxl")  # teacher and student through the family's own UNet call

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 targets: str = "cross-attn", distill_weight: float = 1.0) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, targets=targets)
        self.hparams["distill_weight"] = distill_weight
        self.distill_weight = float(distill_weight)
        self.tasks_seen = 0
        self._targets = targets

    def before_task(self) -> None:
        """Snapshot the current LoRA as the frozen teacher adapter (from the second task on)."""
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        unet = self.bundle.unet
        if self.tasks_seen and TEACHER not in unet.peft_config:
            unet.add_adapter(lora_config(self.rank, TARGETS[self._targets]), adapter_name=TEACHER)
        if self.tasks_seen:
            set_peft_model_state_dict(unet, get_peft_model_state_dict(unet, adapter_name=ADAPTER), adapter_name=TEACHER)
            for n, p in unet.named_parameters():
                if f".{TEACHER}." in n:
                    p.requires_grad_(False)
        unet.set_adapters([ADAPTER])
        self.tasks_seen += 1

    def regularizer(self, pixels, embeds, noise_scheduler, generator) -> torch.Tensor:
        if self.tasks_seen < 2:
            return torch.zeros(())
        unet, bundle = self.bundle.unet, self.bundle
        predict = unet_predictor(bundle)  # SDXL: the pooled embedding and time ids beside the context
        latents = pixels.to(bundle.device)
        if bundle.vae is not None:
            with torch.no_grad():
                latents = bundle.vae.encode(latents).latent_dist.sample(generator) * bundle.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        t = t.to(latents.device)  # drawn on the CPU generator (same draws on every device); the UNet needs it here
        noisy = noise_scheduler.add_noise(latents, noise, t)
        unet.set_adapters([TEACHER])
        with torch.no_grad():
            target = predict(noisy, t, embeds)
        unet.set_adapters([ADAPTER])
        for n, p in unet.named_parameters():  # set_adapters re-enables grads on the active adapter only
            if f".{TEACHER}." in n:
                p.requires_grad_(False)
        pred = predict(noisy, t, embeds)
        return self.distill_weight * F.mse_loss(pred, target)

    def load_state_dict(self, state, tasks_done) -> None:
        super().load_state_dict(state, tasks_done)
        self.tasks_seen = len(tasks_done)
