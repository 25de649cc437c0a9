"""The hyp the study's prune phase trains with: the chosen trial's, at the mosaic its trials trained with.

Inside a study every trial and retrain trains with AutoMosaic off and mosaic = gene x the factor fixed once from
the base hyp (evolve/train_setup.py), the retrain run's `mosaic`. prune.pipeline has no AutoMosaic switch: its
sparse and finetune stages run AutoMosaic on the hyp they are given, which scales its mosaic by the factor of
that hyp's own warp genes (degrees, translate, scale, shear, perspective) at the prune's image size. Given the
gene, the pipeline trained with gene x f(chosen hyp) instead of the trials' gene x f(base hyp): the very genes the
search moved changed the pruned model's mosaic. So the prune hyp's mosaic is used / f(chosen hyp), which the
pipeline's AutoMosaic brings back to the used mosaic; clipped to 1 (the chosen hyp's factor below the used
mosaic), the nearest the pipeline can train, and the note says so. A study from before its trials recorded
their mosaic (no `mosaic` in the run) passes the gene: its trials ran AutoMosaic per hyp, as the pipeline does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from evolve.study_config import StudyConfig
from evolve.train_setup import study_mosaic_factor

__all__ = ["prune_hyp"]


def prune_hyp(cfg: StudyConfig, run: Mapping[str, Any], imgsz: int | None = None) -> tuple[dict[str, Any], str]:
    """(hyp, note) for prune.pipeline from the chosen retrain run (retrain_plan's entry: `hyp`, `mosaic`);
    `imgsz`: the prune's image size (default the study's)."""
    hyp = dict(run["hyp"])
    used = run.get("mosaic")
    if used is None:
        return hyp, "the trials' hyp (their mosaic was AutoMosaic's per hyp, as the pipeline's)"
    if float(used) <= 0:
        hyp["mosaic"] = 0.0
        return hyp, "mosaic 0, as the trials trained"
    # the factor AutoMosaic will apply in the pipeline: this hyp's, at the prune's image size, AutoMosaic on
    pipeline = dataclasses.replace(cfg, imgsz=int(imgsz or cfg.imgsz), train={**cfg.train, "automosaic": True})
    factor = study_mosaic_factor(pipeline, hyp, cfg.resolved("data"))
    if factor <= 0:
        hyp["mosaic"] = 1.0
        return hyp, (f"the pipeline's AutoMosaic turns mosaic off for this hyp, the trials trained with "
                     f"{float(used):.3f}")
    wanted = float(used) / factor
    hyp["mosaic"] = min(wanted, 1.0)
    note = (f"mosaic {hyp['mosaic']:.4g}: the pipeline's AutoMosaic (factor {factor:.3f} for this hyp) brings it to "
            f"{hyp['mosaic'] * factor:.3f}")
    return hyp, note + (f", the trials trained with {float(used):.3f} (gene x the study's factor)" if wanted > 1
                        else ", the mosaic the trials trained with (gene x the study's factor)")
