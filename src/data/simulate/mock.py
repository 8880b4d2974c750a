"""Mock SLACS-like lens systems with known truth, written as ACS/WFC FLT-like FITS exposures plus truth files.

A mock is a lens galaxy (1-3 Sersic components) with an elliptical power-law mass, external shear and m = 3, 4
multipoles, a lensed source (a given galaxy image, else a Sersic disc with clumps), a few stars, observed in
`n_exp` dithered F814W exposures. Each exposure has its own WCS (TAN + SIP, a 4-point box dither, tiny roll
differences) and a small alignment shift that is applied when rendering but is *not* in the WCS (the sampler's
job is to find it; exposure 0 is the reference with zero shift). Noiseless frames come from the project's forward
model (`scorelens.lensing.forward.ForwardModel`, float64) on the per-pixel sky grid of each WCS, so the truth files plus
the FITS headers reproduce them exactly (`render_truth`).

Per exposure, in electrons: SCI = Poisson(model + sky) + N(0, read_noise^2) + cosmic rays + hot pixels (the sky
is *kept*, as in calibrated FLTs, and recorded as MDRIZSKY); ERR = sqrt(model + sky + read_noise^2); DQ flags
cosmic rays with 8192 and hot pixels with 4. The frame is a small sub-array of a WFC chip (`frame`, default
200 x 200 pixels) rather than the whole 4096 x 2048 chip.

The settings are `mock_config.MockConfig`; `mock_build.build_mock` draws and renders a mock in memory; this module
writes it and reads it back. Files in `out_dir`: `<rootname>_flt.fits` per exposure, `truth.json` (numbers) and
`truth.npz` (arrays); see `build_mock` for their contents. `truth.json` is written last and marks a complete mock.

    scorelens-data mock OUT_DIR [--seed N] [--overwrite]
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ...atomic import atomic_write
from ...errors import DifferentMockError, InputError
from ...lensing.grid import PixelGrid
from . import scene
from .mock_build import TRUTH_NPZ, build_mock, render_frames
from .mock_config import FORMAT, VERSION, config_hash, mock_config

log = logging.getLogger(__name__)

TRUTH_JSON = "truth.json"


@dataclass
class MockPaths:
    """Where a mock lies: its directory, FLT files (one per exposure) and truth files."""

    root: Path
    exposures: list[Path] = field(default_factory=list)
    truth_json: Path | None = None
    truth_npz: Path | None = None


@dataclass
class MockTruth:
    """A mock's truth: `meta` (the contents of truth.json) and `arrays` (those of truth.npz), from `root`."""

    root: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def mass(self) -> dict[str, float]:
        return dict(self.meta["mass"])

    @property
    def shifts(self) -> np.ndarray:
        return np.asarray(self.meta["shifts"], dtype=np.float64)

    def source_grid(self) -> PixelGrid:
        return PixelGrid(**self.meta["source_grid"])

    def lens_light_grid(self) -> PixelGrid:
        return PixelGrid(**self.meta["lens_light_grid"])

    def exposure_paths(self) -> list[Path]:
        return [self.root / e["file"] for e in self.meta["exposures"]]


# ------------------------------------------------------------------------------------------------- writing


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz (numpy.load reads it) with fixed member timestamps, so equal arrays give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def _json_text(meta: Mapping) -> str:
    return json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _paths(root: Path, names: Sequence[str]) -> MockPaths:
    return MockPaths(root, [root / n for n in names], root / TRUTH_JSON, root / TRUTH_NPZ)


