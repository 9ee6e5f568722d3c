"""End to end through the CLI on the smoke profile: the whole pipeline, its files, and refused inputs."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.conftest import ROOT, STAGES, run_cli, snapshot, write


def test_pipeline_writes_three_best_models(pipeline_run):
    results, proc = pipeline_run
    for stage in STAGES:
        best = results / stage / "best"
        for name in ("model.safetensors", "config.json", "tokenizer.json", "result.json", "run_config.yaml",
                     "search_space.yaml"):
            assert (best / name).is_file(), f"{best / name} missing"
        assert (results / stage / "trials.csv").read_text().count("\n") == 3  # header + 2 trials
        assert (results / stage / "search").is_dir()
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "best student: validation F1" in proc.stdout


def test_exported_yaml_has_three_entries_with_keys(pipeline_run):
    results, _ = pipeline_run
    exported = yaml.safe_load((results / "best_configs.yaml").read_text())
    assert list(exported) == list(STAGES)
    for stage, entry in exported.items():
        assert {"hyperparameters", "val_f1", "test_f1", "parameters", "checkpoint", "seed", "data",
                "search_space_sha256", "versions"} <= set(entry)
        for key in ("val_f1", "test_f1"):
            assert 0.0 <= entry[key] <= 1.0 and math.isfinite(entry[key])
        assert {"learning_rate", "weight_decay", "warmup_ratio"} <= set(entry["hyperparameters"])
    assert {"temperature", "alpha"} <= set(exported["student"]["hyperparameters"])
    assert "factor_dim" in exported["factorized"]["hyperparameters"]
    sizes = [exported[s]["parameters"] for s in STAGES]
    assert sizes[2] < sizes[1] < sizes[0]
    rows = [line for line in (results / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == list(STAGES)


def test_export_rewrites_yaml_from_results(pipeline_run):
    results, _ = pipeline_run
    before = (results / "best_configs.yaml").read_text()
    (results / "best_configs.yaml").unlink()
    proc = run_cli("--results-dir", results, module="tuner.export")
    assert proc.returncode == 0, proc.stderr
    assert (results / "best_configs.yaml").read_text() == before


def test_best_models_load_and_match_their_kind(pipeline_run):
    from tuner.models import load_model

    results, _ = pipeline_run
    teacher = load_model(results / "teacher" / "best")
    factorized = load_model(results / "factorized" / "best")
    student = load_model(results / "student" / "best")
    assert getattr(teacher.config, "factor_dim", None) is None
    assert factorized.config.factor_dim in (16, 24)
    assert student.config.num_hidden_layers <= teacher.config.num_hidden_layers


def test_existing_search_is_not_overwritten(pipeline_run, conll_dir):
    results, _ = pipeline_run
    before = snapshot(results)
    proc = run_cli("--stage", "teacher", "--trials", 2, "--profile", "smoke", "--data", conll_dir,
                   "--results-dir", results)
    assert proc.returncode == 2
    assert "pass --resume to continue it or --overwrite" in proc.stderr
    assert snapshot(results) == before


@pytest.mark.parametrize("case", ["trials0", "unknown_stage", "no_teacher", "missing_data", "bad_line", "bad_space",
                                  "python_tag", "bad_tag", "not_utf8", "unknown_model", "corrupt_teacher"])
def test_bad_input_one_line_error_results_unchanged(case, tmp_path, conll_dir):
    results = tmp_path / "results"
    write(results / "README.md", "kept\n")
    data = conll_dir
    extra = []
    stage = "teacher"
    if case == "trials0":
        extra = ["--trials", "0"]
    elif case == "unknown_stage":
        stage = "distil"
    elif case == "no_teacher":
        stage = "student"
    elif case == "missing_data":
        data = tmp_path / "nowhere"
    elif case == "bad_line":
        data = tmp_path / "d"
        write(data / "train.txt", "EU B-ORG\n\nrejects\n")
    elif case == "bad_tag":
        data = tmp_path / "d"
        write(data / "train.txt", "EU B-ORG\n\nParis LOC\n")
    elif case == "not_utf8":
        data = tmp_path / "d"
        write(data / "train.txt", "M\xfcller B-PER\n", encoding="latin-1")
    elif case in ("bad_space", "python_tag"):
        spaces = tmp_path / "spaces"
        for name in STAGES:
            write(spaces / f"{name}.yaml", (ROOT / "search_spaces" / "smoke" / f"{name}.yaml").read_text())
        text = "params: {learning_rate: {type: loguniform, low: 0.1, high: 0.01}}\n" if case == "bad_space" else \
            "!!python/object/apply:os.system ['touch pwned']\n"
        write(spaces / "teacher.yaml", text)
        extra = ["--space-dir", spaces]
    elif case == "unknown_model":
        extra = ["--model", "no-such-org/no-such-model"]
    elif case == "corrupt_teacher":
        stage = "factorized"
        write(tmp_path / "teacher" / "config.json", "{}")
        write(tmp_path / "teacher" / "model.safetensors", "not safetensors")
        extra = ["--teacher", tmp_path / "teacher"]
    before = snapshot(results)
    proc = run_cli("--stage", stage, "--profile", "smoke", "--data", data, "--results-dir", results, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(results) == before
    assert not (ROOT / "pwned").exists()


def test_quiet_prints_only_the_summary(tmp_path, conll_dir):
    proc = run_cli("--stage", "teacher", "--trials", 1, "--profile", "smoke", "--data", conll_dir,
                   "--results-dir", tmp_path / "results", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("best teacher: validation F1") and lines[-1].startswith("best configs:"), lines
    assert len(lines) == 2, lines
