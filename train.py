"""Train and evaluate any paper's stages with plain PyTorch DDP, on one CPU process or many GPUs.

    python train.py --model NAME                                      # one process; NAME: a row of MODELS
    torchrun --standalone --nproc_per_node=2 train.py --model NAME    # DDP: gloo on CPU, NCCL on GPU
    python train.py --model NAME --ablation TABLE                     # a paper's ablation table, row by row

With no other flag this is the demo: the stage's CPU config ("tiny") on the synthetic data of
data.py, a held-out evaluation next to a constant baseline scored by the same metrics,
`OUT/<stage>/metrics.json` and `OUT/<stage>/predictions.png` (OUT = out). The file reads top to
bottom like nanoGPT's train.py: the stage table, helpers (config overrides, data order, checkpoints,
evaluation), then `main`: arguments -> torchrun block -> each stage: data -> model and optimiser ->
resume -> training loop -> final report. This script knows no paper: it speaks the protocol below.

The protocol a paper offers (a module, or any object with these attributes)
- `CONFIGS`: {name: config dataclass}. "tiny" runs on two CPU cores; paper presets carry the paper's
  numbers. The trainer reads these fields: `batch_size` (the GLOBAL batch), `max_steps`, `lr`,
  `weight_decay`, `grad_clip` (max gradient norm, 0 = off), `amp` (bf16 autocast on CUDA), and
  the fields a stage's `data_fields` names (e.g. `image_size`). `--set key=value` overrides fields.
- `build_model(cfg, parent)` -> nn.Module. `parent` is the trained model of the stage this one
  starts from (its row's `starts_from`, e.g. a frozen pose tokenizer or frozen base networks), or
  None. The paper freezes what it must (`requires_grad_(False)`); the optimiser takes only the
  parameters that still require gradients, and a checkpoint holds only the stage's own state: the
  tensors it shares with `parent` come back from the parent's checkpoint.
- `training_loss(model, batch, cfg, step)` -> (loss, {name: scalar tensor}): one forward through
  `model(...)` (under DDP `model` is the wrapper, so call it, not its submodules), the total loss and
  its terms for the log. `step` is the optimiser step about to be taken (a schedule inside the loss,
  such as a temperature, reads it); the loss changes no state.
- `predict(model, batch, cfg)` -> {key: (b, ...)}: per-sample predictions, called under no_grad in
  eval mode (an iterative inference runs here), in the units of the data's labels. Metrics whose
  names start with "table_" are report-only rows (ablation tables): metrics.json, not the log.
- `learning_rate(cfg, step)` -> float: a pure function of the step (the whole scheduler state).
- optional `ABLATIONS`: {"table5": the paper's ablation table as data}, run by `--ablation table5` (see the
  "Ablations" section below for its keys): each row's config overrides beside the paper's figures.
- optional `diagnostics(model, cfg, train_labels)` -> a callable batch -> {key: (b, ...)}: figures that only a
  table or a diagnostic needs (report-only "table_" rows, probes of what the model learned), computed at the
  stage's final evaluation only, beside `predict`'s, under no_grad in eval mode. `train_labels`: {key: (n, ...)}
  of the training set without images (`data.labels`), for yardsticks fitted on the training data.
- optional `param_groups(model, cfg)` -> [(lr_scale, [parameters]), ...]: parts that train at
  their own rate, lr_scale x learning_rate(cfg, step) (e.g. two adapters that a paper trains apart).
  Together the groups must hold every parameter that requires gradients, each once. Without it, one
  group at scale 1.
- optional `check_inputs(cfg, kind, path)`: raises FileNotFoundError or ValueError, its first line
  naming what is missing (an environment variable, a file the config names), for an input the stage
  will read besides --data's own files. Called for --model and every stage it starts from, with the
  config each will be built with and --data's KIND and PATH, before the first stage trains.

A stage (one row of MODELS) wires a paper to: its `data(kind, path, split, cfg, seed, n)` (a
Dataset of dicts, data.py's key contract), `metrics(pred, gt)` -> {name: float} (the first name is
the headline), `baseline(labels)` -> a callable gt -> constant prediction (fitted on training
labels, scored by the same `metrics`), `picture(path, eval_set, pred, gt)` and `starts_from`: the
stage whose final checkpoint it builds on. `--model X` first trains the stages X starts from whose
checkpoints are missing or unfinished (resuming them), then X. Adding a paper is one row per stage.

Conventions
- `cfg.batch_size` is the GLOBAL batch B. Each of the W ranks takes b = B / W samples of every step's
  batch; the loss is a mean over the rank's samples and DDP averages the gradients, so one step on
  W ranks equals one step of a single process on all B samples (tests/test_train.py checks it).
  This holds for models without batch statistics; BatchNorm would need SyncBatchNorm (GPU only).
- Data order is a pure function of (seed, step): the stream of sample positions is the concatenation
  of per-epoch permutations of the N training indices, permutation e seeded by (seed, e); step s
  takes positions [s B, (s + 1) B) and rank r the r-th slice of b. The datasets derive their own
  randomness (augmentation) from (seed, epoch, index). So the global batch of a step does not depend
  on W, and a resumed run sees exactly the samples an uninterrupted run would.
- Global RNGs (torch, numpy, python, cuda) are seeded with `seed` to build the model (identical on
  every rank) and then with `seed + rank`; their states are saved per rank in the checkpoint.
- Synthetic data is rendered once into `OUT/cache/*.pt` (images as uint8, like JPEG datasets),
  every rank rendering its share, and read back memory-mapped; real data is read on the fly.
- Evaluation covers the whole held-out split: rank r predicts samples r, r + W, ..., the ranks
  gather the predictions, rank 0 computes the metrics, for the model and for the baseline.
- On CUDA the model and 4D inputs are channels_last (measured on an H100 for CNN backbones: 1.8-2.1x the samples/s).

Outputs in OUT/<stage>: `ckpt.pt` (every --ckpt-every steps and at the end, written atomically),
`metrics.json` (flat: its metrics, the baseline's as baseline_*, those of the stages it starts from,
`metric_names` listing them, then the run's facts and history), `predictions.png`; synthetic sets
in OUT/cache.

Symbols: B global batch, b = B / W per-rank batch, W world size (number of ranks), r rank,
N training samples, s step, e epoch.
"""

import argparse
import dataclasses
import functools
import gc
import hashlib
import inspect
import json
import os
import pathlib
import random
import sys
import time
import typing
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bodymodels
import data
import genhmr
import hmr_adapter
import metrics
import plots
import render
import simplehand
import standins
import synthetic


# ---------------------------------------------------------------------------------------------
# The stages this script trains: one row each. A new paper adds its rows.


