"""lab/wording.py: the project speaks to a reader who has none of the way it was made.

    python -m lab.wording                  # every hit in the project, one line each (exit 1 if any)
    python -m lab.wording README.md lab/   # those files' (or folders')

What it reads: README.md, docs/*.md (docs/history.md included), tests/official's READMEs, the notebooks' Markdown,
code and text outputs, every .py file's comments and strings (docstrings included; tokenized, so a name in the code
is never read), the `note` fields of docs/runs/*.json, and the comments of the configuration files (.ci/run,
pytest.ini, ruff.toml, requirements.txt). Prose is the Markdown, the outputs and the notes; code is the comments and
the strings with a space in them; a string without one (a key, a name, a path) is read for machine paths only.

What it flags:
- a number of this project's own issue list ("issue 12", "issues 3, 4", "Issue 5:", "#12" in prose) and "the
  issue's" (an issue named without one); an outside repository's issue is written OWNER/NAME#N (vchoutas/smplx#48),
  and "the issue of scale" is no number;
- a target called a bar: "bar 0.9", "the bar of 0.9 x", "bar 07", "bars: met", "misses the bar", "issue 5's bars";
  a bar chart, `ax.bar`, error bars and "the bars compare ..." are not targets;
- "session(s)" in the sense of this project's work: in prose any session but a pytest, Jupyter, kernel, terminal or
  process-group one; in code only "this", "another", "a later" (...) session;
- "helper(s)" as a worker: in prose any helper but a helper function, method, module, class or script; in code
  only the possessive ("a helper's", "the helpers'") and "another helper" (a helper function is code);
- "lent", and "probe(s)" as a piece of work ("a probe", "the probe's", "(probe)"); a linear probe is a model;
- a machine path: /tmp/, /work/, /root/;
- this project's tools: "the issue tracker", "the device machine", "device time";
- a notebook that writes a file to a fixed path (a literal path, or one joined onto a folder that is not a
  temporary one, given to open(..., "w"), savefig, torch.save, write_text, mkdir, a plots.draw_* call or --out):
  a notebook's scratch files go under tempfile.mkdtemp().
This file and its self-test (tests/test_wording.py) name the words they flag, so they are not read.
"""

import argparse
import ast
import io
import json
import pathlib
import re
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROSE_GLOBS = ["README.md", "docs/*.md", "tests/official/*.md", "tests/official/*/*.md"]
SELF = {"lab/wording.py", "tests/test_wording.py"}  # they name the words they flag
CODE_GLOBS = ["*.py", "lab/*.py", "tests/*.py", "tests/official_keys/*.txt", ".ci/run", "pytest.ini", "ruff.toml",
              "requirements.txt"]

_NEUTRAL_SESSION_BEFORE = r"(?<!pytest )(?<!Jupyter )(?<!JupyterLab )(?<!kernel )(?<!IPython )(?<!SSH )(?<!login )" \
                          r"(?<!terminal )(?<!tmux )(?<!screen )(?<!test )(?<!new )(?<!own )"
_NEUTRAL_SESSION_AFTER = r"(?!\s+and\s+process\s+group|\s+scope|-scoped|\s+fixture|\s+leader|\s+id\b|\s+start" \
                         r"|\s+finish)"
