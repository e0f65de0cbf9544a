"""distributed.py with train.py: a run survives a worker's failure. torchrun's restarts form the process group
again and resume from the last checkpoint; a dead or frozen peer stops the job within --pg-timeout; SIGTERM
stops every rank after the same step with its checkpoint; each ends with an uninterrupted run's weights.

The stand-in paper of tests/test_train.py, run as train.py in subprocesses, with a signal sent to one rank at
an exact step (SIGNAL_AT_STEP=STEP:NAME:RANK, on torchrun's first attempt only).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

# first: test_train puts the repository root on sys.path (register_standins: its autouse fixture)
from test_train import ROOT, kill_and_resume, load, register_standins, run_script  # noqa: F401
from test_checkpoints import assert_same_checkpoint  # noqa: I001

from lab import distributed
import train

# the smallest two-rank run of tests/test_train.py: checkpoints at steps 4, 8, ...; step 10 is mid-interval
COMMON = ["--max-steps", "20", "--ckpt-every", "4", "--log-every", "1", "--train-samples", "30", "--eval-samples", "16"]


@pytest.fixture(scope="module")
def straight_two_ranks(tmp_path_factory):
    """The final checkpoint of an uninterrupted two-rank run: what every interrupted run must end with."""
    folder = tmp_path_factory.mktemp("straight")
    run_script(COMMON + ["--out", "out"], folder, nproc=2)
    return load(folder / "out" / "standin" / "ckpt.pt")


def nothing_half_written(out):
    """No temporary file left in OUT, and the checkpoint there reads back (weights_only)."""
    left = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left
    return load(out / "standin" / "ckpt.pt")


def watch(command, cwd, env, until):
    """Run `command`; -> (returncode, stdout, stderr, seconds from the stdout line containing `until` to the
    exit): how long the job took to stop after the step it failed at."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
    lines, seen = [], None
    for line in proc.stdout:
        lines.append(line)
        if seen is None and until in line:
            seen = time.monotonic()
    proc.wait(timeout=300)
    assert seen is not None, "".join(lines)[-2000:] + proc.stderr.read()[-3000:]
    return proc.returncode, "".join(lines), proc.stderr.read(), time.monotonic() - seen


@pytest.mark.slow
def test_a_rank_killed_under_max_restarts_resumes_from_its_checkpoint_bitwise(tmp_path, straight_two_ranks):
    """torchrun --max-restarts=1, rank 1 SIGKILLed at step 10 (after the checkpoint of step 8): the agent restarts
    both ranks, they form a new process group (in a fresh namespace of the agent's store, which still holds the
    dead attempt's keys), `--resume auto` continues from step 8, and the run ends bit for bit as if uninterrupted.
    The same command started the run: its first start found no checkpoint and said so."""
    proc = run_script(COMMON + ["--out", "killed", "--resume", "auto"], tmp_path, nproc=2,
                      env=dict(SIGNAL_AT_STEP="10:SIGKILL:1"), torchrun=["--max-restarts=1"])
    assert "no checkpoint in killed/standin yet; starting at step 0" in proc.stdout
    # the kill happened: the agent saw rank 1 killed, or first rank 0 leaving on the broken group (status 1) ...
    assert re.search(r"failed \(exitcode: (-9\) local_rank: 1|1\) local_rank: 0)", proc.stderr), proc.stderr[-3000:]
    assert "resumed from killed/standin/ckpt.pt at step 8 (2 rank(s) then, 2 now)" in proc.stdout  # ... and healed
    assert_same_checkpoint(straight_two_ranks, nothing_half_written(tmp_path / "killed"))


