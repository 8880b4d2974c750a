"""Weights & Biases logging of a sampling run: per-sweep chi^2, acceptance, MALA step and temperature, and the
figures at the end; the prior artifacts used, when online. Offline by default (WANDB_MODE); a disabled tracker
does nothing.

The run id is kept in the run folder (`wandb_id.txt`), so a resumed sampling run continues the same W&B run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from pathlib import Path

from ..atomic import atomic_write_text

log = logging.getLogger(__name__)


class SweepTracker:
    """Logs sampler metrics (and the chains' mean parameters) to W&B when `cfg["enabled"]`; a no-op otherwise.

    cfg: {enabled, project, entity, group, tags, mode}; out: the run folder; config: the run's plain config.
    """

    def __init__(self, cfg: Mapping | None, out: Path, config: dict, name: str):
        self.run = None
        if not cfg or not cfg.get("enabled", False):
            return
        import wandb

        id_file = Path(out) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        atomic_write_text(id_file, run_id)
        from ..priors.artifacts import start_wandb_run

        self.run = start_wandb_run(lambda: wandb.init(
            project=cfg.get("project", "scorelens"), entity=cfg.get("entity"), group=cfg.get("group"),
            tags=list(cfg.get("tags") or []), job_type="infer", name=name, dir=str(out), config=config, id=run_id,
            resume="allow", mode=cfg.get("mode", "offline")))
        # the W&B lineage of the priors this run used (their artifact names: `run.fetch_prior_artifacts`)
        for node in (config.get("priors") or {}).values():
            if isinstance(node, Mapping) and node.get("artifact") and self.run.settings.mode == "online":
                self.run.use_artifact(node["artifact"][len("wandb:"):])

    def sweep(self, step: int, metrics: Mapping) -> None:
        """One Gibbs sweep's metrics (`GibbsSampler.sweep`); `step` counts sweeps over all stages."""
        if self.run is None:
            return
        row = {"temperature": metrics["temperature"], "acceptance": metrics["acceptance"],
               "mala_step": metrics["mala_step"], "stage": metrics["stage"],
               "chi2_mean": sum(metrics["chi2"]) / len(metrics["chi2"])}
        row.update({f"chi2/exposure_{i}": c for i, c in enumerate(metrics["chi2"])})
        row.update({f"mass/{k}": v for k, v in metrics.get("mass", {}).items()})  # chain means
        if "psf_chi2" in metrics:  # the stars' reduced chi^2 under the chains' PSFs
            row["psf/star_chi2"] = metrics["psf_chi2"]
        self.run.log(row, step=step)

    def finish(self, summary: Mapping, figures: list[Path]) -> None:
        if self.run is None:
            return
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, list)})
        self.run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures if p.exists()})
        self.run.finish()
