"""demo.py: a photograph or a video in, meshes out, for each paper's trained model (as HaMeR's, WiLoR's and
4D-Humans' demo.py).

    python demo.py --model simplehand|genhmr|hmr_adapter --image PATH [--checkpoint FILE] [--box X0 Y0 X1 Y1]
                   [--keypoints FILE] [--intrinsics FX FY CX CY] [--out DIR]
    python demo.py --model M --video FILE | --images DIR [the same] [--batch-size N] [--smooth offline|online|off]
                   [--fps F] [--correctives]

    image --(--box, or the --keypoints' person)--> the paper's crop --> the model --> meshes in the crop's camera
          --> meshes in the full image's camera (HaMeR's demo convention, or --intrinsics)
          --> OUT/NAME.png (the picture, plots.draw_demo), OUT/NAME[_side].obj, OUT/NAME.npz (with a README entry)
    video --(each frame's keypoints, else the tracked region)--> crops, --batch-size at a time --> the model
          --> a motion (the body model's rotations, shape, root) --> One-Euro smoothing --> posed again
          --> OUT/NAME.npz (over frames), OUT/NAME.mp4 (the mesh over the frames), OUT/NAME.glb (skinned animation)

Map of the file:
1. Reading what the user gives: boxes, the person's crop (keypoint files: lab/keypoints.py)
2. The full image's camera (`--intrinsics`), placing a root-relative mesh in it, writing .obj and .npz
3. The command every paper shares: `add_demo_arguments`, `run_demo` (bad input: one line on stderr, exit status 2)
4. Video: `run_video` (frames: lab/frames.py; crops: lab/tracking.py; smoothing: lab/smoothing.py), `pose_again`
5. SimpleHand: its checkpoint (or the released file), one square crop per hand, the hand placed from its 2D keypoints
6. GenHMR: its four checkpoints, the person crop, UGS, with --keypoints the 2D-pose-guided refinement (Eqs. 2-4)
7. HMR-Adapter: its checkpoint and bases, the person crop, the adapted pipeline, hand boxes from --keypoints
8. `Paper` (what the commands need of each), `MODELS`, `main`
Each paper's `infer` runs a batch of frames (an image is a batch of one). Images are read by `data.read_image` (any
Pillow mode), crops cut by `data.crop_matrix` / `data.warp_image`, a crop's camera moved to the full image's by
`lab.crops.crop_translation_to_full`, and trained models rebuilt from train.py's checkpoints by
`checkpoints.load_trained`. Bad input raises `data.InputError`, naming the file, key, frame, shape or box that is
wrong.
"""

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

import bodymodels
import genhmr
from lab import genhmr_experiments
import hmr_adapter
from lab import hmr_adapter_experiments
import simplehand
from lab import simplehand_experiments
from lab.checkpoints import load_trained
from lab.crops import crop_translation_to_full, full_image_intrinsics
from lab.files import atomic_write
from lab.configs import Parser, number, with_fields
from data import InputError, crop_box, crop_matrix, read_image, warp_image
from lab.plots import draw_demo, to_numpy
from lab.fitting import fit_mano
from lab.frames import draw_mesh, open_frames, write_video
from lab.keypoints import (COCO17_FROM_OPENPOSE, COCO17_NAMES, WHOLEBODY_PARTS, keypoint_box,  # noqa: F401
                           pick_person, read_keypoints, read_video_keypoints)
from lab.smoothing import smooth_motion
from lab.tracking import track
from data import skinning
from bodymodels import mano_to_freihand


# ---------------------------------------------------------------------------------------------
# 1. Reading what the user gives: boxes, the person's crop (2D keypoint files: lab/keypoints.py)


def check_box(box, image_hw, what="--box"):
    """box (x0, y0, x1, y1) pixels -> the same as a float tuple, after checking that it is finite,
    not empty and overlaps the image of size image_hw = (H, W); raises InputError otherwise."""
    H, W = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise InputError(f"{what} {x0:g} {y0:g} {x1:g} {y1:g}: empty; expected X0 Y0 X1 Y1 with X1 > X0 and Y1 > Y0")
    if x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
        raise InputError(f"{what} {x0:g} {y0:g} {x1:g} {y1:g}: outside the image of {W} x {H} pixels")
    return x0, y0, x1, y1


def person_crop(image_hw, out_hw, box=None, points=None, enlarge=1.0, source="--keypoints"):
    """The crop a model sees: `box` as given, else the box of the confident keypoints `points` (N, 3)
    times enlarge, else the whole image of size image_hw; grown to out_hw's aspect (`crop_box`)
    -> (the box it was grown from (x0, y0, x1, y1), A (3, 3) full-image pixels -> crop pixels).
    Raises InputError naming `source` if the keypoints give no box inside the image."""
    if box is None and points is not None:
        keypoints = keypoint_box(points)
        if keypoints is None:
            raise InputError(f"{source}: fewer than two keypoints with confidence >= 0.3")
        box = check_box(keypoints, image_hw, f"{source}: the keypoints' box")
    else:
        enlarge = 1.0  # a box given by hand is the region itself
    box = box if box is not None else (0.0, 0.0, float(image_hw[1]), float(image_hw[0]))
    return box, crop_matrix(*crop_box(box, out_hw, enlarge), out_hw)


# ---------------------------------------------------------------------------------------------
# 2. The full image's camera, a root-relative mesh placed in it, the .obj and .npz files
#
# Without --intrinsics the camera is HaMeR's demo convention (`lab.crops.full_image_intrinsics`: focal
# 5000 / 256 x max(W, H) pixels, principal point at the image centre); with it, K = [[FX, 0, CX], [0, FY, CY],
# [0, 0, 1]] in pixels of the input image, in this project's pixel convention (pixel edges at integers: an
# OpenCV K, whose pixel centres are at integers, has CX + 0.5 and CY + 0.5 here).


def check_intrinsics(values, what="--intrinsics"):
    """FX FY CX CY (pixels) -> K (3, 3) float64, after checking the four are finite and the focal lengths
    positive; raises InputError naming `what` otherwise."""
    values = [float(v) for v in values]
    if len(values) != 4:
        raise InputError(f"{what}: {len(values)} numbers; expected FX FY CX CY")
    fx, fy, cx, cy = values
    if not all(np.isfinite(values)) or fx <= 0 or fy <= 0:
        raise InputError(f"{what} {fx:g} {fy:g} {cx:g} {cy:g}: expected focal lengths FX, FY > 0 and a finite "
                         "principal point CX, CY (pixels)")
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def image_camera(args, default):
    """The full image's camera K (3, 3): --intrinsics when given, else `default` (in default's dtype)."""
    intrinsics = getattr(args, "intrinsics", None)
    return default if intrinsics is None else check_intrinsics(intrinsics).to(default.dtype)


