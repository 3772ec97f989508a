"""The tutorial notebooks of experiments/notebooks/ run top to bottom (small).

Each notebook is executed with nbclient in a temporary copy, with
ATTRACTOR_NOTEBOOK_SIZE=small and a temporary working directory, and the
outputs that carry its point are checked.
"""

import pathlib
import shutil

import pytest

# The heavy tier (.ci/run): each test executes a notebook.
pytestmark = pytest.mark.heavy

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
CELL_TIMEOUT_S = 300


def run_notebook(name, tmp_path, monkeypatch):
  copy = tmp_path / f"{name}.ipynb"
  shutil.copy(NOTEBOOKS / f"{name}.ipynb", copy)
  nb = nbformat.read(str(copy), as_version=4)
  workdir = tmp_path / "cwd"
  workdir.mkdir()
  monkeypatch.setenv("ATTRACTOR_NOTEBOOK_SIZE", "small")
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(workdir)}})
  client.execute()     # raises CellExecutionError on any error
  return nb


def cell_with(nb, text):
  cells = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
  assert cells, f"no code cell contains {text!r}"
  return cells[0]


def stdout_of(nb):
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if o.output_type == "stream")


def has_png(cell):
  return any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_notebooks_are_committed_executed():
  for path in sorted(NOTEBOOKS.glob("*.ipynb")):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{path.name}: not executed"
    assert "size: full" in stdout_of(nb), f"{path.name}: not the full run"


def test_bring_your_own_model(tmp_path, monkeypatch):
  nb = run_notebook("bring_your_own_model", tmp_path, monkeypatch)
  out = stdout_of(nb)
  assert "size: small" in out
  assert "Linen: loss" in out
  for mode in ("implicit", "onestep", "jfb", "phantom", "unrolled"):
    assert f"{mode} " in out and "rel. grad error" in out
  assert has_png(cell_with(nb, "Backward modes of fixed_point"))


def test_attractor_lm(tmp_path, monkeypatch):
  if not (NOTEBOOKS / "attractor_lm.ipynb").exists():
    pytest.skip("attractor_lm.ipynb not written yet")
  nb = run_notebook("attractor_lm", tmp_path, monkeypatch)
  out = stdout_of(nb)
  assert "cached == uncached: True" in out
  assert has_png(cell_with(nb, "depth sweep"))


def test_sudoku_in_minutes(tmp_path, monkeypatch):
  if not (NOTEBOOKS / "sudoku_in_minutes.ipynb").exists():
    pytest.skip("sudoku_in_minutes.ipynb not written yet")
  nb = run_notebook("sudoku_in_minutes", tmp_path, monkeypatch)
  assert has_png(cell_with(nb, "residual per solver step"))
  assert has_png(cell_with(nb, "draw_grid"))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
