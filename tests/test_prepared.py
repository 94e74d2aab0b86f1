"""The prepared corpus: arrays equal to encoding the pairs directly, the manifest, reuse and rebuild,
interrupted preparations, streamed sources, and the data flags that must apply or be refused."""

import argparse
import dataclasses
import json
import os
import random

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2
from recipe_runs import write_split

from seq2seq.data import prepared as prepared_module
from seq2seq.data.options import add_data_flags, data_from_flags
from seq2seq.data.parallel import clean_pairs, read_parallel_text
from seq2seq.data.prepared import MANIFEST, Reservoir, prepare
from seq2seq.errors import UserError
from seq2seq.presets import translation_demo, translation_tiny
from seq2seq.tokenizer import Tokenizer


@pytest.fixture
def toy(tmp_path):
    rng = random.Random(0)
    for split, count in (("train", 300), ("valid", 20), ("test", 15)):
        write_split(tmp_path / split, count, rng)
    with open(tmp_path / "train.en", "a") as src, open(tmp_path / "train.fr", "a") as tgt:  # one pair cleaning removes
        src.write(" ".join(["en1"] * 9) + "\n")
        tgt.write("Fr1.\n")
    preset = translation_tiny()
    data = dataclasses.replace(preset.data, train_prefix=str(tmp_path / "train"), valid_prefix=str(tmp_path / "valid"),
                               test_prefix=str(tmp_path / "test"), max_ratio=3.0)
    return tmp_path, data, preset.decoding


def rows(pairs, side):
    return [pairs.row(getattr(pairs, side), getattr(pairs, f"{side}_offsets"), i) for i in range(len(pairs))]


def test_arrays_equal_encoding_the_cleaned_pairs_directly(toy):
    root, data, decoding = toy
    corpus = prepare(data, decoding, root / "prepared", log=lambda line: None)
    pairs = list(clean_pairs(read_parallel_text(root / "train", "en", "fr"), data.max_words, data.max_ratio))
    assert len(pairs) == 300  # the 9:1 pair is gone
    train = corpus.splits["train"]
    assert isinstance(train.src, np.memmap) and train.src.dtype == np.uint16
    assert rows(train, "src") == corpus.src_tok.encode([a for a, _ in pairs])
    assert rows(train, "tgt") == corpus.tgt_tok.encode([b for _, b in pairs])
    test = read_parallel_text(root / "test", "en", "fr")
    assert rows(corpus.splits["test"], "src") == corpus.src_tok.encode([a for a, _ in test])
    assert corpus.references["test"] == [b for _, b in test]
    manifest = corpus.manifest
    assert manifest["counts"]["train"]["pairs"] == 300 and manifest["counts"]["test"]["pairs"] == 15
    assert manifest["cleaning"]["train"]["bad_ratio"] == 1 and manifest["cleaning"]["train"]["kept"] == 300
    assert manifest["tokenizers"]["fingerprints"] == [corpus.src_tok.fingerprint(), corpus.tgt_tok.fingerprint()]
    source = manifest["settings"]["sources"]["train"]["files"][0]
    assert source["size"] == (root / "train.en").stat().st_size and "mtime" in source
    assert {"created", "seq2seq_version", "timings"} <= set(manifest)
    assert corpus.shortlist is not None and corpus.shortlist.translations.shape[0] == len(corpus.src_tok)


def test_matching_manifest_is_reused_and_other_settings_rebuild_or_are_refused(toy):
    root, data, decoding = toy
    lines = []
    prepare(data, decoding, root / "p", log=lines.append)
    stamp = os.stat(root / "p" / "train" / "src.tokens.npy").st_mtime_ns
    prepare(data, decoding, root / "p", log=lines.append)
    assert "reused" in lines[-1] and os.stat(root / "p" / "train" / "src.tokens.npy").st_mtime_ns == stamp
    stricter = dataclasses.replace(data, max_words=4)
    with pytest.raises(UserError, match=r"prepared with other settings \(cleaning\)") as refused:
        prepare(stricter, decoding, root / "p", explicit=True, log=lines.append)
    assert "\n" not in str(refused.value)
    corpus = prepare(stricter, decoding, root / "p", log=lines.append)
    assert "rebuilding" in " ".join(lines[-3:]) and len(corpus.splits["train"]) < 300
    (root / "train.fr").write_text((root / "train.fr").read_text().replace("fr1", "fr2"))  # the source changed
    prepare(stricter, decoding, root / "p", log=lines.append)
    assert "sources" in " ".join(lines[-3:]) and "rebuilding" in " ".join(lines[-3:])


