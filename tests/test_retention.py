"""Retention of the base model: drift from the base model's own images, the generic prompts' scores, per task."""

import json

import numpy as np
import pytest

from cifc_bench.core.protocol import load_protocol
from cifc_bench.core.protocol_schema import ProtocolError
from cifc_bench.evaluation.eval_requests import retention_dir
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.plan import work_plan
from cifc_bench.run.setup import resolve_run, run_sequence
from cifc_bench.testing import make_tiny_protocol, tiny_run_config


@pytest.fixture(scope="module")
def retention_protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("ret"), n_concepts=2, retention=True)


def test_the_base_model_has_zero_drift_and_every_state_a_row(tmp_path, retention_protocol):
    result = run_benchmark(tiny_run_config(retention_protocol, method="base"), tmp_path / "run")
    part = result["retention"]
    assert part["metrics"] == ["drift", "ta"] and len(part["prompts"]) == 3
    assert part["rows"]["drift"] == pytest.approx([0.0, 0.0], abs=1e-6)  # its own pictures, redrawn
    assert all(0.0 <= v <= 2.5 for v in part["rows"]["ta"])
    assert len(part["per_image"]["drift"]["1"]) == 6  # 3 prompts x 2 images, per evaluated state
    summary = part["summary"]["drift"]
    assert summary["final"] == pytest.approx(0.0, abs=1e-6) and set(summary) == {"final", "first", "change", "worst"}
    assert len(list(retention_dir(tmp_path / "run", None).glob("*.png"))) == 6  # the base model's, drawn once
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["retention"]["rows"] == part["rows"]
    from cifc_bench.reporting.report import write_report

    page = write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "Retention of the base model" in page and "retention_0.png" in page
    assert (tmp_path / "report" / "assets" / "retention_0.png").stat().st_size > 1000


def test_the_dry_run_counts_the_retention_images(retention_protocol):
    config, spec, _, budgets = resolve_run(tiny_run_config(retention_protocol))
    plan = work_plan(config, run_sequence(spec, config, check=False), budgets)
    assert plan.retention_images == (6, 6) and plan.base_images == 6
    config, spec, _, budgets = resolve_run(tiny_run_config(retention_protocol, retention_prompts=1))
    fewer = work_plan(config, run_sequence(spec, config, check=False), budgets)  # --retention-prompts 1
    assert fewer.retention_images == (2, 2) and fewer.base_images == 2
    assert plan.images_after(1) == 2 * 2 + 2 + 6  # 2 concepts x 2 prompts, a multi prompt's 2 images, retention


def test_the_dry_runs_warm_up_draws_none_of_the_base_models_retention_images(retention_protocol, tmp_path,
                                                                            monkeypatch, capsys):
    """The warm-up times a few steps and images; drawing every generic prompt's base image first (cifc10: 50 at 50
    steps) made a dry run of SDXL on a CPU run for minutes."""
    from cifc_bench.cli import main
    from cifc_bench.evaluation import retention

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run drew the base model's retention images")

    monkeypatch.setattr(retention, "generate_base_images", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--method", "finetune", "--protocol", str(retention_protocol), "--data-dir",
                 str(retention_protocol.with_name("tiny-data")), "--model", "tiny-random", "--scorer", "tiny-random",
                 "--steps", "2", "--resolution", "32", "--num-inference-steps", "2", "--prompts-per-concept", "1",
                 "--images-per-prompt", "1", "--dry-run", "--warmup-steps", "1"]) == 0
    assert "estimated wall time" in capsys.readouterr().out


def test_retention_prompts_must_not_hold_a_learned_token(tmp_path):
    import yaml

    path = make_tiny_protocol(tmp_path, n_concepts=1, retention=True)
    spec = yaml.safe_load(path.read_text())
    spec["retention"]["prompts"].append("a <t0a> on a table")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ProtocolError, match=r"retention.prompts\[3\].*without any learned token"):
        load_protocol(str(path))
    spec["retention"]["prompts"].pop()
    spec["retention"]["typo"] = 1
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ProtocolError, match="unknown key 'typo'"):
        load_protocol(str(path))


def test_both_tiers_name_generic_prompts():
    for name, n in (("cifc10", 50), ("synth10", 10)):
        spec = load_protocol(name)
        prompts = spec.raw["retention"]["prompts"]
        assert len(prompts) == n and len(set(prompts)) == n
        assert not any("<" in p for p in prompts)
    assert np.isin(["ta", "class_acc", "context_acc"], load_protocol("synth10").raw["retention"]["metrics"]).all()


def _run(method: str, seed: int, drift: list[float], first: list[float]):
    from cifc_bench.reporting.runs import RunRecord

    part = {"metrics": ["drift"], "per_image": {"drift": {"0": first, "2": drift}}}
    return RunRecord(f"/runs/{method}/s{seed}", {"run_info": {"method": method, "method_args": {}, "config": {}},
                                                  "retention": part})


def test_the_retention_table_tells_a_method_that_moves_the_base_model_from_base():
    from cifc_bench.reporting.retention_table import retention_table

    rng = np.random.default_rng(0)
    zeros = [0.0] * 8
    runs = [_run("base", 0, zeros, zeros)]
    runs += [_run("finetune", s, list(0.3 + rng.normal(0, 0.02, 8)), list(0.1 + rng.normal(0, 0.02, 8)))
             for s in range(3)]
    runs += [_run("cidm", s, list(0.3 + rng.normal(0, 0.02, 8)), list(0.1 + rng.normal(0, 0.02, 8))) for s in range(3)]
    table = retention_table(runs).set_index("method")
    assert list(table.columns) == ["seeds", "drift final", "drift differs at 95 % from", "drift change"]
    assert table.loc["base", "drift final"] == "0.0 [0.0, 0.0] ★"
    assert table.loc["base", "drift differs at 95 % from"] == "finetune, cidm"
    assert table.loc["finetune", "drift differs at 95 % from"] == "base"  # cidm drifts alike
    assert table.loc["finetune", "drift change"].startswith("20.")
    assert retention_table([_run("base", 0, zeros, zeros).__class__("/x", {"run_info": runs[0].data["run_info"],
                                                                           "retention": None})]) is None


def test_resume_adds_retention_to_a_run_made_before_its_protocol_had_it(tmp_path):
    """Every evaluated state gets its retention row from its saved state, as if measured from the start."""
    import yaml

    path = make_tiny_protocol(tmp_path, n_concepts=2, retention=True)
    with_retention = path.read_text()
    spec = yaml.safe_load(with_retention)
    del spec["retention"]
    path.write_text(yaml.safe_dump(spec))
    old = run_benchmark(tiny_run_config(path, method="finetune"), tmp_path / "old")
    assert old["retention"] is None
    path.write_text(with_retention)
    resumed = run_benchmark(None, tmp_path / "old", resume=True)
    fresh = run_benchmark(tiny_run_config(path, method="finetune"), tmp_path / "fresh")
    assert resumed["retention"]["rows"] == fresh["retention"]["rows"] and "retention_added" in resumed["run_info"]
    assert resumed["matrices"] == old["matrices"]
    assert resumed["run_info"]["finished"] == old["run_info"]["finished"]  # its cost stays its training's
