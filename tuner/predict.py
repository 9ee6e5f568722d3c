"""Tag sentences with a saved model (teacher, factorized or student) and print the entities found:

    python -m tuner.predict --model results/student/best "EU rejects German call to boycott British lamb ."
    python -m tuner.predict --model results/student/deploy/model.int8.onnx "EU rejects German call ."

Sentences come from the arguments, else from ``--file``, else from standard input, one per line, words
separated by spaces (as in CoNLL).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuner.cli import OneLineParser, entry_point
from tuner.config import usable_cpus
from tuner.errors import TunerError


def word_offsets(line: str) -> list[tuple[str, int, int]]:
    """Each whitespace-separated word with its character start and end in the line."""
    offsets, position = [], 0
    for word in line.split():
        start = line.index(word, position)
        position = start + len(word)
        offsets.append((word, start, position))
    return offsets


def tag_lines(model_path: Path, lines: list[str], batch_size: int = 32) -> list[list[dict]]:
    """Per line, its entities: type, text, word span [start, end) and character span [start, end). ``model_path``
    is a saved model folder (PyTorch) or an ``.onnx`` file beside its tokenizer and config (``tuner.deploy``)."""
    from transformers import AutoConfig

    from tuner.data import Sentence, encode
    from tuner.models import config_labels, load_model, load_tokenizer
    from tuner.training import predict_tags, select_device, word_tags

    model_path = Path(model_path)
    onnx_file = model_path.suffix == ".onnx"
    folder = model_path.parent if onnx_file else model_path
    if onnx_file:
        from tuner import onnx_io

        forward = onnx_io.forward(onnx_io.session(model_path, usable_cpus()))
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise TunerError(f"{folder}: no label config beside the ONNX model ({str(exc).splitlines()[0][:120]})") \
                from None
    else:
        model = load_model(model_path)
        config = model.config
    tokenizer = load_tokenizer(str(folder))
    labels = config_labels(config)
    offsets = [word_offsets(line) for line in lines]
    sentences = [Sentence(tuple(w for w, _, _ in words), ("O",) * len(words)) for words in offsets if words]
    max_length = getattr(config, "max_position_embeddings", 512)
    data = encode(sentences, tokenizer, labels, max_length, label_subtokens="all")
    if onnx_file:
        tags = iter(word_tags(forward, data, labels, batch_size, tokenizer.pad_token_id))
    else:
        device = select_device()
        tags = iter(predict_tags(model.to(device), data, labels, batch_size, tokenizer.pad_token_id, device))
    return [entities_of(next(tags), words) if words else [] for words in offsets]


def entities_of(tags: list[str], words: list[tuple[str, int, int]]) -> list[dict]:
    """IOB2 word tags to entities: type, text, word span [start, end) and character span [start, end)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [{"type": kind, "text": " ".join(w for w, _, _ in words[first:last + 1]), "words": (first, last + 1),
             "chars": (words[first][1], words[last][2])} for kind, first, last in get_entities(tags)]


@entry_point
def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m tuner.predict", description=__doc__.strip().splitlines()[0])
    parser.add_argument("sentences", nargs="*", help="sentences to tag (default: --file or standard input)")
    parser.add_argument("--model", type=Path, required=True, help="a saved model folder (results/student/best) or a deployed .onnx file")
    parser.add_argument("--file", type=Path, help="a text file, one sentence per line")
    args = parser.parse_args(argv)
    if args.sentences:
        lines = args.sentences
    elif args.file:
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TunerError(f"{args.file}: cannot read ({exc})") from None
    else:
        try:
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise TunerError(f"standard input: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    results = tag_lines(args.model, lines)
    for line, entities in zip(lines, results):
        print(line)
        for e in entities:
            print(f"  {e['type']:<5} {e['text']!r:<30} words {e['words'][0]}-{e['words'][1]}  "
                  f"chars {e['chars'][0]}-{e['chars'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
