"""The torchrun block of train.py and lab/ablate.py (`setup`, `run_job`, `fail`): the ranks, a process group that
forms on every attempt of a job torchrun restarts and gives up after a stated timeout, the collectives the trainer
issues, preemption, and each rank's share of the data stream (`StepBatches`).

    torchrun --standalone --nproc_per_node=2 --max-restarts=3 train.py --model NAME --resume auto

1. Restarts. torchrun's agent keeps ONE TCPStore for every attempt of a job (TORCHELASTIC_USE_AGENT_STORE=True,
   the same MASTER_PORT), and init_process_group's keys (gloo's peer addresses, NCCL's unique id) do not name the
   attempt: a restarted worker may read a dead worker's address and fail, or wait in gloo's connect for minutes.
   `init_process_group` forms the group in a namespace of that store which rank 0 draws afresh on every start
   (TORCHELASTIC_RESTART_COUNT cannot name it: each node's agent counts its own restarts).
2. A dead peer. The group and its store give up after `timeout` (gloo; NCCL through its watchdog, which torchrun
   enables with TORCH_NCCL_ASYNC_ERROR_HANDLING); `peer_failure` turns the error into one line, the rank exits, and
   torchrun restarts the group or fails the job.
3. Preemption. SIGTERM (what SLURM and Kubernetes send before SIGKILL; torchrun passes it on to its workers) sets
   a flag. Inside a training step (`steps_finish`) nothing else happens: the loop asks `preempted` after the step,
   all ranks together, writes that step's checkpoint and exits with status PREEMPTED. Anywhere else (rendering,
   evaluation, loading, the handshake) nothing is left to save, so the handler raises `Preempted` at once; a rank
   whose peer left that way sees its collective fail and, having had SIGTERM too, also exits with PREEMPTED.
docs/reference.md ("Failures, restarts and preemption") has the cause in torch's code and the measured times.
"""

import contextlib
import dataclasses
import gc
import os
import re
import signal
import sys
import threading
import time
import uuid
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

PREEMPTED = 143  # exit status after SIGTERM: 128 + 15, what a shell reports for a process that SIGTERM ended
DIVERGED = 3  # exit status of a run whose loss or gradient norm turned non-finite (train.py keeps its last checkpoint)


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the W ranks; collectives that are no-ops for one process."""
    rank: int
    world_size: int
    device: torch.device
    cpu_group: object = None  # the gloo group `preempted` reduces over (None: the default group, already gloo)

    @property
    def master(self):
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def print0(self, *args):
        if self.master:
            print(*args, flush=True)


def init_process_group(backend, timeout):
    """The default process group of the ranks torchrun started (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), formed
    in a namespace of torchrun's store that no earlier attempt used; every collective gives up after `timeout`
    (a timedelta). Returns the process group `preempted` reduces over."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))  # torchrun's store (or one that rank 0 hosts)
    store.set_timeout(timeout)
    if rank == 0:  # 1. draw a name and publish it; 2. welcome each rank that wrote its token under that name
        name = uuid.uuid4().hex
        store.set("attempt", name)
        fresh = dist.PrefixStore(f"attempt/{name}", store)
        for r in range(1, world_size):
            fresh.set(f"welcome/{fresh.get(f'hello/{r}').decode()}", "")  # get waits for rank r, up to `timeout`
    else:  # 1. read the published name (a dead attempt's until rank 0 publishes), 2. write a token no one else has
        token, deadline = uuid.uuid4().hex, time.monotonic() + timeout.total_seconds()
        while True:
            fresh = dist.PrefixStore(f"attempt/{store.get('attempt').decode()}", store)
            fresh.set(f"hello/{rank}", token)
            if appears(fresh, f"welcome/{token}", seconds=1):  # 3. a dead attempt's name never answers: read again
                break
            if time.monotonic() > deadline:
                raise dist.DistStoreError(f"rank 0 of this attempt did not answer within {timeout}")
    dist.init_process_group(backend, store=fresh, rank=rank, world_size=world_size, timeout=timeout)
    # the SIGTERM flag goes through gloo on the CPU: an NCCL reduction would wait for the GPU after every step
    return dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None


