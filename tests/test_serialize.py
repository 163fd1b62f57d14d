"""falf_fx.save/load: plain-data round trips are exact, unsafe models and foreign files are refused."""
from __future__ import annotations

import io
import math
import pickletools
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.models.vision_transformer import VisionTransformer

import falf_fx
from falf_fx.models import resnet20
from falf_fx.serialize import FORMAT
from falf_fx.testing import check_equivalence
from tests.conftest import randomize_norms


class _Mixed(nn.Module):
    """Parameters and buffers outside layers, dtype/device/slice arguments, a split, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4 + 4, 5)
        self.scale = nn.Parameter(torch.rand(8, 1, 1))
        self.register_buffer("offset", torch.randn(8, 1, 1), persistent=False)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        y = self.bn(self.conv(x)) * self.scale + self.offset
        a, b = torch.split(self.head(F.max_pool2d(y, 2)), 4, dim=1)
        y = torch.cat([b, a[:, 0:4]], 1).to(torch.float32)
        y = F.interpolate(y, size=(4, 4), mode="bilinear", align_corners=False)
        ramp = torch.arange(4, dtype=torch.float32, device=x.device) * math.sqrt(2.0)
        return self.drop(self.fc(torch.cat([y.reshape(y.size(0), -1), ramp.expand(x.shape[0], 4)], dim=1)))


def _round_trip(gm: fx.GraphModule) -> fx.GraphModule:
    buffer = io.BytesIO()
    falf_fx.save(gm, buffer)
    buffer.seek(0)
    return falf_fx.load(buffer)


def _names(gm: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in gm.named_modules(remove_duplicate=False)]


MODELS = {
    "resnet20": lambda: resnet20(),
    "shufflenet_small_config": lambda: ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=10),
    "convnext_small_config": lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
    "vit_small_config": lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                  hidden_dim=32, mlp_dim=64, num_classes=10),
}


@pytest.mark.parametrize("name", MODELS)
def test_slim_model_round_trip_is_exact(name):
    model = randomize_norms(MODELS[name]()).eval()
    x = torch.randn(2, 3, 32, 32)
    slim = falf_fx.prune(model, x, ratio=0.5)
    loaded = _round_trip(slim)
    assert _names(loaded) == _names(slim)
    assert loaded.state_dict().keys() == slim.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in slim.state_dict().items())
    assert loaded.meta["falf_fx.removed"] == slim.meta["falf_fx.removed"]
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))


def test_round_trip_keeps_modes_frozen_parameters_and_extra_tensors():
    model = _Mixed()
    x = torch.randn(2, 3, 16, 16)
    gm = falf_fx.trace(model, x)
    gm.bn.eval()  # a frozen BatchNorm inside a model in train mode
    gm.conv.weight.requires_grad_(False)
    loaded = _round_trip(gm)
    assert loaded.training and not loaded.bn.training and loaded.drop.training
    assert not loaded.conv.weight.requires_grad and loaded.scale.requires_grad
    assert isinstance(loaded.scale, nn.Parameter) and torch.equal(loaded.offset, gm.offset)
    assert "offset" not in loaded.state_dict()
    assert _names(loaded) == _names(gm)
    torch.manual_seed(1)
    expected = gm(x)
    torch.manual_seed(1)
    assert torch.equal(loaded(x), expected)  # same dropout draws: the graph is the same


def test_loaded_model_prunes_again_exactly():
    x = torch.randn(2, 3, 32, 32)
    loaded = _round_trip(falf_fx.prune(randomize_norms(MODELS["shufflenet_small_config"]()).eval(), x, ratio=0.5))
    result = check_equivalence(loaded, x, seed=1)
    assert result.channels_removed > 0


def test_shared_modules_and_tied_weights_stay_shared():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("again", (graph.call_module("second", (graph.call_module("first", (x,)),)),)))
    gm = fx.GraphModule({"first": first, "second": second, "again": first}, graph)
    loaded = _round_trip(gm)
    assert loaded.again is loaded.first and loaded.second.weight is loaded.first.weight
    assert loaded.second.bias is not loaded.first.bias
    assert _names(loaded) == _names(gm)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), gm(x))


class _UserBlock(nn.Module):
    def forward(self, x):
        return x * 2


def test_user_class_leaf_is_refused_with_the_pickle_alternative():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _UserBlock())
    gm = falf_fx.trace(model, torch.randn(1, 3, 8, 8), leaf_modules=[_UserBlock])
    with pytest.raises(ValueError, match=r"module '1' is a .*_UserBlock.*torch\.save\(gm\)"):
        falf_fx.save(gm, io.BytesIO())


def test_hooks_are_refused():
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4)))
    gm.get_submodule("0").register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match=r"module '0' \(Linear\) has hooks"):
        falf_fx.save(gm, io.BytesIO())


def test_foreign_files_are_refused(tmp_path):
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4)))
    pickled, weights, text = tmp_path / "pickled.pt", tmp_path / "weights.pt", tmp_path / "notes.txt"
    torch.save(gm, pickled)
    torch.save(gm.state_dict(), weights)
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"not a falf_fx\.graph/1 file: torch\.load\(weights_only=True\) refused it"):
        falf_fx.load(pickled)
    with pytest.raises(ValueError, match=r"not a falf_fx\.graph/1 file \(found None\)"):
        falf_fx.load(weights)
    with pytest.raises(ValueError, match=r"not a falf_fx\.graph/1 file"):
        falf_fx.load(text)


def _globals_in(buffer: io.BytesIO) -> set[str]:
    """Every global (function or class) the file's pickle stream would look up while loading."""
    with zipfile.ZipFile(buffer) as archive:
        stream = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    found = set()
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("STACK_GLOBAL", "INST", "OBJ"):
            found.add(opcode.name)  # names built at run time: never expected here
        elif opcode.name == "GLOBAL":
            found.add(arg)
    return found


