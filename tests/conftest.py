"""Shared fixtures: deterministic seeds and models whose norms are not identities."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn


def forward_macs(model: nn.Module, *inputs) -> int:
    """Multiply-accumulates of one eval forward, by torch's own counter: 3-4x cheaper than fvcore's trace,
    which the zoo and detector cases only use to see that a slim model costs less."""
    from torch.utils.flop_counter import FlopCounterMode

    from falf_fx.passes.modes import eval_mode

    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random affine parameters and running statistics, and
    every constant-initialised parameter (zero classifier heads, 1e-6 layer scales,
    zero class tokens) random values.

    Fresh BatchNorms are identities (mean 0, var 1, weight 1, bias 0) and a zero
    head makes every output 0: either could hide a wrongly sliced channel.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model


# An R-CNN's heads run once per region: by default up to 2,000 proposals and 512 sampled regions an image in
# training, 1,000 and 100 detections in eval, which made the float64 oracle of Keypoint R-CNN's head alone take
# minutes. A few regions exercise the same layers; torchvision's R-CNN builders take these keywords.
FEW_REGIONS = {"rpn_pre_nms_top_n_train": 64, "rpn_post_nms_top_n_train": 64, "rpn_pre_nms_top_n_test": 64,
               "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 8, "box_detections_per_img": 4}


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: two workers on two cores, no oversubscription


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pretrained_state(build, loader, epochs: int, lr: float = 0.1, seed: int = 0) -> dict:
    """Weights of ``build()`` trained on ``loader``: the shared starting point of compress tests."""
    from falf_fx.training import TrainConfig, train

    torch.manual_seed(seed)
    model = build()
    train(model, loader, lambda out, batch: nn.functional.cross_entropy(out, batch[1]),
          TrainConfig(epochs=epochs, lr=lr), progress=False)
    return model.state_dict()


def with_state(build, state: dict) -> nn.Module:
    """A fresh ``build()`` carrying ``state``: every test gets its own copy of the trained weights."""
    model = build()
    model.load_state_dict(state)
    return model
