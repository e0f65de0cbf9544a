"""Train and evaluate a paper model with plain PyTorch DDP, on one CPU process or many GPUs.

    python train.py --model simplehand                                      # one process
    torchrun --standalone --nproc_per_node=2 train.py --model simplehand    # DDP: gloo on CPU, NCCL on GPU

With no other flag this is the demo: the model's CPU config ("tiny") on synthetic hands rendered by
data.py, a held-out evaluation, `OUT/metrics.json` and `OUT/predictions.png` (OUT = out/<model>).
The file reads top to bottom like nanoGPT's train.py: the model table, helpers (config overrides,
data order, checkpoints, evaluation), then `main`: arguments -> torchrun block -> data -> model and
optimiser -> resume -> training loop -> final report.

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
- The learning rate is the paper module's `learning_rate(cfg, step)`, a pure function of the step
  (warm-up, then the paper's step drop or a cosine): the step is the whole scheduler state.
- Evaluation covers the whole held-out split: rank r predicts samples r, r + W, ..., the ranks
  gather the predictions, rank 0 computes the metrics. The baseline is the same metric for always
  predicting the training set's mean hand (a generalised-Procrustes mean, left hands mirrored).

Outputs in OUT: `ckpt.pt` (every --ckpt-every steps and at the end, written atomically),
`metrics.json`, `predictions.png`, `cache/`.

Symbols: B global batch, b = B / W per-rank batch, W world size (number of ranks), r rank,
N training samples, s step, e epoch.
"""

import argparse
import dataclasses
import gc
import hashlib
import inspect
import json
import os
import random
import time
import typing
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bodymodels
import data
import metrics
import simplehand

# ---------------------------------------------------------------------------------------------
# The models this script trains. Each entry: the paper module (CONFIGS, build_model(cfg),
# compute_loss(pred, batch, cfg), learning_rate(cfg, step)), a dataset builder for --data, the
# evaluation metrics, and the skeleton used to draw predictions. A new paper adds one entry.


# The synthetic demo's camera: hands roughly upright with the palm or the back towards the camera
# (data.py's default spreads roll and tilt three times wider). The PA metrics and the mean-hand
# baseline ignore the global rotation, so this does not make the bar lower; it leaves a two-core
# CPU's few thousand steps for the finger articulation, which is what the metrics measure.
DEMO_VIEW = data.HandViewConfig(roll_std_deg=20.0, tilt_std_deg=20.0)


def hand_data(kind, path, split, image_size, seed, num_samples):
    """The hand dataset for a split ("training" | "evaluation") of `--data kind[:path]`."""
    if kind == "synthetic":  # the held-out split is the same generator under another seed
        return data.SyntheticHands(num_samples, image_size, seed=seed + (split == "evaluation") * 1_000_003,
                                   view_config=DEMO_VIEW)
    if kind == "freihand":
        return data.FreiHAND(path, split, image_size, augment=split == "training", seed=seed)
    return data.NpzHands(path, split, image_size, augment=split == "training", seed=seed)


def hand_metrics(pred, gt):
    """FreiHAND's table (PA-MPJPE, PA-MPVPE in mm, F@5, F@15, AUC) from metres."""
    return metrics.freihand_table(pred["joints3d"], gt["joints3d"], pred["verts"], gt["verts"])


MODELS = {
    "simplehand": dict(module=simplehand, data=hand_data, evaluate=hand_metrics,
                       parents=bodymodels.FREIHAND_PARENTS),
}
DATA_KINDS = ("synthetic", "freihand", "npz")  # --data synthetic | freihand:PATH | npz:PATH


def fail(message):
    """Stop with a one-line error (no traceback); under torchrun only rank 0 prints it."""
    raise SystemExit(f"train.py: error: {message}" if int(os.environ.get("RANK", 0)) == 0 else 1)


# ---------------------------------------------------------------------------------------------
# Configuration: the paper module's dataclass, overridden field by field with --set key=value


