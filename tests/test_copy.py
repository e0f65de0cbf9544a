"""A paper file copied alone into other code: with bodymodels.py in an empty folder, its usage
examples (doctests) build the small model, take a step of the paper's loss and predict a mesh from images, on the
body model files $HMR_BODY_MODELS names; without them the run stops naming that variable."""

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import standins

ROOT = Path(__file__).resolve().parent.parent
PAPERS = {"simplehand": 778, "genhmr": 6890, "hmr_adapter": 10475}  # the mesh each predicts: its vertex count
COPIED = ("bodymodels.py",)  # what the README tells a copier to take beside the paper file
ALLOWED = {"torch", "numpy", "bodymodels"}  # a paper file's imports besides the standard library
OPTIONAL = {"timm"}  # imported inside a function, only by the paper presets' backbones (SimpleHand's HRNet, FastViT)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Stand-in body model files in smplx's layout, as a user's real ones would be."""
    return standins.write_standins(tmp_path_factory.mktemp("models"))


def copied(paper, folder):
    """The paper file and the shared modules alone in `folder`, and an environment that reaches nothing else."""
    for name in (f"{paper}.py", *COPIED):
        shutil.copy(ROOT / name, folder / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMR_", "PYTHON"))}
    return dict(env, HOME=str(folder), MPLBACKEND="Agg")


@pytest.mark.parametrize("paper", PAPERS)
def test_the_copied_paper_files_examples_run_and_end_in_a_mesh(paper, model_files, tmp_path):
    env = dict(copied(paper, tmp_path), HMR_BODY_MODELS=str(model_files))
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "doctest", "-v", f"{paper}.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    passed = int(re.search(r"(\d+) passed and 0 failed", run.stdout).group(1))
    print(f"{paper}.py copied alone: {passed} examples passed in {seconds:.1f} s")
    assert passed >= 6
    expected = re.findall(r"Expecting:\n(.*?)\nok\n", run.stdout, flags=re.S)
    assert any(re.search(rf"\b{PAPERS[paper]}\b", e) for e in expected), f"no example shows {PAPERS[paper]} vertices"


@pytest.mark.parametrize("paper", PAPERS)
def test_without_model_files_the_copied_paper_names_hmr_body_models(paper, tmp_path):
    env = copied(paper, tmp_path)  # no $HMR_BODY_MODELS, and no standins.py to write stand-ins
    run = subprocess.run([sys.executable, "-m", "doctest", "-o", "FAIL_FAST", f"{paper}.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "set HMR_BODY_MODELS" in run.stdout and "standins.py" in run.stdout, run.stdout[-3000:]
    assert "ModuleNotFoundError" not in run.stdout  # the paper file needs no other module of this project


@pytest.mark.parametrize("paper", PAPERS)
def test_the_paper_file_imports_only_torch_numpy_the_standard_library_and_bodymodels(paper):
    tree = ast.parse((ROOT / f"{paper}.py").read_text())

    def imported(nodes):
        names = {a.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for a in node.names}
        return names | {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    top, anywhere = imported(tree.body), imported(ast.walk(tree))
    outside = sorted(n for n in (top - ALLOWED) | (anywhere - ALLOWED - OPTIONAL) if n not in sys.stdlib_module_names)
    assert not outside, f"{paper}.py imports {outside}: a copier would need them"


BUDGETS = {"simplehand": (850, 260), "genhmr": (1250, 700), "hmr_adapter": (1350, 450)}  # lines: file, method


@pytest.mark.parametrize("paper", PAPERS)
def test_the_paper_file_keeps_its_line_budgets_and_small_configs(paper):
    """The reference stays readable: the file, its method sections (first banner to the configs banner) and each
    config dataclass within their budgets (docs/reference.md, "The reference and its experiments")."""
    text = (ROOT / f"{paper}.py").read_text()
    lines = text.splitlines()
    total, method = BUDGETS[paper]
    assert len(lines) <= total, f"{paper}.py has {len(lines)} lines, over its budget of {total}"
    banners = [i for i, line in enumerate(lines) if line.startswith("# ----------")]
    configs = next(i for i in banners if "Configs" in lines[i + 1] or "configs" in lines[i + 1].lower())
    assert configs - banners[0] <= method, f"{paper}.py's method sections run {configs - banners[0]} lines"
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            fields = sum(isinstance(b, ast.AnnAssign) for b in node.body)
            assert fields <= 30, f"{paper}.{node.name} has {fields} fields, over 30"
