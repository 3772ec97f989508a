r"""Converts a public PyTorch Attractor checkpoint (safetensors) to our params.

    python -m attractor_jax.convert --checkpoint=model.safetensors \
        --public_config=config.json --output=/tmp/attractor-140m

(or `--preset=attractor-small-140m` instead of --public_config). Writes
OUTPUT/params (an orbax checkpoint of nnx.state(model); `params.npz` if orbax
is missing) and OUTPUT/config.json (our ModelConfig). The mapping lives in
`attractor_jax.models.torch_import`.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_np

from attractor_jax import models
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
    json.dump(torch_import.config_to_dict(config), f, indent=2)
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
  config = torch_import.config_from_public(public,
                                           rope_convention=rope_convention)
  emb, logit = torch_import.public_scales(public)
  params = torch_import.convert_state_dict(
      safetensors_np.load_file(checkpoint), config,
      embedding_scale=emb if embedding_scale is None else embedding_scale,
      logit_scale=logit if logit_scale is None else logit_scale)
  model = models.build_model(config, rngs=nnx.Rngs(0))
  torch_import.load_into_model(model, params)
  return save(model, config, output)


def main(argv):
  del argv
  path = run(_CHECKPOINT.value, _OUTPUT.value,
             public_config=_PUBLIC_CONFIG.value, preset=_PRESET.value,
             rope_convention=_ROPE.value, embedding_scale=_EMB_SCALE.value,
             logit_scale=_LOGIT_SCALE.value)
  print(f"Wrote {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "output"])
  flags.mark_flags_as_mutual_exclusive(["public_config", "preset"])
  app.run(main)
