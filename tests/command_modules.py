"""Importing a command module (attractor_jax.train, evaluate, ...) in a test.

train, evaluate and generate each define --workdir with absl, so only one of
them may be imported at a time; `imported(name)` imports one and afterwards
drops the flags it defined.
"""

import contextlib
import importlib
import sys

from absl import flags


@contextlib.contextmanager
def imported(name: str):
  """Imports attractor_jax.<name>; afterwards drops the flags it defined.

  A module another test file already imported (convert) is kept, and its
  flags only reset.
  """
  module_name = f"attractor_jax.{name}"
  fresh = module_name not in sys.modules
  module = importlib.import_module(module_name)
  try:
    yield module
  finally:
    flags.FLAGS.unparse_flags()
    drop = [n for n in flags.FLAGS if n.startswith("config.")]
    if fresh:
      drop += [f.name for f in
               flags.FLAGS.flags_by_module_dict().get(module_name, [])]
      drop += ["config"] if name == "train" else []
      del sys.modules[module_name]
    for flag_name in set(drop):
      if flag_name in flags.FLAGS:
        delattr(flags.FLAGS, flag_name)