def camera_docs(docs, args, key="K"):
    """The .npz's descriptions, with `key` saying that --intrinsics gave the camera when it did."""
    if getattr(args, "intrinsics", None) is None:
        return docs
    return dict(docs, **{key: "the full image's camera given by --intrinsics FX FY CX CY (pixels)"})


def solve_translation(points, uv, K, weights=None, min_depth=0.01):
    """The translation t (3,) that best puts root-relative points (N, 3) where they were seen:
    perspective_projection(points + t, K) ~ uv (N, 2) pixels, in the least-squares sense of the
    linear equations f_x (X + t_x) - (u - c_x)(Z + t_z) = 0 (and the same in y), weighted by
    weights (N,). Exact when the points project exactly; no iteration, no initial guess.
    3D points that contradict their 2D ones (a poorly trained model) can put that solution behind
    the camera; then t_z is where the 3D and 2D spreads agree (weak perspective), at least
    min_depth in front for every point, and t_x, t_y the mean of the rays' offsets at that depth."""
    X, uv, K = points.double(), uv.double(), K.double()
    w = torch.ones(len(X), dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    rows, rhs = [], []
    for a in (0, 1):  # x, then y: f (X_a + t_a) = d (Z + t_z) with d = u_a - c_a
        f, d = K[a, a], uv[:, a] - K[a, 2]
        row = torch.zeros(len(X), 3, dtype=torch.float64)
        row[:, a], row[:, 2] = f, -d
        rows.append(row * w[:, None])
        rhs.append((d * X[:, 2] - f * X[:, a]) * w)
    t = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)[:, None]).solution[:, 0]
    if (X[:, 2] + t[2]).min() < min_depth:
        spread = lambda p: (w[:, None] * (p - p.mean(0)).norm(dim=-1, keepdim=True)).sum() / w.sum()
        tz = K[0, 0] * spread(X[:, :2]) / spread(uv).clamp_min(1e-9) - X[:, 2].mean()  # f x 3D spread / 2D spread
        tz = tz.clamp_min(min_depth - X[:, 2].min())
        rays = (uv - K[:2, 2]) / K[[0, 1], [0, 1]]  # (N, 2): (x / z, y / z) of each point's ray
        t = torch.cat([(w[:, None] * (rays * (X[:, 2:] + tz) - X[:, :2])).sum(0) / w.sum(), tz[None]])
    return t.to(points.dtype)



def mirror_mesh(verts, faces):
    """A mesh mirrored x -> -x, with its faces' winding reversed so that they still face outwards
    (a mirror turns counter-clockwise into clockwise): how a left hand comes from the right MANO."""
    return verts * verts.new_tensor([-1.0, 1.0, 1.0]), faces[:, [0, 2, 1]]


def write_obj(path, verts, faces):
    """Write a triangle mesh as Wavefront .obj (atomically): verts (V, 3), faces (F, 3) 0-based."""
    verts, faces = to_numpy(verts).astype(np.float64), to_numpy(faces).astype(np.int64)
    lines = ["# metres, camera frame: x right, y down, z forward (OpenCV); faces counter-clockwise seen from outside"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"f {a} {b} {c}" for a, b, c in faces + 1]
    return atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def read_obj(path):
    """A Wavefront .obj -> verts (V, 3) float64, faces (F, 3) int64 0-based (polygons fanned into
    triangles; texture and normal indices dropped)."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["v"]:
            verts.append([float(v) for v in parts[1:4]])
        elif parts[:1] == ["f"]:
            ids = [int(p.split("/")[0]) for p in parts[1:]]
            ids = [i - 1 if i > 0 else len(verts) + i for i in ids]
            faces += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    return (torch.tensor(verts, dtype=torch.float64).reshape(-1, 3),
            torch.tensor(faces, dtype=torch.int64).reshape(-1, 3))


def write_npz(path, arrays, docs):
    """Write arrays {key: tensor or array} to an .npz (atomically), with a "README" entry that lists
    each key with docs[key] (shape, units, frame); every key must be documented."""
    undocumented = sorted(set(arrays) - set(docs))
    if undocumented:
        raise ValueError(f"write_npz: keys without a description: {undocumented}")
    out = {k: to_numpy(v) for k, v in arrays.items()}
    out["README"] = np.array("\n".join(f"{k} {out[k].shape}: {docs[k]}" for k in arrays))
    return atomic_write(path, lambda f: np.savez(f, **out))


# ---------------------------------------------------------------------------------------------
# 3. The command every paper shares: its arguments, and reading, predicting, writing
#
# Each paper's part below reads its own checkpoint, crops the image its own way and predicts; `run_demo`
# reads the image, the box and the keypoints, and writes every file atomically after everything was computed.
# Bad input raises InputError, whose message names the file, key, shape or box that is wrong; `run_demo`
# turns it into one line on stderr and exit status 2.


def add_demo_arguments(parser, stage, hands=False, released=""):
    """The arguments every paper's command takes (see run_demo and run_video); released: what else
    --checkpoint reads (a paper's released weights)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PATH", help="run the model on this image and write a picture, .obj and "
                        ".npz (any Pillow-readable image: grayscale, RGBA and 16-bit included)")
    source.add_argument("--video", metavar="FILE", help="run the model on every frame of this video (any container "
                        "FFmpeg reads) and write an .npz over frames, an overlay .mp4 and an animated .glb")
    source.add_argument("--images", metavar="DIR", help="as --video, on the images of this folder in natural order")
    parser.add_argument("--out", default="out/demo", help="folder for the output files (default out/demo)")
    parser.add_argument("--checkpoint", default=f"out/{stage}/ckpt.pt",
                        help=f"weights: a train.py checkpoint (default out/{stage}/ckpt.pt, the default run's)"
                        + (f", or {released}" if released else ""))
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                        help="the region of the image (of a video's first frame: then tracked) to reconstruct, "
                        "in pixels (default: the whole image)")
    parser.add_argument("--keypoints", metavar="FILE", help="2D keypoints in COCO(-WholeBody), mmpose / ViTPose or "
                        "OpenPose JSON: they give the box" + (" and the hands" if hands else "") + "; for a video, "
                        "mmpose's file of the video or a folder of OpenPose's per-frame files")
    parser.add_argument("--intrinsics", nargs=4, type=float, metavar=("FX", "FY", "CX", "CY"),
                        help="the camera that took the image (pixels; pixel edges at integers, so OpenCV's CX, CY "
                        "+ 0.5): the meshes are placed in it (default: HaMeR's demo convention, focal 5000 / 256 x "
                        "max(W, H), principal point at the image centre)")
    parser.add_argument("--batch-size", type=number(int, "[1, inf)"), default=8,
                        help="video: frames per model call (default 8)")
    parser.add_argument("--smooth", choices=("off", "online", "offline"), default="offline",
                        help="video: the One-Euro filter over time, causal (online) or forwards and backwards "
                        "(offline, no lag; the default)")
    parser.add_argument("--fps", type=number(float, "(0, inf)"), default=30.0,
                        help="--images: frames per second (a video's own rate is read from it)")
    parser.add_argument("--correctives", action="store_true", help="video: the .glb carries the pose correctives")
    if hands:
        parser.add_argument("--left", action="store_true", help="the hand in --box (in a video: the hand tracked) is "
                            "a left hand")


