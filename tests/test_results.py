"""samples.h5 and summary.csv follow the output contract."""

import csv

import h5py
import numpy as np
import pytest

from scorelens.inference.results import write_samples, write_summary
from scorelens.lensing.mass import PARAM_NAMES


def test_samples_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    params = {k: rng.normal(1.0, 0.1, 400) for k in PARAM_NAMES}
    params["shift_1_x"] = rng.normal(0, 0.01, 400)
    images = {"source": rng.random((400, 8, 8)), "psf": rng.random((2, 5, 5))}
    write_samples(tmp_path / "samples.h5", params, images, attrs={"units": "electrons per detector pixel"})
    with h5py.File(tmp_path / "samples.h5") as f:
        assert set(PARAM_NAMES) <= set(f) and f["theta_E"].shape == (400,) and f["source"].shape == (400, 8, 8)
        np.testing.assert_allclose(f["theta_E"][:], params["theta_E"])
        assert f.attrs["units"] == "electrons per detector pixel"
    write_summary(tmp_path / "summary.csv", params)
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["parameter"] for r in rows] == list(PARAM_NAMES)
    assert list(rows[0]) == ["parameter", "median", "p16", "p84"]
    r = rows[0]
    assert float(r["median"]) == pytest.approx(np.median(params["theta_E"]), rel=1e-5)
    assert float(r["p16"]) < float(r["median"]) < float(r["p84"])
    assert not list(tmp_path.glob("*.tmp"))
