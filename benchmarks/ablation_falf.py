"""FALF ablation: magnitude vs FALF (fatuous target x score, then lam) at equal MACs and fine-tune budget.

Every method of one (model, seed) starts from the same pretrained weights (pretrained
once, cached as a state_dict in a temporary folder) and gets the same rounds and
fine-tune epochs; FALF's auxiliary phase is its own extra cost, counted in
``train_epochs``.  Runs go one config per task to worker processes with one torch
thread each; the JSON is rewritten after every finished run, so a cut-short run
still leaves honest partial results (``runs`` lists what ran, ``skipped`` what did not).

    python benchmarks/ablation_falf.py [--quick] [--workers 2] [--stages lenet4,resnet4,lenet8,resnet8,lam]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ablation_falf.json"
TARGETS = ("random", "constant", "uniform", "noise")
SCORES = ("drift", "taylor")
LAMS = (0.1, 1.0, 10.0)

# model name -> (factory kwargs, image size, data channels, pretrain epochs, pretrain lr)
MODELS = {"lenet5": ({}, 28, 1, 12, 0.05), "resnet20": ({"in_channels": 1}, 32, 1, 6, 0.05)}
SETTINGS = {"rounds": 4, "finetune_epochs": 1, "finetune_lr": 0.01, "batch_size": 64,
            "falf_defaults": {"aux_epochs": 1, "aux_lr": 1e-3, "taylor_batches": 8}}


def _build(model: str):
    from falf_fx.models import lenet5, resnet20
    kwargs = MODELS[model][0]
    return lenet5(**kwargs) if model == "lenet5" else resnet20(**kwargs)


def _loaders(model: str, seed: int, image_size: int | None = None):
    from falf_fx.data import digits_loaders
    _, size, channels, _, _ = MODELS[model]
    return digits_loaders(image_size=image_size or size, channels=channels, batch_size=SETTINGS["batch_size"],
                          seed=seed)


def _loss(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs, batch[1])


def pretrain(task: tuple) -> dict:
    """Train (model, seed) once and save its state_dict; every method then starts from it."""
    from falf_fx.training import TrainConfig, evaluate, train
    model_name, seed, cache, epochs_scale, *rest = task  # rest: an image size other than the model's default
    image_size = rest[0] if rest else None
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train_loader, val_loader = _loaders(model_name, seed, image_size)
    model = _build(model_name)
    _, _, _, epochs, lr = MODELS[model_name]
    epochs = max(1, int(epochs * epochs_scale))
    path = Path(cache, f"{model_name}-{seed}-e{epochs}" + (f"-{image_size}px" if image_size else "") + ".pt")
    t0 = time.perf_counter()
    cached = path.exists()  # --cache: an earlier invocation trained these exact weights
    if cached:
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, train_loader, _loss, TrainConfig(epochs=epochs, lr=lr, seed=seed), phase="pretrain",
              progress=False)
        torch.save(model.state_dict(), path)
    return {"model": model_name, "seed": seed, "epochs": epochs, "lr": lr, "path": str(path), "cached": cached,
            "image_size": image_size or MODELS[model_name][1],
            "accuracy": evaluate(model, val_loader)["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}


def run_config(task: dict) -> dict:
    """One compress() run: method options in, accuracy, MACs reached, epochs spent and time out."""
    import falf_fx
    torch.set_num_threads(1)
    train_loader, val_loader = _loaders(task["model"], task["seed"])
    model = _build(task["model"])
    model.load_state_dict(torch.load(task["weights"], weights_only=True))
    from falf_fx.methods import make_method
    t0 = time.perf_counter()
    try:
        result = falf_fx.compress(model, train_loader, method=make_method(task["method"], **task["options"]),
                                  val_loader=val_loader,
                                  target_macs=task["target_macs"], rounds=task["rounds"],
                                  finetune_epochs=task["finetune_epochs"] * task["rounds"],  # per round -> whole run
                                  finetune_lr=task["finetune_lr"],
                                  seed=task["seed"], progress=False, measure_latency=False)
    except Exception as error:  # a failure is a recorded result, not an aborted ablation
        return {**_public(task), "error": f"{type(error).__name__}: {error}",
                "seconds": round(time.perf_counter() - t0, 1)}
    rounds_run = len(result.history)
    aux = task["options"].get("aux_epochs", SETTINGS["falf_defaults"]["aux_epochs"]) if task["method"] == "falf" else 0
    return {**_public(task), "accuracy": result.report["after"]["metric"],
            "accuracy_before": result.report["before"]["metric"], "macs_ratio": result.report["macs_ratio"],
            "macs_after": result.report["after"]["macs"], "params_after": result.report["after"]["params"],
            "rounds_run": rounds_run, "finetune_epochs_total": rounds_run * task["finetune_epochs"],
            "aux_epochs_total": rounds_run * aux, "train_epochs": rounds_run * (task["finetune_epochs"] + aux),
            "history": result.history, "seconds": round(time.perf_counter() - t0, 1)}


def _public(task: dict) -> dict:
    return {k: v for k, v in task.items() if k != "weights"}


def _config_name(method: str, options: dict) -> str:
    if method == "magnitude":
        return "magnitude"
    probe = "/probe" if options.get("probe") else ""
    return f"falf/{options['target']}/{options['score']}/lam={options['lam']:g}{probe}"


def _parse_stage(stage: str) -> tuple[str, str, float]:
    """``lenet4`` / ``resnet8p`` / ``lenetm`` -> (model, kind, target_macs); kind: grid, probe, matched, lam."""
    if stage == "lam":
        return "both", "lam", 0.25
    model = "lenet5" if stage.startswith("lenet") or stage == "matched" else "resnet20"
    tail = stage.removeprefix("lenet").removeprefix("resnet")
    if tail == "m" or stage == "matched":
        return model, "matched", 0.25
    return model, "probe" if tail.endswith("p") else "grid", 0.25 if tail.rstrip("p") == "4" else 0.125


def _tasks(stage: str, seeds, weights: dict, best: tuple | None, scale: dict, ranked: dict | None = None,
           top: int | None = None) -> list[dict]:
    model, kind, target = _parse_stage(stage)
    if kind == "matched":  # control: magnitude given FALF's total epochs as extra fine-tuning
        epochs = scale["finetune_epochs"] + SETTINGS["falf_defaults"]["aux_epochs"]
        return [{"stage": stage, "model": model, "seed": seed, "target_macs": target, "method": "magnitude",
                 "options": {}, "config": f"magnitude (fine-tune x{epochs}, epoch-matched)",
                 "weights": weights[(model, seed)], **scale, "finetune_epochs": epochs}
                for seed in seeds if (model, seed) in weights]
    if kind == "lam":
        if best is None:
            return []
        configs = [("falf", {"target": best[0], "score": best[1], "lam": lam}) for lam in LAMS if lam != 1.0]
        models_targets = [("lenet5", 0.25), ("resnet20", 0.25)]
    else:
        probe = {"probe": True} if kind == "probe" else {}
        falf = [("falf", {"target": t, "score": s, "lam": 1.0, **probe}) for t in TARGETS for s in SCORES]
        ranking = ranked or {}  # later stages run the best 4x configs first; --top keeps only those
        falf.sort(key=lambda c: -ranking.get(_config_name(c[0], {**c[1], "probe": False}), 0.0))
        full_grid = kind == "grid" and target == 0.25  # the 4x grid always runs whole: it ranks the rest
        configs = ([] if probe else [("magnitude", {})]) + (falf if full_grid else falf[:top])
        models_targets = [(model, target)]
    out = []  # config-major: a deadline cuts whole configs, the ones that ran keep every seed
    for model_name, target in models_targets:
        for method, options in configs:
            for seed in seeds:
                if (model_name, seed) not in weights:
                    continue
                out.append({"stage": stage, "model": model_name, "seed": seed, "target_macs": target,
                            "method": method, "options": options, "config": _config_name(method, options),
                            "weights": weights[(model_name, seed)], **scale})
    return out


def summarize(runs: list[dict]) -> dict:
    """mean/std over seeds per (model, target_macs, config)."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        if "accuracy" in run:
            cells.setdefault((run["model"], run["target_macs"], run["config"]), []).append(run)
    table = {}
    for (model, target, config), rs in sorted(cells.items()):
        accs = [r["accuracy"] for r in rs]
        table.setdefault(model, {}).setdefault(f"{target:g}", {})[config] = {
            "n_seeds": len(rs), "seeds": sorted(r["seed"] for r in rs),
            "accuracy_mean": round(statistics.mean(accs), 4),
            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "macs_ratio_mean": round(statistics.mean(r["macs_ratio"] for r in rs), 4),
            "train_epochs": rs[0]["train_epochs"], "seconds_mean": round(statistics.mean(r["seconds"] for r in rs), 1)}
    return table


