"""seq2seq: regularized stacked-LSTM sequence models (Zaremba, Sutskever & Vinyals 2014)."""

__version__ = "0.1.0"
