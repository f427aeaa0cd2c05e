"""The package's structure: an acyclic import graph, a core that never names the synthetic tier, and
components that third parties add through entry points exactly as the built-ins are added."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cifc_bench": "cifc_bench", "methods": "cifc_bench.methods", "baselines": "cifc_bench.baselines"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    graph = _import_graph()
    assert len(graph) > 40 and graph["cifc_bench.run.loop"]  # the graph really was read
    assert _cycles(graph) == []
    # the check can fail: a constructed loop is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_core_module_imports_or_names_the_synthetic_tier():
    graph = _import_graph()
    core = {m: deps for m, deps in graph.items() if not m.startswith("cifc_bench.synth")}
    assert {m: sorted(d for d in deps if d.startswith("cifc_bench.synth")) for m, deps in core.items()
            if any(d.startswith("cifc_bench.synth") for d in deps)} == {}
    naming = [str(p.relative_to(ROOT)) for m, p in _modules().items()
              if not m.startswith("cifc_bench.synth") and "cifc_bench.synth" in p.read_text()]
    assert naming == []


def _install_plugin(tmp_path: Path, monkeypatch) -> None:
    """A third-party distribution on sys.path: a scorer and a metric, registered only through entry points."""
    pkg = tmp_path / "site" / "acme_metrics"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import numpy as np\n\n\n"
        "def scorer(device='cpu'):\n"
        "    from cifc_bench.diffusion.scoring import tiny_random\n"
        "    return tiny_random(device)\n\n\n"
        "def brightness(sample):\n"
        "    return float(np.mean([np.asarray(im, dtype=float).mean() / 255 for im in sample.images]))\n"
    )
    info = tmp_path / "site" / "acme_metrics-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-metrics\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[cifc_bench.scorers]\nacme-clip = acme_metrics:scorer\n\n[cifc_bench.metrics]\nbrightness = acme_metrics:brightness\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_a_third_party_scorer_and_metric_run_end_to_end(tmp_path, monkeypatch, capsys):
    import yaml
    from PIL import Image

    from cifc_bench.cli import main
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import make_tiny_protocol, tiny_run_config

    _install_plugin(tmp_path, monkeypatch)
    assert main(["ls", "scorers"]) == 0 and "acme-clip" in capsys.readouterr().out
    assert main(["ls", "metrics"]) == 0 and "brightness" in capsys.readouterr().out
    path = make_tiny_protocol(tmp_path / "proto", n_concepts=2)
    raw = yaml.safe_load(path.read_text())
    raw["defaults"]["metrics"] = ["ia", "ta", "brightness"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_benchmark(tiny_run_config(path, method="base", scorer="acme-clip"), tmp_path / "run")
    assert result["run_info"]["scorer"] == "acme-clip" and list(result["matrices"]) == ["ia", "ta", "brightness"]
    for j, row in enumerate(result["matrices"]["brightness"]):
        for i, value in enumerate(row[: j + 1]):
            folder = tmp_path / "run" / "images" / f"after_task_{j:02d}" / result["concepts"][i]
            expected = np.mean([np.asarray(Image.open(p), dtype=float).mean() / 255 for p in sorted(folder.glob("*.png"))])
            assert value == pytest.approx(expected)
    # an unknown metric is the protocol's error, with the registered names
    raw["defaults"]["metrics"] = ["ia", "brightnes"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ValueError, match=r"defaults.metrics names metric 'brightnes'.*Did you mean 'brightness'"):
        run_benchmark(tiny_run_config(path, method="base"), tmp_path / "run2")



def test_the_plugin_guide_example_passes_the_contract_and_runs(tmp_path, monkeypatch):
    """The 30-line method of docs/extending/plugins.md, taken from the page as written, is a valid method."""
    import re

    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import check_method, make_tiny_protocol, tiny_run_config

    page = (ROOT / "docs" / "extending" / "plugins.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "class TextualInversion" in block)
    assert len(code.strip().splitlines()) <= 40
    (tmp_path / "guide_method.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    from guide_method import TextualInversion

    check_method(TextualInversion, root=tmp_path / "check")
    path = make_tiny_protocol(tmp_path / "proto", n_concepts=2)
    result = run_benchmark(tiny_run_config(path, method="guide_method:TextualInversion"), tmp_path / "run")
    assert result["status"] == "completed" and result["run_info"]["method_hparams"] == {"embedding_lr": 5e-3}
    assert result["tasks"][0]["trainable_params"] > 0 and result["matrices"]["ia"][1][1] is not None


def test_the_builtin_folders_import_under_one_name_only():
    import subprocess

    for folder in ("methods", "baselines"):
        proc = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and f"import cifc_bench.{folder}, not '{folder}'" in proc.stderr
    import cifc_bench.baselines.lora_merge as module

    assert module.__name__ == "cifc_bench.baselines.lora_merge"


def test_each_default_is_decided_in_one_function():
    """The default device, protocol and dtype each have one home; every other module asks it."""
    homes = {r'"cuda" if torch.cuda.is_available\(\) else "cpu"': "cifc_bench/core/config.py",
             r"\bdefault_protocol\(\)": "cifc_bench/core/protocol.py",
             r'"bf16" if str\(device': "cifc_bench/core/config.py"}
    import re

    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern, home in homes.items():
                if re.search(pattern, text):
                    assert str(path.relative_to(ROOT)) == home, f"{path.relative_to(ROOT)} decides a default " \
                        f"({pattern}) that {home} owns: call its function"


def test_the_package_ships_what_runs_load_under_25_mb():
    """The wheel carries the synthetic tier's weights (what a run loads) but not the pretraining's resume state
    (Adam moments, EMA: 38 MB), which stays in the checkout for `synth pretrain --resume`."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    if "cifc_bench.synth" not in data:
        pytest.skip("the synthetic tier (a plugin) is not in this tree")
    globs = data["cifc_bench.synth"]
    folder = ROOT / "cifc_bench" / "synth"
    shipped = [p for p in folder.rglob("*") if p.is_file()
               and any(fnmatch.fnmatch(str(p.relative_to(folder)), g) and
                       str(p.relative_to(folder)).count("/") == g.count("/") for g in globs)]
    assert not [p for p in shipped if "pretrain-state" in p.parts]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in shipped)  # the UNet a run loads
    assert sum(p.stat().st_size for p in shipped) < 25 * 2**20


