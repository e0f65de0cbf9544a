"""Every figure the README, docs/ and the notebooks' prose quote has a source (lab/figures.py states the rule):
a record or a printed output of the same quantity and sign, the paper's text for a dagger figure, a date and a
commit for history; and no quantity is spelled out. The self-test plants each kind of miss and sees it named."""
import json

import pytest

from lab import figures

ROOT = figures.ROOT


@pytest.mark.parametrize("name", figures.CHECKED)
def test_every_figure_has_its_source(name):
    """Fix a miss by quoting the record or output at its digits, marking history with its date and commit, or
    writing the paper's figure with a dagger where the paper states it (`python -m lab.figures NAME` lists them)."""
    misses = figures.check(ROOT / name)
    assert not misses, "\n".join(misses)


def test_every_history_entry_says_its_date_and_commit():
    assert figures.history_misses() == []


def test_the_paper_numbers_are_each_papers():
    """lab/paper_numbers.json holds each paper's numbers, written from its text (`--paper-numbers`)."""
    table = json.loads(figures.PAPER_NUMBERS.read_text())
    assert set(table) == {"simplehand", "genhmr", "hmr_adapter"}
    assert table["simplehand"]["title"].startswith("A Simple Baseline for Efficient Hand Mesh Reconstruction")
    assert {"5.7", "1.9"} <= set(table["simplehand"]["numbers"])  # FreiHAND PA-MPJPE 5.7 mm, the decoder's 1.9M


PRINTED = """PA-MPJPE 9.478 mm; improved 0.383
loss 1.933 | lr 1.0e-04
decoder 0.57M parameters
| row | PVE mm | ratio |
|---|---|---|
| No.6 | 16.61 | 0.442 |
"""
RECORD = {"stages": {"simplehand": {"pa_mpjpe_mm": 9.6013, "wall_time_s": 305.9, "baseline_pa_mpjpe_mm": 19.51}}}
GOOD = ["PA-MPJPE 9.48 mm and 9.60 mm (the record), the paper 5.7† mm, improved 38 %, loss 1.93.",
        "It trained in 305.9 s, 5.1 min, on two cores; the mean hand scores PA-MPJPE 19.51.",
        "No.6's PVE is 0.442 x the expert's.",
        "In Sec. 4.1 with `lr 2.5`, 24 x 24 maps, Table 3, NOTE H14, torch 2.11.0, seeds 0, 1 and 2.",
        "The older run (2026-11-25, commit 3337df8) gave 16.38 mm."]
PLANTED = {  # a line of prose: the text of the figure the check must name
    "We get 9.38 mm.": "9.38 mm",  # changed by hand
    "We get -9.48 mm.": "-9.48 mm",  # the wrong sign
    "The decoder has 27M parameters.": "27M parameters",  # a unit and multiplier the old check did not read
    "Training takes 6 hours.": "6 hours",
    "The hand is 3 cm off.": "3 cm",
    "It runs at 120 samples/s.": "120 samples/s",
    "PA-MPJPE 9.48 px.": "9.48 px",  # the right number of another unit
    "It has 1.9M.": "1.9M",  # passes on nothing: the printed loss 1.933 is not 1.9M
    "A ratio of 0.6 x.": "0.6 x",  # the 0.57M parameters are not a ratio
    "The batch 0.38 of the joints.": "0.38",  # a bare number needs a name of its source's line
    "It is 4.6 %† better.": "4.6 %†",  # the paper does not state it
    "It is 2.3x† faster.": "2.3x†",
    "A quarter of the tokens are right.": "A quarter",  # spelled out
    "It took over half an hour.": "half",
    "A tenth of the joints moved.": "A tenth",
    "It took three times as long.": "three times",
    "The baseline 7.77 mm.": "7.77 mm",  # "line" ends "baseline": a word, not a line number
    # a date and a commit make their own sentence history, not the paragraph's other sentences
    "The older run (2026-11-25, commit 3337df8) gave 16.38 mm. Now it gives 9.28 mm.": "9.28 mm",
}


def test_the_check_names_each_kind_of_miss(tmp_path):
    """A made-up doc of a paper: the good lines pass, each planted miss is named (the kinds the check reads: a figure
    changed by hand, another sign, unit or multiplier, a bare number without a name of its source's, a dagger figure
    its paper does not state, a spelled-out quantity, a current figure beside a dated one), and nothing else is."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "simplehand.json").write_text(json.dumps(RECORD))
    doc = tmp_path / "simplehand.md"  # SimpleHand's doc: its dagger figures are looked up in its paper
    doc.write_text("# A doc\n\n" + "\n\n".join(GOOD + list(PLANTED)) + "\n")
    misses = figures.check(doc, records=figures.record_figures(runs), code=[],
                           outputs=figures.printed_figures(PRINTED, "a notebook"),
                           paper_numbers={"simplehand": {"numbers": ["5.7", "224"]}})
    lines = doc.read_text().splitlines()
    named = {}
    for miss in misses:
        line = int(miss.split(" line ")[1].split(":")[0])
        named.setdefault(lines[line - 1], []).append(miss)
    for prose, figure in PLANTED.items():
        assert prose in named, f"the planted miss {figure!r} in {prose!r} was not named"
        assert any(f": {figure}" in m or f"'{figure}" in m for m in named[prose]), named[prose]
    assert set(named) == set(PLANTED), {k: v for k, v in named.items() if k not in PLANTED}


def test_a_history_entry_without_its_commit_is_named(tmp_path):
    history = tmp_path / "history.md"
    history.write_text("# History\n\n## SimpleHand\n\n### 2026-11-25, commit 3337df8: a run\n\n### 2026-11-26: "
                       "another run\n")
    misses = figures.history_misses(history)
    assert len(misses) == 1 and "2026-11-26: another run" in misses[0]
