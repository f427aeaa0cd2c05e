"""Leaderboard: mean ± std over seeds, filtering, reference rows and the three output formats."""

import copy
import json

import pytest

from cifc_bench.cli import main
from cifc_bench.reporting.leaderboard import leaderboard_tables, render
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import tiny_run_config


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, tiny_protocol):
    """One real run, copied into several seeds with edited scores so the aggregates are hand-checkable."""
    root = tmp_path_factory.mktemp("results")
    real = run_benchmark(tiny_run_config(tiny_protocol, method="base"), root / "tiny" / "base" / "real")
    for seed, final in ((1, 0.5), (2, 0.7)):
        r = copy.deepcopy(real)
        r["run_info"]["method"], r["run_info"]["seed"] = "fake", seed
        r["run_info"]["config"] = {**r["run_info"]["config"], "method": "fake", "seed": seed}  # as a real run has it
        r["run_info"]["git"]["dirty"] = False
        r["matrices"]["ia"][-1] = [final, final, final]
        for cell, values in r["per_image"]["ia"].items():  # each image of the final model scores the same
            if cell.startswith("2,"):
                r["per_image"]["ia"][cell] = [final] * len(values)
        r["summary"]["ia"]["final"] = final
        r["neglect"]["matrices"]["cnr"][-1] = [1.0 - final]
        r["summary"]["cnr"]["final"] = 1.0 - final
        (root / "tiny" / "fake" / f"s{seed}").mkdir(parents=True)
        (root / "tiny" / "fake" / f"s{seed}" / "result.json").write_text(json.dumps(r))
    failed = copy.deepcopy(real)
    failed["status"], failed["run_info"]["method"] = "failed", "broken"
    (root / "tiny" / "broken").mkdir(parents=True)
    (root / "tiny" / "broken" / "result.json").write_text(json.dumps(failed))
    dirty = copy.deepcopy(real)
    dirty["run_info"]["method"], dirty["run_info"]["git"]["dirty"] = "dirtyrun", True
    (root / "tiny" / "dirty").mkdir(parents=True)
    (root / "tiny" / "dirty" / "result.json").write_text(json.dumps(dirty))
    return root


def test_mean_and_std_over_seeds(results_dir, tiny_protocol):
    tables, skipped, n = leaderboard_tables(str(tiny_protocol), results_dir, include_dirty=True)
    ia = tables["ia"].set_index("method")
    assert ia.loc["fake", "seeds"] == 2
    assert ia.loc["fake", "thing0"] == "60.0 ± 14.1"  # mean(50, 70), sample std 14.14
    assert ia.loc["fake", "final"] == "60.0 ± 14.1"
    assert "broken" not in ia.index and any("status 'failed'" in s for s in skipped)


def test_learning_column_is_the_diagonal_and_is_computed_for_files_that_predate_it(results_dir):
    """``learning`` (mean of the after-own-task scores) comes from the stored summary, or, in a result file
    written before it existed, from the file's matrix."""
    from cifc_bench.reporting.leaderboard import metric_table
    from cifc_bench.reporting.runs import RunRecord

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    old = copy.deepcopy(real)
    old["matrices"]["ia"] = [[0.2, None, None], [0.1, 0.4, None], [0.0, 0.3, 0.9]]
    del old["summary"]["ia"]["learning"]
    stored = copy.deepcopy(real)
    stored["run_info"]["method"] = "stored"
    stored["summary"]["ia"]["learning"] = 0.33
    table = metric_table("ia", [RunRecord(results_dir / "old", old), RunRecord(results_dir / "s", stored)],
                         ["a", "b", "c"], None).set_index("method")
    assert table.loc["base", "learning"] == "50.0"  # (0.2 + 0.4 + 0.9) / 3, from the matrix
    assert table.loc["base", "final"] == _pct(real["summary"]["ia"]["final"])  # stored values are kept
    assert table.loc["stored", "learning"] == "33.0"


def _pct(v):
    return f"{v * 100:.1f}"


