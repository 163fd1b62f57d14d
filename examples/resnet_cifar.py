"""ResNet-20/56 or VGG-16 on CIFAR-10: pretrain, then compress to a MACs target.

Reads the standard python-pickle CIFAR-10 folder (``cifar-10-batches-py``: data_batch_1..5
and test_batch, as extracted from cifar-10-python.tar.gz; nothing is downloaded).  The
test batch is the validation set.

    python examples/resnet_cifar.py --data-dir ~/data/cifar-10-batches-py --arch resnet56 \\
        --epochs 30 --method falf --target-macs 0.5 --rounds 4

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 64 --rounds 1``.
"""
from __future__ import annotations

from common import example_parser, pretrain_and_compress

from falf_fx.data import cifar10_loaders
from falf_fx.models import resnet20, resnet56, vgg16_cifar

ARCHS = {"resnet20": resnet20, "resnet56": resnet56, "vgg16": vgg16_cifar}


def main(argv=None):
    parser = example_parser(__doc__, epochs=30, rounds=4, lr=0.1, batch_size=128)
    parser.add_argument("--data-dir", required=True, help="the extracted cifar-10-batches-py folder")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet20")
    args = parser.parse_args(argv)
    train_loader, val_loader = cifar10_loaders(args.data_dir, batch_size=args.batch_size, limit=args.limit)
    return pretrain_and_compress(ARCHS[args.arch](), train_loader, val_loader, args, f"{args.arch} on CIFAR-10")


if __name__ == "__main__":
    main()
