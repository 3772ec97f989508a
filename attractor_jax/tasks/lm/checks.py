"""The language-model task's config checks and its model config.

`validate_lm_config` checks a whole LM training config before anything is
read or written; `model_config_from` turns `config.model` and
`config.solve` into a `ModelConfig`.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import os
from typing import Any, Optional

import ml_collections
from etils import epath

from attractor_jax import configs
from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax.configs import lm
from attractor_jax.data import array_record as array_record_lib
from attractor_jax.data import tokenizer as tokenizer_lib
from attractor_jax.models import config as model_config_lib
from attractor_jax.models import presets
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.training import workdir as workdir_lib
from attractor_jax.training.config_checks import check_integer
from attractor_jax.training.config_checks import check_mesh
from attractor_jax.training.config_checks import check_number
from attractor_jax.training.config_checks import check_optimizer

# A trained tokenizer holds 256 byte pieces, pad / unk / bos / eos, the "\n"
# piece and at least one character of the corpus.
MIN_TRAINED_VOCAB = 262
# Text corpora up to this size are read whole by `validate_config` (to check
# that both splits fill a batch); larger ones only have their heads sniffed.
_READ_TO_VALIDATE_BYTES = 64 << 20
_SNIFF_BYTES = 64 << 10


def _set_fields(config: Any) -> dict:
  """The fields of a ConfigDict that are not None (set by the user)."""
  items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {k: v for k, v in items.items() if v is not None}

def model_config_from(config: ml_collections.ConfigDict,
                      vocab_size: Optional[int] = None) -> ModelConfig:
  """The preset named by config.model.preset with every override applied.

  Raises:
    errors.ConfigError (a ValueError): no or an unknown preset (the error
      lists the known ones), an unknown field, or a value ModelConfig or
      SolveConfig refuses.
  """
  model_fields = _set_fields(config.model)
  preset_name = model_fields.pop("preset", None)
  if not preset_name:
    raise errors.ConfigError(
        "config.model.preset is not set.\nPass --config.model.preset=NAME "
        f"with one of: {', '.join(presets.list_presets())}.")
  model_config = presets.get_preset(preset_name)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(model_fields) - known)
  if unknown:
    raise errors.ConfigError(
        f"Unknown model field(s) {unknown}; ModelConfig has {sorted(known)}.")
  solve_fields = _set_fields(config.get("solve", {}))
  solve_known = {f.name for f in dataclasses.fields(SolveConfig)}
  unknown = sorted(set(solve_fields) - solve_known)
  if unknown:
    raise errors.ConfigError(
        f"Unknown solve field(s) {unknown}; SolveConfig has "
        f"{sorted(solve_known)}.")
  solve = dataclasses.replace(model_config.solve, **solve_fields)
  model_config = dataclasses.replace(model_config, solve=solve, **model_fields)
  if vocab_size is not None:
    model_config = model_config.replace(vocab_size=vocab_size)
  return model_config

def _check_fields(config) -> None:
  """No field of lm.get_config() missing, none it lacks."""
  configs.check_fields(config, lm.get_config(), "attractor_jax/configs/lm.py")

def validate_lm_config(config: ml_collections.ConfigDict,
                       workdir: Optional[str] = None, *,
                       num_devices: Optional[int] = None) -> ModelConfig:
  """Checks a whole LM training config before anything is read or written.

  Everything that needs no trained tokenizer: the config's fields (none
  missing, none unknown), the model (preset, fields, names, sizes) and its
  solver, sizes and intervals, the data source, its paths and (for corpora
  up to 64 MiB) that both splits can fill a batch, a given or existing
  tokenizer against data.vocab_size, the optimizer and its schedule, the mesh
  against the devices and the batch against the mesh, the sample settings,
  and the model against the one a run already wrote into the workdir.
  `train_and_evaluate` calls it (through `validate_config`) first.

  Args:
    config: a config of attractor_jax/configs/lm.py.
    workdir: the run's directory, if known: it must not be a file, and a
      tokenizer already there must match the config.
    num_devices: devices the mesh spans (default `jax.device_count()`).

  Returns:
    The model config (its vocab_size is data.vocab_size).

  Raises:
    errors.ConfigError, errors.MissingPathError, errors.DataError: naming
      the field and what to do.
  """
  _check_fields(config)
  for name in ("batch_size", "total_steps", "log_every", "eval_every",
               "checkpoint_every", "keep_checkpoints"):
    check_integer(config, name, 1)
  check_integer(config, "seed", -2**63)
  check_integer(config, "eval_batches", 0)
  check_integer(config, "last_word_examples", 0)
  check_integer(config, "data.seq_len", 1)
  check_integer(config, "data.vocab_size", 1)
  check_integer(config, "divergence.max_consecutive_bad_steps", 0)
  check_number(config, "divergence.max_loss_factor", low=0)
  model_config = model_config_from(config, config.data.vocab_size)
  model_config_lib.check_head_precision(model_config)
  check_optimizer(config)
  check_mesh(config, num_devices)
  _check_sample(config)
  validate_data(config, workdir)
  if workdir is not None:
    workdir_lib.check_workdir_model(workdir, model_config, saved_model_config)
  return model_config

def saved_model_config(saved: ml_collections.ConfigDict) -> ModelConfig:
  return model_config_from(saved, saved.data.vocab_size)

def _check_sample(config) -> None:
  """config.sample, the sample printed after training: num_tokens 0 skips
  it; top_k 0 samples from the whole vocabulary (as task.sample_text
  reads it)."""
  sample, seq_len = config.sample, config.data.seq_len
  if not isinstance(sample.prompt, str):
    raise errors.ConfigError(
        f"config.sample.prompt must be a string; got {sample.prompt!r}.")
  check_integer(config, "sample.num_tokens", 0)
  if sample.num_tokens >= seq_len:
    raise errors.ConfigError(
        f"config.sample.num_tokens {sample.num_tokens} leaves no room for the "
        f"prompt in the context of data.seq_len {seq_len} tokens.\nPass "
        f"--config.sample.num_tokens={seq_len - 1} or less.")
  check_number(config, "sample.temperature", 0)
  check_integer(config, "sample.top_k", 0)

def validate_data(config: ml_collections.ConfigDict,
                  workdir: Optional[str] = None) -> None:
  """The data part of `validate_config` (evaluate checks a saved config).

  Raises:
    errors.ConfigError, errors.MissingPathError, errors.DataError.
  """
  data_config = config.data
  if data_config.source not in lm_data.DATA_SOURCES:
    raise errors.ConfigError(
        f"Unknown data source {data_config.source!r}.\nPass "
        f"--config.data.source= one of {', '.join(lm_data.DATA_SOURCES)}.")
  check_number(config, "data.validation_fraction", 0, 1, low_open=True,
          high_open=True)
  workdir_lib.check_not_a_file(workdir)
  _check_tokenizers(config, workdir)
  source = data_config.source
  if source in ("text", "array_record"):
    lm_data.check_data_path(data_config)
  if source == "array_record":
    array_record_lib.array_record_paths(data_config.path)
  elif source == "tfds":
    if not data_config.tfds_name:
      raise errors.ConfigError(
          "data.source='tfds' needs a dataset name.\nPass "
          "--config.data.tfds_name=NAME (e.g. lm1b).")
    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise errors.ConfigError(
          "data.source='tfds' needs the package tensorflow-datasets.\n"
          "pip install tensorflow-datasets, or use data.source=text.")
  elif source == "text":
    if _text_bytes(data_config.path) <= _READ_TO_VALIDATE_BYTES:
      lm_data.split(config)      # reads it: binary, empty, too small
  else:     # builtin: in memory, cached for prepare_data
    lm_data.split(config)

def _text_bytes(path: str) -> int:
  """Total size of a text corpus; sniffs each file's head for binary data."""
  total = 0
  for file in data_lib.text_files(path):
    total += file.stat().length
    with file.open("rb") as f:
      head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
      raise errors.DataError(
          f"Corpus file '{file}' looks binary (it holds NUL bytes): pass "
          "UTF-8 text files")
    try:
      codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
      raise errors.DataError(
          f"Corpus file '{file}' is not UTF-8 text (byte {error.start} is "
          "invalid): pass UTF-8 text files") from error
  return total

