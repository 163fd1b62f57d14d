"""HetConv: the layer against a literal reference, its cost, the rewrite pass, and composition with pruning."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader, TensorDataset

import falf_fx
from falf_fx.cli import main as cli_main
from falf_fx.flops import count_cost
from falf_fx.models import vgg16_cifar
from falf_fx.testing import check_equivalence
from falf_fx.passes.hetconv import HETCONV_KEY, HetConv2d, HetConvPass
from tests.conftest import randomize_norms


def literal_hetconv(x, kxk, one, bias, p, stride):
    """The paper's layer built filter by filter: filter n has a 3×3 kernel on channel c when c ≡ n (mod P),
    a 1×1 kernel otherwise, and sums its per-channel convolutions."""
    n_filters, m = one.shape
    outputs = []
    for n in range(n_filters):
        total = 0
        for c in range(m):
            channel = x[:, c:c + 1]
            if c % p == n % p:
                total = total + F.conv2d(channel, kxk[n, c].view(1, 1, 3, 3), stride=stride, padding=1)
            else:
                total = total + F.conv2d(channel, one[n, c].view(1, 1, 1, 1), stride=stride)
        outputs.append(total + (bias[n] if bias is not None else 0))
    return torch.cat(outputs, 1)


def residue_order(count: int, p: int) -> torch.Tensor:
    """Block position -> channel: block s holds the channels ≡ s (mod P), in order (the relabelling)."""
    return torch.cat([torch.arange(s, count, p) for s in range(p)])


@pytest.mark.parametrize("p,stride,bias", list(itertools.product((1, 2, 4, 8), (1, 2), (True, False))))
def test_layer_equals_the_literal_shifted_pattern_up_to_the_channel_relabelling(p, stride, bias):
    m, n = 8, 16
    g = torch.Generator().manual_seed(p * 10 + stride)
    x = torch.randn(2, m, 7, 7, generator=g, dtype=torch.float64)
    kxk = torch.randn(n, m, 3, 3, generator=g, dtype=torch.float64)
    one = torch.randn(n, m, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    expected = literal_hetconv(x, kxk, one, b, p, stride)

    rows, cols = residue_order(n, p), residue_order(m, p)
    dense = torch.randn(n, m, 3, 3, generator=g, dtype=torch.float64)  # taps HetConv must ignore stay random
    dense[:, :, 1, 1] = one
    kept = torch.tensor([[c % p == r % p for c in range(m)] for r in range(n)])
    dense[kept] = kxk[kept]
    layer = HetConv2d(m, n, 3, p, stride, bias=bias, dtype=torch.float64)
    layer.load_dense(dense[rows][:, cols])
    if bias:
        with torch.no_grad():
            layer.spatial.bias.copy_(b[rows])
    got = layer(x[:, cols])
    torch.testing.assert_close(got, expected[:, rows], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_layer_spends_exactly_the_designed_multiply_adds(p):
    m, n, side = 16, 32, 6
    layer = HetConv2d(m, n, 3, p, bias=False)
    x, hw = torch.randn(1, m, side, side), side * side
    cost = count_cost(layer, x)
    assert cost.macs == n * (m // p) * 9 * hw + n * (m - m // p) * hw
    assert cost.params == n * (m // p) * 9 + n * (m - m // p)
    dense = count_cost(nn.Conv2d(m, n, 3, padding=1, bias=False), x).macs
    assert cost.macs * 9 * p == dense * (9 + p - 1)  # the ratio 1/P + (1 - 1/P)/9


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 3, 1)])
def test_from_conv_keeps_own_kernels_and_centre_taps(stride, padding, dilation):
    p, m, n = 4, 8, 12
    conv = nn.Conv2d(m, n, 3, stride, padding, dilation).double()
    blocks = torch.arange(n).unsqueeze(1) // (n // p) == torch.arange(m).unsqueeze(0) // (m // p)
    masked = conv.weight.detach().clone()
    centre = masked[:, :, 1, 1].clone()
    masked[~blocks] = 0
    masked[:, :, 1, 1][~blocks] = centre[~blocks]
    x = torch.randn(2, m, 9, 9, dtype=torch.float64)
    expected = F.conv2d(x, masked, conv.bias, stride, padding, dilation)
    torch.testing.assert_close(HetConv2d.from_conv(conv, p)(x), expected, rtol=1e-12, atol=1e-12)


def test_layer_refuses_what_it_cannot_be():
    with pytest.raises(ValueError, match="divisor"):
        HetConv2d(6, 8, 3, p=4)
    with pytest.raises(ValueError, match="odd size"):
        HetConv2d(8, 8, 2, p=4)
    with pytest.raises(ValueError, match="centre taps"):
        HetConv2d(8, 8, 3, p=4, padding=0)
    with pytest.raises(ValueError, match="groups=2"):
        HetConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, groups=2), 4)


class Mixed(nn.Module):
    """First conv, a convertible 3×3, a 1×1, a stride-3 3×3, one with 6 channels, a shared conv, a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.point = nn.Conv2d(8, 8, 1)
        self.odd = nn.Conv2d(8, 6, 3, padding=1)
        self.back = nn.Conv2d(6, 8, 1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.down = nn.Conv2d(8, 8, 3, stride=3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.body(x) + self.point(x)
        x = self.back(self.odd(x))
        x = self.shared(self.shared(x).relu())
        return self.head(self.down(x).mean((2, 3)))


def test_default_selection_converts_3x3_convs_and_says_why_others_stay():
    model = randomize_norms(Mixed()).eval()
    x = torch.randn(2, 3, 12, 12)
    before = model(x)
    het = falf_fx.hetconv(model, x, p=4)
    record = het.meta[HETCONV_KEY]
    assert record["converted"] == ["body.0", "shared"]
    assert set(record["skipped"]) == {"stem", "odd", "down"}
    assert "first conv" in record["skipped"]["stem"]
    assert "divisible by P=4" in record["skipped"]["odd"]
    assert "stride (3, 3)" in record["skipped"]["down"]
    spatial = het.get_submodule("body.0.spatial")
    assert isinstance(spatial, nn.Conv2d) and spatial.groups == 4
    assert sum(n.target == "shared.spatial" for n in het.graph.nodes) == 2  # both calls of the shared conv
    assert torch.equal(model(x), before)  # the original is untouched
    assert het(x).shape == before.shape


def test_selection_by_pattern_or_callable():
    model, x = Mixed(), torch.randn(1, 3, 12, 12)
    het = falf_fx.hetconv(model, x, p=2, select=["stem", "point", "down"])
    assert het.meta[HETCONV_KEY]["converted"] == ["down"]  # an explicit choice is not limited to strides 1, 2
    assert "3 input and 8 output channels" in het.meta[HETCONV_KEY]["skipped"]["stem"]
    assert het.meta[HETCONV_KEY]["skipped"]["point"] == "kernel 1x1: already pointwise"
    het = falf_fx.hetconv(model, x, p=2, select=lambda name, conv: conv.kernel_size == (3, 3) and conv.stride == (1, 1))
    assert het.meta[HETCONV_KEY]["converted"] == ["body.0", "odd", "shared"]
    with pytest.raises(ValueError, match="matches no conv"):
        falf_fx.hetconv(model, x, select="layer*.conv2")


def test_vgg16_cifar_macs_match_the_paper():
    x = torch.randn(1, 3, 32, 32)
    gm = falf_fx.trace(vgg16_cifar().eval(), x)
    assert abs(count_cost(gm, x).macs / 313.74e6 - 1) < 0.005
    for p, paper in ((4, 105.98e6), (8, 71.35e6)):
        het = falf_fx.hetconv(gm, x, p=p)
        assert len(het.meta[HETCONV_KEY]["converted"]) == 12
        assert abs(count_cost(het, x).macs / paper - 1) < 0.005


def small_resnet():
    return randomize_norms(falf_fx.models.resnet_cifar(8, num_classes=5)).eval()


def test_analysis_prunes_hetconv_channels_a_block_position_at_a_time():
    x = torch.randn(2, 3, 16, 16)
    het = falf_fx.hetconv(small_resnet(), x, p=4)
    analysis = falf_fx.analyze(het)
    by_producer = {g.producers[0]: g for g in analysis.groups}
    assert by_producer["layer2.0.conv1.spatial"].size == 32 // 4  # one channel = one position in each of 4 blocks
    assert all(g.prunable for g in analysis.groups if "spatial" in g.producers[0])
    check_equivalence(het, x, seed=0, analysis=analysis)


def test_hetconv_then_prune_and_prune_then_hetconv():
    x = torch.randn(2, 3, 16, 16)
    model = small_resnet()
    slim_het = falf_fx.prune(falf_fx.hetconv(model, x, p=4), x, ratio=0.5)
    assert slim_het.get_submodule("layer3.0.conv1.spatial").out_channels == 32
    assert slim_het.get_submodule("layer3.0.conv1.spatial").groups == 4
    het_slim = falf_fx.hetconv(falf_fx.prune(model, x, ratio=0.5), x, p=4)
    assert het_slim.meta[HETCONV_KEY]["converted"] == ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                                       "layer2.0.conv2", "layer3.0.conv1", "layer3.0.conv2"]
    for gm in (slim_het, het_slim):
        assert gm(x).shape == (2, 5)
        assert count_cost(gm, x).macs < count_cost(model, x).macs / 2


def test_hetconv_then_compress():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))
    loader = DataLoader(data, batch_size=32)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    het = falf_fx.hetconv(model, data[:1][0], p=4)
    result = falf_fx.compress(het, loader, method="magnitude", target_macs=0.6, rounds=1, finetune_epochs=1,
                              progress=False)
    assert result.report["macs_ratio"] <= 0.66
    spatial = result.model.get_submodule("3.spatial")
    assert spatial.groups == 4 and spatial.out_channels % 4 == 0 and spatial.out_channels < 16


