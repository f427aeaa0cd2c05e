"""``--log-to tensorboard``: a run writes TensorBoard event files that tensorboard's own reader loads, with
every training step's loss and each evaluation's summaries; a run without it writes nothing extra."""

from __future__ import annotations

import pytest

from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import tiny_run_config


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("method", ["finetune", pytest.param("cidm", marks=pytest.mark.slow)])
def test_tensorboard_gets_every_steps_loss_and_each_evaluations_summaries(method, tiny_protocol, tmp_path):
    result = run_benchmark(tiny_run_config(tiny_protocol, method=method, log_to=("tensorboard",), tracks=()),
                           tmp_path / "logged")
    assert list((tmp_path / "logged" / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(tmp_path / "logged" / "tensorboard")
    steps = sum(t["steps"] for t in result["tasks"])
    assert [s for s, _ in scalars["train/loss"]] == list(range(steps))  # one point per step, across tasks
    assert all(v > 0 for _, v in scalars["train/loss"])
    final = scalars["eval/ia/final"]
    assert [s for s, _ in final] == [0, 1, 2] and final[-1][1] == pytest.approx(result["summary"]["ia"]["final"])
    plain = run_benchmark(tiny_run_config(tiny_protocol, method=method, tracks=()), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tensorboard").exists() and plain["status"] == "completed"


def test_an_unknown_logger_is_named(tiny_protocol, tmp_path):
    from cifc_bench.core.registry import PluginError

    with pytest.raises(PluginError, match="tensorbord"):
        run_benchmark(tiny_run_config(tiny_protocol, log_to=("tensorbord",)), tmp_path / "x")
