"""Kaldi-compatible log-mel filterbanks (kaldi-native-fbank), optional deltas, frame labels from PHN
boundaries, mean/variance normalisation, and an on-disk cache so that only the first epoch pays.

Frames: 25 ms windows every 10 ms with Kaldi's snip_edges, so frame i covers samples
[160 i, 160 i + 400) and takes the label of the phone under its centre sample 160 i + 200.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from ..checkpoint import atomic_write
from ..devices import to_device
from .phones import PHONES_48, fold
from .timit import SAMPLE_RATE, speech_library, Segment, Utterance, read_audio, read_phones

IGNORE = -1  # frames of the deleted phone q: no training target, not scored


@dataclass(frozen=True)
class FeatureConfig:
    num_bins: int = 40
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    deltas: int = 0  # 0: statics only; 2: + delta + delta-delta
    normalization: str = "global"  # global (training-set statistics) or speaker (each speaker's own)

    @property
    def dim(self) -> int:
        return self.num_bins * (1 + self.deltas)

    @property
    def shift(self) -> int:
        return int(SAMPLE_RATE * self.frame_shift_ms / 1000)

    @property
    def length(self) -> int:
        return int(SAMPLE_RATE * self.frame_length_ms / 1000)


def fbank(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """(N,) float32 waveform in [-1, 1) -> (frames, dim) log-mel features, Kaldi's defaults otherwise
    (povey window, pre-emphasis 0.97) and no dither, so features are deterministic."""
    knf = speech_library("kaldi_native_fbank")
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.frame_opts.frame_length_ms = config.frame_length_ms
    options.frame_opts.frame_shift_ms = config.frame_shift_ms
    options.mel_opts.num_bins = config.num_bins
    extractor = knf.OnlineFbank(options)
    extractor.accept_waveform(SAMPLE_RATE, (audio * 32768.0).tolist())  # Kaldi works on 16-bit sample values
    extractor.input_finished()
    features = np.array([extractor.get_frame(i) for i in range(extractor.num_frames_ready)], dtype=np.float32)
    features = features.reshape(-1, config.num_bins)
    if config.deltas:
        features = knf.compute_deltas(knf.DeltaOptions(order=config.deltas, window=2), features)
    return features


def frame_labels(segments: list[Segment], num_frames: int, config: FeatureConfig) -> np.ndarray:
    """(frames,) int64 indices into PHONES_48 of the phone under each frame's centre; IGNORE for q."""
    centres = np.arange(num_frames) * config.shift + config.length // 2
    ends = np.array([s.end for s in segments])
    which = np.minimum(np.searchsorted(ends, centres, side="right"), len(segments) - 1)
    classes = [IGNORE if fold(s.label) is None else PHONES_48.index(fold(s.label)) for s in segments]
    return np.array(classes, dtype=np.int64)[which]


def phone_sequence(segments: list[Segment]) -> list[int]:
    """The utterance's phones as PHONES_48 indices, q deleted: the CTC target and the PER reference."""
    return [PHONES_48.index(fold(s.label)) for s in segments if fold(s.label) is not None]


