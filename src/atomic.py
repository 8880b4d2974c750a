"""Atomic writes: after a kill at any instant a file holds either its old content or its new one, never half.

Everything scorelens writes that a later run reads or a user keeps (sampler states, samples, tables, prior files,
mock exposures, PSF stacks, lens configs) goes through `atomic_write`: the content is written to a temporary file
beside the target, under a name no other writer uses, flushed to disk, then renamed onto the target.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def _temporary(path: Path) -> Path:
    # unique per process and call, so concurrent writers never share a temporary file; not created here, since
    # some writers (astropy's writeto) refuse an existing file
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to write a temporary file beside `path`, then move it onto `path`; returns `path`.

    The folder is created when missing. If `write` raises, `path` is untouched and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a crash of the machine
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def replace_directory(new: str | Path, output: str | Path) -> Path:
    """Move the complete folder `new` to `output`; an existing `output` is removed only once `new` is in place."""
    new, output = Path(new), Path(output)
    if not output.exists():
        os.replace(new, output)
        return output
    old = _temporary(output)
    os.replace(output, old)
    os.replace(new, output)
    shutil.rmtree(old, ignore_errors=True)
    return output
