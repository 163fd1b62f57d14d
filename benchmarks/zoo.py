"""Zoo benchmark: every torchvision classification model through falf_fx.

For each model, in its own subprocess with a time limit (a crash or hang is a
recorded failure, never an aborted run): trace + analyse (timed), the share of
MACs that is prunable, prune 50% of every group by L1 (final classifier kept),
the exactness oracle on that plan, MACs after, and the peak memory the
analysis + slimming added.  Results: benchmarks/results/zoo.json.

    python benchmarks/zoo.py                 # all models
    python benchmarks/zoo.py resnet18 vit_b_16
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "zoo.json"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(name: str) -> dict:
    """Run in the child process: one model, one JSON record."""
    import torch
    import torchvision

    import falf_fx
    from falf_fx.flops import count_cost, prunable_macs_share
    from falf_fx.testing import check_equivalence

    torch.manual_seed(0)
    size = 299 if name.startswith("inception") else 224
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    before = count_cost(model, x)
    base_rss = _rss_mib()
    start = time.perf_counter()
    gm = falf_fx.trace(model, x)
    analysis = falf_fx.analyze(gm)
    analysis_s = time.perf_counter() - start
    scores = falf_fx.group_importance(analysis, "l1")
    plan = falf_fx.plan_by_ratio(analysis, scores, 0.5)
    slim = falf_fx.slim(gm, plan)
    total_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    after = count_cost(slim, x)
    share = prunable_macs_share(analysis, x)
    oracle = check_equivalence(model, x, plan)
    return {
        "model": name, "ok": True, "input": size, "nodes": len(gm.graph.nodes),
        "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups),
        "prunable_macs_share": round(share, 4), "macs_before": before.macs, "macs_after": after.macs,
        "macs_ratio": round(after.macs / before.macs, 4), "params_before": before.params,
        "params_after": after.params, "analysis_s": round(analysis_s, 3), "analysis_and_slim_s": round(total_s, 3),
        "peak_extra_mib": round(max(peak_mib, 0.0), 1), "oracle_max_rel_diff": oracle.max_rel_diff,
    }


def run_one(name: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "error": f"timeout after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "ok": False, "error": tail[:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return

    import torch
    import torchvision
    from rich.progress import Progress

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    records = []
    with Progress() as progress:
        task = progress.add_task("zoo", total=len(names))
        for name in names:
            progress.update(task, description=f"{name:24s}")
            record = run_one(name, args.timeout)
            records.append(record)
            status = "ok" if record["ok"] else f"FAIL {record['error']}"
            progress.console.print(f"{name:28s} {status}")
            progress.advance(task)
    if args.models and RESULTS.exists():  # a partial run replaces its own rows only
        old = {r["model"]: r for r in json.loads(RESULTS.read_text())["records"]}
        old.update({r["model"]: r for r in records})
        records = sorted(old.values(), key=lambda r: r["model"])
    ok = [r for r in records if r["ok"]]
    summary = {
        "models": len(records), "succeeded": len(ok),
        "median_analysis_s": sorted(r["analysis_s"] for r in ok)[len(ok) // 2] if ok else None,
        "median_macs_ratio": sorted(r["macs_ratio"] for r in ok)[len(ok) // 2] if ok else None,
    }
    payload = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "python": platform.python_version()},
               "summary": summary, "records": records}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
