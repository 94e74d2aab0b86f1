import subprocess
import sys

import pytest

from seq2seq.errors import UserError
from seq2seq.metrics import corpus_scores

HYPS = ["Un chien court dans l'herbe.", "Deux hommes parlent.", "Une femme lit un livre rouge."]
REFS = ["Un chien court sur l'herbe.", "Deux hommes discutent.", "Une femme lit un livre rouge."]


def sacrebleu_cli(tmp_path, metric):
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n")
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-m", metric, "-b", "-w", "4"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_scores_equal_the_sacrebleu_command_line(tmp_path):
    scores = corpus_scores(HYPS, REFS)
    assert round(scores["bleu"], 4) == pytest.approx(sacrebleu_cli(tmp_path, "bleu"), abs=1e-4)
    assert round(scores["chrf"], 4) == pytest.approx(sacrebleu_cli(tmp_path, "chrf"), abs=1e-4)
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_perfect_output_scores_100_and_lengths_must_match():
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    with pytest.raises(UserError, match="has 2 lines but there are 3 hypotheses"):
        corpus_scores(HYPS, REFS[:2])


def test_paired_bootstrap_from_the_command_line(tmp_path):
    """The README's significance test: sacrebleu's paired bootstrap between two systems."""
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n")
    (tmp_path / "a.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(REFS[:2] + ["Une femme."]) + "\n")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "a.txt"),
                          str(tmp_path / "b.txt"), "-m", "bleu", "--paired-bs", "--paired-bs-n", "100", "-f", "text"],
                         capture_output=True, text=True, check=True)
    assert "p = " in out.stdout
