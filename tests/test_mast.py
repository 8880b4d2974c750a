"""MAST download: destinations from the lens config, one-line advice when offline."""

import pytest
from omegaconf import OmegaConf

from scorelens.cli.data import main
from scorelens.data.observations.mast import download, targets
from scorelens.errors import InputError
from tests.conftest import compose_infer


def lens_settings(name: str) -> dict:
    return OmegaConf.to_container(compose_infer([f"lens={name}"]).lens, resolve=True)


def test_targets_follow_the_lens_config(tmp_path):
    lens = lens_settings("J1430")
    got = targets(lens, tmp_path)
    assert [f for f, _ in got] == [f"{r}_flt.fits" for r in lens["rootnames"]]
    assert all(d.parent == tmp_path / "J1430" for _, d in got)
    assert targets(lens, tmp_path, "flc")[0][1].name.endswith("_flc.fits")


def test_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    mast = pytest.importorskip("astroquery.mast")

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'mast.stsci.edu'")

    monkeypatch.setattr(mast.Observations, "query_criteria", no_network)
    with pytest.raises(InputError, match=r"cannot reach MAST; download j9op36bfq_flt.fits .* put them in .*J1430"):
        download(lens_settings("J1430"), tmp_path)
    assert main(["mast", "J1430", "--data-dir", str(tmp_path)]) == 2


def test_files_in_place_need_no_network(tmp_path):
    lens = lens_settings("J1430")
    for _, dest in targets(lens, tmp_path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"x")
    assert len(download(lens, tmp_path)) == 4


def test_unknown_lens_and_non_flt_lens(tmp_path, caplog):
    assert main(["mast", "J9999", "--data-dir", str(tmp_path)]) == 2
    assert "no lens config named 'J9999'" in caplog.text
    with pytest.raises(InputError, match="not an FLT-based lens config"):
        targets(lens_settings("J1430_drz"), tmp_path)
