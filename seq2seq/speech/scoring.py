"""Phone error rate: Levenshtein distance between phone sequences over the reference length, on the
39-class set (Lee & Hon 1989), after merging repeated phones."""

from __future__ import annotations

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
