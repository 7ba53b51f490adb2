"""Issue 10's claims on real data, as measured (docs/results.md, "Data-aware importance, global
budgets and bias compensation"): examples/digits_criteria.py's fast settings, seed 0, 50 % of
channels removed. The full run holds each ordering asserted here in 3 of 3 seeds; where the
measured finding is that a claim fails (data criteria against L2), the test asserts the
finding, so a change that flips it shows up and the page must be updated."""

import sys

import pytest
from util import load_example, one_thread  # noqa: F401 (fixture)

criteria = load_example("digits_criteria")
digits = sys.modules["digits"]
SETUP = criteria.FAST
pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(make) -> dict:
    data = digits.load(0)
    dense = digits.trained(make, data, SETUP.train, 0)
    return {(r["importance"], r["arm"]): r for r in criteria.compare(dense, data, SETUP, 0)}


@pytest.fixture(scope="module")
def cnn():
    return _rows(digits.cnn)


@pytest.fixture(scope="module")
def mlp():
    return _rows(digits.mlp)


def test_l2_beats_taylor_and_activation_at_equal_macs_before_and_after_fine_tuning(cnn, mlp):
    """Measured: no data criterion beats L2 on these models; taylor and activation lose in every
    seed (gradients of a converged model are mostly noise; activation ignores the weights that
    read a channel)."""
    for importance in ("taylor", "activation"):
        assert cnn[importance, "uniform"]["macs_keep"] == cnn["l2", "uniform"]["macs_keep"]
        assert cnn[importance, "uniform"]["acc_recal"] < cnn["l2", "uniform"]["acc_recal"]
        assert cnn[importance, "uniform"]["acc_finetuned"] < cnn["l2", "uniform"]["acc_finetuned"]
        assert mlp[importance, "uniform"]["acc"] < mlp["l2", "uniform"]["acc"]


def test_compensation_lowers_the_output_error_for_every_criterion(cnn, mlp):
    for rows in (cnn, mlp):
        for importance in criteria.CRITERIA:
            assert rows[importance, "compensate"]["error"] < rows[importance, "uniform"]["error"]
    for importance in criteria.CRITERIA:  # and, with BN recalibrated, the CNN's accuracy
        assert cnn[importance, "compensate"]["acc_recal"] > cnn[importance, "uniform"]["acc_recal"]


def test_global_target_macs_lands_on_the_uniform_macs_and_helps_l2_on_the_mlp(cnn, mlp):
    """Within 2 % on the zoo; here one channel of the 32-wide first conv is ~1 % of the CNN's
    MACs, so one threshold step can land 2-3 % away (3.4 % at most in the full run)."""
    for rows in (cnn, mlp):
        for importance in criteria.CRITERIA:
            assert rows[importance, "global_macs"]["macs_keep"] == pytest.approx(
                rows["l2", "uniform"]["macs_keep"], rel=0.035)
    assert mlp["l2", "global_macs"]["acc"] > mlp["l2", "uniform"]["acc"]
