"""FALF on a detector: does it keep mAP@0.5 at half the MACs?  (issue 13's detection benchmark)

Protocol, per seed: torchvision's Faster R-CNN MobileNetV3-FPN (random init, 11 classes, images at 128 px) is
trained 24 epochs on 512 seeded synthetic shape scenes (``falf_fx.data_tasks.ShapesDetection``; SGD, peak lr
0.02, warm-up + cosine), then compressed to half its MACs by ``magnitude`` and by ``falf`` from the same
weights, each with 4 fine-tuning epochs at lr 0.01, and scored by torchmetrics' mAP@0.5 on 128 held-out scenes.
Results go to ``results/detection.json`` after every seed; 26 to 42 minutes a seed on this 2-core machine.

    python benchmarks/detection.py --seeds 0,1,2 [--resume]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

import falf_fx
from falf_fx.data_tasks import ShapesDetection, detection_collate
from falf_fx.metrics import mean_average_precision
from falf_fx.training import TrainConfig, inputs_and_targets, train

SIZE, TRAIN, VAL, BATCH = 128, 512, 128, 8
PRETRAIN_EPOCHS, FINETUNE_EPOCHS, TARGET = 24, 4, 0.5
RESULTS = Path(__file__).parent / "results" / "detection.json"


def _losses(outputs, batch):
    return outputs  # torchvision's detectors return their losses in training mode; compress sums them


def run_seed(seed: int) -> dict:
    torch.manual_seed(seed)
    train_loader = DataLoader(ShapesDetection(TRAIN, SIZE, seed=seed), batch_size=BATCH, shuffle=True,
                              collate_fn=detection_collate, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(ShapesDetection(VAL, SIZE, seed=1000), batch_size=16, collate_fn=detection_collate)
    map50 = mean_average_precision(val_loader, "map_50")
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=11, min_size=SIZE, max_size=SIZE)
    steps = len(train_loader)
    start = time.perf_counter()
    for block in range(PRETRAIN_EPOCHS // 4):  # one schedule, evaluated every 4 epochs
        train(model, train_loader, _losses, TrainConfig(epochs=4, lr=0.02, seed=seed * 100 + block, warmup=0.05,
                                                        horizon=PRETRAIN_EPOCHS * steps, offset=block * 4 * steps),
              forward=inputs_and_targets, progress=False)
    row = {"seed": seed, "unpruned": map50(model), "pretrain_seconds": round(time.perf_counter() - start)}
    for method in ("magnitude", "falf"):
        result = falf_fx.compress(copy.deepcopy(model), train_loader, method=method, loss_fn=_losses,
                                  forward=inputs_and_targets, evaluate=map50, val_loader=val_loader,
                                  target_macs=TARGET, finetune_epochs=FINETUNE_EPOCHS, finetune_lr=0.01, seed=seed,
                                  progress=False, measure_latency=False)
        row[method] = {"map50": result.report["after"]["metric"], "macs_ratio": result.report["macs_ratio"],
                       "budget": result.report["budget"]}
    return row


def _summary(rows: list[dict]) -> dict:
    summary = {}
    for key in ("unpruned", "magnitude", "falf"):
        values = [row[key] if key == "unpruned" else row[key]["map50"] for row in rows]
        summary[key] = {"mean": statistics.mean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None}
    return summary


def _write(rows: list[dict]) -> None:
    RESULTS.write_text(json.dumps({"protocol": __doc__.split("\n\n")[1], "rows": rows, "summary": _summary(rows)},
                                  indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--resume", action="store_true",
                        help="keep the seeds already in results/detection.json and run only the missing ones")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torchmetrics' notes on detections per image
    rows = json.loads(RESULTS.read_text())["rows"] if args.resume and RESULTS.exists() else []
    done = {row["seed"] for row in rows}
    for seed in (int(seed) for seed in args.seeds.split(",")):
        if seed in done:
            continue
        rows.append(run_seed(seed))
        _write(rows)  # after every seed, so a run cut short keeps what it measured
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(_summary(rows), indent=1))

if __name__ == "__main__":
    main()
