"""Train and evaluate any paper's stages with plain PyTorch DDP, on one CPU process or many GPUs.

    python train.py --model NAME                                      # one process; NAME: a row of MODELS
    torchrun --standalone --nproc_per_node=2 train.py --model NAME    # DDP: gloo on CPU, NCCL on GPU

With no other flag this is the demo: the stage's CPU config ("tiny") on synthetic data, a held-out evaluation
next to a constant baseline scored by the same metrics, OUT/<stage>/metrics.json and predictions.png (OUT = out).
Top to bottom: the stage table, helpers (--set, data order, checkpoints, evaluation), one stage (model and
optimiser -> data -> resume -> training loop -> final report), the chain of stages, then `main`. lab/ablate.py
runs a paper's ablation tables with these pieces; lab/checkpoints.py reads a trained model back; lab/distributed.py
is the torchrun block (ranks, collectives, restarts, a dead peer, preemption). The script knows no paper: it speaks
this protocol (docs/reference.md, "How train.py speaks to a paper", says what each part must do) to a paper's
experiments file (`lab/<paper>_experiments.py`, or an object in it with these attributes), which maps the trainer's
dict batches onto the reference file's tensor API: `CONFIGS` ({name: preset}; "tiny" runs on two CPU cores),
`build_model(cfg, parent)`, `training_loss(model, batch, cfg, step)` -> (loss, terms), `predict(model, batch, cfg)`,
`learning_rate(cfg, step)`, and optionally `ABLATIONS`, `diagnostics`, `param_groups` and `check_inputs`. A stage
(one row of MODELS) wires a paper to its `data`, `metrics`, `baseline`, `picture` and the stage it `starts_from`;
`--model X` first trains the stages X starts from whose checkpoints are missing or unfinished, then X.

Conventions
- `batch_size` is the GLOBAL batch B; each of the W ranks takes b = B / W samples of every step. The loss
  is a mean over the rank's samples and DDP averages the gradients, so one step on W ranks equals one step of
  one process on all B (for models without batch statistics; tests/test_train.py checks it).
- Data order is a pure function of (seed, step): per-epoch permutations of the N training indices, epoch e's
  seeded by (seed, e); step s takes positions [s B, (s + 1) B), rank r the r-th slice of b; datasets derive
  augmentation from (seed, epoch, index). So a resumed run sees exactly the samples an uninterrupted run would.
- Global RNGs are seeded with `seed` to build the model (identical on every rank), then with `seed + rank`.
- Synthetic data is rendered once into OUT/cache/*.pt (uint8 images), every rank rendering its share; real data
  is read on the fly. Evaluation covers the whole held-out split: rank r predicts samples r, r + W, ...
- On CUDA the model and 4D inputs are channels_last (the layout cuDNN's fast convolution kernels want).
- Failures: every collective gives up after --pg-timeout (exit status 1, one line); SIGTERM stops every rank after
  the same step with its checkpoint (status 143); `--resume auto` continues whatever checkpoint a start finds.
Outputs in OUT/<stage>: ckpt.pt (every --ckpt-every steps and at the end; its keys in lab/checkpoints.py),
metrics.json (its metrics, the baseline's as baseline_*, those of the stages it starts from, `metric_names`
listing them, then the run's facts and history), predictions.png.
"""

import ast
import dataclasses
import functools
import gc
import hashlib
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

import data
import metrics
from lab import (checkpoints, configs, distributed, genhmr_experiments, hmr_adapter_experiments, plots,
                 simplehand_experiments, synthetic)
from lab.configs import config_from_dict, config_leaves, leaf_paths, recipe_of, with_fields
from lab.distributed import fail
from lab.files import atomic_write


# ---------------------------------------------------------------------------------------------
# The stages this script trains: one row each. A new paper adds its rows.


@dataclasses.dataclass(frozen=True)
class Stage:
    paper: typing.Any  # the paper's experiments module (or an object in it) offering the docstring's protocol
    data: typing.Callable  # (kind, path, split, cfg, seed, n) -> Dataset of dicts
    metrics: typing.Callable  # (pred, gt) -> {name: float}; the first is the headline
    baseline: typing.Callable  # (labels) -> callable gt -> constant prediction
    picture: typing.Callable  # (path, eval_set, pred, gt) -> writes a PNG
    starts_from: typing.Optional[str] = None  # the row whose final checkpoint build_model gets as parent
    shares_fields: tuple = ()  # config fields the stage built on this one must have alike (lab/ablate.py sets both)
    data_kinds: tuple = ("synthetic",)  # --data KIND[:PATH] this stage reads; "synthetic" takes no path
    data_fields: tuple = ("image_size",)  # config fields the data depends on (part of the cache key)
    train_samples: int = 16384  # synthetic training set size (rendered once)
    eval_samples: int = 512  # synthetic held-out set size


