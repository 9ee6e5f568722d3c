"""CoNLL data: reader, Hub loader, split protocol, and tokenization with word-level label alignment.

Everything a search needs from the text is computed here once, on the driver, and shared with trials.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from tuner.config import IGNORE_INDEX
from tuner.errors import TunerError

log = logging.getLogger(__name__)

CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
# datasets >= 4 runs no loading scripts, so the script-based "conll2003"/"eriktks/conll2003" repos no longer load;
# lhoestq/conll2003 (by a datasets maintainer) holds the same splits as plain data files.
HUB_DATASET = "lhoestq/conll2003"
HUB_REVISION = "main"
SPLIT_FILES = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str = field(default="", compare=False)  # "file:line" of its first word, for errors ("" from the Hub)

    def tag_place(self, index: int) -> str:
        """Where the ``index``-th word's tag is read from: its file and line (a word a line), or the sentence."""
        path, _, line = self.where.rpartition(":")
        return f"{path}:{int(line) + index}" if line.isdigit() else self.where or "a sentence of the data"


@dataclass(frozen=True)
class Corpus:
    splits: dict  # split name -> list[Sentence]
    source: str  # "hub:<id>@<revision>" or the folder path


def _check_tag(tag: str, where: str) -> None:
    if tag == "O":
        return
    prefix, _, entity = tag.partition("-")
    if prefix not in ("B", "I") or not entity:
        raise TunerError(f"{where}: tag {tag!r} is not IOB2 (expected O, B-TYPE or I-TYPE)")


def read_conll(path: Path) -> list[Sentence]:
    """Read one CoNLL file: a token a line (word first, tag last), blank lines between sentences."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise TunerError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as exc:
        raise TunerError(f"{path}: cannot read ({exc.strerror})") from None
    sentences, words, tags, start = [], [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags), f"{path}:{start}"))
                words, tags = [], []
            continue
        if len(fields) < 2:
            raise TunerError(f"{path}:{number}: expected 'word ... tag', got {line.strip()!r}")
        _check_tag(fields[-1], f"{path}:{number}")
        start = start if words else number
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags), f"{path}:{start}"))
    return sentences


def label_list(sentences) -> list[str]:
    """Labels read from the data: the CoNLL order when the set matches, else O then B-/I- per type, sorted."""
    seen = {tag for sentence in sentences for tag in sentence.tags}
    if seen <= set(CONLL_LABELS):
        return list(CONLL_LABELS)
    types = sorted({tag[2:] for tag in seen if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def load_folder(folder: Path) -> Corpus:
    folder = Path(folder)
    if not folder.is_dir():
        raise TunerError(f"--data {folder}: no such folder")
    if not (folder / "train.txt").is_file():
        raise TunerError(f"--data {folder}: train.txt is missing (a CoNLL folder needs train.txt)")
    splits = {}
    for split, name in SPLIT_FILES.items():
        if (folder / name).is_file():
            splits[split] = read_conll(folder / name)
            if not splits[split]:
                raise TunerError(f"{folder / name}: no sentences")
    return Corpus(splits, str(folder))


def load_hub(dataset_id: str = HUB_DATASET, revision: str = HUB_REVISION) -> Corpus:
    """CoNLL-2003 from the Hugging Face Hub (needs network); tags come back as label strings."""
    try:
        import datasets

        loaded = datasets.load_dataset(dataset_id, revision=revision)
    except Exception as exc:  # offline, DNS, missing repo: all mean "use local files"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TunerError(f"cannot load {dataset_id} from the Hugging Face Hub ({reason}); "
                         "offline? point --data at a folder of CoNLL files, e.g. --data ../shared/data/conll2003") from None
    feature = loaded["train"].features["ner_tags"].feature
    names = getattr(feature, "names", None) or list(CONLL_LABELS)  # ClassLabel names, else the HF order
    splits = {
        split: [Sentence(tuple(row["tokens"]), tuple(names[i] for i in row["ner_tags"])) for row in loaded[split]]
        for split in ("train", "validation", "test") if split in loaded
    }
    return Corpus(splits, f"hub:{dataset_id}@{revision}")


def load_corpus(data: str) -> Corpus:
    """``conll2003``: the Hub; anything else: a local folder of CoNLL files."""
    if data == "conll2003" and not Path(data).is_dir():
        return load_hub()
    return load_folder(Path(data).resolve())


def split_sentences(corpus: Corpus, protocol: str, seed: int) -> dict:
    """``report``: 20% of train held out, halved into validation and test (80/10/10, seeded);
    ``official``: the corpus's own validation and test files."""
    if protocol == "official":
        missing = [s for s in ("validation", "test") if s not in corpus.splits]
        if missing:
            raise TunerError(f"--split official: {corpus.source} has no {missing[0]} split "
                             f"({SPLIT_FILES[missing[0]]}); use --split report")
        return {s: list(corpus.splits[s]) for s in ("train", "validation", "test")}
    train = list(corpus.splits["train"])
    if len(train) < 10:
        raise TunerError(f"{corpus.source}: train has {len(train)} sentences; the report split needs at least 10")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held_out = len(train) // 5
    n_val = held_out // 2
    val_idx, test_idx, train_idx = order[:n_val], order[n_val:held_out], order[held_out:]
    return {"train": [train[i] for i in sorted(train_idx)],
            "validation": [train[i] for i in sorted(val_idx)],
            "test": [train[i] for i in sorted(test_idx)]}


