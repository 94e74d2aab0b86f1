"""Phone error rate: Levenshtein distance between phone sequences over the reference length, on the
39-class set (Lee & Hon 1989), after merging repeated phones; and one utterance's frame and phone scores."""

from __future__ import annotations

import torch

from .ctc import beam_decode, greedy_decode
from .features import IGNORE
from .phones import FOLD_48_TO_39, collapse


def edit_distance(hypothesis: list[int], reference: list[int]) -> int:
    """Substitutions + deletions + insertions of the cheapest alignment (dynamic programming)."""
    previous = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        current = [i]
        for j, r in enumerate(reference, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def to_39(sequence: list[int]) -> list[int]:
    """48-class phone indices -> 39-class indices, repeats (e.g. cl vcl -> sil sil) merged."""
    return collapse([FOLD_48_TO_39[p] for p in sequence])


def phone_error_rate(hypotheses: list[list[int]], references: list[list[int]]) -> float:
    """Corpus PER in percent: total edits over total reference phones, both on the 39-class set."""
    edits = sum(edit_distance(to_39(h), to_39(r)) for h, r in zip(hypotheses, references, strict=True))
    return 100.0 * edits / max(1, sum(len(to_39(r)) for r in references))


def score_utterance(logits, length, labels, reference, objective, fold, beam_size) -> tuple[int, int, list, list]:
    """Correct and scored frames on 39 classes, the hypothesis phone sequence (48-class indices) and the
    reference. logits (T, C) of one utterance; labels (T,); fold: the 48 -> 39 index table; beam_size 0
    decodes CTC greedily."""
    if objective == "ctc":
        log_probs = torch.log_softmax(logits.float(), -1)
        hypothesis = beam_decode(log_probs, length, beam_size) if beam_size else greedy_decode(log_probs, length)
        return 0, 0, hypothesis, reference
    predicted = logits[:length].argmax(-1)  # (T,)
    gold = labels[:length]
    scored = gold != IGNORE
    correct = int((fold[predicted][scored] == fold[gold[scored]]).sum())
    return correct, int(scored.sum()), collapse(predicted.tolist()), reference
