"""Compression quality against the peers: accuracy at equal MACs and equal fine-tuning epochs.

The task is ``falf_fx.data.shapes_loaders``: 10,000 training and 2,000 validation
procedural 32x32 RGB images of 10 classes (one validation point = 20 images).
Per (model, seed) one network is trained once (cached under ``--cache``, by default
``benchmarks/weights``, where the small models' weights are committed: training is
not bitwise reproducible across machines, and a cell compares recipes on the same
weights; every base and run records the weights' SHA-256); every
recipe then starts from those weights and gets ``--epochs`` fine-tuning epochs
after pruning under the same schedule (SGD, warm-up + cosine, peak lr 0.02).
A method's own phases (FALF's auxiliary phase, Torch-Pruning's sparse training
for GroupNormPruner) come on top and are recorded.

Recipes:
- ``falf_fx``: ``falf_fx.compress`` with its defaults; ``falf_fx:<name>`` a variant
  from ``VARIANTS`` (ablations: no distillation, 4 rounds, other allocations, methods);
  ``falf_fx@<macs>`` plans to ``<macs>`` instead of the cell's target: where a peer's
  rounding lands far below the target, this compares the two at the peer's MACs;
- ``tp-l1``, ``tp-taylor``, ``tp-groupnorm``: Torch-Pruning 1.6.1, uniform per layer,
  stepped until the MACs target, then fine-tuned with plain cross-entropy;
- ``modelopt-fastnas``: NVIDIA ModelOpt's FastNAS search under a FLOPs constraint,
  validation accuracy as its score function, then fine-tuned alike.

Runs go to worker processes with one torch thread each; the JSON is rewritten
after every finished run, so a cut-short run leaves honest partial results.

    python benchmarks/quality.py [--models vgg11,resnet20] [--targets 0.25,0.0625] [--seeds 0,1,2]
                                 [--recipes falf_fx,tp-l1,...] [--workers 2] [--cache benchmarks/weights]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
WEIGHTS = Path(__file__).resolve().parent / "weights"
ROOT = WEIGHTS.parent.parent
MODELS = ("vgg11", "resnet20", "mobilenetv2", "resnet56")
TARGETS = (0.5, 0.25, 0.125, 0.0625)
PEERS = ("tp-l1", "tp-taylor", "tp-groupnorm", "modelopt-fastnas")
PRETRAIN = {"epochs": 15, "lr": 0.05, "warmup": 0.05}
FINETUNE = {"epochs": 8, "lr": 0.02, "warmup": 0.05}
BATCH_SIZE = 64
# falf_fx:<name> -> compress options on top of the defaults (ablations and the other methods); the variants
# measured before distill_until="teacher_passed" became the default say "end", as they ran
VARIANTS = {
    "distill-end": {"distill_until": "end"},
    "no-distill": {"distill": 0.0},
    "distill-correct": {"distill_where": "teacher_correct", "distill_until": "end"},
    "distill-ahead": {"distill_where": "teacher_ahead", "distill_until": "end"},
    "ahead-passed": {"distill_where": "teacher_ahead", "distill_until": "teacher_passed"},
    "rounds4": {"rounds": 4, "distill_until": "end"},
    "global": {"allocation": "global", "distill_until": "end"},
    "cost": {"allocation": "cost", "distill_until": "end"},
    "taylor": {"method": "taylor", "distill_until": "end"},
    "taylor-cost": {"method": "taylor", "allocation": "cost", "distill_until": "end"},
    "taylor-passed": {"method": "taylor"},
    "falf": {"method": "falf", "distill_until": "end"},
    "stability": {"method": "stability", "distill_until": "end"},
    "correlation": {"method": "correlation", "distill_until": "end"},
    "pruner_network": {"method": "pruner_network", "distill_until": "end"},
    "min-channels-1": {"min_channels": 1, "distill_until": "end"},
}


def _build(name: str) -> torch.nn.Module:
    from falf_fx import models
    return {"vgg11": models.vgg11_cifar, "resnet20": models.resnet20, "resnet56": models.resnet56,
            "mobilenetv2": models.mobilenet_v2_cifar}[name]()


def _loaders():
    from falf_fx.data import shapes_loaders
    return shapes_loaders(batch_size=BATCH_SIZE, seed=0)


def _ce(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs, batch[1])


def _config(settings: dict, seed: int):
    from falf_fx.training import TrainConfig
    return TrainConfig(epochs=settings["epochs"], lr=settings["lr"], warmup=settings["warmup"], seed=seed)


def pretrain(model_name: str, seed: int, cache: Path) -> dict:
    """Train (model, seed) once; every recipe starts from these weights."""
    from falf_fx.training import evaluate, train
    torch.set_num_threads(1)
    path = cache / f"quality-{model_name}-{seed}-e{PRETRAIN['epochs']}.pt"
    train_loader, val_loader = _loaders()
    torch.manual_seed(seed)
    model = _build(model_name)
    t0 = time.perf_counter()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, train_loader, _ce, _config(PRETRAIN, seed), phase="pretrain", progress=False)
        torch.save(model.state_dict(), path)
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"model": model_name, "seed": seed, "path": str(shown), "weights_sha256": _sha256(path),
            "accuracy": evaluate(model, val_loader)["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}


def weights_path(base: dict) -> Path:
    """The weights file of a ``pretrain`` record (its path is kept relative to the repository)."""
    return ROOT / base["path"]


def _sha256(path: Path) -> str:
    """The first 16 hex digits of the weights file's SHA-256: which base a run started from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _macs(model, x) -> int:
    from falf_fx.flops import count_cost
    return count_cost(model, x).macs


