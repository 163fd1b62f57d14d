"""The task metrics compress stops on: torchmetrics' mIoU and mAP on known answers, and what they refuse."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from falf_fx.data_tasks import ShapesDetection, ShapesSegmentation, detection_collate
from falf_fx.errors import FalfError
from falf_fx.metrics import MetricError, TaskMetric, mean_average_precision, mean_iou, resolve_metric


class Oracle(nn.Module):
    """Answers from a table keyed by the image (the right answer, or a wrong one)."""

    def __init__(self, answers: dict) -> None:
        super().__init__()
        self.answers = answers
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return self.answers(images)


def test_miou_is_one_for_the_right_masks_and_lower_for_wrong_ones():
    data = ShapesSegmentation(8, 32, seed=0)
    loader = DataLoader(data, batch_size=4)
    masks = {float(image.sum()): mask for image, mask in data}

    def logits(images, wrong=False):
        out = torch.stack([nn.functional.one_hot(masks[float(x.sum())], 11).permute(2, 0, 1).float()
                           for x in images])
        return {"out": out.roll(1, dims=1) if wrong else out}  # torchvision's segmenters' format

    assert mean_iou(loader)(Oracle(logits)) == pytest.approx(1.0)
    assert mean_iou(loader)(Oracle(lambda x: logits(x, wrong=True))) < 0.2


def test_map_is_one_for_the_right_boxes_and_zero_for_wrong_labels():
    data = ShapesDetection(8, 64, seed=0)
    loader = DataLoader(data, batch_size=4, collate_fn=detection_collate)
    targets = {float(image.sum()): target for image, target in data}

    def detections(images, shift=0):
        found = []
        for x in images:
            t = targets[float(x.sum())]
            found.append({"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])),
                          "labels": (t["labels"] + shift - 1) % 10 + 1})
        return found

    for key in ("map", "map_50"):
        assert mean_average_precision(loader, key)(Oracle(detections)) == pytest.approx(1.0)
        assert mean_average_precision(loader, key)(Oracle(lambda x: detections(x, shift=1))) == 0.0


def test_map_says_what_it_needs_when_the_outputs_are_not_detections():
    loader = DataLoader(ShapesDetection(2, 64, seed=0), batch_size=2, collate_fn=detection_collate)
    with pytest.raises(FalfError, match="postprocess"):
        mean_average_precision(loader)(Oracle(lambda x: torch.zeros(len(x), 5)))


def test_a_metric_is_named_and_checked():
    assert resolve_metric(None, None, logits=True) is None
    with pytest.raises(FalfError, match="pass val_loader"):
        resolve_metric("miou", None, logits=False)
    metric = TaskMetric("mine", lambda model: float("inf"))
    with pytest.raises(MetricError, match=r"evaluate \(mine\) gave inf in round 3"):
        metric(nn.Linear(1, 1), "in round 3")
    with pytest.raises(MetricError, match="must return one number"):
        TaskMetric("mine", lambda model: [1.0, 2.0])(nn.Linear(1, 1), "before pruning")
