"""The real packaged MiniLM learns NER: a short run on a few hundred CoNLL sentences beats all-O by far, and the
stages that start from its teacher learn entities too."""

from __future__ import annotations

import json

import pytest
import yaml


@pytest.mark.slow
def test_minilm_learns_on_a_few_hundred_sentences(minilm_run):
    results, _ = minilm_run
    exported = yaml.safe_load((results / "best_configs.yaml").read_text())
    # predicting O everywhere scores entity F1 = 0; a broken loop (labels misaligned, no optimizer step, wrong
    # word positions) stays near 0 too. 300 sentences and 2 epochs of MiniLM reach well above 0.4.
    assert exported["teacher"]["val_f1"] > 0.4, exported["teacher"]
    # the factorized model and the distilled student, each 2 epochs from that teacher, learn entities too
    assert exported["factorized"]["val_f1"] > 0.25 and exported["student"]["val_f1"] > 0.25, exported
    for path in (results / "teacher" / "search").glob("*/result.json"):
        losses = [json.loads(line)["train_loss"] for line in path.read_text().splitlines() if line.strip()]
        assert losses[-1] < losses[0], path