_PROCESS_SESSION = r"\b(?:this|another|other|previous|earlier|later|next|each|every|our|one|a|an|that)\s+sessions?\b"
_WORK = r"(?:found|wrote|measured|ran|reviewed|noticed|saw|said|reported|checked|read|review|fixed|added)"
RULES = [  # (what, pattern, the kinds of text it reads: prose, code (comments, strings with a space), token)
    ("an issue of this project: say what it is or cite the change by its commit (an outside issue: OWNER/NAME#N)",
     re.compile(r"\b[Ii]ssues?\s+#?\d+(?:(?:\s*,\s*|\s+and\s+|\s*/\s*|\s*&\s*)#?\d+)*"
                r"|\b(?:the|this|that)\s+issue['’]s\b"), ("prose", "code")),
    ("an issue number of this project: cite the change by its commit (an outside issue: OWNER/NAME#N)",
     re.compile(r"(?:^|(?<=[\s(\[]))#\d{1,4}\b(?![0-9a-fA-F])"), ("prose",)),
    ("a target called a bar: state the criterion itself ('at most 0.9 x the expert's')",
     re.compile(r"\bbars?\s+(?:of\s+)?[<>≤≥=]?\s*\d"
                r"|\bbars?\s*[:(]\s*(?:met|missed|not\s+met|not\s+worse)\b"
                r"|\bbars?\s+(?:(?:is|are|was|were|it|they|we|this|that)\s+)?(?:met|missed|misses|meets|reached)\b"
                r"|\b(?:meets?|met|miss(?:es|ed)?|reach(?:es|ed)?|clears?|cleared|within|passes|passed)\s+"
                r"(?:the|its|a|this|that|each|every|both|all|their|our)\s+(?:\w+['’]s\s+)?bars?\b"
                r"|\b[Ii]ssues?\s+#?\d+['’]s\s+bars?\b"), ("prose", "code")),
    ("'session' for this project's work: say what was done, dated by its commit",
     re.compile(rf"{_NEUTRAL_SESSION_BEFORE}\bsessions?\b{_NEUTRAL_SESSION_AFTER}", re.I), ("prose",)),
    ("'session' for this project's work: say what was done, dated by its commit",
     re.compile(rf"{_PROCESS_SESSION}{_NEUTRAL_SESSION_AFTER}", re.I), ("code",)),
    ("'helper' for a worker of this project: say what was done",
     re.compile(r"\bhelpers?\b(?!['’]?s?\s+(?:functions?|methods?|modules?|class(?:es)?|scripts?|routines?)\b)",
                re.I), ("prose",)),
    ("'helper' for a worker of this project: say what was done",
     re.compile(rf"\bhelpers?['’]s?(?=\s)|\bhelpers['’]"
                rf"|\b(?:another|other|each|every|one|a|the)\s+helpers?\s+{_WORK}\b"
                r"|\banother\s+helper\b", re.I), ("code",)),
    ("'lent': say what was used", re.compile(r"\blent\b", re.I), ("prose", "code")),
    ("'probe' for a piece of this project's work: say what was measured, dated by its commit",
     re.compile(r"\b(?:a|the|this|that|another|one|each|every|throw-away|quick|short|later|earlier|first|second)\s+"
                r"probes?\b(?!\s+(?:head|layer|classifier|accuracy|network|model))|\bprobes?['’]s?(?=\s)"
                r"|\(\s*probes?\s*\)|\bprobe\s+runs?\b", re.I), ("prose", "code")),
    ("a machine path: name the file by its place in the repository or by what it holds",
     re.compile(r"(?<![\w.~-])/(?:tmp|work|root)/"), ("prose", "code", "token")),
    ("a tool of this project's making: say what was done", re.compile(
        r"\b(?:the\s+)?issue[- ]tracker\b|\bdevice\s+(?:machines?|time|budget|checks?)\b", re.I), ("prose", "code")),
]


def prose_hits(text, where, kind="prose", first_line=1):
    """The hits of `text` read as `kind` (prose, code or token): 'WHERE line N: 'MATCH' is WHAT' each."""
    out = []
    for what, pattern, kinds in RULES:
        if kind not in kinds:
            continue
        for m in pattern.finditer(text):
            line = first_line + text.count("\n", 0, m.start())
            out.append(f"{where}line {line}: '{' '.join(m.group(0).split())}' is {what}")
    return out


def code_hits(source, where, first_line=1):
    """The hits of Python source: its comments and strings (with a space: read as code; without: as a token)."""
    out = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return prose_hits(source, where, "code", first_line)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            kind = "code" if tok.type == tokenize.COMMENT or re.search(r"\s", tok.string) else "token"
            out += prose_hits(tok.string, where, kind, first_line + tok.start[0] - 1)
    return out


_WRITERS = re.compile(r"^(?:savefig|save|savez|savez_compressed|write_text|write_bytes|mkdir|touch|makedirs|copy|copy2"
                      r"|copyfile|copytree|to_csv|imwrite|imsave|draw_\w+|save_\w+)$")
_PATH_LITERAL = re.compile(r"^(?:\.{0,2}/|out/|[\w.-]+/)?[\w.-]+(?:/[\w.-]+)*\.(?:png|jpe?g|pdf|svg|gif|mp4|pt|pth"
                           r"|npz|npy|json|csv|txt|pkl|obj|ply)$|^(?:\.{0,2}/)?out(?:/|$)")


