"""compress(): score -> slim -> fine-tune rounds until a MACs target or an accuracy tolerance."""
from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from falf_fx.passes.analysis import Analysis, analyze_graph
from falf_fx.passes.modes import attributes_kept, eval_mode
from falf_fx.passes.rewrite import slim_graph_module

from .capture import trace
from .checkpoint import CheckpointError, CheckpointStore, fingerprint
from .errors import FalfError, FalfTypeError, FalfValueError
from .distill import Distillation, DistillationError, distillation_loss
from .flops import cost_and_macs_by_module, latency_ms, layer_widths
from .methods import PruningMethod, method_options, resolve_method
from .methods.base import Round
from .serialize import from_plain, to_plain
from .planning import ALLOCATIONS, MacsModel, allocate, channel_mac_costs
from .training import TrainConfig, evaluate, is_distributed, steps_per_epoch, train

__all__ = ["CompressResult", "FineTuneBudget", "compress"]

_STATE = "compress"  # checkpoint phase name of the round-level state


@dataclass
class CompressResult:
    model: fx.GraphModule
    report: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _default_loss(outputs: torch.Tensor, batch: tuple) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, batch[1])


def _first_batch(loader: DataLoader) -> tuple:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise FalfError("the training loader is empty") from None
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise FalfError("the training loader must yield (inputs, targets) batches")
    return tuple(batch)


def _check_classifier(model: nn.Module, batch: tuple, custom_loss: bool) -> tuple[int, bool]:
    """Number of classes and whether the outputs are class logits; clear errors when a classifier's are not
    logits or its labels do not fit."""
    with torch.no_grad(), eval_mode(model), attributes_kept(model):  # YOLO's Detect would keep the input shape
        outputs = model(batch[0])
    logits = isinstance(outputs, torch.Tensor) and outputs.dim() == 2
    if custom_loss:
        return (int(outputs.shape[-1]) if isinstance(outputs, torch.Tensor) and outputs.dim() >= 2 else 2), logits
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise FalfError(f"the model's outputs ({shape}) are not class logits (batch, classes): pass loss_fn=")
    classes, labels = int(outputs.shape[1]), batch[1]
    if labels.dtype not in (torch.int64, torch.int32) or labels.min() < 0 or labels.max() >= classes:
        raise FalfError(f"labels range from {int(labels.min())} to {int(labels.max())} but the model has {classes} "
                        "outputs: fix the labels, or pass loss_fn= if the outputs are not class logits")
    return classes, True


def _distillation(distill: Optional[float], temperature: float, logits: bool) -> Distillation:
    """``distill=None``: 0.5 for class logits, off for any other output (a detector's boxes, a dict)."""
    if distill is None:
        return Distillation(0.5 if logits else 0.0, temperature)
    if distill > 0 and not logits:
        raise DistillationError(f"distill={distill}: the model's outputs are not class logits (batch, classes), "
                                "so they cannot be distilled; leave distill out (off for such outputs) or pass 0")
    return Distillation(distill, temperature)


def _check_target(analysis: Analysis, macs: MacsModel, target_macs: float) -> None:
    """Say why before any training if the target cannot be reached.

    The floor is one channel left in every prunable group, its MACs predicted from the
    analysis (within 0.5% of fvcore, never below it).
    """
    if not 0.0 < target_macs < 1.0:
        raise FalfValueError(f"target_macs is a fraction of the original MACs in (0, 1), got {target_macs}")
    flat = {g.id: np.zeros(g.size) for g in analysis.prunable_groups}
    floor = macs.predict(allocate(analysis, flat, 0.0, macs, "uniform", min_keep=0.0).removed_channels()) / macs.total
    if target_macs < floor:
        frozen = sorted({r for g in analysis.groups for r in g.reasons})[:3]
        raise FalfValueError(f"target_macs={target_macs} cannot be reached: with one channel left in every prunable "
                             f"group {floor:.4f} of the MACs remain (frozen: {'; '.join(frozen) or 'nothing'})")


