"""The benchmark's smoke mode: every side-by-side measurement runs end to end and the report has its tables."""

from __future__ import annotations

import pytest

import json
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
    work_files = {path.name: path.read_text() for path in work.glob("repeat-1/*.json")}
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
    for row in ("search wall time, s (Tune run only)", "wall time of a full-length trial, s"):
        assert re.search(rf"\| {re.escape(row)} (\| [0-9.]+ )+\| [0-9.]+x \|", text), row
    assert re.search(r"^\| real tokens / s( \| [0-9]+){5} \|$", text, re.MULTILINE)
    for side in ("HF default (random batches)", "HF tuned, group_by_length", "HF tuned at its chosen batching"):
        assert re.search(rf"^\| {re.escape(side)}[^|]* \| [0-9.]+x \| [+-][0-9.]+ points \| [0-9.]+x \| "
                         r"[+-][0-9.]+ points \|$", text, re.MULTILINE), side
    # the trial's time outside training and evaluation, split by what each trial reports
    for part in ("model and optimizer built", "checkpoints written", "tune.report", "the rest (Ray"):
        assert re.search(rf"\| - of which {re.escape(part)}[^|]* \|  \| -?[0-9.]+% \|", text), part
    assert re.search(r"\| tuner fit, fp32 training step \(float32\) \| [0-9.]+ \| [0-9.]+% \|", text)
    # tuner, the default peer, the tuned peer, then each peer against tuner
    assert re.search(r"\| best validation F1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [+-][0-9.]+ points \| "
                     r"[+-][0-9.]+ points \|", text)
    tuned_peer_measured(work_files, text)
    for lever in ("bf16 autocast on the CPU", "torch.compile (inductor, dynamic shapes)", "two processes of 1 thread",
                  "dynamic shapes) under bf16 autocast"):
        assert re.search(rf"\| [^|]*{re.escape(lever)}[^|]* \| [0-9]+[^|]* \| [0-9.]+x[^|]* \|", text), lever
    assert "python bench/run_benchmarks.py --quick" in text
    assert snapshot(ROOT / "results") == before  # --output elsewhere: the committed report is untouched


def tuned_peer_measured(work_files: dict, text: str) -> None:
    """The tuned peer ran as set up: bf16 where tuner's auto precision uses it, the fused optimizer, its own TPE +
    ASHA search, both batchings timed with their F1, and the lead table holds both peers' ratios."""
    from tuner.training import uses_bf16

    for name in ("hf_peer-throughput-tuned-random.json", "hf_peer-throughput-tuned-length.json",
                 "hf_peer-search-tuned.json", "hf_peer-distill-tuned.json"):
        record = json.loads(work_files[name])
        assert record["peer"] == "tuned" and record["bf16"] == uses_bf16("cpu"), name
        if "optim" in record:
            assert record["optim"] == "adamw_torch_fused", name
        if name.startswith("hf_peer-throughput"):
            assert 0.0 <= record["val_f1"] <= 1.0 and record["tokens_per_second"] > 0
    default_search = json.loads(work_files["hf_peer-search-default.json"])
    assert default_search["peer"] == "default" and default_search["bf16"] is False
    assert json.loads(work_files["hf_peer-search-tuned.json"])["trials"] == 2  # --quick's trial count, its own TPE
    lead = text.split("## Headline ratios against each peer", 1)[1].split("\n## ", 1)[0]
    assert ("| measure | goal (against the tuned peer) | against the default peer | against the tuned peer "
            "| met? |") in lead
    for label in ("teacher search", "student trial", "training throughput"):
        assert re.search(rf"^\| {label}[^|]* \| >= [^|]+ \| \*\*[0-9.]+x\*\* [^|]*\| \*\*[0-9.]+x\*\* [^|]*\| "
                         r"(yes|no) \|$", lead, re.MULTILINE), label
    assert "nan" not in lead
    assert re.search(r"\| validation F1 after the epoch( \| 0\.[0-9]{4}){5} \|", text)
    assert re.search(r"it ran, per repeat: default: random; tuned: (random|length)\.", text)


