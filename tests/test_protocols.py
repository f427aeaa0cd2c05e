"""Protocol loading and validation: every kind of bad input fails with the file, field and value named."""

import shutil
from pathlib import Path

import pytest
import yaml

from cifc_bench.cli import main
from cifc_bench.core.protocol import load_protocol
from cifc_bench.core.protocol_schema import ProtocolError
from cifc_bench.core.registry import load_method
from cifc_bench.testing import make_tiny_protocol


def test_cifc10_matches_the_release_definition():
    spec = load_protocol("cifc10")
    names = [c["name"] for c in spec.raw["concepts"]]
    assert names == ["dog", "duck_toy", "cat", "backpack", "teddybear", "painting", "dog2", "drawing", "cat2",
                     "ink_painting"]
    duck = spec.raw["concepts"][1]
    assert duck["placeholders"] == ["<duck1>", "<duck2>", "<duck3>"] and duck["initializers"] == [0.012, "duck", "toy"]
    assert duck["eval_replacement"] == "yellow rubber <duck1> <duck2> <duck3>" and duck["class_word"] == "duck toy"
    assert [c["prompt_set"] for c in spec.raw["concepts"]] == ["pet", "plushy", "pet", "plushy", "plushy", "style",
                                                                 "pet", "style", "pet", "style"]
    assert all(len(v) == 20 for v in spec.raw["prompt_sets"].values())
    ref = spec.raw["reference_results"]["backbones"]["SD-1.5"]
    assert ref["ia"]["CIDM"][-1] == 78.0 and ref["ta"]["Finetuning"][0] == 64.4


def test_cifc10_prompt_sets_equal_the_release_files(cifc10_dir):
    spec = load_protocol("cifc10")
    for name, prompts in spec.raw["prompt_sets"].items():
        lines = [ln.strip() for ln in (cifc10_dir / "evaluation_prompts" / f"test_{name}.txt").read_text().splitlines()]
        assert prompts == [ln for ln in lines if ln]


def test_cifc10_binds_and_validates(cifc10_dir, capsys):
    seq = load_protocol("cifc10").bind(cifc10_dir)
    assert len(seq.tasks) == 10
    duck = seq.concept("duck_toy")
    assert duck.eval_prompts[0] == "A yellow rubber <duck1> <duck2> <duck3>, in the ocean"
    assert duck.to_class_words(duck.eval_prompts[10]) == "A yellow rubber duck toy on a table"
    assert len(duck.image_paths()) == 4 and seq.concept("teddybear").image_paths()[0].suffix == ".jpg"
    assert main(["validate", "--protocol", "cifc10", "--data-dir", str(cifc10_dir)]) == 0
    assert "10 tasks" in capsys.readouterr().out


@pytest.fixture
def damaged_cifc10(cifc10_dir, tmp_path):
    copy = tmp_path / "cifc10"
    shutil.copytree(cifc10_dir, copy)
    return copy


def test_missing_image_is_named(damaged_cifc10, capsys):
    (damaged_cifc10 / "images" / "cat" / "03.jpg").unlink()
    assert main(["validate", "--protocol", "cifc10", "--data-dir", str(damaged_cifc10)]) == 2
    err = capsys.readouterr().err
    assert "missing file" in err and "images/cat/03.jpg" in err
    assert "image 03.jpg" not in err  # the caption check is about images that exist


def test_corrupt_image_is_named(damaged_cifc10, capsys):
    (damaged_cifc10 / "images" / "dog" / "00.jpg").write_bytes(b"not a jpeg")
    assert main(["validate", "--protocol", "cifc10", "--data-dir", str(damaged_cifc10)]) == 2
    err = capsys.readouterr().err
    assert "images/dog/00.jpg is not a readable image" in err
    assert "differs from its checksum" in err


def test_empty_and_missing_folders_are_named(damaged_cifc10, capsys):
    for p in (damaged_cifc10 / "images" / "drawing").iterdir():
        p.unlink()
    shutil.rmtree(damaged_cifc10 / "images" / "cat2")
    assert main(["validate", "--protocol", "cifc10", "--data-dir", str(damaged_cifc10), "--no-checksums"]) == 2
    err = capsys.readouterr().err
    assert "images/drawing (field 'images') holds no images" in err
    assert "images/cat2 (field 'images') does not exist" in err


