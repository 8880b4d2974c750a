"""samples.h5 and summary.csv follow the output contract; the diagnostics' warnings name what not to trust."""

import csv
import logging

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import norm

from scorelens.inference.results import by_chain, diagnostic_warnings, summarize, write_samples, write_summary
from scorelens.lensing.mass import PARAM_NAMES


def chains_of(rng, chains=4, draws=100, loc=1.0, sd=0.1):
    """Independent draws of every mass parameter and one shift, {name: [chains, draws]}."""
    params = {k: rng.normal(loc, sd, (chains, draws)) for k in PARAM_NAMES}
    params["shift_1_x"] = rng.normal(0, 0.01, (chains, draws))
    return params


def test_samples_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    params = chains_of(rng)  # 4 chains x 100 draws
    images = {"source": rng.random((400, 8, 8)), "psf": rng.random((2, 5, 5))}
    write_samples(tmp_path / "samples.h5", params, images, attrs={"units": "electrons per detector pixel"})
    with h5py.File(tmp_path / "samples.h5") as f:
        assert set(PARAM_NAMES) <= set(f) and f["theta_E"].shape == (400,) and f["source"].shape == (400, 8, 8)
        assert f.attrs["units"] == "electrons per detector pixel"
        assert (f.attrs["chains"], f.attrs["draws"]) == (4, 100)
        chain, draw, theta = f["chain"][:], f["draw"][:], f["theta_E"][:]
        assert chain.dtype.kind == draw.dtype.kind == "i"
        # flat, chain fastest: sample i is chain i % 4 at draw i // 4, and either index rebuilds [chain, draw]
        np.testing.assert_array_equal(chain, np.arange(400) % 4)
        np.testing.assert_array_equal(draw, np.arange(400) // 4)
        np.testing.assert_allclose(theta[(chain == 2) & (draw == 7)], params["theta_E"][2, 7])
        np.testing.assert_allclose(theta.reshape(100, 4).T, params["theta_E"])
        np.testing.assert_allclose(f["shift_1_x"][:].reshape(100, 4).T, params["shift_1_x"])
    write_summary(tmp_path / "summary.csv", params)
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["parameter"] for r in rows] == list(PARAM_NAMES)
    assert list(rows[0]) == ["parameter", "median", "p16", "p84", "p2.5", "p97.5", "p0.5", "p99.5", "rhat",
                             "ess_bulk"]
    r = rows[0]
    pooled = params["theta_E"].ravel()
    assert float(r["median"]) == pytest.approx(np.median(pooled), rel=1e-5)
    assert float(r["p16"]) == pytest.approx(np.percentile(pooled, 16), rel=1e-5)
    assert float(r["p99.5"]) == pytest.approx(np.percentile(pooled, 99.5), rel=1e-5)
    assert (float(r["p0.5"]) < float(r["p2.5"]) < float(r["p16"]) < float(r["median"]) < float(r["p84"])
            < float(r["p97.5"]) < float(r["p99.5"]))
    # independent draws: the chains agree and every draw counts (Monte Carlo tolerance at 400 draws)
    assert abs(float(r["rhat"]) - 1) < 0.03 and float(r["ess_bulk"]) == pytest.approx(400, rel=0.3)
    assert not list(tmp_path.glob("*.tmp"))


def test_summary_quantiles_pool_all_chains():
    """Chains of N(0, 1) and N(2, 1) pooled are a two-component mixture; its median is 1 and its 2.5% quantile
    solves (Phi(q) + Phi(q - 2)) / 2 = 0.025."""
    rng = np.random.default_rng(1)
    params = {"theta_E": np.concatenate([rng.normal(0, 1, (2, 20000)), rng.normal(2, 1, (2, 20000))])}
    (row,) = summarize(params)
    grid = np.linspace(-4, 1, 500001)
    q025 = grid[np.argmin(np.abs((norm.cdf(grid) + norm.cdf(grid - 2)) / 2 - 0.025))]
    assert row["median"] == pytest.approx(1.0, abs=0.02) and row["p2.5"] == pytest.approx(q025, abs=0.03)
    assert row["rhat"] > 1.3  # split R-hat of the raw draws: sqrt(1 + 8/7) = 1.46


