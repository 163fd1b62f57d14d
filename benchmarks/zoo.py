"""Zoo benchmark: falf_fx against Torch-Pruning on the torchvision zoo, same models, inputs and machine.

Models: every torchvision classification model, the segmentation models and the
backbones (+FPN) of the FasterRCNN/RetinaNet/FCOS/SSD detectors, weights=None,
224 px (inception 299; the SSD backbones need their native 300/320 px).  Each
(model, tool) pair runs in its own child process with time and memory limits.

Both tools remove 50% of the channels of every group they can prune, least L1
first, and never the model outputs.  falf_fx freezes outputs itself; Torch-
Pruning gets the layers that produce the outputs in ``ignored_layers`` (found by
walking autograd back from the outputs to the first Conv/Linear: what its docs
ask a user to list by hand).  Measured step, the same for both: from the ready
nn.Module to the slim model (falf_fx: trace, analyse, L1 scores, plan, slim;
Torch-Pruning: MetaPruner's DependencyGraph build and step(); both in place), after one
warm-up run of the tool on a small net in the same process.  Success: falf_fx
passes the exactness oracle on the plan it used; Torch-Pruning's model still
runs and keeps every output shape.

    python benchmarks/zoo.py                           # the whole zoo
    python benchmarks/zoo.py resnet18 det:ssd300_vgg16 # some rows (merged into zoo.json)
    python benchmarks/zoo.py --shard 1/2 & python benchmarks/zoo.py --shard 2/2; python benchmarks/zoo.py --merge
                                                       # two children at a time, one per core (half the wall time)

Every row names its run (start time and commit); the summary covers the rows
of the latest run only, so rows kept from earlier runs never mix into it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from harness import PeakMeter, emit, machine, median, run_child, write_json

TOOLS = ("falf_fx", "torch_pruning")
# Torch-Pruning once more with the ignore rule of its torchvision benchmark script (every Linear
# with 1000 outputs), on the classification models whose classifier is a conv instead.
LINEAR_ONLY = "torch_pruning_linear_only"
CONV_CLASSIFIERS = ("squeezenet1_0", "squeezenet1_1")
RATIO = 0.5
SEGMENTATION = ["seg:" + n for n in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                                     "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")]
DETECTION = ["det:" + n for n in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
                                  "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
                                  "ssd300_vgg16", "ssdlite320_mobilenet_v3_large")]
NATIVE_SIZE = {"inception_v3": 299, "det:ssd300_vgg16": 300, "det:ssdlite320_mobilenet_v3_large": 320}


def all_models() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models) + SEGMENTATION + DETECTION


def build(name: str):
    """The model (random weights, random norm statistics, eval mode) and its input."""
    import torch
    import torchvision

    from tests.conftest import randomize_norms

    torch.manual_seed(0)
    kind, _, arch = name.rpartition(":")
    if kind == "seg":
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None)
    elif kind == "det":
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None).backbone
    else:
        model = torchvision.models.get_model(arch, weights=None)
    size = NATIVE_SIZE.get(name, 224)
    return randomize_norms(model).eval(), torch.randn(1, 3, size, size)


def output_layers(model, x) -> list:
    """Conv/Linear layers whose outputs reach a model output with no other such layer between."""
    import torch
    from torch import nn
    from torch.utils._pytree import tree_flatten

    producers = {}

    def hook(module, _inputs, out):
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            producers[out.grad_fn] = module

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        outputs = tree_flatten(model(x))[0]
    finally:
        for handle in handles:
            handle.remove()
    found, seen = [], set()
    stack = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in producers:
            found.append(producers[fn]) if producers[fn] not in found else None
            continue
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    return found


def _ignored_layers(tool: str, model, x) -> list:
    """What Torch-Pruning is told to leave alone; falf_fx is told nothing (it freezes outputs itself)."""
    from torch import nn
    if tool == "falf_fx":
        output_layers(model, x)  # the same preparatory forward for both tools
        return []
    if tool == LINEAR_ONLY:  # the rule of Torch-Pruning's own torchvision benchmark script
        return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    return output_layers(model, x)


def _warm_up(tool: str) -> float:
    """One run of the tool on a small net, so one-off imports and caches are not charged to a model.

    The net calls a torch function in its forward (a residual add, torch.flatten):
    fx's first traced function call builds torch's table of overridable
    functions (~30 ms, once per process).
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8 * 6 * 6, 4)

        def forward(self, x):
            x = self.body(x)
            return self.head(torch.flatten(x + self.conv(x), 1))

    net = Net().eval()
    start = time.perf_counter()
    _slim(tool, net, torch.randn(1, 3, 8, 8), [net.head], {})
    return time.perf_counter() - start


