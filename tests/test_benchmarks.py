"""Every benchmark script runs end to end in its ``--quick`` mode (a smoke test, not a timing test),
inside this process (``runpy``), which saves each the seconds of importing torch."""

from __future__ import annotations

import os
import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import finish_wandb

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HELPERS = {"timing.py", "plain_loop.py", "smoke.py"}  # imported by the scripts, not run
# Extra arguments that keep the smoke run short where --quick alone still trains for a while.
EXTRA = {
    "quality_shapes.py": [
        *("--minutes", "0.05", "--eval-images", "120", "--bleu-images", "32", "--pair-images", "32"),
        *(
            "--held-out",
            "purple triangle",
            "--variant",
            "plain=",
            "--variant",
            "binding=--model.objective.binding_negative_share=1",
        ),
    ]
}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def test_every_benchmark_is_smoke_tested_and_documented():
    # The smoke test below runs every script but the helpers: a benchmark listed as a helper by
    # mistake would escape it. A helper is imported by a script and runs nothing itself.
    sources = {p.name: p.read_text() for p in BENCHMARKS.glob("*.py")}
    for helper in HELPERS:
        module = helper.removesuffix(".py")
        assert "__main__" not in sources[helper], f"{helper} runs as a script: smoke-test it"
        assert any(re.search(rf"^(import|from) {module}\b", text, re.MULTILINE) for text in sources.values()), helper
    readme = (BENCHMARKS / "README.md").read_text()
    for script in SCRIPTS:
        assert "--quick" in sources[script], f"{script} has no --quick smoke mode"
        assert f"benchmarks/{script}" in readme, f"benchmarks/README.md does not say how to run {script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_mode_runs(script, tmp_path, monkeypatch, capsys):
    argv = [str(BENCHMARKS / script), "--quick", *EXTRA.get(script, [])]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers by module name
    monkeypatch.setattr(sys, "argv", argv)
    with mock.patch.dict(os.environ):  # scripts that train set WANDB_MODE
        try:
            runpy.run_path(argv[0], run_name="__main__")
        finally:
            finish_wandb()  # as the script's own process would at its exit
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
