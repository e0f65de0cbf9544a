"""ablate.py: a paper's ablation tables as data, each row trained (or scored) with train.py's machinery and
written beside the paper's figures; every paper's tables smoke-run for two steps.

The stand-in stages of tests/test_train.py run the runner's machinery in seconds. Run as a script, this file is
ablate.py with the stand-ins registered, which is how the torchrun test starts it.
"""
import dataclasses
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

# first: test_train puts the repository root on sys.path (register_standins: its autouse fixture)
from test_train import (NUM_POINTS, ROOT, STANDIN_PAPER, STANDINS, StandInConfig, StandInHead, load,  # noqa: F401
                        register_standins)
from test_train import error_of as train_error_of

from lab import ablate
import train


# the head stage with a config of its own, without `width` (it reads its parent's), so a row changing
# the width can only mean the stage the head starts from
HeadConfig = dataclasses.make_dataclass("HeadConfig", [(f.name, f.type, dataclasses.field(default=f.default))
                                                     for f in dataclasses.fields(StandInConfig) if f.name != "width"])


def build_head_of_own_config(cfg, parent):
    return StandInHead(types.SimpleNamespace(width=parent.points.in_features), parent)


def scaled_predict(model, batch, cfg):
    """An inference-time field: the prediction times cfg.scale (None: 1)."""
    return dict(points=model(batch["image"]) * (1.0 if cfg.scale is None else cfg.scale))


STANDIN_TABLES = dict(
    table1=dict(caption="Head learning rate and base width", stage="standin_head",
                columns=(("error_mm", "error (mm)"), ("under50", "under 50 mm")),
                rows=(("as is", {}, (1.0, None)), ("slower head", {"lr": 1e-3}, (2.0, 0.5)),
                      ("narrow base", {"width": 16}, (3.0, None))),
                chosen="as is", longer={"slower head": 2}),
    table2=dict(caption="Output scale", inference=True, columns=(("error_mm", "error (mm)"),),
                rows=(("x1", {"scale": None}, (1.0,)), ("x2", {"scale": 2.0}, (None,))), chosen="x1"),
)


def head_of_own_config():
    """The stand-in head stage with HeadConfig, an inference-time field and STANDIN_TABLES."""
    paper = types.SimpleNamespace(**dict(vars(STANDIN_PAPER), build_model=build_head_of_own_config,
                                         predict=scaled_predict, CONFIGS={"tiny": HeadConfig()},
                                         ABLATIONS=STANDIN_TABLES))
    return dataclasses.replace(STANDINS["standin_head"], paper=paper)


@pytest.fixture
def ablation_stages(monkeypatch):
    monkeypatch.setitem(train.MODELS, "standin_head", head_of_own_config())


def error_of(argv):
    return train_error_of(argv, ablate.main)


