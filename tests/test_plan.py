"""``run --dry-run``: the counted work equals what a run does, and the warm-up gives an estimate."""

import dataclasses
import math
from pathlib import Path

import pytest

from cifc_bench.cli import main
from cifc_bench.evaluation.image_cache import MULTI
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.plan import estimate_seconds, work_plan
from cifc_bench.run.setup import resolve_run
from cifc_bench.testing import tiny_run_config


@pytest.mark.parametrize("eval_schedule", ["each-task", "final"])
def test_counted_work_equals_what_a_run_generates_and_trains(tiny_protocol, tmp_path, eval_schedule):
    config = tiny_run_config(tiny_protocol, method="base", eval_schedule=eval_schedule, multi_images_per_prompt=3)
    resolved, spec, _, budgets = resolve_run(config)
    plan = work_plan(resolved, spec.bind(Path("."), check=False), budgets)
    result = run_benchmark(config, tmp_path / "run")
    images = tmp_path / "run" / "images"
    concept = [len([p for p in (images / f"after_task_{j:02d}").glob("*/*.png") if p.parent.name != MULTI])
               for j in range(len(budgets))]
    multi = [len(list((images / f"after_task_{j:02d}" / MULTI).glob("*.png"))) for j in range(len(budgets))]
    assert list(plan.concept_images) == concept and list(plan.multi_images) == multi
    assert sum(multi) > 0 and (eval_schedule == "each-task") == (concept[0] > 0)
    assert list(plan.train_steps) == [t["steps"] for t in result["tasks"]]
    calibration = result["neglect"]["calibration"]
    assert plan.calibration_images == calibration["n_images"] * len(calibration["thresholds"])


