"""``mix-of-show``: Mix-of-Show (Gu et al., NeurIPS 2023), adapted to the concept stream.

Per task, an **ED-LoRA** is trained from the base model: layer-wise embeddings for the concept's placeholders
(one token per cross-attention layer, the design CIDM later borrowed) plus a rank-``rank`` peft LoRA on every
UNet attention projection (self- and cross-attention q/k/v/out) and on the text encoder's self-attention
(q/k/v/out_proj).

After each task, **gradient fusion** merges all ED-LoRAs learned so far into one model. For every LoRA'd
linear layer it finds the single weight that best reproduces each concept's layer outputs on that concept's
own inputs: W* = argmin_W Σ_i ‖W X_i − W_i X_i‖². Mix-of-Show solves this by gradient descent; here the same
least-squares problem is solved in closed form, W* = (Σ_i W_i G_i)(Σ_i G_i + εI)⁻¹ with G_i = X_i X_iᵀ. The
inputs X_i are captured data-free, as in the paper: by sampling concept i's own prompts through its
single-concept ED-LoRA model. Only the two running sums per layer are kept, so the cost of re-fusing does not
grow with the number of tasks.

Generation uses the fused model; a multi-concept request with boxes uses regionally controllable sampling:
queries inside a box attend to that concept's own (layer-wise) region prompt. Storage: the running fusion
sums and the layer-wise tokens ("per-task-features"); no data replay.
"""

from __future__ import annotations

import torch
from cifc_bench.methods.cidm.layerwise import (
    add_layer_tokens,
    encode_layerwise,
    generate_unboxed,
    install_processors,
    layer_token,
)

from cifc_bench.api import Method
from cifc_bench.training import train_lora_and_tokens

UNET_TARGETS = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
TEXT_TARGETS = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"
ADAPTER = "edlora"


