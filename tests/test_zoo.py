"""Every torchvision classification model: trace, analyse, exact random plan, L1 50% plan cuts MACs.

The 50% plan is what ``falf_fx.prune(ratio=0.5)`` builds, made from the same trace to keep CI fast.
"""
from __future__ import annotations

import ctypes
import gc
import warnings

import pytest
import torch
import torchvision

import falf_fx
from falf_fx.testing import check_equivalence
from tests.conftest import forward_macs, randomize_norms

# The heaviest first, so the two CI workers do not end on one long straggler.
_HEAVY = ("regnet_y_128gf", "efficientnet_v2_l", "vit_h_14", "efficientnet_b7", "efficientnet_b6", "maxvit_t",
          "efficientnet_v2_m", "densenet201", "convnext_large", "convnext_base", "densenet161", "regnet_y_32gf")
_ALL = torchvision.models.list_models(module=torchvision.models)
MODELS = [m for m in _HEAVY if m in _ALL] + [m for m in _ALL if m not in _HEAVY]

# Reduced inputs keep CI fast; these architectures need a particular size.
INPUT_SIZE = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}
BUILD_KWARGS = {name: {"image_size": INPUT_SIZE.get(name, 64)} for name in MODELS if name.startswith("vit_")}


def _model_and_input(name: str):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **BUILD_KWARGS.get(name, {}))
    size = INPUT_SIZE.get(name, 64)
    return randomize_norms(model).eval(), torch.randn(1, 3, size, size)


@pytest.fixture(autouse=True)
def _hand_memory_back():
    """Each model's freed memory goes back to the system: glibc keeps it otherwise, and a worker that
    ran a few large models holds gigabytes it no longer uses (the other worker was OOM-killed)."""
    yield
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


# Over 250 M parameters: a float64 oracle of one takes ~11 GB, so they share one xdist worker
# (``--dist loadgroup`` in the Makefile) and never run two at a time.
_GIANT = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}


@pytest.mark.zoo
@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.xdist_group("giant")) if m in _GIANT else m
                                  for m in MODELS])
def test_zoo_model(name: str) -> None:
    model, x = _model_and_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = falf_fx.trace(model, x)
        analysis = falf_fx.analyze(gm)
        assert analysis.prunable_groups, f"{name}: nothing prunable"
        result = check_equivalence(model, x, analysis=analysis, seed=0)
        assert result.channels_removed > 0
        macs = forward_macs(model, x)
        plan = falf_fx.plan_by_ratio(analysis, falf_fx.group_importance(analysis, "l1"), 0.5)  # prune(), traced once
        slim = falf_fx.slim(gm, plan, inplace=True)  # re-checks every node's shape, the outputs' included
        assert forward_macs(slim, x) < macs
