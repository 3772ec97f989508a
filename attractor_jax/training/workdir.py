"""A training workdir: its saved config, its checkpoints, its model.

Shared by `train`, `evaluate` and `generate`, so the three read a workdir the
same way. The workdir holds `config.json` (the training config),
`checkpoints/`, `metrics.jsonl`, `tensorboard/`, `eval/` and whatever its
task writes (the LM's `tokenizer.model`). It may be local or a URL
(`gs://BUCKET/PATH`, shared by every host of a pod): its files are read and
written through `etils.epath`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import ml_collections
from etils import epath
from flax import nnx

from attractor_jax import errors
from attractor_jax import models
from attractor_jax.training import checkpoint_integrity
from attractor_jax.training import checkpoints

CONFIG_NAME = "config.json"


def check_not_a_file(workdir: Optional[str]) -> None:
  """Raises ConfigError for a --workdir that names a file."""
  if workdir is None:
    return
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise errors.ConfigError(
        f"--workdir={workdir} is a file.\nPass a new or existing folder.")


def check_workdir_model(workdir: str, model_config,
                        read_model_config: Callable[[Any], Any]) -> None:
  """A workdir that a run already wrote must hold a model of this shape.

  Args:
    workdir: the run's directory.
    model_config: the model the new config asks for.
    read_model_config: the task's reader of a saved training config's model
      config.

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
