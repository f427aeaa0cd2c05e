"""``custom-diffusion``: Custom Diffusion (Kumari et al., CVPR 2023), adapted to the concept stream.

Per task: the concept's modifier tokens (the protocol's placeholders) and the **K and V projections of every
cross-attention layer** are fine-tuned on its images, with prior preservation: the same denoising loss on
``reg_images`` pictures that the *base* model generates from the plain class prompt. Two ways to continue
(method arg ``variant``):

- ``sequential``: task t starts from the K/V weights left by task t-1 (the paper's method, run as a stream).
- ``merge``: each task fine-tunes from the base K/V weights; then all concepts learned so far are merged by
  the paper's closed-form constrained optimisation (§3.3), re-solved after every task::

      W = argmin ‖(W − W₀) Xᵀ‖²  s.t.  W Cᵀ = V   ⇒   W = W₀ + (V − W₀Cᵀ)(C M⁻¹Cᵀ)⁺ C M⁻¹,   M = XᵀX + εI

  As the official ``diffusers_composenW.py`` builds them (@ 7c19c9a, lines 55-130): C stacks every non-BOS row
  (modifier tokens, class word, EOS) of the unpadded text features of "<V> cls" and "photo of a <V> cls" ("painting
  in the style of <V> cls" for a style), identical rows once; V = W_τ Cᵀ their outputs under the concept's own
  fine-tuned W_τ; X the unpadded, BOS-free features of caption prompts. The official code takes 200 LAION
  captions; this benchmark has no caption corpus, so the class prompt and the image captions of every task seen
  so far stand in (text only: no image is kept).

Training as the official README's recipe: lr 1e-5 scaled by the batch size (``scale_lr``, the official
``--scale_lr`` on one process; the budget never depends on the GPU count) and 200 class images (``reg_images``).

Storage: ``merge`` keeps, per task, its C (rank × d) and its V per layer; ``sequential`` keeps one model. Neither
replays data; the regularisation images come from the base model, as in the paper.

Versions: v2: the official merge inputs (unpadded non-BOS rows), --scale_lr and 200 class images.
"""

from __future__ import annotations

import torch

from cifc_bench.diffusion.adapter_method import AdapterMethod, one_of
from cifc_bench.diffusion.sampling import (
    encode_prompts,
    encode_unpadded,
    generate_batched,
    generate_requests,
    to_pixels,
)
from cifc_bench.diffusion.training import diffusion_loss, train_lora_and_tokens

VARIANTS = ("sequential", "merge")


def closed_form_merge(w0: torch.Tensor, targets: torch.Tensor, values: torch.Tensor, reg_gram: torch.Tensor,
                      eps: float = 1e-3) -> torch.Tensor:
    """W minimising ‖(W − W₀)Xᵀ‖² subject to W Cᵀ = V (least-squares compromise when the constraints conflict).

    Shapes: ``w0`` (out, d), ``targets`` C (n, d), ``values`` V (out, n), ``reg_gram`` M = XᵀX (d, d). ``eps`` is
    relative to M's mean eigenvalue and keeps M invertible when few regularisation prompts span the space.
    """
    dtype = w0.dtype
    w0, c, v, m = (x.double() for x in (w0, targets, values, reg_gram))
    d = m.shape[0]
    m = m + eps * (torch.trace(m) / d + 1e-12) * torch.eye(d, dtype=m.dtype, device=m.device)
    m_inv_ct = torch.linalg.solve(m, c.T)  # M⁻¹Cᵀ (d, n)
    gain = torch.linalg.pinv(c @ m_inv_ct)  # (C M⁻¹Cᵀ)⁺ (n, n)
    return (w0 + (v - w0 @ c.T) @ gain @ m_inv_ct.T).to(dtype)


def text_rows(bundle, prompts) -> torch.Tensor:
    """The official ``get_text_embedding``: each prompt encoded unpadded, BOS dropped (and "photo of a" after it,
    for prompts that start so), rows of all prompts stacked; no padding row is ever included."""
    rows = []
    for prompt in prompts:
        _, states = encode_unpadded(bundle, prompt)  # SDXL: both encoders' rows, at the K/V input width
        rows.append(states[4:] if prompt[:15].startswith("photo of a") else states[1:])
    return torch.cat(rows).float()


