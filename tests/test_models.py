"""Factorized embedding against the truncated SVD, student cutting, the safetensors round trip, and fit's
checkpoints and precision."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tuner.models import (FactorizedEmbedding, count_parameters, cut_student, embedding_svd, factorize, keep_layers,
                          load_model, save_model, student_parameters, student_shape)


def test_full_rank_factorization_equals_the_matrix():
    torch.manual_seed(0)
    weight = torch.randn(50, 12)
    left, right = embedding_svd(weight)
    module = FactorizedEmbedding.from_svd(left, right, factor_dim=12)
    product = module.project(module.lookup.weight)  # V x E -> V x H
    assert torch.allclose(product, weight, atol=1e-5)


def test_truncated_factorization_is_eckart_young_optimal():
    torch.manual_seed(1)
    weight = torch.randn(80, 16)
    singular_values = torch.linalg.svdvals(weight)  # computed independently of the module
    for rank in (1, 4, 9):
        module = FactorizedEmbedding.from_svd(*embedding_svd(weight), factor_dim=rank)
        error = torch.linalg.norm(weight - module.project(module.lookup.weight)) ** 2
        optimal = (singular_values[rank:] ** 2).sum()
        assert torch.allclose(error, optimal, rtol=1e-4)
        assert count_parameters(module) == 80 * rank + rank * 16


def test_factorized_lookup_matches_rows(tiny_model):
    ids = torch.tensor([[101, 2054, 102]])
    original = tiny_model.get_input_embeddings()(ids)
    factorize(tiny_model, factor_dim=32)  # full rank of the 32-wide tiny model
    assert torch.allclose(tiny_model.get_input_embeddings()(ids), original, atol=1e-4)
    assert tiny_model.config.factor_dim == 32


def test_round_trip_gives_identical_logits(tiny_model, tmp_path, tokenizer):
    factorize(tiny_model, factor_dim=8)
    tiny_model.eval()
    ids = torch.tensor([[101, 7327, 19164, 102]])
    before = tiny_model(input_ids=ids).logits
    save_model(tiny_model, tmp_path / "m", tokenizer)
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded(input_ids=ids).logits, before)
    assert loaded.config.factor_dim == 8
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))


def test_keep_layers_every_kth():
    assert keep_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert keep_layers(6, 2) == [2, 5]
    assert keep_layers(6, 6) == list(range(6))


def test_keep_layers_reach():
    """``reach`` moves the top kept layer from the student's own depth (0: the bottom layers) to the teacher's top."""
    assert keep_layers(6, 2, reach=0.0) == [0, 1]
    assert keep_layers(6, 1, reach=0.0) == [0] and keep_layers(6, 1, reach=1.0) == [5]
    assert keep_layers(6, 2, reach=0.5) == [1, 3]  # top kept layer 4 of 6
    assert keep_layers(12, 6, reach=0.5) == [1, 2, 3, 5, 7, 8]
    assert keep_layers(6, 6, reach=0.0) == keep_layers(6, 6, reach=1.0) == list(range(6))
    with pytest.raises(ValueError, match="layer_reach 1.5"):
        keep_layers(6, 2, reach=1.5)


def test_cut_student_keeps_the_bottom_layers_at_reach_0(tiny_model):
    student = cut_student(tiny_model, num_layers=1, factor_dim=16, reach=0.0)
    bottom = tiny_model.base_model.encoder.layer[0].output.dense.weight
    assert torch.equal(student.base_model.encoder.layer[0].output.dense.weight, bottom)
    assert not torch.equal(bottom, tiny_model.base_model.encoder.layer[1].output.dense.weight)


def test_student_size_and_layers(tiny_model):
    predicted = student_parameters(tiny_model, num_layers=1, factor_dim=16)
    student = cut_student(tiny_model, num_layers=1, factor_dim=16)
    assert count_parameters(student) == predicted < count_parameters(tiny_model)
    assert len(student.base_model.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    top = tiny_model.base_model.encoder.layer[1].output.dense.weight
    assert torch.equal(student.base_model.encoder.layer[0].output.dense.weight, top)
    layers, dim = student_shape(tiny_model, max_params=300_000)
    assert student_parameters(tiny_model, layers, dim) <= 300_000


def test_checkpoint_resume_repeats_an_uninterrupted_run(tokenizer, tmp_path):
    """Two epochs straight equal one epoch, a checkpoint through safetensors, and a resumed second epoch."""
    from tuner.config import TrainSettings
    from tuner.data import CONLL_LABELS, Sentence, TaskData, encode
    from tuner.models import ModelState, initial_token_classifier, model_from_state
    from tuner.errors import TunerError
    from tuner.models import WEIGHTS_FILE
    from tuner.training import OPTIMIZER_FILE, fit, save_checkpoint

    labels = list(CONLL_LABELS)
    sentences = [Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
                 Sentence(("Peter", "Blackburn", "said"), ("B-PER", "I-PER", "O"))] * 6
    data = encode(sentences, tokenizer, labels, 16, "all")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    state = ModelState.of(initial_token_classifier("tiny", labels, seed=0, vocab_size=len(tokenizer)))
    settings = TrainSettings(epochs=2, batch_size=4, eval_batch_size=8, seed=0, threads=1)
    hparams = {"learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.2}

    results = list(fit(model_from_state(state), hparams, task, settings))  # every result holds the one model
    straight = [r.metrics["train_loss"] for r in results]
    straight_weights = results[-1].model.state_dict()
    first = next(fit(model_from_state(state), hparams, task, settings))
    save_checkpoint(tmp_path, first)
    (resumed,) = list(fit(model_from_state(state), hparams, task, settings, resume=tmp_path))
    assert resumed.epoch == 1
    assert resumed.metrics["train_loss"] == straight[1]
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, straight_weights[name]), name

    # a last epoch's checkpoint leaves AdamW's moments out: it ends a trial, and cannot continue one
    final = tmp_path / "final"
    save_checkpoint(final, results[-1], optimizer=False)
    assert not (final / OPTIMIZER_FILE).exists() and (final / WEIGHTS_FILE).is_file()
    assert list(fit(model_from_state(state), hparams, task, settings, resume=final)) == []
    with pytest.raises(TunerError, match="no optimizer state"):
        next(fit(model_from_state(state), hparams, task, dataclasses.replace(settings, epochs=3), resume=final))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_setting_trains_with_float32_weights(tokenizer, tmp_path, precision):
    """bf16 autocast runs the matmuls in bf16 yet keeps weights, optimizer state and checkpoints float32."""
    from safetensors.torch import load_file

    from tuner.config import TrainSettings
    from tuner.data import CONLL_LABELS, Sentence, TaskData, encode
    from tuner.models import initial_token_classifier
    from tuner.training import OPTIMIZER_FILE, autocast, fit, save_checkpoint, uses_bf16

    labels = list(CONLL_LABELS)
    data = encode([Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O"))] * 8, tokenizer,
                  labels, 16, "all")
    task = TaskData(labels, data, data, data, tokenizer.pad_token_id, "mem")
    model = initial_token_classifier("tiny", labels, seed=0, vocab_size=len(tokenizer))
    settings = TrainSettings(epochs=1, batch_size=4, eval_batch_size=8, seed=0, threads=1, precision=precision)
    (result,) = list(fit(model, {"learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.0}, task, settings))
    assert result.metrics["bf16"] is (precision == "bf16") and math.isfinite(result.metrics["train_loss"])
    with autocast("cpu", precision):
        logits = model(input_ids=torch.tensor([data.input_ids[0]])).logits
    assert logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is torch.nn.Dropout for m in dropouts)  # fit keeps torch's (the teacher's)
    save_checkpoint(tmp_path, result)
    assert {t.dtype for t in load_file(str(tmp_path / OPTIMIZER_FILE)).values()} <= {torch.float32}
    assert uses_bf16("cpu", "fp32") is False and uses_bf16("cpu", "bf16") is True


def test_unknown_precision_is_refused():
    from tuner.config import resolve_profile
    from tuner.errors import TunerError

    with pytest.raises(TunerError, match="precision must be one of auto, fp32, bf16"):
        resolve_profile("smoke", False, precision="fp16")


def test_batches_flag_reaches_every_stage():
    from tuner import registry
    from tuner.config import train_settings
    from tuner.errors import TunerError
    from tuner.run import parser, settings_from

    default = settings_from(parser().parse_args(["--stage", "student"]), cuda_available=False).profile
    grouped = settings_from(parser().parse_args(["--stage", "all", "--batches", "length"]), False).profile
    for profile, batches in ((default, "random"), (grouped, "length")):
        for stage in registry.stages():
            assert train_settings(profile, stage.epochs(profile), 0, 1).batches == batches
    with pytest.raises(TunerError, match="batches must be one of random, length"):
        dataclasses.replace(default, batches="sorted")


def test_release_memory_frees_cycles_and_trims_where_glibc_runs(monkeypatch):
    """A reused trial process frees the previous trial's objects and trims glibc's heap before the next trial."""
    import gc
    import platform
    import weakref

    import tuner.memory
    from tuner.memory import release_memory

    trims, found = [], tuner.memory._malloc_trim()
    if found is not None:  # glibc: record the call, then trim for real
        monkeypatch.setattr(tuner.memory, "_malloc_trim", lambda: lambda pad: trims.append(pad) or found(pad))

    class Node:
        pass

    gc.disable()  # only release_memory may collect the cycle below
    try:
        first = Node()
        first.other = Node()
        first.other.other = first
        alive = weakref.ref(first)
        del first
        assert alive() is not None
        assert release_memory() is (platform.libc_ver()[0] == "glibc")
        assert alive() is None
        assert trims == ([0] if found is not None else [])  # malloc_trim(0): every free page back
    finally:
        gc.enable()


KEEP_PROBE = """
import ctypes, threading, torch
from tuner.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
kept = keep_freed_memory()
mapped = []


