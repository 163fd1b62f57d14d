"""The ``falf-fx`` command line: graph, groups, flops and prune for any importable or saved model.

A user mistake (bad MODEL, bad --input-shape, a model falf_fx cannot handle) prints one
``error: ...`` line on stderr and exits with status 2; tracebacks are for bugs only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from torch import fx

from .api import analyze, prune
from .capture import trace
from .errors import FalfError, PlanError, ShapePropagationError, SlimError
from .importance import IMPORTANCE_KINDS
from .model_spec import ModelSpecError, load_model

with warnings.catch_warnings():
    # fvcore applies torch.jit.script at import time, which torch now deprecates on every run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    from .flops import count_cost
    from .report import CostReport, GroupsReport, graph_json, graph_nodes, graph_table, to_dot

__all__ = ["main"]

EXIT_USER_ERROR = 2


class CliError(ValueError):
    """A command-line value that parses but makes no sense (ratio 1.5, shape 0x3)."""


_USER_ERRORS = (CliError, ModelSpecError, FalfError, PlanError, ShapePropagationError, SlimError)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` -> (1, 3, 224, 224); every size a positive integer."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise CliError(f"--input-shape must be comma-separated integers like 1,3,224,224, not '{text}'") from None
    if not shape or any(s <= 0 for s in shape):
        raise CliError(f"--input-shape sizes must be positive, got '{text}'")
    return shape


class _Session:
    """One command's model, example input and consoles."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.text = args.format == "text"
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.input_shape = parse_input_shape(args.input_shape)
        self.example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0))

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on stderr in text mode; nothing for machine-readable output."""
        if not self.text:
            yield
            return
        with self.err.status(message):
            yield

    def traced(self) -> fx.GraphModule:
        with self.status(f"loading {self.args.model}"):
            model = load_model(self.args.model).eval()
        with self.status(f"tracing {self.args.model} at input {self.args.input_shape}"):
            return trace(model, self.example)

    def emit(self, renderable: Any) -> None:
        """JSON and DOT go to stdout verbatim; anything else is rendered by rich."""
        if isinstance(renderable, dict):
            sys.stdout.write(json.dumps(renderable, indent=2) + "\n")
        elif isinstance(renderable, str):
            sys.stdout.write(renderable)
        else:
            self.out.print(renderable)


def _cmd_graph(s: _Session) -> None:
    analysis = analyze(s.traced())
    if s.args.format == "dot":
        s.emit(to_dot(analysis, s.args.model))
        return
    nodes = graph_nodes(analysis)
    s.emit(graph_json(s.args.model, s.input_shape, nodes) if s.args.format == "json"
           else graph_table(s.args.model, nodes))


def _cmd_groups(s: _Session) -> None:
    analysis = analyze(s.traced())
    if s.args.format == "dot":
        s.emit(to_dot(analysis, s.args.model))
        return
    with s.status("counting MACs per layer"):
        report = GroupsReport.build(s.args.model, analysis, s.example)
    s.emit(report.to_json() if s.args.format == "json" else report.renderable())


def _cmd_flops(s: _Session) -> None:
    gm = s.traced()
    with s.status("counting MACs"):
        report = CostReport(s.args.model, s.input_shape, count_cost(gm, s.example))
    s.emit(report.to_json() if s.args.format == "json" else report.table())


def _save(gm: fx.GraphModule, path: Path) -> None:
    try:
        torch.save(gm, path)
    except OSError as error:
        raise CliError(f"cannot write --out '{path}': {error.strerror or error}") from error


def _cmd_prune(s: _Session) -> None:
    a = s.args
    if not 0.0 < a.ratio < 1.0:
        raise CliError(f"--ratio must be strictly between 0 and 1, got {a.ratio}")
    if a.round_to is not None and a.round_to < 1:
        raise CliError(f"--round-to must be a positive integer, got {a.round_to}")
    if a.out is not None and not a.out.parent.is_dir():
        raise CliError(f"--out '{a.out}': directory '{a.out.parent}' does not exist")
    gm = s.traced()
    with s.status("counting MACs before pruning"):
        before = count_cost(gm, s.example)
    with s.status(f"pruning {a.ratio:.0%} of every prunable group by {a.importance} importance"):
        slim = prune(gm, s.example, ratio=a.ratio, importance=a.importance, seed=a.seed, round_to=a.round_to)
    with s.status("counting MACs after pruning"):
        report = CostReport(a.model, s.input_shape, before, count_cost(slim, s.example))
    if a.out is not None:
        _save(slim, a.out)
    if a.format == "json":
        s.emit({**report.to_json(), "settings": {"ratio": a.ratio, "importance": a.importance, "seed": a.seed,
                                                 "round_to": a.round_to}, "out": str(a.out) if a.out else None})
        return
    s.emit(report.table())
    if a.out is not None:
        s.out.print(f"saved the slim model to {a.out} (load it with torch.load(path, weights_only=False), "
                    f"or inspect it with falf-fx flops {a.out})", soft_wrap=True, markup=False)
    else:
        s.out.print("not saved: pass --out PATH to keep the slim model")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", metavar="MODEL",
                        help="package.module:factory (e.g. torchvision.models:resnet18, "
                             "falf_fx.models:resnet_cifar(depth=32)) or a file saved by 'falf-fx prune --out'")
    common.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W",
                        help="shape of the random example input (default: 1,3,224,224)")
    parser = argparse.ArgumentParser(prog="falf-fx", description="Structured pruning on torch.fx: "
                                     "inspect channel groups and costs, and slim models exactly.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Any, help_text: str, formats: Sequence[str]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")
        p.set_defaults(run=run)
        return p

    command("graph", _cmd_graph, "the fx graph: every node's op, output shape and channel groups",
            ("text", "json", "dot"))
    command("groups", _cmd_groups, "channel groups: size, prunable channels, MACs share, why frozen",
            ("text", "json", "dot"))
    command("flops", _cmd_flops, "MACs (fvcore), FLOPs (2 x MACs) and parameters", ("text", "json"))
    p = command("prune", _cmd_prune, "remove a ratio of every prunable group's channels and save the "
                "slim model", ("text", "json"))
    p.add_argument("--ratio", type=float, default=0.5, help="share of each group's channels to remove (default 0.5)")
    p.add_argument("--importance", choices=IMPORTANCE_KINDS, default="l1",
                   help="channel score: weight magnitude (l1, l2) or random (default l1)")
    p.add_argument("--seed", type=int, default=0, help="seed for --importance random (default 0)")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="keep a multiple of N channels in groups of at least N (e.g. 8 for GPUs)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="where to torch.save the slim model")
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            args.run(_Session(args))
            status = 0
        except _USER_ERRORS as error:
            sys.stderr.write(f"error: {_one_line(error)}\n")
            status = EXIT_USER_ERROR
    # falf_fx's own warnings say what was frozen and why; library noise (fvcore's jit tracing) is dropped.
    for w in caught:
        if str(w.message).startswith("falf_fx:"):
            sys.stderr.write(f"warning: {_one_line(w.message)}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
