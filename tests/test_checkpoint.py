"""Prior files: round trip, safe loading, and one-line errors for checkpoints that do not fit."""


import pytest
import torch

from scorelens.data.training.normalization import PixelNorm
from scorelens.errors import InputError
from scorelens.priors.checkpoint import load_prior, save_prior
from scorelens.priors.ncsnpp import NCSNpp
from scorelens.priors.prior import ScorePrior
from scorelens.priors.sde import VESDE

TINY = dict(channels=1, resolution=16, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def make_prior(kind="lens_light", smin=1e-5, smax=200.0) -> ScorePrior:
    torch.manual_seed(0)
    return ScorePrior(NCSNpp(**TINY), VESDE(smin, smax), kind, PixelNorm(scale=3.0, offset=0.5))


def test_round_trip_gives_the_same_network_and_metadata(tmp_path):
    prior = make_prior()
    path = save_prior(prior, tmp_path / "prior.pt")
    loaded = load_prior(path, kind="lens_light", image_size=16, channels=1, sigma_min=1e-5, sigma_max=200)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0.1, 0.9])
    torch.testing.assert_close(loaded.score(x, t), prior.score(x, t), rtol=0, atol=0)
    assert loaded.kind == "lens_light" and loaded.image_shape == (1, 16, 16)
    assert loaded.norm == PixelNorm(scale=3.0, offset=0.5)
    assert (loaded.sde.sigma_min, loaded.sde.sigma_max) == (1e-5, 200.0)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="source"), "'lens_light' prior, but a 'source'"),
    (dict(image_size=256), "16x16 pixels, but 256x256"),
    (dict(channels=3), "1 channels, 3 are needed"),
    (dict(sigma_max=500.0), "sigma_max=200, but sigma_max=500"),
    (dict(sigma_min=1e-3), "sigma_min=1e-05, but sigma_min=0.001"),
])
def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path, kwargs, match):
    path = save_prior(make_prior(), tmp_path / "prior.pt")
    with pytest.raises(InputError, match=match):
        load_prior(path, **kwargs)


class Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "scorelens-prior", "payload": Exploit()}, path)
    with pytest.raises(InputError, match="not a readable scorelens checkpoint"):
        load_prior(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_truncated_foreign_and_mismatched_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_prior(tmp_path / "nope.pt")

    good = save_prior(make_prior(), tmp_path / "prior.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable"):
        load_prior(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="not a scorelens prior"):
        load_prior(foreign)

    payload = torch.load(good, weights_only=True)
    payload["net"]["nf"] = 16  # the weights no longer fit the described network
    bad = tmp_path / "mismatch.pt"
    torch.save(payload, bad)
    with pytest.raises(InputError, match="do not fit"):
        load_prior(bad)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(InputError):
        load_prior(text)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous prior file intact."""
    path = save_prior(make_prior(), tmp_path / "prior.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_prior(make_prior(kind="source"), path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("kind"), r"lacks the metadata \['kind'\]"),
    (lambda p: p.pop("sde"), r"lacks the metadata \['sde'\]"),
    (lambda p: p.pop("state_dict"), "holds no weights"),
    (lambda p: p.update(kind="galaxy"), "unknown prior kind 'galaxy'"),
    (lambda p: p["net"].pop("resolution"), "needs whole-number resolution and channels"),
    (lambda p: p["sde"].update(sigma_min=600.0), "needs 0 < sigma_min < sigma_max"),
    (lambda p: p["net"].update(blocks=3), "describe no network, SDE or normalisation"),
    (lambda p: p["norm"].update(gain=2.0), "describe no network, SDE or normalisation"),
])
def test_a_prior_file_with_missing_or_wrong_metadata_is_one_line(tmp_path, change, message):
    payload = torch.load(save_prior(make_prior(), tmp_path / "prior.pt"), weights_only=True)
    change(payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(InputError, match=message) as err:
        load_prior(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