def test_a_model_built_with_hetconv2d_traces_into_ops_the_analysis_prunes():
    model = randomize_norms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        HetConv2d(8, 16, p=4), nn.BatchNorm2d(16), nn.ReLU(),
        HetConv2d(16, 8, p=2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))).eval()
    x = torch.randn(2, 3, 10, 10)
    analysis = falf_fx.analyze(falf_fx.trace(model, x))
    sizes = {g.producers[0]: (g.size, g.num_prunable) for g in analysis.groups}
    assert sizes["0"] == (2, 2)  # 8 channels feeding P=4: blocks of 2, pruned one position of every block
    assert sizes["3.spatial"] == (4, 4)  # 16 outputs in blocks of 4, read by P=2 in blocks of 8: both hold
    check_equivalence(model, x, seed=1)


def test_pass_runs_in_torch_fx_pass_infrastructure():
    x = torch.randn(1, 3, 12, 12)
    result = HetConvPass(p=2, select="body.*")(falf_fx.trace(Mixed(), x))
    assert result.modified and result.graph_module.meta[HETCONV_KEY]["converted"] == ["body.0"]


def test_save_and_load_keep_a_hetconv_model(tmp_path):
    x = torch.randn(2, 3, 16, 16)
    het = falf_fx.hetconv(small_resnet(), x, p=4).eval()
    falf_fx.save(het, tmp_path / "het.pt")
    loaded = falf_fx.load(tmp_path / "het.pt").eval()
    assert torch.equal(loaded(x), het(x))
    assert loaded.meta[HETCONV_KEY]["converted"] == het.meta[HETCONV_KEY]["converted"]


