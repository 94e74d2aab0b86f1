import random
import re
import subprocess
import sys

import pytest

from seq2seq.errors import UserError
from seq2seq.metrics import corpus_scores, paired_bootstrap

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


def test_paired_bootstrap_gives_the_sacrebleu_command_lines_figures(tmp_path):
    rng = random.Random(0)
    words = "un homme une femme chien court dans la rue avec le ballon rouge bleu vert".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) for _ in range(60)]

    def noisy(line, p):
        return " ".join(w if rng.random() > p else rng.choice(words) for w in line.split())
    baseline, system = [noisy(r, 0.2) for r in refs], [noisy(r, 0.35) for r in refs]
    for name, lines in (("ref", refs), ("a", baseline), ("b", system)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "a.txt"),
                          str(tmp_path / "b.txt"), "-m", "bleu", "chrf", "--paired-bs", "--paired-bs-n", "300",
                          "-f", "text"], capture_output=True, text=True, check=True).stdout
    cells = re.findall(r"([\d.]+) \(([\d.]+) ± ([\d.]+)\)", out)  # score (mean ± ci): a's BLEU, chrF, b's BLEU, chrF
    p_values = [float(p) for p in re.findall(r"p = ([\d.]+)", out)]
    ours = paired_bootstrap(baseline, system, refs, samples=300)
    assert list(ours) == ["BLEU", "chrF2"] and len(cells) == 4 and len(p_values) == 2
    for column, name in enumerate(ours):
        for row, side in enumerate(("baseline", "system")):
            score, mean, ci = (float(x) for x in cells[2 * row + column])
            got = ours[name][side]
            assert (round(got["score"], 1), round(got["mean"], 1), round(got["ci"], 1)) == (score, mean, ci)
        assert round(ours[name]["p_value"], 4) == p_values[column]
        assert "bs:300|seed:12345" in ours[name]["signature"]
    assert ours["BLEU"]["system"]["score"] < ours["BLEU"]["baseline"]["score"]
