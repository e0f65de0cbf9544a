"""demo.py: a photograph in, meshes out, for each paper's trained model (as HaMeR's, WiLoR's and 4D-Humans' demo.py).

    python demo.py --model simplehand|genhmr|hmr_adapter --image PATH [--checkpoint FILE] [--box X0 Y0 X1 Y1]
                   [--keypoints FILE] [--intrinsics FX FY CX CY] [--out DIR]

    image --(--box, or the --keypoints' person)--> the paper's crop --> the model --> meshes in the crop's camera
          --> meshes in the full image's camera (HaMeR's demo convention, or --intrinsics)
          --> OUT/NAME.png (the picture, plots.draw_demo), OUT/NAME[_side].obj, OUT/NAME.npz (with a README entry)

Map of the file:
1. Reading what the user gives: 2D keypoint files (COCO(-WholeBody), mmpose / ViTPose, OpenPose), boxes, the person
2. The full image's camera (`--intrinsics`), placing a root-relative mesh in it, writing .obj and .npz
3. The command every paper shares: `add_demo_arguments`, `run_demo` (bad input: one line on stderr, exit status 2)
4. SimpleHand: its checkpoint (or the released file), one square crop per hand, the hand placed from its 2D keypoints
5. GenHMR: its four checkpoints, the person crop, UGS, with --keypoints the 2D-pose-guided refinement (Eqs. 2-4)
6. HMR-Adapter: its checkpoint and bases, the person crop, the adapted pipeline, hand boxes from --keypoints
7. `main`
Images are read by `data.read_image` (any Pillow mode), crops cut by `data.crop_matrix` / `data.warp_image`, a
crop's camera moved to the full image's by `lab.crops.crop_translation_to_full`, and trained models rebuilt from
train.py's checkpoints by `checkpoints.load_trained`. Bad input raises `data.InputError`, naming the file, key, shape
or box that is wrong.
"""

import argparse
import functools
import sys
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# 1. Reading what the user gives: 2D keypoint files, boxes, the person to reconstruct


# COCO's 17 body keypoints in the order of OpenPose's BODY_25 and COCO-18 models' outputs
COCO17_FROM_OPENPOSE = {25: (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11),
                        18: (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)}
COCO17_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                "right_knee", "left_ankle", "right_ankle")
# COCO-WholeBody's 133: body 17, feet 6, face 68, left hand 21, right hand 21. A hand's 21 follow
# OpenPose's hand order, which is FreiHAND's (wrist, then thumb, index, middle, ring, pinky, base to tip).
WHOLEBODY_PARTS = {"body": slice(0, 17), "feet": slice(17, 23), "face": slice(23, 91),
                   "left_hand": slice(91, 112), "right_hand": slice(112, 133)}


def read_keypoints(path):
    """2D keypoints of people from a JSON file -> a list of people, each a dict of (N, 3) float64
    arrays [x, y, confidence] in pixels: "body" (17, COCO order), and where the file has them
    "feet" (6), "face" (68), "left_hand" and "right_hand" (21 each, FreiHAND's order); and "score".

    Reads what pose detectors write: ViTPose / mmpose results (a list of {"keypoints": 17 or 133
    [x, y, score] triples, flat or nested, optional "keypoint_scores", "score"}, also under
    "instance_info" or "predictions"), COCO and COCO-WholeBody annotations ({"annotations": [...]},
    with "lefthand_kpts", "righthand_kpts", "foot_kpts", "face_kpts"; visibility > 0 counts as
    confidence 1), and OpenPose ({"people": [{"pose_keypoints_2d": BODY_25 or COCO-18,
    "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"}]}). Raises InputError
    naming the file and the key that does not fit."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({e})") from None
    if isinstance(doc, dict) and "predictions" in doc:  # mmpose's inferencer: one list per frame
        doc = doc["predictions"][0] if doc["predictions"] else []
    if isinstance(doc, dict) and "people" in doc:
        people = [_openpose_person(p, path) for p in doc["people"]]
    else:
        items = doc.get("instance_info", doc.get("annotations")) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise InputError(f"{path}: expected a list of people, or a dict with 'annotations', 'instance_info', "
                             f"'predictions' or 'people' (COCO, mmpose / ViTPose or OpenPose JSON)")
        coco = isinstance(doc, dict) and "annotations" in doc  # ground truth: visibility 0 / 1 / 2, not scores
        people = [_coco_person(p, path, k, coco) for k, p in enumerate(items)]
    if not people:
        raise InputError(f"{path}: no people in the file")
    return people


def _triples(values, count, path, key):
    """A flat or nested list of [x, y, c] (or [x, y] with scores elsewhere) -> (count, 3) float64."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 3 * count:
        return a.reshape(count, 3)
    raise InputError(f"{path}: '{key}' has {a.size} numbers; expected {count} keypoints x [x, y, confidence]")


