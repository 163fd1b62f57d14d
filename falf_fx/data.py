"""Data for the training phases: embedded digits, synthetic tensors, a CIFAR-10 folder, or the user's own.

Every source returns ``(train_loader, val_loader)`` whose batches are ``(inputs, targets)``,
the shape :func:`falf_fx.training.train` expects.
"""
from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import FalfValueError

__all__ = ["DataError", "SHAPE_CLASSES", "cifar10_loaders", "digits_loaders", "load_data",
           "shapes_loaders", "synthetic_loaders", "CIFAR10_MEAN", "CIFAR10_STD"]

Loaders = tuple[DataLoader, DataLoader]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean and std of the 50,000 training images
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN, "test_batch")
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class DataError(FalfValueError):
    """The data cannot be loaded; the message names the file or spec and the fix."""


# -- shared: split, normalise, wrap ----------------------------------------------------------


def _stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val indices with every class in both, so val accuracy covers every class."""
    if not 0 < val_fraction < 1:
        raise FalfValueError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        if members.numel() < 2:
            raise FalfValueError(f"class {label} has {members.numel()} sample; a stratified split needs 2 per class")
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_val = min(max(round(members.numel() * val_fraction), 1), members.numel() - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _standardize(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits normalised per channel with the train split's statistics (val stays unseen)."""
    dims = [d for d in range(train.dim()) if d != 1]
    mean, std = train.mean(dims, keepdim=True), train.std(dims, keepdim=True).clamp_min(1e-8)
    return (train - mean) / std, (val - mean) / std


def _split_loaders(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, val_fraction: float,
                   seed: int) -> Loaders:
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    train, val = _standardize(inputs[train_idx], inputs[val_idx])
    return (DataLoader(TensorDataset(train, labels[train_idx]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed)),
            DataLoader(TensorDataset(val, labels[val_idx]), batch_size=batch_size, shuffle=False))


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise FalfValueError(f"{name} must be a positive integer, not {value}")


# -- digits ------------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError("the digits data ships with scikit-learn, which is not installed: "
                        "pip install scikit-learn") from error
    return load_digits(return_X_y=True)


