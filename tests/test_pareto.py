"""The F1-vs-size front: fronts and promotion order against hand-made examples, ParetoASHA's keep/stop decisions
on synthetic results, a search that samples only inside the budget, and the smoke front end to end."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import optuna
import pytest
import yaml

from tests.conftest import MINILM_SIZES, ROOT, copied, run_cli, run_main, searched, snapshot, usable_cpus, write
from tuner import pareto

# (F1, -parameters in millions): to maximise both
POINTS = [(0.90, -20.0),  # 0: the biggest and best
          (0.85, -10.0),  # 1: on the front
          (0.70, -3.0),   # 2: small, low F1, on the front
          (0.80, -12.0),  # 3: dominated by 1 (worse F1, more parameters)
          (0.60, -5.0),   # 4: dominated by 2
          (0.85, -10.0)]  # 5: equal to 1: neither dominates the other


def test_fronts_of_a_hand_made_example():
    assert pareto.dominates(POINTS[1], POINTS[3]) and not pareto.dominates(POINTS[1], POINTS[5])
    assert sorted(pareto.pareto_front(POINTS)) == [0, 1, 2, 5]
    assert [sorted(front) for front in pareto.fronts(POINTS)] == [[0, 1, 2, 5], [3, 4]]
    assert pareto.pareto_front([]) == []


def test_promotion_order_puts_a_fronts_extremes_first():
    order = pareto.promotion_order(POINTS)
    assert set(order[:2]) == {0, 2}  # the best F1 and the smallest model: infinite crowding distance
    assert set(order[:4]) == {0, 1, 2, 5} and set(order[4:]) == {3, 4}


def test_keeps_the_top_share_by_front():
    assert pareto.keeps(POINTS, 2, reduction_factor=2)  # small, low F1, on the front: kept
    assert not pareto.keeps(POINTS, 3, reduction_factor=2)  # dominated: stopped
    assert not pareto.keeps(POINTS, 4, reduction_factor=2)
    # 3 places of 6: the front's two ends, then the first of the two equal members between them
    assert pareto.keeps(POINTS, 1, reduction_factor=2) and not pareto.keeps(POINTS, 5, reduction_factor=2)
    # 2 places of 6 (the top third): the front's ends alone; a member between them stops, on the front or not
    assert [pareto.keeps(POINTS, i, reduction_factor=3) for i in range(6)] == [True, False, True, False, False, False]
    # the ends go on whatever the places: a lone small trial beside 5 better, bigger ones
    tail = [(0.95, -30.0), (0.94, -29.0), (0.93, -28.0), (0.92, -27.0), (0.91, -26.0), (0.20, -1.0)]
    assert pareto.keeps(tail, 5, reduction_factor=6) and not pareto.keeps(tail, 1, reduction_factor=6)
    assert pareto.keeps([(0.1, -1.0)], 0, reduction_factor=2)  # the first trial at a rung goes on, as in ASHA
    # two trials: where one dominates, only it goes on; where each is better in one objective, both do
    assert pareto.keeps([(0.5, -5.0), (0.6, -4.0)], 1, 2) and not pareto.keeps([(0.5, -5.0), (0.6, -4.0)], 0, 2)
    assert pareto.keeps([(0.9, -20.0), (0.7, -3.0)], 1, 2) and pareto.keeps([(0.9, -20.0), (0.7, -3.0)], 0, 2)
    # more dominated trials than places: the promotion order decides among them
    crowd = [(0.9, -20.0), (0.8, -21.0), (0.7, -22.0), (0.6, -23.0), (0.5, -24.0), (0.4, -25.0)]
    assert [pareto.keeps(crowd, i, 2) for i in range(6)] == [True, True, True, False, False, False]


def test_a_margin_keeps_a_bigger_trial_that_trails_a_smaller_one_by_noise():
    # the seed-1 front benchmark's epoch-6 rung: 1 layer at E 32 (F1 0.561) behind 1 layer at E 16 (0.564)
    close = [(0.564, -2_470_569.0), (0.561, -2_965_065.0)]
    assert pareto.dominates(close[0], close[1]) and not pareto.dominates(close[0], close[1], margin=0.01)
    assert not pareto.keeps(close, 1, reduction_factor=3)  # exact dominance: stopped
    assert pareto.keeps(close, 1, reduction_factor=3, margin=0.01)  # both on the front, both its ends
    assert pareto.fronts(close, margin=0.01) == [[0, 1]] and pareto.fronts(close) == [[0], [1]]
    # a lead beyond the margin still dominates, and a smaller, better trial still ranks first
    clear = [(0.58, -2_470_569.0), (0.561, -2_965_065.0)]
    assert not pareto.keeps(clear, 1, reduction_factor=3, margin=0.01) and pareto.keeps(clear, 0, 3, margin=0.01)
    # the same shape: within the margin neither dominates; beyond it, the better one does
    assert not pareto.dominates((0.605, -5.0), (0.60, -5.0), margin=0.01)
    assert pareto.dominates((0.62, -5.0), (0.60, -5.0), margin=0.01)


def test_hypervolume_of_a_hand_made_front():
    """(parameter share, F1) points: the area each adds from its share up to the next better point (or share 1),
    a dominated point nothing; shares past 1 and F1 below 0 clipped to the reference box."""
    points = [(0.5, 0.8), (0.2, 0.5), (0.3, 0.4), (0.9, 0.9)]  # (0.3, 0.4): behind (0.2, 0.5)
    assert pareto.hypervolume_slices(points) == pytest.approx([0.8 * 0.4, 0.5 * 0.3, 0.0, 0.9 * 0.1])
    assert pareto.hypervolume(points) == pytest.approx(0.56)
    assert pareto.hypervolume([(0.0, 1.0)]) == pytest.approx(1.0) and pareto.hypervolume([]) == 0.0
    assert pareto.hypervolume([(1.5, 0.9), (0.5, -0.1)]) == 0.0  # outside the box: bigger than the teacher, F1 < 0
    assert pareto.hypervolume([(0.2, 0.5), (0.2, 0.7)]) == pytest.approx(0.8 * 0.7)  # same size: the better one


def test_pareto_asha_decides_on_fronts_at_its_rungs():
    from ray.tune.schedulers import TrialScheduler

    from tuner.search import ParetoASHA

    scheduler = ParetoASHA([("val_f1", "max"), ("parameters", "min")], max_t=10, rungs={3, 6}, reduction_factor=2)
    assert scheduler.set_search_properties(None, None)

    def report(name, epoch, f1, params):
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=name), {"epoch": epoch, "val_f1": f1,
                                                                                  "parameters": params})

    assert report("big", 1, 0.5, 20e6) == TrialScheduler.CONTINUE  # not a rung
    assert report("big", 3, 0.90, 20e6) == TrialScheduler.CONTINUE  # the first at rung 3
    assert report("small", 3, 0.70, 3e6) == TrialScheduler.CONTINUE  # low F1 but on the front: an end
    assert report("middle", 3, 0.80, 12e6) == TrialScheduler.STOP  # on the front, between its ends, not in 2 places
    assert report("better", 3, 0.92, 8e6) == TrialScheduler.CONTINUE  # the best F1 now, and smaller than "big"
    assert report("dominated", 3, 0.75, 15e6) == TrialScheduler.STOP  # behind "better" in both
    assert report("small", 3, 0.70, 3e6) == TrialScheduler.CONTINUE  # a rung's second report: decided already
    assert report("big", 6, 0.91, 20e6) == TrialScheduler.CONTINUE
    assert report("big", 10, 0.92, 20e6) == TrialScheduler.STOP  # the last epoch
    assert report("new", 3, 0.50, 25e6) == TrialScheduler.STOP  # dominated by all the others
    # the default F1 margin: at a rung, a bigger trial 0.3 points behind a smaller one goes on
    scheduler = ParetoASHA([("val_f1", "max"), ("parameters", "min")], max_t=10, rungs={6}, reduction_factor=3)
    assert report("e16", 6, 0.564, 2_470_569) == TrialScheduler.CONTINUE
    assert report("e32", 6, 0.561, 2_965_065) == TrialScheduler.CONTINUE  # within the margin: not dominated
    assert report("e32-worse", 6, 0.55, 2_965_065) == TrialScheduler.STOP  # 1.4 points behind "e16": dominated
    # Ray's ASHA on F1 alone, with the same rungs, stops "small" on the same results
    from ray.tune.schedulers import ASHAScheduler

    plain = ASHAScheduler(metric="val_f1", mode="max", time_attr="epoch", max_t=10, grace_period=3, reduction_factor=2)
    decide = {}
    for name, f1 in [("big", 0.90), ("small", 0.70)]:
        trial = SimpleNamespace(trial_id=name, is_finished=lambda: False)
        plain.on_trial_add(None, trial)
        decide[name] = plain.on_trial_result(None, trial, {"epoch": 3, "val_f1": f1})
    assert decide == {"big": TrialScheduler.CONTINUE, "small": TrialScheduler.STOP}


def test_a_front_search_decides_with_its_methods_margin_and_reduction_factor(tmp_path):
    """The scheduler a front search builds (``search_algorithms``) takes the method's F1 margin and reduction
    factor: the same results at the first rung, decided under the default method and under one with no margin
    and a factor of 2, end differently where each of the two matters."""
    import dataclasses

    from ray.tune.schedulers import TrialScheduler

    from tuner import registry
    from tuner.search import DEFAULT_METHOD, search_algorithms
    from tuner.spaces import load_space

    student = registry.by_name("student")
    space = load_space(student, ROOT / "search_spaces" / "smoke" / "student.yaml")
    rest = dataclasses.replace(space, params=tuple(p for p in space.params if p.name not in student.sized_by))
    shapes = [{"num_layers": 1, "factor_dim": 16}]

    def decisions(method, folder):
        folder.mkdir()
        _, scheduler, metric, _ = search_algorithms(student, rest, 10, 0, folder, ("f1", "params"), shapes, 8,
                                                    method)
        assert metric is None  # a front: no single metric for Tune
        rung = min(method.front_rungs(10))
        return [scheduler.on_trial_result(None, SimpleNamespace(trial_id=name),
                                          {"epoch": rung, "val_f1": f1, "parameters": params})
                for name, f1, params in results]

    # "late": behind "big" alone, the third in promotion order of five; "e32": 0.3 points behind "e16", bigger
    results = [("big", 0.90, 20e6), ("small", 0.70, 3e6), ("c", 0.60, 25e6), ("d", 0.55, 30e6),
               ("late", 0.85, 22e6)]
    assert decisions(DEFAULT_METHOD, tmp_path / "default")[-1] == TrialScheduler.STOP  # 2 places of 5 (factor 3)
    other = dataclasses.replace(DEFAULT_METHOD, front_margin=0.0, front_reduction_factor=2)
    assert decisions(other, tmp_path / "other")[-1] == TrialScheduler.CONTINUE  # 3 places of 5
    results = [("e16", 0.564, 2_470_569), ("e32", 0.561, 2_965_065)]
    assert decisions(DEFAULT_METHOD, tmp_path / "default-margin") == [TrialScheduler.CONTINUE] * 2
    assert decisions(other, tmp_path / "no-margin") == [TrialScheduler.CONTINUE, TrialScheduler.STOP]


def test_rung_records_survive_a_resume(tmp_path):
    """``--resume`` gets the scheduler Ray pickled when the search started, with empty rungs: both of tuner's
    schedulers read what they recorded back from their memory file, so a trial reaching a rung after the resume
    is judged against the trials recorded there before it, as in an uninterrupted search."""
    import pickle

    from ray.tune.schedulers import TrialScheduler

    from tuner.search import ParetoASHA, RememberingASHA

    def trial(name):
        return SimpleNamespace(trial_id=name)

    asha = RememberingASHA(time_attr="epoch", metric="val_f1", mode="max", max_t=10, grace_period=3,
                           reduction_factor=2, memory=tmp_path / "asha.json")
    front = ParetoASHA([("val_f1", "max"), ("parameters", "min")], max_t=10, rungs={3, 6}, reduction_factor=2,
                       memory=tmp_path / "front.json")
    for scheduler in (asha, front):
        started = pickle.dumps(scheduler)  # what Ray's tuner.pkl holds: the scheduler before any result
        for name, f1, params in (("a", 0.90, 20e6), ("b", 0.80, 12e6)):
            scheduler.on_trial_add(None, trial(name))
            scheduler.on_trial_result(None, trial(name), {"epoch": 3, "val_f1": f1, "parameters": params})
        late = {"epoch": 3, "val_f1": 0.50, "parameters": 25e6}  # behind both, on F1 and on size
        restored, forgetful = pickle.loads(started), pickle.loads(started)
        forgetful._memory = None  # Ray's own behaviour: the rung is empty after the resume
        for resumed, action in ((restored, TrialScheduler.STOP), (forgetful, TrialScheduler.CONTINUE)):
            resumed.on_trial_add(None, trial("late"))
            assert resumed.on_trial_result(None, trial("late"), dict(late)) == action, type(resumed).__name__
        older = pickle.loads(started)  # pickled by a tuner before this memory: no such fields, Ray's behaviour
        del older._memory, older._recalled
        older.on_trial_add(None, trial("late"))
        assert older.on_trial_result(None, trial("late"), dict(late)) == TrialScheduler.CONTINUE


def test_a_front_search_samples_only_shapes_under_the_budget(tiny_model, tmp_path):
    """The space the searcher samples: every feasible combination once, none over the budget, and nothing else."""
    from tuner import registry
    from tuner.plan import search_plan
    from tuner.search import SHAPE, ShapedSpace
    from tuner.spaces import load_space
    from tuner.stages.student import StudentInputs
    from tuner.models import size_parts, student_parameters

    stage = registry.by_name("student")
    space = load_space(stage, ROOT / "search_spaces" / "smoke" / "student.yaml")
    inputs = StudentInputs(None, None, None, 2, 8, 500_000, size_parts(tiny_model))
    sampled, shapes = search_plan(stage, space, inputs, ("f1", "params"))
    assert {"num_layers", "factor_dim"}.isdisjoint(sampled.names())
    every = [{"num_layers": n, "factor_dim": e} for n in (1, 2) for e in (8, 16)]
    sizes = {(s["num_layers"], s["factor_dim"]): student_parameters(tiny_model, s["num_layers"], s["factor_dim"])
             for s in every}
    assert sorted(map(lambda s: (s["num_layers"], s["factor_dim"]), shapes)) == \
        sorted(key for key, size in sizes.items() if size <= 500_000)
    assert len(shapes) < len(every)  # the budget removed some: L2 at E16 has 510,473 parameters
    captured = {}
    trial = SimpleNamespace(
        suggest_float=lambda name, low, high, log=False: captured.setdefault(name, low),
        suggest_int=lambda name, low, high: captured.setdefault(name, low),
        suggest_categorical=lambda name, choices: captured.setdefault(name, choices[-1]))
    config = ShapedSpace(sampled, shapes)(trial)
    assert sizes[(config["num_layers"], config["factor_dim"])] <= 500_000 and SHAPE in captured
    single, none = search_plan(stage, space, inputs, ("f1",))  # F1 alone: today's fixed shape, searched nothing
    assert none is None and {"num_layers", "factor_dim"}.isdisjoint(single.names())


@pytest.mark.parametrize("case", ["unknown_objective", "teacher_fixed_size", "space_without_shape",
                                  "budget_too_small", "space_deeper_than_teacher", "budget_below_the_space_overwrite"])
def test_bad_front_input_is_one_line(case, tmp_path, tiny_model, tokenizer, conll_dir, capsys, monkeypatch):
    from tuner import run, search
    from tuner.models import save_model

    results = tmp_path / "results"
    write(results / "README.md", "kept\n")
    save_model(tiny_model, tmp_path / "teacher", tokenizer)
    args = ["--profile", "smoke", "--data", conll_dir, "--results-dir", results, "--objectives", "f1,params",
            "--stage", "student", "--teacher", tmp_path / "teacher"]
    if case == "unknown_objective":
        args[args.index("f1,params")] = "f1,foo"
    elif case == "teacher_fixed_size":
        args = args[:-4] + ["--stage", "teacher"]
    elif case == "space_without_shape":
        spaces = tmp_path / "spaces"
        text = (ROOT / "search_spaces" / "smoke" / "student.yaml").read_text()
        write(spaces / "student.yaml", text[:text.index("  # Searched only with --objectives")])
        args += ["--space-dir", spaces]
    elif case == "budget_too_small":
        args += ["--max-params", 1000]
    elif case == "space_deeper_than_teacher":  # the tiny teacher has 2 layers: no 3-layer student to cut from it
        spaces = tmp_path / "spaces"
        text = (ROOT / "search_spaces" / "smoke" / "student.yaml").read_text()
        write(spaces / "student.yaml", text.replace("low: 1\n    high: 2", "low: 1\n    high: 3"))
        args += ["--space-dir", spaces]
    elif case == "budget_below_the_space_overwrite":
        # a budget some student fits (1 layer, E 8) but none of the space's (E 16), over an earlier search that
        # --overwrite would replace: refused before the earlier search is touched
        from tuner.models import student_parameters

        spaces = tmp_path / "spaces"
        text = (ROOT / "search_spaces" / "smoke" / "student.yaml").read_text()
        write(spaces / "student.yaml", text.replace("values: [8, 16]", "values: [16]"))
        write(results / "student" / "search" / "experiment_state.json", "{}")
        budget = student_parameters(tiny_model, 1, 8)
        assert budget < student_parameters(tiny_model, 1, 16)
        args += ["--space-dir", spaces, "--max-params", budget, "--overwrite"]
    before = snapshot(results)

    def no_ray(*args, **kwargs):  # every case is refused before Ray starts (and before a student's teacher outputs)
        raise AssertionError("Ray started before the bad input was refused")

    monkeypatch.setattr(search, "start_ray", no_ray)
    status, _, err = run_main(run.main, *args, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    expected = {"unknown_objective": "--objectives: unknown objective 'foo'",
                "teacher_fixed_size": "stage teacher has a fixed size",
                "space_without_shape": "student.yaml: searches none of num_layers, factor_dim",
                "budget_too_small": "--max-params 1000: the smallest student",
                "space_deeper_than_teacher": "student.yaml: params.num_layers: 3 is outside [1, 2] (the teacher has "
                                             "2 layers)",
                "budget_below_the_space_overwrite": "student.yaml fits (the smallest has"}[case]
    assert expected in err, err
    assert snapshot(results) == before


@pytest.fixture(scope="module")
def front_run(minilm_run, tmp_path_factory, conll_dir):
    """A smoke front search of students of a real teacher: the MiniLM pipeline's, copied, on its sentences."""
    results = copied(minilm_run[0], tmp_path_factory.mktemp("front") / "results", "teacher/best")
    searched("--stage", "student", "--objectives", "f1,params", "--trials", 6, *MINILM_SIZES, "--data", conll_dir,
             "--results-dir", results, "--quiet")
    return results


