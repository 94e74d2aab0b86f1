"""The TIMIT corpus as the LDC ships it: ROOT/{TRAIN,TEST}/DR<n>/<SPEAKER>/<UTT>.{WAV,PHN,WRD,TXT}, in
upper or lower case. WAV files are NIST SPHERE, read with soundfile; PHN files hold
"<start sample> <end sample> <label>" lines in the 61-phone set.

Standard splits: train = TRAIN without the SA sentences; the 24-speaker core test set (192 utterances)
of the TIMIT documentation (timit/doc/testset.doc) and the 50-speaker development set used by Kaldi's
egs/timit recipe (conf/dev_spk.list), both drawn from TEST and disjoint. A corpus without those
speakers (a synthetic TIMIT-layout corpus, a subset) falls back to a speaker-disjoint split of TEST:
speakers sorted by name, every fourth (the 1st, 5th, ...) is dev, the rest test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import importlib

import numpy as np

from ..errors import UserError
from .phones import FOLDING

CORE_TEST_SPEAKERS = frozenset("""
    MDAB0 MWBT0 FELC0 MTAS1 MWEW0 FPAS0 MJMP0 MLNT0 FPKT0 MLLL0 MTLS0 FJLM0
    MBPM0 MKLT0 FNLP0 MCMJ0 MJDH0 FMGD0 MGRT0 MNJM0 FDHC0 MJLN0 MPAM0 FMLD0""".split())
DEV_SPEAKERS = frozenset("""
    FAKS0 MMDB1 MBDG0 FEDW0 MTDT0 FSEM0 MDVC0 MRJM4 MJSW0 MTEB0 FDAC1 MMDM2 MBWM0 MGJF0 MTHC0 MBNS0 MERS0
    FCAL1 MREB0 MJFC0 FJEM0 MPDF0 MCSH0 MGLB0 MWJG0 MMJR0 FMAH0 MMWH0 FGJD0 MRJR0 MGWT0 FCMH0 FADG0 MRTK0
    FNMR0 MDLS0 FDRW0 FJSJ0 FJMG0 FMML0 MJAR0 FKMS0 FDMS0 MTAA0 FREW0 MDLF0 MRCS0 MAJC0 MROA0 MRWS1""".split())

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Utterance:
    """One TIMIT utterance: its audio and phone files, and who said it."""

    wav: Path
    phn: Path
    set: str  # TRAIN or TEST
    dialect: str  # DR1 ... DR8
    speaker: str  # e.g. FELC0
    name: str  # e.g. SX19

    @property
    def id(self) -> str:
        return f"{self.speaker}_{self.name}"


@dataclass(frozen=True)
class Segment:
    start: int  # first sample
    end: int  # one past the last sample
    label: str  # a 61-set phone


def _child(directory: Path, name: str) -> Path | None:
    """directory/name in any letter case."""
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.name.lower() == name.lower():
            return path
    return None


def find_utterances(root: str | Path, sets: tuple[str, ...] = ("TRAIN", "TEST"), include_sa: bool = False
                    ) -> list[Utterance]:
    """Every utterance under root/{set}/DR*/SPEAKER/ that has both a WAV and a PHN file, sorted.
    A set that is missing is skipped; no set at all is an error."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory (--timit-root)")
    found, present = [], []
    for set_name in sets:
        set_dir = _child(root, set_name)
        if set_dir is None:
            continue
        present.append(set_name)
        for dialect in sorted(p for p in set_dir.iterdir() if re.fullmatch(r"dr\d", p.name.lower())):
            for speaker in sorted(p for p in dialect.iterdir() if p.is_dir()):
                found.extend(_speaker_utterances(speaker, set_name, dialect.name.upper(), include_sa))
    if not present:
        raise UserError(f"{root} is not a TIMIT layout: it has no {' or '.join(sets)} directory")
    if not found:
        raise UserError(f"{root} is not a TIMIT layout: no DR*/SPEAKER/*.WAV with a .PHN under {'/'.join(present)}")
    return found