def _coco_person(p, path, k, visibility):
    if not isinstance(p, dict) or "keypoints" not in p:
        raise InputError(f"{path}: person {k} has no 'keypoints'")
    kp = np.asarray(p["keypoints"], dtype=np.float64)
    if "keypoint_scores" in p:  # mmpose 1.x: keypoints (N, 2) and scores (N,)
        kp = np.concatenate([kp.reshape(-1, 2), np.asarray(p["keypoint_scores"], dtype=np.float64).reshape(-1, 1)], 1)
    n = kp.size // 3
    if n not in (17, 133):
        raise InputError(f"{path}: person {k}: 'keypoints' has {kp.size} numbers; expected 17 (COCO) or 133 "
                         "(COCO-WholeBody) keypoints x [x, y, confidence]")
    kp = _triples(kp, n, path, "keypoints")
    person = {part: kp[s] for part, s in WHOLEBODY_PARTS.items() if s.stop <= n}
    extra = {"foot_kpts": ("feet", 6), "face_kpts": ("face", 68), "lefthand_kpts": ("left_hand", 21),
             "righthand_kpts": ("right_hand", 21)}
    for key, (part, count) in extra.items():
        if key in p:
            person[part] = _triples(p[key], count, path, key)
    if visibility:
        for part in person:
            person[part][:, 2] = person[part][:, 2] > 0
    person["score"] = float(np.asarray(p.get("score", 1.0)).mean())
    return person


def _openpose_person(p, path):
    body = np.asarray(p.get("pose_keypoints_2d", []), dtype=np.float64)
    if body.size // 3 not in COCO17_FROM_OPENPOSE:
        raise InputError(f"{path}: 'pose_keypoints_2d' has {body.size} numbers; expected BODY_25 (75) or COCO-18 (54)")
    body = _triples(body, body.size // 3, path, "pose_keypoints_2d")
    person = {"body": body[list(COCO17_FROM_OPENPOSE[len(body)])]}
    for key, part, count in (("hand_left_keypoints_2d", "left_hand", 21), ("hand_right_keypoints_2d", "right_hand", 21),
                             ("face_keypoints_2d", "face", 70)):
        if len(p.get(key, [])):
            person[part] = _triples(p[key], count, path, key)[:68]
    person["score"] = float(body[:, 2].mean())
    return person


def keypoint_box(points, min_confidence=0.3):
    """The box (x0, y0, x1, y1) around the keypoints (N, 3) whose confidence is at least
    min_confidence, or None if fewer than two are."""
    points = np.asarray(points, dtype=np.float64)
    good = points[points[:, 2] >= min_confidence, :2]
    if len(good) < 2:
        return None
    return (*good.min(0), *good.max(0))


def pick_person(people, box=None):
    """The person to reconstruct: the one whose body keypoints' box overlaps `box` most (IoU), or
    without a box the one with the highest score."""
    if box is None:
        return max(people, key=lambda p: p["score"])

    def iou(p):
        b = keypoint_box(np.concatenate([v for k, v in p.items() if k != "score"]))
        if b is None:
            return 0.0
        w = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
        h = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
        union = (b[2] - b[0]) * (b[3] - b[1]) + (box[2] - box[0]) * (box[3] - box[1]) - w * h
        return w * h / max(union, 1e-9)
    return max(people, key=iou)


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
    """The arguments every paper's `--image` command takes (see run_demo); released: what else
    --checkpoint reads (a paper's released weights)."""
    parser.add_argument("--image", metavar="PATH", required=True, help="run the model on this image and write a "
                        "picture, .obj and .npz (any Pillow-readable image: grayscale, RGBA and 16-bit included)")
    parser.add_argument("--out", default="out/demo", help="folder for the files of --image (default out/demo)")
    parser.add_argument("--checkpoint", default=f"out/{stage}/ckpt.pt",
                        help=f"weights: a train.py checkpoint (default out/{stage}/ckpt.pt, the default run's)"
                        + (f", or {released}" if released else ""))
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                        help="the region of the image to reconstruct, in pixels (default: the whole image)")
    parser.add_argument("--keypoints", metavar="FILE", help="2D keypoints in COCO(-WholeBody), mmpose / ViTPose or "
                        "OpenPose JSON: they give the box" + (" and the hands" if hands else ""))
    parser.add_argument("--intrinsics", nargs=4, type=float, metavar=("FX", "FY", "CX", "CY"),
                        help="the camera that took the image (pixels; pixel edges at integers, so OpenCV's CX, CY "
                        "+ 0.5): the meshes are placed in it (default: HaMeR's demo convention, focal 5000 / 256 x "
                        "max(W, H), principal point at the image centre)")
    if hands:
        parser.add_argument("--left", action="store_true", help="the hand in --box is a left hand")


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
# 4. SimpleHand: hands in a photograph -> placed meshes. Its checkpoint (or the released official file), a square
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
        return load_trained(path, [("simplehand", simplehand_experiments.CONFIGS, _simplehand_build)])
    except InputError:
        raise
    except (ImportError, ValueError, TypeError) as e:  # no timm for a paper backbone; weights that do not fit
        message = str(e).splitlines()[0]
        raise InputError(message if message.startswith(path) else f"{path}: {message}") from None


