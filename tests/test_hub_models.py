"""Hugging Face and Ultralytics models passed exactly as their libraries return them.

Each one: traced as it is (no wrapper), exact by the oracle on a random plan,
``prune(ratio=0.5)`` cutting its MACs, the slim model saved and loaded, its output
of the same kind as the original's, and the original model untouched by it all.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import falf_fx
from falf_fx.flops import count_cost
from falf_fx.testing import check_equivalence
from tests.hub_models import hugging_face, ultralytics

pytest.importorskip("transformers")
pytest.importorskip("ultralytics")

HUGGING_FACE = hugging_face()


def _snapshot(model: nn.Module) -> dict:
    """What a call must leave as it was: tensors' values, every attribute, every mode."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    attributes = {name: {k: v for k, v in vars(m).items() if not isinstance(v, torch.Tensor)}
                  for name, m in model.named_modules()}
    return {"state": state, "attributes": attributes, "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()}}


def _assert_untouched(model: nn.Module, before: dict, outputs_before: list, x: torch.Tensor) -> None:
    after = _snapshot(model)
    assert after["ids"] == before["ids"], "a parameter or buffer of the user's model was replaced"
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for name, attributes in before["attributes"].items():
        assert after["attributes"][name].keys() == attributes.keys(), f"module '{name}' gained or lost attributes"
        for key, value in attributes.items():
            assert after["attributes"][name][key] is value, f"module '{name}' attribute {key} was replaced"
    with torch.no_grad():
        outputs_after = tree_flatten(model(x))[0]
    assert all(torch.equal(a, b) for a, b in zip(outputs_before, outputs_after))


def _run(model: nn.Module, x: torch.Tensor, max_macs_ratio: float, tmp_path) -> None:
    with torch.no_grad():
        outputs_before = tree_flatten(model(x))[0]
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no submodule may fall back to a frozen leaf
        warnings.filterwarnings("ignore", message=".*shapes were propagated on real tensors")
        gm = falf_fx.trace(model, x)
    analysis = falf_fx.analyze(gm)
    result = check_equivalence(model, x, analysis=analysis, seed=0)
    assert result.channels_removed > 0
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert isinstance(slim, type(model)) and isinstance(slim, torch.fx.GraphModule)  # save_pretrained, the trainer
    assert count_cost(slim, x).macs <= max_macs_ratio * count_cost(model, x).macs
    _assert_untouched(model, before, outputs_before, x)
    with torch.no_grad():
        output = slim.eval()(x) if not model.training else slim(x)
    assert type(output) is type(model(x)), "the slim model returns another kind of output"
    falf_fx.save(slim, tmp_path / "slim.pt")
    loaded = falf_fx.load(tmp_path / "slim.pt")
    with torch.no_grad():
        for want, got in zip(tree_flatten(slim(x))[0], tree_flatten(loaded(x))[0]):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(HUGGING_FACE))
def test_hugging_face_model_as_passed(name: str, tmp_path) -> None:
    build, example = HUGGING_FACE[name]
    torch.manual_seed(0)
    _run(build().eval(), example(), 0.8, tmp_path)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_ultralytics_detection_model_as_passed(cfg: str, mode: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = ultralytics(cfg).train(mode == "train")
    _run(model, torch.randn(1, 3, 64, 64), 0.5, tmp_path)


def test_slim_hugging_face_model_keeps_its_class(tmp_path) -> None:
    from falf_fx.library_models import stale_config

    build, example = HUGGING_FACE["vit"]
    model, x = build().eval(), example()
    with pytest.warns(UserWarning, match="config still describes the original widths"):
        slim = falf_fx.prune(model, x, ratio=0.5)
    assert slim.config is not model.config and slim.config.to_dict() == model.config.to_dict()
    stale = stale_config(slim)
    assert stale and all(have != want for have, want in stale.values())
    assert any("intermediate" in name or "q_proj" in name for name in stale)
    slim.save_pretrained(tmp_path)
    saved = __import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "model.safetensors")
    # transformers renames some keys on save: compare the tensors' shapes, which are the slim ones
    assert sorted(v.shape for v in saved.values()) == sorted(v.shape for v in slim.state_dict().values())
    assert sum(v.numel() for v in saved.values()) < sum(v.numel() for v in model.state_dict().values())


def test_slim_yolo_trains_with_the_ultralytics_loss() -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    torch.manual_seed(0)
    slim = falf_fx.prune(ultralytics("yolov8n.yaml").train(), torch.randn(1, 3, 64, 64), ratio=0.5)
    assert type(slim.model[-1]).__name__ == "Detect" and slim.model[-1].nc == 80
    slim.args = get_cfg()  # what the Ultralytics trainer sets before it builds the loss
    batch = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]]), "img": torch.zeros(2, 3, 64, 64)}
    loss, items = v8DetectionLoss(slim)(slim(torch.randn(2, 3, 64, 64)), batch)
    assert torch.isfinite(loss).all() and len(items) == 3  # box, class and distribution focal losses
    loss.sum().backward()
    assert all(p.grad is not None for p in slim.parameters() if p.requires_grad)


def test_a_model_run_before_pruning_prunes_the_same() -> None:
    """YOLO's Detect caches its anchors and input shape on the first call: the trace must not depend on it."""
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    fresh = ultralytics("yolov8n.yaml").eval()
    used = ultralytics("yolov8n.yaml").eval()
    used.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        used(x)
    count_cost(used, x)
    widths = [{n: p.shape for n, p in falf_fx.prune(m, x, ratio=0.5).named_parameters()} for m in (fresh, used)]
    assert widths[0] == widths[1]


def _squares(outputs, batch) -> torch.Tensor:
    """A loss for any output structure: the mean square of every floating tensor in it."""
    return sum(t.pow(2).mean() for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor) and t.is_floating_point())


def _compress_untouched(model: nn.Module, inputs: torch.Tensor) -> falf_fx.CompressResult:
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.long))
    x = inputs[:2]
    with torch.no_grad():
        outputs_before = tree_flatten(model(x))[0]
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = falf_fx.compress(model, DataLoader(data, batch_size=4), target_macs=0.8, finetune_epochs=1,
                                  loss_fn=_squares, progress=False, measure_latency=False)
    _assert_untouched(model, before, outputs_before, x)
    assert result.report["macs_ratio"] < 1.0
    return result


@pytest.mark.parametrize("name", sorted(HUGGING_FACE))
def test_compress_leaves_a_hugging_face_model_untouched(name: str) -> None:
    build, example = HUGGING_FACE[name]
    torch.manual_seed(0)
    _compress_untouched(build().eval(), torch.cat([example()] * 4))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_compress_leaves_a_yolo_model_untouched(cfg: str) -> None:
    torch.manual_seed(0)
    _compress_untouched(ultralytics(cfg).train(), torch.randn(8, 3, 64, 64))


def test_compress_a_hugging_face_model_with_its_own_loss() -> None:
    """compress with the user's loss on a ModelOutput: the target met, the output type kept."""
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    build, _ = HUGGING_FACE["resnet"]
    torch.manual_seed(0)
    model = build().eval()
    data = TensorDataset(torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,)))
    result = falf_fx.compress(model, DataLoader(data, batch_size=8), target_macs=0.5, finetune_epochs=1,
                              loss_fn=lambda out, batch: F.cross_entropy(out.logits, batch[1]), progress=False,
                              measure_latency=False)
    assert result.report["target"]["met"] and result.report["macs_ratio"] <= 0.5
    assert type(result.model(data.tensors[0][:2])).__name__ == "ImageClassifierOutputWithNoAttention"