def _slim(tool: str, model, x, ignored, phases: dict):
    """The measured step: ready nn.Module in, slim model out (plus what the checks need).

    ``phases`` receives the seconds of each part, so a slow step says where.
    """
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[phase] = round(now - clock, 4)
        clock = now

    if tool == "falf_fx":
        import falf_fx
        gm = falf_fx.trace(model, x)
        lap("trace")
        analysis = falf_fx.analyze(gm)
        lap("analyze")
        scores = falf_fx.group_importance(analysis, "l1")
        lap("importance")
        plan = falf_fx.plan_by_ratio(analysis, scores, RATIO)
        lap("plan")
        slim = falf_fx.slim(gm, plan, inplace=True)  # in place, as Torch-Pruning works
        lap("slim")
        return slim, plan
    import torch_pruning as tp
    # (x,), not x: Torch-Pruning calls model(*example_inputs) first, and a batch-1 tensor unpacks into
    # an unbatched 3-D input that fully convolutional nets accept, leaving an empty dependency graph.
    pruner = tp.pruner.MetaPruner(model, (x,), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=ignored)
    lap("dependency_graph")
    pruner.step()
    lap("step")
    return model, pruner


def _falf_checks(original, x, slim, plan) -> dict:
    """The oracle on the in-place slim model, against an unspent trace of the kept original."""
    import falf_fx
    from falf_fx.flops import prunable_macs_share
    from falf_fx.testing import check_equivalence
    analysis = falf_fx.analyze(falf_fx.trace(original, x))
    plan = falf_fx.PruningPlan.build(analysis, plan.removals)  # same graph, same group ids
    record = {"nodes": len(analysis.graph_module.graph.nodes), "groups": len(analysis.groups),
              "prunable_groups": len(analysis.prunable_groups), "channels_removed": plan.num_removed,
              "auto_leaves": sorted(analysis.graph_module.meta.get("falf_fx.auto_leaves", {})),
              "prunable_macs_share": round(prunable_macs_share(analysis, x), 4)}
    emit({"stage": "checking", **record})
    oracle = check_equivalence(original, x, plan, slim=slim)
    return {**record, "oracle_max_rel_diff": oracle.max_rel_diff}


def _tp_checks(original, x, slim, pruner, reference_shapes) -> dict:
    import torch
    from torch.utils._pytree import tree_flatten

    from falf_fx.flops import count_cost, macs_by_module
    record: dict = {}
    try:  # layers that some DependencyGraph group prunes (on the unpruned twin, by name)
        name_of = {id(m): n for n, m in slim.named_modules()}
        touched = {name_of[id(dep.target.module)]
                   for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                         root_module_types=pruner.root_module_types)
                   for dep, _ in group if id(dep.target.module) in name_of}
        per_module = macs_by_module(original, x)
        total = count_cost(original, x).macs  # the denominator falf_fx's share uses too
        record["prunable_macs_share"] = round(sum(v for n, v in per_module.items() if n in touched) / total, 4)
    except Exception as error:  # noqa: BLE001 - the share is a side measurement
        record["prunable_macs_share"] = None
        record["share_error"] = f"{type(error).__name__}: {error}"[:200]
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in tree_flatten(slim(x))[0]]
    if shapes != reference_shapes:
        raise AssertionError(f"output shapes changed: {reference_shapes} -> {shapes}")
    return record