def fuse(weighted_grams: torch.Tensor, grams: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """W* = (Σ W_i G_i)(Σ G_i + εI)⁻¹, ``eps`` relative to the mean eigenvalue of Σ G_i."""
    d = grams.shape[0]
    g = grams.double() + eps * (torch.trace(grams.double()) / d + 1e-12) * torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(g, weighted_grams.double().T).T  # g is symmetric: (A g⁻¹)ᵀ = g⁻¹ Aᵀ


class MixOfShow(Method):
    storage = "per-task-features"

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 fusion_prompts: int = 4, fusion_steps: int = 10, eps: float = 1e-4) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr,
                         fusion_prompts=fusion_prompts, fusion_steps=fusion_steps, eps=eps)
        self.rank, self.lr, self.embedding_lr = int(rank), float(lr), float(embedding_lr)
        self.fusion_prompts, self.fusion_steps, self.eps = int(fusion_prompts), int(fusion_steps), float(eps)
        self.processors = install_processors(bundle.unet)
        self.n_layers = len(self.processors)
        self.layers = self._target_layers()
        self.base = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (Σ W_i G_i, Σ G_i)
        self.concepts: list = []
        self._trainable = 0

    def _target_layers(self) -> dict[str, torch.nn.Module]:
        """Every LoRA'd projection: a plain ``nn.Linear``, or peft's wrapper of one while an adapter is on."""
        import re

        out = {}
        for prefix, model, pattern in (("unet.", self.bundle.unet, UNET_TARGETS),
                                       ("text.", self.bundle.text_encoder, TEXT_TARGETS)):
            for name, module in model.named_modules():
                if re.fullmatch(pattern, name):
                    out[prefix + name] = module
        return out

    @property
    def placeholders(self) -> list[str]:
        return [p for c in self.concepts for p in c.placeholders]

    def _encode(self, bundle, prompts):
        return encode_layerwise(bundle, prompts, self.placeholders, self.n_layers)

    # -- learning ------------------------------------------------------------------------------------------
    def learn_task(self, task, budget) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        gen = torch.Generator().manual_seed(budget.seed)
        self._set_weights(self.base)  # every ED-LoRA trains from the pretrained model
        new_ids = []
        for concept in task.concepts:
            new_ids += add_layer_tokens(self.bundle, concept, self.n_layers, gen)
            self.concepts.append(concept)
        unet, text = self.bundle.unet, self.bundle.text_encoder
        unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.rank, target_modules=UNET_TARGETS,
                                    init_lora_weights="gaussian"), adapter_name=ADAPTER)
        inject_adapter_in_model(LoraConfig(r=self.rank, lora_alpha=self.rank, target_modules=TEXT_TARGETS,
                                           init_lora_weights="gaussian"), text, adapter_name=ADAPTER)
        lora = [p for model in (unet, text) for n, p in model.named_parameters() if "lora_" in n]
        self._trainable, _, _ = train_lora_and_tokens(self.bundle, task, budget, lora, new_ids, self.lr,
                                                      self.embedding_lr, gen, encode=self._encode)
        for p in lora:
            p.requires_grad_(False)
        self._accumulate(task, budget)
        unet.delete_adapters(ADAPTER)
        for module in text.modules():  # peft's wrappers stay, empty: they then compute their base layer only
            if hasattr(module, "delete_adapter") and ADAPTER in getattr(module, "lora_A", {}):
                module.delete_adapter(ADAPTER)
        if getattr(text, "peft_config", None) is not None:
            text.peft_config.pop(ADAPTER, None)
            if not text.peft_config:
                del text.peft_config
        self.layers = self._target_layers()
        self._set_weights({n: fuse(*self.sums[n], eps=self.eps) for n in self.layers})

    @torch.no_grad()
    def _accumulate(self, task, budget) -> None:
        """Add W_i G_i and G_i of the single-concept ED-LoRA model to the running sums of every layer."""
        import random

        from cifc_bench.api import GenerationSettings
        from cifc_bench.sampling import sample
        from cifc_bench.training import concept_dataset, training_prompt

        grams: dict[str, torch.Tensor] = {}

        def capture(name):
            def hook(module, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.T @ x
            return hook

        modules = self._target_layers()
        handles = [modules[n].register_forward_pre_hook(capture(n)) for n in modules]
        try:
            rng = random.Random(budget.seed)
            for concept in task.concepts:
                captions = concept_dataset(concept)["caption"]
                prompts = [training_prompt(concept, captions[k % len(captions)], rng) for k in range(self.fusion_prompts)]
                settings = GenerationSettings(resolution=budget.resolution, num_inference_steps=self.fusion_steps,
                                              guidance_scale=3.0, batch_size=len(prompts))
                sample(self.bundle, self._encode(self.bundle, prompts), self._encode(self.bundle, [""] * len(prompts)),
                       list(range(len(prompts))), settings)
        finally:
            for h in handles:
                h.remove()
        for name, module in modules.items():
            w = module.get_delta_weight(ADAPTER) + module.base_layer.weight if hasattr(module, "base_layer") else module.weight
            wg, g = w.double() @ grams[name], grams[name]
            old = self.sums.get(name)
            self.sums[name] = (wg, g) if old is None else (old[0] + wg, old[1] + g)

    @torch.no_grad()
    def _set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for n, m in self._target_layers().items():
            target = m.base_layer if hasattr(m, "base_layer") else m
            target.weight.copy_(weights[n].to(target.weight))

    # -- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests, settings):
        images = generate_unboxed(self.bundle, requests, settings, self.placeholders, self.n_layers)
        for k, r in enumerate(requests):
            if r.boxes:
                images[k] = self._generate_regions(r, settings)
        return images

    def _generate_regions(self, request, settings):
        """Regionally controllable sampling: inside each box, cross-attention reads that concept's prompt."""
        from cifc_bench.sampling import sample

        uncond = self._encode(self.bundle, [settings.negative_prompt])
        regions = [(torch.cat([uncond, self._encode(self.bundle, [f"a {c.eval_replacement}"])]), box.as_tuple())
                   for c, box in zip(request.concepts, request.boxes, strict=True)]
        for proc in self.processors:
            proc.regions = regions
        try:
            return sample(self.bundle, self._encode(self.bundle, [request.prompt]), uncond, [request.seed], settings)[0]
        finally:
            for proc in self.processors:
                proc.regions = None

    # -- state ---------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        return self._trainable

    def stored_parameters(self) -> int:
        width = self.bundle.text_encoder.get_input_embeddings().weight.shape[1]
        sums = sum(int(a.numel() + b.numel()) for a, b in self.sums.values())
        return sums + len(self.placeholders) * self.n_layers * width

    def state_dict(self):
        state = {f"weight.{n}": (m.base_layer if hasattr(m, "base_layer") else m).weight.detach().clone()
                 for n, m in self.layers.items()}
        for n, (wg, g) in self.sums.items():
            state[f"wg.{n}"], state[f"g.{n}"] = wg, g
        emb = self.bundle.text_encoder.get_input_embeddings().weight
        ids = self.bundle.tokenizer.convert_tokens_to_ids(
            [layer_token(p, layer) for p in self.placeholders for layer in range(self.n_layers)])
        if ids:
            state["tokens"] = emb[ids].detach().clone()
        return state

    def load_state_dict(self, state, tasks_done) -> None:
        gen = torch.Generator().manual_seed(0)
        for task in tasks_done:
            for concept in task.concepts:
                if concept not in self.concepts:
                    add_layer_tokens(self.bundle, concept, self.n_layers, gen)
                    self.concepts.append(concept)
        self._set_weights({n: state[f"weight.{n}"] for n in self.layers})
        self.sums = {n: (state[f"wg.{n}"].clone(), state[f"g.{n}"].clone()) for n in self.layers if f"g.{n}" in state}
        if "tokens" in state:
            emb = self.bundle.text_encoder.get_input_embeddings().weight
            ids = self.bundle.tokenizer.convert_tokens_to_ids(
                [layer_token(p, layer) for p in self.placeholders for layer in range(self.n_layers)])
            with torch.no_grad():
                emb[ids] = state["tokens"].to(emb)
