"""Every training stage of the three papers averages its gradients over the ranks, as train.py runs it.

Two CPU processes (torch.multiprocessing spawn, gloo) run train.run_stage for stages of train.MODELS at their
"tiny" presets, one optimiser step on a global batch of 2 (one sample a rank, a different one: StepBatches), each
stage twice: as train.py wraps it (DDP) and with the wrapper taken away (each rank steps alone on its own sample).
After the DDP step the two ranks hold the same weights; alone they do not, so the test can fail (a stage whose step
bypasses the wrapper, or a trainer that forgets it, leaves the ranks apart). The stages a stage starts from are
built at their tiny presets in each process (same seed: the same weights on both ranks) instead of read from
checkpoints. The same processes record the optimiser run_stage built (each group's members, learning rate and
weight decay, checked against train.param_groups and the schedule) and gather rows across the two real ranks.
The default run takes the cheapest stage; `pytest -m slow` the other six.
"""
import os
import socket
import threading
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train
from lab import checkpoints, configs, distributed

STAGES = list(train.MODELS)
BATCH = 2  # global: one sample a rank
GATHER_ROWS = 5  # odd: rank 0 holds rows 0, 2, 4 and rank 1 rows 1, 3 (padded to 3 for the collective)


def stage_config(name):
    """The stage's tiny preset for one full-rate step: no warm-up (a first step at lr / warmup_steps moves the
    weights too little to tell ranks apart by much), one step of the global batch BATCH; HMR-Adapter's people
    rendered at the bases' body input (128 x 96), a quarter of the pixels."""
    smaller = {"image_size": (128, 96)} if name.startswith("hmr_adapter") else {}  # the bases' body input: no resize
    return configs.with_fields(train.MODELS[name].paper.CONFIGS["tiny"], batch_size=BATCH, max_steps=1,
                               warmup_steps=0, **smaller)


def build_parent(name):
    """The trained model stage `name` starts from, built at the tiny presets of its lineage (None for a first stage):
    frozen and in eval mode as train.trained_model gives it; a pose tokenizer's codebook initialised from a seeded
    draw (training initialises it from its first batch)."""
    torch.manual_seed(0)
    model = None
    for stage in train.lineage(name)[:0:-1]:
        paper = train.MODELS[stage].paper
        model = paper.build_model(paper.CONFIGS["tiny"], model)
        quantizer = getattr(model, "quantizer", None)
        if quantizer is not None and not bool(quantizer.initialised):
            quantizer.initialise(torch.randn(4 * quantizer.num_codes, quantizer.dim))
        model.eval().requires_grad_(False)
    return model


class Captured(Exception):
    """Raised by the stand-in for the final evaluation once a rank has written what it holds after the step."""


def _worker(rank, world, port, out, stages):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    parents = {name: build_parent(name) for name in stages}  # before the group: no collective in their building
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ranks = distributed.Ranks(rank, world, torch.device("cpu"))
    args = types.SimpleNamespace(out=out, cache=os.path.join(out, "cache"), data="synthetic", seed=0,
                                 train_samples=BATCH, eval_samples=2, workers=0, ckpt_every=0, eval_every=0,
                                 log_every=0, set=[], config="tiny", max_steps=None)
    optimisers = []

    class RecordedAdamW(torch.optim.AdamW):  # train.run_stage's optimiser, recorded
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            optimisers.append(self)

    real_adamw, real_ddp = torch.optim.AdamW, train.DDP
    torch.optim.AdamW = RecordedAdamW
    train.trained_model = lambda name, args, device: (parents[stage], None)  # the stage run now
    checkpoints.file_hash = lambda path: "0" * 64  # the parents have no checkpoint file here

    def capture(stage_, model, cfg, eval_set, baseline, args_, ranks_, train_set=None):
        names = {id(p): n for n, p in model.named_parameters()}
        opt = optimisers[-1]
        torch.save(dict(
            weights={n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            frozen=sorted(n for n, p in model.named_parameters() if not p.requires_grad),
            groups=[dict(lr=g["lr"], weight_decay=g["weight_decay"], params=[names[id(p)] for p in g["params"]])
                    for g in opt.param_groups]),
            os.path.join(out, f"{stage}-{mode}-rank{rank}.pt"))
        raise Captured

    train.evaluate = capture
    try:
        for stage in stages:
            for mode in ("ddp", "alone"):
                train.DDP = real_ddp if mode == "ddp" else (lambda model, **kwargs: model)
                try:
                    train.run_stage(stage, "tiny", stage_config(stage), None, args, ranks)
                except Captured:
                    pass
                dist.barrier()
        x = torch.arange(rank, GATHER_ROWS, world, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1.0]])
        torch.save(dict(float=distributed.gather_rows(x, GATHER_ROWS, ranks),
                        bool=distributed.gather_rows(x[:, 0] > 1, GATHER_ROWS, ranks)),
                   os.path.join(out, f"gather-rank{rank}.pt"))
        dist.barrier()
    finally:
        torch.optim.AdamW = real_adamw
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(out, stages):
    """Spawn the two ranks over `stages` -> {(stage, mode, rank): what that rank held after the step} (mode "ddp",
    train.py's, or "alone", without the wrapper) and each rank's gathered rows."""
    mp.spawn(_worker, args=(2, _free_port(), out, stages), nprocs=2, join=True)
    load = lambda f: torch.load(os.path.join(out, f), weights_only=True)
    runs = {(s, m, r): load(f"{s}-{m}-rank{r}.pt") for s in stages for m in ("ddp", "alone") for r in (0, 1)}
    return runs, [load(f"gather-rank{r}.pt") for r in (0, 1)]


