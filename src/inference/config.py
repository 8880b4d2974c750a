"""The schema of the composed infer config (conf/infer.yaml with its groups): the keys that exist and their types.

`validate_infer_config(cfg)` checks a composed config before any work is done, so that a mistyped key
(`lens.intt`, `observations.skyy`), a value of the wrong type or a required value left unset (`???`) fails at once,
in one line naming the key and what is allowed, instead of being ignored or failing deep inside a run. Hydra
itself refuses `key=value` overrides of keys that do not exist; the schema catches what config files (a lens
config, an experiment) and `+key=value` overrides add.

Some nodes are checked against the code that reads them, so that their keys are named in one place only:
`stars.find` by `scorelens.data.psf.stars.find_settings`, `stars.epsf` by the keywords of
`scorelens.data.psf.epsf.build_epsf`, a mock lens's `mock:` block by `MockConfig`. The `sampler` node belongs to
the sampler: its stages, SDE settings and parameter priors are checked by the code that reads them
(`validate_sampler_config`).

Defaults live in conf/ only: every key the config groups write is required here (MISSING), so the schema never
fills in a value of its own; keys that a lens config may leave out default to None.

The check only reads the config: values are not converted (the run's config hash is computed from them as given).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from ..errors import InputError
from ..lensing.mass import PARAM_NAMES
from .distributed import check_device
from .summary_table import cosmology

Number = int | float  # YAML writes 3 and 3.0 differently; both are numbers here


# ------------------------------------------------------------------------------------------------------ lens

# The chains' starting mass model: every parameter of DESIGN.md, by name
MassInit = dataclasses.make_dataclass("MassInit", [(name, float, field(default=MISSING)) for name in PARAM_NAMES])


@dataclass
class CatalogEntry:
    """A SLACS lens's SIE model as published (Bolton et al. 2008, Table 5): the record its `init` comes from."""

    b_SIE_arcsec: float = MISSING
    q_SIE: float = MISSING
    PA_SIE_deg: float = MISSING      # degrees east of north
    sigma_sdss_kms: float | None = None


@dataclass
class LensConfig:
    """conf/lens/NAME.yaml. Data: `exposures` (FLT/FLC files, with `mask` or `masks`), or a co-add (`image`,
    `noise_map`, `psf`, `pixel_scale`, `psf_oversampling`, `mask`, `cutout`, `strict`), or lenstronomy HDF5 (`h5`,
    `psf_h5`, `filter`); `scorelens.data.observations.lens.load_lens` says which combinations it takes. A co-add
    needs no `ra`, `dec` (its lens is then at the centre pixel) nor redshifts (figures then in arcsec only)."""

    name: str = MISSING
    sdss_name: str | None = None
    ra: float | None = None          # degrees
    dec: float | None = None
    data_dir: str | None = None      # where this lens's relative paths start (relative to paths.root_dir); null:
                                     # paths.data_dir
    source_fov: Number | str | None = None  # arcsec across the source grid, or auto (`setup.source_pixel_scale`);
                                           # null: lensing.source.pixel_scale
    z_lens: float | None = None
    z_source: float | None = None
    init_from: str | None = None     # auto: the start finder; init (or null): `init`; catalog: a mock's entry
    init: MassInit | None = None     # required by init_from: init; a seed of the start finder with auto
    catalog: CatalogEntry | None = None
    rootnames: list[str] | None = None   # MAST rootnames of `exposures` (scorelens-data mast)
    exposures: Any = None            # a path or a list of paths
    mask: str | None = None
    masks: list[str | None] | None = None
    image: str | None = None
    noise_map: str | None = None
    psf: str | None = None
    pixel_scale: float | None = None
    psf_oversampling: int | None = None
    h5: str | None = None
    psf_h5: str | None = None
    filter: str | None = None
    cutout: int | None = None
    strict: bool | None = None       # a co-add's PSF and pixels checked, not repaired (`coadd.load_coadd`)
    mock: dict[str, Any] | None = None   # a simulated lens: MockConfig's settings and `out_dir`


# --------------------------------------------------------------------------------- model, data and priors


@dataclass
class SourceGrid:
    n: int = MISSING
    pixel_scale: float = MISSING     # arcsec
    x0: float = MISSING
    y0: float = MISSING


@dataclass
class LensLightGrid(SourceGrid):
    pixel_scale: float | None = MISSING  # null: from the detector and the exposures' footprint


@dataclass
class LensingConfig:
    """conf/lensing (`scorelens.lensing.geometry.ModelGeometry.from_config`)."""

    upsample: int = MISSING
    psf_size: int = MISSING
    source: SourceGrid = field(default_factory=SourceGrid)
    lens_light: LensLightGrid = field(default_factory=LensLightGrid)
    n_terms: int | None = MISSING
    margin: Any = MISSING            # detector pixels beyond the cutout's edges, or auto (the PSF's half-width)


