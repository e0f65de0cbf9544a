"""Nothing the project shows a reader speaks of how it was made (lab/wording.py states the rule): no issue numbers of
its own, no targets called bars, no sessions, helpers, lent machines or probes of its work, no machine paths, no
names of its tools, and no notebook writing scratch files to a fixed path. The self-test plants each kind and the
near misses that must pass."""
import json

import pytest

from lab import wording

FILES = wording.checked_files()


@pytest.mark.parametrize("name", FILES)
def test_nothing_speaks_of_how_the_project_was_made(name):
    """Fix a hit by saying what was done and citing it by its commit, stating a criterion as itself, or citing an
    outside issue as OWNER/NAME#N (`python -m lab.wording NAME` lists them)."""
    hits = wording.check(wording.ROOT / name)
    assert not hits, "\n".join(hits)


def test_the_check_reads_every_kind_of_file():
    assert {"README.md", "docs/history.md", "docs/runs/genhmr.json", "notebooks/01_simplehand.ipynb", "train.py",
            "lab/bench.py", "tests/conftest.py"} <= set(FILES)
    assert not wording.SELF & set(FILES)


PROSE = {  # a line of prose: the text the check must name in it
    "Measured for issue 12 last week.": "issue 12",
    "See issues 3, 4 and 5.": "issues 3, 4 and 5",
    "Issue 5: the boxes.": "Issue 5",
    "As #12 asked.": "#12",
    "It is what the issue's list wants.": "the issue's",
    "No.5 is within bar 0.9 x.": "bar 0",
    "The bar of 0.7 x is missed.": "bar of 0",
    "Run bar 07 again.": "bar 0",
    "Both bars: met.": "bars: met",
    "It misses the bar.": "misses the bar",
    "As issue 5's bars say.": "issue 5's bars",
    "In this session we measured it.": "session",
    "A later session found it.": "session",
    "A helper measured it.": "helper",
    "The helpers' review found it.": "helpers",
    "The machine was lent for it.": "lent",
    "A probe of its checkpoints showed it.": "A probe",
    "It ran 5000 steps (probe).": "(probe)",
    "The log is /tmp/runs/go.log.": "/tmp/",
    "Read /work/main/out.": "/work/",
    "In /root/.cache.": "/root/",
    "As the issue tracker says.": "the issue tracker",
    "On the device machine.": "device machine",
}
PROSE_PASSES = [
    "An outside bug, vchoutas/smplx#48, flips the sign; the paper's Table 3 row 12.",
    "A bar chart of the errors: the bars compare the three paths, with error bars.",
    "The issue of scale is open; issues of memory too.",
    "A helper function builds the crop, and the helper module holds it.",
    "The pytest session collects them; a Jupyter session runs them.",
    "A linear probe of the features; we probe nothing else.",
    "Files go to tmp_path, out/ in the repository and github.com/someone/work/.",
    "The device is cpu; a device string names it.",
]
CODE = {  # a line of Python: the text the check must name in it
    "# issue 12: the crop": "issue 12",
    "x = 'within bar 0.9 x'": "bar 0",
    "# measured in this session": "this session",
    "# another helper found it": "another helper",
    "# the helper's fix": "helper's",
    "path = '/tmp/x.npz'": "/tmp/",
    "# a probe (5000 steps)": "a probe",
}
CODE_PASSES = [
    "def helper():  # a helper function of the tests",
    "    return 1",
    "@pytest.fixture(scope=\"session\")",
    "def chain():",
    "    \"\"\"One chain for the whole session (the pytest session's fixture).\"\"\"",
    "proc = subprocess.Popen(cmd, start_new_session=True)  # in a session and process group of its own",
    "bars = ax.bar(range(4), counts, color='#000000')  # a bar chart",
]


