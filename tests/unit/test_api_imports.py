"""The API process stays light: no ML framework and no worker code is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys, time
started = time.perf_counter()
from api.app import create_app
from core.config import Settings
app = create_app(Settings(database_url="sqlite://"))
app.openapi()
elapsed = time.perf_counter() - started
heavy = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"torch", "tensorflow", "transformers", "keras", "worker", "PIL"}
)
print(json.dumps({"heavy": heavy, "seconds": elapsed}))
"""


def test_building_the_app_imports_no_ml_framework_or_worker_code() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    # The budget is one second; the margin absorbs a busy shared machine.
    assert report["seconds"] < 3.0, report