# the default run: the cheapest stage (no image to render, no parent), which shows the trainer wraps its model; the
# other six with -m slow (two processes rendering every paper's images and loading MANO and SMPL-X: minutes on two
# busy cores)
DEFAULT = ("genhmr_tokenizer",)
SLOW = tuple(s for s in STAGES if s not in DEFAULT)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_two_ranks(str(tmp_path_factory.mktemp("ranks")), DEFAULT)


@pytest.fixture(scope="module")
def two_ranks_slow(tmp_path_factory):
    return run_two_ranks(str(tmp_path_factory.mktemp("ranks_slow")), SLOW)


def differs(a, b):
    return [n for n in a if not torch.equal(a[n], b[n])]


def check_stage(runs, stage):
    ddp = [runs[stage, "ddp", r]["weights"] for r in (0, 1)]
    alone = [runs[stage, "alone", r]["weights"] for r in (0, 1)]
    assert ddp[0] and ddp[0].keys() == ddp[1].keys() == alone[0].keys()
    apart = differs(*ddp)
    assert not apart, f"{stage}: after one DDP step the ranks hold different {apart[:5]}"
    # the control: each rank stepping alone on its own samples ends elsewhere, and not where DDP took it
    assert len(differs(*alone)) > len(ddp[0]) // 2, f"{stage}: the ranks' samples do not tell them apart"
    assert len(differs(ddp[0], alone[0])) > len(ddp[0]) // 2, stage
    # the optimiser train.run_stage built: the paper's groups (train.param_groups), each at its scale of the
    # schedule's rate at step 0 and the recipe's weight decay, no frozen parameter in any
    paper, cfg = train.MODELS[stage].paper, stage_config(stage)
    torch.manual_seed(0)
    model = paper.build_model(cfg, build_parent(stage))
    names = {id(p): n for n, p in model.named_parameters()}
    want = [dict(lr=paper.learning_rate(cfg, 0) * scale, weight_decay=configs.recipe_of(cfg).weight_decay,
                 params=[names[id(p)] for p in params]) for scale, params in train.param_groups(paper, model, cfg)]
    for r in (0, 1):
        got = runs[stage, "ddp", r]["groups"]
        assert [sorted(g["params"]) for g in got] == [sorted(g["params"]) for g in want], stage
        assert [(g["lr"], g["weight_decay"]) for g in got] == [pytest.approx((g["lr"], g["weight_decay"]))
                                                                for g in want], stage
        assert not set(runs[stage, "ddp", r]["frozen"]) & {n for g in got for n in g["params"]}


@pytest.mark.parametrize("stage", DEFAULT)
def test_each_stage_averages_its_gradients_over_two_ranks(two_ranks, stage):
    check_stage(two_ranks[0], stage)