def _speaker_utterances(speaker: Path, set_name: str, dialect: str, include_sa: bool) -> list[Utterance]:
    files = {p.name.upper(): p for p in speaker.iterdir()}
    utterances = []
    for name in sorted(n[:-4] for n in files if n.endswith(".WAV")):
        if name.startswith("SA") and not include_sa:
            continue
        if f"{name}.PHN" in files:
            utterances.append(Utterance(files[f"{name}.WAV"], files[f"{name}.PHN"], set_name, dialect,
                                        speaker.name.upper(), name))
    return utterances


def speech_library(name: str):
    """soundfile / kaldi_native_fbank, or one clear line saying how to install the speech extras."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"the speech extras are not installed ({name}): pip install -e '.[speech]'") from None


def read_audio(utterance: Utterance) -> np.ndarray:
    """The waveform as float32 in [-1, 1), (N,). A file soundfile cannot read is a UserError."""
    soundfile = speech_library("soundfile")
    try:
        audio, rate = soundfile.read(utterance.wav, dtype="float32")
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise UserError(f"{utterance.wav}: unreadable audio ({error})") from None
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise UserError(f"{utterance.wav}: expected 16 kHz mono audio, got {rate} Hz with shape {audio.shape}")
    return audio


def read_phones(path: Path, num_samples: int) -> list[Segment]:
    """Parse a PHN file; every line must be "<start> <end> <label>" with a known label, in order, and the
    segments must cover the audio from sample 0 to its end (TIMIT's h# pads both ends)."""
    segments = []
    for number, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise UserError(f"{path}:{number}: expected '<start> <end> <phone>', got {line.strip()!r}")
        start, end, label = int(fields[0]), int(fields[1]), fields[2]
        if label not in FOLDING:
            raise UserError(f"{path}:{number}: unknown phone label {label!r} (not one of TIMIT's 61)")
        if end <= start or (segments and start != segments[-1].end):
            raise UserError(f"{path}:{number}: segment {start}-{end} does not follow the previous one "
                            f"(ends at {segments[-1].end if segments else 0})")
        segments.append(Segment(start, end, label))
    if not segments or segments[0].start > 0 or segments[-1].end < num_samples - FRAME_TOLERANCE:
        covered = f"{segments[0].start}-{segments[-1].end}" if segments else "nothing"
        raise UserError(f"{path}: the phone segments cover samples {covered} but the audio has {num_samples}")
    return segments


# TIMIT's last segment may stop short of the file's end by less than a frame (25 ms).
FRAME_TOLERANCE = 400


def split_speakers(utterances: list[Utterance]) -> tuple[dict[str, list[Utterance]], str]:
    """train / dev / test utterances and a sentence saying which split definition was used."""
    train = [u for u in utterances if u.set == "TRAIN"]
    test_set = [u for u in utterances if u.set == "TEST"]
    core = [u for u in test_set if u.speaker in CORE_TEST_SPEAKERS]
    dev = [u for u in test_set if u.speaker in DEV_SPEAKERS]
    if core and dev:
        return {"train": train, "dev": dev, "test": core}, (
            f"standard split: {len({u.speaker for u in dev})} dev speakers (Kaldi), "
            f"{len({u.speaker for u in core})} core test speakers")
    speakers = sorted({u.speaker for u in test_set})
    dev_speakers = set(speakers[::4]) if len(speakers) > 1 else set()
    split = {"train": train, "dev": [u for u in test_set if u.speaker in dev_speakers],
             "test": [u for u in test_set if u.speaker not in dev_speakers]}
    return split, (f"the standard dev/core-test speakers are not in this corpus: fallback split of TEST by "
                   f"speaker, dev = every 4th speaker by name ({', '.join(sorted(dev_speakers)) or 'none'}), "
                   f"test = the other {len(speakers) - len(dev_speakers)}")