@dataclasses.dataclass(frozen=True)
class Stage:
    paper: typing.Any  # the paper module (or object) offering the protocol of the docstring
    data: typing.Callable  # (kind, path, split, cfg, seed, n) -> Dataset of dicts
    metrics: typing.Callable  # (pred, gt) -> {name: float}; the first is the headline
    baseline: typing.Callable  # (labels) -> callable gt -> constant prediction
    picture: typing.Callable  # (path, eval_set, pred, gt) -> writes a PNG
    starts_from: typing.Optional[str] = None  # the row whose final checkpoint build_model gets as parent
    data_kinds: tuple = ("synthetic",)  # --data KIND[:PATH] this stage reads; "synthetic" takes no path
    data_fields: tuple = ("image_size",)  # config fields the data depends on (part of the cache key)
    train_samples: int = 16384  # synthetic training set size (rendered once)
    eval_samples: int = 512  # synthetic held-out set size


# GenHMR's stages also read 4D-Humans' evaluation .npz: hmr2:FILE.npz (train and score on it) or
# hmr2:TRAIN.npz,EVAL.npz; the tokenizer learns the file's SMPL poses (data.HMR2Poses), the image stages
# its crops (data.HMR2Npz), scored by the benchmarks' protocol (metrics.hmr2_protocol, $HMR_J_REGRESSOR)
BODY_KINDS = ("synthetic", "ambiguous", "hmr2")  # ambiguous: data.AmbiguousBodies, UGS's controlled experiment
# HMR-Adapter's stages also read whole bodies (EHF, ARCTIC) in data.WholeBodyNpz's format: wholebody:FILE.npz
# (train and score on it: the format gives every key the losses read) or wholebody:TRAIN.npz,EVAL.npz; scored
# by Table 1's protocol (hmr_adapter.evaluation_metrics; the face on $HMR_FLAME_VERTEX_IDS when set)
WHOLEBODY_KINDS = ("synthetic", "wholebody")
# the kinds whose PATH is one file or TRAIN,EVAL files (not a dataset's root folder): what each file holds
FILE_KINDS = {"hmr2": "a 4D-Humans evaluation .npz", "wholebody": "a whole-body .npz (data.WholeBodyNpz)"}


MODELS = {
    "simplehand": Stage(simplehand, data=synthetic.hand_dataset, metrics=metrics.freihand_metrics,
                        baseline=metrics.MeanShapeBaseline, picture=plots.draw_hand_predictions,
                        data_kinds=("synthetic", "freihand", "npz")),
    "genhmr_tokenizer": Stage(genhmr.TOKENIZER, data=synthetic.body_pose_dataset, metrics=metrics.tokenizer_metrics,
                              baseline=functools.partial(metrics.MeanPoseBaseline, own_shape=True),
                              picture=plots.draw_pose_reconstructions, data_fields=(), train_samples=8192,
                              data_kinds=BODY_KINDS),
    "genhmr_backbone": Stage(genhmr.BACKBONE, data=synthetic.body_dataset, metrics=metrics.body_metrics,
                             baseline=functools.partial(metrics.MeanPoseBaseline, prefixes=("regression_",)),
                             picture=functools.partial(plots.draw_body_predictions, prefix="regression_"),
                             starts_from="genhmr_tokenizer", train_samples=16384, data_kinds=BODY_KINDS),
    "genhmr": Stage(genhmr, data=synthetic.body_dataset, metrics=metrics.body_metrics,
                    baseline=functools.partial(metrics.MeanPoseBaseline, prefixes=("", "refined_")),
                    picture=plots.draw_body_predictions, starts_from="genhmr_backbone", train_samples=16384,
                    data_kinds=BODY_KINDS),
    "hmr_adapter_bases": Stage(hmr_adapter.BASES, data=synthetic.wholebody_dataset,
                               metrics=hmr_adapter.evaluation_metrics, baseline=hmr_adapter.MeanPoseBaseline,
                               picture=plots.draw_wholebody_predictions, train_samples=8192,
                               data_kinds=WHOLEBODY_KINDS),
    "hmr_adapter": Stage(hmr_adapter, data=synthetic.wholebody_dataset, metrics=hmr_adapter.evaluation_metrics,
                         baseline=hmr_adapter.MeanPoseBaseline, picture=plots.draw_wholebody_predictions,
                         starts_from="hmr_adapter_bases", train_samples=8192, data_kinds=WHOLEBODY_KINDS),
}


def fail(message):
    """Stop with a one-line error (no traceback); under torchrun only rank 0 prints it."""
    raise SystemExit(f"train.py: error: {message}" if int(os.environ.get("RANK", 0)) == 0 else 1)


# ---------------------------------------------------------------------------------------------
# Configuration: the paper's dataclass, overridden field by field with --set key=value


def parse_value(text, kind, current):
    """Parse `text` as a value of the dataclass field type `kind` whose value is now `current`:
    bool, int, float, str, Optional[X], Literal[...], and tuples/lists written "1,2,3" or "(1,2,3)" (items typed
    like the current items when the annotation is a bare `tuple`)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}
        if text.lower() not in words:
            raise ValueError
        return words[text.lower()]
    if origin is typing.Union:  # Optional[X]: "none" or an X
        if text.lower() == "none":
            return None
        return parse_value(text, next(a for a in args if a is not type(None)), current)
    if origin is typing.Literal:
        if text not in map(str, args):
            raise ValueError
        return next(a for a in args if str(a) == text)
    if origin in (tuple, list) or kind in (tuple, list):
        item = args[0] if args else (type(current[0]) if current else str)
        items = text.strip().strip("()[]").split(",")
        return (origin or kind)(parse_value(t.strip(), item, None) for t in items if t.strip())
    return kind(text)


def apply_overrides(cfg, overrides):
    """A copy of the config dataclass `cfg` with each "key=value" of `overrides` parsed by the field's type."""
    types = typing.get_type_hints(type(cfg))
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            fail(f"--set {item!r}: expected KEY=VALUE")
        if key not in types:
            fail(f"--set {key}: {type(cfg).__name__} has no field {key!r}; valid fields: {', '.join(types)}")
        try:
            changes[key] = parse_value(text, types[key], getattr(cfg, key))
        except (ValueError, TypeError):
            fail(f"--set {item}: expected a value of type {getattr(types[key], '__name__', types[key])}")
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as e:  # the config's own checks (__post_init__)
        fail(f"--set {' '.join(overrides)}: {e}")


# ---------------------------------------------------------------------------------------------
# Data: a deterministic step -> batch stream, and synthetic sets rendered once


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


def build_dataset(name, cfg, split, num_samples, args, ranks):
    """The dataset of --data for `split` of stage `name`; synthetic sets are rendered once into OUT/cache."""
    stage = MODELS[name]
    kind, _, path = args.data.partition(":")
    try:
        dataset = stage.data(kind, path, split, cfg, args.seed, num_samples)
    except (FileNotFoundError, ValueError) as e:  # the loaders name the missing file on their first line
        fail(f"--data {args.data}: {str(e).splitlines()[0]}")
    if kind not in data.RENDERED_KINDS:
        return dataset
    # the cache name carries everything the samples depend on: the source of every module a render
    # runs, the body model folder and the data fields; stages reading the same data function with the
    # same fields share it
    fields = {f: getattr(cfg, f) for f in stage.data_fields}
    sources = "".join(inspect.getsource(m) for m in (data, synthetic, render, bodymodels, standins))
    key = sources + repr(fields) + (os.environ.get("HMR_BODY_MODELS") or "")
    version = hashlib.sha1(key.encode()).hexdigest()[:8]
    cache = os.path.join(getattr(args, "cache", None) or os.path.join(args.out, "cache"),
                         f"{stage.data.__name__}-{split}-n{num_samples}-seed{args.seed}-{version}.pt")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    if ranks.master and not os.path.exists(cache):
        print(f"rendering {num_samples} {split} samples into {cache} ({ranks.world_size} rank(s))")
    return data.render_once(dataset, cache, ranks.rank, ranks.world_size, ranks.barrier)


