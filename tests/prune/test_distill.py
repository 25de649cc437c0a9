"""Output distillation (prune/distill.py) and the finetune stage's --distill."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.model.yolo import Model
from prune import pipeline
from prune.distill import Distiller, distill_loss
from prune.measure import prunable_channels
from tests.helpers import MODEL, random_model

HEADS = ["yolov5-cpu.yaml", "yolov5-cpu-af.yaml"]


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 64, 64)


@pytest.mark.parametrize("yaml", HEADS)
def test_zero_for_the_teacher_itself_and_positive_for_another_model(yaml, images):
    teacher = random_model(yaml, seed=0)
    with torch.no_grad():
        same = Distiller(teacher)(images, copy.deepcopy(teacher)(images)[1])
        other = Distiller(teacher)(images, random_model(yaml, seed=1)(images)[1])
    assert float(same) == 0.0  # exactly: each term is a function of (student - teacher) or a KL of equal maps
    assert float(other) > 1e-3


@pytest.mark.parametrize("yaml", HEADS)
def test_gradient_reaches_the_student_and_not_the_teacher(yaml, images):
    teacher, student = random_model(yaml, seed=0), random_model(yaml, seed=1).train()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(teacher, weight=2.0)
    loss = distiller(images, student(images))  # the student's training outputs, as the trainer passes them
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
    assert float(student.model[0].conv.weight.grad.abs().sum()) > 0  # through the whole network
    assert not any(p.requires_grad or p.grad is not None for p in distiller.teacher.parameters())
    assert not distiller.teacher.training
    assert all(torch.equal(v, frozen[k]) for k, v in distiller.teacher.state_dict().items())  # BN stats too
    # the weight and the batch size scale the per-image loss: the trainer's loss scale
    assert float(loss.detach()) == pytest.approx(2.0 * 2 * distiller.mean, rel=1e-6)


def test_obj_gradient_is_the_difference_of_probabilities():
    """The Bernoulli KL's gradient in the student's objectness logit is sigmoid(s) - sigmoid(t) (over the cells)."""
    torch.manual_seed(0)
    t = torch.randn(1, 1, 2, 2, 6)
    s = t.clone()
    s[..., 4] = torch.randn(1, 1, 2, 2)
    s.requires_grad_(True)
    distill_loss([s], [t]).backward()
    assert torch.allclose(s.grad[..., 4], (s[..., 4].sigmoid() - t[..., 4].sigmoid()).detach() / 4, atol=1e-7)
    assert torch.count_nonzero(s.grad[..., :4]) == 0  # equal boxes pull nothing


def test_heads_of_other_shapes_are_refused(images):
    teacher = random_model("yolov5-cpu.yaml")
    with pytest.raises(ValueError, match="differ from the teacher's"):
        Distiller(teacher)(images, [p[..., :5] for p in teacher(images)[1]])


def test_finetune_distills_from_the_unpruned_model(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Model(MODEL, nc=6)  # tiny_data's classes
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data = torch.rand(bn.num_features)  # gammas that differ: something to prune
    model.names = ["circle", "square", "triangle", "star", "cross", "ring"]
    weights = save_checkpoint(tmp_path / "w.pt", model)
    calls, teachers = [], []
    original_init, original_call = Distiller.__init__, Distiller.__call__

    def init(self, teacher, weight):
        teachers.append(teacher)
        original_init(self, teacher, weight)

    def call(self, imgs, preds):
        calls.append(all(p.requires_grad for p in preds))
        return original_call(self, imgs, preds)

    monkeypatch.setattr(Distiller, "__init__", init)
    monkeypatch.setattr(Distiller, "__call__", call)
    argv = ["--data", tiny_data, "--weights", str(weights), "--global-percent", "0.3", "--finetune-epochs", "1",
            "--distill", "--distill-weight", "0.5", "--imgsz", "64", "--batch-size", "8", "--nbs", "8",
            "--workers", "0", "--threads", "1", "--latency-runs", "1", "--no-onnx-latency",
            "--project", str(tmp_path), "--name", "run", "--no-progress"]
    assert pipeline.main(argv) == 0
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert record["options"]["finetune"]["distill"] == 0.5
    assert record["extra"]["distill_weight"] == 0.5 and record["extra"]["distill_loss"] > 0
    assert len(calls) == 4 and all(calls)  # every training batch (32 images / 8), the student's maps with grad
    assert len(teachers) == 1 and prunable_channels(teachers[0]) == prunable_channels(model)  # the unpruned one
    assert sum(prunable_channels(model).values()) > record["row"]["channels_kept"]
