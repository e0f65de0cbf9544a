"""What a sample is: the keys every dataset returns, augmentation, the real datasets' readers, the rendered cache.

A model never knows which dataset it got: the keys, shapes, units and conventions below are the same
for real data (the readers here, given a path) and for the synthetic sets that render their own
images (lab/synthetic.py, from the stand-in body models of lab/standins.py or the real MANO/SMPL/SMPL-X
files when HMR_BODY_MODELS points to them).

Conventions (shared with bodymodels.py):
- Camera coordinates are OpenCV's: x right, y down, z forward; metres; float32 samples.
- Pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5), and
  a point X lands at uv = (K X)[:2] / (K X)[2] (`bodymodels.perspective_projection`). This is
  `grid_sample(align_corners=False)`'s convention; FreiHAND's K puts pixel centres at integers,
  half a pixel away, which no loss here can see.
- A sample is a plain dict of tensors. Hands (`FreiHAND`, `NpzHands`, synthetic.SyntheticHands):
    image (3, H, W) float32 RGB in [0, 1]      K (3, 3) intrinsics of this image
    joints3d (21, 3) FreiHAND order, metres, camera coordinates
    joints2d (21, 2) pixels, = perspective_projection(joints3d, K) exactly
    verts (778, 3) camera coordinates          mano_pose (16, 3) axis-angle, global orientation first
    mano_shape (10,)                           is_right () bool
  Bodies (synthetic.SyntheticBodies; `HMR2Npz` gives the labels its rows have): image, K; joints3d
    (24, 3) SMPL joints; joints2d (24, 2) their pixels; verts (6890, 3); smpl_pose (24, 3) axis-angle,
    global orientation (in camera coordinates) first; smpl_shape (10,); cam_t (3,) with
    verts = SMPL(pose, shape) + cam_t (smplx's output, no transl).
  Poses (synthetic.SyntheticPoses, `HMR2Poses`): smpl_pose (24, 3), smpl_shape (10,).
  Whole bodies (synthetic.SyntheticWholeBody, `WholeBodyNpz`): image, K; verts (10475, 3) and joints3d
    (55, 3) SMPL-X joints; joints2d (55, 2); smplx_pose (55, 3) axis-angle in SMPL-X joint order (global
    orientation in camera coordinates, body 1-21, jaw, eyes, left hand 25-39, right hand 40-54);
    smplx_shape (10,); smplx_expression (10,); cam_t (3,) with verts = SMPLX(pose, shape, expression) + cam_t;
    and per side S in {left, right} the hand keys of `WholeBodyHands`, and S_hand_occluded () 1.0 where
    an occluder covers the hand, else 0.0.
- Left hands: `joints3d`, `verts`, `joints2d` and the image are those of the LEFT hand as seen by the
  camera; `mano_pose` and `mano_shape` are the parameters of the right-hand MANO whose mirror image
  (x -> -x in camera coordinates) is that hand, i.e. verts = MANO_right(pose, shape) * [-1, 1, 1]
  up to a translation. This is HaMeR's "flip left hands to right" convention, so one right-hand
  model serves both sides, and projection consistency holds for both without special cases.
- Augmentation is a change of camera: an in-plane rotation turns the 3D camera frame about the
  optical axis, zoom and shift change K, a horizontal flip mirrors x and toggles is_right. After it,
  perspective_projection(joints3d, K) == joints2d still holds (a test checks it).
- Randomness: every random number of a sample comes from a torch.Generator seeded by
  (seed, epoch, index) (`sample_rng`), never from global RNG state, so DataLoader workers, DDP
  ranks and resumed runs see the same sample for the same index, and different indices differ.
  Batches are drawn together (synthetic.Draws, `__getitems__`), and still a sample never depends on its batch.

Symbols: B batch, V vertices, F faces, J joints, K intrinsics, (H, W) image size, S crop size,
R rotation, T point transform, A pixel transform (3, 3) acting on homogeneous pixels.

Map of the file:
1. Randomness (`sample_rng`, `uniform`, `normal`), `image_hw`, body models (`body_model`, `skinning`, `body_rig`)
2. Augmentation as a camera change: `AugmentConfig`, `sample_augmentation`, the official simpleHand
   recipe `OFFICIAL_HAND_AUGMENT` (`turned_keypoint_crop`, `official_color`); cutting crops and resampling
   images: `crop_box`, `crop_matrix`, `warp_image`
3. Real hands: `FreiHAND`, `NpzHands`, `write_npz`; photographs as files: `read_image`, `InputError`
4. Real bodies (4D-Humans' evaluation .npz of 3DPW / EMDB / H36M): `HMR2Npz`, `HMR2Poses`; `Indexed`
5. Whole bodies: the hand keys (`WholeBodyHands`), real ones (EHF / ARCTIC as one .npz): `WholeBodyNpz`
6. The rendered cache: `RenderedSet`, `stack_samples`, `labels` (lab/synthetic.py's `render_once` writes it)
7. Which face a pixel shows: the z-buffer `rasterize` (`rasterize_batch` for B meshes), by which a whole body's hand
   visibility is counted; lab/render.py shades images over it
How a synthetic sample is made, and the trainer's datasets (`hand_dataset`, `body_dataset`, ...):
lab/synthetic.py. Pictures: lab/plots.py. Speed and sample grids: `python -m lab.bench --data-bench`, `--data-grid`.
"""

import functools
import json
import math
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import bodymodels
import metrics
from bodymodels import (axis_angle_to_matrix, forward_kinematics, matrix_to_axis_angle, mirror_rotation,
                        perspective_projection)

# ---------------------------------------------------------------------------------------------
# 1. Randomness and body models


def sample_rng(*keys):
    """A torch.Generator fixed by non-negative integer keys, e.g. (seed, epoch, index, stream).

    numpy's SeedSequence hashes the keys, so (0, 0, 1) and (0, 1, 0) give unrelated streams. No
    global RNG is touched: the same keys give the same numbers in any process, worker or rank.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


AUGMENT_STREAM = 1  # sample_rng(seed, epoch, index, stream): stream 0 draws the sample, 1 its augmentation


def image_hw(image_size):
    """int or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def uniform(rng, low, high, shape=()):
    """Uniform float64 samples in [low, high) of the given shape (a 0-d tensor by default)."""
    return low + (high - low) * torch.rand(shape, generator=rng, dtype=torch.float64)


def normal(rng, std, shape=()):
    """N(0, std^2) float64 samples of the given shape (a 0-d tensor by default)."""
    return std * torch.randn(shape, generator=rng, dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def body_model(kind, model_dir=None):
    """The smplx model "mano" (right hand), "smpl" or "smplx" of bodymodels' loaders (defaults:
    axis-angle hand poses, flat mean hand), loaded once per process and shared by every dataset,
    which only read it. model_dir None: $HMR_BODY_MODELS, else the procedural stand-ins that importing the lab
    registers (lab/standins.py)."""
    load = {"mano": bodymodels.load_mano, "smpl": bodymodels.load_smpl, "smplx": bodymodels.load_smplx}
    if kind not in load:
        raise ValueError(f"body_model: kind must be one of {sorted(load)}, got {kind!r}")
    model = load[kind](model_dir)
    model.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=None)
def skinning(kind, model_dir=None, dtype=torch.float64):
    """`bodymodels.Skinning` of body_model(kind, model_dir) in dtype, built once per process. It poses
    a batch sample by sample through the large products, so a sample never depends on its batch."""
    return bodymodels.Skinning(body_model(kind, model_dir), dtype)


def body_rig(model):
    """What a dataset needs from an smplx model, computed once: faces (F, 3), rest joints (J, 3)
    float64, parents (J,), part (V,) strongest joint per vertex, hair (V,) bool (head top)."""
    with torch.no_grad():
        rest = model()
    joints = rest.joints[0].double()
    part = model.lbs_weights.argmax(1)
    head = 15
    hair = (part == head) & (rest.vertices[0, :, 1].double() > joints[head, 1] + 0.04)
    faces = torch.as_tensor(np.asarray(model.faces, dtype=np.int64))
    return {"faces": faces, "rest_joints": joints, "parents": model.parents.tolist(), "part": part, "hair": hair}


# ---------------------------------------------------------------------------------------------
# 2. Augmentation as a camera change
#
# Every augmentation is a new camera looking at the same 3D scene, so the labels stay exact:
#   in-plane rotation by phi:  points x' = Rz(phi) x, principal point p' = c + R2(phi) (p - c)
#                              (the image turns about the crop centre c = (W/2, H/2))
#   zoom s and shift t:        K' = Z K with Z = [[s, 0, (1 - s) cx + tx], [0, s, (1 - s) cy + ty], [0, 0, 1]]
#   horizontal flip:           points x' = M x with M = diag(-1, 1, 1), K' = G K M with
#                              G = [[-1, 0, W], [0, 1, 0], [0, 0, 1]] (u' = W - u); is_right toggles
#   keypoint crop (official):  the camera turns to look at the keypoints, x' = Rz R_look x, and K' frames them
# and an image drawn with the old camera maps to the new one by the pixel transform
# A = K_new T K_old^-1 (affine when T keeps z, a homography after the keypoint crop's turn), which
# `warp_image` applies to real photographs.
# Synthetic samples are simply rendered with the new camera.