def test_an_ablation_trains_each_row_reuses_untouched_stages_and_resumes(tmp_path, ablation_stages):
    """Each row trains in its own folder: the empty row reproduces the normal run exactly, a head
    field retrains the head on the shared parent, a field only the parent has retrains the parent
    too; the table writes both figures with the paper's choice marked, and a second run trains nothing."""
    common = ["--model", "standin_head", "--out", str(tmp_path), "--max-steps", "6", "--log-every", "3"]
    train.main(common)  # the normal run: standin, then standin_head, in OUT
    parent_mtime = (tmp_path / "standin" / "ckpt.pt").stat().st_mtime_ns
    normal = json.loads((tmp_path / "standin_head" / "metrics.json").read_text())
    ablate.main(common + ["--table", "table1"])
    rows = json.loads((tmp_path / "standin_head" / "ablation_table1.json").read_text())["rows"]
    folders = [tmp_path / "standin_head" / "ablation_table1" / f
               for f in ("00-as-is", "01-slower-head", "02-narrow-base")]
    assert [r["label"] for r in rows] == ["as is", "slower head", "narrow base"]
    assert [r["chosen"] for r in rows] == [True, False, False]
    assert rows[0]["ours"]["error_mm"] == normal["error_mm"]  # same parent, config, seed and data: the same run
    assert rows[1]["ours"]["error_mm"] != normal["error_mm"] and rows[1]["paper"] == dict(error_mm=2.0, under50=0.5)
    assert not (folders[0] / "standin").exists() and not (folders[1] / "standin").exists()  # the shared parent
    assert load(folders[1] / "standin_head" / "ckpt.pt")["config"]["lr"] == 1e-3
    assert load(folders[1] / "standin_head" / "ckpt.pt")["step"] == 12  # longer: twice --max-steps, its parent shared
    assert (load(folders[2] / "standin" / "ckpt.pt")["step"] == 6
            == load(folders[2] / "standin_head" / "ckpt.pt")["step"])
    assert load(folders[2] / "standin" / "ckpt.pt")["config"]["width"] == 16  # retrained with the row's width
    assert load(folders[2] / "standin_head" / "ckpt.pt")["model"]["head.weight"].shape == (NUM_POINTS * 3, 16)
    assert (tmp_path / "standin" / "ckpt.pt").stat().st_mtime_ns == parent_mtime
    table = (tmp_path / "standin_head" / "ablation_table1.md").read_text()
    assert "| **as is** | - |" in table and "| slower head | lr=0.001, 2 x the steps |" in table
    assert "paper: under 50 mm" in table
    # a finished table trains nothing again; a row without its report is reported again, not retrained
    (folders[1] / "standin_head" / "metrics.json").unlink()
    mtimes = [(f / "standin_head" / "ckpt.pt").stat().st_mtime_ns for f in folders]
    ablate.main(common + ["--table", "table1"])
    assert [(f / "standin_head" / "ckpt.pt").stat().st_mtime_ns for f in folders][::2] == mtimes[::2]
    again = json.loads((tmp_path / "standin_head" / "ablation_table1.json").read_text())["rows"]
    assert [r["ours"] for r in again] == [r["ours"] for r in rows]


def test_an_inference_table_scores_one_trained_model_with_each_rows_config(tmp_path, ablation_stages):
    common = ["--model", "standin_head", "--out", str(tmp_path), "--max-steps", "6"]
    ablate.main(common + ["--table", "table2"])  # trains the stage (and its parent) in OUT first
    normal = json.loads((tmp_path / "standin_head" / "metrics.json").read_text())
    rows = json.loads((tmp_path / "standin_head" / "ablation_table2.json").read_text())["rows"]
    assert rows[0]["ours"]["error_mm"] == pytest.approx(normal["error_mm"], rel=1e-6)
    assert rows[1]["ours"]["error_mm"] != rows[0]["ours"]["error_mm"]
    assert not (tmp_path / "standin_head" / "ablation_table2").exists()  # nothing trained per row


@pytest.mark.parametrize("table, expected", [
    (dict(rows=(("a", {"nope": 1}, (1.0,)),)), "--table t, row 'a': no config it trains has the field(s) nope"),
    (dict(inference=True, rows=(("a", {"width": 1}, (1.0,)),)),
     "row 'a': no config of standin_head has the field(s) width"),
    (dict(rows=(("a", {}, (1.0, 2.0)),)), "row 'a': 2 paper figures for 1 columns"),
    (dict(rows=(("a", {}, (1.0,)),), chosen="b"), "chosen row 'b' is not one of its rows ['a']"),
    (dict(rows=(("a", {}, (1.0,)),), longer={"b": 2}),
     "longer['b'] = 2 needs a training row of ['a'] and a factor > 0"),
])
def test_a_bad_ablation_table_is_refused_in_one_line(table, expected, tmp_path, ablation_stages):
    t = dict(dict(caption="t", columns=(("error_mm", "e"),), chosen="a"), **table)
    train.MODELS["standin_head"].paper.ABLATIONS = dict(t=t)
    assert expected in error_of(["--model", "standin_head", "--table", "t", "--out", str(tmp_path)])
    assert "has the tables t" in error_of(["--model", "standin_head", "--table", "nope", "--out", str(tmp_path)])