@dataclass
class FeatureSet:
    """Every utterance of one split, stored flat: features (frames, dim), labels (frames,), offsets
    (U + 1,), the phone sequences flat with their own offsets, and each utterance's speaker index."""

    features: Tensor
    labels: Tensor
    offsets: Tensor
    phones: Tensor
    phone_offsets: Tensor
    speakers: Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return self.offsets.diff().tolist()

    def utterance(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Features (T, dim), frame labels (T,), phone sequence (P,) of utterance i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.features[a:b], self.labels[a:b], self.phones[self.phone_offsets[i] : self.phone_offsets[i + 1]]


def padded_batch(data: FeatureSet, indices: list[int], device) -> dict[str, Tensor]:
    """Right-padded time-major features (T, B, D), lengths (B,), frame labels (T, B) with IGNORE at
    padding, phone targets (B, P) and their lengths, on `device`."""
    rows = [data.utterance(i) for i in indices]
    pad = torch.nn.utils.rnn.pad_sequence
    batch = {
        "features": pad([r[0] for r in rows]),
        "lengths": torch.tensor([len(r[0]) for r in rows]),
        "labels": pad([r[1] for r in rows], padding_value=IGNORE),
        "phones": pad([r[2] for r in rows], batch_first=True),
        "phone_lengths": torch.tensor([len(r[2]) for r in rows]),
    }
    return {name: to_device(tensor, device) for name, tensor in batch.items()}


def extract(utterances: list[Utterance], config: FeatureConfig, desc: str = "features") -> FeatureSet:
    """Features, frame labels and phone sequences of every utterance (a progress bar on long lists)."""
    features, labels, phones, speakers = [], [], [], []
    speaker_index: dict[str, int] = {}
    for utterance in tqdm(utterances, desc=desc, unit="utt", leave=False, disable=len(utterances) < 50):
        audio = read_audio(utterance)
        segments = read_phones(utterance.phn, len(audio))
        feats = fbank(audio, config)
        features.append(torch.from_numpy(feats))
        labels.append(torch.from_numpy(frame_labels(segments, len(feats), config)))
        phones.append(torch.tensor(phone_sequence(segments), dtype=torch.long))
        speakers.append(speaker_index.setdefault(utterance.speaker, len(speaker_index)))
    return FeatureSet(torch.cat(features), torch.cat(labels), _offsets(features), torch.cat(phones),
                      _offsets(phones), torch.tensor(speakers), [u.id for u in utterances])


def _offsets(rows: list[Tensor]) -> Tensor:
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(r) for r in rows]).cumsum(0)
    return offsets


def cached_extract(utterances: list[Utterance], config: FeatureConfig, cache_dir: Path, desc: str,
                   log: Callable[[str], None] = print) -> FeatureSet:
    """extract(), read from cache_dir when a file for exactly these utterances, their contents and this config
    exists. The key covers each WAV's path, size and modification time and the bytes of its PHN file, so an
    edited recording or transcription is extracted again; an unreadable cache file is rebuilt (one line)."""
    key = hashlib.sha256(json.dumps([asdict(config), [content_identity(u) for u in utterances]]).encode()).hexdigest()
    path = Path(cache_dir) / f"{desc}-{key[:16]}.safetensors"
    if path.is_file():
        try:
            return FeatureSet(**load_file(path), ids=[u.id for u in utterances])
        except (SafetensorError, OSError, TypeError) as error:
            log(f"{path}: unreadable feature cache ({str(error).splitlines()[0]}); extracting the features again")
    result = extract(utterances, config, desc)
    tensors = {k: v.contiguous() for k, v in asdict(result).items() if k != "ids"}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return result


def content_identity(utterance: Utterance) -> list:
    """What the cached features of one utterance depend on: [wav path, size, mtime (ns), sha256 of the PHN]."""
    stat = Path(utterance.wav).stat()
    phn = hashlib.sha256(Path(utterance.phn).read_bytes()).hexdigest()
    return [str(utterance.wav), stat.st_size, stat.st_mtime_ns, phn]


def mean_and_inv_std(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and 1 / standard deviation of (frames, dim) features."""
    return features.mean(0), 1.0 / features.std(0).clamp_min(1e-5)


def normalize_per_speaker(data: FeatureSet) -> FeatureSet:
    """Each speaker's features to zero mean, unit variance with that speaker's own statistics
    (unsupervised speaker CMVN, as in Kaldi: it reads the speaker's audio, never a label).
    Global normalisation instead uses the training set's statistics, stored in the model."""
    features = data.features.clone()
    frame_speaker = torch.repeat_interleave(data.speakers, data.offsets.diff())  # (frames,)
    for speaker in data.speakers.unique():
        rows = frame_speaker == speaker
        mean, inv_std = mean_and_inv_std(data.features[rows])
        features[rows] = (data.features[rows] - mean) * inv_std
    return FeatureSet(features, data.labels, data.offsets, data.phones, data.phone_offsets, data.speakers, data.ids)
