"""The translation recipe's tiny preset end to end: train, save, reload through the CLI, translate, score."""

import json
import random
import subprocess
import sys

import pytest
from conftest import load_recipe
from recipe_runs import write_split

from seq2seq.metrics import corpus_scores

wmt = load_recipe("wmt14_enfr")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    rng = random.Random(0)
    for split, count in (("train", 400), ("valid", 30), ("test", 25)):
        write_split(root / split, count, rng)
    out = root / "run"
    results = wmt.main(["--preset", "tiny", "--output-dir", str(out), "--train-prefix", str(root / "train"),
                        "--valid-prefix", str(root / "valid"), "--test-prefix", str(root / "test"), "--epochs", "3"])
    return root, out, results


def test_recipe_writes_model_results_and_curves(trained):
    root, out, results = trained
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["bleu"] == pytest.approx(results["bleu"])
    assert {"bleu", "chrf", "bleu_signature", "chrf_signature", "dev", "config", "wall_time_s", "versions"} <= set(on_disk)
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors", "shortlist.safetensors",
                                                                  "source.model", "target.model"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    dev = on_disk["dev"]
    assert len(dev) >= 2 and dev[-1]["ppl"] < dev[0]["ppl"]  # it learns
    hyps = (out / "test.hyp").read_text().splitlines()
    refs = (root / "test.fr").read_text().splitlines()
    assert len(hyps) == 25
    assert corpus_scores(hyps, refs)["bleu"] == pytest.approx(results["bleu"])  # scored once, in corpus order


def translate_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "seq2seq.translate", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_cli_reproduces_the_recipe_and_sacrebleu(trained, tmp_path):
    root, out, results = trained
    scores_json = tmp_path / "scores.json"
    run = translate_cli("--model", str(out / "model"), "--input", str(root / "test.en"), "--output",
                        str(tmp_path / "test.hyp"), "--ref", str(root / "test.fr"), "--results-json", str(scores_json))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "test.hyp").read_text() == (out / "test.hyp").read_text()
    scores = json.loads(scores_json.read_text())
    assert scores["bleu"] == pytest.approx(results["bleu"])
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(root / "test.fr"), "-i", str(tmp_path / "test.hyp"),
                          "-m", "bleu", "-b", "-w", "6"], capture_output=True, text=True, check=True)
    assert round(scores["bleu"], 6) == pytest.approx(float(cli.stdout), abs=1e-6)
    assert "BLEU = " in run.stderr and "nrefs:1|case:mixed" in run.stderr


def test_cli_keeps_order_and_empty_lines_and_writes_nbest(trained):
    _, out, _ = trained
    run = translate_cli("--model", str(out / "model"), "--batch-size", "2", stdin="en1 en2 en3\n\nen4\nen5 en5\n")
    lines = run.stdout.split("\n")
    assert run.returncode == 0 and len(lines) == 5 and lines[1] == "" and lines[4] == ""
    alone = translate_cli("--model", str(out / "model"), stdin="en4\n")
    assert alone.stdout.strip() == lines[2]
    nbest = translate_cli("--model", str(out / "model"), "--nbest", "2", "--beam-size", "3", stdin="en1 en2\nen3\n")
    rows = [row.split(" ||| ") for row in nbest.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "1", "1"] and float(rows[0][2]) >= float(rows[1][2])


def test_cli_shortlist_and_workers(trained, tmp_path):
    root, out, _ = trained
    test = ["--input", str(root / "test.en")]
    default = translate_cli("--model", str(out / "model"), *test)  # the recipe's shortlist, 2 workers
    assert default.returncode == 0 and default.stdout == (out / "test.hyp").read_text()
    assert translate_cli("--model", str(out / "model"), *test, "--workers", "1").stdout == default.stdout
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in (out / "model").iterdir():
        if f.name != "shortlist.safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    exact = translate_cli("--model", str(bare), *test)
    assert translate_cli("--model", str(out / "model"), *test, "--no-shortlist").stdout == exact.stdout
    missing = translate_cli("--model", str(bare), *test, "--shortlist")
    assert missing.returncode == 2 and "has no shortlist.safetensors" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case, message", [
    ("missing", "no such model directory"),
    ("no_weights", "model.safetensors is missing"),
    ("bad_ref", "has 3 lines but there are 2 hypotheses"),
    ("corrupt", "not a readable safetensors file"),
])
def test_cli_errors_are_one_line_exit_2(trained, tmp_path, case, message):
    root, out, _ = trained
    model = out / "model"
    args = ["--model", str(model)]
    if case == "missing":
        args = ["--model", str(tmp_path / "nowhere")]
    elif case == "no_weights":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text((model / "config.json").read_text())
        args = ["--model", str(tmp_path / "m")]
    elif case == "bad_ref":
        (tmp_path / "ref").write_text("a\nb\nc\n")
        args += ["--ref", str(tmp_path / "ref")]
    elif case == "corrupt":
        copy = tmp_path / "c"
        copy.mkdir()
        for f in model.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
        args = ["--model", str(copy)]
    run = translate_cli(*args, stdin="en1\nen2\n")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr and "Traceback" not in run.stderr


