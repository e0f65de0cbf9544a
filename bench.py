"""bench.py: parameter counts, speed and shapes of each paper's model (what a paper file leaves to scripts).

    python bench.py --model simplehand|genhmr|hmr_adapter [--config C] [--params] [--bench] [--shapes]
    python bench.py --data-grid OUT_DIR      # a PNG grid of samples of each synthetic dataset
    python bench.py --data-bench [--count N] # samples per second of each synthetic dataset on one thread

--params: parameter counts per part at the paper's size (next to the paper's figures); --bench (the default
when neither --params nor --shapes is given): inference speed on random weights; --shapes: one random input
through an untrained model, printing what flows where. The measuring functions the tests and notebooks also
use stay in each paper file's diagnostics appendix (`simplehand.benchmark`, `simplehand.fast_inference`,
`genhmr.parameter_table`, `hmr_adapter.parameter_table`); here is what only this script runs, one part per paper:
1. SimpleHand: non-backbone parameter counts (Table 2); eager fp32 latency and throughput, on CUDA also the
   fastest inference path and training throughput (paper configs need timm); stage shapes
2. GenHMR: per-part counts at PAPER; average inference time per image (AITI) for T = 1, 3, 5 and 0, 5, 20
   refinement steps; UGS step by step and the refinement on an untrained model
3. HMR-Adapter: trainable and frozen counts per part; the baseline's and the adapted pipeline's latency; one
   image through both paths of an untrained model
4. Synthetic data (synthetic.py): sample grids with the keypoints drawn, and drawing speed
"""

import argparse
import functools
import math
import pathlib
import time
import types

import torch

import bodymodels
import genhmr
import hmr_adapter
import simplehand
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
    print(f"[{name}] non-backbone parameters: {simplehand.non_backbone_parameters(cfg) / 1e6:.2f}M{paper}")
    with torch.device("meta"):
        tg, mr = simplehand.build_token_generator(cfg), simplehand.build_mesh_regressor(cfg)
    parts = [("token_generator", tg)] + [(f"mesh_regressor.layers[{k}]", m) for k, m in enumerate(mr.layers)]
    parts.append(("mesh_regressor.head", mr.head))
    if cfg.model.backbone == "tiny_cnn":
        parts.append(("backbone (tiny_cnn, not counted)", simplehand.TinyCNN(cfg.model.tiny_widths)))
    for part, m in parts:
        print(f"    {part:34s} {simplehand.count_parameters(m):>10,d}")


def _speed(t):
    return (f"batch 1 latency {t[1] * 1e3:.1f} ms ({1 / t[1]:.1f} FPS); "
            f"batch 32 throughput {32 / t[32]:.1f} images/s")


