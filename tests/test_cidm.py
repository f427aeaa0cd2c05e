"""CIDM's parts on small hand-computed cases, and the real SD-1.5 architecture with random weights."""

import math

import pytest
import torch
from cifc_bench.methods.cidm.consolidation import SharedSubspace, enhance, orthogonality
from cifc_bench.methods.cidm.ewa import ewa_weights
from cifc_bench.methods.cidm.method import combine_region_noise

from cifc_bench.diffusion.layerwise import (
    LayerwiseAttnProcessor,
    TaskLoRALinear,
    bind_layerwise,
    box_mask,
    layer_token,
)


def test_r1_on_constructed_matrices():
    a_g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a_1 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # a_g a_1ᵀ = [[0, 1], [2, 0]] -> mean |.| = 3/4
    a_2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # a_g a_2ᵀ = [[1, 0], [2, 0]] -> 3/4
    assert float(orthogonality([a_g], [[a_1, a_2]])) == pytest.approx(0.75)
    orth = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert float(orthogonality([orth], [[a_1]])) == 0.0
    assert float(enhance([torch.ones(3, 2), torch.zeros(3, 2)])) == pytest.approx(0.5)


def _r2_problem():
    """Two tasks' rank-4 LoRA deltas on SD-1.5-sized modules (320 × 768), W* = ΔW_1 and H = I as after task 1."""
    torch.manual_seed(0)
    shapes = [(320, 768), (64, 96)]
    shared = SharedSubspace(shapes)
    first = [1e-2 * torch.randn(o, 4) @ torch.randn(4, i) / i**0.5 for o, i in shapes]
    shared.add_task(first)
    shared.add_task()
    deltas = [[first[m], 1e-2 * torch.randn(o, 4) @ torch.randn(4, i) / i**0.5] for m, (o, i) in enumerate(shapes)]
    return shared, deltas


def test_r2_step_two_solves_the_least_squares_problem():
    shared, deltas = _r2_problem()
    before = float(shared.r2(deltas).detach())
    # the literal reading, one gradient step at the LoRA learning rate, is a numerical no-op here
    params = list(shared.parameters())
    grads = torch.autograd.grad(shared.r2(deltas), params)
    with torch.no_grad():
        stepped = [p - 1e-4 * g for p, g in zip(params, grads, strict=True)]
        saved = [p.clone() for p in params]
        for p, q in zip(params, stepped, strict=True):
            p.copy_(q)
        assert (before - float(shared.r2(deltas).detach())) / before < 1e-6
        for p, q in zip(params, saved, strict=True):
            p.copy_(q)
    assert float(shared.solve(deltas)) == pytest.approx(before)
    after = float(shared.r2(deltas).detach())
    assert after <= 0.9 * before  # the Done-when: at least 10 % lower
    # W*'s rows now span both tasks' row spaces, so a few more sweeps drive R2 to (nearly) zero
    for _ in range(5):
        shared.solve(deltas)
    assert float(shared.r2(deltas).detach()) < 1e-3 * before
    # each block update is that block's minimiser: perturbing any H_i or W* cannot lower R2
    best = float(shared.r2(deltas).detach())
    with torch.no_grad():
        shared.h[0][1].add_(1e-3 * torch.randn_like(shared.h[0][1]))
    assert float(shared.r2(deltas).detach()) >= best


def test_ewa_weights_paper_variant_on_constructed_embeddings():
    # one layer, prompt tokens e1 and 2*e2; task 0's token = e1, task 1's tokens = e2 and 3*e2 (mean 2*e2)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    prompt = torch.stack([e1, 2 * e2]).view(1, 1, 2, 2)
    concepts = torch.stack([torch.zeros(2), e1, e2, 3 * e2]).view(1, 4, 2)  # position 0 = BOS
    w = ewa_weights(prompt, concepts, [(1, 2), (2, 4)], "paper")[0, 0]
    m = torch.tensor([1.0, 4.0])  # max dot: task 0 -> <e1,e1>=1; task 1 -> <2e2, 2e2>=4
    expected = m**2 / (m**2).norm()
    assert torch.allclose(w, expected)
    assert float(w.sum()) > 1.0  # L2 normalisation: weights need not sum to 1


def test_ewa_weights_release_variant_on_constructed_embeddings():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    prompt = torch.stack([e1, e1]).view(1, 1, 2, 2)
    concepts = torch.stack([torch.zeros(2), e1, diag, e2]).view(1, 4, 2)
    w = ewa_weights(prompt, concepts, [(1, 2), (2, 4)], "release")[0, 0]
    s = torch.tensor([1.0, (1 / math.sqrt(2) + 0.0) / 2])  # max cosine per concept position, then task mean
    assert torch.allclose(w, s**4 / (s**4).sum())
    assert float(w.sum()) == pytest.approx(1.0)


