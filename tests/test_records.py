"""The committed records of the default runs (docs/runs/*.json, written by records.py) are the one source of the
figures the README quotes: each figure of the README's results table and of its sample output is the record's, to
the digits printed."""
import json
import os
import re
import subprocess
import sys

import pytest

from lab import records

ROOT = records.RUNS.parent.parent
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")


def fig(name, stage, key):
    return records.figure(records.load(name), stage, key)


def expected_results():
    """{row of the README's results table: the decimals its default-run column quotes, in order, from the records}."""
    sh = lambda key: fig("simplehand", "simplehand", key)  # noqa: E731
    gh = lambda key: fig("genhmr", "genhmr", key)  # noqa: E731
    amb = lambda key: fig("genhmr_ambiguous", "genhmr", key)  # noqa: E731
    ha = lambda key: fig("hmr_adapter", "hmr_adapter", key)  # noqa: E731
    occluded = ha("pipeline/adapted/hands_occluded/pve_mm"), ha("pipeline/baseline/hands_occluded/pve_mm")
    from lab.hmr_adapter_experiments import ABLATIONS  # the paper's Table 3 (PA-PVE first), beside ours
    paper_table3 = {label: figures[0] for label, _, figures in ABLATIONS["table3"]["rows"]}
    return {
        "SimpleHand": [sh("pa_mpjpe_mm"), sh("baseline_pa_mpjpe_mm"), sh("pa_mpjpe_mm") / sh("baseline_pa_mpjpe_mm")],
        "GenHMR": [gh("mpjpe_mm"), gh("baseline_mpjpe_mm"), gh("mpjpe_mm") / gh("baseline_mpjpe_mm"),
                   gh("refined_mpjpe_mm"), gh("refined_oracle_mpjpe_mm"),
                   amb("table_cosine_T1_hidden_arm_mm"), amb("table_cosine_T5_hidden_arm_mm")],
        "HMR-Adapter": [*occluded, occluded[0] / occluded[1],
                        ha("pipeline/adapted/all/pve_mm") / ha("pipeline/baseline/all/pve_mm"),
                        ha("hand_path/control/clean/pa_pve_mm") / ha("hand_path/expert/clean/pa_pve_mm"),
                        paper_table3["No.5 adapter, hand image input"] / paper_table3["HaMeR (pre-trained)"],
                        ha("hand_path/adapter/occluded/pve_mm") / ha("hand_path/expert/occluded/pve_mm"),
                        ha("hand_path/adapter/occluded/pa_pve_mm") / ha("hand_path/control/occluded/pa_pve_mm"),
                        paper_table3["No.6 adapter, body pose input"] / paper_table3["No.5 adapter, hand image input"],
                        ha("hand_path/adapter/clean/pa_pve_mm") / ha("hand_path/control/clean/pa_pve_mm")],
    }


def results_table(readme):
    """{paper: the text of the results table's last column (the default run)}."""
    section = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    return {row.split("|")[1].strip(): row.rstrip(" |").split("|")[-1] for row in rows}


def mismatches(quoted, expected):
    """The quoted decimals (strings) that do not equal the expected values at the digits they print."""
    if len(quoted) != len(expected):
        return [f"{len(quoted)} figures quoted, {len(expected)} in the record: {quoted}"]
    wrong = []
    for text, value in zip(quoted, expected):
        digits = len(text.split(".")[1])
        if abs(float(text) - value) > 0.5 * 10 ** -digits + 1e-9:
            wrong.append(f"{text} (the record: {value:.{digits + 2}f})")
    return wrong


def readme_mismatches(readme):
    table = results_table(readme)
    out = []
    for paper, expected in expected_results().items():
        quoted = DECIMAL.findall(table[next(k for k in table if paper in k)])
        out += [f"{paper}: {m}" for m in mismatches(quoted, expected)]
    return out


def test_the_readme_results_table_quotes_the_records():
    """Each decimal in the results table's default-run column is the record's figure, in order, to its digits."""
    assert readme_mismatches((ROOT / "README.md").read_text()) == []


def test_the_check_fails_when_a_figure_is_changed_by_hand():
    readme = (ROOT / "README.md").read_text()
    column = results_table(readme)[next(k for k in results_table(readme) if "SimpleHand" in k)]
    first = DECIMAL.search(column).group(0)
    changed = readme.replace(column, column.replace(first, f"{float(first) + 0.5:.{len(first.split('.')[1])}f}", 1))
    assert readme_mismatches(changed) and readme_mismatches(changed)[0].startswith("SimpleHand: ")


def test_the_readme_sample_output_is_the_records_final_line():
    """The README shows the main job's last lines: its figures are the record's."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("final simplehand ("))
    stage = records.load("simplehand")["stages"]["simplehand"]
    for key in ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_joints", "auc_verts"):
        quoted = re.search(rf"\| {key} (\d+\.\d+)", " | " + line.split(": ", 1)[1]).group(1)
        assert mismatches([quoted], [stage[key]]) == [], key
    minutes = re.search(r"(\d+) steps, (\d+\.\d) min\)", line)
    assert int(minutes.group(1)) == stage["steps"] and abs(float(minutes.group(2)) - stage["wall_time_s"] / 60) <= 0.05


def test_every_record_holds_what_a_reader_needs():
    """A record names its command, commit, machine and times, and holds each stage's metrics.json of the chain."""
    import train
    for path in sorted(records.RUNS.glob("*.json")):
        record = json.loads(path.read_text())
        assert {"name", "command", "commit", "machine", "started", "wall_s", "stages"} <= set(record), path.name
        assert record["name"] == path.stem and "train.py --model " in record["command"], path.name
        model = re.search(r"--model (\S+)", record["command"]).group(1)
        assert list(record["stages"]) == train.lineage(model)[::-1], path.name
        if not record.get("transcribed"):  # a record written from the run's own metrics.json files
            assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]), path.name
            for stage in record["stages"].values():
                assert {"steps", "metric_names", "history"} <= set(stage), path.name


def test_records_py_refuses_a_command_it_cannot_record(tmp_path):
    """`records.py write` on a run that did not finish names the missing metrics.json; a missing command is named
    too; both with exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "lab.records", "write", "x", "--wall-s", "1", "--", "torchrun",
                           "train.py", "--model", "simplehand", "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "metrics.json is missing" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lab.records", "write", "x"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "give the train.py command after --" in proc.stderr


@pytest.mark.parametrize("name", ["simplehand", "genhmr", "genhmr_ambiguous", "hmr_adapter"])
def test_each_default_run_has_a_record(name):
    assert (records.RUNS / f"{name}.json").is_file(), f"docs/runs/{name}.json: python -m lab.records run {name} -- ..."
