"""train.py's main job learns, as a user runs it: `torchrun --nproc_per_node=2 train.py --model X` at a reduced size,
its held-out metric from metrics.json against the constant baseline train.py scores beside it; and a two-rank run
reports the metric its saved checkpoint gives (48a8aea: every rank evaluates rank 0's buffers).

The runs start train.py through tests/test_train.py's `run_script` (train.py with the stand-ins registered; the
papers' rows are train.py's own), on the CPU, under torchrun with two ranks.
"""
import json
import shutil

import pytest

from test_train import load, run_script  # noqa: F401 (test_train puts the repository root on sys.path)

import train


def report(out, stage):
    """OUT/<stage>/metrics.json: {metric name: value} for every name in its metric_names."""
    summary = json.loads((out / stage / "metrics.json").read_text())
    return {k: train.lookup(summary, k) for k in summary["metric_names"]}, summary


@pytest.mark.slow
def test_simplehand_learns_under_torchrun_past_the_mean_hand(tmp_path):
    """The main job, reduced to about two minutes on two cores: SimpleHand's TINY at 64 px, 1500 steps of global batch
    32 (lr 2e-3 with a 50-step warm-up, then cosine) on 4096 rendered hands, two ranks. Its held-out PA-MPJPE, read from
    metrics.json, beats the mean hand train.py scores beside it: measured 16.3 mm against 20.7 mm (0.79 x; the issue's
    0.7 x takes the full run: 9.5 against 19.5 mm after 6000 steps at 96 px, docs/runs/simplehand.json). Both are in
    millimetres of a hand: a metre read as a millimetre, or the reverse, is 1000 x off."""
    run_script(["--max-steps", "1500", "--set", "image_size=64", "--set", "lr=2e-3", "--set", "warmup_steps=50",
                "--train-samples", "4096", "--eval-samples", "64", "--log-every", "100", "--out", "out"],
               tmp_path, nproc=2, model="simplehand")
    metrics, summary = report(tmp_path / "out", "simplehand")
    assert summary["world_size"] == 2 and summary["steps"] == 1500
    assert summary["config_values"]["model"]["image_size"] == 64
    ours, mean_hand = metrics["pa_mpjpe_mm"], metrics["baseline_pa_mpjpe_mm"]
    assert 10 < mean_hand < 40, f"the mean hand's PA-MPJPE {mean_hand} is not a hand's error in mm (measured 20.7)"
    assert ours <= 0.85 * mean_hand, f"PA-MPJPE {ours:.2f} mm, mean hand {mean_hand:.2f} mm: not learning"


@pytest.mark.slow
def test_a_two_rank_runs_final_metrics_are_its_checkpoints(tmp_path):
    """GenHMR's backbone stage (TINY's convolutional stem has BatchNorm) on two ranks: DDP broadcasts the buffers at
    the start of each forward, so after the last step rank 1 holds BatchNorm statistics of its own half-batch. The
    final evaluation must still score the model the checkpoint holds: re-evaluated from the checkpoint in one process
    (the same command resumed at its last step: no step runs, the final evaluation does), every metric agrees to
    float32 rounding (1e-6) (issue 60: 134.8 mm reported, 135.0 mm from the checkpoint)."""
    args = ["--max-steps", "4", "--set", "batch_size=4", "--train-samples", "8", "--eval-samples", "8",
            "--log-every", "1"]
    run_script(args + ["--out", "two"], tmp_path, nproc=2, model="genhmr_backbone")
    ckpt = load(tmp_path / "two" / "genhmr_backbone" / "ckpt.pt")
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2
    assert any(k.endswith("running_mean") for k in ckpt["model"]), "the stage has no BatchNorm: the test tests nothing"
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    again = run_script(args + ["--out", "one", "--resume"], tmp_path, nproc=1, model="genhmr_backbone")
    assert "resumed from one/genhmr_backbone/ckpt.pt at step 4 (2 rank(s) then, 1 now)" in again.stdout
    assert "step     1/" not in again.stdout  # nothing trained: the checkpoint's model, evaluated
    (two, summary), (one, _) = report(tmp_path / "two", "genhmr_backbone"), report(tmp_path / "one", "genhmr_backbone")
    assert summary["world_size"] == 2 and one.keys() == two.keys()
    names = [k for k in two if k.startswith("regression_")]
    assert "regression_mpjpe_mm" in names
    for name in names:
        # measured: equal, or 7e-8 apart (PA's float32 SVD at another batch size); rank 1's own BatchNorm statistics
        # (48a8aea reverted) move MPJPE by 1.4e-5 of itself after 4 steps
        assert one[name] == pytest.approx(two[name], rel=1e-6, abs=0), (name, two[name], one[name])
