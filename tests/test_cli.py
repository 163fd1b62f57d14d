import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import falf_fx
from torch import nn

from falf_fx.cli import main
from falf_fx.flops import count_cost
from falf_fx.model_spec import ModelSpecError, load_model
from falf_fx.models import lenet5, resnet20

R20 = ["falf_fx.models:resnet20", "--input-shape", "1,3,32,32"]


class _DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def untraceable() -> nn.Module:
    return _DataDependent()


def with_untraceable_block() -> nn.Module:
    return nn.Sequential(_DataDependent(), nn.Conv2d(4, 2, 1))


def _run_json(capsys, *argv):
    assert main(list(argv) + ["--format", "json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """One `prune` run shared by the tests that read its report or its file."""
    out = tmp_path_factory.mktemp("prune") / "slim.pt"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(["prune", *R20, "--ratio", "0.5", "--out", str(out), "--format", "json"])
    assert status == 0
    return json.loads(buffer.getvalue()), out


def test_flops_json_matches_fvcore(capsys):
    data, _ = _run_json(capsys, "flops", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28")
    expected = count_cost(lenet5().eval(), torch.randn(1, 1, 28, 28))
    assert (data["macs"], data["params"]) == (expected.macs, expected.params)
    assert data["flops"] == 2 * data["macs"]


def test_prune_json_reports_smaller_model(pruned):
    data, out = pruned
    assert data["after"]["macs"] < data["before"]["macs"]
    assert data["after"]["params"] < data["before"]["params"]
    assert data["after_over_before"]["macs"] == pytest.approx(data["after"]["macs"] / data["before"]["macs"])
    assert data["out"] == str(out) and data["settings"]["importance"] == "l1"


def test_prune_to_a_parameter_target_reports_what_it_reached(capsys):
    data, _ = _run_json(capsys, "prune", *R20, "--target-params", "0.4", "--allocation", "cost")
    assert data["settings"]["target_params"] == 0.4 and data["settings"]["allocation"] == "cost"
    assert data["target"]["met"] and data["target"]["kind"] == "target_params"
    assert data["after"]["params"] / data["before"]["params"] == pytest.approx(data["target"]["reached"], abs=1e-6)


def test_prune_out_file_loads_back_and_runs(pruned, capsys):
    data, out = pruned
    slim = falf_fx.load(out)
    assert slim.conv1.out_channels == 8
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    again, _ = _run_json(capsys, "flops", str(out), "--input-shape", "1,3,32,32")  # a saved file is a MODEL too
    assert again["macs"] == data["after"]["macs"]


def test_prune_text_table_and_round_to(tmp_path, capsys):
    out = tmp_path / "slim.pt"
    argv = ["prune", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28", "--ratio", "0.4", "--round-to", "8",
            "--importance", "random", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Before" in text and "After / before" in text and "FLOPs = 2 x MACs" in text
    assert f"saved the slim model to {out}" in text
    assert falf_fx.load(out).get_submodule("0").out_channels == 16  # keep 20 - 8 = 12, rounded up


def test_groups_json_lists_frozen_reasons(capsys):
    data, _ = _run_json(capsys, "groups", *R20)
    assert data["num_groups"] == len(data["groups"]) == 13
    frozen = [g for g in data["groups"] if g["prunable"] == 0]
    assert [g["producers"] for g in frozen] == [["fc"]]
    assert "model output" in frozen[0]["frozen_reasons"][0]
    assert 0.99 < data["prunable_macs_share"] <= 1.0


def test_groups_text_shows_table_and_tree(capsys):
    assert main(["groups", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28"]) == 0
    text = capsys.readouterr().out
    assert "Frozen because" in text and "Frozen channels, by reason" in text and "model output" in text


@pytest.mark.parametrize("command", ["graph", "groups"])
def test_dot_output(command, capsys):
    assert main([command, *R20, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph") and '"conv1" -> "bn1";' in dot and "1×16×32×32" in dot


def test_graph_json_nodes(capsys):
    data, _ = _run_json(capsys, "graph", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28")
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["_0"]["shape"] == [1, 20, 24, 24] and nodes["_0"]["groups"] == [0]
    assert nodes["output"]["inputs"] == ["_9"]


def test_auto_leaf_is_reported(capsys):
    data, err = _run_json(capsys, "groups", "tests.test_cli:with_untraceable_block", "--input-shape", "1,3,4,4")
    assert list(data["auto_leaves"]) == ["0"]
    assert "warning: falf_fx: submodule '0' cannot be traced" in err


@pytest.mark.parametrize("argv, message", [
    (["flops", "no_such_pkg.models:net"], "cannot import module 'no_such_pkg.models'"),
    (["flops", "falf_fx.models:resnet21"], "module 'falf_fx.models' has no attribute 'resnet21'"),
    (["flops", "falf_fx.models:__all__"], "is a list, not a model factory"),
    (["flops", "missing/slim.pt"], "model file 'missing/slim.pt' does not exist"),
    (["flops", "resnet20"], "neither 'package.module:factory'"),
    (["flops", *R20[:1], "--input-shape", "1,3,x"], "--input-shape must be comma-separated integers"),
    (["flops", *R20[:1], "--input-shape", "1,5,32,32"], "does not run on example inputs of shape (1, 5, 32, 32)"),
    (["groups", "tests.test_cli:untraceable", "--input-shape", "1,3,4,4"], "torch.fx cannot trace _DataDependent"),
    (["prune", *R20, "--ratio", "1.5"], "--ratio must be strictly between 0 and 1"),
    (["prune", *R20, "--out", "no/such/dir/slim.pt"], "directory 'no/such/dir' does not exist"),
    (["prune", *R20, "--ratio", "0.5", "--target-macs", "0.3"], "give one of --ratio, --target-macs"),
    (["prune", *R20, "--target-latency", "2"], "--target-latency must be strictly between 0 and 1"),
    (["prune", *R20, "--target-macs", "0.3", "--round-to", "8"], "--round-to goes with --ratio"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def test_dot_is_rejected_for_flops(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", *R20, "--format", "dot"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'dot'" in capsys.readouterr().err


def test_model_spec_literal_arguments_only():
    model = load_model("falf_fx.models:resnet_cifar(depth=32, num_classes=7)")
    assert len(model.layer1) == 5 and model.fc.out_features == 7
    with pytest.raises(ModelSpecError, match="must be Python literals"):
        load_model("falf_fx.models:resnet_cifar(depth=__import__('os').getpid())")


def test_model_spec_rejects_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(resnet20().state_dict(), path)
    with pytest.raises(ModelSpecError, match="holds a dict"):
        load_model(str(path))


def test_console_script_end_to_end():
    script = Path(sys.executable).with_name("falf-fx")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "falf_fx.cli"]
    result = subprocess.run(command + ["flops", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28",
                                       "--format", "json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["macs"] > 0
    assert result.stderr == ""  # no library warnings leak into the terminal


def test_model_spec_refuses_a_pickled_module(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(resnet20(), path)  # a pickle: loading it would run whatever code it names
    with pytest.raises(ModelSpecError, match=r"not a falf_fx\.save file .*never unpickles.*falf_fx\.save\(falf_fx\.trace"):
        load_model(str(path))