def _is_tensor_rebuild(name: str) -> bool:
    return name in ("torch._utils _rebuild_tensor_v2", "collections OrderedDict") or (
        name.startswith("torch ") and name.endswith("Storage"))


def test_file_holds_only_plain_data_and_tensors():
    slim = falf_fx.prune(_Mixed().eval(), torch.randn(2, 3, 16, 16), ratio=0.5)
    ours, pickled = io.BytesIO(), io.BytesIO()
    falf_fx.save(slim, ours)
    torch.save(slim, pickled)
    ours.seek(0)
    pickled.seek(0)
    assert all(_is_tensor_rebuild(g) for g in _globals_in(ours))  # nothing but tensor storage is rebuilt
    assert not all(_is_tensor_rebuild(g) for g in _globals_in(pickled))  # the check sees what pickle runs
    ours.seek(0)
    data = torch.load(ours, weights_only=True)
    assert data["format"] == FORMAT

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))

    assert plain(data)
    assert {n["target"] for n in data["graph"] if n["op"] == "call_function"} >= {
        "torch.nn.functional.max_pool2d", "torch.split", "operator.getitem"}


def _tampered(edit) -> io.BytesIO:
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    buffer = io.BytesIO()
    falf_fx.save(gm, buffer)
    buffer.seek(0)
    data = torch.load(buffer, weights_only=True)
    edit(data)
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return buffer


def _call(data, op, target, args):
    output = data["graph"].pop()
    data["graph"].append({"op": op, "name": "evil", "target": target, "args": args, "kwargs": {}})
    data["graph"].append(output)


@pytest.mark.parametrize("edit, message", [
    (lambda d: _call(d, "call_function", "os.system", ["echo hi"]), r"refusing to call 'os\.system'"),
    (lambda d: _call(d, "call_function", "builtins.eval", ["1"]), r"refusing to call 'builtins\.eval'"),
    (lambda d: _call(d, "call_function", "torch.load", ["x.pt"]), r"refusing to call 'torch\.load'"),
    (lambda d: _call(d, "call_function", "torch.hub.load", ["a", "b"]), r"refusing to call 'torch\.hub\.load'"),
    (lambda d: _call(d, "call_function", "builtins.getattr", [{"node": "input_1"}, "__class__"]),
     r"refusing getattr with attribute \('__class__',\)"),
    (lambda d: _call(d, "call_method", "__reduce_ex__", [{"node": "input_1"}, 2]),
     r"refusing method '__reduce_ex__'"),
    (lambda d: d["modules"]["0"].update({"class": "collections.OrderedDict"}),
     r"module '0': refusing class 'collections\.OrderedDict'"),
    # names reach the forward() that fx generates and executes: they must not smuggle in code
    (lambda d: d["graph"][0].update({"target": "x=print('pwned')"}), r"refusing the argument name"),
    (lambda d: d["modules"].update({'0"),print("pwned"),("': d["modules"].pop("0")}), r"refusing the name"),
    (lambda d: d["graph"][1].update({"kwargs": {"x=print('pwned'),y": 1}}), r"refusing keyword names"),
])
def test_tampered_files_are_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        falf_fx.load(_tampered(edit))
