"""A study file (studies/*.yaml): what to evolve on, the budget, the sampler; CLI flags override any field."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


from evolve.budget import check_budget
from evolve.objectives import check_objectives, cost_objective
from evolve.prune_gene import check_prune_range
from evolve.scale_gene import check_scale_ranges
from evolve.samplers import SAMPLERS
from evolve.yaml_mapping import read_mapping

__all__ = ["StudyConfig", "StudyError", "load_study"]

REPO = Path(__file__).resolve().parent.parent
PRUNERS = ("none", "median", "hyperband")
GA_KEYS = ("parents", "selection", "mp", "sigma", "init", "explore")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
BASE_KEYS = ("epochs", "close_mosaic", "hyp")


class StudyError(ValueError):
    """A study file or override holds an unknown field or an invalid value."""


@dataclass
class StudyConfig:
    name: str = "quick"                 # study name; outputs in runs/evolve/NAME/
    data: str | None = None             # data yaml; None = the built-in synthetic dataset
    model: str = "studies/models/yolov5-cpu.yaml"
    hyp: str | None = None              # base hyp (first trial; value of every gain-0 hyp); None = scratch.yaml
    space: str | None = None            # search space; None = studies/space.yaml
    imgsz: int = 128
    batch: int = 16
    epochs: int = 3                     # epochs per trial
    weights: str | None = None          # checkpoint every trial finetunes from (None: see `base`, else scratch)
    base: dict = field(default_factory=dict)    # {epochs, close_mosaic, hyp}: train once (cached; hyp default: the
                                                # study's base hyp) and finetune every trial from it; {} = scratch
    objective: str = "mean_last_3"      # trial value: best | last | mean_last_K epoch fitness (README: measured)
    noise_seeds: int = 0                # the base hyp trained with this many seeds (trial 0 + K-1 more): the noise floor
    pruner_warmup: int | None = None    # epochs before median/hyperband may stop a trial (None: half the trial)
    trials: int = 8                     # finished trials in total (what counts: evolve/ledger.py)
    mlflow: str | None = None           # MLflow tracking URI: one MLflow run per trial (evolve/tracking.py)
    budget: dict = field(default_factory=dict)  # {hours: H, evolve: F}: no trial starts after H hours from the
                                                # study's start (evolve.study: evolution F of them; evolve/budget.py)
    sampler: str = "ga"
    pruner: str = "none"
    seed: int = 0
    gpus: str = "cpu"                   # 'cpu' or a list of GPU ids '0,1,2,3' (one worker per GPU)
    workers: int = 2                    # worker processes on CPU
    workers_per_gpu: int = 1            # worker (and retrain) processes per listed GPU: >1 for small models
    storage: str | None = None          # Optuna RDB URL; None = journal file in the run dir
    artifacts: str | None = None        # folder (or s3://bucket/prefix) every machine reaches: the base run is
                                        # shared through it (evolve/shared_base.py); default beside a journal path
    fitness_weights: list = field(default_factory=lambda: [0.0, 0.0, 0.1, 0.9])
    objectives: list = field(default_factory=lambda: ["fitness"])  # or [fitness, latency_ms | gflops]: a Pareto
                                                # front, `budget: {latency_ms: X}` picks from it (evolve/objectives.py)
    imgsz_range: list = field(default_factory=list)  # [LOW, HIGH]: imgsz is a gene (steps of 32); [] = fixed imgsz
    prune_range: list = field(default_factory=list)  # [LOW, HIGH]: each trial prunes the warm start at a share of
                                                # BN gammas, a gene (evolve/prune_gene.py); [] = no pruning in trials
    width_range: list = field(default_factory=list)  # [LOW, HIGH]: the model's width_multiple is a gene, trials
    depth_range: list = field(default_factory=list)  # from scratch (evolve/scale_gene.py); [] = the yaml's own
    ga: dict = field(default_factory=dict)      # GA options: parents, selection, mp, sigma, init, explore
    train: dict = field(default_factory=dict)   # extra core.train.TrainOptions fields (optimizer, cos_lr, ...)
    retrain: dict = field(default_factory=dict)  # evolve.study: retrain of the best hyps (epochs, top_k, seeds, base)
    prune: dict = field(default_factory=dict)    # evolve.study: prune.pipeline options for the retrained best
    retries: int = 2                    # times a trial whose worker died is re-run
    heartbeat: float = 20.0             # seconds between a running trial's heartbeats

    def resolved(self, key: str) -> str | None:
        """A path field resolved against the cwd, then the repo root (so studies run from any folder)."""
        return self.resolved_path(getattr(self, key))

    @staticmethod
    def resolved_path(value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists() or not (REPO / p).exists():
            return str(p)
        return str(REPO / p)

    def as_record(self) -> dict[str, Any]:
        """Plain dict for the study's provenance; the storage URL is left out (it may hold credentials)."""
        d = asdict(self)
        d.pop("storage")
        return d


