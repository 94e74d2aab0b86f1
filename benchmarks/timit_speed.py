"""Speech throughput: feature extraction (utterances/s, real-time factor) and acoustic-model training
(frames/s) for each dropout placement.

    python benchmarks/timit_speed.py --timit-root ../shared/data/timit-synth [--steps 20]

Features: 40 log-mel filterbanks + deltas with kaldi-native-fbank over every TRAIN utterance, audio read
with soundfile. Training: the default preset's 3 x 256 bidirectional LSTM, Adam, framewise cross-entropy,
batches of 8 real utterances; zaremba and none run the fused kernel, variational and naive a step loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from seq2seq.acoustic_model import AcousticModel
from seq2seq.devices import keep_freed_memory
from seq2seq.presets import timit_default
from seq2seq.speech.features import extract
from seq2seq.speech.timit import find_utterances, split_speakers


def feature_speed(root: str) -> tuple:
    split, _ = split_speakers(find_utterances(root))
    utterances = split["train"]
    started = time.perf_counter()
    data = extract(utterances, timit_default().features, "bench")
    seconds = time.perf_counter() - started
    audio_seconds = len(data.features) * 0.01
    print(f"features: {len(utterances)} utterances in {seconds:.2f} s = {len(utterances) / seconds:.1f} utt/s, "
          f"{audio_seconds / seconds:.0f}x real time ({len(data.features)} frames)")
    return data


def training_speed(data, mode: str, steps: int) -> float:
    preset = timit_default()
    torch.manual_seed(0)
    model = AcousticModel(dataclasses.replace(preset.model, dropout_mode=mode)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = sorted(range(len(data)), key=lambda i: data.lengths()[i])
    batches = [order[i : i + preset.training.batch_size] for i in range(0, len(order), preset.training.batch_size)]
    frames, started = 0, None
    for step in range(steps + 2):
        rows = [data.utterance(i) for i in batches[step % len(batches)]]
        features = torch.nn.utils.rnn.pad_sequence([r[0] for r in rows])
        labels = torch.nn.utils.rnn.pad_sequence([r[1] for r in rows], padding_value=-1)
        lengths = torch.tensor([len(r[0]) for r in rows])
        if step == 2:
            frames, started = 0, time.perf_counter()
        logits = model(features, lengths)
        loss, count = model.loss(logits, lengths, labels, None, None)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        frames += int(lengths.sum())
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timit-root", default="../shared/data/timit-synth")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()  # the allocator setting the recipes train in
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = feature_speed(args.timit_root)
    for mode in ("zaremba", "none", "variational", "naive"):
        print(f"training {mode:11s}: {training_speed(data, mode, args.steps):8.0f} frames/s")


if __name__ == "__main__":
    main()