def run_demo(args, infer, program):
    """The `--image` command: read the image, the box and the keypoints, predict, write.

    infer(image (3, H, W), box or None, people or None, args) -> dict with "meshes": [(suffix,
    verts (V, 3) metres in the full image's camera frame, faces (F, 3) facing outwards)], "K" (3, 3)
    that camera (`image_camera`: --intrinsics or HaMeR's demo convention), "arrays" and "docs" (the .npz's
    keys and their descriptions), optional "keypoints" (N, 2) pixels to mark. Writes OUT/NAME.png,
    OUT/NAME[_suffix].obj per mesh and OUT/NAME.npz, printing one line per file; on InputError prints one
    line and exits with status 2."""
    try:
        image = read_image(args.image)
        box = check_box(args.box, image.shape[-2:]) if args.box else None
        if getattr(args, "intrinsics", None) is not None:
            check_intrinsics(args.intrinsics)
        people = read_keypoints(args.keypoints) if args.keypoints else None
        result = infer(image, box, people, args)
    except InputError as e:
        print(f"{program}: {e}", file=sys.stderr)
        raise SystemExit(2)
    stem = Path(args.out) / Path(args.image).stem
    written = [draw_demo(f"{stem}.png", image, result["meshes"], result["K"], result.get("keypoints"))]
    for suffix, verts, faces in result["meshes"]:
        written.append(write_obj(f"{stem}{'_' + suffix if suffix else ''}.obj", verts, faces))
    written.append(write_npz(f"{stem}.npz", result["arrays"], result["docs"]))
    for p in written:
        print(f"wrote {p}")
    return written


# ---------------------------------------------------------------------------------------------
# 4. Video in, animation out: `--video FILE` or `--images DIR`. Frames are read by lab/frames.py; each frame's crop
#    comes from its keypoints (--keypoints), else from the tracker (lab/tracking.py: --box on the first frame, then
#    the previous predictions); the model runs on --batch-size frames at a time; each frame's prediction becomes a
#    motion (the body model's rotations, shape and root joint: SimpleHand's vertices through lab.fitting.fit_mano),
#    smoothed by lab/smoothing.py and posed again through the body model. Outputs are written after every frame
#    was read and predicted, each whole (atomic_write): NAME.npz, NAME.mp4 (the mesh over the frames), NAME.glb.


VIDEO_DOCS = {
    "verts": "(T, V, 3) the smoothed meshes, metres, the camera frame (K; x right, y down, z forward)",
    "joints3d": "(T, J, 3) their joints, metres (SimpleHand: 21 in FreiHAND order; SMPL 24; SMPL-X 55)",
    "joints2d": "(T, J, 2) joints3d projected by K, pixels", "faces": "(F, 3) the meshes' triangles",
    "pose": "(T, J, 3) smoothed axis-angle rotations in the body model's joint order, global orientation first "
            "(camera frame)", "betas": "(S,) the sequence's one shape: the median of the frames'",
    "transl": "(T, 3) metres: verts = body model(pose, betas) + transl (a left hand: the mirror image of the "
              "right hand so posed)", "root": "(T, 3) the root joint's smoothed position, metres, camera frame",
    "raw_verts": "(T, V, 3) the meshes as predicted frame by frame, before smoothing",
    "raw_joints3d": "(T, J, 3) their joints", "raw_pose": "(T, J, 3) the frames' own rotations",
    "box": "(T, 4) each frame's crop region x0, y0, x1, y1 (pixels): from the keypoints or the tracker",
    "tracked": "(T,) 1 where the tracker took the frame's prediction (its 2D joints inside the image)",
    "K": "(3, 3) the camera, pixels (--intrinsics, else HaMeR's demo convention)", "fps": "frames per second",
    "fit_error": "SimpleHand: (T,) mean distance of each frame's MANO fit to the predicted vertices, metres",
    "expression": "SMPL-X: (T, E) smoothed expression coefficients", "smooth": "the --smooth mode"}


def pose_again(kind, motion, mirrored=False):
    """A smoothed motion (`smooth_motion`'s) -> verts (T, V, 3), joints (T, J, 3) in the camera frame and transl
    (T, 3): the body model posed by motion's rotations, its one shape (and expression), moved by transl so that
    its root joint is motion's root. A left hand (mirrored): the right MANO hand posed so, then mirrored (transl
    is the right hand's)."""
    T = len(motion["pose"])
    verts, joints = skinning(kind)(motion["pose"], motion["betas"].expand(T, -1), motion.get("expression"))
    transl = motion["root"] - joints[:, 0]
    verts, joints = verts + transl[:, None], joints + transl[:, None]
    flip = verts.new_tensor([-1.0 if mirrored else 1.0, 1.0, 1.0])
    return verts * flip, joints * flip, transl


