"""The CPU fast path (tuner.unpadded) against the model's own padded forward, and the transformers internals it
reads, pinned so that an upgrade that moves them fails here rather than in a search."""

from __future__ import annotations

import inspect

import torch
from transformers import BertForTokenClassification
from transformers.models.bert import modeling_bert

from tuner.models import cut_student
from tuner.unpadded import attention_groups, real_token_logits, supports, unpadded_logits


def ragged_batch(lengths: list[int], vocab: int = 1000):
    ids = torch.randint(5, vocab, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


LENGTHS = [5, 17, 1, 9, 17, 3, 12, 2, 6]  # 9 sentences: attention groups of 4, 4 and 1


def padded_loss(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    return (logits[mask.bool()] ** 2).sum()


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_transformers_internals_it_reads_are_where_it_reads_them(tiny_model):
    """Every attribute and call signature unpadded_logits uses on a BertForTokenClassification."""
    assert isinstance(tiny_model, BertForTokenClassification)
    bert = tiny_model.bert
    assert {"input_ids", "position_ids"} <= set(inspect.signature(bert.embeddings.forward).parameters)
    layer = bert.encoder.layer[0]
    attention = layer.attention.self
    for name in ("query", "key", "value"):
        assert isinstance(getattr(attention, name), torch.nn.Linear)
    assert attention.num_attention_heads * attention.attention_head_size == tiny_model.config.hidden_size
    assert attention.scaling == attention.attention_head_size ** -0.5
    assert isinstance(attention.dropout, torch.nn.Dropout)
    assert isinstance(layer.attention.output, modeling_bert.BertSelfOutput)
    assert list(inspect.signature(layer.attention.output.forward).parameters)[:2] == ["hidden_states", "input_tensor"]
    assert isinstance(layer.intermediate, modeling_bert.BertIntermediate)
    assert list(inspect.signature(layer.output.forward).parameters)[:2] == ["hidden_states", "input_tensor"]
    assert isinstance(tiny_model.dropout, torch.nn.Dropout) and isinstance(tiny_model.classifier, torch.nn.Linear)


def test_unpadded_forward_equals_the_padded_one_with_its_gradients(tiny_model):
    for model in (tiny_model, cut_student(tiny_model, 1, 8)):  # and factorized embeddings, fewer layers
        torch.manual_seed(0)
        model.eval()  # no dropout: both paths are the same function
        ids, mask = ragged_batch(LENGTHS)
        padded = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
        logits, real = unpadded_logits(model, ids, mask)
        assert sorted(real.tolist()) == mask.flatten().nonzero().squeeze(1).tolist()  # each real token once
        assert torch.allclose(logits, padded[real], atol=1e-5)
        grads = []
        for loss in (lambda: padded_loss(model, ids, mask), lambda: (unpadded_logits(model, ids, mask)[0] ** 2).sum()):
            model.zero_grad()
            loss().backward()
            grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            assert torch.allclose(grads[0][name], grads[1][name], atol=1e-4), name


def test_training_mode_forward_equals_the_padded_one_without_dropout(tiny_model):
    """In training mode the unpadded attention passes the layer's dropout to SDPA: at p = 0 it is the same
    function as the padded forward."""
    model = without_dropout(tiny_model).train()
    ids, mask = ragged_batch(LENGTHS)
    logits, real = unpadded_logits(model, ids, mask)
    assert torch.allclose(logits, model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)[real], atol=1e-5)


def test_real_token_logits_picks_the_path_by_batch_order_and_model(tiny_model, monkeypatch):
    """Random batches of a BERT go unpadded; length-grouped batches and other models take the padded forward;
    both give each real token's logits in the same flat order."""
    import tuner.unpadded

    from transformers import DistilBertConfig, DistilBertForTokenClassification

    taken = []
    monkeypatch.setattr(tuner.unpadded, "unpadded_logits",
                        lambda *a: taken.append("unpadded") or unpadded_logits(*a))
    tiny_model.eval()
    ids, mask = ragged_batch(LENGTHS)
    fast, fast_real = real_token_logits(tiny_model, ids, mask, "random")
    padded, padded_real = real_token_logits(tiny_model, ids, mask, "length")
    assert taken == ["unpadded"]
    order = torch.argsort(fast_real)
    assert torch.equal(fast_real[order], padded_real)
    assert torch.allclose(fast[order], padded, atol=1e-5)
    other = DistilBertForTokenClassification(DistilBertConfig(vocab_size=1000, dim=32, n_layers=1, n_heads=2,
                                                              hidden_dim=64, num_labels=9))
    assert supports(tiny_model) and supports(cut_student(tiny_model, 1, 8)) and not supports(other)
    logits, real = real_token_logits(other.eval(), ids, mask, "random")
    assert taken == ["unpadded"] and logits.shape == (int(mask.sum()), 9)


def test_fit_loss_on_random_batches_equals_the_padded_cross_entropy(tiny_model, monkeypatch):
    """fit's default loss, unpadded, is the model's own padded loss over the labelled tokens; only random
    batches take the unpadded path."""
    import tuner.unpadded
    from tuner.training import token_cross_entropy

    taken = []
    monkeypatch.setattr(tuner.unpadded, "unpadded_logits", lambda *a: taken.append(1) or unpadded_logits(*a))
    tiny_model.eval()
    ids, mask = ragged_batch(LENGTHS)
    labels = torch.randint(0, tiny_model.config.num_labels, ids.shape).masked_fill(mask == 0, -100)
    labels[:, 0] = -100  # [CLS]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    expected = tiny_model(**batch).loss
    for batches, calls in (("random", 1), ("length", 1)):
        assert torch.allclose(token_cross_entropy(tiny_model, batch, [], batches), expected, atol=1e-5)
        assert len(taken) == calls, batches


def test_fit_and_the_student_train_random_batches_unpadded(tiny_model, tokenizer, monkeypatch):
    """Through fit and the student stage's own train: the profile's batch order reaches the loss, so random
    batches go through the unpadded forward and length-grouped ones never do."""
    import tuner.unpadded
    from tuner.config import TrainSettings
    from tuner.data import CONLL_LABELS, Sentence, TaskData, encode
    from tuner.registry import StageContext
    from tuner.stages import student
    from tuner.training import fit

    taken = []
    monkeypatch.setattr(tuner.unpadded, "unpadded_logits", lambda *a: taken.append(1) or unpadded_logits(*a))
    sentences = [Sentence(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
                 Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))] * 2
    data = encode(sentences, tokenizer, list(CONLL_LABELS), 16, "first")
    task = TaskData(list(CONLL_LABELS), data, data, data, tokenizer.pad_token_id, "mem")
    hparams = {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.0, "temperature": 2.0, "alpha": 0.5,
               "num_layers": 1, "factor_dim": 8}
    from tuner.config import resolve_profile

    inputs = student.STAGE.prepare(StageContext(resolve_profile("smoke", False, max_params=10**9), task, 0,
                                                tiny_model, len(tokenizer), "cpu"))
    for batches in ("length", "random"):
        settings = TrainSettings(epochs=1, batch_size=2, eval_batch_size=8, seed=0, threads=1, precision="fp32",
                                 batches=batches)
        for run in (lambda: fit(tiny_model, hparams, task, settings), lambda: student.train(hparams, task, inputs,
                                                                                           settings)):
            taken.clear()
            list(run())
            assert len(taken) == (2 if batches == "random" else 0), (batches, run)  # 4 sentences, 2 a batch