@dataclass
class AugmentConfig:
    """Training augmentation ranges (each sample draws its own from (seed, epoch, index))."""
    rotation_deg: float = 30.0  # in-plane rotation uniform in [-30, 30] degrees, as HaMeR / HMR2.0's rot_factor
    zoom: tuple = (0.85, 1.1)  # scale of the image about its centre; < 1 shrinks (crops fill 70-90%: 1.1 still fits)
    shift: float = 0.05  # translation up to 5% of the crop side in x and y: detector jitter
    color: float = 0.3  # brightness, contrast and saturation factors uniform in [0.7, 1.3]
    flip_prob: float = 0.0  # 0: FreiHAND and SimpleHand are right-hand only; 0.5 trains both sides
    crop: str = "centre"  # "centre": zoom and shift about the crop's centre | "keypoints": `turned_keypoint_crop`
    box_scale: tuple = (1.0, 1.5)  # "keypoints": crop side / the larger side of the 2D keypoints' box
    box_jitter: float = 0.1  # "keypoints": the box centre moves up to this fraction of the box width in x and y
    color_style: str = "jitter"  # "jitter": `color_jitter` with `color` | "official": `official_color`
    channel_noise: float = 0.4  # "official": each channel times U(1 - 0.4, 1 + 0.4)
    contrast: float = 0.2  # "official": times U(1 - 0.2, 1 + 0.2)
    brightness: tuple = (-0.4, 0.1)  # "official": plus U(-0.4, 0.1) (1 = white)

    def __post_init__(self):
        for name, allowed in (("crop", ("centre", "keypoints")), ("color_style", ("jitter", "official"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")


# The official simpleHand training augmentation (cfg.py DATA.AUG, read by dataset.py HandDataset with
# transforms.py and kp_preprocess.py): the keypoints' box, its centre jittered by U(-0.1, 0.1) x its
# width (BBoxCenterJitter factor 0.1, uniform) and its size times U(1, 1.5) (GetRandomScaleRotation
# min/max_scale_factor), seen by a camera turned to look at it (MeshPerspectiveTransform), rolled
# by any angle, flipped with probability 0.5 (RandomHorizontalFlip), then each colour channel times
# U(0.6, 1.4) (RandomChannelNoise 0.4) and albumentations' RandomBrightnessContrast (brightness
# (-0.4, 0.1), its default contrast 0.2, always applied).
# NOTE R5: the official roll is clip(N(0, 90), -180, 180) DEGREES passed to np.cos /
# np.sin as RADIANS (GetRandomScaleRotation rot_factor 90 -> get_2d3d_perspective_transform), an
# angle that wraps round the circle many times, i.e. about uniform: here uniform in [-180, 180] degrees.
OFFICIAL_HAND_AUGMENT = AugmentConfig(rotation_deg=180.0, crop="keypoints", box_scale=(1.0, 1.5), box_jitter=0.1,
                                      flip_prob=0.5, color_style="official", channel_noise=0.4, contrast=0.2,
                                      brightness=(-0.4, 0.1))
HAND_AUGMENTS = {"default": AugmentConfig(), "official": OFFICIAL_HAND_AUGMENT}  # SimpleHandData.train_augment


@dataclass
class Augmentation:
    """One drawn augmentation: new points x' = T x with T = M^flip Rz, and the new intrinsics."""
    rotation: torch.Tensor  # (3, 3) float64 Rz, about the optical axis
    flip: bool  # mirror x (and toggle is_right)
    K: torch.Tensor  # (3, 3) float64 intrinsics after the change
    color: torch.Tensor  # (3,) float64 brightness, contrast, saturation factors

    @property
    def T(self):
        mirror = torch.diag(torch.tensor([-1.0 if self.flip else 1.0, 1.0, 1.0], dtype=torch.float64))
        return mirror @ self.rotation  # (3, 3)


def rotation_z(angle):
    """Rotation by `angle` (radians, 0-d tensor) about the camera's z axis. -> (3, 3) float64."""
    angle = torch.as_tensor(angle, dtype=torch.float64)
    c, s, o, i = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, o, s, c, o, o, o, i]).view(3, 3)


def sample_augmentation(rng, cfg, K, image_size, joints3d=None):
    """Draw an augmentation for an image of image_size (int or (H, W)) seen through K (3, 3).
    joints3d (21, 3), camera coordinates: the keypoints whose box cfg.crop="keypoints" crops around."""
    height, width = image_hw(image_size)
    centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    K = K.double().clone()
    if cfg.crop == "keypoints":
        if joints3d is None:
            raise ValueError("sample_augmentation: AugmentConfig.crop='keypoints' needs the sample's joints3d")
        R, K = turned_keypoint_crop(rng, cfg, K, joints3d, (height, width))
    else:
        # 1. in-plane rotation: turn the points about the optical axis and the principal point about
        #    the crop centre, so that the image turns about its centre
        R = rotation_z(math.radians(cfg.rotation_deg) * uniform(rng, -1, 1))
        K[:2, 2] = centre + R[:2, :2] @ (K[:2, 2] - centre)
        # 2. zoom about the centre, then shift
        zoom, shift = uniform(rng, *cfg.zoom), cfg.shift * uniform(rng, -1, 1, (2,)) * torch.tensor([width, height])
        Z = torch.eye(3, dtype=torch.float64)
        Z[0, 0] = Z[1, 1] = zoom
        Z[:2, 2] = (1 - zoom) * centre + shift
        K = Z @ K
    # 3. horizontal flip: K' = G K M
    flip = bool(torch.rand((), generator=rng) < cfg.flip_prob)
    if flip:
        G = torch.tensor([[-1.0, 0, width], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
        K = G @ K @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    if cfg.color_style == "official":  # channel factors (3,), contrast, brightness
        color = torch.cat([uniform(rng, 1 - cfg.channel_noise, 1 + cfg.channel_noise, (3,)),
                           uniform(rng, 1 - cfg.contrast, 1 + cfg.contrast, (1,)),
                           uniform(rng, *cfg.brightness, (1,))])
    else:
        color = uniform(rng, 1 - cfg.color, 1 + cfg.color, (3,))
    return Augmentation(rotation=R, flip=flip, K=K, color=color)


def rotation_onto(a, b):
    """The shortest rotation R (3, 3) float64 with R a / |a| = b / |b| (a, b (3,), not opposite)."""
    a, b = a.double() / a.norm(), b.double() / b.norm()
    v, c = torch.linalg.cross(a, b), torch.dot(a, b)
    V = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + V + V @ V / (1 + c)  # Rodrigues


def turned_keypoint_crop(rng, cfg, K, joints3d, image_hw):
    """The official crop (OFFICIAL_HAND_AUGMENT) -> (R (3, 3), K' (3, 3)) float64: points x' = R x are
    seen through K' by a square crop of the image's size around the 2D keypoints.

    official (simpleHand dataset.py, transforms.py, kp_preprocess.py get_2d3d_perspective_transform):
    1. the box of the keypoints inside the image; its centre moves by U(-j, j) x its width in x and
       y (clipped to the image), its sides grow by one factor U(box_scale);
    2. the camera turns (R_look) until its optical axis goes through the moved centre;
    3. the focal length is scaled so that the box, turned with the camera, spans the crop along its
       larger side, and the principal point is the crop's centre;
    4. the camera rolls about its new axis by U(-rotation_deg, rotation_deg): R = Rz R_look.
    """
    height, width = image_hw
    uv = perspective_projection(joints3d.double(), K)  # (21, 2) pixels
    inside = ((uv > 0) & (uv < torch.tensor([width, height]))).all(dim=1)
    uv = uv[inside] if inside.any() else uv  # official: only keypoints inside the image
    lo, hi = uv.amin(dim=0), uv.amax(dim=0)
    box = hi - lo  # (2,) width, height
    # 1. official BBoxCenterJitter: the box WIDTH sets the jitter in both directions
    c = (lo + hi) / 2 + cfg.box_jitter * box[0] * uniform(rng, -1, 1, (2,))
    c = torch.minimum(c.clamp(min=0), torch.tensor([float(width), float(height)], dtype=torch.float64))
    box = box * uniform(rng, *cfg.box_scale)
    # 2. the turn that takes the ray through c onto the optical axis
    K_inv = torch.linalg.inv(K)
    R_look = rotation_onto(K_inv @ torch.cat([c, c.new_ones(1)]), torch.tensor([0.0, 0.0, 1.0]))
    # 3. the box's corners, turned with the camera and projected by K: their larger side fills the crop
    corners = torch.stack([c + box * torch.tensor(s, dtype=torch.float64) / 2
                           for s in ((-1, -1), (-1, 1), (1, -1), (1, 1))])  # (4, 2)
    rays = torch.cat([corners, corners.new_ones(4, 1)], 1) @ K_inv.T @ R_look.T  # (4, 3)
    turned = perspective_projection(rays, K)
    side = (turned.amax(dim=0) - turned.amin(dim=0)).max()
    size = torch.tensor([width, height], dtype=torch.float64)
    K_new = torch.eye(3, dtype=torch.float64)
    K_new[0, 0], K_new[1, 1] = K[0, 0] * width / side, K[1, 1] * height / side  # official: res / scale
    K_new[:2, 2] = size / 2
    # 4. the roll about the new optical axis (the principal point is the crop's centre)
    R = rotation_z(math.radians(cfg.rotation_deg) * uniform(rng, -1, 1)) @ R_look
    return R, K_new


def augment_hand_labels(sample, aug):
    """Move a hand sample's labels to the augmented camera (the image is left alone).

    joints3d, verts -> T x; K -> aug.K; joints2d re-projected; is_right toggled by a flip.
    mano_pose describes the right hand whose mirror is a left hand, so its global orientation
    turns by Rz for a right hand and by M Rz M (the mirrored turn) for a left hand; a flip alone
    leaves mano_pose unchanged (module docstring: left hands).
    """
    out = dict(sample)
    T = aug.T.float()
    out["joints3d"] = sample["joints3d"] @ T.T
    out["verts"] = sample["verts"] @ T.T
    out["K"] = aug.K.float()
    out["joints2d"] = perspective_projection(out["joints3d"].double(), aug.K).float()
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    turn = aug.rotation if bool(sample["is_right"]) else M @ aug.rotation @ M
    pose = sample["mano_pose"].clone()
    pose[0] = matrix_to_axis_angle(turn @ axis_angle_to_matrix(pose[0].double())).float()
    out["mano_pose"] = pose
    out["is_right"] = torch.tensor(bool(sample["is_right"]) != aug.flip)
    return out


def official_color(image, factors):
    """official (simpleHand transforms.py RandomChannelNoise, then albumentations RandomBrightnessContrast
    on uint8): image (3, H, W) in [0, 1]; factors (5,) = 3 channel multipliers, contrast alpha,
    brightness beta -> clamp(clamp(image x channel) x alpha + beta), clamped to [0, 1]."""
    channels, alpha, beta = factors[:3].to(image), float(factors[3]), float(factors[4])
    image = (image * channels[:, None, None]).clamp(0, 1)  # cv2.multiply saturates at 255
    return (image * alpha + beta).clamp(0, 1)


def recolor(image, factors, style):
    """The colour change of an augmentation: AugmentConfig.color_style "jitter" or "official"."""
    return official_color(image, factors) if style == "official" else color_jitter(image, factors)


def color_jitter(image, factors):
    """image (3, H, W) in [0, 1]; factors (3,) = brightness, contrast, saturation multipliers."""
    brightness, contrast, saturation = (float(f) for f in factors)
    image = image * brightness
    image = (image - image.mean()) * contrast + image.mean()
    luma = torch.tensor([0.299, 0.587, 0.114], device=image.device)  # ITU-R 601
    gray = (image * luma[:, None, None]).sum(0, keepdim=True)
    image = gray + (image - gray) * saturation
    return image.clamp(0, 1)


# Cutting a crop: a box grown to an aspect, the crop's pixel transform A, resampling an image by A (what the
# real readers cut from their photographs, demo.py from the user's; a crop's camera is A K)


def crop_box(box, aspect_hw, enlarge=1.0):
    """The crop around box (x0, y0, x1, y1): the smallest rectangle of aspect H:W = aspect_hw
    centred on the box that covers it, times enlarge -> (centre (cx, cy), size (w, h)) in pixels."""
    x0, y0, x1, y1 = box
    ratio = aspect_hw[0] / aspect_hw[1]
    w, h = x1 - x0, y1 - y0
    w, h = max(w, h / ratio), max(h, w * ratio)
    return ((x0 + x1) / 2, (y0 + y1) / 2), (w * enlarge, h * enlarge)


def crop_matrix(centre, size, out_hw, flip=False):
    """The pixel transform A (3, 3) of a crop: the rectangle of `size` (w, h) at `centre` (cx, cy) of
    the full image onto an image of out_hw (H, W), mirrored left-right if flip. Pixel edges map to
    pixel edges (the rectangle's corner (cx - w/2, cy - h/2) to (0, 0)), as `warp_image` reads them;
    a camera K of the full image becomes A @ K for the crop (a mirror also mirrors x)."""
    (cx, cy), (w, h), (H, W) = centre, size, out_hw
    sx, sy = W / w, H / h
    A = torch.tensor([[sx, 0.0, -sx * (cx - w / 2)], [0.0, sy, -sy * (cy - h / 2)], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    if flip:
        A = torch.tensor([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) @ A
    return A


def warp_image(image, A, size, steps=None):
    """Resample image (3, h, w) so that input pixel p lands on output pixel ~ A p (A (3, 3): an
    affine transform or any homography), at size (int or (H, W)). Bilinear, black outside, pixel
    centres at j + 0.5 (grid_sample's align_corners=False). steps: read positions rounded to
    1/steps pixel, as cv2's INTER_LINEAR does with steps = 32 (a visible difference only where a
    bilinear read straddles the black outside); None = exact."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = image.shape[-2:]
    if (h, w) == (height, width) and torch.equal(torch.as_tensor(A, dtype=torch.float64),
                                                 torch.eye(3, dtype=torch.float64)):
        return image.clone()  # exactly the image (the resampling grid below is float32, off by ~1e-6)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    q = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (H, W, 3) output pixel centres
    p = q @ torch.linalg.inv(torch.as_tensor(A).double()).T  # where each output pixel reads
    p = p[..., :2] / p[..., 2:]
    if steps:
        p = torch.round(p * steps) / steps  # (p - 0.5) * steps is an integer shift away: cv2's grid too
    grid = (p / torch.tensor([w, h], dtype=torch.float64) * 2 - 1).float()  # align_corners=False
    return F.grid_sample(image[None], grid[None].to(image.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


# ---------------------------------------------------------------------------------------------
# 3. Real hands


# Photographs as files: `read_image` reads any image a user or a dataset gives; bad input raises
# InputError, whose message names the file (demo.py turns it into one line and exit status 2).


class InputError(ValueError):
    """Bad input from the user (a file, a key, a shape, a box); the message says which and why."""


MIN_IMAGE_SIDE = 16  # pixels: smaller is not a picture of a person or a hand
MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels: larger is refused before its pixels are decoded


def read_image(path):
    """An image file of any mode -> (3, H, W) float32 RGB in [0, 1], upright.

    Through Pillow: the EXIF orientation is applied (as cv2.imread does), grayscale is repeated
    over the three channels, a palette is expanded, an alpha channel is dropped (the stored colour
    is kept, as cv2.imread does), 16-bit images are divided by 65535 and 8-bit ones by 255.
    Raises InputError naming the file if it is missing, not an image, truncated, or smaller than
    MIN_IMAGE_SIDE or larger than MAX_IMAGE_PIXELS."""
    from PIL import Image, ImageOps

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            W, H = im.size
            if min(W, H) < MIN_IMAGE_SIDE or W * H > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: an image of {W} x {H} pixels; expected sides of at least "
                                 f"{MIN_IMAGE_SIDE} and at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
            im = ImageOps.exif_transpose(im)
            array = _image_array(im)
    except InputError:
        raise
    except Exception as e:  # Pillow raises several types for a file that is not an image or is cut short
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _image_array(im):
    """A Pillow image -> (H, W, 3) float32 in [0, 1]."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit (PNG's 16-bit gray opens as I or I;16)
        gray = np.asarray(im, dtype=np.float64) / 65535
        return np.repeat(np.clip(gray, 0, 1)[..., None], 3, -1).astype(np.float32)
    if im.mode == "F":
        return np.repeat(np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], 3, -1)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255


HAND_KEYS = ("image", "K", "joints3d", "joints2d", "verts", "mano_pose", "mano_shape", "is_right")


class _PhotoHands(torch.utils.data.Dataset):
    """What the real hand datasets share: resize to image_size, augmentation, set_epoch.

    A subclass sets self.K (N, 3, 3) in the pixels of its image files, self.joints3d (N, 21, 3),
    self.verts (N, 778, 3), self.mano_pose (N, 16, 3), self.mano_shape (N, 10), self.is_right (N,)
    as numpy arrays, and implements `_image_path(index)` and `_label_index(index)`.
    """

    def __init__(self, image_size=224, augment=False, seed=0, augment_config=None):
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.augment_config = augment_config or AugmentConfig()

    def set_epoch(self, epoch):
        """Augmentations change with the epoch (as DistributedSampler.set_epoch does for the order)."""
        self.epoch = int(epoch)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} samples")
        path = self._image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{type(self).__name__}: missing image {path}")
        image = read_image(path)
        i = self._label_index(index)
        labels = {"K": torch.from_numpy(self.K[i]).float(),
                  "joints3d": torch.from_numpy(self.joints3d[i]).float(),
                  "verts": torch.from_numpy(self.verts[i]).float(),
                  "mano_pose": torch.from_numpy(self.mano_pose[i]).float(),
                  "mano_shape": torch.from_numpy(self.mano_shape[i]).float(),
                  "is_right": torch.tensor(bool(self.is_right[i]))}
        return self._finish(image, labels, index)

    def _finish(self, image, labels, index):
        """Resize to image_size (K follows), then augment image and labels together."""
        height, width = image_hw(self.image_size)
        h, w = image.shape[-2:]
        scale = torch.diag(torch.tensor([width / w, height / h, 1.0], dtype=torch.float64))
        K = scale @ labels["K"].double()  # (3, 3): u' = u W / w for pixel edges at integers
        if (h, w) != (height, width):
            image = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        labels = dict(labels, K=K.float(), joints2d=perspective_projection(labels["joints3d"].double(), K).float())
        if self.augment:
            rng = sample_rng(self.seed, self.epoch, index, AUGMENT_STREAM)
            aug = sample_augmentation(rng, self.augment_config, K, (height, width), labels["joints3d"])
            labels = augment_hand_labels(labels, aug)
            image = warp_image(image, aug.K @ aug.T @ torch.linalg.inv(K), (height, width))  # a homography
            image = recolor(image, aug.color, self.augment_config.color_style)
        return dict(labels, image=image.contiguous())


# the training split's four image versions: green screen, homogenised, auto-coloured with / without sample points
FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")


_FREIHAND_LAYOUT = """expected FreiHAND's official layout:
  ROOT/training_K.json  training_xyz.json  training_verts.json  training_mano.json  [training_scale.json]
  ROOT/training/rgb/00000000.jpg ... (32,560 hands x 4 versions; file id = index + 32560 * version)
  ROOT/evaluation_K.json  evaluation_xyz.json  evaluation_verts.json  evaluation_mano.json  [evaluation_scale.json]
  ROOT/evaluation/rgb/00000000.jpg ... 00003959.jpg"""


def _read_json(path, shape):
    """A FreiHAND label file as a float32 array of `shape` (-1: its number of hands), checked (numbers, finite)."""
    if not path.is_file():
        raise FileNotFoundError(f"FreiHAND: {'folder' if path.is_dir() else 'missing'} {path}\n{_FREIHAND_LAYOUT}")
    try:
        with open(path) as f:
            a = np.asarray(json.load(f))
    except ValueError as e:  # a truncated file (JSONDecodeError) or ragged lists
        raise ValueError(f"FreiHAND: {path} is not readable JSON of numbers ({str(e).splitlines()[0]})") from None
    check_numbers("FreiHAND", path, "(the file)", a)
    try:
        return a.astype(np.float32).reshape(shape)
    except ValueError:
        raise ValueError(f"FreiHAND: {path} holds an array of shape {a.shape}, expected {shape} (-1: the hands)") \
            from None


def _real_mano_hands_mean():
    """MANO's mean finger pose (45,) from the real model files, or None without them."""
    if not os.environ.get("HMR_BODY_MODELS"):
        return None
    mano = bodymodels.load_mano(flat_hand_mean=False)
    return mano.hand_mean.detach().cpu().numpy().reshape(45)


# FreiHAND test images as models see them (`FreiHAND(crop=...)`, SimpleHandData.eval_crop)
FREIHAND_CROPS = {
    "none": "FreiHAND's own 224 px crops",
    "keypoints": "the official simpleHand re-crop: ground-truth 2D keypoint box x 1.25, camera turned to its centre",
}
KEYPOINT_CROP_ENLARGE = 1.25  # official simpleHand (cfg.py VAL.BMK): scale_enlarge of the evaluation


def keypoint_crop(K, uv, image_hw, size, enlarge=KEYPOINT_CROP_ENLARGE):
    """The official simpleHand evaluation crop (eval_datataset.py with kp_preprocess.py's
    get_2d3d_perspective_transform): a virtual camera turned to look at the centre of the keypoints'
    box, with its focal length scaled so that the box x `enlarge` fills `size` pixels.

    K (3, 3) intrinsics, uv (J, 2) the keypoints in pixels of an image of image_hw = (h, w) ->
    (R (3, 3) the camera's turn, K' (3, 3) the intrinsics of the size x size crop), float64:
    3D points x' = R x, pixels p' ~ K' R K^-1 p, in FreiHAND's (and cv2's) pixel convention.
    1. The box: over the keypoints strictly inside the image (all of them if at most one is); its
       centre c and sides (not made square) times `enlarge`.
    2. R: the shortest rotation taking the ray K^-1 (c, 1) onto the optical axis (identity on it).
    3. K': focal lengths fx s, fy s and principal point (size / 2, size / 2), where s = size / the
       larger side of the box's four corners seen through the turned camera (K's focal lengths).
    """
    K, uv = K.double(), uv.double()
    h, w = image_hw
    inside = (uv[:, 0] > 0) & (uv[:, 0] < w) & (uv[:, 1] > 0) & (uv[:, 1] < h)
    points = uv[inside] if inside.sum() > 1 else uv
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    centre, half = (lo + hi) / 2, (hi - lo) * enlarge / 2  # (2,), (2,)
    f, c = K[[0, 1], [0, 1]], K[:2, 2]  # (fx, fy), (cx, cy)

    def rays(p):  # pixels (n, 2) -> camera rays (n, 3) with z = 1
        return torch.cat([(p - c) / f, torch.ones(len(p), 1, dtype=p.dtype)], dim=1)

    R = rotation_onto_z(rays(centre[None])[0])
    signs = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    turned = rays(centre + signs * half) @ R.T  # (4, 3)
    seen = turned[:, :2] / turned[:, 2:] * f  # (4, 2) pixels, up to the principal point
    s = size / (seen.max(dim=0).values - seen.min(dim=0).values).max()
    K_crop = torch.tensor([[0.0, 0, size / 2], [0, 0, size / 2], [0, 0, 1]], dtype=torch.float64)
    K_crop[0, 0], K_crop[1, 1] = f * s
    return R, K_crop


def rotation_onto_z(d):
    """The shortest rotation (3, 3) taking the direction d (3,) onto +z (Rodrigues); the identity on it."""
    a = d / d.norm()
    v = torch.linalg.cross(a, torch.tensor([0.0, 0.0, 1.0], dtype=a.dtype))  # axis x sin
    sin2, cos = v.dot(v), a[2]
    if sin2 < 1e-24:
        return torch.eye(3, dtype=a.dtype)
    V = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=a.dtype)
    return torch.eye(3, dtype=a.dtype) + V + V @ V * (1 - cos) / sin2


def crop_around_keypoints(image, labels, size):
    """A FreiHAND sample (image (3, h, w), labels with K, joints3d, verts, mano_pose) -> the official
    simpleHand evaluation crop (`keypoint_crop`) of size x size pixels and its labels: the 3D labels
    turned by R (the global orientation too), K the crop's. joints2d follows from K in `_finish`."""
    h, w = image.shape[-2:]
    K = labels["K"].double()
    R, K_crop = keypoint_crop(K, perspective_projection(labels["joints3d"].double(), K), (h, w), size)
    # cv2's pixel p (centre at integers, FreiHAND's K) is our p + 0.5: the same pixels as the official
    # cv2.warpPerspective, while the labels keep FreiHAND's convention as everywhere in this file
    half = torch.tensor([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], dtype=torch.float64)
    A = half @ K_crop @ R @ torch.linalg.inv(K) @ torch.linalg.inv(half)
    crop = warp_image(image, A, size, steps=32)  # official: cv2.warpPerspective, INTER_LINEAR
    crop = (crop * 255).round() / 255  # of a uint8 image gives uint8
    pose = labels["mano_pose"].clone()
    pose[0] = matrix_to_axis_angle(R @ axis_angle_to_matrix(pose[0].double())).float()
    Rf = R.float()
    return crop, dict(labels, K=K_crop.float(), joints3d=labels["joints3d"] @ Rf.T, verts=labels["verts"] @ Rf.T,
                      mano_pose=pose)


class FreiHAND(_PhotoHands):
    """FreiHAND (Zimmermann et al., ICCV 2019) from its official folder, as hand samples.

    split "training": 32,560 hands, each in up to four image versions (`versions`, indices into
    FREIHAND_VERSIONS; the default uses all four, 130,240 samples, version-major as on disk);
    split "evaluation": 3,960 hands (one version). Images are 224 x 224 crops; 3D labels are in
    metres in camera coordinates, and joints2d is their projection (FreiHAND gives no 2D labels).
    All hands are right hands. `scale` (FreiHAND's metric bone length per hand) is kept as the
    attribute self.scale (N,) when its file exists; it is no sample key.

    mano_pose: FreiHAND's 48 pose numbers are axis-angle with the 45 finger numbers relative to
    MANO's mean hand (their code poses MANO with flat_hand_mean=False). This project's convention
    is flat_hand_mean=True, so `hands_mean` (45,) is added to them. By default it comes from the
    real MANO_RIGHT.pkl when HMR_BODY_MODELS points to it; without the real file the numbers stay
    as in the file and self.pose_relative_to_mean is True (verts and joints never depend on this).

    crop (FREIHAND_CROPS): "none" resizes FreiHAND's own crops to image_size; "keypoints" makes the
    official simpleHand evaluation crop of each image (`crop_around_keypoints`: around the box of its
    ground-truth 2D keypoints x 1.25, camera turned to the box centre), labels turned with it. Its
    5.7 mm PA-MPJPE was measured on such crops. `self.crop_description` says which crop was used.

    Loading the json files takes about a minute and ~1 GB for the training split; `write_npz`
    turns any split into the faster `NpzHands` format.
    """

    def __init__(self, root, split="training", image_size=224, augment=False, seed=0, versions=(0, 1, 2, 3),
                 augment_config=None, hands_mean=None, crop="none"):
        super().__init__(image_size, augment, seed, augment_config)
        if split not in ("training", "evaluation"):
            raise ValueError(f"FreiHAND: split must be 'training' or 'evaluation', got {split!r}")
        if crop not in FREIHAND_CROPS:
            raise ValueError(f"FreiHAND: crop must be one of {sorted(FREIHAND_CROPS)}, got {crop!r}")
        if crop == "keypoints" and len(set(image_hw(image_size))) != 1:
            raise ValueError(f"FreiHAND: the keypoint crop is square, got image_size={image_size}")
        self.crop, self.crop_description = crop, FREIHAND_CROPS[crop]
        self.root, self.split = pathlib.Path(root), split
        self.versions = tuple(versions) if split == "training" else (0,)
        if not set(self.versions) <= set(range(len(FREIHAND_VERSIONS))):
            raise ValueError(f"FreiHAND: versions must be indices into {FREIHAND_VERSIONS}, got {versions}")
        self.K = _read_json(self.root / f"{split}_K.json", (-1, 3, 3))
        n = len(self.K)
        self.joints3d = _read_json(self.root / f"{split}_xyz.json", (n, 21, 3))
        self.verts = _read_json(self.root / f"{split}_verts.json", (n, 778, 3))
        mano = _read_json(self.root / f"{split}_mano.json", (n, 61))  # pose 48, shape 10, uv_root 2, scale 1
        if hands_mean is None:
            hands_mean = _real_mano_hands_mean()
        self.pose_relative_to_mean = hands_mean is None
        self.mano_pose = mano[:, :48].reshape(n, 16, 3).copy()
        if hands_mean is not None:
            self.mano_pose[:, 1:] += np.asarray(hands_mean, dtype=np.float32).reshape(15, 3)
        self.mano_shape = mano[:, 48:58].copy()
        self.is_right = np.ones(n, dtype=bool)
        scale_path = self.root / f"{split}_scale.json"
        self.scale = _read_json(scale_path, (n,)) if scale_path.is_file() else None
        self.num_hands = n

    def __len__(self):
        return self.num_hands * len(self.versions)

    def _label_index(self, index):
        return index % self.num_hands

    def _image_path(self, index):
        version = self.versions[index // self.num_hands]
        return self.root / self.split / "rgb" / f"{index % self.num_hands + self.num_hands * version:08d}.jpg"

    def _finish(self, image, labels, index):
        if self.crop == "keypoints":
            image, labels = crop_around_keypoints(image, labels, image_hw(self.image_size)[0])
        return super()._finish(image, labels, index)


NPZ_LABEL_SHAPES = {"K": (3, 3), "joints3d": (21, 3), "verts": (778, 3), "mano_pose": (16, 3), "mano_shape": (10,)}


def write_npz(root, split, image_files, **arrays):
    """Save a hand dataset in the `NpzHands` format: ROOT/{split}.npz (see NpzHands for the keys).

    image_files: N paths relative to root; arrays: K, joints3d, verts, mano_pose, mano_shape
    (lists or arrays of N items with the shapes of NPZ_LABEL_SHAPES; mano_pose may be (N, 48)),
    optionally is_right (N,). Shapes are checked before anything is written.
    """
    root = pathlib.Path(root)
    out = {"image_files": np.asarray([str(f) for f in image_files], dtype=np.str_)}
    n = len(out["image_files"])
    for key, shape in NPZ_LABEL_SHAPES.items():
        if key not in arrays:
            raise ValueError(f"write_npz: missing array {key!r} (expected ({n}, {', '.join(map(str, shape))}))")
        out[key] = np.asarray(arrays[key], dtype=np.float32).reshape(n, *shape)
    out["is_right"] = np.asarray(arrays.get("is_right", np.ones(n, dtype=bool)), dtype=bool).reshape(n)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{split}.npz", **out)
    return root / f"{split}.npz"


class NpzHands(_PhotoHands):
    """Hand crops listed in ROOT/{split}.npz: the format for bringing any hand dataset here.

    ROOT/{split}.npz holds, for N samples (np.load(..., allow_pickle=False) must read it):
        image_files (N,) str   image paths relative to ROOT (any format Pillow reads, any size;
                               crops around the hand, as a hand detector would give)
        K (N, 3, 3)            intrinsics in the pixels of the image FILE
        joints3d (N, 21, 3)    FreiHAND joint order, metres, camera coordinates
        verts (N, 778, 3)      MANO vertices, metres, camera coordinates
        mano_pose (N, 16, 3)   axis-angle, global orientation first, flat_hand_mean=True (or (N, 48))
        mano_shape (N, 10)     MANO betas
        is_right (N,) bool     optional, default all True (left hands: see the module docstring)
    Samples come out with the hand keys (module docstring), resized to image_size (K follows).

    Converting a dataset takes about twenty lines, e.g. one with a json record per hand crop:

        import json, pathlib
        import numpy as np
        from data import NpzHands, write_npz

        root = pathlib.Path("my_hands")                        # holds the crops and annotations.json
        records = json.loads((root / "annotations.json").read_text())
        keys = ("K", "joints3d", "verts", "mano_pose", "mano_shape", "is_right")
        arrays, files = {key: [] for key in keys}, []
        TO_FREIHAND = list(range(21))                          # your joint order -> FreiHAND's
        for r in records:
            files.append(r["file"])                            # relative to root
            arrays["K"].append(r["intrinsics"])                # 3 x 3, pixels of that file
            xyz = np.asarray(r["joints_mm"]) / 1000            # -> metres, camera coordinates
            arrays["joints3d"].append(xyz[TO_FREIHAND])
            arrays["verts"].append(np.asarray(r["mesh_mm"]) / 1000)
            arrays["mano_pose"].append(r["mano_pose"])         # 48 axis-angle numbers
            arrays["mano_shape"].append(r["mano_betas"])       # 10 numbers
            arrays["is_right"].append(r["side"] == "right")
        write_npz(root, "training", files, **arrays)
        print(NpzHands(root, "training")[0]["joints2d"])       # check: on the hand in the image
    """

    def __init__(self, root, split, image_size=224, augment=False, seed=0, augment_config=None):
        super().__init__(image_size, augment, seed, augment_config)
        self.root, self.split = pathlib.Path(root), split
        path = self.root / f"{split}.npz"
        arrays = _read_npz(path, "NpzHands", f"ROOT/{{split}}.npz with the keys image_files, "
                           f"{', '.join(NPZ_LABEL_SHAPES)}[, is_right]; see NpzHands")
        for key in ("image_files",) + tuple(NPZ_LABEL_SHAPES):
            if key not in arrays:
                raise ValueError(f"NpzHands: {path} has no array {key!r} (it has {sorted(arrays)})")
        self.image_files = arrays["image_files"]
        n = len(self.image_files)
        if arrays["mano_pose"].shape == (n, 48):
            arrays["mano_pose"] = arrays["mano_pose"].reshape(n, 16, 3)
        for key, shape in NPZ_LABEL_SHAPES.items():
            if arrays[key].shape != (n, *shape):
                raise ValueError(f"NpzHands: {path} key {key!r} has shape {arrays[key].shape}, "
                                 f"expected {(n, *shape)}")
            check_numbers("NpzHands", path, key, arrays[key])
            setattr(self, key, arrays[key].astype(np.float32))
        self.is_right = arrays["is_right"].astype(bool) if "is_right" in arrays else np.ones(n, dtype=bool)
        if self.is_right.shape != (n,):
            raise ValueError(f"NpzHands: {path} key 'is_right' has shape {self.is_right.shape}, expected {(n,)}")

    def __len__(self):
        return len(self.image_files)

    def _label_index(self, index):
        return index

    def _image_path(self, index):
        return self.root / str(self.image_files[index])


# ---------------------------------------------------------------------------------------------
# 4. Real bodies: 4D-Humans / HMR2.0's evaluation .npz
#
# The body benchmarks (3DPW, EMDB, H36M) come here in the format 4D-Humans' `hmr2/datasets/
# image_dataset.py` reads: one .npz per benchmark, one row per person, images named relative to a
# folder. GenHMR has no code of its own; its neighbours HMR2.0 and TokenHMR evaluate from these files.

HMR2_SHAPES = {  # key: shape of one row (image_dataset.py; "pose" holds global orientation + 23 joints)
    "center": (2,), "scale": (None,), "body_pose": (72,), "has_body_pose": (), "betas": (10,), "has_betas": (),
    "body_keypoints_2d": (25, 3), "extra_keypoints_2d": (19, 3), "body_keypoints_3d": (25, 4),
    "extra_keypoints_3d": (19, 4)}
HMR2_REQUIRED = ("imgname", "center", "scale")  # image_dataset.py reads these without a fallback
HMR2_PAIRS = (("body_pose", "has_body_pose"), ("betas", "has_betas"))  # a label and its mask come together
HMR2_BOX_ASPECT = (192, 256)  # official MODEL.BBOX_SHAPE (w, h) of the ViT's 256 x 192 input
# SMPL joint <- OpenPose-25 index, the 14 of smpl_wrapper.py's joint map (smpl_to_openpose) that are SMPL joints
SMPL_FROM_OPENPOSE = {0: 8, 12: 1, 17: 2, 19: 3, 21: 4, 16: 5, 18: 6, 20: 7, 2: 9, 5: 10, 8: 11, 1: 12, 4: 13, 7: 14}
# SMPL joint <- the 19 extra keypoints (LSP 14 + ...), where the OpenPose keypoint has no confidence
SMPL_FROM_EXTRA = {8: 0, 5: 1, 2: 2, 1: 3, 4: 4, 7: 5, 21: 6, 19: 7, 17: 8, 16: 9, 18: 10, 20: 11, 12: 12, 0: 14}


def _read_npz(path, who, expected):
    """{key: array} of an .npz label file (no pickles), read whole now: a missing, truncated or foreign file, or
    a folder, raises one line naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{who}: {path} is a folder (expected {expected})" if path.is_dir() else
                                f"{who}: missing {path} (expected {expected})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as e:  # zipfile, numpy and pickle refusals of a truncated or foreign file: say which file
        raise ValueError(f"{who}: {path} is not a readable .npz ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None


def check_numbers(who, path, key, a):
    """Raise ValueError naming the file, the key and the first bad index unless the array `a` holds finite
    numbers (a label read at load time, so a bad value stops the run before its first step)."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{who}: {path} key {key!r} has dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{who}: {path} key {key!r} is not finite at index {index}: {a[index]}")


def _label_arrays(path, who, required, expected):
    """The arrays of a benchmark's label file (no pickles), after checking it exists, reads whole and has the
    required keys; one line naming the file and the key otherwise."""
    arrays = _read_npz(path, who, expected)
    for key in required:
        if key not in arrays:
            raise ValueError(f"{who}: {path} has no key {key!r} (it has {sorted(arrays)})")
    return arrays


class HMR2Npz(torch.utils.data.Dataset):
    """People listed in a 4D-Humans / HMR2.0 evaluation .npz (3DPW, EMDB, H36M, ...), as body samples.

    The file (np.load(path, allow_pickle=False) must read it), N rows:
        imgname (N,) str               image paths relative to the .npz's folder
        center (N, 2), scale (N,) or (N, 2)   the person box: centre in pixels, size / 200 pixels
        body_pose (N, 72), has_body_pose (N,)  SMPL axis-angle, global orientation first; 1 where known
        betas (N, 10), has_betas (N,)
        body_keypoints_2d (N, 25, 3), extra_keypoints_2d (N, 19, 3)   pixels + confidence (OpenPose 25,
            then the 19 of SMPL_to_J19: LSP 14 (R ankle ... neck, head top), pelvis, thorax, spine, jaw, head)
        body_keypoints_3d (N, 25, 4), extra_keypoints_3d (N, 19, 4)   metres + confidence
    imgname, center and scale are required; the others are optional as in image_dataset.py (a missing
    label counts as absent for every row), but a label comes with its mask (body_pose with has_body_pose).
    A missing key of a pair, a wrong shape or a missing image raises one line naming the file and key.

    The crop (official image_dataset.py + the ViT's x[..., 32:-32]): the box of scale x 200 px grown to
    the ViT's aspect (`expand_to_aspect_ratio`, w:h = 192:256), its larger side b a square crop resized
    to 256 x 256 of which the ViT reads the central 256 x 192: here, the rectangle b x b W/H around
    `center` straight onto image_size (H, W) (`crop_matrix`, bilinear, black outside).
    NOTE R6: no augmentation; cv2's pixel centres at integers are taken as ours (half a
    pixel); the official resize is cv2.warpAffine, here bilinear `warp_image` (antialiasing aside).

    Keys (the body keys that GenHMR reads, module docstring, and the protocol's):
        image (3, H, W) [0, 1]; K (3, 3) HMR2.0's crop camera (f = 5000 per 256 px of crop height)
        smpl_pose (24, 3), smpl_shape (10,); has_smpl_pose (), has_smpl_shape () float 0/1
        joints2d (24, 2) crop pixels of the SMPL joints with a 2D keypoint (`SMPL_FROM_OPENPOSE`, else
            `SMPL_FROM_EXTRA`), joints2d_weight (24,) its confidence, 0 for the other ten joints
        keypoints2d (44, 3) crop pixels + confidence; keypoints3d (44, 4) metres + confidence, with
            the OpenPose body's 3D confidences 1-14 set to 0 as image_dataset.py does
    `Indexed(mesh=True)` adds joints3d / verts (the labels' SMPL mesh, no translation) and
    joints3d_weight follows has_smpl_pose: GenHMR's losses skip what a row lacks.
    """

    def __init__(self, path, image_size, focal_length=5000.0):
        self.path = pathlib.Path(path)
        self.root, self.image_hw, self.focal_length = self.path.parent, image_hw(image_size), focal_length
        arrays = _label_arrays(self.path, "HMR2Npz", HMR2_REQUIRED, "a 4D-Humans evaluation .npz")
        for label, mask in HMR2_PAIRS:
            if (label in arrays) != (mask in arrays):
                have, lack = (label, mask) if label in arrays else (mask, label)
                raise ValueError(f"HMR2Npz: {self.path} has {have!r} but no key {lack!r}")
        self.imgname = arrays["imgname"].astype(str)
        n = len(self.imgname)
        if self.imgname.shape != (n,):
            raise ValueError(f"HMR2Npz: {self.path} key 'imgname' has shape {arrays['imgname'].shape}, expected ({n},)")
        for key, row in HMR2_SHAPES.items():
            if key not in arrays:
                continue
            a = arrays[key]
            ok = a.ndim >= 1 and len(a) == n and (a.shape[1:] in ((), (1,), (2,)) if key == "scale"
                                                   else a.shape[1:] == row)
            if not ok:
                want = "(N,) or (N, 2)" if key == "scale" else str((n, *row))
                raise ValueError(f"HMR2Npz: {self.path} key {key!r} has shape {a.shape}, expected {want}")
            check_numbers("HMR2Npz", self.path, key, a)
        def f32(key, shape):  # an optional key absent from the file: zeros, as image_dataset.py
            return arrays[key].astype(np.float32) if key in arrays else np.zeros((n, *shape), np.float32)

        self.center = f32("center", (2,))
        scale = arrays["scale"].astype(np.float32).reshape(n, -1) * 200.0  # image_dataset.py: scale / 200 ... * 200
        self.box_wh = np.tile(scale, (1, 2)) if scale.shape[1] == 1 else scale  # (N, 2) pixels
        self.pose, self.has_pose = f32("body_pose", (72,)).reshape(n, 24, 3), f32("has_body_pose", ())
        self.betas, self.has_betas = f32("betas", (10,)), f32("has_betas", ())
        self.keypoints2d = np.concatenate([f32("body_keypoints_2d", (25, 3)), f32("extra_keypoints_2d", (19, 3))], 1)
        body3d = f32("body_keypoints_3d", (25, 4))
        body3d[:, 1:15, -1] = 0  # official image_dataset.py: body_keypoints_3d[:, [1..14], -1] = 0
        self.keypoints3d = np.concatenate([body3d, f32("extra_keypoints_3d", (19, 4))], 1)

    def __len__(self):
        return len(self.imgname)

    def set_epoch(self, epoch):
        """No augmentation: every epoch sees the same crops."""

    def box_size(self, index):
        """bbox_size of image_dataset.py: the box grown to the ViT's aspect (expand_to_aspect_ratio), its larger
        side."""
        w, h = self.box_wh[index]
        H, W = self.image_hw
        return float(max(w, h * W / H, h, w * H / W))

    def crop(self, index):
        """A (3, 3) full-image pixels -> crop pixels of row `index`: b W/H x b around its centre, onto (H, W)."""
        H, W = self.image_hw
        b = self.box_size(index)
        return crop_matrix(tuple(map(float, self.center[index])), (b * W / H, b), (H, W))

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"HMR2Npz: index {index} out of range for {len(self)} samples")
        path = self.root / self.imgname[index]
        if not path.is_file():
            raise FileNotFoundError(f"HMR2Npz: {self.path} row {index} key 'imgname': missing image {path}")
        A, (H, W) = self.crop(index), self.image_hw
        image = warp_image(read_image(path), A, (H, W)).clamp(0, 1)
        kp2d = torch.from_numpy(self.keypoints2d[index]).double()  # (44, 3)
        uv = torch.cat([kp2d[:, :2], torch.ones(44, 1, dtype=torch.float64)], 1) @ A.T
        kp2d = torch.cat([uv[:, :2], kp2d[:, 2:]], 1).float()
        joints2d, weight = torch.zeros(24, 2), torch.zeros(24)
        for table, offset in ((SMPL_FROM_EXTRA, 25), (SMPL_FROM_OPENPOSE, 0)):  # OpenPose wins where it has one
            for smpl, k in table.items():
                if kp2d[offset + k, 2] > 0:
                    joints2d[smpl], weight[smpl] = kp2d[offset + k, :2], kp2d[offset + k, 2]
        f = self.focal_length / 256.0 * H
        K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
        has_pose = torch.tensor(float(self.has_pose[index]))
        return {"image": image.contiguous(), "K": K, "smpl_pose": torch.from_numpy(self.pose[index]),
                "smpl_shape": torch.from_numpy(self.betas[index]), "has_smpl_pose": has_pose,
                "has_smpl_shape": torch.tensor(float(self.has_betas[index])), "joints2d": joints2d,
                "joints2d_weight": weight, "joints3d_weight": has_pose.expand(24).clone(), "keypoints2d": kp2d,
                "keypoints3d": torch.from_numpy(self.keypoints3d[index])}


class HMR2Poses(torch.utils.data.Dataset):
    """The SMPL poses of an HMR2.0 .npz's rows that have them (has_body_pose), for GenHMR's pose
    tokenizer: {smpl_pose (24, 3), smpl_shape (10,) (zeros where has_betas is 0)}. No image is read."""

    def __init__(self, path):
        rows = HMR2Npz(path, 1)
        keep = np.flatnonzero(rows.has_pose > 0)
        if len(keep) == 0:
            raise ValueError(f"HMR2Poses: {rows.path} has no row with has_body_pose = 1 (key 'body_pose')")
        self.pose, self.betas = rows.pose[keep], rows.betas[keep] * (rows.has_betas[keep, None] > 0)

    def __len__(self):
        return len(self.pose)

    def set_epoch(self, epoch):
        """Fixed poses."""

    def __getitem__(self, index):
        return {"smpl_pose": torch.from_numpy(self.pose[index]), "smpl_shape": torch.from_numpy(self.betas[index])}


def hmr2_files(path, split):
    """--data hmr2:TRAIN.npz[,EVAL.npz] -> the file of `split`: one file serves both splits."""
    files = [p for p in str(path).split(",") if p]
    if not 1 <= len(files) <= 2:
        raise ValueError(f"hmr2: expected FILE.npz or TRAIN.npz,EVAL.npz, got {path!r}")
    return files[-1] if split == "evaluation" else files[0]


def hmr2_protocol_check(split):
    """The held-out split's protocol needs a keypoint regressor (metrics.hmr2_keypoints): fail before training."""
    if split == "evaluation":
        metrics.keypoint_regressor()


class Indexed(torch.utils.data.Dataset):
    """dataset's samples plus "index" () int64 (what a prediction may seed per-sample noise with,
    the same whichever rank or batch evaluates it), minus the keys in `drop`; with `mesh`, plus the
    SMPL mesh of (smpl_pose, smpl_shape) without translation: joints3d (24, 3), verts (6890, 3)."""

    def __init__(self, dataset, drop=(), mesh=False, model_dir=None):
        self.dataset, self.drop, self.mesh, self.model_dir = dataset, tuple(drop), mesh, model_dir

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        many = getattr(self.dataset, "__getitems__", None)
        samples = many(indices) if many else [self.dataset[i] for i in indices]
        if self.mesh:
            pose, shape = (torch.stack([s[k] for s in samples]) for k in ("smpl_pose", "smpl_shape"))
            verts, joints = skinning("smpl", self.model_dir, torch.float32)(pose, shape)
            for s, v, j in zip(samples, verts, joints):
                s.update(verts=v, joints3d=j)
        return [dict({k: v for k, v in s.items() if k not in self.drop}, index=torch.tensor(i))
                for s, i in zip(samples, indices)]


# ---------------------------------------------------------------------------------------------
# 5. Whole bodies: the hand keys of an SMPL-X person, and real whole bodies (EHF / ARCTIC as one
#    .npz, HMR-Adapter's Table 1)

SMPLX_HAND_JOINTS = bodymodels.SMPLX_HAND_JOINTS
# SMPL-X's fingertips among smplx's extra joints (thumb, index, middle, ring, pinky)
SMPLX_FINGERTIPS = {"left": tuple(range(66, 71)), "right": tuple(range(71, 76))}


class WholeBodyHands:
    """The keys a whole-body sample has for each hand, from its SMPL-X mesh: one rule for rendered
    people (synthetic.SyntheticWholeBody) and real ones (`WholeBodyNpz`). Per side S in {left, right}:
      S_hand_box (4,) [x0, y0, x1, y1] pixels: the square around the hand's projected vertices,
        1.2 x their larger side (a hand detector's box; the model crops the image with it);
      S_hand_joints3d (21, 3) FreiHAND order (SMPL-X's wrist and finger joints + fingertip
        vertices), camera coordinates; S_hand_joints2d (21, 2) their pixels in the image;
      S_hand_mano_pose (16, 3): the MANO-space pose, global orientation (camera frame) first, in
        the module's left-hand convention (a left hand is the mirror image of the right MANO
        hand with this pose); S_hand_visible (): share of the hand's pixels not hidden by the body;
      S_arm_pose (8, 3): SMPL-X's local rotations of the arm chain SMPLX_{LEFT,RIGHT}_ARM (pelvis,
        spine 1-3, collar, shoulder, elbow, wrist), as in smplx_pose.
    SMPL-X (`model`), its rig and the hands' masks are built on first use in each process (not pickled).
    """

    def __init__(self, image_size, model_dir=None):
        self.image_size, self.model_dir = image_size, model_dir
        self._model = None

    def __getstate__(self):
        return dict(self.__dict__, _model=None)  # rebuilt in each worker from the cache folder

    @property
    def model(self):
        """SMPL-X; its first use also sets rig (`body_rig`), mano_rest (MANO's rest joints (16, 3)),
        mano_to_smplx (3, 3), extra_joints (smplx's joints 55-75 as vertex ids) and the hands' masks."""
        if self._model is None:
            self._model = body_model("smplx", self.model_dir)
            self.rig = body_rig(self._model)
            # MANO's rest hand turned onto SMPL-X's rest right hand: finger poses are rotated by it
            self.mano_rest = body_model("mano", self.model_dir)().joints[0].detach().double()
            smplx_hand = self.rig["rest_joints"][list(SMPLX_HAND_JOINTS["right"])]
            self.mano_to_smplx = metrics.procrustes_transform(self.mano_rest[None], smplx_hand[None])[1][0]  # (3, 3)
            self.extra_joints = self._model.vertex_joint_selector.extra_joints_idxs  # smplx's joints 55-75
            # faces whose corners all belong to a hand (wrist and finger joints): (F,) masks
            in_hand = {side: torch.isin(self.rig["part"], torch.tensor(ids)) for side, ids in SMPLX_HAND_JOINTS.items()}
            self.face_mask = {side: mask[self.rig["faces"]].all(1) for side, mask in in_hand.items()}
            self.vert_mask = in_hand
        return self._model

    def mano_fingers(self, side, smplx_pose):
        """The MANO-space finger pose (15, 3) of one hand of an SMPL-X pose (55, 3), axis-angle in the module's
        left-hand convention: the inverse of how a rendered person's hands are posed (synthetic.SyntheticWholeBody
        turns MANO's finger axis-angle a into SMPL-X's R_off a, mirrored for a left hand), R_off = mano_to_smplx."""
        self.model
        fingers = smplx_pose[list(SMPLX_HAND_JOINTS[side][1:])]  # (15, 3) SMPL-X's local finger rotations
        return (mirror_rotation(fingers) if side == "left" else fingers) @ self.mano_to_smplx.to(fingers)

    def hand_box(self, side, verts, K):
        """S_hand_box (4,) of a mesh's verts (V, 3) seen by K (3, 3): the square around the hand's projected
        vertices, 1.2 x their larger side."""
        self.model
        uv = perspective_projection(verts[self.vert_mask[side]], K)
        centre, half = (uv.amax(0) + uv.amin(0)) / 2, 0.6 * (uv.amax(0) - uv.amin(0)).max()
        return torch.cat([centre - half, centre + half])

    def hand_joints(self, side, joints):
        """S_hand_joints3d (21, 3), FreiHAND order, of joints (76, 3): SMPL-X's 55 and smplx's 21 extra."""
        hand_joints = torch.cat([joints[list(SMPLX_HAND_JOINTS[side])], joints[list(SMPLX_FINGERTIPS[side])]])
        return hand_joints[list(bodymodels.MANO_TO_FREIHAND)]

    def labels(self, side, sample, joints, world, fingers, face):
        """The keys of one hand, from sample's verts (V, 3), K (3, 3) and smplx_pose (55, 3), joints
        (76, 3) (SMPL-X's 55 and smplx's 21 extra, camera frame), world (22, 3, 3) the body's world
        rotations, fingers (15, 3) the hand's MANO-space finger pose and face (P,) the faces the
        body image shows (`rasterize`)."""
        self.model
        # visibility: the hand's pixels in the body image against the hand rendered alone
        hand_faces = self.rig["faces"][self.face_mask[side]]
        alone = rasterize(sample["verts"], hand_faces, sample["K"], self.image_size, True)[0]
        visible = self.face_mask[side][face].sum() / max(len(alone), 1)
        hand_joints = self.hand_joints(side, joints)
        # MANO-space pose: right hand W R_off; left hand M W M R_off (module docstring: left hands)
        wrist = world[SMPLX_HAND_JOINTS[side][0]]
        if side == "left":
            wrist = mirror_rotation(wrist, matrix=True)
        orient = matrix_to_axis_angle(wrist @ self.mano_to_smplx)
        arm = bodymodels.SMPLX_LEFT_ARM if side == "left" else bodymodels.SMPLX_RIGHT_ARM
        return {f"{side}_hand_box": self.hand_box(side, sample["verts"], sample["K"]),
                f"{side}_hand_joints3d": hand_joints,
                f"{side}_hand_joints2d": perspective_projection(hand_joints, sample["K"]),
                f"{side}_hand_mano_pose": torch.cat([orient[None], fingers]), f"{side}_hand_visible": visible,
                f"{side}_arm_pose": sample["smplx_pose"][list(arm)]}


# Real whole bodies: SMPLer-X (and so HMR-Adapter) scores whole bodies on EHF and ARCTIC from their
# SMPL-X fits. Each benchmark ships its own layout (EHF: meshes and a camera; ARCTIC: HumanData
# files), so this project reads one neutral format that a short script converts either into:
# `WholeBodyNpz`'s docstring.

WHOLEBODY_SHAPES = {  # key: shape of one row; the first six are required
    "smplx_pose": (55, 3), "smplx_shape": (10,), "smplx_expression": (10,), "transl": (3,), "K": (3, 3),
    "bbox": (4,), "left_hand_box": (4,), "right_hand_box": (4,), "hand_occluded": (2,)}
WHOLEBODY_REQUIRED = ("imgname", "smplx_pose", "smplx_shape", "smplx_expression", "transl", "K")
# official (SMPLer-X common/utils/preprocessing.py process_bbox): the person box grown to the input's
# aspect, then x ratio = cfg.bbox_ratio, 1.25 by default (config_ft_arctic.py sets 1.2)
WHOLEBODY_BOX_ENLARGE = 1.25


class WholeBodyNpz(torch.utils.data.Dataset):
    """People of a whole-body benchmark (EHF, ARCTIC, ...) in one .npz, as whole-body samples (module docstring).

    The file (np.load(path, allow_pickle=False) must read it), N rows, one person each:
        imgname (N,) str            image paths relative to the .npz's folder
        smplx_pose (N, 55, 3)       SMPL-X axis-angle in SMPL-X's joint order: global orientation IN THE
                                    CAMERA FRAME, body 1-21, jaw, eyes, left hand 25-39, right hand 40-54;
                                    full finger rotations (smplx.SMPLX(flat_hand_mean=True)): parameters of
                                    smplx's default flat_hand_mean=False need SMPL-X's hands_meanl / hands_meanr
                                    (arrays of the SMPL-X file, (45,) each) added
        smplx_shape (N, 10), smplx_expression (N, 10)   the neutral model's betas and expression
        transl (N, 3) metres        the camera-frame mesh is SMPLX(pose, shape, expression) + transl
        K (N, 3, 3)                 the image's intrinsics (pixels; pixel centres at j + 0.5, module docstring)
      optional:
        bbox (N, 4)                 the person box [x0, y0, x1, y1] in image pixels; absent: the box of
                                    the projected mesh. Either is grown to cfg.image_size's aspect and
                                    x WHOLEBODY_BOX_ENLARGE (1.25, SMPLer-X's process_bbox)
        left_hand_box, right_hand_box (N, 4)  [x0, y0, x1, y1] image pixels (EHF's and ARCTIC's hand boxes,
                                    xywh -> xyxy); absent: `WholeBodyHands`' rule, the square 1.2 x the
                                    larger side of the hand's projected vertices
        hand_occluded (N, 2)        [left, right] 1 where a hand is occluded (ARCTIC's objects), else 0; absent: 0
    Converting: annotations in a world frame with extrinsics X_cam = R X_world + t fold into the root,
    global orientation R R_g and transl R (transl_w + j0) + t - j0, j0 the pelvis of the rest pose
    SMPLX(0, shape, expression) (SMPL-X turns the body about it). ARCTIC: leave out the egocentric view
    as SMPLer-X and the paper (Sec. 4.1) do. A missing key, a wrong shape or a missing image raises one
    line naming the file, the key and (for an image) the row.

    Keys: the whole-body keys (module docstring), in the crop cfg.image_size that a camera change makes of the image
    (`crop_matrix`: K_crop = A K, verts and joints stay in the camera frame): image, K, verts,
    joints3d, joints2d, smplx_pose, smplx_shape, smplx_expression, cam_t (= transl); per side
    S_hand_box (crop pixels), S_hand_joints3d / _joints2d, S_hand_mano_pose (`WholeBodyHands.mano_fingers`,
    the module's left-hand convention), S_hand_visible (the hand's pixels not hidden by the body's own
    mesh: objects are not modelled), S_hand_occluded, S_arm_pose. The mesh comes from the SMPL-X file
    under $HMR_BODY_MODELS (else the lab's stand-in). NOTE R7: no augmentation; the crop is
    bilinear `warp_image` (SMPLer-X: cv2.warpAffine at 512 x 384, then resized to the ViT's input).
    """

    def __init__(self, path, image_size, enlarge=WHOLEBODY_BOX_ENLARGE, model_dir=None):
        self.path = pathlib.Path(path)
        self.root, self.image_hw = self.path.parent, image_hw(image_size)
        self.enlarge, self.model_dir = enlarge, model_dir
        arrays = _label_arrays(self.path, "WholeBodyNpz", WHOLEBODY_REQUIRED, "a whole-body .npz: data.WholeBodyNpz")
        self.imgname = arrays["imgname"].astype(str)
        n = len(self.imgname)
        if self.imgname.ndim != 1:
            raise ValueError(f"WholeBodyNpz: {self.path} key 'imgname' has shape {arrays['imgname'].shape}, "
                             "expected (N,)")
        for key, row in WHOLEBODY_SHAPES.items():
            if key in arrays and arrays[key].shape != (n, *row):
                raise ValueError(f"WholeBodyNpz: {self.path} key {key!r} has shape {arrays[key].shape}, "
                                 f"expected {(n, *row)}")
            if key in arrays:
                check_numbers("WholeBodyNpz", self.path, key, arrays[key])
        self.arrays = {key: torch.from_numpy(arrays[key].astype(np.float64))
                       for key in WHOLEBODY_SHAPES if key in arrays}
        self.hand_labeller = WholeBodyHands(self.image_hw, model_dir)  # SMPL-X, its rig and the hand keys' rule

    def __len__(self):
        return len(self.imgname)

    def set_epoch(self, epoch):
        """No augmentation: every epoch sees the same crops."""

    def row(self, index):
        """Row `index` in the camera frame: pose (55, 3), shape, expression, transl, K (full image),
        verts (10475, 3) and joints (76, 3) (SMPL-X's 55 and smplx's 21 extra: fingertips, face), float64."""
        a = {key: value[index] for key, value in self.arrays.items()}
        self.hand_labeller.model
        verts, joints = skinning("smplx", self.model_dir, torch.float32)(a["smplx_pose"], a["smplx_shape"],
                                                                        a["smplx_expression"])
        joints = torch.cat([joints, verts[self.hand_labeller.extra_joints]]).double()
        return a, verts.double() + a["transl"], joints + a["transl"]

    def crop(self, index, verts, K):
        """A (3, 3) full-image pixels -> crop pixels: the person box (the file's, else the projected
        mesh's) grown to the crop's aspect x enlarge (`crop_box`)."""
        if "bbox" in self.arrays:
            box = self.arrays["bbox"][index].tolist()
        else:
            uv = perspective_projection(verts, K)
            box = (*uv.amin(0).tolist(), *uv.amax(0).tolist())
        return crop_matrix(*crop_box(box, self.image_hw, self.enlarge), self.image_hw)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"WholeBodyNpz: index {index} out of range for {len(self)} samples")
        path = self.root / self.imgname[index]
        if not path.is_file():
            raise FileNotFoundError(f"WholeBodyNpz: {self.path} row {index} key 'imgname': missing image {path}")
        a, verts, joints = self.row(index)
        A = self.crop(index, verts, a["K"])
        K = A @ a["K"]
        sample = {"K": K, "verts": verts, "joints3d": joints[:55], "joints2d": perspective_projection(joints[:55], K),
                  "smplx_pose": a["smplx_pose"], "smplx_shape": a["smplx_shape"],
                  "smplx_expression": a["smplx_expression"], "cam_t": a["transl"]}
        # the hands: the rule of the rendered people for the same mesh and crop (visibility from the faces in view)
        rig = self.hand_labeller.rig
        face = rasterize(verts, rig["faces"], K, self.image_hw, True)[1]
        world = forward_kinematics(axis_angle_to_matrix(a["smplx_pose"][:22]), rig["rest_joints"][:22],
                                   rig["parents"][:22])[1]
        for s, side in enumerate(("left", "right")):
            fingers = self.hand_labeller.mano_fingers(side, a["smplx_pose"])
            sample.update(self.hand_labeller.labels(side, sample, joints, world, fingers, face))
            if f"{side}_hand_box" in self.arrays:  # the file's box, into the crop (A scales and shifts)
                corners = self.arrays[f"{side}_hand_box"][index].view(2, 2)  # (x0, y0), (x1, y1)
                sample[f"{side}_hand_box"] = (corners @ A[:2, :2].T + A[:2, 2]).reshape(4)
            occluded = self.arrays["hand_occluded"][index, s] if "hand_occluded" in self.arrays else 0.0
            sample[f"{side}_hand_occluded"] = torch.as_tensor(float(occluded))
        sample = {key: torch.as_tensor(value).float() for key, value in sample.items()}
        sample["image"] = warp_image(read_image(path), A, self.image_hw).clamp(0, 1).contiguous()
        return sample


def wholebody_files(path, split):
    """--data wholebody:TRAIN.npz[,EVAL.npz] -> the file of `split`: one file serves both splits."""
    files = [p for p in str(path).split(",") if p]
    if not 1 <= len(files) <= 2:
        raise ValueError(f"wholebody: expected FILE.npz or TRAIN.npz,EVAL.npz, got {path!r}")
    return files[-1] if split == "evaluation" else files[0]


# ---------------------------------------------------------------------------------------------
# 6. The rendered cache: a synthetic set drawn once, kept as stacked tensors
#
# Rendering costs milliseconds a sample; a training run that sees each sample many times renders
# it once into a tensor file (lab/synthetic.py's `render_once`, every DDP rank a share) and reads it
# memory-mapped as a `RenderedSet`.


RENDERED_KINDS = ("synthetic", "ambiguous")  # --data kinds made in lab/synthetic.py (no path): rendered once, cached


def is_image(key):
    """The keys stored as 8-bit images: "image" and "*_image" (e.g. a whole body's hands' own images)."""
    return key == "image" or key.endswith("_image")


class RenderedSet(torch.utils.data.Dataset):
    """A dataset held as stacked tensors {key: (N, ...)}: images (`is_image`) stored uint8 and returned
    float32 in [0, 1], every other key returned as stored (pose-only sets have no image)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index):
        return {k: v[index].float() / 255 if is_image(k) else v[index] for k, v in self.tensors.items()}

    def set_epoch(self, epoch):
        """The set was drawn once: every epoch sees the same samples (no per-epoch randomness)."""


def stack_samples(dataset, indices, workers=0, worker_init_fn=None):
    """{key: (len(indices), ...)} of the samples at `indices`, read by `workers` processes (each started
    with `worker_init_fn`); images (`is_image`) as uint8."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=64,
                                         num_workers=workers, worker_init_fn=worker_init_fn,
                                         generator=torch.Generator())
    batches = []
    for b in loader:  # images to uint8 batch by batch: a set of float32 images is 4 x as large
        batches.append({k: (v * 255).round().to(torch.uint8) if is_image(k) else v for k, v in b.items()})
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def labels(dataset, limit=4096):
    """{key: (n, ...)} of every key but "image" for n <= limit evenly strided samples (indices 0,
    step, 2 step, ...): read from memory for a RenderedSet (no image is touched), else drawn."""
    n = len(dataset)
    indices = list(range(0, n, max(1, math.ceil(n / limit))))
    if isinstance(dataset, RenderedSet):
        return {k: v[indices] for k, v in dataset.tensors.items() if k != "image"}
    return {k: v for k, v in stack_samples(dataset, indices).items() if k != "image"}


