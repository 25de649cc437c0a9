"""Our mAP against pycocotools COCOeval, and validate() end to end with COCO json output."""
import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.metrics import ap_per_class, match_predictions, summarize
from core.val import coco_ground_truth, image_ids, validate

NC = 5


def scenario(seed, n_img=50, jit=0.15):
    """Random gts (original pixels, [img, cls, x, y, w, h]) and predictions (jittered gts, some
    duplicated, missed or with a wrong class, plus random false positives; [img, cls, x, y, w, h, score])."""
    rng = np.random.default_rng(seed)
    sizes, gts, preds = [], [], []

    def rand_box(w, h):
        bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
        return rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh

    for i in range(n_img):
        w, h = (int(v) for v in rng.integers(120, 640, 2))
        sizes.append((w, h))
        for _ in range(rng.integers(0, 9)):
            x, y, bw, bh = rand_box(w, h)
            c = int(rng.integers(NC))
            gts.append((i, c, x, y, bw, bh))
            for _ in range(1 + (rng.random() < 0.3)):
                if rng.random() < 0.15:
                    continue
                j = rng.normal(0, jit, 4) * [bw, bh, bw, bh]
                x1, y1 = np.clip(x + j[0], 0, w), np.clip(y + j[1], 0, h)
                x2, y2 = np.clip(x + bw + j[2], 0, w), np.clip(y + bh + j[3], 0, h)
                if x2 - x1 > 1 and y2 - y1 > 1:
                    cc = c if rng.random() > 0.05 else int(rng.integers(NC))
                    preds.append((i, cc, x1, y1, x2 - x1, y2 - y1, rng.uniform(0.01, 1)))
        for _ in range(rng.poisson(2)):
            preds.append((i, int(rng.integers(NC)), *rand_box(w, h), rng.uniform(0.01, 1)))
    return sizes, np.array(gts).reshape(-1, 6), np.array(preds).reshape(-1, 7)


def coco_map(gt: dict, results: list) -> tuple[float, float]:
    """(mAP50-95, mAP50) from COCOeval, area 'all', maxDets 1000 (no per-image cap in effect)."""
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.evaluate()
        ev.accumulate()
    pr = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class) at area all, maxDets 1000
    scored = (pr > -1).all(axis=(0, 1))  # classes with labels
    return float(pr[:, :, scored].mean()), float(pr[0][:, scored].mean())


def xywh_to_xyxy(a):
    return np.c_[a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]]


