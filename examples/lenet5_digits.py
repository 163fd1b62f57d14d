"""The default demo (``make demo``): FALF on LeNet-5 (20-50-800-500) trained on scikit-learn's
real handwritten digits.

Trains LeNet-5 on the digits (8x8 images resized to 28 px, seeded train/val split),
then compresses it with FALF to a quarter of its MACs and prints the before/after
table: accuracy, MACs, FLOPs, parameters and CPU latency.

    python examples/lenet5_digits.py [--target-macs 0.25] [--method falf] [--epochs 6] [--rounds 3]
"""
from __future__ import annotations

from common import example_parser, first_samples, pretrain_and_compress

from falf_fx.data import digits_loaders
from falf_fx.models import lenet5


def main(argv=None):
    parser = example_parser(__doc__, epochs=6, rounds=3, lr=0.05, batch_size=64)
    # LeNet-5's layers are too small for intra-op threads to pay off; on a busy machine extra
    # threads only wait on each other (make demo at load average 9: 50 s with one thread, over 3 min with two).
    parser.set_defaults(target_macs=0.25, threads=1)
    args = parser.parse_args(argv)
    train_loader, val_loader = digits_loaders(image_size=28, batch_size=args.batch_size, seed=args.seed)
    return pretrain_and_compress(lenet5(), first_samples(train_loader, args.limit),
                                 first_samples(val_loader, args.limit), args, "LeNet-5 on digits")


if __name__ == "__main__":
    main()
