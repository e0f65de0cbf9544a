"""bench.py: parameter counts, speed and shapes of each paper's model (what a paper file leaves to scripts).

    python bench.py --model simplehand|genhmr|hmr_adapter [--config C] [--params] [--bench] [--shapes]
    python bench.py --data-grid OUT_DIR      # a PNG grid of samples of each synthetic dataset
    python bench.py --data-bench [--count N] # samples per second of each synthetic dataset on one thread

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
4. Synthetic data (synthetic.py): sample grids with the keypoints drawn, and drawing speed
"""

import argparse
import copy
import functools
import math
import pathlib
import time
import types

import torch

import bodymodels
import genhmr
import genhmr_experiments
import hmr_adapter
import hmr_adapter_experiments
import simplehand
import simplehand_experiments
from configs import with_fields
from data import AugmentConfig
from plots import draw_samples
from synthetic import SyntheticBodies, SyntheticHands, SyntheticPoses, SyntheticWholeBody

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
# main


MODELS = {"simplehand": (simplehand_experiments, simplehand_main), "genhmr": (genhmr_experiments, genhmr_main),
          "hmr_adapter": (hmr_adapter_experiments, hmr_adapter_main)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.py", description="Parameter counts, speed and shapes of a paper's "
                                     "model (random weights: no checkpoint is read); sample grids and speed of the "
                                     "synthetic data.")
    parser.add_argument("--model", choices=sorted(MODELS), help="which paper's model")
    parser.add_argument("--config", default=None, help="the paper's config name (default: tiny; simplehand's "
                        "--params and --bench: every config)")
    parser.add_argument("--params", action="store_true", help="parameter counts per part at the paper's size")
    parser.add_argument("--bench", action="store_true", help="inference speed on random weights (the default "
                        "when neither --params nor --shapes is given)")
    parser.add_argument("--shapes", action="store_true", help="one random input through an untrained model: the "
                        "shapes of what flows where")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for --bench (simplehand, hmr_adapter): cpu or cuda; GenHMR's runs on the CPU")
    parser.add_argument("--reps", type=int, default=20, help="simplehand: timed repetitions per batch size")
    parser.add_argument("--repeats", type=int, default=10, help="hmr_adapter: timed runs per pipeline")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--data-grid", metavar="OUT_DIR", help="save a PNG grid of samples of each synthetic "
                        "dataset here, the keypoints drawn")
    parser.add_argument("--data-bench", action="store_true", help="print samples per second of each synthetic "
                        "dataset on one thread")
    parser.add_argument("--count", type=int, default=200, help="--data-bench: samples timed per dataset")
    args = parser.parse_args(argv)
    if args.data_grid:
        for path in data_grid(args.data_grid):
            print(f"saved {path}")
    if args.data_bench:
        data_bench(args.count)
    if args.model is None:
        if not (args.data_grid or args.data_bench):
            parser.error("expected --model, --data-grid or --data-bench")
        return
    module, run = MODELS[args.model]
    if args.config is not None and args.config not in module.CONFIGS:
        parser.error(f"--config {args.config!r} is not one of {args.model}'s: {', '.join(module.CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.bench = args.bench or not (args.params or args.shapes)
    run(args)


if __name__ == "__main__":
    main()