def test_wrong_data_dir_is_explained(tmp_path, capsys):
    assert main(["validate", "--protocol", "cifc10", "--data-dir", str(tmp_path)]) == 2
    assert f"--data-dir {tmp_path} holds no 'cifc10' data" in capsys.readouterr().err


def _edit(tmp_path: Path, mutate) -> Path:
    path = make_tiny_protocol(tmp_path, n_concepts=3)
    raw = yaml.safe_load(path.read_text())
    mutate(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["concepts"][1].update(prompt_set="pets"), ["concepts[1].prompt_set", "'pets'", "unknown prompt set"]),
    (lambda r: r["concepts"][2].update(placeholders=["<t0a>", "<t2b>"]),
     ["concepts[2].placeholders", "'<t0a>'", "already used by concept 'thing0'"]),
    (lambda r: r["concepts"][0].update(kind="person"), ["concepts[0].kind", "'person'", "object"]),
    (lambda r: r["concepts"][0].update(initializers=[0.01]), ["concepts[0].initializers", "one initializer"]),
    (lambda r: r["concepts"][0].pop("class_word"), ["concepts[0]", "missing field(s) ['class_word']"]),
    (lambda r: r["concepts"][0].update(colour="red"), ["unknown field(s) ['colour']"]),
    (lambda r: r["concepts"][1].update(name="thing0"), ["concepts[1].name", "'thing0'", "unique"]),
    (lambda r: r["concepts"][0].update(eval_replacement="a thing"), ["concepts[0].eval_replacement", "'<t0a> <t0b>'"]),
    (lambda r: r["prompt_sets"]["object"].append("a prompt without the mark"), ["prompt_sets.object[3]", "<TOK>"]),
    (lambda r: r["multi_concept_prompts"][0].update(concepts=["thing0", "ghost"]), ["'ghost'", "unknown concept"]),
    (lambda r: r["multi_concept_prompts"][0].update(boxes=[[0.5, 0, 0.2, 1], [0, 0, 1, 1]]), ["boxes", "0 <= y0 < y1"]),
    (lambda r: r.pop("version"), ["missing required top-level field 'version'"]),
    # an unknown key anywhere is an error naming it and the known ones (a misspelt key was once ignored silently)
    (lambda r: r.update(multi_concept_prompt=[]), ["'multi_concept_prompt'", "unknown key", "'multi_concept_prompts'"]),
    (lambda r: r["multi_concept_prompts"][0].update(region_prompt=["a <t0a> <t0b>", "a <t1a> <t1b>"]),
     ["multi_concept_prompts[0].region_prompt", "unknown key", "'region_prompts'"]),
    (lambda r: r["data"].update(datset="x"), ["data.datset", "unknown key", "'dataset'"]),
    (lambda r: r.update(schedules={"s": {"tasks": [{"steps": 1}] * 3, "descripton": "x"}}),
     ["schedules.s.descripton", "unknown key", "'description'"]),
    (lambda r: r["multi_concept_prompts"][0].update(region_prompts=["a <t0a> <t0b> on grass"]),
     ["multi_concept_prompts[0].region_prompts", "one per box"]),
    (lambda r: r["multi_concept_prompts"][0].update(region_prompts=["a <t1a> <t1b> on grass", "a <t1a> <t1b>"]),
     ["multi_concept_prompts[0].region_prompts[0]", "'thing0'", "'<t0a> <t0b>'"]),
    (lambda r: (r["multi_concept_prompts"][0].pop("boxes"),
                r["multi_concept_prompts"][0].update(region_prompts=["a <t0a> <t0b>", "a <t1a> <t1b>"])),
     ["region_prompts", "give 'boxes' too"]),
])
def test_schema_errors_name_field_and_value(tmp_path, mutate, expected):
    path = _edit(tmp_path, mutate)
    with pytest.raises(ProtocolError) as info:
        load_protocol(str(path))
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_missing_caption_is_named(tmp_path):
    path = make_tiny_protocol(tmp_path, n_concepts=2)
    (tmp_path / "tiny-data" / "caption" / "thing1" / "02.txt").unlink()
    with pytest.raises(ProtocolError, match=r"image 02.png has no caption .*caption/thing1/02.txt"):
        load_protocol(str(path)).bind(tmp_path / "tiny-data")


