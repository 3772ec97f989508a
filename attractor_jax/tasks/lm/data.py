"""The language-model task's data: corpus, tokenizer, packed batches.

The data functions raise `errors.DataError` for a corpus they cannot use,
and write the tokenizer into the workdir only once the corpus has given a
training and a validation batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from etils import epath

from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax.data import tokenizer as tokenizer_lib
from attractor_jax.parallel import distributed
from attractor_jax.parallel import mesh as mesh_lib

DATA_SOURCES = ("builtin", "text", "array_record", "tfds")


def load_documents(data_config: ml_collections.ConfigDict) -> list[str]:
  """The text documents the config names (all of them, before splitting)."""
  source = data_config.source
  if source == "builtin":
    return data_lib.builtin_corpus()
  if source in ("text", "array_record"):
    check_data_path(data_config)
  if source == "text":
    return data_lib.text_file_documents(data_config.path)
  if source == "array_record":
    return list(data_lib.ArrayRecordDocuments(data_config.path, kind="text"))
  if source == "tfds":
    documents = data_lib.tfds_documents(
        data_config.tfds_name, data_config.tfds_split,
        data_dir=data_config.tfds_data_dir or None,
        text_key=data_config.text_key)
    return [documents[i] for i in range(len(documents))]
  raise errors.ConfigError(
      f"Unknown data source {source!r}.\nPass --config.data.source= one of "
      f"{', '.join(DATA_SOURCES)}.")

@dataclasses.dataclass
class LMData:
  """Tokenizer, training dataset, fixed validation batches, and the held-out
  documents they were cut from."""

  tokenizer: Any
  train: Any                 # grain.IterDataset, repeating forever
  validation: list[dict]     # a fixed list of batches
  validation_documents: list[str]

def split(config, *, need_train: bool = True) -> tuple[list, list]:
  """(train, validation) documents, each able to fill at least one batch."""
  train_docs, val_docs = data_lib.split_documents(
      load_documents(config.data), config.data.validation_fraction,
      seed=config.seed)
  check_split_sizes(config, train_docs if need_train else None, val_docs)
  return train_docs, val_docs

def _dataset_options(config, tokenizer) -> dict:
  # config.batch_size is the global batch; each process reads its share.
  return dict(seq_len=config.data.seq_len,
              batch_size=config.batch_size // jax.process_count(),
              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
              shard_index=jax.process_index(),
              shard_count=jax.process_count())

def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> LMData:
  """Reads the corpus, gets or trains the tokenizer, builds the pipelines.

  A tokenizer the workdir lacks is trained (or copied from
  data.tokenizer_model) into a local temporary folder and written into the
  workdir (by process 0) only once both pipelines are built, so a corpus
  that turns out unusable leaves no tokenizer behind.

  Raises:
    errors.DataError, errors.MissingPathError: a corpus or tokenizer that
      cannot be used.
  """
  train_docs, val_docs = split(config)
  data_config = config.data
  model_file = data_config.tokenizer_model or None
  target = epath.Path(workdir) / tokenizer_lib.TOKENIZER_FILENAME
  with tempfile.TemporaryDirectory(prefix="attractor-tokenizer-") as staging:
    staged = not target.exists()
    tokenizer = data_lib.get_or_train_tokenizer(
        staging if staged else workdir, train_docs if staged else None,
        data_config.vocab_size, model_file=model_file)
    train = data_lib.make_lm_dataset(
        data_lib.TokenizedDocuments(train_docs, tokenizer), seed=config.seed,
        shuffle=True, num_epochs=None, **_dataset_options(config, tokenizer))
    validation = _validation_batches(config, val_docs, tokenizer)
    if staged:
      tokenizer = _install_tokenizer(tokenizer.path, target)
  return LMData(tokenizer, train, validation, val_docs)

def _install_tokenizer(staged: os.PathLike, target: epath.Path):
  """Copies a staged tokenizer into the workdir and loads it.

  Process 0 writes the file (a local one atomically, an object on gs:// whole:
  readers never see half of it); every process loads the staged bytes, which
  are what process 0 wrote, so none waits for the file to appear.
  """
  data = pathlib.Path(staged).read_bytes()
  if distributed.is_main_process():
    tokenizer_lib.write_model_file(data, target)
  return tokenizer_lib.tokenizer_from_bytes(data, target)

def validation_documents(config: ml_collections.ConfigDict) -> list:
  """The run's held-out documents (the same split as its validation set)."""
  return split(config, need_train=False)[1]