def _source_of(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def scratch_hits(nb, where):
    """A notebook's writes to a fixed path: a call that writes (open(..., 'w'), savefig, torch.save, write_text,
    mkdir, plots.draw_*, ...) given a literal path or a path joined onto a folder that is no temporary one, and a
    --out given such a path."""
    cells = [(i, _source_of(c)) for i, c in enumerate(nb["cells"], 1) if c["cell_type"] == "code"]
    trees = []
    for i, source in cells:
        try:
            trees.append((i, ast.parse("\n".join("" if line.lstrip()[:1] in "%!" else line
                                                 for line in source.splitlines()))))
        except SyntaxError:
            continue
    temporary = set()  # the names bound to a temporary folder (tempfile.mkdtemp(), TemporaryDirectory(), ...)
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.With)):
                value = node.value if isinstance(node, ast.Assign) else None
                targets = node.targets if isinstance(node, ast.Assign) else [
                    item.optional_vars for item in node.items if item.optional_vars is not None
                    and _is_temporary(item.context_expr, temporary)]
                if value is None or _is_temporary(value, temporary):
                    temporary |= {t.id for t in targets if isinstance(t, ast.Name)}

    def fixed(expr):
        """Whether expr is a path that is neither temporary nor computed from a temporary one."""
        if _is_temporary(expr, temporary):
            return False
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return bool(_PATH_LITERAL.match(expr.value))
        if isinstance(expr, ast.JoinedStr):
            return False
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div):  # FOLDER / "name.png"
            return True
        if isinstance(expr, ast.Call) and _name(expr.func) in ("Path", "join", "str", "fspath", "abspath",
                                                                "resolve") and expr.args:
            return fixed(expr.args[0])
        return False

    out = []
    for i, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)):  # a command line: "--out", PATH
                for flag, value in zip(node.elts, node.elts[1:]):
                    if isinstance(flag, ast.Constant) and flag.value == "--out" and fixed(value):
                        out.append((i, value))
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            args = [*node.args, *(k.value for k in node.keywords)]
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                 None)
            writes = isinstance(mode, ast.Constant) and re.search(r"[wax]", str(mode.value))
            if name == "open" and node.args and writes and fixed(node.args[0]):
                out.append((i, node.args[0]))
            elif name and _WRITERS.match(name):
                receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
                targets = [a for a in args if fixed(a)]
                if name in ("write_text", "write_bytes", "mkdir", "touch") and receiver is not None:
                    targets = [receiver] if fixed(receiver) else []
                out += [(i, t) for t in targets]
    return [f"{where}cell {i} line {t.lineno}: '{ast.unparse(t)}' is a file a notebook writes to a fixed path: "
            "write scratch files under a temporary folder (tempfile.mkdtemp())" for i, t in out]


def _name(func):
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _is_temporary(expr, temporary):
    """Whether expr reads tempfile or a name bound to a temporary folder (pytest's tmp_path too)."""
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and (node.id in temporary or node.id in ("tempfile", "tmp_path", "tmpdir")):
            return True
        if isinstance(node, ast.Attribute) and node.attr in ("mkdtemp", "TemporaryDirectory", "gettempdir",
                                                             "NamedTemporaryFile", "mkstemp"):
            return True
    return False


def notebook_hits(path, where):
    """A notebook's hits: its Markdown as prose, its code as code, its text outputs as prose, its fixed-path writes."""
    nb = json.loads(pathlib.Path(path).read_text())
    out = []
    for i, cell in enumerate(nb["cells"], 1):
        source = _source_of(cell)
        if cell["cell_type"] == "markdown":
            out += prose_hits(source, f"{where}cell {i} ")
        elif cell["cell_type"] == "code":
            out += code_hits("\n".join("" if line.lstrip()[:1] in "%!" else line for line in source.split("\n")),
                             f"{where}cell {i} ")
            for o in cell.get("outputs", []):
                parts = [o.get("text", ""), o.get("evalue", ""), o.get("traceback", [])] + [
                    o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]
                text = "\n".join("".join(p) if isinstance(p, list) else p for p in parts if p)
                out += [h.replace(f"cell {i} line", f"cell {i} output line") for h in
                        prose_hits(text, f"{where}cell {i} ")]
    return out + scratch_hits(nb, where)


def record_hits(path, where):
    """The hits of a record's `note` fields, read as prose."""
    out = []

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key == "note":
            out.extend(prose_hits(value, f"{where}note "))

    walk(json.loads(pathlib.Path(path).read_text()), None)
    return out


def checked_files(root=ROOT):
    """Every file the check reads, relative to root."""
    names = {p for g in PROSE_GLOBS + CODE_GLOBS + ["notebooks/*.ipynb", "docs/runs/*.json"] for p in root.glob(g)}
    return sorted(str(p.relative_to(root)) for p in names if p.is_file() and str(p.relative_to(root)) not in SELF)


def check(path, root=ROOT):
    """The hits of one file, one line each."""
    path = pathlib.Path(path)
    rel = str(path.relative_to(root)) if path.is_absolute() and path.is_relative_to(root) else str(path)
    where = f"{rel} "
    if path.suffix == ".ipynb":
        return notebook_hits(path, where)
    if path.suffix == ".json":
        return record_hits(path, where)
    if path.suffix == ".py":
        return code_hits(path.read_text(), where)
    if path.suffix == ".md":
        return prose_hits(path.read_text(), where)
    return prose_hits(path.read_text(), where, "code")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.wording", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="files or folders to check (default: every file the check reads)")
    args = p.parse_args(argv)
    files = checked_files()
    if args.files:
        wanted = [pathlib.Path(f).resolve() for f in args.files]
        files = [f for f in files if any((ROOT / f).resolve() == w or w in (ROOT / f).resolve().parents
                                         for w in wanted)]
        files += [str(w) for w in wanted if w.is_file() and str(w.relative_to(ROOT)) not in files]
    hits = [h for f in files for h in check(ROOT / f)]
    print("\n".join(hits) or "nothing speaks of how the project was made")
    raise SystemExit(1 if hits else 0)


if __name__ == "__main__":
    main()
