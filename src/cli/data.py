"""`scorelens-data`: the data tools, each a subcommand; exit status 2 with one line on bad input.

    scorelens-data galaxies INPUT OUTPUT [options] [key=value ...]   galaxy images -> the source prior's training set
    scorelens-data psfs build FLT_FOLDER OUTPUT.h5 [options] [key=value ...]   ePSFs from stars -> PSF training stack
    scorelens-data psfs convert INPUT OUTPUT.h5 [options] [key=value ...]      PSF libraries -> PSF training stack
    scorelens-data mast LENS [--data-dir data] [--kind flt|flc] [key=value ...]   a lens's exposures from MAST
    scorelens-data mock OUT_DIR [--seed N] [--overwrite]                          a simulated lens with known truth
    scorelens-data coadd-mock OUT_DIR --galaxies FILE.. --psf FILE [--seed N]     the same as one co-add, by lenstronomy
    scorelens-data catalog CSV OUT_DIR                                           lens configs from the SLACS catalogue

Defaults come from the composed Hydra configs, as `train.py` and `infer.py` compose them (`prior=source`'s
`prepare`, `prior=psf`'s `data.train`, the infer config's `stars` and `lens`); trailing `key=value` arguments are
Hydra overrides of that config (e.g. `stars.find.snr_min=30`), and the options override both.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import InputError
from .config import compose_config

log = logging.getLogger("scorelens-data")
OVERRIDE = re.compile(r"^((\+{1,2})?[A-Za-z_][\w.@/-]*=|~[A-Za-z_][\w.@/-]*(=|$))")


def _galaxies(args) -> None:
    from ..data.training.galaxy_prepare import prepare

    node = OmegaConf.to_container(compose_config("train", ["prior=source", *args.overrides]).prepare, resolve=True)
    for key in ("size", "pixel_scale", "centre", "mask_neighbours", "mask_fill", "border", "detect_sigma",
                "min_size", "seed"):
        value = getattr(args, key)
        if value is not None:
            node[key] = value
    prepare(args.input, args.output, overwrite=args.overwrite, **node)


def _psfs(args) -> None:
    from ..data.psf.library import build_epsf_stack, convert_psfs

    if args.command == "build":
        stars = compose_config("infer", list(args.overrides)).stars
        build_epsf_stack(args.flt_folder, args.output, find=stars.find, epsf=stars.epsf,
                         oversampling=args.oversampling, size=args.size, per_chip=args.per_chip,
                         pattern=args.pattern)
        return
    readers = OmegaConf.to_container(compose_config("train", ["prior=psf", *args.overrides]).data.train,
                                     resolve=False)
    for key in ("oversampling", "cube_oversampling", "image_oversampling", "detector_pixel_scale"):
        value = getattr(args, key)
        if value is not None:
            readers[key] = value
    convert_psfs(args.input, args.output, readers=readers, size=args.size)


def _mast(args) -> None:
    from hydra.errors import MissingConfigException

    from ..data.observations.mast import download

    try:
        cfg = compose_config("infer", [f"lens={args.lens}", *args.overrides])
    except MissingConfigException:
        raise InputError(f"no lens config named {args.lens!r} (conf/lens/<name>.yaml)") from None
    download(OmegaConf.to_container(cfg.lens, resolve=True), Path(args.data_dir), args.kind,
             cfg.observations.mast.download_url)


def _mock(args) -> None:
    from ..data.simulate.mock import make_mock
    from ..data.simulate.mock_config import MockConfig

    paths = make_mock(args.out_dir, seed=MockConfig.seed if args.seed is None else args.seed,
                      overwrite=args.overwrite)
    log.info("exposures: %s", ", ".join(p.name for p in paths.exposures))


def _coadd_mock(args) -> None:
    from ..data.simulate.lenstronomy_coadd import CoaddMockSettings, make_coadd_mock, read_galaxies, read_psf

    try:
        import lenstronomy  # noqa: F401
    except ImportError:
        raise InputError("coadd-mock renders with lenstronomy: pip install lenstronomy (or scorelens[dev])") from None
    settings = CoaddMockSettings(pixel_scale=args.pixel_scale, size=args.size)
    root = make_coadd_mock(args.out_dir, args.seed, read_galaxies(args.galaxies), read_psf(args.psf), settings)
    log.info("wrote %s: run it with  python infer.py lens=fits lens.image=%s lens.noise_map=%s lens.psf=%s "
             "lens.pixel_scale=%s", root, root / "image.fits", root / "noise_map.fits", root / "psf.fits",
             args.pixel_scale)


def _catalog(args) -> None:
    from ..data.catalog import write_lens_configs

    write_lens_configs(args.catalog, args.out_dir)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="scorelens-data", description="scorelens' data tools; trailing key=value "
                                  "arguments are Hydra overrides of the config the defaults come from.")
    sub = top.add_subparsers(dest="tool", required=True)

    g = sub.add_parser("galaxies", help="galaxy images -> the source prior's training set (an Arrow dataset)",
                       description="Convert a folder of FITS images, an HDF5 stack, a GalSim RealGalaxy catalogue or "
                       "a saved Hugging Face dataset into the Arrow dataset of the source prior.")
    g.set_defaults(run=_galaxies)
    g.add_argument("input", help="folder of FITS files, .h5/.hdf5 stack, RealGalaxy catalogue .fits, or saved dataset")
    g.add_argument("output", help="folder to write (the training config reads ${paths.data_dir}/source/galaxies)")
    g.add_argument("--size", type=int, help="pixels per side (default: prepare.size)")
    g.add_argument("--pixel-scale", type=float, help="arcsec per pixel (default: prepare.pixel_scale)")
    g.add_argument("--centre", choices=("centroid", "peak"))
    g.add_argument("--mask-neighbours", action=argparse.BooleanOptionalAction, default=None,
                   help="replace sources not connected to the central galaxy")
    g.add_argument("--mask-fill", choices=("noise", "zero"))
    g.add_argument("--border", type=int, help="edge width for the background estimate, pixels")
    g.add_argument("--detect-sigma", type=float)
    g.add_argument("--min-size", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")

    p = sub.add_parser("psfs", help="PSF training stacks (HDF5 `images` [n, size, size], unit-sum PSFs)")
    p.set_defaults(run=_psfs)
    ps = p.add_subparsers(dest="command", required=True)
    b = ps.add_parser("build", help="ePSFs from the stars in a folder of FLT/FLC files (settings: stars.find, "
                      "stars.epsf)")
    b.add_argument("flt_folder")
    b.add_argument("output")
    b.add_argument("--oversampling", type=int, help="default: stars.epsf.oversampling")
    b.add_argument("--size", type=int, help="ePSF side, fine pixels (default: stars.epsf.size)")
    b.add_argument("--per-chip", action="store_true", help="one ePSF per chip instead of per file")
    b.add_argument("--pattern", default="*_fl[tc].fits", help="file names to use (default %(default)s)")
    c = ps.add_parser("convert", help="STDPSF cubes, TinyTim files, stacks or a folder of them (settings: the PSF "
                      "prior's data.train)")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--oversampling", type=float)
    c.add_argument("--size", type=int, default=128, help="PSF side, fine pixels (default %(default)s)")
    c.add_argument("--cube-oversampling", type=float)
    c.add_argument("--image-oversampling", type=float)
    c.add_argument("--detector-pixel-scale", type=float, help="arcsec per detector pixel")

    m = sub.add_parser("mast", help="download a lens's HST exposures from MAST")
    m.set_defaults(run=_mast)
    m.add_argument("lens", help="lens config name, e.g. J1430")
    m.add_argument("--data-dir", default="data", help="the inference's paths.data_dir (default: ./data)")
    m.add_argument("--kind", default="flt", choices=["flt", "flc"], help="FLT or CTE-corrected FLC files")

    k = sub.add_parser("mock", help="a mock lens system with known truth: FLT-like exposures, truth.json/.npz")
    k.set_defaults(run=_mock)
    k.add_argument("out_dir", help="directory for the mock's files")
    k.add_argument("--seed", type=int, help="random seed (default: the mock's default seed)")
    k.add_argument("--overwrite", action="store_true", help="replace a different mock in OUT_DIR")

    c = sub.add_parser("coadd-mock", help="a co-added mock lens rendered by lenstronomy (lens=fits reads it): "
                       "image.fits, noise_map.fits, psf.fits, truth.json")
    c.set_defaults(run=_coadd_mock)
    c.add_argument("out_dir", help="directory for the mock's files")
    c.add_argument("--galaxies", nargs="+", required=True,
                   help="FITS files of galaxy stamps (every image HDU) or HDF5 files with `images`: the source")
    c.add_argument("--psf", required=True, help="FITS image of the PSF at the co-add's pixel scale")
    c.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    c.add_argument("--size", type=int, default=100, help="pixels per side (default 100)")
    c.add_argument("--pixel-scale", type=float, default=0.05, help="arcsec per pixel (default 0.05)")

    t = sub.add_parser("catalog", help="write conf/lens/*.yaml from the SLACS catalogue CSV")
    t.set_defaults(run=_catalog)
    t.add_argument("catalog", help="CSV with Bolton et al. 2008 values (see scorelens.data.catalog)")
    t.add_argument("out_dir", help="folder for the lens configs, e.g. conf/lens")
    return top


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(arguments, Hydra overrides): `key=value` words (Hydra's grammar, also `+key=`, `~key`) are overrides."""
    rest, overrides = [], []
    for word in argv:
        (overrides if OVERRIDE.match(word) else rest).append(word)
    return rest, overrides


def main(argv: Sequence[str] | None = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser().parse_args(rest)
    args.overrides = overrides
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except InputError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