def _check_tokenizers(config, workdir: Optional[str]) -> None:
  """A given or existing tokenizer must have data.vocab_size pieces."""
  data_config = config.data
  vocab_size = data_config.vocab_size
  existing = (epath.Path(workdir) / tokenizer_lib.TOKENIZER_FILENAME
              if workdir else None)
  if existing and existing.exists():
    tokenizer = data_lib.load_tokenizer(existing)
    if tokenizer.vocab_size != vocab_size:
      raise errors.DataError(
          f"The workdir's tokenizer {existing} has {tokenizer.vocab_size} "
          f"pieces, but config.data.vocab_size is {vocab_size}.\nPass "
          f"--config.data.vocab_size={tokenizer.vocab_size}, or use a fresh "
          "workdir.")
  if data_config.tokenizer_model:
    given = data_config.tokenizer_model
    if not tokenizer_lib.is_remote(given):
      given = os.path.expanduser(given)
    if not tokenizer_lib.as_path(given).is_file():
      raise errors.MissingPathError(
          f"config.data.tokenizer_model {given!r} does not exist.\nPass "
          "--config.data.tokenizer_model= a SentencePiece .model file, or "
          "leave it empty to train one.")
    tokenizer = data_lib.load_tokenizer(given)
    if tokenizer.vocab_size != vocab_size:
      raise errors.DataError(
          f"config.data.tokenizer_model {given} has {tokenizer.vocab_size} "
          f"pieces, but config.data.vocab_size is {vocab_size}.\nPass "
          f"--config.data.vocab_size={tokenizer.vocab_size}.")
    if existing and existing.exists() and (
        existing.read_bytes() != tokenizer_lib.as_path(given).read_bytes()):
      raise errors.DataError(
          f"The workdir's tokenizer {existing} differs from "
          f"config.data.tokenizer_model {given}; a run keeps one tokenizer.\n"
          "Use a fresh workdir, or drop --config.data.tokenizer_model.")
  elif not (existing and existing.exists()) and (
      vocab_size < MIN_TRAINED_VOCAB):
    raise errors.ConfigError(
        f"config.data.vocab_size {vocab_size} is too small for a trained "
        f"tokenizer (256 bytes, 5 special pieces and the corpus's "
        f"characters).\nPass --config.data.vocab_size={MIN_TRAINED_VOCAB} "
        "or more.")
