"""Deployment: ONNX float32 computes what PyTorch computes, the F1 gate's decisions, int8 files that score and
shrink, tagging from an ONNX file, and bad input refused in one line with no partial deploy/ left."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_cli, run_main, snapshot, write
from tuner import deploy, onnx_io, predict
from tuner.models import cut_student, factorize, save_model


def ragged_batch(lengths, vocab=(1000, 2000)):
    ids = torch.randint(*vocab, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("kind", ["plain", "factorized", "student"])
def test_onnx_float32_logits_equal_pytorch_on_mixed_lengths(tiny_model, tmp_path, kind):
    model = {"plain": lambda m: m, "factorized": lambda m: factorize(m, 8),
             "student": lambda m: cut_student(m, 1, 8)}[kind](tiny_model).eval()
    onnx_io.export(model, tmp_path / "model.onnx")
    forward = onnx_io.forward(onnx_io.session(tmp_path / "model.onnx", threads=1))
    for lengths in ([7, 3, 12, 1], [5], [30, 30]):  # other batch sizes and lengths than the export's example
        ids, mask = ragged_batch(lengths)
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
        got = forward(ids, mask)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_int8_is_smaller_and_close(tiny_model, tmp_path):
    onnx_io.export(tiny_model.eval(), tmp_path / "model.onnx")
    ids, mask = ragged_batch([9, 4, 6])
    reference = onnx_io.forward(onnx_io.session(tmp_path / "model.onnx", 1))(ids, mask)
    for how in onnx_io.QUANTIZATIONS:
        out = tmp_path / "int8.onnx"
        onnx_io.quantize(tmp_path / "model.onnx", out, how)
        ratio = (tmp_path / "model.onnx").stat().st_size / out.stat().st_size
        # the tiny model's weights are mostly its 30522 x 32 word embeddings: int8 there is what shrinks it
        assert ratio > (3 if "word_embeddings" not in how.keep_float else 1), (how.name, ratio)
        got = onnx_io.forward(onnx_io.session(out, 1))(ids, mask)
        assert (got - reference).abs().max() < 0.05 * reference.abs().max() + 0.01, how.name


def test_gate_tries_in_order_until_one_keeps_f1():
    hows = [SimpleNamespace(name=f"q{i}", record=lambda i=i: {"name": f"q{i}"}) for i in range(3)]
    f1s = {"q0": 0.800, "q1": 0.806, "q2": 0.810}
    made = []

    def quantized(how):
        made.append(how.name)
        return SimpleNamespace(stat=lambda: SimpleNamespace(st_size=10)), {"validation": f1s[how.name], "test": 0.7}

    tries, chosen = deploy.gate(0.812, hows, quantized, max_f1_drop=0.3)
    assert [t["passed"] for t in tries] == [False, False, True] and chosen[2].name == "q2"
    assert [round(t["drop_points"], 6) for t in tries] == [1.2, 0.6, 0.2]
    made.clear()
    tries, chosen = deploy.gate(0.812, hows, quantized, max_f1_drop=0.1)  # none keeps 0.1 points
    assert chosen is None and len(tries) == 3 and made == ["q0", "q1", "q2"]
    tries, chosen = deploy.gate(0.700, hows, quantized, max_f1_drop=0.0)  # the first that passes ends the tries
    assert len(tries) == 1 and chosen[2].name == "q0"


@pytest.mark.parametrize("case", ["negative_drop", "not_searched", "not_a_model", "no_result", "corrupt_onnx"])
def test_bad_input_is_one_line_and_leaves_no_deploy(case, tmp_path, tiny_model, tokenizer, capsys):
    results = tmp_path / "results"
    best = results / "student" / "best"
    write(results / "README.md", "kept\n")
    args = ["--results-dir", results, "--stage", "student"]
    if case == "negative_drop":
        args += ["--max-f1-drop", "-0.1"]
    elif case == "not_a_model":
        write(best / "config.json", "{}")
    elif case == "no_result":
        save_model(tiny_model, best, tokenizer)
    before = snapshot(results)
    if case == "corrupt_onnx":
        write(tmp_path / "deploy" / "model.onnx", "not a protobuf")
        status, _, err = run_main(predict.main, "--model", tmp_path / "deploy" / "model.onnx", "EU rejects it",
                                  capsys=capsys)
    else:
        status, _, err = run_main(deploy.main, *args, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    expected = {"negative_drop": "--max-f1-drop", "not_searched": "results/student/best: no such folder",
                "not_a_model": "not a saved model", "no_result": "no result.json",
                "corrupt_onnx": "model.onnx: not a valid ONNX model"}[case]
    assert expected in err, err
    assert snapshot(results) == before and not (results / "student" / "deploy").exists()


@pytest.fixture(scope="module")
def searched_teacher(tmp_path_factory, conll_dir):
    """A real searched teacher: the packaged MiniLM, one trial on a few hundred sentences (it learns entities,
    so quantization has F1 to lose)."""
    results = tmp_path_factory.mktemp("deploy") / "results"
    proc = run_cli("--stage", "teacher", "--trials", 1, "--profile", "smoke", "--model", "minilm", "--epochs", 2,
                   "--train-sentences", 400, "--eval-sentences", 150, "--test-sentences", 150, "--data", conll_dir,
                   "--results-dir", results, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results


@pytest.mark.slow
def test_deploy_writes_scored_files_and_the_gate_refuses_a_tiny_drop(searched_teacher):
    results = searched_teacher
    proc = run_cli("--results-dir", results, "--stage", "teacher", "--latency-sentences", 20, module="tuner.deploy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = results / "teacher" / "deploy"
    report = json.loads((folder / "deploy.json").read_text())
    record = json.loads((results / "teacher" / "best" / "result.json").read_text())
    formats = report["formats"]
    assert set(formats) == {"pytorch_float32", "onnx_float32", "onnx_int8"} and report["int8_passed"]
    assert formats["pytorch_float32"]["validation"] > 0.3  # it learned entities
    assert formats["onnx_float32"]["validation"] == pytest.approx(formats["pytorch_float32"]["validation"], abs=1e-4)
    assert formats["onnx_float32"]["test"] == pytest.approx(formats["pytorch_float32"]["test"], abs=1e-4)
    # the search scored its best model at its own precision; float32 scoring is within a point of it
    assert formats["pytorch_float32"]["test"] == pytest.approx(record["test_f1"], abs=0.01)
    int8 = formats["onnx_int8"]
    assert int8["validation"] >= formats["pytorch_float32"]["validation"] - 0.003
    assert formats["onnx_float32"]["bytes"] / int8["bytes"] > 3
    for name, found in formats.items():
        timing = found["latency"]
        assert 0 < timing["batch_1_median_ms"] <= timing["batch_1_p95_ms"], name
        assert timing["batch_32_sentences_per_second"] > 0 and timing["sentences"] == 20
    assert report["threads"] >= 1 and report["cpu"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "deploy.json", "model.int8.onnx", "model.onnx", "tokenizer.json", "tokenizer_config.json"])
    assert "| teacher | onnx_int8 |" in (results / "summary.md").read_text()

    # the same entities from the float ONNX file as from the PyTorch folder; from the int8 file, nearly all
    lines = ["EU rejects German call to boycott British lamb .", "Peter Blackburn", "BRUSSELS 1996-08-22",
             "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said ."]
    from_folder = predict.tag_lines(results / "teacher" / "best", lines)
    assert any(from_folder) and predict.tag_lines(folder / "model.onnx", lines) == from_folder

    def spans(tagged):
        return {(line, e["type"], e["words"]) for line, entities in enumerate(tagged) for e in entities}

    int8_spans, folder_spans = spans(predict.tag_lines(folder / "model.int8.onnx", lines)), spans(from_folder)
    assert len(int8_spans & folder_spans) >= 0.8 * len(int8_spans | folder_spans), (int8_spans, folder_spans)
    proc = run_cli("--model", folder / "model.int8.onnx", *lines[:2], module="tuner.predict")
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == lines[0], proc.stderr

    # a gate no int8 model can pass: every try recorded, the float model kept alone, exit 1
    proc = run_cli("--results-dir", results, "--stage", "teacher", "--latency-sentences", 5, "--max-f1-drop", 0,
                   module="tuner.deploy")
    report = json.loads((folder / "deploy.json").read_text())
    drops = [t["drop_points"] for t in report["int8_tries"]]
    assert proc.returncode == 1 and "kept the float32 ONNX model only" in proc.stdout, proc.stdout + proc.stderr
    assert len(drops) == len(onnx_io.QUANTIZATIONS) and min(drops) > 0 and not report["int8_passed"]
    assert not (folder / "model.int8.onnx").exists() and (folder / "model.onnx").is_file()
    assert "onnx_int8" not in report["formats"] and not list(Path(folder.parent).glob("deploy.partial"))
