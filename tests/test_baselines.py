"""Baseline-specific checks (the shared contract is in test_methods_contract.py)."""

import pytest
import torch

from cifc_bench.api import TrainBudget


def _trained(cls, tiny_protocol, steps=2, tasks=2, **kwargs):
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.diffusion.models import load_bundle

    seq = load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))
    torch.manual_seed(0)
    method = cls(load_bundle("tiny-random"), **kwargs)
    for task in seq.tasks[:tasks]:
        method.learn_task(task, TrainBudget(steps=steps, batch_size=2, resolution=32, seed=task.index))
    return method


def test_lora_c_prediction_is_the_mean_of_the_per_lora_predictions(tiny_protocol):
    from cifc_bench.baselines.lora_composite import LoRAComposite

    method = _trained(LoRAComposite, tiny_protocol)
    with torch.no_grad():  # make the two adapters clearly different
        for n, p in method.bundle.unet.named_parameters():
            if "lora_B.task1" in n:
                p.normal_(0, 0.1)
    unet = method.bundle.unet
    x, t, cond = torch.randn(2, 4, 16, 16), torch.tensor(500), torch.randn(2, 77, 32)
    with torch.no_grad():
        composite = method.composite_predictor()(x, t, cond)
        singles = []
        for name in ("task0", "task1"):
            unet.set_adapters([name])
            singles.append(unet(x, t, encoder_hidden_states=cond).sample)
    assert torch.allclose(composite, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert not torch.allclose(singles[0], singles[1])


def test_lora_c_makes_one_unet_call_per_sampler_step(tiny_protocol):
    """Issue 36: the t LoRAs' predictions are one batched call, not a loop of adapter switches."""
    from cifc_bench.baselines.lora_composite import LoRAComposite

    from cifc_bench.api import GenerationRequest, GenerationSettings

    method = _trained(LoRAComposite, tiny_protocol)
    calls = []
    method.bundle.unet.register_forward_pre_hook(lambda mod, inputs: calls.append(len(inputs[0])))
    settings = GenerationSettings(resolution=32, num_inference_steps=3, guidance_scale=7.5, batch_size=2)
    method.generate([GenerationRequest(prompt="a photo", seed=s) for s in (1, 2)], settings)
    assert calls == [2 * 2 * 2] * 3  # per step one call: 2 adapters x (uncond, cond) x 2 images


def test_lora_m_merges_adapters_with_uniform_weights(tiny_protocol):
    from cifc_bench.baselines.lora_merge import LoRAMerge

    method = _trained(LoRAMerge, tiny_protocol)
    assert method.adapters == ["task0", "task1"] and method.merge_weights() == [0.5, 0.5]
    assert _trained(LoRAMerge, tiny_protocol, weights="sum").merge_weights() == [1.0, 1.0]
    with torch.no_grad():
        for n, p in method.bundle.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    unet = method.bundle.unet
    layer = dict(unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    x = torch.randn(1, 3, layer.in_features)
    with torch.no_grad():
        unet.set_adapters(["task0", "task1"], weights=[0.5, 0.5])
        merged = layer(x)
        base = layer.base_layer(x)
        # set_adapters folds each weight into peft's scaling: 0.5 * lora_alpha / r = 0.5
        assert layer.scaling["task0"] == layer.scaling["task1"] == 0.5
        delta = sum(0.5 * layer.lora_B[n](layer.lora_A[n](x)) for n in ("task0", "task1"))
    assert torch.allclose(merged, base + delta, atol=1e-6)


def test_ewc_fisher_is_non_negative_and_matches_brute_force():
    from cifc_bench.baselines.ewc import fisher_diagonal

    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    samples = [(torch.randn(3), torch.randn(())) for _ in range(6)]
    fisher = fisher_diagonal(lambda s: (w @ s[0] - s[1]) ** 2, [w], samples)[0]
    # brute force: the squared analytic gradient 2 (w·x − y) x, averaged over samples
    expected = torch.stack([(2 * (w @ x - y) * x) ** 2 for x, y in samples]).mean(0)
    assert torch.allclose(fisher, expected.detach(), atol=1e-6)
    assert (fisher >= 0).all()


def test_ewc_fisher_on_a_tiny_diffusion_model(tiny_protocol):
    from cifc_bench.baselines.ewc import EWC

    method = _trained(EWC, tiny_protocol, fisher_samples=2)
    assert method.fisher is not None and len(method.fisher) == len(method._lora_params())
    assert all((f >= 0).all() for f in method.fisher)
    # each task's Fisher is normalised to mean 1 per tensor and γ = 1 sums the tasks: a tensor's mean is the
    # number of tasks whose loss reached it (1 or 2), never anything else
    means = [float(f.mean()) for f in method.fisher]
    assert all(min(abs(m - 1.0), abs(m - 2.0)) < 1e-4 for m in means) and any(abs(m - 2.0) < 1e-4 for m in means)
    # the penalty is zero at the anchor and grows away from it
    assert float(method.regularizer(None, None, None, None)) == 0.0
    with torch.no_grad():
        method._lora_params()[0].add_(0.1)
    assert float(method.regularizer(None, None, None, None)) > 0.0


def test_c_lora_penalty_is_zero_without_a_past_update():
    from cifc_bench.baselines.c_lora import self_regularization

    current = [torch.randn(4, 3), torch.randn(2, 2)]
    assert float(self_regularization([None, None], current)) == 0.0
    past = [torch.zeros(4, 3), None]
    assert float(self_regularization(past, current)) == 0.0
    past = [torch.ones(4, 3), None]
    assert float(self_regularization(past, current)) == float((current[0] ** 2).sum())


def test_c_lora_merges_each_task_into_kv_weights_only(tiny_protocol):
    from cifc_bench.baselines.c_lora import CLoRA

    from cifc_bench.diffusion.models import load_bundle

    before = {n: p.detach().clone() for n, p in load_bundle("tiny-random").unet.named_parameters()}
    method = _trained(CLoRA, tiny_protocol)
    after = {n.replace(".base_layer", ""): p for n, p in method.bundle.unet.named_parameters()}
    assert not any("lora_" in n for n in after)  # adapters are merged and dropped after each task
    changed = {n for n, p in before.items() if not torch.equal(p, after[n])}
    assert changed and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in changed)
    for n in method.layers:
        assert torch.allclose(after[n + ".weight"] - before[n + ".weight"], method.past[n], atol=1e-6)


def test_lwf_distills_from_the_previous_model(tiny_protocol):
    from cifc_bench.baselines.lwf import LwF

    method = _trained(LwF, tiny_protocol)
    assert method.tasks_seen == 2 and "previous" in method.bundle.unet.peft_config
    teacher = [p for n, p in method.bundle.unet.named_parameters() if ".previous." in n]
    assert teacher and not any(p.requires_grad for p in teacher)


def test_custom_diffusion_closed_form_merge_meets_its_constraints_and_is_optimal():
    from cifc_bench.baselines.custom_diffusion import closed_form_merge

    g = torch.Generator().manual_seed(0)
    w0, c = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    v, x = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g, dtype=torch.float64)
    m = x.T @ x
    w = closed_form_merge(w0, c, v, m, eps=0.0)
    assert torch.allclose(w @ c.T, v, atol=1e-9)  # every concept's target features map to its own outputs
    # optimal: moving inside the feasible set (Δ with Δ Cᵀ = 0) never lowers ‖(W − W₀) Xᵀ‖²
    null = torch.linalg.svd(c).Vh[3:]  # rows orthogonal to C's rows
    objective = ((w - w0) @ x.T).norm() ** 2
    for _ in range(5):
        delta = torch.randn(8, 3, generator=g, dtype=torch.float64) @ null
        assert ((w + delta - w0) @ x.T).norm() ** 2 >= objective - 1e-9
    # nothing to change: the targets already map to their values under W₀
    assert torch.allclose(closed_form_merge(w0, c, w0 @ c.T, m), w0, atol=1e-9)


