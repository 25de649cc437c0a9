"""Label verification, its cache, and data yaml parsing (core.data.labels / core.data.config)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from core.data import labels as L
from core.data.config import DataConfigError, load_data_config
from core.data.dataset import YoloDataset
from core.data.files import img2label_path, list_image_files

GOOD = "1 0.5 0.5 0.2 0.4"


def write_image(path: Path, size: tuple[int, int] = (32, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 90, np.uint8))
    return path


def make_set(root: Path, label_texts: dict[str, str | None], split: str = "train") -> Path:
    """images/<split>/<name>.png with labels/<split>/<name>.txt (None: no label file)."""
    for name, text in label_texts.items():
        write_image(root / "images" / split / f"{name}.png")
        if text is not None:
            lb = root / "labels" / split / f"{name}.txt"
            lb.parent.mkdir(parents=True, exist_ok=True)
            lb.write_text(text)
    return root / "images" / split


def data_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("core.data") and r.levelno == logging.WARNING]


BAD_ROWS = [
    ("0 0.5 0.5 0.2", "wrong column count"),
    ("0 0.5 0.5 0.2 0.2 0.1", "wrong column count"),
    ("0 0.5 abc 0.2 0.2", "non-numeric"),
    ("0 0.5 nan 0.2 0.2", "non-numeric"),
    ("0 1.2 0.5 0.2 0.2", "outside [0, 1]"),
    ("0 0.5 -0.01 0.2 0.2", "outside [0, 1]"),
    ("0 0.5 0.5 0.2 1.5", "outside [0, 1]"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 outside [0, 2]"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 outside"),
    ("1.5 0.5 0.5 0.2 0.2", "not an integer"),
    ("0 0.5 0.5 0.0 0.2", "zero-size"),
    ("0 0.5 0.5 0.2 0", "zero-size"),
    (GOOD, "duplicate of line 1"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_each_bad_row_one_warning_and_skipped(tmp_path, caplog, row, reason):
    src = make_set(tmp_path, {"a": f"{GOOD}\n{row}\n0 0.25 0.25 0.1 0.1\n"})
    caplog.set_level(logging.INFO, logger="core.data")
    found = L.verify_dataset(src, nc=3, use_cache=False)
    warns = [w for w in data_warnings(caplog) if "row skipped" in w]
    lb = str(tmp_path / "labels" / "train" / "a.txt")
    assert len(warns) == 1, warns
    assert f"{lb}:2:" in warns[0] and reason in warns[0]
    np.testing.assert_allclose(found.labels[0], [[1, 0.5, 0.5, 0.2, 0.4], [0, 0.25, 0.25, 0.1, 0.1]], atol=1e-6)
    assert found.counts["bad_rows"] == 1 and found.counts["found"] == 1
    assert any("1 bad rows" in r.getMessage() for r in caplog.records)  # summary line


def test_tolerances_polygons_and_clipping(tmp_path):
    text = (
        "0 1.00005 0.5 0.2 0.2\n"  # within tolerance: kept, clipped to the image
        "2 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n"  # polygon -> its bounding box
        "\n"  # blank lines are ignored
        "1 0.95 0.5 0.2 0.2\n"  # pokes out of the image -> clipped
    )
    found = L.verify_dataset(make_set(tmp_path, {"a": text}), nc=3, use_cache=False)
    np.testing.assert_allclose(
        found.labels[0],
        [[0, 0.95, 0.5, 0.1, 0.2], [2, 0.2, 0.3, 0.2, 0.4], [1, 0.925, 0.5, 0.15, 0.2]], atol=1e-4,
    )
    assert found.counts["bad_rows"] == 0


def test_background_empty_and_corrupt_images(tmp_path, caplog):
    src = make_set(tmp_path, {"bg": None, "empty": "", "ok": GOOD, "allbad": "9 0.5 0.5 0.1 0.1\n"})
    (src / "broken.jpg").write_bytes(b"not an image at all")
    cv2.imwrite(str(src / "trunc.jpg"), np.full((40, 40, 3), 200, np.uint8))
    (src / "trunc.jpg").write_bytes((src / "trunc.jpg").read_bytes()[:300])  # truncated
    cv2.imwrite(str(src / "tiny.png"), np.zeros((5, 40, 3), np.uint8))
    caplog.set_level(logging.INFO, logger="core.data")
    found = L.verify_dataset(src, nc=3, use_cache=False)
    assert [Path(f).name for f in found.im_files] == ["allbad.png", "bg.png", "empty.png", "ok.png"]
    assert [len(x) for x in found.labels] == [0, 0, 0, 1]
    assert found.shapes.tolist() == [[32, 48]] * 4
    c = found.counts
    assert (c["found"], c["missing"], c["empty"], c["corrupt"], c["bad_rows"]) == (1, 1, 2, 3, 1)
    warns = data_warnings(caplog)
    expected = (("broken.jpg", "cannot be decoded"), ("trunc.jpg", "cannot be decoded"), ("tiny.png", "< 10 px"))
    for name, reason in expected:
        hits = [w for w in warns if name in w]
        assert len(hits) == 1 and reason in hits[0], hits
    summary = [w for w in warns if "images," in w]
    assert len(summary) == 1 and "3 corrupt" in summary[0] and "1 missing" in summary[0]


def test_no_usable_image_is_an_error(tmp_path):
    src = tmp_path / "images" / "train"
    src.mkdir(parents=True)
    (src / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=str(src)):
        L.verify_dataset(src, use_cache=False)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        L.verify_dataset(empty)


def test_cache_reused_and_invalidated(tmp_path, caplog, monkeypatch):
    src = make_set(tmp_path, {"a": f"{GOOD}\n{GOOD}\n", "b": "0 0.3 0.3 0.2 0.2\n"})
    caplog.set_level(logging.INFO, logger="core.data")
    first = L.verify_dataset(src, nc=3)
    cache = tmp_path / "labels" / "train.yep.cache"
    assert first.cache_file == cache and cache.is_file()

    def fail(*a, **k):
        raise AssertionError("verification ran although the cache is valid")

    monkeypatch.setattr(L, "verify_image_label", fail)
    caplog.clear()
    again = L.verify_dataset(src, nc=3)
    assert "(from cache)" in caplog.text
    assert [w for w in data_warnings(caplog) if "duplicate of line 1" in w]  # stored warnings are replayed
    assert all(np.array_equal(x, y) for x, y in zip(first.labels, again.labels))
    monkeypatch.undo()

    lb = tmp_path / "labels" / "train" / "b.txt"
    lb.write_text("2 0.6 0.6 0.3 0.3\n0 0.2 0.2 0.1 0.1\n")
    os.utime(lb, ns=(lb.stat().st_atime_ns, lb.stat().st_mtime_ns + 10**9))
    caplog.clear()
    changed = L.verify_dataset(src, nc=3)
    assert "(from cache)" not in caplog.text
    np.testing.assert_allclose(changed.labels[1], [[2, 0.6, 0.6, 0.3, 0.3], [0, 0.2, 0.2, 0.1, 0.1]], atol=1e-6)
    # a different nc changes the verdict on class ids, so it is part of the key
    narrowed = L.verify_dataset(src, nc=1)
    assert [len(x) for x in narrowed.labels] == [0, 1]


def test_yolov5_cache_beside_ours_is_left_alone(tmp_path):
    src = make_set(tmp_path, {"a": GOOD})
    theirs = tmp_path / "labels" / "train.cache"
    theirs.write_bytes(b"YOLOv5 numpy cache")
    assert L.verify_dataset(src, nc=3).cache_file.name == "train.yep.cache"
    assert theirs.read_bytes() == b"YOLOv5 numpy cache"


def test_training_set_without_a_usable_label_is_an_error_with_counts(tmp_path):
    src = make_set(tmp_path, {"a": "5 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", "b": "0 0.5 0.5 0 0.2\n", "c": None,
                              "d": "7 0.1 0.1 0.1 0.1\n"})
    found = L.verify_dataset(src, nc=3)
    with pytest.raises(L.NoLabelsError) as e:
        L.require_boxes(found, src)
    msg = str(e.value)
    assert str(src) in msg and "4 images, 1 without a label file, 3 whose label file has no usable row" in msg
    assert "rejected: 2 class id, 1 wrong column count, 1 zero-size box" in msg
    make_set(tmp_path, {"e": GOOD})  # one labelled image among background ones is enough
    L.require_boxes(L.verify_dataset(src, nc=3), src)


def test_list_file_sources_and_label_paths(tmp_path):
    make_set(tmp_path / "ds", {"a": GOOD, "b": GOOD})
    lst = tmp_path / "ds" / "train.txt"
    lst.write_text("./images/train/a.png\nimages/train/b.png\n\n")
    files = list_image_files([lst])
    assert files == [str(tmp_path / "ds/images/train/a.png"), str(tmp_path / "ds/images/train/b.png")]
    assert img2label_path("/x/images/y/images/z.v.jpg") == "/x/images/y/labels/z.v.txt"
    found = L.verify_dataset(lst, nc=3)
    assert found.cache_file == tmp_path / "ds" / "train.yep.cache" and len(found.labels) == 2
    with pytest.raises(FileNotFoundError, match="nope"):
        list_image_files(tmp_path / "nope")


def test_coco128_style_yaml_loads_unchanged(tmp_path, monkeypatch):
    # YOLOv5 layout: <tmp>/yolov5/data/coco128.yaml, dataset in <tmp>/datasets/coco128, run from yolov5/
    root = tmp_path / "datasets" / "coco128"
    make_set(root, {"000000000009": "45 0.479 0.688 0.955 0.595\n50 0.637 0.732 0.494 0.511\n",
                    "000000000025": "23 0.770 0.489 0.336 0.698\n"}, split="train2017")
    (root / "train.txt").write_text("./images/train2017/000000000009.png\n./images/train2017/000000000025.png\n")
    names = {i: f"n{i}" for i in range(80)}
    cfg = {"path": "../datasets/coco128", "train": "train.txt", "val": "images/train2017", "test": None,
           "names": names, "download": "https://example.invalid/coco128.zip"}
    yaml_file = tmp_path / "yolov5" / "data" / "coco128.yaml"
    yaml_file.parent.mkdir(parents=True)
    yaml_file.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path / "yolov5")
    d = load_data_config(yaml_file)
    assert d["path"] == str(root) and d["nc"] == 80 and d["names"][79] == "n79"
    assert d["train"] == [str(root / "train.txt")] and d["val"] == [str(root / "images" / "train2017")]
    assert d["test"] == []
    ds = YoloDataset(d["train"], imgsz=64, nc=d["nc"])
    assert len(ds) == 2 and ds.labels[0][:, 0].tolist() == [45, 50]


def write_yaml(tmp_path: Path, cfg: dict) -> Path:
    f = tmp_path / "data.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_yaml_errors_name_file_and_key(tmp_path):
    make_set(tmp_path, {"a": GOOD})
    base = {"path": str(tmp_path), "train": "images/train", "val": "images/train", "names": ["a", "b", "c"]}
    f = write_yaml(tmp_path, {**base, "val": "images/val"})
    with pytest.raises(DataConfigError, match=rf"{f}.*'val' source not found"):
        load_data_config(f)
    f = write_yaml(tmp_path, {k: v for k, v in base.items() if k != "train"})
    with pytest.raises(DataConfigError, match=rf"{f}.*'train' is missing"):
        load_data_config(f)
    with pytest.raises(DataConfigError, match="nc=4 but 'names' has 3"):
        load_data_config(write_yaml(tmp_path, {**base, "nc": 4}))
    with pytest.raises(DataConfigError, match="without gaps"):
        load_data_config(write_yaml(tmp_path, {**base, "names": {0: "a", 2: "c"}}))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_data_config(tmp_path / "missing.yaml")
    # no `path`: sources relative to the yaml's folder; list of sources; nc alone gives names
    d = load_data_config(write_yaml(tmp_path, {"train": ["images/train"], "val": "images/train", "nc": 2}))
    assert d["train"] == [str(tmp_path / "images" / "train")] and d["names"] == ["class0", "class1"]


def test_labels_are_found_beside_a_symlinked_images_folder_as_given(tmp_path):
    """A label variant of an image set: variant/images is a symlink to base/images, variant/labels its own.
    The labels come from beside the path the data yaml names (as YOLOv5 lists them), not from beside the
    symlink's target (base/labels, another class set)."""
    make_set(tmp_path / "base", {"a": "2 0.5 0.5 0.2 0.4", "b": "2 0.5 0.5 0.2 0.4"})
    variant = tmp_path / "variant"
    (variant / "labels" / "train").mkdir(parents=True)
    (variant / "images").symlink_to(tmp_path / "base" / "images", target_is_directory=True)
    for name in ("a", "b"):
        (variant / "labels" / "train" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    yaml_file = write_yaml(variant, {"train": "images/train", "val": "images/train", "names": ["only"]})
    d = load_data_config(yaml_file)
    assert d["train"] == [str(variant / "images" / "train")]
    ds = YoloDataset(d["train"], imgsz=64, nc=d["nc"])
    assert ds.label_files == [str(variant / "labels" / "train" / f"{n}.txt") for n in ("a", "b")]
    assert [lb[:, 0].tolist() for lb in ds.labels] == [[0.0], [0.0]]


def test_a_symlinked_data_root_is_read_where_the_yaml_points(tmp_path):
    """`path:` naming a symlink to the data (images on another disk): sources, images and labels keep the
    path as given; the label variant beside it (its own labels/, images/ linked) still gets its own labels."""
    make_set(tmp_path / "disk" / "shapes", {"a": "1 0.5 0.5 0.2 0.4"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes").symlink_to(tmp_path / "disk" / "shapes", target_is_directory=True)
    yaml_file = write_yaml(tmp_path / "data", {"path": "shapes", "train": "images/train", "val": "images/train",
                                               "names": ["x", "y"]})
    d = load_data_config(yaml_file)
    root = tmp_path / "data" / "shapes"
    assert d["path"] == str(root) and d["train"] == [str(root / "images" / "train")]
    ds = YoloDataset(d["train"], imgsz=64, nc=d["nc"])
    assert ds.im_files == [str(root / "images" / "train" / "a.png")] and ds.labels[0][:, 0].tolist() == [1.0]
    # the data root a symlink too, its images a symlink into it: the variant's labels, not the base's
    (tmp_path / "disk" / "one").mkdir()
    (tmp_path / "disk" / "one" / "images").symlink_to(root / "images", target_is_directory=True)
    (tmp_path / "disk" / "one" / "labels" / "train").mkdir(parents=True)
    (tmp_path / "disk" / "one" / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data" / "one").symlink_to(tmp_path / "disk" / "one", target_is_directory=True)
    d = load_data_config(write_yaml(tmp_path / "data", {"path": "one", "train": "images/train",
                                                        "val": "images/train", "names": ["x", "y"]}))
    assert YoloDataset(d["train"], imgsz=64, nc=d["nc"]).labels[0][:, 0].tolist() == [0.0]
