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


BUDGETS = {"simplehand": (850, 260), "genhmr": (1250, 700), "hmr_adapter": (1500, 450)}  # lines: file, method
SHARED_BUDGET = 800  # bodymodels.py: the geometry the papers share


@pytest.mark.parametrize("paper", PAPERS)
def test_the_paper_file_keeps_its_line_budgets_and_small_configs(paper):
    """The reference stays readable: the file, its method sections (first banner to the configs banner) and each
    config dataclass within their budgets (docs/history.md, "2026-11-28, commit 2d712cd: the reference and its
    experiments")."""
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


def test_bodymodels_keeps_its_line_budget():
    """The shared ground floor stays small: what one paper alone uses lives in that paper's file, what no paper uses
    in the lab (docs/reference.md, "Shared modules")."""
    lines = (ROOT / "bodymodels.py").read_text().splitlines()
    assert len(lines) <= SHARED_BUDGET, f"bodymodels.py has {len(lines)} lines, over its budget of {SHARED_BUDGET}"


def project_imports():
    """{module: the project modules it imports}, for the root's *.py and lab/*.py (the package itself as "lab"),
    every import statement counted, those inside functions too. Importing lab.X from outside the lab runs the
    package's __init__ first, so it counts as importing "lab" as well."""
    paths = {p.stem: p for p in ROOT.glob("*.py")}
    paths.update({f"lab.{p.stem}": p for p in (ROOT / "lab").glob("*.py") if p.stem != "__init__"})
    paths["lab"] = ROOT / "lab" / "__init__.py"
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        found = {m for m in found if m in paths and m != name}
        if not name.startswith("lab") and any(m.startswith("lab.") for m in found):
            found.add("lab")
        graph[name] = found
    return graph


def test_the_module_graph_has_no_cycle_and_keeps_its_floors():
    """No two modules import each other, however indirectly or lazily; bodymodels.py imports no module of the
    project; a paper file imports no other paper file, nor metrics, data or the lab; no file but the lab (and the
    two scripts that run the papers' experiments, train.py and demo.py) imports a paper's experiments file."""
    graph = project_imports()
    state = {}

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join(path + [other])}"
            if other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not graph["bodymodels"], f"bodymodels imports {sorted(graph['bodymodels'])}"
    for paper in PAPERS:
        banned = {m for m in graph[paper] if m in PAPERS or m in ("metrics", "data") or m.split(".")[0] == "lab"}
        assert not banned, f"{paper}.py imports {sorted(banned)}"
    for name, imported in graph.items():
        experiments = {m for m in imported if m.startswith("lab.") and m.endswith("_experiments")}
        if not name.startswith("lab") and name not in ("train", "demo"):
            assert not experiments, f"{name}.py imports {sorted(experiments)}: only the lab speaks to them"
    for paper in PAPERS:  # a paper's experiments file reaches another paper only through bodymodels
        others = {m for m in graph[f"lab.{paper}_experiments"] if m in PAPERS and m != paper}
        assert not others, f"lab/{paper}_experiments.py imports {sorted(others)}"