def test_custom_diffusion_merge_keeps_each_concept_constraint_on_a_tiny_model(tiny_protocol):
    from cifc_bench.baselines.custom_diffusion import CustomDiffusion

    method = _trained(CustomDiffusion, tiny_protocol, variant="merge", lr=1e-2, reg_images=2)
    assert len(method.targets) == 2
    for concept, c in method.targets.items():
        for layer, module in method.layers.items():
            assert torch.allclose(module.weight.float() @ c.T, method.values[concept][layer], atol=1e-4, rtol=1e-3)
    changed = [not torch.equal(m.weight, method.base[n]) for n, m in method.layers.items()]
    assert all(changed)  # K/V moved off the base model, and nothing else did
    from cifc_bench.diffusion.models import load_bundle

    fresh = dict(load_bundle("tiny-random").unet.named_parameters())
    named = dict(method.bundle.unet.named_parameters())
    assert all(torch.equal(named[n], fresh[n]) for n in named if "attn2.to_k" not in n and "attn2.to_v" not in n)


def test_mix_of_show_fusion_keeps_the_base_weight_where_no_task_has_inputs():
    from cifc_bench.baselines.mix_of_show import fuse

    g = torch.Generator().manual_seed(0)
    d = 64
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    # rank-deficient inputs, as SD-1.5's text side (385 rows of 768-d): each task spans 10 of the 64 directions
    xs = [torch.randn(40, 10, generator=g, dtype=torch.float64) @ basis[:, 10 * i : 10 * i + 10].T for i in range(2)]
    w0 = torch.randn(16, d, generator=g, dtype=torch.float64)
    ws = [w0 + 0.3 * torch.randn(16, d, generator=g, dtype=torch.float64) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    fused = fuse(sum(w @ gm for w, gm in zip(ws, grams, strict=True)), sum(grams), w0, eps=1e-9)
    held_out = basis[:, 20:].T  # orthogonal to every task's inputs
    assert ((held_out @ fused.T - held_out @ w0.T).norm() / (held_out @ w0.T).norm()) < 1e-6
    for w, x in zip(ws, xs, strict=True):  # inputs in separate subspaces: each concept's outputs are kept
        assert torch.allclose(x @ fused.T, x @ w.T, atol=1e-6)
    # the regularisation toward 0 that v1 used loses W₀ on the held-out directions entirely
    toward_zero = fuse(sum(w @ gm for w, gm in zip(ws, grams, strict=True)), sum(grams), torch.zeros_like(w0), eps=1e-9)
    assert (held_out @ toward_zero.T).norm() < 1e-6 * (held_out @ w0.T).norm()
    # overlapping inputs: the least-squares optimum, Σ_i (W* − W_i) G_i = 0
    xs = [torch.randn(20, d, generator=g, dtype=torch.float64) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    fused = fuse(sum(w @ gm for w, gm in zip(ws, grams, strict=True)), sum(grams), w0, eps=0.0)
    assert torch.allclose(sum((fused - w) @ gm for w, gm in zip(ws, grams, strict=True)),
                          torch.zeros(16, d, dtype=torch.float64), atol=1e-8)


def test_mix_of_show_fuses_unet_and_text_encoder_layers_on_a_tiny_model(tiny_protocol):
    from cifc_bench.baselines.mix_of_show import MixOfShow

    method = _trained(MixOfShow, tiny_protocol, lr=1e-2, fusion_steps=2)
    names = list(method.sums)
    assert any(n.startswith("unet.") and ".attn1." in n for n in names)
    assert any(n.startswith("unet.") and ".attn2." in n for n in names)
    assert any(n.startswith("text.") for n in names)
    moved = [not torch.allclose(method.layers[n].weight, method.base[n]) for n in names]
    assert all(moved)  # every fused layer differs from the base model
    assert not any("lora_" in n for n, _ in method.bundle.unet.named_parameters())  # adapters fused, then removed
    assert len(method.placeholders) == sum(len(c.placeholders) for c in method.concepts) > 0


def test_mix_of_show_text_side_fusion_inputs_are_new_token_and_eos_rows(tiny_protocol):
    from cifc_bench.baselines.mix_of_show import MixOfShow

    method = _trained(MixOfShow, tiny_protocol, lr=1e-2, fusion_steps=2)
    assert method.text_lr == method.lr / 10  # the official text-encoder rate, a tenth of the UNet's
    for name, (_, gram) in method.sums.items():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            # per task and layer: "photo of a <V>" and "<V>", each its placeholders' rows and one EOS row; a
            # padded capture (77 rows per prompt) or one with BOS would span more
            rows = sum(2 * (len(c.placeholders) + 1) for c in method.concepts)
            assert 0 < int(torch.linalg.matrix_rank(gram)) <= rows


def test_custom_diffusion_merge_rows_have_no_bos_or_padding(tiny_protocol):
    from cifc_bench.baselines.custom_diffusion import CustomDiffusion, text_rows

    method = _trained(CustomDiffusion, tiny_protocol, variant="merge", lr=1e-2, reg_images=2)
    bundle = method.bundle
    tok = bundle.tokenizer
    with torch.no_grad():
        bos_row = text_rows(bundle, ["x"])  # [x, EOS]: BOS dropped
        padded = bundle.text_encoder(tok(["a"], padding="max_length", max_length=tok.model_max_length,
                                         return_tensors="pt").input_ids)[0][0]
    assert bos_row.shape[0] == 2
    bos, pad = padded[0], padded[-1]  # causal encoder: BOS's state is the same in every prompt
    for name, c in method.targets.items():
        concept = next(t for t in _tiny_concepts(tiny_protocol) if t.name == name)
        named = f"{concept.token_string} {concept.class_word}"
        n_tokens = len(tok(named).input_ids)  # BOS, placeholders, class word, EOS
        assert c.shape[0] <= 2 * (n_tokens - 1)  # "<V> cls" and "photo of a <V> cls", from the placeholder on
        assert not any(torch.allclose(row, bos.float(), atol=1e-5) for row in c)
        assert not any(torch.allclose(row, pad.float(), atol=1e-5) for row in c)
    with torch.no_grad():
        rows = text_rows(bundle, ["photo of a dog", "a dog"])
    assert rows.shape[0] == (len(tok("photo of a dog").input_ids) - 4) + (len(tok("a dog").input_ids) - 1)


def _tiny_concepts(tiny_protocol):
    from cifc_bench.core.protocol import load_protocol

    return load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data")).concepts


LORA_METHODS = ("finetune", "lora-m", "lora-c", "c-lora", "ewc", "lwf", "mix-of-show")


@pytest.mark.parametrize("name", LORA_METHODS)
def test_every_baseline_lora_starts_kaiming_uniform_a_and_zero_b(name, tiny_protocol, monkeypatch):
    """Like CIDM and both official codes: |A| ≤ 1/√fan_in with the Kaiming-uniform std 1/√(3 fan_in), B = 0."""
    import math

    from peft.tuners.lora.layer import LoraLayer

    from cifc_bench.core.registry import load_method

    seen = []
    original = LoraLayer.reset_lora_parameters

    def recording(self, adapter_name, init_lora_weights):
        original(self, adapter_name, init_lora_weights)
        if adapter_name in self.lora_A:
            seen.append((self.lora_A[adapter_name].weight.detach().clone(),
                         self.lora_B[adapter_name].weight.detach().clone()))

    monkeypatch.setattr(LoraLayer, "reset_lora_parameters", recording)
    method = _trained(load_method(name), tiny_protocol, steps=0, tasks=1, fusion_steps=1) if name == "mix-of-show" \
        else _trained(load_method(name), tiny_protocol, steps=0, tasks=1)
    assert method is not None and seen
    for a, b in seen:
        fan_in = a.shape[1]
        bound = 1 / math.sqrt(fan_in)
        assert float(a.abs().max()) <= bound + 1e-7
        assert 0.75 < float(a.std()) / (bound / math.sqrt(3)) < 1.25
        assert not b.any()