def test_dry_run_on_cifc10_counts_both_schedules_without_data_or_model(capsys):
    """The issue's figures: CIDM's release schedule, 55,000 images after each task, 10,000 at the end only."""
    assert main(["run", "--method", "cidm", "--protocol", "cifc10", "--dry-run", "--warmup-steps", "0",
                 "--device", "cpu", "--tracks", "none"]) == 0
    out = capsys.readouterr().out
    assert "training: 8,075 steps over 10 tasks" in out
    assert "55,000 concept images" in out and "10,000 concept images" in out
    # retention: 50 generic prompts after each of the 10 evaluated states and once by the base model, 550 images
    assert "500 retention images (generic prompts) and the base model's 50" in out
    assert f"{5_573_600 + 550 * 50 * 2:,} UNet passes" in out and "eval schedule final (with --eval-schedule final)" in out
    # the tracks (default: both): 4 inputs per learned style (36 after each task) and object (184); style
    # transfer at strength 0.6 denoises 30 of the 50 steps
    assert main(["run", "--method", "cidm", "--protocol", "cifc10", "--dry-run", "--warmup-steps", "0",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "220 track images (style transfer, editing; 10,280 sampler steps)" in out
    assert f"{5_573_600 + 550 * 50 * 2 + 2 * 10_280:,} UNet passes" in out


def test_counted_track_images_equal_what_a_run_generates(tmp_path):
    from cifc_bench.testing import make_tiny_protocol

    protocol = make_tiny_protocol(tmp_path, tracks=True)
    config = tiny_run_config(protocol, method="base", prompts_per_concept=1, num_inference_steps=5)
    resolved, spec, _, budgets = resolve_run(config)
    plan = work_plan(resolved, spec.bind(protocol.with_name("tiny-data")), budgets)
    run_benchmark(config, tmp_path / "run")
    made = [len(list((tmp_path / "run" / "images" / f"after_task_{j:02d}").glob("_*/*/*.png")))
            for j in range(len(budgets))]
    assert list(plan.track_images) == made == [2, 4, 6]  # editing: thing0, then thing1; style transfer: thing2
    assert plan.track_sampler_steps == 2 * 5 + 4 * 5 + (4 * 5 + 2 * 3)


def test_dry_run_warmup_estimates_a_wall_time_and_writes_nothing(tiny_protocol, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tiny_protocol.with_name("tiny-data")
    assert main(["run", "--method", "finetune", "--protocol", str(tiny_protocol), "--data-dir", str(data),
                 "--model", "tiny-random", "--scorer", "tiny-random", "--steps", "2", "--resolution", "32",
                 "--num-inference-steps", "2", "--prompts-per-concept", "2", "--images-per-prompt", "1",
                 "--device", "cpu", "--dry-run", "--warmup-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "s per training step" in out and out.count("estimated wall time") == 2
    assert not any(tmp_path.iterdir()), "a dry run writes nothing where it runs"


def test_estimate_adds_each_kind_of_work_at_its_rate():
    from cifc_bench.run.plan import Warmup, WorkPlan

    plan = WorkPlan("each-task", (10, 20), 2, (4, 8), (0, 3), 5, 2, True)
    warm = Warmup(step=1.0, per_task=100.0, concept_image=0.5, multi_image=2.0, base_image=0.1, steps_measured=4)
    assert math.isclose(estimate_seconds(plan, warm), 30 + 200 + 6 + 6 + 0.5)
    assert plan.unet_passes == 20 * 2 * 2


def test_dry_run_refuses_resume(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--dry-run"]) == 2
    assert "--dry-run plans a new run" in capsys.readouterr().err


def test_the_eta_counts_the_work_left_which_grows_with_the_task_index():
    """After task 1 of a default synth10 run, the time left at the measured rates: evaluation grows with the
    task index, so extrapolating task 1 linearly (the old ETA) says far less than the work left."""
    from cifc_bench.core.config import RunSpec
    from cifc_bench.run.loop import measured_rates
    from cifc_bench.run.plan import remaining_seconds

    config, spec, _, budgets = resolve_run(RunSpec(method="finetune", protocol="synth10"))
    seq = spec.bind(spec.data_root(None))
    plan = work_plan(config, seq, budgets)
    step, image = 0.2, 0.05  # a run whose costs are exactly these
    images = [plan.concept_images[k] + plan.multi_images[k] + plan.track_images[k] + plan.retention_images[k]
              for k in range(10)]
    truth = [plan.train_steps[k] * step + images[k] * image for k in range(10)]
    rows = [{"index": 0, "steps": plan.train_steps[0], "train_seconds": plan.train_steps[0] * step,
             "eval_seconds": images[0] * image}]
    rates = measured_rates(plan, rows)
    assert rates == pytest.approx((step, image))
    eta = remaining_seconds(plan, 1, *rates)
    assert eta == pytest.approx(sum(truth[1:]))
    linear = truth[0] * 9  # the old ETA: task 1's time for each task left, short by the evaluation's growth
    assert eta - linear == pytest.approx(sum(images[k] - images[0] for k in range(1, 10)) * image) and eta > linear
    overlapped = remaining_seconds(plan, 1, *rates, overlapped=True)
    assert max(sum(truth[1:]) / 2, truth[-1]) < overlapped < eta  # two processes: never below half, never above one
    assert measured_rates(plan, []) is None
    assert remaining_seconds(plan, 10, *rates) == 0.0
    # with the worker, once all ten are trained the last state's evaluation is what is left
    assert remaining_seconds(plan, 10, *rates, overlapped=True) == pytest.approx(images[9] * image)


@pytest.mark.parametrize("method, args", [("cidm", {}), ("cidm", {"ccs": False}), ("lora-c", {}), ("finetune", {})])
def test_dry_run_counts_the_unet_passes_the_methods_samplers_make(method, args, tiny_protocol, tmp_path):
    """The dry run's count of the method's own UNet evaluations (CIDM's region synthesis: 2 (U + 1) per step;
    LoRA-C: one guided pass per stored adapter) equals what the method's generate makes, counted by a hook on
    the UNet, for every evaluation image of the last state."""
    import torch

    from cifc_bench.api import TrainBudget
    from cifc_bench.core.registry import load_method
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.evaluation.eval_requests import concept_requests, multi_requests

    config, spec, method_cls, budgets = resolve_run(tiny_run_config(tiny_protocol, method=method, method_args=args,
                                                                    eval_schedule="final", tracks=()))
    seq = spec.bind(tiny_protocol.with_name("tiny-data"))
    plan = work_plan(config, seq, budgets, method_cls=method_cls)
    torch.manual_seed(0)
    m = load_method(method)(load_bundle("tiny-random"), **config.method_args)
    for task in seq.tasks:
        m.learn_task(task, TrainBudget(steps=1, batch_size=2, resolution=32, seed=task.index))
    counted = [0]
    m.bundle.unet.register_forward_pre_hook(lambda mod, inputs: counted.__setitem__(0, counted[0] + len(inputs[0])))
    requests = [r for c in seq.concepts for r, _ in concept_requests(seq.name, c, config.prompts_per_concept,
                                                                     config.images_per_prompt)]
    requests += [r for q in range(len(seq.multi_concept_prompts))
                 for r, _ in multi_requests(seq, q, config.multi_images_per_prompt)]
    with torch.no_grad():
        m.generate(requests, config.generation())
    assert plan.method_unet_passes == counted[0] > 0
    if method == "cidm" and not args:  # region synthesis costs more than the shared sampler's count
        assert plan.method_unet_passes > plan.unet_passes - config.calibration_images * len(seq.multi_concept_prompts) \
            * config.num_inference_steps * 2


def test_the_eta_after_task_1_comes_within_25_percent_of_a_measured_default_run():
    """Before any evaluation is timed (with the worker, task 1's images are being made while task 2 trains),
    an image's cost comes from the training step's by their UNet passes. On the committed timings of a default
    synth10 run (measured alone), the ETA printed after task 1 is within 25 % of the run's loop time; the
    linear ETA printed before (task 1's training for each task left) was short by half."""
    import json
    import re

    from cifc_bench.core.config import RunSpec
    from cifc_bench.run.loop import measured_rates
    from cifc_bench.run.plan import prior_image_seconds, remaining_seconds

    timings = json.loads((Path(__file__).parents[1] / "results" / "benchmarks" /
                          "2026-12-07-synth10-finetune-default.json").read_text())
    actual = float(re.search(r"\((\d+) s\)", timings["loop_seconds"]).group(1))
    config, spec, _, budgets = resolve_run(RunSpec(method="finetune", protocol="synth10"))
    plan = work_plan(config, spec.bind(spec.data_root(None)), budgets)
    first = timings["tasks"][0]
    row = {"index": 0, "steps": first["steps"], "train_seconds": first["train_seconds"]}  # trained, not evaluated
    assert measured_rates(plan, [row]) is None  # without a prior nothing is known of the images
    step, image = measured_rates(plan, [row], prior=lambda s: prior_image_seconds(config, s))
    assert image == pytest.approx(step * 10 * 2 / (3 * 4))  # 10 sampler steps under guidance; batches of 4
    printed = first["train_seconds"] + remaining_seconds(plan, 1, step, image, overlapped=True)
    assert abs(printed / actual - 1) <= 0.25
    linear = first["train_seconds"] * len(plan.train_steps)
    assert abs(linear / actual - 1) > 0.25  # the check can fail: the old estimate does


def test_dry_run_estimates_from_this_devices_bench_figures(tmp_path, monkeypatch, capsys, tiny_protocol):
    """With a ``cifc-bench bench`` JSON of this device in results/gpu-check, ``--dry-run`` estimates the run from
    its figures, without a warm-up: the method's training step scaled to the run's batch, CIDM's two-box images
    at U + 2 = 4 UNet passes a step against the shared sampler's 2, images scaled to the run's sampler steps."""
    import json

    from cifc_bench.cli.run import device_name
    from cifc_bench.core.config import RunSpec
    from cifc_bench.core.registry import load_method
    from cifc_bench.run.plan import latest_bench, warmup_from_bench
    from cifc_bench.testing import tiny_run_flags

    bench = {"device": {"kind": "cpu", "name": device_name("cpu")},
             "settings": {"resolution": 32, "steps": 4, "train_batch": 1, "train_steps": 3},
             "precisions": {"fp32": {"concept_image_s": 0.5, "ccs_image_s": 1.0}},
             "training": {"cidm": {"step_s": 0.2, "per_task_s": 1.0}}}
    folder = tmp_path / "results" / "gpu-check"
    folder.mkdir(parents=True)
    (folder / "2026-12-07-this-cpu-bench.json").write_text(json.dumps(bench))
    (folder / "2026-12-08-this-cpu-bench-smoke.json").write_text(json.dumps(bench))  # a smoke run is no figure
    monkeypatch.chdir(tmp_path)
    found = latest_bench(device_name("cpu"))
    assert found is not None and found[0].name == "2026-12-07-this-cpu-bench.json"
    assert latest_bench("another device") is None
    config = resolve_run(RunSpec(method="cidm", protocol=str(tiny_protocol), resolution=32, num_inference_steps=2,
                                 batch_size=2, steps=2, model="tiny-random", scorer="tiny-random"))[0]
    warm = warmup_from_bench(bench, config, load_method("cidm"))
    assert warm.concept_image == pytest.approx(0.25) and warm.multi_image == pytest.approx(0.5)  # 2 of 4 steps
    assert warm.step == pytest.approx(0.4) and warm.per_task == pytest.approx(0.6)  # batch 2 against 1
    assert warmup_from_bench(bench, dataclasses.replace(config, resolution=64), load_method("cidm")) is None
    assert main(["run", *tiny_run_flags(tiny_protocol, method="cidm"), "--dry-run", "--warmup-steps", "0"]) == 0
    assert "from results/gpu-check/2026-12-07-this-cpu-bench.json" in capsys.readouterr().out
