"""compress(): score -> slim -> fine-tune rounds until a MACs target or a metric tolerance."""
from __future__ import annotations

import copy
import dataclasses
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
from torch.utils._pytree import tree_structure
from torch.utils.data import DataLoader

from falf_fx.passes.analysis import Analysis, analyze_graph
from falf_fx.passes.modes import attributes_kept, eval_mode
from falf_fx.passes.rewrite import slim_graph_module

from .capture import trace
from .library_models import is_library_model, warn_stale_config
from .parts import PartedModel
from .checkpoint import CheckpointError, CheckpointStore, fingerprint
from .errors import FalfError, FalfTypeError, FalfValueError
from .distill import Distillation, DistillationError, DistillationLoss
from .flops import Cost, cost_and_macs_by_module, layer_widths
from .methods import PruningMethod, method_options, resolve_method
from .methods.base import Phase, Round, own_loop
from .metrics import resolve_metric
from .serialize import from_plain, to_plain
from .latency import (LatencyModel, LatencySettings, channel_latency_costs, latency_ratio, measure_latency,
                      report_latency_ms)
from .planning import ALLOCATIONS, MacsModel, allocate, channel_mac_costs, check_min_channels
from .targets import latency_goal
from .training import Forward, TrainConfig, inputs_only, is_distributed, steps_per_epoch

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


def _distillation(distill: Optional[float], temperature: float, where: str, until: str,
                  logits: bool) -> Distillation:
    """``distill=None``: 0.5 for class logits, off for any other output (a detector's boxes, a dict)."""
    if distill is None:
        return Distillation(0.5 if logits else 0.0, temperature, where, until)
    if distill > 0 and not logits:
        raise DistillationError(f"distill={distill}: the model's outputs are not class logits (batch, classes), "
                                "so they cannot be distilled; leave distill out (off for such outputs) or pass 0")
    return Distillation(distill, temperature, where, until)


def _check_target(analyses: dict[str, Analysis], per_module: dict[str, tuple[int, dict[str, int]]], total: float,
                  target_macs: float, min_keep: float, min_channels: int) -> None:
    """Say why before any training if the target cannot be reached.

    The floor is what ``min_keep`` and ``min_channels`` leave in every prunable group
    of every part, its MACs predicted from the analysis (within 0.5% of fvcore, never
    below it).
    """
    if not 0.0 < target_macs < 1.0:
        raise FalfValueError(f"target_macs is a fraction of the original MACs in (0, 1), got {target_macs}")
    floor = 0.0
    for name, analysis in analyses.items():
        macs = MacsModel(analysis, per_module[name][1], per_module[name][0])
        flat = {g.id: np.zeros(g.size) for g in analysis.prunable_groups}
        floor += macs.predict(allocate(analysis, flat, 0.0, macs, "uniform", min_keep=min_keep,
                                       min_channels=min_channels).removed_channels())
    floor /= total
    if target_macs < floor:
        frozen = sorted({r for a in analyses.values() for g in a.groups for r in g.reasons})[:3]
        raise FalfValueError(f"target_macs={target_macs} cannot be reached: with min_keep={min_keep} and "
                             f"min_channels={min_channels} left in every prunable group {floor:.4f} of the MACs "
                             f"remain (frozen: {'; '.join(frozen) or 'nothing'}); lower min_channels or min_keep "
                             f"if the floor is what holds it")


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


def _check_options(target_macs, target_latency, tolerance, val_loader, evaluate, finetune_epochs, allocation,
                   min_keep, min_channels) -> None:
    if target_macs is None and target_latency is None and tolerance is None:
        raise FalfValueError("give target_macs (e.g. 0.25 of the original MACs) or target_latency (e.g. 0.5 of its "
                             "measured latency), tolerance (e.g. 0.01), or a target and a tolerance")
    if target_macs is not None and target_latency is not None:
        raise FalfValueError("give target_macs or target_latency, not both")
    if target_latency is not None and not 0.0 < target_latency < 1.0:
        raise FalfValueError(f"target_latency is a fraction of the measured latency in (0, 1), got {target_latency}")
    if tolerance is not None and val_loader is None and not callable(evaluate):
        raise FalfValueError("tolerance is measured on val_loader: pass val_loader= (or evaluate=callable)")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise FalfValueError(f"finetune_epochs is the whole run's fine-tuning budget, a whole number >= 0, "
                         f"not {finetune_epochs!r}")
    if allocation not in ALLOCATIONS:
        raise FalfValueError(f"allocation must be one of {ALLOCATIONS}, not {allocation!r}")
    if not 0.0 <= min_keep < 1.0:
        raise FalfValueError(f"min_keep is the share of every group that stays, in [0, 1), not {min_keep}")
    check_min_channels(min_channels)


