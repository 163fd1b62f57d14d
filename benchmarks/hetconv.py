"""HetConv benchmark: MACs against the paper, CPU latency against the MACs ratio, ResNet-20 on digits.

Three parts, each merged into benchmarks/results/hetconv.json:

* ``macs``: fvcore MACs and parameters of VGG-16 (CIFAR, 32 px) and ResNet-50 (224 px),
  original and HetConv P=4 / P=8, against the paper's counts.
* ``latency``: batch-1 forward latency, 1 thread, torch.utils.benchmark, original and
  HetConv (P=4 and 8 in the blocks form, P=4 in the overlap form and in ``form="auto"``)
  measured alternately round after round (load from other work hits all alike;
  medians over rounds); and one 3×3 layer of each net taken apart (dense conv, HetConv,
  its grouped K×K conv, channel gather, grouped 1×1 conv, and the masked dense-1×1 form
  that spends M·N instead of M·N·(1 − 1/P) on the 1×1 part but gathers nothing).
* ``train``: ResNet-20 on digits (32 px), original and HetConv P=4 / P=8 from scratch with
  one budget, 3 seeds; and each trained original converted without fine-tuning (how far
  the conversion moves the outputs).

    python benchmarks/hetconv.py macs latency train
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from harness import RESULTS, machine

PAPER = {"vgg16_cifar": {"original": 313.74e6, "p4": 105.98e6, "p8": 71.35e6},
         "resnet50": {"p4": 2.85e9}}
TRAIN = {"epochs": 3, "lr": 0.05, "batch_size": 64, "image_size": 32, "seeds": (0, 1, 2), "ps": (4, 8)}


def _models(name: str):
    """(model, example input) of a benchmark net, weights=None."""
    import torchvision
    from falf_fx.models import vgg16_cifar
    if name == "vgg16_cifar":
        return vgg16_cifar().eval(), torch.randn(1, 3, 32, 32)
    return torchvision.models.resnet50(weights=None).eval(), torch.randn(1, 3, 224, 224)


def _variants(name: str, forms: bool = False) -> tuple[dict, torch.Tensor]:
    """The original and HetConv P=4 / P=8 (blocks form); with ``forms``, also P=4 in the overlap form and in
    the form timed faster per layer here (batch 1, one thread)."""
    import falf_fx
    from falf_fx.latency import LatencySettings
    model, x = _models(name)
    gm = falf_fx.trace(model, x)
    variants = {"original": gm, "p4": falf_fx.hetconv(gm, x, p=4), "p8": falf_fx.hetconv(gm, x, p=8)}
    if forms:
        variants["p4 overlap"] = falf_fx.hetconv(gm, x, p=4, form="overlap")
        variants["p4 auto"] = falf_fx.hetconv(gm, x, p=4, form="auto",
                                              latency=LatencySettings(threads=1, min_run_time=0.2))
    return variants, x


def part_macs() -> dict:
    from falf_fx.flops import count_cost
    out = {}
    for name in ("vgg16_cifar", "resnet50"):
        variants, x = _variants(name)
        base = count_cost(variants["original"], x)
        rows = {}
        for key, gm in variants.items():
            cost = count_cost(gm, x)
            row = {"macs": cost.macs, "params": cost.params, "macs_ratio": round(cost.macs / base.macs, 4)}
            if key != "original":
                row["converted"] = len(gm.meta["falf_fx.hetconv"]["converted"])
            paper = PAPER[name].get(key)
            if paper:
                row["paper_macs"] = paper
                row["vs_paper"] = round(cost.macs / paper - 1, 5)
            rows[key] = row
        out[name] = rows
        print(name, json.dumps(rows), flush=True)
    return out


def _median_latency(fns: dict, rounds: int, min_run_time: float) -> dict:
    from torch.utils.benchmark import Timer
    timers = {k: Timer(stmt="fn()", globals={"fn": fn}, num_threads=1) for k, fn in fns.items()}
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for key, timer in timers.items():
            samples[key].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {k: statistics.median(v) for k, v in samples.items()}


def _forward(model, x):
    def fn():
        with torch.inference_mode():
            model(x)
    return fn


def _layer_parts(m: int, n: int, side: int, stride: int, p: int) -> dict:
    """One 3×3 layer, dense and as HetConv, and HetConv's pieces timed on their own."""
    from falf_fx.passes.hetconv import HetConv2d
    conv = nn.Conv2d(m, n, 3, stride, 1, bias=False).eval()
    het = HetConv2d.from_conv(conv, p).eval()
    x = torch.randn(1, m, side, side)
    gathered = torch.cat([x[:, a:b] for a, b in het.gather_slices()], 1)
    overlap = HetConv2d.from_conv(conv, p, "overlap").eval()  # a dense 1x1 part, its own blocks zero

    def nograd(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    return {"dense conv": nograd(lambda: conv(x)), "hetconv": nograd(lambda: het(x)),
            "grouped 3x3 alone": nograd(lambda: het.spatial(x)),
            "gather (cat of slices)": nograd(lambda: torch.cat([x[:, a:b] for a, b in het.gather_slices()], 1)),
            "grouped 1x1 alone": nograd(lambda: het.pointwise(gathered)),
            "masked dense-1x1 form": nograd(lambda: overlap(x))}


LAYERS = {"vgg16_cifar": (256, 256, 8, 1), "resnet50": (256, 256, 14, 1)}  # m, n, side, stride


def part_latency(rounds: int, min_run_time: float) -> dict:
    from falf_fx.flops import count_cost
    out = {}
    for name in ("vgg16_cifar", "resnet50"):
        variants, x = _variants(name, forms=True)
        macs = {k: count_cost(gm, x).macs for k, gm in variants.items()}
        auto_forms = variants["p4 auto"].meta["falf_fx.hetconv"]["forms"]
        rows = {}
        for backend, enabled in (("default", True), ("mkldnn off", False)):
            with torch.backends.mkldnn.flags(enabled=enabled):
                t = _median_latency({k: _forward(gm.eval(), x) for k, gm in variants.items()}, rounds, min_run_time)
            rows[backend] = {k: {"latency_ms": round(t[k] * 1e3, 3), "latency_ratio": round(t[k] / t["original"], 3),
                                 "macs_ratio": round(macs[k] / macs["original"], 4)} for k in variants}
        layer = {}
        m, n, side, stride = LAYERS[name]
        for p in (4, 8):
            parts = _median_latency(_layer_parts(m, n, side, stride, p), rounds, min_run_time)
            hw = (side // stride) ** 2
            work = {"dense conv": n * m * 9 * hw, "hetconv": n * m * hw * (9 + p - 1) // p,
                    "grouped 3x3 alone": n * m * 9 * hw // p, "gather (cat of slices)": 0,
                    "grouped 1x1 alone": n * m * hw * (p - 1) // p,
                    "masked dense-1x1 form": n * m * 9 * hw // p + n * m * hw}
            layer[f"p{p}"] = {k: {"us": round(v * 1e6, 1), "macs": work[k],
                                  "gmacs_per_s": round(work[k] / v / 1e9, 2)} for k, v in parts.items()}
        out[name] = {"batch": 1, "whole_model": rows,
                     "auto_forms": {f: sum(v == f for v in auto_forms.values()) for f in set(auto_forms.values())},
                     "one_layer": {"shape": {"in": m, "out": n, "side": side, "stride": stride}, "ops": layer}}
        print(name, json.dumps(out[name]), flush=True)
    return out


def _train_one(kind: str, seed: int, loaders) -> dict:
    import falf_fx
    from falf_fx.flops import count_cost
    from falf_fx.models import resnet20
    from falf_fx.training import TrainConfig, evaluate, train
    torch.manual_seed(seed)
    model = resnet20(in_channels=1)
    x = next(iter(loaders[0]))[0][:1]
    if kind != "original":
        model = falf_fx.hetconv(model, x, p=int(kind[1:]))
        for name in model.meta["falf_fx.hetconv"]["converted"]:  # from scratch: each conv's own default init
            for part in model.get_submodule(name).children():
                part.reset_parameters()
    start = time.perf_counter()
    train(model, loaders[0], lambda out, batch: F.cross_entropy(out, batch[1]),
          TrainConfig(epochs=TRAIN["epochs"], lr=TRAIN["lr"], seed=seed), progress=False)
    seconds = time.perf_counter() - start
    return {"model": model, "accuracy": evaluate(model, loaders[1])["accuracy"],
            "macs": count_cost(model, x).macs, "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1)}


@torch.no_grad()
def _recalibrate_norms(model: nn.Module, loader) -> None:
    """Re-estimate every BatchNorm's running statistics on the training data (no weight changes)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches seen
    model.train()
    for batch in loader:
        model(batch[0])
    model.eval()


def _converted_without_finetuning(original, loaders, p: int) -> dict:
    """Convert a trained original and evaluate at once (the distance fine-tuning starts from),
    then again after re-estimating the BatchNorm statistics alone."""
    import falf_fx
    from falf_fx.hetconv import output_distance
    from falf_fx.training import evaluate
    val = loaders[1]
    inputs = torch.cat([b[0] for b in val])
    het = falf_fx.hetconv(original, inputs[:1], p=p)
    row = {"accuracy": evaluate(het, val)["accuracy"],
           "output_distance": round(output_distance(original, het, inputs), 4)}
    _recalibrate_norms(het, loaders[0])
    row.update(accuracy_bn_recalibrated=evaluate(het, val)["accuracy"],
               output_distance_bn_recalibrated=round(output_distance(original, het, inputs), 4))
    return row


def part_train() -> dict:
    from falf_fx.data import digits_loaders
    runs = []
    for seed in TRAIN["seeds"]:
        loaders = digits_loaders(image_size=TRAIN["image_size"], channels=1, batch_size=TRAIN["batch_size"], seed=seed)
        for kind in ("original", *(f"p{p}" for p in TRAIN["ps"])):
            result = _train_one(kind, seed, loaders)
            model = result.pop("model")
            row = {"kind": kind, "seed": seed, **result}
            if kind == "original":
                row["converted_untrained"] = {f"p{p}": _converted_without_finetuning(model, loaders, p)
                                              for p in TRAIN["ps"]}
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for kind in ("original", *(f"p{p}" for p in TRAIN["ps"])):
        rows = [r for r in runs if r["kind"] == kind]
        accs = [r["accuracy"] for r in rows]
        summary[kind] = {"accuracy_mean": round(statistics.mean(accs), 4),
                         "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                         "macs": rows[0]["macs"], "params": rows[0]["params"],
                         "train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in rows), 1)}
    return {"settings": {**TRAIN, "seeds": list(TRAIN["seeds"]), "ps": list(TRAIN["ps"]), "model": "resnet20",
                         "data": "digits (sklearn, 1,797 images) resized to 32 px, 1 channel",
                         "init": "from scratch; HetConv layers take nn.Conv2d's default init"},
            "runs": runs, "summary": summary}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", choices=("macs", "latency", "train"))
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (median over rounds)")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per latency block")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    path = RESULTS / "hetconv.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    for part in args.parts:
        facts = machine(1, "shared 2-core machine: other jobs ran at the same time (see load averages)")
        start = time.perf_counter()
        result = {"macs": part_macs, "latency": lambda: part_latency(args.rounds, args.min_run_time),
                  "train": part_train}[part]()
        facts["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        payload[part] = {**result, "seconds": round(time.perf_counter() - start, 1), "machine": facts}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
