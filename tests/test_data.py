"""Data sources: digits, synthetic, a CIFAR-10 folder in the real pickle format, indices, --data specs."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from falf_fx.data import (CIFAR10_MEAN, CIFAR10_STD, DataError, cifar10_loaders, digits_loaders, load_data,
                          synthetic_loaders)


def _everything(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _split_tensors(loaders) -> tuple[torch.Tensor, ...]:
    train_loader, val_loader = loaders
    return (*train_loader.dataset.tensors, *val_loader.dataset.tensors)


# -- digits ------------------------------------------------------------------------------------


def test_digits_shapes_normalisation_and_stratified_split():
    train_loader, val_loader = digits_loaders(image_size=28, batch_size=32)
    x_train, y_train, x_val, y_val = _split_tensors((train_loader, val_loader))
    assert x_train.shape[1:] == (1, 28, 28) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(x_train) + len(x_val) == 1797 and abs(len(x_val) - 0.2 * 1797) < 10
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-3
    assert set(y_train.tolist()) == set(y_val.tolist()) == set(range(10))
    train_share, val_share = y_train.bincount() / len(y_train), y_val.bincount() / len(y_val)
    assert (train_share - val_share).abs().max() < 0.01  # stratified: the same class mix in both
    assert isinstance(train_loader.sampler, RandomSampler) and isinstance(val_loader.sampler, SequentialSampler)
    inputs, targets = next(iter(val_loader))
    assert inputs.shape == (32, 1, 28, 28) and targets.shape == (32,)


def test_digits_images_match_their_labels():
    """A nearest-centroid classifier fitted on train does well on val only if images and labels line up."""
    x_train, y_train, x_val, y_val = _split_tensors(digits_loaders(image_size=8))
    centroids = torch.stack([x_train[y_train == c].flatten(1).mean(0) for c in range(10)])
    predictions = torch.cdist(x_val.flatten(1), centroids).argmin(1)
    assert (predictions == y_val).float().mean() > 0.85


def test_digits_three_channels_are_copies_resized_once():
    x_train, *_ = _split_tensors(digits_loaders(image_size=32, channels=3))
    assert x_train.shape[1:] == (3, 32, 32)
    assert torch.equal(x_train[:, 0], x_train[:, 1]) and torch.equal(x_train[:, 0], x_train[:, 2])


def test_digits_split_is_fixed_by_the_seed():
    first, again, other = (_split_tensors(digits_loaders(image_size=8, seed=s)) for s in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[3], other[3])
    assert torch.equal(_everything(digits_loaders(image_size=8, seed=3)[0])[1],
                       _everything(digits_loaders(image_size=8, seed=3)[0])[1])  # the same shuffle


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        digits_loaders()


@pytest.mark.parametrize("kwargs, message", [({"val_fraction": 1.0}, "val_fraction"),
                                             ({"channels": 0}, "channels"), ({"image_size": 0}, "image_size")])
def test_digits_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digits_loaders(**kwargs)


# -- synthetic ---------------------------------------------------------------------------------


def test_synthetic_images_are_learnable_by_a_linear_model():
    x_train, y_train, x_val, y_val = _split_tensors(synthetic_loaders(input_shape=(3, 16, 16), seed=0))
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-3
    torch.manual_seed(0)
    model = nn.Linear(3 * 16 * 16, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(50):  # full-batch logistic regression
        loss = F.cross_entropy(model(x_train.flatten(1)), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (model(x_val.flatten(1)).argmax(1) == y_val).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1; measured 0.77


@pytest.mark.parametrize("shape", [(4, 64), (3, 16, 16), (2, 4, 8, 8)])
def test_synthetic_shapes_in_1d_2d_3d(shape):
    train_loader, val_loader = synthetic_loaders(input_shape=shape, num_classes=5, num_samples=200, batch_size=16)
    inputs, targets = next(iter(train_loader))
    assert inputs.shape == (16, *shape) and inputs.dtype == torch.float32 and targets.dtype == torch.int64
    _, y_train, x_val, y_val = _split_tensors((train_loader, val_loader))
    assert len(y_train) == 160 and x_val.shape == (40, *shape)
    assert set(y_train.tolist()) == set(y_val.tolist()) == set(range(5))


def test_synthetic_is_fixed_by_the_seed():
    make = lambda seed: _split_tensors(synthetic_loaders(input_shape=(2, 8, 8), num_samples=100, seed=seed))
    first, again, other = make(0), make(0), make(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": (3,)}, r"\(C, L\), \(C, H, W\) or \(C, T, H, W\)"),
    ({"input_shape": (1, 2, 3, 4, 5)}, "without the batch axis"),
    ({"input_shape": (3, 0, 8)}, r"input_shape\[1\] must be a positive integer"),
    ({"num_classes": 1}, "num_classes >= 2"),
    ({"num_samples": 15}, "2 samples per class"),
])
def test_synthetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_loaders(**kwargs)


# -- CIFAR-10 ----------------------------------------------------------------------------------


def _cifar_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def _write_cifar_batch(file: Path, data, labels, protocol: int = 2) -> None:
    """A batch as the CIFAR-10 site ships it: a protocol-2 pickled dict with bytes keys."""
    batch = {b"batch_label": file.name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    file.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    """5 train batches of 4 images (labels 0..9 cycling) and a test batch of 6."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", _cifar_images(4, i), [(4 * (i - 1) + k) % 10 for k in range(4)])
    _write_cifar_batch(folder / "test_batch", _cifar_images(6, 0), [9, 8, 7, 6, 5, 4], protocol=4)
    return folder


