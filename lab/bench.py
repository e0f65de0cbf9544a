"""lab/bench.py: parameter counts, speed and shapes of each paper's model (what a paper file leaves to scripts).

    python -m lab.bench --model simplehand|genhmr|hmr_adapter [--config C] [--params] [--bench] [--shapes]
    python -m lab.bench --data-grid OUT_DIR      # a PNG grid of samples of each synthetic dataset
    python -m lab.bench --data-bench [--count N] # samples per second of each synthetic dataset on one thread
    python -m lab.bench --video-fps [--model M] [--count N] [--threads T]  # demo.py --video's frames per second
    python -m lab.bench --compare-official simplehand|hmr_adapter|genhmr|all [--official-simplehand PATH]
                    [--official-hamer PATH]  # ours against the official code (docs/reference.md)

--params: parameter counts per part at the paper's size (next to the paper's figures); --bench (the default
when neither --params nor --shapes is given): inference speed on random weights; --shapes: one random input
through an untrained model, printing what flows where. The measuring functions the tests and notebooks also
use stay in each paper's experiments file (`simplehand_experiments.non_backbone_parameters`, `.describe`,
`genhmr_experiments.parameter_table`, `hmr_adapter_experiments.parameter_table`); here is what only this
script runs, one part per paper:
1. SimpleHand: non-backbone parameter counts (Table 2); eager fp32 latency and throughput, on CUDA also the
   fastest inference path and training throughput (paper configs need timm); stage shapes. Its measuring
   functions live here: `benchmark`, `reparameterized`, `fast_inference`, `benchmark_training`
2. GenHMR: per-part counts at PAPER; average inference time per image (AITI) for T = 1, 3, 5 and 0, 5, 20
   refinement steps; UGS step by step and the refinement on an untrained model
3. HMR-Adapter: trainable and frozen counts per part; the baseline's and the adapted pipeline's latency; one
   image through both paths of an untrained model
4. Synthetic data (lab/synthetic.py): sample grids with the keypoints drawn, and drawing speed
5. Against the official code: the same training steps and forwards through ours and the official simpleHand
   HandNet / HaMeR expert (imported at run time from a checkout the user names), GenHMR and the adapters beside the
   papers' figures; median time, peak memory, ratio, MFU; a reduced size off CUDA
6. Video: frames per second of demo.py's per-frame work (crop, model, placement in the image) on a synthetic clip,
   one frame per call against a batch of 8 (`--batch-size`), random weights at tiny
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import importlib
import importlib.util
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings

import numpy as np
import torch
import torch.nn as nn

import bodymodels
import genhmr
from lab import genhmr_experiments
import hmr_adapter
from lab import hmr_adapter_experiments
import simplehand
from lab import simplehand_experiments
from lab.configs import with_fields
from data import AugmentConfig
from lab.plots import draw_samples
from lab.synthetic import SyntheticBodies, SyntheticHands, SyntheticPoses, SyntheticWholeBody

# ---------------------------------------------------------------------------------------------
# 1. SimpleHand


def timm_available():
    try:
        import timm  # noqa: F401
        return True
    except ImportError:
        return False


def simplehand_params(name, cfg):
    paper = f" (Table 2 reports {1.9:.1f}M for HRNet)" if name.startswith("paper") else ""
    n = simplehand_experiments.non_backbone_parameters(cfg)
    print(f"[{name}] non-backbone parameters: {n / 1e6:.2f}M{paper}")
    with torch.device("meta"):
        tg = simplehand_experiments.build_token_generator(cfg)
        mr = simplehand_experiments.build_mesh_regressor(cfg)
    parts = [("token_generator", tg)] + [(f"mesh_regressor.layers[{k}]", m) for k, m in enumerate(mr.layers)]
    parts.append(("mesh_regressor.head", mr.head))
    if cfg.model.backbone == "tiny_cnn":
        parts.append(("backbone (tiny_cnn, not counted)", simplehand.TinyCNN(cfg.model.tiny_widths)))
    for part, m in parts:
        print(f"    {part:34s} {simplehand_experiments.count_parameters(m):>10,d}")


def benchmark(run, image_size, device, batch_sizes=(1, 32), warmup=5, reps=20):
    """Seconds per call of `run` (a model in eval mode, or `fast_inference`'s function) on random
    images (B, 3, S, S) in [0, 1] on `device`, without grad -> {batch size: seconds}."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {}
    with torch.no_grad():
        for b in batch_sizes:
            x = torch.rand(b, 3, image_size, image_size, device=device)
            for _ in range(warmup):  # CUDA graphs are recorded in the first calls of each shape
                run(x)
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                run(x)
            sync()
            times[b] = (time.perf_counter() - t0) / reps
    return times


def reparameterized(model):
    """A copy of the model (eval mode) with FastViT's train-time branches folded into single
    convolutions by timm's `reparameterize_model` (exact up to rounding, using BatchNorm's running
    statistics) -> (copy, applied: bool). Backbones without such branches (HRNet, tiny) are copied as they are."""
    model = copy.deepcopy(model).eval()
    if not any(hasattr(m, "reparameterize") for m in model.backbone.modules()):
        return model, False
    from timm.utils.model import reparameterize_model
    with torch.no_grad():
        reparameterize_model(model.backbone, inplace=True)
    return model, True


def fast_inference(model):
    """The fastest inference path we trust, on CUDA -> (run: fp32 images -> outputs, [what was applied]).

    `reparameterized` (FastViT), then fp16 weights and activations, channels_last, and CUDA graphs
    through `torch.compile(mode="reduce-overhead")`, one static graph per batch size.
    """
    model, folded = reparameterized(model)
    applied = ["FastViT re-parameterised (timm reparameterize_model)"] if folded else []
    model = model.half().to(memory_format=torch.channels_last)
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    applied += ["fp16", "channels_last", 'CUDA graphs (torch.compile mode="reduce-overhead")']

    def run(images):
        torch.compiler.cudagraph_mark_step_begin()  # a new replay: it may overwrite earlier outputs
        return compiled(images.half().contiguous(memory_format=torch.channels_last))
    return run, applied


def benchmark_training(model, cfg, device, batch_size=256, steps=10, warmup=3):
    """Training images per second on CUDA, as train.py runs on a GPU: a copy of the model and the
    images in channels_last, bf16 autocast, forward + `training_loss` + backward + fused AdamW step."""
    model = copy.deepcopy(model).to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.recipe.lr, weight_decay=cfg.recipe.weight_decay, fused=True)
    S = cfg.model.image_size
    batch = {"image": torch.rand(batch_size, 3, S, S, device=device).contiguous(memory_format=torch.channels_last),
             "verts": torch.randn(batch_size, simplehand.NUM_VERTS, 3, device=device) * 0.03,  # metres
             "joints3d": torch.randn(batch_size, simplehand.NUM_JOINTS, 3, device=device) * 0.03,
             "joints2d": torch.rand(batch_size, simplehand.NUM_JOINTS, 2, device=device) * S}  # pixels
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = simplehand_experiments.training_loss(model, batch, cfg, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def _speed(t):
    return (f"batch 1 latency {t[1] * 1e3:.1f} ms ({1 / t[1]:.1f} FPS); "
            f"batch 32 throughput {32 / t[32]:.1f} images/s")


def simplehand_bench(name, cfg, device, reps):
    """One labelled line each: eager fp32 inference (any device); on CUDA also the fastest inference
    path and training throughput. Measures and prints only."""
    size, fps = cfg.model.image_size, simplehand_experiments.REPORTED.get(name, {}).get("fps")
    if cfg.model.backbone != "tiny_cnn" and not timm_available():
        print(f"[{name}] skipped: backbone {cfg.model.backbone!r} needs timm, which is not installed")
        return
    model = simplehand_experiments.build_model(with_fields(cfg, pretrained_backbone=False)).to(device).eval()
    if device.type == "cpu" and cfg.model.backbone != "tiny_cnn":
        reps = max(2, reps // 10)  # the paper backbones take seconds per batch of 32 on a CPU
    paper = f"  (paper: {fps:.0f} FPS on an RTX 2080 Ti)" if fps else ""
    t = benchmark(model, size, device, reps=reps)
    print(f"[{name}] eager fp32 inference, {size}px on {device}: {_speed(t)}{paper}")
    if device.type != "cuda":
        print(f"[{name}] fastest inference: skipped: needs CUDA")
        print(f"[{name}] training throughput: skipped: needs CUDA")
        return
    run, applied = fast_inference(model)
    t = benchmark(run, size, device, reps=reps)
    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad():
        fast = run(x)["verts"].float().clone()  # read before the next replay overwrites it
        diff_mm = (fast - model(x)["verts"]).abs().max().item() * 1e3
    print(f"[{name}] fastest inference ({', '.join(applied)}): {_speed(t)}; "
          f"max |verts - eager fp32| {diff_mm:.2f} mm")
    del run
    ips = benchmark_training(model, cfg, device)
    print(f"[{name}] training throughput (batch 256, bf16 autocast, channels_last, forward + backward + "
          f"AdamW step): {ips:.0f} images/s")


def simplehand_shapes(name):
    """Stage shapes of a randomly initialised model (no ImageNet weights) on two random images."""
    cfg = with_fields(simplehand_experiments.CONFIGS[name], pretrained_backbone=False)  # shapes: random weights
    model = simplehand_experiments.build_model(cfg)
    print(f"SimpleHand [{name}]: {simplehand_experiments.count_parameters(model) / 1e6:.2f}M parameters, "
          f"{simplehand_experiments.non_backbone_parameters(cfg) / 1e6:.2f}M outside the backbone")
    size = cfg.model.image_size
    for stage, shape in simplehand_experiments.describe(model, torch.rand(2, 3, size, size)):
        print(f"  {stage:28s} {shape}")


def simplehand_main(args):
    names = [args.config] if args.config else list(simplehand_experiments.CONFIGS)
    if args.params:
        for name in names:
            simplehand_params(name, simplehand_experiments.CONFIGS[name])
    if args.bench:
        for name in names:
            simplehand_bench(name, simplehand_experiments.CONFIGS[name], torch.device(args.device), args.reps)
    if args.shapes:
        simplehand_shapes(args.config or "tiny")


# ---------------------------------------------------------------------------------------------
# 2. GenHMR


def genhmr_models(name="tiny"):
    """An untrained tokenizer (codebook initialised from one batch of random poses) and GenHMR."""
    tok = genhmr.PoseTokenizer(genhmr_experiments.TOKENIZER_CONFIGS[name].model).train()
    tok(torch.randn(64, genhmr.NUM_JOINTS, 3) * 0.3)  # initialises the codebook
    return tok.eval(), genhmr_experiments.build_model(genhmr_experiments.CONFIGS[name], tok.eval()).eval()


def genhmr_benchmark(model, cfg, iterations=(1, 3, 5), refine_iterations=(0, 5, 20), reps=3):
    """AITI (seconds per image, batch 1, mean of `reps` calls after a warm-up): UGS for each T, then
    UGS-5 + refinement for each P."""
    H, W = cfg.model.image_hw
    batch = {"image": torch.rand(1, 3, H, W), "joints2d": torch.rand(1, genhmr.NUM_JOINTS, 2) * H,
             "index": torch.zeros(1)}
    runs = {f"UGS T={T}": functools.partial(genhmr.uncertainty_guided_sampling, model, batch["image"], T)
            for T in iterations}
    for P in refine_iterations:
        c = with_fields(cfg, ugs_iterations=5, refine_iterations=P)
        runs[f"UGS T=5 + refine P={P}"] = functools.partial(genhmr_experiments.predict, model, batch, c)
    rows = []
    for name, fn in runs.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rows.append((name, (time.perf_counter() - t0) / reps))
    return rows


def genhmr_shapes(name):
    """Untrained models, one random image: UGS step by step (which tokens stay masked), then refinement."""
    (tok, model), cfg = genhmr_models(name), genhmr_experiments.CONFIGS[name]
    inference = cfg.inference
    ugs = genhmr.uncertainty_guided_sampling(model, torch.rand(1, 3, *cfg.model.image_hw), inference.ugs_iterations,
                                             inference.schedule)
    count = genhmr_experiments.count_parameters
    print(f"GenHMR [{name}]: {count(model) / 1e6:.2f}M parameters "
          f"({count(tok) / 1e6:.2f}M in the frozen tokenizer); L={model.num_tokens} tokens, "
          f"K={model.num_codes} codes; re-mask counts "
          f"{genhmr.remask_counts(model.num_tokens, inference.ugs_iterations)}")
    for t, (masked, conf, _) in enumerate(ugs["history"], 1):
        row = "".join("#" if m else "." for m in masked[0].tolist())
        print(f"  UGS t={t}: {row}  ({int(masked.sum())} masked, mean confidence {conf.mean():.4f})")
    targets = torch.rand(1, genhmr.NUM_JOINTS, 2) - 0.5
    G, e0 = genhmr.refinement_problem(tok, ugs["ids"], ugs["betas"], ugs["cam"], targets, inference.refine_reg,
                                      cfg.model.image_hw[0])
    G0, G1 = G(e0), G(genhmr.refine(G, e0, inference)[-1])
    print(f"  refinement ({inference.refine_iterations} steps) against random joints2d: G {G0.item():.1f} -> "
          f"{G1.item():.1f}")


def genhmr_main(args):
    name = args.config or "tiny"
    if args.params:
        rows = genhmr_experiments.parameter_table(genhmr.PAPER, genhmr.TOKENIZER_PAPER)
        for part, n in rows + [("total (trained in stage 2)", sum(n for _, n in rows[3:]))]:
            print(f"[paper] {part:34s} {n / 1e6:9.2f}M")
    if args.bench:
        for run, seconds in genhmr_benchmark(genhmr_models(name)[1], genhmr_experiments.CONFIGS[name]):
            print(f"[{name}] {run:24s} {seconds * 1e3:8.1f} ms per image (untrained weights, CPU)")
    if args.shapes:
        genhmr_shapes(name)


# ---------------------------------------------------------------------------------------------
# 3. HMR-Adapter


@torch.no_grad()
def hmr_adapter_benchmark(base_cfg, cfg, device, batch=1, repeats=10):
    """Median seconds per image of the baseline pipeline (frozen models + IK) and the adapted one, on
    random weights and a random image of the config's size (the median: one stall is not the speed)."""
    model = hmr_adapter.HMRAdapter(cfg.model, hmr_adapter.Bases(base_cfg.model)).to(device).eval()
    image = torch.rand(batch, 3, *base_cfg.data.image_size, device=device)
    times = {}
    for name, adapted in (("baseline", False), ("adapted", True)):
        piped = model if adapted else types.SimpleNamespace(bases=model.bases)
        hmr_adapter.pipeline(piped, image, adapted)  # warm-up
        runs = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            hmr_adapter.pipeline(piped, image, adapted)
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs.append((time.perf_counter() - t) / batch)
        times[name] = sorted(runs)[len(runs) // 2]
    return times


def hmr_adapter_shapes(base_cfg, cfg, device):
    """One image through both paths of an untrained model: what flows where."""
    torch.manual_seed(0)
    model = hmr_adapter.HMRAdapter(cfg.model, hmr_adapter.Bases(base_cfg.model)).to(device).eval()
    image = torch.rand(1, 3, *base_cfg.data.image_size, device=device)
    with torch.no_grad():
        out = model.bases.whole_body(image)
        print({k: tuple(v.shape) for k, v in out.items()})
        verts, joints, boxes = hmr_adapter.pipeline(model, image, adapted=True)
    print(f"adapted pipeline: SMPL-X verts {tuple(verts.shape)}, joints {tuple(joints.shape)}, "
          f"hand boxes {boxes[0].tolist()}")
    print("train it: torchrun --standalone --nproc_per_node=2 train.py --model hmr_adapter")


def hmr_adapter_main(args):
    name = args.config or "tiny"
    base_cfg, cfg = hmr_adapter_experiments.BASE_CONFIGS[name], hmr_adapter_experiments.CONFIGS[name]
    device = torch.device(args.device)
    if args.params:
        for part, (trainable, frozen) in hmr_adapter_experiments.parameter_table().items():
            print(f"{part:26s} trainable {trainable / 1e6:8.2f}M  frozen {frozen / 1e6:8.2f}M  "
                  f"paper: {hmr_adapter_experiments.PAPER_COUNTS.get(part, '-')}")
    if args.bench:
        times = hmr_adapter_benchmark(base_cfg, cfg, device, repeats=args.repeats)
        print(f"{name} on {device.type}: baseline {1e3 * times['baseline']:.1f} ms/image, adapted "
              f"{1e3 * times['adapted']:.1f} ms/image (+{100 * (times['adapted'] / times['baseline'] - 1):.1f} %)")
    if args.shapes:
        hmr_adapter_shapes(base_cfg, cfg, device)


# ---------------------------------------------------------------------------------------------
# 4. Synthetic data


def samples_per_second(dataset, count, batch=1):
    """(wall-clock, CPU-time) samples per second of drawing count samples on this thread, batch at
    a time through __getitems__ when batch > 1 (as a DataLoader does); model loading not timed."""
    dataset[0]
    count = batch * math.ceil(count / batch)  # whole batches: the samples actually drawn
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, count, batch):
        indices = [i % len(dataset) for i in range(start + 1, start + 1 + batch)]
        dataset.__getitems__(indices) if batch > 1 else dataset[indices[0]]
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def data_grid(out_dir, count=16):
    """Save one PNG grid per synthetic dataset into out_dir; returns their paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    hands = SyntheticHands(count, image_size=224, seed=0, left_hand_prob=0.25)
    samples = [hands[i] for i in range(count)]
    titles = [("right" if bool(s["is_right"]) else "left") for s in samples]
    paths.append(draw_samples(samples, bodymodels.FREIHAND_PARENTS, out_dir / "synthetic_hands.png", titles))
    augmented = SyntheticHands(count, image_size=128, seed=0, augment=True,
                               augment_config=AugmentConfig(flip_prob=0.5))
    samples = [augmented[i] for i in range(count)]
    titles = [("right" if bool(s["is_right"]) else "left") + " (augmented, 128 px)" for s in samples]
    paths.append(draw_samples(samples, bodymodels.FREIHAND_PARENTS, out_dir / "synthetic_hands_augmented.png", titles))
    bodies = SyntheticBodies(count, seed=0)
    paths.append(draw_samples([bodies[i] for i in range(count)], bodymodels.SMPL_PARENTS,
                              out_dir / "synthetic_bodies.png"))
    whole = SyntheticWholeBody(count // 2, seed=0, occlusion_prob=0.5)
    samples = [whole[i] for i in range(count // 2)]
    paths.append(draw_samples(samples, bodymodels.SMPLX_PARENTS, out_dir / "synthetic_wholebody.png",
                              boxes_keys=("left_hand_box", "right_hand_box")))
    return paths


def data_bench(count):
    """Print samples per second on one thread: wall-clock (what a training loop sees) and per
    CPU-second (less sensitive to other processes on the machine)."""
    torch.set_num_threads(1)
    cases = (("SyntheticHands 224 px", SyntheticHands(1000, image_size=224), 1),
             ("SyntheticHands 224 px, batches of 32", SyntheticHands(1000, image_size=224), 32),
             ("SyntheticHands 224 px, augment", SyntheticHands(1000, image_size=224, augment=True), 1),
             ("SyntheticHands 128 px", SyntheticHands(1000, image_size=128), 1),
             ("SyntheticBodies 256 px", SyntheticBodies(1000, image_size=256), 1),
             ("SyntheticBodies 256 px, batches of 32", SyntheticBodies(1000, image_size=256), 32),
             ("SyntheticPoses", SyntheticPoses(1000), 1),
             ("SyntheticWholeBody 256x192, half the hands occluded", SyntheticWholeBody(1000, occlusion_prob=0.5), 1))
    print(f"torch {torch.__version__}, 1 thread; the numbers drop when other processes share the CPU")
    for name, dataset, batch in cases:
        n = max(count // 5, 5) if isinstance(dataset, SyntheticWholeBody) else count
        wall, cpu = samples_per_second(dataset, n, batch)
        print(f"{name:46s} {wall:7.1f} samples/s wall-clock, {cpu:7.1f} per CPU-second", flush=True)


# ---------------------------------------------------------------------------------------------
# 5. Against the official code: the same work through ours and the official module, in one process
#
# The official modules are imported at run time from the repository folder the user names (nothing of theirs is
# here): simpleHand's hand_net.py with its models/ package, HaMeR's ViT and MANO head without the package
# __init__ files that pull in Lightning, renderers and detectors. Each side is built, measured and freed before
# the other, on the same inputs, under the same recipe. Off CUDA (or with --small) everything runs at a reduced
# size: a smoke test of the machinery, not a result.


class BenchError(Exception):
    """A bad flag value, or an official repository that cannot be built here: one line, exit status 2."""


PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense fp16/bf16 tensor-core peak, TFLOP/s (NVIDIA's SXM datasheets)
OFFICIAL = {  # flag: (what it names, files read, packages their imports need beyond torch and numpy)
    "simplehand": ("patienceFromZhou/simpleHand", ("hand_net.py", "cfg.py", "models/modules.py",
                   "models/position_embedding.py", "models/losses.py", "models/mano_torch.py",
                   "models/MANO_RIGHT_C.pkl", "models/MANO_LEFT_C.pkl"), ("timm",)),
    "hamer": ("geopavlakos/hamer", ("hamer/models/backbones/vit.py", "hamer/models/heads/mano_head.py",
              "hamer/models/components/pose_transformer.py", "hamer/models/components/t_cond_mlp.py",
              "hamer/utils/geometry.py"), ("timm", "einops"))}
PAPER_FIGURES = {  # what each paper reports for the work of a row (SimpleHand's FPS: REPORTED)
    "HaMeR forward": "32 ms per crop (RTX 3090, geopavlakos/hamer#1)",
    "GenHMR UGS T=1": "0.032 s", "GenHMR UGS T=5": "0.102 s", "GenHMR refine P=1": "0.154 s",
    "GenHMR refine P=5": "0.253 s"}  # GenHMR: AITI, RTX A5000


def check_official(name, path):
    """The official repository folder `path` for --official-<name>: every file the bench imports or reads is there,
    and every package those files import is installed. -> the absolute path; BenchError (one line) if not."""
    repo, files, packages = OFFICIAL[name]
    flag = f"--official-{name} {path}"
    if not os.path.isdir(path):
        raise BenchError(f"{flag}: not a folder (expected a checkout of {repo})")
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise BenchError(f"{flag}: lacks {', '.join(missing)} (expected a checkout of {repo})")
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    if absent:
        raise BenchError(f"{flag}: its modules import {', '.join(absent)}, not installed here (pip install "
                         f"{' '.join(absent)}); without them only our side runs")
    return os.path.abspath(path)


@contextlib.contextmanager
def official_import(path, names):
    """Import an official repository's modules from `path`: its folder first on sys.path and the working
    directory (simpleHand's models/losses.py opens models/MANO_*_C.pkl at import), for the import only. The
    top-level module names it uses (`names`) are taken back afterwards; the modules live on in what was built."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in names}
    cwd = os.getcwd()
    sys.path.insert(0, path)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(path)
        for k in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[k]
        sys.modules.update(saved)


class AttrDict(dict):
    """yacs' CfgNode as HaMeR's MANO head reads its config: keys as attributes, and .get."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class Patchify(nn.Module):
    """The reduced size's backbone on both sides: one stride-p convolution to a 7 x 7 map, read through
    `forward_features` as HandNet reads timm's (tests/official/simplehand/README.md built its fixture so)."""

    def __init__(self, channels, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, channels, patch, stride=patch)

    def forward_features(self, x):
        return self.proj(x)


class ForwardFeatures(nn.Module):
    """Our backbone interface around a `forward_features` network: images -> (map, the same map), as
    `simplehand.TimmBackbone` gives for FastViT (its parameters under `net.`, as official_state_dict maps them)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        feature = self.net.forward_features(x)
        return feature, feature


def batches(x):
    """The inference inputs of a row pair: the first sample alone, and the whole batch (if more than one)."""
    return [x[:1]] + ([x] if len(x) > 1 else [])


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count_flops(fn):
    """FLOPs of one call of fn(): its matrix products and convolutions (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def training_flops(loss_of):
    """A training step's FLOPs: 3 x those of its forward, loss_of() (the backward counted as twice the forward, as
    model FLOPs utilisation is defined: PaLM, App. B). FlopCounterMode's own count of a backward ignores
    convolution groups: it counts a depthwise convolution's weight gradient as a dense one's (FastViT-MA36's
    step came out at 9 x its forward)."""
    with torch.no_grad():
        return 3 * count_flops(loss_of)


def measure(fn, device, reps, warmup, flops=None):
    """fn() timed: the median seconds of `reps` calls after `warmup` (each call between torch.cuda.synchronize
    on CUDA), the peak CUDA memory over the timed calls (bytes; None on the CPU), and the FLOPs of one call,
    counted once after the warm-up: `count_flops(fn)`, or flops() where given (a training step: `training_flops`)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    counted = count_flops(fn) if flops is None else flops()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), (torch.cuda.max_memory_allocated() if cuda else None), counted


def training_step(loss_of, optimizer, precision, clip=0.0):
    """One training step as the official recipes take it (simpleHand train.py; HaMeR's Lightning precision 16):
    autocast ("fp16" with a GradScaler, "bf16", or "fp32" without either), backward, gradients unscaled and
    clipped to `clip` (0: not), the optimiser's step. loss_of() -> the scalar loss of one forward."""
    device = optimizer.param_groups[0]["params"][0].device
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = loss_of()
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
    return step


def side_figures(model, loss_of, optimizer, precision, clip, forward, inputs, run):
    """One side's rows: its training step, then (the optimiser freed) its eval-mode forward on each of `inputs`
    -> {"train": (s, peak, flops), ("infer", B): ...}. run: the `CompareRun`."""
    figures = {"train": measure(training_step(loss_of, optimizer, precision, clip), run.device, run.reps, run.warmup,
                                functools.partial(training_flops, loss_of))}
    optimizer.state.clear()
    model.zero_grad(set_to_none=True)
    model.eval()
    free(run.device)
    with torch.no_grad():
        for x in inputs:
            figures[("infer", len(x))] = measure(functools.partial(forward, x), run.device, run.reps, run.warmup)
    return figures


@dataclasses.dataclass
class CompareRun:
    """What every comparison reads: the device, whether at the reduced size, timed steps and warm-up, where the
    official repositories are (None: only our side), the batch of every training and batch-B row (0: each paper's,
    4 at the reduced size), and the rows printed so far."""
    device: torch.device
    small: bool
    reps: int
    warmup: int
    batch: int = 0
    official_simplehand: str = None
    official_hamer: str = None
    rows: list = dataclasses.field(default_factory=list)

    def batch_of(self, paper):
        """The batch of a row whose paper batch is `paper`."""
        return self.batch or (4 if self.small else paper)

    @property
    def train_precision(self):
        return "fp16" if self.device.type == "cuda" else "fp32"  # fp16 autocast is not what a CPU runs

    @property
    def layout(self):
        # ours trains channels-last on CUDA (train.py), so both sides get it there
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format

    def peak(self):
        """The GPU's fp16/bf16 peak FLOP/s (PEAK_TFLOPS), None where unknown (the CPU)."""
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else ""
        return next((tflops * 1e12 for gpu, tflops in PEAK_TFLOPS.items() if gpu in name), None)

    def row(self, paper, work, batch, dtype, ours, official=None, note=""):
        """Print and keep one row: ours and official are `measure`'s (s, peak bytes, FLOPs), or None."""
        peak = self.peak()

        def cells(fig):
            if fig is None:
                return "-", "-", "-"
            s, mem, flops = fig
            mfu = f"{100 * flops / s / peak:.1f}%" if peak and flops else "n/a"
            return f"{s * 1e3:.2f}", "n/a" if mem is None else f"{mem / 2 ** 30:.2f}", mfu
        o, f = cells(ours), cells(official)
        ratio = f"{ours[0] / official[0]:.2f}" if ours and official else "-"
        gflop = f"{ours[2] / 1e9:.3g}" if ours else "-"
        line = (f"{paper:12s} {work:40s} {batch:>5d} {dtype:>5s} {o[0]:>10s} {f[0]:>10s} {ratio:>6s} {o[1]:>7s} "
                f"{f[1]:>7s} {o[2]:>6s} {f[2]:>6s} {gflop:>9s}  {note}")
        self.rows.append(line)
        print(line, flush=True)



def official_optimizer_simplehand(model, recipe):
    # official (simpleHand train.py): AdamW, no weight decay on names with "bn" or "bias"
    decay = [p for n, p in model.named_parameters() if not ("bn" in n or "bias" in n)]
    no_decay = [p for n, p in model.named_parameters() if "bn" in n or "bias" in n]
    return torch.optim.AdamW([dict(params=decay), dict(params=no_decay, weight_decay=0.0)], lr=recipe.lr,
                             weight_decay=recipe.weight_decay)


def project_optimizer(paper, model, cfg):
    """The optimiser train.py builds (its param_groups, fused AdamW)."""
    import train
    scales, groups = zip(*train.param_groups(paper, model, cfg))
    return torch.optim.AdamW([dict(params=g, lr=cfg.recipe.lr * s) for s, g in zip(scales, groups)],
                             lr=cfg.recipe.lr, weight_decay=cfg.recipe.weight_decay, fused=True)


def official_handnet(path, backbone, channels, cfg):
    """The official `HandNet` (simpleHand hand_net.py, cfg.py's _CONFIG, pretrained=False) with the decoder sizes
    of our config `cfg` (a SimpleHandConfig) and `backbone`: a timm model name, or a module with forward_features
    (the reduced size's `Patchify`) that timm.create_model is made to return; channels: its map's."""
    with official_import(path, ("hand_net", "cfg", "models", "hiera")), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm 1.0: "Importing from timm.models.layers is deprecated"
        if importlib.util.find_spec("hiera") is None:  # hand_net.py imports it for its Hiera backbones only
            sys.modules["hiera"] = types.ModuleType("hiera")
        hand_net = importlib.import_module("hand_net")
        config = copy.deepcopy(importlib.import_module("cfg")._CONFIG)
    model_cfg = config["MODEL"]
    model_cfg["BACKBONE"]["model_name"] = backbone if isinstance(backbone, str) else "stand-in"
    model_cfg["UV_HEAD"]["in_features"] = model_cfg["MESH_HEAD"]["in_channels"] = channels
    model_cfg["MESH_HEAD"].update(token_nums=list(cfg.num_tokens), dims=list(cfg.dims), depths=list(cfg.depths))
    if isinstance(backbone, str):
        return hand_net.HandNet(config, pretrained=False)
    timm = hand_net.timm
    hand_net.timm = types.SimpleNamespace(create_model=lambda *args, **kwargs: backbone)
    try:
        return hand_net.HandNet(config, pretrained=False)
    finally:
        hand_net.timm = timm


# the reduced size: a 112 px crop, Patchify(32, 16) for the backbone on both sides (built as tiny_cnn, then
# replaced: the tiny_cnn fields pass its checks), the decoder's widths quartered
SIMPLEHAND_SMALL = dict(backbone="tiny_cnn", image_size=112, feature_channels=32, global_channels=32, feature_stride=8,
                        tiny_widths=(32, 32, 32, 32), dims=(64, 32, 16))


def compare_simplehand(run):
    """SimpleHand's presets against the official HandNet with the same timm backbone: the training step at the
    official per-GPU batch 32 (simpleHand cfg.py), inference at batch 1 (FPS: the paper's 70) and 32."""
    batch = run.batch_of(32)  # official (simpleHand cfg.py): MINIBATCH_SIZE_PER_DIVICE 32
    names = ("official",) if run.small else ("official", "paper_fastvit", "paper")
    dev, layout = run.device, run.layout
    for name in names:
        cfg = with_fields(simplehand_experiments.CONFIGS[name], pretrained_backbone=False,
                          **(SIMPLEHAND_SMALL if run.small else {}))
        S, g = cfg.model.image_size, torch.Generator().manual_seed(0)
        rgb = torch.rand(batch, 3, S, S, generator=g).to(dev).contiguous(memory_format=layout)
        bgr255 = (rgb.flip(1) * 255).contiguous(memory_format=layout)  # official (hand_net.py): cv2's BGR, 0-255
        labels = dict(verts=0.03 * torch.randn(batch, simplehand.NUM_VERTS, 3, generator=g),
                      joints3d=0.03 * torch.randn(batch, simplehand.NUM_JOINTS, 3, generator=g),
                      joints2d=S * torch.rand(batch, simplehand.NUM_JOINTS, 2, generator=g))
        labels = {k: v.to(dev) for k, v in labels.items()}

        def ours():
            model = simplehand_experiments.build_model(cfg)
            if run.small:
                model.backbone = ForwardFeatures(Patchify(32, 16))
            return model.to(dev, memory_format=layout)

        def official():
            if run.small:
                return official_handnet(run.official_simplehand, Patchify(32, 16), 32, cfg.model).to(dev)
            with torch.device("meta"):
                import timm
                channels = timm.create_model(cfg.model.backbone).num_features
            net = official_handnet(run.official_simplehand, cfg.model.backbone, channels, cfg.model)
            return net.to(dev, memory_format=layout)

        note = ""
        if run.official_simplehand and name == "official":  # the same network: our outputs from its weights
            a, b = ours().eval(), official().eval()
            bodymodels.load_state_strict(a, simplehand.official_state_dict(b.state_dict()), "official HandNet")
            with torch.no_grad():
                diff = (a(rgb[:2])["verts"] - b(bgr255[:2])["vertices"]).abs().max().item()
            note = f"its weights in ours: max |verts diff| {diff * 1e3:.1e} mm"
            del a, b
        elif run.official_simplehand and name == "paper":
            note = "not one network: ours samples HRNet's stride-8 map (Sec. 4.1), HandNet its forward_features"
        free(dev)
        model = ours()
        loss_of = lambda: simplehand_experiments.training_loss(model, dict(labels, image=rgb), cfg, 0)[0]  # noqa: E731
        mine = side_figures(model, loss_of, project_optimizer(simplehand_experiments, model, cfg),
                            run.train_precision, cfg.recipe.grad_clip, model, batches(rgb), run)
        del model, loss_of
        free(dev)
        theirs = {}
        if run.official_simplehand:
            model = official()
            target = dict(uv=labels["joints2d"] / S, xyz=labels["joints3d"], vertices=labels["verts"],
                          uv_valid=torch.ones(batch, simplehand.NUM_JOINTS, device=dev),
                          xyz_valid=torch.ones(batch, device=dev))
            loss_of = lambda: model(bgr255, target)["total_loss"]  # noqa: E731
            theirs = side_figures(model, loss_of, official_optimizer_simplehand(model, cfg.recipe),
                                  run.train_precision, cfg.recipe.grad_clip, model, batches(bgr255), run)
            del model, loss_of
            free(dev)
        label = f"[{name}] {cfg.model.backbone if not run.small else 'Patchify'}"
        run.row("SimpleHand", f"{label} training step", batch, run.train_precision, mine["train"],
                theirs.get("train"), note)
        paper = simplehand_experiments.REPORTED[name]["fps"]  # at batch 1 on an RTX 2080 Ti (Sec. 4.1, Table 1)
        for b in dict.fromkeys((1, batch)):
            fps = f"FPS ours {1 / mine[('infer', 1)][0]:.0f}; paper {paper:.0f} (RTX 2080 Ti)" if b == 1 else ""
            run.row("SimpleHand", f"{label} inference", b, "fp32", mine[("infer", b)], theirs.get(("infer", b)),
                    fps)


HAMER_SMALL = dict(hand_width=64, hand_depth=2, hand_heads=2, head_dim=64, head_depth=2, head_heads=2,
                   head_dim_head=32, head_mlp=128)


def official_hamer(path, cfg, folder):
    """HaMeR's `ViT` (hamer/models/backbones/vit.py, `vit(cfg)`'s arguments at cfg's width, depth and heads) and
    `MANOTransformerDecoderHead` (hamer_vit_transformer.yaml's decoder at cfg's sizes), as a module whose state
    dict has HaMeR's names (backbone.*, mano_head.*), built from those files without the package __init__ files
    (Lightning, renderers, detectors). Its MEAN_PARAMS file (ours: a flat hand, betas 0, cam 0.9, 0, 0) goes
    to `folder`."""
    with official_import(path, ("hamer",)), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in ("hamer", "hamer.models", "hamer.models.backbones", "hamer.models.heads",
                     "hamer.models.components", "hamer.utils"):
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(path, *name.split("."))]
            sys.modules[name] = package
        vit = importlib.import_module("hamer.models.backbones.vit")
        head = importlib.import_module("hamer.models.heads.mano_head")
    mean = os.path.join(folder, "mano_mean_params.npz")
    flat = bodymodels.matrix_to_rot6d(torch.eye(3, device="cpu")).repeat(16)  # (96,) the identity's 6D, 16 joints
    np.savez(mean, pose=flat.numpy(), shape=np.zeros(10, np.float32), cam=np.array([0.9, 0.0, 0.0], np.float32))
    decoder = dict(depth=cfg.head_depth, heads=cfg.head_heads, mlp_dim=cfg.head_mlp, dim_head=cfg.head_dim_head,
                   dropout=0.0, emb_dropout=0.0, norm="layer", context_dim=cfg.hand_width, dim=cfg.head_dim)
    head_cfg = AttrDict(MODEL=AttrDict(MANO_HEAD=AttrDict(TYPE="transformer_decoder", TRANSFORMER_DECODER=decoder)),
                        MANO=AttrDict(NUM_HAND_JOINTS=15, MEAN_PARAMS=mean))
    return nn.ModuleDict(dict(
        backbone=vit.ViT(img_size=(cfg.hand_crop, cfg.hand_crop * 3 // 4), patch_size=cfg.hand_patch,
                         embed_dim=cfg.hand_width, depth=cfg.hand_depth, num_heads=cfg.hand_heads, ratio=1,
                         use_checkpoint=False, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.55),
        mano_head=head.MANOTransformerDecoderHead(head_cfg)))


def hamer_parameter_loss(R, betas, targets):
    """HaMeR's parameter terms on both sides (hamer_vit_transformer.yaml: orient and pose 0.001, betas 0.0005; MSE
    on rotation matrices): R (B, 16, 3, 3), betas (B, 10). Its keypoint terms need MANO and are left out on both."""
    R_t, betas_t = targets
    return 0.001 * ((R - R_t) ** 2).sum((1, 2, 3)).mean() + 0.0005 * ((betas - betas_t) ** 2).sum(1).mean()


def compare_hamer(run):
    """HaMeR's expert (its ViT + MANO head) against hmr_adapter.HandExpert at the paper's size: forward at batch
    1 and 32 (fp32 as its demo), and a training step at 32 (its Lightning precision 16: fp16 autocast + scaler,
    AdamW lr 1e-5, wd 1e-4)."""
    cfg = dataclasses.replace(hmr_adapter.BASES_PAPER.model, **(HAMER_SMALL if run.small else {}))
    batch, dev, S = run.batch_of(32), run.device, cfg.hand_crop
    g = torch.Generator().manual_seed(0)
    crops = torch.randn(batch, 3, S, S, generator=g).to(dev)  # ImageNet-normalised crops
    targets = (bodymodels.axis_angle_to_matrix(0.3 * torch.randn(batch, 16, 3, generator=g)).to(dev),
               torch.randn(batch, 10, generator=g).to(dev))
    recipe = types.SimpleNamespace(lr=1e-5, weight_decay=1e-4)  # official (hamer_vit_transformer.yaml)
    cut = S // 8  # official (hamer.py forward_step): the ViT reads x[:, :, :, 32:-32]

    def official_forward(net, x):
        params, cam, _ = net.mano_head(net.backbone(x[..., cut:S - cut]))
        return params, cam

    with tempfile.TemporaryDirectory() as folder:
        def official():
            with torch.device(dev):
                return official_hamer(run.official_hamer, cfg, folder).to(dev)

        def ours():
            with torch.device(dev):
                return hmr_adapter.HandExpert(cfg).to(dev)
        note = ""
        if run.official_hamer:  # the same network: our outputs from its weights
            a, b = ours().eval(), official().eval()
            bodymodels.load_state_strict(a, hmr_adapter.hamer_state_dict(b.state_dict()), "HaMeR expert")
            with torch.no_grad():
                R = bodymodels.rot6d_to_matrix(a(crops[:2])[0])
                params, _ = official_forward(b, crops[:2])
                diff = (R - torch.cat([params["global_orient"], params["hand_pose"]], 1)).abs().max().item()
            note = f"its weights in ours: max |R diff| {diff:.1e}"
            del a, b
            free(dev)
        model = ours()

        def loss_of():
            pose, betas, _ = model(crops)
            return hamer_parameter_loss(bodymodels.rot6d_to_matrix(pose.float()), betas.float(), targets)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
        mine = side_figures(model, loss_of, opt, run.train_precision, 0.0, model, batches(crops), run)
        del model, loss_of, opt
        free(dev)
        theirs = {}
        if run.official_hamer:
            model = official()

            def loss_of():
                params, _ = official_forward(model, crops)
                R = torch.cat([params["global_orient"], params["hand_pose"]], 1)
                return hamer_parameter_loss(R.float(), params["betas"].float(), targets)
            opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
            theirs = side_figures(model, loss_of, opt, run.train_precision, 0.0,
                                  functools.partial(official_forward, model), batches(crops), run)
            del model, loss_of, opt
            free(dev)
    size = "reduced" if run.small else "ViT-H + head"
    run.row("HaMeR", f"expert ({size}) training step", batch, run.train_precision, mine["train"],
            theirs.get("train"), note)
    for b in dict.fromkeys((1, batch)):
        run.row("HaMeR", f"expert ({size}) forward", b, "fp32", mine[("infer", b)], theirs.get(("infer", b)),
                f"paper: {PAPER_FIGURES['HaMeR forward']}" if b == 1 else "")


def compare_hmr_adapter(run):
    """HMR-Adapter (no official code): HaMeR's expert against ours (`compare_hamer`), the adapters' training step
    at the paper's 32 people per GPU (as train.py takes it), and the pipeline at batch 1, adapted against the
    baseline."""
    compare_hamer(run)
    name = "tiny" if run.small else "paper"
    base_cfg, cfg = hmr_adapter_experiments.BASE_CONFIGS[name], hmr_adapter_experiments.CONFIGS[name]
    batch, dev = run.batch_of(cfg.recipe.batch_size // (cfg.recipe.gpus or 1)), run.device  # 32 per V100 (Sec. 4.1)
    model = hmr_adapter.HMRAdapter(cfg.model, hmr_adapter.Bases(base_cfg.model)).to(dev)  # built as bench --bench does
    H, W = cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.3 * W, 0.6 * H], [0.7 * W, 0.6 * H]])  # (2, 2) left, right
    half = H / 16
    joints2d = centres[None, :, None] + half * (torch.rand(batch, 2, 21, 2, generator=g) - 0.5)  # (B, 2, 21, 2)
    batch_ = dict(image=torch.rand(batch, 3, H, W, generator=g),
                  smplx_pose=0.2 * torch.randn(batch, 55, 3, generator=g),
                  joints3d=0.3 * torch.randn(batch, 55, 3, generator=g),
                  joints2d=torch.rand(batch, 55, 2, generator=g) * torch.tensor([W, H]))
    for i, side in enumerate(hmr_adapter.SIDES):
        batch_[f"{side}_hand_box"] = torch.cat([centres[i] - half, centres[i] + half]).expand(batch, 4)
        batch_[f"{side}_hand_joints2d"] = joints2d[:, i]
        batch_[f"{side}_hand_mano_pose"] = 0.2 * torch.randn(batch, 16, 3, generator=g)
    batch_ = {k: v.to(dev) for k, v in batch_.items()}
    precision = "bf16" if cfg.recipe.amp and dev.type == "cuda" else "fp32"  # as train.py runs it
    model.train()
    step = training_step(lambda: hmr_adapter_experiments.training_loss(model, batch_, cfg, 0)[0],
                         project_optimizer(hmr_adapter_experiments, model, cfg), precision, cfg.recipe.grad_clip)
    run.row("HMR-Adapter", f"[{name}] adapters' training step", batch, precision,
            measure(step, dev, run.reps, run.warmup), None, "no official code")
    del step
    model.eval()
    free(dev)
    image = batch_["image"][:1]
    with torch.no_grad():
        for adapted in (False, True):
            piped = model if adapted else types.SimpleNamespace(bases=model.bases)
            fig = measure(functools.partial(hmr_adapter.pipeline, piped, image, adapted), dev, run.reps, run.warmup)
            run.row("HMR-Adapter", f"[{name}] pipeline, {'adapted' if adapted else 'baseline'}", 1, "fp32", fig,
                    None, "no official code")


def compare_genhmr(run):
    """GenHMR (no official code): UGS per image at T = 1 and 5, UGS T = 5 + refinement at P = 1 and 5, batch 1,
    beside the paper's AITI; the image stage's training step at the paper's 48 (as train.py takes it)."""
    name = "tiny" if run.small else "paper"
    cfg, dev = genhmr_experiments.CONFIGS[name], run.device
    model = genhmr_models(name)[1].to(dev)
    H, W = cfg.model.image_hw
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, H, W, generator=g).to(dev)
    joints2d = (torch.rand(1, genhmr.NUM_JOINTS, 2, generator=g) * torch.tensor([W, H])).to(dev)
    for T, P in ((1, None), (5, None), (5, 1), (5, 5)):
        inference = dataclasses.replace(cfg.inference, ugs_iterations=T, refine_iterations=P or 0)
        fn = functools.partial(model.generate, image, None if P is None else joints2d, cfg=inference)
        work, paper = f"UGS T={T}", PAPER_FIGURES[f"GenHMR UGS T={T}" if P is None else f"GenHMR refine P={P}"]
        work += "" if P is None else f" + refinement P={P}"
        run.row("GenHMR", f"[{name}] {work} + SMPL", 1, "fp32", measure(fn, dev, run.reps, run.warmup), None,
                f"paper AITI {paper} (RTX A5000)")
    batch = run.batch_of(cfg.recipe.batch_size)  # "batch size of 48"
    pose = 0.2 * torch.randn(batch, genhmr.NUM_JOINTS, 3, generator=g)
    batch_ = dict(image=torch.rand(batch, 3, H, W, generator=g), smpl_pose=pose,
                  smpl_shape=torch.randn(batch, genhmr.NUM_BETAS, generator=g),
                  joints3d=0.3 * torch.randn(batch, genhmr.NUM_JOINTS, 3, generator=g),
                  joints2d=torch.rand(batch, genhmr.NUM_JOINTS, 2, generator=g) * torch.tensor([W, H]))
    batch_ = {k: v.to(dev) for k, v in batch_.items()}
    precision = "bf16" if cfg.recipe.amp and dev.type == "cuda" else "fp32"  # as train.py runs it
    model.train()
    step = training_step(lambda: genhmr_experiments.training_loss(model, batch_, cfg, 0)[0],
                         project_optimizer(genhmr_experiments, model, cfg), precision, cfg.recipe.grad_clip)
    run.row("GenHMR", f"[{name}] image stage training step", batch, precision,
            measure(step, dev, run.reps, run.warmup), None, "no official code")


COMPARISONS = {"simplehand": compare_simplehand, "hmr_adapter": compare_hmr_adapter, "genhmr": compare_genhmr}


def compare_official(which, run):
    """`--compare-official`: the header, then each paper's rows (COMPARISONS; "all": every paper in turn)."""
    if run.device.type == "cuda":  # as train.py runs (lab/distributed.py): TF32 matrix products on both sides
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    where = torch.cuda.get_device_name() if run.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    size = "REDUCED size (a smoke test of the machinery: not a result)" if run.small else "the papers' size"
    batch = f", every batch {run.batch}" if run.batch else ""
    print(f"python -m lab.bench --compare-official {which}: {where}, torch {torch.__version__}, {size}{batch}; "
          f"median of {run.reps} calls after {run.warmup} warm-up calls and one that counts FLOPs; official "
          f"simpleHand: {run.official_simplehand or 'not given'}, HaMeR: {run.official_hamer or 'not given'}")
    print("times in ms; memory: peak CUDA GiB; MFU: the step's FLOPs (counted once) over the GPU's fp16/bf16 peak; "
          "ratio = ours / official")
    print(f"{'paper':12s} {'work':40s} {'batch':>5s} {'dtype':>5s} {'ours ms':>10s} {'official':>10s} {'ratio':>6s} "
          f"{'mem':>7s} {'off mem':>7s} {'MFU':>6s} {'off MFU':>6s} {'GFLOP':>9s}  note", flush=True)
    failed = []
    for name in (COMPARISONS if which == "all" else (which,)):
        try:
            COMPARISONS[name](run)
        except Exception:  # one paper's failure must not cost the other papers' rows of a short GPU lease
            traceback.print_exc()
            failed.append(name)
    if failed:
        raise SystemExit(f"python -m lab.bench: --compare-official {', '.join(failed)} failed (traceback above); the "
                         "other rows stand")
    return run.rows


# ---------------------------------------------------------------------------------------------
# 6. Video: frames per second of demo.py --video's per-frame work


def video_fps(model, frames=16, batch_sizes=(1, 8), config="tiny", seed=0, repeats=5):
    """demo.py's batched inference for `model` (`Paper.infer`: the crops, the model, the meshes placed in the image)
    with random weights at `config`, on a synthetic clip of `frames` frames (lab/clips.py), each frame's crop at its
    true box -> {batch size: frames per second over the median of `repeats` timed passes}, after one untimed batch.
    Smoothing, the .glb and the overlay are per video, not per frame, and not counted."""
    import demo
    from lab import clips

    paper = demo.MODELS[model]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = clips.untrained_checkpoint(model, folder, config, seed)
        args = demo.build_parser(model).parse_args(["--model", model, "--video", "clip", "--checkpoint",
                                                    str(checkpoint)])
        loaded = paper.load(args)
    clip = clips.make_clip(paper.kind, frames, seed)
    boxes = [tuple(b.tolist()) for b in clips.jittered_boxes(clip.boxes, clips.MARGIN[clip.kind], 0.0)]

    def run(batch):
        for start in range(0, frames, batch):
            n = min(batch, frames - start)
            paper.infer(loaded, clip.frames[start:start + n], boxes[start:start + n], [None] * n, args)

    speed = {}
    for batch in batch_sizes:
        run_once = min(batch, frames)
        paper.infer(loaded, clip.frames[:run_once], boxes[:run_once], [None] * run_once, args)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
        speed[batch] = frames / statistics.median(times)
    return speed


def video_main(args):
    for model in [args.model] if args.model else sorted(MODELS):
        speed = video_fps(model, args.count)
        one, batched = speed[1], speed[8]
        print(f"{model} [tiny] demo.py --video on {torch.get_num_threads()} threads: {one:.1f} frames/s one frame "
              f"at a time, {batched:.1f} frames/s in batches of 8 ({batched / one:.2f} x)")


# ---------------------------------------------------------------------------------------------
# main


MODELS = {"simplehand": (simplehand_experiments, simplehand_main), "genhmr": (genhmr_experiments, genhmr_main),
          "hmr_adapter": (hmr_adapter_experiments, hmr_adapter_main)}


class Parser(argparse.ArgumentParser):
    """argparse, its errors in one line (the flag, the value, what is accepted) with exit status 2."""

    def error(self, message):
        raise BenchError(message)


def check_args(args):
    """Every flag checked before any work: a value out of range, or a flag the chosen commands do not read,
    raises BenchError naming the flag, the value and what is accepted. Fills in the defaults."""
    for flag, value, low in (("--reps", args.reps, 1), ("--repeats", args.repeats, 1), ("--count", args.count, 1),
                             ("--batch", args.batch, 1), ("--threads", args.threads, 0)):
        if value is not None and value < low:
            raise BenchError(f"{flag} {value}: expected an integer >= {low}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device here (expected --device cpu)")
    if args.model is None and args.compare_official is None and not (args.data_grid or args.data_bench
                                                                     or args.video_fps):
        raise BenchError("expected --model, --compare-official, --data-grid, --data-bench or --video-fps")
    readers = {  # flag given -> (is it read, by what)
        "--config": (args.config is None or args.model, "--model"),
        "--params": (not args.params or args.model, "--model"), "--bench": (not args.bench or args.model, "--model"),
        "--shapes": (not args.shapes or args.model, "--model"),
        "--repeats": (args.repeats is None or args.model == "hmr_adapter", "--model hmr_adapter"),
        "--reps": (args.reps is None or args.model == "simplehand" or args.compare_official,
                   "--model simplehand or --compare-official"),
        "--count": (args.count is None or args.data_bench or args.video_fps, "--data-bench or --video-fps"),
        "--size": (args.size is None or args.compare_official, "--compare-official"),
        "--batch": (args.batch is None or args.compare_official, "--compare-official"),
        "--official-simplehand": (args.official_simplehand is None or args.compare_official in ("simplehand", "all"),
                                  "--compare-official simplehand or all"),
        "--official-hamer": (args.official_hamer is None or args.compare_official in ("hmr_adapter", "all"),
                             "--compare-official hmr_adapter or all")}
    for flag, (read, by) in readers.items():
        if not read:
            raise BenchError(f"{flag} is read only with {by}")
    if args.video_fps and (args.params or args.bench or args.shapes):
        raise BenchError("--video-fps times demo.py --video alone: not with --params, --bench or --shapes")
    if args.model is not None and args.config is not None and args.config not in MODELS[args.model][0].CONFIGS:
        raise BenchError(f"--config {args.config!r} is not one of {args.model}'s: "
                         f"{', '.join(MODELS[args.model][0].CONFIGS)}")
    if args.data_grid and os.path.exists(args.data_grid) and not os.path.isdir(args.data_grid):
        raise BenchError(f"--data-grid {args.data_grid}: a file, expected a folder (made if missing)")
    if args.official_simplehand is not None:
        args.official_simplehand = check_official("simplehand", args.official_simplehand)
    if args.official_hamer is not None:
        args.official_hamer = check_official("hamer", args.official_hamer)
    args.repeats = 10 if args.repeats is None else args.repeats
    args.count = (16 if args.video_fps else 200) if args.count is None else args.count


def main(argv=None):
    parser = Parser(prog="python -m lab.bench", description="Parameter counts, speed and shapes of a paper's model "
                    "(random weights: no checkpoint is read); its speed against the official code; sample grids "
                    "and speed of the synthetic data.")
    parser.add_argument("--model", choices=sorted(MODELS), help="which paper's model")
    parser.add_argument("--config", default=None, help="the paper's config name (default: tiny; simplehand's "
                        "--params and --bench: every config)")
    parser.add_argument("--params", action="store_true", help="parameter counts per part at the paper's size")
    parser.add_argument("--bench", action="store_true", help="inference speed on random weights (the default "
                        "when neither --params nor --shapes is given)")
    parser.add_argument("--shapes", action="store_true", help="one random input through an untrained model: the "
                        "shapes of what flows where")
    parser.add_argument("--compare-official", choices=sorted(COMPARISONS) + ["all"], help="time the same work "
                        "through ours and the official module (section 5; simplehand needs --official-simplehand, "
                        "hmr_adapter --official-hamer, else only our side runs; genhmr has no official code)")
    parser.add_argument("--official-simplehand", metavar="PATH", help="--compare-official: a checkout of "
                        "patienceFromZhou/simpleHand (hand_net.py, cfg.py, models/); its modules need timm")
    parser.add_argument("--official-hamer", metavar="PATH", help="--compare-official: a checkout of "
                        "geopavlakos/hamer (hamer/models/...); its modules need timm and einops")
    parser.add_argument("--size", choices=("paper", "reduced"), help="--compare-official: the papers' size "
                        "(the default on CUDA) or the reduced one (the default on the CPU): a smoke test, not a result")
    parser.add_argument("--batch", type=int, help="--compare-official: the batch of every training and batch-B "
                        "row (default: each paper's, 32 or 48; 4 at the reduced size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"),
                        help="device for --bench (simplehand, hmr_adapter) and --compare-official; GenHMR's --bench "
                        "runs on the CPU")
    parser.add_argument("--reps", type=int, default=None, help="simplehand --bench: timed repetitions per batch size "
                        "(default 20); --compare-official: timed steps per row (default 20, 3 at the reduced size)")
    parser.add_argument("--repeats", type=int, default=None, help="hmr_adapter: timed runs per pipeline (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--data-grid", metavar="OUT_DIR", help="save a PNG grid of samples of each synthetic "
                        "dataset here, the keypoints drawn")
    parser.add_argument("--data-bench", action="store_true", help="print samples per second of each synthetic "
                        "dataset on one thread")
    parser.add_argument("--count", type=int, default=None, help="--data-bench: samples timed per dataset "
                        "(default 200); --video-fps: frames timed (default 16)")
    parser.add_argument("--video-fps", action="store_true", help="frames per second of demo.py --video's per-frame "
                        "work, one frame at a time against batches of 8 (--model, else every paper)")
    try:
        args = parser.parse_args(argv)
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.data_grid:
            for path in data_grid(args.data_grid):
                print(f"saved {path}")
        if args.data_bench:
            data_bench(args.count)
        if args.compare_official:
            device = torch.device(args.device)
            small = (args.size or ("paper" if device.type == "cuda" else "reduced")) == "reduced"
            reps, warmup = args.reps or (3 if small else 20), 5 if device.type == "cuda" else 0
            compare_official(args.compare_official, CompareRun(device, small, reps, warmup, args.batch or 0,
                                                               args.official_simplehand, args.official_hamer))
        if args.video_fps:
            video_main(args)
        elif args.model is not None:
            args.reps = args.reps or 20
            args.bench = args.bench or not (args.params or args.shapes)
            MODELS[args.model][1](args)
    except BenchError as e:
        print(f"python -m lab.bench: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
