"""Held-out last-word accuracy: which words, which tokens, what is counted."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from attractor_jax.data import IGNORE_INDEX
from attractor_jax.models import lm_common
from attractor_jax.tasks.lm import last_word

FILLER = "one two three four five six seven"


class CharTokenizer:
  """One token per non-space character (ids 3..), eos 1, pad 0."""
  eos_id, pad_id = 1, 0
  vocab = vocab_size = 64

  def encode(self, text):
    return [3 + (ord(ch) % 61) for ch in text if not ch.isspace()]


class CopyModel(nnx.Module):
  """Predicts that the next token repeats the current one (logit 10)."""

  def __init__(self):
    self.config = None

  def __call__(self, tokens, *, positions=None, segment_ids=None):
    logits = 10.0 * jax.nn.one_hot(tokens, CharTokenizer.vocab)
    return lm_common.LMOutput(logits=logits, loss=None, stats=None)


def test_passages_are_long_paragraphs_ending_in_a_lowercase_word():
  document = "\n\n".join([
      "ACT I SCENE II A street in the old town of Verona",   # a name
      "Too short to count here.",
      f"{FILLER} and then we went home.",
      f"{FILLER} -- 42",                                     # no word
      f"{FILLER} o'er the hills!",
  ])
  words = [document[s:e] for _, s, e in last_word.passages([document])]
  assert words == ["home", "hills"]
  assert len(last_word.passages([document] * 3, max_examples=3)) == 3


def test_windows_end_with_the_word_and_only_its_tokens_are_targets():
  document = f"{FILLER} sa aaaa.\n\n{FILLER} zz yes."
  examples, skipped = last_word.encode_examples(
      last_word.passages([document]), CharTokenizer(), seq_len=8)
  assert skipped == 0 and [n for _, n in examples] == [4, 3]
  window, n = examples[0]
  assert len(window) == 9 and window[-n:] == CharTokenizer().encode("aaaa")
  (batch,) = last_word.batches(examples, 8, batch_size=3, pad_id=0)
  assert batch["inputs"].shape == (3, 8)
  np.testing.assert_array_equal(batch["targets"][0, :4], IGNORE_INDEX)
  np.testing.assert_array_equal(batch["targets"][0, 4:], window[-4:])
  np.testing.assert_array_equal(batch["inputs"][0], window[:-1])
  np.testing.assert_array_equal(batch["targets"][2], IGNORE_INDEX)  # filler
  # A document shorter than the window starts with the end-of-document token.
  short, _ = last_word.encode_examples(last_word.passages([document]),
                                       CharTokenizer(), seq_len=64)
  assert short[0][0][0] == CharTokenizer.eos_id


def test_accuracy_needs_every_token_of_the_word_and_perplexity_sums_them():
  # The copy model gets "aaaa" after "sa" (each token repeats the one
  # before) but misses the first token of "aaaa" after "sb".
  documents = [f"{FILLER} sa aaaa.", f"{FILLER} sb aaaa."]
  result = last_word.evaluate(CopyModel(), documents, CharTokenizer(),
                              seq_len=16, batch_size=4)
  assert result["words"] == 2 and result["skipped"] == 0
  assert result["accuracy"] == pytest.approx(0.5)
  log_z = math.log(math.exp(10.0) + CharTokenizer.vocab - 1)
  right, wrong = log_z - 10.0, log_z
  mean_nll = (4 * right + (wrong + 3 * right)) / 2
  assert result["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-4)
  assert result["sem"] == pytest.approx(0.5 / math.sqrt(2))


def test_text_without_a_qualifying_paragraph_reports_no_words():
  result = last_word.evaluate(CopyModel(), ["Short."], CharTokenizer(),
                              seq_len=8, batch_size=2)
  assert result["words"] == 0 and math.isnan(result["accuracy"])


class WordTokenizer:
  """Word pieces that carry the whitespace before them (" there"), as
  SentencePiece's do; a trailing space is a piece of its own."""
  eos_id, pad_id = 1, 0
  vocab_size = 64

  def __init__(self):
    self.ids = {}

  def encode(self, text):
    import re                              # pylint: disable=g-import-not-at-top
    pieces = re.findall(r"\s*\S+|\s+$", text)
    return [self.ids.setdefault(p, len(self.ids) + 2) for p in pieces]


def test_the_space_before_the_word_is_part_of_the_word():
  document = f"{FILLER} and hide them there."
  tokenizer = WordTokenizer()
  examples, skipped = last_word.encode_examples(
      last_word.passages([document]), tokenizer, seq_len=16)
  assert skipped == 0
  (window, n), = examples
  assert n == 1 and window[-1] == tokenizer.ids[" there"]
