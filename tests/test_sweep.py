"""``cifc-bench sweep``: a grid of runs that can be killed and run again, finishing only what is missing."""

import json
from pathlib import Path

import pytest

from cifc_bench.cli import main
from cifc_bench.run.sweep import SweepError, SweepJob, expand, parse_grid


def test_grid_values_are_numbers_and_a_method_scope_applies_to_that_method_only():
    grid = parse_grid(["lr=1e-4,1e-5", "ewc.ewc_lambda=1,10"], ["finetune", "ewc"])
    assert grid == {"finetune": {"lr": [1e-4, 1e-5]}, "ewc": {"lr": [1e-4, 1e-5], "ewc_lambda": [1, 10]}}
    with pytest.raises(SweepError, match="'cidm' is not one of the sweep's --methods"):
        parse_grid(["cidm.rank=4"], ["finetune"])
    with pytest.raises(SweepError, match="write KEY=V1,V2"):
        parse_grid(["rank"], ["finetune"])


def test_every_combination_and_seed_gets_its_own_fixed_run_directory(tmp_path):
    jobs = expand(["base", "ewc"], [0, 1], {"ewc": {"ewc_lambda": [1, 10]}}, tmp_path, "synth10", {"lr": 1e-4},
                  {"steps": 5})
    assert [str(j.run_dir.relative_to(tmp_path)) for j in jobs] == [
        "synth10/base/s0", "synth10/base/s1", "synth10/ewc/ewc_lambda=1_s0", "synth10/ewc/ewc_lambda=1_s1",
        "synth10/ewc/ewc_lambda=10_s0", "synth10/ewc/ewc_lambda=10_s1"]
    assert jobs[3].method_args == {"lr": 1e-4, "ewc_lambda": 1}
    argv = jobs[3].argv()
    assert argv[:7] == ["run", "--method", "ewc", "--seed", "1", "--out", str(jobs[3].run_dir)]
    assert "--steps" in argv and argv[-2:] == ["lr=0.0001", "ewc_lambda=1"]


def test_a_seed_invariant_method_runs_once_per_grid(tmp_path):
    from cifc_bench.core.registry import load_method

    assert load_method("base").seed_invariant and not load_method("finetune").seed_invariant
    jobs = expand(["base", "finetune"], [0, 1, 2], {}, tmp_path, "synth10", one_seed=["base"])
    assert [str(j.run_dir.relative_to(tmp_path)) for j in jobs] == [
        "synth10/base/s0", "synth10/finetune/s0", "synth10/finetune/s1", "synth10/finetune/s2"]


def test_a_job_resumes_a_started_run_and_leaves_finished_and_failed_ones(tmp_path):
    job = SweepJob("finetune", 0, {}, tmp_path / "run")
    assert job.status() == "missing" and job.argv()[1] == "--method"
    job.run_dir.mkdir()
    (job.run_dir / "result.json").write_text(json.dumps({"status": "running", "tasks": [{}]}))
    assert job.status() == "partial" and job.argv() == ["run", "--resume", str(job.run_dir)]
    for status in ("completed", "failed"):
        (job.run_dir / "result.json").write_text(json.dumps({"status": status}))
        assert job.status() == status


def _sweep_argv(protocol: Path, out: Path, launcher: str = "local") -> list[str]:
    return ["sweep", "--methods", "base", "finetune", "--seeds", "0", "1", "--protocol", str(protocol),
            "--data-dir", str(protocol.with_name("tiny-data")), "--model", "tiny-random", "--scorer", "tiny-random",
            "--steps", "2", "--resolution", "32", "--num-inference-steps", "2", "--prompts-per-concept", "2",
            "--images-per-prompt", "1", "--calibration-images", "4", "--multi-images-per-prompt", "2",
            "--device", "cpu", "--out", str(out), "--launcher", launcher, "--jobs", "2"]


def _results(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))}


@pytest.mark.slow
def test_killed_sweep_run_again_finishes_only_the_missing_work(tiny_protocol, tmp_path, monkeypatch, capsys):
    """Every run is killed (SIGKILL) while saving its second task's state; the sweep again resumes each from
    its first task, whose state is not rewritten; a third time there is nothing to do."""
    from cifc_bench.core.data import cache_dir

    out = tmp_path / "sweep"
    monkeypatch.setenv("CIFC_BENCH_FAULT", "kill:state:2")
    assert main(_sweep_argv(tiny_protocol, out)) == 3
    out_text = capsys.readouterr().out
    assert "0 of 3 run(s) finished" in out_text and "'base' cannot depend on the seed" in out_text  # base runs once
    first_states = {p: p.stat().st_mtime_ns for p in out.rglob("after_task_00.safetensors")}
    assert len(first_states) == 3 and all(len(r["tasks"]) == 1 for r in _results(out).values())
    # the cache is shared with other tests' settings, and this one's may predate the sweep: none may be rewritten
    calibrated = {p: p.stat().st_mtime_ns for p in (cache_dir() / "cnr-thresholds").glob("*.json")}
    assert calibrated

    monkeypatch.delenv("CIFC_BENCH_FAULT")
    assert main(_sweep_argv(tiny_protocol, out)) == 0
    text = capsys.readouterr().out
    assert "3 to resume, 0 to start" in text and text.count("(resume)") == 3 and "3 of 3 run(s) finished" in text
    results = _results(out)
    assert sorted(results) == ["tiny/base/s0", "tiny/finetune/s0", "tiny/finetune/s1"]
    assert all(r["status"] == "completed" and len(r["tasks"]) == 3 for r in results.values())
    assert {p: p.stat().st_mtime_ns for p in first_states} == first_states, "a finished task was redone"
    assert {p: p.stat().st_mtime_ns for p in calibrated} == calibrated, "the shared calibration was computed again"

    assert main(_sweep_argv(tiny_protocol, out)) == 0
    assert "3 completed (skipped)" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_through_submitits_local_executor(tiny_protocol, tmp_path, capsys):
    """The SLURM path (a submitit job array) on this machine: the same runs, and run again nothing is redone."""
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    assert main(_sweep_argv(tiny_protocol, out, "submitit-local")) == 0
    assert "3 of 3 run(s) finished" in capsys.readouterr().out
    results = _results(out)
    assert len(results) == 3 and all(r["status"] == "completed" for r in results.values())
    assert results["tiny/finetune/s1"]["run_info"]["seed"] == 1
    assert main(_sweep_argv(tiny_protocol, out, "submitit-local")) == 0
    assert "3 completed (skipped)" in capsys.readouterr().out