def test_merged_per_prompt_forward_equals_branch_sum_forward():
    torch.manual_seed(0)
    layer = TaskLoRALinear(torch.nn.Linear(6, 5), rank=2)
    for _ in range(3):
        layer.reset_task()
        with torch.no_grad():
            layer.up.normal_()
        layer.store_task()
    x = torch.randn(4, 7, 6)
    weights = torch.rand(4, 3)
    alpha = 0.8
    layer.set_merged(weights, alpha)
    merged = layer(x)
    layer.set_merged(None, alpha)
    layer.branch_weights = alpha * weights
    branches = layer(x)
    layer.branch_weights = None
    assert torch.allclose(merged, branches, atol=1e-5)
    manual = layer.base(x) + sum(alpha * weights[:, i, None, None] * (x @ layer.delta(i).t()) for i in range(3))
    assert torch.allclose(merged, manual, atol=1e-5)


def test_ccs_keeps_the_global_estimate_outside_every_box():
    torch.manual_seed(0)
    eps = torch.randn(1, 4, 8, 8)
    regional = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)]
    masks = [box_mask((0.0, 0.0, 0.5, 0.5), 8, 8), box_mask((0.25, 0.25, 0.75, 0.75), 8, 8)]
    out = combine_region_noise(eps, regional, masks, alpha=0.1)
    outside = (masks[0] + masks[1]) == 0
    assert torch.equal(out[..., outside], eps[..., outside])
    only_first = (masks[0] == 1) & (masks[1] == 0)
    assert torch.allclose(out[..., only_first], (0.1 * eps + 0.9 * regional[0])[..., only_first])
    both = (masks[0] == 1) & (masks[1] == 1)  # overlaps average the regional estimates
    assert torch.allclose(out[..., both], (0.1 * eps + 0.9 * (regional[0] + regional[1]) / 2)[..., both])


def test_layerwise_binding():
    assert layer_token("<dog1>", 3) == "<dog1_l3>"
    assert bind_layerwise(["a <dog1> <dog10>"], ["<dog1>", "<dog10>"], 2) == [
        "a <dog1_l0> <dog10_l0>", "a <dog1_l1> <dog10_l1>"]


SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def test_sd15_architecture_gets_16_layerwise_tokens_and_64_lora_modules():
    """The real SD-1.5 UNet config (stable-diffusion-v1-5 unet/config.json) with random weights."""
    from cifc_bench.methods.cidm import CIDM
    from diffusers import UNet2DConditionModel

    from cifc_bench.api import Concept, Task
    from cifc_bench.diffusion.models import ModelBundle, load_bundle

    tiny = load_bundle("tiny-random")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
    assert sum(p.numel() for p in unet.parameters()) > 850e6
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=1, max_position_embeddings=77, vocab_size=49408))
    bundle = ModelBundle("sd15-random", tiny.tokenizer, text, unet, tiny.scheduler)
    method = CIDM(bundle)
    assert method.n_layers == 16
    assert len(method.modules) == 64
    wrapped = {n for n, m in unet.named_modules() if type(m).__name__ == "TaskLoRALinear"}
    assert all(".attn2." in n and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("attn2.to_out.0")
               for n in wrapped) and len(wrapped) == 64
    lora_params = sum(m.up.numel() + m.down.numel() for m in method.modules)
    assert lora_params == 397_824  # 24C + 6144 per module over widths 5x320, 5x640, 6x1280: ~0.40 M
    concept = Concept(name="dog", placeholders=("<dog1>", "<dog2>"), initializers=(0.013, "dog"), class_word="dog",
                      kind="object", image_dir=None, caption_dir=None, prompt_set="pet", eval_replacement="<dog1> <dog2>",
                      eval_prompts=())
    ids = method._add_tokens(concept, torch.Generator().manual_seed(0))
    assert len(ids) == 2 * 16
    emb = text.get_input_embeddings().weight
    assert torch.equal(emb[ids[16]], emb[ids[31]])  # all layer copies start from the same vector
    assert Task(0, (concept,)).name == "dog"


