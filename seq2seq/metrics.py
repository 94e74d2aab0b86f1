"""Translation quality through sacrebleu: corpus BLEU and chrF on detokenised text against raw
references, reported with their signatures, and paired bootstrap resampling between two systems."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF

from .errors import UserError


def check_aligned(hypotheses: list[str], references: list[str], where: str = "references") -> None:
    if len(hypotheses) != len(references):
        raise UserError(f"{where} has {len(references)} lines but there are {len(hypotheses)} hypotheses")


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """{"bleu", "chrf", "bleu_signature", "chrf_signature"}: sacrebleu defaults (13a, cased)."""
    check_aligned(hypotheses, references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {"bleu": bleu_score.score, "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
            "bleu_text": str(bleu_score), "chrf_text": str(chrf_score)}
