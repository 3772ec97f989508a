"""The data package knows nothing of models: no Flax, no model code."""

import subprocess
import sys


def test_data_package_imports_no_model_code():
  # grain itself imports orbax (for its checkpoint handler); that is allowed.
  code = ("import sys, attractor_jax.data; "
          "bad = sorted({m for m in sys.modules if m.split('.')[0] in "
          "('flax', 'tensorflow', 'tensorflow_datasets') or "
          "m.startswith(('attractor_jax.models', 'attractor_jax.nn', "
          "'attractor_jax.training'))}); "
          "print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
