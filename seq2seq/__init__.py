"""seq2seq: regularized stacked-LSTM sequence models (Zaremba, Sutskever & Vinyals 2014)."""

__version__ = "0.1.0"

from .devices import warm_up_vector_math

warm_up_vector_math()  # before any training: see its docstring