def _normalised(data_row: np.ndarray) -> torch.Tensor:
    image = torch.from_numpy(data_row.copy()).view(3, 32, 32).float() / 255
    return (image - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)


def test_cifar10_reads_the_pickle_folder_channel_major(cifar_folder):
    train_loader, val_loader = cifar10_loaders(cifar_folder, batch_size=4, augment=False)
    assert len(train_loader.dataset) == 20 and len(val_loader.dataset) == 6
    assert isinstance(train_loader.sampler, RandomSampler) and isinstance(val_loader.sampler, SequentialSampler)
    x_val, y_val = _everything(val_loader)
    assert x_val.shape == (6, 3, 32, 32) and x_val.dtype == torch.float32 and y_val.dtype == torch.int64
    assert y_val.tolist() == [9, 8, 7, 6, 5, 4]
    expected = torch.stack([_normalised(row) for row in _cifar_images(6, 0)])
    torch.testing.assert_close(x_val, expected)
    image, label = train_loader.dataset[13]  # data_batch_4, image 1
    torch.testing.assert_close(image, _normalised(_cifar_images(4, 4)[1]))
    assert label == 13 % 10


def test_cifar10_reads_python2_era_numpy_names(cifar_folder):
    """The real files name ``numpy.core.multiarray``, which numpy 2 only keeps as an alias."""
    file = cifar_folder / "test_batch"
    _write_cifar_batch(file, _cifar_images(6, 0), [0] * 6)
    file.write_bytes(file.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in file.read_bytes()
    _, val_loader = cifar10_loaders(cifar_folder, augment=False)
    torch.testing.assert_close(val_loader.dataset[5][0], _normalised(_cifar_images(6, 0)[5]))


def test_cifar10_augmentation_is_a_padded_crop_and_flip(cifar_folder):
    plain = cifar10_loaders(cifar_folder, augment=False)[0].dataset
    augmented = cifar10_loaders(cifar_folder, augment=True)[0].dataset
    torch.manual_seed(0)
    black = _normalised(np.zeros(3072, dtype=np.uint8))[:, :1, :1]  # a zero padding pixel, normalised
    crops = set()
    for index in range(len(plain)):
        original, label = plain[index]
        image, augmented_label = augmented[index]
        assert image.shape == (3, 32, 32) and augmented_label == label
        padded = torch.where(F.pad(torch.ones(1, 32, 32), (4,) * 4).bool(), F.pad(original, (4,) * 4),
                             black)
        matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
                   if torch.allclose(image, padded[:, top:top + 32, left:left + 32].flip(-1) if flip
                                     else padded[:, top:top + 32, left:left + 32])]
        assert len(matches) == 1, "each augmented image is exactly one crop-and-flip of the padded original"
        crops.add(matches[0])
    assert len(crops) > len(plain) // 2 and {flip for *_, flip in crops} == {False, True}


def test_cifar10_limit_keeps_the_first_images(cifar_folder):
    train_loader, val_loader = cifar10_loaders(cifar_folder, augment=False, limit=3)
    assert len(train_loader.dataset) == 3 and len(val_loader.dataset) == 3
    assert _everything(val_loader)[1].tolist() == [9, 8, 7]


