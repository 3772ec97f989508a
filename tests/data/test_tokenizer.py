"""Tests for the SentencePiece tokenizer: training, round trips, reuse."""

import numpy as np
import pytest

from attractor_jax.data import tokenizer as tokenizer_module
from attractor_jax.data.tokenizer import get_or_train_tokenizer
from attractor_jax.data.tokenizer import load_tokenizer
from attractor_jax.data.tokenizer import tokenize_documents
from attractor_jax.data.tokenizer import TokenizedDocuments
from attractor_jax.data.tokenizer import train_sentencepiece

SMALL_VOCAB_SIZE = 512  # As trained by conftest.small_tokenizer_file.
ROUND_TRIP_TEXTS = [
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "  Two leading spaces,   three inside,\ttab\n\n\nand blank lines.",
    "Unseen characters: ünïcödé — 日本語 😀 {braces} $100 #7 \\ end",
    "",
]


@pytest.fixture(scope="module")
def small_tokenizer(small_tokenizer_file):
  return load_tokenizer(small_tokenizer_file)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_decode_inverts_encode(small_tokenizer, text):
  ids = small_tokenizer.encode(text)
  assert small_tokenizer.decode(ids) == text
  assert small_tokenizer.unk_id not in ids  # Byte fallback, never <unk>.


def test_special_ids_and_vocab_size(small_tokenizer):
  assert small_tokenizer.vocab_size == SMALL_VOCAB_SIZE
  assert (small_tokenizer.pad_id, small_tokenizer.unk_id,
          small_tokenizer.bos_id, small_tokenizer.eos_id) == (0, 1, 2, 3)
  ids = small_tokenizer.encode("the king")
  wrapped = [small_tokenizer.bos_id] + ids + [small_tokenizer.eos_id, 0, 0]
  assert small_tokenizer.decode(np.asarray(wrapped)) == "the king"


def test_tokenizer_compresses_english(small_tokenizer, small_documents):
  text = small_documents[0]
  # 256 of the 512 pieces are byte fallbacks; bytes alone would give 1.0.
  assert len(small_tokenizer.encode(text)) < len(text) / 1.6


def _pieces_and_scores(tokenizer):
  processor = tokenizer.processor
  return [(processor.id_to_piece(i), processor.get_score(i))
          for i in range(processor.vocab_size())]


def test_training_is_deterministic(small_documents, small_tokenizer_file,
                                   tmp_path):
  again = train_sentencepiece(small_documents, SMALL_VOCAB_SIZE,
                              tmp_path / "again")
  assert again == tmp_path / "again.model"
  assert again.read_bytes() == small_tokenizer_file.read_bytes()
  # The file records the thread count, but the pieces do not depend on it.
  one_thread = train_sentencepiece(small_documents, SMALL_VOCAB_SIZE,
                                   tmp_path / "one_thread", num_threads=1)
  assert (_pieces_and_scores(load_tokenizer(one_thread)) ==
          _pieces_and_scores(load_tokenizer(again)))


def test_sampled_training_is_deterministic(small_documents, tmp_path):
  first = train_sentencepiece(small_documents, 400, tmp_path / "first",
                              max_sentences=2000, seed=1)
  second = train_sentencepiece(small_documents, 400, tmp_path / "second",
                               max_sentences=2000, seed=1)
  assert first.read_bytes() == second.read_bytes()


def test_too_large_vocab_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=5000"):
    train_sentencepiece(["a tiny corpus\nof two lines"] * 3, 5000,
                        tmp_path / "tiny")


def test_workdir_tokenizer_is_saved_then_reused(small_documents, tmp_path,
                                                monkeypatch):
  workdir = tmp_path / "run"
  trained = get_or_train_tokenizer(workdir, small_documents[:10], 400)
  assert trained.path == workdir / "tokenizer.model"
  assert trained.path.is_file() and trained.vocab_size == 400

  def must_not_train(*args, **kwargs):
    raise AssertionError("retrained instead of reusing the workdir model")

  monkeypatch.setattr(tokenizer_module, "train_sentencepiece", must_not_train)
  reused = get_or_train_tokenizer(workdir, None, 400)
  assert reused.encode("the king") == trained.encode("the king")
  assert get_or_train_tokenizer(workdir, None, None).vocab_size == 400
  with pytest.raises(ValueError, match="vocab_size 400.*vocab_size 512"):
    get_or_train_tokenizer(workdir, small_documents, 512)


def test_given_model_file_is_copied_into_the_workdir(small_tokenizer_file,
                                                     tmp_path):
  workdir = tmp_path / "run"
  tokenizer = get_or_train_tokenizer(workdir, None, SMALL_VOCAB_SIZE,
                                     model_file=small_tokenizer_file)
  assert tokenizer.path == workdir / "tokenizer.model"
  assert tokenizer.path.read_bytes() == small_tokenizer_file.read_bytes()
  with pytest.raises(ValueError, match="vocab_size 999"):
    get_or_train_tokenizer(workdir, None, 999,
                           model_file=small_tokenizer_file)
  other = train_sentencepiece(["another corpus entirely"] * 50, 280,
                              tmp_path / "other")
  with pytest.raises(ValueError, match="differs from the given model file"):
    get_or_train_tokenizer(workdir, None, None, model_file=other)


def test_missing_files_and_inputs_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model"):
    load_tokenizer(tmp_path / "missing.model")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    get_or_train_tokenizer(tmp_path, None, 300,
                           model_file=tmp_path / "missing.model")
  with pytest.raises(ValueError, match="no documents"):
    get_or_train_tokenizer(tmp_path, None, 300)
  with pytest.raises(ValueError, match="hold no text"):
    train_sentencepiece(["", "  \n"], 300, tmp_path / "empty")


def test_tokenize_documents_eager_and_lazy_agree(small_tokenizer,
                                                 small_documents):
  documents = small_documents[:3]
  eager = tokenize_documents(documents, small_tokenizer)
  lazy = TokenizedDocuments(documents, small_tokenizer)
  assert len(lazy) == 3
  for index, tokens in enumerate(eager):
    assert tokens.dtype == np.int32
    np.testing.assert_array_equal(lazy[index], tokens)
    assert small_tokenizer.decode(tokens) == documents[index]
