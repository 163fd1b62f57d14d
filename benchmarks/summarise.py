"""Markdown tables from the committed benchmark JSON (for the README), printed to stdout.

    python benchmarks/summarise.py
"""
from __future__ import annotations

import json
import sys

from harness import RESULTS


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _cell(record: dict) -> str:
    if record["ok"]:
        return f"ok, {record['seconds']:.2f} s, {record['peak_mib']:.0f} MiB, MACs x{record['macs_ratio']:.3f}"
    return f"**fails**: {record['error'][:90]}"


def zoo(data: dict) -> list[str]:
    s = data["summary"]
    lines = ["| | falf_fx | Torch-Pruning 1.6.1 |", "|---|---|---|",
             f"| models that succeed (of {s['models']}) | {s['succeeded']['falf_fx']} | "
             f"{s['succeeded']['torch_pruning']} |"]
    for key, label, fmt in (("median_seconds", "median time, both succeed (s)", "{:.2f}"),
                            ("median_peak_mib", "median peak memory, both succeed (MiB)", "{:.0f}"),
                            ("median_macs_ratio", "median MACs after / before", "{:.3f}"),
                            ("median_prunable_macs_share", "median prunable share of MACs", "{:.3f}")):
        lines.append(f"| {label} | " + " | ".join(fmt.format(s[key][t]) if s[key][t] is not None else "n/a"
                                                 for t in ("falf_fx", "torch_pruning")) + " |")
    lines += ["", f"Median per-model ratio falf_fx / Torch-Pruning over the {s['both_succeeded']} models both "
              f"handle: time **{s['median_time_ratio_falf_over_tp']}x**, peak memory "
              f"**{s['median_peak_ratio_falf_over_tp']}x**.", "",
              "| model | falf_fx | Torch-Pruning | time ratio | memory ratio |", "|---|---|---|---|---|"]
    notable = [r for r in data["rows"] if not (r["falf_fx"]["ok"] and r["torch_pruning"]["ok"])
               or r["model"] in ("resnet50", "mobilenet_v2", "vit_b_16", "densenet121", "efficientnet_b0",
                                 "convnext_tiny", "det:fasterrcnn_resnet50_fpn", "seg:deeplabv3_resnet50")]
    for r in notable:
        ratios = (f"{r['time_ratio']:.2f} | {r['peak_ratio']:.2f}" if "time_ratio" in r else "– | –")
        lines.append(f"| {r['model']} | {_cell(r['falf_fx'])} | {_cell(r['torch_pruning'])} | {ratios} |")
    return lines


def latency(data: dict) -> list[str]:
    lines = [f"torch threads: {data['machine']['torch_threads']}; rounds at batch 1 / 32: "
             f"{data['settings']['rounds_batch_1']} / {data['settings']['rounds_batch_32']}", "",
             "| model | MACs ratio | batch 1: original → slim (ms) | ratio | batch 32: original → slim (s) | ratio |",
             "|---|---|---|---|---|---|"]
    for r in data["records"]:
        if not r.get("ok"):
            lines.append(f"| {r.get('model')} | fails: {r.get('error')} | | | | |")
            continue
        b1, b32 = r["batch_1"], r["batch_32"]
        lines.append(f"| {r['model']} | {r['macs_ratio']:.3f} | {b1['original']['median_s'] * 1e3:.0f} → "
                     f"{b1['slim']['median_s'] * 1e3:.0f} | {b1['latency_ratio']:.3f} | "
                     f"{b32['original']['median_s']:.2f} → {b32['slim']['median_s']:.2f} | "
                     f"{b32['latency_ratio']:.3f} |")
    return lines


def latency_target(data: dict) -> list[str]:
    lines = ["| model | batch | target | checked | prune's measure | within 5% | MACs ratio | share of MACs promise | "
             "first prediction error | tries | prune s | load average |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        for run in r.get("runs", []):
            planned = run["planned"]
            load = run.get("load_average")
            lines.append(f"| {r['model']} | {run['batch']} | {run['target']} | {run['latency_ratio']:.3f} | "
                         f"{planned['reached']:.3f} | {'yes' if run['within_5pct'] else '**no**'} | "
                         f"{run['macs_ratio']:.3f} | {run['share_of_mac_limit']:.2f} | "
                         f"{planned['prediction_error']:+.1%} | {planned['tries']} | {run['prune_seconds']:.0f} | "
                         f"{load[0] if load else 'not recorded'} |")
        if not r.get("ok"):
            lines.append(f"| {r.get('model')} | fails: {r.get('error')} | | | | | | | | | | |")
    return lines


def scaling(data: dict) -> list[str]:
    lines = ["| net | nodes | channel positions | trace + analyze (s) | analyze (s) |", "|---|---|---|---|---|"]
    for r in data["records"]:
        if r.get("ok"):
            lines.append(f"| {r['family']} {r['size']} | {r['nodes']} | {r['layout_positions']} | "
                         f"{r['trace_and_analyze_s']:.2f} | {r['analyze_s']:.2f} |")
        else:
            lines.append(f"| {r['family']} {r['size']} | fails: {r.get('error')} | | | |")
    lines += ["", "| family | slope vs nodes (trace+analyze / analyze) | slope vs channel positions |",
              "|---|---|---|"]
    for family, fit in data["summary"]["fits"].items():
        lines.append(f"| {family} | {fit['trace_and_analyze_s_vs_nodes']} / {fit['analyze_s_vs_nodes']} | "
                     f"{fit['trace_and_analyze_s_vs_layout_positions']} / {fit['analyze_s_vs_layout_positions']} |")
    return lines


def main() -> None:
    for title, name, render in (("Zoo", "zoo.json", zoo), ("Latency", "latency.json", latency),
                                ("Snapped latency", "latency_snapped.json", latency),
                                ("Latency targets", "latency_target.json", latency_target),
                                ("Scaling", "scaling.json", scaling)):
        data = _load(name)
        if data:
            print(f"### {title}\n\n" + "\n".join(render(data)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
