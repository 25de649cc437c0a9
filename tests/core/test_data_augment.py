"""Augmentations keep boxes on their pixels (core.data.augment and the dataset's flips/letterbox).

Each test draws filled rectangles of distinct colours on a plain background at known boxes,
transforms image and boxes, and compares every label box with the bounding box of the pixels of
its colour in the output image.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data import augment as A
from core.data.dataset import YoloDataset

BG = 100
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (0, 128, 255), (128, 0, 255)]  # BGR, class i has colour i
NO_AUG = dict(hsv_h=0, hsv_s=0, hsv_v=0, degrees=0, translate=0, scale=0, shear=0, perspective=0,
              flipud=0, fliplr=0, mosaic=0, mixup=0, copy_paste=0)


def draw(h: int, w: int, boxes: list[tuple[int, int, int, int]], first_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image with rectangle k (x1, y1, x2, y2 in pixels, x2/y2 exclusive) in COLOURS[first_class + k]."""
    img = np.full((h, w, 3), BG, np.uint8)
    labels = []
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = COLOURS[first_class + k]
        labels.append([first_class + k, x1, y1, x2, y2])
    return img, np.array(labels, dtype=np.float64).reshape(-1, 5)


def colour_box(img: np.ndarray, colour, tol: int = 60) -> np.ndarray | None:
    """Bounding box (x1, y1, x2, y2) of the pixels within `tol` of `colour` (BGR)."""
    near = (np.abs(img.astype(int) - np.array(colour)).max(2) <= tol)
    ys, xs = np.nonzero(near)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def assert_on_pixels(img: np.ndarray, labels: np.ndarray, atol: float = 1.5) -> None:
    assert len(labels), "no box left to check"
    for c, *box in labels:
        found = colour_box(img, COLOURS[int(c)])
        assert found is not None, f"class {int(c)}: no pixels of its colour"
        np.testing.assert_allclose(box, found, atol=atol, err_msg=f"class {int(c)}")


BOXES = [(10, 12, 40, 30), (70, 20, 90, 80), (30, 70, 60, 120), (100, 90, 126, 126)]


@pytest.mark.parametrize("seed", range(6))
def test_affine_translate_scale(seed):
    img, labels = draw(128, 128, BOXES)
    rng = np.random.default_rng(seed)
    out, new = A.random_perspective(img, labels, rng, translate=0.25, scale=0.5)
    assert out.shape == img.shape
    assert_on_pixels(out, new)
    # degrees=0, no shear: every box keeps its aspect ratio (pure scale + shift) unless clipped
    inside = (new[:, 1] > 0) & (new[:, 2] > 0) & (new[:, 3] < 128) & (new[:, 4] < 128)
    ratio_in = (labels[:, 3] - labels[:, 1]) / (labels[:, 4] - labels[:, 2])
    ratio_out = (new[:, 3] - new[:, 1]) / (new[:, 4] - new[:, 2])
    idx = new[:, 0].astype(int)
    np.testing.assert_allclose(ratio_out[inside], ratio_in[idx][inside], rtol=1e-6)


def test_rotation_90_hand_computed():
    img, labels = draw(128, 128, BOXES)
    M = A.perspective_matrix((128, 128), (128, 128), angle=90)
    out, new = A.warp(img, labels, M, (128, 128))
    # cv2's +90 deg turns counter-clockwise about index (64, 64): x' = y, y' = 129 - x in edge coordinates
    x1, y1, x2, y2 = labels[:, 1:].T
    np.testing.assert_allclose(new[:, 1:], np.stack((y1, 129 - x2, y2, 129 - x1), 1), atol=1e-9)
    assert_on_pixels(out, new, atol=0.01)  # a quarter turn maps pixels exactly


@pytest.mark.parametrize("seed", range(4))
def test_rotation_shear_perspective(seed):
    img, labels = draw(128, 128, [(40, 40, 70, 60), (60, 75, 100, 95), (20, 80, 35, 115)])
    rng = np.random.default_rng(seed)
    out, new = A.random_perspective(img, labels, rng, degrees=40, shear=5, perspective=0.0005, scale=0.2)
    assert_on_pixels(out, new, atol=2.0)


