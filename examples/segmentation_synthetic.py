"""FALF on a segmenter: torchvision's LRASPP (MobileNetV3-Large), random init, trained and compressed on falf_fx's
seeded synthetic segmentation set (11 classes with the background), scored by mIoU (torchmetrics' JaccardIndex).

    python examples/segmentation_synthetic.py --epochs 10 --target-macs 0.5

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 16 --finetune-epochs 1``.
"""
from __future__ import annotations

import torch
import torchvision
from common import example_parser, print_costs
from torch import nn

import falf_fx
from falf_fx.data_tasks import segmentation_loaders
from falf_fx.training import TrainConfig, train


def pixel_cross_entropy(outputs, batch):
    return nn.functional.cross_entropy(outputs["out"], batch[1])  # torchvision's segmenters return {"out": ...}


def main(argv=None):
    parser = example_parser(__doc__, epochs=10, rounds=1, lr=0.02, batch_size=16)
    parser.add_argument("--samples", type=int, default=1024, help="synthetic training images")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    count = args.limit or args.samples
    train_loader, val_loader = segmentation_loaders(num_train=count, num_val=max(count // 4, 4), image_size=64,
                                                    batch_size=args.batch_size, seed=args.seed)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=11)
    if args.epochs:
        train(model, train_loader, pixel_cross_entropy,
              TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, warmup=0.05, max_batches=args.max_batches),
              phase="pretrain")
    result = falf_fx.compress(model, train_loader, method=args.method, loss_fn=pixel_cross_entropy,
                              val_loader=val_loader, evaluate="miou", target_macs=args.target_macs,
                              rounds=args.rounds, finetune_epochs=args.finetune_epochs, finetune_lr=args.lr,
                              seed=args.seed, example_inputs=next(iter(train_loader))[0][:2])
    print_costs(result, f"LRASPP on synthetic shapes, {args.method} to {args.target_macs:g} of the MACs, "
                        "costs per 2 images")
    return result


if __name__ == "__main__":
    main()