def test_dirty_and_failed_runs_are_left_out_unless_asked(results_dir, tiny_protocol):
    tables, skipped, _ = leaderboard_tables(str(tiny_protocol), results_dir)
    assert "dirtyrun" not in set(tables["ia"]["method"])
    assert any("dirty source tree" in s for s in skipped)
    tables, _, _ = leaderboard_tables(str(tiny_protocol), results_dir, include_failed=True, include_dirty=True)
    assert {"dirtyrun", "broken", "fake"} <= set(tables["ia"]["method"])


@pytest.mark.parametrize("later", ["resumed", "tracks_added", "retention_added"])
def test_a_clean_run_continued_from_a_dirty_tree_is_left_out(results_dir, tmp_path, tiny_protocol, later):
    """Code that trained or scored part of a run is part of its provenance: a run begun on a clean commit but
    resumed (or given tracks or retention) from uncommitted code is left out like a dirty run."""
    from cifc_bench.reporting.runs import find_runs

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    real["run_info"]["git"]["dirty"] = False
    for name, dirty in (("clean", False), ("dirty", True)):
        r = copy.deepcopy(real)
        step = {"at": "2026-01-01T00:00:00", "git": {"sha": "0" * 40, "dirty": dirty}}
        r["run_info"][later] = step if later == "retention_added" else [{**step, "from_task": 1}]
        r["run_info"]["method"] = name
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(r))
    runs, skipped = find_runs(tmp_path, "tiny")
    assert [r.data["run_info"]["method"] for r in runs] == ["clean"]
    assert len(skipped) == 1 and "dirty" in skipped[0] and "--include-dirty" in skipped[0]


def test_runs_on_other_weights_of_the_base_model_are_left_out_with_the_fix(results_dir, tmp_path, tiny_protocol):
    """A re-pretrained base model (same name, new weights) makes older runs incomparable: only the newest
    run's weights count, and the message says to run again (rescoring cannot change the images)."""
    from cifc_bench.reporting.runs import find_runs

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    assert len(real["run_info"]["model_fingerprint"]) == 16  # every run records its base model's weights
    for name, fingerprint, started in (("old", "0" * 16, "2026-01-01T00:00:00"), ("new", "1" * 16, "2026-02-01T00:00:00"),
                                       ("new2", "1" * 16, "2026-01-15T00:00:00")):
        r = copy.deepcopy(real)
        r["run_info"].update(model_fingerprint=fingerprint, started=started, method=name)
        r["run_info"]["git"]["dirty"] = False
        (tmp_path / "tiny" / name).mkdir(parents=True)
        (tmp_path / "tiny" / name / "result.json").write_text(json.dumps(r))
    runs, skipped = find_runs(tmp_path, real["run_info"]["protocol"]["name"])
    assert sorted(r.data["run_info"]["method"] for r in runs) == ["new", "new2"]
    assert len(skipped) == 1 and "old" in skipped[0] and "other weights of model" in skipped[0]
    assert "cifc-bench run --method old" in skipped[0]


def test_runs_of_another_protocol_version_are_left_out_with_the_fix(results_dir, tmp_path, tiny_protocol):
    """A new protocol version asks other questions (synth10 3.0: another identity oracle, more multi-concept
    prompts): the leaderboard shows only the installed version's runs, and --include-old-versions marks the rest."""
    from cifc_bench.reporting.runs import find_runs

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    name, version = real["run_info"]["protocol"]["name"], real["run_info"]["protocol"]["version"]
    old = copy.deepcopy(real)
    old["run_info"].update(method="older")
    old["run_info"]["protocol"]["version"] = "0.0"
    old["run_info"]["git"]["dirty"] = False
    (tmp_path / "v" / "older").mkdir(parents=True)
    (tmp_path / "v" / "older" / "result.json").write_text(json.dumps(old))
    runs, skipped = find_runs(tmp_path / "v", name, protocol_version=version)
    assert runs == [] and len(skipped) == 1
    assert "version 0.0 of protocol" in skipped[0] and f"has version {version}" in skipped[0]
    assert "--include-old-versions" in skipped[0]
    runs, _ = find_runs(tmp_path / "v", name, protocol_version=version, include_old_versions=True)
    assert [r.label for r in runs] == ["older [old protocol 0.0]"]
    assert len(find_runs(tmp_path / "v", name)[0]) == 1  # no version asked: every version counts