@dataclass(frozen=True)
class FineTuneBudget:
    """The fine-tuning epochs of a whole run, spent under one schedule across its rounds.

    Round ``i`` trains ``epochs_of(i)`` epochs from where the rounds before it stopped on one
    warm-up + cosine schedule, so the learning rate is not restarted every round and
    the last round ends at zero, whatever the number of rounds.  Epochs that do not
    divide evenly go to the last rounds: a model is never left unfine-tuned after a
    cut while an earlier round trained.
    """

    epochs: int
    rounds: int
    lr: float
    warmup: float
    steps_per_epoch: int

    def epochs_of(self, index: int) -> int:
        return self.epochs // self.rounds + (index >= self.rounds - self.epochs % self.rounds)

    def config(self, index: int, seed: int) -> TrainConfig:
        offset = sum(self.epochs_of(i) for i in range(index)) * self.steps_per_epoch
        return TrainConfig(epochs=self.epochs_of(index), lr=self.lr, seed=seed, warmup=self.warmup,
                           horizon=self.epochs * self.steps_per_epoch, offset=offset)


def _round_goal(before_macs: float, current: float, index: int, rounds: int, target_macs: Optional[float],
                step: float) -> float:
    """The MACs round ``index`` should end at."""
    if target_macs is None:  # tolerance only: take a fixed share of what is left, until accuracy says stop
        return current * (1.0 - step)
    return before_macs * target_macs ** ((index + 1) / rounds)  # geometric, landing on the target last


def _check_options(target_macs, tolerance, val_loader, finetune_epochs, allocation, min_keep) -> None:
    if target_macs is None and tolerance is None:
        raise FalfValueError("give target_macs (e.g. 0.25 of the original MACs), tolerance (e.g. 0.01), or both")
    if tolerance is not None and val_loader is None:
        raise FalfValueError("tolerance is measured on val_loader: pass val_loader=")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise FalfValueError(f"finetune_epochs is the whole run's fine-tuning budget, a whole number >= 0, "
                         f"not {finetune_epochs!r}")
    if allocation not in ALLOCATIONS:
        raise FalfValueError(f"allocation must be one of {ALLOCATIONS}, not {allocation!r}")
    if not 0.0 <= min_keep < 1.0:
        raise FalfValueError(f"min_keep is the share of every group that stays, in [0, 1), not {min_keep}")