@pytest.mark.slow
def test_without_restarts_a_killed_rank_stops_the_other_within_the_timeout(tmp_path):
    """No restarts: rank 1 SIGKILLed at step 10; rank 0 leaves the training step's all-reduce with one line naming
    the failure (gloo sees the closed connection at once; --pg-timeout bounds it), the job fails, and OUT holds
    only whole files: the checkpoint of step 8."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "test_train.py"), "--model", "standin", "--device", "cpu",
               "--out", "out", "--pg-timeout", "20"] + COMMON
    returncode, stdout, stderr, seconds = watch(command, tmp_path, dict(SIGNAL_AT_STEP="10:SIGKILL:1"),
                                                until="step    10/20")
    assert returncode != 0 and "rank 0: a collective failed: another rank died" in stderr, stderr[-3000:]
    assert seconds < 20 + 30, seconds  # the timeout, and a margin for torchrun's teardown on a loaded machine
    assert nothing_half_written(tmp_path / "out")["step"] == 8
    assert not (tmp_path / "out" / "standin" / "metrics.json").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_frozen_rank_stops_the_other_at_the_timeout(tmp_path):
    """Rank 1 frozen (SIGSTOP: a lost node whose connections stay open) at step 10, two ranks started without
    torchrun: rank 0 waits in the step's all-reduce for --pg-timeout, no longer, then exits (status 1) naming
    the failure."""
    port, timeout = str(free_port()), 10
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               SIGNAL_AT_STEP="10:SIGSTOP:1")
    command = [sys.executable, str(ROOT / "tests" / "test_train.py"), "--model", "standin",
               "--device", "cpu", "--out", "out", "--pg-timeout", str(timeout)] + COMMON
    frozen = subprocess.Popen(command, cwd=tmp_path, env=dict(os.environ, **env, RANK="1", LOCAL_RANK="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        returncode, _, stderr, seconds = watch(command, tmp_path, dict(env, RANK="0", LOCAL_RANK="0"),
                                               until="step    10/20")
    finally:
        frozen.kill()
        frozen.wait()
    assert returncode == 1 and "rank 0: a collective failed: another rank died or did not answer within " \
        f"--pg-timeout {timeout} s" in stderr, stderr[-3000:]
    assert timeout <= seconds < timeout + 20, seconds
    assert nothing_half_written(tmp_path / "out")["step"] == 8


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_the_same_command_continues(tmp_path):
    """One process with two DataLoader workers (augmentation read by (epoch, index)), SIGTERM to every process
    of the job during step 11 (of 20; checkpoints every 4): the step finishes, the checkpoint of step 11 is
    written, the exit status is distributed.PREEMPTED; the same command (--resume auto) continues and ends with
    an uninterrupted run's weights."""
    (tmp_path / "npz").mkdir()
    common = COMMON + ["--workers", "2", "--data", f"npz:{tmp_path / 'npz'}"]
    args = common + ["--out", "out", "--resume", "auto"]
    stopped = run_script(args, tmp_path, check=False, env=dict(SIGNAL_AT_STEP="10:SIGTERM:0:group"), session=True)
    assert stopped.returncode == distributed.PREEMPTED, stopped.stderr[-3000:]
    assert "SIGTERM: stopped after step 11 with its checkpoint out/standin/ckpt.pt" in stopped.stdout
    assert nothing_half_written(tmp_path / "out")["step"] == 11
    first = load(tmp_path / "out" / "standin" / "ckpt.pt")["wall_time_s"]
    resumed = run_script(args, tmp_path)
    assert "resumed from out/standin/ckpt.pt at step 11" in resumed.stdout
    # the stage's wall time is its runs' together: the stopped run's and the resumed one's, never less than training
    report = json.loads((tmp_path / "out" / "standin" / "metrics.json").read_text())
    assert report["wall_time_s"] > first > 0 and report["wall_time_s"] >= report["train_time_s"]
    train.main(["--model", "standin", "--device", "cpu", "--out", str(tmp_path / "straight")] + common)
    assert_same_checkpoint(*(load(tmp_path / d / "standin" / "ckpt.pt") for d in ("straight", "out")))


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_after_the_same_step(tmp_path, straight_two_ranks):
    """Two ranks under torchrun, SIGTERM to rank 1 alone during step 11: rank 0 learns it from the step's flag
    all-reduce, both write their part of the checkpoint of step 11 and exit with status PREEMPTED; resumed, the
    run ends as the uninterrupted one."""
    args = COMMON + ["--out", "out", "--resume", "auto"]
    stopped = run_script(args, tmp_path, nproc=2, check=False, env=dict(SIGNAL_AT_STEP="10:SIGTERM:1"))
    assert stopped.returncode != 0 and f"exitcode  : {distributed.PREEMPTED}" in stopped.stderr, stopped.stderr[-3000:]
    assert "SIGTERM: stopped after step 11" in stopped.stdout
    ckpt = nothing_half_written(tmp_path / "out")
    assert ckpt["step"] == 11 and len(ckpt["rng"]) == 2
    resumed = run_script(args, tmp_path, nproc=2)
    assert "resumed from out/standin/ckpt.pt at step 11 (2 rank(s) then, 2 now)" in resumed.stdout
    assert_same_checkpoint(straight_two_ranks, load(tmp_path / "out" / "standin" / "ckpt.pt"))


