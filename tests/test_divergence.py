"""train.py on a diverging run: a step whose loss or gradient norm is not finite stops every rank before its
optimiser step, in one line naming the step, the terms and the checkpoint kept (exit status DIVERGED); no
checkpoint with non-finite weights is written; `--resume` continues the kept one bit for bit, or at a lower rate
with `--set lr=...` (said at the start and recorded in the checkpoint).

The NaN comes from a test-only wrapper of the stand-in paper's training_loss (NAN_AT_STEP=S[:RANK] when this file
runs as train.py): a normal run's code path is train.py's own. Run as a script, this file is train.py with
test_train's stand-in papers registered.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from lab import checkpoints  # noqa: E402
from lab import distributed  # noqa: E402
import train  # noqa: E402
from test_checkpoints import assert_same_checkpoint  # noqa: E402
from test_train import STANDIN_PAPER, STANDINS, load, register_standins  # noqa: E402, F401

COMMON = ["--max-steps", "12", "--ckpt-every", "4", "--log-every", "1", "--train-samples", "24", "--eval-samples",
          "8", "--set", "dropout=0.1"]


def run(args, tmp_path, nproc=1, env=None):
    """This file as train.py (torchrun when nproc > 1) on the CPU."""
    launcher = ([sys.executable] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
    return subprocess.run(launcher + [__file__, "--model", "standin", "--device", "cpu"] + args, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if "error:" in line]


def main(args, tmp_path, capsys):
    """train.main in this process (one rank) -> (exit status, its stdout, its error lines)."""
    status = 0
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative --out, as in the subprocesses: the messages name bad/standin/ckpt.pt
    try:
        distributed.command(lambda: train.main(["--model", "standin", "--device", "cpu"] + args), "train.py")
    except SystemExit as e:
        status = e.code
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if "error:" in line]


STOPPED = ("train.py: error: standin: step 7 of 12 is not finite (loss, gradient norm, xy, z): every rank stopped "
           "before its optimiser step; kept bad/standin/ckpt.pt, the checkpoint of step 4, as it was; continue from it "
           "with a lower learning rate: --resume --set lr=...")


def check_kept_and_resume(tmp_path, status, out, errors, resume):
    """The diverged run in tmp_path/bad stopped at step 7 with step 4's checkpoint, which `resume` continues to
    what the uninterrupted run in tmp_path/good ends with, bit for bit."""
    assert errors == [STOPPED], errors
    assert "step     6/12" in out and "step     7/12" not in out  # step 7 was neither taken nor logged
    ckpt = tmp_path / "bad" / "standin" / "ckpt.pt"
    kept = checkpoints.load_checkpoint(ckpt, "standin")
    assert kept["step"] == 4 and not (tmp_path / "bad" / "standin" / "metrics.json").exists()
    assert all(v.isfinite().all() for v in kept["model"].values())
    assert "resumed from bad/standin/ckpt.pt at step 4" in resume()
    assert_same_checkpoint(load(tmp_path / "good" / "standin" / "ckpt.pt"), load(ckpt))


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_checkpoint_which_resumes_bitwise(tmp_path, monkeypatch,
                                                                                              capsys):
    assert main(COMMON + ["--out", "good"], tmp_path, capsys)[0] == 0
    with monkeypatch.context() as m:
        m.setattr(STANDIN_PAPER, "training_loss", nan_at(6, "0", STANDIN_PAPER.training_loss))
        status, out, errors = main(COMMON + ["--out", "bad"], tmp_path, capsys)
    assert status == distributed.DIVERGED
    check_kept_and_resume(tmp_path, status, out, errors,
                          lambda: main(COMMON + ["--out", "bad", "--resume"], tmp_path, capsys)[1])


@pytest.mark.slow
def test_on_two_ranks_a_nan_on_one_stops_both_and_the_kept_checkpoint_resumes_bitwise(tmp_path):
    """The NaN on rank 1's loss alone: rank 0 stops at the same step."""
    run(COMMON + ["--out", "good"], tmp_path, 2).check_returncode()
    bad = run(COMMON + ["--out", "bad"], tmp_path, 2, env=dict(NAN_AT_STEP="6:1"))
    # torchrun reports a failed worker (exit status 1, and a traceback of its own); a worker's would name train.py
    assert bad.returncode == 1 and f"exitcode  : {distributed.DIVERGED}" in bad.stderr, bad.stderr[-3000:]
    assert "Diverged" not in bad.stderr and 'train.py", line' not in bad.stderr, bad.stderr[-3000:]
    check_kept_and_resume(tmp_path, bad.returncode, bad.stdout, error_lines(bad),
                          lambda: run(COMMON + ["--out", "bad", "--resume"], tmp_path, 2).stdout)


