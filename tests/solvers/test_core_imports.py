"""The solver core imports jax alone, so other projects can take it by itself."""

import subprocess
import sys


def test_solver_core_does_not_import_flax():
  code = ("import sys, attractor_jax, attractor_jax.solvers; "
          "heavy = [m for m in ('flax', 'optax', 'orbax') if m in sys.modules]; "
          "print(heavy); sys.exit(1 if heavy else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
