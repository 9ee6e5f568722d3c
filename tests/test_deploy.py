"""Deployment: ONNX float32 computes what PyTorch computes, the F1 gate's decisions, int8 files that score and
shrink, tagging from an ONNX file, and bad input refused in one line with no partial deploy/ left."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch

from tests.conftest import copied, run_cli, run_main, snapshot, write
from tuner import deploy, onnx_io, predict
from tuner.int8 import QUANTIZATION_AWARE
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
    onnx_io.prepare(tmp_path / "model.onnx", tmp_path / "prepared.onnx")
    modules = onnx_io.quantizable_nodes(tmp_path / "prepared.onnx", tmp_path / "model.onnx")
    kept = tuple(node for node, module in modules.items() if module in ("classifier", "bert.embeddings.word_embeddings"))
    assert len(kept) == 2
    calibration = [dict(zip(onnx_io.INPUTS, ragged_batch([9, 4, 6, 5, 8, 3])))]  # as tuner.int8 calibrates: one batch
    for how in (*onnx_io.RECIPES, *onnx_io.STATIC_RECIPES,
                dataclasses.replace(onnx_io.RECIPES[0], name="kept", keep_nodes=kept)):
        out = tmp_path / "int8.onnx"
        onnx_io.quantize(tmp_path / "model.onnx", out, how, calibration=calibration)
        ratio = (tmp_path / "model.onnx").stat().st_size / out.stat().st_size
        # the tiny model's weights are mostly its 30522 x 32 word embeddings: int8 there is what shrinks it
        assert ratio > (3 if not how.keep_nodes else 1), (how.name, ratio)
        got = onnx_io.forward(onnx_io.session(out, 1))(ids, mask)
        # static int8 also rounds every MatMul's activations to calibrated ranges: coarser on this random model
        tolerance = 0.15 if how.calibration else 0.05
        assert (got - reference).abs().max() < tolerance * reference.abs().max() + 0.01, how.name


def test_kept_nodes_with_int8_weights_compute_in_float32_from_a_quarter_of_the_bytes(tiny_model, tmp_path):
    """A fallback that keeps every encoder MatMul out of quantization, its weights still int8: the kept nodes
    read their weight through a DequantizeLinear of an int8 initializer (their activations are not quantized), the
    file is smaller than the float32 fallback's by nearly 3 bytes per kept weight, and its logits stay as close
    to the float model's as the float32 fallback's do."""
    onnx_io.export(tiny_model.eval(), tmp_path / "model.onnx")
    onnx_io.prepare(tmp_path / "model.onnx", tmp_path / "prepared.onnx")
    modules = onnx_io.quantizable_nodes(tmp_path / "prepared.onnx", tmp_path / "model.onnx")
    kept = tuple(node for node, module in modules.items() if module.startswith("bert.encoder."))
    assert len(kept) == 12  # 2 layers x (query, key, value, attention output, intermediate, output)
    ids, mask = ragged_batch([9, 4, 6])
    reference = onnx_io.forward(onnx_io.session(tmp_path / "model.onnx", 1))(ids, mask)
    files, logits = {}, {}
    for int8_weights in (False, True):
        how = dataclasses.replace(onnx_io.RECIPES[1], name="kept", keep_nodes=kept, int8_weights=int8_weights)
        files[int8_weights] = tmp_path / f"int8-{int8_weights}.onnx"
        onnx_io.quantize(tmp_path / "model.onnx", files[int8_weights], how, prepared=tmp_path / "prepared.onnx")
        logits[int8_weights] = onnx_io.forward(onnx_io.session(files[int8_weights], 1))(ids, mask)
        assert how.record()["float32_node_weights"] == ("int8" if int8_weights else "float32")
    graph = onnx.load(str(files[True])).graph
    int8_initializers = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    by_name = {node.name: node for node in graph.node}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"
                   and node.input[0] in int8_initializers}
    assert all(by_name[node].op_type == "MatMul" and by_name[node].input[1] in dequantized for node in kept)
    weights = sum(p.numel() for name, p in tiny_model.named_parameters() if name.startswith("bert.encoder.")
                  and name.endswith(("dense.weight", "query.weight", "key.weight", "value.weight")))
    saved = files[False].stat().st_size - files[True].stat().st_size
    assert 2.5 * weights < saved < 3 * weights, (saved, weights)  # less the scales, zero points and names
    errors = {k: float((v - reference).abs().max()) for k, v in logits.items()}
    assert errors[True] < 2 * errors[False] + 0.01 * float(reference.abs().max()), errors


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


@pytest.mark.parametrize("case", ["negative_drop", "negative_qat_epochs", "not_searched", "not_a_model", "no_result",
                                  "corrupt_onnx"])
def test_bad_input_is_one_line_and_leaves_no_deploy(case, tmp_path, tiny_model, tokenizer, capsys):
    results = tmp_path / "results"
    best = results / "student" / "best"
    write(results / "README.md", "kept\n")
    args = ["--results-dir", results, "--stage", "student"]
    if case == "negative_drop":
        args += ["--max-f1-drop", "-0.1"]
    elif case == "negative_qat_epochs":
        args += ["--qat-epochs", "-1"]
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
    expected = {"negative_drop": "--max-f1-drop", "negative_qat_epochs": "--qat-epochs", "not_searched": "results/student/best: no such folder",
                "not_a_model": "not a saved model", "no_result": "no result.json",
                "corrupt_onnx": "model.onnx: not a valid ONNX model"}[case]
    assert expected in err, err
    assert snapshot(results) == before and not (results / "student" / "deploy").exists()


@pytest.fixture
def searched_teacher(minilm_run, tmp_path):
    """A real searched teacher, copied: the MiniLM pipeline's (it learns entities, so quantization has F1 to
    lose), its 100 validation and 60 test sentences."""
    results, _ = minilm_run
    return copied(results, tmp_path / "results", "teacher/best")


@pytest.mark.slow
def test_deploy_writes_scored_files_and_the_gate_refuses_a_tiny_drop(searched_teacher, monkeypatch, capsys):
    results = searched_teacher
    proc = run_cli("--results-dir", results, "--stage", "teacher", "--latency-sentences", 20, "--gate-sentences", 100,
                   module="tuner.deploy")
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
    for split in ("validation", "test"):  # the paired bootstrap interval of int8's F1 minus float32's
        difference = report["int8_minus_float32_f1"][split]
        assert difference["low"] <= difference["points"] <= difference["high"]
        assert difference["sentences"] == {"validation": 100, "test": 60}[split]
        assert difference["points"] == pytest.approx(100 * (int8[split] - formats["pytorch_float32"][split]), abs=1e-3)
    assert "100 sentences" in report["gate"] and all("batch_1_median_ms" in t for t in report["int8_tries"])
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

    # nothing passes (no fallback after the recipes: their order is tested on a planted model; the
    # quantization-aware copy here the model itself, exported unchanged, so it fails as the recipes do): every
    # try recorded, the float model kept alone, nothing of the copy left, exit 1
    monkeypatch.setattr("tuner.int8.fallback_sizes", lambda count: iter(()))
    monkeypatch.setattr(onnx_io, "STATIC_RECIPES", onnx_io.STATIC_RECIPES[:1])  # every calibrator: the fast tests

    def unchanged(self, model, task, tokenizer, path, prepared):
        onnx_io.export(model, path)
        onnx_io.prepare(path, prepared)
        return {"epochs": self.epochs, "stub": True}

    monkeypatch.setattr(deploy.Tuning, "fine_tuned", unchanged)
    real_gate = deploy.gate  # and a gate no try can pass, whatever this model's int8 happens to score
    monkeypatch.setattr(deploy, "gate", lambda baseline, quantizations, quantized, _: real_gate(
        baseline, quantizations, quantized, -100.0))
    status, out, err = run_main(deploy.main, "--results-dir", results, "--stage", "teacher", "--latency-sentences",
                                5, "--max-f1-drop", 0, "--gate-sentences", 100, capsys=capsys)
    report = json.loads((folder / "deploy.json").read_text())
    assert status == 1 and "kept the float32 ONNX model only" in out, out + err
    assert "quantization-aware fine-tuning for 1 epoch(s)" in out
    tries, recipes, static = report["int8_tries"], len(onnx_io.RECIPES), len(onnx_io.STATIC_RECIPES)
    assert [t["source"] for t in tries] == ["searched"] * (recipes + static) + [QUANTIZATION_AWARE] * recipes
    assert [t["activations"] for t in tries[recipes:recipes + static]] == ["static, minmax calibration"]
    assert [t["validation_f1"] for t in tries[recipes + static:]] == [t["validation_f1"] for t in tries[:recipes]]
    assert report["quantization_aware"] == {"epochs": 1, "stub": True} and not report["int8_passed"]
    assert report["sensitivity"] == [] and not any(t["passed"] for t in tries)
    assert not (folder / "model.int8.onnx").exists() and (folder / "model.onnx").is_file()
    assert not [p for p in folder.iterdir() if "fine-tuned" in p.name or p.name.startswith(("try-", "prepared"))]
    assert "onnx_int8" not in report["formats"] and not list(Path(folder.parent).glob("deploy.partial"))


def test_the_fallback_search_keeps_exactly_the_planted_sensitive_layer(tiny_model, tokenizer, conll_dir, tmp_path):
    """The classifier given an outlier weight on a feature the last LayerNorm zeroes (so float32 logits do not
    change, while per-tensor and per-channel int8 scales are blown in every output row and its other weights round
    to 0): every whole-model recipe fails the gate, the sensitivity ranking puts the classifier first, and the
    search passes by keeping exactly it in float32, after every fallback that keeps the kept nodes' weights in int8
    failed. Between the recipes and the fallbacks, the recipes are tried on the copy that quantization-aware
    fine-tuning makes (once, when first needed), which keeps the outlier (its feature stays zero) and fails too.
    The gate here scores a candidate by its relative logit error on the calibration sentences (1 point = 1%).
    Planted in an inner layer, the same outlier moves a random tiny model's logits too little to fail any gate."""
    import copy

    from tuner import qat
    from tuner.config import TrainSettings
    from tuner.data import CONLL_LABELS, TaskData, encode, read_conll
    from tuner.int8 import QUANTIZATION_AWARE, FallbackSearch, logit_error

    model = tiny_model.eval()
    planted = "classifier"
    with torch.no_grad():
        norm = model.bert.encoder.layer[-1].output.LayerNorm
        norm.weight[5], norm.bias[5] = 0.0, 0.0
        model.classifier.weight[:, 5] = 1000.0
    onnx_io.export(model, tmp_path / "model.onnx")
    onnx_io.prepare(tmp_path / "model.onnx", tmp_path / "prepared.onnx")
    train = encode(read_conll(conll_dir / "train.txt")[:64], tokenizer, list(CONLL_LABELS), 48)
    task = TaskData(list(CONLL_LABELS), train, train, train, tokenizer.pad_token_id, "mem")
    made = []

    def fine_tuned():
        tuned = copy.deepcopy(model)
        hyperparameters = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0}
        made.append(qat.fine_tune(tuned, None, 1e-3, hyperparameters, task, TrainSettings(
            epochs=1, batch_size=16, eval_batch_size=64, seed=0, threads=1)))
        onnx_io.export(tuned, tmp_path / "tuned.onnx")
        onnx_io.prepare(tmp_path / "tuned.onnx", tmp_path / "tuned-prepared.onnx")
        return (tmp_path / "tuned.onnx", tmp_path / "tuned-prepared.onnx",
                onnx_io.forward(onnx_io.session(tmp_path / "tuned.onnx", 1)))

    search = FallbackSearch(tmp_path / "model.onnx", tmp_path / "prepared.onnx",
                            onnx_io.forward(onnx_io.session(tmp_path / "model.onnx", 1)), task, 1, fine_tuned)
    batches = search.calibration()
    reference = search.logits(search.sources[""][2], batches)

    def quantized(how):
        candidate = tmp_path / f"try-{len(search.tried)}.onnx"
        source, prepared, _ = search.sources[how.source]
        onnx_io.quantize(source, candidate, how, prepared=prepared, calibration=batches)
        error = logit_error(reference, search.logits(onnx_io.forward(onnx_io.session(candidate, 1)), batches))
        return candidate, {"validation": 1 - error, "test": 1 - error}

    tries, chosen = deploy.gate(1.0, search.candidates(), search.remembering(quantized), max_f1_drop=1.0)
    searched, aware = len(onnx_io.RECIPES) + len(onnx_io.STATIC_RECIPES), len(onnx_io.RECIPES)  # then QAT's copy
    whole = searched + aware
    assert [t["source"] for t in tries[:whole]] == ["searched"] * searched + [QUANTIZATION_AWARE] * aware
    assert [t["passed"] for t in tries[:whole]] == [False] * whole and len(made) == 1
    assert search.ranked[0][1] == planted, search.ranked[:3]
    assert chosen is not None and chosen[2].keep_nodes == (search.ranked[0][0],), [t["name"] for t in tries]
    assert tries[-1]["float32_nodes"] == [search.ranked[0][0]] and planted in tries[-1]["name"]
    # before it, the same fallbacks with their weights still int8 (the outlier is a weight here): each failed
    fallbacks = tries[whole:]
    assert [t["float32_node_weights"] for t in fallbacks] == ["int8"] * (len(fallbacks) - 1) + ["float32"]
    assert len(fallbacks) > 2 and not any(t["passed"] for t in fallbacks[:-1])


