"""Factorized embedding against the truncated SVD, student cutting, and the safetensors round trip."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tuner.models import (FactorizedEmbedding, FastDropout, count_parameters, cut_student, embedding_svd, factorize,
                          fast_dropout, group_attention, keep_layers, load_model, save_model, student_parameters,
                          student_shape, unpadded_logits, unpads, use_fast_dropout)


def _ragged_batch(lengths: list[int], vocab: int = 1000):
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("student", [False, True])
def test_unpadded_forward_equals_the_padded_one(tiny_model, student):
    torch.manual_seed(0)
    model = cut_student(tiny_model, 1, 8) if student else tiny_model  # factorized embeddings, fewer layers
    model.eval()  # no dropout: both paths are the same function
    ids, mask = _ragged_batch([5, 17, 1, 9, 17, 3, 12, 2, 6])  # 9 sentences: attention groups of 4, 4 and 1
    padded = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
    logits, real = unpadded_logits(model, ids, mask)
    assert sorted(real.tolist()) == mask.flatten().nonzero().squeeze(1).tolist()  # each real token once
    assert torch.allclose(logits, padded[real], atol=1e-5)
    grads = []
    for forward in (lambda: padded_loss(model, ids, mask), lambda: (unpadded_logits(model, ids, mask)[0] ** 2).sum()):
        model.zero_grad()
        forward().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-4), name


def _training_student_dropping_nothing(tiny_model):
    """A student in training mode with fast dropout at p = 1e-9, and a ragged batch: p rounds to no 16-bit level,
    so fast_dropout keeps everything, yet the unpadded forward takes its training path (its own attention)."""
    torch.manual_seed(0)
    model = use_fast_dropout(cut_student(tiny_model, 2, 8)).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 1e-9
    return (model, *_ragged_batch([5, 17, 1, 9, 17, 3, 12, 2, 6]))


def test_unpadded_training_forward_with_its_own_attention_equals_the_padded_one(tiny_model):
    """In training, the unpadded forward computes attention itself (to use fast_dropout): with dropout too rare
    to draw, it is still the padded forward's function."""
    model, ids, mask = _training_student_dropping_nothing(tiny_model)
    padded = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
    logits, real = unpadded_logits(model, ids, mask)
    assert torch.allclose(logits, padded[real], atol=1e-5)


def test_fit_trains_random_batches_unpadded_with_the_same_loss(tiny_model):
    """Random batches (the default) train on the real tokens only; the loss is the padded one's, token for token."""
    from tuner.config import TrainSettings
    from tuner.training import default_loss, token_classification_loss, unpadded_token_classification_loss

    settings = TrainSettings(epochs=1, batch_size=4, eval_batch_size=8, seed=0, threads=1)
    assert default_loss(tiny_model, settings) is unpadded_token_classification_loss
    assert default_loss(tiny_model, dataclasses.replace(settings, batch_order="length")) is token_classification_loss
    tiny_model.eval()
    ids, mask = _ragged_batch([5, 17, 1, 9, 17, 3, 12, 2, 6])
    labels = torch.randint(0, tiny_model.config.num_labels, ids.shape).masked_fill(mask == 0, -100)
    labels[:, 0] = -100  # [CLS]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert torch.allclose(unpadded_token_classification_loss(tiny_model, batch, []),
                          token_classification_loss(tiny_model, batch, []), atol=1e-5)


def test_unpadded_training_forward_keeps_torch_dropout_unless_the_model_uses_fast_dropout(tiny_model, monkeypatch):
    """The teacher trains with torch's dropout: its unpadded attention leaves the probabilities' dropout to SDPA;
    a student swapped to FastDropout draws it with fast_dropout."""
    import tuner.models

    drawn = []
    monkeypatch.setattr(tuner.models, "fast_dropout", lambda x, p, *a, **k: drawn.append(p) or x)
    ids, mask = _ragged_batch([5, 17, 1, 9])
    unpadded_logits(tiny_model.train(), ids, mask)
    assert drawn == []
    unpadded_logits(use_fast_dropout(tiny_model), ids, mask)
    layers = tiny_model.config.num_hidden_layers  # embeddings, per layer two outputs and one attention group, head
    assert len(drawn) == 1 + 3 * layers + 1 and set(drawn) == {0.1}