def is_image_key(key):
    """data.py's contract: images are "image" or "<name>_image", (3, H, W) in [0, 1]."""
    return key == "image" or key.endswith("_image")


def to_device(batch, device):
    """The batch on `device`; on CUDA, images in channels_last (the layout cuDNN's fast kernels want)."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return {k: v.to(device, non_blocking=True, memory_format=layout) if v.dim() == 4
            else v.to(device, non_blocking=True)
            for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Distributed helpers: the torchrun block's result, and collectives that are no-ops for one process


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    device: torch.device

    @property
    def master(self):
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def print0(self, *args):
        if self.master:
            print(*args, flush=True)


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
# Checkpoints: one dict of tensors and plain Python values, so torch.load(weights_only=True) reads it


def save_file(obj, path):
    """torch.save, atomically: `path` is never half written (bodymodels.atomic_write)."""
    bodymodels.atomic_write(path, lambda f: torch.save(obj, f))


def rng_state(device):
    """This process's torch, numpy, python (and cuda) RNG states, as tensors and plain values."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = dict(torch=torch.get_rng_state(), numpy=torch.from_numpy(np_keys.astype(np.int64)),
                 numpy_rest=(np_pos, np_has_gauss, np_gauss), python=torch.tensor(py_state),
                 python_rest=(py_version, py_gauss))
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), *state["numpy_rest"]))
    py_version, py_gauss = state["python_rest"]
    random.setstate((py_version, tuple(state["python"].tolist()), py_gauss))
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed):
    torch.manual_seed(seed)  # also seeds every cuda device
    np.random.seed(seed)
    random.seed(seed)


def stage_dir(name, args):
    """OUT/<name>: where stage `name` keeps its checkpoint and reports. An ablation row trains in its own
    folder and reads the stages it reuses from OUT (args.reused: {stage: the folder holding it})."""
    return os.path.join(getattr(args, "reused", {}).get(name, args.out), name)


# Reading them back (here and in demo.py, the notebooks): a stage's checkpoint, checked, and a trained model
# rebuilt from its checkpoint and its parents'. Bad files raise data.InputError naming the file.


def read_train_checkpoint(path, stage):
    """The dict train.py saved at `path` (weights_only), after checking it is a train.py checkpoint
    of stage `stage`; raises InputError naming the file otherwise (missing, truncated, foreign,
    another paper's or another stage's)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise data.InputError(f"{path}: no such checkpoint; train one (torchrun train.py --model {stage}) "
                              "or pass its path")
    try:
        # mmap: a ViT-H file is not read into memory twice
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or foreign file: say which, without the unpickler's traceback
        raise data.InputError(f"{path}: not a readable train.py checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise data.InputError(f"{path}: not a train.py checkpoint "
                         "(expected a dict with 'model_name', 'model', 'config', ...)")
    if ckpt["model_name"] != stage:
        raise data.InputError(f"{path}: holds a {ckpt['model_name']!r} model; expected a checkpoint of stage {stage!r}")
    return ckpt


def own_state(model, parent):
    """The model's state_dict without the tensors it shares with `parent` (train.py saves a stage's
    own state; the parent's weights live in the parent's checkpoint)."""
    shared = {t.data_ptr() for t in parent.state_dict().values() if t.numel()} if parent is not None else set()
    return {k: v for k, v in model.state_dict().items() if not (v.numel() and v.data_ptr() in shared)}


def load_stage_state(model, state, parent, path):
    """Load a train.py checkpoint's own state into `model`: every key the model has must come from
    `state` or be shared with `parent` (whose weights its own checkpoint holds)."""
    own = set(own_state(model, parent))
    unexpected = sorted(set(state) - set(model.state_dict()))
    missing = sorted(own - set(state))
    if missing or unexpected:
        raise data.InputError(f"{path}: the weights do not fit the model: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)


def load_trained(path, chain):
    """A model trained by train.py, rebuilt from its checkpoint and its parents' -> (model in eval
    mode, config). chain: [(stage, CONFIGS, build_model(cfg, parent))] from the first stage to the
    one at `path` (OUT/<stage>/ckpt.pt); a parent's checkpoint is OUT/<parent stage>/ckpt.pt."""
    path = pathlib.Path(path)
    read_train_checkpoint(path, chain[-1][0])  # the file asked for is named first if it is the wrong one
    parent = cfg = None
    for k, (stage, configs, build) in enumerate(chain):
        p = path if k == len(chain) - 1 else path.parent.parent / stage / "ckpt.pt"
        ckpt = read_train_checkpoint(p, stage)
        if ckpt["config_name"] not in configs:
            raise data.InputError(f"{p}: config {ckpt['config_name']!r} is not one of {sorted(configs)}")
        cfg = type(configs[ckpt["config_name"]])(**ckpt["config"])
        model = build(cfg, parent)
        load_stage_state(model, ckpt["model"], parent, p)
        parent = model.eval().requires_grad_(False)
    return parent, cfg


def load_checkpoint(path, name, why="--resume"):
    """The checkpoint dict at `path`, after checking it was written by train.py for stage `name`."""
    try:
        return read_train_checkpoint(path, name)
    except data.InputError as e:
        fail(f"{why}: {e}")


def load_own_state(model, state, parent, path):
    """Load a checkpoint's own state; every key the model has must come from it or from `parent`."""
    try:
        load_stage_state(model, state, parent, path)
    except data.InputError as e:
        fail(str(e))


