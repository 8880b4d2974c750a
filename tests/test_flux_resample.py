"""The one flux-conserving resampler, against exact pixel integrals of an analytic profile."""

import numpy as np
import pytest
from scipy.special import erf

from scorelens.data.flux_resample import resample_axis


def pixel_integrals(edges, sigma=1.3, mu=0.17):
    """Flux of a unit Gaussian in each pixel between consecutive `edges`."""
    return np.diff(0.5 * (1 + erf((np.asarray(edges) - mu) / (np.sqrt(2) * sigma))))


@pytest.mark.parametrize("step_in, step_out, tol", [
    (0.5, 0.3, 1e-3), (0.25, 1.0, 1e-5), (0.3, 0.3, 1e-4),
    (1.0, 0.4, 1e-2),  # upsampling a profile only 1.3 input pixels wide: the spline's error is 0.7% of the peak
])
def test_resampled_pixels_are_the_profiles_integrals(step_in, step_out, tol):
    edges_in = np.arange(-12, 12 + 1e-9, step_in)
    edges_out = np.arange(-9, 9 + 1e-9, step_out) + 0.05
    out = resample_axis(pixel_integrals(edges_in), 0, edges_in, edges_out)
    np.testing.assert_allclose(out, pixel_integrals(edges_out), atol=tol * out.max())
    # the flux between the output's outer edges is kept exactly
    assert out.sum() == pytest.approx(np.diff(0.5 * (1 + erf((edges_out[[0, -1]] - 0.17) / (np.sqrt(2) * 1.3))))[0],
                                      rel=1e-4)


def test_aligned_edges_are_exact_and_axes_are_independent():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 9))
    e = np.arange(10) - 0.5
    np.testing.assert_allclose(resample_axis(a, 1, e, e), a, atol=1e-12)
    np.testing.assert_allclose(resample_axis(a, 1, e, e[::3]), a.reshape(6, 3, 3).sum(2), atol=1e-12)
    # flux outside the input is zero: output pixels beyond it are empty
    wide = resample_axis(a, 1, e, np.arange(-3, 13) - 0.5)
    assert np.all(wide[:, :3] == 0) and np.all(wide[:, -3:] == 0)
