"""Every benchmark script runs end to end in its ``--quick`` mode (a smoke test, not a timing test).

Scripts that train through ``train.py``'s CLI (with its offline W&B run) run in a fresh process;
the others run inside this one (``runpy``), which saves each the seconds of importing torch.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HELPERS = {"timing.py", "plain_loop.py"}  # imported by the scripts, not run
# W&B keeps process-wide state; collapse_trace.py trains through the CLI in its own process.
OWN_PROCESS = {"quality_shapes.py", "sampling_speed.py", "step_breakdown.py", "collapse_trace.py"}
# Extra arguments that keep the smoke run short where --quick alone still trains for a while.
EXTRA = {
    "quality_shapes.py": [
        *("--minutes", "0.1", "--eval-images", "120", "--bleu-images", "32", "--pair-images", "32"),
        *(
            "--held-out",
            "purple triangle",
            "--variant",
            "plain=",
            "--variant",
            "binding=--model.binding_negative_share=1",
        ),
    ]
}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def test_every_benchmark_is_covered():
    expected = {"overhead.py", "step_breakdown.py", "efficiency.py", "scaling.py", "quality_shapes.py", "ddp_cost.py"}
    assert expected <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_mode_runs(script, tmp_path, monkeypatch, capsys):
    argv = [str(BENCHMARKS / script), "--quick", *EXTRA.get(script, [])]
    if script in OWN_PROCESS:
        result = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
    else:
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers by module name
        monkeypatch.setattr(sys, "argv", argv)
        runpy.run_path(argv[0], run_name="__main__")
        out = capsys.readouterr().out
    # Each script prints its figures last, under a header naming the machine's cores.
    assert f"{script.removesuffix('.py')}:" in out and "cores" in out, out[-2000:]


def test_overhead_fails_when_the_two_paths_do_different_work(tmp_path, monkeypatch):
    """The ratio means something only for the same work: a plain loop that skips its EMA update must fail the run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import plain_loop

    real_init = plain_loop.PlainStep.__init__

    def without_ema(self, model, phase_times=None):
        real_init(self, model, phase_times)
        model.update_ema = lambda batch_size: None  # this model only: the Lightning path's stays as it is

    monkeypatch.setattr(plain_loop.PlainStep, "__init__", without_ema)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "overhead.py"), "--quick"])
    with pytest.raises(SystemExit, match="weights differ"):
        runpy.run_path(str(BENCHMARKS / "overhead.py"), run_name="__main__")
