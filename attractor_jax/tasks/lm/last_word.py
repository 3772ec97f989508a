"""Held-out last-word prediction, in the spirit of LAMBADA.

LAMBADA (Paperno et al. 2016) asks a model for the last word of a passage
whose answer needs the context before it. Here the passages come from any
held-out text: the last word of every paragraph (blank-line separated) of at
least `MIN_WORDS` words, where that word is a lowercase alphabetic word
(trailing punctuation stripped; headings and names are left out). In the
built-in corpus those are the ends of speeches, often the second word of a
rhyme. The model reads the document up to the word (the
last `seq_len` tokens of it) and must predict every token of the word,
with the whitespace before it (which the tokenizer merges into the word):

  accuracy    the fraction of words whose tokens are all the model's argmax
              (teacher forced, as LAMBADA's accuracy is usually measured);
  perplexity  exp(mean over words of the word's summed negative log-lik.).
"""

from __future__ import annotations

import math
import re
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attractor_jax import parallel
from attractor_jax.data import IGNORE_INDEX
from attractor_jax.models import lm_common
from attractor_jax.parallel import mesh as mesh_lib

MIN_WORDS = 8
# Context kept before a word, in characters per token of the window (the
# tokens beyond the window are cut anyway; this only bounds encoding work).
_CHARS_PER_TOKEN = 8
# A lowercase word, then only punctuation up to the paragraph's end.
_WORD = re.compile(r"(?<![\w'])([a-z][A-Za-z']*)[^\w\s]*\s*$")


def passages(documents: Sequence[str], max_examples: int = 0
             ) -> list[tuple[str, int, int]]:
  """(document, word start, word end) for each paragraph's last word.

  Args:
    documents: held-out text documents.
    max_examples: keep the first this many (0: all).
  """
  found = []
  for document in documents:
    offset = 0
    for paragraph in document.split("\n\n"):
      words = paragraph.split()
      match = _WORD.search(paragraph)
      if len(words) >= MIN_WORDS and match:
        found.append((document, offset + match.start(1),
                      offset + match.end(1)))
      offset += len(paragraph) + 2
    if max_examples and len(found) >= max_examples:
      return found[:max_examples]
  return found


def encode_examples(passages_: Sequence[tuple[str, int, int]], tokenizer,
                    seq_len: int) -> tuple[list[tuple[list[int], int]], int]:
  """Token windows ending with each word, and how many words were skipped.

  A window is the end-of-document token (what precedes a document in
  training rows), then the document's tokens up to and including the word,
  cut to its last `seq_len + 1` tokens; the word, with the whitespace
  before it, is its last `n` tokens.
  A word is skipped when the context's tokens are not a prefix of the
  tokens of context + word (the tokenizer merged across the boundary).
  """
  examples, skipped = [], 0
  for document, start, end in passages_:
    # The whitespace before the word goes with the word: tokenizers merge
    # it into the word's first piece (" there").
    start = len(document[:start].rstrip())
    begin = max(0, start - _CHARS_PER_TOKEN * seq_len)
    context = tokenizer.encode(document[begin:start])
    full = tokenizer.encode(document[begin:end])
    word = len(full) - len(context)
    if full[:len(context)] != context or not 0 < word <= seq_len:
      skipped += 1
      continue
    window = ([tokenizer.eos_id] + full)[-(seq_len + 1):]
    examples.append((window, word))
  return examples, skipped


def batches(examples: Sequence[tuple[list[int], int]], seq_len: int,
            batch_size: int, pad_id: int) -> Iterator[dict]:
  """Batches of `batch_size` rows (this process's share of each): inputs
  are a window without its last token, targets only the word's tokens; the
  last batch is filled up with rows that have no target."""
  rows = mesh_lib.process_batch_slice(batch_size)
  for first in range(0, len(examples), batch_size):
    inputs = np.full((batch_size, seq_len), pad_id, np.int32)
    targets = np.full((batch_size, seq_len), IGNORE_INDEX, np.int32)
    segments = np.zeros((batch_size, seq_len), np.int32)
    for row, (window, word) in enumerate(examples[first:first + batch_size]):
      length = len(window) - 1
      inputs[row, :length] = window[:-1]
      targets[row, length - word:length] = window[-word:]
      segments[row, :length] = 1
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                inputs.shape).copy()
    batch = {"inputs": inputs, "targets": targets, "segment_ids": segments,
             "positions": positions}
    yield {k: v[rows] for k, v in batch.items()}


@nnx.jit
def _word_step(model, batch: dict) -> dict:
  """Per batch: words all predicted, their summed NLL, and the words."""
  targets = batch["targets"]
  logits = model(batch["inputs"], positions=batch["positions"],
                 segment_ids=batch["segment_ids"]).logits
  kept = targets != IGNORE_INDEX
  safe = jnp.where(kept, targets, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = lm_common.pick_last_axis(log_probs, safe)
  hit = jnp.argmax(logits, axis=-1) == safe
  real = jnp.any(kept, axis=1)
  return {"correct": jnp.sum(real & jnp.all(hit | ~kept, axis=1)),
          "nll": -jnp.sum(jnp.where(kept, picked, 0.0)),
          "words": jnp.sum(real)}


def evaluate(model, documents: Sequence[str], tokenizer, *, seq_len: int,
             batch_size: int, max_examples: int = 0) -> dict[str, float]:
  """Last-word accuracy and perplexity of `model` on `documents`.

  Returns:
    {"accuracy", "perplexity", "words", "skipped", "sem", "tokens_per_word",
    "chance_perplexity"} (sem: the accuracy's binomial standard error;
    chance_perplexity: a uniform guess over the vocabulary, V ** the mean
    tokens per word); NaNs and 0 words when the documents hold no
    qualifying paragraph.
  """
  examples, skipped = encode_examples(
      passages(documents, max_examples), tokenizer, seq_len)
  correct = nll = words = 0.0
  for batch in batches(examples, seq_len, batch_size, tokenizer.pad_id):
    sums = _word_step(model, parallel.global_batch(model, batch))
    correct += float(sums["correct"])
    nll += float(sums["nll"])
    words += float(sums["words"])
  if not words:
    return {"accuracy": math.nan, "perplexity": math.nan, "words": 0,
            "skipped": skipped, "sem": math.nan, "tokens_per_word": math.nan,
            "chance_perplexity": math.nan}
  accuracy = correct / words
  tokens_per_word = sum(n for _, n in examples) / len(examples)
  return {"accuracy": accuracy, "perplexity": math.exp(nll / words),
          "words": int(words), "skipped": skipped,
          "sem": math.sqrt(accuracy * (1 - accuracy) / words),
          "tokens_per_word": tokens_per_word,
          "chance_perplexity": float(tokenizer.vocab_size) ** tokens_per_word}
