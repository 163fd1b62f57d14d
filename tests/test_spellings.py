"""Every spelling of an op is the same op: exact under random plans, and the same channel groups.

Each family is one op written every way PyTorch allows (positional, keyword, method, function,
operator, in-place), between a producing conv and a consuming layer.  Within a family every
spelling must give the same prunable channels and a slim model equal to the masked original.
"""
from __future__ import annotations

import operator
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import falf_fx
from falf_fx.testing import check_equivalence

Op = Callable[[torch.Tensor], torch.Tensor]


def _augmented_add(y: torch.Tensor) -> torch.Tensor:
    out = y.clone()
    out += y.sigmoid()
    return out


def _augmented_mul(y: torch.Tensor) -> torch.Tensor:
    out = y.clone()
    out *= y.sigmoid()
    return out


FAMILIES: dict[str, dict[str, Op]] = {
    "relu": {
        "functional": lambda y: F.relu(y), "keyword": lambda y: F.relu(input=y), "torch": lambda y: torch.relu(y),
        "method": lambda y: y.relu(), "inplace_keyword": lambda y: F.relu(y.clone(), inplace=True),
        "inplace_method": lambda y: y.clone().relu_(), "torch_inplace": lambda y: torch.relu_(y.clone()),
    },
    "add": {
        "operator": lambda y: y + y.sigmoid(), "function": lambda y: torch.add(y, y.sigmoid()),
        "keyword": lambda y: torch.add(input=y, other=y.sigmoid()), "method": lambda y: y.add(y.sigmoid()),
        "method_keyword": lambda y: y.add(other=y.sigmoid()), "inplace": lambda y: y.clone().add_(y.sigmoid()),
        "augmented": _augmented_add, "operator_function": lambda y: operator.add(y, y.sigmoid()),
    },
    "mul": {
        "operator": lambda y: y * y.sigmoid(), "function": lambda y: torch.mul(y, y.sigmoid()),
        "keyword": lambda y: torch.mul(input=y, other=y.sigmoid()), "method": lambda y: y.mul(y.sigmoid()),
        "inplace": lambda y: y.clone().mul_(y.sigmoid()), "augmented": _augmented_mul,
    },
    "cat": {
        "positional": lambda y: torch.cat([y, y.sigmoid()], 1), "keyword": lambda y: torch.cat([y, y.sigmoid()], dim=1),
        "all_keywords": lambda y: torch.cat(tensors=[y, y.sigmoid()], dim=1),
        "negative": lambda y: torch.cat([y, y.sigmoid()], dim=-3), "concat": lambda y: torch.concat([y, y.sigmoid()], 1),
        "tuple": lambda y: torch.cat((y, y.sigmoid()), 1),
    },
    "narrow": {
        "method": lambda y: y.narrow(1, 2, 4), "method_keywords": lambda y: y.narrow(dim=1, start=2, length=4),
        "function": lambda y: torch.narrow(y, 1, 2, 4),
        "function_keywords": lambda y: torch.narrow(y, dim=1, start=2, length=4),
        "negative_dim": lambda y: y.narrow(-3, 2, 4), "slice": lambda y: y[:, 2:6],
        "slice_ellipsis": lambda y: y[:, 2:6, ...], "ellipsis_first": lambda y: y[..., 2:6, :, :],
    },
    "strided": {
        "every_second": lambda y: y[:, ::2], "from_one": lambda y: y[:, 1::2], "bounded": lambda y: y[:, 1:7:2],
        "trailing_slices": lambda y: y[:, ::2, :, :], "ellipsis": lambda y: y[..., ::2, :, :],
    },
    "split": {
        "function": lambda y: torch.split(y, [3, 5], 1)[1], "function_keyword": lambda y: torch.split(y, [3, 5], dim=1)[1],
        "method": lambda y: y.split([3, 5], 1)[1], "method_keyword": lambda y: y.split([3, 5], dim=1)[1],
        "all_keywords": lambda y: torch.split(y, split_size_or_sections=[3, 5], dim=1)[1],
        "narrow": lambda y: y.narrow(1, 3, 5), "slice": lambda y: y[:, 3:],
    },
    "chunk": {
        "function": lambda y: torch.chunk(y, 2, 1)[1], "method": lambda y: y.chunk(2, 1)[1],
        "method_keyword": lambda y: y.chunk(2, dim=1)[1], "all_keywords": lambda y: torch.chunk(input=y, chunks=2, dim=1)[1],
        "split": lambda y: y.split(4, dim=1)[1], "slice": lambda y: y[:, 4:],
    },
    "spatial_mean": {
        "method": lambda y: y.mean((2, 3), keepdim=True), "method_keyword": lambda y: y.mean(dim=(2, 3), keepdim=True),
        "function": lambda y: torch.mean(y, (2, 3), True), "function_keyword": lambda y: torch.mean(y, dim=[2, 3], keepdim=True),
        "negative": lambda y: y.mean((-2, -1), keepdim=True), "pool": lambda y: F.adaptive_avg_pool2d(y, 1),
        "pool_keyword": lambda y: F.adaptive_avg_pool2d(y, output_size=1),
    },
    "softmax_over_width": {  # over the channels it would couple them all, so it is frozen there
        "functional": lambda y: F.softmax(y, 3), "functional_keyword": lambda y: F.softmax(y, dim=3),
        "method": lambda y: y.softmax(-1), "method_keyword": lambda y: y.softmax(dim=-1),
        "torch": lambda y: torch.softmax(y, 3), "module": nn.Softmax(dim=3),
    },
    "swap_spatial": {
        "transpose": lambda y: y.transpose(2, 3), "transpose_keywords": lambda y: y.transpose(dim0=2, dim1=3),
        "function": lambda y: torch.transpose(y, 2, 3), "permute": lambda y: y.permute(0, 1, 3, 2),
        "permute_tuple": lambda y: y.permute((0, 1, 3, 2)), "permute_function": lambda y: torch.permute(y, (0, 1, 3, 2)),
        "swapaxes": lambda y: y.swapaxes(2, 3), "negative": lambda y: y.transpose(-1, -2),
    },
    "reshape_round_trip": {
        "view": lambda y: y.view(y.size(0), 8, 36).view(-1, 8, 6, 6),
        "view_tuple": lambda y: y.view((-1, 8, 36)).view((-1, 8, 6, 6)),
        "reshape": lambda y: y.reshape(-1, 8, 36).reshape(-1, 8, 6, 6),
        "function": lambda y: torch.reshape(y, (-1, 8, 36)).reshape(-1, 8, 6, 6),
        "flatten_unflatten": lambda y: y.flatten(2).unflatten(2, (6, 6)),
        "keywords": lambda y: torch.flatten(y, start_dim=2).unflatten(dim=2, sizes=(6, 6)),
    },
    "interpolate": {
        "scale": lambda y: F.interpolate(y, scale_factor=2), "positional": lambda y: F.interpolate(y, None, 2),
        "size": lambda y: F.interpolate(y, size=(12, 12)),
        "all_keywords": lambda y: F.interpolate(input=y, scale_factor=2, mode="nearest"),
        "module": nn.Upsample(scale_factor=2),
    },
    "pad": {
        "positional": lambda y: F.pad(y, (1, 1, 1, 1)), "keywords": lambda y: F.pad(y, pad=(1, 1, 1, 1), value=0.0),
        "all_keywords": lambda y: F.pad(input=y, pad=[1, 1, 1, 1], mode="constant"), "module": nn.ZeroPad2d(1),
        "reflection": nn.ReflectionPad2d(1), "constant": nn.ConstantPad2d((1, 1, 1, 1), 0.5),
    },
    "unsqueeze_squeeze": {
        "methods": lambda y: y.unsqueeze(2).squeeze(2), "keywords": lambda y: y.unsqueeze(dim=2).squeeze(dim=2),
        "functions": lambda y: torch.squeeze(torch.unsqueeze(y, 2), 2), "indexing": lambda y: y[:, :, None].squeeze(2),
        "negative": lambda y: y.unsqueeze(-1).squeeze(-1),
    },
    "flip_spatial": {
        "method": lambda y: y.flip(3), "method_list": lambda y: y.flip([3]), "function": lambda y: torch.flip(y, (3,)),
        "keyword": lambda y: torch.flip(y, dims=[3]),
    },
    "stack_unbind": {
        "functions": lambda y: torch.stack([torch.unbind(y, 2)[i] for i in range(6)], 2),
        "methods": lambda y: torch.stack([y.unbind(2)[i] for i in range(6)], dim=2),
        "keywords": lambda y: torch.stack(tensors=[torch.unbind(y, dim=2)[i] for i in range(6)], dim=2),
    },
    "expand": {
        "method": lambda y: y.mean((2, 3), keepdim=True).expand(-1, -1, 6, 6),
        "method_tuple": lambda y: y.mean((2, 3), keepdim=True).expand((-1, -1, 6, 6)),
        "expand_as": lambda y: y.mean((2, 3), keepdim=True).expand_as(y),
    },
    "clamp": {
        "function": lambda y: torch.clamp(y, -1.0, 1.0), "keywords": lambda y: torch.clamp(y, min=-1.0, max=1.0),
        "method": lambda y: y.clamp(-1.0, 1.0), "method_keywords": lambda y: y.clamp(min=-1.0, max=1.0),
        "clip": lambda y: torch.clip(y, -1.0, 1.0), "inplace": lambda y: y.clone().clamp_(-1.0, 1.0),
        "hardtanh": lambda y: F.hardtanh(y), "module": nn.Hardtanh(),
    },
    "amax_over_width": {  # a torch function's rule serves its method spelling too
        "function": lambda y: torch.amax(y, 3, keepdim=True), "method": lambda y: y.amax(3, keepdim=True),
        "method_keyword": lambda y: y.amax(dim=3, keepdim=True), "logsumexp": lambda y: y.logsumexp(3, keepdim=True),
    },
    "max_pool": {
        "positional": lambda y: F.max_pool2d(y, 2), "keywords": lambda y: F.max_pool2d(y, kernel_size=2, stride=2),
        "all_keywords": lambda y: F.max_pool2d(input=y, kernel_size=2), "module": nn.MaxPool2d(2),
    },
}