def test_rows_are_sorted_by_the_metric_direction(results_dir, tiny_protocol):
    tables, _, _ = leaderboard_tables(str(tiny_protocol), results_dir, include_dirty=True)
    finals = [float(v.split(" ")[0]) for v in tables["ia"]["final"]]
    assert finals == sorted(finals, reverse=True)  # higher is better for IA


def test_neglect_table_and_optional_metrics_appear_when_runs_have_them(results_dir, tiny_protocol, capsys):
    tables, _, _ = leaderboard_tables(str(tiny_protocol), results_dir, include_dirty=True)
    assert list(tables) == ["ia", "ia:intervals", "ta", "ta:intervals", "cnr", "cnr:intervals", "cost"]  # no ia_dino
    cnr = tables["cnr"].set_index("method")
    assert cnr.loc["fake", "q0"] == "40.0 ± 14.1" and cnr.loc["fake", "cnr final"] == "40.0 ± 14.1"
    finals = [float(v.split(" ")[0]) for v in tables["cnr"]["cnr final"]]
    assert finals == sorted(finals)  # lower neglect first
    assert main(["leaderboard", "--protocol", str(tiny_protocol), "--results", str(results_dir), "--include-dirty",
                 "--format", "csv"]) == 0
    assert ",cnr" in capsys.readouterr().out


def test_cost_table_sums_the_runs_timings(results_dir, tiny_protocol):
    import datetime

    from cifc_bench.reporting.leaderboard import cost_table
    from cifc_bench.reporting.runs import RunRecord

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    runs = []
    for k, (train, minutes) in enumerate(((30.0, 2.0), (90.0, 4.0))):
        r = copy.deepcopy(real)
        for t in r["tasks"]:
            t["train_seconds"], t["eval_seconds"] = train / len(r["tasks"]), 60.0
        start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        r["run_info"]["started"] = start.isoformat()
        r["run_info"]["finished"] = (start + datetime.timedelta(minutes=minutes)).isoformat()
        runs.append(RunRecord(results_dir / f"x{k}", r))
    row = cost_table(runs).set_index("method").loc["base"]
    assert row["seeds"] == 2 and row["wall min"] == "3.0 ± 1.4" and row["train min"] == "1.0 ± 0.7"
    assert row["eval min"] == f"{len(real['tasks']):.1f} ± 0.0" and row["device"] == "cpu"
    with_slow = cost_table([*runs, RunRecord(results_dir / "slow", {**runs[0].data, "run_info": {
        **runs[0].data["run_info"], "method": "slow", "finished": "2026-01-01T01:00:00+00:00"}})])
    assert list(with_slow["method"]) == ["base", "slow"]  # fastest first