def restore(ckpt, model, parent, optimizer, ranks, path):
    """Load weights, optimiser state and this rank's RNG streams (when the number of ranks is
    unchanged; the data order never depends on it). Returns (step, history, training seconds)."""
    load_own_state(model, ckpt["model"], parent, path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # the paper's parameter groups changed since the checkpoint was written
        fail(f"{path}: the optimiser state does not fit this model's parameter groups ({e}); use a new --out")
    if len(ckpt["rng"]) == ranks.world_size:
        set_rng_state(ckpt["rng"][ranks.rank], ranks.device)
    return ckpt["step"], ckpt["history"], ckpt["train_time_s"]


def check_same_data(ckpt, args, num_train):
    """Resuming must replay the same data stream: same --data, --seed and number of training samples."""
    saved = {k: ckpt["data"][k] for k in ("data", "seed", "train_samples")}
    given = dict(data=args.data, seed=args.seed, train_samples=num_train)
    if saved != given:
        fail(f"--resume: the checkpoint was trained with {saved}, this run asks for {given}; "
             "pass the same values or use a new --out")


def trained_model(name, args, device):
    """The final model of stage `name`, rebuilt from OUT/<name>/ckpt.pt (its own parents first), frozen."""
    stage = MODELS[name]
    path = os.path.join(stage_dir(name, args), "ckpt.pt")
    ckpt = load_checkpoint(path, name, why=f"stage {name}")
    parent = trained_model(stage.starts_from, args, device) if stage.starts_from else None
    cfg = type(stage.paper.CONFIGS[ckpt["config_name"]])(**ckpt["config"])
    model = stage.paper.build_model(cfg, parent)
    load_own_state(model, ckpt["model"], parent, path)
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(paper, model, cfg, dataset, indices, batch_size, device, workers, diagnose=None):
    """Predictions and labels for dataset[indices], concatenated: ({key: (n, ...)}, {key: (n, ...)}, images left
    out). diagnose: the paper's `diagnostics` callable (final evaluation only), its keys joining the predictions."""
    was_training = model.training
    model.eval()
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         generator=torch.Generator())  # leaves the global RNG alone
    preds, gts = [], []
    for batch in loader:
        batch = to_device(batch, device)
        out = paper.predict(model, batch, cfg)
        if diagnose is not None:
            out.update(diagnose(batch))
        preds.append({k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()})
        gts.append({k: v for k, v in batch.items() if not is_image_key(k)})
    model.train(was_training)
    return ({k: torch.cat([p[k] for p in preds]) for k in preds[0]},
            {k: torch.cat([g[k] for g in gts]) for k in gts[0]})


def evaluate(stage, model, cfg, eval_set, baseline, args, ranks, train_set=None):
    """Metrics over the WHOLE held-out set (rank r predicts samples r, r + W, ...), and the same
    metrics for the constant baseline (unless `baseline` is None). With `train_set` (the final evaluation), the
    paper's optional `diagnostics` join the predictions. Returns (metrics, pred, gt) on rank 0, (None,) * 3
    elsewhere."""
    n, W = len(eval_set), ranks.world_size
    diagnose = None
    if train_set is not None and hasattr(stage.paper, "diagnostics"):
        was_training = model.training
        with torch.no_grad():
            diagnose = stage.paper.diagnostics(model.eval(), cfg, data.labels(train_set))
        model.train(was_training)
    pred, gt = predict(stage.paper, model, cfg, eval_set, range(ranks.rank, n, W), max(1, cfg.batch_size // W),
                       ranks.device, args.workers, diagnose)
    pred = {k: gather_rows(v, n, ranks) for k, v in pred.items()}
    gt = {k: gather_rows(v, n, ranks) for k, v in gt.items()}
    if not ranks.master:
        return None, None, None
    result = dict(stage.metrics(pred, gt))
    if baseline is not None:
        result.update({f"baseline_{k}": v for k, v in stage.metrics(baseline(gt), gt).items()})
    return {k: float(v) for k, v in result.items()}, pred, gt


def format_metrics(result):
    """The evaluation metrics (not the report-only table_* rows: metrics.json has them), then the
    baseline's headline metric when there is one. Names with "/" (a paper's nested tables) print one line per group
    of their first two parts."""
    first = next(iter(result))
    key = ("baseline_" + first if "baseline_" + first in result
           else next((k for k in result if k.startswith("baseline_")), None))
    flat, groups = [], {}
    for k, v in result.items():
        if k.startswith(("baseline_", "table_")):
            continue
        parts = k.split("/", 2)
        if len(parts) < 3:
            flat.append(f"{k} {v:.2f}")
        else:
            groups.setdefault("/".join(parts[:2]), []).append(f"{parts[2]} {v:.2f}")
    lines = [" | ".join(flat + ([f"baseline {key[len('baseline_'):]} {result[key]:.2f}"] if key else []))]
    return "\n  ".join(lines + [f"{g}: " + " | ".join(items) for g, items in groups.items()])


def nest(result):
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}; names without "/" stay as they are."""
    out = {}
    for k, v in result.items():
        *path, leaf = k.split("/")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def lookup(summary, name):
    """The value of metric `name` ("a/b/c" reads summary["a"]["b"]["c"]) in a metrics.json dict."""
    for part in name.split("/"):
        summary = summary[part]
    return summary


# ---------------------------------------------------------------------------------------------
# One stage: data -> model and optimiser -> resume -> training loop -> report


@dataclasses.dataclass
class Job:
    """What the training loop of one stage works with (built once by `run_stage`)."""
    name: str
    stage: Stage
    cfg: typing.Any
    model: torch.nn.Module  # the DDP wrapper under torchrun
    raw_model: torch.nn.Module
    parent: typing.Optional[torch.nn.Module]
    optimizer: torch.optim.Optimizer  # param_groups[i] trains at lr_scales[i] x learning_rate(cfg, step)
    lr_scales: list
    train_set: torch.utils.data.Dataset
    eval_set: torch.utils.data.Dataset
    baseline: typing.Callable
    out: str  # OUT/<stage>
    config_name: str
    history: list = dataclasses.field(default_factory=list)


def save_checkpoint(job, step, train_time, args, ranks):
    """Write OUT/<stage>/ckpt.pt: everything needed to continue bit for bit (collective: every rank calls it)."""
    rng = [rng_state(ranks.device)]
    if ranks.world_size > 1:  # each rank's own RNG streams
        rng = [None] * ranks.world_size
        dist.all_gather_object(rng, rng_state(ranks.device))
    if ranks.master:
        n, seen = len(job.train_set), step * job.cfg.batch_size  # samples consumed: the data position
        save_file(dict(
            model_name=job.name, config_name=job.config_name, config=dataclasses.asdict(job.cfg),
            model=own_state(job.raw_model, job.parent), optimizer=job.optimizer.state_dict(),
            step=step,  # no scheduler state: the learning rate is learning_rate(cfg, step)
            rng=rng,  # one dict per rank
            data=dict(data=args.data, seed=args.seed, train_samples=n, samples_seen=seen, epoch=seen // n,
                      position_in_epoch=seen % n),
            history=job.history, train_time_s=train_time,
        ), os.path.join(job.out, "ckpt.pt"))
    ranks.barrier()


def log_step(job, step, lr, loss, terms, t_last, steps_since, ranks):
    """One line on rank 0: step, loss terms averaged over the ranks, lr, samples/s, ETA."""
    names, cfg = list(terms), job.cfg
    values = mean_over_ranks([loss.item()] + [terms[k].item() for k in names], ranks)
    dt = time.time() - t_last
    rate = steps_since * cfg.batch_size / dt
    eta = (cfg.max_steps - step) * dt / steps_since
    parts = ", ".join(f"{k} {v:.4f}" for k, v in zip(names, values[1:]))
    ranks.print0(f"step {step:5d}/{cfg.max_steps} | loss {values[0]:.4f} ({parts}) | lr {lr:.2e} | "
                 f"{rate:.0f} samples/s | ETA {eta / 60:.1f} min")
    job.history.append(dict(step=step, lr=lr, loss=values[0], **dict(zip(names, values[1:]))))


def train(job, start_step, train_time, args, ranks):
    """Optimise from start_step to cfg.max_steps with periodic logs, evaluations and checkpoints.
    Returns the training time in seconds, including the time before a resume."""
    cfg, device, paper = job.cfg, ranks.device, job.stage.paper
    sampler = StepBatches(len(job.train_set), cfg.batch_size, ranks.rank, ranks.world_size, args.seed, start_step,
                          cfg.max_steps)
    loader = torch.utils.data.DataLoader(EpochIndexed(job.train_set), batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(args.seed))  # not the global RNG
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp else nullcontext()
    params = [p for p in job.model.parameters() if p.requires_grad]
    t_begin = t_last = time.time()
    steps_since = 0
    for step, batch in enumerate(loader, start=start_step):
        lr = paper.learning_rate(cfg, step)
        for group, scale in zip(job.optimizer.param_groups, job.lr_scales):
            group["lr"] = lr * scale
        with amp:
            loss, terms = paper.training_loss(job.model, to_device(batch, device), cfg, step)
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        job.optimizer.step()
        done, steps_since = step + 1, steps_since + 1
        if (args.log_every and done % args.log_every == 0) or done == cfg.max_steps:
            log_step(job, done, lr, loss, terms, t_last, steps_since, ranks)
            t_last, steps_since = time.time(), 0
        if args.eval_every and done % args.eval_every == 0 and done < cfg.max_steps:
            result, _, _ = evaluate(job.stage, job.raw_model, cfg, job.eval_set, job.baseline, args, ranks)
            ranks.print0(f"eval at step {done}: {format_metrics(result) if ranks.master else ''}")
            t_last = time.time()  # keep the evaluation out of samples/s
        if (args.ckpt_every and done % args.ckpt_every == 0) or done == cfg.max_steps:
            save_checkpoint(job, done, train_time + time.time() - t_begin, args, ranks)
    if cfg.max_steps == 0:  # loaded, not trained (e.g. released weights that build_model read)
        save_checkpoint(job, 0, train_time, args, ranks)
    return train_time + time.time() - t_begin


def report(job, train_time, t_start, args, ranks):
    """Final held-out evaluation -> OUT/<stage>/metrics.json and predictions.png (rank 0 writes)."""
    cfg = job.cfg
    result, pred, gt = evaluate(job.stage, job.raw_model, cfg, job.eval_set, job.baseline, args, ranks,
                                job.train_set)
    if not ranks.master:
        return
    wall_time = time.time() - t_start
    crop = getattr(job.eval_set, "crop_description", None)  # real hand data: which crop the table scored
    print(f"final {job.name} ({cfg.max_steps} steps, {wall_time / 60:.1f} min): {format_metrics(result)}"
          + (f" | held-out crop: {crop}" if crop else ""))
    # the stage's numbers, after those of the stages it starts from (each written by its own report)
    result = {**parent_metrics(job.stage, args), **result}
    summary = dict(model=job.name, config=job.config_name, data=args.data, steps=cfg.max_steps,
                   eval_crop=crop, world_size=ranks.world_size, global_batch=cfg.batch_size, wall_time_s=wall_time,
                   train_time_s=train_time, **nest(result), metric_names=list(result),
                   config_values=dataclasses.asdict(cfg), history=job.history)
    bodymodels.atomic_write(os.path.join(job.out, "metrics.json"),
                            lambda f: f.write(json.dumps(summary, indent=1).encode()))
    job.stage.picture(os.path.join(job.out, "predictions.png"), job.eval_set, pred, gt)
    print(f"wrote {job.out}/metrics.json, {job.out}/predictions.png, {job.out}/ckpt.pt")


def parent_metrics(stage, args):
    """The metrics in OUT/<parent>/metrics.json of the stage `stage` starts from ({} for none)."""
    if stage.starts_from is None:
        return {}
    path = os.path.join(stage_dir(stage.starts_from, args), "metrics.json")
    if not os.path.exists(path):  # a parent checkpoint copied in without its report
        return {}
    with open(path) as f:
        summary = json.load(f)
    return {k: lookup(summary, k) for k in summary.get("metric_names", [])}


def param_groups(paper, model, cfg):
    """[(lr_scale, parameters)]: the paper's `param_groups`, checked to hold every trainable parameter
    once and nothing frozen, or one group of all trainable parameters at scale 1."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not hasattr(paper, "param_groups"):
        return [(1.0, trainable)]
    groups = [(float(scale), list(params)) for scale, params in paper.param_groups(model, cfg)]
    given = [id(p) for _, params in groups for p in params]
    names = {id(p): n for n, p in model.named_parameters()}
    if len(given) != len(set(given)) or set(given) != set(map(id, trainable)):
        twice = sorted({names.get(i, "?") for i in given if given.count(i) > 1})
        frozen = sorted(names.get(i, "?") for i in set(given) - set(map(id, trainable)))
        left = sorted(names[id(p)] for p in trainable if id(p) not in set(given))
        fail(f"param_groups: every trainable parameter must be in one group: in two {twice[:3]}, "
             f"frozen or foreign {frozen[:3]}, in none {left[:3]}")
    return groups


