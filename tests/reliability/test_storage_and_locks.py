"""A full disk, a damaged state file and two processes on one run directory: clear errors, nothing lost."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from cifc_bench.core.config import ConfigError
from cifc_bench.diffusion import scoring
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.rundir import run_lock
from cifc_bench.testing import assert_same_scores, make_tiny_protocol, tiny_run_config


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("proto"), n_concepts=3)


def _cli(protocol, out, resume=False):
    if resume:
        return [sys.executable, "-m", "cifc_bench.cli", "run", "--resume", str(out)]
    return [sys.executable, "-m", "cifc_bench.cli", "run", "--method", "finetune", "--protocol", str(protocol),
            "--data-dir", str(protocol.with_name("tiny-data")), "--model", "tiny-random", "--scorer", "tiny-random",
            "--steps", "2", "--prompts-per-concept", "2", "--images-per-prompt", "1", "--resolution", "32",
            "--num-inference-steps", "2", "--calibration-images", "4", "--multi-images-per-prompt", "2", "--out", str(out)]


def test_a_damaged_or_missing_state_is_named_and_no_finished_task_is_lost(protocol, tmp_path):
    run = tmp_path / "run"
    done = run_benchmark(tiny_run_config(protocol), run)
    result = json.loads((run / "result.json").read_text())
    result["tasks"], result["status"] = result["tasks"][:2], "failed"  # as if killed after task 2
    (run / "result.json").write_text(json.dumps(result))
    state = run / "state" / "after_task_01.safetensors"
    state.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"the method state after task 2, .*after_task_01.safetensors, is unreadable"):
        run_benchmark(None, run, resume=True)
    kept = json.loads((run / "result.json").read_text())
    assert len(kept["tasks"]) == 2 and kept["matrices"]["ia"][1] == done["matrices"]["ia"][1]
    state.unlink()
    with pytest.raises(ConfigError, match=r"after_task_01.safetensors, is missing. result.json keeps the 2 finished"):
        run_benchmark(None, run, resume=True)
    assert len(json.loads((run / "result.json").read_text())["tasks"]) == 2


@pytest.mark.slow
def test_one_process_at_a_time_writes_a_run_directory(protocol, tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        with pytest.raises(ConfigError, match=rf"{run} is being written by cifc-bench process {os.getpid()}"):
            run_benchmark(tiny_run_config(protocol), run)
    assert not (run / "result.json").exists()
    # two real processes on one --out: one runs, the other stops at once; the files are whole
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIFC_BENCH_PROGRESS": "0"}
    first = subprocess.Popen(_cli(protocol, run), env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.run(_cli(protocol, run), env=env, capture_output=True, text=True, timeout=600)
    first_err = first.communicate(timeout=600)[1]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err[-1500:], second.stderr[-1500:])
    loser = second.stderr if second.returncode else first_err
    assert "is being written by cifc-bench process" in loser or "already holds a run" in loser
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_and_resume_gives_the_same_numbers(protocol, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIFC_BENCH_PROGRESS": "0"}  # the same threads for every process
    subprocess.run(_cli(protocol, tmp_path / "reference"), env=env, check=True, capture_output=True, timeout=600)
    reference = json.loads((tmp_path / "reference" / "result.json").read_text())
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run = mount / "run"
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * 420_000)  # leaves too little room for the run's images
        proc = subprocess.run(_cli(protocol, run), env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "the disk is full" in proc.stderr and f"continue with --resume {run}" in proc.stderr
        ballast.unlink()
        proc = subprocess.run(_cli(protocol, run, resume=True), env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads((run / "result.json").read_text())
        assert_same_scores(result["matrices"], reference["matrices"])  # to float32 rounding, as every resume
        assert_same_scores(result["summary"], reference["summary"])
        shutil.rmtree(run)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


_REGISTER_LOOP = """
import open_clip
from cifc_bench.diffusion import scoring
for _ in range(300):  # as each new run of a sweep does, in its own process
    open_clip.factory._MODEL_CONFIGS.pop(scoring._TINY_ARCH, None)
    scoring.register_open_clip_config(scoring._TINY_ARCH, scoring._TINY_CFG)
"""


def test_concurrent_runs_register_the_scorer_config_whole(tmp_path):
    """Two runs of a sweep start at once and register one open_clip config file: neither may read it torn
    (a plain write failed one run of four with a JSONDecodeError, the CI failure of stop 32)."""
    env = {**os.environ, "CIFC_BENCH_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _REGISTER_LOOP], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(f.name for f in (tmp_path / "scorers" / "configs").iterdir()) == [f"{scoring._TINY_ARCH}.json"]
