"""lab/figures.py: every figure the README, docs/ and the notebooks' prose quote has a source.

    python -m lab.figures                      # the misses of every checked file, one line each (exit 1 if any)
    python -m lab.figures docs/genhmr.md       # one file's
    python -m lab.figures --paper-numbers simplehand PAPER.txt   # refresh lab/paper_numbers.json from a paper's text

The rule (docs/reference.md, "Where a figure comes from"):
- a measurement of this project is a value of a record (docs/runs/*.json, `lab/records.py`) or a number a committed
  notebook printed, of the same quantity: the same unit (mm, s, min, h, %, x, deg, px, GiB, samples/s, ...; a k or
  M multiplier read) or, for a figure without a unit, a name of its own line (the record's key, the printed line's
  words) in the words before it; of the same sign, equal at the digits quoted;
- a paper's figure is marked with a dagger (5.7†) and occurs in that paper's text (lab/paper_numbers.json holds the
  numbers of each paper's text, written by --paper-numbers);
- a figure of history stands in a section, a table row or a sentence that says its date and commit
  (2026-11-25, commit 3337df8); docs/history.md is all history, and each of its entries is headed so;
- a quantity is written as a number, not spelled out ("a quarter", "half an hour", "three times"), unless marked as
  the paper's.
A notebook's prose is matched against its own outputs and the records; a doc's against the records and every
committed notebook's outputs. Integers without a unit (counts, sizes, seeds) and section, table, equation, note and
issue numbers, versions, dates and code are not figures.
"""

import argparse
import functools
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED = ["README.md", "docs/simplehand.md", "docs/genhmr.md", "docs/hmr_adapter.md", "docs/reference.md",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))]
HISTORY = "docs/history.md"
PAPER_NUMBERS = ROOT / "lab" / "paper_numbers.json"
PAPER_OF = {"simplehand": "simplehand", "01_": "simplehand", "genhmr": "genhmr", "02_": "genhmr",
            "hmr_adapter": "hmr_adapter", "03_": "hmr_adapter"}  # a file's paper, by its name; else any of the three

# A unit's canonical name and its factor to the canonical unit of its kind (time in s, memory in GiB).
UNITS = {"%": ("%", 1), "mm": ("mm", 1), "cm": ("mm", 10), "px": ("px", 1), "deg": ("deg", 1), "°": ("deg", 1),
         "degrees": ("deg", 1), "x": ("x", 1), "×": ("x", 1), "ms": ("s", 1e-3), "s": ("s", 1), "sec": ("s", 1),
         "seconds": ("s", 1), "min": ("s", 60), "minutes": ("s", 60), "h": ("s", 3600), "hours": ("s", 3600),
         "GiB": ("GiB", 1), "GB": ("GiB", 1), "MiB": ("GiB", 2 ** -10), "MB": ("GiB", 2 ** -10),
         "samples/s": ("samples/s", 1), "FPS": ("FPS", 1), "TFLOP/s": ("TFLOP/s", 1), "GFLOP": ("GFLOP", 1),
         "GFLOPs": ("GFLOP", 1), "parameters": ("parameters", 1), "params": ("parameters", 1)}
MULTIPLIERS = {"k": 1e3, "M": 1e6, "G": 1e9}
_UNIT = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
FIGURE = re.compile(r"(?<![\w.†/#:@-])(?P<sign>[-−])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                    r"(?P<exp>(?<=\.\d)e[-+]?\d+|(?<=\d)e[-+]\d+|(?<=(?<!\w)\d)e\d+)?(?P<mult>[kMG](?![\w-]))?"
                    rf"(?:\s?(?P<unit>{_UNIT})(?![\w/-]|\s?\d))?(?P<paper>†)?")
NOT_A_FIGURE = re.compile(r"(?<![\w-])(?:Sec\.|Section|Sections|Table|Tables|Eq\.|Eqs\.|Fig\.|Figure|No\.|NOTE"
                          r"|NOTES|Appendix|§|issue|issues|item|items|stop|commit|[Ss]tage|layer|PR|torch|timm"
                          r"|Python|python|CUDA"
                          r"|einops|numpy|smplx|ruff|version|step|steps|seed|seeds|rank|chapter|line|lines|part"
                          r"|row|rows|No|v|T =|K =|k =|N =|=)\s?\(?$")
STOPWORDS = set("a an the of and or in on at to is are was its it with for by from as than that this be not no but "
                "each per one two all which where when here there their our we us his her they them these those "
                "into over under out then so both only also more less most least same own".split())
