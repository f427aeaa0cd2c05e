"""Layer-wise concept tokens (ED-LoRA style, spec §B.1) and the per-task LoRA on cross-attention.

Every placeholder gets one token per cross-attention layer. A prompt becomes L prompts, each with the layer's
tokens, and layer l's cross-attention reads only its own encoding: the UNet receives a 4-D context
``[batch, L, tokens, dim]`` and :class:`LayerwiseAttnProcessor` picks slice l.

The LoRA is a small module of our own rather than a peft adapter because CIDM needs what peft does not offer:
many frozen task adapters per layer plus a per-sample merged weight (EWA merges per prompt, so samples in
one batch carry different weights). The merged forward costs one batched matmul, the same as the base layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cifc_bench.diffusion.tokens import add_layer_tokens, layer_token  # noqa: F401  (part of the layer-wise toolkit)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def cross_attention_layers(unet) -> list[tuple[str, nn.Module]]:
    """The UNet's cross-attention modules in the spec's order: down blocks, mid block, up blocks."""
    found = [(n, m) for n, m in unet.named_modules() if n.endswith("attn2")]
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(found, key=lambda nm: rank[nm[0].split(".")[0]])


def token_layers(unet) -> list[int]:
    """For every cross-attention layer (in :func:`cross_attention_layers`' order), the index of its layer-wise
    token: one token per cross-attention block (a ``Transformer2DModel``), in order.

    On SD-1.x every block holds one transformer layer, so this is one token per cross-attention layer (16 on
    SD-1.5, as the spec). SDXL's blocks hold 1, 2 or 10 layers (70 in 11 blocks); the paper gives no count for
    SDXL and the spec calls one per block the natural choice (``docs/reference/fidelity.md``)."""
    blocks: dict[str, int] = {}
    return [blocks.setdefault(name.split(".transformer_blocks.")[0], len(blocks))
            for name, _ in cross_attention_layers(unet)]


def layer_count(processors) -> int:
    """How many layer-wise tokens a placeholder has under these processors."""
    return max(p.index for p in processors) + 1


def install_processors(unet, sigmoid: bool = False) -> list[LayerwiseAttnProcessor]:
    """A :class:`LayerwiseAttnProcessor` on every cross-attention layer (attn2), in the spec's order, each reading
    its block's token layer (:func:`token_layers`).

    An ``attn1`` that reads the prompt too (a UNet built with diffusers' ``only_cross_attention``; on SD-1.5 and
    the synthetic tier it is a self-attention) gets a plain one reading its block's layer slice, so that the 4-D
    context never reaches it whole. It keeps softmax attention and gets no LoRA: it reads the layer-wise tokens
    through its frozen K/V, as any other text-reading layer the method does not adapt.
    """
    processors = []
    for index, (name, attn) in zip(token_layers(unet), cross_attention_layers(unet), strict=True):
        proc = LayerwiseAttnProcessor(index, sigmoid=sigmoid)
        attn.set_processor(proc)
        processors.append(proc)
        attn1 = unet.get_submodule(name.removesuffix("attn2") + "attn1")
        if attn1.is_cross_attention:
            attn1.set_processor(LayerwiseAttnProcessor(index))
    return processors


def bind_layerwise(prompts: list[str], placeholders: list[str], n_layers: int) -> list[str]:
    """L copies of each prompt, copy l with every placeholder replaced by its layer-l token (b-major order)."""
    out = []
    for p in prompts:
        for layer in range(n_layers):
            text = p
            for ph in sorted(placeholders, key=len, reverse=True):  # <dog10> before <dog1>
                text = text.replace(ph, layer_token(ph, layer))
            out.append(text)
    return out


def encode_layerwise(bundle, prompts: list[str], placeholders: list[str], n_layers: int):
    """``[B, L, T, d]`` text-encoder states of the layer-wise bound prompts; on SDXL an
    :class:`~cifc_bench.diffusion.sdxl.XLCondition` with that context and a ``[B, d']`` pooled embedding.

    A prompt without placeholders (e.g. the negative prompt) is the same in every layer: encoded once, shared.
    SDXL's pooled embedding conditions the whole UNet, not one layer: a bound prompt's is the mean over its L
    copies (every layer's tokens count alike; ``docs/reference/fidelity.md``).
    """
    from cifc_bench.diffusion.sampling import encode_prompts
    from cifc_bench.diffusion.sdxl import XLCondition

    bound = [any(ph in p for ph in placeholders) for p in prompts]
    plain = [p for p, b in zip(prompts, bound, strict=True) if not b]
    layered = [p for p, b in zip(prompts, bound, strict=True) if b]
    parts = {}
    if plain:
        enc = encode_prompts(bundle, plain)
        states, pooled = (enc.context, enc.pooled) if isinstance(enc, XLCondition) else (enc, None)
        parts["plain"] = iter(zip(states.unsqueeze(1).expand(-1, n_layers, -1, -1),
                                  pooled if pooled is not None else [None] * len(plain), strict=True))
    if layered:
        enc = encode_prompts(bundle, bind_layerwise(layered, placeholders, n_layers))
        states, pooled = (enc.context, enc.pooled) if isinstance(enc, XLCondition) else (enc, None)
        states = states.view(len(layered), n_layers, *states.shape[1:])
        pooled = pooled.view(len(layered), n_layers, -1).mean(1) if pooled is not None else [None] * len(layered)
        parts["layered"] = iter(zip(states, pooled, strict=True))
    rows = [next(parts["layered" if b else "plain"]) for b in bound]
    context = torch.stack([c for c, _ in rows])
    return context if rows[0][1] is None else XLCondition(context, torch.stack([p for _, p in rows]))


def unconditional_layerwise(bundle, negative_prompt: str, n: int, cond, placeholders: list[str], n_layers: int):
    """The guidance's unconditional batch of ``n`` for a layer-wise ``cond``: the negative prompt (no
    placeholders: the same in every layer); on SDXL an empty one is zeros, as its pipeline does."""
    from cifc_bench.diffusion.sampling import unconditional

    return unconditional(bundle, negative_prompt, n, cond,
                         encode=lambda b, prompts: encode_layerwise(b, prompts, placeholders, n_layers))


def generate_unboxed(bundle, requests, settings, placeholders: list[str], n_layers: int, around=None) -> list:
    """Images for the requests without boxes, batch by batch, with layer-wise contexts (None for boxed ones).

    ``around(cond)``, if given, returns a context manager entered while a batch samples (CIDM merges its
    per-prompt weights there).
    """
    import contextlib

    from cifc_bench.diffusion.sampling import condition_batches, sample

    images = [None] * len(requests)
    plain = [k for k, r in enumerate(requests) if not r.boxes]
    for batch in condition_batches(len(plain), settings.batch_size, [requests[k].init for k in plain]):
        idx = [plain[b] for b in batch]
        cond = encode_layerwise(bundle, [requests[k].prompt for k in idx], placeholders, n_layers)
        uncond = unconditional_layerwise(bundle, settings.negative_prompt, len(idx), cond, placeholders, n_layers)
        with around(cond) if around else contextlib.nullcontext():
            out = sample(bundle, cond, uncond, [requests[k].seed for k in idx], settings,
                         inits=[requests[k].init for k in idx])
        for k, im in zip(idx, out, strict=True):
            images[k] = im
    return images


class LayerwiseAttnProcessor:
    """Cross-attention that reads its layer's slice of a 4-D context, with optional regional attention.

    ``regions`` (set by CCS) is a list of (context ``[B, L, T, d]``, box) pairs: queries inside a box attend to
    that region's prompt instead of the global one, overlapping boxes averaged (spec §B.4). ``sigmoid`` replaces
    the softmax by a sigmoid on those region features only (paper Eq. 4); the global prompt, training and plain
    sampling always use the softmax. ``record`` collects attention probabilities for the training-time
    attention regulariser.
    """

    def __init__(self, index: int, sigmoid: bool = False) -> None:
        self.index = index
        self.sigmoid = sigmoid
        self.regions: list[tuple[torch.Tensor, tuple[float, float, float, float]]] | None = None
        # batched region noise estimation: (batch slice, that group's region context [n, L, T, d], box); the
        # queries of the slice inside the box attend to the region's prompt, every other sample to its own
        self.group_regions: list[tuple[slice, torch.Tensor, tuple[float, float, float, float]]] | None = None
        self.record: list[torch.Tensor] | None = None
        # the release's per-call mixture: a function of this layer's context giving [N, g] branch weights
        self.per_call = None
        self.loras: list[TaskLoRALinear] = []
        # while the weights are fixed (merged per prompt), K and V of a context are the same at every denoising
        # step: computed at the first step and reused. id(context) -> (context, its _version, K, V); holding the
        # context keeps its id from being reused by another tensor.
        self.kv_cache: dict[int, tuple] | None = None

    def _key_value(self, attn, context: torch.Tensor, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of this layer's slice of ``context`` ([B, L, T, d] or [B, T, d]), from the cache when valid."""
        hit = self.kv_cache.get(id(context)) if self.kv_cache is not None else None
        if hit is not None and hit[0] is context and hit[1] == context._version:
            return hit[2], hit[3]
        ctx = context[:, self.index] if context.ndim == 4 else context
        ctx = ctx.to(dtype) if dtype is not None else ctx
        key, value = attn.to_k(ctx), attn.to_v(ctx)
        if self.kv_cache is not None:
            self.kv_cache[id(context)] = (context, context._version, key, value)
        return key, value

    def _attend(self, attn, query: torch.Tensor, context: torch.Tensor, keep_probs: bool, dtype=None,
                sigmoid: bool = False) -> torch.Tensor:
        key, value = self._key_value(attn, context, dtype)
        b, n, _ = query.shape
        heads = attn.heads
        q = query.view(b, n, heads, -1).transpose(1, 2)
        k = key.view(b, key.shape[1], heads, -1).transpose(1, 2)
        v = value.view(b, value.shape[1], heads, -1).transpose(1, 2)
        if not sigmoid and not (keep_probs and self.record is not None):  # the fused kernel, as diffusers
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scale)
            return out.transpose(1, 2).reshape(b, n, -1)
        logits = q @ k.transpose(-1, -2) * attn.scale
        probs = torch.sigmoid(logits) if sigmoid else logits.softmax(-1)
        if keep_probs and self.record is not None:
            self.record.append(probs.mean(1))  # [b, n, tokens], averaged over heads
        return (probs @ v).transpose(1, 2).reshape(b, n, -1)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("LayerwiseAttnProcessor is for cross-attention (attn2) only")
        if self.per_call is not None:
            context = encoder_hidden_states[:, self.index] if encoder_hidden_states.ndim == 4 else encoder_hidden_states
            weights = self.per_call(context)
            for m in self.loras:
                m.branch_weights = weights
        query = attn.to_q(hidden_states)
        out = self._attend(attn, query, encoder_hidden_states, keep_probs=True)
        if self.regions:
            out = self._regional(attn, query, out)
        if self.group_regions:
            out = self._group_regional(attn, query, out)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _regional(self, attn, query: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Layer-wise regional cross-attention: inside each box, attend to the box's own layer-wise prompt."""
        n = query.shape[1]
        side = int(math.isqrt(n))
        total = torch.zeros_like(out)
        count = torch.zeros(1, n, 1, device=out.device, dtype=out.dtype)
        for context, box in self.regions:
            mask = box_mask(box, side, side, out.device).view(1, n, 1).to(out.dtype)
            region = self._attend(attn, query, context, keep_probs=False, dtype=query.dtype, sigmoid=self.sigmoid)
            total = total + region * mask
            count = count + mask
        inside = count > 0
        return torch.where(inside, total / count.clamp(min=1), out)


    def _group_regional(self, attn, query: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`_regional` with one region per batch group: a regional pass of CCS for each box in one call.
        Only the queries inside a box attend to its prompt (each query's attention is its own: the others'
        would be thrown away)."""
        n = query.shape[1]
        side = int(math.isqrt(n))
        if torch.is_grad_enabled():
            out = out.clone()
        projections = [m for m in (attn.to_k, attn.to_v) if isinstance(m, TaskLoRALinear)]
        for rows, context, box in self.group_regions:
            inside = box_mask(box, side, side, out.device).view(n).nonzero().squeeze(1)
            for m in projections:  # the region's K and V with its group's merged weights
                m.rows = rows
            try:
                region = self._attend(attn, query[rows][:, inside], context, keep_probs=False, dtype=query.dtype,
                                      sigmoid=self.sigmoid)
            finally:
                for m in projections:
                    m.rows = None
            out[rows, inside] = region
        return out


def box_mask(box, height: int, width: int, device=None) -> torch.Tensor:
    """A ``[height, width]`` 0/1 mask of a normalised (y0, x0, y1, x1) box or :class:`~cifc_bench.api.Box`,
    rounded as every box of the suite is (:meth:`~cifc_bench.api.Box.pixels`)."""
    from cifc_bench.api import Box
    from cifc_bench.diffusion.sampling import box_mask as box_mask_4d

    return box_mask_4d(box if isinstance(box, Box) else Box(*box), height, width, device)[0, 0]


class TaskLoRALinear(nn.Module):
    """A frozen linear layer with one trainable task LoRA and any number of frozen earlier-task LoRAs.

    Notation as in the spec: ``up`` is A (out × r), ``down`` is B (r × in), ΔW = A·B.
    - training: y = W0 x + A_g B_g x (scale 1, the current task only: every task starts from the base);
    - merged: y = (W0 + ΔŴ_b) x with a per-sample weight set by :meth:`set_merged` (EWA, once per prompt);
    - branches: y = W0 x + Σ_i w_{b,i} A_i B_i x, recomputing the mixture on every call (the naive form).
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        self.down = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.active = False
        self.ups: list[torch.Tensor] = []
        self.downs: list[torch.Tensor] = []
        self.merged: torch.Tensor | None = None  # [N, in, out] per-sample full weights, transposed for baddbmm
        self.branch_weights: torch.Tensor | None = None  # [N, g] for the naive mixture
        self.rows: slice | None = None  # the samples of ``merged`` an input holds, when it holds fewer than all

    def reset_task(self) -> None:
        with torch.no_grad():
            self.up.zero_()
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def store_task(self) -> None:
        self.ups.append(self.up.detach().clone())
        self.downs.append(self.down.detach().clone())

    def delta(self, i: int) -> torch.Tensor:
        return self.ups[i] @ self.downs[i]

    def set_merged(self, weights: torch.Tensor | None, alpha: float) -> None:
        """``weights`` [N, g]: per-sample task weights; builds W0 + α Σ_i w_i ΔW_i once for the whole sampling."""
        if weights is None:
            self.merged = None
            return
        deltas = torch.stack([self.delta(i) for i in range(len(self.ups))])  # [g, out, in]
        merged = self.base.weight.unsqueeze(0) + alpha * torch.einsum("ng,goi->noi", weights.to(deltas), deltas)
        # summed in fp32, kept in the frozen weights' dtype (half the memory of [N, in, out] under bf16)
        self.merged = merged.to(self.base.weight.dtype).transpose(1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            merged = self.merged if self.rows is None else self.merged[self.rows]
            if self.base.bias is None:
                return torch.bmm(x, merged)
            return torch.baddbmm(self.base.bias, x, merged)  # bias fused, as nn.Linear's addmm
        y = self.base(x)
        if self.active:
            y = y + (x @ self.down.t()) @ self.up.t()
        if self.branch_weights is not None:
            for i in range(len(self.ups)):
                branch = (x @ self.downs[i].t()) @ self.ups[i].t()
                y = y + self.branch_weights[:, i].view(-1, *([1] * (x.ndim - 1))) * branch
        return y


def install(unet, rank: int, sigmoid: bool = False) -> tuple[list[LayerwiseAttnProcessor], list[list[TaskLoRALinear]]]:
    """Put layer-wise processors and task LoRAs on every cross-attention layer; returns both, per layer."""
    processors, loras = install_processors(unet, sigmoid), []
    for proc, (_, attn) in zip(processors, cross_attention_layers(unet), strict=True):
        layer = []
        for name in TARGETS:
            parent, attr = (attn.to_out, "0") if name == "to_out.0" else (attn, name)
            base = parent[0] if attr == "0" else getattr(parent, attr)
            wrapped = TaskLoRALinear(base, rank).to(base.weight.device)
            if attr == "0":
                parent[0] = wrapped
            else:
                setattr(parent, attr, wrapped)
            layer.append(wrapped)
        proc.loras = layer
        loras.append(layer)
    return processors, loras