def test_resume_may_lower_the_learning_rate_and_records_it_but_refuses_other_changes(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        m.setattr(STANDIN_PAPER, "training_loss", nan_at(6, "0", STANDIN_PAPER.training_loss))
        assert main(COMMON + ["--out", "bad"], tmp_path, capsys)[0] == distributed.DIVERGED
    status, _, errors = main(COMMON + ["--out", "bad", "--resume", "--set", "lr=5e-3", "--set", "width=7"], tmp_path,
                             capsys)
    assert status == 2 and errors == [
        "train.py: error: bad/standin/ckpt.pt continues another run: width 32 then, 7 now. Only max_steps, lr may "
        "change when a run continues: pass the run's own --config and --set, or a new --out"]
    status, out, _ = main(COMMON + ["--out", "bad", "--resume", "--set", "lr=5e-3"], tmp_path, capsys)
    assert status == 0 and out.splitlines()[0] == (
        "--resume bad/standin/ckpt.pt at step 4: lr 0.01 then, 0.005 now (--set lr: recorded in the checkpoint's "
        "'changes')")
    final = load(tmp_path / "bad" / "standin" / "ckpt.pt")
    assert final["step"] == 12 and final["config"]["lr"] == 5e-3 and final["changes"] == [dict(step=4, lr=[1e-2, 5e-3])]
    status, out, _ = main(COMMON + ["--out", "bad", "--resume", "--max-steps", "13"], tmp_path, capsys)
    assert status == 0 and "--resume bad" not in out  # lr stays the checkpoint's, unsaid
    assert load(tmp_path / "bad" / "standin" / "ckpt.pt")["changes"] == [dict(step=4, lr=[1e-2, 5e-3])]


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, monkeypatch, capsys):
    """A finite loss and gradient, then an update that overflows the weights (an infinite rate at step 4): step 4's
    checkpoint is refused and step 2's stays."""
    lr = STANDIN_PAPER.learning_rate
    monkeypatch.setattr(STANDIN_PAPER, "learning_rate", lambda cfg, step: float("inf") if step == 3 else lr(cfg, step))
    with pytest.raises(SystemExit) as stop:
        train.main(["--model", "standin", "--out", str(tmp_path), "--max-steps", "6", "--ckpt-every", "2",
                    "--train-samples", "16", "--eval-samples", "8"])
    assert stop.value.code == distributed.DIVERGED
    assert (f"standin: the weights after step 4 are not finite, so its checkpoint is not written; kept "
            f"{tmp_path}/standin/ckpt.pt, the checkpoint of step 2, as it was") in capsys.readouterr().err
    kept = load(tmp_path / "standin" / "ckpt.pt")
    assert kept["step"] == 2 and all(v.isfinite().all() for v in kept["model"].values())


def nan_at(step_to_poison, rank, training_loss):
    """training_loss, whose loss and terms are NaN at `step_to_poison` on rank `rank` (a test-only hook)."""
    def wrapped(model, batch, cfg, step):
        loss, terms = training_loss(model, batch, cfg, step)
        if step == step_to_poison and os.environ.get("RANK", "0") == rank:
            nan = torch.tensor(float("nan"))
            loss, terms = loss * nan, {k: v * nan for k, v in terms.items()}
        return loss, terms
    return wrapped


if __name__ == "__main__":  # train.py with the stand-ins registered; NAN_AT_STEP=S[:RANK] poisons one step's loss
    train.MODELS.update(STANDINS)
    if "NAN_AT_STEP" in os.environ:
        at, _, rank = os.environ["NAN_AT_STEP"].partition(":")
        STANDIN_PAPER.training_loss = nan_at(int(at), rank or "0", STANDIN_PAPER.training_loss)
    distributed.command(train.main, "train.py")
