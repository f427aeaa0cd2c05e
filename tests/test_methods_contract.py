"""Every registered method honours the plugin contract (timm-style test over the whole registry)."""

import numpy as np
import pytest

from cifc_bench.api import GenerationRequest, GenerationSettings, Method, TrainBudget
from cifc_bench.registry import METHODS, list_plugins, load_method

#: tiny hyper-parameters per method, where the defaults are too big for a CPU test
TINY_ARGS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def sequence(tiny_protocol):
    from cifc_bench.protocol import load_protocol

    return load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_method_contract(name, sequence):
    import torch

    from cifc_bench.models import load_bundle

    cls = load_method(name)
    assert issubclass(cls, Method) and isinstance(cls.storage, str)
    settings = GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=2)
    torch.manual_seed(0)
    method = cls(load_bundle("tiny-random"), **TINY_ARGS.get(name, {}))
    for task in sequence.tasks[:2]:
        method.learn_task(task, TrainBudget(steps=2, batch_size=2, resolution=32, seed=task.index))
    concepts = sequence.concepts[:2]
    requests = [GenerationRequest(prompt=c.eval_prompts[0], seed=7 + k, concepts=(c,)) for k, c in enumerate(concepts)]
    mc = sequence.multi_concept_prompts[0]
    requests.append(GenerationRequest(prompt=mc.prompt, seed=3, concepts=concepts, boxes=mc.boxes))
    images = method.generate(requests, settings)
    assert len(images) == 3 and all(im.size == (32, 32) for im in images)
    again = method.generate(requests, settings)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again, strict=True)), \
        "the same requests must give the same images"

    # a fresh instance restored from the state dict generates the same images
    state = method.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # what is stored per task is part of the state (CIDM's W*/H consolidation state is not per task)
    assert 0 <= method.stored_parameters() <= sum(v.numel() for v in state.values())
    if cls.storage == "none":
        assert method.stored_parameters() == 0
    torch.manual_seed(123)
    restored = cls(load_bundle("tiny-random"), **TINY_ARGS.get(name, {}))
    restored.load_state_dict(state, sequence.tasks[:2])
    for a, b in zip(images, restored.generate(requests, settings), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