# The default run smokes SimpleHand's quickest table (12 s; the runner's machinery is the same for every paper, and
# the stand-in tests above cover it); every table runs with -m slow, which CI runs too (5-45 s a table on 2 cores)
QUICK_TABLES = {("simplehand", "table8")}
PAPER_TABLES = [pytest.param(name, table, marks=[] if (name, table) in QUICK_TABLES else [pytest.mark.slow])
                for name in ("simplehand", "genhmr", "hmr_adapter")
                for table in getattr(train.MODELS[name].paper, "ABLATIONS", {})]


@pytest.mark.parametrize("model, table", PAPER_TABLES)
def test_every_row_of_every_paper_table_trains_two_steps(model, table, tmp_path):
    """The smoke run of a paper's table: every row builds, trains two steps (its changed stages too)
    and is scored; the table is written with a finite figure for every row and column."""
    ablate.main(["--model", model, "--table", table, "--out", str(tmp_path), "--max-steps", "2",
                "--train-samples", "8", "--eval-samples", "4", "--log-every", "0", "--eval-every", "0"])
    result = json.loads((tmp_path / model / f"ablation_{table}.json").read_text())
    spec = train.MODELS[model].paper.ABLATIONS[table]
    assert len(result["rows"]) == len(spec["rows"]) and sum(r["chosen"] for r in result["rows"]) == 1
    assert all(np.isfinite(v) for r in result["rows"] for v in r["ours"].values()), result["rows"]


def test_the_command_exits_2_with_its_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lab.ablate", "--model", "simplehand", "--table", "table99",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("python -m lab.ablate: error: --table 'table99': simplehand has the tables "
                                  "table4, table5")


def test_an_ablation_under_torchrun_writes_the_table_of_one_process(tmp_path, ablation_stages):
    """Two gloo ranks run every row of the stand-in table (each row's chain, its held-out evaluation gathered
    from both ranks) and write the same rows, with the figures of one process up to DDP's rounding."""
    common = ["--model", "standin_head", "--table", "table1", "--max-steps", "6", "--set", "dropout=0",
              "--device", "cpu", "--log-every", "0"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__] + common + ["--out", "two"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    ablate.main(common + ["--out", str(tmp_path / "one")])
    two, one = (json.loads((tmp_path / d / "standin_head" / "ablation_table1.json").read_text())
                for d in ("two", "one"))
    assert [r["label"] for r in two["rows"]] == [r["label"] for r in one["rows"]]
    for a, b in zip(two["rows"], one["rows"]):
        assert a["ours"] == pytest.approx(b["ours"], rel=1e-4, abs=1e-5), (a, b)


if __name__ == "__main__":  # ablate.py with the stand-ins registered (the torchrun test starts it so)
    train.MODELS.update(STANDINS)
    train.MODELS["standin_head"] = head_of_own_config()
    ablate.main()


def test_a_row_changing_the_masked_transformer_retrains_the_prior_stage_too():
    """GenHMR's prior stage builds the image stage's masked transformer: a row of Table 16 (num_layers) or 15
    (feature_scales) sets the field on both stages, so both retrain; Table 4's masking ratio only the image stage."""
    args = types.SimpleNamespace(config="tiny", set=[], model="genhmr")
    table = dict(stage="genhmr")
    assert ablate.field_stages(table, "num_layers", args) == ["genhmr", "genhmr_prior"]
    assert ablate.field_stages(table, "feature_scales", args) == ["genhmr", "genhmr_prior"]
    assert ablate.field_stages(table, "mask_tau_max", args) == ["genhmr"]
    assert ablate.field_stages(table, "codebook_size", args) == ["genhmr_tokenizer"]
    given = ablate.row_overrides(table, {"num_layers": 2}, args)
    assert given["genhmr"] == given["genhmr_prior"] == ["num_layers=2"] and given["genhmr_backbone"] == []