#: the package's layers, lowest first: a module may import its own layer and those below it, never above
LAYERS = ("core", "diffusion", "evaluation", "run", "reporting")
#: where the rest sits: the public plugin contract is core; built-in methods and baselines use core and diffusion
PLACED = {"cifc_bench.api": "core", "cifc_bench.methods": "diffusion", "cifc_bench.baselines": "diffusion"}


def _layer(module: str) -> str | None:
    """The layer of a package module, or None for the top (cli, describe, testing, the facade) and the synth plugin."""
    for prefix, layer in PLACED.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    part = module.split(".")[1] if module.count(".") else ""
    return part if part in LAYERS else None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: k for k, layer in enumerate(LAYERS)}
    out = []
    for module, deps in graph.items():
        mine = _layer(module)
        for dep in deps:
            theirs = _layer(dep)
            if mine is not None and (theirs is None and dep != "cifc_bench" or
                                     theirs is not None and rank[theirs] > rank[mine]):
                out.append(f"{module} -> {dep}")
    return sorted(out)


def test_the_folders_are_the_layers_and_imports_only_go_down():
    """core <- diffusion <- evaluation <- run <- reporting; methods and baselines sit beside diffusion (they
    learn and generate; the harness evaluates them); the CLI, testing and the synth plugin sit on top."""
    graph = _import_graph()
    for layer in LAYERS:
        assert (ROOT / "cifc_bench" / layer / "__init__.py").exists()
        assert any(_layer(m) == layer for m in graph if m != f"cifc_bench.{layer}")
    flat = [p.name for p in (ROOT / "cifc_bench").glob("*.py") if p.name != "__init__.py"]
    assert sorted(flat) == ["api.py", "testing.py"]  # the top, with cli/: the commands
    assert _upward(graph) == []
    # the check can fail: an evaluation module importing the run layer, or a method importing the harness
    assert _upward({"cifc_bench.evaluation.x": {"cifc_bench.run.loop"}}) == ["cifc_bench.evaluation.x -> cifc_bench.run.loop"]
    assert _upward({"cifc_bench.methods.m": {"cifc_bench.evaluation.metrics"}})


def _private_imports(path: Path) -> list[str]:
    """``from <package module> import _name``: a name its module keeps to itself."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cifc_bench"):
            out += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.ImportFrom) and node.level:
            out += [f".{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return out


def test_no_module_imports_another_modules_private_name(tmp_path):
    found = {str(p.relative_to(ROOT)): _private_imports(p) for p in _modules().values()}
    assert {k: v for k, v in found.items() if v} == {}
    # the check can fail
    (tmp_path / "x.py").write_text("from cifc_bench.run.loop import _loop\nfrom .sibling import _helper\n")
    assert _private_imports(tmp_path / "x.py") == ["cifc_bench.run.loop._loop", ".sibling._helper"]


def test_autocast_is_entered_in_one_place():
    """``torch.autocast`` is named only by ``core/precision.py``, whose ``autocast`` only the run's context calls;
    a method learns and generates in the package only through ``RunContext.learn`` and ``RunContext.generate``
    (``cifc_bench.testing.check_method`` checks the bare contract, in fp32, without a run, and ``cifc-bench bench``
    times the methods and diffusers' pipeline in each precision, without a run)."""
    import re

    BENCH = "cifc_bench/cli/bench.py"
    calls = {"torch.autocast": r"torch\.autocast\(", "autocast()": r"(?<![\w.])autocast\(",
             "learn_task()": r"\.learn_task\(", "generate()": r"(?:method|\bm)\.generate\("}
    homes = {"torch.autocast": {"cifc_bench/core/precision.py"},
             "autocast()": {"cifc_bench/core/precision.py", "cifc_bench/evaluation/context.py", BENCH},
             "learn_task()": {"cifc_bench/evaluation/context.py", "cifc_bench/testing.py", BENCH},
             "generate()": {"cifc_bench/evaluation/context.py", "cifc_bench/testing.py", BENCH}}
    for name, pattern in calls.items():
        where = set()
        for path in (ROOT / "cifc_bench").rglob("*.py"):
            code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", ">>>")))
            code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may show the call
            if re.search(pattern, code):
                where.add(str(path.relative_to(ROOT)))
        assert where <= homes[name], f"{name} is called in {sorted(where - homes[name])}: go through RunContext"
        assert where, f"the pattern of {name} matches nothing: the check is stale"


def _unlisted_packages(listed: set[str]) -> list[str]:
    """Package folders (an ``__init__.py``) that ``pyproject.toml``'s explicit package list leaves out of the wheel."""
    found = []
    for folder, package in PACKAGES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.append(".".join([package, *parts]))
    return sorted(set(found) - listed)


def test_every_package_folder_is_in_the_wheel():
    """The wheel lists its packages by name: a new folder left out installs in editable mode (CI) and is missing
    from a wheel (a user's pip install), as cifc_bench.cli was for one commit."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _unlisted_packages(listed) == []
    assert "cifc_bench.cli" in _unlisted_packages(listed - {"cifc_bench.cli"})  # the check can fail
