"""Every torchvision detector, passed as it is: pruned in parts inside the user's own detector object.

A detector's own forward (box decoding, NMS) cannot be traced; falf_fx captures its
backbone, FPN and heads (``falf_fx.parts``) and returns the detector with those parts
slim.  Each case: every part exact by the oracle, at least 20% of the parts' MACs cut
at ratio 0.5, boxes still returned in eval mode and the loss dict in train mode, the
original untouched, the result saved and loaded back into a freshly built detector.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torchvision.models import detection

import falf_fx
from falf_fx.parts import capture_parts
from falf_fx.testing import check_equivalence
from falf_fx.capture import as_input_tuple
from tests.conftest import FEW_REGIONS, forward_macs

DETECTORS = torchvision.models.list_models(module=detection)


# R-CNNs, RetinaNet and FCOS resize every image to 800 px by default; 64 px keeps CI fast (SSDs fix their size).
SMALL = {"min_size": 64, "max_size": 64}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {} if name.startswith("ssd") else SMALL | (FEW_REGIONS if "rcnn" in name else {})
    return detection.__dict__[name](weights=None, weights_backbone=None, num_classes=5, **kwargs)


def _images_and_targets(name: str, count: int = 1) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(count)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}
    if "maskrcnn" in name:
        target["masks"] = torch.zeros(1, 64, 64, dtype=torch.uint8)
        target["masks"][0, 8:48, 8:40] = 1
    if "keypointrcnn" in name:
        target["keypoints"] = torch.tensor([[[10.0, 10.0, 1.0]] * 17])
    return images, [target] * count


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", DETECTORS)
def test_detector_pruned_in_parts(name: str, mode: str, tmp_path) -> None:
    model = _build(name).train(mode == "train")
    # two images in train mode: SSDlite's last feature maps are 1x1, and BatchNorm in training needs more values
    images, targets = _images_and_targets(name, 2 if mode == "train" else 1)
    inputs = (images, targets) if mode == "train" else (images,)
    state, attributes = _state(model), {n: dict(vars(m)) for n, m in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = capture_parts(model, inputs)
        slim = falf_fx.prune(model, inputs, ratio=0.5)
    assert type(slim) is type(model) and {p.name for p in parts} >= {"backbone"}
    for part in parts:
        check_equivalence(part.graph_module, part.example_inputs, seed=0)
        assert isinstance(slim.get_submodule(part.name), torch.fx.GraphModule)
    macs = sum(forward_macs(p.graph_module, *as_input_tuple(p.example_inputs)) for p in parts)
    slim_macs = sum(forward_macs(slim.get_submodule(p.name), *as_input_tuple(p.example_inputs)) for p in parts)
    assert slim_macs <= 0.8 * macs
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: dict(vars(m)) for n, m in model.named_modules()}.keys() == attributes.keys()
    assert all(vars(m)[k] is v for n, m in model.named_modules() for k, v in attributes[n].items())
    if mode == "eval":
        with torch.no_grad():
            detections = slim(images)
        assert set(detections[0]) >= {"boxes", "labels", "scores"}
    else:
        losses = slim(images, targets)
        assert losses.keys() == model(images, targets).keys()
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    falf_fx.save(slim, tmp_path / "slim.pt")
    with pytest.raises(falf_fx.FalfValueError, match="load_into"):
        falf_fx.load(tmp_path / "slim.pt")
    rebuilt = falf_fx.load_into(_build(name).train(mode == "train"), tmp_path / "slim.pt").eval()
    with torch.no_grad():
        want, got = slim.eval()(images), rebuilt(images)
    for a, b in zip(want, got):
        for key in a:
            torch.testing.assert_close(b[key], a[key])


@pytest.mark.parametrize("name", DETECTORS)
def test_compress_leaves_every_detector_untouched(name: str) -> None:
    """compress on the detector as passed (one fine-tuning epoch on two images): the user's object comes back
    slim and of its class, and the detector given to compress has every tensor and attribute as before."""
    from torch.utils.data import DataLoader

    from falf_fx.training import inputs_and_targets

    model = _build(name).train()
    images, targets = _images_and_targets(name, 2)
    loader = DataLoader(list(zip(images, targets)), batch_size=2, collate_fn=lambda s: tuple(map(list, zip(*s))))
    state, attributes = _state(model), {n: dict(vars(m)) for n, m in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = falf_fx.compress(model, loader, loss_fn=lambda losses, batch: losses, forward=inputs_and_targets,
                                  target_macs=0.8, finetune_epochs=1, finetune_lr=0.001, progress=False,
                                  measure_latency=False)
    assert type(result.model) is type(model) and result.report["target"]["met"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: dict(vars(m)) for n, m in model.named_modules()}.keys() == attributes.keys()
    assert all(vars(m)[k] is v for n, m in model.named_modules() for k, v in attributes[n].items())
