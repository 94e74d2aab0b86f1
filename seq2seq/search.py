"""Greedy and batched beam search over any model with encode(src, lengths) -> (memory, state) and
step(tokens, state, memory, output=None) -> (log_probs, state), where memory (one entry per sentence)
and state (one row per hypothesis) have select(index); with a shortlist, also output_slice(ids, allowed).

Beam search keeps sentences x beams in one (B * K) batch. A hypothesis that emits </s> is finished
with score log P(y, </s> | x) / lp(|y| + 1), lp being GNMT's length penalty ((5 + n) / 6)^alpha
(Wu et al. 2016, Eq. 14); a sentence is done once it has beam_size finished hypotheses, and search
stops when every sentence is done.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import Tensor

from .shortlist import Shortlist
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


def constrain(log_probs: Tensor, step: int, limit: Tensor, min_len: int, eos: int = EOS,
              banned: tuple[int, ...] = (PAD, BOS)) -> Tensor:
    """Never the banned columns (<pad>, <s>); no </s> (column eos) before min_len tokens; nothing but </s>
    once a row has `limit` tokens. log_probs: (N, V), changed in place; limit: (N,)."""
    if banned:
        log_probs[:, list(banned)] = float("-inf")
    if step < min_len:
        log_probs[:, eos] = float("-inf")
    at_limit = limit <= step  # (N,)
    if at_limit.any():
        ended = log_probs[at_limit, eos].clone()
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, eos] = ended
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
                max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0, nbest: int = 1,
                shortlist: Shortlist | None = None) -> list[list[Hypothesis]]:
    """Batched beam search. src: (S, B) right-padded; src_lengths: (B,).

    Returns, per sentence, its nbest finished hypotheses, best first, with scores
    log P / lp(alpha) (alpha = 0: the plain log-probability). A sentence starts from one hypothesis
    (<s>) and has up to beam_size from the next step on; the encoder memory is kept once per sentence.
    Sentences that are done leave the batch, so the rest decode in a smaller one. With a shortlist
    (seq2seq.shortlist) each sentence searches over its own target ids only.
    """
    batch, k, device = src.shape[1], beam_size, src.device
    memory, state = model.encode(src, src_lengths)  # one row per sentence
    limit = max_lengths(src_lengths, max_len_a, max_len_b)  # (B,)
    scores = torch.zeros((batch, 1), device=device)  # (B', R): R live hypotheses per sentence
    tokens = torch.full((batch,), BOS, dtype=torch.long, device=device)
    history = torch.empty((batch, 0), dtype=torch.long, device=device)
    active = list(range(batch))  # the corpus sentence behind each row group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    output, eos, banned = None, EOS, (PAD, BOS)  # log-prob columns are target ids
    if shortlist is not None:  # columns are positions in output.ids: </s> first, no <pad> / <s>
        output = model.output_slice(*shortlist.candidates(src, src_lengths))
        eos, banned = 0, ()
    for step in range(int(limit.max()) + 1):
        log_probs, state = model.step(tokens, state, memory, output)
        groups, rows = scores.shape
        log_probs = constrain(log_probs, step, limit.repeat_interleave(rows), min_len, eos, banned)  # (B' * R, V)
        vocab = log_probs.shape[-1]
        candidates = (scores.unsqueeze(-1) + log_probs.view(groups, rows, vocab)).view(groups, rows * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, rows * vocab), dim=-1)  # (B', 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        if output is not None:
            top_token = output.ids[top_token]  # column -> target id
        finish_ended(finished, active, top_scores[:, :k], top_beam[:, :k], top_token[:, :k], history, rows, step, alpha)
        # The best k candidates that do not end, per sentence, go on.
        alive_scores = top_scores.masked_fill(top_token == EOS, float("-inf"))
        scores, order = alive_scores.topk(min(k, alive_scores.shape[1]), dim=-1)  # (B', K)
        done = torch.tensor([len(finished[i]) >= k for i in active], device=device)  # (B',)
        done |= cannot_improve(finished, active, scores[:, 0], step, limit, alpha, nbest)
        if done.all():
            break
        picked = top_beam.gather(1, order) + torch.arange(groups, device=device).unsqueeze(1) * rows
        tokens = top_token.gather(1, order).view(-1)  # (B' * K,)
        history = torch.cat([history[picked.view(-1)], tokens.unsqueeze(1)], dim=1)
        state = state.select(picked.view(-1))
        if done.any():  # drop finished sentences from the batch
            keep = (~done).nonzero().squeeze(1)  # (B'',)
            keep_rows = (keep.unsqueeze(1) * scores.shape[1] + torch.arange(scores.shape[1], device=device)).view(-1)
            active = [active[i] for i in keep.tolist()]
            scores, limit, memory = scores[keep], limit[keep], memory.select(keep)
            output = None if output is None else output.select(keep)
            tokens, history, state = tokens[keep_rows], history[keep_rows], state.select(keep_rows)
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def cannot_improve(finished, active, best_alive: Tensor, step: int, limit: Tensor, alpha: float, nbest: int) -> Tensor:
    """(B',) True where no live hypothesis can still enter the n-best list, so stopping now gives the
    same n-best as searching on: log-probs only fall, so a live one ends with at most
    best_alive / lp(n) for some length n in [step + 2, limit + 1]."""
    longest = ((5.0 + limit.float() + 1.0) / 6.0) ** alpha  # (B',)
    bound = torch.maximum(best_alive / length_penalty(step + 2, alpha), best_alive / longest)
    nth = [heapq.nlargest(nbest, (h.score for h in finished[i]))[-1] if len(finished[i]) >= nbest
           else float("-inf") for i in active]
    return torch.tensor(nth, device=bound.device) >= bound


def finish_ended(finished, active, scores, beams, tokens, history, rows, step, alpha) -> None:
    """Move candidates that emit </s> (among each sentence's top k) into finished[sentence]; a sentence's
    hypotheses are `rows` consecutive rows of history."""
    ended = ((tokens == EOS) & torch.isfinite(scores)).nonzero()  # (E, 2): group, candidate
    if len(ended) == 0:
        return
    groups, j = ended.unbind(1)
    bodies = history[groups * rows + beams[groups, j]].tolist()
    penalty = length_penalty(step + 1, alpha)
    for group, log_prob, body in zip(groups.tolist(), scores[groups, j].tolist(), bodies):
        finished[active[group]].append(Hypothesis(tuple(body), log_prob / penalty, log_prob))