def student_epochs_table(work: Path, conll_dir, report: Path) -> None:
    """bench/student_epochs.py on the quick benchmark's kept teacher: both sides again, one row per seed; then with
    tuner's student on length-grouped batches, in a folder of its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for batches, online in (([], ["--peer", "tuned", "--batching", "random", "length"]), (["--batches", "length"], [])):
        proc = subprocess.run([sys.executable, "bench/student_epochs.py", "--quick", "--work", work, "--data",
                               conll_dir, "--output", report, *batches, *online], capture_output=True, text=True,
                              timeout=600, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        text = report.read_text()
        batchings = online[3:] or ["random"]
        for batching in batchings:  # a row per online batching, the ratio split into its two factors
            row = re.search(rf"^\| 0 \| {batching} \| 0\.[0-9]{{4}} \| 0\.[0-9]{{4}} \| [+-][0-9.]+ \| [0-9.]+ \| "
                            r"[0-9.]+ \| [0-9.]+x \| ([0-9.]+)% \| ([0-9.]+)x \| ([0-9.]+)x \|$", text, re.MULTILINE)
            assert row, text
            share, teacher_factor = float(row.group(1)) / 100, float(row.group(2))
            assert 0 < share < 1 and abs(teacher_factor - 1 / (1 - share)) < 0.02, row.group(0)
            assert f"seed 0, online ({batching}):" in text
        assert len(re.findall(r"^\| median \|", text, re.MULTILINE)) == len(batchings)
        assert "seed 0, tuner:" in text
        assert f"the online runs: the {online[1] if online else 'default'} peer" in text
        assert f"- tuner's student batches: {batches[1] if batches else 'its default (random, unpadded)'}" in text
    assert (work / "repeat-1" / "student-1-epochs-length" / "tuner" / "student" / "best").is_dir()
    record = json.loads((work / "repeat-1" / "student-1-epochs" / "hf_peer-distill-tuned-length.json").read_text())
    assert (record["peer"], record["batching"]) == ("tuned", "length") and record["teacher_forward_seconds"] > 0


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


def test_unknown_peer_is_one_line_error(capsys):
    from bench import run_benchmarks

    status, _, err = run_main(run_benchmarks.main, "--peers", "default,expert", capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and "unknown peer 'expert'" in err


def test_default_peer_search_needs_the_configs(tmp_path, capsys):
    from bench import hf_peer

    status, _, err = run_main(hf_peer.main, "search", "--data", tmp_path, "--train-sentences", "8",
                              "--eval-sentences", "8", "--epochs", "1", "--out", tmp_path / "x.json", capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and "--configs" in err
    assert not (tmp_path / "x.json").exists()


def test_tuned_peer_batching_is_the_faster_at_equal_f1():
    from bench.run_benchmarks import better_batching

    fits = {"random": {"val_f1": 0.800, "tokens_per_second": 1000.0},
            "length": {"val_f1": 0.797, "tokens_per_second": 1400.0}}
    assert better_batching(fits) == "length"  # 0.3 points apart: equal F1, the faster wins
    fits["length"]["val_f1"] = 0.790  # a point lower: the higher F1 wins, however fast the other
    assert better_batching(fits) == "random"
    assert better_batching({"random": fits["random"]}) == "random"


def test_headlines_keep_one_entry_per_measure_and_peer(tmp_path):
    from bench import headlines

    path = tmp_path / "benchmarks.json"
    first = [headlines.entry("speed", 2.0, "x", ">= 1.5x", True, peer, "", "cmd", "2026-01-01T00:00Z")
             for peer in ("default", "tuned")]
    headlines.update(first, path)
    merged = headlines.update([headlines.entry("speed", 1.2, "x", ">= 1.5x", False, "tuned", "", "cmd")], path)
    assert [(e["peer"], e["value"]) for e in merged] == [("default", 2.0), ("tuned", 1.2)]
    # replaced where it stands: the file's order (the table's) does not change run to run
    merged = headlines.update([headlines.entry("speed", 2.5, "x", ">= 1.5x", True, "default", "", "cmd"),
                               headlines.entry("size", 0.5, "x", ">= 1x", False, "tuned", "", "cmd")], path)
    assert [(e["measure"], e["peer"], e["value"]) for e in merged] == [
        ("speed", "default", 2.5), ("speed", "tuned", 1.2), ("size", "tuned", 0.5)]


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


def test_quick_step_profile_splits_the_step(tmp_path, conll_dir):
    """bench/step_profile.py's smoke mode: the step's phases and operator kinds add up, and its matmul figures are
    measured against the 2048^3 matmul of the step's precision."""
    report = tmp_path / "profile.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "bench/step_profile.py", "--quick", "--data", conll_dir, "--output",
                           report], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(report.with_suffix(".json").read_text())
    assert sum(record["kinds"].values()) == pytest.approx(1.0)
    assert record["kinds"]["matmul"] > 0 and record["matmul_flops_per_second"] > 0
    # the operators are sorted into their kinds, not all counted as one (the shares add up to 1 by construction)
    assert record["kinds"]["optimizer (fused AdamW, clipping's norms)"] > 0
    assert record["kinds"]["layer norm, GELU, dropout"] > 0 and record["kinds"]["matmul"] < 1
    assert 0 < sum(record["phases"].values()) <= 1.05  # nested in the profiled wall time
    assert record["phases"]["forward"] > 0 and record["phases"]["optimizer"] > 0
    text = report.read_text()
    assert re.search(r"\| step FLOP/s .* \| [0-9.]+ G \([0-9.]+% of the 2048\^3 matmul's [0-9]+ G\) \|", text)
    assert re.search(r"\| a lone matmul of the shape the step's matmuls spend most time in \([0-9]+ x [0-9]+ @ "
                     r"[0-9]+ x [0-9]+\) \|", text)


