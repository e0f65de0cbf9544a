"""Every notebook in notebooks/ executes top to bottom, as JupyterLab would run it, and is committed
with its outputs, so that a reader browsing the repository sees the pictures.

The notebooks read HMR_NOTEBOOK_FAST=1 to pick their small settings; the cells carry real asserts,
so a notebook whose numbers go wrong fails here, not only one that raises.

    python tests/test_notebooks.py     # execute every notebook (the small setting) and save it with its outputs
"""
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def execute(path):
    """The notebook at `path`, executed in a fresh kernel in CI's small setting (HMR_NOTEBOOK_FAST=1)."""
    os.environ.update(HMR_NOTEBOOK_FAST="1", MPLBACKEND="Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_without_error(path, monkeypatch):
    monkeypatch.setenv("HMR_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    errors = [o for o in outputs(execute(path)) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_pictures(path):
    """Refresh with `python tests/test_notebooks.py` after changing a notebook or what it calls."""
    committed = outputs(nbformat.read(path, as_version=4))
    assert any("image/png" in o.get("data", {}) for o in committed), f"{path.name} has no pictures: run {__file__}"
    assert not any(o.get("output_type") == "error" for o in committed), f"{path.name} was committed with an error"


if __name__ == "__main__":
    for path in NOTEBOOKS if len(sys.argv) == 1 else map(pathlib.Path, sys.argv[1:]):
        nb = execute(path)
        nbformat.write(nb, path)
        print(f"{path}: {sum('image/png' in o.get('data', {}) for o in outputs(nb))} pictures")