def _check(cfg: StudyConfig, where: str) -> None:
    def bad(key: str, msg: str) -> StudyError:
        return StudyError(f"{where}: '{key}'={getattr(cfg, key)!r} {msg}")

    if cfg.sampler not in SAMPLERS:
        raise bad("sampler", f"is not one of {', '.join(SAMPLERS)}")
    if cfg.pruner not in PRUNERS:
        raise bad("pruner", f"is not one of {', '.join(PRUNERS)}")
    for key in ("trials", "epochs", "batch", "workers", "workers_per_gpu"):
        if int(getattr(cfg, key)) < 1:
            raise bad(key, "must be >= 1")
    if cfg.imgsz < 32 or cfg.imgsz % 32:
        raise bad("imgsz", "must be a multiple of 32")
    if len(cfg.fitness_weights) != 4:
        raise bad("fitness_weights", "needs 4 weights for [P, R, mAP50, mAP50-95]")
    unknown = set(cfg.ga) - set(GA_KEYS)
    if unknown:
        raise bad("ga", f"has unknown option(s) {sorted(unknown)} (allowed: {', '.join(GA_KEYS)})")
    if cfg.gpus != "cpu" and not all(s.strip().isdigit() for s in str(cfg.gpus).split(",")):
        raise bad("gpus", "must be 'cpu' or GPU ids like '0,1,2,3'")
    if not str(cfg.name) or "/" in str(cfg.name):
        raise bad("name", "must be a non-empty name without '/'")
    optimizer = cfg.train.get("optimizer", "SGD")
    if optimizer not in OPTIMIZERS:
        # 'auto' would pick the optimizer and replace lr0/momentum/warmup_bias_lr after the sampler chose them
        raise StudyError(f"{where}: train.optimizer={optimizer!r} must be one of {', '.join(OPTIMIZERS)}: a study "
                         f"searches lr0 and momentum for one named optimizer ('auto' would replace the searched "
                         f"values; studies/hyp/adamw-short.yaml is the base hyp for AdamW)")
    try:
        objective_epochs(cfg.objective)
    except ValueError as e:
        raise bad("objective", str(e)) from None
    if cfg.noise_seeds < 0 or (cfg.noise_seeds and cfg.noise_seeds >= cfg.trials):
        raise bad("noise_seeds", f"must be >= 0 and below trials ({cfg.trials}): the noise trials are part of the budget")
    if cfg.noise_seeds == 1:
        raise bad("noise_seeds", "must be 0 or >= 2: one seed has no spread")
    unknown = set(cfg.base) - set(BASE_KEYS)
    if unknown:
        raise bad("base", f"has unknown option(s) {sorted(unknown)} (allowed: {', '.join(BASE_KEYS)})")
    if cfg.base and int(cfg.base.get("epochs", 0)) < 1:
        raise bad("base", "needs epochs >= 1")
    if cfg.base and cfg.weights:
        raise bad("weights", "and 'base' both say where trials start: give one")
    cfg.budget = dict(cfg.budget or {})
    try:
        check_budget(cfg.budget, where)
    except ValueError as e:
        raise StudyError(str(e)) from None
    try:
        cfg.objectives = check_objectives(cfg.objectives, cfg.budget, cfg.sampler, cfg.pruner, cfg.imgsz_range,
                                          cfg.imgsz, where)
        cfg.prune_range = check_prune_range(cfg.prune_range, where, bool(cfg.base or cfg.weights),
                                            cost_objective(cfg.objectives))
        scale = check_scale_ranges({"width_range": cfg.width_range, "depth_range": cfg.depth_range}, where,
                                   bool(cfg.base or cfg.weights), cfg.sampler)
        cfg.width_range, cfg.depth_range = scale["width_range"], scale["depth_range"]
    except ValueError as e:
        raise StudyError(str(e)) from None
    if cfg.pruner_warmup is not None and not 0 <= int(cfg.pruner_warmup) < cfg.epochs:
        raise bad("pruner_warmup", f"must be in [0, epochs={cfg.epochs})")


def objective_epochs(objective: str) -> int | None:
    """How many final epochs a trial's value averages: None = best epoch, 1 = last, K = mean_last_K."""
    if objective == "best":
        return None
    if objective == "last":
        return 1
    if objective.startswith("mean_last_") and objective[len("mean_last_"):].isdigit() and int(objective[10:]) >= 1:
        return int(objective[len("mean_last_"):])
    raise ValueError("must be best, last or mean_last_K (K >= 1)")


def load_study(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read a study file (or defaults when None) and apply CLI overrides (None values are ignored)."""
    given: dict[str, Any] = {}
    where = "study defaults"
    if path is not None:
        where = str(path)
        given = read_mapping(path, StudyError, "study file", "a mapping of study fields")
        given.setdefault("name", Path(path).stem)
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise StudyError(f"{where}: unknown field(s) {unknown} (allowed: {', '.join(sorted(names))})")
    for key in ("imgsz", "batch", "epochs", "trials", "seed", "workers", "workers_per_gpu", "retries", "noise_seeds"):
        if key in given:
            try:
                given[key] = int(given[key])
            except (TypeError, ValueError):
                raise StudyError(f"{where}: '{key}' must be an integer, got {given[key]!r}") from None
    if "gpus" in given:
        given["gpus"] = str(given["gpus"]).replace(" ", "")
    cfg = StudyConfig(**given)
    try:
        cfg.fitness_weights = [float(w) for w in cfg.fitness_weights]
    except (TypeError, ValueError):
        raise StudyError(f"{where}: 'fitness_weights' must be 4 numbers for [P, R, mAP50, mAP50-95], "
                         f"got {cfg.fitness_weights!r}") from None
    _check(cfg, where)
    return cfg