@pytest.mark.parametrize("seed,jit", [(0, 0.05), (3, 0.15), (4, 0.15), (5, 0.3)])
def test_map_agrees_with_cocoeval(seed, jit):
    sizes, gts, preds = scenario(seed, jit=jit)
    stats = []
    for i in range(len(sizes)):
        g, p = gts[gts[:, 0] == i], preds[preds[:, 0] == i]
        labels = torch.tensor(np.c_[g[:, 1], xywh_to_xyxy(g[:, 2:6])], dtype=torch.float32)
        dets = torch.tensor(np.c_[xywh_to_xyxy(p[:, 2:6]), p[:, 6], p[:, 1]], dtype=torch.float32)
        stats.append((match_predictions(dets, labels).numpy(), p[:, 6], p[:, 1], g[:, 1]))
    ours = summarize(ap_per_class(*(np.concatenate(x) for x in zip(*stats))))

    gt = {"images": [{"id": i, "width": w, "height": h} for i, (w, h) in enumerate(sizes)],
          "annotations": [{"id": k + 1, "image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6].tolist(),
                           "area": float(r[4] * r[5]), "iscrowd": 0} for k, r in enumerate(gts)],
          "categories": [{"id": c} for c in range(NC)]}
    res = [{"image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6].tolist(), "score": float(r[6])}
           for r in preds]
    coco_5095, coco_50 = coco_map(gt, res)
    assert 0.01 < coco_5095 < 0.6  # a non-trivial case
    assert abs(ours["mAP50-95"] - coco_5095) <= 0.01
    assert abs(ours["mAP50"] - coco_50) <= 0.01


class FakeDataset:
    def __init__(self, im_files, labels):
        self.im_files, self.labels = im_files, labels


class FakeLoader:
    """Documented batch layout: uint8 imgs, targets [img, cls, cx, cy, w, h] normalised to the
    letterboxed input, paths, shapes ((h0, w0), ((rh, rw), (pad_w, pad_h)))."""

    def __init__(self, batches, dataset):
        self.batches, self.dataset = batches, dataset

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class ReplayModel(nn.Module):
    """Returns pre-made (B, N, 5+nc) predictions batch after batch, like Detect in eval mode."""

    def __init__(self, preds):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.preds = preds
        self.calls = 0

    def forward(self, x):
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and not self.training
        out = self.preds[self.calls]
        self.calls += 1
        return out, [torch.zeros(1)]


def build_val_case(tmp_path, seed=1, imgsz=160, batch=8):
    sizes, gts, preds = scenario(seed, n_img=24)
    files, labels, batches, model_out = [], [], [], []
    for i, (w, h) in enumerate(sizes):
        f = tmp_path / f"{1000 + i}.png"
        cv2.imwrite(str(f), np.zeros((h, w, 3), np.uint8))
        files.append(str(f))
        g = gts[gts[:, 0] == i]
        labels.append(np.c_[g[:, 1], (g[:, 2] + g[:, 4] / 2) / w, (g[:, 3] + g[:, 5] / 2) / h,
                            g[:, 4] / w, g[:, 5] / h].astype(np.float32))
    for b0 in range(0, len(sizes), batch):
        idx = range(b0, min(b0 + batch, len(sizes)))
        targets, shapes, rows = [], [], []
        for si, i in enumerate(idx):
            w, h = sizes[i]
            r = min(imgsz / w, imgsz / h)
            pad = ((imgsz - round(w * r)) / 2, (imgsz - round(h * r)) / 2)
            shapes.append(((h, w), ((r, r), pad)))
            g, p = gts[gts[:, 0] == i], preds[preds[:, 0] == i]
            cxcy = lambda a: np.c_[a[:, 2] + a[:, 4] / 2, a[:, 3] + a[:, 5] / 2] * r + pad  # noqa: E731
            t = np.c_[np.full(len(g), si), g[:, 1], cxcy(g) / imgsz, g[:, 4:6] * r / imgsz]
            targets.append(torch.tensor(t, dtype=torch.float32))
            onehot = np.eye(NC)[p[:, 1].astype(int)]
            rows.append(torch.tensor(np.c_[cxcy(p), p[:, 4:6] * r, p[:, 6], onehot], dtype=torch.float32))
        n = max(len(x) for x in rows)
        out = torch.zeros(len(rows), n, 5 + NC)
        for k, x in enumerate(rows):
            out[k, :len(x)] = x
        model_out.append(out)
        batches.append((torch.zeros(len(rows), 3, imgsz, imgsz, dtype=torch.uint8), torch.cat(targets),
                        tuple(files[i] for i in idx), tuple(shapes)))
    return FakeLoader(batches, FakeDataset(files, labels)), ReplayModel(model_out), sizes


def test_validate_json_scores_the_same_with_pycocotools(tmp_path):
    loader, model, sizes = build_val_case(tmp_path)
    names = [f"c{i}" for i in range(NC)]
    fake_loss = lambda raw, targets: (torch.tensor(0.0), torch.tensor([0.1, 0.2, 0.3]))  # noqa: E731
    model.train()
    m = validate(model, loader, compute_loss=fake_loss, save_json=tmp_path / "pred.json", names=names,
                 progress=False)
    assert model.training  # mode restored
    assert set(m) >= {"P", "R", "mAP50", "mAP50-95", "fitness", "val_box", "val_obj", "val_cls", "speed_ms",
                      "per_class"}
    assert m["fitness"] == pytest.approx(0.1 * m["mAP50"] + 0.9 * m["mAP50-95"])
    assert (m["val_box"], m["val_obj"], m["val_cls"]) == pytest.approx((0.1, 0.2, 0.3))
    assert set(m["speed_ms"]) == {"pre", "inference", "nms"} and m["images"] == len(sizes)
    assert set(m["per_class"]) <= set(names) and all({"AP50", "AP"} <= set(v) for v in m["per_class"].values())

    gt = coco_ground_truth(loader.dataset, names)
    assert [im["id"] for im in gt["images"]] == [1000 + i for i in range(len(sizes))]
    assert [(im["width"], im["height"]) for im in gt["images"]] == sizes
    assert [c["id"] for c in gt["categories"]] == list(range(NC))
    results = json.loads((tmp_path / "pred.json").read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in gt["images"]}
    coco_5095, coco_50 = coco_map(gt, results)
    assert 0.05 < coco_5095 < 0.9
    assert abs(m["mAP50-95"] - coco_5095) <= 0.01
    assert abs(m["mAP50"] - coco_50) <= 0.01


def test_json_boxes_are_in_original_pixels(tmp_path):
    loader, model, sizes = build_val_case(tmp_path, seed=2)
    validate(model, loader, save_json=tmp_path / "p.json", progress=False)
    results = json.loads((tmp_path / "p.json").read_text())
    gt = coco_ground_truth(loader.dataset)
    # Predictions were generated inside each original frame, so after undoing the letterbox every
    # result must lie inside its own image (a wrong gain/pad or a swapped w/h pushes boxes out).
    dims = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for r in results:
        x, y, w, h = r["bbox"]
        W, H = dims[r["image_id"]]
        assert -1e-3 <= x and x + w <= W + 1e-2 and -1e-3 <= y and y + h <= H + 1e-2


def test_image_id_rule():
    assert image_ids(["a/12.jpg", "b/7.png"]) == [12, 7]
    assert image_ids(["a/12.jpg", "b/x7.png", "c/3.jpg"]) == [0, 1, 2]  # one rule per dataset
    assert image_ids(["a/01.jpg", "b/1.jpg"]) == [0, 1]  # digit stems that collide -> indices
