"""Greedy and batched beam search over any model with encode(src, lengths) -> (memory, state) and
step(tokens, state, memory) -> (log_probs, state), where memory and state have select(index).

Beam search keeps sentences x beams in one (B * K) batch. A hypothesis that emits </s> is finished
with score log P(y, </s> | x) / lp(|y| + 1), lp being GNMT's length penalty ((5 + n) / 6)^alpha
(Wu et al. 2016, Eq. 14); a sentence is done once it has beam_size finished hypotheses, and search
stops when every sentence is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tokenizer import BOS, EOS, PAD


@dataclass(frozen=True)
class Hypothesis:
    """Output ids (no <s> / </s>), the length-normalised score, and the raw log-probability."""

    tokens: tuple[int, ...]
    score: float
    log_prob: float


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """Most output tokens (without </s>) per sentence: a * source length + b."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def constrain(log_probs: Tensor, step: int, limit: Tensor, min_len: int) -> Tensor:
    """Never <pad> or <s>; no </s> before min_len tokens; nothing but </s> once a row has `limit`
    tokens. log_probs: (N, V), changed in place; limit: (N,)."""
    log_probs[:, [PAD, BOS]] = float("-inf")
    if step < min_len:
        log_probs[:, EOS] = float("-inf")
    at_limit = limit <= step  # (N,)
    if at_limit.any():
        eos = log_probs[at_limit, EOS].clone()
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, EOS] = eos
    return log_probs


@torch.no_grad()
def greedy_search(model, src: Tensor, src_lengths: Tensor, max_len_a: float = 1.5, max_len_b: int = 10,
                  min_len: int = 0) -> list[Hypothesis]:
    """The most probable next token at every step. src: (S, B); returns one hypothesis per sentence."""
    memory, state = model.encode(src, src_lengths)
    batch = src.shape[1]
    limit = max_lengths(src_lengths, max_len_a, max_len_b)
    tokens = torch.full((batch,), BOS, dtype=torch.long, device=src.device)
    log_prob = torch.zeros(batch, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    outputs = []
    for step in range(int(limit.max()) + 1):
        log_probs, state = model.step(tokens, state, memory)
        log_probs = constrain(log_probs, step, limit, min_len)
        best, tokens = log_probs.max(dim=-1)
        log_prob += torch.where(finished, torch.zeros_like(best), best)
        outputs.append(torch.where(finished, torch.full_like(tokens, EOS), tokens))
        finished |= tokens == EOS
        if finished.all():
            break
    rows = torch.stack(outputs, dim=1).tolist()  # (B, steps)
    hypotheses = []
    for b, row in enumerate(rows):
        body = tuple(row[: row.index(EOS)])
        hypotheses.append(Hypothesis(body, log_prob[b].item(), log_prob[b].item()))
    return hypotheses


@torch.no_grad()
def beam_search(model, src: Tensor, src_lengths: Tensor, beam_size: int = 5, alpha: float = 0.0,
                max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0, nbest: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search. src: (S, B) right-padded; src_lengths: (B,).

    Returns, per sentence, its nbest finished hypotheses, best first, with scores
    log P / lp(alpha) (alpha = 0: the plain log-probability). Sentences that are done leave the batch,
    so the rest decode in a smaller one.
    """
    batch, k, device = src.shape[1], beam_size, src.device
    memory, state = model.encode(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # (B * K,)
    memory, state = memory.select(expand), state.select(expand)
    limit = max_lengths(src_lengths, max_len_a, max_len_b).repeat_interleave(k)  # (B * K,)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    tokens = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    history = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    active = list(range(batch))  # the corpus sentence behind each row group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(int(limit.max()) + 1):
        log_probs, state = model.step(tokens, state, memory)
        log_probs = constrain(log_probs, step, limit, min_len)  # (B' * K, V)
        vocab, groups = log_probs.shape[-1], len(active)
        candidates = (scores.unsqueeze(-1) + log_probs.view(groups, k, vocab)).view(groups, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B', 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        finish_ended(finished, active, top_scores[:, :k], top_beam[:, :k], top_token[:, :k], history, k, step, alpha)
        done = torch.tensor([len(finished[i]) >= k for i in active], device=device)  # (B',)
        if done.all():
            break
        # The best k candidates that do not end, per sentence, go on.
        alive_scores = top_scores.masked_fill(top_token == EOS, float("-inf"))
        scores, order = alive_scores.topk(k, dim=-1)  # (B', K)
        rows = (top_beam.gather(1, order) + torch.arange(groups, device=device).unsqueeze(1) * k).view(-1)
        tokens = top_token.gather(1, order).view(-1)  # (B' * K,)
        history = torch.cat([history[rows], tokens.unsqueeze(1)], dim=1)
        state = state.select(rows)
        if done.any():  # drop finished sentences from the batch
            keep = (~done).nonzero().squeeze(1)  # (B'',)
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active = [active[i] for i in keep.tolist()]
            scores, tokens, history, limit = scores[keep], tokens[keep_rows], history[keep_rows], limit[keep_rows]
            state, memory = state.select(keep_rows), memory.select(keep_rows)
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def finish_ended(finished, active, scores, beams, tokens, history, k, step, alpha) -> None:
    """Move candidates that emit </s> (among each sentence's top k) into finished[sentence]."""
    ended = (tokens == EOS) & torch.isfinite(scores)  # (B', K)
    for group, j in ended.nonzero().tolist():
        log_prob = scores[group, j].item()
        body = tuple(history[group * k + beams[group, j].item()].tolist())
        finished[active[group]].append(Hypothesis(body, log_prob / length_penalty(step + 1, alpha), log_prob))