def hand_crops(image_hw, box=None, people=None, left=False, source="--keypoints"):
    """Where the hands are -> [(is_right, centre (cx, cy), size (s, s))], square crops in pixels.

    With 2D keypoints (people from read_keypoints): each hand of the person `box` picks
    with at least two confident keypoints, around their box x SIMPLEHAND_KEYPOINT_ENLARGE. Without: the
    box (default the whole image) made square about its centre; a right hand unless `left`."""
    if people is None:
        H, W = image_hw
        return [(not left, *crop_box(box or (0, 0, W, H), (1, 1)))]
    person, crops = pick_person(people, box), []
    for side in ("right", "left"):
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


def reconstruct_hand(model, cfg, image, crop, K):
    """One hand: crop (is_right, centre, size) of image (3, H, W) -> the .npz keys of SIMPLEHAND_DOCS but K."""
    is_right, centre, size = crop
    S = cfg.model.image_size
    A = crop_matrix(centre, size, (S, S), flip=not is_right)
    images = warp_image(image, A, S)[None]  # (1, 3, S, S) RGB in [0, 1], as training's crops
    with torch.no_grad():
        pred = {k: v[0] for k, v in simplehand_experiments.predict(model, {"image": images}, cfg).items()}
    placed = place_hand(pred["joints3d"], pred["verts"], pred["joints2d"], A, K, is_right)
    (cx, cy), (w, h) = centre, size
    return dict(placed, verts_rel=pred["verts"], joints3d_rel=pred["joints3d"], joints2d_crop=pred["joints2d"],
                is_right=torch.tensor(is_right), box=torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
                crop_matrix=A)


def infer_simplehand(image, box, people, args):
    """run_demo's `infer` for SimpleHand: image (3, H, W) -> the meshes, the camera and the .npz arrays."""
    model, cfg = load_simplehand(args.checkpoint)
    H, W = image.shape[-2:]
    K = image_camera(args, full_image_intrinsics((W, H)))  # (3, 3)
    crops = hand_crops((H, W), box, people, args.left, args.keypoints)
    hands = [reconstruct_hand(model, cfg, image, crop, K) for crop in crops]
    arrays = {key: torch.stack([h[key] for h in hands]) for key in SIMPLEHAND_DOCS if key != "K"}
    meshes = [("right" if h["is_right"] else "left", h["verts"], h["faces"]) for h in hands]
    return {"meshes": meshes, "K": K, "arrays": dict(arrays, K=K), "docs": camera_docs(SIMPLEHAND_DOCS, args),
            "keypoints": arrays["joints2d"].reshape(-1, 2)}


# ---------------------------------------------------------------------------------------------
# 5. GenHMR: one person -> an SMPL mesh. Its four checkpoints (tokenizer, backbone, prior, image stage), the
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


