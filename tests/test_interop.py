"""A slim GraphModule works with the rest of PyTorch: export, ONNX, compile, FX quantization, training."""
from __future__ import annotations

import copy
import warnings

import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

import falf_fx

MODELS = {"resnet18": torchvision.models.resnet18, "mobilenet_v2": torchvision.models.mobilenet_v2}


def _calibrate_norms(model: nn.Module, batches: int = 3) -> nn.Module:
    """Running statistics from data: with fresh BatchNorms MobileNetV2's eval outputs shrink to ~1e-10."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def models(request):
    """(original, slim, input), both in eval mode; tests that change them work on copies."""
    torch.manual_seed(0)
    original = _calibrate_norms(MODELS[request.param](weights=None, num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    slim = falf_fx.prune(original, x, ratio=0.5)
    assert sum(p.numel() for p in slim.parameters()) < 0.5 * sum(p.numel() for p in original.parameters())
    return original, slim, x


def test_torch_export_gives_the_slim_outputs(models):
    _, slim, x = models
    program = torch.export.export(slim, (x,))
    assert sum(p.numel() for p in program.parameters()) == sum(p.numel() for p in slim.parameters())
    with torch.no_grad():
        assert torch.equal(program.module()(x), slim(x))


def test_onnx_export_runs_in_onnxruntime(models):
    _, slim, x = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from the exporter's own dependencies
        program = torch.onnx.export(slim, (x,), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = slim(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_torch_compile_gives_the_slim_outputs(models):
    # aot_eager runs Dynamo capture and AOTAutograd; inductor would add ~80 s of C++ compilation per model
    # on two CPU cores, which is codegen work that does not depend on our graph.
    _, slim, x = models
    torch._dynamo.reset()
    compiled = torch.compile(slim, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), slim(x), atol=1e-6, rtol=1e-6)


def test_fx_int8_quantization_stays_close_to_float(models):
    _, slim, x = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        prepared = prepare_fx(copy.deepcopy(slim), get_default_qconfig_mapping("x86"), (x,))
        with torch.no_grad():
            for _ in range(4):
                prepared(torch.randn(8, 3, 32, 32))
        quantized = convert_fx(prepared)
    assert sum(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in quantized.modules()) >= 10
    with torch.no_grad():
        expected, got = slim(x), quantized(x)
    assert not torch.equal(got, expected)  # it really runs in int8
    relative = (got - expected).norm() / expected.norm()
    correlation = torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1]
    assert relative < 0.15 and correlation > 0.98, (relative, correlation)  # measured: <=0.05, >=0.999


def test_sgd_steps_change_the_weights_and_lower_the_loss(models):
    _, slim, x = models
    model = copy.deepcopy(slim).train()
    target = torch.arange(len(x)) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    torch.manual_seed(0)
    for _ in range(8):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses  # dropout makes single steps noisy
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def _train_mode_facts(model: nn.Module, x: torch.Tensor) -> dict[str, bool]:
    model = copy.deepcopy(model)
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        evaluated = model.eval()(x)
        stats = norm.running_mean.clone()
        first, second = model.train()(x), model(x)
        all_training = all(m.training for m in model.modules())
        stats_moved = not torch.equal(norm.running_mean, stats)
        model.eval()
    return {"train differs between calls": not torch.equal(first, second),
            "train differs from eval": not torch.equal(first, evaluated),
            "eval is deterministic": torch.equal(model(x), model(x)),
            "train() reaches every module": all_training,
            "eval() reaches every module": not any(m.training for m in model.modules()),
            "train updates BN statistics": stats_moved}


def test_train_and_eval_behave_as_in_the_original(models):
    original, slim, x = models
    expected = _train_mode_facts(original, x)
    assert _train_mode_facts(slim, x) == expected
    has_dropout = any(isinstance(m, nn.Dropout) for m in original.modules())
    assert expected["train differs between calls"] == has_dropout  # MobileNetV2's classifier has dropout
    assert expected["train differs from eval"] and expected["train updates BN statistics"]
