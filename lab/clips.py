"""Synthetic clips with known truth, and what smoothing over time does to a model's predictions on them.

A clip is a moving hand (MANO) or person (SMPL, SMPL-X) rendered frame by frame with lab/synthetic.py's priors
and looks and lab/render.py's shading, through a fixed camera: two poses drawn from the training priors, every
joint's rotation turned from the first to the second (a slerp with an ease-in-out over the clip), the shape fixed,
the root moving across the image on a smooth path. The truth (joints and vertices per frame, the camera, the mesh's
box in each frame) is exact, so a prediction's MPJPE and acceleration error can be measured. A detector's jitter
enters where it would in use: each frame's crop box is the true box, grown by the paper's margin, with its centre
and size perturbed independently frame to frame (Gaussian, `jitter` of the box's size).

`python -m lab.clips --measure` runs each paper's trained default checkpoint (out/<paper>/ckpt.pt) through
demo.py's batched inference on such a clip and prints, for the raw per-frame predictions and for the One-Euro
filter online and offline (lab/smoothing.py), the acceleration error and MPJPE (both root-aligned, mm, as video
HMR papers report them: Kanazawa et al. 2019, HMMR; Kocabas et al. 2020, VIBE) and the same in
the camera frame (the root's placement included). `python -m lab.clips --write DIR` writes a clip per paper as
an MP4, to try `demo.py --video` on.

Map: 1. the motion and the renders (`hand_clip`, `body_clip`, `make_clip`, `jittered_boxes`); 2. the errors
(`mpjpe`, `acceleration_error`); 3. untrained checkpoints (`untrained_checkpoint`), the measurement (`measure`) and
the command.
"""

import argparse
import math
from dataclasses import dataclass, replace

import torch

from bodymodels import mano_to_freihand, perspective_projection
import metrics
from data import sample_rng, skinning
from lab.crops import full_image_intrinsics
from lab.render import render_batch
from lab.smoothing import conjugate, quaternion_from_rotvec, quaternion_multiply, quaternion_to_rotvec
from lab.synthetic import (DEMO_HAND_VIEW, Draws, SyntheticHands, SyntheticPoses, SyntheticWholeBody,
                           background_patterns, outfit_colors, random_lights, skin_colors, upsample_backgrounds)

# ---------------------------------------------------------------------------------------------
# 1. The motion and the renders


@dataclass
class Clip:
    """frames (T, 3, H, W) in [0, 1]; K (3, 3); joints (T, J, 3) and verts (T, V, 3) true, metres, camera frame
    (a hand's joints: FreiHAND's 21); boxes (T, 4) the true mesh's box per frame, pixels; kind "mano" | "smpl" |
    "smplx"; fps."""
    frames: torch.Tensor
    K: torch.Tensor
    joints: torch.Tensor
    verts: torch.Tensor
    boxes: torch.Tensor
    kind: str
    fps: float


def ease(frames):
    """(T,) from 0 to 1, ease-in-out (1 - cos(pi t / (T - 1))) / 2: no jump in velocity at either end."""
    return (1 - torch.cos(math.pi * torch.arange(frames, dtype=torch.float64) / max(frames - 1, 1))) / 2


def slerp(a, b, s):
    """Rotation vectors a, b (J, 3) -> (T, J, 3): each joint turned from a to b by the fractions s (T,) of the
    shorter rotation between them."""
    qa, qb = quaternion_from_rotvec(a), quaternion_from_rotvec(b)
    step = quaternion_to_rotvec(quaternion_multiply(conjugate(qa), qb))  # (J, 3)
    return quaternion_to_rotvec(quaternion_multiply(qa.expand(len(s), -1, -1),
                                                    quaternion_from_rotvec(s[:, None, None] * step)))