def test_a_tokenizer_changed_after_preparation_is_caught_by_its_fingerprint(toy):
    root, data, decoding = toy
    lines = []
    corpus = prepare(data, decoding, root / "p", log=lines.append)
    src_name = corpus.manifest["tokenizers"]["files"][0]
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString((root / "p" / "tokenizers" / src_name).read_bytes())
    model.pieces[10].score -= 1.0  # another model of the same size: it segments differently
    (root / "p" / "tokenizers" / src_name).write_bytes(model.SerializeToString())
    assert len(Tokenizer(root / "p" / "tokenizers" / src_name)) == len(corpus.src_tok)
    with pytest.raises(UserError, match=f"tokenizers/{src_name} changed after preparation") as refused:
        prepare(data, decoding, root / "p", explicit=True, log=lines.append)
    assert "\n" not in str(refused.value)
    rebuilt = prepare(data, decoding, root / "p", log=lines.append)
    assert "rebuilding" in " ".join(lines[-3:])
    assert rebuilt.src_tok.fingerprint() == corpus.manifest["tokenizers"]["fingerprints"][0]  # the same seeded model
    assert rebuilt.shortlist.tokenizers == tuple(corpus.manifest["tokenizers"]["fingerprints"])


def test_an_interrupted_preparation_leaves_nothing_that_is_reused(toy, monkeypatch):
    root, data, decoding = toy
    real = prepared_module.encode_split
    calls = []

    def dies_on_the_test_split(pairs, tokenizers, directory, *args):
        calls.append(directory.name)
        if directory.name == "test":
            raise KeyboardInterrupt  # as a kill would, after train and valid were written
        return real(pairs, tokenizers, directory, *args)

    monkeypatch.setattr(prepared_module, "encode_split", dies_on_the_test_split)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, decoding, root / "p", log=lambda line: None)
    assert not (root / "p").exists() and (root / "p.partial" / "train" / "src.tokens.npy").is_file()
    assert not (root / "p.partial" / MANIFEST).exists()
    monkeypatch.setattr(prepared_module, "encode_split", real)
    lines = []
    corpus = prepare(data, decoding, root / "p", log=lines.append)
    assert "preparing" in lines[0] and len(corpus.splits["test"]) == 15 and not (root / "p.partial").exists()


def test_streamed_hub_schema_source_with_a_cut_goes_through_the_spool(tmp_path):
    pairs = [(f"de{i} de{i % 7} hallo", f"en{i} en{i % 7} hello") for i in range(120)]
    for name, chunk in (("train", pairs), ("validation", pairs[:5]), ("test", pairs[5:9])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"translation": {"de": a, "en": b}}) + "\n"
                                                        for a, b in chunk))
    data = dataclasses.replace(translation_tiny().data, dataset="json", train_prefix=None, valid_prefix=None,
                               test_prefix=None, src_lang="de", tgt_lang="en", max_train_pairs=100, vocab_size=60,
                               data_files=tuple(f"{s}={tmp_path / s}.jsonl" for s in ("train", "validation", "test")))
    corpus = prepare(data, translation_tiny().decoding, tmp_path / "p", log=lambda line: None)
    assert corpus.manifest["settings"]["sources"]["train"]["dataset"] == "json"
    assert sorted(p.name for p in (tmp_path / "p" / "tokenizers").iterdir()) == ["de.model", "en.model"]
    assert rows(corpus.splits["train"], "tgt") == corpus.tgt_tok.encode([b for _, b in pairs[:100]])
    assert corpus.references["valid"] == [b for _, b in pairs[:5]]
    assert not list((tmp_path / "p").glob("spool*"))


def test_joint_vocabulary_is_one_model_for_both_sides(toy):
    root, data, decoding = toy
    corpus = prepare(dataclasses.replace(data, joint_vocabulary=True, vocab_size=80), decoding, root / "j",
                     log=lambda line: None)
    assert sorted(p.name for p in (root / "j" / "tokenizers").iterdir()) == ["joint.model"]
    assert corpus.src_tok.fingerprint() == corpus.tgt_tok.fingerprint()
    assert corpus.src_tok.decode(corpus.src_tok.encode(["Fr4 en5."])) == ["Fr4 en5."]


def test_bundled_tokenizers_are_copied_with_the_corpus(toy):
    root, data, decoding = toy
    demo = translation_demo().data
    bundled = dataclasses.replace(data, tokenizer_dir=str(prepared_module.Path(__file__).parents[1] / demo.tokenizer_dir))
    corpus = prepare(bundled, decoding, root / "b", log=lambda line: None)
    original = prepared_module.Tokenizer(prepared_module.Path(bundled.tokenizer_dir) / "en.model")
    assert corpus.src_tok.fingerprint() == original.fingerprint() and len(corpus.src_tok) == 4000


