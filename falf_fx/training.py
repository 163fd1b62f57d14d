"""One small training loop for every phase of every method.

Deterministic per epoch (the shuffle order and dropout of epoch e depend only on
the seed and e), so a run resumed from a checkpoint ends exactly where an
uninterrupted one does.  Runs unchanged under ``torchrun`` with
DistributedDataParallel (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .checkpoint import CheckpointStore, fingerprint
from .errors import FalfError, FalfValueError

__all__ = ["TrainConfig", "TrainingError", "total_loss", "train", "evaluate", "epoch_loader", "is_distributed",
           "all_reduce_mean", "init_distributed_from_env", "lr_factor", "steps_per_epoch", "LossFn", "Forward",
           "inputs_only", "inputs_and_targets"]

LossFn = Callable[[Any, tuple], torch.Tensor]  # (outputs, batch) -> loss; batch = (inputs, targets, ...)
Forward = Callable[[nn.Module, tuple], Any]  # (model, batch) -> outputs


def inputs_only(model: nn.Module, batch: tuple) -> Any:
    """The default forward of a training batch: the model on its inputs (``batch[0]``)."""
    return model(batch[0])


def inputs_and_targets(model: nn.Module, batch: tuple) -> Any:
    """The forward of torchvision's detectors in training: ``model(images, targets)`` returns their losses."""
    return model(batch[0], batch[1])


class TrainingError(FalfError):
    """Training cannot go on (NaN loss, empty loader...); says where and what was kept."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # "sgd" or "adam"
    schedule: str = "cosine"  # "cosine" (after a linear warm-up) or "constant", stepped every batch
    seed: int = 0
    max_batches: Optional[int] = None  # per epoch; None = the whole loader
    warmup: float = 0.0  # share of the schedule's steps spent ramping the learning rate up from 0
    # One schedule can span several calls (compress's rounds): ``horizon`` is its total number of
    # steps (None: this call's own steps) and ``offset`` how many of them earlier calls spent.
    horizon: Optional[int] = None
    offset: int = 0


def lr_factor(config: TrainConfig, step: int, horizon: int) -> float:
    """The learning-rate multiplier at global ``step`` of a ``horizon``-step schedule."""
    if config.schedule == "constant":
        return 1.0
    warm = config.warmup * horizon
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(horizon - warm, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# -- distributed helpers ------------------------------------------------------------------


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed_from_env() -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return is_distributed()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (identity when not distributed): every rank then decides alike."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


# -- data order -----------------------------------------------------------------------------


def epoch_loader(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    """The same loader with an order fixed by (seed, epoch), sharded across ranks when distributed."""
    shuffle = isinstance(loader.sampler, RandomSampler)
    if not is_distributed() and not shuffle:
        return loader
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    common = dict(batch_size=loader.batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  drop_last=loader.drop_last, pin_memory=loader.pin_memory)
    if is_distributed():
        sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, drop_last=loader.drop_last)
        sampler.set_epoch(epoch)
        return DataLoader(loader.dataset, sampler=sampler, **common)
    return DataLoader(loader.dataset, shuffle=True, generator=generator, **common)


def _batches(loader: DataLoader, limit: Optional[int]) -> Iterator[tuple[int, Any]]:
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        yield index, batch


def _split(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TrainingError("each batch must be (inputs, targets, ...)")
    return batch[0], batch[1]


def _batch_size(inputs: Any) -> int:
    """Samples in a batch: a tensor's first axis, or a list of samples (a detector's images)."""
    return int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) else len(inputs)


def total_loss(loss: Any, phase: str) -> torch.Tensor:
    """The loss to minimise: a tensor as it is, a dict of losses (a detector's) or a sequence of them summed."""
    if isinstance(loss, dict):
        loss = list(loss.values())
    if isinstance(loss, (list, tuple)):
        if not loss or not all(isinstance(part, torch.Tensor) for part in loss):
            raise TrainingError(f"phase '{phase}': a dict or list of losses must hold tensors, got {loss!r}")
        loss = sum(part.sum() for part in loss)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TrainingError(f"phase '{phase}': loss_fn must return one number (a 0-d tensor), a dict or a list of "
                            f"them, not {shape}")
    return loss.reshape(())


def steps_per_epoch(loader: DataLoader, config: TrainConfig) -> int:
    """Optimizer steps one epoch of ``train`` takes (this rank's shard when distributed)."""
    batches = len(epoch_loader(loader, config.seed, 0))
    return min(batches, config.max_batches or batches)


# -- the loop ---------------------------------------------------------------------------------


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise FalfValueError(f"optimizer must be 'sgd' or 'adam', not {config.optimizer!r}")


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch_steps: int):
    if config.schedule not in ("cosine", "constant"):
        raise FalfValueError(f"schedule must be 'cosine' or 'constant', not {config.schedule!r}")
    horizon = config.horizon or config.epochs * epoch_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, config.offset + step, horizon))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[stats]}"), disable=not enabled, transient=True)


