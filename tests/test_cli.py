"""The cifc10 smoke command of the core issue, end to end through the console entry point."""

import json
import subprocess
import sys

from cifc_bench.cli import main


def test_cifc10_smoke_run_writes_full_matrices(cifc10_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifc_bench.cli", "run", "--method", "finetune", "--protocol", "cifc10",
           "--model", "tiny-random", "--scorer", "tiny-random", "--data-dir", str(cifc10_dir), "--steps", "2",
           "--prompts-per-concept", "2", "--images-per-prompt", "1", "--resolution", "32",
           "--num-inference-steps", "4", "--dino", "tiny-random", "--calibration-images", "4",
           "--image-encoders", "dinov2-tiny-random,dreamsim-tiny-random",
           "--multi-images-per-prompt", "2", "--retention-prompts", "3", "--tracks", "style_transfer,editing",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["run_info"]["protocol"]["name"] == "cifc10"
    for metric in ("ia", "ta", "ia_dino", "ia_dinov2", "ia_dreamsim"):
        R = result["matrices"][metric]
        assert len(R) == 10
        assert all((R[j][i] is None) == (i > j) for j in range(10) for i in range(10))
        assert result["summary"][metric]["forgetting"] is not None
    assert "ia (x100): final " in proc.stdout  # the leaderboard's scale
    assert len(result["retention"]["prompts"]) == 3 and len(result["retention"]["per_image"]["drift"]["9"]) == 3
    # the neglect matrix: each multi-concept prompt from the first task after which both its concepts are learned
    neglect = result["neglect"]
    order = result["concepts"]
    assert len(neglect["prompts"]) >= 4 and {c for t in neglect["calibration"]["thresholds"] for c in t} >= {"dog", "cat"}
    for q, p in enumerate(neglect["prompts"]):
        first = max(order.index(c) for c in p["concepts"])
        column = [row[q] for row in neglect["matrices"]["cnr"]]
        assert all(v is None for v in column[:first]) and all(0.0 <= v <= 1.0 for v in column[first:])
    assert result["summary"]["cnr"]["final"] is not None
    # the image-conditioned tracks: every style redraws photos, every object is drawn into a box of one
    tracks = result["tracks"]
    assert tracks["style_transfer"]["concepts"] == ["painting", "drawing", "ink_painting"]
    assert len(tracks["editing"]["concepts"]) == 7
    for key in ("style_transfer/ia", "style_transfer/content_sim", "editing/box_ia", "editing/outside_ssim"):
        assert result["summary"][key]["final"] is not None, key
    assert result["summary"]["editing/outside_exact"]["final"] == 1.0
    assert "editing/outside_psnr (dB): final 100.0" in proc.stdout


def test_run_reports_bad_flags_clearly(tmp_path, capsys):
    assert main(["run", "--resolution", "30", "--out", str(tmp_path / "x")]) == 2
    assert "--resolution 30: give a multiple of 8" in capsys.readouterr().err
    assert main(["run", "--method-args", "rank", "--out", str(tmp_path / "y")]) == 2
    assert "--method-args 'rank': write KEY=VALUE" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing a cifc-bench run directory?" in capsys.readouterr().err


def test_a_leaderboard_of_a_missing_results_folder_is_an_error(tmp_path, capsys):
    """Not an empty table with exit 0: a typo in --results must be seen."""
    assert main(["leaderboard", "--protocol", "synth10", "--results", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert f"--results {tmp_path / 'typo'}: no such folder" in err and "--results results runs" in err