def test_peer_failure_names_collective_errors_only():
    """gloo's errors (plain RuntimeError naming its transport) and c10d's DistError become one line; any other
    RuntimeError is left alone (its traceback is the message)."""
    timeout = timedelta(seconds=7)
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:4485. This is typically caused by a remote worker crashing. GLHF!")
    line = distributed.peer_failure(gloo, timeout)
    assert line.endswith("within --pg-timeout 7 s (Connection closed by peer [127.0.0.1]:4485)"), line
    assert "\n" not in line
    assert distributed.peer_failure(dist.DistStoreError("wait timeout after 7000ms"), timeout)
    assert distributed.peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), timeout) is None


# ---------------------------------------------------------------------------------------------
# Many nodes: every rank continues the same run; SIGTERM anywhere; a write killed midway


@pytest.mark.slow
def test_ranks_that_read_different_checkpoints_stop_together_and_equal_copies_resume_together(tmp_path,
                                                                                            straight_two_ranks):
    """--out on each node's own disk (OUT_OF_RANK: rank 1 reads another folder): rank 0 holds the checkpoint of
    step 8, rank 1 none. Both stop at once, in one line naming rank 1 and the steps; with a copy of the folder on
    rank 1's disk they resume together and end as the uninterrupted run."""
    args = COMMON + ["--out", "out", "--resume", "auto"]
    stopped = run_script(args, tmp_path, nproc=2, check=False, env=dict(SIGKILL_AT_STEP="10"))
    assert nothing_half_written(tmp_path / "out")["step"] == 8, stopped.stderr[-2000:]
    (tmp_path / "disk1").mkdir()
    apart = run_script(args, tmp_path, nproc=2, check=False, env=dict(OUT_OF_RANK="1:disk1"))
    assert apart.returncode != 0
    assert ("ranks 1 would continue another run than rank 0 (standin at step 8 on rank 0, from "
            "step 0 on rank 1)") in apart.stderr, apart.stderr[-3000:]
    assert not (tmp_path / "disk1" / "standin").exists()  # nothing trained, nothing written
    shutil.copytree(tmp_path / "out", tmp_path / "disk1", dirs_exist_ok=True)
    together = run_script(args, tmp_path, nproc=2, env=dict(OUT_OF_RANK="1:disk1"))
    assert "resumed from out/standin/ckpt.pt at step 8 (2 rank(s) then, 2 now)" in together.stdout
    assert_same_checkpoint(straight_two_ranks, load(tmp_path / "out" / "standin" / "ckpt.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("phase, hook", [("evaluation", "SIGNAL_AT_PREDICT"), ("rendering", "SIGNAL_AT_SAMPLE")])
def test_sigterm_during_evaluation_or_rendering_ends_every_rank_at_once_with_nothing_half_written(
        tmp_path, straight_two_ranks, phase, hook):
    """SIGTERM to both ranks in the middle of an evaluation (the one at step 12, after its checkpoint) or of the
    training set's rendering (nothing to save): every rank exits with PREEMPTED within the 30 s grace torchrun
    and SLURM give, no temporary file is left, and the same command continues to the uninterrupted run's end."""
    args = COMMON + ["--out", "out", "--resume", "auto", "--eval-every", "12"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "test_train.py"), "--model", "standin", "--device", "cpu"] + args
    when = "1:SIGTERM" if phase == "evaluation" else "3:SIGTERM"  # the first predict call; the third sample drawn
    returncode, stdout, stderr, seconds = watch(command, tmp_path, {hook: when}, until="SIGTERM now")
    assert returncode != 0 and stderr.count(f"exitcode  : {distributed.PREEMPTED}") == 2, stderr[-3000:]
    assert seconds < 30, seconds
    left = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert not left, left
    if phase == "evaluation":
        assert "eval at step 12" not in stdout and load(tmp_path / "out" / "standin" / "ckpt.pt")["step"] == 12
    else:
        assert not (tmp_path / "out" / "standin" / "ckpt.pt").exists() and "step     1/" not in stdout
    resumed = run_script(args, tmp_path, nproc=2)
    assert ("resumed from out/standin/ckpt.pt at step 12" in resumed.stdout) == (phase == "evaluation")
    assert_same_checkpoint(straight_two_ranks, load(tmp_path / "out" / "standin" / "ckpt.pt"))


def test_a_checkpoint_write_killed_midway_leaves_the_last_whole_one_and_resume_continues_it(tmp_path):
    """SIGKILL halfway through writing step 8's checkpoint: ckpt.pt is still step 4's, whole; --resume auto
    sweeps the half-written temporary file and continues from step 4 to the uninterrupted run's end."""
    args = COMMON + ["--out", "out", "--resume", "auto"]
    killed = run_script(args, tmp_path, check=False, env=dict(SIGKILL_IN_CHECKPOINT="8"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name.startswith("ckpt.pt.") for p in (tmp_path / "out" / "standin").glob("*.tmp")] == [True]
    assert load(tmp_path / "out" / "standin" / "ckpt.pt")["step"] == 4
    resumed = run_script(args, tmp_path)
    assert "resumed from out/standin/ckpt.pt at step 4" in resumed.stdout
    assert nothing_half_written(tmp_path / "out")["step"] == 20
    run_script(COMMON + ["--out", "straight"], tmp_path)
    assert_same_checkpoint(*(load(tmp_path / d / "standin" / "ckpt.pt") for d in ("straight", "out")))


# ---------------------------------------------------------------------------------------------
# Every paper: each TINY stage SIGKILLed mid-run and resumed on two ranks ends as an uninterrupted run (one process:
# tests/test_train.py's stand-in resume tests; a paper's stage does not know how many ranks run it)


# 7 steps of global batch 4, checkpoints at 3 and 6: killed at step 5, a run resumes from step 3
PAPER_RUN = ["--max-steps", "7", "--ckpt-every", "3", "--log-every", "1", "--train-samples", "8", "--eval-samples", "4",
             "--set", "batch_size=4"]
PAPER_SETS = {"genhmr": ["--set", "refine_iterations=2"]}  # Eq. 4's refinement: 2 of its 20 steps


@pytest.fixture(scope="module")
def finished_parents(tmp_path_factory):
    """OUT with every stage a paper's last stages start from finished (PAPER_RUN, one process) and the rendered
    sets: each test copies in the ones its stage starts from, so its two runs start from the same files."""
    folder = tmp_path_factory.mktemp("parents")
    for last in ("genhmr_prior", "hmr_adapter_bases"):  # genhmr_prior trains the tokenizer and the backbone first
        run_script(PAPER_RUN + ["--out", "out"], folder, model=last)
    return folder / "out"


def resume_cases():
    """(stage, ranks) for every stage of every paper, on two ranks."""
    return [pytest.param(stage, nproc, id=f"{stage}-{nproc}rank", marks=pytest.mark.slow)
            for stage in ("simplehand", "genhmr_tokenizer", "genhmr_backbone", "genhmr_prior", "genhmr",
                          "hmr_adapter_bases", "hmr_adapter") for nproc in (2,)]


@pytest.mark.parametrize("stage, nproc", resume_cases())
def test_every_papers_stage_resumes_after_sigkill_bitwise(tmp_path, request, stage, nproc):
    """The paper's TINY stage (its parents finished and frozen, as a chain trains them), killed by SIGKILL at step 5
    of 7 on every rank and resumed from the checkpoint of step 3, ends with the uninterrupted run's checkpoint: every
    key both ways, weights and buffers (BatchNorm statistics, GenHMR's EMA codebook) bit for bit, the AdamW state
    and param_groups, each rank's RNG and the data position (checkpoints.py's keys: no scaler, no scheduler)."""
    args, parents = PAPER_RUN + PAPER_SETS.get(stage, []), train.lineage(stage)[1:]
    for out in ("straight", "killed") if parents else ():
        finished = request.getfixturevalue("finished_parents")  # trained once, for the stages that need it
        for name in parents + ["cache"]:  # the parents' files, byte for byte, and the rendered sets
            shutil.copytree(finished / name, tmp_path / out / name)
    run_script(args + ["--out", "straight"], tmp_path, nproc=nproc, model=stage)
    resumed = kill_and_resume(args + ["--out", "killed"], tmp_path, kill_at=5, nproc=nproc, model=stage)
    assert f"resumed from killed/{stage}/ckpt.pt at step 3 ({nproc} rank(s) then, {nproc} now)" in resumed.stdout
    assert "== stage" not in resumed.stdout  # the parents were reused as trained, not trained again
    straight, killed = (load(tmp_path / out / stage / "ckpt.pt") for out in ("straight", "killed"))
    assert straight["step"] == 7 and len(straight["rng"]) == nproc
    assert_same_checkpoint(straight, killed)