def test_cifc10_reference_rows_in_all_formats(tmp_path, capsys):
    for fmt, marker in (("md", "| [paper] CIDM (SD-1.5, reported)"), ("csv", "\"[paper] CIDM (SD-1.5, reported)\",1,"),
                        ("latex", r"\begin{tabular}")):
        assert main(["leaderboard", "--protocol", "cifc10", "--results", str(tmp_path), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert marker in out
        assert "78.0" in out and "74.8" in out  # CIDM's reported IA and TA averages
        assert "[paper] LoRA-M (SD-1.5, reported)" in out  # IA table only
    tables, _, _ = leaderboard_tables("cifc10", tmp_path)
    cidm = tables["ia"].set_index("method").loc["[paper] CIDM (SD-1.5, reported)"]
    assert cidm["dog"] == "83.6" and cidm["ink_painting"] == "75.9" and cidm["final"] == "78.0"


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError, match="--format 'html'"):
        render({}, "html")


def test_runs_of_an_older_method_implementation_are_left_out_with_a_note(results_dir, tmp_path, tiny_protocol):
    """Runs record their method's implementation version; a leaderboard never mixes two versions of a method."""
    import shutil

    from cifc_bench.methods.finetune import SequentialFinetune

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    root = tmp_path / "results"
    shutil.copytree(results_dir, root)
    for version in (SequentialFinetune.version - 1, SequentialFinetune.version):
        r = copy.deepcopy(real)
        r["run_info"].update(method="finetune", method_version=version)
        (root / "tiny" / "finetune" / f"v{version}").mkdir(parents=True)
        (root / "tiny" / "finetune" / f"v{version}" / "result.json").write_text(json.dumps(r))
    tables, skipped, _ = leaderboard_tables(str(tiny_protocol), root, include_dirty=True)
    ia = tables["ia"].set_index("method")
    assert ia.loc["finetune", "seeds"] == 1  # the current version's run only
    assert any(f"made with version {SequentialFinetune.version - 1} of method 'finetune'" in s and
               "--include-old-versions" in s for s in skipped)
    tables, _, _ = leaderboard_tables(str(tiny_protocol), root, include_dirty=True, include_old_versions=True)
    ia = tables["ia"].set_index("method")
    assert ia.loc["finetune", "seeds"] == 1 and ia.loc[f"finetune [old v{SequentialFinetune.version - 1}]", "seeds"] == 1


def test_interval_table_marks_the_best_method_and_the_ones_it_cannot_be_told_from(results_dir, tiny_protocol):
    tables, _, _ = leaderboard_tables(str(tiny_protocol), results_dir, include_dirty=True)
    ia = tables["ia:intervals"].set_index("method")
    # "fake": finals 0.5 and 0.7 on every concept over 2 seeds; its mean is 60.0 and the seeds disagree by 20 points
    import re

    mean, low, high = (float(x) for x in re.match(r"([-\d.]+) \[([-\d.]+), ([-\d.]+)\]", ia.loc["fake", "final"]).groups())
    assert mean == 60.0 and low < 50.0 and high > 70.0  # 2 seeds: a wide t interval, not the ±7 of a naive one
    assert sum("★" in v for v in ia["final"]) == 1
    records = [[int(n) for n in v.split("-")] for v in ia["W-T-L (final)"]]
    assert all(sum(r) == len(ia) - 1 for r in records)  # every other method, won, tied or lost to once
    assert "INTERVAL" not in render(tables, "md") and "mean [95 % interval]" in render(tables, "md")


def test_html_page_has_every_table_and_the_plots(results_dir, tiny_protocol, tmp_path, capsys):
    out = tmp_path / "lb"
    assert main(["leaderboard", "--protocol", str(tiny_protocol), "--results", str(results_dir), "--format", "html",
                 "--out", str(out), "--include-dirty"]) == 0
    page = (out / "index.html").read_text()
    for name in ("plasticity.png", "matrices.png", "neglect.png"):
        assert f"src='assets/{name}'" in page and (out / "assets" / name).stat().st_size > 2000, name
    assert page.count("<table") == len(leaderboard_tables(str(tiny_protocol), results_dir, include_dirty=True)[0])
    assert "IA: mean [95 % interval]" in page and "Left out" in page and "status &#x27;failed&#x27;" in page
    assert main(["leaderboard", "--protocol", str(tiny_protocol), "--results", str(results_dir), "--format", "md",
                 "--out", str(tmp_path / "lb.md")]) == 0
    page = (tmp_path / "lb.md").read_text()
    assert page.startswith("<!-- generated by `cifc-bench leaderboard --protocol") and "\n### IA (x100" in page


def test_sweep_curves_join_runs_that_differ_in_one_numeric_argument():
    from cifc_bench.reporting.leaderboard_page import sweep_curves
    from cifc_bench.reporting.runs import RunRecord

    def run(method, **args):
        return RunRecord(path=None, data={"run_info": {"method": method, "method_args": args, "config": {}}})

    runs = [run("ewc"), run("ewc", ewc_lambda=10.0), run("ewc", ewc_lambda=1e5), run("ewc", ewc_lambda=10.0, lr=1.0),
            run("cidm", variant="paper"), run("cidm", variant="release"), run("cidm", tsp=False), run("lwf")]
    labels = {r.label: [r] for r in runs}
    assert sweep_curves(labels) == {("ewc", "ewc_lambda"): [(10.0, "ewc (ewc_lambda=10.0)"),
                                                            (1000.0, "ewc"),  # the default, not set by the run
                                                            (100000.0, "ewc (ewc_lambda=100000.0)")],
                                    # a run that changes lr too is no point of the λ curve, but one of lr's
                                    ("ewc", "lr"): [(1e-4, "ewc (ewc_lambda=10.0)"),
                                                    (1.0, "ewc (ewc_lambda=10.0, lr=1.0)")]}


def test_html_page_loads_in_headless_chromium_and_reports_a_missing_image(results_dir, tiny_protocol, tmp_path):
    from browser import console_errors, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    from cifc_bench.reporting.leaderboard_page import write_leaderboard_page

    page = write_leaderboard_page(str(tiny_protocol), results_dir, tmp_path / "lb", include_dirty=True)
    assert console_errors(page) == []
    (page.parent / "assets" / "neglect.png").unlink()
    assert any("neglect.png" in e for e in console_errors(page))


def test_interval_units_are_images_when_every_run_has_them_else_concepts(results_dir):
    import numpy as np

    from cifc_bench.reporting.intervals import has_image_units, interval_columns, unit_table
    from cifc_bench.reporting.runs import RunRecord

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    run = RunRecord(None, real)
    images = unit_table(run, "ia", "final", images=True)
    concepts = unit_table(run, "ia", "final")
    assert images.shape == (3 * 2,) and concepts.shape == (3,)  # 3 concepts x 2 prompts x 1 image
    assert np.allclose(images.reshape(3, 2).mean(1), concepts)
    forgot = unit_table(run, "ia", "forgetting", images=True)
    per = real["per_image"]["ia"]
    assert np.allclose(forgot[:4], np.array(per["0,0"] + per["1,1"]) - np.array(per["2,0"] + per["2,1"]))
    assert np.isnan(forgot[4:]).all()  # the concept learned last has no forgetting: left out for every run
    old = copy.deepcopy(real)
    del old["per_image"]
    assert has_image_units([run], "ia") and not has_image_units([run, RunRecord(None, old)], "ia")
    with_images, _ = interval_columns("ia", {"a": [run], "b": [RunRecord(None, real)]})
    mixed, _ = interval_columns("ia", {"a": [run], "b": [RunRecord(None, old)]})
    assert with_images["final"]["a"] != mixed["final"]["a"]  # 6 image units against 3 concept units


def test_neglect_intervals_use_final_images_and_name_the_methods_that_differ(results_dir, tiny_protocol):
    from cifc_bench.reporting.intervals import NEGLECT_INTERVALS

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    flags = real["neglect"]["per_image"]["cnr"]
    assert list(flags) == ["0"] and len(flags["0"]) == real["neglect"]["images_per_prompt"]
    assert sum(flags["0"]) / len(flags["0"]) == real["neglect"]["matrices"]["cnr"][-1][0]
    root = results_dir.parent / "neglect-results"
    for method, rate, seeds in (("never", 0, (1, 2, 3)), ("always", 1, (1, 2, 3)), ("half", None, (1, 2, 3))):
        for seed in seeds:
            r = copy.deepcopy(real)
            r["run_info"]["method"], r["run_info"]["seed"], r["run_info"]["git"]["dirty"] = method, seed, False
            r["run_info"]["config"] = {**r["run_info"]["config"], "method": method, "seed": seed}
            n = 20  # as if the run had drawn 20 images of its multi-concept prompt
            r["neglect"]["per_image"]["cnr"]["0"] = [bool(rate) if rate is not None else (k + seed) % 2 == 0
                                                     for k in range(n)]
            (root / method / f"s{seed}").mkdir(parents=True)
            (root / method / f"s{seed}" / "result.json").write_text(json.dumps(r))
    table = leaderboard_tables(str(tiny_protocol), root)[0][NEGLECT_INTERVALS].set_index("method")
    assert table.loc["never", "cnr final"].startswith("0.0 [") and table.loc["never", "cnr final"].endswith("★")
    assert sorted(table.loc["always", "cnr differs at 95 % from"].split(", ")) == ["half", "never"]
    assert table.loc["always", "cnr final"].startswith("100.0 [")


def test_effects_table_pairs_a_switch_with_its_reference_and_checks_the_papers_direction(results_dir):
    """An ablation's effect is changed − reference, paired by unit: a known shift of every final score comes
    back with an interval around it, and the paper's direction is called agreed, opposed or unresolved."""
    from cifc_bench.reporting.intervals import effects_table
    from cifc_bench.reporting.runs import RunRecord

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())

    def runs(method, args, shift):
        out = []
        for seed in (0, 1):
            r = copy.deepcopy(real)
            r["run_info"].update(method=method, method_args=args, seed=seed)
            r["matrices"]["ia"][-1] = [v + shift + 0.01 * seed for v in r["matrices"]["ia"][-1]]
            for cell, values in r["per_image"]["ia"].items():
                if cell.startswith("2,"):
                    r["per_image"]["ia"][cell] = [v + shift + 0.01 * seed for v in values]
            out.append(RunRecord(results_dir / f"{method}-{len(args)}-{shift}-{seed}", r))
        return out

    table = effects_table("ia", [*runs("cidm", {"lr": 0.001}, 0.0), *runs("cidm", {"lr": 0.001, "tsp": False}, -0.1),
                                 *runs("cidm", {"lr": 0.001, "tsh": False}, 0.1),
                                 *runs("cidm", {"lr": 0.001, "ewa": False}, 0.0),
                                 *runs("cidm", {"lr": 0.002, "tsp": False, "tsh": False}, 0.0)]).set_index("changed")
    tsp, tsh, ewa = (table.loc[label] for label in ("cidm (lr=0.001, tsp=False)", "cidm (lr=0.001, tsh=False)",
                                                    "cidm (ewa=False, lr=0.001)"))
    assert tsp["against"] == "cidm (lr=0.001)" and tsp["seeds"] == "2 paired"
    assert tsp["Δ final"].startswith("-10.0 [") and tsp["Δ final"].endswith("*")
    assert tsp["same direction"] == "yes" and "Table 3" in tsp["paper"]
    assert tsh["Δ final"].startswith("+10.0 [") and tsh["same direction"] == "no"
    assert ewa["same direction"] == "not resolved" and not ewa["Δ final"].endswith("*")
    assert "cidm (lr=0.002, tsh=False, tsp=False)" not in table.index  # two arguments changed: no reference
    plain = effects_table("ia", [*runs("fake", {}, 0.0), *runs("fake", {"k": 1}, 0.1)])
    assert list(plain["changed"]) == ["fake (k=1)"] and "paper" not in plain.columns