def test_paired_bootstrap_matches_seqeval_and_brackets_the_difference():
    """The per-sentence counts sum to seqeval's corpus F1; identical predictions differ by exactly 0; a candidate
    that drops one entity of many differs by a small negative amount inside its interval."""
    from tuner.int8 import entity_counts, micro_f1, paired_bootstrap
    from tuner.metrics import entity_scores

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"], ["B-MISC", "O", "O"]] * 20
    baseline = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"], ["B-MISC", "O", "B-LOC"]] * 20
    candidate = [list(s) for s in baseline]
    candidate[0] = ["B-PER", "O", "O", "B-LOC"]  # one entity cut short
    for predicted in (baseline, candidate):
        assert micro_f1(entity_counts(gold, predicted).sum(axis=0)) == pytest.approx(
            entity_scores(gold, predicted)["f1"])
    same = paired_bootstrap(gold, baseline, baseline, rounds=200)
    assert same["points"] == same["low"] == same["high"] == 0
    found = paired_bootstrap(gold, baseline, candidate, rounds=200)
    expected = 100 * (entity_scores(gold, candidate)["f1"] - entity_scores(gold, baseline)["f1"])
    assert found["points"] == pytest.approx(expected, abs=1e-3) and found["points"] < 0
    assert found["low"] <= found["points"] <= found["high"] and found["sentences"] == 60