def test_unknown_protocol_name_suggests_the_close_one():
    from cifc_bench.core.registry import PluginError

    with pytest.raises(PluginError, match="Did you mean 'cifc10'"):
        load_protocol("cifc-10")


def test_invalid_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(str(bad))


RELEASE_STEPS = [750, 500, 625, 750, 700, 1050, 750, 1200, 1000, 750]  # train.py × enlarge ratios, 2 GPUs


def test_cifc10_release_schedule_loads_and_is_cidms_default_only():
    from cifc_bench.core.config import RunSpec

    spec = load_protocol("cifc10")
    budgets = spec.task_budgets("release", 800)
    assert [b["steps"] for b in budgets] == RELEASE_STEPS
    assert [j for j, b in enumerate(budgets) if b["lr_scale"] != 1.0] == [5, 7]  # painting and drawing, 1.5e-4
    assert budgets[5]["lr_scale"] * 1e-4 == pytest.approx(1.5e-4)
    cidm = RunSpec(method="cidm", protocol="cifc10").resolved(dict(spec.defaults))
    assert cidm.schedule == "release" and cidm.method_args["variant"] == "release"
    assert RunSpec(method="finetune", protocol="cifc10").resolved(dict(spec.defaults)).schedule == "shared"
    assert RunSpec(method="cidm", protocol="cifc10", steps=2).resolved(dict(spec.defaults)).schedule == "shared"
    assert spec.task_budgets("shared", 800) == [{"steps": 800, "lr_scale": 1.0}] * 10
    with pytest.raises(ValueError, match=r"--schedule 'fast'.*\['shared', 'release'\]"):
        spec.task_budgets("fast", 800)


