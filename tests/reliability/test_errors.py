"""Every error of "Errors from the wrong place" (issue 21) comes from its source, with the exact message."""

import json

import pytest
import yaml

from cifc_bench.cli import main
from cifc_bench.testing import make_tiny_protocol

TINY = ["--model", "tiny-random", "--scorer", "tiny-random", "--steps", "1", "--prompts-per-concept", "2",
        "--images-per-prompt", "1", "--resolution", "32", "--num-inference-steps", "2", "--calibration-images", "4",
        "--multi-images-per-prompt", "2"]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("proto"), n_concepts=3)


def test_a_protocol_default_of_the_wrong_type_fails_validate_naming_the_file_and_field(protocol, tmp_path, capsys):
    raw = yaml.safe_load(protocol.read_text())
    raw["defaults"]["steps"] = "eight hundred"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["validate", "--protocol", str(bad), "--data-dir", str(protocol.with_name("tiny-data"))]) == 2
    assert capsys.readouterr().err == (f"cifc-bench validate: error: {bad}: defaults.steps 'eight hundred': give a "
                                       "whole number >= 0\n")
    assert main(["run", "--protocol", str(bad), *TINY[:2]]) == 2  # and run blames the file, not --steps
    assert f"{bad}: defaults.steps 'eight hundred'" in capsys.readouterr().err


def test_an_unwritable_out_is_one_clear_line(protocol, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    assert main(["run", "--method", "base", "--protocol", str(protocol), "--data-dir",
                 str(protocol.with_name("tiny-data")), *TINY, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"cifc-bench run: error: --out {out}: cannot write there (Not a directory); "
                                       "pick a folder you can write to\n")


def test_an_unknown_method_argument_lists_the_accepted_ones(protocol, tmp_path, capsys):
    assert main(["run", "--method", "lora-m", "--protocol", str(protocol), "--data-dir",
                 str(protocol.with_name("tiny-data")), *TINY, "--method-args", "rnak=8", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == ("cifc-bench run: error: method 'lora-m' has no argument(s) ['rnak']; it "
                                       "accepts: rank, lr, embedding_lr, weights (--method-args KEY=VALUE)\n")


def test_a_protocol_typo_suggests_protocol_forms(capsys):
    from cifc_bench.core.registry import PROTOCOLS, list_plugins

    known = ", ".join(list_plugins(PROTOCOLS))  # cifc10, cifc10-sdxl (and synth10 with the synthetic tier)
    assert main(["validate", "--protocol", "cifc1O"]) == 2
    assert capsys.readouterr().err == (
        f"cifc-bench validate: error: unknown protocol 'cifc1O'. Did you mean 'cifc10', 'cifc10-sdxl'? Known: {known}. "
        "Give a registered name, or the path to a protocol YAML file (e.g. ./my_protocol.yaml).\n")


def test_a_metric_undefined_for_some_concepts_is_summarised_over_the_others_and_says_so(capsys):
    from cifc_bench.cli.run import summary_lines
    from cifc_bench.evaluation.metrics import summarize_result

    nan = None
    result = {"concepts": ["ball", "neon", "box"], "tasks": [{}, {}, {}],
              "matrices": {"context_acc": [[0.9, nan, nan], [0.8, nan, nan], [0.7, nan, 0.6]]}}
    summary = summarize_result(result)["context_acc"]
    assert summary["undefined_for"] == ["neon"]
    assert summary["learning"] == pytest.approx(0.75) and summary["forgetting"] == pytest.approx(0.2)
    assert summary_lines({"context_acc": summary}) == (
        "  context_acc (x100): final 65.0, avg_incremental 78.3, learning 75.0, forgetting 20.0, forgetting_max "
        "20.0, bwt -20.0 (over the other concepts: undefined for neon)")
    json.dumps(summary)  # still JSON
