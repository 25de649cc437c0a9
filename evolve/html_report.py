"""report.html of a study run dir: one self-contained file (inline CSS, PNGs as data: URIs, no script, no URL).

A pure function of the files in runs/study/NAME/ (study.json, phases/, evolve/, retrain/, prune/): any
phase whose files are missing becomes a note saying what is missing and which command makes it.
"""
from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from core.atomic import atomic_write
from core.hyp import HYP_KEYS
from evolve.detections import DETECT_JSON
from evolve.objectives import GENE_FORMATS, GENE_HEADERS, SPEED_GENES
from evolve.plots import MIN_TRIALS_FOR_IMPORTANCE
from evolve.results import best_searched, complete_ranked, searched_ranked
from evolve.transfer import TRANSFER_ROLE, transfer_line, transfer_summary

matplotlib.use("Agg")  # files only, never a window

SECTIONS = {"summary": "Summary", "settings": "Settings and provenance", "fitness": "Fitness per trial",
            "scatter": "Hyperparameters vs fitness", "importances": "Parameter importances",
            "top": "Top trials", "default-vs-best": "Default vs best hyperparameters",
            "retrain": "Retrained at full budget", "transfer": "Do trials predict full training?",
            "pruning": "Pruning stages",
            "detect": "Detections: best vs pruned",
            "gamma": "Gamma histograms", "channels": "Channels kept per layer"}
PARETO_TITLE = "Accuracy vs cost: the Pareto front"  # two-objective studies only
METRICS = ("P", "R", "mAP50", "mAP50-95", "fitness")
STAGE_LABELS = {"baseline": "Before", "sparse": "After sparse", "keep_size": "Keep-size (gammas 0)",
                "unstructured": "Unstructured L1", "channel": "After channels",
                "layer": "After layers", "finetune": "After finetune"}
PRUNE_ROWS = [("P", "{:.4g}"), ("R", "{:.4g}"), ("mAP50", "{:.4g}"), ("mAP50-95", "{:.4g}"), ("fitness", "{:.4g}"),
              ("params", "{:,.0f}"), ("GFLOPs", "{:.3f}"), ("latency_ms", "{:.2f}"), ("speedup", "{:.2f}x"),
              ("onnx_latency_ms", "{:.2f}"),
              ("ckpt_MB", "{:.2f}"), ("channels_kept", "{:,.0f}"), ("channels_pruned", "{:,.0f}"),
              ("prune_ratio", "{:.3f}")]
