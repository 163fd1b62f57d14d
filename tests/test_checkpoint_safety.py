"""compress's round checkpoints: no pickles, refused when tampered or foreign, and a real SIGKILL at any point
(between writes or in the middle of one) resumes to the uninterrupted result."""
from __future__ import annotations

import ast
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from falf_fx.checkpoint import CheckpointError
from tests.scripts.compress_run import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        return run(tmp_path_factory.mktemp("whole"))
    finally:
        torch.set_num_threads(threads)


def _assert_same(resumed, uninterrupted) -> None:
    assert resumed.history == uninterrupted.history
    a, b = resumed.model.state_dict(), uninterrupted.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kill_when(directory: Path, ready, *flags: str) -> None:
    """Start the run in a child, SIGKILL it as soon as ``ready()`` holds."""
    child = subprocess.Popen([sys.executable, "-m", "tests.scripts.compress_run", str(directory), *flags], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not ready():
            if child.poll() is not None:
                raise AssertionError(f"the run ended before the kill: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child never got to the point of the kill"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def _resumed(directory: Path, uninterrupted):
    threads = torch.get_num_threads()
    try:
        return run(directory, resume=True)
    finally:
        torch.set_num_threads(threads)


def test_killed_between_rounds_resumes_to_the_same_result(tmp_path, uninterrupted):
    directory = tmp_path / "run"
    _kill_when(directory, lambda: (directory / "compress.pt").exists())  # round 1 written, round 2 running
    _assert_same(_resumed(directory, uninterrupted), uninterrupted)


def test_killed_in_the_middle_of_a_checkpoint_write_resumes_to_the_same_result(tmp_path, uninterrupted):
    directory = tmp_path / "run"
    _kill_when(directory, lambda: (tmp_path / "stalled").exists(), "--stall-round-write")
    assert (directory / "compress.pt.partial").exists() and not (directory / "compress.pt").exists()
    _assert_same(_resumed(directory, uninterrupted), uninterrupted)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_checkpoint_is_refused_and_never_run(tmp_path, uninterrupted):
    directory = tmp_path / "run"
    run(directory)
    marker = tmp_path / "pwned"
    with open(directory / "compress.pt", "wb") as handle:
        pickle.dump({"fingerprint": "x", "model": _Payload(marker)}, handle)
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects"):
        run(directory, resume=True)
    assert not marker.exists()


def test_a_foreign_or_edited_checkpoint_is_refused(tmp_path, uninterrupted):
    directory = tmp_path / "run"
    run(directory)
    state = torch.load(directory / "compress.pt", weights_only=True)
    torch.save({"weights": torch.zeros(3)}, directory / "compress.pt")
    with pytest.raises(CheckpointError, match="is not one falf_fx wrote"):
        run(directory, resume=True)
    state["parts"][""]["graph"][1]["target"] = "os.system"  # a graph calling what the format does not allow
    state["parts"][""]["graph"][1]["op"] = "call_function"
    torch.save(state, directory / "compress.pt")
    with pytest.raises(CheckpointError, match="compress.pt refused"):
        run(directory, resume=True)


def test_no_pickle_loads_anywhere_in_the_library():
    offenders = []
    for path in [p for folder in ("falf_fx", "passes") for p in (ROOT / folder).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and any(k.arg == "weights_only" and getattr(k.value, "value", True) is False
                                                  for k in node.keywords):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch" and \
                    not any(k.arg == "weights_only" for k in node.keywords):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} (torch.load without weights_only)")
    assert offenders == []
