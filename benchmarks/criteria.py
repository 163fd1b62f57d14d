"""How well does each criterion predict the damage a removal does?

Ground truth: on a small trained net, remove each prunable channel alone (a real
slim model, one channel gone) and record the increase of the validation loss.
Then score every channel by every criterion and report the Spearman rank
correlation between score and damage: within each group (what a uniform
allocation uses; size-weighted mean over groups) and across all channels (what a
global allocation uses).  Higher is better; random is the floor.

Criteria: L1 and first-order Taylor (``taylor``); FALF's score for each fatuous
target x score kind, and its devotion alone (the share of a channel given to the
fatuous task, without the main-task saliency it is multiplied by;
``falf-random-drift`` is Stability); CFP's redundancy (minus a filter's largest |rho| with another filter of its
group); random.

    python benchmarks/criteria.py [--nets lenet5,resnet20] [--cache benchmarks/weights] [--val-samples 512]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "criteria.json"
FALF_VARIANTS = [(target, score) for target in ("uniform", "random") for score in ("drift", "taylor")]


def _ce(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs, batch[1])


def _net(name: str, cache: Path):
    """(trained model, train loader, val loader); ResNet-20 reuses the quality benchmark's seed-0 weights."""
    from falf_fx.training import TrainConfig, train
    if name == "lenet5":
        from falf_fx.data import digits_loaders
        from falf_fx.models import lenet5
        train_loader, val_loader = digits_loaders(image_size=28, batch_size=64, seed=0)
        torch.manual_seed(0)
        model = lenet5()
        train(model, train_loader, _ce, TrainConfig(epochs=12, lr=0.05, seed=0), progress=False)
        return model, train_loader, val_loader
    from benchmarks.quality import _build, _loaders, pretrain, weights_path
    info = pretrain(name, 0, cache)
    model = _build(name)
    model.load_state_dict(torch.load(weights_path(info), weights_only=True))
    train_loader, val_loader = _loaders()
    return model, train_loader, val_loader


@torch.no_grad()
def _loss(model, batches) -> float:
    model.eval()
    return float(sum(_ce(model(x), (x, y)) * len(y) for x, y in batches) / sum(len(y) for _, y in batches))


def ground_truth(gm, analysis, batches) -> dict[int, np.ndarray]:
    """Validation-loss increase when each channel alone is removed (0 where it cannot go alone)."""
    from falf_fx import PruningPlan
    from falf_fx.errors import PlanError
    from falf_fx.passes.rewrite import slim_graph_module
    base = _loss(gm, batches)
    damage = {}
    for group in analysis.prunable_groups:
        values = np.zeros(group.size)
        for index in np.flatnonzero(~group.frozen):
            try:
                plan = PruningPlan.build(analysis, {group.id: [int(index)]})
            except PlanError:
                continue
            values[index] = _loss(slim_graph_module(gm, plan, verify=False), batches) - base
        damage[group.id] = values
    return damage


def _round(gm, analysis, train_loader):
    from falf_fx.methods import Round
    return Round(gm, analysis, train_loader, _ce, 10, 0, 0, progress=False)


def criteria(gm, analysis, train_loader, seed: int = 0) -> dict[str, dict[int, np.ndarray]]:
    from falf_fx.importance import group_importance
    from falf_fx.methods import FALF
    from falf_fx.methods.correlation import pearson, producer_filters
    from falf_fx.methods.taylor import taylor_scores
    out = {"l1": group_importance(analysis, "l1"), "random": group_importance(analysis, "random", seed=seed),
           "taylor": taylor_scores(_round(gm, analysis, train_loader), 16)}
    with torch.no_grad():
        out["cfp_redundancy"] = {}
        for group in analysis.prunable_groups:
            rho = pearson(producer_filters(gm, group).double()).abs().numpy()
            np.fill_diagonal(rho, 0.0)
            out["cfp_redundancy"][group.id] = -rho.max(axis=1)
    for target, score in FALF_VARIANTS:  # falf-random-drift is Stability
        name = f"falf-{target}-{score}"
        method = FALF(target=target, score=score, aux_epochs=1, taylor_batches=16)
        main, devotion = method.devotion(_round(gm, analysis, train_loader), copy.deepcopy(gm))
        out[name] = {g: main[g] * (1.0 - devotion[g]) for g in main}
        out[f"{name}-devotion-only"] = {g: -d for g, d in devotion.items()}  # less devoted = keep
    return out


def correlations(scores: dict[int, np.ndarray], damage: dict[int, np.ndarray], analysis) -> dict:
    within, weights = [], []
    for group in analysis.prunable_groups:
        free = ~group.frozen
        if free.sum() < 3 or np.ptp(damage[group.id][free]) == 0:
            continue
        rho = spearmanr(scores[group.id][free], damage[group.id][free]).statistic
        if np.isfinite(rho):
            within.append(rho)
            weights.append(free.sum())
    s = np.concatenate([scores[g.id][~g.frozen] for g in analysis.prunable_groups])
    d = np.concatenate([damage[g.id][~g.frozen] for g in analysis.prunable_groups])
    return {"within_groups": round(float(np.average(within, weights=weights)), 4),
            "across_groups": round(float(spearmanr(s, d).statistic), 4)}


def main() -> None:
    import falf_fx
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", default="lenet5,resnet20")
    parser.add_argument("--cache", default="benchmarks/weights", help="quality.py's base weights")
    parser.add_argument("--val-samples", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.nets.split(","):
        t0 = time.perf_counter()
        model, train_loader, val_loader = _net(name, Path(args.cache))
        subset = Subset(val_loader.dataset, range(min(args.val_samples, len(val_loader.dataset))))
        batches = list(DataLoader(subset, batch_size=256))
        gm = falf_fx.trace(model.eval(), batches[0][0][:1])
        analysis = falf_fx.analyze(gm)
        damage = ground_truth(gm, analysis, batches)
        scored = criteria(gm, analysis, train_loader)
        results[name] = {"channels": int(sum((~g.frozen).sum() for g in analysis.prunable_groups)),
                         "groups": len(analysis.prunable_groups), "val_samples": len(subset),
                         "base_val_loss": round(_loss(gm, batches), 4),
                         "spearman": {c: correlations(s, damage, analysis) for c, s in scored.items()},
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: results[name]}), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(2), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
