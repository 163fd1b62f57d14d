"""``falf_fx.report``: one self-contained HTML file that shows a model's channel groups and a compression run.

Everything a reader asks first is on one page: which layers are coupled (the graph,
coloured by channel group, laid out by Graphviz), what is frozen and why (greyed,
with the reason on hover and in a list), how wide every layer is before and after,
what it costs, and for a ``compress`` run how the metric and MACs moved round by
round.  The file inlines its SVG, CSS and script: it opens offline, mails as one
attachment and never fetches anything.
"""
from __future__ import annotations

import copy
import html
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from falf_fx.passes.analysis import Analysis, ParamAxis

from .api import analyze, prune
from .capture import as_input_tuple, trace
from .charts import rounds_chart, widths_chart
from .compress import CompressResult
from .flops import count_cost, layer_widths
from .latency import report_latency_ms
from .errors import FalfTypeError
from .graph_views import GraphView, render_views
from .text_report import CONVENTION, GroupsReport, group_colour, metric_label, si

__all__ = ["ReportError", "report"]


class ReportError(FalfTypeError):
    """``report`` was given something that is neither a model nor a compress result."""

_ASSETS = Path(__file__).with_name("report_assets")


def _frozen_channels(analysis: Analysis) -> dict[str, int]:
    """Per conv/linear layer, how many of its output channels no plan may remove."""
    counts = {}
    canonical = {alias: name for name, aliases in analysis.param_aliases.items() for alias in aliases}
    for name, width in layer_widths(analysis.graph_module).items():
        weight = f"{name}.weight"
        atoms = analysis.param_axes.get(ParamAxis(canonical.get(weight, weight), 0))
        if atoms is None:  # a tied or untraced weight: the analysis does not slice it
            counts[name] = width
            continue
        channels = analysis.channel_of_atom[atoms.astype("int64")]
        frozen = 0
        for channel in channels:
            gid = analysis.group_of_channel[channel]
            frozen += gid < 0 or bool(analysis.groups[gid].frozen[analysis.index_in_group[channel]])
        counts[name] = int(frozen)
    return counts


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cost_rows(before: Mapping[str, Any], after: Optional[Mapping[str, Any]], metric: Optional[str]) -> str:
    rows = []
    specs = ((metric_label(metric or "metric"), "metric", lambda v: f"{v:.4f}"), ("MACs", "macs", si), ("FLOPs", "flops", si),
             ("Parameters", "params", si), ("CPU latency", "latency_ms", lambda v: f"{v:.2f} ms"))
    for label, key, fmt in specs:
        b = before.get(key)
        a = after.get(key) if after else None
        if b is None and a is None:
            continue
        cells = [f"<th>{label}</th>", f"<td>{fmt(b) if b is not None else '–'}</td>"]
        if after is not None:
            cells.append(f"<td>{fmt(a) if a is not None else '–'}</td>")
            if key == "metric":
                cells.append(f"<td>{a - b:+.4f}</td>" if a is not None and b is not None else "<td>–</td>")
            else:
                cells.append(f"<td>×{a / b:.3f}</td>" if a is not None and b else "<td>–</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th></th><th>Before</th><th>After</th><th>After / before</th></tr>" if after is not None \
        else "<tr><th></th><th>Value</th></tr>"
    return f"<table class='costs'>{head}{''.join(rows)}</table>"


def _group_rows(groups: GroupsReport, views: tuple[GraphView, ...]) -> str:
    first_view = {}
    for view in views:
        for gid in view.groups:
            first_view.setdefault(gid, view.key)
    rows = []
    for g in groups.groups:
        status = "prunable" if g.prunable else "frozen"
        producers = ", ".join(g.producers[:4]) + (f" +{len(g.producers) - 4} more" if len(g.producers) > 4 else "")
        swatch = group_colour(g.id) if g.prunable else "#d9d9d9"
        rows.append(
            f"<tr class='group {status}' data-group='{g.id}' data-view='{first_view.get(g.id, '')}'>"
            f"<td><span class='swatch' style='background:{swatch}'></span>{g.id}</td><td>{g.channels}</td>"
            f"<td>{g.prunable}</td><td>{_e(producers or '–')}</td><td>{g.macs_share:.1%}</td>"
            f"<td class='reasons'>{_e('; '.join(g.frozen_reasons) or '–')}</td></tr>")
    return ("<table class='groups'><tr><th>Group</th><th>Channels</th><th>Prunable</th><th>Producers</th>"
            "<th title='MACs of the layers whose parameters the group slices'>MACs share</th>"
            f"<th>Frozen because</th></tr>{''.join(rows)}</table>")


def _frozen_list(groups: GroupsReport) -> str:
    by_reason = groups.by_reason()
    if not by_reason and not groups.auto_leaves:
        return "<p>Nothing is frozen: every channel group may be pruned.</p>"
    items = []
    for reason, members in by_reason.items():
        frozen = sum(g.channels - g.prunable for g in members)
        names = ", ".join(f"group {g.id} ({', '.join(g.producers[:2]) or 'no producer'})" for g in members[:8])
        more = f" and {len(members) - 8} more" if len(members) > 8 else ""
        items.append(f"<li class='frozen-reason'><b>{_e(reason)}</b>: {frozen} channels in {len(members)} "
                     f"group{'s' * (len(members) > 1)}: {_e(names)}{more}</li>")
    for name, why in groups.auto_leaves.items():
        items.append(f"<li class='frozen-reason'><b>untraceable submodule kept whole: {_e(name)}</b>: {_e(why)}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _widths_table(before: Mapping[str, int], after: Optional[Mapping[str, int]], frozen: Mapping[str, int]) -> str:
    head = "<tr><th>Layer</th><th>Before</th><th>After</th></tr>" if after is not None \
        else "<tr><th>Layer</th><th>Channels</th><th>Frozen</th></tr>"
    rows = "".join(f"<tr><td>{_e(n)}</td><td>{w}</td><td>{after.get(n, 0) if after is not None else frozen.get(n, 0)}"
                   f"</td></tr>" for n, w in before.items())
    return f"<details><summary>every layer's numbers</summary><table class='widths'>{head}{rows}</table></details>"


def _views_html(views: tuple[GraphView, ...]) -> str:
    parts = []
    for i, view in enumerate(views):
        note = f"<p class='note'>{_e(view.note)}</p>" if view.note else ""
        parts.append(f"<div class='view' id='{view.key}' data-parent='{view.parent_key or ''}' "
                     f"data-title='{_e(view.title)}' data-groups='{' '.join(map(str, view.groups))}'"
                     f"{'' if i == 0 else ' hidden'}>{note}{view.svg}</div>")
    return "".join(parts)


def _history_rows(history: list[dict[str, Any]], metric: str) -> str:
    rows = []
    for h in history:
        kept = h.get("kept", True)
        value = f"{h['metric']:.4f}" if h.get("metric") is not None else "–"
        rows.append(f"<tr class='round{'' if kept else ' undone'}'><td>{h['round']}</td>"
                    f"<td>{h['channels_removed']}</td>"
                    f"<td>{h['macs_ratio']:.4f}</td><td>{value}</td><td>{'kept' if kept else 'undone'}</td>"
                    f"<td>{h.get('finetune_epochs', '–')}</td></tr>")
    return ("<table class='history'><tr><th>Round</th><th>Channels removed</th><th>MACs kept</th><th>{_e(metric_label(metric))}</th>"
            f"<th>Verdict</th><th>Fine-tune epochs</th></tr>{''.join(rows)}</table>")


def _distillation_fact(distill: dict) -> str:
    if not distill.get("alpha"):
        return "off"
    stopped = distill.get("stopped")
    until = (f"; off from fine-tuning epoch {stopped['finetune_epoch']} (round {stopped['round']}), where the slim "
             f"model passed the original ({stopped['metric']:.4f} against {stopped['teacher_metric']:.4f})"
             if stopped else "; to the end" if distill.get("until") == "teacher_passed" else "")
    return (f"alpha {distill['alpha']}, temperature {distill['temperature']}, samples: {distill.get('where', 'all')}"
            + until)


def _run_section(result: CompressResult) -> str:
    """Method, options, budget spent and target, then the metric and MACs of every round."""
    r = result.report
    budget, target, options = r.get("budget", {}), r.get("target") or {}, r.get("method_options") or {}
    distill = budget.get("distill", {})
    facts = [("Method", r["method"] + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")),
             ("MACs target", f"{target['macs']} of the original: reached {target['reached']:.4f}, "
                             f"{'met' if target['met'] else 'MISSED'}" if target else f"none ({metric_label(r['metric'])} tolerance)"),
             ("Fine-tuning", f"{budget.get('finetune_epochs', '–')} of {budget.get('finetune_epochs_budget', '–')} "
                             f"epochs, peak lr {budget.get('lr', '–')}, {budget.get('schedule', '')}"),
             ("Method's own epochs", ", ".join(f"{k}: {v}" for k, v in budget.get("auxiliary_epochs", {}).items())
              or "none"),
             ("Distillation", _distillation_fact(distill)),
             ("Allocation", f"{budget.get('allocation', '–')}, at least {budget.get('min_keep', 0):.0%} and "
                            f"{budget.get('min_channels', 1)} channels of every group kept")]
    rows = "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    chart = rounds_chart(result.history, r["before"].get("metric"), metric_label(r["metric"] or "metric"))
    return (f"<section id='run'><h2>The compression run</h2><table class='facts'>{rows}</table>"
            f"<div class='chart' id='rounds-chart'>{chart}</div>{_history_rows(result.history, r['metric'] or 'metric')}</section>")


def _page(title: str, summary: str, sections: list[str], has_run: bool) -> str:
    css = (_ASSETS / "report.css").read_text()
    script = (_ASSETS / "report.js").read_text()
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{css}</style></head><body><header><h1>{_e(title)}</h1>{summary}"
            "<nav><a href='#costs'>Costs</a> " + ("<a href='#run'>Run</a> " if has_run else "")
            + "<a href='#graph'>Graph</a> "
            "<a href='#groups'>Channel groups</a> <a href='#frozen'>Frozen</a> <a href='#widths'>Layer widths</a></nav>"
            f"</header><main>{''.join(sections)}</main><footer>Written by falf_fx {_version()} with torch "
            f"{torch.__version__} on {_e(platform.machine())}; {_e(CONVENTION)}. Graph layout: Graphviz dot; "
            f"charts: matplotlib.</footer><script>{script}</script></body></html>\n")


def _version() -> str:
    from . import __version__

    return __version__


def _summary(name: str, shape: tuple[int, ...], groups: GroupsReport) -> str:
    prunable = sum(g.prunable > 0 for g in groups.groups)
    frozen = len(groups.groups) - prunable
    return (f"<p class='summary'>falf_fx found <b>{len(groups.groups)} channel groups</b> in {_e(name)} at input "
            f"{'×'.join(map(str, shape))}: <b>{prunable} can be pruned</b>, "
            f"{frozen} {'is' if frozen == 1 else 'are'} frozen. "
            "A channel group is a set of channels that must be removed together, such as a residual stream "
            "that every block adding to it shares. The layers a prunable group can slim hold "
            f"<b>{groups.prunable_macs_share:.1%} of the MACs</b>.</p>"
            "<p class='howto'>In the graph every box is one operation, filled with the colour of its channel "
            "group; grey dashed boxes are frozen (hover for why). Double-edged boxes are modules: click one to "
            "open it. Click a row of the group table to show where that group lives.</p>")


def _latency_text(example: tuple) -> str:
    batch = example[0].shape[0] if example and isinstance(example[0], torch.Tensor) else "?"
    return f"CPU latency: median of torch.utils.benchmark runs at batch {batch}, {torch.get_num_threads()} threads."


def _write(path: Path, text: str) -> None:
    """Written next to the target, then renamed: a crash never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _measured(gm: nn.Module, example: tuple, measure_latency: bool) -> dict[str, Any]:
    cost = count_cost(gm, example)
    return {"macs": cost.macs, "flops": cost.flops, "params": cost.params,
            "latency_ms": report_latency_ms(gm, example) if measure_latency else None, "widths": layer_widths(gm)}


def report(model_or_result: Union[nn.Module, CompressResult], example_inputs: Any, path: Union[str, Path], *,
           name: Optional[str] = None, ratio: Optional[float] = None, measure_latency: bool = True,
           node_budget: int = 90) -> Path:
    """Write the HTML report of a model, or of a finished ``compress`` run, to ``path``; returns the path.

    A model is traced on a copy (it is left as it was) and shown as it is: its groups,
    what is frozen, its costs and widths.  A ``CompressResult`` shows the slim model
    and the run: costs and widths before and after, the metric and MACs of every
    round, the method, its options and the budget spent.  ``ratio`` (models only) adds
    a preview: costs and widths after ``prune(model, x, ratio=ratio)``, untrained.
    ``node_budget`` is the most boxes a graph view opens before it draws submodules collapsed.
    """
    example = as_input_tuple(example_inputs)
    if ratio is not None and isinstance(model_or_result, CompressResult):
        raise ReportError("ratio= previews prune() on a model; a compress result already has its after")
    if isinstance(model_or_result, CompressResult):
        result = model_or_result
        gm = trace(copy.deepcopy(result.model), example)
        before, after = result.report["before"], result.report["after"]
        model_type = result.report.get("model_type") or type(result.model).__name__
        title = name or f"{model_type} compressed by {result.report['method']}"
    elif isinstance(model_or_result, nn.Module):
        result, after = None, None
        gm = trace(copy.deepcopy(model_or_result), example)
        model_type = type(model_or_result).__name__
        title = name or model_type
    else:
        raise ReportError(f"falf_fx.report takes a model (nn.Module) or the CompressResult of compress, "
                          f"not {type(model_or_result).__name__}")
    analysis = analyze(gm)
    groups = GroupsReport.build(title, analysis, example)
    preview = ""
    if result is None:
        before = _measured(gm, example, measure_latency)
        if ratio is not None:
            after = _measured(prune(gm, example, ratio=ratio), example, measure_latency)
            preview = (f"<p class='fine'>After = <code>falf_fx.prune(model, x, ratio={ratio})</code>: {ratio:.0%} "
                       "of every prunable group removed by L1 magnitude, exactly, without any training.</p>")
    views = render_views(gm, analysis, node_budget, model_type)
    frozen = _frozen_channels(analysis)
    widths_after = after["widths"] if after is not None else None
    sections = [f"<section id='costs'><h2>Costs</h2>{_cost_rows(before, after, result.report['metric'] if result else 'top1')}{preview}"
                f"<p class='fine'>{_e(CONVENTION)}. {_latency_text(example)}</p></section>"]
    if result is not None:
        sections.append(_run_section(result))
    sections += [
        "<section id='graph'><h2>Graph</h2><div id='crumbs'></div>"
        f"<div id='views'>{_views_html(views)}</div></section>",
        f"<section id='groups'><h2>Channel groups</h2>{_group_rows(groups, views)}</section>",
        f"<section id='frozen'><h2>Frozen, and why</h2>{_frozen_list(groups)}</section>",
        f"<section id='widths'><h2>Layer widths</h2><div class='chart' id='widths-chart'>"
        f"{widths_chart(before['widths'], widths_after, frozen)}</div>"
        f"{_widths_table(before['widths'], widths_after, frozen)}</section>"]
    target = Path(path)
    _write(target, _page(title, _summary(title, tuple(example[0].shape), groups), sections, result is not None))
    return target
