import pytest
import torch

from seq2seq.data.word_corpus import EOS, UNK, Vocabulary, batchify, read_lines, window, window_starts
from seq2seq.errors import UserError


def test_vocabulary_orders_by_frequency_and_adds_eos(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(" b a b \n c b a\n", encoding="utf-8")
    lines = read_lines(path)
    vocab = Vocabulary.build(lines)
    assert vocab.words == ("b", EOS, "a", "c")  # b:3, <eos>:2, a:2 (ties alphabetical: '<' < 'a'), c:1
    assert vocab.encode(lines).tolist() == [0, 2, 0, 1, 3, 0, 2, 1]


def test_vocabulary_caps_size_and_keeps_unk():
    lines = [["a", "a", "b", UNK, "c"]]
    vocab = Vocabulary.build(lines, max_size=3)
    assert len(vocab) == 3 and UNK in vocab.words
    assert vocab.encode([["zzz"]]).tolist() == [vocab.words.index(UNK), vocab.words.index(EOS)]


def test_batchify_lays_contiguous_pieces_in_columns():
    data = batchify(torch.arange(23), 4)
    assert data.shape == (5, 4)
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]


def test_windows_cover_every_target_once():
    data = batchify(torch.arange(103), 3)  # (34, 3)
    targets = torch.cat([window(data, s, 5)[1] for s in window_starts(len(data), 5)])
    inputs = torch.cat([window(data, s, 5)[0] for s in window_starts(len(data), 5)])
    assert torch.equal(targets, data[1:]) and torch.equal(inputs, data[:-1])


def test_missing_empty_and_non_utf8_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_lines(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty.txt: the file holds no words"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"bad.txt, line 2: invalid UTF-8"):
        read_lines(tmp_path / "bad.txt")


def test_stream_too_short_for_batch():
    with pytest.raises(UserError, match="too short"):
        batchify(torch.arange(5), 4)
