"""The Hugging Face ``Trainer`` drives a compress run through the step API (``PruningSession``).

A ``ResNetForImageClassification`` built from a small config (random init, nothing downloaded) is trained by the
``Trainer`` on falf_fx's seeded synthetic shapes, then compressed with FALF: every phase the session hands out
(the fatuous phase, then the slim model's fine-tuning) is trained by a ``Trainer`` whose ``compute_loss`` adds
``phase.penalty()``.  The slim model is again a ``ResNetForImageClassification`` (``save_pretrained`` works).
Needs ``transformers`` and ``accelerate`` (dev extras).

    python examples/hf_trainer_step_api.py --epochs 4 --target-macs 0.5

A seconds-long smoke run: ``--epochs 1 --max-batches 2 --limit 64 --finetune-epochs 1``.
"""
from __future__ import annotations

import tempfile

import torch
from common import example_parser, first_samples, print_costs
from torch.nn import functional as F
from torch.utils.data import Dataset

import falf_fx
from falf_fx.data import shapes_loaders


class AsDicts(Dataset):
    """The Trainer's view of a dataset: ``{"pixel_values", "labels"}`` per sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        image, label = self.dataset[index]
        return {"pixel_values": image, "labels": label}


def trainer_for(model, dataset, epochs: int, lr: float, max_steps, penalty=lambda: 0.0):
    from transformers import Trainer, TrainingArguments

    class PenaltyTrainer(Trainer):
        """The user's Trainer: their loss on the logits, plus the method's term."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(inputs["pixel_values"])
            loss = F.cross_entropy(outputs.logits, inputs["labels"]) + penalty()
            return (loss, outputs) if return_outputs else loss

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="falf_fx-trainer-"), num_train_epochs=epochs,
                             max_steps=max_steps or -1, learning_rate=lr, per_device_train_batch_size=32,
                             lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=5e-4, use_cpu=True,
                             report_to="none", save_strategy="no", logging_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0)
    return PenaltyTrainer(model=model, args=args, train_dataset=dataset)


def main(argv=None):
    from transformers import ResNetConfig, ResNetForImageClassification

    parser = example_parser(__doc__, epochs=4, rounds=1, lr=0.05, batch_size=32)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    train_loader, val_loader = shapes_loaders(batch_size=args.batch_size, seed=args.seed)
    train_loader, val_loader = first_samples(train_loader, args.limit), first_samples(val_loader, args.limit)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    model = ResNetForImageClassification(config)
    steps = args.max_batches * args.epochs if args.max_batches else None
    if args.epochs:
        trainer_for(model, AsDicts(train_loader.dataset), args.epochs, args.lr, steps).train()

    def top1(candidate) -> float:
        return falf_fx.metrics.top1(val_loader)(_Logits(candidate))

    session = falf_fx.PruningSession(
        model.eval(), train_loader, method=args.method, target_macs=args.target_macs, rounds=args.rounds,
        val_loader=val_loader, evaluate=top1,
        loss_fn=lambda outputs, batch: F.cross_entropy(outputs.logits, batch[1]),
        finetune_epochs=args.finetune_epochs, measure_latency=True)
    for phase in session.phases():
        print(f"round {phase.round + 1}: {phase.kind}, {phase.epochs} epoch(s), by the Hugging Face Trainer")
        trainer_for(phase.model, AsDicts(train_loader.dataset), phase.epochs, phase.lr,
                    args.max_batches and args.max_batches * phase.epochs, phase.penalty).train()
    result = session.result()
    assert isinstance(result.model, ResNetForImageClassification)
    print_costs(result, f"Hugging Face ResNet on synthetic shapes, {args.method} driven by the Trainer")
    return result


class _Logits(torch.nn.Module):
    """A Hugging Face classifier seen as one returning logits (what top-1 reads)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


if __name__ == "__main__":
    main()
