"""``cidm``: CIDM (Dong et al., NeurIPS 2024), layer-wise concept tokens with LoRA, concept consolidation,
elastic weight aggregation and region synthesis.

Spec: the design notes' cidm-spec.md, §B, §C, §G; what this implementation chose: docs/reference/methods/cidm.md.

Learning task g (every task starts from the base weights):
1. each placeholder gets L layer-wise tokens (L = the UNet's cross-attention count, 16 for SD-1.5), initialised
   from the protocol (random σ or a class word); layer l's cross-attention reads only its own prompt encoding;
2. a rank-4 LoRA on q/k/v/out of every cross-attention layer (none on the text encoder) and the new token
   rows are trained with the diffusion loss plus the concept consolidation loss (``variant``, see
   :mod:`.consolidation`), switched by ``tsp`` (task-specific R1) and ``tsh`` (task-shared R2 / enhance);
3. the task learner (LoRA + layer-wise embeddings) is stored; earlier tasks stay frozen.

Generating: elastic weight aggregation (:mod:`.ewa`, ``ewa`` switch; off = uniform merge) gives per-prompt,
per-layer task weights, computed once per prompt; the merged per-prompt LoRA (W0 + α Σ ω_i ΔW_i) then makes
sampling cost what the base model costs. Multi-concept requests with boxes use context-controllable synthesis:
layer-wise regional cross-attention and region noise estimation. Eq. 5 is read as the spec recommends (§G.19):

    E* = α E + (1 − α) [ Σ_u m_u E_u / max(1, Σ_u m_u) + (1 − ∪_u m_u) E ],   α = 0.1,

so outside every box the estimate equals the global one, and overlapping boxes average. The paper's literal
form would scale everything outside the boxes by α; we treat that as a typo, as the spec does. ``ccs=False``
(an ablation) prompts multi-concept requests plainly, without their boxes and region prompts.

Release-only training extras (``extras``, on by default for ``variant=release``): noise offset 0.01, the
valid-region-masked loss with the release's resize-and-paste augmentation, the cross-attention regulariser
(weight 0.01, first two placeholders) and the embedding-norm freeze (threshold 0.55).

Versions: v2: release attention regulariser (batch mean, skipped without outside), exact R2 step 2, sigmoid on
region features only, the release's style templates; v3: R2 step 2 solved in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from cifc_bench.api import Method
from cifc_bench.core.progress import progress
from cifc_bench.diffusion.adapter_method import one_of
from cifc_bench.diffusion.layerwise import (
    box_mask,
    encode_layerwise,
    generate_unboxed,
    install,
    layer_count,
    unconditional_layerwise,
)
from cifc_bench.diffusion.sampling import join_conditions, unet_predictor
from cifc_bench.diffusion.sdxl import context_of, expand_batch
from cifc_bench.diffusion.tokens import PlaceholderTokens, embedding_tables, layer_token
from cifc_bench.diffusion.training import (
    ConceptBatches,
    TokenRows,
    check_loss,
    default_augment,
    optimizer_step,
)

from .consolidation import SharedSubspace, enhance, orthogonality
from .ewa import ewa_weights, uniform_weights

VARIANTS = ("paper", "release")


def paste_augment(image, resolution: int):
    """The release's HumanResizeCropFinalV3 (spec D.4): resize, maybe crop, paste on a black canvas + mask."""
    from torchvision.transforms import functional as TF

    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    w, h = image.size
    if torch.rand(()) < 0.5:
        if h > w:  # portrait: top-anchored crop of a random height between w and h
            crop_h = int(torch.randint(w, h + 1, ()))
            image = image.crop((0, 0, w, crop_h))
        else:
            x0 = int(torch.randint(0, w - resolution + 1, ()))
            y0 = int(torch.randint(0, h - resolution + 1, ()))
            image = image.crop((x0, y0, x0 + resolution, y0 + resolution))
    w, h = image.size
    scale = min(1.0, resolution / max(w, h))
    image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))))
    w, h = image.size
    top, left = int(torch.randint(0, resolution - h + 1, ())), int(torch.randint(0, resolution - w + 1, ()))
    canvas = torch.zeros(3, resolution, resolution)
    canvas[:, top : top + h, left : left + w] = TF.to_tensor(image)
    mask = torch.zeros(1, resolution, resolution)
    mask[:, top : top + h, left : left + w] = 1.0
    return canvas * 2 - 1, mask