def infer_genhmr(image, box, people, args):
    """run_demo's `infer` for GenHMR: the crop, UGS, with --keypoints Eqs. 2-4, the mesh in the full image."""
    model, cfg = load_trained(args.checkpoint, GENHMR_STAGES)
    tok, person = model.tokenizer, pick_person(people, box) if people else None
    (H, W), hw, inference = image.shape[-2:], cfg.model.image_hw, cfg.inference
    box, A = person_crop((H, W), hw, box, person["body"] if person else None, GENHMR_BOX_ENLARGE,
                         args.keypoints)  # the whole image of the model's aspect is the training crop
    crop = warp_image(image, A, hw)
    ugs = genhmr.uncertainty_guided_sampling(model, crop[None], inference.ugs_iterations, inference.schedule,
                                             inference.top_k, choice_temperature=inference.choice_temperature,
                                             seeds=torch.zeros(1))
    ids, betas, cam = ugs["ids"], ugs["betas"], ugs["cam"]
    # the crop's camera: focal f / S per crop height (2D is normalised by H), principal point at its centre
    crop_t = bodymodels.weak_perspective_to_translation(cam.double(), genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE)
    K = image_camera(args, full_image_intrinsics((W, H), genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE))
    t = crop_translation_to_full(crop_t, A, hw, (W, H), genhmr.FOCAL_LENGTH / genhmr.CROP_SIZE * hw[0],
                                            K).float()
    arrays = {"cam": cam[0], "betas": betas[0], "K": K, "box": torch.tensor(box), "crop_matrix": A,
              "token_ids": ids[0], "cam_t": t[0], "refined": torch.tensor(int(person is not None))}
    poses = {"": tok.decode_ids(ids)}
    if person is not None:  # Inference Strategy > 2D Pose-Guided Refinement, towards the detector's keypoints
        targets, weights = keypoint_targets(person, A, hw)
        problem = genhmr.refinement_problem(tok, ids, betas, cam, targets, inference.refine_reg, hw[0], weights)
        e = genhmr_experiments.REFINEMENTS[cfg.recipe.refine_eta_rule](*problem, inference)[-1]
        poses["refined_"] = tok.decode(e).detach()
        arrays["keypoints"] = torch.as_tensor(person["body"])
    kp = torch.as_tensor(person["body"]).float()[list(COCO17_TO_SMPL)] if person is not None else None
    for prefix, R in poses.items():
        crop_mesh = genhmr.mesh_outputs(tok, R, betas, cam, hw)  # in the crop's camera, as `predict`
        verts, joints = (crop_mesh[k][0] - crop_mesh["cam_t"] + t[0] for k in ("verts", "joints3d"))
        uv = bodymodels.perspective_projection(joints, K)
        arrays.update({f"{prefix}verts": verts, f"{prefix}joints3d": joints, f"{prefix}joints2d": uv,
                       f"{prefix}pose": bodymodels.matrix_to_axis_angle(R[0]),
                       f"{prefix}crop_verts": crop_mesh["verts"][0]})
        if prefix == "":
            arrays.update(crop_joints3d=crop_mesh["joints3d"][0], crop_cam_t=crop_mesh["cam_t"][0])
        if kp is not None:  # confidence-weighted mean 2D distance to the keypoints
            d = (uv[list(COCO17_TO_SMPL.values())] - kp[:, :2]).norm(dim=-1)
            arrays[f"{prefix}reproj_error_px"] = (kp[:, 2] * d).sum() / kp[:, 2].sum().clamp_min(1e-9)
    final = arrays["refined_verts" if person is not None else "verts"]
    marks = person["body"][person["body"][:, 2] >= 0.3, :2] if person is not None else None
    return {"meshes": [("", final, tok.body.faces)], "K": K, "keypoints": marks, "arrays": arrays,
            "docs": camera_docs(GENHMR_DOCS, args)}


# ---------------------------------------------------------------------------------------------
# 6. HMR-Adapter: one person -> an SMPL-X mesh with its hands. The crop is what the whole-body model was trained on:
#    the person box grown to the input's aspect (cfg.image_size), warped to that size, fed as [0, 1] RGB, so a
#    render of the training set's size given whole is exactly a training input. The crop's camera (SMPLer-X's:
#    focal 5000 per 256 pixels of the crop's height, principal point at its centre) becomes the full image's
#    (`lab.crops.crop_translation_to_full`).


PERSON_BOX_ENLARGE = 1.2 * 1.25  # official (SMPLer-X get_bbox, process_bbox): keypoints' box x 1.2, its crop x 1.25
HAND_BOX_ENLARGE = 1.2  # a hand's box: the square of 1.2 x the larger side of its keypoints (as the training data's)


