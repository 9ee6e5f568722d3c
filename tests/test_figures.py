"""Figures and their provenance: results/benchmarks.json holds only entries written by the run that measured them
(command, commit, date, machine), the pages generated from it agree with it, and quick, dry or smoke runs never
write there."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT, run_main, snapshot
from tuner import figures
from tuner.errors import TunerError

sys.path.insert(0, str(ROOT))
from bench import headlines  # noqa: E402


def test_every_recorded_figure_has_its_provenance():
    for entry in figures.read(figures.BENCHMARKS):
        for key in figures.REQUIRED:
            assert key in entry and (entry[key] not in (None, "", {}) or key == "value"), (entry["measure"], key)
        assert entry["machine"].get("cpu") and entry["machine"].get("cpu_threads"), entry["measure"]
        assert not any(flag in entry["command"] for flag in figures.NOT_FIGURES), entry["command"]


def test_the_readme_block_and_the_page_agree_with_the_json(capsys):
    """bench/headlines.py --check: README.md's results block and results/benchmarks.md are what the JSON gives."""
    status = headlines.main(["--check"])
    assert status == 0, capsys.readouterr().err


def test_a_changed_figure_makes_the_pages_stale(tmp_path, monkeypatch, capsys):
    """The check fails when the JSON holds a figure the README block does not show."""
    readme, page, data = tmp_path / "README.md", tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    readme.write_text(f"# x\n\n{headlines.BEGIN}\nold\n{headlines.END}\n")
    monkeypatch.setattr(headlines, "README", readme)
    monkeypatch.setattr(headlines, "PAGE", page)
    monkeypatch.setattr(headlines, "BENCHMARKS", data)
    monkeypatch.setattr(headlines, "ROOT", tmp_path)
    figures.record([figures.headline("teacher: test F1", 0.81, "F1", "python -m tuner.run --stage teacher")], data)
    assert headlines.main(["--check"]) == 1
    assert headlines.main([]) == 0
    assert headlines.main(["--check"]) == 0
    assert "| teacher: test F1 | 0.81 F1 |" in readme.read_text() and "## teacher: test F1" in page.read_text()


def test_record_replaces_a_measure_and_keeps_the_rest(tmp_path):
    path = tmp_path / "benchmarks.json"
    first = figures.headline("a", 1.0, "x", "python bench/x.py")
    figures.record([first, figures.headline("b", 2.0, "x", "python bench/x.py")], path)
    merged = figures.record([figures.headline("a", 3.0, "x", "python bench/x.py --seed 1")], path)
    assert [(e["measure"], e["value"]) for e in merged] == [("a", 3.0), ("b", 2.0)]
    assert json.loads(path.read_text())["headlines"] == merged
    assert merged[0]["commit"] and merged[0]["machine"]["cpu_threads"] >= 1 and merged[0]["date"].endswith("Z")


def test_record_refuses_a_figure_without_provenance(tmp_path):
    entry = figures.headline("a", 1.0, "x", "python bench/x.py")
    del entry["machine"]
    with pytest.raises(TunerError, match="lacks machine"):
        figures.record([entry], tmp_path / "benchmarks.json")
    assert not (tmp_path / "benchmarks.json").exists()


@pytest.mark.parametrize("command", ["python bench/run_benchmarks.py --quick",
                                     "python -m tuner.run --stage all --profile smoke",
                                     "bash scripts/gpu_check.sh --dry-run"])
def test_quick_dry_and_smoke_figures_never_land_in_results(command, tmp_path):
    before = snapshot(ROOT / "results")
    with pytest.raises(TunerError, match="never go under results/"):
        figures.record([figures.headline("a", 1.0, "x", command)], figures.BENCHMARKS)
    assert snapshot(ROOT / "results") == before
    figures.record([figures.headline("a", 1.0, "x", command)], tmp_path / "benchmarks.json")  # elsewhere: fine


def test_a_smoke_run_asked_to_record_in_results_is_refused_before_searching(capsys, tmp_path):
    from tuner.run import main

    before = snapshot(ROOT / "results")
    status, out, err = run_main(main, "--stage", "teacher", "--profile", "smoke", "--results-dir", tmp_path / "r",
                                "--record", ROOT / "results" / "benchmarks.json", capsys=capsys)
    assert status == 2 and "never go under results/" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists() and snapshot(ROOT / "results") == before


