"""The README opens with the two commands a new user runs, and CI runs one;
its examples for integrators run."""

import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def first_code_block_lines():
  text = (ROOT / "README.md").read_text()
  match = re.search(r"```(?:bash)?\n(.*?)```", text, re.S)
  assert match, "README.md must open with a code block of commands"
  assert text.index(match.group(0)) < 200, "the commands must come first"
  return [line for line in match.group(1).splitlines() if line.strip()]


def test_readme_opens_with_main_job_and_test_commands():
  lines = first_code_block_lines()
  assert len(lines) == 2
  main_job, tests = lines
  pins = " -c constraints.txt"
  assert main_job.startswith(f"pip install -e .{pins} && python -m attractor_jax.")
  module = shlex.split(main_job.split("&&")[1])[2]
  path = ROOT / (module.replace(".", "/") + ".py")
  assert path.is_file(), f"main job {module} does not exist"
  assert tests.startswith(f'pip install -e ".[test]"{pins} && python -m pytest')
  assert '-m "not slow and not heavy"' in tests
  assert (ROOT / "constraints.txt").is_file()


def test_ci_runs_the_readme_test_command_then_the_heavy_tier():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "grep -m1 -E '^pip install -e \"\\.\\[test\\]\"' README.md" in ci
  readme_tier = ci.index('eval "$test_command"')
  heavy_tier = ci.index('eval "$heavy_command"')
  assert readme_tier < heavy_tier
  assert '-m "heavy and not slow"' in ci


def test_constraints_pin_the_core_dependencies():
  pins = {line.split("==")[0].lower(): line.split("==")[1]
          for line in (ROOT / "constraints.txt").read_text().splitlines()
          if "==" in line and not line.startswith("#")}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
               "pytest", "pytest-xdist"):
    assert name in pins, f"constraints.txt does not pin {name}"


INTEGRATORS = "## Using the attractor head in your own model"


def integrator_examples():
  """The Python code blocks of the README's section for integrators."""
  text = (ROOT / "README.md").read_text()
  assert INTEGRATORS in text, "README.md lacks the section for integrators"
  start = text.index(INTEGRATORS)
  end = text.find("\n## ", start + len(INTEGRATORS))
  section = text[start:end if end >= 0 else len(text)]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_an_nnx_and_a_linen_example_for_integrators():
  nnx_example, linen_example = integrator_examples()
  assert "AttractorHead.create(" in nnx_example and "@nnx.jit" in nnx_example
  assert "attractor_jax import linen as" in linen_example
  assert "@jax.jit" in linen_example


@pytest.mark.heavy
@pytest.mark.parametrize("index", [0, 1], ids=["nnx", "linen"])
def test_readme_integrator_example_runs(index):
  code = integrator_examples()[index]
  namespace = {"__name__": f"readme_example_{index}"}
  exec(compile(code, f"README.md example {index}", "exec"), namespace)  # pylint: disable=exec-used
  assert float(namespace["loss"]) >= 0
  assert namespace["stats"].iterations.shape == (8,)
