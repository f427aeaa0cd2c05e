"""``mix-of-show``: Mix-of-Show (Gu et al., NeurIPS 2023), adapted to the concept stream.

Per task, an **ED-LoRA** is trained from the base model: layer-wise embeddings for the concept's placeholders
(one token per cross-attention layer, the design CIDM later borrowed) plus a rank-``rank`` LoRA on every UNet
attention projection (self- and cross-attention q/k/v/out) and on the text encoder's self-attention
(q/k/v/out_proj), at the official rates (TencentARC/Mix-of-Show @ 51270fd, ``options/train/EDLoRA``):
embeddings 1e-3, UNet LoRA 1e-4, text-encoder LoRA 1e-5 (``text_lr``, a tenth of ``lr`` by default).

After each task, **gradient fusion** merges all ED-LoRAs learned so far into one model. For every LoRA'd
layer it finds the weight that best reproduces each concept's layer outputs on that concept's own inputs,
starting from the base weight W₀: the official code runs L-BFGS from W₀, so every input direction that no
concept's inputs span keeps W₀. Here the same problem is solved in closed form (:func:`fuse`),

    W* = argmin_W Σ_i ‖W X_iᵀ − W_i X_iᵀ‖² + ε‖W − W₀‖² = (Σ_i W_i G_i + ε W₀)(Σ_i G_i + ε I)⁻¹,  G_i = X_iᵀ X_i.

The inputs X_i are captured data-free, as ``gradient_fusion.py`` takes them, in its order:
1. text-encoder layers: the concept's own ED-LoRA text encoder on the layer-wise bound prompts "photo of a <V>"
   and "<V>", unpadded (every row, BOS to EOS);
2. cross-attention K/V (``attn2.to_k``/``to_v``) of layer l: the fused text encoder's features of layer l's bound
   prompts at the new-token and EOS positions only;
3. every other (spatial) layer: a 20-step sampling of "photo of a <V>" without guidance, through the fused text
   encoder and K/V and the concept's own spatial LoRA.
The official code fuses all concepts at once, after the last; in a stream, a concept's K/V and spatial inputs
are captured when it is learned, through the text encoder and K/V fused up to then (``docs/reference/fidelity.md``).
Only the two running sums per layer are kept, so the cost of re-fusing does not grow with the number of tasks.

Generation uses the fused model; a multi-concept request with boxes uses regionally controllable sampling:
queries inside a box attend to that concept's own (layer-wise) region prompt. Storage: the running fusion
sums and the layer-wise tokens ("per-task-features"); no data replay.

Versions: v2: fusion toward W₀, the official fusion inputs, text-encoder lr lr/10, Kaiming-uniform LoRA A.
"""

from __future__ import annotations

import torch

from cifc_bench.diffusion.adapter_method import AdapterMethod
from cifc_bench.diffusion.layerwise import (
    bind_layerwise,
    cross_attention_layers,
    encode_layerwise,
    generate_unboxed,
    install_processors,
    layer_count,
    unconditional_layerwise,
)
from cifc_bench.diffusion.sampling import encode_unpadded
from cifc_bench.diffusion.sdxl import context_of
from cifc_bench.diffusion.tokens import PlaceholderTokens
from cifc_bench.diffusion.training import lora_config, train_lora_and_tokens

UNET_TARGETS = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
TEXT_TARGETS = r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"
ADAPTER = "edlora"
TEMPLATE = "photo of a {}"  # gradient_fusion.py's TEMPLATE_SIMPLE