def allocate():
    before = mallinfo2().hblkhd
    gradient = torch.zeros(30522, 384)  # MiniLM's word-embedding gradient, 47 MB
    mapped.append(mallinfo2().hblkhd - before)
    del gradient


allocate()
trial = threading.Thread(target=allocate)  # where a Ray Tune trial trains
trial.start()
trial.join()
print(kept, *mapped)
"""


def has_mallinfo2() -> bool:
    import ctypes
    import platform

    return platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc 2.33 on


@pytest.mark.skipif(not has_mallinfo2(), reason="mallopt is glibc's, and the probe reads glibc 2.33's mallinfo2")
@pytest.mark.parametrize("setting", ["default", "0"])
def test_keep_freed_memory_serves_the_embedding_gradient_from_the_heap(setting):
    """fit's allocator setting: with it, a 47 MB tensor comes from glibc's heap (no mmap to page in again on every
    step), in the main thread and in another one; with ``TUNER_KEEP_FREED_MEMORY=0`` glibc maps it, as by
    default."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()  # glibc's defaults, glibc's allocator
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    if setting == "0":
        env["TUNER_KEEP_FREED_MEMORY"] = "0"
    else:
        env.pop("TUNER_KEEP_FREED_MEMORY", None)
    proc = subprocess.run([sys.executable, "-c", KEEP_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, *mapped = proc.stdout.split()
    assert len(mapped) == 2
    if setting == "0":
        assert kept == "False" and all(int(m) >= 30522 * 384 * 4 for m in mapped)
    else:
        assert kept == "True" and all(int(m) == 0 for m in mapped)


def test_pretrained_loading_names_only_missing_encoder_weights(tmp_path, capfd, caplog):
    """Loading a pretrained encoder says nothing of the new classifier head or an unused pooler (transformers'
    load report lists both on every load, beside a progress bar), and names in one line what the checkpoint lacks
    beyond the head."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    from tuner.data import CONLL_LABELS
    from tuner.models import initial_token_classifier

    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path)  # an encoder with a pooler, no classifier
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        model = initial_token_classifier(str(tmp_path), list(CONLL_LABELS), seed=0, vocab_size=200)
    assert model.num_labels == len(CONLL_LABELS) and not caplog.records
    assert not any(word in "".join(capfd.readouterr()) for word in ("LOAD REPORT", "Loading weights"))
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layer.1.output.dense" not in k},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level("WARNING"):
        initial_token_classifier(str(tmp_path), list(CONLL_LABELS), seed=0, vocab_size=200)
    assert [r.getMessage() for r in caplog.records] == [
        f"--model {tmp_path}: 2 weight(s) not in the checkpoint, initialised at random: "
        "bert.encoder.layer.1.output.dense.bias, bert.encoder.layer.1.output.dense.weight"]
    assert "LOAD REPORT" not in "".join(capfd.readouterr())


def test_random_model_takes_the_folders_architecture_and_tokenizer(tmp_path, tokenizer):
    """``--model random:DIR``: DIR's config.json with random weights (the same weights as ``tiny`` at the same seed
    when DIR holds the tiny config), DIR's tokenizer; a folder without config.json is refused naming the file."""
    from tuner.data import CONLL_LABELS
    from tuner.errors import TunerError
    from tuner.models import base_config, initial_token_classifier, load_tokenizer, tiny_config

    tokenizer.save_pretrained(tmp_path)
    tiny_config(len(tokenizer), ["O"]).save_pretrained(tmp_path)
    name = f"random:{tmp_path}"
    labels = list(CONLL_LABELS)
    model = initial_token_classifier(name, labels, seed=3, vocab_size=len(tokenizer))
    tiny = initial_token_classifier("tiny", labels, seed=3, vocab_size=len(tokenizer))
    assert model.config.num_labels == len(labels) and model.config.hidden_size == 32
    for (key, value), (_, expected) in zip(model.state_dict().items(), tiny.state_dict().items()):
        assert torch.equal(value, expected), key
    assert base_config(name).num_hidden_layers == 2
    assert load_tokenizer(name)("EU rejects")["input_ids"] == tokenizer("EU rejects")["input_ids"]
    with pytest.raises(TunerError, match=r"random:.*config\.json not found"):
        initial_token_classifier(f"random:{tmp_path / 'none'}", labels, seed=0, vocab_size=10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_trial_given_a_gpu_it_cannot_see_fails_instead_of_training_on_the_cpu():
    from tuner.training import select_device

    assert select_device() == "cpu" and select_device(False) == "cpu"
    with pytest.raises(RuntimeError, match="given a GPU, but torch .* sees none"):
        select_device(True)