def measure(tool: str, name: str, threads: int, repeats: int) -> None:
    """Child side: one tool on one model; emits a partial record after the measured step.

    The step runs ``repeats`` times; the record keeps the fastest time (the least
    disturbed by other work) and the largest peak.
    """
    import copy
    import warnings
    warnings.simplefilter("ignore")
    import torch
    from torch.utils._pytree import tree_flatten

    from falf_fx.flops import count_cost

    torch.set_num_threads(threads)
    record = {"model": name, "tool": tool, "ok": False}
    emit({**record, "stage": "started"})
    try:
        warm_s = _warm_up(tool)
        runs = []
        for attempt in range(repeats):  # each on a freshly built model: Torch-Pruning prunes in place
            if attempt:
                del model, original, slim, state
            model, x = build(name)
            ignored = _ignored_layers(tool, model, x)
            with torch.no_grad():
                reference_shapes = [tuple(t.shape) for t in tree_flatten(model(x))[0]]
            original = copy.deepcopy(model)  # both tools slim in place
            phases: dict = {}
            with PeakMeter() as meter:
                slim, state = _slim(tool, model, x, ignored, phases)
            runs.append({"seconds": round(meter.seconds, 3), "peak_mib": round(meter.peak_mib, 1),
                         "phases_s": phases})
            emit({**record, "stage": "measured", "runs": runs})  # the step timeout bounds the first run only
        names = {m: n for n, m in model.named_modules()}
        best = min(runs, key=lambda run: run["seconds"])
        record.update(stage="measured", input=list(x.shape), seconds=best["seconds"], phases_s=best["phases_s"],
                      peak_mib=max(run["peak_mib"] for run in runs), runs=runs, warmup_s=round(warm_s, 3),
                      ignored_layers=[f"{names[m]} ({type(m).__name__})" for m in ignored])
        emit(record)
        if tool == "falf_fx":
            record.update(_falf_checks(original, x, slim, state))
        else:
            record.update(_tp_checks(original, x, slim, state, reference_shapes))
        before, after = count_cost(original, x), count_cost(slim, x)
        record.update(macs_before=before.macs, macs_after=after.macs, macs_ratio=round(after.macs / before.macs, 4),
                      params_before=before.params, params_after=after.params, ok=True)
    except Exception as error:  # noqa: BLE001 - every failure is a result
        frame = traceback.extract_tb(error.__traceback__)[-1]
        record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        record["error_at"] = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        record["failed_in"] = "checks" if "seconds" in record else "measured step"
    record["stage"] = "done"
    emit(record)


def _row(name: str, results: dict) -> dict:
    falf, tp = results["falf_fx"], results["torch_pruning"]
    row = {"model": name, **results}
    if falf["ok"] and tp["ok"]:
        row["time_ratio"] = round(falf["seconds"] / tp["seconds"], 4) if tp["seconds"] else None
        row["peak_ratio"] = round(falf["peak_mib"] / tp["peak_mib"], 4) if tp["peak_mib"] else None
    return row


