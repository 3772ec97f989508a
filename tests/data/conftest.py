"""Shared fixtures for the data tests: a small tokenizer trained once."""

import pytest

from attractor_jax.data import builtin_corpus
from attractor_jax.data import train_sentencepiece

SMALL_VOCAB_SIZE = 512  # tests/data/test_tokenizer.py relies on this size.


@pytest.fixture(scope="session")
def small_documents():
  """Forty scenes of the built-in corpus (~300 KB of text)."""
  return builtin_corpus()[:40]


@pytest.fixture(scope="session")
def small_tokenizer_file(small_documents, tmp_path_factory):
  prefix = tmp_path_factory.mktemp("tokenizer") / "small"
  return train_sentencepiece(small_documents, SMALL_VOCAB_SIZE, prefix)
