"""lab/figures.py: every figure the README, docs/ and the notebooks' prose quote has a source.

    python -m lab.figures                      # the misses of every checked file, one line each (exit 1 if any)
    python -m lab.figures docs/genhmr.md       # one file's
    python -m lab.figures --paper-numbers simplehand PAPER.txt   # refresh lab/paper_numbers.json from a paper's text

The rule (docs/reference.md, "Where a figure comes from"):
- a measurement of this project is a value of a record (docs/runs/*.json, `lab/records.py`) or a number a committed
  notebook printed, of the same quantity: the same unit (mm, s, min, h, %, x, deg, px, GiB, samples/s, ...; a k or
  M multiplier read) or, for a figure without a unit, a name of its own line (the record's key, the printed line's
  words) in the words before it; of the same sign, equal at the digits quoted; and of the same statistic: a figure
  called a mean, median, max, min, std or a percentile (p90, 90th percentile) is not a source's other statistic;
- a derived figure equals its recomputation from the operands quoted with it, at the digits quoted (the operands'
  own rounding allowed for): a ratio "A / B = R x", "A vs B (R x)", "R x (A against B)", "A, R x the X's B", and
  passes over the data "N steps of B images are P passes" (P = N B / the data's size, quoted in the sentence or the
  code's `<DATA>_TRAIN_SAMPLES` of the data it names); such a figure needs no other source;
- a claim over a set of figures ("every figure improves", "all rows are below") is not made: each figure is stated;
- a command quoted as a record's (`lab.records run NAME -- ...`, its `--out`, or `NAME.json` named in its sentence)
  is that record's `command`, argument for argument (a `.venv/bin/` prefix aside);
- a paper's figure is marked with a dagger (5.7†) and occurs in that paper's text (lab/paper_numbers.json holds the
  numbers of each paper's text, written by --paper-numbers), in prose, tables, code and history alike;
- a figure of history stands in a section, a table row or a sentence that says its date and commit
  (2026-11-25, commit 3337df8); docs/history.md is all history, and each of its entries is headed so;
- a cited commit ("commit H", "at H", a "YYYY-MM-DD, commit H" heading) exists in git, and the date written with
  it is git's (`git show -s --format=%cs H`); a record made with uncommitted changes is cited as "H with
  uncommitted changes", never as the plain commit;
- a quantity is written as a number, not spelled out ("a quarter", "half an hour", "three times"), unless marked as
  the paper's.
A notebook's prose is matched against its own outputs and the records; a doc's against the records and every
committed notebook's outputs. Fenced code blocks are read like prose (their comments quote figures); inline code is
not, save its dagger figures. Integers without a unit (counts, sizes, seeds), the values of `--flags` and `key=`
settings, and section, table, equation, note and issue numbers, versions and dates are not figures.
"""

import argparse
import bisect
import functools
import itertools
import json
import pathlib
import re
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED = ["README.md", "docs/simplehand.md", "docs/genhmr.md", "docs/hmr_adapter.md", "docs/reference.md",
           "docs/video.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))]
HISTORY = "docs/history.md"
RUNS = ROOT / "docs" / "runs"
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
                          r"|row|rows|No|v|T =|K =|k =|N =|=|--[\w-]+|[\w.\[\]]+=)\s?\(?$")
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

# The statistic a figure is (the last one named in its clause): a mean is not a median.
STATISTIC = re.compile(r"(?<![\w-])(?:(?P<mean>mean|means|average|averaged|avg)|(?P<median>medians?)"
                       r"|(?P<max>max|maximum|largest)|(?P<min>(?<!\d )(?<!\d)min|minimum|smallest)"
                       r"|p(?P<p>\d{1,2})|(?P<q>\d{1,2})(?:st|nd|rd|th)\s+percentile|(?P<std>std|standard\s+deviation))"
                       r"(?![\w-])", re.I)