def test_effects_pair_by_seed_when_both_configurations_ran_the_same_seeds(results_dir):
    """A seed effect that both configurations share (same initialisation, data order, noise) cancels when the
    effect is taken seed by seed: with a large shared seed effect the seed-paired interval is far narrower than
    treating the seeds as independent, and still covers the true shift. A one-seed sweep point is compared with
    the reference at that seed alone (against all three, its seed's deviation would become the effect); only
    disjoint seed sets are compared as independent seeds."""
    import numpy as np

    from cifc_bench.reporting.intervals import effects_table
    from cifc_bench.reporting.runs import RunRecord

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    rng = np.random.default_rng(0)
    seed_effect = {0: -0.2, 1: 0.0, 2: 0.2, 3: -0.1, 4: 0.1}

    def run(args, shift, seed):
        r = copy.deepcopy(real)
        r["run_info"].update(method="fake", method_args=args, seed=seed)
        for cell, values in r["per_image"]["ia"].items():
            if cell.startswith("2,"):
                r["per_image"]["ia"][cell] = [v + shift + seed_effect[seed] + 0.005 * rng.standard_normal()
                                              for v in values]
        r["matrices"]["ia"][-1] = [v + shift + seed_effect[seed] for v in r["matrices"]["ia"][-1]]
        return RunRecord(results_dir / f"fake-{len(args)}-{seed}-{shift}", r)

    def bounds(cell):
        low, high = cell.split("[")[1].split("]")[0].split(",")
        return float(low), float(high)

    ref = [run({}, 0.0, s) for s in (0, 1, 2)]
    paired = effects_table("ia", [*ref, *(run({"k": 1}, 0.05, s) for s in (0, 1, 2))]).iloc[0]
    independent = effects_table("ia", [*ref, *(run({"k": 1}, 0.05, s) for s in (3, 4))]).iloc[0]
    one_seed = effects_table("ia", [*ref, run({"k": 1}, 0.05, 0)]).iloc[0]
    assert paired["seeds"] == "3 paired" and independent["seeds"] == "2 vs 3" and one_seed["seeds"] == "1 paired"
    (lp, hp), (li, hi) = bounds(paired["Δ final"]), bounds(independent["Δ final"])
    assert lp <= 5.0 <= hp and paired["Δ final"].endswith("*"), paired["Δ final"]
    assert (hp - lp) * 5 < hi - li, (paired["Δ final"], independent["Δ final"])
    lo, ho = bounds(one_seed["Δ final"])  # seed 0 sits 20 points below the seeds' mean: unpaired reads about -15
    assert lo <= 5.0 <= ho and one_seed["Δ final"].endswith("*"), one_seed["Δ final"]