def test_boxes_pushed_out_are_clipped_or_dropped():
    img, labels = draw(128, 128, [(4, 10, 44, 40), (90, 90, 120, 120)])
    M = A.perspective_matrix((128, 128), (128, 128), translate=(0.5 - 38 / 128, 0.5))  # shift left 38 px
    out, new = A.warp(img, labels, M, (128, 128))
    # box 0 keeps 6 of 40 columns (15% > 10%): clipped; box 1 moves whole
    np.testing.assert_allclose(new, [[0, 0, 10, 6, 40], [1, 52, 90, 82, 120]], atol=1e-9)
    assert_on_pixels(out, new, atol=0.01)
    M = A.perspective_matrix((128, 128), (128, 128), translate=(0.5 - 41 / 128, 0.5))  # 3 of 40 columns left
    _, new = A.warp(img, labels, M, (128, 128))
    assert new[:, 0].tolist() == [1]


def test_box_candidates_rules():
    before = np.array([[0, 0, 10, 10]] * 4, dtype=float)
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 10, 0.9], [0, 0, 3, 3]], dtype=float)
    assert A.box_candidates(before, after).tolist() == [True, False, False, False]


@pytest.mark.parametrize("seed", range(5))
def test_mosaic_boxes_follow_pixels(seed):
    s = 64
    sizes = [(64, 48), (40, 64), (64, 64), (30, 50)]  # (h, w), long side <= s as the loader gives
    images, labels = [], []
    for k, (h, w) in enumerate(sizes):
        img, lab = draw(h, w, [(2, 3, w // 2, h // 2), (w // 2 + 2, h // 2 + 1, w - 3, h - 2)], first_class=2 * k)
        images.append(img)
        labels.append(A.xyxy_to_xywhn(lab, w, h))  # mosaic4 takes normalised labels
    rng = np.random.default_rng(seed)
    canvas, boxes = A.mosaic4(images, labels, s, rng)
    assert canvas.shape == (2 * s, 2 * s, 3)
    visible = [c for c in range(8) if colour_box(canvas, COLOURS[c]) is not None]
    big = boxes[(boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2]) > 0]
    assert sorted(big[:, 0].astype(int).tolist()) == visible
    assert_on_pixels(canvas, big, atol=1e-3)  # tiles are pasted at integer offsets: exact
    out, new = A.random_perspective(canvas, boxes, rng, translate=0.1, scale=0.3, out_shape=(s, s))
    assert out.shape == (s, s, 3)
    assert_on_pixels(out, new)


def test_letterbox_ratio_pad_and_boxes():
    img, labels = draw(60, 100, [(5, 5, 40, 30), (60, 20, 95, 55)])
    out, (rw, rh), (pw, ph) = A.letterbox(img, 128, auto=False)
    assert out.shape == (128, 128, 3)
    assert (rw, pw, ph) == (1.28, 0, 25) and rh == pytest.approx(77 / 60)
    assert (out[:25] == 114).all() and (out[25 + 77:] == 114).all()
    boxes = labels.copy()
    boxes[:, [1, 3]] = labels[:, [1, 3]] * rw + pw
    boxes[:, [2, 4]] = labels[:, [2, 4]] * rh + ph
    assert_on_pixels(out, boxes)
    out, ratio, pad = A.letterbox(img, 128, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and pad == (14, 34)
    assert_on_pixels(out, labels + [0, 14, 34, 14, 34], atol=1e-3)
    out, _, pad = A.letterbox(img, 128, auto=True, scaleup=False)
    assert out.shape == (64, 128, 3) and pad == (14, 2)


def test_copy_paste_mirrors_crops():
    img, labels = draw(128, 128, [(10, 20, 30, 50), (54, 60, 74, 80)])
    img[20:50, 20:30] = COLOURS[5]  # right half of box 0 in another colour, to see the flip
    out, new = A.copy_paste(img, labels, 1.0, np.random.default_rng(0))
    # box 1 straddles the middle: its mirror would hide itself, so it is not pasted
    np.testing.assert_allclose(new, [[0, 10, 20, 30, 50], [1, 54, 60, 74, 80], [0, 98, 20, 118, 50]])
    assert (out[20:50, 98:108] == COLOURS[5]).all() and (out[20:50, 108:118] == COLOURS[0]).all()
    assert (img[20:50, 98:118] == BG).all()  # the input is not modified
    same, same_labels = A.copy_paste(img, labels, 0.0, np.random.default_rng(0))
    assert same is img and same_labels is labels


def test_mixup_and_hsv():
    rng = np.random.default_rng(0)
    a, b = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 200, np.uint8)
    out, lab = A.mixup(a, np.ones((2, 5)), b, np.zeros((1, 5)), rng)
    assert 130 <= out[0, 0, 0] <= 170 and (out == out[0, 0, 0]).all()
    assert lab.tolist() == [[1] * 5, [1] * 5, [0] * 5]
    img, _ = draw(32, 32, [(4, 4, 20, 20)])
    assert A.augment_hsv(img, 0, 0, 0, rng) is img
    changed = A.augment_hsv(img, 0.1, 0.7, 0.4, rng)
    assert changed.shape == img.shape and changed.dtype == np.uint8 and not np.array_equal(changed, img)


def write_dataset(root: Path, h: int, w: int, boxes) -> Path:
    img, labels = draw(h, w, boxes)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), img)
    rows = A.xyxy_to_xywhn(labels, w, h)
    (root / "labels" / "a.txt").write_text("".join(f"{int(r[0])} {r[1]} {r[2]} {r[3]} {r[4]}\n" for r in rows))
    return root / "images"


