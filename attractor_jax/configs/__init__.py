"""ml_collections config files, one per experiment family (big_vision style).

Pick one with `--config=attractor_jax/configs/lm.py:VARIANT`.
"""

import ml_collections

from attractor_jax import errors

# Sections compared against their dataclasses instead of a reference config.
DATACLASS_SECTIONS = ("model", "solve", "optimizer")


def check_fields(config: ml_collections.ConfigDict,
                 reference: ml_collections.ConfigDict, config_file: str,
                 added_later: tuple[str, ...] = ()) -> None:
  """No field of `reference` missing from `config`, none it lacks (at the
  top level and one section deep; the `DATACLASS_SECTIONS` are left to
  their dataclasses). Fields named in `added_later` (dotted) may be missing:
  configs saved before they existed read their defaults.

  Raises:
    errors.ConfigError: naming the fields and `config_file` to start from.
  """
  sections = [("", config, reference)]
  for key, value in reference.items():
    if (isinstance(value, ml_collections.ConfigDict)
        and key not in DATACLASS_SECTIONS
        and isinstance(config.get(key), (ml_collections.ConfigDict, dict))):
      sections.append((key + ".", config[key], value))
  for prefix, have, want in sections:
    missing = sorted(set(want.keys()) - set(have.keys())
                     - {name[len(prefix):] for name in added_later
                        if name.startswith(prefix)})
    unknown = sorted(set(have.keys()) - set(want.keys()))
    if missing:
      raise errors.ConfigError(
          f"The config lacks field(s) {[prefix + k for k in missing]}.\n"
          f"Start the config file from {config_file}.")
    if unknown:
      raise errors.ConfigError(
          f"Unknown config field(s) {[prefix + k for k in unknown]}.\n"
          f"Use only the fields of {config_file}.")
