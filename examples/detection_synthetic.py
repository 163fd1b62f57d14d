"""FALF on a detector: torchvision's Faster R-CNN (MobileNetV3-FPN), SSDlite320 or Ultralytics' YOLOv8n, random
init, trained and compressed on falf_fx's seeded synthetic detection set, scored by mAP (torchmetrics).

The detector is captured in parts (backbone + FPN, RPN head, box head for Faster R-CNN): the fatuous heads attach
to the backbone's feature maps, every part is cut, and what comes back is the user's own detector object.

    python examples/detection_synthetic.py --arch fasterrcnn --epochs 12 --target-macs 0.5
    python examples/detection_synthetic.py --arch yolov8n --method magnitude

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 16 --finetune-epochs 1``.
"""
from __future__ import annotations

import torch
import torchvision
from common import example_parser, print_costs
from torch.utils.data import DataLoader

import falf_fx
from falf_fx.data_tasks import ShapesDetection, detection_collate, ultralytics_collate
from falf_fx.metrics import mean_average_precision, ultralytics_postprocess
from falf_fx.training import TrainConfig, inputs_and_targets, train

SIZE = 64


def _sum_of_losses(outputs, batch):
    return outputs  # torchvision's detectors return a dict of losses in training mode: compress sums it


def torchvision_detector(arch: str):
    """The model, how a training batch runs it, its loss and the metric's decoding (none: boxes already)."""
    if arch == "fasterrcnn":
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=11, min_size=SIZE, max_size=SIZE)
    else:
        model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=11)
    return model, inputs_and_targets, _sum_of_losses, None, detection_collate


def yolov8n():
    """YOLOv8n built from its packaged yaml, trained with the Ultralytics loss.  It is traced in training mode
    (fx keeps one branch of ``if self.training``), so the metric decodes its raw outputs
    (``falf_fx.metrics.ultralytics_postprocess``)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False).train()
    model.args = get_cfg()
    criterion = v8DetectionLoss(model)
    return model, lambda m, batch: m(batch[0]), lambda out, batch: criterion(out, batch[1])[0].sum(), \
        ultralytics_postprocess(model), ultralytics_collate


def main(argv=None):
    parser = example_parser(__doc__, epochs=12, rounds=1, lr=0.01, batch_size=8)
    parser.add_argument("--arch", choices=("fasterrcnn", "ssdlite", "yolov8n"), default="fasterrcnn")
    parser.add_argument("--samples", type=int, default=512, help="synthetic training images")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, forward, loss, decode, collate = yolov8n() if args.arch == "yolov8n" else torchvision_detector(args.arch)
    count = args.limit or args.samples
    train_set = ShapesDetection(count, SIZE, seed=args.seed)
    val_set = ShapesDetection(max(count // 4, 4), SIZE, seed=args.seed + 1000)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(args.seed))
    # the metric's batches: images as the model takes them (a list, or a stacked tensor for YOLO), torchvision targets
    stack = args.arch == "yolov8n"
    val_loader = DataLoader(val_set, batch_size=args.batch_size, collate_fn=lambda s: (
        torch.stack([x for x, _ in s]) if stack else [x for x, _ in s], [t for _, t in s]))
    metric = mean_average_precision(val_loader, "map_50", postprocess=decode)
    metric.__name__ = "map50"
    if args.epochs:
        train(model, train_loader, loss, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, warmup=0.05,
                                                     max_batches=args.max_batches), phase="pretrain",
              forward=forward)
    result = falf_fx.compress(model, train_loader, method=args.method, loss_fn=loss, forward=forward,
                              evaluate=metric, target_macs=args.target_macs, rounds=args.rounds,
                              finetune_epochs=args.finetune_epochs, finetune_lr=args.lr, seed=args.seed)
    print_costs(result, f"{args.arch} on synthetic shapes, {args.method} to {args.target_macs:g} of the MACs")
    return result


if __name__ == "__main__":
    main()