UNIT_WORDS = {u.lower() for u in UNITS} | {"mm", "s", "x", "deg", "ms", "min", "h"}
SPELLED = re.compile(
    r"\b(?:half(?![- ]precision)(?!-)|halves|(?:a|one|two)\s+(?:third|quarter|fifth|tenth|hundredth)s?|quarter\s+of"
    r"|a\s+tenth|twice|thrice"
    r"|(?:an|one)\s+hour|a\s+minute|a\s+dozen|dozens|(?:hundreds|thousands|millions)\s+of"
    r"|(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|sixty|several"
    r"|a\s+few|hundred|thousand|million)\s+(?:hours?|minutes?|seconds?|days?|times|percent|per\s+cent"
    r"|millimet(?:er|re)s?|degrees?|pixels?|fold))\b(?!†)", re.I)
HISTORY_MARK = re.compile(r"\b\d{4}-\d{2}-\d{2}\b.{0,80}?\bcommits?\s+`?[0-9a-f]{7,40}\b|\bcommits?\s+`?[0-9a-f]{7,40}"
                          r"\b.{0,80}?\b\d{4}-\d{2}-\d{2}\b", re.S)
HISTORY_HEADING = re.compile(r"^### \d{4}-\d{2}-\d{2}, commit [0-9a-f]{7,40}\b")


class Figure:
    """A number with its unit, as quoted or printed: value in the unit's canonical kind, half its last digit."""

    def __init__(self, m, words, where):
        number = m["num"].replace(",", "")
        decimals = len(number.split(".")[1]) if "." in number else 0
        scale = MULTIPLIERS.get(m["mult"], 1) * 10 ** int((m["exp"] or "e0")[1:])
        self.unit, factor = UNITS.get(m["unit"], (None, 1))
        self.text, self.number, self.where, self.start = m.group(0).strip(), number, where, m.start()
        self.sign = -1 if m["sign"] else 1
        self.value = self.sign * float(number) * scale * factor
        self.half = 0.5 * 10 ** -decimals * scale * factor * (1 + 1e-9)
        self.decimal = decimals > 0 or m["exp"] is not None or m["mult"] is not None
        self.paper = bool(m["paper"])
        self.words = words

    def __repr__(self):
        return f"{self.where}: {self.text}"


class Source:
    """A recorded or printed number: its value in its unit's canonical kind, its unit, the names of its line."""

    def __init__(self, value, unit, words, where):
        self.value, self.unit, self.words, self.where = value, unit, words, where


def names(text):
    """The words of a line or key that can name a quantity (not stop words or units)."""
    return {w for w in re.findall(r"[a-z][a-z0-9]*", text.lower().replace("_", " ")) if w not in STOPWORDS
            and w not in UNIT_WORDS and len(w) > 1}


def strip_code(text):
    """Prose only: code blocks, inline code, link targets, HTML comments and image links become blanks."""
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    return re.sub(r"\]\([^)]*\)", "] ", text)


def quoted_figures(text, where, table_header=None, previous=""):
    """The figures of a line of prose that need a source (and the dagger-marked ones, the paper's); previous: the
    line before it in the same paragraph (a sentence runs on across lines)."""
    found = []
    for m in FIGURE.finditer(text):
        context = (previous.rstrip() + " " if previous.strip() else "") + text[:m.start()]
        if NOT_A_FIGURE.search(context[-12:]) or re.match(r"\d+\.\d+\.\d+", m.group(0)):
            continue
        if re.match(r"[-−]?\d+\.\d+\.", text[m.start():]) and not m["unit"]:  # a dotted name (4.1.2)
            continue
        before = context[-40:]
        if table_header is not None and text.startswith("|"):  # a table cell: its row's label, its column's name
            column = text[:m.start()].count("|")
            cells = table_header.split("|")
            before = " ".join([text.split("|")[1], cells[column] if column < len(cells) else "", before.split("|")[-1]])
        figure = Figure(m, names(before), where)
        if figure.paper or figure.unit or figure.decimal:
            found.append(figure)
    return found


def printed_figures(text, where):
    """Every number of printed text or a record's line, with the names of its line."""
    out = []
    header = None
    for line in text.splitlines():
        if line.startswith("|") and re.match(r"\|[\s:|-]+\|$", line.strip()):
            continue
        header = line if line.startswith("|") and header is None else (header if line.startswith("|") else None)
        for m in FIGURE.finditer(line):
            figure = Figure(m, set(), where)
            out.append(Source(figure.value, figure.unit, names(line) | names(header or ""), where))
    return out