# The body stages also read 4D-Humans' evaluation .npz: hmr2:FILE.npz (train and score on it) or
# hmr2:TRAIN.npz,EVAL.npz; the pose stages learn the file's SMPL poses (data.HMR2Poses), the image stages
# its crops (data.HMR2Npz), scored by the benchmarks' protocol (metrics.hmr2_protocol, $HMR_J_REGRESSOR)
BODY_KINDS = ("synthetic", "ambiguous", "hmr2")  # ambiguous: synthetic.AmbiguousBodies, a controlled ambiguity
# The whole-body stages also read whole bodies (EHF, ARCTIC) in data.WholeBodyNpz's format: wholebody:FILE.npz
# (train and score on it: the format gives every key the losses read) or wholebody:TRAIN.npz,EVAL.npz; scored
# by the whole-body protocol (metrics.wholebody_metrics; the face on $HMR_FLAME_VERTEX_IDS when set)
WHOLEBODY_KINDS = ("synthetic", "wholebody")
# the kinds whose PATH is one file or TRAIN,EVAL files (not a dataset's root folder): what each file holds
FILE_KINDS = {"hmr2": "a 4D-Humans evaluation .npz", "wholebody": "a whole-body .npz (data.WholeBodyNpz)"}


MODELS = {
    "simplehand": Stage(simplehand_experiments, data=synthetic.hand_dataset, metrics=metrics.freihand_metrics,
                        baseline=metrics.MeanShapeBaseline, picture=plots.draw_hand_predictions,
                        data_kinds=("synthetic", "freihand", "npz")),
    "genhmr_tokenizer": Stage(genhmr_experiments.TokenizerStage, data=synthetic.body_pose_dataset,
                              metrics=metrics.tokenizer_metrics,
                              baseline=functools.partial(metrics.MeanPoseBaseline, own_shape=True),
                              picture=plots.draw_pose_reconstructions, data_fields=(), train_samples=8192,
                              data_kinds=BODY_KINDS),
    "genhmr_backbone": Stage(genhmr_experiments.BackboneStage, data=synthetic.body_dataset,
                             metrics=metrics.body_metrics,
                             baseline=functools.partial(metrics.MeanPoseBaseline, prefixes=("regression_",)),
                             picture=functools.partial(plots.draw_body_predictions, prefix="regression_"),
                             starts_from="genhmr_tokenizer", train_samples=16384, data_kinds=BODY_KINDS),
    "genhmr_prior": Stage(genhmr_experiments.PriorStage, data=synthetic.body_pose_dataset,
                          metrics=metrics.body_metrics,
                          baseline=functools.partial(metrics.MeanPoseBaseline, own_shape=True, prefixes=("prior_",)),
                          picture=plots.draw_token_prior, starts_from="genhmr_backbone", data_fields=(),
                          shares_fields=genhmr_experiments.PRIOR_FIELDS, train_samples=16384,
                          data_kinds=BODY_KINDS),
    "genhmr": Stage(genhmr_experiments, data=synthetic.body_dataset, metrics=metrics.body_metrics,
                    baseline=functools.partial(metrics.MeanPoseBaseline, prefixes=("", "refined_", "refined_oracle_")),
                    picture=plots.draw_body_predictions, starts_from="genhmr_prior", train_samples=16384,
                    data_kinds=BODY_KINDS),
    "hmr_adapter_bases": Stage(hmr_adapter_experiments.BASES, data=synthetic.wholebody_dataset,
                               metrics=metrics.wholebody_metrics, baseline=metrics.WholeBodyMeanPoseBaseline,
                               picture=plots.draw_wholebody_predictions, train_samples=8192,
                               data_fields=("image_size", "hand_image"), data_kinds=WHOLEBODY_KINDS),
    "hmr_adapter": Stage(hmr_adapter_experiments, data=synthetic.wholebody_dataset,
                         metrics=metrics.wholebody_metrics, baseline=metrics.WholeBodyMeanPoseBaseline,
                         picture=plots.draw_wholebody_predictions, starts_from="hmr_adapter_bases", train_samples=8192,
                         data_fields=("image_size", "hand_image"), data_kinds=WHOLEBODY_KINDS),
}


# ---------------------------------------------------------------------------------------------
# Configuration: the paper's dataclass, overridden field by field with --set key=value


def apply_overrides(cfg, overrides):
    """A copy of the preset `cfg` with each "key=value" of `overrides` (--set's items) applied; a bad item stops
    the command in one line naming it (configs.apply_overrides)."""
    try:
        return configs.apply_overrides(cfg, overrides)
    except ValueError as e:
        fail(str(e))


# ---------------------------------------------------------------------------------------------
# Data: synthetic sets rendered once (the step -> batch stream of each rank: distributed.StepBatches)

ROOT = os.path.dirname(os.path.abspath(__file__))  # the project's modules: ROOT/*.py and ROOT/lab/*.py


