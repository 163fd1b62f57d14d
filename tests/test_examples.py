"""Every example script runs end to end in-process on tiny settings and prints a table with fewer MACs."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_data import _cifar_images, _write_cifar_batch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--epochs", "1", "--max-batches", "2", "--rounds", "1", "--finetune-epochs", "1", "--batch-size", "16"]


@pytest.fixture
def run_example(monkeypatch, capsys):
    """main(argv) of examples/<name>.py; returns its CompressResult and what it printed."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as `python examples/<name>.py` would, for `import common`

    def run(name: str, *argv: str):
        result = importlib.import_module(name).main([*TINY, *argv])
        return result, capsys.readouterr().out

    threads = torch.get_num_threads()
    yield run
    torch.set_num_threads(threads)  # the digits demo pins one thread; later tests get theirs back


def _printed_macs_ratio(text: str) -> float:
    """The 'After / before' cell of the table's MACs row."""
    row = next(line for line in text.splitlines() if line.startswith("│ MACs "))
    return float(row.split("│")[-2])


def _check_reduced(result, text: str) -> None:
    assert result.report["after"]["macs"] < result.report["before"]["macs"]
    assert _printed_macs_ratio(text) == pytest.approx(result.report["macs_ratio"], abs=5e-4)
    assert _printed_macs_ratio(text) < 1.0


def test_lenet5_digits(run_example):
    result, text = run_example("lenet5_digits", "--limit", "64")
    _check_reduced(result, text)
    assert "LeNet-5 on digits, falf" in text


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A CIFAR-10 folder in the real pickle format: 5 train batches of 8 random images, a test batch of 16."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", _cifar_images(8, i), [(8 * i + k) % 10 for k in range(8)])
    _write_cifar_batch(folder / "test_batch", _cifar_images(16, 0), [k % 10 for k in range(16)])
    return folder


def test_resnet_cifar_reads_the_folder(run_example, cifar_dir):
    result, text = run_example("resnet_cifar", "--data-dir", str(cifar_dir), "--arch", "resnet20", "--limit", "32",
                               "--method", "magnitude")
    _check_reduced(result, text)
    assert "resnet20 on CIFAR-10, magnitude" in text
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenetv2_synthetic(run_example):
    result, text = run_example("mobilenetv2_synthetic", "--limit", "40", "--method", "magnitude")
    _check_reduced(result, text)


def test_c3d_synthetic_slims_3d_convs_with_falf(run_example):
    result, text = run_example("c3d_synthetic", "--limit", "40")
    _check_reduced(result, text)
    assert result.report["method"] == "falf"
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 3 and sum(m.out_channels for m in convs) < 16 + 32 + 64
    assert result.model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 10)


TASK_TINY = ["--epochs", "1", "--max-batches", "2", "--limit", "8", "--finetune-epochs", "1", "--batch-size", "4"]


@pytest.mark.parametrize("arch", ["fasterrcnn", "ssdlite", "yolov8n"])
def test_detection_synthetic(run_example, arch):
    result, text = run_example("detection_synthetic", *TASK_TINY, "--arch", arch)
    _check_reduced(result, text)
    assert "mAP@0.5" in text and f"{arch} on synthetic shapes, falf" in text


def test_segmentation_synthetic(run_example):
    result, text = run_example("segmentation_synthetic", *TASK_TINY)
    _check_reduced(result, text)
    assert "mIoU" in text and result.report["metric"] == "miou"


def test_step_api_loop_saves_a_state_to_resume_from(run_example, tmp_path):
    state = tmp_path / "run.pt"
    result, text = run_example("step_api_loop", "--limit", "64", "--state", str(state))
    _check_reduced(result, text)
    assert "round 1: fatuous" in text and "round 1: finetune" in text
    assert torch.load(state, weights_only=True)["round"] == -1  # saved during the only round: none finished yet


def test_hf_trainer_drives_the_step_api(run_example):
    result, text = run_example("hf_trainer_step_api", "--limit", "64", "--batch-size", "32")
    _check_reduced(result, text)
    assert "round 1: fatuous, 1 epoch(s), by the Hugging Face Trainer" in text and "Top-1 accuracy" in text
