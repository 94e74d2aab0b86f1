"""The TIMIT reader, phone folding, features and frame labels, PER and CTC decoding, on a corpus the
tests generate in TIMIT's layout."""

import itertools
import math
import os

import numpy as np
import pytest
import soundfile
import torch
from timit_corpus import RATE, make_corpus, small_corpus, utterance, write_utterance

from seq2seq.errors import UserError
from seq2seq.speech.ctc import beam_decode, greedy_decode
from seq2seq.speech.features import IGNORE, FeatureConfig, cached_extract, extract, fbank, frame_labels
from seq2seq.speech.phones import FOLD_48_TO_39, PHONES_39, PHONES_48, PHONES_61, collapse, fold
from seq2seq.speech.scoring import edit_distance, phone_error_rate, to_39
from seq2seq.speech.timit import (CORE_TEST_SPEAKERS, DEV_SPEAKERS, Utterance, find_utterances, read_audio,
                                  read_phones, split_speakers)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory.mktemp("timit"))


# --- Reader ---

def test_reader_walks_the_layout_and_skips_sa_by_default(corpus):
    utterances = find_utterances(corpus)
    assert len(utterances) == 10 * 3
    assert {u.set for u in utterances} == {"TRAIN", "TEST"}
    assert not any(u.name.startswith("SA") for u in utterances)
    assert len(find_utterances(corpus, include_sa=True)) == 10 * 4
    first = utterances[0]
    assert first.dialect.startswith("DR") and first.wav.suffix == ".WAV" and first.phn.suffix == ".PHN"


def test_lower_case_copies_read_the_same(tmp_path):
    lower = make_corpus(tmp_path, {"TRAIN": ["FAAA0"], "TEST": ["MBBB0"]}, upper=False)
    utterances = find_utterances(lower)
    assert [(u.set, u.speaker, u.name) for u in utterances] == [
        ("TRAIN", "FAAA0", "SX0"), ("TRAIN", "FAAA0", "SX1"), ("TRAIN", "FAAA0", "SX2"),
        ("TEST", "MBBB0", "SX0"), ("TEST", "MBBB0", "SX1"), ("TEST", "MBBB0", "SX2")]
    assert utterances[0].wav.name == "sx0.wav"


