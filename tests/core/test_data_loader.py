"""Synthetic dataset, DataLoader (seeding, workers, DDP split) and image caches."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from core.data import cache as C
from core.data import synthetic as S
from core.data.config import load_data_config
from core.data.dataset import YoloDataset
from core.data.loader import create_dataloader

NAMES = list(S.SHAPES)
AUG = {"degrees": 10, "mixup": 0.5, "copy_paste": 0.5, "shear": 2, "fliplr": 0.5, "flipud": 0.2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return S.generate_shapes(tmp_path_factory.mktemp("tiny") / "shapes", NAMES, seed=1, n_train=16, n_val=4, imgsz=64)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_deterministic_and_varied(tmp_path):
    a = S.generate_shapes(tmp_path / "a", NAMES, seed=3, n_train=12, n_val=4, imgsz=128)
    b = S.generate_shapes(tmp_path / "b", NAMES, seed=3, n_train=12, n_val=4, imgsz=128)
    c = S.generate_shapes(tmp_path / "c", NAMES, seed=4, n_train=12, n_val=4, imgsz=128)
    fa, fb, fc = all_files(a), all_files(b), all_files(c)
    assert len(fa) == 2 * 16 + 1 and fa == fb
    assert fa["images/train/000000.jpg"] != fc["images/train/000000.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]  # no temporary folder left behind
    rows = np.array([list(map(float, line.split())) for p in sorted(a.rglob("*.txt"))
                     for line in p.read_text().splitlines()])
    assert set(rows[:, 0].astype(int)) == set(range(len(NAMES)))  # every class appears
    assert ((rows[:, 1:] > 0) & (rows[:, 1:] <= 1)).all()
    assert rows[:, 3].min() * 128 < 24 and rows[:, 3].max() * 128 > 40  # small and large objects
    per_image = [len(p.read_text().splitlines()) for p in a.rglob("*.txt")]
    assert max(per_image) <= 8 and max(per_image) >= 3
    img = cv2.imread(str(a / "images/train/000000.jpg"))
    assert img.shape == (128, 128, 3) and img.std() > 15  # textured, not a flat background


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_val(root, split, *args):
        calls.append(split)
        if split == "val":
            raise KeyboardInterrupt
        return original(root, split, *args)

    original = S._write_split
    monkeypatch.setattr(S, "_write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        S.generate_shapes(tmp_path / "ds", NAMES, n_train=2, n_val=2, imgsz=64)
    assert calls == ["train", "val"] and os.listdir(tmp_path) == []


def test_yaml_synthetic_section_generates_once(tmp_path):
    cfg = {"path": "gen/shapes", "train": "images/train", "val": "images/val", "names": NAMES[:3],
           "synthetic": {"seed": 0, "n_train": 3, "n_val": 2, "imgsz": 64}}
    f = tmp_path / "cfg" / "s.yaml"
    f.parent.mkdir()
    f.write_text(yaml.safe_dump(cfg))
    d = load_data_config(f)
    root = tmp_path / "cfg" / "gen" / "shapes"
    assert d["path"] == str(root) and d["nc"] == 3 and d["names"] == NAMES[:3]
    assert len(list((root / "images" / "train").iterdir())) == 3
    stamp = (root / "images" / "train" / "000000.jpg").stat().st_mtime_ns
    assert load_data_config(f)["val"] == [str(root / "images" / "val")]
    assert (root / "images" / "train" / "000000.jpg").stat().st_mtime_ns == stamp  # not regenerated


def test_builtin_yaml_points_at_repo_datasets():
    raw = yaml.safe_load(Path("studies/data/shapes.yaml").read_text())
    assert raw["path"] == "../../datasets/shapes-v2" and len(raw["names"]) >= 6
    assert set(raw["names"].values()) <= set(S.SHAPES)
    assert raw["synthetic"]["n_train"] >= 800 and raw["synthetic"]["imgsz"] == 256


def epoch(loader) -> list:
    return [(imgs.clone(), targets.clone(), paths) for imgs, targets, paths, _ in loader]


def assert_same(e1, e2) -> None:
    assert len(e1) == len(e2)
    for (i1, t1, p1), (i2, t2, p2) in zip(e1, e2):
        assert p1 == p2 and torch.equal(i1, i2) and torch.equal(t1, t2)


def test_batches_format(tiny):
    loader, ds = create_dataloader(tiny / "images" / "train", 64, 5, AUG, augment=True, workers=0, nc=6)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, 3, 64, 64)
    assert targets.shape[1] == 6 and len(targets) > 0 and targets.dtype == torch.float32
    assert set(targets[:, 0].long().tolist()) <= set(range(5))
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 1] < 6).all()
    assert len(paths) == 5 and len(shapes) == 5 and len(ds.labels) == len(ds.im_files) == 16
    assert all(lb.dtype == np.float32 and lb.shape[1] == 5 for lb in ds.labels)
    val, _ = create_dataloader(tiny / "images" / "val", 64, 4, None, augment=False, workers=0)
    _, _, _, shapes = next(iter(val))
    assert shapes[0] == ((64, 64), ((1.0, 1.0), (0, 0)))


def test_seeded_repeatability_no_workers(tiny):
    runs = []
    for seed in (7, 7, 8):
        loader, _ = create_dataloader(tiny / "images" / "train", 64, 4, AUG, True, workers=0, shuffle=True, seed=seed)
        runs.append([epoch(loader), epoch(loader)])
    assert_same(runs[0][0], runs[1][0])
    assert_same(runs[0][1], runs[1][1])
    assert [b[2] for b in runs[0][0]] != [b[2] for b in runs[0][1]]  # reshuffled each epoch
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0][0], runs[2][0]))  # another seed differs


def test_persistent_workers_repeatable(tiny):
    runs = []
    for _ in range(2):
        loader, _ = create_dataloader(tiny / "images" / "train", 64, 8, AUG, True, workers=2, shuffle=True, seed=3)
        assert loader.num_workers == min(2, os.cpu_count()) and loader.persistent_workers == (loader.num_workers > 0)
        first = epoch(loader)
        pids = [w.pid for w in loader._iterator._workers] if loader.num_workers else []
        second = epoch(loader)
        assert pids == ([w.pid for w in loader._iterator._workers] if loader.num_workers else [])
        runs.append((first, second))
        del loader
    assert_same(runs[0][0], runs[1][0])
    assert_same(runs[0][1], runs[1][1])


def test_a_pass_is_a_function_of_its_epoch(tiny):
    """Order and augmentations of a pass depend on (seed, epoch) alone: a loader set to epoch 1 repeats the
    second pass of one that ran epoch 0 first (what a resumed run needs), with or without workers."""
    def loader(workers):
        return create_dataloader(tiny / "images" / "train", 64, 4, {**AUG, "mosaic": 0.5}, True, workers=workers,
                                 shuffle=True, seed=5)[0]
    straight = loader(0)
    first, second = epoch(straight), epoch(straight)
    for workers in (0, 2):
        resumed = loader(workers)
        resumed.sampler.set_epoch(1)
        assert_same(epoch(resumed), second)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    again = loader(0)
    again.sampler.set_epoch(1)
    again_second = epoch(again)
    again.sampler.set_epoch(1)
    assert_same(epoch(again), again_second)  # set back to an epoch, a pass repeats it


def test_distributed_split(tiny):
    seen = []
    for rank in (0, 1):
        loader, _ = create_dataloader(tiny / "images" / "train", 64, 4, None, False, workers=0, shuffle=True,
                                      rank=rank, world_size=2, seed=0)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.rank == rank
        seen.append({p for _, _, paths, _ in loader for p in paths})
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]


@pytest.fixture
def decode_counter(monkeypatch):
    calls = []
    imread, imdecode = cv2.imread, cv2.imdecode
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: calls.append(a[0]) or imread(*a, **k))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: calls.append("buffer") or imdecode(*a, **k))
    return calls


def test_ram_cache_reused_across_datasets(tiny, decode_counter):
    C.clear_ram_cache()
    src = tiny / "images" / "val"
    YoloDataset(src, imgsz=48)  # writes the label cache: verification decodes are not what we count
    decode_counter.clear()
    first = YoloDataset(src, imgsz=48, cache="ram")
    assert len(decode_counter) == 4 and C.ram_cache_size()[0] == 4
    second = YoloDataset(src, imgsz=48, cache="ram", augment=True, hyp=AUG)
    items = [second[i] for i in range(4)] + [first[i] for i in range(4)]
    assert len(decode_counter) == 4 and len(items) == 8  # nothing decoded again
    assert first.ims[0][0] is second.ims[0][0] and first.ims[0][0].shape == (48, 48, 3)
    YoloDataset(src, imgsz=32, cache="ram")  # another size is another entry
    assert len(decode_counter) == 8 and C.ram_cache_size()[0] == 8
    C.clear_ram_cache()
    assert C.ram_cache_size() == (0, 0)


def test_disk_cache_npy(tmp_path, tiny, decode_counter):
    root = tmp_path / "d"
    for p in (tiny / "images" / "val").iterdir():
        for kind, suffix in (("images", ".jpg"), ("labels", ".txt")):
            q = root / kind / p.with_suffix(suffix).name
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes((tiny / kind / "val" / q.name).read_bytes())
    ds = YoloDataset(root / "images", imgsz=64, cache="disk")
    ref = [ds[i][0] for i in range(4)]
    assert sorted(p.name for p in (root / "images").glob("*.npy")) == [f"00000{i}.npy" for i in range(4)]
    decode_counter.clear()
    ds2 = YoloDataset(root / "images", imgsz=64, cache="disk")
    assert all(torch.equal(ds2[i][0], ref[i]) for i in range(4)) and decode_counter == []
    img = root / "images" / "000001.jpg"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # image newer than its .npy
    decode_counter.clear()
    ds2[1]
    assert decode_counter == [str(img)]