class CIDM(Method):
    storage = "per-task-adapters"
    families = ("sd1", "sdxl")  # SDXL: one token per cross-attention block, both encoders (docs/reference/fidelity.md)
    version = 3  # its history: the module's docstring

    # Table 3 (IA %, SD-1.5, mean over the 10 concepts of the final model): turning a switch off. The paper has
    # no "CIDM w/o EWA"; its EWA effect is the baseline without against with EWA (74.6 vs 77.3).
    paper_effects = {
        ("tsp", False): ("ia", "final", -0.5, "Table 3: w/o TSP 77.4 vs 77.9"),
        ("tsh", False): ("ia", "final", -0.2, "Table 3: w/o TSH 77.7 vs 77.9"),
        ("ewa", False): ("ia", "final", -2.7, "Table 3: baseline 74.6 vs w/ EWA 77.3"),
    }

    @classmethod
    def unet_passes_per_step(cls, request, guided, tasks_learned, method_args):
        """Region synthesis evaluates the unconditional prompt once, the global prompt and each box's."""
        if request.boxes and method_args.get("ccs", True):
            return len(request.boxes) + 2
        return super().unet_passes_per_step(request, guided, tasks_learned, method_args)

    def __init__(self, bundle, variant: str = "paper", rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3, gamma1: float = 0.1, gamma2: float | None = None, tsp: bool = True,
                 tsh: bool = True, ewa: bool = True, alpha: float = 0.8, ccs_alpha: float = 0.1,
                 sigmoid_attention: bool = False, extras: bool | None = None, noise_offset: float = 0.01,
                 attn_reg_weight: float = 0.01, emb_norm_threshold: float = 0.55, merge: str = "prompt",
                 ccs: bool = True) -> None:
        one_of("variant", variant, VARIANTS)
        extras = (variant == "release") if extras is None else bool(extras)
        gamma2 = (1.0 if variant == "paper" else 0.1) if gamma2 is None else float(gamma2)
        super().__init__(bundle, variant=variant, rank=rank, lr=lr, embedding_lr=embedding_lr,
                         gamma1=gamma1, gamma2=gamma2, tsp=tsp, tsh=tsh, ewa=ewa, alpha=alpha, ccs_alpha=ccs_alpha,
                         sigmoid_attention=sigmoid_attention, extras=extras, noise_offset=noise_offset,
                         attn_reg_weight=attn_reg_weight, emb_norm_threshold=emb_norm_threshold, merge=merge, ccs=ccs)
        one_of("merge", merge, {"prompt": "merged once per prompt",
                                "call": "the release's per-call mixture of task branches, slower"})
        self.merge = merge
        self.variant, self.rank = variant, int(rank)
        self.lr, self.embedding_lr = float(lr), float(embedding_lr)
        self.gamma1, self.gamma2 = float(gamma1), gamma2
        self.tsp, self.tsh, self.use_ewa, self.ccs = bool(tsp), bool(tsh), bool(ewa), bool(ccs)
        self.alpha, self.ccs_alpha, self.extras = float(alpha), float(ccs_alpha), extras
        self.noise_offset, self.attn_reg_weight = float(noise_offset), float(attn_reg_weight)
        self.emb_norm_threshold = float(emb_norm_threshold)
        self.processors, self.loras = install(bundle.unet, self.rank, sigmoid=bool(sigmoid_attention))
        self.n_layers = layer_count(self.processors)
        self.tokens = PlaceholderTokens(bundle, layers=self.n_layers)
        self.task_placeholders: list[list[str]] = []  # per learned task, in order
        self.shared = SharedSubspace([tuple(m.base.weight.shape) for m in self.modules]) if variant == "paper" else None
        if self.shared is not None:
            self.shared.to(bundle.device)
        self._trainable = 0

    @property
    def modules(self):
        return [m for layer in self.loras for m in layer]

    @property
    def placeholders(self) -> list[str]:
        return [p for task in self.task_placeholders for p in task]

    # ------------------------------------------------------------------ learning
    def _add_tokens(self, concept, gen: torch.Generator) -> list[int]:
        return self.tokens.add(concept, gen)

    def learn_task(self, task, budget) -> None:
        from diffusers import DDPMScheduler

        from cifc_bench.core.precision import fp32_trainable, loss_scaler

        bundle = self.bundle
        gen = torch.Generator().manual_seed(budget.seed)
        new_ids: list[int] = []
        placeholders: list[str] = []
        for concept in task.concepts:
            new_ids += self._add_tokens(concept, gen)
            placeholders += list(concept.placeholders)
        old = len(self.task_placeholders)
        for m in self.modules:
            m.reset_task()
            m.active = True
            m.up.requires_grad_(True)
            m.down.requires_grad_(True)
        if self.shared is not None and old > 0:
            self.shared.add_task()  # H_g = I for the new task, trained in step 2
        tables = embedding_tables(bundle)  # SDXL: the rows of both text encoders train
        emb = tables[0]  # the release's embedding-norm freeze reads the (first) text encoder's rows
        tokens = [TokenRows(e, new_ids) for e in tables]
        lora_lr = self.lr * budget.lr_scale  # the release's style tasks 6 and 8 train at 1.5x (schedule release)
        lora_params = [p for m in self.modules for p in (m.up, m.down)]
        fp32_trainable(self.modules)  # LoRAs are made in fp32; a low-precision bundle must not change that
        scaler = loss_scaler(bundle)
        optimizer = torch.optim.AdamW([{"params": lora_params, "lr": lora_lr},
                                       {"params": [t.rows for t in tokens], "lr": self.embedding_lr}],
                                      weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / max(budget.steps, 1))
        self._trainable = sum(p.numel() for p in lora_params) + len(new_ids) * sum(e.shape[1] for e in tables)
        noise_scheduler = DDPMScheduler.from_config(bundle.scheduler.config)
        augment = paste_augment if self.extras else default_augment
        streams = [iter(ConceptBatches(c, budget.resolution, budget.batch_size, budget.seed + k, augment))
                   for k, c in enumerate(task.concepts)]
        first_ids = [bundle.tokenizer.convert_tokens_to_ids(layer_token(p, 0)) for p in placeholders[:2]]
        frozen_embeddings = False
        bundle.unet.train()
        for step in progress(range(budget.steps), desc=f"train {task.name}", leave=False):
            pixels, masks, prompts = next(streams[step % len(streams)])
            masks = masks.to(bundle.device)
            record = self.extras and self.attn_reg_weight > 0
            for proc in self.processors:
                proc.record = [] if record else None
            cond = encode_layerwise(bundle, prompts, placeholders, self.n_layers)
            loss = self._diffusion_loss(noise_scheduler, pixels, masks, cond, gen)
            if record:
                loss = loss + self.attn_reg_weight * self._attention_reg(prompts, placeholders, first_ids, masks)
            loss = loss + self._consolidation(old)
            check_loss(loss, task, step, {"lr": lora_lr, "embedding_lr": self.embedding_lr})
            optimizer_step(loss, optimizer, scaler, tokens, push=not frozen_embeddings)  # frozen rows keep their values
            schedule.step()
            if self.extras and not frozen_embeddings and emb[new_ids].norm(dim=-1).mean() >= self.emb_norm_threshold:
                frozen_embeddings = True  # the release's embedding-norm freeze
            if self.shared is not None and self.tsh and old > 0:
                self.shared.solve(self._deltas(include_current=True))
        for proc in self.processors:
            proc.record = None
        bundle.unet.eval()
        for rows in tokens:
            rows.close()
        for m in self.modules:
            m.store_task()
            m.active = False
            m.up.requires_grad_(False)
            m.down.requires_grad_(False)
        if self.shared is not None and old == 0:
            self.shared.add_task([m.delta(0) for m in self.modules])  # W* = ΔW_1, H_1 = I
        self.task_placeholders.append(placeholders)

    def _diffusion_loss(self, noise_scheduler, pixels, masks, cond, gen):
        from cifc_bench.diffusion.training import diffusion_loss

        return diffusion_loss(self.bundle, noise_scheduler, pixels, cond, generator=gen,
                              mask=masks if self.extras else None,
                              noise_offset=self.noise_offset if self.extras else 0.0)

    def _deltas(self, include_current: bool) -> list[list[torch.Tensor]]:
        out = []
        for m in self.modules:
            per_task = [m.delta(i) for i in range(len(m.ups))]
            if include_current:
                per_task.append(m.up @ m.down)
            out.append(per_task)
        return out

    def _consolidation(self, old_tasks: int) -> torch.Tensor:
        """γ1 R1 (+ the task-shared term) for tasks after the first; zero for the first task."""
        zero = self.modules[0].up.new_zeros(())
        if old_tasks == 0:
            return zero
        ups = [m.up for m in self.modules]
        loss = zero
        if self.tsp:
            loss = loss + self.gamma1 * orthogonality(ups, [m.ups for m in self.modules])
        if self.tsh:
            if self.variant == "release":
                loss = loss + self.gamma2 * enhance(ups)
            else:
                loss = loss + self.gamma2 * self.shared.r2(self._deltas(include_current=True))
        return loss

    def _attention_reg(self, prompts, placeholders, first_ids, masks) -> torch.Tensor:
        """The release's cross-attention regulariser (spec §B.5.1) on the first two placeholders.

        Per sample, Σ over resolutions of MSE(subject map, mask) + mean(adjective map outside the mask), averaged
        over the batch: the release trains one sample per GPU and DDP averages. A sample whose mask leaves no
        outside at some resolution contributes nothing (the release skips its NaN term, trainer_edlora.py:255)."""
        tok = self.bundle.tokenizer
        bound = [p for p in prompts]
        for ph in placeholders:
            bound = [b.replace(ph, layer_token(ph, 0)) for b in bound]
        ids = tok(bound, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        by_res: dict[int, list[torch.Tensor]] = {}
        for proc in self.processors:
            for probs in proc.record or []:
                by_res.setdefault(probs.shape[1], []).append(probs[: len(prompts)])
        per_res = []
        for n, maps in by_res.items():
            side = int(n**0.5)
            per_res.append((torch.stack(maps).mean(0), F.interpolate(masks, size=(side, side), mode="nearest").flatten(1)))
        total = masks.new_zeros(())
        for b in range(len(prompts)):
            pos = [int((ids[b] == t).nonzero()[0]) for t in first_ids if (ids[b] == t).any()]
            if len(pos) < 2 or any(not (g[b] == 0).any() for _, g in per_res):
                continue
            for mean_map, g in per_res:  # mean_map [B, n, T], g [B, n]
                a_adj, a_subj = (mean_map[b, :, pos[0]], mean_map[b, :, pos[1]])
                a_adj, a_subj = a_adj / a_adj.max().clamp(min=1e-8), a_subj / a_subj.max().clamp(min=1e-8)
                total = total + F.mse_loss(a_subj, g[b]) + a_adj[g[b] == 0].mean()
        return total / len(prompts)

    # ------------------------------------------------------------------ generating
    def concept_encoding(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """K^l for the string of all placeholders in task order, and each task's token positions (BOS = 0).

        Cached until the learned concepts change: it depends on them only."""
        phs = self.placeholders
        key = (tuple(phs), self.bundle.text_encoder.get_input_embeddings().weight._version)
        if getattr(self, "_concept_cache", (None,))[0] == key:
            return self._concept_cache[1]
        K = context_of(encode_layerwise(self.bundle, [" ".join(phs)], phs, self.n_layers))[0]
        ranges, start = [], 1
        for task in self.task_placeholders:
            ranges.append((start, start + len(task)))
            start += len(task)
        self._concept_cache = (key, (K, ranges))
        return K, ranges

    def task_weights(self, cond) -> torch.Tensor:
        """Per-prompt, per-layer EWA weights [B, L, g] (uniform when ``ewa`` is off)."""
        g, cond = len(self.task_placeholders), context_of(cond)
        if not self.use_ewa:
            return uniform_weights(cond.shape[0], self.n_layers, g, cond)
        K, ranges = self.concept_encoding()
        return ewa_weights(cond, K, ranges, self.variant)

    def set_merged(self, weights: torch.Tensor | None, copies: int = 2) -> None:
        """Install per-sample merged weights for a batch of ``copies`` groups of the prompts' samples (a CFG
        batch [uncond; cond] is 2; batched region synthesis U + 2): every group reuses cond's weights.

        With ``merge='call'`` nothing is merged: every cross-attention call recomputes the layer's EWA
        weights from its context and sums the task branches, as the release does (the benchmark's baseline).
        """
        if self.merge == "call":
            self._set_per_call(weights is not None)
            return
        for proc in self.processors:  # fixed weights: each context's K and V are computed once, at the first step
            proc.kv_cache = None if weights is None else {}
        for proc, modules in zip(self.processors, self.loras, strict=True):  # SDXL: blocks share a token layer
            w = None if weights is None else torch.cat([weights[:, proc.index]] * copies)
            for m in modules:
                m.set_merged(w, self.alpha)

    def _set_per_call(self, on: bool) -> None:
        K, ranges = self.concept_encoding() if on else (None, None)
        for proc in self.processors:
            if not on:
                proc.per_call = None
                for m in proc.loras:
                    m.branch_weights = None
                continue

            def weights_for(context, layer=proc.index):
                half = context.shape[0] // 2
                if self.use_ewa:
                    w = ewa_weights(context[half:, None], K[layer : layer + 1], ranges, self.variant)[:, 0]
                else:
                    w = context.new_full((half, len(ranges)), 1.0 / len(ranges))
                return self.alpha * torch.cat([w, w])

            proc.per_call = weights_for

    @torch.no_grad()
    def generate(self, requests, settings):
        if not self.ccs:  # the ablation: a multi-concept request is prompted plainly, its boxes unused
            requests = [dataclasses.replace(r, boxes=None, region_prompts=None) for r in requests]
        images = generate_unboxed(self.bundle, requests, settings, self.placeholders, self.n_layers,
                                  around=self._merged_for if self.task_placeholders else None)
        # boxed requests that differ only in their seed share every conditioning: sample them as one batch
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(requests):
            if r.boxes:
                key = (r.prompt, tuple(b.as_tuple() for b in r.boxes), tuple(c.name for c in r.concepts),
                       r.region_prompts, None if r.init is None else (r.init.strength, r.init.box))
                groups.setdefault(key, []).append(k)
        for idx in groups.values():
            for start in range(0, len(idx), settings.batch_size):
                chunk = idx[start : start + settings.batch_size]
                for k, im in zip(chunk, self.generate_regions([requests[k] for k in chunk], settings), strict=True):
                    images[k] = im
        return images

    @contextlib.contextmanager
    def _merged_for(self, cond):
        """EWA-merged weights for the prompts of ``cond`` while a batch samples."""
        self.set_merged(self.task_weights(cond))
        try:
            yield
        finally:
            self.set_merged(None)

    def generate_regions(self, requests, settings):
        """Context-controllable synthesis (U + 2 evaluations per step in one UNet call, U = number of boxes).

        ``requests`` share prompt, boxes and concepts and differ in their seeds; they are sampled as one batch.
        """
        from cifc_bench.diffusion.sampling import Trajectory

        bundle, phs, L = self.bundle, self.placeholders, self.n_layers
        request, n = requests[0], len(requests)

        def encode(prompt):  # encoded once, shared by the n seeds
            return expand_batch(encode_layerwise(bundle, [prompt], phs, L), n)

        cond = encode(request.prompt)
        uncond = expand_batch(unconditional_layerwise(bundle, settings.negative_prompt, 1, cond, phs, L), n)
        regions = [(context_of(encode(request.region_prompt(k))), box.as_tuple()) for k, box in enumerate(request.boxes)]
        weights = self.task_weights(cond) if self.task_placeholders else None
        trajectory = Trajectory(bundle, [r.seed for r in requests], settings, [r.init for r in requests])
        latents = trajectory.latents
        h, w = latents.shape[-2:]
        masks = [box_mask(box, h, w, latents.device) for _, box in regions]

        # one UNet call per step: [uncond; cond; cond for each box], the box's group attending to its region's
        # prompt inside the box. The unconditional half of every regional pass equals the global one (inside the
        # box it attends to the same empty prompt), so it is computed once: U + 2 evaluations, not 2 (U + 1).
        U = len(regions)
        context = join_conditions([uncond, cond, *([cond] * U)])
        predict = unet_predictor(bundle)
        groups = [(slice((2 + k) * n, (3 + k) * n), region, box) for k, (region, box) in enumerate(regions)]

        def predictions(model_in, t):
            for proc in self.processors:
                proc.group_regions = groups
            try:
                out = predict(model_in.repeat(U + 2, 1, 1, 1), t, context)
            finally:
                for proc in self.processors:
                    proc.group_regions = None
            eps_u = out[:n]
            guided = [eps_u + settings.guidance_scale * (out[g * n : (g + 1) * n] - eps_u) for g in range(1, U + 2)]
            return guided[0], guided[1:]

        if weights is not None:
            self.set_merged(weights, copies=U + 2)
        try:
            for i, t in enumerate(trajectory.timesteps):
                model_in = trajectory.scheduler.scale_model_input(latents, t)
                eps, regional = predictions(model_in, t)
                eps = combine_region_noise(eps, regional, masks, self.ccs_alpha)
                latents = trajectory.step(eps, t, latents, i)
        finally:
            self.set_merged(None)
        return trajectory.finish(latents)

    # ------------------------------------------------------------------ state
    def trainable_parameters(self) -> int:
        return self._trainable

    def state_dict(self):
        state = self.tokens.state_dict()
        for i in range(len(self.task_placeholders)):
            for k, m in enumerate(self.modules):
                state[f"task{i}.lora{k}.up"] = m.ups[i]
                state[f"task{i}.lora{k}.down"] = m.downs[i]
        if self.shared is not None and self.shared.n_tasks:
            for k, w in enumerate(self.shared.w_star):
                state[f"shared.w_star{k}"] = w.detach()
                for i, h in enumerate(self.shared.h[k]):
                    state[f"shared.h{k}.task{i}"] = h.detach()
        return state

    def stored_parameters(self) -> int:
        """The task learners (LoRA + layer-wise embeddings); W* and H are consolidation state, not per task."""
        return sum(int(v.numel()) for k, v in self.state_dict().items() if not k.startswith("shared."))

    def load_state_dict(self, state, tasks_done) -> None:
        self.tokens.load_state_dict(state, tasks_done)
        for i, task in enumerate(tasks_done):
            if i >= len(self.task_placeholders):
                self.task_placeholders.append([p for c in task.concepts for p in c.placeholders])
                for m in self.modules:
                    m.ups.append(None)
                    m.downs.append(None)
            for k, m in enumerate(self.modules):
                m.ups[i] = state[f"task{i}.lora{k}.up"].to(m.up)
                m.downs[i] = state[f"task{i}.lora{k}.down"].to(m.down)
        if self.shared is not None and any(k.startswith("shared.") for k in state):
            while self.shared.n_tasks < len(tasks_done):
                self.shared.add_task()
            with torch.no_grad():
                for k, w in enumerate(self.shared.w_star):
                    w.copy_(state[f"shared.w_star{k}"])
                    for i, h in enumerate(self.shared.h[k]):
                        h.copy_(state[f"shared.h{k}.task{i}"])


def combine_region_noise(eps: torch.Tensor, regional: list[torch.Tensor], masks: list[torch.Tensor],
                         alpha: float) -> torch.Tensor:
    """E* = αE + (1−α)[Σ_u m_u E_u / max(1, Σ_u m_u) + (1 − ∪m) E]: equal to E outside every box."""
    if not regional:
        return eps
    count = torch.stack(masks).sum(0)
    inside = sum(m * e for m, e in zip(masks, regional, strict=True)) / count.clamp(min=1)
    # outside the union the formula reduces to E; torch.where keeps it bit-exact there
    return torch.where(count > 0, alpha * eps + (1 - alpha) * inside, eps)


__all__ = ["CIDM", "combine_region_noise", "paste_augment"]
