"""The demo priors shipped in priors/demo/ load, are small, and sample finite images (see priors/demo/MODEL_CARD.md)."""

import pytest
import torch

from scorelens.data.training.normalization import PixelNorm
from scorelens.priors.checkpoint import load_prior
from tests.conftest import ROOT, compose_train

DEMO = ROOT / "priors" / "demo"
MAX_TOTAL_BYTES = 20 * 1024 * 1024

# file: (kind, image size, sigma_min, sigma_max, network units); the commands that trained them: MODEL_CARD.md
PRIORS = {
    "source.pt": ("source", 64, 1e-5, 100.0, PixelNorm()),
    "lens_light.pt": ("lens_light", 64, 1e-5, 40.0, PixelNorm()),
    "psf.pt": ("psf", 32, 1e-3, 5.0, PixelNorm(scale=0.04)),
}
COMMANDS = {  # the overrides of `python train.py ...` that trained each file
    "source.pt": ["prior=source_sim", "experiment=demo_source"],
    "lens_light.pt": ["prior=lens_light", "experiment=demo_lens_light"],
    "psf.pt": ["prior=psf_sim", "experiment=demo_psf"],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_demo_priors_and_their_model_card_are_shipped_within_20_mb():
    files = [p for p in DEMO.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {*PRIORS, "MODEL_CARD.md"}
    assert sum(p.stat().st_size for p in files) <= MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_a_demo_prior_loads_with_its_size_noise_range_and_units(name):
    kind, size, sigma_min, sigma_max, norm = PRIORS[name]
    prior = load_prior(DEMO / name, kind=kind, image_size=size, channels=1, sigma_min=sigma_min,
                       sigma_max=sigma_max)
    assert prior.image_shape == (1, size, size)
    assert prior.norm == norm
    assert all(torch.isfinite(p).all() for p in prior.net.state_dict().values())
    # EMA weights only: a prior file, not a training checkpoint with optimiser state
    payload = torch.load(DEMO / name, map_location="cpu", weights_only=True)
    assert payload["format"] == "scorelens-prior" and "optimizer_states" not in payload


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_a_demo_prior_draws_finite_samples(name):
    kind, size, *_ = PRIORS[name]
    prior = load_prior(DEMO / name, kind=kind)
    x = prior.sample(2, steps=20, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, size, size) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_the_documented_command_still_describes_the_shipped_prior(tmp_path, name):
    kind, size, sigma_min, sigma_max, _ = PRIORS[name]
    cfg = compose_train(COMMANDS[name], tmp_path / "run")
    assert (cfg.prior.kind, cfg.prior.image_size) == (kind, size)
    assert (cfg.sde.sigma_min, cfg.sde.sigma_max) == (sigma_min, sigma_max)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps <= 5000
    net = load_prior(DEMO / name).net.config
    assert all(net[key] == cfg.net[key] for key in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions"))