class _LatencyTarget:
    """compress(target_latency=): each round's goal in measured milliseconds, on a whole model.

    Every measurement is a ratio to a copy of the original, timed back to back
    (``latency_ratio``), times the original's latency: load on the machine falls on
    both.  A round's goal is handed to the method in the round's ``LatencyModel``
    units, calibrated by the goal at which an L1 plan of the same model measures it.
    """

    def __init__(self, host: nn.Module, example: Any, target: float, settings: LatencySettings) -> None:
        self.original, self.example, self.target, self.settings = copy.deepcopy(host), example, target, settings
        self.before = measure_latency(self.original, example, settings)
        self.current = self.before

    def measure(self, model: nn.Module) -> float:
        return self.before * latency_ratio(model, self.original, self.example, self.settings)

    def goal(self, index: int, rounds: int) -> float:
        return self.before * self.target ** ((index + 1) / rounds)  # geometric, landing on the target last

    def reached(self) -> bool:
        return self.current <= self.target * self.before * 1.05

    def round_model(self, analysis: Analysis, goal_ms: float, allocation: str,
                    min_keep: float, min_channels: int) -> tuple[LatencyModel, dict[int, np.ndarray], float, float]:
        """The round's latency model, its per-channel costs, and the goal and final goal in its units."""
        model = LatencyModel(analysis, self.current, self.settings)
        planned = latency_goal(analysis, model, self.measure, goal_ms, allocation, min_keep, min_channels)
        return model, channel_latency_costs(model), planned, planned * self.target * self.before / goal_ms

    def report(self) -> dict[str, Any]:
        return {"before_ms": self.before, "after_ms": self.current, "batch_size": self.settings.batch_size,
                "threads": self.settings.thread_count}