def subsample(sentences: list, limit: int | None, seed: int) -> list:
    """A seeded subset of at most ``limit`` sentences, in corpus order."""
    if limit is None or limit >= len(sentences):
        return list(sentences)
    keep = sorted(random.Random(seed).sample(range(len(sentences)), limit))
    return [sentences[i] for i in keep]


def continuation_label(label: str) -> str:
    """The label a word's later sub-tokens carry: B-X becomes I-X (the report's alignment)."""
    return "I-" + label[2:] if label.startswith("B-") else label


def align_labels(word_ids, word_labels, label_to_id: dict, label_subtokens: str = "first") -> list[int]:
    """Token label ids from word labels. Special tokens get IGNORE_INDEX; a word's first sub-token its label;
    later sub-tokens the word's I- label (``label_subtokens="all"``) or IGNORE_INDEX (``"first"``)."""
    aligned, previous = [], None
    for word in word_ids:
        if word is None:
            aligned.append(IGNORE_INDEX)
        elif word != previous:
            aligned.append(label_to_id[word_labels[word]])
        elif label_subtokens == "all":
            aligned.append(label_to_id[continuation_label(word_labels[word])])
        else:
            aligned.append(IGNORE_INDEX)
        previous = word
    return aligned


NO_TOKEN = -1  # a word the tokenizer turned into no sub-token (a zero-width character, say)


def word_starts(word_ids) -> list[int]:
    """Per word up to the last one kept, the position of its first sub-token (its prediction is the word's), or
    NO_TOKEN for a word without sub-tokens, so later words keep their index."""
    starts, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            starts.extend([NO_TOKEN] * (word - len(starts)))
            starts.append(position)
        previous = word
    return starts


@dataclass(frozen=True)
class Encoded:
    """One split, tokenized once: per sentence its token ids, aligned label ids, word starts and gold tags."""

    input_ids: list
    labels: list
    word_starts: list
    word_tags: list  # gold tags of every word, truncated or not: evaluation scores whole sentences

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def token_count(self) -> int:
        return sum(self.lengths())


def encode(sentences, tokenizer, labels: list[str], max_length: int, label_subtokens: str = "first") -> Encoded:
    """Tokenize with a fast tokenizer and align labels through ``word_ids`` (``label_subtokens``: first or all)."""
    if label_subtokens not in ("first", "all"):
        raise ValueError(f"label_subtokens must be 'first' or 'all', got {label_subtokens!r}")
    label_to_id = {label: i for i, label in enumerate(labels)}
    for sentence in sentences:
        for index, tag in enumerate(sentence.tags):
            if tag not in label_to_id:
                raise TunerError(f"{sentence.tag_place(index)}: tag {tag!r} is not among the labels of the training "
                                 f"data: {', '.join(labels)}")
    batch = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, truncation=True,
                      max_length=max_length)
    input_ids, aligned, starts = [], [], []
    for i, sentence in enumerate(sentences):
        ids = batch.word_ids(i)
        input_ids.append(batch["input_ids"][i])
        aligned.append(align_labels(ids, sentence.tags, label_to_id, label_subtokens))
        starts.append(word_starts(ids))
    return Encoded(input_ids, aligned, starts, [list(s.tags) for s in sentences])


@dataclass(frozen=True)
class TaskData:
    """What every trial of a search reads, built once on the driver and shared through Ray's object store."""

    labels: list
    train: Encoded
    validation: Encoded
    test: Encoded
    pad_token_id: int
    source: str


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar lengths: shuffle, sort within windows of 50 batches, shuffle the batches.
    Dynamic padding then pads each batch only to its own longest sentence."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def random_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """The HF Trainer's order: a seeded shuffle cut into batches, lengths ignored (``tuner.unpadded`` keeps their
    padding out of most of the compute)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches by length, longest first, so padding is minimal and memory peaks early."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
