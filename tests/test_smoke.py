import torch

import falf_fx
from falf_fx.models import resnet20
from falf_fx.testing import check_equivalence
from tests.conftest import randomize_norms


def test_resnet20_random_plans_are_exact():
    model = randomize_norms(resnet20()).eval()
    x = torch.randn(2, 3, 32, 32)
    for seed in range(3):
        result = check_equivalence(model, x, seed=seed)
        assert result.channels_removed > 0


def test_prune_halves_resnet20_channels():
    model = resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert slim.conv1.out_channels == 8
    assert slim(x).shape == (1, 10)
