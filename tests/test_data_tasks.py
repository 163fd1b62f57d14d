"""The synthetic detection and segmentation sets: seeded, consistent, and what torchvision's models take."""
from __future__ import annotations

import torch
from torchvision.models import detection

from falf_fx.data import SHAPE_CLASSES
from falf_fx.data_tasks import ShapesDetection, ShapesSegmentation, detection_loaders, segmentation_loaders


def test_the_same_seed_gives_the_same_scenes_and_another_seed_others() -> None:
    a, b, c = ShapesDetection(8, 32, seed=3), ShapesDetection(8, 32, seed=3), ShapesDetection(8, 32, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert all(torch.equal(a[i][1]["boxes"], b[i][1]["boxes"]) for i in range(8))


def test_boxes_bound_their_masks_and_labels_leave_zero_to_the_background() -> None:
    data = ShapesDetection(32, 48, max_objects=3, seed=0)
    for image, target in data:
        assert image.shape == (3, 48, 48) and 0.0 <= image.min() and image.max() <= 1.0
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert len(boxes) == len(labels) == len(masks) >= 1 and masks.dtype == torch.uint8
        assert labels.min() >= 1 and labels.max() <= len(SHAPE_CLASSES)
        for (x1, y1, x2, y2), mask in zip(boxes.long(), masks.bool()):
            inside = torch.zeros_like(mask)
            inside[y1:y2, x1:x2] = True
            assert mask.any() and not (mask & ~inside).any()  # tight: every pixel inside, edges touched
            assert mask[y1].any() and mask[y2 - 1].any() and mask[:, x1].any() and mask[:, x2 - 1].any()


def test_segmentation_masks_are_the_detection_instances_by_class() -> None:
    boxes, pixels = ShapesDetection(8, 32, seed=5), ShapesSegmentation(8, 32, seed=5)
    for (_, target), (_, mask) in zip(boxes, pixels):
        expected = torch.zeros(32, 32, dtype=torch.long)
        for instance, label in zip(target["masks"].bool(), target["labels"]):
            expected[instance] = label
        assert torch.equal(mask, expected)


def test_a_torchvision_detector_trains_on_a_batch() -> None:
    train, _ = detection_loaders(num_train=8, num_val=4, image_size=64, batch_size=4)
    images, targets = next(iter(train))
    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=11,
                                                           min_size=64, max_size=64).train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_segmentation_loaders_batch_images_and_masks() -> None:
    train, val = segmentation_loaders(num_train=8, num_val=4, image_size=32, batch_size=4)
    images, masks = next(iter(train))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.long
    assert len(val.dataset) == 4