def _render(verts, faces, K, hw, color, rng):
    """The frames (T, 3, H, W) of meshes verts (T, V, 3) in one light and on one background pattern."""
    T = len(verts)
    draws = Draws([rng])
    light, ambient = (torch.from_numpy(x).float() for x in random_lights(draws))
    background = upsample_backgrounds(torch.from_numpy(background_patterns(draws)).float(), *hw)
    color = torch.as_tensor(color, dtype=torch.float32).reshape(1, -1, 3).expand(T, -1, -1)
    return render_batch(verts.float(), faces, K.float().expand(T, 3, 3), hw, color, light.expand(T, 3),
                        ambient.expand(T), background.expand(T, -1, -1, -1).contiguous(), True)[0]


def _boxes(verts, K):
    uv = perspective_projection(verts.double(), K.double())
    return torch.cat([uv.amin(1), uv.amax(1)], 1)


def hand_clip(frames=32, hw=(192, 256), seed=0, fps=24.0):
    """A right hand (and its forearm) turning its fingers from one pose of the training prior to another while
    it moves 12 cm across the image and 10 cm in depth, about 0.7 m from a camera of focal 400 pixels."""
    hands = SyntheticHands(2, seed=seed, view_config=DEMO_HAND_VIEW)
    draws = Draws([sample_rng(seed, 0, i) for i in range(2)])
    pose, shape, _, _ = hands.sample_mano(draws)
    s = ease(frames)
    verts, joints = skinning("mano")(slerp(pose[0].double(), pose[1].double(), s), shape[:1].expand(frames, -1))
    joints = mano_to_freihand(joints, verts)
    path = torch.stack([0.12 * s - 0.06, 0.02 * torch.sin(2 * math.pi * s), 0.65 + 0.1 * s], 1)  # metres
    shift = (path - (verts.amax(1) + verts.amin(1)) / 2)[:, None]
    verts, joints = verts + shift, joints + shift
    H, W = hw
    K = torch.tensor([[400.0, 0, W / 2], [0, 400.0, H / 2], [0, 0, 1]], dtype=torch.float64)
    scene = [hands.scene({"verts": v, "joints3d": j, "is_right": torch.tensor(True)}) for v, j in zip(verts, joints)]
    images = _render(torch.stack([v for v, _ in scene]), scene[0][1], K, hw, skin_colors(draws)[0],
                     sample_rng(seed, 0, 2))
    return Clip(images, K, joints, verts, _boxes(verts, K), "mano", fps)


def body_clip(kind="smpl", frames=32, hw=(256, 320), seed=0, fps=24.0):
    """A person (SMPL, or SMPL-X with hands and face) turning from one pose of the training prior to another while
    walking 0.6 m across the image, through HaMeR's demo camera for the frame (focal 5000 / 256 x max(W, H), the
    person about 60 m away: the nearly orthographic camera the body models were trained with)."""
    if kind == "smpl":
        people = SyntheticPoses(2, seed=seed)
        poses = [people[i] for i in range(2)]
        pose = [p["smpl_pose"].double() for p in poses]
        shape, expression = poses[0]["smpl_shape"].double(), None
    else:
        people = SyntheticWholeBody(2, seed=seed)
        poses = [people[i] for i in range(2)]
        pose = [p["smplx_pose"].double() for p in poses]
        shape, expression = poses[0]["smplx_shape"].double(), poses[0]["smplx_expression"].double()
    people.model  # the rig
    s = ease(frames)
    verts, joints = skinning(kind)(slerp(pose[0], pose[1], s), shape.expand(frames, -1),
                                   None if expression is None else expression.expand(frames, -1))
    path = torch.stack([0.6 * s - 0.3, 0.05 * torch.sin(2 * math.pi * s), 60.0 + 2.0 * s], 1)
    shift = (path - (verts.amax(1) + verts.amin(1)) / 2)[:, None]
    verts, joints = verts + shift, joints + shift
    K = full_image_intrinsics((hw[1], hw[0]), dtype=torch.float64)
    rng = sample_rng(seed, 0, 3)
    images = _render(verts, people.rig["faces"], K, hw, outfit_colors(rng, people.rig["part"], people.rig["hair"]),
                     rng)
    return Clip(images, K, joints, verts, _boxes(verts, K), kind, fps)


