"""The pieces every cache key is made of: the data's identity, the code version, and the one-line account of a change."""
import os
import re
import shutil
from pathlib import Path

import pytest

from core.data.config import load_data_config
from core.data.identity import data_digest, data_identity
from core.digest import CODE_VERSION_ENV, code_version, describe_change
from tests.helpers import REPO, synthetic_yaml

SETTINGS = "seed: 0, n_train: 4, n_val: 2, imgsz: 64"


@pytest.fixture
def data(tmp_path):
    """A tiny generated set: its yaml, generated now, under tmp_path/shapes."""
    yaml = synthetic_yaml(tmp_path, "d", "[circle, square]", SETTINGS)
    load_data_config(yaml)
    return Path(yaml)


def changed_parts(old: dict, new: dict) -> list[str]:
    return [k for k in new if k != "digest" and old[k] != new[k]]


def test_identity_is_stable_and_the_same_for_a_path_or_a_loaded_config(data):
    first = data_identity(data)
    assert data_identity(data) == first  # control: nothing changed, nothing differs
    assert data_identity(load_data_config(data)) == first and data_digest(data) == first["digest"]
    assert first["files"] == 6 and first["generator"] is not None


def test_an_edited_label_changes_only_the_labels(data):
    before = data_identity(data)
    label = data.parent / "shapes" / "labels" / "train" / "000000.txt"
    stat = label.stat()
    text = label.read_text()
    label.write_text(text.replace("0 ", "1 ", 1) if text.startswith("0 ") else text.replace("1 ", "0 ", 1))
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same size and mtime: only the content says it
    after = data_identity(data)
    assert changed_parts(before, after) == ["labels"] and after["digest"] != before["digest"]
    assert describe_change({"data": before}, {"data": after}) == "data changed (labels)"


def test_a_removed_label_file_changes_the_labels(data):
    before = data_identity(data)
    (data.parent / "shapes" / "labels" / "val" / "000001.txt").unlink()  # the image becomes a background image
    assert changed_parts(before, data_identity(data)) == ["labels"]


def test_a_replaced_image_changes_the_images(data):
    before = data_identity(data)
    image = data.parent / "shapes" / "images" / "val" / "000000.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert changed_parts(before, data_identity(data)) == ["images"]
    shutil.copy(image, image.with_name("000009.jpg"))  # one more image
    after = data_identity(data)
    assert after["files"] == before["files"] + 1 and "images" in changed_parts(before, after)


def test_a_moved_dataset_keeps_its_identity(data, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copytree(data.parent / "shapes", moved / "shapes")  # copy2: mtimes kept, as mv or rsync -a keep them
    shutil.copy(data, moved / data.name)
    assert data_identity(moved / data.name)["digest"] == data_identity(data)["digest"]


def test_a_regenerated_set_with_other_settings_differs(data):
    before = data_identity(data)
    shutil.rmtree(data.parent / "shapes")
    synthetic_yaml(data.parent, "d", "[circle, square]", SETTINGS.replace("seed: 0", "seed: 1"))
    after = data_identity(data)
    assert changed_parts(before, after) == ["yaml", "generator", "images", "labels"]


def test_the_built_in_set_is_keyed_by_its_content_not_none(data, monkeypatch):
    monkeypatch.setattr("core.data.config.DEFAULT_DATA", data)
    assert data_identity(None) == data_identity(data)


def test_code_version_is_the_package_version_and_the_commit(monkeypatch):
    monkeypatch.delenv(CODE_VERSION_ENV, raising=False)  # the tests pin it (conftest)
    version = code_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+g[0-9a-f]{12})?", version), version
    assert ("+g" in version) == (REPO / ".git").exists()
    assert code_version() == version  # read once per process
    monkeypatch.setenv(CODE_VERSION_ENV, "0.1.0+pinned")
    assert code_version() == "0.1.0+pinned"


def test_describe_change_names_what_differs_in_one_line():
    old = {"objective": "best", "hyp": {"lr0": 0.01, "lrf": 0.1}, "weights_sha256": "a" * 64,
           "runs": [{"seed": 1, "epochs": 3}, {"seed": 2, "epochs": 3}]}
    assert describe_change(old, dict(old)) is None  # control
    new = {**old, "objective": "last", "hyp": {"lr0": 0.005, "lrf": 0.1}, "weights_sha256": "b" * 64,
           "runs": [{"seed": 1, "epochs": 4}, {"seed": 2, "epochs": 4}]}
    assert describe_change(old, new) == ("objective changed 'best' -> 'last', hyp.lr0 changed 0.01 -> 0.005, "
                                         "weights_sha256 changed aaaaaaaaaaaa -> bbbbbbbbbbbb, "
                                         "runs.epochs changed 3 -> 4")
    many = {f"k{i}": i for i in range(7)}
    assert describe_change(many, {k: v + 1 for k, v in many.items()}).endswith(", k3 changed 3 -> 4 and 3 more")
    assert describe_change({"a": 1}, {"a": 1, "b": None}) == "b changed (absent) -> None"  # a key an old record lacks
    assert describe_change({"data": {"digest": "x", "labels": "l", "files": 4}},
                           {"data": {"digest": "y", "labels": "l", "files": 5}}) == "data changed (files)"