CLAUSE_END = re.compile(r"[,;(|]")
# A derived figure and its operands. NUM: a number as quoted; UNIT_OPT: its unit, if any.
_NUM = r"(?<![\w.†/#:@-])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?(?![\d.]\d)"
_OPT = rf"(?:\s?(?:{_UNIT})(?![\w/-]))?"
_VS = r"(?:vs\.?|versus|against)"
_WORDS = r"(?:[^\d\n;()|]{0,50}?\s)?"  # a few words without figures: "the mean hand's "
RATIOS = [  # each with the groups a (numerator), b (denominator), r (the ratio quoted, in x)
    re.compile(rf"(?P<a>{_NUM}{_OPT})\s*/\s*(?P<b>{_NUM}{_OPT})\s*=\s*(?P<r>{_NUM})\s?[x×](?![\w])"),
    re.compile(rf"(?P<a>{_NUM}{_OPT})\s+{_VS}\s+{_WORDS}(?P<b>{_NUM}{_OPT})\s*\((?P<r>{_NUM})\s?[x×](?![\w])"),
    re.compile(rf"(?P<r>{_NUM})\s?[x×]\s*\((?P<a>{_NUM}{_OPT})\s+{_VS}\s+{_WORDS}(?P<b>{_NUM}{_OPT})"),
    re.compile(rf"(?P<a>{_NUM}{_OPT}),\s+(?P<r>{_NUM})\s?[x×]\s+(?:of\s+|than\s+)?the\s+{_WORDS}(?P<b>{_NUM}{_OPT})"),
]
PASSES = re.compile(rf"(?P<n>{_NUM})\s+(?:optimi[sz]ation\s+|training\s+)?(?:steps|iterations)\s+(?:of|at\s+(?:a\s+)?"
                    rf"(?:global\s+)?batch(?:\s+size)?(?:\s+of)?)\s+(?P<b>{_NUM})(?:\s+[a-z]+){{0,2}}?"
                    rf"(?:\s+(?:are|is|make|makes|give|gives|amount\s+to|come\s+to|=|:|,))?\s+(?:about\s+)?"
                    rf"(?P<p>{_NUM})\s+(?:passes|pass)\b", re.I)
DATA_SIZE = re.compile(rf"(?P<s>{_NUM})\s+(?:[a-z]+\s+)?(?:images|samples|hands|poses|bodies|people|examples)\b", re.I)
TRAIN_SAMPLES = re.compile(r"^(?P<name>[A-Z][A-Z0-9]*)_TRAIN_SAMPLES\s*=\s*(?P<n>[\d_]+)", re.M)
# A claim over a set of figures: a quantifier, a figure noun, and a comparison in the rest of its sentence.
UNIVERSAL = re.compile(r"\b(?:every|each|all)\b(?:\s+(?:of|the|its|their|these|those|our|\d+|[a-z][\w'’-]*)){0,3}?"
                       r"\s+(?:figures?|numbers?|metrics?|results?|rows?|columns?|ratios?|values?|measurements?"
                       r"|errors?)\b", re.I)
COMPARISON = re.compile(r"\b(?:improv(?:es?|ed|ing)|better|worse|beats?|beating|lower(?:s|ed)?|higher|exceed\w*"
                        r"|smaller|larger|faster|slower|outperform\w*|reduc(?:es|ing)|gains?|at\s+most|at\s+least"
                        r"|drops?|falls?|rises?"
                        r"|(?:is|are|was|were|stays?|stayed|remains?|remained|lies|lie|ends?|sits?)\s+"
                        r"(?:(?:well|far|just|still|also|now|all|clearly|slightly|always)\s+)?"
                        r"(?:below|above|under))\b", re.I)