def _cidm_with_dog_and_cat(**kwargs):
    """A tiny-random CIDM with two stored random task learners (<dog1>, <cat1>) and two side-by-side boxes."""
    from cifc_bench.methods.cidm import CIDM

    from cifc_bench.api import Box, Concept
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.testing import store_random_cidm_task

    torch.manual_seed(0)
    method = CIDM(load_bundle("tiny-random"), **kwargs)
    gen = torch.Generator().manual_seed(0)
    concepts = []
    for name in ("dog", "cat"):
        c = Concept(name=name, placeholders=(f"<{name}1>",), initializers=(name,), class_word=name, kind="object",
                    image_dir=None, caption_dir=None, prompt_set="pet", eval_replacement=f"<{name}1>", eval_prompts=())
        store_random_cidm_task(method, c, gen, std=0.05)
        concepts.append(c)
    boxes = (Box(0.0, 0.0, 1.0, 0.5), Box(0.0, 0.5, 1.0, 1.0))
    return method, concepts, boxes


def test_ccs_batches_seeds_of_one_prompt_and_matches_one_at_a_time():
    """Boxed requests that share prompt and boxes are sampled as one batch; each image equals its unbatched one
    up to float rounding (≤ 1 grey level on < 1 % of pixels), and the order of the requests is kept."""
    import numpy as np

    from cifc_bench.api import GenerationRequest, GenerationSettings

    method, concepts, boxes = _cidm_with_dog_and_cat()
    multi = [GenerationRequest("a <dog1> and a <cat1>", seed=s, concepts=tuple(concepts), boxes=boxes) for s in (3, 4, 5)]
    plain = GenerationRequest("a <dog1> on the beach", seed=9, concepts=(concepts[0],))
    requests = [multi[0], plain, multi[1], multi[2]]
    settings = GenerationSettings(resolution=32, num_inference_steps=3, guidance_scale=5.0, batch_size=8)
    batched = [np.asarray(im, dtype=int) for im in method.generate(requests, settings)]
    single = [np.asarray(method.generate([r], settings)[0], dtype=int) for r in requests]
    for b, s in zip(batched, single, strict=True):
        diff = np.abs(b - s)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert (np.abs(batched[0] - batched[2]) > 0).mean() > 0.5  # another seed, another image
    small = GenerationSettings(resolution=32, num_inference_steps=3, guidance_scale=5.0, batch_size=2)
    for b, s in zip(batched, method.generate(requests, small), strict=True):  # batches split at batch_size
        assert np.abs(b - np.asarray(s, dtype=int)).max() <= 1


def test_kv_cache_computes_each_contexts_keys_once_and_changes_no_image(monkeypatch):
    """Under merged weights, K/V of a context are computed at the first denoising step only (plain and CCS
    sampling), images are bit-identical to recomputing them at every step, and another context is never served
    the cached K/V."""
    import numpy as np

    from cifc_bench.api import GenerationRequest, GenerationSettings

    method, concepts, boxes = _cidm_with_dog_and_cat()
    requests = [GenerationRequest("a <dog1> on the beach", seed=1, concepts=(concepts[0],)),
                GenerationRequest("a <dog1> and a <cat1>", seed=2, concepts=tuple(concepts), boxes=boxes)]
    steps = 4
    settings = GenerationSettings(resolution=32, num_inference_steps=steps, guidance_scale=5.0, batch_size=8)
    to_k = method.processors[0].loras[1]
    calls = []
    to_k.register_forward_hook(lambda *_: calls.append(1))

    cached = [np.asarray(im, dtype=int) for im in method.generate(requests, settings)]
    cached_calls = len(calls)
    assert cached_calls == 1 + 3  # plain: one context; CCS: the global prompt and two regions, once each

    original = method.set_merged

    def without_cache(weights, copies=2):
        original(weights, copies)
        for proc in method.processors:
            proc.kv_cache = None

    monkeypatch.setattr(method, "set_merged", without_cache)
    calls.clear()
    fresh = [np.asarray(im, dtype=int) for im in method.generate(requests, settings)]
    # per step: plain 1; CCS, one batched call: the global prompt once, and each region's
    assert len(calls) == steps * 1 + steps * (1 + 2)
    for a, b in zip(cached, fresh, strict=True):
        assert np.array_equal(a, b)

    # a second context of the same shape gets its own K/V, never the cached one
    from cifc_bench.diffusion.layerwise import cross_attention_layers

    attn = cross_attention_layers(method.bundle.unet)[0][1]
    proc = method.processors[0]
    hidden = torch.randn(2, 16, attn.to_q.base.in_features)
    c1, c2 = (torch.randn(2, 77, attn.to_k.base.in_features) for _ in range(2))
    with torch.no_grad():
        proc.kv_cache = None
        want1, want2 = attn(hidden, encoder_hidden_states=c1), attn(hidden, encoder_hidden_states=c2)
        proc.kv_cache = {}
        got1, got2 = attn(hidden, encoder_hidden_states=c1), attn(hidden, encoder_hidden_states=c2)
        c1.add_(1.0)  # an in-place change invalidates c1's entry
        got1b = attn(hidden, encoder_hidden_states=c1)
        proc.kv_cache = None
        want1b = attn(hidden, encoder_hidden_states=c1)
    assert torch.equal(got1, want1) and torch.equal(got2, want2) and torch.equal(got1b, want1b)
    assert not torch.allclose(want1, want1b)