def test_unreachable_hub_points_to_the_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        wmt.main(["--preset", "tiny", "--output-dir", str(tmp_path / "o"), "--dataset", "wmt/wmt14",
                  "--dataset-config", "fr-en"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset demo" in err[0]


def test_same_seed_same_run(trained, tmp_path):
    root, _, _ = trained
    common = ["--preset", "tiny", "--train-prefix", str(root / "train"), "--valid-prefix", str(root / "valid"),
              "--test-prefix", str(root / "test"), "--max-steps", "12"]
    a = wmt.main([*common, "--output-dir", str(tmp_path / "a"), "--seed", "3"])
    b = wmt.main([*common, "--output-dir", str(tmp_path / "b"), "--seed", "3"])
    c = wmt.main([*common, "--output-dir", str(tmp_path / "c"), "--seed", "4"])
    assert a["dev"][-1]["ppl"] == b["dev"][-1]["ppl"] and a["test_ppl"] == b["test_ppl"]
    assert a["dev"][-1]["ppl"] != c["dev"][-1]["ppl"]


def test_german_to_english_from_hub_schema_json_trains_translates_and_scores(tmp_path):
    """Any pair: a local json file in the hub's `translation` schema for de-en, through the recipe's
    prepared path, then `seq2seq-translate` with no language flag."""
    rng = random.Random(1)
    files = {}
    for split, count in (("train", 400), ("validation", 30), ("test", 25)):
        rows = []
        for _ in range(count):
            words = [rng.randrange(12) for _ in range(rng.randint(2, 6))]
            rows.append({"translation": {"de": " ".join(f"de{w}" for w in words),
                                         "en": " ".join(f"en{w}" for w in words).capitalize() + "."}})
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "test.de").write_text("".join(r["translation"]["de"] + "\n" for r in map(json.loads, files["test"].read_text().splitlines())))
    (tmp_path / "test.en").write_text("".join(r["translation"]["en"] + "\n" for r in map(json.loads, files["test"].read_text().splitlines())))
    out = tmp_path / "run"
    results = wmt.main(["--preset", "tiny", "--output-dir", str(out), "--dataset", "json", "--src-lang", "de",
                        "--tgt-lang", "en", "--data-files", *(f"{split}={path}" for split, path in files.items()),
                        "--epochs", "3"])
    assert (results["src_lang"], results["tgt_lang"]) == ("de", "en") and results["dev"][-1]["ppl"] < results["dev"][0]["ppl"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["src_lang"], config["tgt_lang"]) == ("de", "en")
    assert sorted(p.name for p in (out / "prepared" / "tokenizers").iterdir()) == ["de.model", "en.model"]
    run = translate_cli("--model", str(out / "model"), "--input", str(tmp_path / "test.de"), "--ref",
                        str(tmp_path / "test.en"), "--results-json", str(tmp_path / "scores.json"))
    assert run.returncode == 0, run.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["bleu"] == pytest.approx(results["bleu"]) and (scores["src_lang"], scores["tgt_lang"]) == ("de", "en")
    assert run.stdout == (out / "test.hyp").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--dataset-config", "fr-en"], "--dataset-config needs --dataset"),
    (["--data-files", "x.json"], "--data-files needs --dataset"),
    (["--src-lang", "de"], "train.de: no such file"),
])
def test_data_flags_apply_or_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        wmt.main(["--preset", "demo", "--output-dir", str(tmp_path / "o"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_test_prefix_alone_replaces_the_test_set(trained, tmp_path):
    root, _, _ = trained
    (tmp_path / "other.en").write_text("en1 en2\nen3\n")
    (tmp_path / "other.fr").write_text("Fr1 fr2.\nFr3.\n")
    results = wmt.main(["--preset", "tiny", "--output-dir", str(tmp_path / "o"), "--train-prefix", str(root / "train"),
                        "--valid-prefix", str(root / "valid"), "--test-prefix", str(tmp_path / "other"), "--max-steps", "2"])
    assert len((tmp_path / "o" / "test.hyp").read_text().splitlines()) == 2 and "bleu" in results
