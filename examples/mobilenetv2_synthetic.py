"""torchvision's MobileNetV2 (width 0.5, 10 classes, random init) on seeded synthetic 3x32x32 images.

Inverted residuals, depthwise convolutions and residual adds: the channel groups a
hand-written pruner gets wrong.  Needs torchvision (a dev dependency of falf_fx).

    python examples/mobilenetv2_synthetic.py [--width 0.5] [--epochs 3] [--target-macs 0.5]

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 64 --rounds 1``.
"""
from __future__ import annotations

from common import example_parser, pretrain_and_compress
from torchvision.models import mobilenet_v2

from falf_fx.data import synthetic_loaders


def main(argv=None):
    parser = example_parser(__doc__, epochs=3, rounds=2, lr=0.05, batch_size=64)
    parser.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width multiplier")
    parser.add_argument("--samples", type=int, default=2048, help="synthetic samples (train + val)")
    args = parser.parse_args(argv)
    train_loader, val_loader = synthetic_loaders((3, 32, 32), num_samples=args.limit or args.samples,
                                                 batch_size=args.batch_size, seed=args.seed)
    model = mobilenet_v2(weights=None, width_mult=args.width, num_classes=10)
    # Costs are counted on a two-image batch: the last BatchNorm sees a 1x1 map, which
    # cannot be normalised over a single image while the model is in training mode.
    example = next(iter(train_loader))[0][:2]
    return pretrain_and_compress(model, train_loader, val_loader, args,
                                 f"MobileNetV2 x{args.width:g}, costs per 2 images", example_inputs=example)


if __name__ == "__main__":
    main()