def load_hmr_adapter(path, with_config=False):
    """The `HMRAdapter` model of a train.py checkpoint of stage "hmr_adapter" (its bases: ../hmr_adapter_bases/),
    and with_config its preset."""
    chain = [("hmr_adapter_bases", hmr_adapter_experiments.BASE_CONFIGS,  # its checkpoint holds every weight
              lambda cfg, parent: hmr_adapter_experiments.build_bases(cfg)),
             ("hmr_adapter", hmr_adapter_experiments.CONFIGS, hmr_adapter_experiments.build_model)]
    model, cfg = load_trained(path, chain)
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
def infer_hmr_adapter(image, box, people, args):
    """run_demo's `infer` for HMR-Adapter: the adapted pipeline (Sec. 3.1) on the person's crop of image (3, H, W)."""
    model, cfg = load_hmr_adapter(args.checkpoint, with_config=True)
    H, W = image.shape[-2:]
    person = pick_person(people, box) if people else None
    crop_hw = tuple(cfg.data.image_size)
    points = np.concatenate([v for k, v in person.items() if k != "score"]) if person else None
    box, A = person_crop((H, W), crop_hw, box, points, PERSON_BOX_ENLARGE, args.keypoints)
    crop = warp_image(image, A, crop_hw)  # the whole image of the input's size: a training input
    out = hmr_adapter_experiments.adapted_pipeline(model, crop[None], hand_boxes=keypoint_hand_boxes(person, A),
                                                   details=True)
    f = 5000.0 / 256 * crop_hw[0]  # the crop camera's focal, SMPLer-X's (`smplerx_translation`)
    K = image_camera(args, full_image_intrinsics((W, H), dtype=torch.float64))
    t = crop_translation_to_full(out["t"][0].double(), A, crop_hw, (W, H), f, K)
    verts, joints = (out[k][0].double() - out["t"][0].double() + t for k in ("verts", "joints"))
    to_image = lambda uv: (uv.double() - A[:2, 2]) / A[0, 0]  # noqa: E731  crop pixels -> image pixels
    arrays = dict(verts=verts, joints3d=joints, joints2d=bodymodels.perspective_projection(joints, K),
                  pose=bodymodels.matrix_to_axis_angle(out["R"][0]), shape=out["shape"][0],
                  expression=out["expression"][0],
                  translation=t, hand_boxes=to_image(out["hand_boxes"][0].reshape(4, 2)).reshape(2, 4), K=K,
                  box=to_image(torch.tensor([[0.0, 0.0], crop_hw[::-1]])).flatten(), crop_matrix=A,
                  crop_K=torch.tensor([[f, 0, crop_hw[1] / 2], [0, f, crop_hw[0] / 2], [0, 0, 1.0]]),
                  crop_verts=out["verts"][0], crop_joints=out["joints"][0])
    return dict(meshes=[("", verts, hmr_adapter.body_models().smplx_faces)], K=K, arrays=arrays,
                docs=camera_docs(HMR_ADAPTER_DOCS, args),
                keypoints=None if points is None else points[points[:, 2] >= 0.3, :2])


# ---------------------------------------------------------------------------------------------
# 7. main


MODELS = {  # --model -> (its `infer`, what add_demo_arguments adds for it)
    "simplehand": (infer_simplehand, dict(hands=True, released="a released official file (epoch_200_rerun1, "
                                                                "needs timm)")),
    "genhmr": (infer_genhmr, {}),
    "hmr_adapter": (infer_hmr_adapter, {}),
}


def build_parser(model=None):
    """The command's arguments for `model` (its --checkpoint default and its own flags; None: the shared ones)."""
    parser = Parser(prog="demo.py", description="A trained model on your image: a picture, an .obj "
                                     "per mesh and an .npz of everything it predicted (keys described in its README).")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="which paper's model")
    parser.add_argument("--threads", type=number(int, "[0, inf)"), default=0,
                        help="torch CPU threads (0: leave torch's default)")
    add_demo_arguments(parser, model or "MODEL", **MODELS[model][1] if model in MODELS else {})
    return parser


def main(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model")
    model = first.parse_known_args(argv)[0].model
    args = build_parser(model).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_demo(args, MODELS[args.model][0], "demo.py")


if __name__ == "__main__":
    main()
