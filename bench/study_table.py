"""`python -m bench.study_table runs/study/NAME [--headline]`: a whole study's figures into bench/results/study.md.

evolve.study writes RUN/summary.json (evolve/summary.py): the base run, the noise floor (the base hyp over
its seeds), the best trials, every retrained candidate with its paired gain over the base hyp, the verdict,
the transfer (Spearman's rho between trial and retrained values, its n, a warning when it is low),
pruning before and after, each phase's seconds, and a two-objective study's Pareto front and budget choice. This command renders it as one markdown table and
appends it to bench/results/study.md (`--no-record`: print only). `--headline` also puts the noise floor in
the README's headline table: `make record-study` does, for the quick study (NAME=quick).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from bench.record import markdown_table
from bench.run_table import run_table_main
from evolve.objectives import GENE_TAGS, SPEED_GENES
from evolve.transfer import transfer_line

HEADLINE = "Study noise floor: the base hyp over its noise seeds (fitness mean ± sd)"
TRANSFER_HEADLINE = "Study transfer: trial ranking vs the same hyps retrained (the quick study, built-in data)"


def _speed_genes(point: dict) -> str:
    """' (192 px, pruned 0.35, width 0.125)': a front point's searched speed genes, where searched."""
    genes = [GENE_TAGS[g].format(point[g]) for g in SPEED_GENES if point.get(g) is not None]
    return f" ({', '.join(genes)})" if genes else ""


def rows(s: dict) -> list[tuple[str, str]]:
    """(figure, value) for each part of the summary that the run holds."""
    out = []
    if s.get("base_run"):
        b = s["base_run"]
        out.append(("base run", f"fitness {_f(b.get('fitness'))}, mAP50-95 {_f(b.get('mAP50-95'))} "
                                f"(best epoch {b.get('best_epoch')}), {_f(b.get('seconds'), '.0f')} s"))
    if s.get("noise"):
        n = s["noise"]
        out.append((f"noise floor: base hyp over seeds {', '.join(map(str, n['seeds']))} (trials "
                    f"{', '.join(map(str, n['trials']))})", f"fitness {n['mean']:.4f} ± {n['sd']:.4f} (sd)"))
    if s.get("evolution"):
        e = s["evolution"]
        out.append(("trials: complete / pruned / failed", f"{e['complete']} / {e['pruned']} / {e['failed']}"))
        for key, label in (("best_searched_trial", "best searched trial"), ("best_trial", "best trial overall")):
            if e.get(key):
                t = e[key]
                out.append((label, f"trial {t['number']}, fitness {t['fitness']:.4f} "
                                   f"({_f(t.get('gain_sd'), '+.1f')} sd)"
                                   + (", a seed of the base hyp" if t.get("base") else "")))
    if s.get("pareto"):  # a two-objective study (evolve/pareto.py)
        p = s["pareto"]
        cost = p["objectives"][1]
        out.append((f"Pareto front: fitness vs {cost}, {len(p['front'])} of {p['trials']} trials",
                    "; ".join(f"trial {q['trial']}" + _speed_genes(q) + f" {q['fitness']:.4f} at {q['cost']:.4g}"
                              for q in p["front"])))
        if p.get("message"):
            out.append((f"budget {cost} <= {_f((p.get('budget') or {}).get(cost), 'g')}", p["message"]))
    if s.get("retrain"):
        r = s["retrain"]
        for c in r.get("candidates") or []:
            paired = c.get("paired_vs_base")
            gain = f"; paired gain {paired['diff_mean']:+.4f} ± {_f(paired['diff_se'])} (se)" if paired else ""
            out.append((f"retrain: trial {c['trial']} ({c['role']}), seeds {', '.join(map(str, c['seeds']))}",
                        " / ".join(f"{v:.4f}" for v in c["fitness"]) + f" = {c['mean']:.4f} ± {c['sd']:.4f}{gain}"))
        out.append(("verdict", str(r.get("verdict"))))
    if s.get("transfer"):
        t = s["transfer"]
        out.append((f"transfer: trials {', '.join(str(p['trial']) for p in t['points'])}",
                    transfer_line(t).removeprefix("transfer: ")))
    if s.get("prune"):
        b, a = s["prune"]["before"], s["prune"]["after"]
        out.append((f"prune: {b['stage']} -> {a['stage']}",
                    f"mAP50-95 {_f(b['mAP50-95'])} -> {_f(a['mAP50-95'])}, GFLOPs {_f(b['GFLOPs'], '.3f')} -> "
                    f"{_f(a['GFLOPs'], '.3f')}, params {_f(b['params'], ',.0f')} -> {_f(a['params'], ',.0f')}, "
                    f"latency {_f(b['latency_ms'], '.1f')} -> {_f(a['latency_ms'], '.1f')} ms (onnxruntime "
                    f"{_f(b.get('onnx_latency_ms'), '.1f')} -> {_f(a.get('onnx_latency_ms'), '.1f')})"))
    if s.get("seconds"):
        out.append(("seconds per phase", ", ".join(f"{k} {_f(v, '.0f')}" for k, v in s["seconds"].items())))
    return out


def _f(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def table(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    return (f"{run_dir}: study {s.get('study')}, updated {s.get('updated')}\n\n"
            + markdown_table(["figure", "value"], [(k.replace("|", "/"), v.replace("|", "/")) for k, v in rows(s)]))


def headline(run_dir: Path) -> dict[str, str]:
    """The noise floor and, when the study measured it, the transfer of its trial ranking to the retrain budget."""
    s = json.loads((run_dir / "summary.json").read_text())
    n, t, out = s.get("noise"), s.get("transfer"), {}
    if n:
        out[HEADLINE] = f"{n['mean']:.4f} ± {n['sd']:.4f} (sd, {n['n']} seeds)"
    if t and t.get("n"):
        rho = "undefined (retrained values tied)" if t.get("rho") is None else f"{t['rho']:+.2f}"
        out[TRANSFER_HEADLINE] = f"Spearman rho {rho} over n = {t['n']} retrained trials"
    return out


main = functools.partial(run_table_main, "study", "bench.study_table", table, headline)


if __name__ == "__main__":
    raise SystemExit(main())
