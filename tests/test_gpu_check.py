"""The GPU check's CPU dry run: scripts/gpu_check.sh runs its search and its throughput probe end to end and
writes a report that says it measured no GPU, without touching the checkout's results/."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT, snapshot

BATCHINGS = ("length", "random", "unpadded")


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_report(tmp_path):
    report = tmp_path / "gpu_check.md"
    before = snapshot(ROOT / "results")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--output", str(report)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report.is_file(), proc.stdout[-3000:]
    text = report.read_text()
    assert text.startswith("# GPU check")
    assert "CPU dry run" in text and "no GPU figure was measured" in text
    for batching in BATCHINGS:  # each batching's row starts with its name, then a positive real tokens/s
        row = re.search(rf"^\| {batching}\b[^|]* \| ([0-9,.]+) \|", text, re.M)
        assert row, batching
        assert float(row.group(1).replace(",", "")) > 0, row.group(0)
    assert re.search(r"^\| search \| [0-9.]+ \| [0-9]+ \| ok \|", text, re.M)
    assert re.search(r"best F1: validation [0-9.]+, test [0-9.]+", text)
    assert re.search(rf"^the batching the gpu profile should default to \(today: random\): ({'|'.join(BATCHINGS)})\b",
                     text, re.M)
    assert snapshot(ROOT / "results") == before  # --output elsewhere: nothing lands in the checkout


def test_gpu_check_without_a_gpu_stops_at_once():
    """Not a dry run, on a machine whose interpreters see no GPU: one line and exit 2 before any step, rather
    than a report of failed steps."""
    before = snapshot(ROOT / "results")
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no interpreter here whose torch sees a GPU" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    assert snapshot(ROOT / "results") == before