def test_run_order_rebuilds_chains():
    """run.py stores the records of B chains ([B, D] each) one after another; by_chain gives [B, records]."""
    records = [torch.arange(3.0)[:, None] * 10 + s for s in range(5)]  # chain c, sweep s -> 10 c + s
    flat = torch.cat(records)[:, 0].numpy()
    np.testing.assert_array_equal(by_chain(flat, 3), np.arange(3)[:, None] * 10 + np.arange(5))
    with pytest.raises(ValueError, match="chains"):
        by_chain(flat, 4)


def test_warnings_name_unmixed_parameters_few_draws_and_theta_E_modes():
    rng = np.random.default_rng(2)
    params = chains_of(rng, chains=4, draws=500)
    params["gamma"] = params["gamma"] + np.array([0.0, 0.0, 0.2, 0.2])[:, None]  # 2 sd apart: not mixed
    params["q"] = np.full((4, 500), 0.8)  # held fixed
    walk = np.cumsum(rng.normal(0, 0.01, (4, 500)), axis=1)  # a random walk: few effective draws
    params["a3"] = walk
    params["theta_E"] = 1.2 + rng.normal(0, 0.002, (4, 500))
    params["theta_E"][3] += 0.05  # chain 3 elsewhere (4%)
    rows = summarize(params)
    warnings = diagnostic_warnings(params, rows)
    assert len(warnings) == 3
    unmixed, few, modes = warnings
    assert unmixed.startswith("R-hat > 1.05") and "gamma" in unmixed and "theta_E" in unmixed
    value = next(r["rhat"] for r in rows if r["parameter"] == "gamma")
    assert f"gamma {value:.3f}" in unmixed and value > 1.05
    named = {w: [c.split()[0] for c in w.split(" of ")[-1].split(", ")] for w in (unmixed, few)}
    assert "q" not in named[unmixed] and "q" not in named[few]  # never the fixed one
    assert few.startswith("bulk ESS < 100") and "a3" in named[few]
    assert "chain 3" in modes and f"{np.median(params['theta_E'][3]):.4f}" in modes
    assert f"{np.median(params['theta_E'][0]):.4f}" in modes
    # the row of the fixed parameter: quantiles its value, no diagnostics
    q = next(r for r in rows if r["parameter"] == "q")
    assert q["median"] == pytest.approx(0.8) and np.isnan(q["rhat"]) and np.isnan(q["ess_bulk"])


def test_disagreeing_chains_are_told_with_their_fit():
    rng = np.random.default_rng(6)
    params = chains_of(rng, chains=4, draws=100)
    params["theta_E"] = 1.2 + rng.normal(0, 0.002, (4, 100))
    params["theta_E"][1] -= 0.3  # chain 1 in another mode
    rows = summarize(params)
    modes = [w for w in diagnostic_warnings(params, rows, np.array([1.21, 1.63, 1.2, 1.19]))
             if w.startswith("chains disagree")]
    assert len(modes) == 1 and "reduced chi^2 by chain" in modes[0] and "1: 1.630" in modes[0]
    assert "reduced chi^2" not in diagnostic_warnings(params, rows)[-1]


def test_mixed_chains_give_no_warnings():
    params = chains_of(np.random.default_rng(3), chains=4, draws=200)
    assert diagnostic_warnings(params, summarize(params)) == []


def test_too_few_draws_is_said_once(tmp_path, caplog):
    from scorelens.inference.run import log_diagnostics

    params = chains_of(np.random.default_rng(4), chains=2, draws=2)
    params["theta_E"][1] += 1.0  # not judged on 2 draws a chain
    rows = write_summary(tmp_path / "summary.csv", params)
    with (tmp_path / "summary.csv").open() as f:
        written = list(csv.DictReader(f))
    assert all(r["rhat"] == "nan" and r["ess_bulk"] == "nan" for r in written)
    with caplog.at_level(logging.INFO, logger="scorelens.inference.run"):
        warnings = log_diagnostics(rows, params)
    assert len(warnings) == 1 and "at least 4 recorded sweeps per chain, got 2" in warnings[0]
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in logged] == warnings
    assert "R-hat/bulk ESS over 2 chains x 2 recorded sweeps" in caplog.text

