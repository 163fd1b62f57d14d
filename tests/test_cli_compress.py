"""`falf-fx compress`: pretrain on --data, compress, save the slim model and the JSON report; user errors."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

import falf_fx

from falf_fx.cli import main

LENET = ["compress", "falf_fx.models:lenet5", "--data", "digits"]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """One tiny run (1 pretraining epoch, 1 magnitude round, 1 fine-tuning epoch) shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("compress")
    out, report = folder / "slim.pt", folder / "report.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main([*LENET, "--pretrain-epochs", "1", "--target-macs", "0.5", "--rounds", "1", "--finetune-epochs", "1",
                       "--out", str(out), "--report", str(report)])
    assert status == 0
    return stdout.getvalue(), out, json.loads(report.read_text())


def test_report_json_says_macs_went_down(compressed):
    _, out, report = compressed
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["macs_ratio"] == pytest.approx(report["after"]["macs"] / report["before"]["macs"])
    assert report["input_shape"] == [1, 1, 28, 28]  # taken from the digits' first batch
    assert report["settings"]["method"] == "magnitude" and report["settings"]["target_macs"] == 0.5
    assert [r["round"] for r in report["history"]] == [1] and report["history"][0]["kept"]
    assert [r["phase"] for r in report["pretrain"]] == ["pretrain"]
    assert report["before"]["metric"] > 0.5  # one epoch on the digits already learns them
    assert report["out"] == str(out)


def test_out_loads_back_and_runs(compressed):
    _, out, report = compressed
    slim = falf_fx.load(out)
    assert slim(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    widths = {"0": slim.get_submodule("0").out_channels, "3": slim.get_submodule("3").out_channels,
              "7": slim.get_submodule("7").out_features, "9": slim.get_submodule("9").out_features}
    assert widths == report["after"]["widths"]  # the saved file is the model the report describes
    assert sum(widths.values()) < sum(report["before"]["widths"].values())


def test_text_output_is_the_before_after_table(compressed):
    text, out, _ = compressed
    assert "Before" in text and "After / before" in text and "Top-1 accuracy" in text and "CPU latency" in text
    assert "round 1:" in text and f"saved the slim model to {out}" in text


@pytest.mark.parametrize("extra, message", [
    (["--data", "mnist", "--target-macs", "0.5"], "--data must be 'digits', 'synthetic', 'cifar10:PATH'"),
    (["--target-macs", "5"], "--target-macs is the fraction of the original MACs to keep, strictly between 0 and 1"),
    ([], "give --target-macs (e.g. 0.25 of the original MACs) or --target-latency"),
    (["--target-macs", "0.5", "--target-latency", "0.5"], "give --target-macs or --target-latency, not both"),
    (["--target-latency", "1.2"], "--target-latency is the fraction of the measured latency to keep"),
    (["--tolerance", "0.01", "--resume"], "--resume continues from --checkpoint-dir"),
    (["--target-macs", "0.5", "--input-shape", "1,3,32,32"],
     "does not run on inputs of shape (1, 3, 32, 32) from --data digits"),
    (["--target-macs", "0.0001"], "target_macs=0.0001 cannot be reached"),
    (["--target-macs", "0.5", "--method", "falf", "--method-option", "score=bogus"], "FALF score must be one of"),
    (["--target-macs", "0.5", "--method-option", "score"], "--method-option must be KEY=VALUE"),
])
def test_user_errors_exit_2_with_one_line(extra, message, tmp_path, capsys):
    out = tmp_path / "slim.pt"
    argv = [*LENET, *extra, "--out", str(out)]
    if "--data" in extra:
        argv = [*LENET[:2], *extra, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
