"""Reading an offline W&B run back with W&B's own inspector of its transaction log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def inspect_run(run_folder: Path, *flags: str) -> list[dict] | dict:
    """The records (or, with ``--summary``, the summary object) of an offline run folder."""
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if result.returncode != 0 and ("No such option" in result.stderr or "No such command" in result.stderr):
        pytest.skip("this wandb has no `wandb leet inspect --json` (0.31+)")
    assert result.returncode == 0, result.stderr
    if "--summary" in flags:
        return json.loads(result.stdout)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def history(run_folder: Path) -> list[dict]:
    """Each logged row: flattened keys ("samples._type", "val/bleu4", …) to values."""
    return [r["history"]["item"] for r in inspect_run(run_folder) if r.get("type") == "history"]
