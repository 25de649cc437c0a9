"""bench.headline: the README's headline table is rendered from bench/results/headline.json, keeps every
figure, and the repository's README holds exactly that rendering."""
from __future__ import annotations

import json

import pytest

from bench import headline
from bench.headline import HeadlineError, load, render, update

MADE_UP = {
    "use": {"Export parity": {"figure": "0.0284 / 0.0284", "date": "2026-11-24", "machine": "AMD EPYC, 2 cores",
                              "command": "make bench-use"}},
    "peers": {"Training images/s": {"figure": "1.91x (wall 0.52)", "date": "2026-12-05",
                                    "machine": "Intel Xeon, 2 cores", "command": "make bench-peer"},
              "mAP50-95 | suite": {"figure": "large 1.21, single 1.01", "date": "2026-12-05",
                                   "machine": "AMD EPYC", "command": ""}},
    "zeta": {"something new": {"figure": "42", "date": "2026-12-07", "machine": "m", "command": ""}},
}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").replace("\\|", "¦").split("|")]


def test_render_keeps_every_figure_with_its_date_machine_and_file(tmp_path):
    path = tmp_path / "headline.json"
    path.write_text(json.dumps(MADE_UP))
    lines = render(load(path)).splitlines()
    assert _cells(lines[0]) == ["result", "figure", "measured", "results file"] and len(lines) == 2 + 4
    rows = [_cells(line) for line in lines[2:]]
    assert all(len(r) == 4 for r in rows)  # the label's pipe is escaped, not a new cell
    for name, figures in MADE_UP.items():
        for label, f in figures.items():
            row = next(r for r in rows if r[0] == label.replace("|", "¦"))
            assert row[1] == f["figure"] and row[2] == f"{f['date']}, {f['machine']}"
            assert row[3] == f"[{name}.md](bench/results/{name}.md)"
    assert [r[3] for r in rows] == ["[peers.md](bench/results/peers.md)"] * 2 + [
        "[use.md](bench/results/use.md)", "[zeta.md](bench/results/zeta.md)"]  # ORDER, then unknown benches


def test_update_replaces_only_the_labels_it_is_given(tmp_path):
    path = tmp_path / "headline.json"
    path.write_text(json.dumps(MADE_UP))
    update("peers", {"Training images/s": "2.00x"}, "2026-12-08", "New CPU", "cmd", path)
    data = load(path)
    assert data["peers"]["Training images/s"] == {"figure": "2.00x", "date": "2026-12-08", "machine": "New CPU",
                                                  "command": "cmd"}
    assert data["peers"]["mAP50-95 | suite"] == MADE_UP["peers"]["mAP50-95 | suite"] and data["use"] == MADE_UP["use"]


def test_readme_block_is_rewritten_in_place_and_checked(tmp_path):
    path, readme = tmp_path / "headline.json", tmp_path / "README.md"
    path.write_text(json.dumps(MADE_UP))
    readme.write_text(f"# title\n\nintro\n\n{headline.START}\nstale\n{headline.END}\n\nrest\n")
    args = ["--readme", str(readme), "--json", str(path)]
    assert headline.main([*args, "--check"]) == 1
    assert headline.main(args) == 0
    assert readme.read_text() == (f"# title\n\nintro\n\n{headline.START}\n{headline.NOTE}\n{render(MADE_UP)}\n"
                                  f"{headline.END}\n\nrest\n")
    assert headline.main([*args, "--check"]) == 0
    update("zeta", {"something new": "43"}, "2026-12-09", "m", "", path)
    assert headline.main([*args, "--check"]) == 1  # a new figure makes the README stale
    readme.write_text("# no markers\n")
    assert headline.main([*args, "--check"]) == 2
    with pytest.raises(HeadlineError, match="headline:start"):
        headline.write_readme(readme, path)


def test_the_repositorys_readme_shows_the_recorded_headline():
    text = headline.README.read_text()
    assert headline.rendered_readme(text, load()) == text, "run `python -m bench.headline` (make headline)"


def test_every_headline_figure_names_a_results_file_that_exists():
    data = load()
    assert data, "bench/results/headline.json is empty"
    for name, figures in data.items():
        assert (headline.HEADLINE_JSON.parent / f"{name}.md").is_file(), name
        for label, row in figures.items():
            assert row["figure"] and row["date"] and row["machine"], (name, label)