def _torch_pruning(model, recipe: str, target: float, train_loader, seed: int) -> dict:
    """Torch-Pruning's uniform recipe: raise the per-layer ratio a step at a time until the MACs target."""
    import torch_pruning as tp
    x = next(iter(train_loader))[0][:1]
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    importance = {"tp-l1": tp.importance.MagnitudeImportance(p=1),
                  "tp-taylor": tp.importance.TaylorImportance(),
                  "tp-groupnorm": tp.importance.GroupMagnitudeImportance(p=2)}[recipe]
    kind = tp.pruner.GroupNormPruner if recipe == "tp-groupnorm" else tp.pruner.MetaPruner
    pruner = kind(model, (x,), importance=importance, pruning_ratio=0.99, iterative_steps=400,
                  ignored_layers=[classifier])
    extra = {}
    if recipe == "tp-groupnorm":  # DepGraph's method: one epoch of group-sparse training before pruning
        from falf_fx.training import epoch_loader
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        for batch in epoch_loader(train_loader, seed, 0):
            optimizer.zero_grad()
            _ce(model(batch[0]), batch).backward()
            pruner.regularize(model)
            optimizer.step()
        extra["auxiliary_epochs"] = {"sparse": 1}
    total, steps = _macs(model, x), 0
    while _macs(model, x) > target * total and steps < 400:
        if recipe == "tp-taylor":  # gradients of a few batches for the Taylor scores
            model.zero_grad()
            model.eval()
            for index, batch in enumerate(train_loader):
                if index >= 4:
                    break
                _ce(model(batch[0]), batch).backward()
        pruner.step()
        steps += 1
    model.zero_grad(set_to_none=True)
    return {"steps": steps, **extra}


def _fastnas(model, target: float, train_loader, val_loader, workdir: Path) -> dict:
    """ModelOpt's FastNAS: search a subnet under a FLOPs constraint, scored by validation accuracy
    (on the first 512 validation images, to keep its ~80 score calls affordable)."""
    import modelopt.torch.prune as mtp
    from torch.utils.data import DataLoader, Subset

    from falf_fx.training import evaluate
    x = next(iter(train_loader))[0][:1]
    search_val = DataLoader(Subset(val_loader.dataset, range(512)), batch_size=256)
    # FastNAS's default channel divisor (32) leaves a 16-channel CIFAR layer nothing to choose: 4, as fine as ours
    rules = {"nn.Conv2d": {"*": {"channel_divisor": 4}}, "nn.BatchNorm2d": {"*": {"feature_divisor": 4}},
             "nn.Linear": {"*": {"feature_divisor": 4}}}
    model, _ = mtp.prune(model, mode=[("fastnas", rules)], constraints={"flops": f"{target * 100:g}%"}, dummy_input=x,
                         config={"data_loader": train_loader, "score_func": lambda m: evaluate(m, search_val)["accuracy"],
                                 "checkpoint": str(workdir / "fastnas.pth")})
    return {"model": model}


