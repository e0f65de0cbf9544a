"""Every notebook in notebooks/ executes top to bottom, as JupyterLab would run it, and is committed
with its outputs, so that a reader browsing the repository sees the pictures.

The notebooks read HMR_NOTEBOOK_FAST=1 to pick their small settings; the cells carry real asserts,
so a notebook whose numbers go wrong fails here, not only one that raises.

    python tests/test_notebooks.py --full       # every notebook in its full setting, saved with its outputs
    python tests/test_notebooks.py NOTEBOOK     # the small setting, for a quick look (not what is committed)

The method notebooks are committed in their full setting: with the default runs' checkpoints in out/
(README), where the trained models beat their baselines; each prints its results last, one
`result: ...` line each.
"""
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


METHODS = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03")]  # one per paper: they print `result:` lines


def execute(path, fast=True):
    """The notebook at `path`, executed in a fresh kernel: CI's small setting (HMR_NOTEBOOK_FAST=1), or the full one."""
    os.environ["MPLBACKEND"] = "Agg"
    if fast:
        os.environ["HMR_NOTEBOOK_FAST"] = "1"
    else:
        os.environ.pop("HMR_NOTEBOOK_FAST", None)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900 if fast else 3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def printed(nb):
    return "".join(o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream")


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


@pytest.mark.parametrize("path", METHODS, ids=[p.name for p in METHODS])
def test_method_notebook_is_committed_in_its_full_setting_with_its_results(path):
    """Committed as `--full` ran it: not CI's small setting, the trained models read from out/, `result:` lines last."""
    text = printed(nbformat.read(path, as_version=4))
    assert "FAST = False, TRAINED = True" in text, f"{path.name}: commit it as `python {__file__} --full` writes it"
    results = [line for line in text.splitlines() if line.startswith("result: ")]
    assert results and text.rstrip().endswith(results[-1]), f"{path.name}: its `result:` lines must come last"


if __name__ == "__main__":
    full = "--full" in sys.argv
    paths = [pathlib.Path(a) for a in sys.argv[1:] if a != "--full"]
    for path in paths or NOTEBOOKS:
        nb = execute(path, fast=not full)
        nbformat.write(nb, path)
        print(f"{path}: {sum('image/png' in o.get('data', {}) for o in outputs(nb))} pictures")