def key_unit(key):
    """The unit a record's key names by its suffix (pa_mpjpe_mm: mm, wall_time_s: s)."""
    for suffix, unit in (("_mm", "mm"), ("_s", "s"), ("_deg", "deg"), ("_px", "px"), ("_gib", "GiB")):
        if key.lower().endswith(suffix):
            return unit
    return None


def record_figures(folder=ROOT / "docs" / "runs"):
    """Every numeric leaf of every record, named by its key path, with the unit its key names."""
    out = []

    def walk(value, path, where):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, [*path, str(k)], where)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path, where)
        elif isinstance(value, bool):
            return
        elif isinstance(value, (int, float)):
            out.append(Source(float(value), key_unit(path[-1]), names("/".join(path)), where))
        elif isinstance(value, str) and path and path[-1] == "note":
            out.extend(printed_figures(value, where))

    for path in sorted(pathlib.Path(folder).glob("*.json")):
        walk(json.loads(path.read_text()), [], f"docs/runs/{path.name}")
    return out


def code_figures(root=ROOT):
    """The numbers of the code (its constants: a config value quoted in prose has its line as source), each with
    the names of its line and of the comment line above it."""
    out = []
    for path in sorted([*root.glob("*.py"), *root.glob("lab/*.py"), *root.glob("tests/*.py")]):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            above = lines[i - 1] if i and lines[i - 1].strip().startswith("#") else ""
            for source in printed_figures(line, str(path.relative_to(root))):
                source.words |= names(above)
                out.append(source)
    return out


def notebook_outputs(path):
    """The text a committed notebook's code cells show (streams, plain text and Markdown displays)."""
    nb = json.loads(pathlib.Path(path).read_text())
    texts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            parts = [o.get("text", "")] + [o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]
            texts += ["".join(p) if isinstance(p, list) else p for p in parts]
    return "\n".join(texts)


def same_quantity(quoted, source):
    """Whether a printed or recorded number is the quoted figure: its sign, its value at the digits quoted, and
    the same unit (a % may be printed as a fraction, an x as a bare ratio on a line naming it) or, for a figure
    without a unit, a name of the source's in the words before the figure."""
    if (quoted.value < 0) != (source.value < 0):
        return False
    values = [source.value]
    if quoted.unit == "%" and source.unit is None:
        values.append(100 * source.value)
    if not any(abs(abs(v) - abs(quoted.value)) <= quoted.half for v in values):
        return False
    return quoted.unit is not None and quoted.unit == source.unit or bool(quoted.words & source.words) and (
        quoted.unit is None or source.unit is None)


