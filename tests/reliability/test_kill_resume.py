"""SIGKILL anywhere, then --resume: the result equals the uninterrupted run's, at 20 seeded kill points: 8
inside the atomic writes of result.json, a method state and an image (fault injection, one run each), and 12
at random times of one run killed over and over."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from cifc_bench.testing import assert_same_files, assert_same_scores, make_tiny_protocol

pytestmark = pytest.mark.slow

#: (kind, n): die just before the n-th write of that kind becomes visible
WRITE_KILLS = [("result", 1), ("result", 2), ("result", 4), ("state", 1), ("state", 3), ("image", 1), ("image", 4),
               ("image", 7)]
TIME_KILLS = 12
SEED = 2026


def _command(protocol, out, resume=False):
    base = [sys.executable, "-m", "cifc_bench.cli", "run"]
    if resume:
        return [*base, "--resume", str(out)]
    return [*base, "--method", "finetune", "--protocol", str(protocol), "--data-dir", str(protocol.with_name("tiny-data")),
            "--model", "tiny-random", "--scorer", "tiny-random", "--steps", "2", "--prompts-per-concept", "2",
            "--images-per-prompt", "1", "--resolution", "32", "--num-inference-steps", "2", "--calibration-images", "4",
            "--multi-images-per-prompt", "2", "--out", str(out)]


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIFC_BENCH_PROGRESS": "0", **extra}
    env.pop("CIFC_BENCH_FAULT", None)
    env.update(extra)
    return env


def _finish(protocol, out, env):
    """Resume (or, when the kill came before the first result.json, start again) until the run completes."""
    for _ in range(4):
        command = _command(protocol, out, resume=(out / "result.json").exists())
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            return json.loads((out / "result.json").read_text())
    raise AssertionError(f"{out} did not complete after resuming: {proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    protocol = make_tiny_protocol(root / "proto", n_concepts=3)
    env = _env(CIFC_BENCH_CACHE=str(root / "cache"))
    result = _finish(protocol, root / "reference", env)
    assert result["status"] == "completed"
    return protocol, env, root


def _same(run_dir, reference_dir):
    """The resumed run's images and states are the uninterrupted run's, byte for byte; its scores are equal
    to float32 rounding (``SCORE_TOL``)."""
    assert_same_files(run_dir, reference_dir)
    a, b = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference_dir))
    assert len(a["tasks"]) == len(b["tasks"])
    for key in ("matrices", "summary"):
        assert_same_scores(a[key], b[key], key)
    assert_same_scores(a["neglect"]["matrices"], b["neglect"]["matrices"], "neglect.matrices")


@pytest.mark.parametrize(("kind", "n"), WRITE_KILLS)
def test_kill_inside_an_atomic_write_then_resume(reference, kind, n):
    protocol, env, root = reference
    out = root / f"write-{kind}-{n}"
    proc = subprocess.run(_command(protocol, out), env={**env, "CIFC_BENCH_FAULT": f"kill:{kind}:{n}"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not any(p.name.endswith(".json") and p.stat().st_size == 0 for p in out.rglob("*"))  # no torn file
    _finish(protocol, out, env)
    _same(out, root / "reference")


def test_kills_at_random_times_then_resume(reference):
    """Runs killed again and again, at seeded random times of each process they take, until 12 kills really
    interrupted one; every run, finished by --resume, equals the uninterrupted one."""
    protocol, env, root = reference
    rng = random.Random(SEED)
    killed, chain = 0, 0
    out = root / "time-chain-0"
    while killed < TIME_KILLS:
        proc = subprocess.Popen(_command(protocol, out, resume=(out / "result.json").exists()), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=600)
        if proc.returncode == 0:  # this run got through: check it, then kill a new one
            _same(out, root / "reference")
            chain += 1
            assert chain < 6, "the kills did not interrupt the runs"
            out = root / f"time-chain-{chain}"
    _finish(protocol, out, env)
    _same(out, root / "reference")