def run_video(args, paper, program):
    """The `--video FILE` / `--images DIR` command: every frame predicted, the motion smoothed (--smooth), and
    OUT/NAME.npz (VIDEO_DOCS), OUT/NAME.mp4 and OUT/NAME.glb written, one line each; InputError: one line, exit 2."""
    from lab.gltf import write_animation

    try:
        frames = open_frames(args.video, args.images, args.fps)
        stem = Path(args.out) / frames.name
        if args.video and Path(f"{stem}.mp4").resolve() == Path(args.video).resolve():
            raise InputError(f"--out {args.out}: the overlay {stem}.mp4 would replace the input video")
        if args.intrinsics is not None:
            check_intrinsics(args.intrinsics)
        keypoints = read_video_keypoints(args.keypoints) if args.keypoints else None
        box = check_box(args.box, next(iter(frames)).shape[-2:]) if args.box else None  # the first frame's
        loaded = paper.load(args)
        results, regions, accepted = track(frames, lambda images, boxes, people: paper.infer(
            loaded, images, boxes, people, args), box, paper.enlarge, args.batch_size, keypoints, args.keypoints,
            lambda people: paper.usable(people, args))
    except InputError as e:
        print(f"{program}: {e}", file=sys.stderr)
        raise SystemExit(2)
    raw, faces, mirrored = paper.motion(results, args)
    motion = smooth_motion(raw, frames.fps, args.smooth)
    verts, joints, transl = pose_again(paper.kind, motion, mirrored)
    if paper.kind == "mano":
        joints = mano_to_freihand(joints, verts)
    K = results[0]["K"].double()
    arrays = dict(verts=verts, joints3d=joints, joints2d=bodymodels.perspective_projection(joints, K), faces=faces,
                  pose=motion["pose"], betas=motion["betas"], transl=transl, root=motion["root"],
                  raw_verts=torch.stack([r["meshes"][0][1] for r in results]), raw_joints3d=raw["joints3d"],
                  raw_pose=raw["pose"], box=regions, tracked=accepted, K=K, fps=torch.tensor(frames.fps),
                  smooth=np.array(args.smooth), **{k: raw[k] for k in ("fit_error",) if k in raw},
                  **{k: motion[k] for k in ("expression",) if k in motion})
    written = [write_npz(f"{stem}.npz", arrays, VIDEO_DOCS)]
    overlay = (draw_mesh(frame, v, faces, K) for frame, v in zip(frames, verts))
    written.append(write_video(f"{stem}.mp4", overlay, frames.fps))
    written.append(write_animation(f"{stem}.glb", paper.kind, motion["betas"].float(), motion["pose"].float(),
                                   transl.float(), frames.fps, correctives=args.correctives,
                                   expression=motion["expression"].median(0).values.float() if "expression" in motion
                                   else None))  # one expression: the .glb's is per sequence
    for p in written:
        print(f"wrote {p}")
    return written


# ---------------------------------------------------------------------------------------------
# 5. SimpleHand: hands in a photograph -> placed meshes. Its checkpoint (or the released official file), a square
#    crop per hand (the box, or each hand of the --keypoints' person), `simplehand_experiments.predict` on it, and
#    the hand placed in the full image's camera from its predicted 2D keypoints (`solve_translation`).


SIMPLEHAND_KEYPOINT_ENLARGE = 1.25  # official simpleHand (cfg.py VAL.BMK scale_enlarge): the evaluation re-crop
SIMPLEHAND_DOCS = {  # the .npz of --image: N hands first (right, then left, with --keypoints)
    "verts": "metres, the full image's camera frame (OpenCV axes: x right, y down, z forward); the .obj's vertices",
    "joints3d": "metres, the same frame; 21 joints in FreiHAND order",
    "joints2d": "the predicted 2D keypoints in full-image pixels (x, y; pixel edges at integers)",
    "faces": "MANO's triangles, counter-clockwise from outside (reversed for left hands, which are mirrored)",
    "translation": "metres: verts = (verts_rel, mirrored back for left hands) + translation, solved from joints2d",
    "verts_rel": "as `predict` returned them: metres, root-relative (joint 9), the crop camera's axes, a right hand "
                 "(left hands were predicted in a mirrored crop)",
    "joints3d_rel": "as `predict` returned them: metres, root-relative (joint 9), as verts_rel",
    "joints2d_crop": "as `predict` returned them: crop pixels (mirrored crop for left hands)",
    "is_right": "True for a right hand",
    "box": "the square crop x0, y0, x1, y1 in full-image pixels",
    "crop_matrix": "A: full-image pixels -> crop pixels (with the mirror for left hands); the crop camera is A @ K",
    "K": "the full image's camera assumed (HaMeR's demo): focal 5000 / 256 x max(W, H) pixels, "
         "principal point at the centre",
}


def _simplehand_build(cfg, parent=None):
    """build_model for weights a checkpoint replaces: neither ImageNet nor released weights are read first."""
    return simplehand_experiments.build_model(with_fields(cfg, pretrained_backbone=False, official_checkpoint=""),
                                              parent)


SIMPLEHAND_STAGES = (("simplehand", simplehand_experiments.CONFIGS, _simplehand_build),)


def load_simplehand(path):
    """A train.py checkpoint of SimpleHand, or a released official file (a dict with "state_dict" and
    no "model_name": `load_official`, needs timm) -> (model in eval mode, config). Raises
    InputError naming the file for anything else (missing, truncated, another stage's)."""
    path = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = None  # missing, truncated or foreign: load_trained says which
    try:
        if isinstance(ckpt, dict) and "state_dict" in ckpt and "model_name" not in ckpt:
            return simplehand.load_official(path), simplehand_experiments.CONFIGS["official"]
        return load_trained(path, SIMPLEHAND_STAGES)
    except InputError:
        raise
    except (ImportError, ValueError, TypeError) as e:  # no timm for a paper backbone; weights that do not fit
        message = str(e).splitlines()[0]
        raise InputError(message if message.startswith(path) else f"{path}: {message}") from None


def hand_crops(image_hw, box=None, people=None, left=False, source="--keypoints", sides=("right", "left")):
    """Where the hands are -> [(is_right, centre (cx, cy), size (s, s))], square crops in pixels.

    With 2D keypoints (people from read_keypoints): each hand of the person `box` picks
    with at least two confident keypoints, around their box x SIMPLEHAND_KEYPOINT_ENLARGE. Without: the
    box (default the whole image) made square about its centre; a right hand unless `left`. sides: the hands
    taken from keypoints (a video tracks one)."""
    if people is None:
        H, W = image_hw
        return [(not left, *crop_box(box or (0, 0, W, H), (1, 1)))]
    person, crops = pick_person(people, box), []
    for side in sides:
        hand_box = keypoint_box(person[f"{side}_hand"]) if f"{side}_hand" in person else None
        if hand_box is not None:
            hand_box = check_box(hand_box, image_hw, f"{source}: the {side} hand's keypoint box")
            crops.append((side == "right", *crop_box(hand_box, (1, 1), SIMPLEHAND_KEYPOINT_ENLARGE)))
    if not crops:
        raise InputError(f"{source}: no hand with two or more keypoints of confidence >= 0.3")
    return crops