def unique_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows in order, each exact duplicate dropped (the official ``removal_indices``)."""
    keep = [i for i in range(rows.shape[0]) if not any(torch.equal(rows[i], rows[j]) for j in range(i))]
    return rows[keep]


class CustomDiffusion(AdapterMethod):
    storage = "single-model"
    families = ("sd1", "sdxl")  # SDXL: K/V read both encoders' states, merged at that width (docs/reference/fidelity.md)
    version = 2  # its history: the module's docstring

    def __init__(self, bundle, variant: str = "merge", lr: float = 1e-5, embedding_lr: float = 1e-3,
                 reg_images: int = 200, prior_weight: float = 1.0, scale_lr: bool = True) -> None:
        one_of("variant", variant, VARIANTS)
        if reg_images < 0:
            raise ValueError(f"reg_images={reg_images} must be >= 0 (0 switches prior preservation off)")
        super().__init__(bundle, variant=variant, lr=lr, embedding_lr=embedding_lr, reg_images=reg_images,
                         prior_weight=prior_weight, scale_lr=scale_lr)
        self.variant = variant
        self.storage = "single-model" if variant == "sequential" else "per-task-features"
        self.reg_images, self.prior_weight, self.scale_lr = int(reg_images), float(prior_weight), bool(scale_lr)
        self.layers = {n: m for n, m in bundle.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))}
        self.base = {n: m.weight.detach().clone() for n, m in self.layers.items()}  # W₀: part of the base model
        self.targets: dict[str, torch.Tensor] = {}  # concept -> C_τ
        self.values: dict[str, dict[str, torch.Tensor]] = {}  # concept -> layer -> V_τ
        self.reg_gram: torch.Tensor | None = None

    # -- learning ------------------------------------------------------------------------------------------
    def learn_task(self, task, budget) -> None:
        class_prompts = [self._class_prompt(c) for c in task.concepts]
        reg = self._regularisation_batches(class_prompts, budget) if self.reg_images else None
        if self.variant == "merge":
            self._set_weights(self.base)
        gen, new_ids = self.task_tokens(task, budget)
        weights = [m.weight for m in self.layers.values()]

        def prior_loss(pixels, embeds, noise_scheduler, generator):
            if reg is None:
                return torch.zeros(())
            reg_pixels, reg_prompts = next(reg)
            reg_embeds = encode_prompts(self.bundle, reg_prompts)
            return self.prior_weight * diffusion_loss(self.bundle, noise_scheduler, reg_pixels, reg_embeds,
                                                      generator=generator)

        lr = self.lr * budget.batch_size if self.scale_lr else self.lr  # --scale_lr: × batch × accumulation × GPUs
        self.trained, streams, _ = train_lora_and_tokens(self.bundle, task, budget, weights, new_ids, lr,
                                                            self.embedding_lr, gen, extra_loss=prior_loss)
        for w in weights:
            w.requires_grad_(False)
        if self.variant == "merge":
            self._record_constraints(task, class_prompts)
            self._merge()

    @staticmethod
    def _class_prompt(concept) -> str:
        return f"a {concept.class_word}"  # style concepts' class words are nouns too ("painting", "picture")

    def _regularisation_batches(self, class_prompts, budget):
        """An endless stream of (pixels, prompts) batches of base-model images of the class prompts."""
        from cifc_bench.api import GenerationSettings
        from cifc_bench.core.seeding import derive_seed

        current = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self._set_weights(self.base)
        prompts = [class_prompts[k % len(class_prompts)] for k in range(self.reg_images)]
        seeds = [derive_seed("custom-diffusion-reg", budget.seed, k) for k in range(len(prompts))]
        settings = GenerationSettings(resolution=budget.resolution, num_inference_steps=25, guidance_scale=6.0,
                                      batch_size=max(1, min(8, len(prompts))))
        images = generate_batched(self.bundle, prompts, seeds, settings)
        self._set_weights(current)
        pixels = to_pixels(images)
        order = torch.Generator().manual_seed(budget.seed)

        def stream():
            while True:
                idx = torch.randperm(len(prompts), generator=order)[: budget.batch_size]
                yield pixels[idx], [prompts[i] for i in idx.tolist()]

        return stream()

    @torch.no_grad()
    def _record_constraints(self, task, class_prompts) -> None:
        """C_τ, V_τ = W_τ C_τᵀ of each new concept, and its caption prompts' contribution to M = XᵀX."""
        from cifc_bench.diffusion.training import concept_dataset

        reg_prompts = list(class_prompts)
        for concept in task.concepts:
            named = f"{concept.token_string} {concept.class_word}"
            framing = "painting in the style of" if concept.kind == "style" else "photo of a"
            self.targets[concept.name] = unique_rows(text_rows(self.bundle, [named, f"{framing} {named}"]))
            self.values[concept.name] = {n: m.weight.float() @ self.targets[concept.name].T for n, m in self.layers.items()}
            reg_prompts += list(dict.fromkeys(concept_dataset(concept)["caption"]))
        x = text_rows(self.bundle, reg_prompts)
        self.reg_gram = x.T @ x + (self.reg_gram if self.reg_gram is not None else 0)

    @torch.no_grad()
    def _merge(self) -> None:
        names = list(self.targets)
        c = torch.cat([self.targets[n] for n in names])
        merged = {}
        for layer in self.layers:
            v = torch.cat([self.values[n][layer] for n in names], dim=1)
            merged[layer] = closed_form_merge(self.base[layer].float(), c, v, self.reg_gram)
        self._set_weights(merged)

    @torch.no_grad()
    def _set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for n, m in self.layers.items():
            m.weight.copy_(weights[n].to(m.weight))

    # -- generation and state ------------------------------------------------------------------------------
    def generate(self, requests, settings):
        return generate_requests(self.bundle, requests, settings)

    def stored_parameters(self) -> int:
        """Beyond the base model: token rows, plus (merge) every concept's C and V; (sequential) the K/V weights."""
        tokens = self.tokens.count
        if self.variant == "sequential":
            return tokens + sum(int(w.numel()) for w in self.base.values())
        return tokens + sum(int(c.numel()) + sum(int(v.numel()) for v in self.values[n].values())
                            for n, c in self.targets.items())

    def adapter_state(self):
        state = {f"weight.{n}": m.weight.detach().clone() for n, m in self.layers.items()}
        for c, target in self.targets.items():
            state[f"target.{c}"] = target
            state.update({f"value.{c}.{n}": v for n, v in self.values[c].items()})
        if self.reg_gram is not None:
            state["reg_gram"] = self.reg_gram
        return state

    def load_adapter_state(self, state, tasks_done) -> None:
        device = self.bundle.device  # states load on the CPU
        self._set_weights({n: state[f"weight.{n}"] for n in self.layers})
        for task in tasks_done:
            for c in task.concepts:
                if f"target.{c.name}" in state:
                    self.targets[c.name] = state[f"target.{c.name}"].to(device, copy=True)
                    self.values[c.name] = {n: state[f"value.{c.name}.{n}"].to(device, copy=True) for n in self.layers}
        self.reg_gram = state["reg_gram"].to(device, copy=True) if "reg_gram" in state else None