def test_a_directory_that_is_not_timit_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="not a TIMIT layout: it has no TRAIN or TEST"):
        find_utterances(tmp_path)
    (tmp_path / "TRAIN" / "DR1" / "FXXX0").mkdir(parents=True)
    with pytest.raises(UserError, match="no DR\\*/SPEAKER/\\*.WAV"):
        find_utterances(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        find_utterances(tmp_path / "missing")


def test_sphere_round_trip(tmp_path):
    audio, segments = utterance(np.random.default_rng(1), ["aa", "s"])
    write_utterance(tmp_path, "SX1", audio, segments)
    assert soundfile.info(tmp_path / "SX1.WAV").format == "NIST"
    (u,) = one_utterance(tmp_path)
    np.testing.assert_array_equal(read_audio(u), audio.astype(np.float32) / 32768)


def one_utterance(directory):
    """The Utterance record of directory/SX1.{WAV,PHN}."""
    return [Utterance(directory / "SX1.WAV", directory / "SX1.PHN", "TRAIN", "DR1", "FXXX0", "SX1")]


def test_unreadable_audio_names_the_file(tmp_path):
    (tmp_path / "SX1.WAV").write_bytes(b"NIST_1A\n garbage")
    (tmp_path / "SX1.PHN").write_text("0 100 h#\n")
    with pytest.raises(UserError, match="SX1.WAV: unreadable audio"):
        read_audio(one_utterance(tmp_path)[0])


@pytest.mark.parametrize("text, message", [
    ("0 800 h#\n800 1600 zz\n", r"PHN:2: unknown phone label 'zz'"),
    ("0 800 h#\n900 1600 aa\n", r"PHN:2: segment 900-1600 does not follow"),
    ("0 800 h#\nabc\n", r"PHN:2: expected '<start> <end> <phone>'"),
    ("0 800 h#\n800 1000 aa\n", r"cover samples 0-1000 but the audio has 1600"),
    ("100 1600 h#\n", r"cover samples 100-1600"),
])
def test_bad_phn_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "SX1.PHN"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_phones(path, 1600)


def test_fallback_split_is_speaker_disjoint_and_says_so(corpus):
    split, how = split_speakers(find_utterances(corpus))
    speakers = {name: {u.speaker for u in us} for name, us in split.items()}
    assert speakers["dev"] == {"MTST0"} and speakers["test"] == {"MTST1", "MTST2", "MTST3"}
    assert speakers["train"] == {f"FTRN{i}" for i in range(6)}
    assert "fallback" in how and "MTST0" in how


def test_standard_split_uses_the_speaker_lists(tmp_path):
    assert len(CORE_TEST_SPEAKERS) == 24 and len(DEV_SPEAKERS) == 50 and not CORE_TEST_SPEAKERS & DEV_SPEAKERS
    root = make_corpus(tmp_path, {"TRAIN": ["FTRN0"], "TEST": ["FELC0", "MDAB0", "FAKS0", "MOTH0"]}, utterances=1)
    split, how = split_speakers(find_utterances(root))
    assert {u.speaker for u in split["test"]} == {"FELC0", "MDAB0"}
    assert {u.speaker for u in split["dev"]} == {"FAKS0"}
    assert how.startswith("standard split")


# --- Phones ---

def test_phone_sets_and_folding():
    assert (len(PHONES_61), len(PHONES_48), len(PHONES_39)) == (61, 48, 39)
    assert fold("q") is None
    assert [fold(p, 39) for p in ("ao", "ax-h", "axr", "zh", "el", "en", "nx", "ux", "hv")] == [
        "aa", "ah", "er", "sh", "l", "n", "n", "uw", "hh"]
    for closure in ("bcl", "dcl", "gcl", "pcl", "tcl", "kcl", "h#", "pau", "epi"):
        assert fold(closure, 39) == "sil"
    assert (fold("bcl"), fold("pcl"), fold("ix"), fold("ix", 39)) == ("vcl", "cl", "ix", "ih")
    assert all(PHONES_39[FOLD_48_TO_39[i]] == fold(p61, 39) for p61 in PHONES_61 if fold(p61)
               for i in [PHONES_48.index(fold(p61))])
    with pytest.raises(KeyError):
        fold("xx")


# --- Features and frame labels ---

def test_feature_shapes_follow_kaldi_framing():
    audio = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    statics = fbank(audio, FeatureConfig(num_bins=40))
    assert statics.shape == (1 + (RATE - 400) // 160, 40) == (98, 40)
    with_deltas = fbank(audio, FeatureConfig(num_bins=40, deltas=2))
    assert with_deltas.shape == (98, 120)
    np.testing.assert_allclose(with_deltas[:, :40], statics, rtol=1e-6)
    assert np.array_equal(statics, fbank(audio, FeatureConfig(num_bins=40)))  # no dither: deterministic


def test_higher_tones_light_higher_mel_bins():
    t = np.arange(RATE // 2) / RATE
    peaks = [fbank((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), FeatureConfig(num_bins=40))[10].argmax()
             for f in (300, 1000, 3000, 6000)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4


def test_frame_labels_follow_the_phone_under_each_frame_centre(corpus):
    (first,) = [u for u in find_utterances(corpus) if u.speaker == "FTRN0" and u.name == "SX0"]
    audio = read_audio(first)
    segments = read_phones(first.phn, len(audio))
    config = FeatureConfig(num_bins=8)
    features = fbank(audio, config)
    labels = frame_labels(segments, len(features), config)
    assert labels.shape == (len(features),)
    for i in range(len(features)):
        centre = 160 * i + 200
        (segment,) = [s for s in segments if s.start <= centre < s.end]
        expected = IGNORE if segment.label == "q" else PHONES_48.index(fold(segment.label))
        assert labels[i] == expected


def test_extract_keeps_utterances_apart(corpus):
    utterances = find_utterances(corpus)[:4]
    data = extract(utterances, FeatureConfig(num_bins=8))
    assert len(data) == 4 and data.offsets[-1] == len(data.features) == len(data.labels)
    features, labels, phones = data.utterance(2)
    audio = read_audio(utterances[2])
    assert features.shape == (1 + (len(audio) - 400) // 160, 8)
    segments = read_phones(utterances[2].phn, len(audio))
    assert phones.tolist() == [PHONES_48.index(fold(s.label)) for s in segments if s.label != "q"]


def test_feature_cache_follows_the_contents_of_wav_and_phn_files(tmp_path):
    root = make_corpus(tmp_path / "corpus", {"TRAIN": ["FAAA0"]}, utterances=2)
    utterances, config, cache, lines = find_utterances(root), FeatureConfig(num_bins=8), tmp_path / "cache", []
    first = cached_extract(utterances, config, cache, "train", log=lines.append)
    assert torch.equal(cached_extract(utterances, config, cache, "train", log=lines.append).features, first.features)
    phn = utterances[0].phn  # relabel the first phone after h#: same size, other content
    rows = phn.read_text().splitlines()
    start, end, label = rows[1].split()
    rows[1] = f"{start} {end} {'aa' if label != 'aa' else 'iy'}"
    phn.write_text("\n".join(rows) + "\n")
    relabelled = cached_extract(utterances, config, cache, "train", log=lines.append)
    assert not torch.equal(relabelled.labels, first.labels)
    assert torch.equal(relabelled.labels, extract(utterances, config).labels)
    wav = utterances[1].wav  # new audio of the same length: same size, written a second later
    audio, _ = utterance(np.random.default_rng(9), ["s"] * 3)
    before = wav.stat()
    soundfile.write(wav, np.resize(audio, len(read_audio(utterances[1]))), RATE, format="NIST", subtype="PCM_16")
    os.utime(wav, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert wav.stat().st_size == before.st_size
    redone = cached_extract(utterances, config, cache, "train", log=lines.append)
    assert torch.equal(redone.features, extract(utterances, config).features)
    assert not torch.equal(redone.features, relabelled.features)
    assert lines == []
    newest = max(cache.glob("train-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"truncated")
    rebuilt = cached_extract(utterances, config, cache, "train", log=lines.append)
    assert torch.equal(rebuilt.features, redone.features)
    assert len(lines) == 1 and str(newest) in lines[0] and "extracting the features again" in lines[0]


# --- Scoring and CTC ---

def test_edit_distance_and_per_on_known_sequences():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1
    assert edit_distance([1, 2, 4, 3, 5], [1, 2, 3]) == 2
    assert edit_distance([], [1, 2]) == 2
    cl, vcl, aa, ao = (PHONES_48.index(p) for p in ("cl", "vcl", "aa", "ao"))
    # cl and vcl both become sil and merge; ao scores as aa.
    assert to_39([cl, vcl, ao]) == [PHONES_39.index("sil"), PHONES_39.index("aa")]
    assert phone_error_rate([[ao, cl]], [[aa, vcl]]) == 0.0
    assert phone_error_rate([[aa], [cl, aa]], [[aa, cl], [aa]]) == pytest.approx(100 * 2 / 3)


def brute_force_ctc(log_probs):
    """The most probable collapsed output, summing over every alignment."""
    totals = {}
    steps, classes = log_probs.shape
    for path in itertools.product(range(classes), repeat=steps):
        output = tuple(k - 1 for k in collapse(list(path)) if k != 0)
        totals[output] = totals.get(output, 0.0) + math.exp(sum(log_probs[t, k].item() for t, k in enumerate(path)))
    return list(max(totals, key=totals.get))


@pytest.mark.parametrize("seed", range(6))
def test_ctc_beam_search_finds_the_brute_force_best_output(seed):
    torch.manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(5, 3) * 1.5, -1)
    assert beam_decode(log_probs, 5, beam_size=50, prune=3) == brute_force_ctc(log_probs)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    path = [0, 3, 3, 0, 3, 1, 1, 0]
    log_probs = torch.log(torch.nn.functional.one_hot(torch.tensor(path), 4).float() * 0.97 + 0.01)
    assert greedy_decode(log_probs, len(path)) == [2, 2, 0]
    assert greedy_decode(log_probs, 3) == [2]
    assert beam_decode(log_probs, len(path)) == [2, 2, 0]