def summarise(rows: list[dict]) -> dict:
    """Success counts and medians over ``rows`` (compare tools only on rows measured in one run)."""
    both = [r for r in rows if "time_ratio" in r]
    ok = {tool: {r["model"] for r in rows if r[tool]["ok"]} for tool in TOOLS}
    return {
        "models": len(rows),
        "succeeded": {tool: len(ok[tool]) for tool in TOOLS},
        "both_succeeded": len(both),
        "only_falf_fx": sorted(ok["falf_fx"] - ok["torch_pruning"]),
        "only_torch_pruning": sorted(ok["torch_pruning"] - ok["falf_fx"]),
        "median_time_ratio_falf_over_tp": median(r["time_ratio"] for r in both),
        "median_peak_ratio_falf_over_tp": median(r["peak_ratio"] for r in both),
        "median_seconds": {tool: median(r[tool]["seconds"] for r in both) for tool in TOOLS},
        "median_peak_mib": {tool: median(r[tool]["peak_mib"] for r in both) for tool in TOOLS},
        "median_macs_ratio": {tool: median(r[tool].get("macs_ratio") for r in both) for tool in TOOLS},
        "median_prunable_macs_share": {tool: median(r[tool].get("prunable_macs_share") for r in both)
                                       for tool in TOOLS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each child (1: both tools' work is mostly single-threaded, "
                             "and spare threads on a busy machine stall in OpenMP barriers)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the measured step per child")
    parser.add_argument("--step-timeout", type=float, default=300, help="seconds for the measured step")
    parser.add_argument("--total-timeout", type=float, default=1200, help="seconds for one child, checks included")
    parser.add_argument("--mem-limit", type=float, default=14, help="GiB of resident memory per child")
    parser.add_argument("--note", help="free text stored with the machine facts (e.g. 'shared machine')")
    parser.add_argument("--shard", metavar="K/N", help="every N-th model from the K-th, into zoo.shardKofN.json")
    parser.add_argument("--merge", action="store_true", help="fold the shard files into zoo.json and remove them")
    args = parser.parse_args()
    if args.child:
        measure(*args.child, args.threads, args.repeats)
        return
    if args.merge:
        merge_shards()
        return

    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness import RESULTS

    names = args.models or all_models()
    out = "zoo.json"
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        names, out = names[k - 1::n], f"zoo.shard{k}of{n}.json"
    facts = machine(args.threads, args.note)  # load averages before the run
    run = _run_id()
    path = RESULTS / out
    kept = {}  # a partial run replaces its own rows only; a full run starts afresh
    if args.models and not args.shard and path.exists():
        kept = {r["model"]: {"run": "unrecorded", **r} for r in json.loads(path.read_text())["rows"]}
    settings = {"ratio": RATIO, "importance": "l1", "torch_pruning": _version("torch-pruning"),
                "falf_fx": _version("falf_fx"), "torchvision": _version("torchvision"), "threads": args.threads,
                "repeats": args.repeats, "step_timeout_s": args.step_timeout, "total_timeout_s": args.total_timeout,
                "mem_limit_gib": args.mem_limit,
                "time": "fastest of `repeats` runs of the measured step, each on a freshly built model, "
                        "after a warm-up run of the tool on a small net (one-off costs: warmup_s)",
                "peak_memory": "largest over the runs of VmHWM minus VmRSS at the start of the step (freed memory "
                               "handed back by malloc_trim, peak reset via /proc/self/clear_refs)",
                "falf_fx_setup": "trace, analyze, group_importance('l1'), plan_by_ratio(0.5), slim(inplace=True)",
                "torch_pruning_setup": "MetaPruner, MagnitudeImportance(p=1), pruning_ratio=0.5, example_inputs=(x,), "
                                       "ignored_layers = the layers producing the outputs, no num_heads"}

    def save(rows: list[dict]) -> dict:
        """Written after every model, so a run cut short still leaves its rows."""
        merged = {**kept, **{r["model"]: r for r in rows}}
        order = list(kept) + [r["model"] for r in rows if r["model"] not in kept]
        all_rows = [merged[n] for n in order]
        payload = {"machine": facts, "settings": settings,
                   "progress": {"run": run, "requested": len(names), "finished": len(rows)},
                   "summary": {"run": run, **summarise(rows)},  # this run's rows: same code, same machine state
                   "rows": all_rows}
        write_json(out, payload)
        return payload

    console = Console()
    rows = []
    columns = (TextColumn("{task.description:40s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("zoo", total=len(names))
        for name in names:
            results = {}
            for tool in TOOLS + ((LINEAR_ONLY,) if name in CONV_CLASSIFIERS else ()):
                progress.update(task, description=f"{name} · {tool}")
                results[tool] = run_child([__file__, "--child", tool, name, "--threads", str(args.threads),
                                           "--repeats", str(args.repeats)],
                                          stage_timeout=args.step_timeout, total_timeout=args.total_timeout,
                                          mem_limit_gib=args.mem_limit)
            rows.append({"run": run, **_row(name, results)})
            payload = save(rows)
            cells = [f"{t}: " + (f"ok {r['seconds']:.2f} s {r['peak_mib']:.0f} MiB" if r["ok"]
                                 else f"[red]FAIL[/red] {r['error'][:70]}") for t, r in results.items()]
            console.print(f"{name:40s} " + " | ".join(cells), highlight=False, soft_wrap=True)
            progress.advance(task)
    console.print_json(json.dumps(payload["summary"]))


def merge_shards() -> None:
    """zoo.json from the shard files: their rows, one summary over all of them (same code, same machine)."""
    import json

    from harness import RESULTS
    shards = sorted(RESULTS.glob("zoo.shard*of*.json"))
    if not shards:
        raise SystemExit("no zoo.shard*of*.json files to merge")
    parts = [json.loads(p.read_text()) for p in shards]
    rows = [row for part in parts for row in part["rows"]]
    order = {name: i for i, name in enumerate(all_models())}
    rows.sort(key=lambda r: order.get(r["model"], len(order)))
    runs = sorted({part["progress"]["run"] for part in parts})
    machine_facts = {**parts[0]["machine"], "shards": [{"file": p.name, "machine": part["machine"]}
                                                       for p, part in zip(shards, parts)]}
    payload = {"machine": machine_facts, "settings": {**parts[0]["settings"], "shards": len(parts)},
               "progress": {"run": " + ".join(runs), "requested": sum(p["progress"]["requested"] for p in parts),
                            "finished": len(rows)},
               "summary": {"run": " + ".join(runs), **summarise(rows)}, "rows": rows}
    write_json("zoo.json", payload)
    for path in shards:
        path.unlink()
    print(json.dumps(payload["summary"], indent=1))


def _run_id() -> str:
    """Start time and commit of this run, stored on its rows (``-dirty``: uncommitted changes)."""
    import subprocess
    from datetime import datetime, timezone

    from harness import ROOT
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "falf_fx", "passes",
                            "benchmarks/zoo.py"], capture_output=True, text=True).stdout.strip()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    return f"{stamp} {commit or 'unknown'}{'-dirty' if dirty else ''}"


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
