"""``--eval-workers 1``: a second one-thread process generates the images of the state after task j while task
j+1 trains. The run's images and states equal a serial run's byte for byte, and its scores to float32 rounding
(the same comparison the distributed and kill tests make)."""

from __future__ import annotations

import json

import pytest

from cifc_bench.core.config import ConfigError, RunSpec
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import assert_same_files, assert_same_scores, tiny_run_config

pytestmark = pytest.mark.usefixtures("pinned_one_thread")


@pytest.mark.slow  # two runs per method (45 s): CI's slow step, beside the default one
@pytest.mark.parametrize("method", ["finetune", "cidm"])
def test_a_worker_gives_the_serial_runs_images_states_and_scores(method, tiny_protocol, tmp_path):
    serial = run_benchmark(tiny_run_config(tiny_protocol, method=method, eval_workers=0), tmp_path / "serial")
    overlapped = run_benchmark(tiny_run_config(tiny_protocol, method=method, eval_workers=1), tmp_path / "worker")
    assert overlapped["status"] == "completed"
    files = assert_same_files(tmp_path / "worker", tmp_path / "serial")
    assert sum(k.endswith(".png") for k in files) >= 10 and sum(k.endswith(".safetensors") for k in files) == 3
    assert_same_scores(overlapped["matrices"], serial["matrices"])
    assert_same_scores(overlapped["neglect"]["matrices"], serial["neglect"]["matrices"])
    assert [t["index"] for t in overlapped["tasks"]] == [0, 1, 2]  # rows written in task order
    assert all(t["eval_seconds"] > 0 and t["train_seconds"] > 0 for t in overlapped["tasks"])
    stored = json.loads((tmp_path / "worker" / "result.json").read_text())
    assert stored["run_info"]["config"]["eval_workers"] == 1


def test_eval_workers_is_0_or_1_and_not_part_of_a_runs_identity(tmp_path, tiny_protocol):
    from cifc_bench.core.results import run_identity

    with pytest.raises(ConfigError, match="--eval-workers 2: give 0"):
        RunSpec(eval_workers=2)
    a = {"run_info": {"protocol": {"name": "p", "version": "1"}, "method": "m", "config": {"eval_workers": 0}}}
    b = {"run_info": {"protocol": {"name": "p", "version": "1"}, "method": "m", "config": {"eval_workers": 1}}}
    assert run_identity(a) == run_identity(b)