def test_the_check_names_each_kind(tmp_path):
    """Each planted kind is named, in prose (a Markdown file, a record's note, a notebook's Markdown and output) and
    in code (a .py file's comments and strings, a notebook's code), and the near misses are not."""
    doc = tmp_path / "doc.md"
    doc.write_text("\n".join([*PROSE, *PROSE_PASSES]) + "\n")
    code = tmp_path / "code.py"
    code.write_text("\n".join([*CODE, *CODE_PASSES]) + "\n")
    note = tmp_path / "run.json"
    note.write_text(json.dumps({"name": "run", "note": "\n".join([*PROSE, *PROSE_PASSES]), "stages": {}}))
    nb = tmp_path / "nb.ipynb"
    nb.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": "\n".join([*PROSE, *PROSE_PASSES])},
        {"cell_type": "code", "source": "\n".join([*CODE, *CODE_PASSES]),
         "outputs": [{"output_type": "stream", "text": "\n".join([*PROSE, *PROSE_PASSES])}]}]}))
    for path, planted in ((doc, PROSE), (note, PROSE), (code, CODE)):
        lines = list(planted) + (PROSE_PASSES if planted is PROSE else CODE_PASSES)
        hits = wording.check(path)
        for i, (line, text) in enumerate(planted.items(), 1):
            assert any(f" line {i}: '{text}" in h for h in hits), (path.name, line, hits)
        assert {int(h.split(" line ")[1].split(":")[0]) for h in hits} == set(range(1, len(planted) + 1)), (
            path.name, [h for h in hits if int(h.split(" line ")[1].split(":")[0]) > len(planted)], lines)
    hits = wording.check(nb)
    for cell, kind, planted in ((1, "", PROSE), (2, "", CODE), (2, "output ", PROSE)):
        for i, text in enumerate(planted.values(), 1):
            assert any(f"cell {cell} {kind}line {i}: '{text}" in h for h in hits), (cell, kind, text, hits)
    assert len(hits) == 2 * (len(PROSE) + 1) + len(CODE), (  # issue 5's bars: two hits
        hits)


SCRATCH = [  # a notebook's code cells, and the paths it writes that the check must name
    ("import os, pathlib, subprocess, tempfile, torch\n"
     "SCRATCH = pathlib.Path(tempfile.mkdtemp())\n"
     "ROOT = pathlib.Path('..').resolve()\n"
     "OUT = ROOT / 'out'", []),
    # under a temporary folder, or read: not named
    ("fig.savefig(SCRATCH / 'a.png')\n"
     "with open(SCRATCH / 'b.json', 'w') as f:\n"
     "    f.write('x')\n"
     "state = torch.load(OUT / 'simplehand' / 'ckpt.pt')\n"
     "text = open(OUT / 'log.txt').read()\n"
     "plots.draw_samples(x, os.path.join(tempfile.mkdtemp(), 'samples.png'))\n"
     "subprocess.run(['python', 'train.py', '--out', str(SCRATCH / 'run')])\n"
     "with tempfile.TemporaryDirectory() as tmp:\n"
     "    (pathlib.Path(tmp) / 'c.json').write_text('{}')", []),
    # a fixed path: named
    ("fig.savefig('picture.png')", ["'picture.png'"]),
    ("(OUT / 'x.json').write_text('{}')", ["OUT / 'x.json'"]),
    ("subprocess.run(['python', 'train.py', '--out', 'out/scratch'])", ["'out/scratch'"]),
    ("torch.save(state, ROOT / 'out' / 'state.pt')", ["ROOT / 'out' / 'state.pt'"]),
    ("with open('notes.txt', mode='w') as f:\n    pass", ["'notes.txt'"]),
    ("plots.draw_samples(x, str(OUT / 'samples.png'))", ["str(OUT / 'samples.png')"]),
]


def test_a_notebook_writing_to_a_fixed_path_is_named():
    nb = {"cells": [{"cell_type": "code", "source": source, "outputs": []} for source, _ in SCRATCH]}
    hits = wording.scratch_hits(nb, "nb.ipynb ")
    for i, (_, paths) in enumerate(SCRATCH, 1):
        named = [h.split(": '", 1)[1].split("' is a file")[0] for h in hits if h.startswith(f"nb.ipynb cell {i} ")]
        assert named == paths, (i, named, paths)
