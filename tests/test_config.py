"""Run settings: one name per setting from the command line to the code, and one documented precedence."""

import dataclasses

import pytest
import yaml

from cifc_bench.cli.parser import build_parser, given_settings, run_config
from cifc_bench.core.config import FALLBACKS, RUN_ONLY, ConfigError, RunSpec, resolve, setting_names

SAMPLE = {
    "method": "base", "protocol": "p.yaml", "data_dir": "d", "model": "m", "scorer": "s", "steps": 3,
    "schedule": "shared", "batch_size": 3, "prompts_per_concept": 3, "images_per_prompt": 3, "resolution": 16,
    "num_inference_steps": 3, "guidance_scale": 2.5, "negative_prompt": "neg", "eval_schedule": "final",
    "eval_batch_size": 3, "seed": 3, "device": "meta", "dino": "none", "multi_images_per_prompt": 3,
    "calibration_images": 3, "dtype": "fp16", "method_args": {"rank": 8}, "tracks": ("editing", "style_transfer"),
    "eval_workers": 1, "log_to": ("tensorboard",), "compile": True, "task_order": "random:3",
    "image_encoders": ("dinov2-vits14", "dreamsim"), "retention_prompts": 3,
}


def test_the_sample_covers_every_setting():
    assert set(SAMPLE) == set(setting_names())


def _cli(*argv):
    return run_config(given_settings(build_parser().parse_args(["run", *argv])))


@pytest.mark.parametrize("name", [n for n in setting_names() if n != "method_args"])
def test_each_flag_yaml_key_and_protocol_default_reaches_the_same_field(name, tmp_path):
    value = SAMPLE[name]
    flag = f"--{name.replace('_', '-')}"
    typed = ",".join(value) if isinstance(value, tuple) else str(value)  # --tracks a,b
    given = [flag] if isinstance(value, bool) else [flag, typed]  # a switch (--compile) takes no value
    assert getattr(_cli(*given, "--protocol", "p.yaml"), name) == value  # the flag --x-y is x_y
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({name: list(value) if isinstance(value, tuple) else value, "protocol": "p.yaml"}))
    assert getattr(_cli("--config", str(config)), name) == value  # the YAML key x_y is x_y
    if name not in RUN_ONLY:  # the protocol default x_y is x_y
        assert getattr(RunSpec(method="base").resolved({name: value}), name) == value


def test_method_args_from_every_source_merge_key_by_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method_args": {"rank": 8, "lr": 0.5}}))
    spec = _cli("--config", str(config), "--method-args", "lr=1e-4", "--protocol", "p.yaml")
    assert spec.method_args == {"rank": 8, "lr": 1e-4}  # YAML-parsed: a number, not the string '1e-4'
    resolved = spec.resolved({"method_args": {"finetune": {"rank": 2, "targets": "all-attn"}}})
    assert resolved.method_args == {"rank": 8, "lr": 1e-4, "targets": "all-attn"}
    # protocol arguments follow the method's class: a registered class named by its import path gets them
    by_path = RunSpec(method="cifc_bench.methods.finetune:SequentialFinetune").resolved(
        {"method_args": {"finetune": {"rank": 2}}}, ("finetune",))
    assert by_path.method_args == {"rank": 2}


def test_precedence_cli_over_yaml_over_protocol_over_fallback(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"steps": 5, "resolution": 64}))
    protocol = {"steps": 7, "resolution": 128, "guidance_scale": 3.0}
    spec = _cli("--config", str(config), "--steps", "3", "--protocol", "p.yaml").resolved(protocol)
    assert (spec.steps, spec.resolution, spec.guidance_scale, spec.num_inference_steps) == \
        (3, 64, 3.0, FALLBACKS["num_inference_steps"])
    assert _cli("--config", str(config), "--protocol", "p.yaml").resolved(protocol).steps == 5
    assert RunSpec().resolved(protocol).steps == 7 and RunSpec().resolved({}).steps == FALLBACKS["steps"]
    # the harness gets its budget and sampler settings from the resolved spec, and from nowhere else
    g, b = spec.generation(), spec.budget({"steps": 9, "lr_scale": 1.5}, seed=4)
    assert (g.resolution, g.guidance_scale, g.batch_size) == (64, 3.0, FALLBACKS["eval_batch_size"])
    assert (b.steps, b.batch_size, b.resolution, b.seed, b.lr_scale) == (9, FALLBACKS["batch_size"], 64, 4, 1.5)


def test_bad_settings_name_the_setting_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"--steps -1: give a whole number >= 0"):
        RunSpec(steps=-1)
    with pytest.raises(ConfigError, match=r"--resolution 30: give a multiple of 8"):
        RunSpec(resolution=30)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"train_steps": 5}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['train_steps'\]; known: .*'steps'"):
        _cli("--config", str(config))
    with pytest.raises(ConfigError, match="--steps 2 gives every task the same budget, but --schedule release"):
        resolve({"steps": 2, "schedule": "release"})
    assert {f.name for f in dataclasses.fields(RunSpec)} == set(setting_names())


def test_protocol_defaults_are_checked_where_they_are_written(tmp_path):
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.core.protocol_schema import ProtocolError
    from cifc_bench.testing import make_tiny_protocol

    path = make_tiny_protocol(tmp_path, n_concepts=2)
    raw = yaml.safe_load(path.read_text())
    for bad, message in (({"steps": "eight hundred"}, r"defaults\.steps 'eight hundred': give a whole number"),
                         ({"train_steps": 800}, r"field 'defaults\.train_steps' .*allowed: \[.*'steps'"),
                         ({"guidance_scale": "high"}, r"defaults\.guidance_scale 'high': give a number")):
        raw["defaults"] = {**yaml.safe_load(path.read_text())["defaults"], **bad}
        bad_path = tmp_path / "bad.yaml"
        bad_path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ProtocolError, match=message) as info:
            load_protocol(str(bad_path))
        assert str(bad_path) in str(info.value)  # the file is named


def test_eval_batch_size_auto_is_the_cuda_default_and_is_fixed_when_the_run_starts(tmp_path):
    """``--eval-batch-size auto`` picks the largest batch whose guided step fits, halved for what methods add;
    it is the default on CUDA unless the protocol gives a batch, and the number chosen is what the run records
    (so a resumed run keeps its batches). Off CUDA it is the fallback batch."""
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.run.setup import fitting_batch_size
    from cifc_bench.testing import make_tiny_protocol, tiny_run_config

    assert RunSpec(device="cuda").resolved({}).eval_batch_size == "auto"
    assert RunSpec(device="cuda").resolved({"eval_batch_size": 40}).eval_batch_size == 40
    assert RunSpec(device="cpu").resolved({}).eval_batch_size == FALLBACKS["eval_batch_size"]
    assert fitting_batch_size(None, RunSpec(), fits=lambda n: n <= 20) == 8  # 16 fits, halved
    with pytest.raises(ConfigError, match="not even one image"):
        fitting_batch_size(None, RunSpec(), fits=lambda n: False)
    with pytest.raises(ConfigError, match=r"--eval-batch-size 'big'.* or 'auto'"):
        RunSpec(eval_batch_size="big")
    assert _cli("--eval-batch-size", "auto", "--protocol", "p.yaml").eval_batch_size == "auto"
    config = dataclasses.replace(tiny_run_config(make_tiny_protocol(tmp_path / "p", n_concepts=2), method="base"),
                                 eval_batch_size="auto")
    result = run_benchmark(config, tmp_path / "run")
    assert result["run_info"]["config"]["eval_batch_size"] == FALLBACKS["eval_batch_size"]  # a CPU: the fallback