def compress(model: nn.Module, loader: DataLoader, *, method: Union[str, PruningMethod] = "magnitude",
             example_inputs: Any = None,
             val_loader: Optional[DataLoader] = None, loss_fn: Optional[Callable] = None,
             target_macs: Optional[float] = None, tolerance: Optional[float] = None, rounds: Optional[int] = None,
             step: float = 0.3, finetune_epochs: int = 8, finetune_lr: float = 0.02, warmup: float = 0.05,
             allocation: str = "uniform", min_keep: float = 0.05, distill: Optional[float] = None,
             distill_temperature: float = 4.0, checkpoint_dir: Optional[str] = None, resume: bool = False,
             seed: int = 0, progress: bool = True, measure_latency: bool = True) -> CompressResult:
    """Compress a trained classifier: rounds of score -> slim -> fine-tune.

    ``method`` is a name (``"falf"``, with its defaults) or a method object with its
    options (``falf_fx.methods.FALF(aux_epochs=2)``, or your own ``PruningMethod``).
    Stops at ``target_macs`` (fraction of the original MACs) or before the accuracy
    on ``val_loader`` drops by more than ``tolerance`` (e.g. 0.01 = one point).
    ``rounds`` is the most rounds to run (default: the method's own, 1 for magnitude);
    a method may stop earlier.  ``finetune_epochs`` is the fine-tuning budget of the
    whole run, shared by the rounds under one warm-up + cosine schedule peaking at
    ``finetune_lr``; methods' own phases (FALF's auxiliary phase...) come on top and
    are reported apart.  Fine-tuning distils the original model's logits with weight
    ``distill`` (0: off; by default 0.5 for class logits, off for other outputs) at
    ``distill_temperature``.  ``allocation`` shares a MACs goal between groups:
    ``uniform`` (the same share of every group), ``global`` or ``cost`` (scores ranked
    across groups, ``cost`` per MAC saved); ``min_keep`` of every group stays.
    ``measure_latency=False`` leaves the CPU latency out of the report (it costs
    seconds; tests and sweeps do not need it).
    """
    _check_options(target_macs, tolerance, val_loader, finetune_epochs, allocation, min_keep)
    pruner = copy.deepcopy(resolve_method(method))  # a method object is the caller's: a run never changes it
    rounds = rounds or pruner.default_rounds
    batch = _first_batch(loader)
    example = example_inputs if example_inputs is not None else batch[0][:1]
    classes, logits = _check_classifier(model, batch, loss_fn is not None)
    distillation = _distillation(distill, distill_temperature, logits)
    main_loss = loss_fn or _default_loss
    store = CheckpointStore(checkpoint_dir) if checkpoint_dir else None
    if resume and (store is None or not store.has_any()):
        raise CheckpointError(f"resume=True but there is no checkpoint in {checkpoint_dir!r}")

    gm = trace(copy.deepcopy(model), example)  # the caller's model is left as it was
    origin = fingerprint(gm)
    # fvcore runs once here and once per round (on the candidate, for its record); the rest is predicted
    before, per_module = cost_and_macs_by_module(gm, example)
    analysis = analyze_graph(gm)
    if target_macs is not None:
        _check_target(analysis, MacsModel(analysis, per_module, before.macs), target_macs)
    base_acc = evaluate(gm, val_loader)["accuracy"] if val_loader is not None else None
    report_before = {"macs": before.macs, "flops": before.flops, "params": before.params, "accuracy": base_acc,
                     "latency_ms": latency_ms(gm, example) if measure_latency else None, "widths": layer_widths(gm)}
    budget = FineTuneBudget(finetune_epochs, rounds, finetune_lr, warmup, steps_per_epoch(loader, TrainConfig()))
    finetune_loss = distillation_loss(gm, main_loss, distillation) if distillation.enabled else main_loss
    history: list[dict[str, Any]] = []
    start_round = 0
    if store is not None:
        _check_checkpointable(gm)
    if resume and store.path(_STATE).exists():
        state = store.load(_STATE, origin)  # weights_only: a tampered file is refused, never run
        try:
            gm = trace(from_plain(state["model"]), example)
        except (KeyError, ValueError, TypeError) as error:  # a graph that names what the format does not allow
            raise CheckpointError(f"checkpoint {store.path(_STATE)} refused: {error}") from error
        history, start_round = json.loads(state["history"]), state["round"] + 1
        pruner.load_state(json.loads(state["method"]))
        if state["stopped"]:
            start_round = rounds
        current, per_module = cost_and_macs_by_module(gm, example)
    else:
        current = before
    kept_acc = next((r["accuracy"] for r in reversed(history) if r["kept"] and "accuracy" in r), base_acc)

    for index in range(start_round, rounds):
        if target_macs is not None and current.macs <= target_macs * before.macs * 1.001:
            break
        goal_macs = _round_goal(before.macs, current.macs, index, rounds, target_macs, step)
        if analysis.graph_module is not gm:  # a kept round, or a resumed run: analyse the model the round cuts
            analysis = analyze_graph(gm)
        round_ = Round(gm, analysis, loader, main_loss, classes, index, seed, macs_to_remove=current.macs - goal_macs,
                       costs=channel_mac_costs(analysis, per_module), total_macs=current.macs,
                       target_macs=None if target_macs is None else target_macs * before.macs,
                       val_loader=val_loader, checkpoints=store, resume=resume, progress=progress,
                       macs_model=MacsModel(analysis, per_module, current.macs), allocation=allocation,
                       min_keep=min_keep)
        proposal = pruner.propose(round_)
        candidate = slim_graph_module(proposal.model, proposal.plan)
        config = budget.config(index, seed)
        if config.epochs:
            train(candidate, loader, finetune_loss, config, phase=round_.phase("finetune"), checkpoints=store,
                  resume=resume, progress=progress)
        candidate_cost, candidate_per_module = cost_and_macs_by_module(candidate, example)
        record = {"round": index + 1, "method": pruner.name, "channels_removed": proposal.plan.num_removed,
                  "macs": candidate_cost.macs, "finetune_epochs": config.epochs,
                  "auxiliary_epochs": dict(round_.auxiliary_epochs), **proposal.record}
        record["macs_ratio"] = record["macs"] / before.macs
        if val_loader is not None:
            record["accuracy"] = evaluate(candidate, val_loader)["accuracy"]
        # outside the tolerance: keep the previous round's model
        record["kept"] = tolerance is None or base_acc - record["accuracy"] <= tolerance
        history.append(record)
        if record["kept"]:
            gm, current, per_module, kept_acc = candidate, candidate_cost, candidate_per_module, record.get("accuracy")
        go_on = pruner.observe(record)
        if store is not None and (not is_distributed() or torch.distributed.get_rank() == 0):
            # the safe format (state dict + graph description), plain JSON for the rest, written atomically
            store.save(_STATE, origin, {"model": to_plain(gm), "history": json.dumps(history, default=_plain),
                                        "round": index, "method": json.dumps(pruner.state(), default=_plain),
                                        "stopped": not go_on})
        if not go_on:
            break
    after = current
    report = {"model_type": type(model).__name__, "before": report_before,
              "after": {"macs": after.macs, "flops": after.flops, "params": after.params, "accuracy": kept_acc,
                        "latency_ms": latency_ms(gm, example) if measure_latency else None,
                        "widths": layer_widths(gm)},
              "method": pruner.name, "method_options": method_options(pruner), "macs_ratio": after.macs / before.macs,
              "target": _target_report(target_macs, after.macs / before.macs),
              "budget": _budget_report(budget, history, distillation, allocation, min_keep)}
    result = CompressResult(gm, report, history)
    if store is not None:
        report_json = json.dumps({**report, "history": history}, indent=1) + os.linesep
        Path(store.directory, "report.json").write_text(report_json)
        _write_html_report(result, example, Path(store.directory, "report.html"), measure_latency)
    return result


