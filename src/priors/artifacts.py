"""W&B for priors and runs: each command's own W&B service (`own_wandb_service`) and starting a run
(`start_wandb_run`, also used by inference); priors as artifacts: `train.py` logs each exported prior.pt as an
artifact of type "prior"; `infer.py` takes `priors.<kind>.path=wandb:ENTITY/PROJECT/NAME:VERSION`
(e.g. wandb:me/scorelens/source-prior:v3) and downloads it once.

Artifact names are `<kind>-prior` (source-prior, lens_light-prior, psf-prior), so each training run of one kind
adds a version; the artifact's metadata hold the prior's kind, image size, noise range and training step.
A `wandb:` path needs W&B online (WANDB_MODE=online and `wandb login`); offline, the error says so and how to use
a downloaded file instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError, one_line

log = logging.getLogger(__name__)

PREFIX = "wandb:"
FILE = "prior.pt"


def artifact_name(kind: str) -> str:
    return f"{kind}-prior"


def log_prior_artifact(run, path: str | Path, kind: str, metadata: dict | None = None):
    """Log the prior file `path` to the W&B `run` as a new version of the artifact `<kind>-prior` (type "prior");
    returns the artifact."""
    import wandb

    artifact = wandb.Artifact(artifact_name(kind), type="prior", metadata={"kind": kind, **(metadata or {})},
                              description=f"scorelens {kind} score prior (EMA weights; load with load_prior)")
    artifact.add_file(str(path), name=FILE)
    run.log_artifact(artifact)
    log.info("prior logged to W&B as artifact %s (type prior)", artifact_name(kind))
    return artifact


def is_artifact(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def download_prior(spec: str, cache: str | Path) -> Path:
    """The local prior.pt of the artifact `spec` (wandb:ENTITY/PROJECT/NAME:VERSION), downloaded into
    `cache`/ENTITY/PROJECT/NAME_VERSION unless it is already there; a one-line InputError when W&B is offline or
    the artifact cannot be had."""
    name = spec[len(PREFIX):]
    parts = name.split("/")
    if len(parts) != 3 or not all(parts) or ":" not in parts[2]:
        raise InputError(f"{spec}: write a W&B artifact as wandb:ENTITY/PROJECT/NAME:VERSION (e.g. "
                         "wandb:me/scorelens/source-prior:v3 or :latest)")
    entity, project, tail = parts
    folder = Path(cache) / entity / project / tail.replace(":", "_")
    local = folder / FILE
    if local.is_file() and not tail.endswith(":latest"):  # versions never change; latest may
        log.info("prior %s: using the download in %s", spec, folder)
        return local
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise InputError(f"{spec} needs W&B online (WANDB_MODE={mode}): set WANDB_MODE=online and run `wandb login`, "
                         f"or download the artifact's {FILE} and give its path")
    try:
        import wandb

        artifact = wandb.Api().artifact(name, type="prior")
        artifact.download(root=str(folder))
    except Exception as err:  # W&B's errors (network, auth, not found) are many types; the user needs their text
        raise InputError(f"{spec}: cannot get it from W&B ({one_line(err)})") from None
    if not local.is_file():
        raise InputError(f"{spec}: the artifact holds no {FILE}; is it a scorelens prior?")
    log.info("prior %s downloaded to %s", spec, local)
    return local


def own_wandb_service() -> None:
    """Make this command start its own W&B service instead of joining one named by an inherited WANDB_SERVICE.

    W&B advertises its service to child processes through that variable; a command started from a process that uses
    W&B (a notebook, a test runner, a sweep driver) would otherwise join the parent's service, which keeps the
    streams of runs it has seen: after `kill -9`, the same command then finds its own run id "in use" for as long as
    the parent lives. Called once per process, by the `train.py` and `infer.py` entry points."""
    if os.environ.pop("WANDB_SERVICE", None) is not None:
        log.debug("not joining the W&B service of the parent process")


def start_wandb_run(start):
    """Call `start()` (which starts or resumes a W&B run) and return what it returns; W&B's "run ID ... is in use"
    becomes a one-line InputError (another live process holds this run folder's run)."""
    try:
        return start()
    except Exception as err:  # W&B's error types vary between versions; the message says it
        if "is in use" not in str(err):
            raise
        raise InputError(f"W&B: {one_line(err)}: another process is running this run folder's run; wait for it "
                         "to end (or stop it) and start this command again") from None
