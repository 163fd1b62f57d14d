"""Seeded synthetic detection and segmentation sets: the shapes of the classification task, several per image.

Each image holds one to ``max_objects`` shapes of :data:`falf_fx.data.SHAPE_CLASSES` in
random colours, sizes, positions and rotations over a cluttered background with noise.
Detection targets follow torchvision's format (``boxes`` as float ``x1, y1, x2, y2`` in
pixels, ``labels`` from 1, 0 being the background, ``masks`` as uint8 instance masks),
so torchvision's detectors and torchmetrics' ``MeanAveragePrecision`` take them as
they are; segmentation masks hold the class index (0 background) of every pixel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .data import SHAPE_CLASSES, _placed_shapes, _require_positive, _smooth_patterns

__all__ = ["ShapesDetection", "ShapesSegmentation", "detection_collate", "detection_loaders",
           "segmentation_loaders", "ultralytics_collate"]


def _scenes(num_images: int, size: int, max_objects: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor],
                                                                                 list[torch.Tensor]]:
    """Images (N, 3, size, size), and per image its objects' masks (K, size, size) and classes (K,)."""
    generator = torch.Generator().manual_seed(seed)
    classes = len(SHAPE_CLASSES)
    images = torch.rand(num_images, 3, 1, 1, generator=generator) \
        + 0.2 * _smooth_patterns(num_images, (3, size, size), generator)
    counts = torch.randint(1, max_objects + 1, (num_images,), generator=generator)
    all_masks, all_labels = [], []
    for i in range(num_images):
        labels = torch.randint(0, classes, (int(counts[i]),), generator=generator)
        masks = _placed_shapes(labels, size, (0.3, 0.55), generator)[:, 0]  # (K, H, W)
        colours = torch.rand(len(labels), 3, 1, 1, generator=generator)
        visible = torch.zeros(size, size, dtype=torch.bool)
        kept_masks = []
        for mask, colour in zip(masks.flip(0), colours.flip(0)):  # the last placed is on top
            own = (mask > 0.5) & ~visible
            images[i] = torch.where(own, colour, images[i])
            visible |= own
            kept_masks.append(own)
        kept = torch.stack(kept_masks[::-1])
        present = kept.flatten(1).sum(1) >= 4  # an object hidden behind others is not a target
        all_masks.append(kept[present])
        all_labels.append(labels[present])
    images = images + 0.1 * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), all_masks, all_labels


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``x1, y1, x2, y2`` boxes (pixel edges) around instance masks (K, H, W)."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    return torch.stack(boxes) if boxes else torch.zeros(0, 4)


class ShapesDetection(Dataset):
    """``(image, {"boxes", "labels", "masks"})`` per item, in torchvision's detection format."""

    def __init__(self, num_images: int = 256, image_size: int = 64, max_objects: int = 3, seed: int = 0) -> None:
        _require_positive(num_images=num_images, image_size=image_size, max_objects=max_objects)
        self.images, self.masks, self.labels = _scenes(num_images, image_size, max_objects, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masks = self.masks[index]
        return self.images[index], {"boxes": _boxes(masks), "labels": self.labels[index] + 1,
                                    "masks": masks.to(torch.uint8)}


class ShapesSegmentation(Dataset):
    """``(image, mask)`` per item: the class index (1..10) of every pixel, 0 for the background."""

    def __init__(self, num_images: int = 256, image_size: int = 64, max_objects: int = 3, seed: int = 0) -> None:
        _require_positive(num_images=num_images, image_size=image_size, max_objects=max_objects)
        self.images, masks, labels = _scenes(num_images, image_size, max_objects, seed)
        self.targets = torch.stack([(m * (l[:, None, None] + 1)).amax(0) if len(l) else
                                    torch.zeros(image_size, image_size, dtype=torch.long)
                                    for m, l in zip(masks, labels)]).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]


def detection_collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[list[torch.Tensor], list[Any]]:
    """A batch as torchvision's detectors take it: a list of images and a list of target dicts."""
    return [image for image, _ in batch], [target for _, target in batch]


def ultralytics_collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A detection batch in the Ultralytics loss's format: stacked images and ``batch_idx``, ``cls`` (from 0)
    and ``bboxes`` (normalised centre x, y, width, height), plus ``img``, as ``v8DetectionLoss`` reads them."""
    images = torch.stack([image for image, _ in batch])
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    index, classes, boxes = [], [], []
    for i, (_, target) in enumerate(batch):
        xyxy = target["boxes"] / scale
        index.append(torch.full((len(xyxy),), float(i)))
        classes.append(target["labels"].float().unsqueeze(1) - 1)
        boxes.append(torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1))
    return images, {"batch_idx": torch.cat(index), "cls": torch.cat(classes), "bboxes": torch.cat(boxes),
                    "img": images}


def detection_loaders(num_train: int = 256, num_val: int = 64, image_size: int = 64, batch_size: int = 8,
                      max_objects: int = 3, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of :class:`ShapesDetection` (different seeds: disjoint scenes)."""
    train = ShapesDetection(num_train, image_size, max_objects, seed)
    val = ShapesDetection(num_val, image_size, max_objects, seed + 1)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=detection_collate,
                       generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=batch_size, collate_fn=detection_collate))


def segmentation_loaders(num_train: int = 256, num_val: int = 64, image_size: int = 64, batch_size: int = 8,
                         max_objects: int = 3, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of :class:`ShapesSegmentation` (different seeds: disjoint scenes)."""
    train = ShapesSegmentation(num_train, image_size, max_objects, seed)
    val = ShapesSegmentation(num_val, image_size, max_objects, seed + 1)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=batch_size))