@pytest.mark.slow
def test_front_search_writes_a_non_dominated_front_that_reproduces(front_run):
    from tuner.models import load_model, load_tokenizer, model_labels, student_parameters
    from tuner.task import build_task, recorded_settings
    from tuner import registry
    from tuner.training import STATE_FILE, evaluate

    results = front_run
    with open(results / "student" / "pareto.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(results / "student" / "trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    assert rows and len(trials) == 6
    # no --cpus-per-trial: the packing tuner measured (not a fallback), kept for --resume, within the machine
    packed = yaml.safe_load((results / "student" / "search_settings.yaml").read_text())["packing"]
    cores = usable_cpus()
    assert packed["trials_at_once"] * packed["threads"] <= cores and packed["gpus_per_trial"] == 0
    if cores > 1:
        assert set(packed["step_seconds"]) == {"1", str(cores)} and "measured in" in packed["reason"], packed
    teacher = load_model(results / "teacher" / "best")
    for trial in trials:  # nothing over the budget was trained
        assert int(float(trial["parameters"])) <= 5_000_000
        assert int(float(trial["parameters"])) == student_parameters(
            teacher, int(float(trial["config/num_layers"])), int(float(trial["config/factor_dim"])))
    stopped = 0
    for folder in (results / "student" / "search").glob("_trial_*"):  # every trial's best epoch has its model,
        reports = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        best = max(reports, key=lambda r: r["val_f1"])  # a trial stopped at a rung included: it may be on the front
        checkpoints = list(folder.glob("checkpoint_*"))
        assert len(checkpoints) == 1, f"{folder.name}: {len(checkpoints)} checkpoints"
        assert json.loads((checkpoints[0] / STATE_FILE).read_text())["epoch"] + 1 == best["epoch"], folder.name
        stopped += reports[-1]["epoch"] < 2
    assert stopped, "ParetoASHA stopped no trial at the rung: the test did not exercise a stopped trial's model"
    points = [(float(t["val_f1"]), -float(t["parameters"])) for t in trials]
    for row in rows:  # every row is non-dominated among all trials' best epochs
        mine = (float(row["val_f1"]), -float(row["parameters"]))
        assert not any(pareto.dominates(other, mine) for other in points), row
    exported = yaml.safe_load((results / "best_configs.yaml").read_text())["student"]
    assert [m["name"] for m in exported["pareto"]] == [row["name"] for row in rows]
    # the front's hypervolume in (parameter share of the teacher, F1): pareto.csv's slices add up to it, and it is
    # the hypervolume of the members' own points
    teacher_size = sum(p.numel() for p in teacher.parameters())
    for row in rows:
        assert float(row["parameter_share"]) == pytest.approx(int(row["parameters"]) / teacher_size, abs=1e-6)
    assert exported["hypervolume"]["val"] == pytest.approx(sum(float(r["hypervolume_slice"]) for r in rows), abs=1e-4)
    assert exported["hypervolume"]["val"] == pytest.approx(pareto.hypervolume(
        [(int(r["parameters"]) / teacher_size, float(r["val_f1"])) for r in rows]), abs=1e-4)
    assert 0 < exported["hypervolume"]["test"] < 1
    assert f"**{exported['hypervolume']['val']:.4f}** on validation F1" in (results / "summary.md").read_text()
    study = optuna.load_study(study_name="student", storage=f"sqlite:///{results / 'optuna.db'}")
    assert study.metric_names == ["val_f1", "parameters"]  # named for optuna-dashboard
    assert exported["val_f1"] == max(float(t["val_f1"]) for t in trials)  # `student` stays the best F1
    summary = (results / "summary.md").read_text()  # the members listed in the run's summary, smallest first
    assert [line.split("|")[1].strip() for line in summary.splitlines() if "M-L" in line] == [r["name"] for r in rows]
    record = json.loads((results / "student" / "best" / "result.json").read_text())
    settings, _ = recorded_settings(record, registry.by_name("student"), results, "result.json")
    for row in rows:  # each member's exported model, re-evaluated, reproduces its F1
        folder = results / "student" / "pareto" / row["name"]
        model = load_model(folder)
        task = build_task(settings, load_tokenizer(str(folder)), model_labels(model))
        scores = evaluate(model, task.validation, task.labels, settings.profile.eval_batch_size,
                          task.pad_token_id, "cpu", settings.profile.precision)
        assert scores["f1"] == pytest.approx(float(row["val_f1"]), abs=1e-4), row["name"]
        assert float(row["batch_1_median_ms"]) > 0 and float(row["batch_32_sentences_per_second"]) > 0
    smallest = rows[0]["name"]  # a member: tagged by tuner.predict, retrained from best_configs.yaml
    proc = run_cli("--model", results / "student" / "pareto" / smallest, "EU rejects German call .",
                   module="tuner.predict")
    assert proc.returncode == 0 and proc.stdout.startswith("EU rejects German call ."), proc.stderr[-2000:]
    proc = run_cli("--results-dir", results, "--stage", "student", "--member", smallest, "--output",
                   results.parent / "retrained", module="tuner.retrain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("validation F1 ")[-1].split()[0]) == pytest.approx(float(rows[0]["val_f1"]),
                                                                                        abs=1e-4)
    # every member deployed (exit 1 only where the gate refused int8); the gate on the search's own 100 validation
    # sentences (front_run's --eval-sentences), so float32 scores what the search scored
    proc = run_cli("--results-dir", results, "--stage", "student", "--pareto", "--latency-sentences", 5,
                   "--gate-sentences", 100, module="tuner.deploy")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    with open(results / "student" / "pareto.csv") as handle:  # pareto.csv gains each member's int8 figures
        deployed_rows = list(csv.DictReader(handle))
    assert [row["name"] for row in deployed_rows] == [row["name"] for row in rows]
    for row, deployed in zip(rows, deployed_rows):
        report = json.loads((results / "student" / "pareto" / row["name"] / "deploy" / "deploy.json").read_text())
        assert report["formats"]["pytorch_float32"]["validation"] == pytest.approx(float(row["val_f1"]), abs=0.01)
        assert (results / "student" / "pareto" / row["name"] / "deploy" / "model.onnx").is_file()
        int8 = report["formats"].get("onnx_int8")
        assert deployed["int8_test_f1"] == (str(int8["test"]) if int8 else ""), (deployed, report["int8_passed"])
        assert deployed["int8_bytes"] == (str(int8["bytes"]) if int8 else "")
        assert deployed["val_f1"] == str(row["val_f1"]) and deployed["config"] == row["config"]
    # a member's quantization-aware copy, as the gate makes it where no recipe passes: the student's own
    # distillation loss against the recorded teacher, one epoch, exported as a valid ONNX model
    from tuner import deploy, onnx_io

    members, task, settings, teacher = deploy.load_stage(registry.by_name("student"), results, pareto=True,
                                                         gate_sentences=20, qat_epochs=1)
    model, tokenizer, _, _, config = members[0]
    assert teacher is not None and deploy.load_stage(registry.by_name("student"), results, gate_sentences=20)[3] is None
    done = deploy.Tuning(registry.by_name("student"), settings, config, 1, 1, teacher).fine_tuned(
        model, task, tokenizer, results.parent / "tuned.onnx", results.parent / "tuned-prepared.onnx")
    assert done["loss"] == "the stage's own" and len(done["fake_quantized_validation_f1"]) == 1
    assert onnx_io.session(results.parent / "tuned.onnx", 1).get_outputs()[0].name == "logits"
    proc = run_cli("--results-dir", results, module="tuner.report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (results / "plots" / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/front.png" in (results / "report.md").read_text()
    assert f"**{exported['hypervolume']['val']:.4f}** on validation F1" in (results / "report.md").read_text()


@pytest.mark.slow
def test_front_benchmark_quick_compares_the_front_with_budgeted_searches(front_run, tmp_path):
    """bench/front.py's smoke mode: one front search and a search per budget from the same teacher, one table."""
    report = tmp_path / "front.md"
    proc = run_cli("--teacher", front_run / "teacher" / "best", "--trials", 2, "--budgets", 0.15, "--quick",
                   "--output", report, module="bench.front")  # one budget: a search each costs a Ray start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = report.read_text()
    record = json.loads(report.with_suffix(".json").read_text())
    assert [row["budget"] for row in record["budgets"]] == [0.15]
    assert [row["single_trials"] for row in record["budgets"]] == [2]  # the front's trials, as one budget has them
    for row in record["budgets"]:
        assert row["single_parameters"] <= row["budget"] * record["teacher"]["parameters"]
        assert f"| {row['budget']:.0%} | " in text
    assert all(m["parameters"] <= 0.60 * record["teacher"]["parameters"] for m in record["front"]["members"])
    assert "Members between 15% and 60% of the teacher's parameters:" in text
    # its figures, beside the report: the front against the teacher at each goal's share and its members' count,
    # against each budget's search, and the two sides' wall times
    figures = json.loads((tmp_path / "benchmarks.json").read_text())["headlines"]
    assert [f["measure"].split(" (")[0] for f in figures] == [
        "front at <= 30% of the teacher's parameters, test F1 / teacher's",  # the goals' shares, whatever budgets
        "front at <= 22% of the teacher's parameters, test F1 / teacher's",
        "front at <= 15% of the teacher's parameters, test F1 / teacher's",
        "front members between 15% and 60% of the teacher's parameters",
        "front vs a budgeted F1 search at <= 15% of the teacher", "front search wall time / the budgeted searches'"]
    assert all(f["command"].startswith("python bench/front.py --teacher") and f["commit"] for f in figures)


def test_budgeted_searches_share_the_fronts_trials():
    from bench.front import trial_shares

    assert trial_shares(40, 3) == [14, 13, 13] and trial_shares(2, 2) == [1, 1] and trial_shares(2, 3) == [1, 1, 1]


def test_front_only_report_lists_members_against_the_budgets_without_a_budget_table():
    """bench/front.py --front-only: no single-objective searches, so no per-budget table, but every member as a
    share of the teacher and the best test F1 under each budget."""
    from bench.front import report

    members = [{"name": name, "parameters": size, "val_f1": f1 + 0.01, "test_f1": f1, "batch_1_median_ms": "1.5"}
               for name, size, f1 in [("a", 3_000_000, 0.70), ("b", 6_000_000, 0.78), ("c", 12_000_000, 0.81)]]
    record = {"teacher": {"parameters": 20_000_000, "test_f1": 0.80, "val_f1": 0.82, "folder": "T"},
              "front": {"trials": 40, "max_share": 0.60, "wall_seconds": 600.0, "members": members},
              "train_sentences": None, "budgets": []}
    text = report(record, "python bench/front.py --front-only", "2026-12-03 08:00 UTC", 10.0)
    assert "not run (`--front-only`)" in text and "| budget |" not in text and "\n\n\n" not in text
    assert "Members between 15% and 60% of the teacher's parameters: 3." in text
    assert "At 30% or less of the teacher: best test F1 0.7800, 0.975x the teacher's." in text
    assert "At 15% or less of the teacher: best test F1 0.7000, 0.875x the teacher's." in text


def test_a_front_search_starts_from_shapes_that_span_the_sizes(tmp_path):
    """The start-up shapes: at evenly spaced size levels, the deepest, then widest, shape under each (the one a
    budgeted search trains), each once; the searcher queues them, in that order, as its first trials."""
    import dataclasses

    import optuna

    from tuner import registry
    from tuner.search import DEFAULT_METHOD, SHAPE, search_algorithms, shape_label, spanning_shapes
    from tuner.spaces import load_space

    size = {(1, 16): 10, (1, 64): 30, (2, 16): 20, (2, 64): 40, (3, 16): 31, (3, 64): 51}  # (layers, E): size
    shapes = [{"num_layers": n, "factor_dim": e} for n, e in size]
    stage = SimpleNamespace(sized_by=("num_layers", "factor_dim"),
                            size=lambda inputs, s: size[(s["num_layers"], s["factor_dim"])])
    chosen = spanning_shapes(stage, None, shapes, 5)  # levels 10, 20.25, 30.5, 40.75, 51; 30.5 repeats (2, 16)
    assert [(s["num_layers"], s["factor_dim"]) for s in chosen] == [(1, 16), (2, 16), (3, 16), (3, 64)]
    assert spanning_shapes(stage, None, shapes, 1) == [{"num_layers": 1, "factor_dim": 16}]  # the smallest alone

    student = registry.by_name("student")
    space = load_space(student, ROOT / "search_spaces" / "smoke" / "student.yaml")
    rest = dataclasses.replace(space, params=tuple(p for p in space.params if p.name not in student.sized_by))
    searcher, *_ = search_algorithms(student, rest, 2, 0, tmp_path, ("f1", "params"), shapes, 8,
                                     DEFAULT_METHOD, start_shapes=chosen)
    queued = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in queued] == [{SHAPE: shape_label(s)} for s in chosen]
    off = dataclasses.replace(DEFAULT_METHOD, spanning_startup=False)
    (tmp_path / "off").mkdir()
    searcher, *_ = search_algorithms(student, rest, 2, 0, tmp_path / "off", ("f1", "params"), shapes, 8, off,
                                     start_shapes=chosen)
    assert not searcher._ot_study.get_trials(states=(optuna.trial.TrialState.WAITING,))
