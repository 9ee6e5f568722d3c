"""The command line, in-process through ``main(argv)``: flags generated from the typed config, the hint naming
the flag behind a recorded setting, and every bad input refused in one line with results/ unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, STAGES, run_main, snapshot, write
from tuner import run
from tuner.cli import flag_hint, flag_name
from tuner.config import PROFILE_DEFAULTS, Profile, profile_overrides
from tuner.errors import TunerError


def test_every_profile_field_is_a_flag_of_its_own_name():
    parser = run.parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    fields = [f.name for f in profile_overrides()]
    assert {flag_name(name) for name in fields} <= flags
    args = ["--stage", "teacher", "--epochs", "5", "--student-epochs", "7", "--batch-size", "3", "--max-length", "40",
            "--train-sentences", "11", "--eval-sentences", "12", "--test-sentences", "13", "--max-params", "1000",
            "--eval-batch-size", "9", "--label-subtokens", "all", "--space-dir", "elsewhere", "--model", "tiny",
            "--precision", "fp32", "--batches", "length"]
    profile = run.settings_from(parser.parse_args(args), cuda_available=False).profile
    given = dict(zip(args[2::2], args[3::2]))
    for name in fields:
        assert str(getattr(profile, name)) == given[flag_name(name)], name
    untouched = run.settings_from(parser.parse_args(["--stage", "teacher", "--profile", "smoke"]), False).profile
    assert untouched == PROFILE_DEFAULTS["smoke"]


def test_profile_choices_are_validated_where_flags_and_yaml_meet():
    with pytest.raises(TunerError, match="label_subtokens must be one of first, all"):
        dataclasses.replace(PROFILE_DEFAULTS["smoke"], label_subtokens="every")
    assert {f.name for f in dataclasses.fields(Profile)} - {f.name for f in profile_overrides()} == {"name"}


@pytest.mark.parametrize("key, hint", [("trials", " (set by --trials)"), ("profile.epochs", " (set by --epochs)"),
                                       ("profile.label_subtokens", " (set by --label-subtokens)"),
                                       ("profile.name", " (set by --profile)"),
                                       ("search_space_sha256", " (set by the search space file)"),
                                       ("objectives", " (set by --objectives)"),
                                       ("profile.nothing", ""), ("versions", "")])
def test_flag_hint_names_the_flag_behind_a_recorded_setting(key, hint):
    assert flag_hint(key) == hint


def test_search_seed_seeds_the_trials_and_leaves_the_split_to_seed(conll_dir):
    """--search-seed draws another search (sampler, heads, data order) over the split --seed made, so it runs
    against the same teacher; retrain and deploy read it back from the stage's record."""
    from tuner import packing
    from tuner.pipeline import training_record
    from tuner.search.run import SearchSettings
    from tuner.task import recorded_settings, select_sentences

    flags = ["--stage", "teacher", "--profile", "smoke", "--data", str(conll_dir), "--seed", "3"]
    alone = run.settings_from(run.parser().parse_args(flags), False)
    drawn = run.settings_from(run.parser().parse_args(flags + ["--search-seed", "7"]), False)
    assert (alone.trial_seed, drawn.seed, drawn.trial_seed) == (3, 3, 7)
    assert select_sentences(alone)[1] == select_sentences(drawn)[1]  # the same split and subsets
    given = packing.Packing(1.0, 0.0, 1, 1, "given")
    assert SearchSettings.of(drawn, packed=given, resume=False, shapes=None, warm_start=None).seed == 7  # Optuna's
    record = {"seed": 3, "search_seed": 7, "data": str(conll_dir), "split": "report",
              "training": training_record(drawn.profile, 1)}
    assert recorded_settings(record, drawn.stages[0], Path("results"), "the record")[0].trial_seed == 7
    del record["search_seed"]  # a record from before --search-seed: its seed seeded everything
    assert recorded_settings(record, drawn.stages[0], Path("results"), "the record")[0].trial_seed == 3


def fake_search(results, stage, settings_args, capsys):
    """A search folder and its search_settings.yaml as ``tuner.run`` writes them, without running the search."""
    from tuner.resume import search_settings
    from tuner.spaces import load_space
    from tuner.task import SEARCH_SETTINGS

    settings = run.settings_from(run.parser().parse_args(["--stage", stage, *map(str, settings_args)]), False)
    (stage_obj,) = settings.stages
    space = load_space(stage_obj, settings.space_file(stage))
    (results / stage / "search").mkdir(parents=True)
    (results / stage / SEARCH_SETTINGS).write_text(
        yaml.safe_dump(search_settings(stage_obj, settings, space), sort_keys=False))


