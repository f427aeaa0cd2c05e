"""A diverged run is a failure, never a score: it stops at the task and step where it broke, keeps the tasks
finished before, and no leaderboard lists it."""

import json

import pytest

from cifc_bench.cli import main
from cifc_bench.testing import make_tiny_protocol

LATE = '''
import torch
from cifc_bench.methods.finetune import SequentialFinetune


class LateNaN(SequentialFinetune):
    """Trains normally, then its LoRA turns NaN at the second task."""

    def learn_task(self, task, budget):
        super().learn_task(task, budget)
        if task.index == 1:
            with torch.no_grad():
                for p in self._lora_params():
                    p.fill_(float("nan"))
'''


def _run(protocol, out, *extra):
    return main(["run", "--protocol", str(protocol), "--data-dir", str(protocol.with_name("tiny-data")),
                 "--model", "tiny-random", "--scorer", "tiny-random", "--steps", "3", "--prompts-per-concept", "2",
                 "--images-per-prompt", "1", "--resolution", "32", "--num-inference-steps", "2", "--calibration-images",
                 "4", "--multi-images-per-prompt", "2", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("proto"), n_concepts=3)


def test_a_huge_learning_rate_fails_the_run_at_its_task_and_step(protocol, tmp_path, capsys):
    out = tmp_path / "results" / "tiny" / "finetune" / "diverged"
    assert _run(protocol, out, "--method", "finetune", "--method-args", "lr=1e6", "embedding_lr=1e6") == 3
    err = capsys.readouterr().err
    assert "the run failed: task 1 (thing0) diverged" in err and "lower them with --method-args" in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "DivergenceError: task 1 (thing0) diverged" in result["error"]
    assert result["run_info"]["method_args"] == {"lr": 1e6, "embedding_lr": 1e6}  # numbers, not '1e6'
    assert not (out / "state" / "after_task_00.safetensors").exists()  # a diverged state is never saved
    from cifc_bench.reporting.leaderboard import leaderboard_tables

    tables, skipped, n = leaderboard_tables(str(protocol), tmp_path / "results", include_dirty=True)
    assert n == 0 and any("status 'failed'" in s for s in skipped)


def test_a_state_that_turns_non_finite_keeps_the_tasks_finished_before(protocol, tmp_path, monkeypatch, capsys):
    (tmp_path / "late_nan.py").write_text(LATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert _run(protocol, out, "--method", "late_nan:LateNaN") == 3
    assert "task 2 (thing1) diverged: after its 3 training steps" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and len(result["tasks"]) == 1  # task 1 stays, scored
    assert result["matrices"]["ia"][0][0] is not None
    assert (out / "state" / "after_task_00.safetensors").exists()
    assert not (out / "state" / "after_task_01.safetensors").exists()


def test_flat_images_fail_the_evaluation(tmp_path):
    import numpy as np
    from PIL import Image

    from cifc_bench.api import DivergenceError
    from cifc_bench.evaluation.evaluate import check_images

    concept = type("C", (), {"name": "dog"})()
    black = [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 3
    with pytest.raises(DivergenceError, match="every one of the 3 images of concept 'dog' is a single flat colour"):
        check_images(black, concept, 0)
    check_images([*black, Image.fromarray(np.eye(8, dtype=np.uint8)[..., None].repeat(3, -1) * 255)], concept, 0)