def train(model: nn.Module, loader: DataLoader, loss_fn: LossFn, config: TrainConfig, *, phase: str = "train",
          checkpoints: Optional[CheckpointStore] = None, resume: bool = False,
          evaluate_fn: Optional[Callable[[nn.Module], dict]] = None, progress: bool = True,
          forward: Forward = inputs_only) -> list[dict]:
    """Train ``model`` in place for ``config.epochs``; returns one record per epoch.

    With ``checkpoints`` the state is saved after every epoch under ``phase``;
    with ``resume`` training continues from the last saved epoch.
    """
    if len(loader) == 0:
        raise TrainingError(f"the training loader of phase '{phase}' is empty")
    distributed = is_distributed()
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    total = steps_per_epoch(loader, config)
    optimizer, history, start = _optimizer(model, config), [], 0
    scheduler = _scheduler(optimizer, config, total)
    if resume and checkpoints is not None:
        state = checkpoints.load(phase, fingerprint(model))
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start = state["history"], state["epoch"] + 1
    with _progress(progress and (not distributed or dist.get_rank() == 0)) as bar:
        for epoch in range(start, config.epochs):
            torch.manual_seed(config.seed * 7_919 + epoch)
            net.train()
            task = bar.add_task(f"{phase} epoch {epoch + 1}/{config.epochs}", total=total, stats="")
            seen = correct = 0
            loss_sum, classified = 0.0, False
            for index, batch in _batches(epoch_loader(loader, config.seed, epoch), config.max_batches):
                inputs, targets = _split(batch)
                where = checkpoints.path(phase) if checkpoints is not None else "none (no checkpoint_dir)"
                try:
                    outputs = forward(net, batch)
                    loss = total_loss(loss_fn(outputs, batch), phase)
                except FalfError:
                    raise
                except Exception as error:  # a batch the model or the loss does not expect
                    raise TrainingError(f"phase '{phase}', epoch {epoch + 1}, batch {index + 1}: {type(error).__name__}"
                                        f": {error}; are the loader's batches what the model and loss_fn expect? "
                                        f"Last good checkpoint: {where}") from error
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss became {loss.item()} in phase '{phase}', epoch {epoch + 1}, "
                                        f"batch {index + 1}; last good checkpoint: {where}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                logits = outputs[0] if isinstance(outputs, tuple) else outputs
                size = _batch_size(inputs)
                seen += size
                loss_sum += loss.item() * size
                classified = isinstance(logits, torch.Tensor) and logits.dim() == 2 and \
                    isinstance(targets, torch.Tensor) and targets.dim() == 1
                if classified:
                    correct += int((logits.argmax(1) == targets).sum())
                accuracy = f" acc {correct / seen:.3f}" if classified else ""
                bar.update(task, advance=1, stats=f"loss {loss_sum / seen:.4f}{accuracy}")
            record = {"phase": phase, "epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                      "train_accuracy": correct / max(seen, 1) if classified else None,
                      "lr": optimizer.param_groups[0]["lr"]}
            if evaluate_fn is not None:
                record.update(evaluate_fn(model))
            history.append(record)
            bar.remove_task(task)
            if checkpoints is not None and (not distributed or dist.get_rank() == 0):
                checkpoints.save(phase, fingerprint(model), {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "history": history, "epoch": epoch,
                    "config": asdict(config)})
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, max_batches: Optional[int] = None) -> dict:
    """Top-1 accuracy and mean cross-entropy of a classifier (first output if it returns a tuple)."""
    was_training = model.training
    model.eval()
    seen = correct = 0
    loss_sum = 0.0
    for _, batch in _batches(loader, max_batches):
        inputs, targets = _split(batch)
        logits = model(inputs)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(1) == targets).sum())
        seen += targets.shape[0]
    model.train(was_training)
    stats = torch.tensor([correct, seen, loss_sum], dtype=torch.float64)
    correct, seen, loss_sum = (all_reduce_mean(stats) * (dist.get_world_size() if is_distributed() else 1)).tolist()
    if seen == 0:
        raise TrainingError("the evaluation loader is empty")
    return {"accuracy": correct / seen, "val_loss": loss_sum / seen if math.isfinite(loss_sum) else loss_sum}
