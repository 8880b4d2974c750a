"""R-hat, bulk ESS and quantiles against answers known without them: iid and AR(1) chains, shifted, rescaled or
stuck chains, and the undefined cases."""

import warnings

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.stats import norm

from scorelens.inference.diagnostics import disagreeing_chains, ess_bulk, quantiles, rhat, rhat_bulk, rhat_tail


def ar1(rng, chains, draws, rho):
    """Stationary Gaussian AR(1) chains [chains, draws] of unit variance: x_t = rho x_t-1 + sqrt(1 - rho^2) e_t."""
    e = rng.normal(size=(chains, draws)) * np.sqrt(1 - rho**2)
    e[:, 0] = rng.normal(size=chains)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -rho], e, axis=1)


def test_iid_chains_have_rhat_one_and_ess_of_all_draws():
    x = np.random.default_rng(0).normal(3.0, 0.2, size=(4, 5000))
    assert abs(rhat(x) - 1) < 0.01
    # the estimate's relative sd at this size is about 2%
    assert ess_bulk(x) == pytest.approx(x.size, rel=0.1)


@pytest.mark.parametrize("rho", [0.5, 0.8, -0.3])
def test_ar1_chains_have_the_analytic_ess(rho):
    """For the mean of a stationary AR(1) series tau = (1 + rho) / (1 - rho); rank normalisation leaves a Gaussian
    series (nearly) as it is, so bulk ESS = N (1 - rho) / (1 + rho). At 4 x 20000 draws the estimate's relative sd
    is about 3%."""
    x = ar1(np.random.default_rng(1), 4, 20000, rho)
    assert ess_bulk(x) == pytest.approx(x.size * (1 - rho) / (1 + rho), rel=0.15)
    assert abs(rhat(x) - 1) < 0.01


def test_chains_with_shifted_means_have_large_rhat():
    x = np.random.default_rng(2).normal(size=(4, 1000)) + np.array([0.0, 0.5, 1.0, 1.5])[:, None]
    assert rhat(x) > 1.1
    # the bulk of the ESS is then far below the number of draws: the chains are not one sample
    assert ess_bulk(x) < 0.2 * x.size


def test_chains_that_differ_in_scale_only_are_seen_by_the_folded_rhat():
    x = np.random.default_rng(3).normal(size=(4, 1000))
    x[3] *= 3.0
    assert abs(rhat_bulk(x) - 1) < 0.01  # same medians: the bulk agrees
    assert rhat_tail(x) > 1.05 and rhat(x) == rhat_tail(x)


def test_a_chain_stuck_at_another_value_is_flagged():
    x = np.random.default_rng(4).normal(1.0, 0.01, size=(4, 200))
    x[2] = 1.2  # every proposal rejected, far from the others
    assert rhat(x) > 1.05
    found = disagreeing_chains(x)
    assert found is not None and found["high"] == 2 and found["medians"][2] == 1.2
    # chains in one place are not reported
    assert disagreeing_chains(np.random.default_rng(5).normal(1.0, 0.01, size=(4, 200))) is None


def test_disagreement_needs_both_many_sds_and_a_relative_gap():
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 1e-5, size=(2, 100))
    x[1] += 1e-3  # 100 sd apart but only 0.1%: a precise posterior, not two modes
    assert disagreeing_chains(x) is None
    x = rng.normal(1.0, 0.05, size=(2, 100))
    x[1] += 0.02  # 2% apart but within the chains' scatter
    assert disagreeing_chains(x) is None


def test_a_single_chain_is_split_into_two_halves():
    rng = np.random.default_rng(7)
    assert abs(rhat(rng.normal(size=(1, 2000))) - 1) < 0.01
    drifting = rng.normal(size=2000) + np.linspace(0.0, 2.0, 2000)  # 1-D: one chain
    assert rhat(drifting) > 1.1


def test_undefined_cases_are_nan_without_numpy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = np.full((4, 50), 0.25)  # a parameter the sampler holds fixed
        assert np.isnan(rhat(fixed)) and np.isnan(ess_bulk(fixed))
        few = np.random.default_rng(8).normal(size=(16, 3))  # fewer than 4 draws per chain
        assert np.isnan(rhat(few)) and np.isnan(ess_bulk(few))
        bad = np.random.default_rng(9).normal(size=(2, 50))
        bad[0, 3] = np.nan
        assert np.isnan(rhat(bad)) and np.isnan(ess_bulk(bad))
        # chains each constant at a value of its own: infinitely far from mixed
        assert rhat(np.repeat(np.arange(4.0)[:, None], 50, axis=1)) == np.inf


def test_pooled_quantiles_are_those_of_the_distribution():
    x = np.random.default_rng(10).normal(2.0, 0.5, size=(4, 50000))
    probs = [0.005, 0.025, 0.16, 0.5, 0.84, 0.975, 0.995]
    np.testing.assert_allclose(quantiles(x, probs), norm.ppf(probs, 2.0, 0.5), atol=0.02)


def test_matches_arviz_where_both_are_defined():
    """ArviZ implements the same paper; R-hat agrees to rounding, bulk ESS to within the small-sample details of
    the autocorrelation estimator (here well under 1%)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its refactor on import
        az = pytest.importorskip("arviz")
    rng = np.random.default_rng(11)
    cases = [rng.normal(size=(4, 500)), ar1(rng, 4, 1000, 0.8), ar1(rng, 3, 801, 0.5),
             rng.normal(size=(4, 400)) + np.array([0.0, 0.0, 0.3, 0.6])[:, None], rng.standard_cauchy((4, 600))]
    for x in cases:
        assert rhat(x) == pytest.approx(float(az.rhat(x, method="rank")), rel=1e-9)
        assert ess_bulk(x) == pytest.approx(float(az.ess(x, method="bulk")), rel=0.01)