def best_falf(table: dict) -> tuple | None:
    """The (target, score) at lam=1 with the best accuracy averaged over LeNet-5 and ResNet-20 at 4x.

    Both models count equally: LeNet-5 alone separates the settings by less than its
    seed noise, ResNet-20 by several points.  With one model run, that model decides.
    """
    def cells(model):
        return {tuple(c.split("/")[1:3]): cell["accuracy_mean"]
                for c, cell in table.get(model, {}).get("0.25", {}).items()
                if c.startswith("falf/") and c.endswith("lam=1") and cell["n_seeds"] >= 2}
    per_model = [m for m in (cells("lenet5"), cells("resnet20")) if m]
    if not per_model:
        return None
    common = set.intersection(*(set(m) for m in per_model))
    return max(sorted(common), key=lambda k: sum(m[k] for m in per_model) / len(per_model)) if common else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seed 0 only, LeNet-5 at 4x, short pretraining")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stages", default="lenet4,resnet4,lenet8,resnet8,lam",
                        help="in priority order: lenet4, resnet4, lenet8, resnet8, lam; a 'p' suffix (lenet4p) "
                             "runs the FALF grid with probe=True; lenetm/resnetm = 4x magnitude with FALF's "
                             "epoch count as fine-tuning")
    parser.add_argument("--deadline", type=float, default=None,
                        help="unix time after which no new run starts (the rest is recorded as skipped)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--cache", default=None, help="folder that keeps pretrained weights between invocations")
    parser.add_argument("--append", action="store_true", help="add the runs to the existing --out file")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    parser.add_argument("--top", type=int, default=None,
                        help="probe and 8x stages run only the TOP FALF configs ranked by the model's 4x results")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    stages = ["lenet4"] if args.quick else args.stages.split(",")
    epochs_scale = 0.5 if args.quick else 1.0
    out = Path(args.out)
    started = time.time()
    payload = {"benchmark": "ablation_falf", "quick": args.quick,
               "machine": machine(1, note=f"{args.workers} worker processes, one config each, 1 torch thread each"),
               "settings": {**SETTINGS, "seeds": seeds, "stages_requested": stages, "lams": LAMS,
                            "data": "falf_fx.data.digits_loaders (scikit-learn digits, 80/20 stratified split "
                                    "per seed), 1 channel for both models",
                            "models": {m: {"kwargs": v[0], "image_size": v[1], "channels": v[2],
                                           "pretrain_epochs": max(1, int(v[3] * epochs_scale)),
                                           "pretrain_lr": v[4]} for m, v in MODELS.items()},
                            "epoch_accounting": "train_epochs = rounds_run * (finetune_epochs + aux_epochs); "
                                                "magnitude has aux_epochs 0; FALF also runs taylor_batches "
                                                "forward/backward passes per loss per round for saliency"},
               "pretrained": [], "runs": [], "skipped": []}
    if args.append:  # add this invocation's stages to an earlier result file
        earlier = json.loads(out.read_text())
        for key in ("pretrained", "runs", "skipped"):
            payload[key] = earlier[key] + payload[key]
        payload["settings"]["stages_requested"] = earlier["settings"]["stages_requested"] + stages
        payload["earlier_invocation"] = {k: earlier[k] for k in ("machine", "wall_seconds") if k in earlier}
        started -= earlier.get("wall_seconds", 0.0)

    done = {_config_key(r) for r in payload["runs"] if "accuracy" in r}  # --append skips what already ran

    def save():
        payload["summary"] = summarize(payload["runs"])
        payload["best_falf_lam1"] = best_falf(payload["summary"])
        payload["wall_seconds"] = round(time.time() - started, 1)
        payload["compute_seconds_runs"] = round(sum(r["seconds"] for r in payload["runs"]), 1)
        payload["machine"]["load_average_at_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")

    ctx = mp.get_context("spawn")
    with (nullcontext(args.cache) if args.cache else tempfile.TemporaryDirectory()) as cache, ctx.Pool(args.workers, maxtasksperchild=4) as pool:
        pending_weights: dict[tuple, object] = {}  # (model, seed) -> AsyncResult of its pretraining
        weights: dict[tuple, str] = {}
        scale = {k: SETTINGS[k] for k in ("rounds", "finetune_epochs", "finetune_lr")}

        def queue_pretraining(stage: str) -> None:  # queued ahead, so it overlaps the previous stage's runs
            for m in _stage_models(stage):
                for s in seeds:
                    if (m, s) not in pending_weights:
                        pending_weights[(m, s)] = pool.apply_async(pretrain, ((m, s, cache, epochs_scale),))

        def collect_weights(stage: str) -> None:
            for m in _stage_models(stage):
                for s in seeds:
                    if (m, s) not in weights:
                        info = pending_weights[(m, s)].get()
                        weights[(m, s)] = info.pop("path")
                        payload["pretrained"].append(info)
                        print(f"pretrained {m} seed {s}: acc {info['accuracy']:.4f} ({info['seconds']}s)", flush=True)
            save()

        for index, stage in enumerate(stages):
            if args.deadline and time.time() > args.deadline:
                payload["skipped"].append(f"stage {stage} (deadline reached before it started)")
                continue
            queue_pretraining(stage)
            collect_weights(stage)
            stage_model = _parse_stage(stage)[0]
            ranked_model = "lenet5" if stage_model == "both" else stage_model
            ranking_cells = payload["summary"].get(ranked_model, {}).get("0.25", {})
            tasks = _tasks(stage, seeds, weights, payload["best_falf_lam1"], scale,
                           {c: cell["accuracy_mean"] for c, cell in ranking_cells.items()}, args.top)
            tasks = [t for t in tasks if _config_key(t) not in done]
            handles = [pool.apply_async(_guarded, ((t, args.deadline),)) for t in tasks]
            if index + 1 < len(stages):
                queue_pretraining(stages[index + 1])
            for handle in handles:
                result = handle.get()
                if result.get("skipped"):
                    payload["skipped"].append(_config_key(result))
                else:
                    payload["runs"].append(result)
                    msg = result.get("error") or f"acc {result['accuracy']:.4f} macs {result['macs_ratio']:.3f}"
                    print(f"[{stage}] {result['model']} s{result['seed']} {result['config']}: {msg} "
                          f"({result['seconds']}s)", flush=True)
                save()
    save()
    print(json.dumps(payload["summary"], indent=1))