def test_cifar10_missing_folder_or_file_is_named(cifar_folder, tmp_path):
    with pytest.raises(DataError, match="'.*nowhere' does not exist.*cifar-10-batches-py"):
        cifar10_loaders(tmp_path / "nowhere")
    (cifar_folder / "data_batch_3").unlink()
    (cifar_folder / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks the batch file\\(s\\) data_batch_3, test_batch"):
        cifar10_loaders(cifar_folder)


class _RunsCode:
    def __reduce__(self):
        return os.getcwd, ()


@pytest.mark.parametrize("payload, message", [
    (b"not a pickle at all", "corrupt"),
    (pickle.dumps([1, 2, 3]), "not a dict with b'data' and b'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "N x 3072 uint8"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "one class 0..9 per image"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "one class 0..9 per image"),
    (pickle.dumps({b"data": _RunsCode(), b"labels": [0]}), "corrupt: UnpicklingError: it refers to .*getcwd"),
])
def test_cifar10_bad_batch_file_is_named(cifar_folder, payload, message):
    (cifar_folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match=f"'.*data_batch_2'.*{message}"):
        cifar10_loaders(cifar_folder)


# -- per-sample indices ------------------------------------------------------------------------


# -- load_data ---------------------------------------------------------------------------------


def tiny_loaders():
    """An importable ``package.module:function`` for the spec test."""
    dataset = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64))
    return DataLoader(dataset, batch_size=2), DataLoader(dataset, batch_size=2)


def not_loaders():
    return 42


def test_load_data_specs(cifar_folder):
    inputs, _ = next(iter(load_data("digits", input_shape=(3, 32, 32), batch_size=8)[0]))
    assert inputs.shape == (8, 3, 32, 32)
    assert next(iter(load_data("digits")[1]))[0].shape == (64, 1, 28, 28)
    inputs, _ = next(iter(load_data("synthetic", input_shape=(2, 16), batch_size=8)[0]))
    assert inputs.shape == (8, 2, 16)
    assert next(iter(load_data("synthetic", batch_size=4)[0]))[0].shape == (4, 3, 32, 32)
    train_loader, val_loader = load_data(f"cifar10:{cifar_folder}", input_shape=(3, 32, 32), batch_size=5)
    assert len(train_loader.dataset) == 20 and next(iter(val_loader))[0].shape == (5, 3, 32, 32)
    train_loader, _ = load_data("tests.test_data:tiny_loaders")
    assert len(train_loader.dataset) == 4


@pytest.mark.parametrize("spec, kwargs, message", [
    ("mnist", {}, "--data must be 'digits', 'synthetic', 'cifar10:PATH' or 'package.module:function', not 'mnist'"),
    ("digits", {"input_shape": (1, 28, 32)}, r"square images: the input shape must be \(C, S, S\)"),
    ("cifar10:/nowhere", {"input_shape": (1, 28, 28)}, r"CIFAR-10 images are \(3, 32, 32\)"),
    ("cifar10:/nowhere", {}, "'/nowhere' does not exist"),
    ("no_such_package_xyz.data:loaders", {}, "cannot import module 'no_such_package_xyz.data'"),
    ("tests.test_data:missing", {}, "has no attribute 'missing'"),
    ("tests.test_data:CIFAR10_MEAN", {}, "is a tuple, not a function"),
    ("tests.test_data:not_loaders", {}, r"must return \(train_loader, val_loader\)"),
])
def test_load_data_rejects_bad_specs(spec, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_data(spec, **kwargs)
    assert issubclass(DataError, ValueError)


def test_shapes_loaders_are_seeded_balanced_and_standardised():
    from falf_fx.data import SHAPE_CLASSES, shapes_loaders
    train, val = shapes_loaders(num_train=500, num_val=100, batch_size=50, seed=3)
    again, _ = shapes_loaders(num_train=500, num_val=100, batch_size=50, seed=3)
    other, _ = shapes_loaders(num_train=500, num_val=100, batch_size=50, seed=4)
    images, labels = train.dataset.tensors
    assert images.shape == (500, 3, 32, 32) and len(val.dataset) == 100 and len(SHAPE_CLASSES) == 10
    assert torch.equal(images, again.dataset.tensors[0]) and not torch.equal(images, other.dataset.tensors[0])
    assert labels.bincount().tolist() == [50] * 10 and val.dataset.tensors[1].bincount().tolist() == [10] * 10
    assert images.mean((0, 2, 3)).abs().max() < 1e-4 and (images.std((0, 2, 3)) - 1).abs().max() < 1e-3


def test_every_shape_class_draws_a_distinct_mask():
    from falf_fx.data import _shape_masks
    axis = torch.linspace(-1.0, 1.0, 32)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    masks = _shape_masks(u[None], v[None])[:, 0].flatten(1)
    assert (masks.sum(1) > 20).all()  # every shape covers some pixels at scale 1
    differ = (masks[:, None] != masks[None]).float().mean(-1)
    assert differ[~torch.eye(10, dtype=torch.bool)].min() > 0.02  # no two classes alike