@functools.lru_cache(maxsize=1)
def _mano_faces():
    return torch.as_tensor(bodymodels.load_mano().faces.astype("int64"))  # (1538, 3)


def place_hand(joints3d, verts, joints2d, A, K, is_right=True):
    """A root-relative right hand as the crop saw it -> the hand in the full image's camera.

    joints3d (21, 3), verts (778, 3) root-relative metres in the crop camera's axes (which are the full
    camera's: a crop only scales and shifts pixels); joints2d (21, 2) crop pixels; A (3, 3) full-image
    pixels -> crop pixels; K (3, 3) the full image's camera. A left hand was seen in a mirrored crop
    as a right one: mirrored back with mirror_mesh, so its faces still face outwards.
    Returns verts, joints3d (camera frame), joints2d (full-image pixels), faces, translation."""
    faces = _mano_faces()
    if not is_right:
        verts, faces = mirror_mesh(verts, faces)
        joints3d = joints3d * joints3d.new_tensor([-1.0, 1.0, 1.0])
    uv1 = torch.cat([joints2d.double(), joints2d.new_ones(len(joints2d), 1).double()], 1)
    uv = uv1 @ torch.linalg.inv(A.double()).T  # crop pixels -> full-image pixels
    uv = (uv[:, :2] / uv[:, 2:]).to(joints3d.dtype)
    t = solve_translation(joints3d, uv, K)  # projection(joints3d + t, K) ~ uv, in front of the camera
    return {"verts": verts + t, "joints3d": joints3d + t, "joints2d": uv, "faces": faces, "translation": t}


def reconstruct_hands(model, cfg, images, crops, K):
    """Hands in one batch: crops [(frame, (is_right, centre, size))] of images (B, 3, H, W) -> for each crop the .npz
    keys of SIMPLEHAND_DOCS but K."""
    S = cfg.model.image_size
    A = [crop_matrix(centre, size, (S, S), flip=not is_right) for _, (is_right, centre, size) in crops]
    batch = torch.stack([warp_image(images[i], a, S) for (i, _), a in zip(crops, A)])  # RGB in [0, 1], as training's
    with torch.no_grad():
        pred = simplehand_experiments.predict(model, {"image": batch}, cfg)
    hands = []
    for k, ((_, (is_right, (cx, cy), (w, h))), a) in enumerate(zip(crops, A)):
        p = {key: v[k] for key, v in pred.items()}
        placed = place_hand(p["joints3d"], p["verts"], p["joints2d"], a, K, is_right)
        hands.append(dict(placed, verts_rel=p["verts"], joints3d_rel=p["joints3d"], joints2d_crop=p["joints2d"],
                          is_right=torch.tensor(is_right), crop_matrix=a,
                          box=torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])))
    return hands


def infer_simplehand(loaded, images, boxes, people, args):
    """SimpleHand on frames images (B, 3, H, W) with each frame's box and people -> per frame the meshes, the camera,
    the .npz arrays and the crop region (a video: the one hand it tracks, --left or the right)."""
    model, cfg = loaded
    H, W = images.shape[-2:]
    K = image_camera(args, full_image_intrinsics((W, H)))  # (3, 3)
    sides = ("right", "left") if args.image else ("left",) if args.left else ("right",)
    crops = [(i, c) for i, (box, p) in enumerate(zip(boxes, people))
             for c in hand_crops((H, W), box, p, args.left, args.keypoints, sides)]
    hands = reconstruct_hands(model, cfg, images, crops, K)
    results = []
    for i in range(len(images)):
        mine = [h for h, (owner, _) in zip(hands, crops) if owner == i]
        arrays = {key: torch.stack([h[key] for h in mine]) for key in SIMPLEHAND_DOCS if key != "K"}
        meshes = [("right" if h["is_right"] else "left", h["verts"], h["faces"]) for h in mine]
        results.append({"meshes": meshes, "K": K, "arrays": dict(arrays, K=K), "region": mine[0]["box"].numpy(),
                        "points": mine[0]["joints2d"],
                        "docs": camera_docs(SIMPLEHAND_DOCS, args), "keypoints": arrays["joints2d"].reshape(-1, 2)})
    return results


def simplehand_usable(people, args):
    """Whether a frame's people give the tracked hand's crop (two confident keypoints of that hand)."""
    side = "left" if args.left else "right"
    return any(f"{side}_hand" in p and keypoint_box(p[f"{side}_hand"]) is not None for p in people)


def simplehand_motion(results, args):
    """A video's hands as a motion: MANO parameters fitted to each frame's vertices (`fit_mano`; a left hand's are
    its mirror image's, HaMeR's convention) -> (motion for smooth_motion, faces, mirrored)."""
    verts = torch.stack([r["arrays"]["verts"][0] for r in results]).double()  # (T, 778, 3)
    left = not bool(results[0]["arrays"]["is_right"][0])
    fit = fit_mano(verts, left=left)
    pose = torch.cat([fit["global_orient"][:, None], fit["hand_pose"]], 1)  # (T, 16, 3)
    transl = fit["transl"] * (verts.new_tensor([-1.0, 1.0, 1.0]) if left else 1.0)  # the right hand's
    root = skinning("mano")(pose, fit["betas"])[1][:, 0] + transl
    motion = dict(pose=pose, root=root, betas=fit["betas"], fit_error=fit["error"],
                  joints3d=torch.stack([r["arrays"]["joints3d"][0] for r in results]))
    return motion, results[0]["meshes"][0][2], left


# ---------------------------------------------------------------------------------------------
# 6. GenHMR: one person -> an SMPL mesh. Its four checkpoints (tokenizer, backbone, prior, image stage), the
#    person's crop of the model's aspect, UGS, with --keypoints the 2D-pose-guided refinement (Eqs. 2-4), the
#    crop's camera (HMR2.0's: focal 5000 per 256 pixels of the crop's height) moved to the full image's.


