"""Turning a training config into its parts: model config, corpus, data.

Shared by `train`, `evaluate` and `generate`, so the three read a workdir the
same way. The workdir holds `config.json` (the training config),
`tokenizer.model`, `checkpoints/`, `metrics.jsonl`, `tensorboard/` and
`eval/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections
from absl import app
from absl import flags
from absl import logging

from attractor_jax import data as data_lib
from attractor_jax.models import presets
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig

CONFIG_NAME = "config.json"


def _set_fields(config: Any) -> dict:
  """The fields of a ConfigDict that are not None (set by the user)."""
  items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {k: v for k, v in items.items() if v is not None}


def model_config_from(config: ml_collections.ConfigDict,
                      vocab_size: Optional[int] = None) -> ModelConfig:
  """The preset named by config.model.preset with every override applied.

  Raises:
    ValueError: unknown preset (the error lists the known ones) or unknown
      field.
  """
  model_fields = _set_fields(config.model)
  preset_name = model_fields.pop("preset")
  model_config = presets.get_preset(preset_name)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(model_fields) - known)
  if unknown:
    raise ValueError(f"Unknown model field(s) {unknown}; ModelConfig has "
                     f"{sorted(known)}.")
  solve_fields = _set_fields(config.get("solve", {}))
  solve_known = {f.name for f in dataclasses.fields(SolveConfig)}
  unknown = sorted(set(solve_fields) - solve_known)
  if unknown:
    raise ValueError(f"Unknown solve field(s) {unknown}; SolveConfig has "
                     f"{sorted(solve_known)}.")
  solve = dataclasses.replace(model_config.solve, **solve_fields)
  model_config = dataclasses.replace(model_config, solve=solve, **model_fields)
  if vocab_size is not None:
    model_config = model_config.replace(vocab_size=vocab_size)
  return model_config


def load_documents(data_config: ml_collections.ConfigDict) -> list[str]:
  """The text documents the config names (all of them, before splitting)."""
  source = data_config.source
  if source == "builtin":
    return data_lib.builtin_corpus()
  if source == "text":
    if not data_config.path:
      raise ValueError("data.source='text' needs --config.data.path (a text "
                       "file or a folder of .txt files).")
    return data_lib.text_file_documents(data_config.path)
  if source == "array_record":
    if not data_config.path:
      raise ValueError("data.source='array_record' needs --config.data.path.")
    return list(data_lib.ArrayRecordDocuments(data_config.path, kind="text"))
  if source == "tfds":
    documents = data_lib.tfds_documents(
        data_config.tfds_name, data_config.tfds_split,
        data_dir=data_config.tfds_data_dir or None,
        text_key=data_config.text_key)
    return [documents[i] for i in range(len(documents))]
  raise ValueError(f"Unknown data source {source!r}; expected builtin, text, "
                   "array_record or tfds.")


@dataclasses.dataclass
class LMData:
  """Tokenizer, training dataset and fixed validation batches."""

  tokenizer: Any
  train: Any                 # grain.IterDataset, repeating forever
  validation: list[dict]     # a fixed list of batches


def _split_and_tokenizer(config, workdir):
  """(train documents, validation documents, tokenizer) of the config."""
  data_config = config.data
  train_docs, val_docs = data_lib.split_documents(
      load_documents(data_config), data_config.validation_fraction,
      seed=config.seed)
  tokenizer = data_lib.get_or_train_tokenizer(
      workdir, train_docs, data_config.vocab_size,
      model_file=data_config.tokenizer_model or None)
  return train_docs, val_docs, tokenizer


def _dataset_options(config, tokenizer) -> dict:
  return dict(seq_len=config.data.seq_len, batch_size=config.batch_size,
              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
              shard_index=jax.process_index(),
              shard_count=jax.process_count())


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> LMData:
  """Reads the corpus, gets or trains the tokenizer, builds the pipelines."""
  train_docs, val_docs, tokenizer = _split_and_tokenizer(config, workdir)
  train = data_lib.make_lm_dataset(
      data_lib.TokenizedDocuments(train_docs, tokenizer), seed=config.seed,
      shuffle=True, num_epochs=None, **_dataset_options(config, tokenizer))
  return LMData(tokenizer, train,
                _validation_batches(config, val_docs, tokenizer))


def prepare_validation(config: ml_collections.ConfigDict, workdir: str
                       ) -> list[dict]:
  """Only the validation batches (no training pipeline is built)."""
  _, val_docs, tokenizer = _split_and_tokenizer(config, workdir)
  return _validation_batches(config, val_docs, tokenizer)


def _validation_batches(config, val_docs, tokenizer) -> list[dict]:
  """The first `config.eval_batches` batches of the validation split."""
  validation_set = data_lib.make_lm_dataset(
      data_lib.tokenize_documents(val_docs, tokenizer), seed=0,
      shuffle=False, num_epochs=1, **_dataset_options(config, tokenizer))
  validation = []
  for batch in validation_set:
    validation.append(batch)
    if len(validation) >= config.eval_batches:
      break
  if not validation:
    raise ValueError(
        f"The validation split ({len(val_docs)} documents) is too small for "
        f"one batch of {config.batch_size} x {config.data.seq_len} tokens; "
        "raise data.validation_fraction or lower batch_size / seq_len.")
  return validation


def start_command(argv) -> None:
  """Shared start of the train / evaluate / generate commands.

  Rejects stray arguments and, unless --verbosity was given, keeps absl's
  log to warnings (orbax logs every checkpoint step at INFO).
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the training config as `workdir/config.json`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_NAME), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config a run saved in its workdir."""
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {workdir!r} is not a training workdir "
        "(python -m attractor_jax.train --workdir=... writes one).")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))