class _Run:
    """One compress run: the set-up, then rounds of score -> slim -> fine-tune -> measure -> checkpoint.

    ``compress`` drives it to the end; :class:`falf_fx.session.PruningSession` drives
    the same rounds with the user's loop as the trainer.  A model traced whole is
    one part; a detector is its traced parts inside the user's own object, each cut
    by the method in every round (its phases train the whole detector) and the
    whole detector fine-tuned once per round.
    """

    def __init__(self, model: nn.Module, loader: DataLoader, *, method: Union[str, PruningMethod],
                 example_inputs: Any, val_loader: Optional[DataLoader], loss_fn: Optional[Callable],
                 evaluate: Union[None, str, Callable[[nn.Module], float]], target_macs: Optional[float],
                 tolerance: Optional[float], rounds: Optional[int], step: float, finetune_epochs: int,
                 finetune_lr: float, warmup: float, allocation: str, min_keep: float, min_channels: int,
                 distill: Optional[float], distill_temperature: float, distill_where: str, distill_until: str,
                 checkpoint_dir: Optional[str], resume: bool, seed: int,
                 progress: bool, measure_latency: bool, trainer: Optional[Callable[[Phase], None]],
                 forward: Forward = inputs_only, target_latency: Optional[float] = None,
                 latency: LatencySettings = LatencySettings()) -> None:
        _check_options(target_macs, target_latency, tolerance, val_loader, evaluate, finetune_epochs, allocation,
                       min_keep, min_channels)
        self.pruner = copy.deepcopy(resolve_method(method))  # a method object is the caller's: never changed
        self.rounds = rounds or self.pruner.default_rounds
        self.loader, self.target_macs, self.tolerance, self.step, self.seed = loader, target_macs, tolerance, step, seed
        self.allocation, self.min_keep, self.min_channels = allocation, min_keep, min_channels
        self.progress, self.measure_latency = progress, measure_latency
        self.forward = forward
        batch = _first_batch(loader)
        self.example = example_inputs if example_inputs is not None else _one_sample(batch[0])
        self.classes, logits = _check_classifier(model, batch, loss_fn is not None)
        self.metric = resolve_metric(evaluate, val_loader, logits)
        if tolerance is not None and self.metric is None:
            raise FalfValueError("tolerance is measured by a metric: pass val_loader= (and evaluate= unless the "
                                 "outputs are class logits)")
        self.val_loader = val_loader
        self.distillation = _distillation(distill, distill_temperature, distill_where, distill_until, logits)
        self.main_loss = loss_fn or _default_loss
        self.store = CheckpointStore(checkpoint_dir) if checkpoint_dir else None
        self.resume = resume
        if resume and (self.store is None or not self.store.has_any()):
            raise CheckpointError(f"resume=True but there is no checkpoint in {checkpoint_dir!r}")
        self.model_type = type(model).__name__
        self.model = PartedModel.capture(model, self.example)  # the caller's model is left as it was
        self.origin = fingerprint(self.model.host)
        self.output_structure = _output_structure(self.model.host, self.example)
        # fvcore runs once here and once per round (on the candidate, for its record); the rest is predicted
        self.before, self.per_module = self._cost(self.model)
        self.analyses = {name: analyze_graph(self.model.part(name)) for name in self.model.names}
        if target_macs is not None:
            _check_target(self.analyses, self.per_module, self.before.macs, target_macs, min_keep, min_channels)
        self.latency = None
        if target_latency is not None:
            if not self.model.whole:
                raise FalfValueError(f"target_latency needs a model that traces whole; {self.model_type} is captured "
                                     f"in parts ({', '.join(self.model.names[:3])}...): pass target_macs")
            self.latency = _LatencyTarget(self.model.host, self.example, target_latency, latency)
        self.base_metric = self._measure(self.model.host, "before pruning")
        self.report_before = {"macs": self.before.macs, "flops": self.before.flops, "params": self.before.params,
                              "metric": self.base_metric, "widths": layer_widths(self.model.host),
                              "latency_ms": report_latency_ms(self.model.host, self.example) if measure_latency else None}
        self.budget = FineTuneBudget(finetune_epochs, self.rounds, finetune_lr, warmup,
                                     steps_per_epoch(loader, TrainConfig()))
        self.distilled = (DistillationLoss(self.model.host, self.main_loss, self.distillation)
                          if self.distillation.enabled else None)
        if trainer is None:  # falf_fx's own loop: the distilled loss when fine-tuning, the task loss otherwise
            own = {"finetune": own_loop(loader, self.distilled or self.main_loss, self.store, resume, progress,
                                        forward, self._after_finetune_epoch),
                   "method": own_loop(loader, self.main_loss, self.store, resume, progress, forward)}
            trainer = lambda phase: own["finetune" if phase.kind == "finetune" else "method"](phase)  # noqa: E731
        self.trainer = trainer
        if self.store is not None:
            for name in self.model.names:
                _check_checkpointable(self.model.part(name))
        self.history: list[dict[str, Any]] = []
        self.next_round, self.stopped = 0, False
        self.distill_stopped: Optional[dict[str, Any]] = None  # where the student passed the teacher
        self._epochs_before = self._phase_epoch = 0  # the fine-tuning epochs of the run before this phase, in it
        self.current = self.before
        if resume and self.store.path(_STATE).exists():
            self.load_state(self.store.load(_STATE, self.origin),  # weights_only: a tampered file is refused
                            f"checkpoint {self.store.path(_STATE)}")

    @property
    def gm(self) -> nn.Module:
        """The model after the last kept round: a GraphModule, or the user's object with slim parts."""
        return self.model.host

    def _cost(self, model: PartedModel) -> tuple[Cost, dict[str, tuple[int, dict[str, int]]]]:
        """MACs summed over the parts (the code between them is not counted), parameters of the whole model;
        and each part's MACs and MACs by module."""
        costs = {name: cost_and_macs_by_module(model.part(name), model.examples[name]) for name in model.names}
        macs = sum(cost.macs for cost, _ in costs.values())
        return Cost(macs, sum(p.numel() for p in model.host.parameters())), \
            {name: (cost.macs, per_module) for name, (cost, per_module) in costs.items()}

    # -- state between rounds (checkpoints, PruningSession.state_dict) ---------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs, in the pickle-free format (tensors, strings, numbers)."""
        return {"parts": {name: to_plain(self.model.part(name)) for name in self.model.names},
                "rest": self.model.rest_state(), "history": json.dumps(self.history, default=_plain),
                "round": self.next_round - 1, "method": json.dumps(self.pruner.state(), default=_plain),
                "stopped": self.stopped, "distill_stopped": json.dumps(self.distill_stopped)}

    def load_state(self, state: dict[str, Any], source: str = "state") -> None:
        if state.get("fingerprint", self.origin) != self.origin:
            raise CheckpointError("this state comes from a run on another model (its parameter names or shapes "
                                  "differ): load it into a session made from the same model")
        try:
            parts = {name: trace(from_plain(plain), self.model.examples[name])
                     for name, plain in state["parts"].items()}
        except (KeyError, ValueError, TypeError) as error:  # a graph that names what the format does not allow
            raise CheckpointError(f"{source} refused: {error}") from error
        self.model = self.model.with_parts(parts)
        if state["rest"]:
            self.model.host.load_state_dict(state["rest"], strict=False)
        self.history, self.next_round = json.loads(state["history"]), int(state["round"]) + 1
        self.pruner.load_state(json.loads(state["method"]))
        self.stopped = bool(state["stopped"])
        self._stop_distilling(json.loads(state.get("distill_stopped", "null")))
        self.current, self.per_module = self._cost(self.model)
        if self.latency is not None:
            self.latency.current = self.latency.measure(self.model.host)

    # -- the rounds ---------------------------------------------------------------------------------------

    def _measure(self, model: nn.Module, where: str) -> Optional[float]:
        return None if self.metric is None else self.metric(model, where)

    def _watches_teacher(self) -> bool:
        return (self.distilled is not None and self.distilled.active and self.metric is not None
                and self.distillation.until == "teacher_passed")

    def _stop_distilling(self, where: Optional[dict[str, Any]]) -> None:
        if where is not None and self.distilled is not None:
            self.distill_stopped = where
            self.distilled.stop()

    def _after_finetune_epoch(self, model: nn.Module) -> dict[str, Any]:
        """With ``distill_until="teacher_passed"``: the metric after each fine-tuning epoch, and distillation
        off for the rest of the run once it reaches the teacher's (the unpruned model's)."""
        if not self._watches_teacher():
            return {}
        self._phase_epoch += 1
        epoch = self._epochs_before + self._phase_epoch
        metric = self._measure(model, f"in round {self.next_round + 1}, after fine-tuning epoch {epoch}")
        if metric >= self.base_metric:
            self._stop_distilling({"round": self.next_round + 1, "finetune_epoch": epoch, "metric": metric,
                                   "teacher_metric": self.base_metric})
        return {"metric": metric, "distilling": self.distilled.active}

    def _resumed_phase(self, name: str, model: nn.Module) -> None:
        """A phase resumed mid-way goes on as it would have: its epochs so far, and whether it still distils."""
        saved = self.store.load(name, fingerprint(model)) if self.resume and self.store is not None else None
        history = saved["history"] if saved is not None else []
        self._phase_epoch = len(history)
        passed = next((r for r in history if r.get("distilling") is False), None)
        if passed is not None:
            self._stop_distilling({"round": self.next_round + 1,
                                   "finetune_epoch": self._epochs_before + passed["epoch"],
                                   "metric": passed["metric"], "teacher_metric": self.base_metric})

    def _distill_report(self) -> dict[str, Any]:
        """The distillation settings as they ran: without a metric ``teacher_passed`` distils to the end."""
        settings = self.distillation
        return {"alpha": settings.alpha, "temperature": settings.temperature, "where": settings.where,
                "until": settings.until if self.metric is not None else "end", "stopped": self.distill_stopped}

    def _kept_metric(self) -> Optional[float]:
        return next((r["metric"] for r in reversed(self.history) if r["kept"] and "metric" in r), self.base_metric)

    def done(self) -> bool:
        reached = self.target_macs is not None and self.current.macs <= self.target_macs * self.before.macs * 1.001
        reached = reached or (self.latency is not None and self.latency.reached())
        return self.stopped or reached or self.next_round >= self.rounds

    def _part_goals(self, goal_macs: float) -> dict[str, float]:
        """Each part's MACs goal: the same share of every part with channels to cut, the others as they are."""
        parts = {name: self.per_module[name][0] for name in self.model.names}
        cuttable = [name for name in parts if self.analyses[name].prunable_groups]
        if not cuttable:
            reasons = sorted({r for a in self.analyses.values() for g in a.groups for r in g.reasons})[:3]
            raise FalfError(f"nothing to prune: every channel group is frozen ({'; '.join(reasons)})")
        fixed = sum(macs for name, macs in parts.items() if name not in cuttable)
        share = max(goal_macs - fixed, 0.0) / max(sum(parts[name] for name in cuttable), 1.0)
        return {name: parts[name] * min(share, 1.0) for name in cuttable}

    def _analysis(self, name: str) -> Analysis:
        if self.analyses[name].graph_module is not self.model.part(name):  # a kept round, or a resumed run
            self.analyses[name] = analyze_graph(self.model.part(name))
        return self.analyses[name]

    def _round(self, name: str, index: int, goal: float, final: Optional[float], auxiliary: dict[str, int],
               latency_goal_ms: Optional[float] = None) -> Round:
        """The method's view of part ``name`` this round (for a whole model, of the model): ``goal`` its MACs
        after this round, ``final`` after the last (None: a tolerance only).  With a latency target the goals
        are ``latency_goal_ms`` and the target, in the round's latency model."""
        analysis, (part_macs, per_module) = self._analysis(name), self.per_module[name]
        if self.latency is None:
            cost_model, costs, total = MacsModel(analysis, per_module, part_macs), \
                channel_mac_costs(analysis, per_module), part_macs
        else:
            cost_model, costs, goal, final = self.latency.round_model(analysis, latency_goal_ms, self.allocation,
                                                                      self.min_keep, self.min_channels)
            total = cost_model.total
        embed = None if self.model.whole else _embedder(copy.deepcopy(self.model.host), name)
        return Round(self.model.part(name), analysis, self.loader, self.main_loss, self.classes, index, self.seed,
                     macs_to_remove=total - goal, costs=costs, total_macs=total, target_macs=final,
                     val_loader=self.val_loader, checkpoints=self.store, resume=self.resume, progress=self.progress,
                     macs_model=cost_model, allocation=self.allocation,
                     min_keep=self.min_keep, min_channels=self.min_channels, auxiliary_epochs=auxiliary,
                     trainer=self.trainer,
                     forward=self.forward, embed=embed, part_name=name)

    def run_round(self) -> dict[str, Any]:
        """One round, its record appended to the history and, with a checkpoint directory, saved."""
        index = self.next_round
        goal_macs = _round_goal(self.before.macs, self.current.macs, index, self.rounds, self.target_macs, self.step)
        auxiliary: dict[str, int] = {}
        slim, removed, extra = {}, 0, {}
        finals = None if self.target_macs is None else self._part_goals(self.target_macs * self.before.macs)
        latency_goal_ms = None if self.latency is None else self.latency.goal(index, self.rounds)
        for name, goal in self._part_goals(goal_macs).items():
            round_ = self._round(name, index, goal, None if finals is None else finals[name], auxiliary,
                                 latency_goal_ms)
            proposal = self.pruner.propose(round_)
            slim[name] = slim_graph_module(proposal.model, proposal.plan)
            removed += proposal.plan.num_removed
            extra.update(proposal.record)
        candidate = self.model.with_parts(slim)
        _check_output_structure(candidate.host, self.example, self.output_structure, index)
        candidate, metric, finetuning = self._finetune(candidate, index, self.budget.config(index, self.seed))
        candidate_cost, candidate_per_module = self._cost(candidate)
        record = {"round": index + 1, "method": self.pruner.name, "channels_removed": removed,
                  "macs": candidate_cost.macs, **finetuning, "auxiliary_epochs": auxiliary, **extra}
        record["macs_ratio"] = record["macs"] / self.before.macs
        if self.latency is not None:
            record["latency_ms"] = self.latency.measure(candidate.host)
            record["latency_ratio"] = record["latency_ms"] / self.latency.before
        if self.metric is not None:
            record["metric"] = metric
        # outside the tolerance: keep the previous round's model
        record["kept"] = self.tolerance is None or self.base_metric - record["metric"] <= self.tolerance
        self.history.append(record)
        if record["kept"]:
            self.model, self.current, self.per_module = candidate, candidate_cost, candidate_per_module
            if self.latency is not None:
                self.latency.current = record["latency_ms"]
        self.stopped = not self.pruner.observe(record)
        self.next_round = index + 1
        if self.store is not None and (not is_distributed() or torch.distributed.get_rank() == 0):
            self.store.save(_STATE, self.origin, self.state())  # the safe format, written atomically
        return record

    def _finetune(self, candidate: PartedModel, index: int,
                  config: TrainConfig) -> tuple[PartedModel, Optional[float], dict[str, Any]]:
        """The round's fine-tuning, and the candidate's metric after it.

        With a metric, a fine-tuning that ends more than 5% (relative) below where it
        started has diverged: a thin slim network at the peak learning rate (NPN's at an
        eighth of LeNet-5's MACs fell from 91% to chance).  It is redone from the slim
        model at half the learning rate; if that diverges too, the slim model goes on as
        it was.  Either is recorded, and the epochs spent count in the budget.
        """
        after = f"in round {index + 1}, after fine-tuning"
        name = f"round{index}-finetune"
        if not config.epochs or self.metric is None:
            if config.epochs:  # no metric: nothing to watch, so no epochs to count
                self.trainer(Phase(candidate.host, "finetune", name, index, config))
            return candidate, self._measure(candidate.host, after), {"finetune_epochs": config.epochs}
        start = self._measure(candidate.host, f"in round {index + 1}, before fine-tuning")
        spent = 0
        for attempt, lr in enumerate((config.lr, config.lr / 2)):
            trained = candidate.copy()
            phase = name + ("-retry" if attempt else "")
            self._epochs_before = sum(r["finetune_epochs"] for r in self.history) + spent
            self._resumed_phase(phase, trained.host)
            self.trainer(Phase(trained.host, "finetune", phase, index, dataclasses.replace(config, lr=lr)))
            spent += config.epochs
            metric = self._measure(trained.host, after)
            if metric >= start - 0.05 * abs(start):
                return trained, metric, {"finetune_epochs": spent, **({"finetune_retry_lr": lr} if attempt else {})}
            warnings.warn(f"compress: the fine-tuning of round {index + 1} at lr {lr:g} diverged ({self.metric.name} "
                          f"{start:.4f} before it, {metric:.4f} after)" + ("; retrying at half the lr" if not attempt
                                                                           else "; the slim model goes on untuned"),
                          stacklevel=4)
        return candidate, start, {"finetune_epochs": spent, "finetune_diverged": True}

    def result(self) -> CompressResult:
        after = self.current
        report = {"model_type": self.model_type, "metric": None if self.metric is None else self.metric.name,
                  "parts": None if self.model.whole else self.model.names,
                  "before": self.report_before,
                  "after": {"macs": after.macs, "flops": after.flops, "params": after.params,
                            "metric": self._kept_metric(), "widths": layer_widths(self.gm),
                            "latency_ms": report_latency_ms(self.gm, self.example) if self.measure_latency else None},
                  "method": self.pruner.name, "method_options": method_options(self.pruner),
                  "macs_ratio": after.macs / self.before.macs,
                  "target": _target_report(self.target_macs, after.macs / self.before.macs, self.latency),
                  "budget": _budget_report(self.budget, self.history, self._distill_report(), self.allocation,
                                           self.min_keep, self.min_channels)}
        if self.model.whole and is_library_model(self.gm):
            warn_stale_config(self.gm)
        result = CompressResult(self.gm, report, self.history)
        if self.store is not None:
            report_json = json.dumps({**report, "history": self.history}, indent=1) + os.linesep
            Path(self.store.directory, "report.json").write_text(report_json)
            _write_html_report(result, self.example, Path(self.store.directory, "report.html"), self.measure_latency)
        return result


