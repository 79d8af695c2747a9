"""Every benchmark script runs end to end in its ``--quick`` mode (a smoke test, not a timing test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HELPERS = {"timing.py", "plain_loop.py"}  # imported by the scripts, not run
# Extra arguments that keep the smoke run short where --quick alone still trains for a while.
EXTRA = {"quality_shapes.py": ["--minutes", "0.1", "--eval-images", "50", "--bleu-images", "32"]}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def test_every_benchmark_is_covered():
    assert {"overhead.py", "step_breakdown.py", "efficiency.py", "scaling.py", "quality_shapes.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_mode_runs(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *EXTRA.get(script, [])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Each script prints its figures last, under a header naming the machine's cores.
    assert f"{script.removesuffix('.py')}:" in result.stdout and "cores" in result.stdout, result.stdout[-2000:]