def test_a_runs_figures_are_its_best_models_or_its_front_members():
    from tuner.run import run_figures

    record = {"stage": "student", "profile": "cpu", "trials": 4, "split": "report", "test_f1": 0.79123,
              "val_f1": 0.81234, "parameters": 6_500_000, "search_wall_seconds": 300.0, "seed": 0, "data": "d"}
    (best,) = run_figures(record, "python -m tuner.run --stage all")
    assert best["measure"] == "student: test F1 of the best trial (cpu profile, 4 trials, report split)"
    assert best["value"] == 0.7912 and best["details"]["val_f1"] == 0.8123 and best["details"]["search_minutes"] == 5
    members = [{"name": "1.20M-L1-E32-abc", "test_f1": 0.7, "val_f1": 0.72, "parameters": 1_200_000},
               {"name": "3.00M-L2-E64-def", "test_f1": 0.75, "val_f1": 0.77, "parameters": 3_000_000}]
    front = run_figures(dict(record, pareto=members), "python -m tuner.run --stage student --objectives f1,params")
    assert [e["measure"].split(" (")[0] for e in front] == ["student front member 1.20M-L1-E32",
                                                           "student front member 3.00M-L2-E64"]
    assert [e["value"] for e in front] == [0.7, 0.75]
    volume = {"val": 0.61, "test": 0.58, "reference": [1.0, 0.0]}
    *_, hypervolume = run_figures(dict(record, pareto=members, hypervolume=volume), "python -m tuner.run")
    assert hypervolume["measure"].startswith("student front hypervolume") and hypervolume["value"] == 0.58
    assert hypervolume["details"]["val"] == 0.61 and hypervolume["details"]["members"] == 2
    # another --search-seed over the same split: its figures stand beside the first draw's instead of replacing them
    (drawn,) = run_figures(dict(record, search_seed=1), "python -m tuner.run --stage all --search-seed 1")
    assert drawn["measure"] == "student: test F1 of the best trial (cpu profile, 4 trials, report split, search seed 1)"
    assert run_figures(dict(record, search_seed=0), "python -m tuner.run")[0]["measure"] == best["measure"]


def test_every_figure_a_run_makes_can_be_recorded(tmp_path):
    """What ``tuner.run --record`` does after a search: all of a front's figures pass ``figures.record``'s checks
    (a figure without a unit was refused after a 40-trial front search had finished, and nothing was written)."""
    from tuner.run import run_figures

    record = {"stage": "student", "profile": "cpu", "trials": 40, "split": "report", "test_f1": 0.85,
              "val_f1": 0.87, "parameters": 10_000_000, "search_wall_seconds": 600.0, "seed": 0, "data": "d",
              "pareto": [{"name": "1.20M-L1-E32-abc", "test_f1": 0.7, "val_f1": 0.72, "parameters": 1_200_000}],
              "hypervolume": {"val": 0.61, "test": 0.58, "reference": [1.0, 0.0]}}
    entries = run_figures(record, "python -m tuner.run --stage student --objectives f1,params")
    assert len(figures.record(entries, tmp_path / "benchmarks.json")) == 2


def test_deploy_figures_compare_int8_with_pytorch_float32():
    from tuner.deploy import deploy_figures

    formats = {"pytorch_float32": {"bytes": 26_000_000, "latency": {"batch_1_median_ms": 4.0}, "validation": 0.8,
                                   "test": 0.79},
               "onnx_int8": {"bytes": 6_500_000, "latency": {"batch_1_median_ms": 1.0}, "validation": 0.799,
                             "test": 0.786, "quantization": "int8"}}
    report = {"stage": "student", "model": "results/student/best", "threads": 2, "parameters": 6_500_000,
              "formats": formats}
    size, latency, f1 = deploy_figures(report, "python -m tuner.deploy --stage all")
    assert (size["value"], size["met"]) == (4.0, True)
    assert (latency["value"], latency["met"]) == (4.0, True)
    assert (f1["value"], f1["met"]) == (-0.4, False) and f1["details"]["validation_points"] == -0.1
    assert deploy_figures(dict(report, formats={"pytorch_float32": formats["pytorch_float32"]}), "x") == []


