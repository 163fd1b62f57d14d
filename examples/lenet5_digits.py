"""The default demo: FALF on LeNet-5 (20-50-800-500) trained on scikit-learn's real handwritten digits.

Trains LeNet-5 on the digits (8x8 images resized to 28 px, seeded train/val split),
then compresses it with FALF to a quarter of its MACs and prints the before/after
table: accuracy, MACs, FLOPs, parameters and CPU latency.

    python examples/lenet5_digits.py [--target-macs 0.25] [--method falf] [--seed 0]
"""
from __future__ import annotations

import argparse

import torch

import falf_fx
from falf_fx.data import digits_loaders
from falf_fx.models import lenet5
from falf_fx.report import compress_table
from falf_fx.training import TrainConfig, evaluate, train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-macs", type=float, default=0.25)
    parser.add_argument("--method", default="falf")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_loader, val_loader = digits_loaders(image_size=28, batch_size=64, seed=args.seed)
    model = lenet5()
    loss = lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1])  # noqa: E731
    train(model, train_loader, loss, TrainConfig(epochs=args.pretrain_epochs, lr=0.05, seed=args.seed),
          phase="pretrain")
    print(f"LeNet-5 trained on digits: validation accuracy {evaluate(model, val_loader)['accuracy']:.3f}")
    result = falf_fx.compress(model, train_loader, method=args.method, val_loader=val_loader,
                              target_macs=args.target_macs, rounds=args.rounds, seed=args.seed)
    from rich.console import Console

    Console().print(compress_table(result.report, title=f"LeNet-5 on digits, {args.method}"))


if __name__ == "__main__":
    main()