def simplehand_bench(name, cfg, device, reps):
    """One labelled line each: eager fp32 inference (any device); on CUDA also the fastest inference
    path and training throughput. Measures and prints only."""
    size, fps = cfg.model.image_size, simplehand.REPORTED.get(name, {}).get("fps")
    if cfg.model.backbone != "tiny_cnn" and not timm_available():
        print(f"[{name}] skipped: backbone {cfg.model.backbone!r} needs timm, which is not installed")
        return
    model = simplehand.build_model(with_fields(cfg, pretrained_backbone=False)).to(device).eval()  # speed only
    if device.type == "cpu" and cfg.model.backbone != "tiny_cnn":
        reps = max(2, reps // 10)  # the paper backbones take seconds per batch of 32 on a CPU
    paper = f"  (paper: {fps:.0f} FPS on an RTX 2080 Ti)" if fps else ""
    t = simplehand.benchmark(model, size, device, reps=reps)
    print(f"[{name}] eager fp32 inference, {size}px on {device}: {_speed(t)}{paper}")
    if device.type != "cuda":
        print(f"[{name}] fastest inference: skipped: needs CUDA")
        print(f"[{name}] training throughput: skipped: needs CUDA")
        return
    run, applied = simplehand.fast_inference(model)
    t = simplehand.benchmark(run, size, device, reps=reps)
    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad():
        fast = run(x)["verts"].float().clone()  # read before the next replay overwrites it
        diff_mm = (fast - model(x)["verts"]).abs().max().item() * 1e3
    print(f"[{name}] fastest inference ({', '.join(applied)}): {_speed(t)}; "
          f"max |verts - eager fp32| {diff_mm:.2f} mm")
    del run
    ips = simplehand.benchmark_training(model, cfg, device)
    print(f"[{name}] training throughput (batch 256, bf16 autocast, channels_last, forward + backward + "
          f"AdamW step): {ips:.0f} images/s")


def simplehand_shapes(name):
    """Stage shapes of a randomly initialised model (no ImageNet weights) on two random images."""
    cfg = with_fields(simplehand.CONFIGS[name], pretrained_backbone=False)  # shapes only: random weights
    model = simplehand.build_model(cfg)
    print(f"SimpleHand [{name}]: {simplehand.count_parameters(model) / 1e6:.2f}M parameters, "
          f"{simplehand.non_backbone_parameters(cfg) / 1e6:.2f}M outside the backbone")
    size = cfg.model.image_size
    for stage, shape in simplehand.describe(model, torch.rand(2, 3, size, size)):
        print(f"  {stage:28s} {shape}")


def simplehand_main(args):
    names = [args.config] if args.config else list(simplehand.CONFIGS)
    if args.params:
        for name in names:
            simplehand_params(name, simplehand.CONFIGS[name])
    if args.bench:
        for name in names:
            simplehand_bench(name, simplehand.CONFIGS[name], torch.device(args.device), args.reps)
    if args.shapes:
        simplehand_shapes(args.config or "tiny")


# ---------------------------------------------------------------------------------------------
# 2. GenHMR


def genhmr_models(name="tiny"):
    """An untrained tokenizer (codebook initialised from one batch of random poses) and GenHMR."""
    tok = genhmr.PoseTokenizer(genhmr.TOKENIZER_CONFIGS[name].model).train()
    tok(torch.randn(64, genhmr.NUM_JOINTS, 3) * 0.3)  # initialises the codebook
    return tok.eval(), genhmr.build_model(genhmr.CONFIGS[name], tok.eval()).eval()


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
        runs[f"UGS T=5 + refine P={P}"] = functools.partial(genhmr.predict, model, batch, c)
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
    (tok, model), cfg = genhmr_models(name), genhmr.CONFIGS[name]
    inference = cfg.inference
    ugs = genhmr.uncertainty_guided_sampling(model, torch.rand(1, 3, *cfg.model.image_hw), inference.ugs_iterations,
                                             inference.schedule)
    print(f"GenHMR [{name}]: {genhmr.count_parameters(model) / 1e6:.2f}M parameters "
          f"({genhmr.count_parameters(tok) / 1e6:.2f}M in the frozen tokenizer); L={model.num_tokens} tokens, "
          f"K={model.num_codes} codes; re-mask counts "
          f"{genhmr.remask_counts(model.num_tokens, inference.ugs_iterations)}")
    for t, (masked, conf) in enumerate(ugs["history"], 1):
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
        rows = genhmr.parameter_table(genhmr.PAPER, genhmr.TOKENIZER_PAPER)
        for part, n in rows + [("total (trained in stage 2)", sum(n for _, n in rows[3:]))]:
            print(f"[paper] {part:34s} {n / 1e6:9.2f}M")
    if args.bench:
        for run, seconds in genhmr_benchmark(genhmr_models(name)[1], genhmr.CONFIGS[name]):
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
    base_cfg, cfg = hmr_adapter.BASE_CONFIGS[name], hmr_adapter.CONFIGS[name]
    device = torch.device(args.device)
    if args.params:
        for part, (trainable, frozen) in hmr_adapter.parameter_table().items():
            print(f"{part:26s} trainable {trainable / 1e6:8.2f}M  frozen {frozen / 1e6:8.2f}M  "
                  f"paper: {hmr_adapter.PAPER_COUNTS.get(part, '-')}")
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


MODELS = {"simplehand": (simplehand, simplehand_main), "genhmr": (genhmr, genhmr_main),
          "hmr_adapter": (hmr_adapter, hmr_adapter_main)}


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
