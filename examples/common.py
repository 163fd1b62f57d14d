"""What every example shares: the run flags, a pretrain-then-compress run and the before/after table.

The examples import it as ``common`` (Python puts the script's folder on ``sys.path``), so
each script holds only what is particular to it: its model and its data.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

import falf_fx
from falf_fx.text_report import compress_table
from falf_fx.training import TrainConfig, evaluate, train

__all__ = ["example_parser", "first_samples", "pretrain_and_compress", "print_costs"]


def example_parser(doc: str, *, epochs: int, rounds: int, lr: float, batch_size: int) -> argparse.ArgumentParser:
    """The flags every example takes; the defaults are the example's full run, the tiny-run
    flags (``--epochs 1 --max-batches 2 --limit 64 --rounds 1``) make it a seconds-long smoke test."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("falf", "stability", "magnitude", "taylor"), default="falf")
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--epochs", type=int, default=epochs, help="pretraining epochs (0: keep the init)")
    parser.add_argument("--rounds", type=int, default=rounds, help="score -> slim -> fine-tune rounds")
    parser.add_argument("--finetune-epochs", type=int, default=8,
                        help="fine-tuning epochs of the whole run, shared by the rounds")
    parser.add_argument("--lr", type=float, default=lr, help="pretraining learning rate")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-batches", type=int, default=None, help="pretraining batches per epoch")
    parser.add_argument("--limit", type=int, default=None, help="use only this many samples per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


def first_samples(loader: DataLoader, limit: Optional[int]) -> DataLoader:
    """The same loader over the first ``limit`` samples (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(loader.dataset):
        return loader
    return DataLoader(Subset(loader.dataset, range(limit)), batch_size=loader.batch_size,
                      shuffle=isinstance(loader.sampler, RandomSampler), generator=loader.generator)


def _cross_entropy(outputs: torch.Tensor, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, batch[1])


def pretrain_and_compress(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                          args: argparse.Namespace, title: str, **compress_options) -> falf_fx.CompressResult:
    """Train ``model`` for ``args.epochs``, compress it to ``args.target_macs`` and print the table."""
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console(highlight=False)
    if args.epochs > 0:
        train(model, train_loader, _cross_entropy,
              TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, max_batches=args.max_batches),
              phase="pretrain")
    console.print(f"{title}: validation accuracy before compression "
                  f"{evaluate(model, val_loader)['accuracy']:.4f}")
    result = falf_fx.compress(model, train_loader, method=args.method, val_loader=val_loader,
                              target_macs=args.target_macs, rounds=args.rounds,
                              finetune_epochs=args.finetune_epochs, seed=args.seed, **compress_options)
    print_costs(result, f"{title}, {args.method} to {args.target_macs:g} of the MACs")
    return result


def print_costs(result: falf_fx.CompressResult, title: str) -> None:
    """The before/after table: the run's metric, MACs, FLOPs, parameters and CPU latency."""
    Console(highlight=False).print(compress_table(result.report, title=title))