def test_reservoir_is_seeded_uniform_and_keeps_everything_when_small():
    small = Reservoir(10, seed=0)
    for i in range(7):
        small.add(i)
    assert small.items == list(range(7))
    hits = np.zeros(100)
    for seed in range(300):
        sample = Reservoir(10, seed)
        for i in range(100):
            sample.add(i)
        hits[sample.items] += 1
    assert hits.sum() == 3000 and hits.min() > 10 and hits.max() < 60  # each item ~30 times
    again = Reservoir(10, 5)
    for i in range(100):
        again.add(i)
    first = Reservoir(10, 5)
    for i in range(100):
        first.add(i)
    assert again.items == first.items


def flags(*argv):
    parser = argparse.ArgumentParser()
    add_data_flags(parser)
    return parser.parse_args(list(argv))


def test_each_data_flag_applies_on_its_own():
    demo = translation_demo().data
    only_test = data_from_flags(demo, flags("--test-prefix", "my/test"))
    assert only_test.test_prefix == "my/test" and only_test.train_prefix.endswith("data/multi30k/train")
    assert only_test.tokenizer_dir is not None  # same training data, same vocabulary
    hub = data_from_flags(demo, flags("--dataset", "json", "--data-files", "train=a.json", "--valid-prefix", "v"))
    assert (hub.dataset, hub.data_files, hub.train_prefix, hub.valid_prefix, hub.test_prefix) == \
        ("json", ("train=a.json",), None, "v", None)
    pair = data_from_flags(demo, flags("--src-lang", "de", "--tgt-lang", "en"))
    assert (pair.src_lang, pair.tgt_lang, pair.tokenizer_dir) == ("de", "en", None)
    paper = data_from_flags(translation_tiny().data, flags("--max-train-pairs", "7"))
    assert paper.max_train_pairs == 7
    from seq2seq.presets import translation_paper

    configured = data_from_flags(translation_paper().data, flags("--dataset-config", "de-en"))
    assert (configured.dataset, configured.dataset_config) == ("wmt/wmt14", "de-en")


@pytest.mark.parametrize("argv, message", [
    (["--dataset-config", "de-en"], "--dataset-config needs --dataset"),
    (["--data-files", "a.json"], "--data-files needs --dataset"),
])
def test_a_flag_that_cannot_apply_is_refused(argv, message):
    with pytest.raises(UserError, match=message):
        data_from_flags(translation_demo().data, flags(*argv))


def test_sigkill_during_preparation_leaves_nothing_that_is_reused(tmp_path):
    """A real kill -9 of seq2seq-prepare while it writes the training arrays; the next run starts again."""
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(2)
    write_split(tmp_path / "train", 60_000, rng)
    for split in ("valid", "test"):
        write_split(tmp_path / split, 10, rng)
    command = [sys.executable, "-m", "seq2seq.prepare", "--preset", "tiny", "--output", str(tmp_path / "p"),
               "--max-train-pairs", "60000",  # all of them (the tiny preset takes the first 2,000)
               *(arg for split in ("train", "valid", "test") for arg in (f"--{split}-prefix", str(tmp_path / split)))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    arrays, deadline = tmp_path / "p.partial" / "train" / "src.tokens.npy", time.time() + 120
    while not (arrays.is_file() and arrays.stat().st_size > 4096) and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert process.poll() is None, "the preparation ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial" / MANIFEST).exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert manifest["counts"]["train"]["pairs"] == 60_000 and not (tmp_path / "p.partial").exists()


def test_commands_return_nothing_so_their_console_scripts_exit_0(toy, capsys):
    """Console scripts hand main()'s return value to sys.exit: anything but None would exit 1."""
    from seq2seq import prepare as prepare_command

    root, _, _ = toy
    flags = [arg for split in ("train", "valid", "test") for arg in (f"--{split}-prefix", str(root / split))]
    assert prepare_command.main(["--preset", "tiny", "--output", str(root / "cli"), *flags]) is None
    assert json.loads(capsys.readouterr().out)["counts"]["train"]["pairs"] == 300
    with pytest.raises(SystemExit) as refused:  # another setting for a directory the user named: one line, exit 2
        prepare_command.main(["--preset", "tiny", "--output", str(root / "cli"), "--max-train-pairs", "10", *flags])
    assert refused.value.code == 2 and "prepared with other settings (max_train_pairs)" in capsys.readouterr().err