GENHMR_STAGES = tuple((name, protocol.CONFIGS, protocol.build_model) for name, protocol in (
    ("genhmr_tokenizer", genhmr_experiments.TokenizerStage), ("genhmr_backbone", genhmr_experiments.BackboneStage),
    ("genhmr_prior", genhmr_experiments.PriorStage), ("genhmr", genhmr_experiments)))
GENHMR_BOX_ENLARGE = 1.2  # a box from 2D keypoints, enlarged as SPIN / HMR2.0's datasets do (scaleFactor 1.2)
# COCO-17 keypoint -> SMPL joint of the same name (shoulders, elbows, wrists, hips, knees, ankles; the face has
# none). NOTE G18 (docs/genhmr.md): the paper's detector and joint matching are unstated; SMPL's hips sit inside COCO's
COCO17_TO_SMPL = {i: bodymodels.SMPL_JOINT_NAMES.index(n) for i, n in enumerate(COCO17_NAMES)
                  if n in bodymodels.SMPL_JOINT_NAMES}
GENHMR_DOCS = {
    "verts": "SMPL vertices (UGS), metres, the full image's camera frame (K; x right, y down, z forward); the .obj "
             "and the picture show refined_verts when there are keypoints, else these",
    "joints3d": "SMPL joints (UGS), metres, the full image's camera frame",
    "joints2d": "joints3d projected by K, pixels",
    "pose": "SMPL pose (UGS), axis-angle, global orientation (camera frame) first", "betas": "SMPL shape",
    "cam": "the crop's weak-perspective camera [s, tx, ty] (HMR2.0's, f = 5000 for a 256 crop)",
    "cam_t": "translation of the SMPL mesh in the full image's camera (CLIFF's cam_crop_to_full of cam)",
    "K": "the full image's camera: focal 5000 / 256 x max(W, H) pixels, principal point at the image centre",
    "box": "the person's box x0, y0, x1, y1 (pixels): --box, the keypoints' box x 1.2, or the whole image",
    "crop_matrix": "full-image pixels -> pixels of the model's crop (homogeneous, column vectors)",
    "token_ids": "the pose tokens UGS chose (codebook indices)",
    "crop_verts": "vertices in the crop's camera, as genhmr_experiments.predict returns them (metres)",
    "crop_joints3d": "joints in the crop's camera, as genhmr_experiments.predict",
    "crop_cam_t": "cam as a translation, crop camera",
    "refined": "1: Eqs. 2-4 refined the pose towards --keypoints (refined_* keys); 0: no keypoints, no refinement",
    "refined_verts": "verts after refinement", "refined_joints3d": "joints3d after refinement",
    "refined_joints2d": "joints2d after refinement", "refined_pose": "pose after refinement",
    "refined_crop_verts": "crop_verts after refinement",
    "keypoints": "the person's COCO-17 keypoints x, y, confidence (pixels)",
    "reproj_error_px": "confidence-weighted mean distance of joints2d to the matched keypoints, pixels",
    "refined_reproj_error_px": "the same for refined_joints2d"}


def keypoint_targets(person, A, image_hw):
    """COCO-17 keypoints (17, 3) full-image pixels -> refinement targets (1, 24, 2) in normalised crop
    coordinates and weights (1, 24): the confidence at the SMPL joints with a COCO counterpart, else 0."""
    kp = torch.as_tensor(person["body"], dtype=torch.float64)
    crop_px = torch.cat([kp[:, :2], torch.ones(len(kp), 1, dtype=kp.dtype)], 1) @ A.T
    targets, weights = torch.zeros(1, genhmr.NUM_JOINTS, 2), torch.zeros(1, genhmr.NUM_JOINTS)
    coco, smpl = list(COCO17_TO_SMPL), list(COCO17_TO_SMPL.values())
    targets[0, smpl] = genhmr.normalise_joints2d(crop_px[coco, :2].float(), image_hw)
    weights[0, smpl] = kp[coco, 2].float().clamp(0, 1)
    return targets, weights


def infer_genhmr(loaded, images, boxes, people, args):
    """GenHMR on frames images (B, 3, H, W): the crops, UGS, with keypoints Eqs. 2-4, the meshes in the full image."""
    model, cfg = loaded
    tok, (H, W), hw, inference = model.tokenizer, images.shape[-2:], cfg.model.image_hw, cfg.inference
    persons = [pick_person(p, box) if p else None for p, box in zip(people, boxes)]
    crops = [person_crop((H, W), hw, box, person["body"] if person else None, GENHMR_BOX_ENLARGE, args.keypoints)
             for box, person in zip(boxes, persons)]  # the whole image of the model's aspect is the training crop
    A = torch.stack([a for _, a in crops])
    crop = torch.stack([warp_image(image, a, hw) for image, a in zip(images, A)])
    ugs = genhmr.uncertainty_guided_sampling(model, crop, inference.ugs_iterations, inference.schedule,
                                             inference.top_k, choice_temperature=inference.choice_temperature,
                                             seeds=torch.zeros(len(crop)))
    ids, betas, cam = ugs["ids"], ugs["betas"], ugs["cam"]
    # the crop's camera: focal f / S per crop height (2D is normalised by H), principal point at its centre
    crop_t = bodymodels.weak_perspective_to_translation(cam.double(), genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE)
    K = image_camera(args, full_image_intrinsics((W, H), genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE))
    t = torch.stack([crop_translation_to_full(crop_t[b], A[b], hw, (W, H), genhmr.FOCAL_LENGTH / genhmr.CROP_SIZE
                                              * hw[0], K) for b in range(len(A))]).float()  # (B, 3)
    poses = {"": tok.decode_ids(ids)}
    seen = [b for b, p in enumerate(persons) if p is not None]
    if seen:  # Inference Strategy > 2D Pose-Guided Refinement, towards the detector's keypoints
        targets, weights = (torch.cat(x) for x in zip(*(keypoint_targets(persons[b], A[b], hw) for b in seen)))
        problem = genhmr.refinement_problem(tok, ids[seen], betas[seen], cam[seen], targets, inference.refine_reg,
                                            hw[0], weights)
        e = genhmr_experiments.REFINEMENTS[cfg.recipe.refine_eta_rule](*problem, inference)[-1]
        poses["refined_"] = poses[""].clone()
        poses["refined_"][seen] = tok.decode(e).detach()
    meshes = {prefix: genhmr.mesh_outputs(tok, R, betas, cam, hw) for prefix, R in poses.items()}  # crop camera
    results = []
    for b, person in enumerate(persons):
        arrays = {"cam": cam[b], "betas": betas[b], "K": K, "box": torch.tensor(crops[b][0]), "crop_matrix": A[b],
                  "token_ids": ids[b], "cam_t": t[b], "refined": torch.tensor(int(person is not None))}
        kp = torch.as_tensor(person["body"]).float()[list(COCO17_TO_SMPL)] if person is not None else None
        for prefix in poses if person is not None else ("",):
            crop_mesh = {k: v[b] for k, v in meshes[prefix].items()}
            verts, joints = (crop_mesh[k] - crop_mesh["cam_t"] + t[b] for k in ("verts", "joints3d"))
            uv = bodymodels.perspective_projection(joints, K)
            arrays.update({f"{prefix}verts": verts, f"{prefix}joints3d": joints, f"{prefix}joints2d": uv,
                           f"{prefix}pose": bodymodels.matrix_to_axis_angle(poses[prefix][b]),
                           f"{prefix}crop_verts": crop_mesh["verts"]})
            if prefix == "":
                arrays.update(crop_joints3d=crop_mesh["joints3d"], crop_cam_t=crop_mesh["cam_t"])
            if kp is not None:  # confidence-weighted mean 2D distance to the keypoints
                d = (uv[list(COCO17_TO_SMPL.values())] - kp[:, :2]).norm(dim=-1)
                arrays[f"{prefix}reproj_error_px"] = (kp[:, 2] * d).sum() / kp[:, 2].sum().clamp_min(1e-9)
        if person is not None:
            arrays["keypoints"] = torch.as_tensor(person["body"])
        final = arrays["refined_verts" if person is not None else "verts"]
        marks = person["body"][person["body"][:, 2] >= 0.3, :2] if person is not None else None
        results.append({"meshes": [("", final, tok.body.faces)], "K": K, "keypoints": marks, "arrays": arrays,
                        "docs": camera_docs(GENHMR_DOCS, args), "region": np.asarray(crops[b][0]),
                        "points": arrays["refined_joints2d" if person is not None else "joints2d"]})
    return results