def build_job(name, config_name, cfg, parent, sizes, args, ranks):
    """Model (identical initial weights on every rank), optimiser over the trainable parameters, data, baseline."""
    stage = MODELS[name]
    seed_everything(args.seed)
    try:
        model = stage.paper.build_model(cfg, parent).to(ranks.device)
    except (ImportError, ValueError, FileNotFoundError) as e:  # no timm, a refused config, a missing
        fail(f"--config {config_name}: {str(e).splitlines()[0]}")  # weights file: one line, before any rendering
    if ranks.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel for all parameters (CPU and CUDA); on a 0.6M-parameter model 1.3 ms a step
    # on one core against 6.5 ms for the per-tensor loop
    scales, groups = zip(*param_groups(stage.paper, model, cfg))
    optimizer = torch.optim.AdamW([dict(params=g) for g in groups], lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True)
    t0 = time.time()
    train_set = build_dataset(name, cfg, "training", sizes[0] or stage.train_samples, args, ranks)
    eval_set = build_dataset(name, cfg, "evaluation", sizes[1] or stage.eval_samples, args, ranks)
    baseline = stage.baseline(data.labels(train_set)) if ranks.master else None
    ranks.print0(f"data: {len(train_set)} training / {len(eval_set)} held-out samples ({args.data}), "
                 f"{time.time() - t0:.1f}s")
    return Job(name, stage, cfg, model, model, parent, optimizer, list(scales), train_set, eval_set, baseline,
               stage_dir(name, args), config_name)


