"""Distillation from the unpruned model: the blended loss, a frozen teacher, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from falf_fx.distill import Distillation, DistillationError, DistillationLoss

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def test_a_student_equal_to_its_teacher_has_no_distillation_term():
    teacher, x, y = _net(), torch.randn(16, 6), torch.randint(0, 4, (16,))
    loss = DistillationLoss(teacher, CE, Distillation(alpha=1.0, temperature=3.0))
    half = DistillationLoss(teacher, CE, Distillation(alpha=0.5))
    with torch.no_grad():
        outputs = teacher.eval()(x)
        assert loss(outputs, (x, y)).item() == pytest.approx(0.0, abs=1e-6)
        assert half(outputs, (x, y)).item() == pytest.approx(0.5 * CE(outputs, (x, y)).item(), rel=1e-5)


def test_the_kl_term_pulls_towards_the_teacher_and_the_teacher_never_moves():
    teacher, student = _net(), nn.Sequential(nn.Linear(6, 4))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    loss = DistillationLoss(teacher, CE, Distillation(alpha=1.0, temperature=2.0))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        value = loss(student(x), (x, y))
        first = first if first is not None else value.item()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert value.item() < 0.5 * first
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training  # the caller's teacher keeps its mode: the loss uses a frozen copy


def test_outputs_that_are_not_logits_and_bad_settings_are_refused():
    teacher = nn.Sequential(nn.Linear(6, 4), nn.Unflatten(1, (2, 2)))
    loss = DistillationLoss(teacher, CE, Distillation())
    x = torch.randn(4, 6)
    with pytest.raises(DistillationError, match=r"not class logits .* pass distill=0"):
        loss(torch.randn(4, 2, 2), (x, torch.zeros(4, dtype=torch.long)))
    with pytest.raises(DistillationError, match="distill must be a weight in"):
        Distillation(alpha=1.5)
    with pytest.raises(DistillationError, match="distill_temperature"):
        Distillation(temperature=0)


def test_teacher_correct_teaches_nothing_where_the_teacher_is_wrong():
    teacher, student = _net().eval(), nn.Sequential(nn.Linear(6, 4))
    x = torch.randn(32, 6)
    with torch.no_grad():
        right = teacher(x).argmax(dim=1)
    wrong = (right + 1) % 4
    masked = DistillationLoss(teacher, CE, Distillation(alpha=1.0, where="teacher_correct"))
    plain = DistillationLoss(teacher, CE, Distillation(alpha=1.0))
    outputs = student(x)
    assert masked(outputs, (x, wrong)).item() == 0.0  # every label disagrees with the teacher: no teacher term
    assert masked(outputs, (x, right)).item() == pytest.approx(plain(outputs, (x, right)).item(), rel=1e-6)
    half = torch.where(torch.arange(32) < 16, right, wrong)
    first = plain(outputs[:16], (x[:16], right[:16])).item()
    assert masked(outputs, (x, half)).item() == pytest.approx(first / 2, rel=1e-5)  # mean over the whole batch


def test_teacher_ahead_stops_pulling_where_the_student_has_overtaken():
    teacher = _net().eval()
    x = torch.randn(32, 6)
    with torch.no_grad():
        teacher_out = teacher(x)
    labels = teacher_out.argmin(dim=1)  # the teacher gives these labels little probability
    loss = DistillationLoss(teacher, CE, Distillation(alpha=1.0, where="teacher_ahead"))
    overtaken = torch.nn.functional.one_hot(labels, 4).float() * 20  # the student is sure of every label
    assert loss(overtaken, (x, labels)).item() == 0.0
    behind = -overtaken  # the student gives every label less than the teacher does
    plain = DistillationLoss(teacher, CE, Distillation(alpha=1.0))
    assert loss(behind, (x, labels)).item() == pytest.approx(plain(behind, (x, labels)).item(), rel=1e-6)


def test_selecting_samples_needs_class_index_labels_and_a_known_rule():
    teacher = _net().eval()
    loss = DistillationLoss(teacher, lambda out, batch: out.sum(), Distillation(where="teacher_ahead"))
    x = torch.randn(4, 6)
    with pytest.raises(DistillationError, match="class-index labels .* distill_where='all'"):
        loss(torch.randn(4, 4), (x, torch.rand(4, 4)))
    with pytest.raises(DistillationError, match="distill_where must be one of"):
        Distillation(where="sometimes")


def test_a_stopped_distillation_is_the_task_loss_and_runs_no_teacher():
    teacher, x, y = _net(), torch.randn(16, 6), torch.randint(0, 4, (16,))
    loss = DistillationLoss(teacher, CE, Distillation(alpha=1.0, until="teacher_passed"))
    outputs = torch.randn(16, 4)
    assert loss(outputs, (x, y)).item() != pytest.approx(CE(outputs, (x, y)).item())
    loss.stop()
    loss.frozen = None  # a teacher run after stop() would raise
    assert loss(outputs, (x, y)).item() == pytest.approx(CE(outputs, (x, y)).item())
    with pytest.raises(DistillationError, match="distill_until must be one of"):
        Distillation(until="never")
