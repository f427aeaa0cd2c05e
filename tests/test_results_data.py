"""Results as data: ``load_results`` gives every committed run at three levels, the leaderboard's numbers are
those of its DataFrame, and ``cifc-bench export`` writes parquet and csv."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cifc_bench import load_results
from cifc_bench.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "results" / "archive" / "synth10-2.0"  # protocol 2.0's runs
FINETUNE = RESULTS / "finetune"


def test_three_levels_of_the_committed_runs():
    runs = sorted(FINETUNE.rglob("result.json"))
    summary, matrix, image = (load_results([FINETUNE], level) for level in ("summary", "matrix", "image"))
    for frame in (summary, matrix, image):
        assert frame["run"].nunique() == len(runs) and set(frame["method"]) == {"finetune"}
        assert {"protocol", "protocol_version", "method_args", "seed", "identity"} <= set(frame.columns)
    data = json.loads(runs[0].read_text())
    run = str(runs[0].parent)
    cell = matrix[(matrix.run == run) & (matrix.metric == "ia") & (matrix.task == 9) & (matrix.concept == "ball1")]
    assert cell["value"].item() == data["matrices"]["ia"][9][0] and cell["task_name"].item() == "poster"
    final = summary[(summary.run == run) & (summary.metric == "identity_acc") & (summary.summary == "final")]
    assert final["value"].item() == data["summary"]["identity_acc"]["final"]
    images = image[(image.run == run) & (image.metric == "ia") & (image.task == 0) & (image.concept == "ball1")]
    assert images["value"].tolist() == data["per_image"]["ia"]["0,0"]
    neglect = matrix[(matrix.run == run) & (matrix.metric == "neglect/cnr_drawn")]
    assert set(neglect["concept"]) == {f"q{q}" for q in range(len(data["neglect"]["prompts"]))}
    with pytest.raises(ValueError, match="level='cells'"):
        load_results([FINETUNE], "cells")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_results(["no/such/folder"])


def test_the_leaderboards_numbers_are_its_dataframes():
    from cifc_bench.reporting.leaderboard import leaderboard_tables

    folders = [RESULTS / "finetune", RESULTS / "base", RESULTS / "lora-m"]
    tables, _, _ = leaderboard_tables("synth10", folders, include_old_versions=True, cost=False, references=False)
    summary = load_results(folders, "summary", protocol="synth10", include_old_versions=True)
    matrix = load_results(folders, "matrix", protocol="synth10", include_old_versions=True)
    checked = 0
    for _, row in tables["ia"].iterrows():
        name = row["method"]
        method, _, rest = name.partition(" ")
        if method not in ("finetune", "lora-m", "base") or not (rest.startswith("(lr=0.001) [") or rest.startswith("[")):
            continue  # the default configurations: their arguments are the protocol's lr alone
        args = summary.method_args.map(json.loads)
        plain = summary[(summary.method == method) & args.map(lambda a: set(a) <= {"lr"})]
        finals = plain[(plain.metric == "ia") & (plain.summary == "final")]["value"]
        assert row["final"].split(" ")[0] == f"{100 * finals.mean():.1f}", name
        m = matrix[(matrix.method == method) & matrix.method_args.map(lambda a: set(json.loads(a)) <= {"lr"})]
        ball1 = m[(m.metric == "ia") & (m.task == 9) & (m.concept == "ball1")]["value"]
        assert row["ball1"].split(" ")[0] == f"{100 * ball1.mean():.1f}", name
        checked += 1
    assert checked == 3


def test_the_interval_tables_final_is_the_summarys_final():
    """The interval tables resample images, but weight each concept equally: their point estimate is the final
    score that result.json and the mean ± std tables report. On synth10 3.0, identity_acc scores 16 images of an
    object and 20 of a style, so a plain mean over images would weigh the styles more (lora-m: 37.3, not 38.9)."""
    import numpy as np

    from cifc_bench.reporting.intervals import has_image_units, paired_units, unit_table
    from cifc_bench.reporting.leaderboard import leaderboard_tables
    from cifc_bench.reporting.runs import RunRecord

    folder = Path(__file__).resolve().parents[1] / "results" / "synth10" / "lora-m"
    runs = sorted(folder.glob("s[0-9]/result.json"))  # the protocol's order
    tables, _, _ = leaderboard_tables("synth10", [p.parent for p in runs], cost=False, references=False)
    shown = float(tables["identity_acc:intervals"]["final"].item().split(" ")[0])
    summary = load_results([p.parent for p in runs], "summary")
    finals = summary[(summary.metric == "identity_acc") & (summary.summary == "final")]["value"]
    assert len(finals) == 3 and shown == round(100 * finals.mean(), 1)
    records = [RunRecord(None, json.loads(p.read_text())) for p in runs]
    assert has_image_units(records, "identity_acc")
    plain = paired_units({"": [unit_table(r, "identity_acc", "final", images=True) for r in records]})[""]
    assert abs(100 * np.mean(plain) - shown) > 1.0  # unweighted, the test could not pass


def test_export_writes_parquet_and_csv(tmp_path, capsys):
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"runs.{fmt}"
        assert main(["export", str(FINETUNE), "--level", "matrix", "--out", str(out)]) == 0
        frame = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
        assert len(frame) == len(load_results([FINETUNE], "matrix")) and "value" in frame.columns
    assert main(["export", str(FINETUNE), "--out", str(tmp_path / "runs.xlsx")]) == 2
    assert "use parquet or csv" in capsys.readouterr().err
