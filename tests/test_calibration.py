"""Interval coverage and TARP against posteriors whose calibration is known exactly (a conjugate Gaussian model)."""

import numpy as np
import pytest

from scorelens.inference.calibration import (
    central_interval,
    coverage,
    covered,
    standardise,
    tarp_coverage,
    tarp_deviation,
)

N_LENSES, N_DRAWS, DIM = 1000, 400, 3
PRIOR_SD, NOISE_SD = 1.0, 0.5


def conjugate_draws(rng, scale=1.0, shift=0.0):
    """Truths theta ~ N(0, 1) per dimension, data y = theta + N(0, 0.5^2); draws from the exact posterior
    N(y / (1 + 0.25), 1 / (1 + 4)) with its sd multiplied by `scale` and its mean moved by `shift` posterior sd."""
    truths = rng.normal(0.0, PRIOR_SD, (N_LENSES, DIM))
    y = truths + rng.normal(0.0, NOISE_SD, truths.shape)
    prec = 1.0 / PRIOR_SD**2 + 1.0 / NOISE_SD**2
    mean, sd = y / NOISE_SD**2 / prec, np.sqrt(1.0 / prec)
    draws = [m + sd * (shift + scale * rng.normal(size=(N_DRAWS, DIM))) for m in mean]
    return draws, truths


def references(rng):
    return rng.uniform(-3.0, 3.0, (N_LENSES, DIM))


def test_central_interval_and_covered():
    draws = np.arange(1001, dtype=float)  # quantiles are exact on a uniform grid
    assert central_interval(draws, 0.5) == pytest.approx((250.0, 750.0))
    assert covered(draws, 500.0, 0.68) and not covered(draws, 900.0, 0.68)


@pytest.mark.parametrize("level", [0.68, 0.95])
def test_exact_posteriors_have_nominal_interval_coverage(level):
    draws, truths = conjugate_draws(np.random.default_rng(1))
    frac, se = coverage([d[:, 0] for d in draws], truths[:, 0], level)
    assert se == pytest.approx(np.sqrt(level * (1 - level) / N_LENSES))
    assert abs(frac - level) < 4 * se


def test_overconfident_posteriors_undercover():
    draws, truths = conjugate_draws(np.random.default_rng(2), scale=0.4)
    frac, se = coverage([d[:, 0] for d in draws], truths[:, 0], 0.68)
    # the truth is within +-0.4 x 0.9945 sd of the mean with probability 0.31
    assert abs(frac - 0.31) < 4 * se


def test_tarp_of_exact_posteriors_is_the_diagonal():
    rng = np.random.default_rng(3)
    draws, truths = conjugate_draws(rng)
    alphas, ecp, f = tarp_coverage(draws, truths, references(rng))
    assert f.shape == (N_LENSES,) and ecp[0] == 0.0 and np.all(np.diff(ecp) >= 0)
    assert tarp_deviation(alphas, ecp) < 0.05


@pytest.mark.parametrize("scale,shift", [(0.4, 0.0), (2.5, 0.0), (1.0, 1.5)])
def test_tarp_flags_overconfident_underconfident_and_biased_posteriors(scale, shift):
    rng = np.random.default_rng(4)
    draws, truths = conjugate_draws(rng, scale=scale, shift=shift)
    alphas, ecp, _ = tarp_coverage(draws, truths, references(rng))
    assert tarp_deviation(alphas, ecp) > 0.1


def test_standardise_maps_the_box_to_the_unit_cube_and_keeps_tarp():
    rng = np.random.default_rng(5)
    draws, truths = conjugate_draws(rng)
    low, high = np.full(DIM, -3.0), np.full(DIM, 3.0)
    sd, st = standardise(draws, truths, low, high)
    np.testing.assert_allclose(st, (truths + 3.0) / 6.0)
    ref = references(rng)
    _, ecp_raw, _ = tarp_coverage(draws, truths, ref)
    _, ecp_std, _ = tarp_coverage(sd, st, (ref + 3.0) / 6.0)
    np.testing.assert_allclose(ecp_raw, ecp_std)  # a common scale changes no distance order
    with pytest.raises(ValueError, match="high > low"):
        standardise(draws, truths, high, low)


def test_tarp_refuses_mismatched_shapes():
    rng = np.random.default_rng(6)
    draws, truths = conjugate_draws(rng)
    with pytest.raises(ValueError, match="one row per lens"):
        tarp_coverage(draws[:-1], truths, references(rng))