def test_intervals_are_clipped_to_the_values_a_metric_can_take():
    import numpy as np

    from cifc_bench.evaluation.metrics import value_bounds
    from cifc_bench.reporting.intervals import interval_cells, summary_bounds

    table = {"m": np.array([[100.0, 100.0, 0.0]])}  # one seed, three units: the raw interval leaves [0, 100]
    raw = interval_cells(table, True)["m"]
    low, high = (float(v) for v in raw.split("[")[1].rstrip("]").split(","))
    assert low < 0.0 or high > 100.0, raw
    assert interval_cells(table, True, (0.0, 100.0))["m"].endswith(f"[{max(low, 0):.1f}, {min(high, 100):.1f}]")
    assert value_bounds("ia") == (-1.0, 1.0) and value_bounds("editing/outside_exact") == (0.0, 1.0)
    assert value_bounds("no_such_metric") is None
    assert summary_bounds("final", (0.0, 1.0), 100.0) == (0.0, 100.0)
    assert summary_bounds("forgetting", (0.0, 1.0), 100.0) == (-100.0, 100.0)


def _as_method(real: dict, method: str, seed: int, reference: bool) -> dict:
    """A copy of the committed-looking run ``real`` as a clean run of ``method``; ``replay`` at its present
    version (runs of older versions are left out)."""
    from cifc_bench.methods.replay import Replay

    r = copy.deepcopy(real)
    r["run_info"].update(method=method, seed=seed, reference=reference)
    if method == "replay":
        r["run_info"]["method_version"] = Replay.version
    r["run_info"]["config"] = {**r["run_info"]["config"], "method": method, "seed": seed}
    r["run_info"]["git"]["dirty"] = False
    return r


