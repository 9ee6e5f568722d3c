"""Word-level entity F1 with seqeval (conlleval-compatible), so scores compare with published CoNLL numbers."""

from __future__ import annotations


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level micro precision, recall and F1 over word-level tag sequences. seqeval is imported here, not
    with the module: its package imports scikit-learn (about a second), which a command that never scores (a
    search's driver, --help, an error) should not wait for."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    return {
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
    }
