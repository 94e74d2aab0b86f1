"""Translation quality through sacrebleu: corpus BLEU and chrF on detokenised text against raw
references, reported with their signatures, and paired bootstrap resampling between two systems
(Koehn 2004) through sacreBLEU's own implementation."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

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


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000) -> dict:
    """Paired bootstrap resampling (Koehn 2004) of BLEU and chrF: `system` against `baseline`, both scored
    against `references` on the same `samples` resamplings of the test set. Runs sacreBLEU's PairedTest, the
    code behind `sacrebleu REF -i BASELINE SYSTEM -m bleu chrf --paired-bs`, so the figures are the CLI's
    (seeded the same way: 12345, or the SACREBLEU_SEED environment variable).
    Returns {metric name: {"baseline": {"score", "mean", "ci"}, "system": {"score", "mean", "ci"}, "p_value",
    "signature"}}; ci is the half-width of the 95% interval around the bootstrap mean."""
    check_aligned(baseline, references)
    check_aligned(system, references, where="the compared system")
    test = PairedTest([("baseline", baseline), ("system", system)], {"bleu": BLEU(), "chrf": CHRF()}, [references],
                      test_type="bs", n_samples=samples)
    signatures, scores = test()
    report = {}
    for name, (base, other) in ((k, v) for k, v in scores.items() if k != "System"):
        report[name] = {"baseline": {"score": base.score, "mean": float(base.mean), "ci": float(base.ci)},
                        "system": {"score": other.score, "mean": float(other.mean), "ci": float(other.ci)},
                        "p_value": float(other.p_value), "signature": str(signatures[name])}
    return report