@dataclass
class MastConfig:
    """conf/observations `mast:`: fetching a lens's exposures (`scorelens.data.observations.mast`)."""

    fetch: bool = MISSING
    download_url: str = MISSING


@dataclass
class ObservationsConfig:
    """conf/observations: how FLT/FLC files become cutouts."""

    cutout: int = MISSING
    dq_bad_bits: list[int] = MISSING
    sky: Any = MISSING               # header, median, none or a number
    mast: MastConfig = field(default_factory=MastConfig)


@dataclass
class StarsConfig:
    """conf/stars; keys checked against their readers (`_check_stars`)."""

    find: dict[str, Any] = MISSING
    epsf: dict[str, Any] = MISSING


@dataclass
class PriorFile:
    path: str | None = MISSING


@dataclass
class PSFPriorFile(PriorFile):
    pixel_scale: float | None = MISSING  # arcsec per prior pixel
    response: str = MISSING           # effective or optical


@dataclass
class PriorsConfig:
    source: PriorFile | None = field(default_factory=PriorFile)
    lens_light: PriorFile | None = field(default_factory=PriorFile)
    psf: PSFPriorFile | None = field(default_factory=PSFPriorFile)


@dataclass
class FluxScale:
    scale: Number | str = MISSING    # data units per network unit, or auto
    net_peak: float = MISSING


@dataclass
class FluxConfig:
    peak_percentile: float = MISSING
    source: FluxScale = field(default_factory=FluxScale)
    lens_light: FluxScale = field(default_factory=FluxScale)


@dataclass
class PSFConfig:
    """The `psf` node: ePSFs from stars, and sampling the PSFs with a PSF prior (`inference/psf/setup.py`)."""

    epsf_oversampling: int = MISSING
    min_stars: int = MISSING
    min_stars_pooled: int = MISSING
    sample: bool | str = MISSING     # auto, true or false
    min_stars_sampled: int = MISSING
    refine_rounds: int = MISSING
    given: str = MISSING             # fixed or sample
    given_noise: float = MISSING


@dataclass
class WandbConfig:
    enabled: bool = MISSING
    mode: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ShiftsConfig:
    max: float | None = MISSING      # arcsec; null: half the cutout
    scale: float = MISSING           # arcsec, MALA's preconditioner
    fix_first: bool = MISSING


@dataclass
class MALAConfig:
    step_size: float = MISSING
    target_accept: float = MISSING


@dataclass
class NetworkConfig:
    precision: str = MISSING         # float32 or bfloat16 (autocast)
    channels_last: bool = MISSING
    compile: bool = MISSING


@dataclass
class SamplerConfig:
    """conf/sampler. `parameters` (scalars theta_E, gamma, x0, y0 and the Cartesian pairs ellipticity, shear,
    multipole3, multipole4) is checked by `ParameterSpace`; `sde`, `psf` and `stages` by the sampler's own readers
    (`validate_sampler_config`)."""

    chains: int = MISSING
    device: str = MISSING
    dtype: str = MISSING
    parameters: dict[str, Any] = MISSING
    shifts: ShiftsConfig = field(default_factory=ShiftsConfig)
    mala: MALAConfig = field(default_factory=MALAConfig)
    sde: dict[str, Any] = MISSING
    psf: dict[str, Any] = MISSING
    split: dict[str, Any] = MISSING  # checked by scorelens.inference.split.SplitSettings
    network: NetworkConfig = field(default_factory=NetworkConfig)
    stages: dict[str, Any] = MISSING


