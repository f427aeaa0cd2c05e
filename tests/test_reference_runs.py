"""Refactoring changes no result: ``finetune``, ``cidm`` and ``mix-of-show`` on tiny settings make exactly the
images and states recorded in ``tests/reference/tiny-runs.json`` by the code before a change (issue 35).

What is compared is each image's decoded pixels and each state tensor's bytes (by sha256), not the files, so
a new PNG encoder or safetensors header layout cannot fail it; a changed pixel or weight does, and the test
names the files. A change that is meant to alter a method's numbers bumps its ``version`` and rewrites the
reference on purpose::

    CIFC_BENCH_WRITE_REFERENCE=1 pytest tests/test_reference_runs.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cifc_bench.core.registry import load_method
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import make_tiny_protocol, tiny_run_config

REFERENCE = Path(__file__).parent / "reference" / "tiny-runs.json"
METHODS = ("finetune", "cidm", "mix-of-show")


pytestmark = pytest.mark.usefixtures("pinned_one_thread")


def machine() -> str:
    """The CPU's vector ISA as torch dispatches it, and its model name: float kernels, and so the bytes, differ
    between CPUs (``cifc_bench.cli.run.device_name`` gives only ``x86_64`` on Linux)."""
    import platform

    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{torch.backends.cpu.get_cpu_capability()} {model}"


def digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every image's pixels and every state tensor, by path relative to the run."""
    from PIL import Image
    from safetensors.numpy import load_file

    out = {}
    for path in sorted(run_dir.rglob("*.png")):
        out[str(path.relative_to(run_dir))] = hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()
    for path in sorted(run_dir.rglob("*.safetensors")):
        tensors = load_file(str(path))
        h = hashlib.sha256()
        for key in sorted(tensors):
            h.update(key.encode() + str(tensors[key].dtype).encode() + str(tensors[key].shape).encode())
            h.update(np.ascontiguousarray(tensors[key]).tobytes())
        out[str(path.relative_to(run_dir))] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("reference"), n_concepts=3)


@pytest.mark.parametrize("method", METHODS)
def test_the_run_makes_the_recorded_images_and_states(method, protocol, tmp_path):
    result = run_benchmark(tiny_run_config(protocol, method=method, tracks=()), tmp_path / method)
    got = digests(tmp_path / method)
    recorded = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    if os.environ.get("CIFC_BENCH_WRITE_REFERENCE"):
        recorded[method] = {"method_version": load_method(method).version, "machine": machine(), "files": got}
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"reference for {method} written")
    want = recorded[method]
    if want.get("machine") not in (None, machine()):
        pytest.skip(f"{method}'s reference was recorded on {want['machine']!r}, this machine is {machine()!r}: the "
                    "bytes can differ between CPUs; rewrite it here from the commit before a refactor (module docstring)")
    assert result["run_info"]["method_version"] == want["method_version"], \
        f"{method}'s version changed: rewrite its reference on purpose (see this module's docstring)"
    assert sum(k.endswith(".png") for k in got) >= 10 and sum(k.endswith(".safetensors") for k in got) == 3
    differ = sorted(k for k in set(got) | set(want["files"]) if got.get(k) != want["files"].get(k))
    assert not differ, f"{method}: {len(differ)} file(s) differ from the recorded run, e.g. {differ[:5]}"