def digits_loaders(image_size: int = 28, channels: int = 1, batch_size: int = 64, val_fraction: float = 0.2,
                   seed: int = 0) -> Loaders:
    """scikit-learn's 1,797 real 8x8 handwritten digits, resized to ``image_size`` px.

    Real images that need no download, so demos and benchmarks run anywhere; ``channels=3``
    repeats the grey channel for nets built for RGB (ResNet-20 at 32 px).
    """
    _require_positive(image_size=image_size, channels=channels)
    pixels, labels = _digits_arrays()
    images = torch.as_tensor(pixels, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return _split_loaders(images.repeat(1, channels, 1, 1), torch.as_tensor(labels, dtype=torch.int64),
                          batch_size, val_fraction, seed)


# -- synthetic ---------------------------------------------------------------------------------


def _smooth_patterns(count: int, input_shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Random low-frequency patterns: a 4-per-axis random grid interpolated up to the input size."""
    channels, *spatial = input_shape
    coarse = torch.randn(count, channels, *(min(4, s) for s in spatial), generator=generator)
    return F.interpolate(coarse, size=tuple(spatial), mode=_INTERPOLATION[len(spatial)], align_corners=False)


def _synthetic_samples(input_shape: tuple[int, ...], num_classes: int, num_samples: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample: its class's prototype shifted by up to a quarter of each axis, plus smooth
    clutter and white noise.

    Hard enough that a linear model stays well below a CNN (shift invariance pays), easy
    enough that a small CNN learns it in a few hundred steps.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = _smooth_patterns(num_classes, input_shape, generator)
    labels = torch.randperm(num_samples, generator=generator) % num_classes
    spatial = input_shape[1:]
    shifts = torch.stack([torch.randint(-(s // 4), s // 4 + 1, (num_samples,), generator=generator)
                          for s in spatial], dim=1)
    axes = tuple(range(1, len(spatial) + 1))
    inputs = torch.stack([prototypes[label].roll(tuple(shift), axes)
                          for label, shift in zip(labels.tolist(), shifts.tolist())])
    inputs += 0.75 * _smooth_patterns(num_samples, input_shape, generator)
    inputs += torch.randn(inputs.shape, generator=generator)
    return inputs, labels


def synthetic_loaders(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, num_samples: int = 2048,
                      batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> Loaders:
    """Seeded, learnable classification data of any 1-D ``(C, L)``, 2-D ``(C, H, W)`` or 3-D
    ``(C, T, H, W)`` input shape, for models no real data set fits (C3D, detection backbones).

    All samples live in memory: ``num_samples * prod(input_shape)`` floats.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not 2 <= len(input_shape) <= 4:
        raise FalfValueError(f"input_shape must be (C, L), (C, H, W) or (C, T, H, W) without the batch axis, "
                         f"not {input_shape}")
    _require_positive(**{f"input_shape[{i}]": s for i, s in enumerate(input_shape)}, num_samples=num_samples)
    if num_classes < 2 or num_samples < 2 * num_classes:
        raise FalfValueError(f"need num_classes >= 2 and at least 2 samples per class, got num_classes={num_classes}, "
                         f"num_samples={num_samples}")
    inputs, labels = _synthetic_samples(input_shape, num_classes, num_samples, seed)
    return _split_loaders(inputs, labels, batch_size, val_fraction, seed)


# -- procedural shapes: the quality benchmark's task -------------------------------------------

SHAPE_CLASSES = ("disk", "ring", "square", "frame", "triangle", "plus", "diamond", "striped disk",
                 "checkered square", "two dots")


def _shape_masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Every class's mask on canonical coordinates ``u, v`` (about [-1, 1]): (classes, N, H, W)."""
    r = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    return torch.stack([
        r < 0.6,
        (r > 0.33) & (r < 0.6),
        box < 0.5,
        (box > 0.3) & (box < 0.55),
        (v > -0.45) & (u.abs() < 0.6 * (0.55 - v)),
        ((u.abs() < 0.17) & (v.abs() < 0.6)) | ((v.abs() < 0.17) & (u.abs() < 0.6)),
        u.abs() + v.abs() < 0.62,
        (r < 0.62) & (torch.sin(9.0 * u) > 0),
        (box < 0.55) & (torch.sin(7.0 * u) * torch.sin(7.0 * v) > 0),
        (torch.sqrt((u + 0.32) ** 2 + v * v) < 0.22) | (torch.sqrt((u - 0.32) ** 2 + v * v) < 0.22),
    ]).float()


def _placed_shapes(labels: torch.Tensor, size: int, scale: tuple[float, float],
                   generator: torch.Generator) -> torch.Tensor:
    """One mask per label, randomly scaled, rotated (up to 30 degrees) and moved: (N, 1, size, size)."""
    n = labels.numel()
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, 1, 1, generator=generator)
    axis = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    s, angle = uniform(*scale), uniform(-0.52, 0.52)
    dx, dy = uniform(-0.45, 0.45), uniform(-0.45, 0.45)
    xs, ys = (x - dx) / s, (y - dy) / s
    u, v = xs * torch.cos(angle) + ys * torch.sin(angle), -xs * torch.sin(angle) + ys * torch.cos(angle)
    masks = _shape_masks(u, v)  # (classes, N, H, W)
    return masks[labels, torch.arange(n)].unsqueeze(1)


def _shape_images(num_samples: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape of the class on a cluttered background, with a fainter distractor shape and noise."""
    generator = torch.Generator().manual_seed(seed)
    classes = len(SHAPE_CLASSES)
    labels = torch.randperm(num_samples, generator=generator) % classes
    images = torch.empty(num_samples, 3, size, size)
    for start in range(0, num_samples, 2048):  # bounded memory: the masks of all classes per chunk
        chunk = labels[start:start + 2048]
        n = chunk.numel()
        background = torch.rand(n, 3, 1, 1, generator=generator)
        background = background + 0.2 * _smooth_patterns(n, (3, size, size), generator)
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        distractor = torch.randint(0, classes, (n,), generator=generator)
        shade = torch.rand(n, 3, 1, 1, generator=generator)
        image = background
        far = _placed_shapes(distractor, size, (0.3, 0.5), generator)
        image = image + far * 0.35 * (shade - image)
        near = _placed_shapes(chunk, size, (0.55, 1.0), generator)
        image = image + near * (colour - image)
        images[start:start + n] = image + 0.15 * torch.randn(image.shape, generator=generator)
    return images, labels


def shapes_loaders(num_train: int = 10_000, num_val: int = 2_000, image_size: int = 32, batch_size: int = 128,
                   seed: int = 0) -> Loaders:
    """A seeded, procedural 10-class task of 32x32 RGB images, harder than digits.

    Each image is one of :data:`SHAPE_CLASSES` in a random colour, size, position and
    rotation, over a cluttered background with a fainter distractor shape of any class
    and pixel noise.  Stripes and checks need texture filters; the distractor and the
    low colour contrast of some images keep a small CNN well below 100%.  The default
    sizes make one validation point 20 images.
    """
    _require_positive(num_train=num_train, num_val=num_val, image_size=image_size, batch_size=batch_size)
    images, labels = _shape_images(num_train + num_val, image_size, seed)
    return _split_loaders(images, labels, batch_size, num_val / (num_train + num_val), seed)


# -- CIFAR-10 ----------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Loads dicts of lists and numpy arrays and nothing else: a batch file cannot run code."""

    _ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch needs")
        return super().find_class(module, name)


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, list[int]]:
    """One ``data_batch_i``/``test_batch``: the python-pickle format the CIFAR-10 site ships."""
    try:
        with file.open("rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's data error
        raise DataError(f"CIFAR-10 batch file '{file}' is corrupt: {type(error).__name__}: {error}") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 batch file '{file}' is not a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"CIFAR-10 batch file '{file}': b'data' must be an N x 3072 uint8 array")
    if not (isinstance(labels, (list, tuple)) and len(labels) == len(data)
            and all(isinstance(v, (int, np.integer)) and 0 <= v < 10 for v in labels)):
        raise DataError(f"CIFAR-10 batch file '{file}': b'labels' must hold one class 0..9 per image")
    return data, list(labels)


def _read_cifar_split(folder: Path, names: Sequence[str], limit: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [_read_cifar_batch(folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([data for data, _ in batches])).view(-1, 3, 32, 32)
    labels = torch.tensor([label for _, batch_labels in batches for label in batch_labels], dtype=torch.int64)
    return images[:limit], labels[:limit]


class _CifarDataset(Dataset):
    """uint8 images kept as loaded (150 MB, not 600 MB of floats); augmented and normalised per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255.0
        if self.augment:
            image = _random_crop_flip(image)
        return (image - self.mean) / self.std, self.labels[index]


def _random_crop_flip(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation: a random 32 px crop of the zero-padded image, then a coin-flip mirror."""
    size = image.shape[-1]
    padded = F.pad(image, (padding,) * 4)
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    crop = padded[:, top:top + size, left:left + size]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


def cifar10_loaders(path: str | Path, batch_size: int = 128, augment: bool = True, num_workers: int = 0,
                    limit: Optional[int] = None) -> Loaders:
    """CIFAR-10 from the extracted ``cifar-10-batches-py`` folder: 50,000 train images and, as
    the val loader, the 10,000 test images.  ``limit`` keeps the first ``limit`` of each, for
    quick runs.

    The format is pickle; the reader accepts only dicts of lists and numpy arrays, so a
    tampered file cannot run code.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder '{folder}' does not exist: give the extracted cifar-10-batches-py "
                        f"folder (data_batch_1..5, test_batch)")
    missing = [name for name in _CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder '{folder}' lacks the batch file(s) {', '.join(missing)}")
    if limit is not None:
        _require_positive(limit=limit)
    train = _CifarDataset(*_read_cifar_split(folder, _CIFAR10_TRAIN, limit), augment=augment)
    val = _CifarDataset(*_read_cifar_split(folder, ("test_batch",), limit), augment=False)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
            DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=num_workers))


# -- per-sample indices ------------------------------------------------------------------------


# -- the CLI's --data --------------------------------------------------------------------------


def load_data(spec: str, *, input_shape: Optional[Sequence[int]] = None, batch_size: int = 64,
              seed: int = 0) -> Loaders:
    """The loaders named by ``--data``: ``digits``, ``synthetic``, ``cifar10:PATH`` or
    ``package.module:function`` (called with no arguments, returns ``(train_loader, val_loader)``).

    ``input_shape`` (without the batch axis) sizes digits and synthetic data to the model and
    is checked against CIFAR-10's (3, 32, 32).
    """
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if spec == "digits":
        if shape is None:
            return digits_loaders(batch_size=batch_size, seed=seed)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise DataError(f"digits are square images: the input shape must be (C, S, S), not {shape}")
        return digits_loaders(image_size=shape[1], channels=shape[0], batch_size=batch_size, seed=seed)
    if spec == "synthetic":
        return synthetic_loaders(**({} if shape is None else {"input_shape": shape}), batch_size=batch_size,
                                 seed=seed)
    if spec.startswith("cifar10:"):
        if shape is not None and shape != (3, 32, 32):
            raise DataError(f"CIFAR-10 images are (3, 32, 32), but the model expects {shape}")
        return cifar10_loaders(spec[len("cifar10:"):], batch_size=batch_size)
    if _FUNCTION_SPEC.match(spec):
        return _call_loader_function(spec)
    raise DataError(f"--data must be 'digits', 'synthetic', 'cifar10:PATH' or 'package.module:function', "
                    f"not '{spec}'")


def _call_loader_function(spec: str) -> Loaders:
    module_name, attr_path = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - ModuleNotFoundError or the module's own import failure
        raise DataError(f"--data '{spec}': cannot import module '{module_name}': {error}") from error
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise DataError(f"--data '{spec}': module '{module_name}' has no attribute '{attr_path}'")
        target = getattr(target, part)
    if not callable(target):
        raise DataError(f"--data '{spec}' is a {type(target).__name__}, not a function")
    loaders = target()
    if not (isinstance(loaders, (tuple, list)) and len(loaders) == 2
            and all(isinstance(loader, DataLoader) for loader in loaders)):
        raise DataError(f"--data '{spec}' must return (train_loader, val_loader), two DataLoaders")
    return tuple(loaders)