def _write_html_report(result: CompressResult, example: Any, path: Path, measure_latency: bool) -> None:
    """report.html next to report.json; a missing Graphviz or matplotlib costs the page, never the run."""
    from .html_report import report

    try:
        report(result, example, path, measure_latency=measure_latency)
    except FalfError as error:
        warnings.warn(f"falf_fx: {path} not written: {error}", stacklevel=3)


def _check_checkpointable(gm: fx.GraphModule) -> None:
    """Round checkpoints hold no pickles: say before any training if this model cannot be written so."""
    try:
        to_plain(gm)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint_dir: this model cannot be checkpointed in falf_fx's pickle-free format "
                              f"({error}); run compress without checkpoint_dir") from error


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in history records, as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise FalfTypeError(f"{type(value).__name__} is not plain data")


def _target_report(target_macs: Optional[float], reached: float) -> Optional[dict[str, Any]]:
    """Whether the MACs target was met (within 1%); a miss is also a warning."""
    if target_macs is None:
        return None
    met = reached <= target_macs * 1.01
    if not met:
        warnings.warn(f"compress missed target_macs={target_macs}: the slim model keeps {reached:.4f} of the MACs "
                      "(a round was rejected by the tolerance, or the method stopped early); see report['history']",
                      stacklevel=3)
    return {"macs": target_macs, "reached": round(reached, 6), "met": met}


def _budget_report(budget: FineTuneBudget, history: list[dict], distillation: Distillation, allocation: str,
                   min_keep: float) -> dict[str, Any]:
    """What the run spent, fine-tuning and each method phase apart, and the settings that spent it."""
    auxiliary: dict[str, int] = {}
    for record in history:
        for kind, epochs in record["auxiliary_epochs"].items():
            auxiliary[kind] = auxiliary.get(kind, 0) + epochs
    return {"finetune_epochs": sum(r["finetune_epochs"] for r in history), "finetune_epochs_budget": budget.epochs,
            "auxiliary_epochs": auxiliary, "rounds": len(history), "lr": budget.lr,
            "schedule": f"linear warm-up over {budget.warmup:.0%}, then cosine to 0, over the whole run",
            "distill": {"alpha": distillation.alpha, "temperature": distillation.temperature},
            "allocation": allocation, "min_keep": min_keep}
