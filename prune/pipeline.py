"""`python -m prune.pipeline`: baseline -> sparse -> channel -> layer -> finetune, one results row per stage.

Side rows (not passed on): keep_size (the pruned gammas zeroed, nothing removed: what pruning costs
apart from the surgery) and unstructured (YOLOv5-style per-conv L1 weight zeroing). Every stage writes
a plain core checkpoint (runs/prune/NAME/<stage>.pt, loadable by core.val with no pruning code) and a
json of the options that produced it; re-running reuses stages whose options are unchanged (use
--force to redo all). With --target-gflops/--target-params/--target-latency-ms the global share is searched on
the real pruned model before the channel stage (prune/target.py) and the table ends with target vs achieved
(--target-speedup S: the start model's own latency / S, timed first).

Optimizers: every stage defaults to the engine's recipe (`auto`: AdamW for runs this short). The sparse
stage used SGD, the optimizer network slimming's L1 step assumes, but after a baseline trained with AdamW
it lost half the mAP in the stage (0.193 -> 0.105); with `auto` the gammas split as well and the stage ends
above the baseline (README, "Sparse stage optimizer"). Finetune: `auto` recovered far better than SGD too.
Close-mosaic: the later stages turn mosaic off for their last third (at most the engine's 10 epochs), as the
baseline does for its last 10: measured +0.017 mAP50-95 at the end of the sparse stage.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from core.atomic import atomic_write, remove_orphaned_temps
from core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.files import list_image_files
from core.data.identity import data_identity
from core.data.loader import create_dataloader
from core.digest import code_version
from core.export import ExportError, check_onnx, export_onnx, sample_image
from core.hyp import load_hyp
from core.model.yolo import Model, load_arch
from core.train import TrainOptions, fit
from core.val import validate

from prune.distill import Distiller
from prune.graph import GraphError, trace
from prune.int8 import INT8_JSON, quantize_stage, write_int8
from prune.layers import LayerPruneError, block_renames, rank_shortcuts, remove_shortcuts, rename_key
from prune.masks import MaskOptions, PruneOptionError, compute_masks
from prune.measure import (cpu_latency, latency_backend, measure, model_latency, paired_latency, prunable_channels,
                           zero_subnormals)
from prune.options import DEFAULT_MODEL, PruneOptions, check_prune_options, parse_args
from prune.records import NO_RECORD, SIDE_STAGES, STAGES, StageRecord, file_digest, write_results
from prune.refill import DEFAULT_SLACK, VERIFY_FACTOR, cost_fits, latency_fits, refill
from prune.report import write_prune_report
from prune.rounding import resolve_round_to
from prune.sensitivity import load_sensitivity
from prune.sparsity import SparsityTrainer
from prune.surgery import prune_channels, zero_pruned
from prune.target import TARGET_FIELDS, Target, fewest_shortcuts, find_share, pruned_at, target_from
from prune.unstructured import prune_unstructured, sparsity

__all__ = ["Pipeline", "PruneOptions", "load_weights", "run"]

LOGGER = logging.getLogger(__name__)


def _arch_key(arch: dict) -> dict:
    return {k: arch.get(k) for k in ("backbone", "head", "depth_multiple", "width_multiple", "channels", "repeats")}


def load_weights(opts: PruneOptions, nc: int):
    """The --weights model; its architecture must match --model (if given) and the data's class count."""
    ckpt = load_checkpoint(opts.weights)
    if opts.model:
        want, have = _arch_key(load_arch(opts.model)), _arch_key(ckpt["arch"])
        diff = [k for k in want if (want[k] or None) != (have[k] or None)]
        if diff:
            raise PruneOptionError(
                f"--weights {opts.weights}: its architecture does not match --model {opts.model} "
                f"(differs in: {', '.join(diff)}); drop --model to use the checkpoint's own architecture")
    try:
        model = model_from_checkpoint(ckpt)
    except CheckpointError as e:
        raise PruneOptionError(f"--weights {opts.weights}: {e}") from None
    if model.nc != nc:
        raise PruneOptionError(f"--weights {opts.weights}: the model predicts {model.nc} classes, the data has {nc}")
    return model