def compress(model: nn.Module, loader: DataLoader, *, method: Union[str, PruningMethod] = "magnitude",
             example_inputs: Any = None,
             val_loader: Optional[DataLoader] = None, loss_fn: Optional[Callable] = None,
             evaluate: Union[None, str, Callable[[nn.Module], float]] = None,
             target_macs: Optional[float] = None, tolerance: Optional[float] = None, rounds: Optional[int] = None,
             target_latency: Optional[float] = None, latency: LatencySettings = LatencySettings(),
             step: float = 0.3, finetune_epochs: int = 8, finetune_lr: float = 0.02, warmup: float = 0.05,
             finetune: Optional[Callable[[nn.Module, int, Phase], Any]] = None, forward: Forward = inputs_only,
             allocation: str = "uniform", min_keep: float = 0.05, min_channels: int = 4,
             distill: Optional[float] = None, distill_temperature: float = 4.0, distill_where: str = "all",
             distill_until: str = "teacher_passed", checkpoint_dir: Optional[str] = None, resume: bool = False,
             seed: int = 0, progress: bool = True, measure_latency: bool = True) -> CompressResult:
    """Compress a trained model: rounds of score -> slim -> fine-tune.

    ``method`` is a name (``"falf"``, with its defaults) or a method object with its
    options (``falf_fx.methods.FALF(aux_epochs=2)``, or your own ``PruningMethod``).
    Stops at ``target_macs`` (fraction of the original MACs), at ``target_latency``
    (fraction of the original's latency measured on this machine under ``latency``:
    batch size, threads; within 5%; whole models only), or before the metric
    drops by more than ``tolerance``, in the metric's units (0.01 = one point).  The
    metric is ``evaluate``: ``"top1"`` (the default for class logits), ``"miou"``,
    ``"map"``, ``"map50"`` (torchmetrics, on ``val_loader``) or ``callable(model) -> float``,
    higher is better.  ``loss_fn(outputs, batch)`` gets the model's outputs as they
    are (tensor, tuple, dict, ``ModelOutput``); a dict or list of losses is summed;
    the default is cross-entropy on class logits.  ``forward(model, batch)`` runs the
    model on a training batch (default ``model(batch[0])``; torchvision's detectors
    train on ``falf_fx.training.inputs_and_targets``, ``model(images, targets)``).
    A model that cannot be traced whole (a detector) is cut in its traced parts,
    inside a copy of the user's own object, which is what comes back.
    ``rounds`` is the most rounds to run (default: the method's own, 1 for magnitude);
    a method may stop earlier.  ``finetune_epochs`` is the fine-tuning budget of the
    whole run, shared by the rounds under one warm-up + cosine schedule peaking at
    ``finetune_lr``; methods' own phases (FALF's auxiliary phase...) come on top and
    are reported apart.  ``finetune(model, epochs, phase)`` hands every training
    phase to your own loop instead: train ``model`` in place, adding
    ``phase.penalty()`` (the method's term; zero when ``phase.kind == "finetune"``)
    to your loss after each forward.  In falf_fx's loop fine-tuning distils the
    original model's logits with weight ``distill`` (0: off; by default 0.5 for class
    logits, off for other outputs) at ``distill_temperature``, on the samples
    ``distill_where`` picks, until the slim model's metric first measures at least the
    original's after a fine-tuning epoch (``distill_until="teacher_passed"``, the default;
    without a metric, and with ``"end"``, to the end of the run; ``falf_fx.distill.Distillation``).  ``allocation``
    shares a MACs goal between groups: ``uniform`` (the same share of every group),
    ``global`` or ``cost`` (scores ranked across groups, ``cost`` per MAC saved);
    ``min_keep`` of every group stays, and at least ``min_channels`` of it (4: a
    narrow stage cut to 3 channels costs more accuracy than the wider stages' extra
    channels buy back).  ``measure_latency=False`` leaves the CPU
    latency out of the report (it costs seconds; tests and sweeps do not need it).
    """
    trainer = None if finetune is None else (lambda phase: finetune(phase.model, phase.epochs, phase))
    run = _Run(model, loader, method=method, example_inputs=example_inputs, val_loader=val_loader, loss_fn=loss_fn,
               evaluate=evaluate, target_macs=target_macs, tolerance=tolerance, rounds=rounds, step=step,
               finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, warmup=warmup, allocation=allocation,
               min_keep=min_keep, min_channels=min_channels, distill=distill,
               distill_temperature=distill_temperature, distill_where=distill_where, distill_until=distill_until,
               checkpoint_dir=checkpoint_dir, resume=resume, seed=seed, progress=progress,
               measure_latency=measure_latency, trainer=trainer, forward=forward, target_latency=target_latency,
               latency=latency)
    while not run.done():
        run.run_round()
    return run.result()