def test_a_reference_is_shown_apart_and_never_ranked(results_dir, tmp_path, tiny_protocol):
    """``replay`` breaks the no-replay rule on purpose: its row is labelled and takes no ★, ≈ or win/tie/loss,
    even where it scores best."""
    from cifc_bench.reporting.intervals import interval_table
    from cifc_bench.reporting.runs import REFERENCE_MARK, find_runs

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    root = tmp_path / "ref"
    for seed, (method, final, reference) in enumerate((("replay", 0.99, True), ("low", 0.2, False),
                                                        ("high", 0.6, False))):
        r = _as_method(real, method, seed, reference)
        for cell, values in r["per_image"]["ia"].items():
            if cell.startswith("2,"):
                r["per_image"]["ia"][cell] = [final + 0.01 * k for k in range(len(values))]
        (root / method).mkdir(parents=True)
        (root / method / "result.json").write_text(json.dumps(r))
    runs, _ = find_runs(root, real["run_info"]["protocol"]["name"])
    table = interval_table("ia", runs).set_index("method")
    ref = f"replay {REFERENCE_MARK}"
    assert ref in table.index and "★" not in table.loc[ref, "final"] and "≈" not in table.loc[ref, "final"]
    assert table.loc["high", "final"].endswith("★")


def test_every_method_is_placed_between_base_and_the_replay_reference(results_dir, tmp_path):
    """With ``base`` and ``replay`` both run, each metric table reads every method's final as a fraction of the
    way from base (0) to replay (1); without replay there is no such column, and where replay is not above base
    at 95 % there is no scale (its row says so), since the fractions would be multiples of noise."""
    from cifc_bench.reporting.leaderboard import BETWEEN, NO_SCALE, metric_table
    from cifc_bench.reporting.runs import REFERENCE_MARK, find_runs

    real = json.loads(next(results_dir.rglob("real/result.json")).read_text())
    last = len(real["concepts"]) - 1

    def table(root, finals):
        for seed, (method, final) in enumerate(finals.items()):
            r = _as_method(real, method, seed, method == "replay")
            r["summary"]["ia"]["final"] = final
            r["matrices"]["ia"][-1] = [final] * len(real["concepts"])
            for cell, values in r["per_image"]["ia"].items():  # the units the interval resamples
                if cell.startswith(f"{last},"):
                    r["per_image"]["ia"][cell] = [final + 0.05 * ((3 * k + 2 * seed) % 5 - 2) for k in range(len(values))]
            (root / method).mkdir(parents=True)
            (root / method / "result.json").write_text(json.dumps(r))
        runs, _ = find_runs(root, real["run_info"]["protocol"]["name"])
        return runs, metric_table("ia", runs, real["concepts"], None).set_index("method")

    runs, scaled = table(tmp_path / "between", {"base": 0.2, "replay": 0.8, "mid": 0.5, "worse": 0.1})
    assert scaled.loc["mid", BETWEEN] == "0.50" and scaled.loc["worse", BETWEEN] == "-0.17"
    assert scaled.loc["base", BETWEEN] == "0.00" and scaled.loc[f"replay {REFERENCE_MARK}", BETWEEN] == "1.00"
    without = metric_table("ia", [r for r in runs if r.data["run_info"]["method"] != "replay"], real["concepts"], None)
    assert BETWEEN not in without.columns
    _, flat = table(tmp_path / "flat", {"base": 0.2, "replay": 0.21, "mid": 0.5})  # replay learned next to nothing
    assert flat.loc[f"replay {REFERENCE_MARK}", BETWEEN] == NO_SCALE and flat.loc["mid", BETWEEN] == "–"
    from cifc_bench.reporting.leaderboard import base_to_reference

    finals = {"base": 0.2, f"replay (budget=task, lr=0.001) {REFERENCE_MARK}": 0.3,
              f"replay (lr=0.001) {REFERENCE_MARK}": 0.8, "mid": 0.5}
    assert base_to_reference(finals)["mid"] == "0.50"  # the default replay bounds, whatever the rows' order


