"""Decoding CTC outputs (Graves et al. 2006): class 0 is the blank, class k > 0 is phone k - 1.

Greedy: the best class per frame, repeats merged, blanks dropped. Beam: CTC prefix beam search, which
sums the probability of every alignment of a prefix (Graves 2012, Sec. 7.5; Hannun et al. 2014).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from .phones import collapse

BLANK = 0


def greedy_decode(log_probs: Tensor, length: int) -> list[int]:
    """log_probs: (T, C) of one utterance -> its phone indices (blank removed, shifted to 0-based)."""
    best = log_probs[:length].argmax(-1).tolist()
    return [k - 1 for k in collapse(best) if k != BLANK]


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high = max(a, b)
    return high + math.log(math.exp(a - high) + math.exp(b - high))


def beam_decode(log_probs: Tensor, length: int, beam_size: int = 8, prune: int = 8) -> list[int]:
    """Prefix beam search over (T, C) log-probabilities; per frame only the `prune` likeliest classes
    extend a prefix. Returns the best prefix as 0-based phone indices."""
    frames = log_probs[:length].double()
    beams = {(): (0.0, -math.inf)}  # prefix -> (log P ending in blank, log P ending in a non-blank)
    for t in range(frames.shape[0]):
        top = torch.topk(frames[t], min(prune, frames.shape[1]))
        candidates = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_blank, p_label) in beams.items():
            total = _logsumexp(p_blank, p_label)
            for log_p, k in zip(top.values.tolist(), top.indices.tolist()):
                if k == BLANK:
                    entry = candidates[prefix]
                    entry[0] = _logsumexp(entry[0], total + log_p)
                    continue
                extended = prefix + (k,)
                entry = candidates[extended]
                if prefix and prefix[-1] == k:  # a repeat needs a blank in between to count twice
                    entry[1] = _logsumexp(entry[1], p_blank + log_p)
                    same = candidates[prefix]
                    same[1] = _logsumexp(same[1], p_label + log_p)
                else:
                    entry[1] = _logsumexp(entry[1], total + log_p)
        ranked = sorted(candidates.items(), key=lambda item: -_logsumexp(*item[1]))[:beam_size]
        beams = {prefix: tuple(scores) for prefix, scores in ranked}
    best = max(beams.items(), key=lambda item: _logsumexp(*item[1]))[0]
    return [k - 1 for k in best]
