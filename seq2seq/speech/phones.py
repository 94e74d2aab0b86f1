"""TIMIT's phone sets: the 61 labels of the transcriptions, folded to 48 for training and to 39 for
scoring (Lee & Hon 1989, "Speaker-independent phone recognition using hidden Markov models", Table I;
the same table as Kaldi's egs/timit conf/phones.60-48-39.map). The glottal stop `q` is deleted.
"""

from __future__ import annotations

# label: (48-class fold, 39-class fold); None = deleted (q).
FOLDING: dict[str, tuple[str, str] | None] = {
    "aa": ("aa", "aa"), "ae": ("ae", "ae"), "ah": ("ah", "ah"), "ao": ("ao", "aa"), "aw": ("aw", "aw"),
    "ax": ("ax", "ah"), "ax-h": ("ax", "ah"), "axr": ("er", "er"), "ay": ("ay", "ay"), "b": ("b", "b"),
    "bcl": ("vcl", "sil"), "ch": ("ch", "ch"), "d": ("d", "d"), "dcl": ("vcl", "sil"), "dh": ("dh", "dh"),
    "dx": ("dx", "dx"), "eh": ("eh", "eh"), "el": ("el", "l"), "em": ("m", "m"), "en": ("en", "n"),
    "eng": ("ng", "ng"), "epi": ("epi", "sil"), "er": ("er", "er"), "ey": ("ey", "ey"), "f": ("f", "f"),
    "g": ("g", "g"), "gcl": ("vcl", "sil"), "h#": ("sil", "sil"), "hh": ("hh", "hh"), "hv": ("hh", "hh"),
    "ih": ("ih", "ih"), "ix": ("ix", "ih"), "iy": ("iy", "iy"), "jh": ("jh", "jh"), "k": ("k", "k"),
    "kcl": ("cl", "sil"), "l": ("l", "l"), "m": ("m", "m"), "n": ("n", "n"), "ng": ("ng", "ng"),
    "nx": ("n", "n"), "ow": ("ow", "ow"), "oy": ("oy", "oy"), "p": ("p", "p"), "pau": ("sil", "sil"),
    "pcl": ("cl", "sil"), "q": None, "r": ("r", "r"), "s": ("s", "s"), "sh": ("sh", "sh"), "t": ("t", "t"),
    "tcl": ("cl", "sil"), "th": ("th", "th"), "uh": ("uh", "uh"), "uw": ("uw", "uw"), "ux": ("uw", "uw"),
    "v": ("v", "v"), "w": ("w", "w"), "y": ("y", "y"), "z": ("z", "z"), "zh": ("zh", "sh"),
}

PHONES_61 = tuple(sorted(FOLDING))
PHONES_48 = tuple(sorted({fold[0] for fold in FOLDING.values() if fold}))
PHONES_39 = tuple(sorted({fold[1] for fold in FOLDING.values() if fold}))
# Training class (index into PHONES_48) -> scoring class (index into PHONES_39).
FOLD_48_TO_39 = tuple(PHONES_39.index({f[0]: f[1] for f in FOLDING.values() if f}[p]) for p in PHONES_48)


def fold(label: str, classes: int = 48) -> str | None:
    """A 61-set label folded to the 48- or 39-class set; None for `q`. KeyError for an unknown label."""
    folded = FOLDING[label]
    return None if folded is None else folded[0 if classes == 48 else 1]


def collapse(sequence: list[int]) -> list[int]:
    """Merge runs of the same class: a frame labelling becomes a phone sequence."""
    return [p for i, p in enumerate(sequence) if i == 0 or p != sequence[i - 1]]
