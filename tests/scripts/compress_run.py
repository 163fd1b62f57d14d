"""A small compress run with round checkpoints, the same in a test process and in a child that gets killed.

    python -m tests.scripts.compress_run DIR [--stall-round-write]

--stall-round-write: the round-state write stops half-way (half the bytes flushed, then a
sleep), so the parent can kill the process in the middle of writing a checkpoint.
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import torch
from torch import nn

import falf_fx
from falf_fx.data import digits_loaders

OPTIONS = dict(target_macs=0.4, rounds=2, finetune_epochs=4, seed=1, progress=False, measure_latency=False)


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def run(directory, resume: bool = False) -> falf_fx.CompressResult:
    torch.set_num_threads(1)  # the same arithmetic in the child and in the test
    train, val = digits_loaders(image_size=8, batch_size=64, seed=0)
    return falf_fx.compress(build(), train, val_loader=val, checkpoint_dir=directory, resume=resume, **OPTIONS)


def _stall_round_writes(marker: Path) -> None:
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        if not str(f).endswith("compress.pt.partial"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as handle:
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
        marker.touch()
        time.sleep(600)  # killed here, half-way through the write

    torch.save = torn_save


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    if "--stall-round-write" in sys.argv:
        _stall_round_writes(directory.parent / "stalled")
    run(directory)
