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
    """Output ids (no <s> / </s>), the length-normalised score, the raw log-probability, and (when search
    was asked for alignments) the encoder position each output id attended to most."""

    tokens: tuple[int, ...]
    score: float
    log_prob: float
    alignment: tuple[int, ...] = ()


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_lengths: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """Most output tokens (without </s>) per sentence: a * source length + b."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def constrain(log_probs: Tensor, step: int, limit: Tensor | None, min_len: int, eos: int = EOS,
              banned: tuple[int, ...] = (PAD, BOS)) -> Tensor:
    """Never the banned columns (<pad>, <s>); no </s> (column eos) before min_len tokens; nothing but </s>
    once a row has `limit` tokens. log_probs: (N, V), changed in place; limit: (N,), or None when the caller
    knows that no row has reached its limit yet (beam search keeps the limits on the host and skips the
    five operations on every step but the last few). No host sync."""
    if banned:
        log_probs[:, list(banned)] = float("-inf")
    if step < min_len:
        log_probs[:, eos] = float("-inf")
    if limit is None:
        return log_probs
    at_limit = limit <= step  # (N,)
    ended = log_probs[:, eos].clone()  # (N,)
    log_probs.masked_fill_(at_limit.unsqueeze(1), float("-inf"))
    log_probs[:, eos] = torch.where(at_limit, ended, log_probs[:, eos])
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
                shortlist: Shortlist | None = None, alignment: bool = False) -> list[list[Hypothesis]]:
    """Batched beam search. src: (S, B) right-padded; src_lengths: (B,).

    Returns, per sentence, its nbest finished hypotheses, best first, with scores
    log P / lp(alpha) (alpha = 0: the plain log-probability). A sentence starts from one hypothesis
    (<s>) and has up to beam_size from the next step on; the encoder memory is kept once per sentence.
    Sentences that are done leave the batch, so the rest decode in a smaller one. With a shortlist
    (seq2seq.shortlist) each sentence searches over its own target ids only. With alignment (attention
    models) each hypothesis also carries, per output id, the encoder position it attended to most.

    The scores and choices stay on the model's device; one transfer per step brings the host what it
    decides with (which candidates end, whether a sentence is done), and the hypotheses' tokens are kept
    on the host as back-pointers, so on a GPU a step waits for the device once (twice when sentences
    leave the batch under a shortlist, whose columns are then recounted).
    """
    batch, k, device = src.shape[1], beam_size, src.device
    memory, state = model.encode(src, src_lengths)  # one row per sentence
    limit = max_lengths(src_lengths, max_len_a, max_len_b)  # (B,)
    limits = limit.tolist()
    scores = torch.zeros((batch, 1), device=device)  # (B', R): R live hypotheses per sentence
    tokens = torch.full((batch,), BOS, dtype=torch.long, device=device)
    # per step: each live row's parent, token, and attended position (None when no alignment is asked)
    trail: list[tuple[list[int], list[int], list[int] | None]] = []
    active = list(range(batch))  # the corpus sentence behind each row group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    output, eos, banned = None, EOS, (PAD, BOS)  # log-prob columns are target ids
    if shortlist is not None:  # columns are positions in output.ids: </s> first, no <pad> / <s>
        output = model.output_slice(*shortlist.candidates(src, src_lengths))
        eos, banned = 0, ()
    for step in range(max(limits) + 1):
        groups, rows = scores.shape
        if alignment:
            log_probs, state, positions = model.step(tokens, state, memory, output, alignment=True)
        else:
            (log_probs, state), positions = model.step(tokens, state, memory, output), None
        row_limit = limit.repeat_interleave(rows) if step >= min(limits[s] for s in active) else None
        log_probs = constrain(log_probs, step, row_limit, min_len, eos, banned)  # (B' * R, V)
        vocab = log_probs.shape[-1]
        # (B', R, V) summed with each row's score (in place: log_probs is ours), then (B', R * V): every
        # extension of every hypothesis
        candidates = log_probs.view(groups, rows, vocab).add_(scores.unsqueeze(-1)).view(groups, rows * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, rows * vocab), dim=-1)  # (B', 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        if output is not None:
            top_token = output.ids[top_token]  # column -> target id
        # The best k candidates that do not end, per sentence, go on.
        alive_scores = top_scores.masked_fill(top_token == EOS, float("-inf"))
        scores, order = alive_scores.topk(min(k, alive_scores.shape[1]), dim=-1)  # (B', K)
        picked = top_beam.gather(1, order) + torch.arange(groups, device=device).unsqueeze(1) * rows  # (B', K)
        tokens = top_token.gather(1, order)  # (B', K)
        width = min(k, top_scores.shape[1])
        columns = [top_scores[:, :width], top_beam[:, :width], top_token[:, :width], scores[:, :1], picked, tokens]
        if positions is not None:
            columns.append(positions.view(groups, rows))
        host = torch.cat([column.double() for column in columns], dim=1).tolist()  # (B', ...): the one sync
        done = [retire(finished[active[g]], row, width, g * rows, trail, step, alpha, k, nbest, limits[active[g]])
                for g, row in enumerate(host)]
        if all(done):
            break
        tokens, keep = tokens.view(-1), [g for g, d in enumerate(done) if not d]  # tokens: (B' * K,)
        width_alive = scores.shape[1]
        at = 3 * width + 1  # host row: ..., picked (width_alive), tokens (width_alive), positions (rows)
        parents = [int(p) for g in keep for p in host[g][at : at + width_alive]]
        trail.append((parents, [int(t) for g in keep for t in host[g][at + width_alive : at + 2 * width_alive]],
                      None if positions is None else
                      [int(host[p // rows][at + 2 * width_alive + p % rows]) for p in parents]))
        state = state.select(picked.view(-1))  # rows (B' * K,)
        if len(keep) < groups:  # drop finished sentences from the batch
            kept = torch.tensor(keep, device=device)  # (B'',)
            # (B'', K) -> (B'' * K,): the rows of the sentences kept
            keep_rows = (kept.unsqueeze(1) * width_alive + torch.arange(width_alive, device=device)).view(-1)
            active = [active[g] for g in keep]
            scores, limit, memory = scores[kept], limit[kept], memory.select(kept)
            output = None if output is None else output.select(kept)
            tokens, state = tokens[keep_rows], state.select(keep_rows)
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def retire(finished: list[Hypothesis], row: list[float], width: int, first_row: int, trail, step: int, alpha: float,
           k: int, nbest: int, limit: int) -> bool:
    """Move a sentence's candidates that emit </s> (among its top k) into finished; True when the sentence
    is done: k finished, or no live hypothesis can still enter the n-best. row: the sentence's host copy
    [scores, beams, tokens (width each), best live score, ...]."""
    if EOS in row[2 * width : 3 * width]:  # most sentences at most steps: no candidate ends, nothing to move
        penalty = length_penalty(step + 1, alpha)
        for j in range(width):
            score, beam, token = row[j], int(row[width + j]), int(row[2 * width + j])
            if token == EOS and score != float("-inf"):
                tokens, positions = backtrack(trail, first_row + beam)
                finished.append(Hypothesis(tokens, score / penalty, score, positions))
    return len(finished) >= k or cannot_improve(finished, row[3 * width], step, limit, alpha, nbest)


def backtrack(trail, row: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tokens of live row `row` and the positions they attended to: follow the parents back."""
    tokens, positions = [], []
    for parents, step_tokens, step_positions in reversed(trail):
        tokens.append(step_tokens[row])
        if step_positions is not None:
            positions.append(step_positions[row])
        row = parents[row]
    return tuple(reversed(tokens)), tuple(reversed(positions))


def cannot_improve(finished: list[Hypothesis], best_alive: float, step: int, limit: int, alpha: float, nbest: int) -> bool:
    """True when no live hypothesis can still enter the n-best list, so stopping now gives the same n-best
    as searching on: log-probs only fall, so a live one ends with at most best_alive / lp(n) for some
    length n in [step + 2, limit + 1]."""
    if len(finished) < nbest:
        return False
    bound = max(best_alive / length_penalty(step + 2, alpha), best_alive / length_penalty(limit + 1, alpha))
    return heapq.nlargest(nbest, (h.score for h in finished))[-1] >= bound