def test_step_profile_bad_data_is_one_line_error(tmp_path, capsys):
    from bench import step_profile

    status, _, err = run_main(step_profile.main, "--quick", "--data", tmp_path, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and str(tmp_path) in err


@pytest.mark.slow
def test_quick_allocator_compares_both_sides_both_ways(tmp_path, conll_dir):
    """bench/allocator.py's smoke mode: tuner's epoch and the tuned peer's, with glibc's allocator as it is and kept,
    one table; the setting changes no arithmetic, so each side's F1 is the same both ways."""
    report = tmp_path / "allocator.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "bench/allocator.py", "--quick", "--data", conll_dir, "--output", report],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(report.with_suffix(".json").read_text())
    assert set(record) == {"tuner", "peer, random batches", "peer, group_by_length"}
    for side in record.values():
        assert [r["seed"] for r in side["off"]] == [r["seed"] for r in side["on"]] == [0]
        assert all(r["tokens_per_second"] > 0 for r in side["off"] + side["on"])
    for side in record.values():  # seeded both ways: the setting changes no arithmetic
        assert side["off"][0]["val_f1"] == side["on"][0]["val_f1"]
    text = report.read_text()
    assert re.search(r"\| tuner \| [0-9,]+ \| [0-9,]+ \| [0-9.]+x \|", text)
    assert re.search(r"\| against the peer, group_by_length \| [0-9.]+x \| [0-9.]+x \| [0-9.]+x \|", text)


def test_peer_arguments_tuned_and_default(monkeypatch, tmp_path):
    """The tuned peer sets bf16 where tuner's auto precision uses it and the fused AdamW explicitly (not through
    transformers' default, which may change); the default peer sets neither; both take the batching asked for."""
    from argparse import Namespace

    from bench import hf_peer
    from tuner.training import select_device, uses_bf16

    monkeypatch.setattr(hf_peer, "TrainingArguments", lambda **fields: fields)
    tuned = hf_peer.peer_arguments(Namespace(peer="tuned", batching="length"), str(tmp_path))
    assert tuned["optim"] == "adamw_torch_fused" and tuned["bf16"] is uses_bf16(select_device())
    assert tuned["train_sampling_strategy"] == "group_by_length"
    default = hf_peer.peer_arguments(Namespace(peer="default", batching="random"), str(tmp_path))
    assert "optim" not in default and "bf16" not in default and default["train_sampling_strategy"] == "random"


def test_allocator_sides_differ_only_in_the_setting(monkeypatch):
    """What each child process of bench/allocator.py gets: "off" is glibc's defaults (tuner told not to keep freed
    memory), "on" is tuner's own default and glibc's environment variables for the peer; nothing inherited leaks."""
    from bench import allocator
    from tuner.training import KEEP_FREED_MEMORY_ENV

    monkeypatch.setenv("MALLOC_MMAP_MAX_", "7")  # inherited from the caller: never passed on as it is
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "1")
    for side in allocator.SIDES:
        off, on = allocator.environment(side, "off"), allocator.environment(side, "on")
        assert "MALLOC_MMAP_MAX_" not in off and "MALLOC_TRIM_THRESHOLD_" not in off
        assert off[KEEP_FREED_MEMORY_ENV] == "0"
        assert KEEP_FREED_MEMORY_ENV not in on
        glibc = {k: on.get(k) for k in allocator.GLIBC_KEEP}
        assert glibc == (dict.fromkeys(allocator.GLIBC_KEEP) if side == "tuner" else allocator.GLIBC_KEEP), side


def test_allocator_bad_data_is_one_line_error(tmp_path, capsys):
    from bench import allocator

    status, _, err = run_main(allocator.main, "--quick", "--data", tmp_path, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and str(tmp_path) in err


@pytest.mark.slow
def test_curves_records_continues_and_keeps_the_warm_start(pipeline_run, conll_dir, tmp_path):
    """bench/curves.py on the smoke profile: each config trained to its last epoch, the warm start tuner.run would
    use recorded, and a larger --configs continuing the configs already there instead of training them again."""
    import yaml

    results, _ = pipeline_run
    out = tmp_path / "student.json"
    common = ["bench/curves.py", "--stage", "student", "--profile", "smoke", "--data", conll_dir, "--teacher",
              results / "teacher" / "best", "--results-dir", results, "--out", out]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, *map(str, common), "--configs", "2"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(out.read_text())
    assert [c["index"] for c in first["configs"]] == [0, 1]
    assert all(len(c["epochs"]) == first["epochs"] for c in first["configs"])
    names = [p["name"] for p in first["params"]]
    assert "learning_rate" in names and "alpha" in names and "beta" not in names  # F1 alone: beta stays 0
    factorized = yaml.safe_load((results / "best_configs.yaml").read_text())["factorized"]["hyperparameters"]
    assert first["previous_stage_best"]  # the factorized model's best config, on the keys the spaces share
    assert all(first["previous_stage_best"][k] == pytest.approx(factorized[k]) for k in first["previous_stage_best"])
    proc = subprocess.run([sys.executable, *map(str, common), "--configs", "3"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("student config") == 1  # only the third was trained
    grown = json.loads(out.read_text())
    assert grown["configs"][:2] == first["configs"] and grown["configs"][2]["index"] == 2