@dataclass
class InferConfig:
    """The composed config of `python infer.py` (conf/infer.yaml)."""

    seed: int = MISSING
    resume: bool | str = MISSING     # auto, false, ...
    chi2_max: float | None = MISSING  # null: no check of the final fit
    cosmology: str = MISSING         # an astropy realization for physical scales in outputs (summary.ecsv, figures)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    flux: FluxConfig = field(default_factory=FluxConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    psf: PSFConfig = field(default_factory=PSFConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    lensing: LensingConfig = field(default_factory=LensingConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    observations: ObservationsConfig = field(default_factory=ObservationsConfig)
    stars: StarsConfig = field(default_factory=StarsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    start: dict[str, Any] = MISSING  # conf/start: checked by scorelens.inference.start.StartSettings


# ------------------------------------------------------------------------------------------------ checking


def validate_infer_config(cfg: DictConfig | Mapping) -> None:
    """Check a composed infer config against the schema; raises InputError (one line) naming the first unknown
    key and the keys allowed there, a value of the wrong type, or a required value left unset. Reads only."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(InferConfig), node)
    except ConfigKeyError as err:
        parent, _, _ = (err.full_key or "").rpartition(".")
        raise InputError(_message(err.full_key, _fields_at(parent))) from None
    except OmegaConfBaseException as err:  # a value of the wrong type, or a value where settings belong
        key = err.full_key or _value_for_group(InferConfig, node)
        if key and _dataclass_of(_hint_at(key)) is not None:
            raise InputError(f"config key {key} holds settings ({', '.join(_fields_at(key))}), not a value") \
                from None
        raise InputError(f"config key {key}: {_first_line(err)}") from None
    # ??? in the config as well as in the schema: merging ??? onto a schema default (None) keeps the default
    missing = list(dict.fromkeys(_missing(node) + _missing(merged)))
    if missing:
        raise InputError(f"config value(s) {', '.join(missing)} not set (??? or absent); set them in the config "
                         "files or on the command line")
    _check_values(node)
    _check_stars(node["stars"])
    _check_start(node)
    _check_source_fov(node.lens.get("source_fov"))
    if node.lens.get("mock") is not None:
        _check_mock(node.lens.mock)
    validate_sampler_config(node.get("sampler"))


def validate_sampler_config(sampler: DictConfig) -> None:
    """The sampler's own checks: its stages, the SDE settings they and the PSF draws share, and the parameters'
    priors, each by the code that reads them (one-line InputError naming the key)."""
    from .parameters import ParameterError, ParameterSpace
    from .psf.step import PSFStep
    from .split import SplitSettings
    from .stages import stages_from_config

    plain = OmegaConf.to_container(sampler, resolve=True)
    stages = stages_from_config(plain)
    # the posterior samples are the records kept after the last branching stage (branching turns records into chains)
    last_branch = max((i for i, s in enumerate(stages) if s.branch), default=0)
    if not any(s.record for s in stages[last_branch:]):
        raise InputError(f"sampler.stages.{stages[-1].name}.record is 0: no sweep would be kept as a posterior "
                         f"sample; set sampler.stages.{stages[-1].name}.record to the number of last sweeps to keep")
    SplitSettings.from_config(plain.get("split"))
    PSFStep.from_config(plain.get("psf"), plain.get("sde"))
    try:
        ParameterSpace(plain["parameters"], 1, shift_max=1.0, shift_scale=1.0)
    except ParameterError as err:
        where = "sampler.parameters" + (f".{err.key}" if err.key else "")
        raise InputError(f"{where}: {err.reason}") from None


DTYPES = ("float32", "float64")
RESUME = ("auto", True, False)


def _check_values(node: DictConfig) -> None:
    """Ranges and cross-field rules of the values the schema types (one-line InputError naming the key)."""
    def positive(key: str, value, integer: bool = False, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        kind = "a positive whole number" if integer else "a positive number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or (integer and int(value) != value):
            raise InputError(f"{key}={value!r}: write {kind}")

    positive("observations.cutout", node.observations.cutout, integer=True)
    positive("lens.cutout", node.lens.get("cutout"), integer=True, allow_none=True)
    positive("lens.pixel_scale", node.lens.get("pixel_scale"), allow_none=True)
    positive("sampler.chains", node.sampler.chains, integer=True)
    positive("sampler.mala.step_size", node.sampler.mala.step_size)
    positive("lensing.upsample", node.lensing.upsample, integer=True)
    positive("lensing.psf_size", node.lensing.psf_size, integer=True)
    margin = node.lensing.margin
    if margin != "auto" and (isinstance(margin, bool) or not isinstance(margin, int) or margin < 0):
        raise InputError(f"lensing.margin={margin!r}: write auto (the PSF's half-width) or a whole number of detector "
                         "pixels >= 0")
    for grid in ("source", "lens_light"):
        positive(f"lensing.{grid}.n", node.lensing[grid].n, integer=True)
        positive(f"lensing.{grid}.pixel_scale", node.lensing[grid].pixel_scale, allow_none=grid == "lens_light")
    accept = node.sampler.mala.target_accept
    if not 0 < accept < 1:
        raise InputError(f"sampler.mala.target_accept={accept!r}: write a fraction between 0 and 1 (e.g. 0.57)")
    if node.sampler.dtype not in DTYPES:
        raise InputError(f"sampler.dtype={node.sampler.dtype!r}: write one of {', '.join(DTYPES)}")
    from ..priors.prior import PRECISIONS

    if node.sampler.network.precision not in PRECISIONS:
        raise InputError(f"sampler.network.precision={node.sampler.network.precision!r}: write one of "
                         f"{', '.join(PRECISIONS)} (bfloat16: the score networks under autocast, the rest float32)")
    check_device(node.sampler.device, "sampler.device")
    positive("chi2_max", node.get("chi2_max"), allow_none=True)
    cosmology(node.cosmology)
    resume = node.get("resume")
    if resume not in RESUME:
        raise InputError(f"resume={resume!r}: write auto (continue this folder's run if its inputs are the same) or "
                         "false (a new folder beside it)")


def _missing(node: DictConfig, prefix: str = "") -> list[str]:
    """Full keys of the values left at ??? (OmegaConf.missing_keys would resolve interpolations: `${hydra:...}`
    resolves only inside a run)."""
    out = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            out.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            out += _missing(node[key], f"{prefix}{key}.")
    return out


def _check_stars(stars: DictConfig) -> None:
    from ..data.psf.epsf import build_epsf
    from ..data.psf.stars import find_settings

    find_settings(stars.find)  # names unknown and missing star-finding settings
    # stars.epsf: min_stars for scorelens-data psfs build, the rest build_epsf's keywords
    allowed = {"min_stars"} | set(inspect.signature(build_epsf).parameters) - {"stamps"}
    _check_names("stars.epsf", stars.epsf, allowed)


INIT_FROM = ("auto", "init", "catalog")


def is_mock(lens: Mapping) -> bool:
    """A simulated lens: a `mock:` block and the `exposures` it simulates. A lens with other data (a co-add) ignores
    the block that an experiment adds for the mock's sizes (experiment=infer_smoke composes with every lens)."""
    return lens.get("mock") is not None and bool(lens.get("exposures"))


def check_init_from(lens: Mapping) -> None:
    """`lens.init_from` is known, and `init` is given where the start is taken from it (one-line InputError)."""
    init_from = lens.get("init_from")
    if init_from not in (None, *INIT_FROM) or (init_from == "catalog" and lens.get("mock") is None):
        raise InputError(f"lens.init_from={init_from!r}: write auto (search the data), init (lens.init as written) "
                         "or catalog (a mock's simulated catalogue entry)")
    if init_from in (None, "init") and not lens.get("init"):
        raise InputError(f"lens.init_from={init_from or 'null'} starts from lens.init, which this lens config does "
                         "not give: write lens.init_from=auto or give every mass parameter under lens.init")


def _check_source_fov(value) -> None:
    ok = value is None or value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                              and value > 0)
    if not ok:
        raise InputError(f"lens.source_fov={value!r}: write auto (from the image), a positive number of arcsec, or "
                         "null (lensing.source.pixel_scale as set)")