# ---------------------------------------------------------------------------------------------
# 7. Which face a pixel shows: the z-buffer (what a whole body's S_hand_visible counts, for rendered people and
#    real ones alike; lab/render.py shades the synthetic images over it)
#
# A z-buffer in plain PyTorch, vectorised over faces: every face enumerates the pixel rows its
# screen-space box spans; every (face, row) pair gets the exact column span where the face's three
# edge functions are >= 0; every pixel of a span becomes a (face, pixel) candidate with its inverse
# depth 1/z (linear in screen space, so exact at the pixel centre); one scatter_reduce(amax) per
# pixel keeps the nearest. No Python loop runs over faces or pixels.

NEAR = 1e-3  # metres: faces with a vertex closer to the camera plane are dropped (there is no clipping)


EDGE_EPS = 1e-4  # pixels: spans are widened by this much so that shared edges leave no cracks


def _expand(counts):
    """Run-length expansion. counts (M,) int32 -> ids (N,) int32 with i repeated counts[i] times,
    and local (N,) int32 = 0, 1, ..., counts[i] - 1 within each run (N = counts.sum()).

    ids by a cumulative sum instead of repeat_interleave (several times faster on a CPU): with a
    mark at every run's start s_i (empty runs too), the marks up to position k count the runs
    that start at or before k, and the last of them holds k: ids[k] = cumsum(marks)[k] - 1.
    """
    end = counts.cumsum(0, dtype=torch.int32)
    n = int(end[-1]) if len(counts) else 0
    start = end - counts  # (M,) s_i
    marks = torch.zeros(n + 1, dtype=torch.int32, device=counts.device)  # + 1: empty runs at the end
    marks.index_add_(0, start, torch.ones_like(start))
    ids = marks[:n].cumsum(0, dtype=torch.int32) - 1
    return ids, torch.arange(n, dtype=torch.int32, device=counts.device) - start.index_select(0, ids)


