"""The notebooks' install cells and Colab badges come from one address
(attractor_jax/project.py), and an unset address gives a sentence, not a
pip error."""

import builtins
import importlib.util
import pathlib

import pytest

from attractor_jax import project

nbformat = pytest.importorskip("nbformat")
transformer = pytest.importorskip("IPython.core.inputtransformer2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"


def builder():
  spec = importlib.util.spec_from_file_location(
      "build_notebooks", NOTEBOOKS / "build_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_install_cell(source):
  """Runs an install cell where attractor_jax is not installed; returns the
  pip magic lines it ran."""
  code = transformer.TransformerManager().transform_cell(source)
  magics, namespace = [], {}

  class FakeShell:
    def run_line_magic(self, name, line):
      # IPython expands {names} of the user namespace in magic lines.
      magics.append(f"%{name} {line.format(**namespace)}")

  real_import = builtins.__import__

  def no_package(name, *args, **kwargs):
    if name == "attractor_jax":
      raise ImportError("not installed")
    return real_import(name, *args, **kwargs)

  builtins.__import__ = no_package
  try:
    namespace["get_ipython"] = FakeShell
    exec(code, namespace)  # pylint: disable=exec-used
  except ImportError:
    pass        # the second import after the (faked) pip install
  finally:
    builtins.__import__ = real_import
  return magics


def test_committed_headers_are_the_built_ones():
  build = builder()
  for name, cells in build.NOTEBOOKS.items():
    built = build.build(cells, name)
    committed = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
    for i in range(build.HEADER_CELLS):
      assert committed.cells[i].source == built.cells[i].source, (name, i)
    assert project.REPOSITORY in committed.cells[2].source


def test_unset_repository_says_what_to_set():
  cell = builder().install_cell("")
  with pytest.raises(SystemExit, match="Set REPOSITORY in this cell"):
    run_install_cell(cell)


def test_set_repository_installs_from_it_and_gives_a_badge():
  build = builder()
  address = "https://github.com/someone/attractor_jax"
  magics = run_install_cell(build.install_cell(address))
  assert magics == [f'%pip install -q "attractor_jax @ git+{address}"']
  badge = build.colab_badge("attractor_lm", address)
  assert ("https://colab.research.google.com/github/someone/attractor_jax/"
          "blob/main/experiments/notebooks/attractor_lm.ipynb") in badge
  assert "not set" in build.colab_badge("attractor_lm", "")
  assert project.colab_url("x.ipynb", "https://gitlab.com/a/b") == ""
