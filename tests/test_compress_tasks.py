"""compress beyond classifiers, end to end on tiny synthetic data: torchvision's Faster R-CNN and SSDlite with
mAP, LRASPP with mIoU, YOLOv8n with the Ultralytics loss and mAP after its NMS, and the step API driving a
detector from a user's loop.  Each keeps the user's class, meets its MACs target and leaves the model untouched."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

import falf_fx
from falf_fx.data_tasks import ShapesDetection, detection_loaders, segmentation_loaders, ultralytics_collate
from falf_fx.methods import FALF, Correlation, PlayAndPrune, PrunerNetwork, Stability, Taylor
from falf_fx.metrics import mean_average_precision, ultralytics_postprocess
from falf_fx.training import inputs_and_targets
from tests.conftest import FEW_REGIONS
from tests.hub_models import ultralytics

FAST = {"magnitude": "magnitude", "taylor": Taylor(batches=2), "falf": FALF(taylor_batches=2),
        "stability": Stability(taylor_batches=2), "correlation": Correlation(),
        "pruner_network": PrunerNetwork(epochs=2, search_trials=2, max_batches=2, gate_batches=2)}
# Play-and-Prune takes a tolerance, not a MACs target: it is run apart
PLAY_AND_PRUNE = dict(method=PlayAndPrune(reg_epochs=1, patience=1), tolerance=1.0, rounds=1)
EVERY_METHOD = [*sorted(FAST), "play_and_prune"]
LOSS_DICT = lambda outputs, batch: outputs  # noqa: E731 - torchvision's detectors return their losses; summed


def _faster_rcnn() -> nn.Module:
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=11, min_size=64, max_size=64, **FEW_REGIONS)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _compress(model, loader, **options) -> falf_fx.CompressResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' and torchvision's own notes on tiny data
        return falf_fx.compress(model, loader, finetune_epochs=1, progress=False, measure_latency=False, **options)


@pytest.fixture(scope="module")
def detection():
    return detection_loaders(num_train=8, num_val=4, image_size=64, batch_size=4, seed=0)


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_method_compresses_faster_rcnn_with_map(name, detection):
    torch.manual_seed(0)
    model = _faster_rcnn()
    before = _snapshot(model)
    result = _compress(model, detection[0], method=FAST[name], loss_fn=LOSS_DICT, forward=inputs_and_targets,
                       val_loader=detection[1], evaluate="map50", target_macs=0.5)
    assert _untouched(model, before)
    slim = result.model
    assert type(slim) is type(model) and result.report["parts"][0] == "backbone"
    assert result.report["target"]["met"] and result.report["metric"] == "map50"
    assert 0.0 <= result.report["after"]["metric"] <= 1.0
    slim.eval()
    detections = slim([torch.rand(3, 64, 64)])
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    slim.train()
    images, targets = next(iter(detection[0]))
    losses = slim(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    if name in ("falf", "stability"):
        assert result.report["budget"]["auxiliary_epochs"] == {"fatuous": 1}  # heads on the backbone only


def test_play_and_prune_runs_on_a_detector(detection):
    torch.manual_seed(0)
    result = _compress(_faster_rcnn(), detection[0], loss_fn=LOSS_DICT, forward=inputs_and_targets,
                       val_loader=detection[1], evaluate="map50", **PLAY_AND_PRUNE)
    # one regularised epoch per part with channels to cut: backbone, RPN head, box head
    assert result.history[0]["auxiliary_epochs"] == {"regularise": 3}
    assert type(result.model).__name__ == "FasterRCNN"


def _targets(name: str) -> dict:
    return PLAY_AND_PRUNE if name == "play_and_prune" else dict(method=FAST[name], target_macs=0.5)


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_compresses_ssdlite_with_map(name):
    train, val = detection_loaders(num_train=4, num_val=2, image_size=64, batch_size=2, seed=0)
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=11)
    result = _compress(model, train, loss_fn=LOSS_DICT, forward=inputs_and_targets, val_loader=val, evaluate="map",
                       **_targets(name))
    assert type(result.model).__name__ == "SSD" and result.report["macs_ratio"] <= 1.0
    assert name == "play_and_prune" or result.report["target"]["met"]
    assert math.isfinite(result.report["after"]["metric"])


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_compresses_lraspp_with_miou(name):
    train, val = segmentation_loaders(num_train=8, num_val=4, image_size=64, batch_size=4, seed=0)
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=11)
    loss = lambda outputs, batch: nn.functional.cross_entropy(outputs["out"], batch[1])  # noqa: E731
    before = _snapshot(model)
    result = _compress(model, train, loss_fn=loss, val_loader=val, evaluate="miou", **_targets(name))
    assert _untouched(model, before)
    assert (name == "play_and_prune" or result.report["target"]["met"]) and result.report["metric"] == "miou"
    assert 0.0 <= result.report["after"]["metric"] <= 1.0
    assert result.model(torch.rand(1, 3, 64, 64))["out"].shape == (1, 11, 64, 64)


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_compresses_yolov8n_with_the_ultralytics_loss_and_map(name):
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    train = DataLoader(ShapesDetection(8, 64, seed=0), batch_size=4, collate_fn=ultralytics_collate)
    torch.manual_seed(0)
    model = ultralytics("yolov8n.yaml", nc=10).train()
    model.args = get_cfg()  # what the Ultralytics trainer sets before it builds the loss
    criterion = v8DetectionLoss(model)
    loss = lambda outputs, batch: criterion(outputs, batch[1])[0].sum()  # noqa: E731
    val = DataLoader(ShapesDetection(4, 64, seed=1), batch_size=4,
                     collate_fn=lambda samples: (torch.stack([x for x, _ in samples]), [t for _, t in samples]))
    stacked = mean_average_precision(val, "map_50", postprocess=ultralytics_postprocess(model))
    before = _snapshot(model)
    result = _compress(model, train, loss_fn=loss, evaluate=stacked, **_targets(name))
    assert _untouched(model, before)
    assert type(result.model).__name__ == "DetectionModel"
    assert name == "play_and_prune" or result.report["target"]["met"]
    assert 0.0 <= result.report["after"]["metric"] <= 1.0


def test_the_step_api_drives_a_detector_from_a_users_loop(detection):
    torch.manual_seed(0)
    model = _faster_rcnn()
    session = falf_fx.PruningSession(model, detection[0], method=FALF(taylor_batches=2), loss_fn=LOSS_DICT,
                                     forward=inputs_and_targets, val_loader=detection[1], evaluate="map50",
                                     target_macs=0.5, finetune_epochs=1)
    kinds = []
    for phase in session.phases():
        detector = phase.model.train()
        optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
        for images, targets in detection[0]:
            loss = sum(detector(images, targets).values()) + phase.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        kinds.append(phase.kind)
    result = session.result()
    assert kinds == ["fatuous", "finetune"]
    assert type(result.model) is type(model) and result.report["target"]["met"]
