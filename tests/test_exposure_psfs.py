"""The exposures' PSFs before sampling (`exposure_psfs`): each exposure's own ePSF, the pooled one, or a given PSF,
with its stars and the forward model's kernel, on a two-exposure mock."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from scorelens.data.observations.flt import load_exposures
from scorelens.data.psf.epsf import effective_psf_kernel
from scorelens.data.psf.exposure_psfs import PSFKind, exposure_psfs
from scorelens.data.psf.stars import find_settings, find_stars_in_flt
from scorelens.data.simulate.mock import load_truth, make_mock
from scorelens.errors import InputError
from tests.conftest import compose_infer

MOCK = dict(seed=3, frame=(128, 128), cutout=48, source_grid=(64, 0.05), n_stars=8, n_exp=2, psf_size=41)
FIND = {**compose_infer().stars.find, "stamp_size": 11, "max_peak": None, "exclude_radius_arcsec": 1.5}
GEOMETRY = SimpleNamespace(upsample=2, psf_size=21)


def settings(**overrides):
    return {"epsf_oversampling": 4, "min_stars": 3, "min_stars_pooled": 3, **overrides}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mock")
    paths = make_mock(root, **MOCK)
    truth = load_truth(root)
    return load_exposures(paths.exposures, truth.meta["ra"], truth.meta["dec"], 48, [4, 8192])


def star_counts(data):
    return [sum(len(st) for _, st in find_stars_in_flt(e.path, data.ra, data.dec, settings=find_settings(FIND)))
            for e in data.exposures]


def test_exposures_with_enough_stars_get_their_own_epsf(data):
    counts = star_counts(data)
    assert min(counts) >= 3
    psfs = exposure_psfs(data, GEOMETRY, settings(), FIND)
    assert len(psfs) == 2 and [p.kind for p in psfs] == [PSFKind.OWN, PSFKind.OWN]
    assert [p.name for p in psfs] == [e.name for e in data.exposures]
    assert [len(p.stars) for p in psfs] == counts and len(psfs.pooled) == sum(counts)
    assert psfs.exposures[0].psf is not psfs.exposures[1].psf and psfs.exposures[0].oversampling == 4
    for p, kernel in zip(psfs, psfs.kernels, strict=True):
        k = p.psf.shape[0]
        assert k % 2 == 1 and p.psf.sum() == pytest.approx(1.0) and p.psf.min() >= 0
        assert np.unravel_index(np.argmax(p.psf), p.psf.shape) == (k // 2, k // 2)
        np.testing.assert_array_equal(kernel, effective_psf_kernel(p.psf, 4, 2, 21))


def test_exposures_with_too_few_stars_share_the_pooled_epsf(data):
    counts = star_counts(data)
    psfs = exposure_psfs(data, GEOMETRY, settings(min_stars=max(counts) + 1), FIND)
    assert [p.kind for p in psfs] == [PSFKind.POOLED, PSFKind.POOLED]
    assert psfs.exposures[0].psf is psfs.exposures[1].psf  # one ePSF, built once
    assert [len(p.stars) for p in psfs] == counts and len(psfs.pooled) == sum(counts)
    with pytest.raises(InputError, match="usable stars in all exposures together"):
        exposure_psfs(data, GEOMETRY, settings(min_stars=max(counts) + 1, min_stars_pooled=sum(counts) + 1), FIND)


def test_a_given_psf_is_used_as_it_is(data):
    yy, xx = np.mgrid[-7:8, -7:8]
    given = np.exp(-(xx**2 + yy**2) / 4.0)
    given /= given.sum()
    first = replace(data.exposures[0], psf=given, psf_oversampling=2)
    mixed = replace(data, exposures=[first, data.exposures[1]])
    psfs = exposure_psfs(mixed, GEOMETRY, settings(), FIND)
    assert [p.kind for p in psfs] == [PSFKind.GIVEN, PSFKind.OWN]
    assert psfs.exposures[0].psf is given and psfs.exposures[0].stars is None
    assert psfs.exposures[0].oversampling == 2
    np.testing.assert_array_equal(psfs.kernels[0], effective_psf_kernel(given, 2, 2, 21))
    assert len(psfs.pooled) == star_counts(data)[1]  # the stars of the exposures without a given PSF
    only_given = replace(data, exposures=[first])
    assert exposure_psfs(only_given, GEOMETRY, settings(), FIND).pooled is None
    with pytest.raises(InputError, match="no PSF given and no file"):
        exposure_psfs(replace(data, exposures=[replace(data.exposures[0], path=None)]), GEOMETRY, settings(), FIND)
