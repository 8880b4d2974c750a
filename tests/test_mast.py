"""MAST download: destinations from the lens config, one batched query, resumable files, and a one-line message for
each way it can fail (no network, unknown file, proprietary data, MAST's own error). MAST itself is stood in for
by a fake astroquery and a local HTTP server: tests never reach the network."""

import http.server
import threading

import numpy as np
import pytest
from astropy.table import Table
from omegaconf import OmegaConf

from scorelens.cli.data import main
from scorelens.data.observations.mast import download, fetch, targets
from scorelens.errors import InputError
from tests.conftest import compose_infer

mast = pytest.importorskip("astroquery.mast")
URL = "https://mast.stsci.edu/api/v0.1/Download/file"


def lens_settings(name: str) -> dict:
    return OmegaConf.to_container(compose_infer([f"lens={name}"]).lens, resolve=True)


def test_targets_follow_the_lens_config(tmp_path):
    lens = lens_settings("J1430")
    got = targets(lens, tmp_path)
    assert [f for f, _ in got] == [f"{r}_flt.fits" for r in lens["rootnames"]]
    assert all(d.parent == tmp_path / "J1430" for _, d in got)
    assert targets(lens, tmp_path, "flc")[0][1].name.endswith("_flc.fits")


def test_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'mast.stsci.edu'")

    monkeypatch.setattr(mast.Observations, "query_criteria", no_network)
    with pytest.raises(InputError, match=r"cannot reach MAST; download j9op36bfq_flt.fits .* put them in .*J1430"):
        download(lens_settings("J1430"), tmp_path, "flt", URL)
    assert main(["mast", "J1430", "--data-dir", str(tmp_path)]) == 2


def test_files_in_place_need_no_network(tmp_path):
    lens = lens_settings("J1430")
    for _, dest in targets(lens, tmp_path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"x")
    assert len(download(lens, tmp_path, "flt", URL)) == 4


def test_unknown_lens_and_non_flt_lens(tmp_path, caplog):
    assert main(["mast", "J9999", "--data-dir", str(tmp_path)]) == 2
    assert "no lens config named 'J9999'" in caplog.text
    with pytest.raises(InputError, match="not an FLT-based lens config"):
        targets(lens_settings("J1430_drz"), tmp_path)


# ------------------------------------------------------------------------------------- a stand-in for MAST