def run_stage(name, config_name, overrides, resume, sizes, args, ranks):
    """Train stage `name` (its parent stages must be finished) and report it. sizes: (training, held-out)
    synthetic samples, None for the stage's defaults."""
    t_start, stage = time.time(), MODELS[name]
    path = os.path.join(stage_dir(name, args), "ckpt.pt")
    ckpt = load_checkpoint(path, name) if resume else None
    cfg = stage.paper.CONFIGS[config_name]
    if ckpt is not None:
        config_name, cfg = ckpt["config_name"], type(cfg)(**ckpt["config"])
    cfg = apply_overrides(cfg, overrides)
    if cfg.batch_size % ranks.world_size:
        fail(f"batch_size {cfg.batch_size} is the global batch; expected a multiple of the {ranks.world_size} ranks")
    os.makedirs(stage_dir(name, args), exist_ok=True)
    parent = trained_model(stage.starts_from, args, ranks.device) if stage.starts_from else None
    job = build_job(name, config_name, cfg, parent, sizes, args, ranks)
    start_step, train_time = 0, 0.0
    if ckpt is not None:
        check_same_data(ckpt, args, len(job.train_set))
    seed_everything(args.seed + ranks.rank)  # seed offset: per-rank randomness (dropout) differs
    if ckpt is not None:
        start_step, job.history, train_time = restore(ckpt, job.model, parent, job.optimizer, ranks, path)
        ranks.print0(f"resumed from {path} at step {start_step} "
                     f"({len(ckpt['rng'])} rank(s) then, {ranks.world_size} now)")
    if ranks.world_size > 1:
        # On a CPU with one thread per rank, gloo's all-reduce overlapping the backward pass fights it
        # for the core: DDP's default buckets made a 2-rank tiny step 203 ms, one bucket reduced after
        # the backward pass 137 ms (measured on a 2-core machine). GPUs keep the default overlap.
        one_bucket = {} if ranks.device.type == "cuda" else {"bucket_cap_mb": 1024}
        job.model = DDP(job.model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
                        **one_bucket)
    trainable = sum(p.numel() for p in job.raw_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in job.raw_model.parameters())
    ranks.print0(f"{name} ({config_name}): {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trained | "
                 f"{ranks.world_size} rank(s) on {ranks.device.type}, {torch.get_num_threads()} thread(s) each | "
                 f"global batch {cfg.batch_size} ({cfg.batch_size // ranks.world_size} per rank) | "
                 f"{cfg.max_steps} steps")
    train_time = train(job, start_step, train_time, args, ranks)
    report(job, train_time, t_start, args, ranks)
    job.model = None  # release the DDP wrapper before the process group (FACTS: gloo teardown abort)
    gc.collect()


def lineage(name):
    """name and the stages it starts from, newest first."""
    chain = [name]
    while MODELS[chain[-1]].starts_from is not None:
        chain.append(MODELS[chain[-1]].starts_from)
    return chain


def config_fields(name, config_name):
    """The field names of stage `name`'s config `config_name`."""
    return {f.name for f in dataclasses.fields(MODELS[name].paper.CONFIGS[config_name])}


def set_key(item):
    """The field a --set KEY=VALUE item names."""
    return item.partition("=")[0].strip()


def stages_before(name, args):
    """The stages `name` starts from, oldest first, whose checkpoint is missing or unfinished: they run first."""
    chain, parent = [], MODELS[name].starts_from
    while parent is not None:
        path = os.path.join(stage_dir(parent, args), "ckpt.pt")
        ckpt = load_checkpoint(path, parent, why=f"stage {parent}") if os.path.exists(path) else None
        if ckpt is None or ckpt["step"] < ckpt["config"]["max_steps"]:
            chain.insert(0, parent)
        parent = MODELS[parent].starts_from
    return chain


def stage_overrides(name, items, args):
    """{stage: its --set items} for `name` and each stage it starts from: a stage takes the items naming a
    field of its config; `name` also takes the items no stage has (apply_overrides then names the bad key)."""
    chain = lineage(name)
    fields = {s: config_fields(s, args.config) for s in chain}
    known = set().union(*fields.values())
    given = {s: [o for o in items if set_key(o) in fields[s]] for s in chain}
    given[name] = [o for o in items if set_key(o) in fields[name] or set_key(o) not in known]
    return given


def run_chain(name, overrides, resume, args, ranks):
    """Train the stages `name` starts from whose checkpoints are missing or unfinished (resuming them), then
    `name` (resumed when `resume`). overrides: {stage: --set items}. --max-steps caps the stages it starts
    from that run here (a stage whose preset trains 0 steps stays at 0), so one command runs a short chain."""
    sizes = (args.train_samples, args.eval_samples)
    for parent in stages_before(name, args):
        ranks.print0(f"== stage {parent}, which {name} starts from ==")
        exists = os.path.exists(os.path.join(stage_dir(parent, args), "ckpt.pt"))
        preset = MODELS[parent].paper.CONFIGS[args.config]
        steps = [f"max_steps={min(args.max_steps, preset.max_steps)}"] if args.max_steps is not None else []
        run_stage(parent, args.config, overrides.get(parent, []) + steps, exists, sizes, args, ranks)
    steps = [f"max_steps={args.max_steps}"] if args.max_steps is not None else []
    run_stage(name, args.config, steps + overrides.get(name, []), resume, sizes, args, ranks)


# ---------------------------------------------------------------------------------------------
# Ablations: a paper's tables as data (its ABLATIONS), each row trained, or scored, and written beside
# the paper's figure. The trainer knows no table: the paper module declares
#   ABLATIONS = {"table5": dict(caption=..., columns=((metric name, paper's column), ...),
#                               rows=((label, {config field: value}, (paper figure per column, None if not
#                                      reported)), ...), chosen=label of the paper's choice,
#                               stage=the row's stage (default --model), inference=False,
#                               longer={label: factor} for rows the paper trains factor x as long)}
# A row's field sets the config of the table's stage when it has the field, else of the nearest stage it
# starts from that has it. A training row trains, in OUT/<model>/ablation_<table>/<row>/, the oldest stage
# it changes and every stage after it, and reuses the untouched stages from OUT. An inference table
# (inference=True: only predict-time fields) scores the stage's own run in OUT with each row's config.


def ablation_table(args):
    """The ABLATIONS entry --ablation names, with its defaults (stage: --model, inference: False)."""
    tables = getattr(MODELS[args.model].paper, "ABLATIONS", {})
    if args.ablation not in tables:
        fail(f"--ablation {args.ablation!r}: {args.model} has " +
             (f"the tables {', '.join(tables)}" if tables else "no ablation tables"))
    return dict(dict(stage=args.model, inference=False, longer={}), **tables[args.ablation])


def override_text(key, value):
    """A row's {field: value} item as --set text: tuples as "a,b,c", None as "none"."""
    if isinstance(value, (tuple, list)):
        return f"{key}={','.join(map(str, value))}"
    return f"{key}={'none' if value is None else value}"


def field_owner(table, key, args):
    """The stage a row's field sets: the table's stage when its config has the field, else the nearest
    stage it starts from whose config does (None: no stage has it)."""
    return next((s for s in lineage(table["stage"]) if key in config_fields(s, args.config)), None)


def row_overrides(table, fields, args):
    """{stage: --set items} of one row: --set's items, then the row's, each on its field_owner."""
    given = stage_overrides(table["stage"], args.set, args)
    for key, value in fields.items():
        owner = field_owner(table, key, args)
        given[owner] = given[owner] + [override_text(key, value)]
    return given