@pytest.mark.parametrize("flag, value, key", [("--trials", 3, "trials"), ("--epochs", 3, "profile.epochs"),
                                             ("--seed", 1, "seed"), ("--search-seed", 5, "search_seed"),
                                             ("--label-subtokens", "all", "profile.label_subtokens")])
def test_resume_with_other_flags_is_refused(tmp_path, conll_dir, capsys, flag, value, key):
    results = tmp_path / "results"
    common = ["--profile", "smoke", "--data", conll_dir, "--results-dir", results]
    fake_search(results, "teacher", [*common, "--trials", 2], capsys)
    before = snapshot(results)
    flags = {"--trials": 2, "--seed": 0, flag: value}
    status, _, err = run_main(run.main, "--stage", "teacher", *common, "--resume",
                              *[item for pair in flags.items() for item in pair], capsys=capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"search_settings.yaml has {key} " in err
    assert f"(set by {flag})" in err  # the flag to fix, not only the recorded key
    assert snapshot(results) == before


def test_existing_search_is_not_overwritten(tmp_path, conll_dir, capsys):
    results = tmp_path / "results"
    common = ["--profile", "smoke", "--data", conll_dir, "--results-dir", results, "--trials", 2]
    fake_search(results, "teacher", common, capsys)
    before = snapshot(results)
    status, _, err = run_main(run.main, "--stage", "teacher", *common, capsys=capsys)
    assert status == 2 and "pass --resume to continue it or --overwrite" in err
    assert snapshot(results) == before


BAD_SPACES = {
    "space_syntax": "params: {learning_rate: {type: loguniform, low: 1.0e-4\n",
    "space_unknown_key": "params: {learning_rate: {type: uniform, low: 0.1, high: 0.2, step: 1}}\n",
    "space_wrong_type": "params: {learning_rate: {type: uniform, low: small, high: 0.2}}\n",
    "space_low_gt_high": "params: {learning_rate: {type: loguniform, low: 0.1, high: 0.01}}\n",
    "space_log_low_zero": "params: {learning_rate: {type: loguniform, low: 0.0, high: 0.01}}\n",
    "space_empty_choice": "params: {learning_rate: {type: choice, values: []}}\n",
    "space_python_tag": "!!python/object/apply:os.system ['touch pwned']\n",
    "space_infinite": "params: {learning_rate: {type: loguniform, low: 1.0e-5, high: .inf}}\n",
    "space_number_key": "params: {learning_rate: {type: uniform, low: 0.1, high: 0.2, 1: x}}\n",
}
CASES = {  # case -> what the one-line error must name
    "trials0": "--trials", "trials_negative": "--trials", "unknown_stage": "--stage", "no_teacher": "--stage teacher",
    "missing_data": "nowhere", "empty_data": "train.txt is missing", "bad_line": "train.txt:3",
    "bad_tag": "train.txt:3", "not_utf8": "train.txt:1", "hub_offline": "--data", "unknown_model": "no-such-model",
    "missing_teacher": "no teacher result at", "corrupt_teacher": "corrupt", "space_syntax": "teacher.yaml:",
    "space_unknown_key": "step", "space_wrong_type": "learning_rate.low", "space_low_gt_high": "low (0.1) > high",
    "space_log_low_zero": "low > 0", "space_empty_choice": "values", "space_python_tag": "teacher.yaml:1",
    "factorized_teacher": "not a teacher", "teacher_with_all": "--teacher", "seed_mismatch": "--seed 0",
    "hub_run_local_teacher": "the teacher used data '/elsewhere/conll', this run 'conll2003'; use --data /elsewhere",
    "too_many_cpus": "--cpus-per-trial 64", "bad_precision": "--precision", "space_infinite": "finite number",
    "seed_negative": "--seed", "seed_too_large": "--seed", "cpus_nan": "--cpus-per-trial",
    "teacher_record_not_json": "result.json:1: not valid JSON", "teacher_record_not_object": "expected a JSON object",
    "space_number_key": "unknown key '1'",
    # what the run's exports will read, and its study database: refused before --overwrite drops anything
    "damaged_study_db": "optuna.db: not a readable Optuna database (file is not a database; move it away",
    "damaged_other_record": "student/best/result.json: expected a JSON object",
    "damaged_other_deploy": "student/deploy/deploy.json: formats: expected a mapping",
    # a rank the teacher this run trains (tiny: hidden 32) cannot be factorized to, refused before it is trained
    "address_unreachable": "--address 127.0.0.1:1: nothing answers there",
    "budget_below_smallest_student": "--max-params 1000: the smallest student",  # before the teacher is trained
    "rank_not_below_hidden": "factorized.yaml: params.factor_dim: 32 is outside [1, 31] (E must be below the "
                             "teacher's hidden size 32)",
    "optuna_dashboard_missing": "--optuna-dashboard: optuna-dashboard is not installed",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error_results_unchanged(case, tmp_path, conll_dir, capsys, monkeypatch):
    """Run in-process through ``main(argv)``: every case is refused before Ray starts."""
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
    elif case in ("factorized_teacher", "seed_mismatch", "teacher_record_not_json", "teacher_record_not_object",
                  "hub_run_local_teacher"):
        stage = "student"
        from tuner.models import factorize, initial_token_classifier, load_tokenizer, save_model

        model = initial_token_classifier("tiny", ["O", "B-PER", "I-PER"], 0, len(load_tokenizer("minilm")))
        if case == "factorized_teacher":
            factorize(model, 8)
        save_model(model, tmp_path / "teacher", load_tokenizer("minilm"))
        record = {"teacher_record_not_json": '{"seed": 0, "spl', "teacher_record_not_object": "[0]",
                  "hub_run_local_teacher": '{"seed": 1, "split": "report", "data": "/elsewhere/conll"}'}
        write(tmp_path / "teacher" / "result.json", record.get(case, '{"seed": 0, "split": "report"}'))
        extra = ["--teacher", tmp_path / "teacher", "--seed", "1"]
        if case == "hub_run_local_teacher":  # refused before the Hub is asked for the data
            data = "conll2003"
    elif case == "teacher_with_all":
        stage = "all"
        extra = ["--teacher", tmp_path / "teacher"]
    elif case == "too_many_cpus":
        extra = ["--cpus-per-trial", "64"]
    elif case == "cpus_nan":
        extra = ["--cpus-per-trial", "nan"]
    elif case == "seed_negative":
        extra = ["--seed", "-1"]
    elif case == "seed_too_large":
        extra = ["--seed", str(2**32)]
    elif case == "bad_precision":
        extra = ["--precision", "fp16"]
    elif case == "address_unreachable":  # refused at once, not after Ray's minutes of retries
        extra = ["--address", "127.0.0.1:1"]
    elif case == "budget_below_smallest_student":
        stage, extra = "all", ["--max-params", "1000"]
    elif case == "rank_not_below_hidden":
        stage, spaces = "all", tmp_path / "spaces"
        for name in STAGES:
            write(spaces / f"{name}.yaml", (ROOT / "search_spaces" / "smoke" / f"{name}.yaml").read_text())
        text = (spaces / "factorized.yaml").read_text()
        write(spaces / "factorized.yaml", text.replace("values: [16, 24]", "values: [16, 32]"))
        extra = ["--space-dir", spaces]
    elif case == "damaged_study_db":
        write(results / "optuna.db", "not a database, only text standing in for one")
        write(results / "teacher" / "search" / "kept", "an earlier search")
        extra = ["--overwrite"]
    elif case in ("damaged_other_record", "damaged_other_deploy"):
        record = {"hyperparameters": {}, "parameters": 1, "val_f1": 0.5, "test_f1": 0.5, "search_wall_seconds": 1}
        write(results / "student" / "best" / "result.json",
              "[]" if case == "damaged_other_record" else json.dumps(record))
        write(results / "student" / "deploy" / "deploy.json", '{"threads": 2, "cpu": "x", "formats": []}')
    elif case == "optuna_dashboard_missing":  # the [live] extra left out
        import importlib.util

        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "optuna_dashboard" else find_spec(name, *a))
        extra = ["--optuna-dashboard"]
    elif case == "corrupt_teacher":
        stage = "factorized"
        write(tmp_path / "teacher" / "config.json", "{}")
        write(tmp_path / "teacher" / "model.safetensors", "not safetensors")
        extra = ["--teacher", tmp_path / "teacher"]
    before = snapshot(results)
    status, out, err = run_main(run.main, "--stage", stage, "--profile", "smoke", "--data", data, "--results-dir",
                                results, *extra, capsys=capsys)
    assert status == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert CASES[case] in lines[0], lines[0]
    assert snapshot(results) == before
    assert not (ROOT / "pwned").exists()
