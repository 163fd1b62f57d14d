"""What every benchmark shares: isolated child runs with limits, peak-memory metering, machine facts.

A model runs in a child process so that a crash, a hang or a runaway allocation
of one tool on one model becomes that tool's recorded failure, never an aborted
run.  The child prints one JSON object per line; the parent keeps the last one
and watches the child's time and resident memory.
"""
from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

CHILD_ENV = {"PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def _status_kib(field: str, pid: str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class PeakMeter:
    """Resident-memory growth of this process over a code region.

    Linux keeps the peak resident set (VmHWM); writing 5 to clear_refs resets it
    to the current RSS, so the peak of the region minus the RSS at its start is
    the most memory the region ever added, however briefly.  Memory freed
    earlier is first handed back to the OS (malloc_trim), or the region could
    reuse it unseen.
    """

    def __enter__(self) -> "PeakMeter":
        import ctypes
        import gc
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        self.start_kib = _status_kib("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak_mib = max(_status_kib("VmHWM") - self.start_kib, 0) / 1024


def emit(record: dict) -> None:
    """Child side: hand a (partial or final) record to the parent."""
    print(json.dumps(record), flush=True)


def run_child(args: list[str], *, stage_timeout: float, total_timeout: float,
              mem_limit_gib: float, stage: str = "measured") -> dict:
    """Run ``python args...``; return its last JSON record, marked failed if it died.

    ``stage_timeout`` bounds the time until the child reports ``stage`` (the
    measured step), ``total_timeout`` the whole child (checks included); a child
    whose resident memory passes ``mem_limit_gib`` is killed.
    """
    lines: list[dict] = []
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, **CHILD_ENV}, start_new_session=True, cwd=ROOT)
        reader = threading.Thread(target=lambda: [lines.append(json.loads(s)) for s in proc.stdout
                                                  if s.startswith("{")], daemon=True)
        reader.start()
        start, killed, peak_kib = time.monotonic(), None, 0
        while proc.poll() is None:
            time.sleep(0.2)
            elapsed = time.monotonic() - start
            try:
                peak_kib = max(peak_kib, _status_kib("VmRSS", str(proc.pid)))
            except (FileNotFoundError, ProcessLookupError):
                pass
            reached = any(r.get("stage") == stage for r in lines)
            if not reached and elapsed > stage_timeout:
                killed = f"timeout: no result after {stage_timeout:.0f} s"
            elif elapsed > total_timeout:
                killed = f"timeout: checks unfinished after {total_timeout:.0f} s"
            elif peak_kib > mem_limit_gib * 2**20:
                killed = f"memory limit: resident set passed {mem_limit_gib:g} GiB"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
        reader.join(timeout=5)
        err.seek(0)
        tail = [s for s in err.read().strip().splitlines() if s.strip()]
    record = dict(lines[-1]) if lines else {}
    record["child_wall_s"] = round(time.monotonic() - start, 2)
    if killed or proc.returncode != 0 or record.get("stage") != "done":
        reason = killed or (tail[-1] if tail else f"exit status {proc.returncode}")
        record.update(ok=False, error=record.get("error") or reason[:400])
    return record


def machine(threads: int, note: Optional[str] = None) -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if note:
        info["note"] = note
    return info


def median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def write_json(name: str, payload: dict) -> Path:
    payload.setdefault("machine", {})["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