def check_ablation(args):
    """Fail early, with one line, on a table whose rows name fields no config has (or, in an inference
    table, fields the stage's own config lacks) or whose columns and figures disagree."""
    table = ablation_table(args)
    if table["stage"] not in lineage(args.model):
        fail(f"--ablation {args.ablation}: its stage {table['stage']!r} is not {args.model} or a stage it starts from")
    labels = [label for label, _, _ in table["rows"]]
    if table["chosen"] not in labels:
        fail(f"--ablation {args.ablation}: chosen row {table['chosen']!r} is not one of its rows {labels}")
    for label, factor in table["longer"].items():
        if label not in labels or table["inference"] or not factor > 0:
            fail(f"--ablation {args.ablation}: longer[{label!r}] = {factor!r} needs a training row of {labels} "
                 "and a factor > 0")
    own = config_fields(table["stage"], args.config)
    for label, fields, paper in table["rows"]:
        where = f"--ablation {args.ablation}, row {label!r}"
        if len(paper) != len(table["columns"]):
            fail(f"{where}: {len(paper)} paper figures for {len(table['columns'])} columns")
        bad = (sorted(set(fields) - own) if table["inference"]
               else [k for k in fields if field_owner(table, k, args) is None])
        if bad:
            fail(f"{where}: no config {'of ' + table['stage'] if table['inference'] else 'it trains'} has the "
                 f"field(s) {', '.join(bad)}")


def row_folder(index, label):
    """The folder name of row `index`: "03-coarse-mesh-sampling"."""
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    return f"{index:02d}-{'-'.join(filter(None, slug.split('-')))}"


def finished(folder, name):
    """Whether stage `name` in `folder` has its final checkpoint and its report."""
    path = os.path.join(folder, name, "ckpt.pt")
    if not os.path.exists(os.path.join(folder, name, "metrics.json")) or not os.path.exists(path):
        return False
    ckpt = load_checkpoint(path, name, why="--ablation")
    return ckpt["step"] >= ckpt["config"]["max_steps"]


def train_row(table, index, label, fields, args, ranks):
    """Train one row in its folder (resuming a stopped one) and return its stage's metrics.json values."""
    name, chain = table["stage"], lineage(table["stage"])[::-1]  # oldest first
    given = row_overrides(table, fields, args)
    if label in table["longer"]:  # the paper trains this row longer: factor x the stage's steps, last so it wins
        steps = [f"max_steps={args.max_steps}"] if args.max_steps is not None else []
        cfg = apply_overrides(MODELS[name].paper.CONFIGS[args.config], steps + given[name])
        given[name] = given[name] + [f"max_steps={round(table['longer'][label] * cfg.max_steps)}"]
    # {}: the stage alone
    first = min([chain.index(field_owner(table, k, args)) for k in fields], default=len(chain) - 1)
    folder = os.path.join(args.out, args.model, f"ablation_{args.ablation}", row_folder(index, label))
    row_args = argparse.Namespace(**{**vars(args), "out": folder, "reused": {s: args.out for s in chain[:first]}})
    ranks.print0(f"== {args.ablation} row {index} {label!r}: {' '.join(sum(given.values(), [])) or 'the config as is'}"
                 f" | trains {', '.join(chain[first:])} in {folder} ==")
    if not finished(folder, name):
        run_chain(name, given, os.path.exists(os.path.join(folder, name, "ckpt.pt")), row_args, ranks)
    with open(os.path.join(folder, name, "metrics.json")) as f:
        summary = json.load(f)
    return {column: lookup(summary, column) for column, _ in table["columns"]}, os.path.join(folder, name)


def score_rows(table, args, ranks):
    """An inference table: the stage's own run in OUT (trained first when missing or unfinished), scored on
    the held-out set with each row's config. Returns [{column: value}] on rank 0."""
    name = table["stage"]
    if not finished(args.out, name):
        run_chain(name, stage_overrides(name, args.set, args), os.path.exists(os.path.join(args.out, name, "ckpt.pt")),
                  args, ranks)
    ckpt = load_checkpoint(os.path.join(args.out, name, "ckpt.pt"), name, why="--ablation")
    cfg = type(MODELS[name].paper.CONFIGS[ckpt["config_name"]])(**ckpt["config"])
    model = trained_model(name, args, ranks.device)
    eval_set = build_dataset(name, cfg, "evaluation", args.eval_samples or MODELS[name].eval_samples, args, ranks)
    scores = []
    for index, (label, fields, _) in enumerate(table["rows"]):
        row_cfg = apply_overrides(cfg, [override_text(k, v) for k, v in fields.items()])
        result, _, _ = evaluate(MODELS[name], model, row_cfg, eval_set, None, args, ranks)
        if ranks.master:
            ranks.print0(f"{args.ablation} row {index} {label!r}: {format_metrics(result) if result else ''}")
            scores.append({column: result[column] for column, _ in table["columns"]})
    return scores, os.path.join(args.out, name)


def run_ablation(args, ranks):
    """Every row of --ablation's table, then OUT/<model>/ablation_<table>.md and .json (rank 0)."""
    table = ablation_table(args)
    if table["inference"]:
        scores, source = score_rows(table, args, ranks)
        sources = [source] * len(table["rows"])
    else:
        scores, sources = [], []
        for index, (label, fields, _) in enumerate(table["rows"]):
            score, source = train_row(table, index, label, fields, args, ranks)
            scores.append(score)
            sources.append(source)
    if ranks.master:
        write_ablation(table, scores, sources, args)


