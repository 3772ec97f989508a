"""Turning a training config into its parts: model config, corpus, data.

Shared by `train`, `evaluate` and `generate`, so the three read a workdir the
same way. The workdir holds `config.json` (the training config),
`tokenizer.model`, `checkpoints/`, `metrics.jsonl`, `tensorboard/` and
`eval/`. The workdir may be local or a URL (`gs://BUCKET/PATH`, shared by
every host of a pod): its files are read and written through `etils.epath`.

`validate_config` checks a whole training config before anything is read or
written; the data functions raise `errors.DataError` for a corpus they cannot
use, and write the tokenizer into the workdir only once the corpus has given
a training and a validation batch.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import json
import math
import numbers
import os
import pathlib
import tempfile
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from etils import epath
from flax import nnx

from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax import models
from attractor_jax import configs
from attractor_jax.configs import lm
from attractor_jax.data import array_record as array_record_lib
from attractor_jax.data import tokenizer as tokenizer_lib
from attractor_jax.models import presets
from attractor_jax.models import config as model_config_lib
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.parallel import distributed
from attractor_jax.parallel import mesh as mesh_lib
from attractor_jax.training import checkpoint_integrity
from attractor_jax.training import checkpoints
from attractor_jax.training import optimizers
from attractor_jax.training import tasks

CONFIG_NAME = "config.json"
DATA_SOURCES = ("builtin", "text", "array_record", "tfds")
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


def load_documents(data_config: ml_collections.ConfigDict) -> list[str]:
  """The text documents the config names (all of them, before splitting)."""
  source = data_config.source
  if source == "builtin":
    return data_lib.builtin_corpus()
  if source in ("text", "array_record"):
    _check_data_path(data_config)
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


def _split(config, *, need_train: bool = True) -> tuple[list, list]:
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
  train_docs, val_docs = _split(config)
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
  return _split(config, need_train=False)[1]


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


# ---------------------------------------------------------------- validation


def check_integer(config, name: str, least: int) -> int:
  """config.<name> (dotted) as an int >= least, or a ConfigError."""
  value = _get(config, name)
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < least):
    raise errors.ConfigError(
        f"config.{name} must be an integer >= {least}; got {value!r}.\n"
        f"Pass --config.{name}=N with N >= {least}.")
  return int(value)


def check_number(config, name: str, low: float = -math.inf,
                 high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
  """config.<name> (dotted) as a number in the range, or a ConfigError."""
  value = _get(config, name)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if ok:
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
  if not ok:
    if math.isinf(high):
      rule = (">" if low_open else ">=") + f" {low:g}"
    else:
      rule = ("in " + ("(" if low_open else "[") + f"{low:g}, {high:g}"
              + (")" if high_open else "]"))
    raise errors.ConfigError(
        f"config.{name} must be a number {rule}; got {value!r}.\n"
        f"Pass --config.{name}=X with X {rule}.")
  return float(value)


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def _check_fields(config) -> None:
  """No field of lm.get_config() missing, none it lacks."""
  configs.check_fields(config, lm.get_config(), "attractor_jax/configs/lm.py")


def validate_config(config: ml_collections.ConfigDict,
                    workdir: Optional[str] = None, *,
                    num_devices: Optional[int] = None):
  """Checks a whole training config of any task before anything is read or
  written (the task's `validate_config`); returns the model config.

  Raises:
    errors.ConfigError: an unknown task, or what the task refuses.
  """
  return tasks.get_task(config).validate_config(
      config, workdir, num_devices=num_devices)


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
    check_workdir_model(workdir, model_config)
  return model_config


def _lm_model_config(saved: ml_collections.ConfigDict) -> ModelConfig:
  return model_config_from(saved, saved.data.vocab_size)


def check_workdir_model(workdir: str, model_config,
                        read_model_config: Callable[[Any], Any]
                        = _lm_model_config) -> None:
  """A workdir that a run already wrote must hold a model of this shape.

  Args:
    workdir: the run's directory.
    model_config: the model the new config asks for.
    read_model_config: the model config of the saved training config.

  Raises:
    checkpoints.ConfigMismatchError: naming every differing field.
  """
  if not (epath.Path(workdir) / CONFIG_NAME).exists():
    return
  saved = load_config(workdir)
  try:
    saved_model = read_model_config(saved)
  except (errors.UserError, AttributeError, KeyError):
    return      # an older or foreign config.json: the checkpoint decides
  if saved_model == model_config:
    return
  # Settings that leave the parameters as they are (solver tolerance,
  # dtype of activations, ...) may change on resume: compare the trees.
  arrays = checkpoint_integrity.structure_differences(
      _abstract_params(saved_model), _abstract_params(model_config))
  if arrays:
    fields = checkpoints.config_differences(saved_model, model_config)
    raise checkpoints.ConfigMismatchError(
        f"{workdir} holds a run of another model ({len(arrays)} parameter "
        f"array(s) differ; config: {'; '.join(fields)}).\nUse a fresh "
        "--workdir, or make the model config match the run's config.json.")


def _abstract_params(model_config):
  """The parameters' shapes and dtypes, without allocating them."""
  abstract = nnx.eval_shape(
      lambda: models.build_model(model_config, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def check_optimizer(config) -> None:
  """The optimizer's name, schedule, fields and ranges."""
  hint = ("\nFix --config.optimizer.* (the fields of OptimizerConfig in "
          "attractor_jax/training/optimizers.py).")
  fields = dict(config.optimizer.to_dict(), total_steps=config.total_steps)
  try:
    optimizer_config = optimizers.OptimizerConfig.from_config(fields)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"optimizer: {error}{hint}") from error
  ranges = dict(lr=dict(low=0, low_open=True), decay_fraction=dict(low=0,
                                                                   high=1),
                weight_decay=dict(low=0), fp_lr_scale=dict(low=0))
  for name, bounds in ranges.items():
    if name in config.optimizer:
      check_number(config, "optimizer." + name, **bounds)
  if "warmup_steps" in config.optimizer:
    check_integer(config, "optimizer.warmup_steps", 0)
  if config.optimizer.get("clip_norm") is not None:
    check_number(config, "optimizer.clip_norm", low=0)
  try:
    optimizers.lr_schedule(optimizer_config)
    optimizers.make_optimizer(optimizer_config)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"optimizer: {error}{hint}") from error


def check_mesh(config, num_devices: Optional[int],
               batch_fields: tuple[str, ...] = ("batch_size",)) -> None:
  """The mesh against the devices, and the batches (`batch_fields` of the
  config, each a global batch) against the processes and the mesh."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  sizes = tuple(config.mesh.get(axis) for axis in mesh_lib.MESH_AXES)
  dcn_data = config.mesh.get("dcn_data", 1)
  if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
             for s in sizes + (dcn_data,)):
    raise errors.ConfigError(
        f"config.mesh sizes must be integers; got {sizes}, dcn_data "
        f"{dcn_data!r}.\nPass --config.mesh.data/fsdp/tensor/dcn_data as "
        "integers (-1: the rest, not for dcn_data).")
  groups, by_slice = mesh_lib.dcn_groups()
  if dcn_data > 1 and dcn_data != groups:
    raise errors.ConfigError(
        f"config.mesh.dcn_data {dcn_data}: the devices span {groups} "
        f"{'slice' if by_slice else 'process'}(es).\nSet "
        f"--config.mesh.dcn_data={groups}"
        + ("" if groups == 1 else " or 1") + ".")
  if dcn_data < 1 or num_devices % dcn_data:
    raise errors.ConfigError(
        f"config.mesh.dcn_data {dcn_data} does not divide the {num_devices} "
        "device(s).\nSet --config.mesh.dcn_data to the number of slices (or "
        "processes) the data-parallel groups span; 1 for one slice.")
  try:
    data, fsdp, _ = mesh_lib.resolve_mesh_shape(sizes,
                                                num_devices // dcn_data)
  except ValueError as error:
    raise errors.ConfigError(
        f"mesh (data, fsdp, tensor) = {sizes}: {error}\nSet "
        "--config.mesh.data/fsdp/tensor so that their product divides the "
        f"{num_devices // dcn_data} device(s) of each of the {dcn_data} "
        "data-parallel group(s); -1 takes the rest.") from error
  data *= dcn_data
  processes = jax.process_count()
  for field in batch_fields:
    global_batch = config[field]
    if global_batch % processes:
      raise errors.ConfigError(
          f"The batch of {global_batch} does not split over the {processes} "
          f"processes (config.{field} is the global batch).\nPass "
          f"--config.{field}= a multiple of {processes}.")
    if global_batch % (data * fsdp):
      raise errors.ConfigError(
          f"The batch of {global_batch} does not split over the mesh's "
          f"{data * fsdp} data-parallel devices (mesh.data {data} x mesh.fsdp "
          f"{fsdp}).\nPass --config.{field}= a multiple of {data * fsdp}, "
          "or change --config.mesh.*.")


def _check_sample(config) -> None:
  """config.sample, the sample printed after training: num_tokens 0 skips
  it; top_k 0 samples from the whole vocabulary (as lm_task.sample_text
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


def _check_data_path(data_config) -> None:
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


def validate_data(config: ml_collections.ConfigDict,
                  workdir: Optional[str] = None) -> None:
  """The data part of `validate_config` (evaluate checks a saved config).

  Raises:
    errors.ConfigError, errors.MissingPathError, errors.DataError.
  """
  data_config = config.data
  if data_config.source not in DATA_SOURCES:
    raise errors.ConfigError(
        f"Unknown data source {data_config.source!r}.\nPass "
        f"--config.data.source= one of {', '.join(DATA_SOURCES)}.")
  check_number(config, "data.validation_fraction", 0, 1, low_open=True,
          high_open=True)
  if workdir is not None and _is_file_not_folder(epath.Path(workdir)):
    raise errors.ConfigError(
        f"--workdir={workdir} is a file.\nPass a new or existing folder.")
  _check_tokenizers(config, workdir)
  source = data_config.source
  if source in ("text", "array_record"):
    _check_data_path(data_config)
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
      _split(config)      # reads it: binary, empty, too small
  else:     # builtin: in memory, cached for prepare_data
    _split(config)


def _is_file_not_folder(path: epath.Path) -> bool:
  return path.exists() and not path.is_dir()


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


def start_command(argv) -> None:
  """Shared start of the train / evaluate / generate commands.

  Rejects stray arguments; unless --verbosity was given, keeps absl's log to
  warnings (orbax logs every checkpoint step at INFO); then starts the
  multi-process runtime if the flags ask for it or a cluster is detected
  (`parallel.distributed`), before anything else touches a device.
  """
  if len(argv) > 1:
    raise errors.ConfigError(
        f"Unexpected arguments {argv[1:]}.\nWrite every flag as "
        "--name=value; pass --helpshort to list the flags.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()


def check_checkpoint_exists(workdir: str, step: Optional[int] = None) -> None:
  """Raises MissingPathError if the workdir has no checkpoint (of `step`).

  Looks only at the step folders (workdir/checkpoints/<step>), so evaluate
  and generate fail at once, before building a model; whether a checkpoint
  that is there can be read is the Checkpointer's to say.
  """
  directory = epath.Path(workdir) / "checkpoints"
  steps = sorted(int(path.name) for path in (
      directory.iterdir() if directory.is_dir() else [])
                 if path.name.isdigit())
  if not steps:
    raise errors.MissingPathError(
        f"No checkpoint in {directory}.\nTrain first: python -m "
        f"attractor_jax.train --workdir={workdir}")
  if step is not None and step not in steps:
    raise errors.MissingPathError(
        f"No checkpoint of step {step} in {directory}; it has steps "
        f"{steps}.\nPass one of them, or leave --step out for the latest.")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the training config as `workdir/config.json` (local or gs://)."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / CONFIG_NAME).write_text(config.to_json(indent=2, sort_keys=True))


def check_step_flag(step: Optional[int]) -> None:
  """Raises ConfigError for a negative --step (of evaluate or generate)."""
  if step is not None and step < 0:
    raise errors.ConfigError(
        f"--step={step} is negative.\nPass the step of a saved checkpoint, "
        "or leave --step out for the latest.")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config a run saved in its workdir."""
  path = epath.Path(workdir) / CONFIG_NAME
  if not path.exists():
    raise errors.MissingPathError(
        f"{path} does not exist: {workdir!r} is not a training workdir.\n"
        "Pass the --workdir of a run of python -m attractor_jax.train.")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (ValueError, UnicodeDecodeError) as error:
    raise errors.DataError(
        f"{path} is not a JSON training config ({error}).\nPass the "
        "--workdir of a run of python -m attractor_jax.train.") from error