@pytest.mark.parametrize("only_cross", [False, True])
def test_layerwise_context_reaches_attn1_when_it_reads_the_prompt(only_cross):
    """An attn1 that reads the prompt (only_cross_attention) must get its layer's 3-D slice, not the 4-D whole."""
    from diffusers import UNet2DConditionModel

    from cifc_bench.diffusion.layerwise import install

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4, only_cross_attention=only_cross,
    ).eval()
    processors, _ = install(unet, rank=2)
    n_layers = len(processors)
    context = torch.randn(2, n_layers, 5, 8)
    with torch.no_grad():
        out = unet(torch.randn(2, 3, 8, 8), 10, encoder_hidden_states=context).sample
        # a context whose every layer slice is the same equals the plain 3-D context
        same = unet(torch.zeros(2, 3, 8, 8), 10, encoder_hidden_states=context[:, :1].expand(-1, n_layers, -1, -1)).sample
        plain = unet(torch.zeros(2, 3, 8, 8), 10, encoder_hidden_states=context[:, 0]).sample
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(same, plain)
    attn1 = [m for n, m in unet.named_modules() if n.endswith("attn1")]
    # diffusers' mid block keeps a self-attention attn1 even with only_cross_attention
    assert sum(a.is_cross_attention for a in attn1) == (len(attn1) - 1 if only_cross else 0)
    assert all(isinstance(a.processor, LayerwiseAttnProcessor) == a.is_cross_attention for a in attn1)


def test_sigmoid_attention_changes_region_features_only():
    """Paper Eq. 4: the sigmoid applies to the region features of CCS; plain samples stay bit-identical."""
    import numpy as np

    from cifc_bench.api import GenerationRequest, GenerationSettings
    from cifc_bench.diffusion.models import load_bundle

    load_bundle("tiny-random")  # a first use builds the model and reseeds torch: both methods must start alike
    settings = GenerationSettings(resolution=32, num_inference_steps=3, guidance_scale=5.0, batch_size=4)
    images = {}
    for sigmoid in (False, True):
        method, concepts, boxes = _cidm_with_dog_and_cat(sigmoid_attention=sigmoid)
        requests = [GenerationRequest("a <dog1> on the beach", seed=9, concepts=(concepts[0],)),
                    GenerationRequest("a <dog1> and a <cat1>", seed=3, concepts=tuple(concepts), boxes=boxes)]
        images[sigmoid] = [np.asarray(im, dtype=int) for im in method.generate(requests, settings)]
    assert np.array_equal(images[False][0], images[True][0])  # plain sampling: no sigmoid anywhere
    assert not np.array_equal(images[False][1], images[True][1])  # region passes: the sigmoid is there


def test_attention_regulariser_is_a_batch_mean_and_skips_samples_without_outside():
    """The release's term per sample, averaged over the batch (one sample per GPU, DDP-averaged); a sample whose
    mask covers the whole image has no outside and contributes nothing (the release skips its NaN)."""
    method, concepts, _ = _cidm_with_dog_and_cat(variant="release")
    tok = method.bundle.tokenizer
    placeholders = ["<dog1>", "<cat1>"]  # two placeholders: the first is the "adjective", the second the subject
    first_ids = [tok.convert_tokens_to_ids(f"<{n}1_l0>") for n in ("dog", "cat")]
    prompt = "a <dog1> <cat1>"
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 16, tok.model_max_length, generator=g)  # one sample's [n = 4 x 4, tokens] map
    half = torch.zeros(1, 1, 8, 8)
    half[..., :, :4] = 1.0
    full = torch.ones(1, 1, 8, 8)

    def reg(masks, n):
        for proc in method.processors:
            proc.record = [probs.expand(n, -1, -1)]
        return float(method._attention_reg([prompt] * n, placeholders, first_ids, masks))

    one = reg(half, 1)
    assert one > 0
    assert reg(torch.cat([half, half]), 2) == pytest.approx(one)  # a mean over the batch, not a sum
    assert reg(full, 1) == 0.0  # no outside: skipped
    assert reg(torch.cat([full, half]), 2) == pytest.approx(one / 2)