def paper_of(path):
    name = pathlib.Path(path).name
    return next((paper for key, paper in PAPER_OF.items() if name.startswith(key)), None)


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[*`])|\n(?=\s*(?:[-*] |\d+\. ))")  # or a list item's start


def prose_lines(path):
    """(line number, text, the table header above it, its history spans) of a Markdown file or a notebook's Markdown
    cells, code removed. History spans (start, end) cover the line where it is history: under a heading that gives
    a date and a commit (down to the next heading of its level), a table row that gives them, or a sentence that
    does."""
    path = pathlib.Path(path)
    if path.suffix == ".ipynb":
        cells = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                 for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
        blocks = [(f"cell {i + 1} ", strip_code(text)) for i, text in enumerate(cells)]
    else:
        blocks = [("", strip_code(path.read_text()))]
    for label, text in blocks:
        lines = text.split("\n")
        starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]  # each line's offset in text
        dated = []  # (start, end) offsets in text of the sentences that give a date and a commit
        for paragraph in re.finditer(r"(?:[^\n]+\n?)+", text):
            if paragraph.group(0).lstrip().startswith("|"):
                continue
            cuts = [0, *(m.end() for m in SENTENCE_END.finditer(paragraph.group(0))), len(paragraph.group(0))]
            dated += [(paragraph.start() + i, paragraph.start() + j) for i, j in zip(cuts, cuts[1:])
                      if HISTORY_MARK.search(paragraph.group(0)[i:j])]
        history_level, header = None, None
        for number, (line, start) in enumerate(zip(lines, starts), 1):
            heading = re.match(r"(#+) ", line)
            if heading:
                level = len(heading.group(1))
                if history_level is not None and level <= history_level:
                    history_level = None
                if history_level is None and HISTORY_MARK.search(line):
                    history_level = level
            header = (line if header is None else header) if line.startswith("|") else None
            if history_level is not None or (line.startswith("|") and HISTORY_MARK.search(line)):
                spans = [(0, len(line))]
            else:
                spans = [(max(i - start, 0), min(j - start, len(line))) for i, j in dated if i < start + len(line)
                         and j > start]
            yield f"{label}line {number}", line, header, spans


# the repository's sources, read once per process
_records = functools.lru_cache(maxsize=None)(lambda: tuple(record_figures()))
_code = functools.lru_cache(maxsize=None)(lambda: tuple(code_figures()))
_outputs = functools.lru_cache(maxsize=None)(lambda nb: tuple(printed_figures(notebook_outputs(nb), nb.name)))


def check(path, records=None, outputs=None, paper_numbers=None, code=None):
    """The misses of one checked file, one line each: a figure with no source of its quantity, a dagger figure its
    paper does not state, a spelled-out quantity."""
    path = pathlib.Path(path)
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    records = _records() if records is None else records
    if outputs is None:
        notebooks = [path] if path.suffix == ".ipynb" else sorted((ROOT / "notebooks").glob("*.ipynb"))
        outputs = [f for nb in notebooks for f in _outputs(nb)]
    if paper_numbers is None:
        paper_numbers = json.loads(PAPER_NUMBERS.read_text())
    paper = paper_of(path)
    stated = set(paper_numbers[paper]["numbers"]) if paper else {n for p in paper_numbers.values()
                                                                  for n in p["numbers"]}
    sources = [*records, *outputs, *(_code() if code is None else code)]
    misses, previous = [], ""
    for where, line, header, history in prose_lines(path):
        previous, line_before = line, previous
        dated = lambda at: any(i <= at < j for i, j in history)  # noqa: E731
        for m in SPELLED.finditer(line):
            if not dated(m.start()):
                misses.append(f"{rel} {where}: '{m.group(0)}' is a quantity spelled out: write the number with its "
                              "source")
        for figure in quoted_figures(line, where, header, "" if line.startswith("|") else line_before):
            if dated(figure.start):
                continue
            if figure.paper:
                if figure.number not in stated:
                    misses.append(f"{rel} {where}: {figure.text} is marked as the paper's, and "
                                  f"{paper or 'no paper'}'s text does not state {figure.number}")
            elif not any(same_quantity(figure, s) for s in sources):
                what = f"unit {figure.unit}" if figure.unit else f"a name of {sorted(figure.words)[:6]}"
                misses.append(f"{rel} {where}: {figure.text} has no source: no record or printed output has "
                              f"it with {what}")
    return misses


def history_misses(path=ROOT / HISTORY):
    """Each entry of docs/history.md (a ### heading) says its date and commit."""
    return [f"{HISTORY} line {i}: '{line}' is an entry without its date and commit "
            "(### YYYY-MM-DD, commit ABCDEF0: ...)"
            for i, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1)
            if line.startswith("### ") and not HISTORY_HEADING.match(line)]


def paper_numbers(text):
    """The numbers a paper's text states, as written (1.9M is 1.9)."""
    return sorted(set(m.group(0).replace(",", "") for m in re.finditer(r"\d+(?:,\d{3})*(?:\.\d+)?", text)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="files to check (default: README.md, the docs and the notebooks)")
    p.add_argument("--paper-numbers", nargs=2, metavar=("PAPER", "TEXT"),
                   help="write PAPER's numbers, read from its text file, into lab/paper_numbers.json")
    args = p.parse_args(argv)
    if args.paper_numbers:
        from lab.files import atomic_write
        paper, text = args.paper_numbers
        if paper not in set(PAPER_OF.values()):
            p.error(f"PAPER is one of {sorted(set(PAPER_OF.values()))}, got {paper!r}")
        if not pathlib.Path(text).is_file():
            p.error(f"{text}: no such file")
        table = json.loads(PAPER_NUMBERS.read_text()) if PAPER_NUMBERS.exists() else {}
        body = pathlib.Path(text).read_text()
        table[paper] = dict(title=body.strip().splitlines()[0], numbers=paper_numbers(body))
        atomic_write(PAPER_NUMBERS, lambda f: f.write(json.dumps(table, indent=1, sort_keys=True).encode()))
        return print(f"wrote {PAPER_NUMBERS.name}: {paper}, {len(table[paper]['numbers'])} numbers")
    records, code = record_figures(), code_figures()
    misses = history_misses() if not args.files else []
    for name in args.files or CHECKED:
        misses += check(ROOT / name if not pathlib.Path(name).is_absolute() else name, records, code=code)
    print("\n".join(misses) or "every figure has its source")
    raise SystemExit(1 if misses else 0)


if __name__ == "__main__":
    main()
