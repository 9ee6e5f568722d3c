"""Shared fixtures: the CoNLL data in ../shared, the packaged tokenizer, tiny models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "conll2003"


@pytest.fixture(scope="session")
def conll_dir() -> Path:
    assert (SHARED_DATA / "train.txt").is_file(), f"CoNLL-2003 data expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from tuner.models import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture
def tiny_model(tokenizer):
    from tuner.data import CONLL_LABELS
    from tuner.models import initial_token_classifier

    return initial_token_classifier("tiny", list(CONLL_LABELS), seed=0, vocab_size=len(tokenizer))


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path
