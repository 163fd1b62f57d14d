"""The task metric compress stops on: top-1 for classifiers, mIoU for segmenters, mAP for detectors, or yours.

``compress(evaluate=...)`` takes a name of :data:`METRICS` or a callable
``evaluate(model) -> float`` (higher is better); ``tolerance`` is in the metric's
own units (fractions for the built-ins: 0.01 is one point).  mIoU and mAP come
from torchmetrics (``JaccardIndex``, ``MeanAveragePrecision`` with its COCO
backend), never a hand-written version: ``pip install falf_fx[metrics]``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from falf_fx.passes.modes import eval_mode

from .errors import FalfError, FalfTypeError, FalfValueError
from .training import evaluate as top1_and_loss

__all__ = ["METRICS", "MetricError", "TaskMetric", "top1", "mean_iou", "mean_average_precision", "resolve_metric",
           "ultralytics_postprocess"]


class MetricError(FalfError):
    """The metric could not be measured (it raised, or gave NaN); says in which round and phase."""


@dataclass(frozen=True)
class TaskMetric:
    """A named measurement of a model on held-out data; higher is better."""

    name: str
    measure: Callable[[nn.Module], float]

    def __call__(self, model: nn.Module, where: str) -> float:
        """The metric of ``model``; ``where`` (``"round 2, after fine-tuning"``) goes into any error."""
        try:
            value = self.measure(model)
        except FalfError:
            raise
        except Exception as error:  # the user's callable, or a loader whose batches do not fit the metric
            raise MetricError(f"evaluate ({self.name}) raised {type(error).__name__} {where}: {error}") from error
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise MetricError(f"evaluate ({self.name}) must return one number, got {type(value).__name__} "
                              f"{where}") from None
        if not math.isfinite(value):
            raise MetricError(f"evaluate ({self.name}) gave {value} {where}; the model may have diverged "
                              "(a lower finetune_lr?) or the metric has no valid sample")
        return value


def _requires_torchmetrics(name: str):
    try:
        import torchmetrics
    except ImportError:  # an extra, never a dependency
        raise FalfError(f"evaluate={name!r} uses torchmetrics: pip install 'falf_fx[metrics]'") from None
    return torchmetrics


def top1(loader: DataLoader) -> Callable[[nn.Module], float]:
    """Top-1 accuracy of class logits (the first output of a tuple), averaged over DDP ranks."""
    return lambda model: top1_and_loss(model, loader)["accuracy"]


def _segmentation_logits(outputs: Any, size: torch.Size) -> torch.Tensor:
    """(N, classes, H, W) logits at the masks' size from a tensor, torchvision's ``{"out": ...}`` or a
    Hugging Face output's ``logits`` (Segformer predicts at a quarter of the input's size)."""
    if isinstance(outputs, dict):
        outputs = outputs["out"] if "out" in outputs else outputs.get("logits")
    elif not isinstance(outputs, torch.Tensor) and hasattr(outputs, "logits"):
        outputs = outputs.logits
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 4:
        raise FalfTypeError("evaluate='miou' needs (N, classes, H, W) logits, torchvision's {'out': logits} or an "
                            f"output with .logits; the model returned {type(outputs).__name__}: pass evaluate=callable")
    if outputs.shape[-2:] != size:
        outputs = nn.functional.interpolate(outputs, size=size, mode="bilinear", align_corners=False)
    return outputs


def mean_iou(loader: DataLoader, ignore_index: Optional[int] = None) -> Callable[[nn.Module], float]:
    """Mean intersection over union over classes (background included), on (images, masks) batches."""
    torchmetrics = _requires_torchmetrics("miou")

    @torch.no_grad()
    def measure(model: nn.Module) -> float:
        metric = None
        with eval_mode(model):
            for images, masks in loader:
                logits = _segmentation_logits(model(images), masks.shape[-2:])
                if metric is None:
                    metric = torchmetrics.classification.MulticlassJaccardIndex(
                        num_classes=logits.shape[1], average="macro", ignore_index=ignore_index)
                metric.update(logits.argmax(1), masks)
        if metric is None:
            raise FalfValueError("evaluate='miou': the validation loader is empty")
        return float(metric.compute())

    return measure


def mean_average_precision(loader: DataLoader, key: str = "map",
                           postprocess: Optional[Callable[[Any], list[dict]]] = None) -> Callable[[nn.Module], float]:
    """COCO mAP (``key="map"``, IoU 0.5:0.95) or mAP@0.5 (``"map_50"``) of boxes, on (images, targets) batches
    in torchvision's format.  The model's eval outputs are torchvision's list of ``{boxes, scores, labels}``,
    or ``postprocess(outputs)`` makes them so (a YOLO head's raw tensor after NMS)."""
    torchmetrics = _requires_torchmetrics(key)

    @torch.no_grad()
    def measure(model: nn.Module) -> float:
        metric = torchmetrics.detection.MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        seen = 0
        with eval_mode(model):
            for images, targets in loader:
                outputs = model(images)
                detections = postprocess(outputs) if postprocess is not None else outputs
                if not (isinstance(detections, list) and all(isinstance(d, dict) and "boxes" in d
                                                              for d in detections)):
                    raise FalfTypeError(f"evaluate='{key}' needs torchvision's detections (a list of dicts with "
                                        f"boxes, scores, labels); the model returned {type(detections).__name__}: "
                                        "pass falf_fx.metrics.mean_average_precision(loader, postprocess=...)")
                metric.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections],
                              [{k: t[k] for k in ("boxes", "labels")} for t in targets])
                seen += len(detections)
        if not seen:
            raise FalfValueError(f"evaluate='{key}': the validation loader is empty")
        return float(metric.compute()[key])

    return measure


