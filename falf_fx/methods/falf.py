"""FALF: filters recruited by a fatuous (meaningless) auxiliary task are the ones to prune.

Each round: attach a fatuous head (instrumentation pass), train ``L_main + lam * L_fatuous``
briefly at a small learning rate, then score every channel by its devotion to the
fatuous task, either by how far its weights drifted (``drift``, the Stability
method of the WACV 2019 paper) or by the share of its Taylor saliency that goes
to the fatuous loss (``taylor``).  Steps 3 and 5 of methods.md are reconstructions:
every choice here is an option, settled by the ablation.

A channel's score (higher = keep) is its main-task Taylor saliency discounted by
its devotion d in [0, 1]: ``S_main * (1 - d)``.  Devotion alone would keep dead
filters (a filter whose output is always zero neither drifts nor has saliency,
so it looks undevoted); the main-task factor sends those first.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from torch import fx, nn

from falf_fx.passes.instrument import AttachFatuousHeads, last_feature_map

from ..errors import FalfValueError
from ..training import TrainConfig, epoch_loader, total_loss
from .base import Proposal, Round, ScoreMethod, SplitOutputs, shared_scores, weight_members

__all__ = ["FALF", "Stability", "FATUOUS_TARGETS", "FALF_SCORES"]

FATUOUS_TARGETS = ("random", "constant", "uniform", "noise")
FALF_SCORES = ("drift", "taylor")


def _sample_keys(inputs: Any) -> torch.Tensor:
    """One integer per sample, a hash of its values: fatuous targets fixed per sample without its index,
    so that they also hold in a training loop that is the user's (a tensor batch, or a list of images)."""
    samples = list(inputs) if isinstance(inputs, (list, tuple)) else inputs
    if isinstance(samples, torch.Tensor):
        samples = list(samples.detach())
    if not samples or not all(isinstance(x, torch.Tensor) for x in samples):
        raise FalfValueError("fatuous targets 'random' and 'noise' are fixed per sample, drawn from its values; "
                             f"these inputs ({type(inputs).__name__}) are not tensors: use target='uniform'")
    weights: dict[int, torch.Tensor] = {}  # one fixed random weighting per sample size
    keys = []
    for x in samples:
        values = (x.detach().float().flatten().cpu() * 4096).round().clamp(-2 ** 20, 2 ** 20).long()
        if values.numel() not in weights:
            generator = torch.Generator().manual_seed(values.numel())
            weights[values.numel()] = torch.randint(1, 2 ** 20, values.shape, generator=generator)
        keys.append(int((values * weights[values.numel()]).sum()) % (2 ** 31 - 1))
    return torch.tensor(keys)


@dataclass
class FatuousTask:
    """Targets for the fatuous head, fixed per sample for the whole run (drawn from the sample's values)."""

    kind: str
    num_outputs: int
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in FATUOUS_TARGETS:
            raise FalfValueError(f"fatuous target must be one of {FATUOUS_TARGETS}, not {self.kind!r}")

    def _drawn(self, inputs: Any, draw) -> torch.Tensor:
        return torch.stack([draw(torch.Generator().manual_seed(self.seed * 1_000_003 + int(key)))
                            for key in _sample_keys(inputs)])

    def loss(self, aux: torch.Tensor, inputs: Any) -> torch.Tensor:
        if self.kind == "random":
            labels = self._drawn(inputs, lambda g: torch.randint(0, self.num_outputs, (), generator=g))
            return nn.functional.cross_entropy(aux, labels.to(aux.device))
        if self.kind == "constant":
            return nn.functional.cross_entropy(aux, aux.new_zeros(aux.shape[0], dtype=torch.long))
        if self.kind == "uniform":  # cross-entropy to the uniform distribution: maximise entropy
            return -nn.functional.log_softmax(aux, dim=1).mean()
        noise = self._drawn(inputs, lambda g: torch.randn(self.num_outputs, generator=g))
        return nn.functional.mse_loss(aux, noise.to(aux.device))


def _per_channel(round_: Round, values: dict[str, torch.Tensor], reduce_sq: bool) -> dict[int, np.ndarray]:
    """Sum a per-parameter tensor over each channel's slices, group by group."""
    out = {}
    for group in round_.analysis.prunable_groups:
        total = np.zeros(group.size)
        for member, tensor in weight_members(round_.analysis, group.id):
            value = values[member.name]
            moved = value.movedim(member.dim, 0).reshape(value.shape[member.dim], -1)
            per_pos = (moved.pow(2) if reduce_sq else moved.abs()).sum(1).double().numpy()
            np.add.at(total, member.channels, per_pos[member.positions])
        out[group.id] = total
    return out


