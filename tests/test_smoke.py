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


@pytest.mark.parametrize("flag, value, key", [("--trials", 3, "trials"), ("--epochs", 3, "profile.epochs"),
                                             ("--seed", 1, "seed"),
                                             ("--label-subtokens", "all", "profile.label_all_subtokens")])
def test_resume_with_other_flags_is_refused(pipeline_run, conll_dir, flag, value, key):
    results, _ = pipeline_run
    before = snapshot(results)
    flags = {"--trials": 2, "--seed": 0, flag: value}  # the fixture's search: 2 trials, seed 0, 2 epochs
    proc = run_cli("--stage", "teacher", "--profile", "smoke", "--data", conll_dir, "--results-dir", results,
                   "--resume", *[item for pair in flags.items() for item in pair])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert f"search_settings.yaml has {key} " in proc.stderr
    assert f"(set by {flag})" in proc.stderr  # the flag to fix, not only the recorded key
    assert snapshot(results) == before


BAD_SPACES = {
    "space_syntax": "params: {learning_rate: {type: loguniform, low: 1.0e-4\n",
    "space_unknown_key": "params: {learning_rate: {type: uniform, low: 0.1, high: 0.2, step: 1}}\n",
    "space_wrong_type": "params: {learning_rate: {type: uniform, low: small, high: 0.2}}\n",
    "space_low_gt_high": "params: {learning_rate: {type: loguniform, low: 0.1, high: 0.01}}\n",
    "space_log_low_zero": "params: {learning_rate: {type: loguniform, low: 0.0, high: 0.01}}\n",
    "space_empty_choice": "params: {learning_rate: {type: choice, values: []}}\n",
    "space_python_tag": "!!python/object/apply:os.system ['touch pwned']\n",
}
CASES = {  # case -> what the one-line error must name
    "trials0": "--trials", "trials_negative": "--trials", "unknown_stage": "--stage", "no_teacher": "--stage teacher",
    "missing_data": "nowhere", "empty_data": "train.txt is missing", "bad_line": "train.txt:3",
    "bad_tag": "train.txt:3", "not_utf8": "train.txt:1", "hub_offline": "--data", "unknown_model": "no-such-model",
    "missing_teacher": "no teacher result at", "corrupt_teacher": "corrupt", "space_syntax": "teacher.yaml:",
    "space_unknown_key": "step", "space_wrong_type": "learning_rate.low", "space_low_gt_high": "low (0.1) > high",
    "space_log_low_zero": "low > 0", "space_empty_choice": "values", "space_python_tag": "teacher.yaml:1",
    "factorized_teacher": "not a teacher", "teacher_with_all": "--teacher", "seed_mismatch": "--seed 0",
    "too_many_cpus": "--cpus-per-trial 64", "bad_precision": "--precision",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error_results_unchanged(case, tmp_path, conll_dir):
    results = tmp_path / "results"
    write(results / "README.md", "kept\n")
    data, stage, extra = conll_dir, "teacher", []
    if case == "trials0":
        extra = ["--trials", "0"]
    elif case == "trials_negative":
        extra = ["--trials", "-3"]
    elif case == "unknown_stage":
        stage = "distil"
    elif case == "no_teacher":
        stage = "student"
    elif case == "missing_data":
        data = tmp_path / "nowhere"
    elif case == "empty_data":
        data = tmp_path / "d"
        data.mkdir()
    elif case in ("bad_line", "bad_tag", "not_utf8"):
        data = tmp_path / "d"
        text = {"bad_line": "EU B-ORG\n\nrejects\n", "bad_tag": "EU B-ORG\n\nParis LOC\n",
                "not_utf8": "M\xfcller B-PER\n"}[case]
        write(data / "train.txt", text, encoding="latin-1" if case == "not_utf8" else "utf-8")
    elif case == "hub_offline":
        data = "conll2003"
    elif case.startswith("space_"):
        spaces = tmp_path / "spaces"
        for name in STAGES:
            write(spaces / f"{name}.yaml", (ROOT / "search_spaces" / "smoke" / f"{name}.yaml").read_text())
        write(spaces / "teacher.yaml", BAD_SPACES[case])
        extra = ["--space-dir", spaces]
    elif case == "unknown_model":
        extra = ["--model", "no-such-org/no-such-model"]
    elif case == "missing_teacher":
        stage = "factorized"
        extra = ["--teacher", tmp_path / "gone"]
    elif case in ("factorized_teacher", "seed_mismatch"):
        stage = "student"
        from tuner.models import factorize, initial_token_classifier, load_tokenizer, save_model

        model = initial_token_classifier("tiny", ["O", "B-PER", "I-PER"], 0, len(load_tokenizer("minilm")))
        if case == "factorized_teacher":
            factorize(model, 8)
        save_model(model, tmp_path / "teacher", load_tokenizer("minilm"))
        write(tmp_path / "teacher" / "result.json", '{"seed": 0, "split": "report"}')
        extra = ["--teacher", tmp_path / "teacher", "--seed", "1"]
    elif case == "teacher_with_all":
        stage = "all"
        extra = ["--teacher", tmp_path / "teacher"]
    elif case == "too_many_cpus":
        extra = ["--cpus-per-trial", "64"]
    elif case == "bad_precision":
        extra = ["--precision", "fp16"]
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
    assert CASES[case] in lines[0], lines[0]
    assert snapshot(results) == before
    assert not (ROOT / "pwned").exists()