def test_attention_groups_pad_each_group_to_its_own_longest():
    slots, size, groups = attention_groups([9, 7, 7, 2, 2, 1], "cpu")
    assert size == 4 * 9 + 2 * 2  # a group of 4 padded to 9, one of 2 padded to 2
    assert [(start, rows, width) for start, rows, width, _ in groups] == [(0, 4, 9), (36, 2, 2)]
    assert slots.tolist() == [*range(0, 9), *range(9, 16), *range(18, 25), *range(27, 29), 36, 37, 38]
    assert groups[1][3].squeeze().tolist() == [[True, True], [True, False]]


def test_unpadded_forward_under_bf16_autocast_stays_close_to_float32(tiny_model):
    model = without_dropout(tiny_model).train()
    ids, mask = ragged_batch(LENGTHS)
    exact = model(input_ids=ids, attention_mask=mask).logits.flatten(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, real = unpadded_logits(model, ids, mask)
    assert logits.dtype == torch.bfloat16
    error = (logits.float() - exact[real]).abs().max().item()
    assert error < 0.02 * exact.abs().max().item(), error



def test_both_paths_give_every_layers_output_on_the_real_tokens(tiny_model):
    """What the hidden-state term reads: each encoder layer's output, in the order of the real-token index."""
    model = cut_student(tiny_model, 2, 8).eval()
    ids, mask = ragged_batch(LENGTHS)
    outputs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
    for batches in ("random", "length"):  # unpadded, then the model's padded forward
        layers = []
        logits, real = real_token_logits(model, ids, mask, batches, layers)
        assert len(layers) == 2
        for got, expected in zip(layers, outputs):
            assert torch.allclose(got, expected.flatten(0, 1)[real], atol=1e-5)