PRUNE_OPTIONS = ("sr", "s", "s_schedule", "sparse_epochs", "global_percent", "layer_keep", "round_to", "shortcuts",
                 "finetune_epochs")
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:1em 2em;color:#222;line-height:1.4}h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}tr.changed td{background:#fff6d6}
.missing{background:#fdecea;border-left:4px solid #d9534f;padding:.5em 1em}
.warn{background:#fff4e0;border-left:4px solid #e08a00;padding:.5em 1em}.note{color:#555;font-size:.92em}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:0 .25em}nav a{margin-right:.8em}
.up{color:#1a7f37}.down{color:#c62828}.caveat{color:#8a5a00}.det{display:grid;gap:.8em 1.2em}
.det figure{margin:0}.det img{width:100%;image-rendering:pixelated}.det figcaption{font-size:.88em;color:#444}"""


def esc(v: Any) -> str:
    return html.escape(str(v))


def fmt(v: Any, spec: str = "{:.4g}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return esc(v)


MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def image(path: Path, alt: str) -> str | None:
    """<img> with the PNG (or JPEG) inlined as a data: URI (None when the file is missing)."""
    if not path.is_file():
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{MIME.get(path.suffix.lower(), "image/png")};base64,{data}" alt="{esc(alt)}">'


def table(header: list[str], rows: list[list[Any]], left: int = 1, classes: list[str] | None = None) -> str:
    """HTML table; the first `left` columns are left-aligned text, cells are pre-formatted strings."""
    def cells(tag: str, values: list[Any]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{v}</{tag}>' for i, v in enumerate(values))
    body = "".join(f'<tr{f" class={classes[i]}" if classes and classes[i] else ""}>{cells("td", r)}</tr>'
                   for i, r in enumerate(rows))
    return f"<table><tr>{cells('th', [esc(h) for h in header])}</tr>{body}</table>"


def missing(what: str, how: str) -> str:
    return f'<p class="missing">Missing: {esc(what)}. {esc(how)}</p>'


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None


def _change(new: float, old: float) -> str:
    if not all(math.isfinite(float(x)) for x in (new, old)):
        return "–"
    d = new - old
    rel = f" ({100 * d / abs(old):+.1f}%)" if old else ""
    return f'<span class="{"up" if d > 0 else "down" if d < 0 else ""}">{d:+.4g}{rel}</span>'


class Run:
    """The files of one study run dir, loaded once."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.study = _read_json(run_dir / "study.json")
        order = ["evolve", "retrain", "prune"]
        paths = sorted((run_dir / "phases").glob("*.json"), key=lambda p: (order + [p.stem]).index(p.stem))
        self.phases = {p.stem: _read_json(p) for p in paths}
        self.evolve = _read_csv(run_dir / "evolve" / "evolve.csv")
        self.retrain = _read_csv(run_dir / "retrain" / "retrain.csv")
        self.prune = _read_csv(run_dir / "prune" / "prune_results.csv")
        self.summary = _read_json(run_dir / "summary.json")  # noise floor, retrain choice and verdict
        self.objective = (self.summary.get("config") or {}).get("objective", "best")
        stage_recs = {s: _read_json(run_dir / "prune" / f"{s}.json") for s in STAGE_LABELS}
        self.prune_records = {s: r for s, r in stage_recs.items() if r}
        if self.evolve is not None and self.evolve.empty:
            self.evolve = None

    @property
    def complete(self) -> pd.DataFrame:
        return complete_ranked(self.evolve)

    def evolved_names(self) -> list[str]:
        """Hyp columns that vary across trials (the rest were fixed)."""
        df = self.evolve
        return [k for k in HYP_KEYS if k in df and df[k].nunique(dropna=True) > 1]


# ---- sections: each returns its HTML body ------------------------------------------------------------------

def summary(run: Run) -> str:
    items, gaps = [], []
    if run.evolve is not None and not run.complete.empty:
        n = {s: int((run.evolve.state == s).sum()) for s in ("COMPLETE", "PRUNED", "FAIL")}
        line = f"Evolution: {len(run.evolve)} trials ({n['COMPLETE']} complete, {n['PRUNED']} pruned, {n['FAIL']} failed)"
        best, top = best_searched(run.evolve), run.complete.iloc[0]
        base = run.evolve[run.evolve.number == 0]
        noise = run.summary.get("noise")
        if best is None:
            line += "; no searched trial has completed yet"
        else:
            line += f"; best searched trial {int(best.number)}, fitness {fmt(best.fitness)}"
            if noise:  # against the base hyp's seed mean: trial 0 alone is one draw of the noise
                line += (f", base hyp over {noise['n']} seeds {fmt(noise['mean'])}: change "
                         f"{_change(best.fitness, noise['mean'])} (the best of {len(searched_ranked(run.evolve))} "
                         "searched trials: see the selection caveat below)")
            elif len(base) and pd.notna(base.fitness.iloc[0]):
                line += f", default hyp (trial 0) {fmt(base.fitness.iloc[0])}: change {_change(best.fitness, base.fitness.iloc[0])}"
        if best is None or int(top.number) != int(best.number):
            line += (f". The highest trial is the base hyp's own trial {int(top.number)} (seed "
                     f"{fmt(top.get('seed'), '{:.0f}')}, {fmt(top.fitness)}): no searched hyp scored above it")
        items.append(line)
        front = run.summary.get("pareto")
        if front and front.get("message"):  # a two-objective study with a cost budget: what the retrain took
            items.append(f'<span class="{"" if front.get("chosen") else "caveat"}">Budget '
                         f'{esc(front["objectives"][1])} &le; {fmt((front.get("budget") or {}).get(front["objectives"][1]), "{:g}")}: '
                         f'{esc(front["message"])} (<a href="#pareto">the Pareto front</a>)</span>')
        if noise and best is not None:
            items.append(f"Noise floor: the base hyp over {noise['n']} seeds scores {fmt(noise['mean'])} ± "
                         f"{fmt(noise['sd'])} (sd); the best searched trial is "
                         f"{fmt(best.get('gain_sd'), '{:+.1f}')} sd from it. {_selection_caveat(run)}")
    else:
        gaps.append("evolution results (runs/study/NAME/evolve/evolve.csv)")
    if run.retrain is not None and not run.retrain.empty:
        chosen = (run.summary.get("retrain") or {}).get("chosen", run.retrain.trial.iloc[0])
        g = run.retrain[run.retrain.trial == chosen]
        objective = (f"objective ({esc(run.objective)}) {_mean_std(g.objective)}, " if "objective" in g else "")
        items.append(f"Retrain of trial {int(g.trial.iloc[0])} (the highest mean over seeds; it is the one pruned) at "
                     f"{int(g.epochs.max())} epochs ({len(g)} seed(s)): {objective}best-epoch mAP50-95 "
                     f"{_mean_std(g['mAP50-95'])}, best-epoch fitness {_mean_std(g.fitness)}")
        verdict = (run.summary.get("retrain") or {}).get("verdict")
        if verdict:
            items.append(f"<b>Verdict</b>: {esc(verdict)}")
        t = transfer_summary(run.retrain)
        items.append(f'<span class="{"caveat" if t["warning"] else ""}">{esc(transfer_line(t))}</span>')
    else:
        gaps.append("retrain at full budget (runs/study/NAME/retrain/retrain.csv)")
    if run.prune is not None and len(run.prune) > 1:
        b, last = run.prune.iloc[0], run.prune.iloc[-1]
        items.append(f"Pruning ({esc(STAGE_LABELS.get(last.stage, last.stage))} vs Before): mAP50-95 "
                     f"{fmt(b['mAP50-95'])} → {fmt(last['mAP50-95'])}, GFLOPs {fmt(b.GFLOPs, '{:.3f}')} → "
                     f"{fmt(last.GFLOPs, '{:.3f}')} ({100 * (1 - last.GFLOPs / b.GFLOPs):.1f}% less), CPU latency "
                     f"speedup {fmt(b.latency_ms / last.latency_ms, '{:.2f}')}x")
    else:
        gaps.append("pruning results (runs/study/NAME/prune/prune_results.csv)")
    out = "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else ""
    if gaps:
        out += missing("; ".join(gaps), "This is a partial report: run `python -m evolve.study --study "
                       "STUDY.yaml` to produce the missing phases, then it is rebuilt.")
    return out


def _selection_caveat(run: Run) -> str:
    """The best of N trials read against the best of N draws of pure seed noise (evolve.noise.expected_best_sd)."""
    best = ((run.summary.get("evolution") or {}).get("best_searched_trial") or {})
    n, expected = best.get("searched_trials"), best.get("expected_best_noise_sd")
    if not n or expected is None:
        return ""
    gain = best.get("gain_sd")
    beyond = gain is not None and gain > expected
    return (f'<span class="caveat">Selection caveat: it is the best of {n} searched trials, and the best of {n} '
            f"draws of seed noise alone is expected at {expected:+.1f} sd ({'exceeded' if beyond else 'not exceeded'} "
            "here); only the retrain with fresh seeds, paired with the base hyp, tests a gain.</span>")


def _mean_std(s: pd.Series) -> str:
    s = s.astype(float).dropna()
    if len(s) == 0:
        return "–"
    if len(s) == 1:
        return f"{s.iloc[0]:.4g} (1 seed: no spread)"
    return f"{s.mean():.4g} ± {s.std(ddof=1):.3g} (n={len(s)})"


def settings(run: Run) -> str:
    st = run.study
    if not st:
        return missing("study.json (settings and provenance)", "It is written by `python -m evolve.study`.")
    cfg = st.get("config", {})
    git = st.get("git", {})
    code = (git.get("commit") or "unknown (not a git checkout)") + (
        " + uncommitted changes" if git.get("dirty") else " (clean)" if git.get("dirty") is False else "")
    rows = [("study", f"{cfg.get('name')} ({st.get('study_file')})"), ("data", st.get("data")),
            ("model", f"{st.get('model')} (sha256 {str(st.get('model_sha256'))[:12]})"),
            ("code version", code), ("seed", cfg.get("seed")),
            ("device", f"{st.get('device')} ({st.get('threads')} torch threads for retrain/prune); evolution on "
                       f"{cfg.get('gpus')} with {cfg.get('workers')} worker(s)"),
            ("evolution", f"{cfg.get('trials')} trials × {cfg.get('epochs')} epochs, imgsz {cfg.get('imgsz')}, batch "
                          f"{cfg.get('batch')}, sampler {cfg.get('sampler')}, pruner {cfg.get('pruner')}, fitness "
                          f"weights [P, R, mAP50, mAP50-95] = {cfg.get('fitness_weights')}, objective "
                          f"{cfg.get('objective', 'best')}, noise seeds {cfg.get('noise_seeds', 0)}"
                          + (f", objectives {cfg['objectives']}, imgsz searched {cfg.get('imgsz_range') or 'no'}, pruning share "
                             f"searched {cfg.get('prune_range') or 'no'}, width searched {cfg.get('width_range') or 'no'}, "
                             f"depth searched {cfg.get('depth_range') or 'no'}, budget {cfg.get('budget')}"
                             if len(cfg.get("objectives") or []) > 1 else "")),
            ("trials start from", cfg.get("weights") or (f"the base run {cfg.get('base')}" if cfg.get("base")
                                                          else "scratch (the model yaml)")),
            ("train options", cfg.get("train")), ("retrain options", cfg.get("retrain") or "defaults"),
            ("prune options", cfg.get("prune") or "defaults"), ("storage", st.get("storage")),
            ("host / software", f"{st.get('host')}, Python {st.get('python')}, torch {st.get('torch')}"),
            ("command", st.get("command")), ("study run created", st.get("created"))]
    if run.evolve is not None:
        rows.append(("trials ran", f"{str(run.evolve.datetime_start.min())[:19]} → "
                                   f"{str(run.evolve.datetime_complete.max())[:19]}"))
    for name, rec in run.phases.items():
        rows.append((f"phase {name}", f"last ran {rec.get('finished')} ({fmt(rec.get('seconds'), '{:.0f}')} s)"))
    rows.append(("report written", time.strftime("%Y-%m-%d %H:%M:%S")))
    return table(["setting", "value"], [[esc(k), esc(v)] for k, v in rows], left=2)


def figure(run: Run, rel: str, alt: str, what: str, how: str, note: str = "") -> str:
    img = image(run.dir / rel, alt)
    if img is None:
        return missing(f"{what} ({rel})", how)
    return img + (f'<p class="note">{note}</p>' if note else "")


def importances(run: Run) -> str:
    img = image(run.dir / "evolve" / "importances.png", "parameter importances")
    if img:
        return img
    if run.evolve is None:
        return missing("parameter importances", "No evolution results yet.")
    return (f'<p class="missing">Missing: parameter importances. Only {len(run.complete)} complete trial(s): '
            f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} (and fitness that varies).</p>")


def top_trials(run: Run, n: int = 10) -> str:
    if run.evolve is None or run.complete.empty:
        return missing("top trials", "No complete evolution trial yet.")
    def hyp(r: pd.Series) -> str:
        return f"base hyp, seed {fmt(r.get('seed'), '{:.0f}')}" if bool(r.get("base", False)) else "searched"
    rows = [[i + 1, int(r.number), hyp(r), fmt(r.fitness), fmt(r.get("gain_sd"), "{:+.1f}"), fmt(r["mAP50-95"]),
             fmt(r.mAP50), fmt(r.P), fmt(r.R), fmt(r.epochs, "{:.0f}"), fmt(r.seconds, "{:.0f}"), esc(r.device)]
            for i, (_, r) in enumerate(run.complete.head(n).iterrows())]
    return (table(["rank", "trial", "hyp", "fitness", "gain (sd)", "mAP50-95", "mAP50", "P", "R", "epochs",
                   "seconds", "device"], rows, left=0) +
            f'<p class="note">The {min(n, len(run.complete))} best of {len(run.complete)} complete trials. Gain: '
            "the fitness minus the base hyp's mean over its noise seeds, in units of their standard deviation "
            "(blank without noise seeds). Base-hyp rows measure seed noise; the search found the others.</p>")


def default_vs_best(run: Run) -> str:
    if run.evolve is None or run.complete.empty:
        return missing("default vs best", "No complete evolution trial yet.")
    base = run.evolve[run.evolve.number == 0]
    if base.empty:
        return missing("trial 0 (the default hyp)", "The study has no trial 0.")
    b, best = base.iloc[0], best_searched(run.evolve)
    if best is None:
        return missing("a searched trial", "Only the base hyp's own trials have completed.")
    rows, classes = [], []
    for k in run.evolved_names():
        changed = not math.isclose(float(b[k]), float(best[k]), rel_tol=1e-9, abs_tol=1e-12)
        rows.append([esc(k), fmt(b[k]), fmt(best[k]), _change(float(best[k]), float(b[k])) if changed else "="])
        classes.append("changed" if changed else "")
    if pd.notna(b.get("mosaic_used")) and pd.notna(best.get("mosaic_used")):  # the gene x the study's AutoMosaic factor
        rows.append(["mosaic used (AutoMosaic)", fmt(b.mosaic_used), fmt(best.mosaic_used),
                     _change(float(best.mosaic_used), float(b.mosaic_used))
                     if not math.isclose(float(b.mosaic_used), float(best.mosaic_used)) else "="])
        classes.append("")
    for m in METRICS:
        rows.append([f"<b>{m}</b>", fmt(b[m]), fmt(best[m]), _change(float(best[m]), float(b[m]))])
        classes.append("")
    head = ["hyp (evolved)", f"default (trial 0, {b.state.lower()})", f"best searched (trial {int(best.number)})", "change"]
    return (table(head, rows, classes=classes) +
            f'<p class="note">Metrics at the trial budget ({fmt(best.epochs, "{:.0f}")} epochs, best epoch). Fixed '
            f"hyps (same in every trial) are left out; changed values are shaded.</p>")


def retrain(run: Run) -> str:
    df = run.retrain
    if df is None or df.empty:
        return missing("retrain at full budget (retrain/retrain.csv)", "Run `python -m evolve.study` (retrain phase).")
    rows = []
    for trial, g in df.groupby("trial", sort=False):
        rows.append([f"{int(trial)} ({esc(g.role.iloc[0])})", len(g), ", ".join(str(int(s)) for s in g.seed),
                     fmt(g.trial_fitness.iloc[0]), _mean_std(g.objective) if "objective" in g else "–",
                     _mean_std(g["mAP50-95"]), _mean_std(g.fitness),
                     fmt(g.epochs.max(), "{:.0f}"), fmt(g.seconds.sum(), "{:.0f}")])
    out = table(["trial (role)", "runs", "seeds", "value in evolution", f"objective: {run.objective} (mean ± std)",
                 "best-epoch mAP50-95 (mean ± std)", "best-epoch fitness (mean ± std)", "epochs", "seconds"], rows)
    img = image(draw_retrain(run), "retrain curves")
    choice = run.summary.get("retrain") or {}
    paired = [c for c in choice.get("candidates") or [] if c.get("paired_vs_base")]
    if paired:
        out += table(["trial", "paired gain over the base hyp (mean ± se)", "per seed", "t (df)", "p one-sided",
                      "p Holm", "verdict"],
                     [[str(c["trial"]), f"{fmt(p['diff_mean'], '{:+.4f}')} ± {fmt(p['diff_se'])}",
                       ", ".join(fmt(d, "{:+.4f}") for d in p["diffs"]),
                       f"{fmt(p.get('t'), '{:.2f}')} ({fmt(p.get('df'), '{:.0f}')})", fmt(p.get("p"), "{:.3f}"),
                       fmt(p.get("p_holm"), "{:.3f}"),
                       "above seed noise" if p["above_noise"] else "within seed noise"]
                      for c in paired for p in [c["paired_vs_base"]]])
    note = ('<p class="note">Each run uses a fresh seed (not the trials\' seed), and every retrained hyp gets the '
            "same seeds, so the gain over the base hyp is paired by seed: a one-sided paired t-test at 5% (n seeds, "
            "n - 1 degrees of freedom), its p-values adjusted by Holm's method over the candidates, since the one "
            "pruned is the highest mean on these same runs. The hyp with the highest mean is pruned (its best run); "
            "the transfer runs are not candidates. "
            + (esc(choice["verdict"]) if choice.get("verdict") else "") + "</p>")
    return out + note + (img or "")


def transfer(run: Run) -> str:
    """Trial value vs retrained value of every retrained hyp, Spearman's rho and n (evolve/transfer.py)."""
    df = run.retrain
    if df is None or df.empty:
        return missing("retrain runs (retrain/retrain.csv)", "Run `python -m evolve.study` (retrain phase); "
                       "`retrain: {transfer: N}` retrains N more trials spread over the ranking.")
    t = transfer_summary(df)
    rho = "undefined" if math.isnan(t["rho"]) else f"{t['rho']:+.2f}"
    out = (f"<p>Spearman's rank correlation between the value in the search (the trial budget) and the retrained "
           f"{esc(t['value'])} (mean over seeds) of the {t['n']} retrained hyp(s): <b>rho {rho}, n = {t['n']}</b> "
           f"({t['spread']} of them retrained only to measure this, spread evenly over the ranking).</p>")
    if t["warning"]:
        out += f'<p class="warn"><b>Warning</b>: {esc(t["warning"])}.</p>'
    rows = [[f"{p['trial']} ({esc(p['role'])})", ", ".join(map(str, p["seeds"])), fmt(p["trial_fitness"]),
             fmt(p["retrained"]) + (f" ± {fmt(p['retrained_sd'], '{:.3g}')}" if len(p["seeds"]) > 1 else "")]
            for p in sorted(t["points"], key=lambda p: -p["trial_fitness"])]
    out += table(["trial (role)", "seeds", "value in the search", f"retrained {t['value']} (mean ± sd)"], rows)
    img = image(draw_transfer(run, t), "trial vs retrained") if t["n"] >= 2 else None
    note = (f'<p class="note">The warning shows when rho &lt; {t["min_rho"]} or n &lt; {t["min_n"]} (evolve/transfer.py '
            "says why); its absence is no proof over a few points. The transfer runs use the candidates' first "
            "seed and are never candidates for pruning.</p>")
    return out + note + (img or "")


def draw_transfer(run: Run, t: dict) -> Path:
    """retrain/transfer.png: each retrained hyp's value in the search vs retrained, rho and n in the title."""
    path = run.dir / "retrain" / "transfer.png"
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    styles = {"best": ("#1a7f37", "o"), "base": ("#555555", "s"), TRANSFER_ROLE: ("#1f77b4", "D")}
    for role in dict.fromkeys(p["role"] for p in t["points"]):
        pts = [p for p in t["points"] if p["role"] == role]
        color, marker = styles.get(role, ("#2ca02c", "o"))  # top-2, top-3 ...: the other candidates
        ax.errorbar([p["trial_fitness"] for p in pts], [p["retrained"] for p in pts],
                    yerr=[p["retrained_sd"] for p in pts], fmt=marker, color=color, ms=6, capsize=3, label=role)
        for p in pts:
            ax.annotate(str(p["trial"]), (p["trial_fitness"], p["retrained"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    rho = "undefined" if math.isnan(t["rho"]) else f"{t['rho']:+.2f}"
    ax.set_title(f"Trial vs retrained: Spearman rho = {rho}, n = {t['n']}", fontsize=11)
    ax.set_xlabel("value in the search (trial budget)")
    ax.set_ylabel(f"retrained {t['value']} (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_retrain(run: Run) -> Path:
    """retrain/retrain.png: mAP50-95 per epoch of every retrain run (from each run's results.csv)."""
    path = run.dir / "retrain" / "retrain.png"
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for _, r in run.retrain.iterrows():
        res = _read_csv(run.dir / "retrain" / str(r.run) / "results.csv")
        if res is not None and len(res):
            ax.plot(res.epoch, res["mAP50-95"], marker="o", ms=3, label=f"trial {int(r.trial)} ({r.role}), seed {int(r.seed)}")
    ax.set_xlabel("epoch (0-based)")
    ax.set_ylabel("mAP50-95 on val (0–1)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.set_title("Retrains at full budget: validation mAP50-95 per epoch")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pruning(run: Run) -> str:
    df = run.prune
    if df is None or df.empty:
        return missing("pruning results (prune/prune_results.csv)", "Run `python -m evolve.study` (prune phase).")
    df = df.copy()
    df["speedup"] = df.latency_ms.iloc[0] / df.latency_ms
    rows = [[esc(k)] + [fmt(v, spec) for v in df[k]] for k, spec in PRUNE_ROWS if k in df]
    out = table(["metric"] + [STAGE_LABELS.get(s, s) for s in df.stage], rows)
    b = df.iloc[0]
    notes = [f"GFLOPs at imgsz {fmt(b.get('imgsz'), '{:.0f}')}; latency: median CPU batch-1 ms of the fused model at "
             f"{fmt(b.get('latency_imgsz'), '{:.0f}')} px, {fmt(b.get('threads'), '{:.0f}')} thread(s), all stages "
             "timed interleaved; speedup = Before latency / stage latency."
             + (" onnx_latency_ms: the same, for the stage exported to ONNX (prune/onnx/) and run in onnxruntime "
                "with the same thread count, in the same loop." if "onnx_latency_ms" in df else "")]
    ch = run.prune_records.get("channel", {}).get("extra", {})
    opts = run.prune_records.get(df.stage.iloc[-1], {}).get("options", {})
    if ch:
        notes.append(f"Channel threshold |gamma| &lt; {fmt(ch.get('threshold'))} (largest safe threshold "
                     f"{fmt(ch.get('safe_threshold'))}, set by {esc(ch.get('tightest'))}).")
    if opts:
        shown = [f"{k}: {v}" for s in opts.values() if isinstance(s, dict) for k, v in s.items() if k in PRUNE_OPTIONS]
        notes.append("Pruning options: " + esc("; ".join(shown)))
    img = image(run.dir / "prune" / "stages.png", "pruning stages")
    return out + "".join(f'<p class="note">{n}</p>' for n in notes) + (img or "")


def detections(run: Run) -> str:
    """The best and the pruned model's detections on the same val images, side by side (detect/detect.json)."""
    rec = _read_json(run.dir / "detect" / DETECT_JSON)
    models = rec.get("models") or {}
    if not models:
        return missing("detections (detect/detect.json)", "They are drawn when the report is written, once retrain "
                       "or prune has produced a checkpoint.")
    roles = [r for r in ("best", "pruned") if r in models]
    title = {"best": "best (retrained)", "pruned": "pruned"}
    cells = []
    for i, name in enumerate(rec.get("images", [])):
        for role in roles:
            img = image(run.dir / "detect" / role / name, f"{role}: {name}")
            n = models[role]["detections"][i]
            cells.append(f"<figure>{img or missing(f'detect/{role}/{name}', 'Rewrite the report.')}<figcaption>"
                         f"{esc(title[role])}: {n} detection{'s' if n != 1 else ''} on {esc(name)}"
                         "</figcaption></figure>")
    weights = "; ".join(f"{title[r]}: <code>{esc(models[r]['weights'])}</code>" for r in roles)
    note = (f'<p class="note">The first {len(rec.get("images", []))} val images (sorted by name), drawn by '
            f"<code>core.detect</code> at {fmt(rec.get('imgsz'), '{:.0f}')} px, conf ≥ {fmt(rec.get('conf'))}, NMS IoU "
            f"{fmt(rec.get('iou'))}. Weights: {weights}.</p>")
    if len(roles) < 2:
        note += missing("the " + ("pruned" if "best" in roles else "best (retrained)") + " model's checkpoint",
                        "Run `python -m evolve.study` to finish the study.")
    return note + f'<div class="det" style="grid-template-columns:repeat({len(roles)},minmax(0,420px))">{"".join(cells)}</div>'


def pareto(run: Run) -> str:
    """A two-objective study's front (evolve/pareto.py): the figure, the front's points, the budget's choice."""
    p = run.summary.get("pareto") or {}
    cost = p["objectives"][1]
    limit = (p.get("budget") or {}).get(cost)
    out = (f"<p>Objectives: fitness (maximized) and {esc(cost)} (minimized), {p['trials']} complete trial(s); "
           f"{len(p['front'])} on the Pareto front (no other trial is at least as good in both and better in one).")
    out += (f" Budget: <b>{esc(cost)} &le; {fmt(limit, '{:g}')}</b>.</p>" if limit is not None else
            " No budget (<code>budget: {" + esc(cost) + ": X}</code>) picks a point: the retrain takes the best fitness.</p>")
    if p.get("message"):
        cls = "note" if p.get("chosen") else "warn"
        out += f'<p class="{cls}">{esc(p["message"])}.</p>'
    chosen = (p.get("chosen") or {}).get("trial")
    # the speed genes the front's trials record: imgsz always, a pruned share and the multiples where searched
    genes = ["imgsz"] + [g for g in SPEED_GENES[1:] if any(q.get(g) is not None for q in p["front"])]
    rows = [[f"{q['trial']}" + (" (base hyp)" if q.get("base") else "") + (" <b>chosen</b>" if q["trial"] == chosen else ""),
             *[fmt(q.get(g), GENE_FORMATS[g]) for g in genes], fmt(q["fitness"]),
             fmt(q["cost"]) + (f" ({fmt(q.get('latency_p25'), '{:.3g}')}–{fmt(q.get('latency_p75'), '{:.3g}')})"
                               if q.get("latency_p25") is not None else "")] for q in p["front"]]
    spread = " (p25–p75)" if cost == "latency_ms" else ""
    out += table(["trial", *[GENE_HEADERS[g] for g in genes], "fitness", f"{cost}{spread}"], rows)
    return out + figure(run, "evolve/pareto.png", "fitness vs cost", "Pareto plot", "No evolution results yet.",
                        "Every complete trial; the red step line is the front (the best fitness reachable at each "
                        "cost), the dashed line the budget, the star the chosen trial (the best searched trial within the "
                        "budget: the retrain's candidate; squares are the base hyp's trials, its reference). Latency is measured on the "
                        "trial's model on 1 CPU thread while other trials may train beside it: the grey bars are its "
                        "p25–p75 spread.")


def build_report(run_dir: Path | str) -> Path:
    """Write run_dir/report.html from the run dir's files; returns its path."""
    run = Run(Path(run_dir))
    body = {
        "summary": summary(run), "settings": settings(run),
        "fitness": figure(run, "evolve/fitness.png", "fitness per trial", "fitness plot", "No evolution results yet."),
        "scatter": figure(run, "evolve/evolve.png", "hyperparameters vs fitness", "scatter grid",
                          "No evolution results yet."),
        "importances": importances(run), "top": top_trials(run), "default-vs-best": default_vs_best(run),
        "retrain": retrain(run), "transfer": transfer(run), "pruning": pruning(run), "detect": detections(run),
        "gamma": figure(run, "prune/gamma.png", "gamma histograms", "gamma histograms",
                        "They need the sparse stage (`prune: {sr: true}` in the study)."),
        "channels": figure(run, "prune/channels.png", "channels per layer", "per-layer channels",
                           "They come from the prune phase (prune/channels.csv)."),
    }
    sections = dict(SECTIONS)
    if run.summary.get("pareto"):  # a two-objective study: its front after the fitness plot
        keys = list(sections)
        sections = {k: sections.get(k, PARETO_TITLE) for k in keys[:keys.index("fitness") + 1] + ["pareto"] +
                    keys[keys.index("fitness") + 1:]}
        body["pareto"] = pareto(run)
    name = run.study.get("name") or run.dir.name
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in sections.items())
    parts = [f'<section id="{k}"><h2>{esc(sections[k])}</h2>{body[k]}</section>' for k in sections]
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Study {esc(name)}</title>'
           f"<style>{CSS}</style></head><body><h1>Study '{esc(name)}': evolve → retrain → prune</h1>"
           f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n")
    return atomic_write(run.dir / "report.html", doc)
