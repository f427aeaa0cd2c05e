import math

import numpy as np
import pytest

from cifc_bench.evaluation import metrics

nan = math.nan


def test_summaries_on_a_hand_computed_matrix():
    R = np.array([
        [0.80, nan, nan],
        [0.70, 0.90, nan],
        [0.60, 0.85, 0.50],
    ])
    s = metrics.summarize(R)
    assert s["final"] == pytest.approx((0.60 + 0.85 + 0.50) / 3)
    assert s["avg_incremental"] == pytest.approx((0.80 + (0.70 + 0.90) / 2 + (0.60 + 0.85 + 0.50) / 3) / 3)
    assert s["learning"] == pytest.approx((0.80 + 0.90 + 0.50) / 3)  # the diagonal: each right after its task
    # drop from just-learned to final, over the first T-1 concepts
    assert s["forgetting"] == pytest.approx(((0.80 - 0.60) + (0.90 - 0.85)) / 2)
    assert s["bwt"] == pytest.approx(-s["forgetting"])
    # Chaudhry: max over rows l in [i, T-1) before the last
    assert s["forgetting_max"] == pytest.approx(((0.80 - 0.60) + (0.90 - 0.85)) / 2)


def test_forgetting_max_uses_the_best_earlier_row_not_the_first():
    R = np.array([
        [0.5, nan, nan],
        [0.9, 0.7, nan],
        [0.4, 0.6, 0.3],
    ])
    assert metrics.forgetting(R) == pytest.approx(((0.5 - 0.4) + (0.7 - 0.6)) / 2)
    assert metrics.forgetting_max(R) == pytest.approx(((0.9 - 0.4) + (0.7 - 0.6)) / 2)


def test_final_only_schedule_gives_final_and_nan_for_the_rest():
    R = np.full((3, 3), nan)
    R[-1] = [0.3, 0.6, 0.9]
    s = metrics.summarize(R)
    assert s["final"] == pytest.approx(0.6)
    assert all(math.isnan(s[k]) for k in ("avg_incremental", "learning", "forgetting", "forgetting_max", "bwt"))


def test_single_task_has_no_forgetting():
    s = metrics.summarize(np.array([[0.7]]))
    assert s["final"] == pytest.approx(0.7) and math.isnan(s["forgetting"])


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        metrics.summarize(np.zeros((2, 3)))


def test_image_alignment_is_the_mean_pairwise_cosine():
    gen = np.array([[1.0, 0.0], [0.0, 2.0]])
    ref = np.array([[1.0, 1.0], [3.0, 0.0]])
    c = 1 / math.sqrt(2)
    expected = np.mean([c, 1.0, c, 0.0])
    assert metrics.image_alignment(gen, ref) == pytest.approx(expected)


def test_text_alignment_is_clipscore_with_w_2_5_and_clipped_at_zero():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    texts = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert metrics.text_alignment_per_image(images, texts) == pytest.approx([2.5, 0.0, 1.5])


def test_json_round_trip_keeps_nulls():
    R = np.array([[0.1, nan], [0.2, 0.3]])
    rows = metrics.to_json_matrix(R)
    assert rows == [[0.1, None], [0.2, 0.3]]
    back = metrics.from_json_matrix(rows)
    assert np.isnan(back[0, 1]) and back[1, 0] == 0.2


def test_ta_bounds_hold_every_value_text_alignment_can_take():
    """A perfect match scores TA_SCALE (2.5), above a cosine's 1: bounds of (-1, 1) clipped TA intervals into
    nonsense ([165.1, 100.0] on synth10). The declared bounds must contain the extremes."""
    import numpy as np

    from cifc_bench.evaluation.metrics import TA_SCALE, ta, text_alignment_per_image

    v = np.array([[1.0, 0.0, 0.0]])
    best, worst = text_alignment_per_image(v, v)[0], text_alignment_per_image(v, -v)[0]
    assert best == TA_SCALE and worst == 0.0
    assert ta.bounds[0] <= worst and best <= ta.bounds[1]
