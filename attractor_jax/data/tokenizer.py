"""A SentencePiece tokenizer trained offline, kept in the workdir.

Training settings are chosen for exact, reproducible language modelling:

* BPE (trains in about a second on the built-in corpus; unigram takes ~40 s);
* identity normalisation, no whitespace trimming, no dummy prefix, and `"\\n"`
  as a user-defined piece, so `decode(encode(text)) == text` for ordinary
  text (line breaks and runs of spaces survive);
* byte fallback, so no input ever maps to `<unk>`;
* fixed special ids: pad 0, unk 1, bos 2, eos 3 (pad 0 matches the packer);
* training sentences are the non-empty lines of the documents, sampled with a
  seeded numpy generator when there are more than `max_sentences`, so the same
  corpus and settings always give the same model file.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath

from attractor_jax import errors

TOKENIZER_FILENAME = "tokenizer.model"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE_PIECE = "\n"


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL (gs://BUCKET/..., s3://...), which only epath can reach."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike):
  """A local path as a `pathlib.Path` (with `~` expanded), a URL (gs://...)
  as an `etils.epath.Path`."""
  if is_remote(path):
    return epath.Path(path)
  return pathlib.Path(path).expanduser()


def write_model_file(data: bytes, path: str | os.PathLike) -> None:
  """Writes a model file so that readers never see half of it.

  A local file is written to a temporary file and renamed; an object store
  (gs://) has no rename, but an object is only visible once written whole.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)
    return
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name,
                                   suffix=".tmp", delete=False) as temporary:
    temporary.write(data)
  os.replace(temporary.name, path)


class Tokenizer:
  """A thin wrapper over `sentencepiece.SentencePieceProcessor`."""

  def __init__(self, processor: spm.SentencePieceProcessor,
               path: str | os.PathLike | None = None):
    self.processor = processor
    self.path = None if path is None else (
        epath.Path(path) if is_remote(path) else pathlib.Path(path))

  @property
  def vocab_size(self) -> int:
    return self.processor.vocab_size()

  @property
  def pad_id(self) -> int:
    return self.processor.pad_id()

  @property
  def bos_id(self) -> int:
    return self.processor.bos_id()

  @property
  def eos_id(self) -> int:
    return self.processor.eos_id()

  @property
  def unk_id(self) -> int:
    return self.processor.unk_id()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return self.processor.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of several texts (encoded in one native call)."""
    return self.processor.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; pad, bos and eos ids are dropped."""
    return self.processor.decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads a SentencePiece `.model` file, local or at a URL (gs://...: its
  bytes are read through etils.epath, as SentencePiece reads local files
  only).

  Raises:
    errors.MissingPathError (a FileNotFoundError): the file does not exist.
    errors.DataError (a ValueError): it is not a SentencePiece model.
  """
  path = as_path(path)
  if not path.is_file():
    raise errors.MissingPathError(
        f"Tokenizer model file does not exist: '{path}'")
  if is_remote(path):
    return tokenizer_from_bytes(path.read_bytes(), path)
  try:
    processor = spm.SentencePieceProcessor(model_file=str(path))
  except (RuntimeError, OSError) as error:
    raise errors.DataError(
        f"'{path}' is not a SentencePiece model file; pass a .model file "
        "written by SentencePiece") from error
  return Tokenizer(processor, path)


def tokenizer_from_bytes(data: bytes,
                         path: str | os.PathLike | None = None) -> Tokenizer:
  """A tokenizer from the bytes of a SentencePiece `.model` file (`path`:
  where those bytes are kept, for messages).

  Raises:
    errors.DataError (a ValueError): they are not a SentencePiece model.
  """
  try:
    processor = spm.SentencePieceProcessor(model_proto=data)
  except (RuntimeError, OSError, TypeError) as error:
    raise errors.DataError(
        f"'{path}' is not a SentencePiece model file; pass a .model file "
        "written by SentencePiece") from error
  return Tokenizer(processor, path)


def _training_sentences(documents: Iterable[str], max_sentences: int,
                        seed: int) -> list[str]:
  sentences = [line for document in documents
               for line in document.split("\n") if line.strip()]
  if not sentences:
    raise errors.DataError(
        "Cannot train a tokenizer: the documents hold no text")
  if len(sentences) > max_sentences:
    chosen = np.random.default_rng(seed).choice(
        len(sentences), size=max_sentences, replace=False)
    sentences = [sentences[i] for i in np.sort(chosen)]
  return sentences


def train_sentencepiece(documents: Iterable[str], vocab_size: int,
                        model_prefix: str | os.PathLike, *,
                        max_sentences: int = 500_000, seed: int = 0,
                        num_threads: int = 2) -> pathlib.Path:
  """Trains a BPE SentencePiece model offline and writes `<prefix>.model`.

  Args:
    documents: the training text (for a very large corpus, pass a sample).
    vocab_size: the exact vocabulary size, special and byte pieces included.
    model_prefix: where to write; the model goes to `<model_prefix>.model`
      (local, or a URL such as gs://BUCKET/run/tokenizer).
    max_sentences: lines used at most (a seeded sample beyond that).
    seed: chooses the sample.
    num_threads: trainer threads (the pieces do not depend on it;
      the file records it).

  Returns:
    The path of the written model file.
  """
  sentences = _training_sentences(documents, max_sentences, seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
        byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True,
        user_defined_symbols=[NEWLINE_PIECE], max_sentence_length=1 << 16,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        num_threads=num_threads, minloglevel=2)
  except RuntimeError as error:
    raise errors.DataError(
        _training_failure(str(error), vocab_size, len(sentences))) from error
  path = as_path(f"{os.fspath(model_prefix)}.model")
  write_model_file(model.getvalue(), path)
  return path


def _training_failure(message: str, vocab_size: int, lines: int) -> str:
  """SentencePiece's reason for failing, as a line that says what to do."""
  too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it "
                       r"to a value <= (\d+)", message)
  if too_high:
    return (f"vocab_size={vocab_size} is too large for this corpus "
            f"({lines} lines): SentencePiece can make at most "
            f"{too_high.group(1)} pieces from it; use a smaller vocab_size "
            "or more text")
  too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
  if too_low:
    return (f"vocab_size={vocab_size} is too small: this corpus needs at "
            f"least {too_low.group(1)} pieces (256 bytes, 5 special pieces "
            "and its characters)")
  first = message.strip().splitlines()[0] if message.strip() else message
  return (f"SentencePiece training with vocab_size={vocab_size} on {lines} "
          f"lines failed: {first}")


def _check_vocab_size(tokenizer: Tokenizer, vocab_size: int | None) -> None:
  if vocab_size is not None and tokenizer.vocab_size != vocab_size:
    raise errors.DataError(
        f"Tokenizer '{tokenizer.path}' has vocab_size {tokenizer.vocab_size}, "
        f"but vocab_size {vocab_size} was requested. Use a fresh workdir, "
        "delete the file to retrain, or request its vocab size.")


def get_or_train_tokenizer(workdir: str | os.PathLike,
                           documents: Iterable[str] | None,
                           vocab_size: int | None, *,
                           model_file: str | os.PathLike | None = None,
                           seed: int = 0) -> Tokenizer:
  """The run's tokenizer, `workdir/tokenizer.model`, made once and then reused.

  * With `model_file`, that model is copied into the workdir (so checkpoints
    stay self-contained); a different model already there is an error.
  * Otherwise an existing `workdir/tokenizer.model` is reused.
  * Otherwise one is trained on `documents` and saved there. The write is
    atomic and training is deterministic, so several hosts sharing a workdir
    write identical bytes; preferably only one trains and the rest wait.

  Args:
    workdir: the run's directory (created if needed); local or a URL
      (gs://BUCKET/PATH, read and written through etils.epath).
    documents: training text; only read when a model must be trained.
    vocab_size: the expected vocabulary size (None: accept any when reusing).
    model_file: an existing SentencePiece model to use instead of training.
    seed: sampling seed for training.

  Returns:
    The loaded tokenizer.

  Raises:
    ValueError: vocab size mismatch, a conflicting model, or nothing to train
      on.
    FileNotFoundError: `model_file` does not exist.
  """
  target = as_path(workdir) / TOKENIZER_FILENAME
  if model_file is not None:
    source = as_path(model_file)
    if not source.is_file():
      raise errors.MissingPathError(
          f"Tokenizer model file does not exist: '{source}'")
    if not target.exists():
      target.parent.mkdir(parents=True, exist_ok=True)
      if is_remote(source) or is_remote(target):
        target.write_bytes(source.read_bytes())
      else:
        shutil.copyfile(source, target)
    elif target.read_bytes() != source.read_bytes():
      raise errors.DataError(
          f"Workdir tokenizer '{target}' differs from the given model file "
          f"'{source}'; a run must keep one tokenizer.")
  elif not target.exists():
    if documents is None:
      raise ValueError(f"No tokenizer at '{target}' and no documents to "
                       "train one on")
    if vocab_size is None:
      raise ValueError("vocab_size is required to train a tokenizer")
    train_sentencepiece(documents, vocab_size,
                        os.fspath(target.with_suffix("")), seed=seed)
  tokenizer = load_tokenizer(target)
  _check_vocab_size(tokenizer, vocab_size)
  return tokenizer


def tokenize_documents(documents: Iterable[str],
                       tokenizer: Tokenizer) -> list[np.ndarray]:
  """Encodes documents as int32 token arrays; the packer adds bos/eos."""
  return [np.asarray(ids, dtype=np.int32)
          for ids in tokenizer.encode_batch(list(documents))]


class TokenizedDocuments:
  """Encodes a random-access source of text documents lazily, on `[index]`.

  For sources too large to tokenize up front (tfds, text ArrayRecord files).
  Note that packing reads every document once to learn its length; for
  repeated runs on a large corpus, tokenize once into a "tokens" ArrayRecord
  file instead.
  """

  def __init__(self, text_documents, tokenizer: Tokenizer):
    self._text_documents = text_documents
    self._tokenizer = tokenizer

  def __len__(self) -> int:
    return len(self._text_documents)

  def __getitem__(self, index: int) -> np.ndarray:
    return np.asarray(self._tokenizer.encode(self._text_documents[index]),
                      dtype=np.int32)
