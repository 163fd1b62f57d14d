"""The first-order Taylor criterion: dead channels score zero, and it runs through compress."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import falf_fx
from falf_fx.data import digits_loaders
from falf_fx.methods import Round, Taylor
from falf_fx.methods.taylor import taylor_scores
from falf_fx.passes.analysis import analyze_graph

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_a_dead_channel_scores_zero_and_a_live_one_does_not():
    train_loader, _ = digits_loaders(image_size=8, batch_size=32, seed=0)
    model = _net()
    with torch.no_grad():  # channel 3 of the first conv: no output at all after its BatchNorm
        model[0].weight[3] = 0
        model[0].bias[3] = 0
        model[1].weight[3] = 0
        model[1].bias[3] = 0
    gm = falf_fx.trace(model, next(iter(train_loader))[0][:1])
    analysis = analyze_graph(gm)
    scores = taylor_scores(Round(gm, analysis, train_loader, CE, 10, 0, 0, progress=False), batches=4)
    first = next(g for g in analysis.prunable_groups if "0" in g.producers)
    assert scores[first.id][3] == 0.0
    assert (np.delete(scores[first.id], 3) > 0).all()
    assert all(p.grad is None for p in gm.parameters())  # no gradients left behind on the model


def test_taylor_compresses_with_a_cost_allocation():
    train_loader, val_loader = digits_loaders(image_size=8, batch_size=64, seed=0)
    result = falf_fx.compress(_net(), train_loader, method=Taylor(batches=2), val_loader=val_loader, target_macs=0.5,
                              allocation="cost", finetune_epochs=1, progress=False, measure_latency=False)
    assert result.report["target"]["met"] and result.history[0]["method"] == "taylor"
