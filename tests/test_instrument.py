"""The fatuous-head instrumentation pass: shares parameters, adds heads, removes cleanly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import falf_fx
from falf_fx.models import lenet5, resnet20
from falf_fx.passes.instrument import AttachFatuousHeads, FatuousHead, default_attachment_point, remove_fatuous_heads


@pytest.mark.parametrize("factory, shape", [(resnet20, (2, 3, 32, 32)), (lenet5, (2, 1, 28, 28))])
def test_heads_ride_along_and_remove_exactly(factory, shape):
    model = factory().eval()
    x = torch.randn(shape)
    gm = falf_fx.trace(model, x)
    instrumented = AttachFatuousHeads(num_outputs=7)(gm).graph_module
    main, heads = instrumented(x)
    assert torch.equal(main, gm(x)) and len(heads) == 1 and heads[0].shape == (2, 7)
    plain = remove_fatuous_heads(instrumented)
    assert plain.code == gm.code
    assert not any(isinstance(m, FatuousHead) for m in plain.modules())


def test_default_point_is_the_last_spatial_feature_map():
    gm = falf_fx.trace(resnet20(), torch.randn(1, 3, 32, 32))
    point = default_attachment_point(gm)
    assert gm.graph.find_nodes(op="call_module", target="layer3.2.relu")[-1].name == point


def test_training_through_the_heads_updates_the_original_parameters():
    model = resnet20()
    x = torch.randn(4, 3, 32, 32)
    gm = falf_fx.trace(model, x)
    instrumented = AttachFatuousHeads(num_outputs=5, points=[default_attachment_point(gm)])(gm).graph_module
    before = model.conv1.weight.detach().clone()
    _, (aux,) = instrumented(x)
    nn.functional.cross_entropy(aux, torch.tensor([0, 1, 2, 3])).backward()
    torch.optim.SGD(instrumented.parameters(), lr=0.1).step()
    assert not torch.equal(model.conv1.weight, before)


def test_several_points_and_bad_points():
    gm = falf_fx.trace(resnet20(), torch.randn(1, 3, 32, 32))
    two = AttachFatuousHeads(3, points=["layer2_2_relu_1", "layer3_2_relu_1"])(gm).graph_module
    _, heads = two(torch.randn(1, 3, 32, 32))
    assert [h.shape for h in heads] == [(1, 3), (1, 3)]
    with pytest.raises(ValueError, match="not a node"):
        AttachFatuousHeads(3, points=["nope"])(gm)
    with pytest.raises(ValueError, match="not a feature map"):
        AttachFatuousHeads(3, points=["fc"])(gm)
