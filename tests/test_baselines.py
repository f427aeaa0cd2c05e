"""Baseline-specific checks (the shared contract is in test_methods_contract.py)."""

import torch

from cifc_bench.api import TrainBudget


def _trained(cls, tiny_protocol, **kwargs):
    from cifc_bench.models import load_bundle
    from cifc_bench.protocol import load_protocol

    seq = load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))
    torch.manual_seed(0)
    method = cls(load_bundle("tiny-random"), **kwargs)
    for task in seq.tasks[:2]:
        method.learn_task(task, TrainBudget(steps=2, batch_size=2, resolution=32, seed=task.index))
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