def markdown(payload: dict) -> str:
    """README table: config -> mean +- std accuracy over seeds at 4x and 8x, per model."""
    table = payload["summary"]
    columns = [(m, t) for m in ("lenet5", "resnet20") for t in ("0.25", "0.125")]
    header = ["config"] + [f"{m} {1 / float(t):g}x" for m, t in columns]
    configs = sorted({c for m in table.values() for t in m.values() for c in t},
                     key=lambda c: (c != "magnitude", c))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    unpruned = {}
    for info in payload["pretrained"]:
        unpruned.setdefault(info["model"], {})[info["seed"]] = info["accuracy"]
    cells = []
    for model, _ in columns:
        accs = list(unpruned.get(model, {}).values())
        std = f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        cells.append(f"{100 * statistics.mean(accs):.2f}{std} (n={len(accs)}, MACs 1)" if accs else "not run")
    lines.append("| unpruned (pretrained) | " + " | ".join(cells) + " |")
    for config in configs:
        cells = []
        for model, target in columns:
            cell = table.get(model, {}).get(target, {}).get(config)
            if cell is None:
                cells.append("not run")
            else:
                std = f" ± {100 * cell['accuracy_std']:.2f}" if cell["accuracy_std"] is not None else ""
                cells.append(f"{100 * cell['accuracy_mean']:.2f}{std} (n={cell['n_seeds']}, "
                             f"MACs {cell['macs_ratio_mean']:.3f})")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stage_models(stage: str) -> list[str]:
    model = _parse_stage(stage)[0]
    return ["lenet5", "resnet20"] if model == "both" else [model]


def _guarded(item: tuple) -> dict:
    task, deadline = item
    if deadline and time.time() > deadline:
        return {**_public(task), "skipped": True}
    return run_config(task)


def _config_key(task: dict) -> str:
    return f"{task['model']} target={task['target_macs']:g} seed={task['seed']} {task['config']}"


if __name__ == "__main__":
    main()