def body_usable(people, args):
    """Whether a frame's people give a person's crop (two confident body keypoints)."""
    return any(keypoint_box(p["body"]) is not None for p in people)


def genhmr_motion(results, args):
    """A video's SMPL bodies as a motion (refined where there were keypoints) -> (motion, faces, mirrored)."""
    pick = lambda r, key: r["arrays"][("refined_" if int(r["arrays"]["refined"]) else "") + key]  # noqa: E731
    joints = torch.stack([pick(r, "joints3d") for r in results]).double()
    motion = dict(pose=torch.stack([pick(r, "pose") for r in results]), root=joints[:, 0], joints3d=joints,
                  betas=torch.stack([r["arrays"]["betas"] for r in results]))
    return motion, results[0]["meshes"][0][2], False


# ---------------------------------------------------------------------------------------------
# 7. HMR-Adapter: one person -> an SMPL-X mesh with its hands. The crop is what the whole-body model was trained on:
#    the person box grown to the input's aspect (cfg.image_size), warped to that size, fed as [0, 1] RGB, so a
#    render of the training set's size given whole is exactly a training input. The crop's camera (SMPLer-X's:
#    focal 5000 per 256 pixels of the crop's height, principal point at its centre) becomes the full image's
#    (`lab.crops.crop_translation_to_full`).


PERSON_BOX_ENLARGE = 1.2 * 1.25  # official (SMPLer-X get_bbox, process_bbox): keypoints' box x 1.2, its crop x 1.25
HAND_BOX_ENLARGE = 1.2  # a hand's box: the square of 1.2 x the larger side of its keypoints (as the training data's)


HMR_ADAPTER_STAGES = (("hmr_adapter_bases", hmr_adapter_experiments.BASE_CONFIGS,  # its checkpoint: every weight
                       lambda cfg, parent: hmr_adapter_experiments.build_bases(cfg)),
                      ("hmr_adapter", hmr_adapter_experiments.CONFIGS, hmr_adapter_experiments.build_model))


def load_hmr_adapter(path, with_config=False):
    """The `HMRAdapter` model of a train.py checkpoint of stage "hmr_adapter" (its bases: ../hmr_adapter_bases/),
    and with_config its preset."""
    model, cfg = load_trained(path, HMR_ADAPTER_STAGES)
    return (model, cfg) if with_config else model


def keypoint_hand_boxes(person, A):
    """(1, 2, 4) hand boxes (left, right) in crop pixels from the person's 2D hand keypoints (mapped by
    the crop matrix A); NaN for a hand without two confident keypoints (the model's box then)."""
    boxes = torch.full((1, 2, 4), float("nan"), dtype=torch.float64)
    for i, side in enumerate(hmr_adapter.SIDES):
        box = keypoint_box(person[f"{side}_hand"]) if person and f"{side}_hand" in person else None
        if box is not None:
            corners = torch.tensor([[box[0], box[1], 1.0], [box[2], box[3], 1.0]], dtype=torch.float64) @ A.T
            boxes[0, i] = hmr_adapter.scale_boxes(corners[:, :2].flatten(), HAND_BOX_ENLARGE)
    return None if boxes.isnan().all() else boxes


HMR_ADAPTER_DOCS = dict(
    verts="SMPL-X vertices, metres, the full image's camera frame (x right, y down, z forward); faces: the .obj's",
    joints3d="SMPL-X's 55 joints, metres, the full image's camera frame",
    joints2d="those joints' pixels in the image (K)",
    pose="SMPL-X pose, axis-angle: global orientation (camera frame), body 1-21, jaw, eyes, left hand 25-39, "
         "right 40-54",
    shape="SMPL-X betas", expression="SMPL-X expression coefficients",
    translation="verts = SMPL-X(pose, shape, expression) + translation, metres",
    hand_boxes="the hand boxes (left, right) [x0, y0, x1, y1] image pixels: from --keypoints, else the model's",
    K="the full image's camera: focal 5000 / 256 x max(W, H), principal point at the image centre (HaMeR's demo)",
    box="the whole-body crop [x0, y0, x1, y1] image pixels", crop_matrix="image pixels -> crop pixels (homogeneous)",
    crop_K="the crop's camera (crop pixels): SMPLer-X's focal 5000 / 256 x the crop's height",
    crop_verts="the pipeline's vertices in the crop's camera", crop_joints="the pipeline's joints in the crop's camera")