@pytest.mark.slow
@pytest.mark.parametrize("stage", SLOW)
def test_each_other_stage_averages_its_gradients_over_two_ranks(two_ranks_slow, stage):
    check_stage(two_ranks_slow[0], stage)


def test_two_real_ranks_gather_rows_in_order_without_padding(two_ranks):
    """distributed.gather_rows through gloo: 5 rows, rank r holding rows r, r + 2, ...: every rank gets the 5 rows
    in order (no padding row), floats and booleans alike."""
    _, gathered = two_ranks
    want = torch.arange(GATHER_ROWS, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1.0]])
    for g in gathered:
        assert torch.equal(g["float"], want) and torch.equal(g["bool"], want[:, 0] > 1)
        assert g["bool"].dtype == torch.bool


# ---------------------------------------------------------------------------------------------
# Evaluation's gathering for any number of ranks: W threads stand in for the ranks, exchanging through all_gather


class ThreadRanks:
    """W threads as the ranks of a group: all_gather and broadcast between them (torch.distributed's signatures)."""

    def __init__(self, world):
        self.world, self.barrier, self.slots = world, threading.Barrier(world), [None] * world
        self.local = threading.local()

    def all_gather(self, parts, x, group=None):
        self.slots[self.local.rank] = x.clone()
        self.barrier.wait()
        for part, slot in zip(parts, self.slots):
            part.copy_(slot)
        self.barrier.wait()

    def broadcast(self, tensor, src, group=None):
        self.all_gather([torch.empty_like(tensor) for _ in range(self.world)], tensor)

    def run(self, job):
        """job(Ranks) on every thread -> the results by rank (the first error raised again)."""
        results, errors = [None] * self.world, []

        def one(rank):
            self.local.rank = rank
            try:
                results[rank] = job(distributed.Ranks(rank, self.world, torch.device("cpu")))
            except BaseException as e:  # raised again below, on the test's thread
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (7, 4), (8, 4), (4, 4), (9, 2)])
def test_gather_rows_keeps_the_order_and_drops_the_padding(monkeypatch, n, world):
    """Rank r holds rows r, r + W, ... of n (the last ranks one row short when W does not divide n): every rank gets
    the n rows in order, of their dtype, without the zero rows that padded the short ranks."""
    group = ThreadRanks(world)
    monkeypatch.setattr(dist, "all_gather", group.all_gather)
    full = {"long": torch.arange(n) * 10 + 1, "bool": torch.arange(n) % 3 == 0,
            "float": torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(n))}
    results = group.run(lambda ranks: {k: distributed.gather_rows(v[ranks.rank::world], n, ranks)
                                       for k, v in full.items()})
    for got in results:
        for k, v in full.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), (k, world)


@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (10, 4)])
def test_evaluation_scores_every_held_out_sample_once_in_order(monkeypatch, n, world):
    """train.evaluate on W ranks: rank r predicts samples r, r + W, ...; rank 0 scores all n, in the held-out order,
    predictions beside their own labels (a sample's prediction is its index, its label the index too)."""
    group = ThreadRanks(world)
    monkeypatch.setattr(dist, "all_gather", group.all_gather)
    monkeypatch.setattr(dist, "broadcast", group.broadcast)
    held_out = [{"image": torch.full((1,), float(i)), "index": torch.tensor(i), "label": torch.tensor([i, -i])}
                for i in range(n)]
    paper = types.SimpleNamespace(predict=lambda model, batch, cfg: {"index": batch["image"][:, 0].long()})
    stage = train.Stage(paper, data=None, picture=None, baseline=None,
                        metrics=lambda pred, gt: {"wrong": float((pred["index"] != gt["index"]).sum())})
    args = types.SimpleNamespace(workers=0)
    cfg = types.SimpleNamespace(batch_size=4)
    monkeypatch.setattr(train, "recipe_of", lambda c: c)
    results = group.run(lambda ranks: train.evaluate(stage, torch.nn.Identity(), cfg, held_out, None, args, ranks))
    scores, pred, gt = results[0]
    assert scores == {"wrong": 0.0} and all(r == (None, None, None) for r in results[1:])
    assert torch.equal(pred["index"], torch.arange(n)) and torch.equal(gt["index"], torch.arange(n))
    assert torch.equal(gt["label"], torch.stack([torch.arange(n), -torch.arange(n)], 1)) and "image" not in gt