def _embedder(scratch: nn.Module, name: str) -> Callable[[nn.Module], nn.Module]:
    """``embed`` of a part's Round: ``scratch`` (a copy of the whole model, where the method's phases train)
    with the given module in the place of part ``name``."""
    def embed(module: nn.Module) -> nn.Module:
        scratch.set_submodule(name, module)
        return scratch
    return embed


def _one_sample(inputs: Any) -> Any:
    """The example compress traces with: one sample of a batch's inputs (a list of images is one input)."""
    return inputs[:1] if isinstance(inputs, torch.Tensor) else (inputs[:1],)


def _output_structure(model: nn.Module, example: Any) -> Any:
    """The pytree structure of the model's eval outputs: what a slim model must still return."""
    with torch.no_grad(), eval_mode(model), attributes_kept(model):  # YOLO's Detect keeps the input shape
        outputs = model(*example) if isinstance(example, tuple) else model(example)
    return tree_structure(outputs)


def _check_output_structure(candidate: nn.Module, example: Any, expected: Any, index: int) -> None:
    got = _output_structure(candidate, example)
    if got != expected:
        raise FalfError(f"round {index + 1}: the slim model's outputs are structured {got}, the original's "
                        f"{expected}; this is a bug in falf_fx's rewrite, please report it with the model")


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