def test_schedule_steps_and_rates_reach_each_task_and_the_result_file(tmp_path, monkeypatch):
    import torch
    import yaml

    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import make_tiny_protocol, tiny_run_config

    path = make_tiny_protocol(tmp_path, n_concepts=3)
    raw = yaml.safe_load(path.read_text())
    raw["schedules"] = {"uneven": {"tasks": [{"steps": 1}, {"steps": 3, "lr_scale": 2.0}, {"steps": 0}]}}
    raw["defaults"]["schedule"] = {"finetune": "uneven"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    rates = []
    adamw = torch.optim.AdamW

    class Recording(adamw):
        def __init__(self, groups, **kwargs):
            rates.append([g["lr"] for g in groups])
            super().__init__(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    result = run_benchmark(tiny_run_config(path, steps=None, method_args={"lr": 1e-3}), tmp_path / "run")
    assert result["run_info"]["config"]["schedule"] == "uneven"
    assert result["run_info"]["schedule"]["tasks"] == [{"steps": 1, "lr_scale": 1.0}, {"steps": 3, "lr_scale": 2.0},
                                                       {"steps": 0, "lr_scale": 1.0}]
    assert [(t["steps"], t["lr_scale"]) for t in result["tasks"]] == [(1, 1.0), (3, 2.0), (0, 1.0)]
    assert result["run_info"]["method_version"] == load_method("finetune").version
    # the LoRA's rate is scaled per task, the token rate never
    assert [r[0] for r in rates] == pytest.approx([1e-3, 2e-3, 1e-3]) and {r[1] for r in rates} == {1e-3}


def test_schedule_errors_name_the_field_and_the_fix(tmp_path, capsys):
    import yaml

    from cifc_bench.cli import main
    from cifc_bench.testing import make_tiny_protocol

    path = make_tiny_protocol(tmp_path, n_concepts=3)
    raw = yaml.safe_load(path.read_text())
    raw["schedules"] = {"short": {"tasks": [{"steps": 1}, {"steps": 1}]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ProtocolError, match=r"'schedules.short.tasks'.*give a list of 3 entries"):
        load_protocol(str(path))
    raw["schedules"] = {"s": {"tasks": [{"steps": 1}, {"steps": "two"}, {"steps": 1}]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ProtocolError, match=r"'schedules.s.tasks\[1\].steps' has bad value 'two'"):
        load_protocol(str(path))
    raw["schedules"] = {"s": {"tasks": [{"steps": 1}] * 3}}
    raw["defaults"]["schedule"] = {"cidm": "nope"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ProtocolError, match=r"'defaults.schedule.cidm' has bad value 'nope'.*\['shared', 's'\]"):
        load_protocol(str(path))
    assert main(["run", "--protocol", "cifc10", "--steps", "2", "--schedule", "release"]) == 2
    assert "--steps 2 gives every task the same budget, but --schedule release gives each task its own: drop one" \
        in capsys.readouterr().err


def test_region_prompts_reach_the_requests_and_the_result_file(tmp_path):
    """A protocol's region prompts are carried by every request of their multi-concept prompt, and recorded."""
    from cifc_bench.evaluation.eval_requests import multi_requests

    regions = ["a <t0a> <t0b> on the grass", "a <t1a> <t1b> on the grass"]
    path = _edit(tmp_path, lambda r: r["multi_concept_prompts"][0].update(region_prompts=regions))
    seq = load_protocol(str(path)).bind(path.with_name("tiny-data"))
    assert seq.multi_concept_prompts[0].region_prompts == tuple(regions)
    requests = [r for r, _ in multi_requests(seq, 0, 3)]
    assert all(r.region_prompts == tuple(regions) for r in requests)
    assert [requests[0].region_prompt(k) for k in range(2)] == regions
    plain = load_protocol(str(_edit(tmp_path / "plain", lambda r: None))).bind(tmp_path / "plain" / "tiny-data")
    assert multi_requests(plain, 0, 1)[0][0].region_prompt(0) == "a <t0a> <t0b>"  # the default without them


def test_installed_protocols_give_a_region_prompt_per_box_with_its_context():
    """Each region prompt is its concept's clause of the global prompt with context: longer than the default
    "a <phrase>", and every word of it is in the global prompt (no invented scene)."""
    import importlib.util

    names = ["cifc10"] + (["synth10"] if importlib.util.find_spec("cifc_bench.synth") else [])  # synth: a plugin
    for name in names:
        spec = load_protocol(name)
        phrases = {c["name"]: c["eval_replacement"] for c in spec.raw["concepts"]}
        for m in spec.raw["multi_concept_prompts"]:
            assert len(m["region_prompts"]) == len(m["boxes"]) == len(m["concepts"])
            words = set(m["prompt"].lower().replace(",", " ").split())
            for text, concept in zip(m["region_prompts"], m["concepts"], strict=True):
                assert phrases[concept] in text and len(text) > len(f"a {phrases[concept]}") + 3, text
                assert set(text.lower().replace(",", " ").split()) <= words, (text, m["prompt"])


def test_cifc10_sdxl_is_cifc10_with_sdxls_model_and_resolution():
    """One home for the concepts, prompts and paper numbers: cifc10-sdxl extends cifc10 and changes two defaults."""
    base, sdxl = load_protocol("cifc10"), load_protocol("cifc10-sdxl")
    assert sdxl.name == "cifc10-sdxl" and sdxl.version == base.version
    assert sdxl.defaults["model"] == "stabilityai/stable-diffusion-xl-base-1.0" and sdxl.defaults["resolution"] == 1024
    assert {k: v for k, v in sdxl.defaults.items() if k not in ("model", "resolution")} == \
        {k: v for k, v in base.defaults.items() if k not in ("model", "resolution")}
    for key in ("concepts", "prompt_sets", "multi_concept_prompts", "reference_results", "schedules", "retention"):
        assert sdxl.raw[key] == base.raw[key], key
    assert sdxl.checksum_file.resolve() == base.checksum_file.resolve()
    assert "SDXL" in sdxl.raw["reference_results"]["backbones"]


def test_extends_from_anywhere_keeps_the_bases_checksums_and_refuses_a_loop(tmp_path):
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text(yaml.safe_dump({"extends": "cifc10", "name": "mine", "defaults": {"steps": 10}}))
    spec = load_protocol(str(mine))
    assert spec.name == "mine" and spec.defaults["steps"] == 10 and spec.defaults["resolution"] == 512
    assert spec.checksum_file == load_protocol("cifc10").checksum_file  # not a file beside mine.yaml
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"extends": str(b), "name": "a"}))
    b.write_text(yaml.safe_dump({"extends": str(a), "name": "b"}))
    with pytest.raises(ProtocolError, match=r"b.yaml: extends .*a.yaml', which extends it back: a.yaml -> b.yaml -> a.yaml"):
        load_protocol(str(a))
    a.write_text(yaml.safe_dump({"extends": 3, "name": "a"}))
    with pytest.raises(ProtocolError, match=r"extends 3: give a registered protocol name or a YAML path"):
        load_protocol(str(a))