def test_group_attention_drops_attention_probabilities():
    """Training on the CPU: softmax(q k^T * scale over the key mask), fast_dropout on the probabilities, then v."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    keys = (torch.arange(5)[None, :] < torch.tensor([5, 3])[:, None])[:, None, None, :]
    torch.manual_seed(1)
    out = group_attention(q, k, v, keys, 0.5, 0.5)
    probabilities = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~keys, float("-inf")).softmax(-1)
    torch.manual_seed(1)
    assert torch.allclose(out, fast_dropout(probabilities, 0.5) @ v, atol=1e-6)
    assert torch.allclose(group_attention(q, k, v, keys, 0.5, 0.0), probabilities @ v, atol=1e-6)  # SDPA
    assert not torch.allclose(out, probabilities @ v, atol=1e-3)


def test_unpadded_training_forward_under_bf16_autocast_stays_close_to_float32(tiny_model):
    """Under bf16 autocast the unpadded forward's attention runs its matmuls in bf16 (softmax in float32), as
    flash attention does on GPUs, where SDPA's CPU math path would compute in float32: close, not equal."""
    model, ids, mask = _training_student_dropping_nothing(tiny_model)
    exact = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, real = unpadded_logits(model, ids, mask)
    assert logits.dtype == torch.bfloat16
    error = (logits.float() - exact[real]).abs().max().item()
    assert error < 0.02 * exact.abs().max().item(), error


def test_fast_dropout_drops_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5
    torch.manual_seed(0)
    out = fast_dropout(x, 0.1)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard error is 3e-4
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.003
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / (1 - round(0.1 * 65536) / 65536))
    lanes = (out == 0).float().view(-1, 4).mean(0)  # the four 16-bit lanes of each 64-bit draw drop alike
    assert ((lanes - 0.1).abs() < 0.004).all(), lanes
    rows, columns = (out == 0).float().mean(1), (out == 0).float().mean(0)
    assert rows.min() > 0.05 and rows.max() < 0.15 and columns.min() > 0.05 and columns.max() < 0.15
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))  # all dropped, as nn.Dropout(p=1)
    assert torch.equal(fast_dropout(x, 1 - 1e-6), torch.zeros_like(x))  # rounds to every 16-bit level
    inplace = x.clone()
    torch.manual_seed(0)
    assert fast_dropout(inplace, 0.1, inplace=True) is inplace and torch.equal(inplace, out)
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    torch.manual_seed(1)
    again = fast_dropout(x, 0.1)
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.1), out) and not torch.equal(again, out)  # seeded by torch's generator
    leaf = x.clone().requires_grad_()
    fast_dropout(leaf, 0.5).sum().backward()
    assert set(leaf.grad.unique().tolist()) == {0.0, 2.0}


def test_use_fast_dropout_swaps_every_dropout_and_keeps_eval_logits(tiny_model):
    before = [m.p for m in tiny_model.modules() if isinstance(m, torch.nn.Dropout)]
    ids, mask = _ragged_batch([4, 7, 2])
    tiny_model.eval()
    expected = tiny_model(input_ids=ids, attention_mask=mask).logits
    use_fast_dropout(tiny_model)
    swapped = [m for m in tiny_model.modules() if isinstance(m, torch.nn.Dropout)]
    assert swapped and all(type(m) is FastDropout for m in swapped) and [m.p for m in swapped] == before
    assert torch.equal(tiny_model(input_ids=ids, attention_mask=mask).logits, expected)
    tiny_model.train()
    torch.manual_seed(0)
    first = tiny_model(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(0)
    assert torch.equal(tiny_model(input_ids=ids, attention_mask=mask).logits, first)  # seeded
    assert not torch.allclose(first, expected, atol=1e-4)  # it drops in training
    assert not torch.allclose(tiny_model(input_ids=ids, attention_mask=mask).logits, first, atol=1e-4)
    tiny_model.eval()


def padded_loss(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    return (logits[mask.bool()] ** 2).sum()


def test_unpadded_forward_is_only_taken_for_bert_token_classifiers(tiny_model):
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    assert unpads(tiny_model) and unpads(cut_student(tiny_model, 1, 8))
    other = DistilBertForTokenClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2,
                                                              hidden_dim=64, num_labels=9))
    assert not unpads(other)


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
    data = encode(sentences, tokenizer, labels, 16, True)
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
                  labels, 16, True)
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
    from tuner.config import train_settings
    from tuner.errors import TunerError
    from tuner.run import parser, settings_from

    stages = ("teacher", "factorized", "student")
    default = settings_from(parser().parse_args(["--stage", "student"]), cuda_available=False).profile
    assert [train_settings(default, stage, 0, 1).batch_order for stage in stages] == ["random"] * 3
    grouped = settings_from(parser().parse_args(["--stage", "all", "--batches", "length"]), False).profile
    assert [train_settings(grouped, stage, 0, 1).batch_order for stage in stages] == ["length"] * 3
    with pytest.raises(TunerError, match="batches must be one of random, length"):
        dataclasses.replace(default, batches="sorted")


def test_release_memory_frees_cycles_and_trims_where_glibc_runs():
    """A reused trial process frees the previous trial's objects and trims glibc's heap before the next trial."""
    import gc
    import platform
    import weakref

    from tuner.training import release_memory

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
    finally:
        gc.enable()