def _flatnonzero(mask):
    """Ids (P,) int64 of the True entries of a 1-D bool tensor; numpy's on a CPU (torch.nonzero is
    several times slower there)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _corner_ids(faces, count, num_verts):
    """(3 corners, count F) ids of the corners of faces (F, 3) in count stacked meshes of num_verts vertices."""
    return (faces.T.contiguous()[:, None] + num_verts * torch.arange(count, device=faces.device)[:, None]).view(3, -1)


# rows of the per-face table of `_face_setup` (one column per face, so a row is contiguous)
_X0, _Y0, _FIRST, _INV_Z0, _DA, _DB = range(6)  # corner 0, first pixel row, 1/z at corner 0 and its slopes


_P_LO, _Q_LO, _P_HI, _Q_HI = slice(6, 9), slice(9, 12), slice(12, 15), slice(15, 18)  # span bounds (3 each)


def _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored=None):
    """Screen-space set-up of the faces of B meshes that can cover a pixel centre of their image.

    verts (B, V, 3), faces (F, 3) shared, K (B, 3, 3). Everything is relative to each face's
    first corner (x0, y0), so float32 stays exact enough for sub-pixel faces. With du = u - x0 and
    dv = v - y0 for a pixel centre (u, v), the barycentric coordinate of corner i is
    l_i = a_i du + b_i dv + [i == 0], and the inverse depth, linear in screen space under
    perspective, is 1/z = 1/z_0 + da du + db dv.
    Returns keep (Fk,) int64, the ids of those faces among the B F faces (mesh-major); corners
    (3, Fk) their corners' ids among the B V vertices; a and b (3, Fk) (corner-major: a row is
    contiguous); table (18, Fk) float32, per face the rows [x0, y0, first row, 1/z_0, da, db]
    and, per corner i, the bounds of l_i >= 0 along a row,
    du >= lo_i(dv) = p_i + q_i dv (left edges) and du <= hi_i(dv) (right edges), as rows
    [p_lo (3), q_lo (3), p_hi (3), q_hi (3)]; h (Fk,) int32 each face's row count; image (Fk,)
    int32 the first pixel id of its image in the stacked B H W pixels. mirrored (B,) bool marks
    meshes seen in a mirror (x -> -x), whose faces run the other way round.
    """
    B, V = verts.shape[:2]
    z = verts[..., 2].reshape(-1)  # (B V,)
    uv = (verts @ K.transpose(-1, -2))[..., :2].reshape(-1, 2) / z.clamp_min(NEAR)[:, None]  # (B V, 2)
    corner_ids = _corner_ids(faces, B, V).view(-1)  # (3 B F,)
    x, y = uv.T.contiguous().index_select(1, corner_ids).view(2, 3, -1)  # (3 corners, B F) each
    dx1, dx2, dy1, dy2 = x[1] - x[0], x[2] - x[0], y[1] - y[0], y[2] - y[0]
    area = dx1 * dy2 - dx2 * dy1  # (B F,) twice the signed area
    # rows whose centre v = row + 0.5 lies inside the face's vertical extent
    first = torch.ceil(y.amin(0) - 0.5).clamp_(0, height)
    h = (torch.floor(y.amax(0) - 0.5).clamp_(-1, height - 1) - first + 1).clamp_min_(0)
    # with y pointing down, a face whose corners run counter-clockwise seen from outside has area < 0
    if cull_backfaces and mirrored is not None:
        facing = area * (1 - 2 * mirrored.float()).repeat_interleave(len(faces)) < 0
    else:
        facing = area < 0 if cull_backfaces else area != 0
    near = z.index_select(0, corner_ids).view(3, -1).amin(0) > NEAR
    keep = _flatnonzero(facing & near & (h > 0) & (x.amax(0) > 0) & (x.amin(0) < width)).to(verts.device)
    dx1, dx2, dy1, dy2, area, x0, y0 = (t.index_select(0, keep) for t in (dx1, dx2, dy1, dy2, area, x[0], y[0]))
    # l_i = ((x_j - u)(y_k - v) - (x_k - u)(y_j - v)) / area for (i, j, k) cyclic, written in du, dv;
    # l_0 = 1 - l_1 - l_2 keeps the three summing to 1 in float32
    a1, a2, b1, b2 = dy2 / area, -dy1 / area, -dx2 / area, dx1 / area
    a, b = torch.stack([-a1 - a2, a1, a2]), torch.stack([-b1 - b2, b1, b2])  # (3, Fk) each
    # perspective: 1/z = sum_i l_i / z_i
    corners = corner_ids.view(3, -1).index_select(1, keep)  # (3, Fk) vertex ids among the B V
    inv_z = 1 / z.index_select(0, corners.view(-1)).view(3, -1)  # (3, Fk)
    depth = torch.stack([inv_z[0], (a * inv_z).sum(0), (b * inv_z).sum(0)])  # (3, Fk)
    # l_i >= 0 on a row: du >= -(b_i dv + [i == 0]) / a_i if a_i > 0, du <= ... if a_i < 0;
    # a_i = 0 (a horizontal edge) never limits a row inside the face's vertical extent
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    p, q = -torch.eye(3, device=a.device)[:, :1] / safe_a, -b / safe_a  # (3, Fk) each
    lower, upper = a > 0, a < 0
    bounds = [p.masked_fill(~lower, -math.inf), q.masked_fill(~lower, 0),
              p.masked_fill(~upper, math.inf), q.masked_fill(~upper, 0)]
    table = torch.cat([x0[None], y0[None], first.index_select(0, keep)[None], depth] + bounds)  # (18, Fk)
    image = (torch.div(keep, len(faces), rounding_mode="floor") * (height * width)).int()
    return keep, corners, a, b, table, h.index_select(0, keep).int(), image


def rasterize_batch(verts, faces, K, height, width, cull_backfaces=False, mirrored=None, zbuffer=None):
    """The z-buffer of B meshes (see `rasterize`): verts (B, V, 3), faces (F, 3), K (B, 3, 3).
    Returns pix (P,) int64 covered pixels (sorted) as ids into the stacked (B, H, W) images,
    face (P,) the winner as an index into keep, du and dv (P,) its pixel centre relative to the
    face origin, and keep, corners, a, b from `_face_setup`. zbuffer: None, or an int64 scratch
    tensor of at least B H W entries, all -1, which is used and left so (on a CPU, allocating and
    filling a fresh z-buffer per pass costs more than the scatter into it)."""
    keep, corners, a, b, table, h, image = _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored)
    # 1. (face, row) spans: the columns j0 ... j0 + n - 1 whose centre u = col + 0.5 is in [lo, hi]
    face, r = _expand(h)  # (M,)
    t = table.index_select(1, face)  # (18, M)
    row = t[_FIRST] + r
    dv = row + 0.5 - t[_Y0]
    lo = (t[_P_LO] + t[_Q_LO] * dv).amax(0) + t[_X0]  # leftmost u with all l_i >= 0
    hi = (t[_P_HI] + t[_Q_HI] * dv).amin(0) + t[_X0]
    j0 = torch.ceil(lo - EDGE_EPS - 0.5).clamp_(0, width)
    n = (torch.floor(hi + EDGE_EPS - 0.5).clamp_(-1, width - 1) - j0 + 1).clamp_min_(0).int()
    du0 = j0 + 0.5 - t[_X0]
    start = image.index_select(0, face) + (row * width + j0).int()  # (M,) first pixel id
    inv_z0 = t[_INV_Z0] + t[_DA] * du0 + t[_DB] * dv  # (M,)
    # 2. (span, pixel) candidates and their inverse depth 1/z = 1/z_0 + da du + db dv
    span, k = _expand(n)  # (N,)
    pix = (start.index_select(0, span) + k).long()
    inv_z = (inv_z0.index_select(0, span) + t[_DA].index_select(0, span) * k).clamp_min_(0)
    # 3. nearest per pixel: the bits of a positive float32 sort like the float, so packing them
    #    above the span id makes one integer amax return the winner (ties: the larger id)
    key = (inv_z.view(torch.int32).long() << 32) | span
    size = len(verts) * height * width
    reuse = zbuffer is not None and len(zbuffer) >= size
    best = zbuffer[:size] if reuse else torch.full((size,), -1, dtype=torch.long, device=pix.device)
    best.scatter_reduce_(0, pix, key, "amax")
    pix = _flatnonzero(best >= 0).to(pix.device)  # (P,)
    won = (best.index_select(0, pix) & 0xFFFFFFFF).int()  # (P,) the winners' spans
    if reuse:
        best.index_fill_(0, pix, -1)  # back to empty for the next pass
    du = du0.index_select(0, won) + (pix.int() - start.index_select(0, won))
    return pix, face.index_select(0, won), du, dv.index_select(0, won), (keep, corners, a, b)


def scratch_zbuffer(zbuffer, size):
    """A z-buffer for `rasterize_batch` (and lab/render.py's `render_batch`) to use and leave empty again:
    zbuffer (None, or one this gave before, e.g. a dataset's, not pickled, so rebuilt in each worker) if it
    has at least `size` entries, else a new one of `size` entries, all -1."""
    if zbuffer is None or len(zbuffer) < size:
        zbuffer = torch.full((size,), -1, dtype=torch.long)
    return zbuffer


def rasterize(verts, faces, K, image_size, cull_backfaces=False):
    """Z-buffer: the nearest face under every pixel centre.

    verts (V, 3) camera coordinates, faces (F, 3) int, K (3, 3), image_size int or (H, W).
    Returns pix (P,) flat ids row * W + col of the covered pixels (sorted), face (P,) the id of the
    visible face there, and bary (P, 3) float32 barycentric weights in the image plane.
    Faces with a vertex behind the near plane are dropped. Both windings are drawn unless
    cull_backfaces, which drops faces whose corners run clockwise seen from the camera (the back
    faces of a closed mesh with counter-clockwise outward winding, as SMPL's and MANO's).
    """
    height, width = image_hw(image_size)
    pix, face, du, dv, (keep, _, a, b) = rasterize_batch(verts.float()[None], faces.long(), K.float()[None],
                                                         height, width, cull_backfaces)
    bary = a.index_select(1, face) * du + b.index_select(1, face) * dv  # (3, P)
    bary[0] += 1
    return pix, keep.index_select(0, face), bary.T.contiguous()