def parse_value(text, kind, current):
    """Parse `text` as a value of the dataclass field type `kind` whose value is now `current`:
    bool, int, float, str, Optional[X], Literal[...], and tuples/lists written "1,2,3" or "(1,2,3)" (items typed
    like the current items when the annotation is a bare `tuple`)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
        if text.lower() not in words:
            raise ValueError
        return words[text.lower()]
    if origin is typing.Union:  # Optional[X]: "none" or an X
        return None if text.lower() == "none" else parse_value(text, next(a for a in args if a is not type(None)), current)
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


class RenderedSet(torch.utils.data.Dataset):
    """A dataset held as stacked tensors {key: (N, ...)}; images stored as uint8, returned in [0, 1]."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["image"])

    def __getitem__(self, index):
        sample = {k: v[index] for k, v in self.tensors.items()}
        sample["image"] = sample["image"].float() / 255
        return sample

    def set_epoch(self, epoch):
        """The set was rendered once: every epoch sees the same images (no per-epoch randomness)."""


def stack_samples(dataset, indices, workers=0):
    """{key: (len(indices), ...)} of the samples at `indices`, images as uint8, read by `workers` processes."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=64,
                                         num_workers=workers, generator=torch.Generator())
    batches = list(loader)
    tensors = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    tensors["image"] = (tensors["image"] * 255).round().to(torch.uint8)
    return tensors


def render_once(dataset, path, rank, world_size):
    """Render `dataset` into the tensor file `path` (each rank renders one contiguous share) unless it
    exists, and load it memory-mapped (the ranks share the pages)."""
    if not os.path.exists(path):  # all ranks agree: the file appears only after the barrier below
        n = len(dataset)
        share = range(n * rank // world_size, n * (rank + 1) // world_size)
        workers = torch.get_num_threads() if torch.get_num_threads() > 1 else 0  # one renderer per core of this rank
        atomic_save(stack_samples(dataset, share, workers), f"{path}.part{rank}")
        barrier(world_size)
        if rank == 0:
            parts = [torch.load(f"{path}.part{r}", weights_only=True, mmap=True) for r in range(world_size)]
            atomic_save({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, path)
            for r in range(world_size):
                os.remove(f"{path}.part{r}")
        barrier(world_size)
    return RenderedSet(torch.load(path, weights_only=True, mmap=True))


def build_dataset(entry, args, cfg, split, num_samples, rank, world_size):
    """The dataset of --data for `split`; synthetic sets are rendered once into OUT/cache."""
    kind, _, path = args.data.partition(":")
    try:
        dataset = entry["data"](kind, path, split, cfg.image_size, args.seed, num_samples)
    except (FileNotFoundError, ValueError) as e:  # the loaders name the missing file on their first line
        fail(f"--data {args.data}: {str(e).splitlines()[0]}")
    if kind != "synthetic":
        return dataset
    # the cache name carries everything the pixels depend on, including data.py's source and DEMO_VIEW
    version = hashlib.sha1((inspect.getsource(data) + repr(DEMO_VIEW)).encode()).hexdigest()[:8]
    name = f"{args.model}-{split}-n{num_samples}-px{cfg.image_size}-seed{args.seed}-{version}.pt"
    path = os.path.join(args.out, "cache", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if rank == 0 and not os.path.exists(path):
        print(f"rendering {num_samples} {split} samples into {path} ({world_size} rank(s))")
    return render_once(dataset, path, rank, world_size)


# ---------------------------------------------------------------------------------------------
# Distributed helpers


def barrier(world_size):
    if world_size > 1:
        dist.barrier()


def mean_over_ranks(values, world_size, device):
    """Average a list of floats over the ranks (gloo has no AVG: SUM then divide)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(t)
    return (t / world_size).tolist()