def run(task: dict) -> dict:
    """One recipe on one (model, seed, target); a failure is a recorded result, not an aborted benchmark."""
    import tempfile

    from falf_fx.training import evaluate, train
    torch.set_num_threads(1)
    train_loader, val_loader = _loaders()
    model = _build(task["model"])
    model.load_state_dict(torch.load(task["weights"], weights_only=True))
    model.eval()
    x = next(iter(train_loader))[0][:1]
    before = _macs(model, x)
    public = {**{k: v for k, v in task.items() if k != "weights"}, "weights_sha256": _sha256(task["weights"])}
    t0 = time.perf_counter()
    try:
        recipe = task["recipe"]
        if recipe.startswith("falf_fx"):
            import falf_fx
            recipe, _, at = recipe.partition("@")  # falf_fx@0.048: the cell of task["target"], planned to 0.048
            options = dict(VARIANTS[recipe.split(":", 1)[1]]) if ":" in recipe else {}
            result = falf_fx.compress(model, train_loader, val_loader=val_loader, target_macs=float(at or task["target"]),
                                      finetune_epochs=FINETUNE["epochs"], seed=task["seed"], progress=False,
                                      measure_latency=False, **options)
            slim, extra = result.model, {"budget": result.report["budget"], "target_met": result.report["target"]}
        else:
            with tempfile.TemporaryDirectory() as workdir:
                if recipe == "modelopt-fastnas":
                    extra = _fastnas(model, task["target"], train_loader, val_loader, Path(workdir))
                    model = extra.pop("model")
                else:
                    extra = _torch_pruning(model, recipe, task["target"], train_loader, task["seed"])
            slim = model
            train(slim, train_loader, _ce, _config(FINETUNE, task["seed"]), phase="finetune", progress=False)
        accuracy = evaluate(slim, val_loader)["accuracy"]
    except Exception as error:
        return {**public, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-1500:],
                "seconds": round(time.perf_counter() - t0, 1)}
    return {**public, "accuracy": accuracy, "macs_ratio": round(_macs(slim, x) / before, 5),
            "seconds": round(time.perf_counter() - t0, 1), **extra}


def _cell(runs: list[dict]) -> dict:
    accs = [r["accuracy"] for r in runs]
    return {"n_seeds": len(runs), "accuracy_mean": round(statistics.mean(accs), 4),
            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "macs_ratio_mean": round(statistics.mean(r["macs_ratio"] for r in runs), 4)}


def summarize(runs: list[dict], bases: list[dict]) -> dict:
    """model -> recipe -> target -> cell, plus each model's base accuracy."""
    table: dict = {}
    for model in sorted({r["model"] for r in runs}):
        accs = [b["accuracy"] for b in bases if b["model"] == model]
        cells = table.setdefault(model, {"base_accuracy_mean": round(statistics.mean(accs), 4) if accs else None})
        for recipe in sorted({r["recipe"] for r in runs if r["model"] == model}):
            for target in sorted({r["target"] for r in runs}, reverse=True):
                rs = [r for r in runs if r["model"] == model and r["recipe"] == recipe and r["target"] == target
                      and "accuracy" in r]
                if rs:
                    cells.setdefault(recipe, {})[f"{target:g}"] = _cell(rs)
    return table


def _write(settings: dict, bases: list, runs: list, started: float) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(1, "one torch thread per worker process"), "settings": settings,
               "wall_seconds": round(time.perf_counter() - started, 1), "pretrained": bases,
               "summary": summarize(runs, bases), "runs": runs}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if settings.get("merge") and previous.get("runs"):  # keep earlier runs of other cells
        keys = {(r["model"], r["seed"], r["target"], r["recipe"]) for r in runs}
        kept = [r for r in previous["runs"] if (r["model"], r["seed"], r["target"], r["recipe"]) not in keys]
        old_bases = [b for b in previous.get("pretrained", []) if (b["model"], b["seed"]) not in
                     {(b2["model"], b2["seed"]) for b2 in bases}]
        payload["runs"], payload["pretrained"] = kept + runs, old_bases + bases
        payload["summary"] = summarize(payload["runs"], payload["pretrained"])
        earlier = previous.get("invocations", [previous.get("settings", {})])
        payload["invocations"] = earlier + [settings] if earlier[-1] != settings else earlier
        if "superseded" in previous:  # runs on earlier base weights, kept apart from the summary
            payload["superseded"] = previous["superseded"]
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")


