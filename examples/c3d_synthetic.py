"""A small C3D (3-D convolutions over video clips) on seeded synthetic (3, 8, 32, 32) clips.

Conv3d/BatchNorm3d/ReLU/MaxPool3d blocks and an fc6-fc7-style linear head, compressed with
FALF: pruning, slimming and fine-tuning through 3-D convolutions and the flatten into the head.

    python examples/c3d_synthetic.py [--epochs 3] [--target-macs 0.5] [--method falf]

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 64 --rounds 1``.
"""
from __future__ import annotations

from common import example_parser, pretrain_and_compress
from torch import nn

from falf_fx.data import synthetic_loaders

CLIP = (3, 8, 32, 32)  # channels, frames, height, width


def _block(cin: int, cout: int, pool: tuple[int, int, int]) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(), nn.MaxPool3d(pool)]


def small_c3d(num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> nn.Sequential:
    """C3D's layout at a tenth of its width: the first pool keeps time, later pools halve every axis."""
    a, b, c = widths
    t, h, w = CLIP[1] // 4, CLIP[2] // 8, CLIP[3] // 8
    return nn.Sequential(*_block(CLIP[0], a, (1, 2, 2)), *_block(a, b, (2, 2, 2)), *_block(b, c, (2, 2, 2)),
                         nn.Flatten(), nn.Linear(c * t * h * w, 128), nn.ReLU(), nn.Linear(128, num_classes))


def main(argv=None):
    parser = example_parser(__doc__, epochs=3, rounds=2, lr=0.05, batch_size=32)
    parser.add_argument("--samples", type=int, default=512, help="synthetic clips (train + val)")
    args = parser.parse_args(argv)
    train_loader, val_loader = synthetic_loaders(CLIP, num_samples=args.limit or args.samples,
                                                 batch_size=args.batch_size, seed=args.seed)
    return pretrain_and_compress(small_c3d(), train_loader, val_loader, args, "small C3D on synthetic clips")


if __name__ == "__main__":
    main()