def test_cli_prints_costs_per_layer_and_saves(tmp_path, capsys):
    out = tmp_path / "het.pt"
    args = ["hetconv", "falf_fx.models:resnet_cifar(depth=8)", "--input-shape", "1,3,16,16", "--p", "4"]
    assert cli_main(args + ["--out", str(out)]) == 0 and out.exists()
    text = capsys.readouterr().out
    assert "0.333" in text and "kept standard: conv1: the network's first conv" in text
    assert cli_main(args + ["--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    first = report["layers"][0]
    assert first["name"] == "layer1.0.conv1" and first["macs_after"] * 3 == first["macs_before"]
    assert report["after"]["macs"] < report["before"]["macs"] and "conv1" in report["skipped"]
    assert cli_main(args + ["--select", "nope*"]) == 2
    assert "matches no conv" in capsys.readouterr().err


@pytest.mark.parametrize("p,stride,bias", [(2, 1, True), (4, 2, False), (8, 1, True)])
def test_the_overlap_form_is_the_same_layer_and_converts_back_exactly(p, stride, bias):
    m, n = 16, 32
    g = torch.Generator().manual_seed(p + stride)
    conv = nn.Conv2d(m, n, 3, stride, 1, bias=bias).double()
    x = torch.randn(2, m, 9, 9, generator=g, dtype=torch.float64)
    blocks, overlap = HetConv2d.from_conv(conv, p), HetConv2d.from_conv(conv, p, "overlap")
    torch.testing.assert_close(overlap(x), blocks(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # trained in the overlap form: its own-block 1x1 weights are no longer zero
        for param in overlap.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    back = overlap.as_form("blocks")
    torch.testing.assert_close(back(x), overlap(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back.as_form("overlap")(x), overlap(x), rtol=1e-12, atol=1e-12)
    dense = F.conv2d(x, overlap.dense_weight(), overlap.spatial.bias, stride, 1)
    torch.testing.assert_close(dense, overlap(x), rtol=1e-12, atol=1e-12)


def test_the_overlap_form_spends_n_m_over_p_more_and_gathers_nothing():
    m, n, side, p = 16, 32, 6, 4
    x, hw = torch.randn(1, m, side, side), side * side
    assert count_cost(HetConv2d(m, n, 3, p, bias=False, form="overlap"), x).macs == \
        n * (m // p) * 9 * hw + n * m * hw
    graph = fx.symbolic_trace(HetConv2d(m, n, 3, p, form="overlap")).graph
    assert not [node for node in graph.nodes if node.target is torch.cat]
    with pytest.raises(falf_fx.errors.FalfValueError, match="form must be one of blocks, overlap"):
        HetConv2d(m, n, 3, p, form="fused")


def test_auto_form_keeps_the_form_measured_faster_per_layer(monkeypatch):
    import falf_fx.latency as latency_module

    def seconds(stmt, env, settings):  # a gather costs as much as 12,000 MACs: overlap wins where it adds fewer
        layer = env["model"]
        return (count_cost(layer, env["x"]).macs + (0 if layer.form == "overlap" else 12_000)) * 1e-9

    monkeypatch.setattr(latency_module, "_median_seconds", seconds)
    x = torch.randn(1, 3, 16, 16)
    model = small_resnet()
    het = falf_fx.hetconv(model, x, p=4, form="auto")
    meta = het.meta[HETCONV_KEY]
    assert set(meta["forms"]) == set(meta["converted"]) == set(meta["timings"])
    for name, form in meta["forms"].items():
        assert form == min(meta["timings"][name], key=meta["timings"][name].get)
    assert {name for name, form in meta["forms"].items() if form == "overlap"} == {"layer2.0.conv1", "layer3.0.conv1"}
    blocks = falf_fx.hetconv(model, x, p=4)
    torch.testing.assert_close(het(x), blocks(x), rtol=1e-5, atol=1e-5)
    check_equivalence(het, x, seed=0)
    slim = falf_fx.prune(het, x, ratio=0.5)
    assert slim(x).shape == (1, 5)


def test_cli_converts_in_the_form_asked(capsys):
    args = ["hetconv", "falf_fx.models:resnet_cifar(depth=8)", "--input-shape", "1,3,16,16", "--format", "json"]
    assert cli_main(args + ["--form", "overlap"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["forms"].values()) == {"overlap"} and report["timings"] is None
    first = report["layers"][0]
    assert first["macs_after"] * 36 == first["macs_before"] * 13  # (9/P + 1) / 9 of the dense conv at P=4
    assert cli_main(args + ["--form", "auto", "--threads", "0"]) == 2
    assert "--batch-size and --threads must be positive" in capsys.readouterr().err