def write_ablation(table, scores, sources, args):
    """OUT/<model>/ablation_<table>.json (every row: overrides, our figures, the paper's) and .md (one table)."""
    rows = [dict(label=label, overrides=fields, steps_factor=table["longer"].get(label, 1),
                 chosen=label == table["chosen"], folder=source, ours=score,
                 paper=dict(zip([c for c, _ in table["columns"]], paper)))
            for (label, fields, paper), score, source in zip(table["rows"], scores, sources)]
    facts = dict(model=args.model, table=args.ablation, caption=table["caption"], stage=table["stage"],
                 inference=table["inference"], config=args.config, set=args.set, max_steps=args.max_steps,
                 data=args.data, seed=args.seed, columns=[dict(ours=c, paper=p) for c, p in table["columns"]])
    base = os.path.join(args.out, args.model, f"ablation_{args.ablation}")
    bodymodels.atomic_write(base + ".json", lambda f: f.write(json.dumps(dict(facts, rows=rows), indent=1).encode()))
    steps = "each config's steps" if args.max_steps is None else f"{args.max_steps} steps"
    how = "one trained model, each row's inference config" if table["inference"] else "each row trained"
    lines = [f"# {args.model} {args.ablation}: {table['caption']}", "",
             f"Ours: config `{args.config}`{' --set ' + ' '.join(args.set) if args.set else ''}, {steps}, "
             f"seed {args.seed}, data `{args.data}` ({how}); the paper's figures as it reports them. "
             "**Bold**: the paper's choice.", "",
             "| row | overrides | " + " | ".join(f"ours: {c} | paper: {p}" for c, p in table["columns"]) + " |",
             "|---|---|" + "---:|---:|" * len(table["columns"])]
    for row in rows:
        label = f"**{row['label']}**" if row["chosen"] else row["label"]
        fields = [override_text(k, v) for k, v in row["overrides"].items()]
        fields = ", ".join(fields + [f"{row['steps_factor']} x the steps"] * (row["steps_factor"] != 1)) or "-"
        cells = [f"{row['ours'][c]:.2f} | {'-' if row['paper'][c] is None else row['paper'][c]}"
                 for c, _ in table["columns"]]
        lines.append(f"| {label} | {fields} | " + " | ".join(cells) + " |")
    bodymodels.atomic_write(base + ".md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print(f"wrote {base}.md, {base}.json")


# ---------------------------------------------------------------------------------------------
# The script


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a paper's stages (plain PyTorch; DDP under torchrun).")
    p.add_argument("--model", required=True, help=f"which stage to train: {' | '.join(MODELS)}")
    p.add_argument("--config", default="tiny", help="preset in the paper's CONFIGS (default: tiny, the CPU demo)")
    kinds = dict.fromkeys(k if k in data.RENDERED_KINDS else f"{k}:PATH" for s in MODELS.values() for k in s.data_kinds)
    p.add_argument("--data", default="synthetic",
                   help=f"{' | '.join(kinds)}: one of the kinds the stage reads (its row's data_kinds; default: "
                   "synthetic)")
    p.add_argument("--out", default="out", help="output folder; each stage writes to OUT/<stage> (default: out)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimisation steps of --model; also caps the stages it starts from that run here "
                   "(default: each config's max_steps)")
    p.add_argument("--ckpt-every", type=int, default=200,
                   help="write the checkpoint every this many steps, and at the end (default: 200)")
    p.add_argument("--eval-every", type=int, default=1000,
                   help="evaluate on the held-out split every this many steps, and at the end "
                   "(default: 1000; 0: only at the end)")
    p.add_argument("--log-every", type=int, default=20, help="one log line every this many steps (default: 20)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data order, the synthetic data and the initial weights (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/<model>/ckpt.pt: weights, optimiser, step, RNG states, data position")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, parsed by its type (repeatable), e.g. --set lr=1e-3: for --model "
                   "and each stage it starts from that runs here, where its config has the field")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto, cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank (default: 0)")
    p.add_argument("--train-samples", type=int, default=None,
                   help="size of the synthetic training set, rendered once, for --model and the stages it starts "
                   "from that run here (default: each stage's)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="size of the synthetic held-out set, as --train-samples (default: each stage's)")
    p.add_argument("--ablation", default=None, metavar="TABLE",
                   help="train (or, for inference-only rows, score) each row of the paper's ablation table TABLE "
                   "(its ABLATIONS, e.g. table5) and write OUT/<model>/ablation_TABLE.md and .json; a stopped run "
                   "resumes where it was")
    return p.parse_args(argv)


def check_args(args):
    """Fail early, with one line, on a bad --model, --config, --data or --device (before any process group exists)."""
    if args.model not in MODELS:
        fail(f"unknown --model {args.model!r}; expected one of: {', '.join(MODELS)}")
    kind, sep, path = args.data.partition(":")
    for name in lineage(args.model):  # the stage, then the stages it starts from
        stage, which = MODELS[name], name if name == args.model else f"{name} (which {args.model} starts from)"
        if args.config not in stage.paper.CONFIGS:
            fail(f"unknown --config {args.config!r} for {which}; expected one of: {', '.join(stage.paper.CONFIGS)}")
        if kind not in stage.data_kinds or (kind in data.RENDERED_KINDS) == bool(sep):
            fail(f"--data {args.data!r}: {which} expects " +
                 ", ".join(k if k in data.RENDERED_KINDS else f"{k}:PATH" for k in stage.data_kinds))
    if kind in FILE_KINDS:
        for file in path.split(","):
            if not os.path.isfile(file):
                fail(f"--data {args.data}: file {file!r} does not exist; expected {FILE_KINDS[kind]}")
    elif kind not in data.RENDERED_KINDS and not os.path.isdir(path):
        fail(f"--data {args.data}: folder {path!r} does not exist; expected the dataset's root folder")
    if args.ablation is not None:
        check_ablation(args)
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {args.device}: expected auto, cpu, or cuda on a machine with a GPU")
    check_inputs(args)


def chain_configs(args):
    """[(stage, config)] for --model and the stages it starts from, oldest first, as run_chain builds them: a
    finished stage in OUT with its checkpoint's config; one it resumes (an unfinished stage --model starts
    from, or --model with --resume) with its checkpoint's config and the stage's --set items; any other with
    the preset and its --set items."""
    overrides, configs = stage_overrides(args.model, args.set, args), []
    for name in lineage(args.model)[::-1]:
        cfg, given = MODELS[name].paper.CONFIGS[args.config], overrides[name]
        path = os.path.join(stage_dir(name, args), "ckpt.pt")
        if os.path.exists(path) and (name != args.model or args.resume):
            ckpt = load_checkpoint(path, name, why="--resume" if name == args.model else f"stage {name}")
            cfg = type(cfg)(**ckpt["config"])
            if name != args.model and ckpt["step"] >= ckpt["config"]["max_steps"]:
                given = []  # reused as trained
        configs.append((name, apply_overrides(cfg, given)))
    return configs


def check_inputs(args):
    """Every stage's preconditions (the paper's `check_inputs`: environment variables, files its config names)
    before the first stage trains: a chain never stops at a later stage for want of an input."""
    kind, _, path = args.data.partition(":")
    for name, cfg in chain_configs(args):
        check = getattr(MODELS[name].paper, "check_inputs", None)
        try:
            if check is not None:
                check(cfg, kind, path)
        except (FileNotFoundError, ValueError) as e:
            which = name if name == args.model else f"{name} (which {args.model} starts from)"
            fail(f"{which}: {str(e).splitlines()[0]}")


def setup_distributed(args):
    """The torchrun block: one process per device when RANK is set, else a single process."""
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
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # share the cores between the ranks on this machine (2 cores, 2 ranks: one thread each)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    return ddp, Ranks(rank, world_size, device)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    args.cache = os.path.join(args.out, "cache")  # synthetic sets: shared by every stage and ablation row

    # -- torchrun block --------------------------------------------------------------------------
    ddp, ranks = setup_distributed(args)

    # -- the stages --model starts from, when their checkpoints are missing or unfinished, then it;
    # or, with --ablation, every row of the paper's table
    if args.ablation:
        run_ablation(args, ranks)
    else:
        run_chain(args.model, stage_overrides(args.model, args.set, args), args.resume, args, ranks)

    # -- clean exit: the DDP wrappers are released; a barrier, then the process group (FACTS)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:  # fail()'s one line: on stderr, exit status 2 (bad input), as argparse does
        if not isinstance(e.code, str):
            raise
        print(e.code, file=sys.stderr)
        raise SystemExit(2)