@torch.no_grad()
def infer_hmr_adapter(loaded, images, boxes, people, args):
    """HMR-Adapter on frames images (B, 3, H, W): the adapted pipeline (Sec. 3.1) on each person's crop."""
    model, cfg = loaded
    H, W = images.shape[-2:]
    crop_hw = tuple(cfg.data.image_size)
    persons = [pick_person(p, box) if p else None for p, box in zip(people, boxes)]
    points = [np.concatenate([v for k, v in p.items() if k != "score"]) if p else None for p in persons]
    crops = [person_crop((H, W), crop_hw, box, pts, PERSON_BOX_ENLARGE, args.keypoints)
             for box, pts in zip(boxes, points)]
    A = torch.stack([a for _, a in crops])
    crop = torch.stack([warp_image(image, a, crop_hw) for image, a in zip(images, A)])  # a training input's size
    hand_boxes = [keypoint_hand_boxes(p, a) for p, a in zip(persons, A)]
    hand_boxes = None if all(b is None for b in hand_boxes) else torch.cat(
        [torch.full((1, 2, 4), float("nan"), dtype=torch.float64) if b is None else b for b in hand_boxes])
    out = hmr_adapter_experiments.adapted_pipeline(model, crop, hand_boxes=hand_boxes, details=True)
    f = 5000.0 / 256 * crop_hw[0]  # the crop camera's focal, SMPLer-X's (`smplerx_translation`)
    K = image_camera(args, full_image_intrinsics((W, H), dtype=torch.float64))
    results = []
    for b, a in enumerate(A):
        t = crop_translation_to_full(out["t"][b].double(), a, crop_hw, (W, H), f, K)
        verts, joints = (out[k][b].double() - out["t"][b].double() + t for k in ("verts", "joints"))
        to_image = lambda uv: (uv.double() - a[:2, 2]) / a[0, 0]  # noqa: E731  crop pixels -> image pixels
        arrays = dict(verts=verts, joints3d=joints, joints2d=bodymodels.perspective_projection(joints, K),
                      pose=bodymodels.matrix_to_axis_angle(out["R"][b]), shape=out["shape"][b],
                      expression=out["expression"][b], translation=t,
                      hand_boxes=to_image(out["hand_boxes"][b].reshape(4, 2)).reshape(2, 4), K=K,
                      box=to_image(torch.tensor([[0.0, 0.0], crop_hw[::-1]])).flatten(), crop_matrix=a,
                      crop_K=torch.tensor([[f, 0, crop_hw[1] / 2], [0, f, crop_hw[0] / 2], [0, 0, 1.0]]),
                      crop_verts=out["verts"][b], crop_joints=out["joints"][b])
        pts = points[b]
        results.append(dict(meshes=[("", verts, hmr_adapter.body_models().smplx_faces)], K=K, arrays=arrays,
                            docs=camera_docs(HMR_ADAPTER_DOCS, args), region=np.asarray(crops[b][0]),
                            points=arrays["joints2d"],
                            keypoints=None if pts is None else pts[pts[:, 2] >= 0.3, :2]))
    return results


def hmr_adapter_motion(results, args):
    """A video's SMPL-X bodies as a motion -> (motion, faces, mirrored)."""
    get = lambda key: torch.stack([r["arrays"][key] for r in results])  # noqa: E731
    joints = get("joints3d").double()
    motion = dict(pose=get("pose"), root=joints[:, 0], joints3d=joints, betas=get("shape"),
                  expression=get("expression"))
    return motion, results[0]["meshes"][0][2], False


# ---------------------------------------------------------------------------------------------
# 8. main


class Paper(NamedTuple):
    """What the command needs of a paper: load(args) -> its model (once); infer(loaded, images (B, 3, H, W), boxes,
    people, args) -> a result per frame (run_demo's `infer` docstring, "region" the crop region, "points" the
    predicted 2D joints, pixels); kind: its body model; enlarge: the tracker's margin around those joints' box (the
    one its crops from keypoints take);
    usable(people, args): whether a frame's keypoints give its crop; motion(results, args): the frames' predictions
    as a motion (run_video); flags: what add_demo_arguments adds for it; stages: its train.py checkpoints' chain."""
    load: Callable
    infer: Callable
    kind: str
    enlarge: float
    usable: Callable
    motion: Callable
    flags: dict
    stages: tuple


MODELS = {
    "simplehand": Paper(lambda args: load_simplehand(args.checkpoint), infer_simplehand, "mano",
                        SIMPLEHAND_KEYPOINT_ENLARGE,
                        simplehand_usable, simplehand_motion,
                        dict(hands=True, released="a released official file (epoch_200_rerun1, needs timm)"),
                        SIMPLEHAND_STAGES),
    "genhmr": Paper(lambda args: load_trained(args.checkpoint, GENHMR_STAGES), infer_genhmr, "smpl", GENHMR_BOX_ENLARGE,
                    body_usable, genhmr_motion, {}, GENHMR_STAGES),
    "hmr_adapter": Paper(lambda args: load_hmr_adapter(args.checkpoint, with_config=True), infer_hmr_adapter, "smplx",
                         PERSON_BOX_ENLARGE, body_usable, hmr_adapter_motion, {}, HMR_ADAPTER_STAGES),
}


def infer_image(paper):
    """run_demo's `infer` for one image: the paper's model loaded, run on a batch of one."""
    return lambda image, box, people, args: paper.infer(paper.load(args), image[None], [box], [people], args)[0]


def build_parser(model=None):
    """The command's arguments for `model` (its --checkpoint default and its own flags; None: the shared ones)."""
    parser = Parser(prog="demo.py", description="A trained model on your image or video: for an image a picture, an "
                    ".obj per mesh and an .npz of everything it predicted (keys described in its README); for a video "
                    "an .npz over frames, an overlay .mp4 and an animated .glb.")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="which paper's model")
    parser.add_argument("--threads", type=number(int, "[0, inf)"), default=0,
                        help="torch CPU threads (0: leave torch's default)")
    add_demo_arguments(parser, model or "MODEL", **MODELS[model].flags if model in MODELS else {})
    return parser


def main(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model")
    model = first.parse_known_args(argv)[0].model
    args = build_parser(model).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paper = MODELS[args.model]
    if args.image is None:
        return run_video(args, paper, "demo.py")
    return run_demo(args, infer_image(paper), "demo.py")


if __name__ == "__main__":
    main()