def item_boxes(item) -> tuple[np.ndarray, np.ndarray]:
    """Dataset item -> (BGR image, labels [cls, x1, y1, x2, y2] in pixels)."""
    img, labels, _, _ = item
    bgr = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[..., ::-1])
    h, w = bgr.shape[:2]
    return bgr, A.xywhn_to_xyxy(labels[:, 1:].numpy(), w, h)


@pytest.mark.parametrize("flipud,fliplr", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_dataset_flips_hand_computed(tmp_path, flipud, fliplr):
    src = write_dataset(tmp_path, 64, 96, [(10, 5, 40, 25), (50, 30, 90, 60)])
    ds = YoloDataset(src, imgsz=96, hyp={**NO_AUG, "flipud": flipud, "fliplr": fliplr}, augment=True)
    img, boxes = item_boxes(ds[0])
    assert img.shape == (96, 96, 3)
    expect = np.array([[0, 10, 5, 40, 25], [1, 50, 30, 90, 60]], dtype=float)
    expect[:, [2, 4]] += 16  # letterbox: 64 rows padded to 96, 16 on top
    if flipud:
        expect[:, [2, 4]] = 96 - expect[:, [4, 2]]
    if fliplr:
        expect[:, [1, 3]] = 96 - expect[:, [3, 1]]
    np.testing.assert_allclose(boxes, expect, atol=1e-4)
    assert_on_pixels(img, boxes, atol=1e-3)


def test_dataset_validation_letterbox_shapes(tmp_path):
    src = write_dataset(tmp_path, 48, 80, [(8, 6, 40, 30), (50, 20, 76, 44)])
    ds = YoloDataset(src, imgsz=64, augment=False)
    item = ds[0]
    img, boxes = item_boxes(item)
    assert img.shape == (64, 64, 3) and item[1][:, 0].tolist() == [0, 0]
    (h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)) = item[3]
    assert (h0, w0, pad_w, pad_h) == (48, 80, 0, 13)
    assert ratio_w == 0.8 and ratio_h == pytest.approx(38 / 48)
    assert_on_pixels(img, boxes)