def prepare_validation(config: ml_collections.ConfigDict, workdir: str,
                       tokenizer=None, val_docs: Optional[list] = None
                       ) -> list[dict]:
  """Only the validation batches (no training pipeline is built).

  Args:
    config: the run's config.
    workdir: a training workdir; its tokenizer is used unless given.
    tokenizer: the run's tokenizer, if already loaded.
    val_docs: `validation_documents(config)`, if already read.
  """
  if val_docs is None:
    val_docs = validation_documents(config)
  if tokenizer is None:
    tokenizer = data_lib.load_tokenizer(
        epath.Path(workdir) / tokenizer_lib.TOKENIZER_FILENAME)
  return _validation_batches(config, val_docs, tokenizer)

def _validation_batches(config, val_docs, tokenizer) -> list[dict]:
  """The validation split in batches of config.batch_size rows: all of it
  (config.eval_batches = 0) or its first eval_batches batches.

  No row is dropped: the last batch is filled up with padding rows whose
  targets are all ignored (evaluation weighs by targets and counts only
  rows that have one). Every process cuts the same global batches and
  keeps its share of each (its rows, in process order).
  """
  options = dict(_dataset_options(config, tokenizer),
                 batch_size=config.batch_size, shard_index=0, shard_count=1)
  validation_set = data_lib.make_lm_dataset(
      data_lib.tokenize_documents(val_docs, tokenizer), seed=0,
      shuffle=False, num_epochs=1, drop_remainder=False, **options)
  limit = config.eval_batches or None
  rows = mesh_lib.process_batch_slice(config.batch_size)
  validation = []
  for batch in validation_set:
    batch = _pad_rows(batch, config.batch_size, tokenizer.pad_id)
    validation.append({k: v[rows] for k, v in batch.items()})
    if limit is not None and len(validation) >= limit:
      break
  if not validation:
    raise errors.DataError(
        f"The validation split ({len(val_docs)} documents) holds no row of "
        f"{config.data.seq_len} tokens; raise data.validation_fraction.")
  return validation

def _pad_rows(batch: dict, size: int, pad_id: int) -> dict:
  """`batch` with rows appended up to `size`: padding tokens, ignored
  targets, segment 0."""
  missing = size - len(batch["inputs"])
  if missing <= 0:
    return batch
  fill = {"inputs": pad_id, "targets": data_lib.IGNORE_INDEX,
          "segment_ids": 0, "positions": 0}
  return {k: np.concatenate([v, np.full((missing,) + v.shape[1:], fill[k],
                                        v.dtype)])
          for k, v in batch.items()}

def check_split_sizes(config, train_docs: Optional[list],
                      val_docs: Optional[list]) -> None:
  """Raises DataError for a split that cannot fill one batch.

  Tokens are bounded from above by UTF-8 bytes (every piece covers at least
  one byte) plus the end-of-document token, so this runs before a tokenizer
  exists; a split it passes may still fall short once tokenized (then
  `make_lm_dataset` raises).
  """
  row = config.data.seq_len + 1
  need = config.batch_size
  for name, docs, fix in (
      ("training", train_docs, "lower data.validation_fraction"),
      ("validation", val_docs, "raise data.validation_fraction")):
    if docs is None:
      continue
    bound = sum(len(d.encode("utf-8")) + 2 for d in docs)
    if math.ceil(bound / row) < need:
      raise errors.DataError(
          f"The {name} split ({len(docs)} documents, at most {bound} tokens) "
          f"cannot fill one batch of {need} rows of {row} tokens.\nUse more "
          f"text, {fix}, or lower --config.batch_size / "
          "--config.data.seq_len.")

def check_data_path(data_config) -> None:
  if not data_config.path:
    raise errors.ConfigError(
        f"data.source={data_config.source!r} needs a path.\nPass "
        "--config.data.path=" + ("a text file or a folder of .txt files."
                                 if data_config.source == "text" else
                                 "ArrayRecord file(s) or their folder."))
  if not epath.Path(data_config.path).expanduser().exists():
    raise errors.MissingPathError(
        f"config.data.path {data_config.path!r} does not exist.\nPass "
        "--config.data.path= an existing file or folder.")