def fuse(weighted_grams: torch.Tensor, grams: torch.Tensor, base: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """W* = (Σ W_i G_i + ε W₀)(Σ G_i + εI)⁻¹, ``eps`` relative to the mean eigenvalue of Σ G_i.

    Directions orthogonal to every task's inputs (G v = 0) map exactly as W₀ maps them; on the inputs' span W*
    reproduces the tasks' outputs, up to ε, where the tasks do not conflict.
    """
    d = grams.shape[0]
    e = eps * (torch.trace(grams.double()) / d + 1e-12)
    g = grams.double() + e * torch.eye(d, dtype=torch.float64, device=grams.device)
    rhs = weighted_grams.double() + e * base.double()
    return torch.linalg.solve(g, rhs.T).T  # g is symmetric: (A g⁻¹)ᵀ = g⁻¹ Aᵀ


class MixOfShow(AdapterMethod):
    storage = "per-task-features"
    families = ("sd1", "sdxl")  # SDXL: ED-LoRA on both text encoders, fused alike (docs/reference/fidelity.md)
    version = 2  # its history: the module's docstring

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 text_lr: float | None = None, fusion_steps: int = 20, eps: float = 1e-4) -> None:
        text_lr = float(lr) / 10 if text_lr is None else float(text_lr)
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, text_lr=text_lr,
                         fusion_steps=fusion_steps, eps=eps)
        self.text_lr = text_lr
        self.fusion_steps, self.eps = int(fusion_steps), float(eps)
        self.processors = install_processors(bundle.unet)
        self.n_layers = layer_count(self.processors)
        self.layers = self._target_layers()
        self.base = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (Σ W_i G_i, Σ G_i)
        self.tokens = PlaceholderTokens(bundle, layers=self.n_layers)
        self.concepts: list = []

    def _target_layers(self) -> dict[str, torch.nn.Module]:
        """Every LoRA'd projection: a plain ``nn.Linear``, or peft's wrapper of one while an adapter is on."""
        import re

        out = {}
        for prefix, model, pattern in (("unet.", self.bundle.unet, UNET_TARGETS), *self._text_encoders()):
            for name, module in model.named_modules():
                if re.fullmatch(pattern, name):
                    out[prefix + name] = module
        return out

    def _text_encoders(self) -> list[tuple[str, torch.nn.Module, str]]:
        """(layer-name prefix, encoder, LoRA pattern) of each text encoder: ``text.``, and SDXL's ``text2.``."""
        encoders = [("text.", self.bundle.text_encoder, TEXT_TARGETS)]
        if getattr(self.bundle, "text_encoder_2", None) is not None:
            encoders.append(("text2.", self.bundle.text_encoder_2, TEXT_TARGETS))
        return encoders

    @property
    def placeholders(self) -> list[str]:
        return [p for c in self.concepts for p in c.placeholders]

    def _encode(self, bundle, prompts):
        return encode_layerwise(bundle, prompts, self.placeholders, self.n_layers)

    # -- learning ------------------------------------------------------------------------------------------
    def learn_task(self, task, budget) -> None:
        from peft import inject_adapter_in_model

        self._set_weights(self.base)  # every ED-LoRA trains from the pretrained model
        gen, new_ids = self.task_tokens(task, budget)
        self.concepts += task.concepts
        unet, texts = self.bundle.unet, [text for _, text, _ in self._text_encoders()]
        unet.add_adapter(lora_config(self.rank, UNET_TARGETS), adapter_name=ADAPTER)
        for text in texts:
            inject_adapter_in_model(lora_config(self.rank, TEXT_TARGETS), text, adapter_name=ADAPTER)
        unet_lora = [p for n, p in unet.named_parameters() if "lora_" in n]
        text_lora = [p for text in texts for n, p in text.named_parameters() if "lora_" in n]
        self.trained, _, _ = train_lora_and_tokens(self.bundle, task, budget, unet_lora, new_ids, self.lr,
                                                      self.embedding_lr, gen, encode=self._encode,
                                                      groups=[(text_lora, self.text_lr)])
        for p in unet_lora + text_lora:
            p.requires_grad_(False)
        self._fuse_task(task, new_ids, budget)
        unet.delete_adapters(ADAPTER)
        for text in texts:
            for module in text.modules():  # peft's wrappers stay, empty: they then compute their base layer only
                if hasattr(module, "delete_adapter") and ADAPTER in getattr(module, "lora_A", {}):
                    module.delete_adapter(ADAPTER)
            if getattr(text, "peft_config", None) is not None:
                text.peft_config.pop(ADAPTER, None)
                if not text.peft_config:
                    del text.peft_config
        self.layers = self._target_layers()  # _fuse_task left every layer's weight at its fused value

    @torch.no_grad()
    def _fuse_task(self, task, new_ids: list[int], budget) -> None:
        """Add the new concept's W_i G_i and G_i to every layer's sums, group by group as the official fusion
        does; after each group its layers are set to the fused weight, so the next group's inputs see it."""
        from cifc_bench.api import GenerationSettings
        from cifc_bench.diffusion.sampling import sample

        modules = self._target_layers()
        kv = {n for n in modules if n.endswith(("attn2.to_k", "attn2.to_v"))}
        text = {n for n in modules if n.startswith(("text.", "text2."))}
        spatial = set(modules) - kv - text
        names = [c.token_string for c in task.concepts]
        bound = bind_layerwise([p for v in names for p in (TEMPLATE.format(v), v)], self.placeholders, self.n_layers)

        # 1. the text encoder's layers (SDXL: both encoders'), on its own ED-LoRA; unpadded, like the official
        # ``padding='do_not_pad'``
        grams = self._captured(text, lambda: [encode_unpadded(self.bundle, p) for p in bound])
        self._add_and_fuse({n: modules[n] for n in text}, grams)
        # 2. cross-attention K/V of layer l: the fused encoder's new-token and EOS rows of layer l's prompts
        keep = torch.tensor([*new_ids, self.bundle.tokenizer.eos_token_id])
        grams = {}
        per_layer = len(bound) // self.n_layers  # bound is prompt-major: prompt k's layer l is k * L + l
        for proc, (name, _) in zip(self.processors, cross_attention_layers(self.bundle.unet), strict=True):
            rows = []
            for k in range(per_layer):  # SDXL: the layers of one block read its token layer's prompt
                ids, states = encode_unpadded(self.bundle, bound[k * self.n_layers + proc.index])
                rows.append(states[torch.isin(ids.cpu(), keep)].double())
            x = torch.cat(rows)
            for proj in ("to_k", "to_v"):
                grams[f"unet.{name}.{proj}"] = x.T @ x
        self._add_and_fuse({n: modules[n] for n in kv}, grams)
        # 3. the spatial layers: 20 unguided steps of "photo of a <V>" through the fused text side
        settings = GenerationSettings(resolution=budget.resolution, num_inference_steps=self.fusion_steps,
                                      guidance_scale=1.0, batch_size=1)
        prompts = [TEMPLATE.format(v) for v in names]
        grams = self._captured(spatial, lambda: [sample(self.bundle, self._encode(self.bundle, [p]), None, [budget.seed + k],
                                                        settings) for k, p in enumerate(prompts)])
        self._add_and_fuse({n: modules[n] for n in spatial}, grams)

    def _captured(self, names, run) -> dict[str, torch.Tensor]:
        """X_iᵀ X_i of the inputs every layer in ``names`` receives while ``run()`` runs."""
        modules = self._target_layers()
        grams: dict[str, torch.Tensor] = {}

        def capture(name):
            def hook(module, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.T @ x
            return hook

        handles = [modules[n].register_forward_pre_hook(capture(n)) for n in names]
        try:
            run()
        finally:
            for h in handles:
                h.remove()
        return grams

    def _add_and_fuse(self, modules: dict[str, torch.nn.Module], grams: dict[str, torch.Tensor]) -> None:
        """Add W_i G_i (W_i: the layer's own weight with the task's LoRA) to the sums, then make the layer compute
        the fused weight alone: the base weight becomes W*, the LoRA's B zero."""
        for name, module in modules.items():
            w = (module.get_delta_weight(ADAPTER) + module.base_layer.weight).double()
            g = grams[name].to(w)
            old = self.sums.get(name)
            self.sums[name] = (w @ g, g) if old is None else (old[0] + w @ g, old[1] + g)
            module.base_layer.weight.copy_(fuse(*self.sums[name], self.base[name], eps=self.eps).to(w.device))
            module.lora_B[ADAPTER].weight.zero_()

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
        from cifc_bench.diffusion.sampling import sample

        cond = self._encode(self.bundle, [request.prompt])
        uncond = unconditional_layerwise(self.bundle, settings.negative_prompt, 1, cond, self.placeholders,
                                         self.n_layers)
        regions = [(torch.cat([context_of(uncond), context_of(self._encode(self.bundle, [request.region_prompt(k)]))]),
                    box.as_tuple()) for k, box in enumerate(request.boxes)]
        for proc in self.processors:
            proc.regions = regions
        try:
            return sample(self.bundle, cond, uncond, [request.seed], settings, inits=[request.init])[0]
        finally:
            for proc in self.processors:
                proc.regions = None

    # -- state ---------------------------------------------------------------------------------------------
    def stored_parameters(self) -> int:
        return sum(int(a.numel() + b.numel()) for a, b in self.sums.values()) + self.tokens.count

    def adapter_state(self):
        state = {f"weight.{n}": (m.base_layer if hasattr(m, "base_layer") else m).weight.detach().clone()
                 for n, m in self.layers.items()}
        for n, (wg, g) in self.sums.items():
            state[f"wg.{n}"], state[f"g.{n}"] = wg, g
        return state

    def load_adapter_state(self, state, tasks_done) -> None:
        self.concepts = [c for task in tasks_done for c in task.concepts]
        self._set_weights({n: state[f"weight.{n}"] for n in self.layers})
        device = self.bundle.device  # states load on the CPU
        self.sums = {n: (state[f"wg.{n}"].to(device, copy=True), state[f"g.{n}"].to(device, copy=True))
                     for n in self.layers if f"g.{n}" in state}