def test_the_readme_and_the_code_say_what_is_true_today_without_dates():
    """History goes to CHANGELOG.md, docs/ and bench/history/; the README, tuner/ and the search spaces carry no
    dated prose (the figures' dates are in results/benchmarks.md)."""
    import re

    date = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    files = [ROOT / "README.md", *(ROOT / "tuner").rglob("*.py"), *(ROOT / "search_spaces").rglob("*.yaml")]
    dated = [f"{path.relative_to(ROOT)}:{number}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1) if date.search(line)]
    assert not dated, dated
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def member_figure(name: str, parameters: int, f1: float, where: str = "cpu profile, 40 trials, report split"):
    return figures.headline(figures.front_member("student", name, where), f1, "F1",
                            "python -m tuner.run --stage student --objectives f1,params", parameters=parameters)


def test_a_new_front_replaces_every_member_of_the_last_one(tmp_path):
    path = tmp_path / "benchmarks.json"
    other = member_figure("L1-E64", 3_000_000, 0.70, where="cpu profile, 8 trials, report split")
    figures.record([member_figure("L1-E64", 3_000_000, 0.71), member_figure("L3-E64", 5_000_000, 0.75), other,
                    figures.headline("teacher: test F1", 0.81, "F1", "python -m tuner.run --stage teacher")], path)
    merged = figures.record([member_figure("L1-E64", 3_000_000, 0.72), member_figure("L2-E96", 4_000_000, 0.74)], path)
    assert [(e["measure"].split(" (")[0], e["value"]) for e in merged] == [
        ("student front member L1-E64", 0.72), ("student front member L1-E64", 0.70), ("teacher: test F1", 0.81),
        ("student front member L2-E96", 0.74)]  # L3-E64 belonged to the replaced front; the 8-trial front stays


def test_the_readme_gives_a_front_one_row_smallest_member_first():
    entries = [member_figure("L3-E64", 5_000_000, 0.75), figures.headline("teacher: test F1", 0.81, "F1", "x"),
               member_figure("L1-E64", 3_000_000, 0.71)]
    rows = headlines.readme_rows(entries)
    assert len(rows) == 2
    front = next(row for row in rows if "front" in row[0])
    assert front[0] == "student front members (cpu profile, 40 trials, report split): parameters, test F1"
    for entry in entries:  # tuner.run --record gives each member the search's minutes
        entry.setdefault("details", {})["search_minutes"] = 44.6
    assert headlines.readme_rows(entries)[0][0] == ("student front members (cpu profile, 40 trials, report split, a "
                                                    "44.6-minute search): parameters, test F1")
    assert front[1] == "L1-E64 3.0M 0.7100; L3-E64 5.0M 0.7500"


def test_figures_one_run_wrote_about_one_subject_share_a_row():
    deploy = "python -m tuner.deploy --stage student"
    entries = [figures.headline("int8 size (student best)", 3.9, "x", deploy, goal=">= 3.5x", met=True),
               figures.headline("int8 test F1 minus float's (student best)", -0.55, " points", deploy,
                                goal=">= -0.3 points", met=False),
               figures.headline("int8 size (student best)", 3.2, "x", "python -m tuner.deploy --stage all"),
               figures.headline("teacher: test F1", 0.81, "F1", "x")]
    entries[2]["measure"] = "int8 size (teacher best)"
    rows = headlines.readme_rows(entries)
    assert rows[0] == ("student best", "int8 size: 3.9x (goal >= 3.5x: met); int8 test F1 minus float's: "
                       "-0.55 points (goal >= -0.3 points: missed)", "1 of 2 met", entries[0]["commit"])
    assert [row[0] for row in rows[1:]] == ["int8 size (teacher best)", "teacher: test F1"]  # alone: as measured


def test_a_pipelines_row_gives_its_stages_search_minutes_summed():
    run = "python -m tuner.run --stage all --trials 4"
    entries = [figures.headline(f"{stage}: test F1 (cpu profile, 4 trials)", f1, "F1", run, search_minutes=minutes)
               for stage, f1, minutes in (("teacher", 0.81, 14.1), ("student", 0.8, 9.1))]
    assert headlines.readme_rows(entries)[0][0] == "cpu profile, 4 trials, 23 minutes of search"
    entries[1]["details"] = {}  # a stage without its minutes: no sum
    assert headlines.readme_rows(entries)[0][0] == "cpu profile, 4 trials"


def test_rows_never_group_figures_without_a_subject_or_across_peers():
    student = [figures.headline("distillation F1 minus the peer's", v, " points", "python bench/student.py",
                                peer=peer) for v, peer in ((0.1, "default"), (0.2, "tuned"))]
    peers = [figures.headline("teacher search speed (real tokens/s)", v, "x", "python bench/run_benchmarks.py",
                              peer=peer, goal=">= 2x", met=None) for v, peer in ((2.5, "default"), (1.1, "tuned"))]
    peers.append(figures.headline("epoch speed (real tokens/s)", 1.3, "x", "python bench/run_benchmarks.py",
                                  peer="default", goal=">= 2x", met=False))
    rows = headlines.readme_rows(student + peers)
    assert [row[1] for row in rows if row[0].startswith("distillation")] == ["+0.1 points", "+0.2 points"]
    grouped = [row for row in rows if row[0] == "real tokens/s"]
    assert len(grouped) == 1 and grouped[0][2] == "0 of 2 met" and "(goal >= 2x: ?)" in grouped[0][1]
    assert any(row[1] == "1.1x" for row in rows)  # the tuned peer's figure keeps a row of its own


def test_a_ratio_measured_at_an_f1_difference_shows_it():
    ratio = figures.headline("student trial (against the tuned peer)", 2.33, "x", "python -m bench peers",
                             peer="tuned", f1_points=-0.12)
    assert headlines.value_text(ratio) == "2.33x at -0.12 F1 points"
    assert headlines.value_text(dict(ratio, details={})) == "2.33x"
    for value, shown in ((0.24, "+0.24 points"), (-0.09, "-0.09 points")):  # an int8 F1 difference, signed
        assert headlines.value_text(figures.headline("int8 test F1 minus float32's", value, "points", "c")) == shown


def test_a_front_member_without_its_size_sorts_last():
    sized = member_figure("L1-E64", 3_000_000, 0.71)
    unsized = member_figure("L2-E64", 0, 0.73)
    unsized.pop("details", None)
    assert headlines.readme_rows([unsized, sized])[0][1] == "L1-E64 3.0M 0.7100; L2-E64 ? 0.7300"
