"""The CPU fast path for batches of mixed lengths: token-classification logits computed on the real tokens only.

Random batches are mostly padding. ``real_token_logits`` is the one call ``fit``'s loss and the
student's loss use: for random batches of a BERT token classifier it runs every matmul outside attention on the
real tokens alone, and attention on small groups of similar length; otherwise it runs the model's own padded
forward. It reads these transformers internals of ``BertForTokenClassification`` (``tests/test_unpadded.py`` pins
them, so that an upgrade that moves them fails a test, not a search): ``model.bert.embeddings(input_ids=,
position_ids=)``, per layer ``attention.self.{query,key,value,num_attention_heads,attention_head_size,scaling,
dropout}``, ``attention.output(context, hidden)``, ``intermediate(hidden)``, ``output(inner, hidden)``, and
``model.dropout`` and ``model.classifier``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertForTokenClassification

ATTENTION_GROUP = 4  # sentences per attention call: sorted by length, each group padded to its own longest


def real_token_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      batches: str = "random", layers: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the batch's real tokens, ``[tokens, labels]``, and each one's flat index into ``[batch * width]``;
    ``layers``, a list, receives each encoder layer's output on the same tokens (``[tokens, hidden]`` each).

    Random batches (``batches="random"``) of a model ``supports`` accepts, on the CPU, go through
    ``unpadded_logits``; length-grouped batches, whose padding is small, other models, and every batch on a GPU
    through the model's padded forward. Both compute the same function of the real tokens (tested). On a GPU the
    unpadded path's many small kernels cost more than the padding they skip: bert-base at batch 32 on an H200
    trained 4,435 real tokens/s unpadded against 8,184 padded (``results/gpu_check.md``), launch-bound.
    ``batches="unpadded"`` takes the unpadded path on any device (the GPU probe measures it there)."""
    if supports(model) and (batches == "unpadded" or (batches == "random" and input_ids.device.type == "cpu")):
        return unpadded_logits(model, input_ids, attention_mask, layers)
    real = attention_mask.flatten().nonzero().squeeze(1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=layers is not None)
    if layers is not None:
        layers.extend(hidden.flatten(0, 1)[real] for hidden in out.hidden_states[1:])
    return out.logits.flatten(0, 1)[real], real


def supports(model: nn.Module) -> bool:
    """Whether ``unpadded_logits`` can run ``model``: a BERT token classifier whose encoder only self-attends."""
    config = model.config
    return (isinstance(model, BertForTokenClassification) and not config.is_decoder
            and getattr(config, "position_embedding_type", "absolute") == "absolute")


def unpadded_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layers: list | None = None):
    """Token-classification logits of the real (unpadded) tokens only, ``[tokens, labels]``, and each one's flat
    index into ``[batch * width]``: the same function as ``model(input_ids, attention_mask).logits`` there.

    The embeddings and every matmul outside attention (Q, K, V, the attention output, the feed-forward, the
    classifier) run on the real tokens alone. Attention, where sentences do not mix, runs on groups of
    ``ATTENTION_GROUP`` sentences of similar length, each padded only to its own longest. ``layers``, a list,
    receives each layer's output on the same tokens, in the order of the returned index.
    """
    bert = model.bert
    width = input_ids.shape[1]
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)  # longest first: a group is a run of rows
    kept = attention_mask[order].flatten().nonzero().squeeze(1)
    real = (order[:, None] * width + torch.arange(width, device=order.device)).flatten()[kept]
    hidden = bert.embeddings(input_ids=input_ids[order].flatten()[kept][None], position_ids=(kept % width)[None])[0]
    slots, padded_size, groups = attention_groups(lengths[order].tolist(), input_ids.device)
    for layer in bert.encoder.layer:
        attention = layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size
        dropout = attention.dropout.p if model.training else 0.0
        projections = (attention.query, attention.key, attention.value)
        qkv = F.linear(hidden, torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections]))
        padded = qkv.new_zeros(padded_size, qkv.shape[-1]).index_copy(0, slots, qkv)
        context = []
        for start, rows, group_width, keys in groups:
            chunk = padded[start:start + rows * group_width]
            q, k, v = chunk.view(rows, group_width, 3, heads, size).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=attention.scaling, dropout_p=dropout)
            context.append(out.transpose(1, 2).reshape(rows * group_width, heads * size))
        hidden = layer.attention.output(torch.cat(context)[slots], hidden)
        hidden = layer.output(layer.intermediate(hidden), hidden)
        if layers is not None:
            layers.append(hidden)
    return model.classifier(model.dropout(hidden)), real


def attention_groups(lengths: list[int], device) -> tuple[torch.Tensor, int, list]:
    """For sentences sorted longest first, groups of ``ATTENTION_GROUP``, each padded to its own longest and laid
    end to end in one flat ``[slots, ...]`` buffer: every real token's slot in it (one scatter and one gather per
    layer, not one per group), the buffer's length, and per group its first slot, rows, width and key mask."""
    slots, groups, start = [], [], 0
    for first in range(0, len(lengths), ATTENTION_GROUP):
        rows = lengths[first:first + ATTENTION_GROUP]
        width = rows[0]
        slots += [torch.arange(start + j * width, start + j * width + n) for j, n in enumerate(rows)]
        keys = (torch.arange(width)[None, :] < torch.tensor(rows)[:, None])[:, None, None, :]
        groups.append((start, len(rows), width, keys.to(device)))
        start += len(rows) * width
    return torch.cat(slots).to(device), start, groups
