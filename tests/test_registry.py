"""Plugin discovery: lazy listing, duplicates, did-you-mean, module:Class specs, third-party packages."""

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from cifc_bench.core import registry
from cifc_bench.core.registry import PluginError, list_plugins, load_method


def test_builtins_are_found_through_entry_points(capsys):
    from cifc_bench.cli import main

    assert {"base", "finetune"} <= set(list_plugins(registry.METHODS))
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "finetune" in out and "cifc_bench.methods.finetune:SequentialFinetune" in out
    # what each method is and its arguments with their defaults, read from the source (no import)
    assert "sequential fine-tuning" in out and "rank=4, lr=0.0001, embedding_lr=0.001, targets='cross-attn'" in out
    assert "merge='prompt', ccs=True" in out  # CIDM's, found through its package's re-export
    assert main(["ls", "protocols"]) == 0
    assert "Ten personal concepts (7 objects, 3 styles)" in capsys.readouterr().out  # cifc10's description


def test_a_description_is_its_first_sentence_and_survives_missing_sources():
    from cifc_bench.cli.describe import _first_sentence, describe

    assert _first_sentence("EWC (Kirkpatrick et al. 2017) on LoRA. More text.") == "EWC (Kirkpatrick et al. 2017) on LoRA."
    assert describe("no_such_module_xyz:Thing").summary == "(source not found)"
    assert describe("cifc_bench.evaluation.metrics:ia").summary.startswith("IA of a concept's images")


def test_listing_methods_does_not_import_torch():
    code = "import sys; from cifc_bench.cli import main; main(['ls', 'methods']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_unknown_method_suggests_close_names():
    with pytest.raises(PluginError, match="Did you mean 'finetune'"):
        load_method("finetun")


def test_duplicate_names_are_an_error(monkeypatch):
    eps = [EntryPoint("dup", "a.mod:A", registry.METHODS), EntryPoint("dup", "b.mod:B", registry.METHODS)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(PluginError, match=r"named 'dup': 'a.mod:A' .* and 'b.mod:B'"):
        list_plugins(registry.METHODS)


def test_module_class_spec_loads_without_installation():
    cls = load_method("cifc_bench.methods.zero_shot:ZeroShot")
    assert cls.__name__ == "ZeroShot"
    with pytest.raises(PluginError, match="not a subclass"):
        load_method("cifc_bench.evaluation.metrics:summarize")
    with pytest.raises(PluginError, match="cannot import module"):
        load_method("no_such_pkg.mod:X")


def test_bare_methods_and_baselines_are_not_importable():
    code = "import importlib.util as u; print(u.find_spec('methods'), u.find_spec('baselines'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.strip() == "None None"


PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "cifc-bench-echo-plugin"
version = "0.0.1"

[project.entry-points."cifc_bench.methods"]
echo = "echo_plugin:EchoMethod"
"""

PLUGIN_CODE = '''
"""A third-party method: counts its tasks and prompts the base model with each prompt twice."""
from cifc_bench.api import Method
from cifc_bench.diffusion.sampling import generate_batched


class EchoMethod(Method):
    storage = "none"

    def learn_task(self, task, budget):
        self.seen = getattr(self, "seen", 0) + 1

    def generate(self, requests, settings):
        prompts = [f"{r.prompt}, {r.prompt}" for r in requests]
        return generate_batched(self.bundle, prompts, [r.seed for r in requests], settings)
'''


def test_third_party_package_is_discovered_and_run(tmp_path, tiny_protocol):
    src = tmp_path / "plugin"
    src.mkdir()
    (src / "pyproject.toml").write_text(textwrap.dedent(PLUGIN_PYPROJECT))
    (src / "echo_plugin.py").write_text(PLUGIN_CODE)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listing = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "ls", "methods"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "echo" in listing and "echo_plugin:EchoMethod" in listing
    run_dir = tmp_path / "run"
    data_dir = tiny_protocol.with_name("tiny-data")
    proc = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "run", "--method", "echo", "--protocol",
                           str(tiny_protocol), "--data-dir", str(data_dir), "--out", str(run_dir), "--device", "cpu"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["run_info"]["method_class"] == "echo_plugin:EchoMethod"
    assert all(v is not None for v in result["matrices"]["ia"][-1])