# A cited commit: "commit H", "commits H and H", "at H" (not an outside repository's OWNER/NAME at H), with the
# date written beside it ("2026-11-29, commit H", "commit H, 2026-11-29", "2026-11-28 at H").
_HASH = r"`?(?P<h>[0-9a-f]{7,40})\b`?"
COMMIT_CITE = re.compile(r"\bcommits?\s+`?[0-9a-f]{7,40}\b`?(?:(?:,\s*|\s+and\s+|\s*/\s*)`?[0-9a-f]{7,40}\b`?)*")
AT_CITE = re.compile(rf"\bat\s+{_HASH}")
OUTSIDE = re.compile(r"[\w.-]+/[\w.-]+`?\s*(?:at\s+(?:commit\s+)?|@\s*)$")
DATE_BEFORE = re.compile(r"(?P<d>\d{4}-\d{2}-\d{2})\)?[,;:]?\s+\(?(?:at|commits?)?\s*`?$")
DATE_AFTER = re.compile(r"^`?\)?[,;]?\s+\(?(?P<d>\d{4}-\d{2}-\d{2})\b")
UNCOMMITTED = re.compile(r"^`?(?:,?\s+\d{4}-\d{2}-\d{2},?)?\s+with\b(?:(?!\.\s)[^;()]){0,100}?"
                         r"\buncommitted\s+changes\b")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[*`])|\n(?=\s*(?:[-*] |\d+\. ))")  # or a list item's start


class Figure:
    """A number with its unit, as quoted or printed: value in the unit's canonical kind, half its last digit."""

    def __init__(self, m, words, where, stat=None):
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
        self.stat = stat

    def __repr__(self):
        return f"{self.where}: {self.text}"


class Source:
    """A recorded or printed number: its value in its unit's canonical kind, its unit, the names of its line, the
    statistic it is (None where its line or key names none)."""

    def __init__(self, value, unit, words, where, stat=None):
        self.value, self.unit, self.words, self.where, self.stat = value, unit, words, where, stat


def names(text):
    """The words of a line or key that can name a quantity (not stop words or units)."""
    words = re.findall(r"[a-z][a-z0-9]*", text.lower().replace("_", " ").replace("@", ""))  # F@5: f5
    return {w for w in words if w not in STOPWORDS and w not in UNIT_WORDS and len(w) > 1}


def statistic(text, clause=True):
    """The statistic the last one named in `text` is (mean, median, max, min, std, p90, ...), or None; with clause,
    only in its last clause (after the last comma, semicolon, bracket or table bar)."""
    if clause:
        text = CLAUSE_END.split(text)[-1]
    found = None
    for m in STATISTIC.finditer(text.replace("_", " ")):
        kind = next(k for k, v in m.groupdict().items() if v is not None)
        found = f"p{m[kind]}" if kind in ("p", "q") else kind
    return found


def strip_code(text):
    """Prose only: code blocks, inline code (save its dagger figures), link targets, HTML comments and image links
    become blanks, every line kept where it was."""
    keep_lines = lambda m: "\n" * m.group(0).count("\n")  # noqa: E731
    text = re.sub(r"```.*?```", keep_lines, text, flags=re.S)
    return strip_inline(text)


def strip_inline(text):
    """Inline code (save its dagger figures), link targets and HTML comments become blanks; lines stay."""
    text = re.sub(r"<!--.*?-->", lambda m: " " + "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", lambda m: " " + " ".join(re.findall(r"\d[\d.,]*(?:\s?\w+)?†", m.group(0))) + " ",
                  text)
    return re.sub(r"\]\([^)]*\)", lambda m: "] " + "\n" * m.group(0).count("\n"), text)


def fenced(text):
    """(text with fence lines blanked, inline code stripped outside the fences, and the set of 0-based line
    indices inside fenced code blocks)."""
    lines, out, code, inside, prose = text.split("\n"), [], set(), False, []

    def flush():
        out.extend(strip_inline("\n".join(prose)).split("\n") if prose else [])
        prose.clear()

    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            flush()
            out.append("")
            inside = not inside
        elif inside:
            out.append(line)
            code.add(i)
        else:
            prose.append(line)
    flush()
    return "\n".join(out), code


def quoted_figures(text, where, table_header=None, previous=""):
    """The figures of a line of prose that need a source (and the dagger-marked ones, the paper's); previous: the
    line before it in the same paragraph (a sentence runs on across lines)."""
    found = []
    for m in FIGURE.finditer(text):
        context = (previous.rstrip() + " " if previous.strip() else "") + text[:m.start()]
        if NOT_A_FIGURE.search(context[-40:]) or re.match(r"\d+\.\d+\.\d+", m.group(0)):
            continue
        if re.match(r"[-−]?\d+\.\d+\.\d", text[m.start():]) and not m["unit"]:  # a dotted name (4.1.2)
            continue
        before, stat = context[-40:], statistic(context[-60:])
        if table_header is not None and text.startswith("|"):  # a table cell: its row's label, its column's name
            column = text[:m.start()].count("|")
            cells = table_header.split("|")
            label, name, cell = text.split("|")[1], cells[column] if column < len(cells) else "", before.split("|")[-1]
            before = " ".join([label, name, cell])
            stat = statistic(cell) or statistic(name, False) or statistic(label, False)
        figure = Figure(m, names(before), where, stat)
        if figure.paper or figure.unit or figure.decimal:
            found.append(figure)
    return found


def printed_figures(text, where):
    """Every number of printed text or a record's line, with the names of its line and the statistic it is."""
    out = []
    header = None
    for line in text.splitlines():
        if line.startswith("|") and re.match(r"\|[\s:|-]+\|$", line.strip()):
            continue
        header = line if line.startswith("|") and header is None else (header if line.startswith("|") else None)
        cells = (header or "").split("|")
        named = STATISTIC.search(line.replace("_", " ") + " " + (header or ""))  # most lines name no statistic
        for m in FIGURE.finditer(line):
            figure = Figure(m, set(), where)
            stat = statistic(line[:m.start()]) if named else None
            if stat is None and named and line.startswith("|"):
                column = line[:m.start()].count("|")
                stat = statistic(cells[column] if column < len(cells) else "", False) or statistic(
                    line.split("|")[1], False)
            out.append(Source(figure.value, figure.unit, names(line) | names(header or ""), where, stat))
    return out


def key_unit(key):
    """The unit a record's key names by its suffix (pa_mpjpe_mm: mm, wall_time_s: s)."""
    for suffix, unit in (("_mm", "mm"), ("_s", "s"), ("_deg", "deg"), ("_px", "px"), ("_gib", "GiB")):
        if key.lower().endswith(suffix):
            return unit
    return None


def record_figures(folder=RUNS):
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
            key = "/".join(path)
            out.append(Source(float(value), key_unit(path[-1]), names(key), where, statistic(key, False)))
        elif isinstance(value, str) and path and path[-1] == "note":
            out.extend(printed_figures(value, where))

    for path in sorted(pathlib.Path(folder).glob("*.json")):
        walk(json.loads(path.read_text()), [], f"docs/runs/{path.name}")
    return out


def run_records(folder=RUNS):
    """Each record's name, command, commit and whether its working tree had uncommitted changes."""
    out = []
    for path in sorted(pathlib.Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        out.append(dict(name=path.stem, command=record.get("command"), commit=record.get("commit") or "",
                        uncommitted=bool(record.get("uncommitted_changes"))))
    return out


def code_figures(root=ROOT):
    """The numbers of the code (its constants: a config value quoted in prose has its line as source), each with
    the names of its line and of the comment line above it."""
    out = []
    for path in sorted([*root.glob("*.py"), *root.glob("lab/*.py"), *root.glob("tests/*.py")]):
        lines, where = path.read_text().splitlines(), str(path.relative_to(root))
        for i, line in enumerate(lines):
            above = lines[i - 1] if i and lines[i - 1].strip().startswith("#") else ""
            for source in printed_figures(line, where):
                source.words |= names(above)
                out.append(source)
    return out


def data_sizes(root=ROOT):
    """{a data set's name, lower case: its training samples} from the code's `<NAME>_TRAIN_SAMPLES = N`."""
    return {m["name"].lower(): int(m["n"].replace("_", "")) for path in sorted(root.glob("*.py"))
            for m in TRAIN_SAMPLES.finditer(path.read_text())}


def git_commits(root=ROOT):
    """{full hash: committer date YYYY-MM-DD} of every commit git reaches from a ref; None where git cannot tell
    (no git, or a shallow clone, whose older commits are absent)."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=60)
        if run("rev-parse", "--is-shallow-repository").stdout.strip() != "false":
            return None
        log = run("log", "--all", "--format=%H %cs")
    except (OSError, subprocess.SubprocessError):
        return None
    if log.returncode:
        return None
    return dict(line.split() for line in log.stdout.splitlines() if line.strip())


def notebook_outputs(path):
    """The text a committed notebook's code cells show (streams, plain text and Markdown displays)."""
    nb = json.loads(pathlib.Path(path).read_text())
    texts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            parts = [o.get("text", "")] + [o.get("data", {}).get(k, "") for k in ("text/plain", "text/markdown")]
            texts += ["".join(p) if isinstance(p, list) else p for p in parts]
    return "\n".join(texts)


def same_quantity(quoted, source, statistics=True):
    """Whether a printed or recorded number is the quoted figure: its sign, its value at the digits quoted, the
    same unit (a % may be printed as a fraction, an x as a bare ratio on a line naming it) or, for a figure without
    a unit, a name of the source's in the words before the figure; and, with statistics, not another statistic."""
    if (quoted.value < 0) != (source.value < 0):
        return False
    values = [source.value]
    if quoted.unit == "%" and source.unit is None:
        values.append(100 * source.value)
    if not any(abs(abs(v) - abs(quoted.value)) <= quoted.half for v in values):
        return False
    if statistics and quoted.stat and source.stat and quoted.stat != source.stat:
        return False
    return quoted.unit is not None and quoted.unit == source.unit or bool(quoted.words & source.words) and (
        quoted.unit is None or source.unit is None)


class Sources:
    """Sources indexed by their absolute value (and a bare number's as a percentage), so that the sources a quoted
    figure may be are found by bisection, not by a scan of them all."""

    def __init__(self, sources):
        pairs = sorted([(abs(s.value), i) for i, s in enumerate(sources)]
                       + [(abs(100 * s.value), i) for i, s in enumerate(sources) if s.unit is None])
        self.keys, self.sources = [k for k, _ in pairs], [sources[i] for _, i in pairs]

    def near(self, figure):
        """The sources whose value (or percentage) lies within the figure's last digit."""
        lo = bisect.bisect_left(self.keys, abs(figure.value) - figure.half)
        return self.sources[lo:bisect.bisect_right(self.keys, abs(figure.value) + figure.half, lo)]


def paper_of(path):
    name = pathlib.Path(path).name
    return next((paper for key, paper in PAPER_OF.items() if name.startswith(key)), None)


def blocks(path):
    """(label, raw text, text to read, fenced code line indices) of a Markdown file or of each of a notebook's
    Markdown cells; the text to read has its inline code, link targets and HTML comments blanked, line for line."""
    path = pathlib.Path(path)
    if path.suffix == ".ipynb":
        cells = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                 for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
        raw = [(f"cell {i + 1} ", text) for i, text in enumerate(cells)]
    else:
        raw = [("", path.read_text())]
    return [(label, text, *fenced(text)) for label, text in raw]


def paragraph_sentences(text):
    """(start, end) offsets of each sentence of each paragraph of prose (table rows apart: each row is one)."""
    out = []
    for paragraph in re.finditer(r"(?:[^\n]+\n?)+", text):
        body = paragraph.group(0)
        if body.lstrip().startswith("|"):
            offset = paragraph.start()
            for row in body.split("\n"):
                out.append((offset, offset + len(row)))
                offset += len(row) + 1
            continue
        cuts = [0, *(m.end() for m in SENTENCE_END.finditer(body)), len(body)]
        out += [(paragraph.start() + i, paragraph.start() + j) for i, j in zip(cuts, cuts[1:]) if j > i]
    return out


def prose_lines(path):
    """(line number, text, the table header above it, its history spans, whether it is code) of a Markdown file or
    a notebook's Markdown cells. History spans (start, end) cover the line where it is history: under a heading that
    gives a date and a commit (down to the next heading of its level), a table row that gives them, or a sentence
    that does; a line of fenced code is history where it gives them itself or stands under such a heading."""
    for label, _, text, code in blocks(path):
        lines = text.split("\n")
        prose = "\n".join("" if i in code else line for i, line in enumerate(lines))
        starts = [0, *itertools.accumulate(len(x) + 1 for x in prose.split("\n"))]  # each line's offset in prose
        dated = [(i, j) for i, j in paragraph_sentences(prose) if not prose[i:j].lstrip().startswith("|")
                 and HISTORY_MARK.search(prose[i:j])]
        history_level, header = None, None
        for number, (line, start) in enumerate(zip(lines, starts), 1):
            is_code = number - 1 in code
            heading = None if is_code else re.match(r"(#+) ", line)
            if heading:
                level = len(heading.group(1))
                if history_level is not None and level <= history_level:
                    history_level = None
                if history_level is None and HISTORY_MARK.search(line):
                    history_level = level
            header = (line if header is None else header) if line.startswith("|") else None
            if history_level is not None or ((line.startswith("|") or is_code) and HISTORY_MARK.search(line)):
                spans = [(0, len(line))]
            else:
                spans = [(max(i - start, 0), min(j - start, len(line))) for i, j in dated if i < start + len(line)
                         and j > start]
            yield f"{label}line {number}", line, header, spans, is_code


def _number(text):
    """A quoted number's value and half its last digit, and its unit's canonical name and factor."""
    m = re.match(rf"(?P<sign>[-−])?(?P<num>[\d,]+(?:\.\d+)?)(?P<exp>e[-+]?\d+)?\s?(?P<unit>{_UNIT})?$", text.strip())
    number = m["num"].replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    unit, factor = UNITS.get(m["unit"], (None, 1))
    scale = 10 ** int((m["exp"] or "e0")[1:]) * factor
    value = (-1 if m["sign"] else 1) * float(number) * scale
    return value, 0.5 * 10 ** -decimals * scale * (1 + 1e-9), unit


def _line_of(text, offset):
    return text.count("\n", 0, offset)


def derived_figures(text, sizes):
    """{(line index, column): None where the derived figure there equals its recomputation, else why not} for the
    ratios and passes over the data quoted in `text` (prose with its code lines blanked, or one code line)."""
    found = {}
    flat = text.replace("\n", " ")
    at = lambda offset: (_line_of(text, offset), offset - (text.rfind("\n", 0, offset) + 1))  # noqa: E731
    for pattern in RATIOS:
        for m in pattern.finditer(flat):
            a, ha, ua = _number(m["a"])
            b, hb, ub = _number(m["b"])
            r, hr, _ = _number(m["r"])
            if ua and ub and ua != ub or b - hb <= 0 or at(m.start("r")) in found:
                continue
            low, high = sorted([(a - ha) / (b + hb), (a + ha) / (b - hb), (a - ha) / (b - hb), (a + ha) / (b + hb)])[
                ::3]
            found[at(m.start("r"))] = None if r - hr <= high and r + hr >= low else (
                f"{m['r'].strip()} x is not {m['a'].strip()} / {m['b'].strip()} = {a / b:.4g} x")
    for offset, end in paragraph_sentences(text):
        sentence = flat[offset:end]
        for m in PASSES.finditer(sentence):
            n, b, (p, hp, _) = int(float(m["n"].replace(",", ""))), int(float(m["b"].replace(",", ""))), _number(
                m["p"])
            candidates = {int(float(d["s"].replace(",", ""))) for d in DATA_SIZE.finditer(sentence)
                          if d.start() not in (m.start("n"), m.start("b"))} | {
                size for name, size in sizes.items() if re.search(rf"\b{re.escape(name)}\b", sentence, re.I)}
            candidates.discard(0)
            key = at(offset + m.start("p"))
            if not candidates:
                found[key] = (f"{m['p']} passes: the data's size is neither quoted in the sentence nor a data set the "
                              "code names (<NAME>_TRAIN_SAMPLES)")
            else:
                found[key] = None if any(abs(n * b / s - p) <= hp for s in candidates) else (
                    f"{m['p']} passes is not {n} x {b} / " + " or ".join(f"{s} = {n * b / s:.4g}"
                                                                         for s in sorted(candidates)))
    return found


def universal_claims(text):
    """(offset, the claim) of each claim over a set of figures in `text`: a quantifier over figures (every figure,
    all rows, each of the ratios) and a comparison in the rest of its sentence."""
    out = []
    for i, j in paragraph_sentences(text):
        sentence = text[i:j]
        for m in UNIVERSAL.finditer(sentence):
            c = COMPARISON.search(sentence, m.end())
            if c:
                out.append((i + m.start(), " ".join(sentence[m.start():c.end()].split())))
    return out


def _tokens(command):
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        tokens = command.split()
    return [t.rsplit("/", 1)[-1] if i == 0 else t for i, t in enumerate(tokens)]


def _out(tokens):
    for i, t in enumerate(tokens):
        if t == "--out" and i + 1 < len(tokens):
            return tokens[i + 1]
        if t.startswith("--out="):
            return t[len("--out="):]
    return None


def quoted_commands(raw, code):
    """(line index, the command's text, its context) of each train.py command quoted in `raw`: an inline code span
    (its context: its sentence) or a fenced code line, continuations joined (its context: the line, comment
    included)."""
    out = []
    lines = raw.split("\n")
    i = 0
    while i < len(lines):
        if i in code:
            first, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 in code:
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            out.append((first, line, line))
        i += 1
    prose = "\n".join("" if i in code else line for i, line in enumerate(lines))
    sentences = paragraph_sentences(prose)
    for m in re.finditer(r"`([^`]{1,400})`", prose):
        context = next((prose[i:j] for i, j in sentences if i <= m.start() < j), "")
        out.append((_line_of(prose, m.start()), m.group(1).replace("\n", " "), context.replace("\n", " ")))
    return [(i, text, context) for i, text, context in out if re.search(r"\btrain\.py\b", text)
            and re.search(r"(?:^|[\s/])(?:torchrun|python3?)\s", text)]


def command_misses(raw, code, runs):
    """(line index, why) for each command quoted as a record's that is not its record's `command`."""
    out = []
    for line, text, context in quoted_commands(raw, code):
        named = re.search(r"\blab\.records\s+run\s+(?P<name>[\w-]+)\s+--\s+(?P<rest>.*)", text)
        start = re.search(r"(?:^|(?<=\s))(?:\S*/)?(?:torchrun|python3?)\s", named["rest"] if named else text)
        if start is None:
            continue
        command = _tokens((named["rest"] if named else text)[start.start():])
        tied = []
        for run in runs:
            if not run["command"]:
                continue
            theirs = _tokens(run["command"])
            if named:
                hit = named["name"] == run["name"]
            elif _out(command) is not None and _out(command) == _out(theirs):
                hit = True
            else:
                named_here = re.search(rf"\b{re.escape(run['name'])}\.json\b", context)
                hit = named_here and _out(command) in (None, _out(theirs))
            if hit:
                tied.append((run, theirs))
        for run, theirs in tied:
            if command != theirs:
                out.append((line, f"`{' '.join(command)}` is quoted as docs/runs/{run['name']}.json's command, "
                                  f"which is `{run['command']}`"))
    return out


def commit_misses(raw, commits, runs):
    """(offset, why) for each cited commit of `raw` that git does not have, whose date written beside it is not
    git's, or that is a record's made with uncommitted changes, cited as the plain commit."""
    out = []
    cited = []  # (offset of the hash, the hash)
    for m in COMMIT_CITE.finditer(raw):
        cited += [(m.start() + h.start(), h.group(0)) for h in re.finditer(r"[0-9a-f]{7,40}", m.group(0))
                  if re.search(r"\d", h.group(0))]
    for m in AT_CITE.finditer(raw):
        if re.search(r"\d", m["h"]) and re.search(r"[a-f]", m["h"]) and not OUTSIDE.search(raw[:m.start("h")]):
            cited.append((m.start("h"), m["h"]))
    dirty = {}  # a commit of a record with uncommitted changes: the records that name it
    for run in runs:
        if run["uncommitted"] and run["commit"]:
            dirty.setdefault(run["commit"], []).append(run["name"])
    clean = {run["commit"] for run in runs if not run["uncommitted"]}
    sentences = paragraph_sentences(raw)
    for offset, h in sorted(set(cited)):
        end = offset + len(h)
        if commits is not None:
            full = [c for c in commits if c.startswith(h)]
            if not full:
                out.append((offset, f"commit {h} does not exist in git"))
                continue
            before, after = DATE_BEFORE.search(raw[max(0, offset - 40):offset]), DATE_AFTER.match(raw[end:end + 20])
            date = (before or after)["d"] if before or after else None
            if date and len(full) == 1 and commits[full[0]] != date:
                out.append((offset, f"commit {h} is dated {date}, and git dates it {commits[full[0]]}"))
        for commit, names_ in dirty.items():
            if not commit.startswith(h) or UNCOMMITTED.match(raw[end:end + 160]):
                continue
            sentence = next((raw[i:j] for i, j in sentences if i <= offset < j), raw[offset:end])
            named = [n for n in names_ if re.search(
                rf"\b(?:{re.escape(n)}\.json|lab\.records\s+run\s+{re.escape(n)})\b", sentence)]
            if named or commit not in clean:
                out.append((offset, f"commit {h} is the commit of docs/runs/{(named or names_)[0]}.json, made with "
                                    f"uncommitted changes: write '{h} with uncommitted changes'"))
    return out


# the repository's sources, read once per process
_records = functools.lru_cache(maxsize=None)(lambda: tuple(record_figures()))
_runs = functools.lru_cache(maxsize=None)(lambda: tuple(run_records()))
_code = functools.lru_cache(maxsize=None)(lambda: tuple(code_figures()))
_sizes = functools.lru_cache(maxsize=None)(data_sizes)
_commits = functools.lru_cache(maxsize=None)(git_commits)
_index = functools.lru_cache(maxsize=None)(lambda: Sources([*_records(), *_code()]))
_outputs = functools.lru_cache(maxsize=None)(lambda nb: tuple(printed_figures(notebook_outputs(nb), nb.name)))


def check(path, records=None, outputs=None, paper_numbers=None, code=None, runs=None, commits=False, sizes=None):
    """The misses of one checked file, one line each: a figure with no source of its quantity (or of its statistic),
    a derived figure its operands do not give, a claim over a set of figures, a command that is not its record's, a
    dagger figure its paper does not state, a cited commit git does not have or dates otherwise, a record with
    uncommitted changes cited as its plain commit, a spelled-out quantity. docs/history.md is all history: only its
    dagger figures, derived figures, claims, commands and commits are read. commits: {hash: date}, None to skip the
    commit rules, git's by default."""
    path = pathlib.Path(path)
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    history = rel == HISTORY
    records = _records() if records is None else records
    runs = _runs() if runs is None else runs
    commits = _commits() if commits is False else commits
    sizes = _sizes() if sizes is None else sizes
    if outputs is None:
        notebooks = [path] if path.suffix == ".ipynb" else sorted((ROOT / "notebooks").glob("*.ipynb"))
        outputs = [f for nb in notebooks for f in _outputs(nb)]
    if paper_numbers is None:
        paper_numbers = json.loads(PAPER_NUMBERS.read_text())
    paper = paper_of(path)
    stated = set(paper_numbers[paper]["numbers"]) if paper else {n for p in paper_numbers.values()
                                                                  for n in p["numbers"]}
    if records is _records() and code is None:  # the repository's own: indexed once per process
        indexes = [_index(), Sources(list(outputs))]
    else:
        indexes = [Sources([*records, *outputs, *(_code() if code is None else code)])]
    near = lambda figure: [s for index in indexes for s in index.near(figure)]  # noqa: E731
    misses = []
    derived = {}  # (label, line index, column): None where recomputed right, else why not
    for label, raw, text, code_lines in blocks(path):
        lines = text.split("\n")
        prose = "\n".join("" if i in code_lines else line for i, line in enumerate(lines))
        found = derived_figures(prose, sizes)
        for i in sorted(code_lines):
            found.update({(i, col): why for (_, col), why in derived_figures(lines[i], sizes).items()})
        derived.update({(label, i, col): why for (i, col), why in found.items()})
        for (i, col), why in sorted(found.items()):
            if why:
                misses.append(f"{rel} {label}line {i + 1}: {why}")
        claims = [(_line_of(prose, o), c) for o, c in universal_claims(prose)] + [
            (i, c) for i in sorted(code_lines) for _, c in universal_claims(lines[i])]
        for i, claim in claims:
            misses.append(f"{rel} {label}line {i + 1}: '{claim}' is a claim over a set of figures: state each figure")
        for i, why in command_misses(raw, code_lines, runs):
            misses.append(f"{rel} {label}line {i + 1}: {why}")
        for offset, why in commit_misses(raw, commits, runs):
            misses.append(f"{rel} {label}line {_line_of(raw, offset) + 1}: {why}")
    if path.suffix == ".ipynb":
        for offset, why in commit_misses(notebook_outputs(path), commits, runs):
            misses.append(f"{rel} outputs: {why}")
    previous = ""
    for where, line, header, spans, is_code in prose_lines(path):
        previous, line_before = line, previous
        dated = lambda at: history or any(i <= at < j for i, j in spans)  # noqa: E731
        label, index = where.rsplit("line ", 1)
        for m in SPELLED.finditer(line):
            if not dated(m.start()):
                misses.append(f"{rel} {where}: '{m.group(0)}' is a quantity spelled out: write the number with its "
                              "source")
        context = "" if line.startswith("|") or is_code else line_before
        for figure in quoted_figures(line, where, header, context):
            if figure.paper:
                if figure.number not in stated:
                    misses.append(f"{rel} {where}: {figure.text} is marked as the paper's, and "
                                  f"{paper or 'no paper'}'s text does not state {figure.number}")
                continue
            if dated(figure.start) or (label, int(index) - 1, figure.start) in derived:
                continue
            candidates = near(figure)
            if not any(same_quantity(figure, s) for s in candidates):
                other = next((s for s in candidates if same_quantity(figure, s, statistics=False)), None)
                if other is not None:
                    misses.append(f"{rel} {where}: {figure.text} is called a {figure.stat}, and its source "
                                  f"({other.where}) is a {other.stat}")
                    continue
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
    p.add_argument("files", nargs="*", help="files to check (default: README.md, the docs, docs/history.md and the "
                                            "notebooks)")
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
    misses = history_misses() if not args.files else []
    for name in args.files or [*CHECKED, HISTORY]:
        misses += check(ROOT / name if not pathlib.Path(name).is_absolute() else name)
    print("\n".join(misses) or "every figure has its source")
    raise SystemExit(1 if misses else 0)


if __name__ == "__main__":
    main()