def read_source(path):
    """The text of a module's file (the render cache's key reads every file through this)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def project_modules(module):
    """{name: path} of the modules of this project that importing `module` (a dotted name, e.g. "lab.synthetic")
    runs, itself included: the import statements of its file, those inside functions too, followed from file to
    file; a package's __init__.py counts where one of its modules is imported."""
    def path_of(name):
        base = os.path.join(ROOT, *name.split("."))
        return next((p for p in (base + ".py", os.path.join(base, "__init__.py")) if os.path.isfile(p)), None)

    found, todo = {}, [module]
    while todo:
        name = todo.pop()
        path = path_of(name)
        if name in found or path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages it sits in
        for node in ast.walk(ast.parse(read_source(path))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from lab import render`
    return dict(sorted(found.items()))


def cache_version(stage, kind, fields):
    """8 hex digits that change with everything a rendered set of `stage` depends on besides its split, size and
    seed: --data's kind, the data fields' values, the body model folder and the source of every module of this
    project that the stage's data function imports (`project_modules`), so a change to any code the renders run
    renders them anew, and a change elsewhere (a model, the trainer) keeps the cache."""
    modules = project_modules(stage.data.__module__)
    sources = "".join(f"{name}\n{read_source(path)}" for name, path in modules.items())
    key = sources + repr(dict(kind=kind, **fields)) + (os.environ.get("HMR_BODY_MODELS") or "")
    return hashlib.sha1(key.encode()).hexdigest()[:8]


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
    # the cache name carries everything the samples depend on: the data function and --data's kind, the split,
    # size and seed, and `cache_version`; stages reading the same data function and kind with the same fields share it
    version = cache_version(stage, kind, {f: config_leaves(cfg)[f] for f in stage.data_fields})
    cache = os.path.join(getattr(args, "cache", None) or os.path.join(args.out, "cache"),
                         f"{stage.data.__name__}-{kind}-{split}-n{num_samples}-seed{args.seed}-{version}.pt")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    if ranks.master and not os.path.exists(cache):
        print(f"rendering {num_samples} {split} samples into {cache} ({ranks.world_size} rank(s))")
    return synthetic.render_once(dataset, cache, ranks.rank, ranks.world_size, ranks.barrier,
                                 distributed.ignore_sigterm)


def to_device(batch, device):
    """The batch on `device`; on CUDA, images in channels_last (the layout cuDNN's fast kernels want)."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return {k: v.to(device, non_blocking=True, memory_format=layout) if v.dim() == 4
            else v.to(device, non_blocking=True)
            for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Seeds and checkpoints (lab/checkpoints.py: what a checkpoint holds, written atomically and read back)


def seed_everything(seed):
    torch.manual_seed(seed)  # also seeds every cuda device
    np.random.seed(seed)
    random.seed(seed)


def stage_dir(name, args):
    """OUT/<name>: where stage `name` keeps its checkpoint and reports. An ablation row trains in its own
    folder and reads the stages it reuses from OUT (args.reused: {stage: the folder holding it})."""
    return os.path.join(getattr(args, "reused", {}).get(name, args.out), name)


def read_checkpoint(path, name, why):
    """The checkpoint of stage `name` at `path` (checkpoints.load_checkpoint), or one line saying why it was read
    and what is wrong with the file."""
    try:
        return checkpoints.load_checkpoint(path, name)
    except data.InputError as e:
        fail(f"{why}: {e}")


def trained_model(name, args, device):
    """The final model of stage `name` on `device`, frozen, and its config: rebuilt from OUT/<name>/ckpt.pt and
    the checkpoints of the stages it starts from."""
    chain = [(s, MODELS[s].paper.CONFIGS, MODELS[s].paper.build_model) for s in lineage(name)[::-1]]
    paths = {s: os.path.join(stage_dir(s, args), "ckpt.pt") for s, _, _ in chain}
    try:
        model, cfg = checkpoints.load_trained(paths[name], chain, paths.get)
    except data.InputError as e:
        fail(f"stage {name}: {e}")
    return model.to(device), cfg


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(stage, model, cfg, eval_set, baseline, args, ranks, train_set=None):
    """Metrics over the WHOLE held-out set (rank r predicts samples r, r + W, ...), and the same metrics for the
    constant baseline (unless `baseline` is None). With `train_set` (the final evaluation), the paper's optional
    `diagnostics` join the predictions. Returns (metrics, pred, gt) on rank 0, (None,) * 3 elsewhere: pred and gt
    {key: (n, ...)} in the held-out order, gt without images."""
    distributed.stop_if_preempted()  # SIGTERM came during the step before: its checkpoint is written
    n, W, was_training, recipe = len(eval_set), ranks.world_size, model.training, recipe_of(cfg)
    if W > 1:  # every rank scores rank 0's model, the one its checkpoint holds: DDP syncs the buffers at the start of
        for buffer in model.buffers():  # each forward, so after the last step each rank kept its own BatchNorm stats
            dist.broadcast(buffer.data, 0)
    subset = torch.utils.data.Subset(eval_set, list(range(ranks.rank, n, W)))
    loader = torch.utils.data.DataLoader(subset, batch_size=max(1, recipe.batch_size // W), num_workers=args.workers,
                                         worker_init_fn=distributed.ignore_sigterm,
                                         generator=torch.Generator())  # leaves the global RNG alone
    preds, gts = [], []
    with torch.no_grad():
        model.eval()
        diagnose = None
        if train_set is not None and hasattr(stage.paper, "diagnostics"):
            diagnose = stage.paper.diagnostics(model, cfg, data.labels(train_set, limit=16384))  # default sets whole
        for batch in loader:
            # data.py's contract: images are "image" or "<name>_image"; the labels are everything else, kept
            # from the loader's CPU batch beside the predictions brought back to the CPU
            gts.append({k: v for k, v in batch.items() if not (k == "image" or k.endswith("_image"))})
            batch = to_device(batch, ranks.device)
            out = stage.paper.predict(model, batch, cfg)
            if diagnose is not None:
                out.update(diagnose(batch))
            preds.append({k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()})
        model.train(was_training)
    pred = {k: distributed.gather_rows(torch.cat([p[k] for p in preds]), n, ranks) for k in preds[0]}
    gt = {k: distributed.gather_rows(torch.cat([g[k] for g in gts]), n, ranks) for k in gts[0]}
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
    return functools.reduce(lambda node, part: node[part], name.split("/"), summary)


# ---------------------------------------------------------------------------------------------
# One stage: model and optimiser -> data -> resume -> training loop -> final report


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


def parent_metrics(stage, args):
    """The metrics in OUT/<parent>/metrics.json of the stage `stage` starts from ({} for none, or for a parent
    checkpoint copied in without its report)."""
    path = os.path.join(stage_dir(stage.starts_from, args), "metrics.json") if stage.starts_from else ""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        summary = json.load(f)
    return {k: lookup(summary, k) for k in summary.get("metric_names", [])}


def run_stage(name, config_name, cfg, ckpt, args, ranks):
    """Train stage `name` with config `cfg` (preset `config_name`), from scratch or, given its checkpoint
    `ckpt`, from where it stopped, then report it. The stages it starts from must be finished."""
    t_start, stage, out, recipe = time.time(), MODELS[name], stage_dir(name, args), recipe_of(cfg)
    path = os.path.join(out, "ckpt.pt")
    if recipe.batch_size % ranks.world_size:
        fail(f"batch_size {recipe.batch_size} is the global batch; expected a multiple of the {ranks.world_size} ranks")
    os.makedirs(out, exist_ok=True)
    parent = trained_model(stage.starts_from, args, ranks.device)[0] if stage.starts_from else None
    # the files of the stages it starts from, by content: load_trained refuses this stage on any other
    parents = {s: checkpoints.file_hash(os.path.join(stage_dir(s, args), "ckpt.pt")) for s in lineage(name)[1:]}

    # -- model (the same initial weights on every rank) and optimiser over the parameters that train
    seed_everything(args.seed)
    try:
        model = stage.paper.build_model(cfg, parent).to(ranks.device)
    except (ImportError, ValueError, FileNotFoundError, OverflowError, MemoryError, RuntimeError, TypeError) as e:
        # no timm, a refused config, a missing weights file, sizes beyond this machine (a failed allocation is
        # torch's RuntimeError, a size beyond int64 its TypeError): one line, before any rendering
        big = isinstance(e, (OverflowError, MemoryError, RuntimeError, TypeError))
        given = " --set " + " ".join(args.set) if args.set and big else ""
        fail(f"--config {config_name}{given}: {str(e).splitlines()[0] or type(e).__name__}")
    if ranks.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel for all parameters (CPU and CUDA), much faster than the per-tensor loop on small models
    scales, groups = zip(*param_groups(stage.paper, model, cfg))
    optimizer = torch.optim.AdamW([dict(params=g) for g in groups], lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  fused=True)

    # -- data: the training and held-out sets, and the constant baseline fitted on the training labels
    t0 = time.time()
    train_set = build_dataset(name, cfg, "training", args.train_samples or stage.train_samples, args, ranks)
    eval_set = build_dataset(name, cfg, "evaluation", args.eval_samples or stage.eval_samples, args, ranks)
    baseline = stage.baseline(data.labels(train_set)) if ranks.master else None
    ranks.print0(f"data: {len(train_set)} training / {len(eval_set)} held-out samples ({args.data}), "
                 f"{time.time() - t0:.1f}s")

    # -- resume: the same data stream (--data, --seed, training samples), then the checkpoint's state; then DDP
    # wall_before: the stage's wall time in the runs before this one (None: a checkpoint older than the count)
    start_step, history, train_time, changes, wall_before = 0, [], 0.0, [], 0.0
    if ckpt is not None:
        saved = {k: ckpt["data"][k] for k in ("data", "seed", "train_samples")}
        given = dict(data=args.data, seed=args.seed, train_samples=len(train_set))
        if saved != given:
            fail(f"--resume: the checkpoint was trained with {saved}, this run asks for {given}; "
                 "pass the same values or use a new --out")
    seed_everything(args.seed + ranks.rank)  # seed offset: per-rank randomness (dropout) differs
    if ckpt is not None:  # weights, optimiser, step and (when the number of ranks is unchanged) this rank's RNGs
        try:
            checkpoints.check_parents(ckpt, path, lambda s: os.path.join(stage_dir(s, args), "ckpt.pt"))
            checkpoints.load_own_state(model, ckpt["model"], parent, path)
        except data.InputError as e:
            fail(str(e))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # the paper's parameter groups changed since the checkpoint was written
            fail(f"{path}: the optimiser state does not fit this model's parameter groups ({e}); use a new --out")
        if len(ckpt["rng"]) == ranks.world_size:
            checkpoints.set_rng_state(ckpt["rng"][ranks.rank], ranks.device)
        start_step, history, train_time = ckpt["step"], ckpt["history"], ckpt["train_time_s"]
        wall_before = ckpt.get("wall_time_s")
        changes = ckpt.get("changes", [])
        ranks.print0(f"resumed from {path} at step {start_step} ({len(ckpt['rng'])} rank(s) then, "
                     f"{ranks.world_size} now)")
    raw_model = model
    if ranks.world_size > 1:
        # on a CPU with one thread per rank, gloo's all-reduce overlapping the backward pass fights it for the
        # core: one bucket, reduced after the backward pass, is faster there; GPUs keep the default overlap
        one_bucket = {} if ranks.device.type == "cuda" else {"bucket_cap_mb": 1024}
        model = DDP(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None, **one_bucket)
    trainable = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in raw_model.parameters())
    ranks.print0(f"{name} ({config_name}): {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trained | "
                 f"{ranks.world_size} rank(s) on {ranks.device.type}, {torch.get_num_threads()} thread(s) each | "
                 f"global batch {recipe.batch_size} ({recipe.batch_size // ranks.world_size} per rank) | "
                 f"{recipe.max_steps} steps")

    kept = start_step if ckpt is not None else None  # the step of the last whole checkpoint in `path`

    def diverged(why):
        where = (f"kept {path}, the checkpoint of step {kept}, as it was; continue from it with a lower learning rate: "
                 "--resume --set lr=..." if kept is not None else
                 f"no checkpoint was written yet (the first at step {args.ckpt_every or recipe.max_steps})")
        return distributed.Diverged(f"{name}: {why}; {where}")

    def save_checkpoint(steps_done, seconds):  # collective: every rank sends its RNG states, rank 0 writes
        nonlocal kept
        # a checkpoint never holds non-finite weights: every rank looks at its own (the same under DDP)
        weights = [v for v in checkpoints.own_state(raw_model, parent).values() if v.is_floating_point()]
        mine = (checkpoints.rng_state(ranks.device), bool(torch.stack([v.isfinite().all() for v in weights]).all())
                if weights else True)
        gathered = [mine]
        if ranks.world_size > 1:
            gathered = [None] * ranks.world_size
            dist.all_gather_object(gathered, mine)
        rng = [state for state, _ in gathered]
        if not all(finite for _, finite in gathered):
            raise diverged(f"the weights after step {steps_done} are not finite, so its checkpoint is not written")
        if ranks.master:
            n, seen = len(train_set), steps_done * recipe.batch_size  # samples consumed: the data position
            checkpoints.save_file(dict(
                model_name=name, config_name=config_name, config=dataclasses.asdict(cfg),
                model=checkpoints.own_state(raw_model, parent), optimizer=optimizer.state_dict(),
                step=steps_done,  # no scheduler state: the learning rate is learning_rate(cfg, step)
                rng=rng,  # one dict per rank
                data=dict(data=args.data, seed=args.seed, train_samples=n, samples_seen=seen, epoch=seen // n,
                          position_in_epoch=seen % n),
                history=history, train_time_s=seconds, parents=parents,
                wall_time_s=None if wall_before is None else wall_before + time.time() - t_start,
                **({"changes": changes} if changes else {}),  # what a --resume changed (--set lr=...)
            ), path)
        ranks.barrier()
        kept = steps_done

    # -- the training loop: steps start_step .. max_steps, with logs, evaluations and checkpoints
    sampler = distributed.StepBatches(len(train_set), recipe.batch_size, ranks.rank, ranks.world_size, args.seed,
                                      start_step, recipe.max_steps)
    loader = torch.utils.data.DataLoader(distributed.EpochIndexed(train_set), batch_sampler=sampler,
                                         num_workers=args.workers, pin_memory=ranks.device.type == "cuda",
                                         worker_init_fn=distributed.ignore_sigterm,  # SIGTERM: the main process stops
                                         generator=torch.Generator().manual_seed(args.seed))  # not the global RNG
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if ranks.device.type == "cuda" and recipe.amp else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    t_begin = t_last = time.time()
    steps_since = 0
    batches = enumerate(loader, start=start_step)
    while True:
        with distributed.steps_finish():  # SIGTERM waits for the step and its checkpoint
            step, batch = next(batches, (None, None))
            if step is None:
                break
            lr = stage.paper.learning_rate(cfg, step)
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
            with amp:
                loss, terms = stage.paper.training_loss(model, to_device(batch, ranks.device), cfg, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            if recipe.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            else:  # measured alone (clipping would scale the gradients by 1.0: the same numbers, another path)
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            # divergence: a non-finite loss or gradient norm on any rank stops every rank before this update (there is
            # no GradScaler to skip steps: AMP is bf16 autocast), so the last checkpoint stays the last good one
            values = torch.stack([torch.as_tensor(v).detach().float().reshape(()).to(loss.device)
                                  for v in (loss, norm, *terms.values())])
            bad = distributed.any_over_ranks(~values.isfinite(), ranks)
            if bad[0] or bad[1]:
                names = [n for n, b in zip(["loss", "gradient norm", *terms], bad) if b]
                raise diverged(f"step {step + 1} of {recipe.max_steps} is not finite ({', '.join(names)}): every rank "
                               "stopped before its optimiser step")
            optimizer.step()
            done, steps_since = step + 1, steps_since + 1
            if (args.log_every and done % args.log_every == 0) or done == recipe.max_steps:
                keys = list(terms)  # the loss and its terms, averaged over the ranks
                values = distributed.mean_over_ranks([loss.item()] + [terms[k].item() for k in keys], ranks)
                dt = time.time() - t_last
                parts = ", ".join(f"{k} {v:.4f}" for k, v in zip(keys, values[1:]))
                ranks.print0(f"step {done:5d}/{recipe.max_steps} | loss {values[0]:.4f} ({parts}) | lr {lr:.2e} | "
                             f"{steps_since * recipe.batch_size / dt:.0f} samples/s | "
                             f"ETA {(recipe.max_steps - done) * dt / steps_since / 60:.1f} min")
                history.append(dict(step=done, lr=lr, loss=values[0], **dict(zip(keys, values[1:]))))
                t_last, steps_since = time.time(), 0
            stop = distributed.preempted(ranks)  # SIGTERM on any rank: every rank stops after this step
            evaluates = args.eval_every and done % args.eval_every == 0 and done < recipe.max_steps
            # before an evaluation too: SIGTERM during it then loses nothing
            if (args.ckpt_every and done % args.ckpt_every == 0) or done == recipe.max_steps or stop or evaluates:
                save_checkpoint(done, train_time + time.time() - t_begin)
            if stop:
                ranks.print0(f"SIGTERM: stopped after step {done} with its checkpoint {path}; the same command with "
                             "--resume continues")
                raise distributed.Preempted
        if evaluates:
            result, _, _ = evaluate(stage, raw_model, cfg, eval_set, baseline, args, ranks)
            ranks.print0(f"eval at step {done}: {format_metrics(result) if ranks.master else ''}")
            t_last = time.time()  # keep the evaluation out of samples/s
    if recipe.max_steps == 0:  # loaded, not trained (e.g. released weights that build_model read)
        save_checkpoint(0, train_time)
    train_time += time.time() - t_begin

    # -- final report: the held-out evaluation (with the paper's diagnostics) -> metrics.json, predictions.png
    result, pred, gt = evaluate(stage, raw_model, cfg, eval_set, baseline, args, ranks, train_set)
    if ranks.master:
        # the stage's wall time over every run of it (a resumed stage adds this run's to its checkpoint's)
        wall_time = None if wall_before is None else wall_before + time.time() - t_start
        crop = getattr(eval_set, "crop_description", None)  # real hand data: which crop the table scored
        took = "?" if wall_time is None else f"{wall_time / 60:.1f}"
        print(f"final {name} ({recipe.max_steps} steps, {took} min): {format_metrics(result)}"
              + (f" | held-out crop: {crop}" if crop else ""))
        result = {**parent_metrics(stage, args), **result}  # after those of the stages it starts from
        summary = dict(model=name, config=config_name, data=args.data, steps=recipe.max_steps, eval_crop=crop,
                       world_size=ranks.world_size, global_batch=recipe.batch_size, wall_time_s=wall_time,
                       train_time_s=train_time, **nest(result), metric_names=list(result),
                       config_values=dataclasses.asdict(cfg), history=history)
        atomic_write(os.path.join(out, "metrics.json"), lambda f: f.write(json.dumps(summary, indent=1).encode()))
        stage.picture(os.path.join(out, "predictions.png"), eval_set, pred, gt)
        print(f"wrote {out}/metrics.json, {out}/predictions.png, {out}/ckpt.pt")


# ---------------------------------------------------------------------------------------------
# The chain: --model and the stages it starts from


def lineage(name):
    """name and the stages it starts from, newest first."""
    chain = [name]
    while MODELS[chain[-1]].starts_from is not None:
        chain.append(MODELS[chain[-1]].starts_from)
    return chain


def config_fields(name, config_name):
    """The field names of stage `name`'s config `config_name`: its leaves, by name and by dotted path."""
    paths = leaf_paths(MODELS[name].paper.CONFIGS[config_name])
    return set(paths) | {".".join(p) for p in paths.values()}


def stage_overrides(name, items, args):
    """{stage: its --set items} for `name` and each stage it starts from: a stage takes the items naming a
    field of its config; `name` also takes the items no stage has (apply_overrides then names the bad key)."""
    chain, key = lineage(name), lambda item: item.partition("=")[0].strip()
    fields = {s: config_fields(s, args.config) for s in chain}
    known = set().union(*fields.values())
    given = {s: [o for o in items if key(o) in fields[s]] for s in chain}
    given[name] = [o for o in items if key(o) in fields[name] or key(o) not in known]
    return given


def plan_chain(name, overrides, resume, args):
    """What a run of `name` does with each stage, oldest first: [(stage, config name, config, checkpoint to
    resume from or None, whether it trains)]; overrides: {stage: --set items}. A stage `name` starts from is
    reused when its checkpoint in OUT is finished (as trained: --set does not reach it), else resumed or trained.
    Each checkpoint is read here once; a reused stage's weights again when the stage after it is built."""
    plan = []
    for stage in lineage(name)[::-1]:
        preset, path = MODELS[stage].paper.CONFIGS[args.config], os.path.join(stage_dir(stage, args), "ckpt.pt")
        ckpt = None
        if stage == name and resume:
            ckpt = read_checkpoint(path, stage, why="--resume")
        elif stage != name and os.path.exists(path):
            ckpt = read_checkpoint(path, stage, why=f"stage {stage}")
        # --max-steps caps the stages before `name` (a preset of 0 steps stays at 0); --set's max_steps wins
        steps = None if args.max_steps is None else (
            args.max_steps if stage == name else min(args.max_steps, recipe_of(preset).max_steps))
        cap = [f"max_steps={steps}"] if steps is not None else []
        asked = apply_overrides(preset, cap + overrides.get(stage, []))
        if ckpt is None:
            plan.append((stage, args.config, asked, None, True))
            continue
        cfg = config_from_dict(type(preset), ckpt["config"])
        if stage != name and ckpt["step"] >= recipe_of(cfg).max_steps:  # finished: reused as trained
            plan.append((stage, ckpt["config_name"], cfg, None, False))
            continue
        same_run(path, ckpt, cfg, asked, args)
        # the RESUMABLE fields the command gives take their new values; the others keep the checkpoint's
        given = {item.partition("=")[0].split(".")[-1] for item in overrides.get(stage, [])} | (
            {"max_steps"} if steps is not None else set())
        then = recipe_of(cfg).lr
        cfg = with_fields(cfg, **{k: getattr(recipe_of(asked), k) for k in RESUMABLE if k in given})
        if recipe_of(cfg).lr != then:  # a deliberate change (after a divergence): said now, kept in the checkpoint
            now = recipe_of(cfg).lr
            if int(os.environ.get("RANK", 0)) == 0:
                print(f"--resume {path} at step {ckpt['step']}: lr {then:g} then, {now:g} now (--set lr: recorded in "
                      "the checkpoint's 'changes')", flush=True)
            ckpt = dict(ckpt, changes=ckpt.get("changes", []) + [dict(step=ckpt["step"], lr=[then, now])])
        plan.append((stage, ckpt["config_name"], cfg, ckpt, True))
    return plan


# the fields a run may change when it continues a checkpoint: train longer or shorter, or on at a lower learning rate
# after a divergence (--resume --set lr=...)
RESUMABLE = ("max_steps", "lr")


def same_run(path, ckpt, saved, asked, args):
    """Stop in one line when the checkpoint at `path` (config `saved`) was not written by the run the command asks
    for (`asked`: --set on --config's preset): a continued run is the same run (run_stage checks the data)."""
    then, now = config_leaves(saved), config_leaves(asked)
    differ = [f"{k} {then[k]!r} then, {now[k]!r} now" for k in now if k not in RESUMABLE and then.get(k) != now[k]]
    if ckpt["config_name"] != args.config:
        differ.insert(0, f"--config {ckpt['config_name']} then, {args.config} now")
    if differ:
        fail(f"{path} continues another run: {'; '.join(differ)}. Only {', '.join(RESUMABLE)} may change when a run "
             "continues: pass the run's own --config and --set, or a new --out")


def agree(plan, args, ranks):
    """Every rank continues the same run: the same stages, configs, steps and data positions, whatever each read
    from its own disk. Otherwise every rank stops at once, in one line naming the ranks and what differs."""
    mine = [dict(stage=stage, config_name=config_name, config=dataclasses.asdict(cfg), trains=trains,
                 checkpoint=None if ckpt is None else dict(step=ckpt["step"], data=ckpt["data"],
                                                            train_time_s=ckpt["train_time_s"]))
            for stage, config_name, cfg, ckpt, trains in plan]
    if ranks.world_size == 1:
        return
    everyone = [None] * ranks.world_size
    dist.all_gather_object(everyone, mine, group=ranks.cpu_group)
    others = [r for r in range(1, ranks.world_size) if everyone[r] != everyone[0]]
    if not others:
        return
    first, theirs = everyone[0], everyone[others[0]]

    def state(entry):
        return ("reused as trained" if not entry["trains"] else "from step 0" if entry["checkpoint"] is None
                else f"at step {entry['checkpoint']['step']}")
    what = next((f"{a['stage']} {state(a)} on rank 0, {state(b)} on rank {others[0]}"
                 for a, b in zip(first, theirs) if state(a) != state(b)), None)
    what = what or next((f"{a['stage']}'s {k} differs" for a, b in zip(first, theirs) for k in a if a[k] != b[k]),
                        "their stages differ")
    fail(f"ranks {', '.join(map(str, others))} would continue another run than rank 0 ({what}): on a cluster --out "
         "must be one folder every node reads and writes (a shared filesystem)")


def run_chain(plan, args, ranks):
    """Train the stages of `plan_chain`'s plan that train, oldest first."""
    for stage, config_name, cfg, ckpt, trains in plan:
        if trains:
            if stage != plan[-1][0]:
                ranks.print0(f"== stage {stage}, which {plan[-1][0]} starts from ==")
            run_stage(stage, config_name, cfg, ckpt, args, ranks)
            # the stage's DDP wrapper goes now (reference cycles): gloo aborted at exit in 3 of ~50 two-rank CPU
            # runs while one was alive
            gc.collect()


# ---------------------------------------------------------------------------------------------
# The script


def build_parser(description="Train a paper's stages (plain PyTorch; DDP under torchrun).", prog="train.py"):
    """The command's flags (lab/ablate.py adds its own to these)."""
    p = configs.Parser(prog=prog, description=description)
    whole, positive = configs.number(int, "[0, inf)"), configs.number(int, "[1, inf)")
    p.add_argument("--model", required=True, help=f"which stage to train: {' | '.join(MODELS)}")
    p.add_argument("--config", default="tiny", help="preset in the paper's CONFIGS (default: tiny, the CPU demo)")
    kinds = dict.fromkeys(k if k in data.RENDERED_KINDS else f"{k}:PATH" for s in MODELS.values() for k in s.data_kinds)
    p.add_argument("--data", default="synthetic",
                   help=f"{' | '.join(kinds)}: a kind the stage reads (its row's data_kinds; default: synthetic)")
    p.add_argument("--out", default="out", help="output folder; each stage writes to OUT/<stage> (default: out)")
    p.add_argument("--max-steps", type=whole, default=None,
                   help="steps of --model; also caps the stages it starts from that run here (default: the configs')")
    p.add_argument("--ckpt-every", type=whole, default=200,
                   help="write the checkpoint every this many steps, and at the end (default: 200; 0: at the end)")
    p.add_argument("--eval-every", type=whole, default=1000,
                   help="evaluate the held-out set every this many steps and at the end (default: 1000; 0: at the end)")
    p.add_argument("--log-every", type=whole, default=20,
                   help="one log line every this many steps, and at the end (default: 20; 0: at the end)")
    p.add_argument("--seed", type=configs.number(int, "[0, 2147483647]"), default=0,
                   help="seed of the data order, the synthetic data and the initial weights (default: 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, parsed by its type (repeatable), e.g. --set lr=1e-3: for --model "
                   "and each stage it starts from that runs here, where its config has the field")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto, cuda when available)")
    p.add_argument("--workers", type=whole, default=0, help="DataLoader worker processes per rank (default: 0)")
    p.add_argument("--pg-timeout", type=configs.number(float, "(0, inf)"), default=600, metavar="SECONDS",
                   help="seconds a rank waits for the others in a collective (the training step, evaluation, the "
                   "barriers around rendering and saving) before it exits naming the failure (default: 600)")
    p.add_argument("--train-samples", type=positive, default=None,
                   help="size of the synthetic training set (rendered once) of each stage that runs (default: its own)")
    p.add_argument("--eval-samples", type=positive, default=None,
                   help="size of the synthetic held-out set, as --train-samples (default: each stage's own)")
    return p


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
                fail(f"--data {args.data}: " + (f"{file!r} is a folder" if os.path.isdir(file) else
                                                 f"file {file!r} does not exist") + f"; expected {FILE_KINDS[kind]}")
    elif kind not in data.RENDERED_KINDS and not os.path.isdir(path):
        fail(f"--data {args.data}: {'folder ' if not os.path.exists(path) else ''}{path!r} "
             f"{'is a file' if os.path.exists(path) else 'does not exist'}; expected the dataset's root folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        fail(f"--out {args.out}: is a file; expected a folder (made if missing)")
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {args.device}: expected auto, cpu, or cuda on a machine with a GPU")


def check_inputs(plan, args):
    """Every stage's preconditions (the paper's `check_inputs`: environment variables, files its config names),
    with the config each stage of `plan` is built with, before the first trains: a chain never stops at a later
    stage for want of an input."""
    kind, _, path = args.data.partition(":")
    for name, _, cfg, _, _ in plan:
        check = getattr(MODELS[name].paper, "check_inputs", None)
        try:
            if check is not None:
                check(cfg, kind, path)
        except (FileNotFoundError, ValueError) as e:
            which = name if name == args.model else f"{name} (which {args.model} starts from)"
            fail(f"{which}: {str(e).splitlines()[0]}")


def main(argv=None):
    own_process = argv is None  # the command: SIGTERM stops it (lab/distributed.py), a broken group ends it at once
    if own_process:
        distributed.note_sigterm()
    p = build_parser()
    p.epilog = ("On a cluster: torchrun --nnodes=N --nproc_per_node=G --max-restarts=K train.py ... --resume auto, "
                "with --out one folder that every node reads and writes. A rank whose peer died exits within "
                "--pg-timeout, naming the failure (status 1); torchrun restarts the group, which continues from the "
                f"last checkpoint. SIGTERM (preemption) ends every rank with status {distributed.PREEMPTED}, after the "
                "step that runs and its checkpoint; the same command continues.")
    p.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"), metavar="auto",
                   help="continue OUT/<model>/ckpt.pt: weights, optimiser, step, RNG states, data position, with the "
                   "same --config, --set, --data and --seed (only max_steps may change); --resume auto: continue it "
                   "if it exists, else start from step 0 (for every start of a job that torchrun restarts or a "
                   "scheduler requeues)")
    args = p.parse_args(argv)
    check_args(args)
    args.cache = os.path.join(args.out, "cache")  # synthetic sets: shared by every stage and ablation row
    path = os.path.join(stage_dir(args.model, args), "ckpt.pt")
    if not args.resume and os.path.exists(path):
        fail(f"{path} exists: --resume continues it; a new run needs another --out (or the file removed)")
    first_start = args.resume == "auto" and not os.path.exists(path)
    resume = bool(args.resume) and not first_start
    # the stages --model starts from, when their checkpoints are missing or unfinished, then --model itself
    plan = plan_chain(args.model, stage_overrides(args.model, args.set, args), resume, args)
    check_inputs(plan, args)
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # known before the group forms
    for stage, _, cfg, _, trains in plan:
        if trains and recipe_of(cfg).batch_size % world_size:
            fail(f"{stage}: batch_size {recipe_of(cfg).batch_size} is the global batch; expected a multiple of the "
                 f"{world_size} ranks")
    if int(os.environ.get("RANK", 0)) == 0:  # what a write killed midway left (the other ranks wait for rank 0)
        for folder in [stage_dir(stage, args) for stage, *_ in plan] + [args.cache]:
            checkpoints.sweep_temporaries(folder)

    def job(ranks):
        agree(plan, args, ranks)
        if first_start:
            ranks.print0(f"--resume auto: no checkpoint in {stage_dir(args.model, args)} yet; starting at step 0")
        elif int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) and args.resume != "auto":
            ranks.print0("warning: torchrun may restart this job (--max-restarts); without --resume auto a restart "
                         "starts again from step 0")
        run_chain(plan, args, ranks)
    distributed.run_job(job, args, own_process)


if __name__ == "__main__":
    distributed.command(main, "train.py")
