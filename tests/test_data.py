"""Reader, split protocol and label alignment, checked against hand-made examples."""

from __future__ import annotations

import pytest

from tests.conftest import write
from tuner.config import IGNORE_INDEX
from tuner.data import (CONLL_LABELS, NO_TOKEN, Corpus, Sentence, align_labels, encode, label_list, length_grouped_batches, random_batches,
                        load_folder, read_conll, split_sentences, word_starts)
from tuner.errors import TunerError

L = {label: i for i, label in enumerate(CONLL_LABELS)}


def test_reader_docstart_blank_lines_columns_and_no_final_blank(tmp_path):
    path = write(tmp_path / "train.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                                         "Peter B-PER\nBlackburn NNP I-NP I-PER")
    sentences = read_conll(path)
    assert sentences == [Sentence(("EU", "rejects"), ("B-ORG", "O")), Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))]


def test_reader_bad_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.txt", "EU B-ORG\nrejects\n")
    with pytest.raises(TunerError, match=r"train\.txt:2: expected 'word \.\.\. tag'"):
        read_conll(path)


def test_reader_refuses_non_iob2_tag(tmp_path):
    path = write(tmp_path / "train.txt", "EU B-ORG\n\nParis X-LOC\n")
    with pytest.raises(TunerError, match=r"train\.txt:3: tag 'X-LOC' is not IOB2"):
        read_conll(path)


def test_reader_refuses_non_utf8(tmp_path):
    path = write(tmp_path / "train.txt", "EU B-ORG\n\nMüller B-PER\n", encoding="latin-1")
    with pytest.raises(TunerError, match=r"train\.txt:3: not UTF-8"):
        read_conll(path)


def test_label_set_read_from_data():
    conll = [Sentence(("a", "b"), ("B-PER", "O"))]
    assert label_list(conll) == list(CONLL_LABELS)
    other = [Sentence(("a", "b", "c"), ("B-GENE", "I-GENE", "B-DRUG"))]
    assert label_list(other) == ["O", "B-DRUG", "I-DRUG", "B-GENE", "I-GENE"]


def test_folder_errors(tmp_path):
    with pytest.raises(TunerError, match="no such folder"):
        load_folder(tmp_path / "missing")
    with pytest.raises(TunerError, match="train.txt is missing"):
        load_folder(tmp_path)
    write(tmp_path / "train.txt", "\n\n")
    with pytest.raises(TunerError, match="train.txt: no sentences"):
        load_folder(tmp_path)


def test_report_split_is_80_10_10_and_seeded():
    train = [Sentence((f"w{i}",), ("O",)) for i in range(1000)]
    corpus = Corpus({"train": train}, "mem")
    splits = split_sentences(corpus, "report", seed=3)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [800, 100, 100]
    assert split_sentences(corpus, "report", seed=3) == splits
    assert split_sentences(corpus, "report", seed=4)["test"] != splits["test"]
    all_words = {s.words for part in splits.values() for s in part}
    assert len(all_words) == 1000  # disjoint and complete


def test_official_split_needs_its_files():
    corpus = Corpus({"train": [Sentence(("a",), ("O",))] * 20}, "mem")
    with pytest.raises(TunerError, match="no validation split"):
        split_sentences(corpus, "official", 0)


def test_alignment_by_hand_three_subtokens(tokenizer):
    # [CLS] eu rejects schwarz ##ene ##gger [SEP]
    words, tags = ["EU", "rejects", "Schwarzenegger"], ["B-ORG", "O", "B-PER"]
    encoded = tokenizer(words, is_split_into_words=True)
    assert encoded.tokens() == ["[CLS]", "eu", "rejects", "schwarz", "##ene", "##gger", "[SEP]"]
    ids = encoded.word_ids()
    assert align_labels(ids, tags, L, "all") == [IGNORE_INDEX, L["B-ORG"], L["O"], L["B-PER"], L["I-PER"], L["I-PER"],
                                                IGNORE_INDEX]
    assert align_labels(ids, tags, L, "first") == [IGNORE_INDEX, L["B-ORG"], L["O"], L["B-PER"], IGNORE_INDEX,
                                                 IGNORE_INDEX, IGNORE_INDEX]
    assert word_starts(ids) == [1, 2, 3]
    # a word that yields no sub-token (word 2 here) keeps its slot, so later words keep their index
    assert word_starts([None, 0, 1, 1, 3, None]) == [1, 2, NO_TOKEN, 4]


def test_label_subtokens_flag_picks_the_alignment():
    from tuner.run import parser, settings_from

    default = settings_from(parser().parse_args(["--stage", "teacher"]), cuda_available=False)
    assert default.profile.label_subtokens == "first"  # first sub-token only, the HF recipe
    report = settings_from(parser().parse_args(["--stage", "teacher", "--label-subtokens", "all"]), cuda_available=False)
    assert report.profile.label_subtokens == "all"


def test_alignment_with_truncation(tokenizer):
    sentence = Sentence(("EU", "rejects", "Schwarzenegger", "Kirchhoff"), ("B-ORG", "O", "B-PER", "I-PER"))
    encoded = encode([sentence], tokenizer, list(CONLL_LABELS), max_length=5, label_subtokens="all")
    # [CLS] eu rejects schwarz [SEP]: the last word is cut, the third keeps one of its three pieces
    assert encoded.labels[0] == [IGNORE_INDEX, L["B-ORG"], L["O"], L["B-PER"], IGNORE_INDEX]
    assert encoded.word_starts[0] == [1, 2, 3]
    assert encoded.word_tags[0] == ["B-ORG", "O", "B-PER", "I-PER"]  # gold keeps every word for scoring


def test_encode_refuses_unknown_label(tokenizer):
    with pytest.raises(TunerError, match="'B-GENE' is not among the labels"):
        encode([Sentence(("x",), ("B-GENE",))], tokenizer, list(CONLL_LABELS), 16, "all")


def test_unknown_label_in_a_file_names_its_line(tokenizer, tmp_path):
    """A tag the training data never has, in the validation file: the file and line where it is."""
    path = write(tmp_path / "validation.txt", "-DOCSTART- O\n\nEU B-ORG\n\nPeter B-PER\nLeeds B-FOO\n")
    sentences = read_conll(path)
    assert [s.where for s in sentences] == [f"{path}:3", f"{path}:5"]
    with pytest.raises(TunerError, match=r"validation\.txt:6: tag 'B-FOO' is not among the labels"):
        encode(sentences, tokenizer, list(CONLL_LABELS), 16, "all")


def test_length_grouped_batches_cover_all_and_group_lengths():
    lengths = [i % 37 + 1 for i in range(500)]
    batches = length_grouped_batches(lengths, 8, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 3  # random batches of 8 would spread over ~28
    assert batches == length_grouped_batches(lengths, 8, seed=0)


def test_random_batches_cover_all_and_ignore_lengths():
    lengths = [i % 37 + 1 for i in range(500)]
    batches = random_batches(lengths, 8, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert [len(b) for b in batches] == [8] * 62 + [4]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread > 15  # mixed lengths, unlike length-grouped batches
    assert batches == random_batches(lengths, 8, seed=0) and batches != random_batches(lengths, 8, seed=1)


def test_real_corpus_reads(conll_dir):
    corpus = load_folder(conll_dir)
    assert len(corpus.splits["train"]) == 14041 and len(corpus.splits["validation"]) == 3250
    assert label_list(corpus.splits["train"]) == list(CONLL_LABELS)