def stage_close_mosaic(stage: str, epochs: int) -> int:
    """Epochs at the end of a stage trained without mosaic: the engine's default for the baseline, a third of
    a later (shorter) stage, at most the engine's default."""
    return TrainOptions.close_mosaic if stage == "baseline" else min(TrainOptions.close_mosaic, epochs // 3)


class Pipeline:
    """Runs the stages in order; holds the data, hyps and the validation loader they share."""

    def __init__(self, opts: PruneOptions):
        self.opts = opts
        self.run_dir = Path(opts.project) / opts.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temps(self.run_dir)  # a run killed mid-write left them
        self.hyp = load_hyp(opts.hyp)
        if opts.finetune_hyp:
            self.ft_hyp = load_hyp(opts.finetune_hyp)
        else:
            self.ft_hyp = self.continued_hyp(opts.finetune_lr_scale)
        self.sparse_hyp = self.continued_hyp(opts.sparse_lr_scale)
        self.data = load_data_config(opts.data)
        self.data_identity = data_identity(self.data)
        self.val_loader, _ = create_dataloader(self.data["val"], opts.imgsz, opts.batch_size * 2, self.hyp,
                                               augment=False, cache="ram", workers=opts.workers,
                                               nc=self.data["nc"], prefix="val: ")
        self.round_to, why = resolve_round_to(opts.round_to, opts.device)
        LOGGER.info(f"round-to: kept channels rounded up to a multiple of {self.round_to} ({why})")
        self.base_channels = 0
        self.models: dict[str, torch.nn.Module] = {}
        self.extras: dict[str, dict] = {}
        # --target-*: the global share is searched before the channel stage; a speedup's latency once the start is timed
        self.targeted = any(getattr(opts, k) for k in TARGET_FIELDS)
        self.target = None if opts.target_speedup else target_from(opts)
        self.grow: dict[str, int] = {}  # --refill: channels kept beyond the share's masks, per group
        self.stage_fns = {"baseline": self.baseline, "sparse": self.sparse, "keep_size": self.keep_size,
                          "unstructured": self.unstructured, "channel": self.channel, "layer": self.layer,
                          "finetune": self.finetune}

    def continued_hyp(self, lr_scale: float) -> dict:
        """The hyp for a stage that continues a trained model: lr0 scaled, no warmup."""
        return load_hyp({**self.hyp, "lr0": self.hyp["lr0"] * lr_scale, "warmup_epochs": 0.0})

    def check_prunable(self) -> None:
        """Refuse a model the pruner cannot handle before any stage trains (the untrained model has the same graph)."""
        o = self.opts
        source = f"--weights {o.weights}" if o.weights else f"--model {o.model or DEFAULT_MODEL}"
        model = load_weights(o, self.data["nc"]) if o.weights else Model(o.model or DEFAULT_MODEL, nc=self.data["nc"])
        try:
            trace(model)
        except GraphError as e:
            raise PruneOptionError(f"{source} cannot be channel-pruned: {e}") from None
        n = len(rank_shortcuts(model))
        self.available_shortcuts = n
        if o.shortcuts != "auto" and o.shortcuts > n:
            raise LayerPruneError(f"--shortcuts {o.shortcuts}: {source} has {n} shortcut Bottlenecks in C3 blocks")

    def mask_options(self, percent: float | None = None) -> MaskOptions:
        o = self.opts
        return MaskOptions(o.global_percent if percent is None else percent, o.layer_keep, self.round_to,
                           o.allocation, load_sensitivity(o.sensitivity) if o.sensitivity else None, self.grow or None)

    def enabled(self, stage: str) -> bool:
        return {"sparse": self.opts.sr, "unstructured": self.opts.unstructured > 0}.get(stage, True)

    # options that produce each stage; a stage's record holds its own and all earlier chain stages'
    def stage_options(self, stage: str) -> dict:
        o = self.opts
        masks = {"global_percent": o.global_percent, "layer_keep": o.layer_keep, "round_to": self.round_to,
                 **self.allocation_key(), **({"grow": self.grow} if self.grow else {})}
        per_stage = {  # files by content (sha256), not path: a moved file is the same, an edited one is not
            "baseline": {"data": self.data_identity,  # images, labels, yaml, generator settings (core.data.identity)
                         "model": file_digest(o.model or DEFAULT_MODEL) if not o.weights else None,
                         "weights": file_digest(o.weights), "hyp": self.hyp,
                         "epochs": o.epochs if not o.weights else None, "optimizer": o.baseline_optimizer,
                         "imgsz": o.imgsz, "batch_size": o.batch_size, "nbs": o.nbs, "seed": o.seed,
                         "workers": o.workers,  # each loader process draws its own augmentation stream
                         "code_version": code_version()},
            "sparse": {"sr": o.sr, "s": o.s, "s_schedule": o.s_schedule, "penalty": o.penalty,
                       "polar_t": o.polar_t if o.penalty == "polar" else None, "sparse_epochs": o.sparse_epochs,
                       "optimizer": o.sparse_optimizer, "hyp": self.sparse_hyp,
                       "close_mosaic": stage_close_mosaic("sparse", o.sparse_epochs)},
            "keep_size": masks,
            "unstructured": {"amount": o.unstructured},
            "channel": {**masks, "iterative": o.iterative, "iterative_epochs": self.iterative_epochs(),
                        "finetune_hyp": self.ft_hyp if o.iterative > 1 else None,
                        "optimizer": o.finetune_optimizer if o.iterative > 1 else None},  # the steps' finetunes
            "layer": {"shortcuts": o.shortcuts},
            "finetune": {"finetune_epochs": o.finetune_epochs, "finetune_hyp": self.ft_hyp,
                         "optimizer": o.finetune_optimizer, **({"distill": o.distill_weight} if o.distill else {}),
                         "close_mosaic": stage_close_mosaic("finetune", o.finetune_epochs)},
        }
        return {s: per_stage[s] for s in STAGES[: STAGES.index(stage) + 1] if s not in SIDE_STAGES or s == stage}

    def allocation_key(self) -> dict:
        """The allocation in a stage's options; none under the default (global), so older records still match."""
        o = self.opts
        if o.allocation == "global":
            return {}
        return {"allocation": o.allocation, **({"sensitivity": file_digest(o.sensitivity)} if o.sensitivity else {})}

    def iterative_epochs(self) -> int:
        o = self.opts
        return (o.iterative_epochs or o.finetune_epochs // o.iterative) if o.iterative > 1 else 0

    def _fit(self, stage: str, model, hyp: dict, epochs: int, optimizer: str, callbacks=None):
        o = self.opts
        shutil.rmtree(self.run_dir / "train" / stage, ignore_errors=True)  # no rows left from an older run
        close_mosaic = stage_close_mosaic(stage, epochs)
        topts = TrainOptions(epochs=epochs, batch_size=o.batch_size, imgsz=o.imgsz, device=o.device,
                             workers=o.workers, cache="ram", seed=o.seed, nbs=o.nbs, project=str(self.run_dir / "train"),
                             name=stage, exist_ok=True, progress=o.progress,
                             optimizer=optimizer, close_mosaic=close_mosaic, threads=o.threads)
        result = fit(self.data, model, hyp, topts, callbacks)
        if stage == "sparse" or result.best_path is None:
            return copy.deepcopy(result.model).float().eval()  # sparse: the last (most sparse) weights
        return model_from_checkpoint(result.best_path)

    def baseline(self, _):
        if self.opts.weights:
            return load_weights(self.opts, self.data["nc"]), {"weights": self.opts.weights}
        o = self.opts
        return self._fit("baseline", o.model or DEFAULT_MODEL, self.hyp, o.epochs, o.baseline_optimizer), {}

    def sparse(self, model):
        o = self.opts
        trainer = SparsityTrainer(o.s, o.s_schedule, o.sparse_epochs, o.penalty, o.polar_t,
                                  log_path=self.run_dir / "gamma.jsonl")
        out = self._fit("sparse", model, self.sparse_hyp, o.sparse_epochs, o.sparse_optimizer, trainer.callbacks())
        return out, {"optimizer_steps": trainer.steps, "share_small": trainer.log[-1]["share_small"],
                     "clip_mean": trainer.log[-1]["clip_mean"]}

    def keep_size(self, model):
        """The pruned channels' gammas zeroed, nothing removed or compensated: pruning's cost without surgery."""
        work = copy.deepcopy(model)
        graph = trace(work)
        masks, _ = compute_masks(graph, self.mask_options())
        zero_pruned(graph, masks, betas=False)
        return work, {"zeroed": sum(int((~m).sum()) for m in masks.values())}

    def unstructured(self, model):
        amount = self.opts.unstructured
        pruned = prune_unstructured(model, amount)
        per, conv_share, all_share = sparsity(pruned)
        pd.DataFrame({"conv": list(per), "sparsity": list(per.values())}).to_csv(
            self.run_dir / "unstructured.csv", index=False)
        LOGGER.info(f"unstructured: {amount:.0%} of each conv's smallest |w| zeroed; {conv_share:.3f} of conv "
                    f"weights and {all_share:.3f} of all parameters are zero (per layer: unstructured.csv); dense "
                    f"kernels skip no zeros, so FLOPs and latency do not change")
        return pruned, {"conv_sparsity": conv_share, "global_sparsity": all_share}

    def channel(self, model):
        def count(m):
            return sum(prunable_channels(m).values())

        o, k = self.opts, self.opts.iterative
        base = count(model)
        for step in range(1, k):  # iterative: prune part of the way (share of the original channels), finetune
            rel = max(0.0, 1.0 - base * (1.0 - o.global_percent * step / k) / count(model))
            model, _ = self._prune(model, rel, f"step {step}/{k}")
            model = self._fit(f"channel_step{step}", model, self.ft_hyp, self.iterative_epochs(),
                              o.finetune_optimizer)
        rel = max(0.0, 1.0 - base * (1.0 - o.global_percent) / count(model)) if k > 1 else o.global_percent
        return self._prune(model, rel, f"step {k}/{k}" if k > 1 else "one-shot")

    def _prune(self, model, percent: float, label: str):
        o = self.opts
        graph = trace(model)
        opts = self.mask_options(percent)
        masks, thr = compute_masks(graph, opts)
        kept = {n: int(k.sum()) for n, k in masks.items()}
        what = "|gamma|" if o.allocation == "global" else f"{o.allocation} score"
        LOGGER.info(f"channel ({label}): threshold {what} < {thr.value:.4g} at global percent {percent:.3f}; largest "
              f"threshold leaving every layer a channel: {thr.safe_value:.4g} (percent {thr.safe_percent:.3f}, "
              f"set by {thr.tightest})")
        floored = [n for n, v in opts.scores(graph).items() if float(v.max()) < thr.value]
        if floored:
            more = f" and {len(floored) - 5} more" if len(floored) > 5 else ""
            LOGGER.info(f"channel: the threshold would empty {', '.join(floored[:5])}{more}; they keep the "
                        f"--layer-keep {o.layer_keep} floor (or their coupled convs' channels)")
        total = sum(k.numel() for k in masks.values())
        LOGGER.info(f"channel: keeping {sum(kept.values())}/{total} prunable channels")
        extra = {"threshold": thr.value, "safe_threshold": thr.safe_value, "safe_percent": thr.safe_percent,
                 "tightest": thr.tightest}
        return prune_channels(model, masks), extra

    def layer(self, model):
        pruned, removed = remove_shortcuts(model, self.opts.shortcuts)
        for name, score in removed:
            LOGGER.info(f"layer: removed {name} (mean |gamma| of cv2.bn {score:.4g})")
        renames = block_renames(model, [n for n, _ in removed])[1]
        return pruned, {"removed": removed, "renames": renames}

    def finetune(self, model):
        if self.opts.finetune_epochs == 0:
            return copy.deepcopy(model), {"skipped": "--finetune-epochs 0"}
        distiller = None
        if self.opts.distill:  # the teacher: the chain's model before pruning (sparse after --sr, else baseline)
            distiller = Distiller(self.models.get("sparse", self.models["baseline"]), self.opts.distill_weight)
        out = self._fit("finetune", model, self.ft_hyp, self.opts.finetune_epochs, self.opts.finetune_optimizer,
                        distiller.callbacks() if distiller else None)
        if distiller is None:
            return out, {}
        LOGGER.info(f"finetune: distilled at weight {distiller.weight:g}, mean distillation loss per image "
                    f"{distiller.mean:.4g}")
        return out, {"distill_weight": distiller.weight, "distill_loss": distiller.mean}

    def row(self, stage: str, model, ckpt: Path) -> dict:
        m = validate(model, self.val_loader, names=self.data["names"], progress=False)
        cost = measure(model, self.opts.imgsz, ckpt)
        if stage == "baseline":
            self.base_channels = cost["channels"]
        kept = cost.pop("channels")
        pruned = self.base_channels - kept
        return {"stage": stage, **{k: float(m[k]) for k in ("P", "R", "mAP50", "mAP50-95", "fitness")},
                **cost, "imgsz": self.opts.imgsz, "channels_kept": kept, "channels_pruned": pruned,
                "prune_ratio": pruned / max(self.base_channels, 1)}

    def add_latency(self, rows: list[dict]) -> None:
        """CPU latency of every stage's model, measured together at the end (interleaved, same load): PyTorch
        (fused), and onnxruntime on the stage exported to onnx/<stage>.onnx, with the same thread count."""
        o = self.opts
        size = o.latency_imgsz or o.imgsz
        onnx = self.export_stages(size) if o.onnx_latency else {}
        last = rows[-1]["stage"]
        (self.run_dir / INT8_JSON).unlink(missing_ok=True)  # an earlier run's column is not this run's
        int8 = quantize_stage(self.models[last], onnx[last], size, o.imgsz, o.data, self.run_dir) if last in onnx else {}
        lat = cpu_latency(self.models, size, threads=o.latency_threads, runs=o.latency_runs,
                          onnx={**{f"onnx:{s}": p for s, p in onnx.items()}, **({"int8": int8[size]} if int8 else {})})
        if int8:  # the table's INT8 column (prune/int8.py)
            write_int8(self.run_dir, last, int8, o.imgsz, size, lat["int8"], self.val_loader, self.data["names"])
        for row in rows:
            row.update(latency_imgsz=size, threads=o.latency_threads)
            for col, name in (("latency", row["stage"]), ("onnx_latency", f"onnx:{row['stage']}")):
                if name in lat:  # the median and quartiles; a stage onnxruntime could not run has none
                    row.update({f"{col}_ms": lat[name].median, f"{col}_p25_ms": lat[name].p25,
                                f"{col}_p75_ms": lat[name].p75})
                elif onnx and col == "onnx_latency":
                    row["onnx_latency_ms"] = float("nan")
        atomic_write(self.run_dir / "latency.json", json.dumps(
            {"imgsz": size, "threads": o.latency_threads, "runs": o.latency_runs, "batch": 1,
             "ms": {k: vars(v) for k, v in lat.items()}},
            indent=1))
        LOGGER.info(f"latency: median (p25-p75) of {o.latency_runs} interleaved runs per stage, batch 1, {size}x{size}, "
                    f"{o.latency_threads} thread(s), PyTorch fused" + (" and onnxruntime" if onnx else ""))

    def resolve_target(self, model) -> None:
        """--target-*: set the global share to the smallest whose pruned model meets the target (prune/target.py),
        searched on `model` (the sparse or baseline stage's); target.json records the search and is reused while
        everything it depends on is unchanged (a latency search would not repeat to the digit). --target-speedup S:
        `model` is timed first and the target is its latency / S (recorded, and reused with the search)."""
        o, path = self.opts, self.run_dir / "target.json"
        size = o.latency_imgsz or o.imgsz
        timed = o.target_speedup or self.target.metric == "latency_ms"
        backend = latency_backend(o.latency_backend) if timed else None
        source = "sparse" if self.enabled("sparse") else "baseline"
        wanted = ({"speedup": o.target_speedup, "tolerance": o.target_tolerance} if o.target_speedup
                  else vars(self.target))
        key = {"target": wanted, "from": file_digest(self.run_dir / f"{source}.pt"),
               "masks": {"layer_keep": o.layer_keep, "round_to": self.round_to, **self.allocation_key()},
               "shortcuts": o.shortcuts,
               "imgsz": o.imgsz, "latency": [backend, size, o.latency_threads, o.latency_runs] if backend else None}
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("key") == json.loads(json.dumps(key)) and not o.force:
            o.global_percent = old["share"]
            self.target = Target(**old["target"])
            if o.shortcuts == "auto":
                o.shortcuts = old["shortcuts_chosen"]
            LOGGER.info(f"target: reusing the share {o.global_percent:.4f} found before ({path})")
            self.resolve_refill(model, key)
            return
        path.unlink(missing_ok=True)
        timer = None
        if backend:
            def timer(m):
                return model_latency(m, size, o.latency_threads, o.latency_runs, backend,
                                     self.run_dir / "target_candidate.onnx").median
        start_ms = None
        if o.target_speedup:  # each candidate timed beside the start, in the start's milliseconds: load drift cancels
            start_ms = timer(model)
            self.target = target_from(o, start_ms)
            LOGGER.info(f"target: {o.target_speedup:g}x faster than the {source} model's {start_ms:.3f} ms in "
                        f"{backend}: latency <= {self.target.value:.3f} ms, each candidate timed beside it")

            def timer(m):
                cand, start = paired_latency(m, model, size, o.latency_threads, o.latency_runs, backend, self.run_dir)
                return start_ms * cand.median / start.median
        tried = []
        if o.shortcuts == "auto":  # the fewest blocks first, then the share with them
            LOGGER.info(f"--- target: the fewest shortcut blocks (of {self.available_shortcuts}) that let "
                        f"{self.target.metric} <= {self.target.value:g} be met ---")
            o.shortcuts, tried = fewest_shortcuts(model, self.target, self.mask_options(), self.available_shortcuts,
                                                  o.imgsz, timer)
        LOGGER.info(f"--- target: searching the global share for {self.target.metric} <= {self.target.value:g} "
                    f"(+{self.target.tolerance:.0%}) on the {source} model, {o.shortcuts} shortcut(s) removed ---")
        result = find_share(model, self.target, self.mask_options(), o.shortcuts, o.imgsz, timer)
        o.global_percent = result.share
        LOGGER.info(f"target: global share {result.share:.4f} -> {self.target.show(result.achieved)} "
                    f"({len(result.trials)} candidates)")
        speedup = {"speedup": o.target_speedup, "start_ms": start_ms} if o.target_speedup else {}
        atomic_write(path, json.dumps({"key": key, "backend": backend, "shortcuts_chosen": o.shortcuts,
                                       "shortcuts_tried": tried, **speedup, **result.as_dict()}, indent=1))
        self.resolve_refill(model, key)

    def resolve_refill(self, model, search_key: dict) -> None:
        """--refill: the channels given back on top of the searched share (prune/refill.py); refill.json records
        them and is reused while the search and the share are unchanged."""
        o, path = self.opts, self.run_dir / "refill.json"
        if not o.refill:
            path.unlink(missing_ok=True)
            return
        key = json.loads(json.dumps({"search": search_key, "share": o.global_percent, "shortcuts": o.shortcuts,
                                     "slack": DEFAULT_SLACK, "verify": VERIFY_FACTOR}))
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("key") == key and not o.force:
            self.grow = old["grow"]
            LOGGER.info(f"refill: reusing +{old['channels_added']} channels found before ({path})")
            return
        masks = self.mask_options()
        if self.target.metric == "latency_ms":
            start = pruned_at(model, o.global_percent, masks, o.shortcuts)
            timing = (start, o.latency_imgsz or o.imgsz, o.latency_threads)
            where = (latency_backend(o.latency_backend), self.run_dir)
            fits = latency_fits(*timing, o.latency_runs, *where)
            verify = latency_fits(*timing, o.latency_runs * VERIFY_FACTOR, *where)
        else:
            fits, verify = cost_fits(model, self.target, o.imgsz), None
        LOGGER.info("--- refill: growing the pruned groups, cheapest first, while the target stays met ---")
        result = refill(model, masks, o.shortcuts, self.target, o.imgsz, fits, verify=verify)
        self.grow = result.grow
        LOGGER.info(f"refill: +{result.channels_added} channels in {sum(v > 0 for v in self.grow.values())} groups "
                    f"({len(result.tried)} candidates)")
        atomic_write(path, json.dumps({"key": key, **result.as_dict()}, indent=1))

    def export_stages(self, imgsz: int) -> dict[str, Path]:
        """Each stage's model as run_dir/onnx/<stage>.onnx (float32, batch 1, imgsz), checked by core.export
        against PyTorch on a val image; {} without onnxruntime. A stage whose check fails is left out."""
        try:  # optional packages (the `export` extra): without them the PyTorch latency alone
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            LOGGER.warning(f"onnxruntime latency: skipped ({e}; pip install -e '.[export]')")
            return {}
        out_dir = self.run_dir / "onnx"
        out_dir.mkdir(exist_ok=True)
        for old in out_dir.glob("*.onnx"):  # a stage of an earlier run that this run no longer has
            if old.stem not in self.models:
                old.unlink()
        image = sample_image({}, imgsz, list_image_files(self.data["val"])[0])
        files = {}
        for stage, model in self.models.items():
            path = export_onnx(model, out_dir / f"{stage}.onnx", imgsz=imgsz)
            try:
                check_onnx(path, model, image)
            except ExportError as e:
                LOGGER.warning(f"onnxruntime latency: {stage} left out: {e}")
                continue
            files[stage] = path
        return files

    def run(self) -> list[dict]:
        self.check_prunable()
        rows, redone, chain = [], "--force" if self.opts.force else None, None
        for stage in STAGES:
            if stage == "keep_size" and self.targeted:  # the first stage that prunes by the share
                self.resolve_target(chain)
            rec = StageRecord(stage, self.run_dir)
            if not self.enabled(stage):
                for p in (rec.ckpt, rec.meta):
                    p.unlink(missing_ok=True)
                continue
            options = self.stage_options(stage)
            change = rec.change(options)
            why = change if change == NO_RECORD else redone or change
            if why is None:
                LOGGER.info(f"{stage}: reusing {rec.ckpt} (same options; --force to redo)")
                old = rec.load()
                model = model_from_checkpoint(rec.ckpt)
                row, extra = old["row"], old["extra"]
                if stage == "baseline":
                    self.base_channels = row["channels_kept"]
            else:
                if stage not in SIDE_STAGES:  # a side row's redo changes nothing downstream
                    redone = redone or f"{stage} was redone"
                LOGGER.info(f"--- {stage}: {'running' if why == NO_RECORD else 'redoing'}, {why} ---")
                rec.invalidate()
                model, extra = self.stage_fns[stage](chain)
                save_stage(rec.ckpt, model, self.ft_hyp if stage == "finetune" else self.hyp)
                row = self.row(stage, model, rec.ckpt)
                rec.write(options, row, extra)
            if stage not in SIDE_STAGES:
                chain = model
            self.models[stage], self.extras[stage] = model, extra
            rows.append(row)
        self.add_latency(rows)
        write_results(self.run_dir, rows)
        write_channels(self.run_dir, self.models, self.extras.get("layer", {}).get("renames", {}))
        return rows


def save_stage(path: Path, model, hyp: dict) -> None:
    """A stage's plain checkpoint, its subnormal weights set to zero first (prune.measure.zero_subnormals: they
    change no output but slow CPUs that do not flush them)."""
    n = zero_subnormals(model)
    if n:
        LOGGER.info(f"{path.name}: {n} subnormal values (|x| < 1.18e-38) in the weights set to zero")
    save_checkpoint(path, model, hyp=hyp, metrics={}, epoch=-1)


def write_channels(run_dir: Path, models: dict, renames: dict) -> Path:
    """channels.csv: per prunable conv, its output channels before and after each pruning stage (0 = removed)."""
    base = prunable_channels(models["baseline"])
    after_ch = prunable_channels(models["channel"]) if "channel" in models else base
    after_l = prunable_channels(models["layer"]) if "layer" in models else after_ch
    rows = []
    for name, c in base.items():
        new = rename_key(name + ".", renames)
        rows.append({"conv": name, "before": c, "after_channel": after_ch.get(name, 0),
                     "after_layer": 0 if new is None else after_l.get(new[:-1], 0)})
    return atomic_write(run_dir / "channels.csv", pd.DataFrame(rows).to_csv(index=False))


def run(opts: PruneOptions) -> list[dict]:
    """Run (or resume) the pipeline; writes the results table, channels.csv and the plots."""
    check_prune_options(opts)
    before = torch.get_num_threads()  # a caller (a study, a bench) keeps its own thread count afterwards
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    try:
        pipe = Pipeline(opts)
        rows = pipe.run()
        write_prune_report(pipe.run_dir)
    finally:
        torch.set_num_threads(before)
    return rows


@main_guard("prune.pipeline", interrupted="interrupted: finished stages are kept; the same command resumes")
def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    run(opts)
    print(f"options: {asdict(opts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