def make_clip(kind, frames=32, seed=0):
    """`hand_clip` for "mano", else `body_clip(kind)`."""
    return hand_clip(frames, seed=seed) if kind == "mano" else body_clip(kind, frames, seed=seed)


def jittered_boxes(boxes, enlarge, jitter=0.04, seed=0):
    """A detector's boxes: the true boxes (T, 4) grown by enlarge, their centres moved and their sizes scaled
    independently per frame by N(0, jitter^2) of the box's size (sizes by exp of it)."""
    g = torch.Generator().manual_seed(seed)
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * enlarge
    noise = torch.randn(len(boxes), 3, generator=g, dtype=torch.float64) * jitter
    centre = centre + noise[:, :2] * size.max(1, keepdim=True).values
    size = size * noise[:, 2:].exp()
    return torch.cat([centre - size / 2, centre + size / 2], 1)


# ---------------------------------------------------------------------------------------------
# 2. The errors (joints (T, J, 3) metres; root-aligned: the first joint, the wrist or the pelvis, subtracted)


def _aligned(joints, root_aligned):
    return joints - joints[:, :1] if root_aligned else joints


def mpjpe(pred, truth, root_aligned=True):
    """The mean joint distance over joints and frames, mm (`metrics.mpjpe` over the frames)."""
    return 1000 * metrics.mpjpe(pred, truth, root_index=0 if root_aligned else None).mean().item()


def acceleration_error(pred, truth, root_aligned=True):
    """The mean distance between predicted and true joint accelerations x_{t+1} - 2 x_t + x_{t-1}, mm / frame^2
    (HMMR's and VIBE's acceleration error)."""
    accel = lambda x: x[2:] - 2 * x[1:-1] + x[:-2]  # noqa: E731
    error = accel(_aligned(pred, root_aligned)) - accel(_aligned(truth, root_aligned))
    return 1000 * error.norm(dim=-1).mean().item()


# ---------------------------------------------------------------------------------------------
# 3. Untrained checkpoints, the measurement and the command


def untrained_checkpoint(model, folder, config="tiny", seed=0):
    """Checkpoints of demo.py's `model` at `config` with random weights (seed), one per stage of its chain, in
    train.py's format under folder/<stage>/ckpt.pt -> the last one's path: what the tests and the speed measurement
    run demo.py on without training."""
    import dataclasses
    from pathlib import Path

    import demo
    from lab.checkpoints import own_state, save_file

    torch.manual_seed(seed)
    net = path = None
    for stage, configs, build in demo.MODELS[model].stages:
        cfg = configs[config]
        parent, net = net, build(cfg, net)
        for module in net.modules():  # a random codebook stands for a trained one (GenHMR's tokenizer)
            if isinstance(getattr(module, "initialised", None), torch.Tensor):
                module.initialised.fill_(True)
        path = Path(folder) / stage / "ckpt.pt"
        save_file(dict(model_name=stage, config_name=config, config=dataclasses.asdict(cfg),
                       model=own_state(net, parent)), path)
    return path


PAPER_KINDS = {"simplehand": "mano", "genhmr": "smpl", "hmr_adapter": "smplx"}
MARGIN = {"mano": 1.25, "smpl": 1.2, "smplx": 1.2}  # a detector's box around the mesh's: its training crops'