class Sandwich(nn.Module):
    """conv(3 -> 8) -> the op -> a consumer sized for what the op returns."""

    def __init__(self, op: Op) -> None:
        super().__init__()
        self.produce = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.op = op if isinstance(op, nn.Module) else None
        self._op = op
        with torch.no_grad():
            channels = self._op(torch.zeros(1, 8, 6, 6)).shape[1]
        self.consume = nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.produce(x)
        return self.consume(self.op(y) if self.op is not None else self._op(y))


CASES = [(family, spelling) for family, spellings in FAMILIES.items() for spelling in spellings]


def _model(family: str, spelling: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Sandwich(FAMILIES[family][spelling]).eval()
    with torch.no_grad():
        bn = model.produce[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.normal_()
    return model, 4.0 * torch.randn(2, 3, 6, 6)


def _prunable(model, x) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = falf_fx.analyze(falf_fx.trace(model, x))
    return sorted(g.num_prunable for g in analysis.groups)


@pytest.mark.parametrize("family, spelling", CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_every_spelling_is_exact(family, spelling):
    model, x = _model(family, spelling)
    removed = 0
    for seed in range(3):
        result = check_equivalence(model, x, seed=seed)
        removed += result.channels_removed
    assert removed > 0  # the op's channels were pruned, not frozen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_spelling_of_an_op_is_the_same_op(family):
    found = {spelling: _prunable(*_model(family, spelling)) for spelling in FAMILIES[family]}
    assert len({tuple(v) for v in found.values()}) == 1, found


class FunctionalLayers(nn.Module):
    """Conv, batch norm and linear as torch.nn.functional calls on the module's own parameters, spelled
    positionally or by keyword."""

    def __init__(self, keywords: bool) -> None:
        super().__init__()
        self.keywords = keywords
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, b, h, d = self.conv, self.bn, self.head, self.conv2
        if self.keywords:
            y = F.conv2d(input=x, weight=c.weight, bias=c.bias, stride=1, padding=1)
            y = F.batch_norm(y, running_mean=b.running_mean, running_var=b.running_var, weight=b.weight, bias=b.bias,
                             training=False, momentum=0.1, eps=b.eps)
            y = F.conv2d(y, d.weight, d.bias, padding=1, groups=8)
            return F.linear(input=y.mean((2, 3)), weight=h.weight, bias=h.bias)
        y = F.conv2d(x, c.weight, c.bias, 1, 1)
        y = F.batch_norm(y, b.running_mean, b.running_var, b.weight, b.bias, False, 0.1, b.eps)
        y = F.conv2d(y, d.weight, d.bias, 1, 1, 1, 8)
        return F.linear(y.mean((2, 3)), h.weight, h.bias)


def test_functional_layers_are_the_same_in_every_spelling():
    found = []
    for keywords in (False, True):
        torch.manual_seed(0)
        model, x = FunctionalLayers(keywords).eval(), 4.0 * torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            model.bn.running_var.uniform_(0.5, 1.5)
            model.bn.weight.normal_()
        assert sum(check_equivalence(model, x, seed=seed).channels_removed for seed in range(3)) > 0
        found.append(_prunable(model, x))
    assert found[0] == found[1] and found[0][-1] == 8


def test_a_sequence_held_in_one_value_is_frozen_not_guessed():
    for op in (lambda y: torch.cat(y.split(4, 1), 1), lambda y: torch.stack(torch.unbind(y, 2), 2)):
        model, x = Sandwich(op).eval(), torch.randn(2, 3, 6, 6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = falf_fx.analyze(falf_fx.trace(model, x))
        frozen = [r for g in analysis.groups for r in g.reasons]
        assert any("a sequence held in one value" in r for r in frozen)
        assert check_equivalence(model, x).max_abs_diff == 0.0
