"""The continual loop: full matrices, schedules, the image cache, and kill-safe resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cifc_bench.core.config import ConfigError
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import tiny_run_config


def test_each_task_schedule_fills_the_lower_triangle(tmp_path, tiny_protocol):
    result = run_benchmark(tiny_run_config(tiny_protocol), tmp_path / "run")
    assert result["status"] == "completed"
    for metric in ("ia", "ta"):
        R = result["matrices"][metric]
        assert len(R) == 3 and all(len(row) == 3 for row in R)
        for j in range(3):
            for i in range(3):
                assert (R[j][i] is None) == (i > j)
        assert set(result["summary"][metric]) == {"final", "avg_incremental", "learning", "forgetting", "forgetting_max", "bwt"}
        assert result["summary"][metric]["forgetting"] == pytest.approx(
            sum(R[i][i] - R[-1][i] for i in range(2)) / 2)
    assert [t["index"] for t in result["tasks"]] == [0, 1, 2]
    assert all(t["trainable_params"] > 0 and t["stored_params"] > 0 and t["peak_rss_mb"] > 0 for t in result["tasks"])
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["matrices"] == result["matrices"]
    assert on_disk["run_info"]["git"].keys() == {"sha", "dirty"}
    assert on_disk["run_info"]["packages"]["torch"]
    # each image's own score, in the cells that learning and the final row read; their mean is the cell
    for metric in ("ia", "ta"):
        cells = result["per_image"][metric]
        assert sorted(cells) == ["0,0", "1,1", "2,0", "2,1", "2,2"]
        for cell, values in cells.items():
            j, i = map(int, cell.split(","))
            assert len(values) == 2 and sum(values) / 2 == pytest.approx(result["matrices"][metric][j][i], abs=1e-9)
    # 2 prompts x 1 image per concept, for every concept seen, after every task
    images = list((tmp_path / "run" / "images").rglob("*.png"))
    multi = [p for p in images if p.parent.name == "_multi"]
    assert len(images) - len(multi) == 2 * (1 + 2 + 3)
    # the multi-concept prompt (thing0 + thing1), 2 images, after tasks 2 and 3 only
    assert sorted(p.relative_to(tmp_path / "run" / "images").as_posix() for p in multi) == [
        f"after_task_{j:02d}/_multi/q000_s{k:03d}.png" for j in (1, 2) for k in range(2)]


def test_final_schedule_evaluates_only_after_the_last_task(tmp_path, tiny_protocol):
    result = run_benchmark(tiny_run_config(tiny_protocol, eval_schedule="final", method="base"), tmp_path / "run")
    R = result["matrices"]["ia"]
    assert all(v is None for row in R[:-1] for v in row) and all(v is not None for v in R[-1])
    assert result["summary"]["ia"]["forgetting"] is None and result["summary"]["ia"]["final"] is not None


def test_base_method_has_exactly_zero_forgetting(tmp_path, tiny_protocol):
    result = run_benchmark(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")
    assert result["summary"]["ia"]["forgetting"] == 0.0
    assert result["tasks"][0]["stored_params"] == 0


def test_rescoring_reuses_cached_images(tmp_path, tiny_protocol):
    from cifc_bench.evaluation.evaluate import evaluate_concept
    from cifc_bench.run.setup import load_context

    ctx = load_context(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")
    concept = ctx.sequence.concepts[0]
    ctx.method.learn_task(ctx.sequence.tasks[0], None)
    first = evaluate_concept(ctx, 0, concept, {})

    def fail(*args, **kwargs):
        raise AssertionError("generate() was called although every image is cached")

    ctx.method.generate = fail
    assert evaluate_concept(ctx, 0, concept, {}) == first


def test_an_existing_run_is_never_overwritten(tmp_path, tiny_protocol):
    run_benchmark(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        run_benchmark(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")


def test_resume_refuses_changed_settings(tmp_path, tiny_protocol):
    run_benchmark(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"steps \(run: 2, now: 5\)"):
        run_benchmark(None, tmp_path / "run", resume=True, given={"steps": 5})


def test_resume_refuses_a_base_model_whose_weights_changed(tmp_path, tiny_protocol):
    import json

    run_benchmark(tiny_run_config(tiny_protocol, method="base"), tmp_path / "run")
    result_file = tmp_path / "run" / "result.json"
    result = json.loads(result_file.read_text())
    result["run_info"]["model_fingerprint"] = "0" * 16  # as if the model was re-pretrained since
    result_file.write_text(json.dumps(result))
    with pytest.raises(ConfigError, match="began on other weights of model .* Start a new run with --out"):
        run_benchmark(None, tmp_path / "run", resume=True)
    assert json.loads(result_file.read_text()) == result  # the finished work is untouched


def test_bad_method_args_are_reported(tmp_path, tiny_protocol):
    with pytest.raises(ConfigError, match=r"method .finetune. rejected its arguments \{.rank.: .big.\}"):
        run_benchmark(tiny_run_config(tiny_protocol, method_args={"rank": "big"}), tmp_path / "run")


def _cli_run(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cifc_bench.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_mid_task_then_resume_gives_the_uninterrupted_numbers(tmp_path, tiny_protocol):
    data_dir = tiny_protocol.with_name("tiny-data")
    common = ["--method", "finetune", "--protocol", str(tiny_protocol), "--data-dir", str(data_dir),
              "--steps", "15", "--device", "cpu"]
    full = _cli_run([*common, "--out", str(tmp_path / "full")])
    killed = _cli_run([*common, "--out", str(tmp_path / "killed")])
    result_file = tmp_path / "killed" / "result.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill as soon as task 1 has finished, i.e. during task 2's training
        if result_file.exists() and len(json.loads(result_file.read_text())["tasks"]) >= 1:
            break
        assert killed.poll() is None, killed.communicate()[1][-2000:]
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    partial = json.loads(result_file.read_text())
    assert partial["status"] == "running" and 1 <= len(partial["tasks"]) < 3  # killed mid-run, file intact
    resumed = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "run", "--resume", str(tmp_path / "killed")],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert full.wait() == 0, full.communicate()[1][-2000:]
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads(result_file.read_text())
    assert b["status"] == "completed"
    assert a["matrices"] == b["matrices"]
    assert a["summary"] == b["summary"]


def test_unknown_method_args_are_rejected_not_ignored(tmp_path, tiny_protocol):
    with pytest.raises(ConfigError) as info:
        run_benchmark(tiny_run_config(tiny_protocol, method_args={"rnak": 8}), tmp_path / "run")
    assert str(info.value) == ("method 'finetune' has no argument(s) ['rnak']; it accepts: rank, lr, embedding_lr, "
                               "targets (--method-args KEY=VALUE)")


def test_images_returned_while_their_pngs_are_written_equal_the_files(tmp_path):
    """The writer thread saves while the next batch samples; what the harness scores is what a later run
    (or a rescore) reads back from disk, pixel for pixel, and a second call reads instead of generating."""
    from types import SimpleNamespace

    import numpy as np
    from cifc_bench.methods.zero_shot import ZeroShot

    from cifc_bench.api import GenerationRequest, GenerationSettings
    from cifc_bench.core.images import load_rgb
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.evaluation.image_cache import generate_cached

    settings = GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=2)

    method = ZeroShot(load_bundle("tiny-random"))
    ctx = SimpleNamespace(method=method, settings=settings, config=SimpleNamespace(method="base"),
                          generate=lambda requests: method.generate(requests, settings))
    pairs = [(GenerationRequest(prompt=f"a dog {k}", seed=k), f"{k}.png") for k in range(5)]
    images = generate_cached(ctx, pairs, tmp_path, "test")
    on_disk = [np.asarray(load_rgb(tmp_path / name)) for _, name in pairs]
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(images, on_disk, strict=True))
    again = generate_cached(SimpleNamespace(**{**vars(ctx), "method": None}), pairs, tmp_path, "test")  # read back
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(again, on_disk, strict=True))


def test_a_resumed_task_reports_the_training_time_its_killed_process_saved(tmp_path, tiny_protocol, monkeypatch):
    """A state saved before a kill keeps its training seconds beside it (``after_task_NN.json``): the resumed run
    reports them, not a null that cost tables would sum as no time. The state file itself stays byte-identical."""
    from cifc_bench.run import loop

    config = tiny_run_config(tiny_protocol, eval_schedule="each-task", eval_workers=0)
    real, calls = loop.evaluate_task, []

    def killed_at_task_2(ctx, result, j, *args, **kwargs):
        calls.append(j)
        if j == 1 and len(calls) == 2:
            raise KeyboardInterrupt  # as a kill: nothing after the state of task 2 is written
        return real(ctx, result, j, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_task", killed_at_task_2)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "state" / "after_task_01.json").read_text())["train_seconds"]
    assert saved > 0 and len(json.loads((tmp_path / "run" / "result.json").read_text())["tasks"]) == 1
    result = run_benchmark(None, tmp_path / "run", resume=True)
    assert result["status"] == "completed"
    assert result["tasks"][1]["train_seconds"] == saved and result["tasks"][2]["train_seconds"] > 0
    assert [(r["from_task"], set(r["git"])) for r in result["run_info"]["resumed"]] == [(1, {"sha", "dirty"})]
    (tmp_path / "run" / "state" / "after_task_02.json").unlink()  # a state saved before its time was
    from cifc_bench.run.rundir import recorded_train_seconds

    assert recorded_train_seconds(tmp_path / "run" / "state" / "after_task_02.safetensors") is None