@dataclass
class FALF(ScoreMethod):
    """Options: ``target`` (fatuous task), ``score``, ``lam`` (weight of the fatuous loss),
    ``aux_epochs`` and ``aux_lr`` (the short, gentle auxiliary phase), ``points``
    (attachment nodes; default the last feature map), ``taylor_batches``, ``probe``
    (True: the auxiliary phase only measures, and the weights from before it are the
    ones slimmed, so the fatuous loss never harms the kept filters).

    The auxiliary phase trains a copy: a round that breaks the tolerance leaves the
    previous model as it was."""

    target: str = "uniform"  # the ablation's winner (benchmarks/results/ablation_falf.json, README)
    score: str = "drift"
    lam: float = 1.0
    aux_epochs: int = 1
    aux_lr: float = 1e-3
    points: Optional[list[str]] = None
    taylor_batches: int = 8
    probe: bool = False
    name: ClassVar[str] = "falf"

    def __post_init__(self) -> None:
        if self.score not in FALF_SCORES:
            raise FalfValueError(f"FALF score must be one of {FALF_SCORES}, not {self.score!r}")
        if self.target not in FATUOUS_TARGETS:
            raise FalfValueError(f"fatuous target must be one of {FATUOUS_TARGETS}, not {self.target!r}")

    def propose(self, round_: Round) -> Proposal:
        trained = copy.deepcopy(round_.gm)
        scores = self.scores(round_, trained)
        model = round_.gm if self.probe else trained
        return Proposal(round_.allocate(scores), model)

    def scores(self, round_: Round, trained: fx.GraphModule) -> dict[int, np.ndarray]:
        """Train ``trained`` (a copy of ``round_.gm``) with the fatuous head and score its channels."""
        main, devotion = self.devotion(round_, trained)
        return shared_scores({g: main[g] * (1.0 - devotion[g]) for g in main})

    def devotion(self, round_: Round, trained: fx.GraphModule) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """Per channel, its main-task saliency and its devotion in [0, 1] to the fatuous task."""
        if not self._attachable(round_):  # a detector's RPN or box head: its main-task saliency alone
            main, _ = self._saliency(round_, trained, None, None)
            return main, {g: np.zeros_like(m) for g, m in main.items()}
        task = FatuousTask(self.target, round_.num_classes, round_.seed)
        instrumented = AttachFatuousHeads(round_.num_classes, self.points, seed=round_.seed)(trained).graph_module
        split = SplitOutputs(instrumented)  # the user's outputs; the heads' stay behind for the penalty
        before = {name: p.detach().clone() for name, p in trained.named_parameters()}

        def penalty() -> torch.Tensor:
            return self.lam * sum(task.loss(head, split.inputs) for head in split.extra) / len(split.extra)

        config = TrainConfig(epochs=self.aux_epochs, lr=self.aux_lr, seed=round_.seed, schedule="constant")
        round_.train(round_.phase("fatuous", split, config, penalty))
        main, fatuous = self._saliency(round_, trained, instrumented, task)
        if self.score == "drift":
            drift = {n: p.detach() - before[n] for n, p in trained.named_parameters()}
            moved = _per_channel(round_, drift, reduce_sq=True)
            size = _per_channel(round_, before, reduce_sq=True)
            relative = {g: np.sqrt(moved[g]) / (np.sqrt(size[g]) + 1e-12) for g in moved}
            return main, {g: r / (r + np.median(r) + 1e-12) for g, r in relative.items()}
        return main, {g: fatuous[g] / (fatuous[g] + main[g] + 1e-12) for g in main}

    def _attachable(self, round_: Round) -> bool:
        """Whether the fatuous heads go on this model: a model traced whole, or a part fed the images batch
        (a detector's backbone and FPN, whose samples are the images and whose targets follow them)."""
        if self.points or round_.embed is None:
            return True
        first = next(n for n in round_.gm.graph.nodes if n.op == "placeholder").meta.get("val")
        return isinstance(first, torch.Tensor) and first.dim() == 4 and last_feature_map(round_.gm) is not None

    def _saliency(self, round_: Round, trained, instrumented, task) -> tuple[dict, dict]:
        """Per channel, |w * dL/dw| summed over a few batches, for the main and (with heads) the fatuous loss."""
        params = dict(trained.named_parameters())
        kinds = ("fatuous", "main") if instrumented is not None else ("main",)
        saliency = {kind: {n: torch.zeros_like(p) for n, p in params.items()} for kind in kinds}
        model = instrumented if instrumented is not None else trained
        was_training = model.training
        model.eval()
        split = SplitOutputs(instrumented) if instrumented is not None else trained
        batches = epoch_loader(round_.train_loader, round_.seed, round_.index)  # the same batches on resume
        for index, batch in enumerate(batches):
            if index >= self.taylor_batches:
                break
            for kind in kinds:
                model.zero_grad(set_to_none=True)
                outputs = round_.run(split, batch)
                loss = (sum(task.loss(h, split.inputs) for h in split.extra) if kind == "fatuous"
                        else total_loss(round_.main_loss(outputs, batch), "saliency"))
                loss.backward()
                for name, p in params.items():
                    if p.grad is not None:
                        saliency[kind][name] += (p.grad * p).detach().abs()
        model.train(was_training)  # the modules are the model's own
        main = _per_channel(round_, saliency["main"], reduce_sq=False)
        return main, (_per_channel(round_, saliency["fatuous"], reduce_sq=False) if instrumented is not None else {})


@dataclass
class Stability(FALF):
    """The WACV 2019 conference version: weight drift (how unstable a filter is) under
    fixed random labels, the paper's perturbing task."""

    target: str = "random"
    name: ClassVar[str] = "stability"
