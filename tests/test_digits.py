"""The digits claims on real data (scikit-learn's load_digits), with examples/digits.py's fast
settings and seed 0. docs/results.md reports the full settings over three seeds."""

import pytest
from util import load_example, one_thread  # noqa: F401 (fixture)

digits = load_example("digits")
SETTINGS = digits.FAST
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return digits.load(0)


@pytest.fixture(scope="module")
def dense(data):
    model = digits.trained(digits.cnn, data, SETTINGS, 0)
    assert digits.accuracy(model, data) > 97, "the dense CNN should learn the digits"
    return model


def test_cnn_slimmed_to_half_its_macs_recovers_within_one_point(dense, data):
    row = digits.recovery(dense, data, SETTINGS, 0)
    assert row["macs_keep"] <= 0.5
    assert row["pruned"] < row["dense"] - 10, "slimming without fine-tuning should hurt"
    assert row["finetuned"] >= row["dense"] - 1


def test_l2_beats_random_ranking_at_equal_macs_once_bn_is_recalibrated(dense, data):
    for row in digits.ranking(dense, data, SETTINGS):
        assert row["macs_keep"] == pytest.approx(row["random_macs_keep"])
        mean_random = sum(row["random_recal"]) / len(row["random_recal"])
        assert row["l2_recal"] > mean_random, row


def test_at_80_percent_one_shot_beats_iterative_with_the_same_epochs(dense, data):
    (row,) = digits.one_shot_vs_iterative(dense, data, SETTINGS, 0)
    assert row["ratio"] == 0.8 and row["steps"] == 16 and row["epochs"] == 32
    assert row["iterative_removed"] == pytest.approx(0.8, abs=0.01)
    assert row["iterative_macs"] == pytest.approx(row["one_shot_macs"], rel=0.2)
    assert min(row["one_shot"], row["iterative"]) > 50, "both should recover far above chance"
    # Measured (docs/results.md, all seeds): with equal epochs one-shot ends ahead, the claim
    # that iterative wins does not hold here. If this flips, update the docs.
    assert row["one_shot"] > row["iterative"]


def test_unstructured_masks_at_80_percent_recover_after_fine_tuning(data):
    mlp = digits.trained(digits.mlp, data, SETTINGS, 0)
    (row,) = digits.unstructured(mlp, data, SETTINGS, 0)
    assert row["pruned"] < row["dense"] - 3
    assert row["finetuned"] >= row["dense"] - 1


def test_rewound_ticket_matches_dense_and_beats_random_reinit(data):
    row = digits.lottery_ticket(data, SETTINGS, 0)
    assert row["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert row["ticket"] >= row["dense"] - 1
    assert row["ticket"] > row["reinit"]
