"""``finetune``: sequential fine-tuning, the CIDM paper's "Finetuning" row and the forgetting reference.

One LoRA (peft) on the UNet is trained continually: task t starts from the weights left by task t-1, with no
regulariser and no replay. Each task adds its own placeholder tokens; only their embedding rows train, and
every earlier row (old concepts, the base vocabulary) stays frozen. Hyper-parameters (method args):

- ``rank`` (4), ``lr`` (1e-4 for the LoRA), ``embedding_lr`` (1e-3 for the new token rows)
- ``targets``: ``cross-attn`` (q/k/v/out of every cross-attention layer, CIDM's placement) or ``all-attn``

Versions: v2: Kaiming-uniform LoRA A (was peft "gaussian"), the release's style templates; v3: samples from the
merged LoRA (float rounding changes the images slightly); EWC and LwF inherit it.
"""

from __future__ import annotations

import torch

from cifc_bench.diffusion.adapter_method import AdapterMethod, one_of
from cifc_bench.diffusion.adapters import merged_adapters
from cifc_bench.diffusion.sampling import generate_requests
from cifc_bench.diffusion.training import CROSS_ATTENTION, lora_config, train_lora_and_tokens

TARGETS = {
    "cross-attn": CROSS_ATTENTION,
    "all-attn": r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)",
}
ADAPTER = "continual"


class SequentialFinetune(AdapterMethod):
    storage = "single-model"
    families = ("sd1", "sdxl")  # its LoRA targets the cross-attention projections of either UNet
    version = 3  # its history: the module's docstring

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 targets: str = "cross-attn") -> None:
        one_of("targets", targets, TARGETS)
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, targets=targets)
        self.bundle.unet.add_adapter(lora_config(self.rank, TARGETS[targets]), adapter_name=ADAPTER)

    def _lora_params(self):
        return [p for n, p in self.bundle.unet.named_parameters() if "lora_" in n and f".{ADAPTER}." in n]

    def learn_task(self, task, budget) -> None:
        gen, new_ids = self.task_tokens(task, budget)
        self.before_task()
        lora = self._lora_params()
        self.trained, streams, noise_scheduler = train_lora_and_tokens(
            self.bundle, task, budget, lora, new_ids, self.lr, self.embedding_lr, gen, extra_loss=self.regularizer)
        self.after_task(task, budget, streams, noise_scheduler)
        for p in lora:
            p.requires_grad_(False)

    def regularizer(self, pixels, embeds, noise_scheduler, generator) -> torch.Tensor:
        """Extra loss term of a regularised variant (EWC, LwF); plain fine-tuning has none."""
        return torch.zeros(())

    def before_task(self) -> None:
        """Called before a task's optimisation starts (LwF snapshots the previous model here)."""

    def after_task(self, task, budget, streams, noise_scheduler) -> None:
        """Called after a task's optimisation, with its data streams (EWC estimates its Fisher here)."""

    def generate(self, requests, settings):
        with merged_adapters(self.bundle.unet):  # a forward costs the base model's (cifc_bench.diffusion.adapters)
            return generate_requests(self.bundle, requests, settings)

    def adapter_state(self):
        from peft.utils import get_peft_model_state_dict

        return {f"unet.{k}": v.detach().clone() for k, v in
                get_peft_model_state_dict(self.bundle.unet, adapter_name=ADAPTER).items()}

    def load_adapter_state(self, state, tasks_done) -> None:
        from peft.utils import set_peft_model_state_dict

        lora = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        set_peft_model_state_dict(self.bundle.unet, lora, adapter_name=ADAPTER)
