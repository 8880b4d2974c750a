"""A run folder's guards: one run at a time in it, and what it was made from, checked before it is resumed.

- `run_lock(out)`: an exclusive lock (`flock`) on `<out>/.lock`, held for the whole run; a second run into the same
  folder stops at once with one line naming the holder (pid and host). The kernel drops the lock when its process
  dies, so a killed run never leaves a stale lock behind. (Over NFS, flock works where the mount supports it.)
- `identity(cfg, root)`: what decides a run's results: the sampling settings (not devices, logging or the paths of
  files, whose contents count instead), a SHA-256 of every input file (exposures or co-add image, noise map, PSF,
  masks, prior files) and the code version. It is written once, at a run's start, to `<out>/run.json` together with
  the whole composed config as `<out>/config.yaml` (Hydra's own `.hydra/` record is turned off for inference, since
  Hydra writes it before any check and a refused run would overwrite the record of the run that owns the folder).
  `differences(old, new)` says, in words, what changed; a folder whose run used other inputs is never resumed.
- `fresh_folder(out)`: the first free sibling `<out>_2`, `<out>_3`, ... for `resume=false` in a folder that holds a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

from omegaconf import OmegaConf

from ..atomic import atomic_write_text
from ..errors import InputError
from .setup import lens_data_dir, resolve

try:  # POSIX; elsewhere runs are not locked (see run_lock)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

RECORD, CONFIG, LOCK = "run.json", "config.yaml", ".lock"
# the config groups whose settings decide the samples
SAMPLING_KEYS = ("lens", "lensing", "sampler", "priors", "flux", "seed", "observations", "stars", "psf", "start")
# settings that change no result: a resume may change them
NO_RESULT = {("sampler", "device")}
# lens keys that name input files (paths relative to the lens's data folder); their contents are hashed instead
LENS_FILES = ("exposures", "masks", "mask", "image", "noise_map", "psf", "h5", "psf_h5")
LENS_PATH_KEYS = (*LENS_FILES, "data_dir")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("scorelens")
    except Exception:  # noqa: BLE001 - a checkout that is not installed
        return "unknown"


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `<out>/.lock` exclusively for the duration (InputError at once if another process holds it)."""
    if fcntl is None:  # pragma: no cover
        log.warning("run folders cannot be locked on this system: do not start two runs into %s", out)
        yield
        return
    path = Path(out) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise InputError(f"run folder {out} is in use by {holder}: wait for that run to end, or give this one "
                         "another folder (hydra.run.dir=...)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_files(cfg: Mapping, root: str | Path) -> dict[str, Path]:
    """The run's input files that exist, by the config key that names them: {"lens.image": Path, ...,
    "lens.exposures[0]": Path, "priors.source.path": Path}."""
    lens, base = cfg["lens"], lens_data_dir(cfg, root)
    files: dict[str, Path] = {}
    for key in LENS_FILES:
        value = lens.get(key)
        if isinstance(value, (list, tuple)):
            files.update({f"lens.{key}[{i}]": resolve(v, base) for i, v in enumerate(value) if v})
        elif isinstance(value, (str, os.PathLike)) and str(value):
            files[f"lens.{key}"] = resolve(value, base)
    for kind, prior in (cfg.get("priors") or {}).items():
        if isinstance(prior, Mapping) and prior.get("path"):
            files[f"priors.{kind}.path"] = resolve(prior["path"], root)
    return {k: p for k, p in files.items() if p.is_file()}


def _without(plain: dict, drop: set[tuple[str, ...]]) -> dict:
    out = json.loads(json.dumps(plain, default=str))
    for keys in drop:
        node = out
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(keys[-1], None)
    return out


def sampling_settings(cfg: Mapping) -> dict:
    """The settings that decide the samples, as plain data: SAMPLING_KEYS less NO_RESULT and the file paths."""
    plain = {k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k])
             for k in SAMPLING_KEYS if k in cfg}
    drop = set(NO_RESULT) | {("lens", k) for k in LENS_PATH_KEYS}
    drop |= {("priors", kind, "path") for kind in (plain.get("priors") or {})}
    return _without(plain, drop)


def identity(cfg: Mapping, root: str | Path) -> dict:
    """{"settings": sampling_settings, "inputs": {key: sha256}, "version": the package version}."""
    return {"settings": sampling_settings(cfg),
            "inputs": {k: _sha256(p) for k, p in sorted(input_files(cfg, root).items())},
            "version": _version()}


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


def differences(old: Mapping, new: Mapping) -> list[str]:
    """What differs between two identities, in words (empty when the same)."""
    out = []
    keys = _diff_keys(old.get("settings", {}), new.get("settings", {}))
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        out.append(f"settings {shown}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for k in sorted(set(oi) | set(ni)):
        if k not in ni:
            out.append(f"{k} is no longer an input")
        elif k not in oi:
            out.append(f"{k} is a new input")
        elif oi[k] != ni[k]:
            out.append(f"the contents of {k}")
    if old.get("version") != new.get("version"):
        out.append(f"the code version ({old.get('version')} -> {new.get('version')})")
    return out


def read_record(out: Path) -> dict | None:
    """The identity recorded in `<out>/run.json`, or None when there is none (a folder of an older version)."""
    path = Path(out) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["identity"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path} is not a run record (damaged?); move the folder aside and run again") from None


def write_record(out: Path, ident: Mapping, cfg) -> None:
    """Write `<out>/run.json` (the identity) and `<out>/config.yaml` (the composed config), each atomically."""
    atomic_write_text(Path(out) / RECORD, json.dumps({"identity": ident}, indent=1, sort_keys=True) + "\n")
    atomic_write_text(Path(out) / CONFIG, OmegaConf.to_yaml(OmegaConf.create(cfg)))


def check_resume(out: Path, ident: Mapping) -> None:
    """Refuse (InputError) to resume the run of `out` when its recorded identity differs from `ident`."""
    old = read_record(out)
    if old is None:
        return
    diff = differences(old, ident)
    if diff:
        raise InputError(f"{out} holds a run made with other inputs: {'; '.join(diff)} changed since. It is not "
                         "resumed: give this run its own folder (hydra.run.dir=NEW), or add resume=false to write "
                         "a new folder beside it")


def holds_run(out: Path) -> bool:
    return (Path(out) / "state.pt").exists() or (Path(out) / RECORD).exists()


def fresh_folder(out: Path) -> Path:
    """The first of `<out>_2`, `<out>_3`, ... that does not exist, created."""
    out = Path(out)
    for i in range(2, 10_000):
        cand = out.with_name(f"{out.name}_{i}")
        try:
            cand.mkdir(parents=True)
            return cand
        except FileExistsError:
            continue
    raise InputError(f"no free folder beside {out}: clean up old runs")
