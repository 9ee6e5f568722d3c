"""bench/search_efficiency.py check: a real search's trial folders against a table and its replay."""

from __future__ import annotations

import json
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))


def test_check_compares_each_real_trial_with_its_nearest_recorded_config(tmp_path, capsys):
    from bench import search_efficiency

    table = search_efficiency.synthetic_table("teacher", 8, 3)
    (tmp_path / "table.json").write_text(json.dumps(table))
    search = tmp_path / "search"
    for number, index, epochs in ((1, 2, 3), (2, 5, 1)):  # a trial run to the end, one stopped at its first rung
        folder = search / f"_trial_abc{number}_{number}_learning_rate=x_2026-11-28"
        folder.mkdir(parents=True)
        recorded = table["configs"][index]
        (folder / "params.json").write_text(json.dumps(recorded["config"]))
        (folder / "result.json").write_text("\n".join(
            json.dumps({"epoch": e + 1, "val_f1": recorded["epochs"][e]["val_f1"] + 0.01}) for e in range(epochs)))
    assert search_efficiency.main(["check", "--table", str(tmp_path / "table.json"), "--search", str(search),
                                   "--output", str(tmp_path / "check.md")]) == 0
    text = (tmp_path / "check.md").read_text()
    assert "| 1 | " in text and "| #2: " in text and "| #5: " in text
    assert "Mean absolute difference over 4 epochs: 1.00 points" in text
    assert "the real search's configs map to [2, 5]" in text and "real [3, 1]" in text


def test_check_refuses_a_folder_without_trials(tmp_path, capsys):
    from bench import search_efficiency

    (tmp_path / "table.json").write_text(json.dumps(search_efficiency.synthetic_table("teacher", 4, 2)))
    status = search_efficiency.main(["check", "--table", str(tmp_path / "table.json"), "--search", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "no trial folders" in err