def measure(model, checkpoint=None, frames=48, seed=0, jitter=0.04, batch_size=8, scales=()):
    """demo.py's `model` (its trained checkpoint, default out/<paper>/ckpt.pt) on a synthetic clip, each frame's crop
    from a jittered true box, the camera given (--intrinsics) -> {row: {"accel", "mpjpe", "accel_camera",
    "mpjpe_camera"}} for the rows "raw" (the frames' own predictions), "online" and "offline" (smoothed with
    lab.smoothing.SMOOTHING, posed again through the body model), and for each of `scales` "offline x S": every
    min_cutoff of SMOOTHING times S (how the defaults were chosen)."""
    import demo
    from lab.smoothing import SMOOTHING, smooth_motion

    clip = make_clip(PAPER_KINDS[model], frames, seed)
    paper = demo.MODELS[model]
    K = clip.K
    argv = ["--model", model, "--video", "clip.mp4", "--intrinsics", *(str(float(v)) for v in
                                                                       (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))]
    args = demo.build_parser(model).parse_args(argv + (["--checkpoint", str(checkpoint)] if checkpoint else []))
    loaded = paper.load(args)
    boxes = jittered_boxes(clip.boxes, MARGIN[clip.kind], jitter, seed)
    results = []
    for start in range(0, frames, batch_size):
        idx = range(start, min(start + batch_size, frames))
        results += paper.infer(loaded, clip.frames[list(idx)], [tuple(boxes[i].tolist()) for i in idx],
                               [None] * len(idx), args)
    raw, _, mirrored = paper.motion(results, args)
    rows = {"raw": raw["joints3d"].double()}
    for row, mode, scale in [("online", "online", 1.0), ("offline", "offline", 1.0)] + [
            (f"offline x{scale:g}", "offline", scale) for scale in scales]:
        params = {name: replace(p, min_cutoff=p.min_cutoff * scale) for name, p in SMOOTHING.items()}
        verts, joints, _ = demo.pose_again(paper.kind, smooth_motion(raw, clip.fps, mode, params), mirrored)
        rows[row] = mano_to_freihand(joints, verts) if paper.kind == "mano" else joints
    truth = clip.joints.double()
    return {row: {"accel": acceleration_error(j, truth), "mpjpe": mpjpe(j, truth),
                  "accel_camera": acceleration_error(j, truth, False), "mpjpe_camera": mpjpe(j, truth, False)}
            for row, j in rows.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.clips", description="Synthetic clips with known truth: the "
                                     "acceleration error and MPJPE of each paper's predictions, raw and smoothed.")
    parser.add_argument("--measure", action="store_true", help="print the errors, raw against smoothed")
    parser.add_argument("--write", metavar="DIR", help="write each paper's clip as DIR/<kind>.mp4")
    parser.add_argument("--model", choices=sorted(PAPER_KINDS), action="append", help="the papers (default all)")
    parser.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="the clip's poses, look and jitter (default 0)")
    parser.add_argument("--jitter", type=float, default=0.04, help="the boxes' jitter, a fraction of their size")
    parser.add_argument("--sweep", action="store_true", help="--measure: also offline with every min_cutoff scaled "
                        "by 1/4, 1/2, 2 and 4")
    args = parser.parse_args(argv)
    models = args.model or sorted(PAPER_KINDS)
    if args.write:
        from lab.frames import write_video
        for model in models:
            clip = make_clip(PAPER_KINDS[model], args.frames, args.seed)
            print(f"wrote {write_video(f'{args.write}/{clip.kind}.mp4', clip.frames, clip.fps)}")
    if args.measure:
        print(f"{args.frames} frames, boxes jittered by {args.jitter:.0%} of their size (seed {args.seed}); "
              "mm / frame^2 and mm, root-aligned | in the camera frame")
        for model in models:
            scales = (0.25, 0.5, 2.0, 4.0) if args.sweep else ()
            for row, e in measure(model, frames=args.frames, seed=args.seed, jitter=args.jitter,
                                  scales=scales).items():
                print(f"{model:12s} {row:13s} accel {e['accel']:7.2f}  MPJPE {e['mpjpe']:7.2f} | "
                      f"accel {e['accel_camera']:8.2f}  MPJPE {e['mpjpe_camera']:8.2f}")


if __name__ == "__main__":
    main()