def test_runs_of_another_task_order_are_compared_only_in_the_order_tables(results_dir, tmp_path, tiny_protocol):
    """A reversed run learns another concept last, which has no forgetting: pooled into the ranked tables it would
    shrink every row's units and could take a ★ that no other method's order competed for. The ranked tables
    stay what they are without it, the order table compares it, and ``task_order`` ranks that order's runs."""
    import shutil

    from cifc_bench.reporting.intervals import INTERVALS
    from cifc_bench.reporting.orders import ORDERS
    from cifc_bench.reporting.results_data import load_results

    root = tmp_path / "results"
    shutil.copytree(results_dir, root)
    before, _, _ = leaderboard_tables(str(tiny_protocol), root, include_dirty=True)
    for seed in (1, 2):
        r = json.loads((root / "tiny" / "fake" / f"s{seed}" / "result.json").read_text())
        r["run_info"]["config"]["task_order"] = "reversed"
        r["concepts"] = r["concepts"][::-1]
        (root / "tiny" / "fake" / f"order=reversed_s{seed}").mkdir()
        (root / "tiny" / "fake" / f"order=reversed_s{seed}" / "result.json").write_text(json.dumps(r))
    after, _, n = leaderboard_tables(str(tiny_protocol), root, include_dirty=True)
    assert n == 6  # every order counts: real, fake × 2 seeds × 2 orders, dirtyrun
    for key in ("ia", "ia" + INTERVALS):
        assert after[key].equals(before[key]), key
    assert ORDERS + "ia" not in before and after[ORDERS + "ia"].loc[0, "method"] == "fake"
    reversed_, _, _ = leaderboard_tables(str(tiny_protocol), root, include_dirty=True, task_order="reversed")
    assert list(reversed_["ia"]["method"]) == ["fake [order reversed]"]
    frame = load_results(root, protocol=str(tiny_protocol), include_dirty=True)
    assert sorted(frame.drop_duplicates("run")["task_order"]) == ["protocol"] * 4 + ["reversed"] * 2
    with pytest.raises(SystemExit):
        main(["leaderboard", "--protocol", str(tiny_protocol), "--results", str(root), "--task-order", "backwards"])
