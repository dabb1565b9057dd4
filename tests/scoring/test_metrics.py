import pytest

from pecft_cli.scoring.metrics import continual_metrics

TASKS = ["a", "b", "c"]
# Worked by hand: rows are stages after a, b, c; columns are tasks a, b, c.
MATRIX = [
    [0.8, 0.1, 0.2],
    [0.5, 0.9, 0.3],
    [0.4, 0.6, 0.7],
]
BASE = [0.1, 0.0, 0.1]


def test_hand_worked_three_tasks() -> None:
    m = continual_metrics(TASKS, MATRIX, BASE)
    assert m["acc"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    # bwt: (0.4 - 0.8) and (0.6 - 0.9), averaged over the two earlier tasks
    assert m["bwt"] == pytest.approx((-0.4 - 0.3) / 2)
    # fwt: R[0][1] - b1 = 0.1 - 0.0; R[1][2] - b2 = 0.3 - 0.1
    assert m["fwt"] == pytest.approx((0.1 + 0.2) / 2)
    # forgetting: a: max(0.8, 0.5) - 0.4 = 0.4; b: max(0.1, 0.9) - 0.6 = 0.3
    assert m["forgetting"] == pytest.approx(0.35)
    assert m["learning_accuracy"] == pytest.approx((0.8 + 0.9 + 0.7) / 3)
    assert m["tasks"]["a"] == pytest.approx(
        {"zero_shot": 0.1, "learned": 0.8, "final": 0.4, "forgetting": 0.4}
    )
    assert m["tasks"]["c"]["forgetting"] is None


def test_forgetting_uses_the_best_earlier_score_not_the_diagonal() -> None:
    # task a peaks after task b: max-form forgetting (0.9 - 0.5) exceeds diagonal-form (0.6 - 0.5)
    m = continual_metrics(["a", "b", "c"], [[0.6, 0, 0], [0.9, 1, 0], [0.5, 1, 1]], None)
    assert m["tasks"]["a"]["forgetting"] == pytest.approx(0.4)
    assert m["bwt"] == pytest.approx(((0.5 - 0.6) + 0) / 2)


def test_single_task_has_no_transfer_or_forgetting() -> None:
    m = continual_metrics(["only"], [[0.75]], [0.25])
    assert m["acc"] == 0.75
    assert m["learning_accuracy"] == 0.75
    assert m["bwt"] is None and m["fwt"] is None and m["forgetting"] is None


def test_missing_base_row_leaves_fwt_undefined_only() -> None:
    m = continual_metrics(TASKS, MATRIX, None)
    assert m["fwt"] is None
    assert m["bwt"] == pytest.approx(-0.35)
    assert m["tasks"]["b"]["zero_shot"] is None


@pytest.mark.parametrize(
    ("matrix", "base"),
    [([[0.1, 0.2]], None), ([[0.1], [0.2]], None), ([[0.1, 0.2], [0.3, 0.4]], [0.1])],
)
def test_shape_mismatch_is_refused(matrix: list[list[float]], base: list[float] | None) -> None:
    with pytest.raises(ValueError):
        continual_metrics(["a", "b"] if len(matrix) == 2 else ["a"], matrix, base)
