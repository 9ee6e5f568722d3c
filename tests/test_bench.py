"""The benchmark suite: its entry, the smoke modes (every side-by-side measurement end to end, the report's tables,
the figures beside it and nothing under results/), and the step timer's contract with scripts/gpu_check.sh."""

from __future__ import annotations

import pytest

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench import headlines
from tests.conftest import ROOT, copied, run_main, snapshot


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
    shutil.rmtree(work, ignore_errors=True)
    text = report.read_text()
    recorded = json.loads((tmp_path / "benchmarks.json").read_text())["headlines"]  # beside the report
    assert {e["peer"] for e in recorded} >= {"default", "tuned"}
    rows = headlines.readme_rows(recorded)  # a README row per peer (its three ratios), and tuner's bf16 step
    assert len(rows) == 3 and [r[2] for r in rows].count("-") == 1, rows
    assert all(e["command"] == f"python bench/run_benchmarks.py --quick --data {conll_dir} --output {report} --keep"
               and e["commit"] and e["machine"] for e in recorded)
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
    # --quick compiles with dynamo's eager backend (no code generation); the record says which backend ran
    assert json.loads(work_files["steps-compile.json"])["compile_backend"] == "eager"
    for lever in ("bf16 autocast on the CPU", "torch.compile (eager, dynamic shapes)", "two processes of 1 thread",
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


@pytest.mark.slow
def test_student_benchmark_on_a_kept_work_folder(minilm_run, tmp_path, conll_dir):
    """bench/student.py reads a kept work folder's repeats: here one whose teacher and student are the MiniLM
    pipeline's, laid out as `python -m bench peers --keep` keeps them."""
    work = copied(minilm_run[0], tmp_path / "work" / "repeat-1" / "tuner", "teacher/best", "student/best").parent.parent
    student_search_table(work, conll_dir, tmp_path / "student" / "student.md")
    student_seeds_table(work, conll_dir, tmp_path / "seeds" / "student-seeds.md")


def student_search_table(work: Path, conll_dir, report: Path) -> None:
    """bench/student.py on the kept teacher: both sides again, one row per seed and online
    batching, tuner's student on length-grouped batches in a folder of its own. Its figures go beside the report."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "bench", "student", "--quick", "--work", work, "--data", conll_dir,
                           "--output", report, "--batches", "length", "--peer", "tuned", "--batching", "random",
                           "length"], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    for batching in ("random", "length"):  # a row per online batching, the ratio split into its two factors
        row = re.search(rf"^\| 0 \| {batching} \| 0\.[0-9]{{4}} \| 0\.[0-9]{{4}} \| [+-][0-9.]+ \| [0-9.]+ \| "
                        r"[0-9.]+ \| [0-9.]+x \| ([0-9.]+)% \| ([0-9.]+)x \| ([0-9.]+)x \|$", text, re.MULTILINE)
        assert row, text
        share, teacher_factor = float(row.group(1)) / 100, float(row.group(2))
        assert 0 < share < 1 and abs(teacher_factor - 1 / (1 - share)) < 0.02, row.group(0)
        assert f"seed 0, online ({batching}):" in text
    assert len(re.findall(r"^\| median \|", text, re.MULTILINE)) == 2
    assert "seed 0, tuner:" in text and "the online runs: the tuned peer" in text
    assert "- tuner's student batches: length" in text
    assert (work / "repeat-1" / "student-1-epochs-length" / "tuner" / "student" / "best").is_dir()
    record = json.loads((work / "repeat-1" / "student-1-epochs-length" / "hf_peer-distill-tuned-length.json")
                        .read_text())
    assert (record["peer"], record["batching"]) == ("tuned", "length") and record["teacher_forward_seconds"] > 0
    figures = json.loads(report.with_name("benchmarks.json").read_text())["headlines"]
    assert sorted((e["peer"], e["measure"].rsplit(", ", 1)[1]) for e in figures) == [
        ("tuned", "length batches"), ("tuned", "random batches")]


def student_seeds_table(work: Path, conll_dir, report: Path) -> None:
    """bench/student.py --seeds on the kept teacher and student config: one paired row per student
    seed (the repeat's own, then +10), each side's F1 from its own process, and the mean difference's interval."""
    def run(*extra):
        proc = subprocess.run([sys.executable, "bench/student.py", "--quick", "--seeds", "2", *extra, "--work",
                               work, "--data", conll_dir, "--output", report], capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return report.read_text()

    text = run()
    for student_seed in (0, 10):
        assert re.search(rf"^\| 0 \| {student_seed} \| 0\.[0-9]{{4}} \| 0\.[0-9]{{4}} \| [+-][0-9.]+ \| [0-9.]+ "
                         r"\| [0-9.]+ \|$", text, re.MULTILINE), text
        assert (work / "repeat-1" / "student-seeds-64-sentences-1-epochs" /
                f"online-default-random-{student_seed}.json").is_file()
    assert re.search(r"- pairs: 2; tuner - online: mean \*\*[+-][0-9.]+\*\* points, 95% interval [+-][0-9.]+ to "
                     r"[+-][0-9.]+;", text), text
    # --reuse reads the measured pairs instead of training them again (no new logs), and --seed-offset 1 starts
    # at the repeat's seed + 10: here only the second pair, read again as it was measured
    logs = sorted((work / "repeat-1" / "student-seeds-64-sentences-1-epochs" / "logs").iterdir())
    stamps = [log.stat().st_mtime_ns for log in logs]
    rows = [line for line in text.splitlines() if line.startswith("| 0 |")]
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


@pytest.mark.parametrize("flags, message", [(["--seeds", "2", "--seed-offset", "-1"], "must be >= 0, got -1"),
                                            (["--seed-offset", "1"], "--seed-offset and --reuse go with --seeds"),
                                            (["--seeds", "2", "--batching", "random", "length"], "one --batching")])
def test_student_refuses_flags_of_the_other_measurement_in_one_line(flags, message, tmp_path, capsys):
    from bench import student

    status, _, err = run_main(student.main, "--work", tmp_path, *flags, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and message in err, err


@pytest.mark.slow
def test_quick_step_profile_splits_the_step_and_writes_nothing_under_results(conll_dir):
    """bench/step_profile.py's smoke mode, with no --output: its report goes to a temporary folder, never under the
    checkout's results/; the step's phases and operator kinds add up, and its matmul figures are measured against
    the 2048^3 matmul of the step's precision."""
    before = snapshot(ROOT / "results")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "bench", "step_profile", "--quick", "--data", conll_dir],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert snapshot(ROOT / "results") == before
    report = Path(re.search(r"^report: (\S+)$", proc.stdout, re.MULTILINE).group(1))
    assert not report.resolve().is_relative_to(ROOT)
    record = json.loads(report.with_suffix(".json").read_text())
    text = report.read_text()
    shutil.rmtree(report.parent)
    assert sum(record["kinds"].values()) == pytest.approx(1.0)
    assert record["kinds"]["matmul"] > 0 and record["matmul_flops_per_second"] > 0
    # the operators are sorted into their kinds, not all counted as one (the shares add up to 1 by construction)
    assert record["kinds"]["optimizer (fused AdamW, clipping's norms)"] > 0
    assert record["kinds"]["layer norm, GELU, dropout"] > 0 and record["kinds"]["matmul"] < 1
    assert 0 < sum(record["phases"].values()) <= 1.05  # nested in the profiled wall time
    assert record["phases"]["forward"] > 0 and record["phases"]["optimizer"] > 0
    assert re.search(r"\| step FLOP/s .* \| [0-9.]+ G \([0-9.]+% of the 2048\^3 matmul's [0-9]+ G\) \|", text)
    assert re.search(r"\| a lone matmul of the shape the step's matmuls spend most time in \([0-9]+ x [0-9]+ @ "
                     r"[0-9]+ x [0-9]+\) \|", text)


def test_step_profile_bad_data_is_one_line_error(tmp_path, capsys):
    from bench import step_profile

    status, _, err = run_main(step_profile.main, "--quick", "--data", tmp_path, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and str(tmp_path) in err


@pytest.mark.parametrize("flags", [["--output", ROOT / "results" / "x.md"], ["--record", ROOT / "results" / "b.json"]])
def test_a_quick_run_refuses_to_write_under_results(flags, conll_dir, capsys):
    """Before any work: a --quick run's report or figures never go under the checkout's results/."""
    from bench import run_benchmarks

    before = snapshot(ROOT / "results")
    status, _, err = run_main(run_benchmarks.main, "--quick", "--data", conll_dir, "--output", "/tmp/x.md", *flags,
                              capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and "--quick writes nothing under" in err
    assert snapshot(ROOT / "results") == before


def test_bench_lists_its_benchmarks_and_refuses_an_unknown_one(capsys):
    """python -m bench: a line per benchmark, each a module whose main(argv) runs it; an unknown name is one line."""
    import importlib

    from bench.__main__ import BENCHMARKS, main

    status, out, _ = run_main(main, capsys=capsys)
    assert status == 0 and all(re.search(rf"^  {name} +\S", out, re.MULTILINE) for name in BENCHMARKS)
    assert all(callable(importlib.import_module(f"bench.{module}").main) for module, _ in BENCHMARKS.values())
    assert run_main(main, "--help", capsys=capsys)[1] == out
    status, out, err = run_main(main, "nope", capsys=capsys)
    assert status == 2 and not out and err.strip().splitlines() == [err.strip()] and "unknown benchmark 'nope'" in err


def test_gpu_probe_keeps_the_keys_gpu_check_reads(tmp_path, conll_dir, capsys):
    """bench/gpu_probe.py's CPU dry run (scripts/gpu_check.sh's flags): one row per batching, timed by the step
    timer, with the keys scripts/gpu_check_steps.py reads."""
    from bench import gpu_probe

    out = tmp_path / "probe.json"
    status, printed, _ = run_main(gpu_probe.main, "--device", "cpu", "--tiny", "--threads", "1", "--batch-size", "4",
                                  "--steps", "2", "--warmup", "1", "--max-length", "64", "--data", conll_dir,
                                  "--tokenizer", "minilm", "--out", out, capsys=capsys)
    assert status == 0 and printed.startswith("gpu_probe on CPU")
    probe = json.loads(out.read_text())
    for key in ("model", "non_embedding_parameters", "parameters", "precision", "batch_size", "max_length",
                "sentences", "matmul_size", "matmul_bf16_flops_per_second", "peak_flops_per_second", "best_batching",
                "cpu_count"):
        assert key in probe, key
    assert [r["batching"] for r in probe["batchings"]] == ["length", "random", "unpadded"]
    for row in probe["batchings"]:
        assert row["steps"] == 2 and row["warmup_steps"] == 1 and row["finite"] and row["real_tokens_per_second"] > 0
        assert row["mfu"] is None and 0 < row["mfu_vs_matmul"] and 0 <= row["padding_share"] < 1
        assert row["real_tokens"] <= row["attention_tokens"] <= row["padded_tokens"]
    unpadded = probe["batchings"][2]  # random batches: the same sentences as the padded random row
    assert unpadded["real_tokens"] == probe["batchings"][1]["real_tokens"]


def test_one_training_step_in_bench():
    """The step is timed in one place (bench/step_timer.py, from tuner.training's functions): no other bench
    script runs an optimizer step or clips gradients itself."""
    steps = {path.name for path in (ROOT / "bench").glob("*.py")
             if re.search(r"optimizer\.step\(|clip_grad_norm_|\.backward\(", path.read_text())}
    assert steps == {"step_timer.py"}


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


PACKING_RECORD = {"flags": ["--stage", "teacher", "--trials", "4"], "cores": 2, "sides": {
    "chosen": {"wall_seconds": 192.0, "stage": "teacher", "packing": {"trials_at_once": 2, "threads": 1},
               "val_f1": 0.82, "test_f1": 0.81, "hypervolume": None},
    "one at a time": {"wall_seconds": 300.0, "stage": "teacher", "packing": {"trials_at_once": 1, "threads": 2},
                      "val_f1": 0.83, "test_f1": 0.82, "hypervolume": None}}}


def test_packing_benchmark_reports_both_sides_and_holds_only_a_packed_search_to_its_goal():
    from types import SimpleNamespace

    from bench import packing

    args = SimpleNamespace(command="python bench/packing.py -- --stage teacher --trials 4", started=None)
    text = packing.report(PACKING_RECORD, args.command, "now", 8.2)
    assert "| chosen | 2 | 1 | 3.2 | 0.8200 | 0.8100 | - |" in text and "`--cpus-per-trial 2`" in text
    assert "0.640x" in text
    (figure,) = packing.packing_figures(PACKING_RECORD, args)
    assert figure["value"] == 0.64 and figure["met"] is True and "(2 at once)" in figure["measure"]
    alone = json.loads(json.dumps(PACKING_RECORD))
    alone["sides"]["chosen"]["packing"] = {"trials_at_once": 1, "threads": 2}
    (figure,) = packing.packing_figures(alone, args)
    assert figure["goal"] is None and figure["met"] is None  # the same setting twice: the ratio is noise


@pytest.mark.parametrize("flags, message", [
    ([], "give the search after --"), (["--", "--stage", "all"], "--stage all"),
    (["--", "--stage=all"], "--stage all"), (["--", "--stage", "teacher", "--cpus-per-trial", "1"], "--cpus-per-trial"),
    (["--", "--stage", "teacher", "--results-dir=x"], "--results-dir")])
def test_packing_benchmark_refuses_what_it_sets_itself(flags, message, capsys):
    from bench import packing

    status, _, err = run_main(packing.main, "--quick", *flags, capsys=capsys)
    assert status == 2 and err.strip().splitlines() == [err.strip()] and message in err


def test_suite_benchmark_reads_pytest_and_the_ray_count():
    from bench import suite

    out = ("....\nRay started 26 time(s) in this run (new session folders in /tmp/ray)\n"
           "=== slowest 2 durations ===\n402.67s call     tests/test_bench.py::test_quick\n"
           "121.17s setup    tests/test_bench.py::test_student@minilm_run\n278 passed in 1370.58s (0:22:50)\n")
    found = suite.summary(out)
    assert found == {"passed": 278, "pytest_seconds": 1370.58, "ray_starts": 26, "slowest": [
        {"seconds": 402.67, "phase": "call", "test": "tests/test_bench.py::test_quick"},
        {"seconds": 121.17, "phase": "setup", "test": "tests/test_bench.py::test_student@minilm_run"}]}
    page = suite.report(dict(found, wall_seconds=1400.0, tier="ci"), "python bench/suite.py --tier ci", "now", 23.3)
    assert "| 402.7 | call | `tests/test_bench.py::test_quick` |" in page
    fast = "Ray started 0 time(s) in this run\n270 passed, 31 deselected in 53.51s\n"
    assert suite.summary(fast)["passed"] == 270
    with pytest.raises(suite.BenchError):
        suite.summary("2 failed in 3.1s\n")
    # a failed CI names its failing tests and keeps the whole output outside results/
    failed = "..F\nFAILED tests/test_a.py::test_b - AssertionError\n=== 1 failed, 322 passed in 700.1s ===\nWARNING: pip\n"
    said = suite.failures(failed)
    assert said.startswith("FAILED tests/test_a.py::test_b - AssertionError; 1 failed, 322 passed in 700.1s"), said
    kept = Path(re.search(r"whole output: (\S+)\)", said).group(1))
    assert kept.read_text() == failed and ROOT not in kept.parents
    kept.unlink()


def write_front_record(folder: Path, trials: dict, epochs: int = 4, slots: int = 1) -> Path:
    """A front search's stage folder as ``bench rungs`` reads it: each trial's progress.csv (name: parameters, F1
    per epoch, one second an epoch, started in name order), search_settings.yaml and the teacher's result.json."""
    teacher = folder / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text(json.dumps({"parameters": 100}))
    (folder / "student").mkdir()
    (folder / "student" / "search_settings.yaml").write_text(
        f"teacher: {teacher}\nprofile: {{student_epochs: {epochs}}}\npacking: {{trials_at_once: {slots}}}\n")
    for start, (name, (parameters, f1s)) in enumerate(trials.items()):
        trial = folder / "student" / "search" / f"_trial_{name}"
        trial.mkdir(parents=True)
        rows = ["epoch,val_f1,parameters,time_this_iter_s,timestamp"]
        rows += [f"{e},{f1},{parameters},1.0,{start * 100 + e}" for e, f1 in enumerate(f1s, 1)]
        (trial / "progress.csv").write_text("\n".join(rows) + "\n")
    return folder / "student" / "search"


def test_rung_replay_stops_where_its_rungs_say_and_counts_the_time(tmp_path, monkeypatch):
    """Four trials one at a time, up to 4 epochs, through tuner's ParetoASHA under rungs 1, 2 and under rung 2
    alone: "worse" (larger and behind "big") is dominated at every rung, and "mid", on the front between its ends,
    is outside the top third's places, so each stops at the first rung; "big" and "small", the front's ends, train
    all 4 epochs ("small" one past its record, its F1 held at the last)."""
    import bench.rungs
    from types import SimpleNamespace

    monkeypatch.setattr(bench.rungs, "CANDIDATES", (("first rung 1", {"front_grace_share": 0.25}),
                                                    ("first rung 2", {"front_grace_share": 0.5})))
    search = write_front_record(tmp_path, {"big": (80, [0.5, 0.6, 0.7, 0.8]), "small": (10, [0.2, 0.3, 0.3]),
                                           "worse": (90, [0.3, 0.35, 0.4]), "mid": (40, [0.45, 0.5])})
    table = tmp_path / "curves.json"
    record = bench.rungs.measure(SimpleNamespace(search=search, table=None, save=table))
    assert bench.rungs.measure(SimpleNamespace(search=None, table=table))["candidates"] == record["candidates"]
    assert (record["trials"], record["slots"], record["teacher_parameters"]) == (4, 1, 100)
    early, late = record["candidates"]
    assert (early["rungs"], late["rungs"]) == ([1, 2], [2])
    assert (early["epochs"], early["wall_seconds"], early["beyond_record"]) == (4 + 4 + 1 + 1, 10.0, 1)
    assert (late["epochs"], late["wall_seconds"], late["beyond_record"]) == (4 + 4 + 2 + 2, 12.0, 1)
    # (share, F1): small (0.1, 0.3), mid (0.4, its best F1 by the rung), big (0.8, 0.8); worse adds nothing
    assert early["hypervolume"] == pytest.approx((0.4 - 0.1) * 0.3 + (0.8 - 0.4) * 0.45 + (1 - 0.8) * 0.8)
    assert late["hypervolume"] == pytest.approx((0.4 - 0.1) * 0.3 + (0.8 - 0.4) * 0.5 + (1 - 0.8) * 0.8)
    text = bench.rungs.report(record, "now", 0.1, "python bench/rungs.py")
    assert "| first rung 2 | 0.2 | 1.20x | 0.4500 | +0.0200 | 12 | 1 |" in text


def test_rung_replay_refuses_a_damaged_record_in_one_line(tmp_path, capsys):
    from bench.rungs import main

    search = write_front_record(tmp_path, {"big": (80, [0.5, 0.6])})
    progress = next(search.glob("*/progress.csv"))
    progress.write_text(progress.read_text().replace("\n2,", "\n3,"))
    assert main(["--search", str(search), "--output", str(tmp_path / "out" / "rungs.md")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{progress}: epochs [1, 3]" in err
    assert not (tmp_path / "out").exists()


def test_rung_replay_records_the_default_against_the_recorded_rungs(tmp_path):
    """Its one figure is tuner's default front rungs' trial time over the first candidate's (the recorded default)."""
    from bench.rungs import figures_of, measure
    from types import SimpleNamespace

    curves = {f"t{i}": (10 * (i + 1), [0.1 * i + 0.01 * e for e in range(10)]) for i in range(6)}
    args = SimpleNamespace(search=write_front_record(tmp_path, curves, epochs=10, slots=2), table=None,
                           command="python -m bench", started=None)
    record = measure(args)
    (entry,) = figures_of(record, args)
    default = next(row for row in record["candidates"] if row["rungs"] == [1, 2, 4, 8] and
                   "front_reduction_factor" not in row["fields"])
    assert entry["value"] == round(default["wall_seconds"] / record["candidates"][0]["wall_seconds"], 3)
    assert "(1, 2, 4, 8 of 10) against rungs 3, 6" in entry["measure"]