class Files(http.server.BaseHTTPRequestHandler):
    """Serves `contents` {uri: bytes} at /file?uri=URI, honouring Range requests; records what was asked."""

    contents: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802 - the handler API
        from urllib.parse import parse_qs, unquote, urlparse

        uri = unquote(parse_qs(urlparse(self.path).query)["uri"][0])
        body = self.contents.get(uri)
        self.requests.append((uri, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if start >= len(body):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Files.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file"
    httpd.shutdown()


@pytest.fixture
def fake_mast(monkeypatch):
    """astroquery's Observations answering from a product table; counts the queries."""
    calls = {"query": [], "products": 0}
    table = {"rows": []}

    def query_criteria(**kw):
        calls["query"].append(kw)
        return Table({"obs_id": list(kw["obs_id"])})

    def get_product_list(obs):
        calls["products"] += 1
        rows = table["rows"]
        return Table(rows=rows, names=("productFilename", "dataURI", "dataRights")) if rows else Table()

    def filter_products(products, productFilename):  # noqa: N803 - astroquery's keyword
        keep = [str(n) in productFilename for n in products["productFilename"]] if len(products) else []
        return products[np.asarray(keep, dtype=bool)] if len(products) else products

    monkeypatch.setattr(mast.Observations, "query_criteria", query_criteria)
    monkeypatch.setattr(mast.Observations, "get_product_list", get_product_list)
    monkeypatch.setattr(mast.Observations, "filter_products", filter_products)
    return calls, table


def _serve_lens(fake_mast, rights="PUBLIC"):
    lens = lens_settings("J1430")
    files = [f"{r}_flt.fits" for r in lens["rootnames"]]
    Files.contents = {f"mast:HST/product/{f}": bytes([i]) * (3000 + 7 * i) for i, f in enumerate(files)}
    fake_mast[1]["rows"] = [(f, f"mast:HST/product/{f}", rights) for f in files]
    return lens, files


def test_one_batched_query_fetches_every_missing_file(tmp_path, fake_mast, server):
    lens, files = _serve_lens(fake_mast)
    first = targets(lens, tmp_path)[0][1]
    first.parent.mkdir(parents=True)
    first.write_bytes(b"already here")
    paths = download(lens, tmp_path, "flt", server)
    calls, _ = fake_mast
    # one observation query naming the three missing rootnames, one product list
    assert len(calls["query"]) == 1 and calls["products"] == 1
    assert sorted(calls["query"][0]["obs_id"]) == sorted(r for r in lens["rootnames"][1:])
    assert first.read_bytes() == b"already here"
    for i, p in enumerate(paths[1:], start=1):
        assert p.read_bytes() == bytes([i]) * (3000 + 7 * i)
    assert not list(tmp_path.rglob("*.part"))


def test_a_cut_download_resumes_from_its_part_file(tmp_path, fake_mast, server):
    lens, files = _serve_lens(fake_mast)
    uri = f"mast:HST/product/{files[0]}"
    dest = tmp_path / "x_flt.fits"
    (tmp_path / "x_flt.fits.part").write_bytes(Files.contents[uri][:1000])
    fetch(f"{server}?uri={uri}", dest)
    assert dest.read_bytes() == Files.contents[uri] and Files.requests[-1] == (uri, "bytes=1000-")


def test_unknown_and_proprietary_files_and_mast_errors_are_one_line(tmp_path, fake_mast, server, monkeypatch):
    lens, files = _serve_lens(fake_mast)
    fake_mast[1]["rows"] = fake_mast[1]["rows"][1:]
    with pytest.raises(InputError, match=rf"MAST has no product {files[0]} for J1430; check the rootnames"):
        download(lens, tmp_path, "flt", server)
    _serve_lens(fake_mast, rights="EXCLUSIVE_ACCESS")
    with pytest.raises(InputError, match="proprietary .* MAST token"):
        download(lens, tmp_path, "flt", server)
    from astroquery.exceptions import RemoteServiceError

    def refused(**kw):
        raise RemoteServiceError("Error converting data type varchar to numeric.")

    monkeypatch.setattr(mast.Observations, "query_criteria", refused)
    with pytest.raises(InputError, match="MAST refused the query: Error converting") as err:
        download(lens, tmp_path, "flt", server)
    assert "cannot reach" not in str(err.value) and "\n" not in str(err.value)


def test_a_file_mast_does_not_serve_is_said(tmp_path, fake_mast, server):
    lens, files = _serve_lens(fake_mast)
    Files.contents.pop(f"mast:HST/product/{files[2]}")
    with pytest.raises(InputError, match=rf"downloading {files[2]} from MAST failed: 404"):
        download(lens, tmp_path, "flt", server)
    # the files before it are in place: running again fetches only what is missing
    assert (tmp_path / "J1430" / files[0]).is_file() and (tmp_path / "J1430" / files[1]).is_file()


def test_infer_fetches_a_slacs_lens_on_its_first_run(tmp_path, monkeypatch):
    from scorelens.inference import setup

    cfg = OmegaConf.to_container(compose_infer(["lens=J1430", f"paths.data_dir={tmp_path}"]), resolve=False)
    cfg["paths"] = {"data_dir": str(tmp_path), "root_dir": str(tmp_path)}
    asked = []
    monkeypatch.setattr("scorelens.data.observations.mast.download", lambda *a: asked.append(a))
    setup.fetch_exposures(cfg, tmp_path)
    assert len(asked) == 1 and asked[0][2:] == ("flt", URL)
    cfg["observations"]["mast"]["fetch"] = False
    setup.fetch_exposures(cfg, tmp_path)
    assert len(asked) == 1
    # a mock names rootnames too, but its files are simulated on first use
    mock = OmegaConf.to_container(compose_infer(["lens=mock", f"paths.data_dir={tmp_path}"]), resolve=False)
    mock["paths"] = cfg["paths"]
    assert mock["lens"].get("rootnames") and mock["observations"]["mast"]["fetch"]
    setup.fetch_exposures(mock, tmp_path)
    assert len(asked) == 1
