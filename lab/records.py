"""lab/records.py: one committed record per default run, the single source of every figure the README, docs/ and the
notebooks quote (docs/runs/NAME.json).

    python -m lab.records run NAME -- torchrun --standalone --nproc_per_node=2 train.py --model simplehand
    python -m lab.records write NAME --wall-s 803 [--started T] [--commit C] -- torchrun ... train.py ... --out out

`run` times the command and then writes the record; `write` records a run that has finished (its wall time given).
A record holds the command, the code's commit (and whether the tree had uncommitted changes), the machine, the
start and end, the wall time and, for each stage of the chain --model trains, that stage's metrics.json as
train.py wrote it (its metrics, its baseline's, its training history). `load(NAME)` reads one back;
`figure(record, stage, key)` is one metric.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

from lab.files import atomic_write

RUNS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "runs"


def load(name, folder=RUNS):
    """The record docs/runs/NAME.json (a dict)."""
    return json.loads((pathlib.Path(folder) / f"{name}.json").read_text())


def figure(record, stage, key):
    """A metric of a record: stage's metrics.json value at `key` ("a/b/c" walks nested dicts, as train.py names
    them), e.g. figure(load("simplehand"), "simplehand", "pa_mpjpe_mm")."""
    value = record["stages"][stage]
    for part in key.split("/") if key not in value else [key]:
        value = value[part]
    return value


def fail(message):
    """One line on stderr and exit status 2 (bad input), as argparse does."""
    print(f"python -m lab.records: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _git(*args):
    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=RUNS.parent.parent)
    return out.stdout.strip() if out.returncode == 0 else None


def _option(command, flag, default):
    """The value of `flag` in an argv list (`--flag V` or `--flag=V`)."""
    for i, word in enumerate(command):
        if word == flag and i + 1 < len(command):
            return command[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return default


def machine():
    import torch
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # the CPU's model name, where Linux tells it
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return dict(platform=platform.platform(), processor=cpu,
                cpus=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def code_state():
    """(HEAD, whether the tree has uncommitted changes to tracked files): the code a run starts from."""
    return _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))


def write(name, command, wall_s, started, commit=None, note=None, folder=RUNS, state=None):
    """Write docs/runs/NAME.json (atomically) for the finished run of `command` (argv list); commit: the code's
    commit when the run was made from another (default: this tree's HEAD, with its uncommitted changes noted);
    state: `code_state()` when the run started (`run` takes it then, so a commit made during the run is not
    named)."""
    import train  # the chain of stages --model trains
    model, out = _option(command, "--model", None), _option(command, "--out", "out")
    if model not in train.MODELS:
        fail(f"the command names no train.py --model (got {model!r})")
    now = datetime.datetime.now(datetime.timezone.utc)
    finished = (datetime.datetime.fromisoformat(started) + datetime.timedelta(seconds=wall_s) if started else now)
    finished = finished.isoformat(timespec="seconds")
    stages = {}
    for stage in train.lineage(model)[::-1]:  # oldest first
        path = pathlib.Path(out) / stage / "metrics.json"
        if not path.is_file():
            fail(f"{path} is missing: did the run finish?")
        stages[stage] = json.loads(path.read_text())
    head, dirty = state or code_state()
    record = dict(name=name, command=shlex.join(command), commit=commit or head,
                  uncommitted_changes=None if commit else dirty,
                  machine=machine(), started=started, wall_s=round(wall_s, 1), finished=finished, stages=stages)
    if note:
        record["note"] = note
    path = pathlib.Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.records",
                                description="Run and record a default run (docs/runs/NAME.json).")
    p.add_argument("action", choices=("run", "write"))
    p.add_argument("name", help="the record's name (docs/runs/NAME.json)")
    p.add_argument("--wall-s", type=float, help="write: the run's measured wall time in seconds")
    p.add_argument("--started", help="write: when the run started (ISO 8601)")
    p.add_argument("--commit", help="write: the commit the run's code was at (default: HEAD)")
    p.add_argument("--note", help="write: a sentence on how the run was made, kept in the record")
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv[:argv.index("--") if "--" in argv else len(argv)]):
        p.parse_args(["--help"])
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        p.error("give the train.py command after --, e.g. -- torchrun --standalone --nproc_per_node=2 train.py ...")
    split = argv.index("--")
    args, command = p.parse_args(argv[:split]), argv[split + 1:]
    if args.action == "write":
        if args.wall_s is None or not args.wall_s > 0:
            p.error("write needs --wall-s, the run's wall time in seconds (> 0)")
        return write(args.name, command, args.wall_s, args.started, args.commit, args.note)
    started, state = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), code_state()
    t0 = time.time()
    status = subprocess.run(command).returncode
    if status:
        print(f"python -m lab.records: the command exited with status {status}; nothing recorded", file=sys.stderr)
        raise SystemExit(status)
    write(args.name, command, time.time() - t0, started, state=state)


if __name__ == "__main__":
    main()
