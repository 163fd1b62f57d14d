"""What `pip install falf_fx` puts in site-packages: the falf_fx package alone, passes inside it."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_only_falf_fx(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("falf_fx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"falf_fx", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in ("falf_fx/passes/analysis.py", "falf_fx/passes/rules/shape.py",
                     "falf_fx/report_assets/report.js", "falf_fx/report_assets/report.css"):
        assert expected in names


def test_nothing_imports_the_top_level_passes_folder():
    code = "import sys, falf_fx, falf_fx.cli, falf_fx.html_report; print(sorted(m for m in sys.modules if m.split('.')[0] == 'passes'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_runtime_does_not_import_the_test_oracle():
    code = ("import sys, falf_fx, falf_fx.cli, falf_fx.methods, falf_fx.html_report; "
            "print('falf_fx.testing' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.strip() == "False"