def ultralytics_postprocess(model: nn.Module) -> Callable[[Any], list[dict]]:
    """Boxes from an Ultralytics detection model's training-mode outputs, for :func:`mean_average_precision`.

    A YOLO traced in training mode keeps the training branch of its forward (fx records one
    path through ``if self.training``), so its outputs are decoded here by a copy of its
    Detect head (the decoding has no learned weights and reads no pruned width), then
    Ultralytics' NMS; classes from 0 become labels from 1, as in torchvision's targets.
    """
    from ultralytics.utils.nms import non_max_suppression  # the user's extra, never a dependency

    head = copy.deepcopy(model.model[-1]).eval()

    def decode(outputs: Any) -> list[dict]:
        with torch.no_grad():
            kept = non_max_suppression(head._inference(outputs), conf_thres=0.001)
        return [{"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long() + 1} for d in kept]

    return decode


METRICS: dict[str, Callable[[DataLoader], Callable[[nn.Module], float]]] = {
    "top1": top1,
    "miou": mean_iou,
    "map": lambda loader: mean_average_precision(loader, "map"),
    "map50": lambda loader: mean_average_precision(loader, "map_50"),
}


def resolve_metric(evaluate: Union[None, str, Callable[[nn.Module], float]], val_loader: Optional[DataLoader],
                   logits: bool) -> Optional[TaskMetric]:
    """The run's metric: a built-in by name (on ``val_loader``), the user's callable, or top-1 for class logits
    when a ``val_loader`` is given; None when nothing is measured."""
    if evaluate is None:
        if val_loader is None:
            return None
        if not logits:
            raise FalfValueError("val_loader is given but the model's outputs are not class logits, so top-1 does "
                                 f"not apply: pass evaluate= one of {sorted(METRICS)} or a callable(model) -> float")
        evaluate = "top1"
    if isinstance(evaluate, str):
        if evaluate not in METRICS:
            raise FalfValueError(f"evaluate must be one of {sorted(METRICS)} or a callable(model) -> float, "
                                 f"not {evaluate!r}")
        if val_loader is None:
            raise FalfValueError(f"evaluate={evaluate!r} is measured on val_loader: pass val_loader=")
        return TaskMetric(evaluate, METRICS[evaluate](val_loader))
    if not callable(evaluate):
        raise FalfTypeError(f"evaluate must be a metric name or a callable(model) -> float, not "
                            f"{type(evaluate).__name__}")
    return TaskMetric(getattr(evaluate, "__name__", type(evaluate).__name__), evaluate)