def _check_start(node: DictConfig) -> None:
    from .start.finder import StartSettings

    check_init_from(node.lens)
    StartSettings.from_config(OmegaConf.to_container(node.start, resolve=True))


def _check_mock(block: DictConfig) -> None:
    from ..data.simulate.mock_config import MockConfig

    # the lens's own name, ra, dec and redshifts complete the MockConfig
    top = {"name", "ra", "dec", "z_lens", "z_source"}
    _check_names("lens.mock", block, {"out_dir"} | {f.name for f in dataclasses.fields(MockConfig)} - top)


def _check_names(where: str, node: Mapping, allowed: set[str]) -> None:
    for key in node:
        if key not in allowed:
            raise InputError(_message(f"{where}.{key}", sorted(allowed)))


def _hint_at(path: str) -> Any:
    """The schema's type hint of a dotted key (InferConfig for ''; None where the schema has no such key)."""
    hint: Any = InferConfig
    for part in filter(None, path.split(".")):
        cls = _dataclass_of(hint)
        hint = None if cls is None else typing.get_type_hints(cls).get(part)
    return hint


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass of a hint (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def _fields_at(path: str) -> list[str]:
    """The keys the schema allows under a dotted key."""
    cls = _dataclass_of(_hint_at(path))
    return [] if cls is None else [f.name for f in dataclasses.fields(cls)]


def _value_for_group(cls: type, node: DictConfig, prefix: str = "") -> str | None:
    """The first key where the config gives a single value for a group of settings (OmegaConf's merge error does
    not name it)."""
    hints = typing.get_type_hints(cls)
    for key in node:
        sub = _dataclass_of(hints.get(key))
        if sub is None or OmegaConf.is_interpolation(node, key) or node[key] is None:
            continue
        if not isinstance(node[key], DictConfig):
            return f"{prefix}{key}"
        found = _value_for_group(sub, node[key], f"{prefix}{key}.")
        if found:
            return found
    return None


def _message(full_key: str, allowed: list[str]) -> str:
    parent, _, key = full_key.rpartition(".")
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"unknown config key {full_key}{hint}; {parent or 'the top level'} allows: {', '.join(allowed)}"


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