def appears(store, key, seconds):
    """Whether `key` is in `store` within `seconds` (polled: a store's own wait prints a warning when it times out)."""
    end = time.monotonic() + seconds
    while not store.check([key]):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def peer_failure(error, timeout):
    """One line naming a failed collective, or None when `error` is not one. gloo raises RuntimeError with its
    transport's message ("Connection closed by peer", "Timed out waiting 600000ms for recv"), c10d a DistError."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if not (isinstance(error, dist.DistError) or "gloo" in text.lower() or "pair closure" in text):
        return None
    text = re.sub(r"^\[[^\]]*\] ", "", text).split(". This is")[0]  # without gloo's source file and its advice
    rank = os.environ.get("RANK", "0")
    return (f"rank {rank}: a collective failed: another rank died or did not answer within --pg-timeout "
            f"{timeout.total_seconds():.0f} s ({text})")


# ---------------------------------------------------------------------------------------------
# Preemption: SIGTERM noted, acted on at a step boundary by every rank together

_sigterm = threading.Event()
_in_step = threading.Event()  # set while a training step runs: SIGTERM waits for its end and its checkpoint


class Preempted(BaseException):
    """SIGTERM: raised by the handler outside a step, by the training loop after a step's checkpoint (exit status
    PREEMPTED). A BaseException, as KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


def _on_sigterm(signum, frame):
    _sigterm.set()
    if not _in_step.is_set():
        raise Preempted


def note_sigterm():
    """From now on SIGTERM stops the process with `Preempted`: at once, or after the training step that runs."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def sigterm_received():
    """Whether SIGTERM reached this process (a failed collective after it is a peer that was preempted too)."""
    return _sigterm.is_set()


@contextlib.contextmanager
def steps_finish():
    """Within this block SIGTERM only sets the flag that `preempted` reads after the step."""
    _in_step.set()
    try:
        yield
    finally:
        _in_step.clear()


def stop_if_preempted():
    """Raise Preempted if SIGTERM came while a step ran and the step's checkpoint is written (before a phase with
    nothing to save, such as an evaluation, which the handler would otherwise interrupt)."""
    if _sigterm.is_set():
        raise Preempted


def ignore_sigterm(worker_id):
    """A DataLoader's worker_init_fn: the worker leaves SIGTERM sent to every process of the job (SLURM, Kubernetes)
    to the main process, which stops and then ends its workers (torch's handler would end the worker at once, and
    the main process with a traceback)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def preempted(ranks):
    """Whether SIGTERM reached any rank: a collective, called by every rank after the same step."""
    flag = torch.tensor([float(_sigterm.is_set())])
    if ranks.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ranks.cpu_group)
    return bool(flag.item())


class Diverged(Exception):
    """Raised by every rank together when a step's loss or gradient norm is not finite (train.py, before the
    optimiser step): its one-line message names the step, the terms and the checkpoint kept; exit status DIVERGED."""


# ---------------------------------------------------------------------------------------------
# The torchrun block of train.py and lab/ablate.py: form the group, run, leave together


def fail(message):
    """Stop with a one-line error (no traceback): the command prints "SCRIPT: error: MESSAGE" on stderr and
    exits with status 2, as argparse does; under torchrun only rank 0 prints it."""
    raise SystemExit(message if int(os.environ.get("RANK", 0)) == 0 else 1)


def command(main, script):
    """Run `main()` as the command `script`: fail()'s one line on stderr with exit status 2 (bad input), as argparse
    does; SIGTERM before the job began (nothing to save) with PREEMPTED."""
    try:
        main()
    except Preempted:
        raise SystemExit(PREEMPTED)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(f"{script}: error: {e.code}", file=sys.stderr)
        raise SystemExit(2)


