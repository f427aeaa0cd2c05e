"""``lora-m``: LoRA Merge, the CIDM paper's ablation "Baseline" (its Table 4 row equals Table 1's LoRA-M).

Adaptation to the concept stream: every task trains its own LoRA (peft adapter ``task<i>``, rank 4 on the
cross-attention q/k/v/out, like CIDM) from the base weights, plus the concept's new token rows; nothing of
earlier tasks changes, so training itself cannot forget. Generation merges all adapters learned so far in
weight space, ΔW = Σ_i w_i ΔW_i (peft/diffusers ``set_adapters`` with weights), uniform w_i = 1/t by default
or ``weights=sum`` for w_i = 1. Storage: one adapter per task (``per-task-adapters``); no replay.

Versions: v2: Kaiming-uniform LoRA A (was peft "gaussian"), the release's style templates; v3: samples from the
merged weights (float rounding changes the images slightly).
"""

from __future__ import annotations

from cifc_bench.diffusion.adapter_method import AdapterMethod, one_of
from cifc_bench.diffusion.adapters import merged_adapters
from cifc_bench.diffusion.sampling import generate_requests
from cifc_bench.diffusion.training import CROSS_ATTENTION, lora_config, train_lora_and_tokens


class LoRAMerge(AdapterMethod):
    storage = "per-task-adapters"
    families = ("sd1", "sdxl")  # per-task LoRAs on the cross-attention projections of either UNet
    version = 3  # its history: the module's docstring

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 weights: str = "uniform") -> None:
        one_of("weights", weights, {"uniform": "1/t each", "sum": "1 each"})
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, weights=weights)
        self.weights = weights
        self.adapters: list[str] = []

    def _new_adapter(self) -> str:
        name = f"task{len(self.adapters)}"
        self.bundle.unet.add_adapter(lora_config(self.rank, CROSS_ATTENTION), adapter_name=name)
        return name

    def learn_task(self, task, budget) -> None:
        gen, new_ids = self.task_tokens(task, budget)
        name = self._new_adapter()
        self.bundle.unet.set_adapters([name])  # every task trains from the base weights
        lora = [p for n, p in self.bundle.unet.named_parameters() if f"lora_A.{name}." in n or f"lora_B.{name}." in n]
        self.trained, _, _ = train_lora_and_tokens(self.bundle, task, budget, lora, new_ids, self.lr,
                                                      self.embedding_lr, gen)
        for p in lora:
            p.requires_grad_(False)
        self.adapters.append(name)

    def merge_weights(self) -> list[float]:
        t = len(self.adapters)
        return [1.0 / t] * t if self.weights == "uniform" else [1.0] * t

    def generate(self, requests, settings):
        if not self.adapters:
            return generate_requests(self.bundle, requests, settings)
        self.bundle.unet.set_adapters(self.adapters, weights=self.merge_weights())
        with merged_adapters(self.bundle.unet):  # one merged weight: a forward costs the base model's
            return generate_requests(self.bundle, requests, settings)

    def adapter_state(self):
        from peft.utils import get_peft_model_state_dict

        state = {}
        for name in self.adapters:
            for k, v in get_peft_model_state_dict(self.bundle.unet, adapter_name=name).items():
                state[f"{name}.{k}"] = v.detach().clone()
        return state

    def load_adapter_state(self, state, tasks_done) -> None:
        from peft.utils import set_peft_model_state_dict

        for _ in tasks_done[len(self.adapters):]:
            name = self._new_adapter()
            prefix = f"{name}."
            set_peft_model_state_dict(self.bundle.unet, {k[len(prefix):]: v for k, v in state.items()
                                                         if k.startswith(prefix)}, adapter_name=name)
            self.adapters.append(name)
        for p in self.bundle.unet.parameters():
            p.requires_grad_(False)
