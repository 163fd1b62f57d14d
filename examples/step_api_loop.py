"""The step API: a plain PyTorch training loop, the user's own, drives a compress run with PruningSession.

No training is handed to falf_fx: the loop below trains whatever each phase gives it (FALF's fatuous phase,
then the slim model's fine-tuning), adding ``phase.penalty()`` (the method's term) to its own loss, and saves
``session.state_dict()`` so that a run killed between rounds resumes (``--resume``).

    python examples/step_api_loop.py --method falf --target-macs 0.25 --rounds 2 --state run.pt

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 64 --finetune-epochs 1``.
"""
from __future__ import annotations

import os

import torch
from common import example_parser, first_samples, print_costs
from torch import nn

import falf_fx
from falf_fx.data import digits_loaders
from falf_fx.models import lenet5


def my_training(model: nn.Module, loader, epochs: int, lr: float, penalty=lambda: 0.0,
                max_batches=None) -> None:
    """The user's loop: their optimizer and loss; falf_fx only adds its term."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for index, (images, labels) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            loss = nn.functional.cross_entropy(model(images), labels) + penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def main(argv=None):
    parser = example_parser(__doc__, epochs=6, rounds=2, lr=0.05, batch_size=64)
    parser.add_argument("--state", default=None, help="where to save session.state_dict() (resume with --resume)")
    parser.add_argument("--resume", action="store_true", help="go on from --state")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    train_loader, val_loader = digits_loaders(image_size=28, batch_size=args.batch_size, seed=args.seed)
    train_loader, val_loader = first_samples(train_loader, args.limit), first_samples(val_loader, args.limit)
    model = lenet5()
    my_training(model, train_loader, args.epochs, args.lr, max_batches=args.max_batches)
    session = falf_fx.PruningSession(model, train_loader, method=args.method, val_loader=val_loader,
                                     target_macs=args.target_macs, rounds=args.rounds,
                                     finetune_epochs=args.finetune_epochs, measure_latency=True)
    if args.resume and args.state and os.path.exists(args.state):
        session.load_state_dict(torch.load(args.state, weights_only=True))
    for phase in session.phases():
        if args.state:
            torch.save(session.state_dict(), args.state)  # the last finished round
        print(f"round {phase.round + 1}: {phase.kind}, {phase.epochs} epoch(s)")
        my_training(phase.model, train_loader, phase.epochs, phase.lr, phase.penalty, args.max_batches)
    result = session.result()
    print_costs(result, f"LeNet-5 on digits, {args.method} driven by the user's loop")
    return result


if __name__ == "__main__":
    main()
