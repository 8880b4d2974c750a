"""`load_lens`: a lens config (conf/lens/NAME.yaml) -> its `ExposureSet`, whatever form its data take.

It reads the config's data keys, resolves paths against `paths.data_dir`, generates a mock's files on first use,
and hands over to the loaders: FLT/FLC exposures (`flt.load_exposures`), a co-add (`coadd.load_coadd`) or a
lenstronomy HDF5 file (`coadd.load_lenstronomy_h5`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ...errors import DifferentMockError, InputError
from .coadd import load_coadd, load_lenstronomy_h5
from .exposure_set import ExposureSet
from .flt import load_exposures, require_file

log = logging.getLogger(__name__)


def _plain(cfg) -> dict:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return dict(cfg)


def load_lens(lens_cfg: Mapping, data_dir, size: int | None = None, dq_bad_bits=None,
              sky="header") -> ExposureSet:
    """The ExposureSet of a lens config (conf/lens/NAME.yaml), whatever form its data take.

    The config's data keys (paths relative to `data_dir` unless absolute):
      - `exposures`: FLT/FLC files -> `load_exposures` (needs `size` and `dq_bad_bits`, the config's `observations`);
        optional `mask` (one user mask for every exposure, e.g. a sky region file) or `masks` (one per file);
        a config with a `mock:` block generates its files first when they are missing, keeps them when they
        match, and refuses a different mock in their folder (`scorelens.data.simulate.mock.make_mock_from_config`);
      - `image`, `noise_map`, `psf` (+ `pixel_scale` when the files have no WCS, `psf_oversampling`, `mask`,
        `strict`: check the files instead of repairing them) -> `load_coadd`;
      - `h5` (+ `psf_h5`, `psf_oversampling`, `mask`, `filter`) -> `load_lenstronomy_h5`.

    Args:
        lens_cfg: the lens config (a Mapping or an OmegaConf node): name, ra, dec (degrees; needed by FLT/FLC
            exposures only: a co-add without them has its lens at the centre pixel) and the keys above.
        data_dir: the folder relative paths start from (paths.data_dir).
        size: FLT cutout side in pixels; None takes the config's `cutout` (or its mock's `cutout`). Co-adds
            (their pixels differ) take only the config's own `cutout`: their central `cutout` pixels, else all.
        dq_bad_bits: DQ bits that mark bad FLT pixels.
        sky: the sky subtracted from FLT chips (`scorelens.data.observations.sky.sky_level`; `observations.sky`).

    Raises:
        InputError: a missing file ("lens.KEY=PATH: file not found; ..."), a config with no data or with more
        than one kind of it, a pixel_scale or cutout that is not positive, and whatever the loaders raise.
    """
    cfg = _plain(lens_cfg)
    name = str(cfg.get("name", "lens"))
    data_dir = Path(data_dir)
    kinds = [k for k in ("exposures", "image", "h5") if cfg.get(k)]
    if len(kinds) != 1:
        raise InputError(f"lens config {name}: needs exactly one of 'exposures' (FLT/FLC files), 'image' (a co-add "
                         f"with noise_map and psf) or 'h5' (lenstronomy HDF5); found {kinds or 'none'}")
    # FLT/FLC cutouts are cut about the lens's sky position; a co-add without one has its lens at the centre pixel
    for key in ("ra", "dec"):
        value = cfg.get(key)
        if (value is None and kinds == ["exposures"]) or not isinstance(value, (int, float, type(None))) \
                or isinstance(value, bool):
            raise InputError(f"lens config {name}: '{key}' (degrees) is missing or not a number")
    ra, dec = (None if cfg.get(k) is None else float(cfg[k]) for k in ("ra", "dec"))
    for key in ("pixel_scale", "cutout"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
                                  or (key == "cutout" and int(value) != value)):
            what = "a positive number of arcsec per pixel" if key == "pixel_scale" else \
                "a positive number of pixels (or null: the whole image)"
            raise InputError(f"lens.{key}={value!r}: must be {what}")
    hint = f"relative paths start from {data_dir} (lens.data_dir, else paths.data_dir); or give an absolute path"

    def resolve(value, key: str, check: bool = True) -> Path:
        p = Path(str(value))
        p = p if p.is_absolute() else data_dir / p
        if check and not p.is_file():
            raise InputError(f"lens.{key}={p}: file not found; {hint}")
        return p

    def mask_of(value):
        return None if value is None else resolve(value, "mask")

    if kinds == ["exposures"]:
        values = cfg["exposures"]
        values = [values] if isinstance(values, str) else list(values)
        paths = [resolve(v, "exposures", check=False) for v in values]
        if cfg.get("mock") is not None:  # (only lenses of `exposures` are mocks: a co-add ignores the block)
            # generated when missing, kept when they match the config; files of other mock settings (another
            # seed) are refused, never silently used with a truth that is not theirs
            from ..simulate.mock import make_mock_from_config

            try:
                make_mock_from_config(cfg, data_dir)
            except DifferentMockError as err:
                raise InputError(f"lens {name}: {err.root} holds a different mock (seed {err.seed}), not the one "
                                 "these settings describe: set lens.mock.out_dir (or paths.data_dir) to another "
                                 "folder, or delete it") from None
        for p in paths:
            require_file(p, f"put the lens's FLT/FLC file there or set paths.data_dir (now {data_dir})")
        if size is None:
            size = cfg.get("cutout") or (cfg.get("mock") or {}).get("cutout")
        if size is None:
            raise InputError(f"lens config {name}: no cutout size (give size, e.g. observations.cutout)")
        if dq_bad_bits is None:
            raise InputError(f"lens config {name}: no dq_bad_bits given (observations.dq_bad_bits)")
        if cfg.get("masks") is not None:
            masks = [mask_of(m) for m in cfg["masks"]]
        else:
            masks = mask_of(cfg.get("mask"))
        return load_exposures(paths, ra, dec, int(size), dq_bad_bits, user_masks=masks, name=name, sky=sky)
    if kinds == ["image"]:
        for key in ("noise_map", "psf"):
            if not cfg.get(key):
                raise InputError(f"lens config {name}: a co-added 'image' needs '{key}' too")
        data = load_coadd(resolve(cfg["image"], "image"), resolve(cfg["noise_map"], "noise_map"),
                          resolve(cfg["psf"], "psf"), cfg.get("pixel_scale"), ra=ra, dec=dec, name=name,
                          psf_oversampling=cfg.get("psf_oversampling") or 1, user_mask=mask_of(cfg.get("mask")),
                          strict=bool(cfg.get("strict")), cutout=cfg.get("cutout"), key_prefix="lens.")
    else:
        psf = cfg.get("psf_h5") or cfg.get("psf")
        data = load_lenstronomy_h5(resolve(cfg["h5"], "h5"),
                                   None if psf is None else resolve(psf, "psf_h5" if cfg.get("psf_h5") else "psf"),
                                   ra=ra, dec=dec, name=name, psf_oversampling=cfg.get("psf_oversampling", 1),
                                   user_mask=mask_of(cfg.get("mask")), filter=cfg.get("filter"))
    crop = cfg.get("cutout")  # the co-add's own pixels: the global `size` is in FLT detector pixels
    if crop is not None:
        if any(int(crop) > min(e.shape) for e in data.exposures):
            log.warning("%s: lens.cutout=%d is larger than the co-add (%s pixels); the whole image is used", name,
                        int(crop), data.exposures[0].shape)
        cropped = [e.crop(int(crop)) for e in data.exposures]
        if any(c.shape != e.shape for c, e in zip(cropped, data.exposures, strict=True)):
            log.info("%s: co-add cropped from %s to its central %s pixels", name, data.exposures[0].shape,
                     cropped[0].shape)
            data = replace(data, exposures=cropped)
    return data
