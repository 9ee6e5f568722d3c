"""The benchmark's smoke mode: every side-by-side measurement runs end to end and the report has its tables."""

from __future__ import annotations

import pytest

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_main, snapshot


def run_bench(*args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "bench/run_benchmarks.py", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_quick_benchmark_writes_every_comparison(tmp_path, conll_dir):
    report = tmp_path / "bench.md"
    before = snapshot(ROOT / "results")
    proc = run_bench("--quick", "--data", conll_dir, "--output", report, "--keep")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = Path(re.search(r"work folder (\S+)", proc.stdout).group(1))
    try:
        student_epochs_table(work, conll_dir, tmp_path / "student-epochs.md")
        student_seeds_table(work, conll_dir, tmp_path / "student-seeds.md")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report.read_text()
    for title in ("1. Teacher search", "2. Student search vs online distillation", "3. Training throughput",
                  "4. tuner's overhead", "5. Against the machine", "6. Levers on the training step"):
        assert f"## {title}" in text
    # each side-by-side row ends in a measured ratio; each F1 row in a signed difference
    for row in ("search wall time, s (Tune run only)", "wall time of a full-length trial, s", "real tokens / s"):
        assert re.search(rf"\| {re.escape(row)} (\| [0-9.]+ )+\| [0-9.]+x \|", text), row
    # the trial's time outside training and evaluation, split by what each trial reports
    for part in ("model and optimizer built", "checkpoints written", "tune.report", "the rest (Ray"):
        assert re.search(rf"\| - of which {re.escape(part)}[^|]* \|  \| -?[0-9.]+% \|", text), part
    assert re.search(r"\| tuner fit training step, fp32 \| [0-9.]+ \| [0-9.]+% \|", text)
    assert re.search(r"\| best validation F1 \| [0-9.]+ \| [0-9.]+ \| [+-][0-9.]+ points \|", text)
    for lever in ("bf16 autocast on the CPU", "torch.compile (inductor, dynamic shapes)", "two processes of 1 thread"):
        assert re.search(rf"\| [^|]*{re.escape(lever)}[^|]* \| [0-9]+[^|]* \| [0-9.]+x[^|]* \|", text), lever
    assert "python bench/run_benchmarks.py --quick" in text
    assert snapshot(ROOT / "results") == before  # --output elsewhere: the committed report is untouched


def student_epochs_table(work: Path, conll_dir, report: Path) -> None:
    """bench/student_epochs.py on the quick benchmark's kept teacher: both sides again, one row per seed; then with
    tuner's student on length-grouped batches, in a folder of its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for batches in ([], ["--batches", "length"]):
        proc = subprocess.run([sys.executable, "bench/student_epochs.py", "--quick", "--work", work, "--data",
                               conll_dir, "--output", report, *batches], capture_output=True, text=True, timeout=600,
                              env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        text = report.read_text()
        assert re.search(r"^\| 0 \| 0\.[0-9]{4} \| 0\.[0-9]{4} \| [+-][0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|$",
                         text, re.MULTILINE), text
        assert "seed 0, tuner:" in text and "seed 0, online:" in text
        assert f"- tuner's student batches: {batches[1] if batches else 'its default (random, unpadded)'}" in text
    assert (work / "repeat-1" / "student-1-epochs-length" / "tuner" / "student" / "best").is_dir()


def student_seeds_table(work: Path, conll_dir, report: Path) -> None:
    """bench/student_seeds.py on the quick benchmark's kept teacher and student config: one paired row per student
    seed (the repeat's own, then +10), each side's F1 from its own process, and the mean difference's interval."""
    def run(*extra):
        proc = subprocess.run([sys.executable, "bench/student_seeds.py", "--quick", "--seeds", "2", *extra, "--work",
                               work, "--data", conll_dir, "--output", report], capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return report.read_text()

    text = run()
    for student_seed in (0, 10):
        assert re.search(rf"^\| 0 \| {student_seed} \| 0\.[0-9]{{4}} \| 0\.[0-9]{{4}} \| [+-][0-9.]+ \| [0-9.]+ "
                         r"\| [0-9.]+ \|$", text, re.MULTILINE), text
        assert (work / "repeat-1" / "student-seeds-64-sentences-1-epochs" / f"online-{student_seed}.json").is_file()
    assert re.search(r"- pairs: 2; tuner - online: mean \*\*[+-][0-9.]+\*\* points, 95% interval [+-][0-9.]+ to "
                     r"[+-][0-9.]+;", text), text
    # --reuse reads the measured pairs instead of training them again: same rows, no new logs
    logs = sorted((work / "repeat-1" / "student-seeds-64-sentences-1-epochs" / "logs").iterdir())
    stamps = [log.stat().st_mtime_ns for log in logs]
    again = run("--reuse")
    assert [log.stat().st_mtime_ns for log in logs] == stamps
    rows = [line for line in again.splitlines() if line.startswith("| 0 |")]
    assert rows == [line for line in text.splitlines() if line.startswith("| 0 |")]
    # --seed-offset 1 starts at the repeat's seed + 10: here only the second pair, read again
    later = run("--reuse", "--seeds", "1", "--seed-offset", "1")
    assert [line for line in later.splitlines() if line.startswith("| 0 |")] == rows[1:]
    assert "1 student seed(s) per repeat (from the repeat's seed + 10)" in later
    assert [log.stat().st_mtime_ns for log in logs] == stamps


def test_bad_flag_is_one_line_error(capsys):
    from bench import run_benchmarks

    status, _, err = run_main(run_benchmarks.main, "--repeats", "0", capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "--repeats" in err


def test_negative_seed_offset_is_one_line_error(tmp_path, capsys):
    from bench import student_seeds

    status, _, err = run_main(student_seeds.main, "--work", tmp_path, "--seed-offset", "-1", capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()]
    assert "--seed-offset" in err and "must be >= 0, got -1" in err


@pytest.mark.slow
def test_quick_alignment_ablation_writes_its_table(tmp_path, conll_dir):
    report = tmp_path / "alignment.md"
    before = snapshot(ROOT / "results")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "bench/alignment.py", "--quick", "--seeds", "0", "1", "--data", conll_dir,
                           "--output", report], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in report.read_text().splitlines() if re.match(r"\| (first|every) sub-token", line)]
    assert len(rows) == 4  # labels x batch order
    for row in rows:
        assert re.search(r"\| 0\.[0-9]{4} \| 0\.[0-9]{4} \| 0\.[0-9]{4} \| [+-][0-9.]+ points \| [0-9]+ \|$", row), row
    assert rows[0].startswith("| first sub-token only (HF recipe) | length-grouped (tuner) |")
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    means = [float(row[4]) for row in cells]  # per row: labels, batches, seed 0, seed 1, mean, vs default, s
    for row, mean in zip(cells, means):  # each variant against the first row's (tuner's default) mean
        assert float(row[2]) + float(row[3]) == pytest.approx(2 * mean, abs=2e-4)
        assert float(row[5].split()[0]) == pytest.approx((mean - means[0]) * 100, abs=0.011)
    assert snapshot(ROOT / "results") == before


def test_alignment_ablation_bad_data_is_one_line_error(tmp_path, capsys):
    from bench import alignment

    status, _, err = run_main(alignment.main, "--quick", "--data", tmp_path, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and str(tmp_path) in err