def gather_rows(x, n, world_size, device):
    """Rank r holds rows r, r + W, r + 2W, ... of an n-row tensor; return all n rows, in order, on every rank."""
    if world_size == 1:
        return x
    m = -(-n // world_size)  # rows per rank after padding
    dtype = x.dtype
    x = torch.cat([x, x.new_zeros(m - len(x), *x.shape[1:])]).to(device, torch.float64 if dtype == torch.bool else dtype)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x)
    return torch.stack(parts, 1).flatten(0, 1)[:n].to("cpu", dtype)  # (m, W, ...): row k W + r


# ---------------------------------------------------------------------------------------------
# Checkpoints: one dict of tensors and plain Python values, so torch.load(weights_only=True) reads it


def atomic_save(obj, path):
    """torch.save to a temporary file, flushed to disk, then renamed: `path` is never half written."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def load_checkpoint(path, model_name):
    """The checkpoint dict at `path`, after checking it was written by train.py for `model_name`."""
    if not os.path.exists(path):
        fail(f"--resume: no checkpoint at {path}; expected the ckpt.pt of an earlier run with this --out")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, without the unpickler's traceback
        fail(f"--resume: {path} is not a readable train.py checkpoint ({type(e).__name__}); "
             "expected a file written by train.py with torch.save")
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        fail(f"--resume: {path} is not a train.py checkpoint (expected a dict with 'model_name', 'model', 'optimizer', ...)")
    if ckpt["model_name"] != model_name:
        fail(f"--resume: {path} holds a {ckpt['model_name']!r} model; expected a checkpoint of --model {model_name}")
    return ckpt


def restore(ckpt, model, optimizer, rank, world_size, device):
    """Load weights, optimiser state and this rank's RNG streams (when the number of ranks is
    unchanged; the data order never depends on it). Returns (step, history, training seconds)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if len(ckpt["rng"]) == world_size:
        set_rng_state(ckpt["rng"][rank], device)
    return ckpt["step"], ckpt["history"], ckpt["train_time_s"]


def check_same_data(ckpt, args):
    """Resuming must replay the same data stream: same --data, --seed and --train-samples."""
    saved = {k: ckpt["data"][k] for k in ("data", "seed", "train_samples")}
    given = dict(data=args.data, seed=args.seed, train_samples=args.train_samples)
    if saved != given:
        fail(f"--resume: the checkpoint was trained with {saved}, this run asks for {given}; "
             "pass the same values or use a new --out")


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model, dataset, indices, batch_size, device, workers):
    """Model outputs and ground truth for dataset[indices], concatenated: ({key: (n, ...)}, {key: (n, ...)})."""
    was_training = model.training
    model.eval()
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         generator=torch.Generator())  # leaves the global RNG alone
    preds, gts = [], []
    for batch in loader:
        out = model(batch["image"].to(device))
        preds.append({k: v.float().cpu() for k, v in out.items()})
        gts.append(batch)
    model.train(was_training)
    return ({k: torch.cat([p[k] for p in preds]) for k in preds[0]},
            {k: torch.cat([g[k] for g in gts]) for k in gts[0]})


