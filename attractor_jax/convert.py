r"""Converts a public PyTorch Attractor checkpoint (safetensors) to our params.

    python -m attractor_jax.convert --checkpoint=model.safetensors \
        --public_config=config.json --output=/tmp/attractor-140m

(or `--preset=attractor-small-140m` instead of --public_config). Writes
OUTPUT/params (an orbax checkpoint of nnx.state(model); `params.npz` if orbax
is missing) and OUTPUT/config.json (our ModelConfig). The mapping lives in
`attractor_jax.models.torch_import`.

The flags and files are checked before anything is converted or written: a
bad input prints `error: ...` and what to do and exits with status 2
(docs/bad_inputs.md).
"""

from __future__ import annotations

import json
import os
import struct

from absl import flags
import numpy as np
from flax import nnx

from attractor_jax import commands
from attractor_jax import errors
from attractor_jax import models
from attractor_jax.models import config as model_config
from attractor_jax.models import torch_import

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "The public .safetensors file.")
_PUBLIC_CONFIG = flags.DEFINE_string(
    "public_config", None, "JSON of the public AttractorConfig (default: "
    "config.json beside the checkpoint, if there is one).")
_PRESET = flags.DEFINE_enum("preset", None,
                            sorted(torch_import.PUBLIC_PRESETS),
                            "A public preset, instead of --public_config.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_ROPE = flags.DEFINE_enum("rope_convention", "interleaved",
                          ["interleaved", "half"],
                          "Our rotary convention; 'half' permutes q/k dims.")
_EMB_SCALE = flags.DEFINE_float(
    "embedding_scale", None, "Public init.embedding_scale (default: from the "
    "public config, else 1).")
_LOGIT_SCALE = flags.DEFINE_float(
    "logit_scale", None, "Public init.logit_scale (default: from the public "
    "config, else 1).")


def save(model: nnx.Module, config, output: str) -> str:
  """Saves nnx.state(model) and our config.json under `output`."""
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, "config.json"), "w") as f:
    json.dump(model_config.config_to_dict(config), f, indent=2)
  state = nnx.state(model)
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError:
    path = os.path.join(output, "params.npz")
    np.savez(path, **{"/".join(map(str, k)): np.asarray(v[...]) for k, v in
                      nnx.to_flat_state(state)})
    return path
  path = os.path.join(output, "params")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, state, force=True)
  return path


def run(checkpoint: str, output: str, *, public_config=None, preset=None,
        rope_convention="interleaved", embedding_scale=None,
        logit_scale=None) -> str:
  """Loads, converts, builds, fills and saves; returns the params path."""
  if public_config is None and preset is None:
    beside = os.path.join(os.path.dirname(checkpoint), "config.json")
    if not os.path.exists(beside):
      raise ValueError("Pass --public_config or --preset.")
    public_config = beside
  if preset is not None:
    public = torch_import.PUBLIC_PRESETS[preset]
  else:
    with open(public_config) as f:
      public = json.load(f)
  # Scales from the public init_strategy (explicit ones must agree with it).
  config, params = torch_import.convert_public(
      torch_import.read_checkpoint(checkpoint), public,
      embedding_scale=embedding_scale, logit_scale=logit_scale,
      rope_convention=rope_convention)
  model = models.build_model(config, rngs=nnx.Rngs(0))
  torch_import.load_into_model(model, params)
  return save(model, config, output)


def _is_safetensors(path: str) -> bool:
  """A safetensors file starts with its JSON header's length (u64 LE), then
  the header, which fits in the file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) < 9:
    return False
  (header_len,) = struct.unpack("<Q", head[:8])
  return 8 + header_len <= size and head[8:9] == b"{"


def check_flags(checkpoint, output, public_config, preset) -> None:
  """Checks the flags and the files they name; converts nothing.

  Raises:
    errors.ConfigError: a missing or conflicting flag, a file of the wrong
      format.
    errors.MissingPathError: a file that does not exist.
  """
  for name, value in (("checkpoint", checkpoint), ("output", output)):
    if not value:
      raise errors.ConfigError(
          f"--{name} is required.\nPass --checkpoint=MODEL.safetensors and "
          "--output=DIR.")
  if public_config and preset:
    raise errors.ConfigError(
        "--public_config and --preset both name the model.\nPass only one.")
  if not os.path.isfile(checkpoint):
    raise errors.MissingPathError(
        f"--checkpoint={checkpoint} does not exist.\nPass the public "
        ".safetensors file.")
  if not _is_safetensors(checkpoint):
    raise errors.ConfigError(
        f"--checkpoint={checkpoint} is not a safetensors file.\nConvert a "
        f"PyTorch state dict once with: {torch_import.TORCH_TO_SAFETENSORS}")
  if os.path.exists(output) and not os.path.isdir(output):
    raise errors.ConfigError(
        f"--output={output} is a file.\nPass a new or existing folder.")
  if preset is None:
    if public_config is None:
      public_config = os.path.join(os.path.dirname(checkpoint), "config.json")
      if not os.path.exists(public_config):
        raise errors.ConfigError(
            f"No --public_config, --preset or {public_config} says which "
            "model the checkpoint holds.\nPass --public_config=config.json or "
            f"--preset= one of {', '.join(sorted(torch_import.PUBLIC_PRESETS))}"
            ".")
    if not os.path.isfile(public_config):
      raise errors.MissingPathError(
          f"--public_config={public_config} does not exist.\nPass the public "
          "model's config.json, or --preset.")
    try:
      with open(public_config, encoding="utf-8") as f:
        parsed = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
      raise errors.ConfigError(
          f"--public_config={public_config} is not JSON ({error}).\nPass the "
          "public model's config.json.") from error
    if not isinstance(parsed, dict):
      raise errors.ConfigError(
          f"--public_config={public_config} is not a JSON object.\nPass the "
          "public model's config.json.")


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(
        f"Unexpected arguments {argv[1:]}.\nWrite every flag as "
        "--name=value; pass --helpshort to list the flags.")
  check_flags(_CHECKPOINT.value, _OUTPUT.value, _PUBLIC_CONFIG.value,
              _PRESET.value)
  try:
    path = run(_CHECKPOINT.value, _OUTPUT.value,
               public_config=_PUBLIC_CONFIG.value, preset=_PRESET.value,
               rope_convention=_ROPE.value, embedding_scale=_EMB_SCALE.value,
               logit_scale=_LOGIT_SCALE.value)
  except ValueError as error:
    if isinstance(error, errors.UserError):
      raise
    # torch_import reports a checkpoint that does not fit the config (names,
    # shapes, settings) as a ValueError listing every difference.
    raise errors.DataError(
        f"The checkpoint does not convert: {error}\nCheck that --checkpoint "
        "and --public_config / --preset describe the same model.") from error
  print(f"Wrote {path}")


if __name__ == "__main__":
  commands.run(main)