def _target_report(target_macs: Optional[float], reached: float,
                   latency: Optional[_LatencyTarget] = None) -> Optional[dict[str, Any]]:
    """Whether the MACs target was met (within 1%), or the latency target (within 5%); a miss is also a
    warning."""
    if latency is not None:
        ratio = latency.current / latency.before
        met = latency.reached()
        if not met:
            warnings.warn(f"compress missed target_latency={latency.target}: the slim model measures {ratio:.4f} of "
                          "the original's latency (a round was rejected by the tolerance, or the method stopped "
                          "early); see report['history']", stacklevel=3)
        return {"latency": latency.target, "reached": round(ratio, 6), "met": met, **latency.report()}
    if target_macs is None:
        return None
    met = reached <= target_macs * 1.01
    if not met:
        warnings.warn(f"compress missed target_macs={target_macs}: the slim model keeps {reached:.4f} of the MACs "
                      "(a round was rejected by the tolerance, or the method stopped early); see report['history']",
                      stacklevel=3)
    return {"macs": target_macs, "reached": round(reached, 6), "met": met}


def _budget_report(budget: FineTuneBudget, history: list[dict], distill: dict[str, Any], allocation: str,
                   min_keep: float, min_channels: int) -> dict[str, Any]:
    """What the run spent, fine-tuning and each method phase apart, and the settings that spent it."""
    auxiliary: dict[str, int] = {}
    for record in history:
        for kind, epochs in record["auxiliary_epochs"].items():
            auxiliary[kind] = auxiliary.get(kind, 0) + epochs
    return {"finetune_epochs": sum(r["finetune_epochs"] for r in history), "finetune_epochs_budget": budget.epochs,
            "auxiliary_epochs": auxiliary, "rounds": len(history), "lr": budget.lr,
            "schedule": f"linear warm-up over {budget.warmup:.0%}, then cosine to 0, over the whole run",
            "distill": distill,
            "allocation": allocation, "min_keep": min_keep, "min_channels": min_channels}
