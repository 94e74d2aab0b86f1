"""Scoring a translator on a prepared split under accelerate: perplexity, greedy or beam hypotheses
gathered from every process in corpus order, and BLEU / chrF against the split's references."""

from __future__ import annotations

import math

import accelerate
import torch

from .data.batching import token_batches
from .data.encoded import EncodedPairs
from .metrics import corpus_scores
from .search import beam_search, greedy_search


@torch.no_grad()
def perplexity(model, pairs: EncodedPairs, accelerator, max_tokens: int) -> float:
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    batches = token_batches(pairs.src_lengths(), pairs.tgt_lengths(), max_tokens, shuffle=False)
    for indices in batches[accelerator.process_index :: accelerator.num_processes]:
        batch = pairs.batch(indices).to(accelerator.device)
        loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
        totals += torch.stack([loss.double(), count.double()])
    totals = accelerator.reduce(totals, "sum")
    model.train()
    return math.exp(totals[0].item() / totals[1].item())


@torch.no_grad()
def translate(model, pairs: EncodedPairs, tgt_tok, decoding, accelerator, beam: bool, shortlist=None) -> list[str]:
    """Detokenised hypotheses for every pair, in corpus order, gathered from all processes."""
    model.eval()
    batches = token_batches(pairs.src_lengths(), pairs.src_lengths(), 10**9, max_sentences=decoding.batch_size,
                            shuffle=False)
    index, hypotheses = [], []
    for indices in batches[accelerator.process_index :: accelerator.num_processes]:
        batch = pairs.batch(indices).to(accelerator.device)
        if beam:
            found = beam_search(model, batch.src, batch.src_lengths, decoding.beam_size, decoding.alpha,
                                decoding.max_len_a, decoding.max_len_b, shortlist=shortlist)
            tokens = [n[0].tokens for n in found]
        else:
            tokens = [h.tokens for h in greedy_search(model, batch.src, batch.src_lengths, decoding.max_len_a,
                                                      decoding.max_len_b)]
        index.extend(indices.tolist())
        hypotheses.extend(tgt_tok.decode([list(t) for t in tokens]))
    gathered = accelerate.utils.gather_object(list(zip(index, hypotheses)))
    model.train()
    return [text for _, text in sorted(dict(gathered).items())]


def evaluate(model, corpus, preset, accelerator, beam: bool, split: str) -> tuple[dict, list[str]]:
    """Scores (BLEU, chrF, signatures, perplexity) of a split and its hypotheses in corpus order."""
    shortlist = corpus.shortlist if beam else None
    hypotheses = translate(accelerator.unwrap_model(model), corpus.splits[split], corpus.tgt_tok, preset.decoding,
                           accelerator, beam, shortlist)
    scores = corpus_scores(hypotheses, corpus.references[split])
    scores["ppl"] = perplexity(model, corpus.splits[split], accelerator, preset.training.max_tokens)
    return scores, hypotheses
