"""Held-out suite generator: deterministic, labels valid, every class drawn, non-square aerial images."""
import numpy as np
import pytest

from bench.heldout import HELDOUT_SEED, SETS, generate_heldout, render
from core.data.config import load_data_config


@pytest.mark.parametrize("name", list(SETS))
def test_render_is_deterministic_and_seeded(name):
    img, lb = render(name, "train", 3)
    img2, lb2 = render(name, "train", 3)
    assert np.array_equal(img, img2) and np.array_equal(lb, lb2)
    other, _ = render(name, "train", 3, seed=HELDOUT_SEED + 1)
    assert other.shape != img.shape or not np.array_equal(other, img)
    val, _ = render(name, "val", 3)
    assert val.shape != img.shape or not np.array_equal(val, img)


@pytest.mark.parametrize("name,n", [("glyphs", 16), ("large", 30), ("single", 8), ("aerial", 8), ("lookalikes", 16)])
def test_labels_in_range_and_every_class_present(name, n):
    nc = len(SETS[name].names)
    seen = set()
    for i in range(n):
        img, lb = render(name, "val", i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert lb.shape[1] == 5
        if len(lb):
            assert ((lb[:, 0] >= 0) & (lb[:, 0] < nc)).all()
            assert (lb[:, 0] == lb[:, 0].round()).all()
            assert (lb[:, 3:] > 0).all()
            x1, x2 = lb[:, 1] - lb[:, 3] / 2, lb[:, 1] + lb[:, 3] / 2
            y1, y2 = lb[:, 2] - lb[:, 4] / 2, lb[:, 2] + lb[:, 4] / 2
            assert (x1 >= -1e-9).all() and (x2 <= 1 + 1e-9).all() and (y1 >= -1e-9).all() and (y2 <= 1 + 1e-9).all()
        seen |= set(lb[:, 0].astype(int).tolist())
    assert seen == set(range(nc))


def test_object_sizes_match_each_sets_character():
    glyph_h = np.concatenate([render("glyphs", "train", i)[1][:, 4] * 256 for i in range(10)])
    assert 8 <= glyph_h.min() and glyph_h.max() <= 60  # 12-48 px tall glyphs; rotation and occlusion widen the range
    large = np.concatenate([render("large", "train", i)[1] for i in range(10)])
    assert np.median(np.maximum(large[:, 3], large[:, 4])) > 0.3 and max(len(render("large", "train", i)[1]) for i in range(10)) <= 3
    counts = [len(render("aerial", "train", i)[1]) for i in range(6)]
    look_h = np.concatenate([render("lookalikes", "train", i)[1][:, 4] * 256 for i in range(10)])
    assert 4 <= look_h.min() and look_h.max() <= 42 and np.median(look_h) < np.median(glyph_h)  # 10-32 px: smaller
    assert min(counts) >= 5 and np.mean(counts) >= 10


def test_aerial_images_are_not_square():
    shapes = {render("aerial", "train", i)[0].shape[:2] for i in range(30)}
    assert all(h != w for h, w in shapes)
    assert len(shapes) >= 2 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def test_generate_writes_yolo_sets_we_can_load(tmp_path):
    yamls = generate_heldout(tmp_path / "suite", n_train=3, n_val=2)
    assert set(yamls) == set(SETS)
    for name, path in yamls.items():
        cfg = load_data_config(path)
        assert cfg["names"] == list(SETS[name].names) and cfg["nc"] == len(SETS[name].names)
        root = path.parent
        assert len(list((root / "images" / "train").glob("*.jpg"))) == 3
        assert len(list((root / "labels" / "val").glob("*.txt"))) == 2
    # the same parameters: kept as is; other parameters: regenerated
    stamp = (tmp_path / "suite" / "single" / "images" / "train" / "000000.jpg").stat().st_mtime_ns
    generate_heldout(tmp_path / "suite", sets=["single"], n_train=3, n_val=2)
    assert (tmp_path / "suite" / "single" / "images" / "train" / "000000.jpg").stat().st_mtime_ns == stamp
    generate_heldout(tmp_path / "suite", sets=["single"], n_train=4, n_val=2)
    assert len(list((tmp_path / "suite" / "single" / "images" / "train").glob("*.jpg"))) == 4
    with pytest.raises(ValueError, match="unknown held-out set"):
        generate_heldout(tmp_path / "suite", sets=["nope"])


def test_main_records_each_sets_size_and_label_checksum(tmp_path, results_in_tmp):
    from bench.heldout import main

    args = ["--root", str(tmp_path / "suite"), "--sets", "single,aerial", "--n-train", "3", "--n-val", "2"]
    assert main([*args, "--no-record"]) == 0 and not results_in_tmp.exists()
    assert main(args) == 0 and main(args) == 0
    text = (results_in_tmp / "heldout.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| single ")]
    assert len(rows) == 2 and rows[0] == rows[1]  # the same suite, the same checksum
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:3] == ["3", "2"] and len(cells[4]) == 12
    assert main([*args[:-4], "--n-train", "4", "--n-val", "2"]) == 0  # another suite: another checksum
    last = [line for line in (results_in_tmp / "heldout.md").read_text().splitlines() if line.startswith("| single ")]
    assert last[-1].split("|")[5] != rows[0].split("|")[5]