def setup(args):
    """-> (ddp, Ranks): one process per device when torchrun set RANK, else a single process; args.device
    (auto | cpu | cuda) and args.pg_timeout (seconds) from the command line."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and local_world > torch.cuda.device_count():
        fail(f"{local_world} ranks on this node but {torch.cuda.device_count()} GPU(s): "
             "pass --nproc_per_node <= the GPU count, or --device cpu")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cpu_group = None
    if ddp:  # in a namespace of torchrun's store that no earlier attempt used (section 1)
        cpu_group = init_process_group("nccl" if use_cuda else "gloo", timedelta(seconds=args.pg_timeout))
    # share the cores between the ranks on this machine (2 cores, 2 ranks: one thread each)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    return ddp, Ranks(rank, world_size, device, cpu_group)


def run_job(job, args, own_process, script="train.py"):
    """The torchrun block around `job(ranks)`: form the group, run, leave together. A rank whose collective failed
    says so in one line and exits with status 1, or with PREEMPTED when SIGTERM reached it too (its peer left,
    preempted); SIGTERM ends it with PREEMPTED (section 3); a diverged run with DIVERGED, rank 0 saying why.
    own_process: the command owns the process (it leaves with os._exit; a test calling main() gets SystemExit)."""
    try:
        ddp, ranks = setup(args)
        job(ranks)
        gc.collect()  # a stage's DDP wrapper (train.run_chain)
        if ddp:
            dist.barrier()
            dist.destroy_process_group()
        return
    except Preempted:  # at a step boundary every rank has written its part of the checkpoint
        message, status = None, PREEMPTED
    except Diverged as e:  # every rank, at the same step (rank 0 says why)
        message = str(e) if int(os.environ.get("RANK", 0)) == 0 else None
        status = DIVERGED
    except RuntimeError as e:  # a collective failed: one line, and no clean exit (the group is broken)
        if (message := peer_failure(e, timedelta(seconds=args.pg_timeout))) is None:
            raise
        message = None if sigterm_received() else message
        status = 1 if message is not None else PREEMPTED
    if message is not None:
        print(f"{script}: error: {message}", file=sys.stderr, flush=True)
    if own_process:  # the group's threads can abort the interpreter's teardown (SIGABRT): leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    if dist.is_initialized():
        dist.destroy_process_group()
    raise SystemExit(status)


# ---------------------------------------------------------------------------------------------
# Collectives of the trainer


def any_over_ranks(flags, ranks):
    """[bool]: which of `flags` (a bool tensor, the same length on every rank) is set on any rank (a collective,
    through gloo on the CPU as `preempted`'s)."""
    flags = flags.to("cpu", torch.float32)
    if ranks.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=ranks.cpu_group)
    return flags.bool().tolist()


def mean_over_ranks(values, ranks):
    """Average a list of floats over the ranks (gloo has no AVG: SUM then divide)."""
    t = torch.tensor(values, dtype=torch.float64, device=ranks.device)
    if ranks.world_size > 1:
        dist.all_reduce(t)
    return (t / ranks.world_size).tolist()


def gather_rows(x, n, ranks):
    """Rank r holds rows r, r + W, r + 2W, ... of an n-row tensor; return all n rows, in order, on every rank."""
    W = ranks.world_size
    if W == 1:
        return x
    m = -(-n // W)  # rows per rank after padding
    dtype = x.dtype
    x = torch.cat([x, x.new_zeros(m - len(x), *x.shape[1:])]).to(ranks.device,
                                                                 torch.float64 if dtype == torch.bool else dtype)
    parts = [torch.empty_like(x) for _ in range(W)]
    dist.all_gather(parts, x)
    return torch.stack(parts, 1).flatten(0, 1)[:n].to("cpu", dtype)  # (m, W, ...): row k W + r


# ---------------------------------------------------------------------------------------------
# Each rank's share of the data: a deterministic step -> batch stream (train.py's loader)


class StepBatches(torch.utils.data.Sampler):
    """Rank r's part of the global batches of steps [start, stop), as lists of (epoch, index).

    Sample position p = s B + k (k < B) is index perm_e[p mod N] of epoch e = p div N, where perm_e is
    a permutation seeded by (seed, e). Rank r takes k in [r b, (r + 1) b).
    """

    def __init__(self, num_samples, batch_size, rank, world_size, seed, start, stop):
        self.n, self.batch, self.rank, self.world = num_samples, batch_size, rank, world_size
        self.seed, self.start, self.stop = seed, start, stop
        self.perm_epoch, self.perm = None, None

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        b = self.batch // self.world
        for step in range(self.start, self.stop):
            first = step * self.batch + self.rank * b
            yield [self.lookup(p) for p in range(first, first + b)]

    def lookup(self, position):
        epoch = position // self.n
        if epoch != self.perm_epoch:
            self.perm_epoch, self.perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return epoch, int(self.perm[position % self.n])


class EpochIndexed(torch.utils.data.Dataset):
    """Reads the (epoch, index) keys of StepBatches, so augmentation follows the data position even
    inside DataLoader workers (which never see a `set_epoch` called in the main process)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
