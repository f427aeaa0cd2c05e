"""``c-lora``: C-LoRA, "Continual Diffusion" (Smith et al., TMLR 2024). No official code exists; this follows
the paper's abstract and baselines-and-metrics §1.6.

Adaptation to the concept stream: each task trains a fresh rank-4 LoRA on the cross-attention **K and V**
projections only, plus its concept's token rows. The LoRA is self-regularised against the accumulated past
update: λ Σ_m ‖(Σ_{τ<t} ΔW_τ^m) ⊙ ΔW_t^m‖², which discourages rewriting weight entries earlier concepts
already changed. After the task its ΔW_t is merged into the (otherwise frozen) weights and added to the
accumulated update. Custom tokens are randomly initialised (the paper's setting; ``class_word_init=true``
uses the protocol's initialisers instead). Storage: one model plus the accumulated update; no replay.

Versions: v2: Kaiming-uniform LoRA A (was peft "gaussian"), the release's style templates.
"""

from __future__ import annotations

import torch

from cifc_bench.diffusion.adapter_method import AdapterMethod
from cifc_bench.diffusion.sampling import generate_requests
from cifc_bench.diffusion.tokens import PlaceholderTokens
from cifc_bench.diffusion.training import lora_config, train_lora_and_tokens

KV = r".*attn2\.(to_k|to_v)"


def self_regularization(past: list[torch.Tensor | None], current: list[torch.Tensor]) -> torch.Tensor:
    """Σ_m ‖past_m ⊙ current_m‖²; zero where there is no past update."""
    terms = [((p * c) ** 2).sum() for p, c in zip(past, current, strict=True) if p is not None]
    return torch.stack(terms).sum() if terms else current[0].new_zeros(())


class CLoRA(AdapterMethod):
    storage = "single-model"
    families = ("sd1", "sdxl")  # K/V LoRAs on either UNet's cross-attention
    version = 2  # its history: the module's docstring

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3, reg_lambda: float = 1e6,
                 class_word_init: bool = False) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, reg_lambda=reg_lambda,
                         class_word_init=class_word_init)
        self.reg_lambda, self.class_word_init = float(reg_lambda), bool(class_word_init)
        self.layers = {n: m for n, m in bundle.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))}
        self.past: dict[str, torch.Tensor] = {}
        self.tokens = PlaceholderTokens(bundle, transform=self._concept)
        self._tasks = 0

    def _concept(self, concept):
        if self.class_word_init:
            return concept
        import dataclasses

        return dataclasses.replace(concept, initializers=tuple(0.01 for _ in concept.placeholders))

    def learn_task(self, task, budget) -> None:
        unet = self.bundle.unet
        gen, new_ids = self.task_tokens(task, budget)
        name = f"task{self._tasks}"
        unet.add_adapter(lora_config(self.rank, KV), adapter_name=name)
        unet.set_adapters([name])
        layers = [dict(unet.named_modules())[n] for n in self.layers]
        lora = [p for m in layers for p in (m.lora_A[name].weight, m.lora_B[name].weight)]
        past = [self.past.get(n) for n in self.layers]

        def penalty(pixels, embeds, noise_scheduler, generator):
            current = [m.lora_B[name].weight @ m.lora_A[name].weight * m.scaling[name] for m in layers]
            return self.reg_lambda * self_regularization(past, current)

        self.trained, _, _ = train_lora_and_tokens(self.bundle, task, budget, lora, new_ids, self.lr,
                                                      self.embedding_lr, gen, extra_loss=penalty)
        with torch.no_grad():  # merge ΔW_t into the weights and the accumulated update, then drop the adapter
            for n, m in zip(self.layers, layers, strict=True):
                delta = m.lora_B[name].weight @ m.lora_A[name].weight * m.scaling[name]
                self.past[n] = self.past[n] + delta if n in self.past else delta.clone()
                m.base_layer.weight += delta
        unet.delete_adapters(name)
        self._tasks += 1

    def generate(self, requests, settings):
        return generate_requests(self.bundle, requests, settings)

    def stored_parameters(self) -> int:
        """Beyond the base model: the accumulated K/V update (the merged weights are the model itself)."""
        return sum(int(v.numel()) for v in self.past.values()) + self.tokens.count

    def adapter_state(self):
        """The accumulated update (the regulariser's reference) and, for a bit-exact resume, the merged K/V
        weights themselves (adding the sum back would round differently from the task-by-task merges)."""
        modules = dict(self.bundle.unet.named_modules())
        state = {f"past.{n}": v for n, v in self.past.items()}
        state.update({f"weight.{n}": modules[n].weight.detach().clone() for n in self.past})
        return state

    def load_adapter_state(self, state, tasks_done) -> None:
        modules = dict(self.bundle.unet.named_modules())
        with torch.no_grad():
            for n in self.layers:
                if f"past.{n}" in state:
                    modules[n].weight.copy_(state[f"weight.{n}"])
                    self.past[n] = state[f"past.{n}"].to(modules[n].weight.device, copy=True)
        self._tasks = len(tasks_done)
