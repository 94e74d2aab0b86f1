"""The translation recipe's tiny preset end to end: train, save, reload through the CLI, translate, score."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import load_recipe
from recipe_runs import write_split

from seq2seq.devices import bf16_supported
from seq2seq.metrics import corpus_scores, paired_bootstrap

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

wmt = load_recipe("wmt14_enfr")
TINY = ["--preset", "tiny", "--eval-every", "20"]  # the tests' corpora are small: dev scores often


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    rng = random.Random(0)
    for split, count in (("train", 400), ("valid", 30), ("test", 25)):
        write_split(root / split, count, rng)
    out = root / "run"
    results = wmt.main([*TINY, "--output-dir", str(out), "--train-prefix", str(root / "train"),
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
    speed = on_disk["speed"]  # target tokens/s against the machine's GEMM-bound ceiling
    assert speed["efficiency"] == pytest.approx(speed["units_per_sec"] / speed["ceiling_units_per_sec"])
    bf16 = bf16_supported(torch.device("cpu"))  # the default, --mixed-precision auto, trains in bf16 where served
    assert on_disk["mixed_precision"] == ("bf16" if bf16 else "no")
    assert 0 < speed["efficiency"] and speed["precision"] == ("bf16" if bf16 else "fp32")
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
    speed = scores["speed"]  # the search's own time, without loading the model or reading the input
    assert speed["unit"] == "sentences" and speed["seconds"] > 0 and speed["device"] == "cpu"
    assert speed["units_per_sec"] == pytest.approx(scores["sentences"] / speed["seconds"])
    assert speed["precision"] == {"bfloat16": "bf16", "float32": "fp32"}[scores["dtype"]]
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(root / "test.fr"), "-i", str(tmp_path / "test.hyp"),
                          "-m", "bleu", "-b", "-w", "6"], capture_output=True, text=True, check=True)
    assert round(scores["bleu"], 6) == pytest.approx(float(cli.stdout), abs=1e-6)
    assert "BLEU = " in run.stderr and "nrefs:1|case:mixed" in run.stderr


def test_cli_compares_two_systems_with_sacrebleus_paired_bootstrap(trained, tmp_path):
    root, out, _ = trained
    refs = (root / "test.fr").read_text().splitlines()
    other = [" ".join(reversed(line.split())) for line in refs]  # another system: the references' words reversed
    (tmp_path / "other.hyp").write_text("\n".join(other) + "\n")
    run = translate_cli("--model", str(out / "model"), "--input", str(root / "test.en"), "--ref", str(root / "test.fr"),
                        "--compare", str(tmp_path / "other.hyp"), "--results-json", str(tmp_path / "scores.json"))
    assert run.returncode == 0, run.stderr
    reported = json.loads((tmp_path / "scores.json").read_text())["paired_bootstrap"]
    assert reported == json.loads(json.dumps(paired_bootstrap(other, run.stdout.splitlines(), refs)))
    assert f"BLEU: this model {reported['BLEU']['system']['score']:.2f}" in run.stderr
    assert f"paired bootstrap p = {reported['chrF2']['p_value']:.4f}" in run.stderr
    alone = translate_cli("--model", str(out / "model"), "--compare", str(tmp_path / "other.hyp"), stdin="en1\n")
    assert alone.returncode == 2 and "--compare needs --ref" in alone.stderr


def test_cli_keeps_order_and_empty_lines_and_writes_nbest(trained):
    _, out, _ = trained
    run = translate_cli("--model", str(out / "model"), "--batch-size", "2", stdin="en1 en2 en3\n\nen4\nen5 en5\n")
    lines = run.stdout.split("\n")
    assert run.returncode == 0 and len(lines) == 5 and lines[1] == "" and lines[4] == ""
    alone = translate_cli("--model", str(out / "model"), stdin="en4\n")
    assert alone.stdout.strip() == lines[2]
    nbest = translate_cli("--model", str(out / "model"), "--nbest", "2", "--beam-size", "3", stdin="en1 en2\nen3\n")
    rows = read_nbest(nbest.stdout)
    assert [r["index"] for r in rows] == [0, 0, 1, 1] and rows[0]["total"] >= rows[1]["total"]


def read_nbest(text: str) -> list[dict]:
    """A reader of the Moses / Marian n-best format: INDEX ||| HYPOTHESIS ||| NAME= VALUE ... ||| TOTAL."""
    rows = []
    for line in text.splitlines():
        index, hypothesis, features, total = line.split(" ||| ")
        names, values = features.split()[0::2], features.split()[1::2]
        assert all(name.endswith("=") for name in names)
        rows.append({"index": int(index), "hypothesis": hypothesis, "total": float(total),
                     "features": {name[:-1]: float(value) for name, value in zip(names, values)}})
    return rows


def test_nbest_is_four_fields_and_exactly_n_per_line(trained):
    _, out, _ = trained
    config = json.loads((out / "model" / "config.json").read_text())
    run = translate_cli("--model", str(out / "model"), "--nbest", "5", "--beam-size", "5", "--length-penalty", "0.6",
                        stdin="en1 en2 en3\nen4\nen5 en6 en7 en8 en9 en1\n")
    rows = read_nbest(run.stdout)
    assert [r["index"] for r in rows] == [0] * 5 + [1] * 5 + [2] * 5
    assert config["decoding"]["alpha"] == 0.6
    for row in rows:  # TOTAL = F0 (log P without penalty) / ((5 + |y| + 1) / 6) ** alpha: |y| + 1 a whole number
        length = 6 * (row["features"]["F0"] / row["total"]) ** (1 / 0.6) - 5
        assert length == pytest.approx(round(length), abs=1e-2) and round(length) >= 1
    for i in range(3):
        totals = [r["total"] for r in rows if r["index"] == i]
        assert totals == sorted(totals, reverse=True)


def test_padding_to_n_repeats_the_best(monkeypatch):
    from seq2seq import translate
    from seq2seq.search import Hypothesis

    best, other = Hypothesis((5, 6), -1.0, -1.5), Hypothesis((7,), -2.0, -2.5)

    class Tok:
        def encode(self, lines):
            return [[4] for _ in lines]

        def decode(self, rows):
            return [" ".join(map(str, r)) for r in rows]

    monkeypatch.setattr(translate, "beam_search", lambda *args, **kwargs: [[best, other]])
    model = torch.nn.Linear(1, 1)
    model.config = type("Config", (), {"reverse_source": True})()
    rows = translate.translate_lines(model, Tok(), Tok(), ["x"], beam_size=4, alpha=0.0, max_len_a=1.5, max_len_b=5,
                                     batch_size=4, nbest=4)
    assert [row[1] for row in rows[0]] == [best, other, best, best]
    assert translate.formatted(rows, 7, 4).splitlines()[2] == "7 ||| 5 6 ||| F0= -1.500000 ||| -1.000000"


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
        wmt.main([*TINY, "--output-dir", str(tmp_path / "o"), "--dataset", "wmt/wmt14",
                  "--dataset-config", "fr-en"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset demo" in err[0]


def test_same_seed_same_run(trained, tmp_path):
    root, _, _ = trained
    common = [*TINY, "--train-prefix", str(root / "train"), "--valid-prefix", str(root / "valid"),
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
    results = wmt.main([*TINY, "--output-dir", str(out), "--dataset", "json", "--src-lang", "de",
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
    results = wmt.main([*TINY, "--output-dir", str(tmp_path / "o"), "--train-prefix", str(root / "train"),
                        "--valid-prefix", str(root / "valid"), "--test-prefix", str(tmp_path / "other"), "--max-steps", "2"])
    assert len((tmp_path / "o" / "test.hyp").read_text().splitlines()) == 2 and "bleu" in results


def test_invalid_utf8_on_stdin_names_the_line_and_keeps_what_was_translated(trained):
    _, out, _ = trained
    run = subprocess.run([sys.executable, "-m", "seq2seq.translate", "--model", str(out / "model"), "--buffer-size", "1"],
                         input=b"en1 en2\nen3\ncaf\xe9 en4\nen5\n", capture_output=True, timeout=300)
    assert run.returncode == 2 and b"Traceback" not in run.stderr
    assert run.stderr.decode().strip() == "error: stdin, line 3: invalid UTF-8 (invalid continuation byte)"
    assert len(run.stdout.decode().splitlines()) == 2  # the lines before it were answered


def test_output_file_appears_only_when_complete(trained, tmp_path):
    root, out, _ = trained
    target = tmp_path / "out.txt"
    target.write_text("the previous translation\n")
    (tmp_path / "in.txt").write_bytes(b"en1\nen2\n\xff\n")
    failed = translate_cli("--model", str(out / "model"), "--input", str(tmp_path / "in.txt"), "--output", str(target),
                           "--buffer-size", "1")
    assert failed.returncode == 2 and "in.txt, line 3: invalid UTF-8" in failed.stderr
    assert target.read_text() == "the previous translation\n" and sorted(os.listdir(tmp_path)) == ["in.txt", "out.txt"]
    done = translate_cli("--model", str(out / "model"), "--input", str(root / "test.en"), "--output", str(target))
    assert done.returncode == 0 and target.read_text() == (out / "test.hyp").read_text()


def test_chunks_of_any_size_give_the_same_output(trained):
    root, out, _ = trained
    whole = translate_cli("--model", str(out / "model"), "--input", str(root / "test.en"))
    for size in ("1", "7"):
        assert translate_cli("--model", str(out / "model"), "--input", str(root / "test.en"), "--buffer-size",
                             size).stdout == whole.stdout


def test_interactive_use_answers_each_line_before_the_next(trained):
    """Through a pseudo-terminal, as a person would: type a line, read its translation, type the next."""
    pexpect = pytest.importorskip("pexpect")
    root, out, _ = trained
    expected = (out / "test.hyp").read_text().splitlines()[:3]
    sources = (root / "test.en").read_text().splitlines()[:3]
    child = pexpect.spawn(sys.executable, ["-m", "seq2seq.translate", "--model", str(out / "model")], timeout=120,
                          encoding="utf-8", echo=False)
    try:
        for source, translation in zip(sources, expected):
            child.sendline(source)
            child.expect_exact(translation + "\r\n")  # answered while the input is still open
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_device_dtype_version_and_help(trained):
    _, out, _ = trained
    if not torch.cuda.is_available():
        run = translate_cli("--model", str(out / "model"), "--device", "cuda", stdin="en1\n")
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
        assert "--device cuda: CUDA is not available on this machine" in run.stderr
    assert translate_cli("--model", str(out / "model"), "--device", "tpu", stdin="en1\n").returncode == 2
    version = translate_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("seq2seq-translate 0.1.0")
    text = translate_cli("--help").stdout
    for flag in ("--beam-size", "--nbest", "--max-len-a", "--max-len-b", "--results-json", "--buffer-size", "--device",
                 "--dtype", "--length-penalty", "--workers", "--batch-size"):
        assert flag in text
    assert text.count("default:") >= 12
    fp32 = translate_cli("--model", str(out / "model"), "--input", str(out.parent / "test.en"), "--device", "cpu")
    bf16 = translate_cli("--model", str(out / "model"), "--input", str(out.parent / "test.en"), "--device", "cpu",
                         "--dtype", "bf16")
    assert bf16.returncode == 0 and len(bf16.stdout.splitlines()) == len(fp32.stdout.splitlines())
    if "decoding in fp32" in bf16.stderr:  # a CPU without bf16: one notice, then the fp32 result
        assert bf16.stdout == fp32.stdout and len(bf16.stderr.strip().splitlines()) == 1


def test_average_of_checkpoints_is_their_mean_and_a_usable_model(trained, tmp_path):
    from safetensors.torch import load_file

    from seq2seq.average import average
    from seq2seq.errors import UserError

    root, out, _ = trained
    steps = sorted((out / "checkpoints").glob("step-*"))[-3:]
    assert len(steps) == 3
    run = subprocess.run([sys.executable, "-m", "seq2seq.average", "--inputs", *map(str, steps), "--output",
                          str(tmp_path / "avg")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    weights = [load_file(step / "model.safetensors") for step in steps]
    averaged = load_file(tmp_path / "avg" / "model.safetensors")
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, sum(w[name] for w in weights) / 3, rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in (tmp_path / "avg").iterdir()) == sorted(p.name for p in (out / "model").iterdir())
    translated = translate_cli("--model", str(tmp_path / "avg"), "--input", str(root / "test.en"))
    assert translated.returncode == 0 and len(translated.stdout.splitlines()) == 25
    (tmp_path / "odd").mkdir()
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "odd" / "model.safetensors"))
    with pytest.raises(UserError, match="holds other tensors"):
        average([steps[0], tmp_path / "odd"], tmp_path / "bad")
    from seq2seq.average import main as average_command

    assert average_command(["--inputs", *map(str, steps), "--output", str(tmp_path / "again")]) is None


def test_recipe_scores_the_average_of_its_last_checkpoints(trained, tmp_path):
    root, _, _ = trained
    results = wmt.main([*TINY, "--output-dir", str(tmp_path / "o"), "--train-prefix", str(root / "train"),
                        "--valid-prefix", str(root / "valid"), "--test-prefix", str(root / "test"), "--max-steps", "40",
                        "--checkpoint-every", "10", "--average-last", "3"])
    kept = sorted(p.name for p in (tmp_path / "o" / "checkpoints").glob("step-*"))
    assert results["averaged"]["checkpoints"] == kept[-3:] and kept[-1] == "step-000000040"
    assert 0 <= results["averaged"]["bleu"] <= 100 and (tmp_path / "o" / "averaged" / "config.json").is_file()
    with pytest.raises(SystemExit) as refused:
        wmt.main(["--preset", "tiny", "--average-last", "5", "--keep-checkpoints", "3"])
    assert refused.value.code == 2


def test_alignment_lines_are_translation_then_source_target_pairs(trained):
    from seq2seq.tokenizer import Tokenizer

    root, out, _ = trained
    sources = (root / "test.en").read_text().splitlines()[:6]
    run = translate_cli("--model", str(out / "model"), "--alignment", stdin="\n".join(sources) + "\n")
    assert run.returncode == 0, run.stderr
    plain = translate_cli("--model", str(out / "model"), stdin="\n".join(sources) + "\n").stdout.splitlines()
    src_tok, tgt_tok = Tokenizer(out / "model" / "source.model"), Tokenizer(out / "model" / "target.model")
    for line, source, translation in zip(run.stdout.splitlines(), sources, plain):
        text, pairs = line.split(" ||| ")
        assert text == translation
        links = [tuple(map(int, pair.split("-"))) for pair in pairs.split()]
        n_src, n_tgt = len(src_tok.encode([source])[0]), len(tgt_tok.encode([text])[0])
        assert all(0 <= s < n_src and 0 <= t < n_tgt for s, t in links)
        assert len({t for _, t in links}) == len(links)  # one source piece per target piece at most
    refused = translate_cli("--model", str(out / "model"), "--alignment", "--nbest", "2", "--beam-size", "3", stdin="en1\n")
    assert refused.returncode == 2 and "--nbest 1" in refused.stderr