def evaluate(model, eval_set, run):
    """Metrics over the WHOLE held-out set (rank r predicts samples r, r + W, ...), and the same
    metrics for always predicting the training set's mean hand. Returns (metrics, pred, gt) on
    rank 0, (None, None, None) on the others."""
    n, W = len(eval_set), run.world_size
    pred, gt = predict(model, eval_set, range(run.rank, n, W), run.cfg.batch_size // W, run.device, run.args.workers)
    pred = {k: gather_rows(pred[k], n, W, run.device) for k in ("joints3d", "verts", "joints2d")}
    gt = {k: gather_rows(v, n, W, run.device) for k, v in gt.items() if k != "image"}
    if not run.master:
        return None, None, None
    result = run.entry["evaluate"](pred, gt)
    baseline = run.entry["evaluate"](mean_prediction(run.mean_hand, gt), gt)
    result.update({f"baseline_{k}": v for k, v in baseline.items()})
    return {k: float(v) for k, v in result.items()}, pred, gt


def mirror_left(points, is_right):
    """Mirror left hands (x -> -x in camera coordinates) so every hand reads as a right hand."""
    sign = torch.where(is_right, 1.0, -1.0).to(points.dtype)[:, None, None]  # (B, 1, 1)
    return points * torch.cat([sign, torch.ones_like(sign), torch.ones_like(sign)], -1)


def training_mean_hand(train_set, limit=4096, iterations=3):
    """The training set's mean hand (from up to `limit` samples), left hands mirrored, relative to
    joint 0: {"joints3d": (J, 3), "verts": (V, 3)}.

    Each hand (joints and vertices together) is Procrustes-aligned to the running mean before
    averaging (generalised Procrustes), so the mean is one hand in one pose: the best constant
    prediction under PA metrics, not a blur of hands in random orientations.
    """
    n = len(train_set)
    indices = list(range(0, n, max(1, n // limit)))
    if isinstance(train_set, RenderedSet):  # the labels are in memory already: no image is read
        rows = {k: v[indices] for k, v in train_set.tensors.items() if k != "image"}
    else:
        rows = stack_samples(train_set, indices)
    is_right = rows.get("is_right", torch.ones(len(indices), dtype=torch.bool))
    hands = torch.cat([rows["joints3d"], rows["verts"]], 1) - rows["joints3d"][:, :1]  # (n, J + V, 3)
    hands = mirror_left(hands, is_right).double()
    mean = hands[0]
    for _ in range(iterations):
        mean = metrics.procrustes_align(hands, mean.expand_as(hands)).mean(0)  # (J + V, 3)
    mean = (mean - mean[:1]).float()
    J = rows["joints3d"].shape[1]
    return {"joints3d": mean[:J], "verts": mean[J:]}


def mean_prediction(mean_hand, gt):
    """The mean hand as a prediction for every sample of `gt` (mirrored back for left hands)."""
    n = len(gt["joints3d"])
    is_right = gt.get("is_right", torch.ones(n, dtype=torch.bool))
    return {k: mirror_left(v.expand(n, -1, -1), is_right) for k, v in mean_hand.items()}


def plot_predictions(path, eval_set, pred, gt, parents, count=6):
    """Held-out images with true (green) and predicted (red) 2D keypoints; below, the 3D joints after
    Procrustes alignment, seen from the camera."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(eval_set))
    aligned = metrics.procrustes_align(pred["joints3d"][:count].double(), gt["joints3d"][:count].double())
    fig, axes = plt.subplots(2, count, figsize=(2.4 * count, 5), squeeze=False)
    for i in range(count):
        image = eval_set[i]["image"]  # (3, H, W)
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(image.permute(1, 2, 0).numpy())
        draw_skeleton(top, gt["joints2d"][i], parents, "lime")
        draw_skeleton(top, pred["joints2d"][i] * image.shape[-1], parents, "red")  # [0, 1] of the crop -> pixels
        draw_skeleton(bottom, gt["joints3d"][i, :, :2] * 1000, parents, "green")
        draw_skeleton(bottom, aligned[i, :, :2] * 1000, parents, "red")
        bottom.set_aspect("equal")
        bottom.invert_yaxis()  # camera y points down
        top.axis("off")
        bottom.set_xlabel("x (mm)", fontsize=7)
    axes[0, 0].set_title("green: truth, red: predicted", fontsize=8, loc="left")
    axes[1, 0].set_title("3D joints, PA-aligned", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_skeleton(ax, points, parents, color):
    """Bones between each joint and its parent. points (J, 2)."""
    points = points.detach().cpu().numpy()
    for j, parent in enumerate(parents):
        if parent >= 0:
            ax.plot(*points[[parent, j]].T, color=color, linewidth=1.2)
    ax.scatter(*points.T, s=4, color=color)


# ---------------------------------------------------------------------------------------------
# The script


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a paper model (plain PyTorch; DDP under torchrun).")
    p.add_argument("--model", required=True, help=f"which paper to train: {' | '.join(MODELS)}")
    p.add_argument("--config", default="tiny", help="preset in the paper module's CONFIGS (default: tiny, the CPU demo)")
    p.add_argument("--data", default="synthetic", help="synthetic | freihand:PATH | npz:PATH (default: synthetic)")
    p.add_argument("--out", default=None, help="output folder (default: out/<model>)")
    p.add_argument("--max-steps", type=int, default=None, help="optimisation steps (default: the config's max_steps)")
    p.add_argument("--ckpt-every", type=int, default=200, help="write OUT/ckpt.pt every this many steps, and at the end (default: 200)")
    p.add_argument("--eval-every", type=int, default=1000, help="evaluate on the held-out split every this many steps, and at the end (default: 1000; 0: only at the end)")
    p.add_argument("--log-every", type=int, default=20, help="one log line every this many steps (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, the synthetic data and the initial weights (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt: weights, optimiser, step, RNG states, data position")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, parsed by its type (repeatable), e.g. --set lr=1e-3")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto, cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank (default: 0)")
    p.add_argument("--train-samples", type=int, default=16384, help="size of the synthetic training set, rendered once (default: 16384)")
    p.add_argument("--eval-samples", type=int, default=512, help="size of the synthetic held-out set (default: 512)")
    args = p.parse_args(argv)
    args.out = args.out or os.path.join("out", args.model)
    return args


def check_args(args):
    """Fail early, with one line, on a bad --model, --config, --data or --device (before any process group exists)."""
    if args.model not in MODELS:
        fail(f"unknown --model {args.model!r}; expected one of: {', '.join(MODELS)}")
    configs = MODELS[args.model]["module"].CONFIGS
    if args.config not in configs:
        fail(f"unknown --config {args.config!r} for {args.model}; expected one of: {', '.join(configs)}")
    kind, sep, path = args.data.partition(":")
    if kind not in DATA_KINDS or (kind == "synthetic") == bool(sep):
        fail(f"--data {args.data!r}: expected synthetic, freihand:PATH or npz:PATH")
    if kind != "synthetic" and not os.path.isdir(path):
        fail(f"--data {args.data}: folder {path!r} does not exist; expected the dataset's root folder")
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {args.device}: expected auto, cpu, or cuda on a machine with a GPU")


def resolve_config(module, args, ckpt):
    """The preset --config (or, on --resume, the checkpoint's config), then --max-steps and --set."""
    cfg = module.CONFIGS[args.config]
    if ckpt is not None:
        check_same_data(ckpt, args)
        args.config = ckpt["config_name"]
        cfg = type(cfg)(**ckpt["config"])
    overrides = ([f"max_steps={args.max_steps}"] if args.max_steps is not None else []) + args.set
    return apply_overrides(cfg, overrides)


def setup_distributed(args):
    """The torchrun block: one process per device when RANK is set, else a single process."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # share the cores between the ranks on this machine (2 cores, 2 ranks: one thread each)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    return ddp, rank, world_size, device



def save_checkpoint(raw_model, optimizer, step, train_time, run):
    """Write OUT/ckpt.pt: everything needed to continue bit for bit (collective: every rank calls it)."""
    rng = [rng_state(run.device)]
    if run.world_size > 1:  # each rank's own RNG streams
        rng = [None] * run.world_size
        dist.all_gather_object(rng, rng_state(run.device))
    if run.master:
        args, cfg, n = run.args, run.cfg, run.num_train
        seen = step * cfg.batch_size  # samples consumed: the data position
        atomic_save(dict(
            model_name=args.model, config_name=args.config, config=dataclasses.asdict(cfg),
            model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
            step=step,  # no scheduler state: the learning rate is learning_rate(cfg, step)
            rng=rng,  # one dict per rank
            data=dict(data=args.data, seed=args.seed, train_samples=args.train_samples,
                      samples_seen=seen, epoch=seen // n, position_in_epoch=seen % n),
            history=run.history, train_time_s=train_time,
        ), run.ckpt_path)
    barrier(run.world_size)


def log_step(step, lr, loss, terms, t_last, steps_since, run):
    """One line on rank 0: step, loss terms averaged over the ranks, lr, samples/s, ETA."""
    names = list(terms)
    values = mean_over_ranks([loss.item()] + [terms[k].item() for k in names], run.world_size, run.device)
    dt = time.time() - t_last
    rate = steps_since * run.cfg.batch_size / dt
    eta = (run.cfg.max_steps - step) * dt / steps_since
    parts = ", ".join(f"{k} {v:.4f}" for k, v in zip(names, values[1:]))
    run.print0(f"step {step:5d}/{run.cfg.max_steps} | loss {values[0]:.4f} ({parts}) | lr {lr:.2e} | "
               f"{rate:.0f} samples/s | ETA {eta / 60:.1f} min")
    run.history.append(dict(step=step, lr=lr, loss=values[0], **dict(zip(names, values[1:]))))


def format_metrics(result):
    """The evaluation metrics, then the mean-hand baseline of the first one."""
    first = next(iter(result))
    shown = [f"{k} {v:.2f}" for k, v in result.items() if not k.startswith("baseline_")]
    return " | ".join(shown + [f"mean-hand baseline {first} {result['baseline_' + first]:.2f}"])


def train(model, raw_model, optimizer, train_set, eval_set, start_step, train_time, run):
    """Optimise from start_step to cfg.max_steps with periodic logs, evaluations and checkpoints.
    Returns the training time in seconds, including the time before a resume."""
    args, cfg, device = run.args, run.cfg, run.device
    sampler = StepBatches(len(train_set), cfg.batch_size, run.rank, run.world_size, args.seed, start_step, cfg.max_steps)
    loader = torch.utils.data.DataLoader(EpochIndexed(train_set), batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(args.seed))  # not the global RNG
    # mixed precision on GPU when the config asks for it, fp32 on CPU. NOTE(paper vs code): the
    # official SimpleHand code uses fp16 with a loss scaler; bf16 has fp32's range and needs none.
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and getattr(cfg, "amp", False) else nullcontext()
    t_begin = t_last = time.time()
    steps_since = 0
    for step, batch in enumerate(loader, start=start_step):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        lr = run.module.learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with amp:
            pred = model(batch["image"])
            loss, terms = run.module.compute_loss(pred, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done, steps_since = step + 1, steps_since + 1
        if (args.log_every and done % args.log_every == 0) or done == cfg.max_steps:
            log_step(done, lr, loss, terms, t_last, steps_since, run)
            t_last, steps_since = time.time(), 0
        if args.eval_every and done % args.eval_every == 0 and done < cfg.max_steps:
            result, _, _ = evaluate(raw_model, eval_set, run)
            run.print0(f"eval at step {done}: {format_metrics(result) if run.master else ''}")
            t_last = time.time()  # keep the evaluation out of samples/s
        if (args.ckpt_every and done % args.ckpt_every == 0) or done == cfg.max_steps:
            save_checkpoint(raw_model, optimizer, done, train_time + time.time() - t_begin, run)
    return train_time + time.time() - t_begin


def report(raw_model, eval_set, train_time, run):
    """Final held-out evaluation -> OUT/metrics.json and OUT/predictions.png (rank 0 writes)."""
    args, cfg = run.args, run.cfg
    result, pred, gt = evaluate(raw_model, eval_set, run)
    if not run.master:
        return
    wall_time = time.time() - run.t_start
    print(f"final ({cfg.max_steps} steps, {wall_time / 60:.1f} min): {format_metrics(result)}")
    summary = dict(model=args.model, config=args.config, data=args.data, steps=cfg.max_steps,
                   world_size=run.world_size, global_batch=cfg.batch_size, wall_time_s=wall_time,
                   train_time_s=train_time, **result, config_values=dataclasses.asdict(cfg), history=run.history)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_predictions(os.path.join(args.out, "predictions.png"), eval_set, pred, gt, run.entry["parents"])
    print(f"wrote {args.out}/metrics.json, {args.out}/predictions.png, {run.ckpt_path}")


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    check_args(args)
    entry = MODELS[args.model]
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    ckpt = load_checkpoint(ckpt_path, args.model) if args.resume else None
    cfg = resolve_config(entry["module"], args, ckpt)

    # -- torchrun block --------------------------------------------------------------------------
    ddp, rank, world_size, device = setup_distributed(args)
    master_process = rank == 0
    if cfg.batch_size % world_size:
        fail(f"batch_size {cfg.batch_size} is the global batch; expected a multiple of the {world_size} ranks")
    print0 = print if master_process else (lambda *a, **k: None)
    os.makedirs(args.out, exist_ok=True)

    # -- model and optimiser: identical initial weights on every rank (DDP also broadcasts rank 0's)
    seed_everything(args.seed)
    try:
        model = entry["module"].build_model(cfg).to(device)
    except ImportError as e:  # a paper backbone without timm, before any data is rendered
        fail(f"--config {args.config}: {e}")
    # fused: one kernel for all parameters (CPU and CUDA); on the tiny model it takes 1.3 ms a step
    # on one core against 6.5 ms for the per-tensor loop
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    # -- data ------------------------------------------------------------------------------------
    t0 = time.time()
    train_set = build_dataset(entry, args, cfg, "training", args.train_samples, rank, world_size)
    eval_set = build_dataset(entry, args, cfg, "evaluation", args.eval_samples, rank, world_size)
    mean_hand = training_mean_hand(train_set) if master_process else None
    print0(f"data: {len(train_set)} training / {len(eval_set)} held-out samples ({args.data}), {time.time() - t0:.1f}s")

    # -- resume, and the per-rank random streams ---------------------------------------------------
    seed_everything(args.seed + rank)  # seed offset: per-rank randomness (dropout) differs
    start_step, history, train_time = restore(ckpt, model, optimizer, rank, world_size, device) if ckpt else (0, [], 0.0)
    if ckpt:
        print0(f"resumed from {ckpt_path} at step {start_step} ({len(ckpt['rng'])} rank(s) then, {world_size} now)")
    if ddp:
        # On a CPU with one thread per rank, gloo's all-reduce overlapping the backward pass fights it
        # for the core: DDP's default buckets made a 2-rank tiny step 203 ms, one bucket reduced after
        # the backward pass 137 ms (measured on this 2-core machine). GPUs keep the default overlap.
        one_bucket = {} if device.type == "cuda" else {"bucket_cap_mb": 1024}
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **one_bucket)
    raw_model = model.module if ddp else model
    print0(f"{args.model} ({args.config}): {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters | "
           f"{world_size} rank(s) on {device.type}, {torch.get_num_threads()} thread(s) each | "
           f"global batch {cfg.batch_size} ({cfg.batch_size // world_size} per rank) | {cfg.max_steps} steps")

    # -- train, evaluate, report -----------------------------------------------------------------
    run = argparse.Namespace(args=args, cfg=cfg, entry=entry, module=entry["module"], rank=rank,
                             world_size=world_size, device=device, master=master_process, print0=print0,
                             ckpt_path=ckpt_path, history=history, mean_hand=mean_hand,
                             num_train=len(train_set), t_start=t_start)
    train_time = train(model, raw_model, optimizer, train_set, eval_set, start_step, train_time, run)
    report(raw_model, eval_set, train_time, run)

    # -- clean exit: release the DDP wrapper before the process group (FACTS: gloo teardown abort)
    if ddp:
        del model
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