def _existing(root: Path) -> dict | None:
    try:
        meta = json.loads((root / TRUTH_JSON).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise InputError(f"{root / TRUTH_JSON} exists but cannot be read ({err}); remove it or pass overwrite=True") \
            from None
    if not isinstance(meta, dict):
        raise InputError(f"{root / TRUTH_JSON} is not a mock's truth file; remove it or pass overwrite=True")
    return meta


def make_mock(out_dir, *, source_image=None, overwrite: bool = False, **settings) -> MockPaths:
    """Generate a mock lens system and write it into `out_dir` (created if needed).

    Args:
        out_dir: directory for the FLT files and truth files.
        source_image: optional 2-D galaxy image used as the source (resampled so that its longer side spans
            source_image_fov arcsec); else a Sersic disc plus clumps.
        overwrite: replace a different mock already in out_dir (otherwise that is a `DifferentMockError`). A mock
            with the same settings and seed that is complete is kept as it is.
        settings: MockConfig fields (seed, n_exp, frame, cutout, pixel_scale, upsample, exptime, sky, read_noise,
            ...); defaults as in MockConfig and conf/lens/mock.yaml.

    Returns:
        MockPaths of the files.
    """
    cfg = mock_config(**settings)
    image = None if source_image is None else scene.check_source_image(source_image)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"mock output {root} exists and is not a directory")
    paths = _paths(root, cfg.file_names())
    try:
        old = _existing(root)
    except InputError:
        if not overwrite:
            raise
        old = {}  # unreadable: replaced
    if old is not None:
        complete = all((root / n).is_file() for n in old.get("files", {}).get("exposures", [])) and \
            (root / TRUTH_NPZ).is_file()
        if old.get("config_hash") == config_hash(cfg, image) and complete and not overwrite:
            log.info("mock in %s already holds these settings (seed %s): kept", root, cfg.seed)
            return paths
        if not overwrite and complete:
            raise DifferentMockError(root, old.get("seed"))
    log.info("making mock %s (seed %d, %d exposures of %d x %d pixels) in %s", cfg.name, cfg.seed, cfg.n_exp,
             *cfg.frame, root)
    meta, arrays, hdulists = build_mock(cfg, image)

    root.mkdir(parents=True, exist_ok=True)
    if old is not None:
        # the directory holds no complete mock until the new truth.json lands
        (root / TRUTH_JSON).unlink(missing_ok=True)
        for name in set(old.get("files", {}).get("exposures", [])) - set(cfg.file_names()):
            if (root / name).is_file() and name.endswith("_flt.fits"):
                (root / name).unlink()
    for path, hdul in zip(paths.exposures, hdulists, strict=True):
        atomic_write(path, lambda tmp, hdul=hdul: hdul.writeto(tmp, output_verify="exception"))
    atomic_write(paths.truth_npz, lambda tmp: _write_npz(tmp, arrays))
    text = _json_text(meta)
    atomic_write(paths.truth_json, lambda tmp: tmp.write_text(text))
    log.info("mock written: %s (theta_E %.3f, source peak SNR %.1f)", root, meta["mass"]["theta_E"],
             meta["source"]["peak_snr"])
    return paths


def make_mock_from_config(lens_cfg: Mapping, data_dir, overwrite: bool = False) -> MockPaths:
    """Generate (or keep) the mock that a lens config describes (conf/lens/mock.yaml: name, ra, dec, z_lens,
    z_source and a `mock:` block with `out_dir`, relative to data_dir unless absolute, and MockConfig settings)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(lens_cfg):
            lens_cfg = OmegaConf.to_container(lens_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    block = dict(lens_cfg.get("mock") or {})
    out = Path(block.pop("out_dir", lens_cfg.get("name", "mock")))
    root = out if out.is_absolute() else Path(data_dir) / out
    top = {k: lens_cfg[k] for k in ("name", "ra", "dec", "z_lens", "z_source") if k in lens_cfg}
    return make_mock(root, overwrite=overwrite, **top, **block)


# ------------------------------------------------------------------------------------------------- reading


def load_truth(root) -> MockTruth:
    """The truth of the mock in directory `root` (InputError if it is not a complete mock)."""
    root = Path(root)
    meta = _existing(root)
    if meta is None or meta.get("format") != FORMAT:
        raise InputError(f"{root} holds no mock lens ({TRUTH_JSON} missing or of another format)")
    if meta.get("version") != VERSION:
        raise InputError(f"{root} holds a mock of format version {meta.get('version')}, this code reads {VERSION}; "
                         "regenerate it with overwrite=True")
    try:
        with np.load(root / TRUTH_NPZ, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {root / TRUTH_NPZ}: {err}") from None
    return MockTruth(root, meta, arrays)


def read_wcs(path) -> WCS:
    """The WCS of an FLT file's SCI extension (SIP included), as any reader of the file gets it."""
    with fits.open(path) as hdul:
        return WCS(hdul["SCI"].header, hdul)


def render_truth(root) -> dict[str, np.ndarray]:
    """Rebuild a mock's noiseless frames from its truth files and the WCS in its FITS files alone.

    Returns:
        The dict of `render_frames` (lensed_source, lens_light, noiseless, stars, noiseless_stars, sky_x, sky_y;
        each [n_exp, H, W], float64), equal to the stored frames to float64 round-off.
    """
    truth = load_truth(root)
    wcs_list = [read_wcs(p) for p in truth.exposure_paths()]
    return render_frames(wcs_list, truth.meta, truth.arrays)