def report(path: Path = RESULTS) -> str:
    """The README table (markdown) and the frontier plot (PNG beside the JSON) from the results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    payload = json.loads(path.read_text())
    summary = payload["summary"]
    models = sorted(summary)
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    lines = []
    for axis, model in zip(axes[0], models):
        cells = {k: v for k, v in summary[model].items() if isinstance(v, dict)}
        targets = sorted({t for v in cells.values() for t in v}, key=float, reverse=True)
        lines += [f"\n**{model}** (unpruned {100 * summary[model]['base_accuracy_mean']:.1f}%)\n",
                  "| recipe | " + " | ".join(f"{t} of the MACs" for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        for recipe in sorted(cells, key=lambda r: (not r.startswith("falf_fx"), r)):
            row = []
            for t in targets:
                c = cells[recipe].get(t)
                spread = "" if c is None or c["accuracy_std"] is None else f" ± {100 * c['accuracy_std']:.1f}"  # one seed: none
                row.append("–" if c is None else f"{100 * c['accuracy_mean']:.1f}{spread} "
                           f"(n={c['n_seeds']}, {c['macs_ratio_mean']:.3f})")
            lines.append(f"| {recipe} | " + " | ".join(row) + " |")
        curves: dict = {}  # one curve a recipe: its nominal cells and those planned to a peer's MACs ("…@0.218")
        for recipe, by_target in cells.items():
            curves.setdefault(recipe.split("@")[0], []).extend(by_target.values())
        for recipe, points in sorted(curves.items()):
            if ":" in recipe and recipe != "falf_fx:distill-end":  # the other ablations are in the table only
                continue
            points = sorted(points, key=lambda c: c["macs_ratio_mean"])
            style = "-o" if recipe == "falf_fx" else ("--s" if recipe.startswith(("tp-", "modelopt")) else ":.")
            axis.errorbar([c["macs_ratio_mean"] for c in points], [100 * c["accuracy_mean"] for c in points],
                          yerr=[100 * (c["accuracy_std"] or 0) for c in points], fmt=style, capsize=3,
                          label=recipe, alpha=0.9)
        axis.axhline(100 * summary[model]["base_accuracy_mean"], color="grey", lw=0.8, ls="--", label="unpruned")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("MACs kept (fraction of the original)")
        axis.set_ylabel("validation accuracy (%)")
        axis.set_title(f"{model} on shapes_loaders")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"), dpi=110)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(("falf_fx",) + PEERS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=str(WEIGHTS))
    parser.add_argument("--merge", action="store_true", help="keep the earlier JSON's runs of other cells")
    parser.add_argument("--pretrain-only", action="store_true", help="train and cache the base models, then stop")
    parser.add_argument("--report", action="store_true", help="print the README table and draw the PNG, then stop")
    args = parser.parse_args()
    if args.report:
        print(report())
        return
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]
    targets, recipes = [float(t) for t in args.targets.split(",")], args.recipes.split(",")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    settings = {"task": "falf_fx.data.shapes_loaders(seed=0): 10,000 train / 2,000 val, 32x32 RGB, 10 classes",
                "batch_size": BATCH_SIZE, "pretrain": PRETRAIN, "finetune": FINETUNE, "variants": VARIANTS,
                "models": models, "targets": targets, "seeds": seeds, "recipes": recipes, "merge": args.merge}
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        bases = pool.starmap(pretrain, [(m, s, cache) for m in models for s in seeds])
        print(json.dumps(bases), flush=True)
        if args.pretrain_only:
            return
        weights = {(b["model"], b["seed"]): str(weights_path(b)) for b in bases}
        tasks = [{"model": m, "seed": s, "target": t, "recipe": r, "weights": weights[(m, s)]}
                 for m in models for t in targets for r in recipes for s in seeds]
        runs = []
        for result in pool.imap_unordered(run, tasks):
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("trace", "budget")}), flush=True)
            _write(settings, bases, runs, started)
    _write(settings, bases, runs, started)


if __name__ == "__main__":
    main()
