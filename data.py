"""Training data for the three papers: a small renderer, synthetic hands and bodies, real hand data.

No dataset can be downloaded here, so this file renders its own training images from the stand-in
body models of `bodymodels.py` (or the real MANO/SMPL/SMPL-X files when HMR_BODY_MODELS points to
them), and reads real data through the same interface when a path is given. A model never knows
which one it got: the keys, shapes, units and conventions below are the same for every dataset.

Conventions (shared with bodymodels.py):
- Camera coordinates are OpenCV's: x right, y down, z forward; metres; float32 samples.
- Pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5), and
  a point X lands at uv = (K X)[:2] / (K X)[2] (`bodymodels.perspective_projection`). This is
  `grid_sample(align_corners=False)`'s convention; FreiHAND's K puts pixel centres at integers,
  half a pixel away, which no loss here can see.
- A sample is a plain dict of tensors. Hands (`SyntheticHands`, `FreiHAND`, `NpzHands`):
    image (3, H, W) float32 RGB in [0, 1]      K (3, 3) intrinsics of this image
    joints3d (21, 3) FreiHAND order, metres, camera coordinates
    joints2d (21, 2) pixels, = perspective_projection(joints3d, K) exactly
    verts (778, 3) camera coordinates          mano_pose (16, 3) axis-angle, global orientation first
    mano_shape (10,)                           is_right () bool
  Bodies: see `SyntheticBodies`, `SyntheticWholeBody` and `SyntheticPoses`.
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
  Batches are drawn together (`Draws`, `__getitems__`), and still a sample never depends on its batch.

Symbols: B batch, V vertices, F faces, J joints, P covered pixels, M (face, row) pairs,
N (face, pixel) candidates, K intrinsics, (H, W) image size, S crop size, R rotation, T point
transform, A pixel transform (3, 3) acting on homogeneous pixels.

Map of the file. The reference:
1. Randomness (`sample_rng`, `Draws`) and body models (`body_model`)
2. Augmentation as a camera change: `AugmentConfig`, `sample_augmentation`, the official simpleHand
   recipe `OFFICIAL_HAND_AUGMENT` (`turned_keypoint_crop`, `official_color`); images resampled by
   `bodymodels.warp_image`
3. Real hands: `FreiHAND`, `NpzHands`, `write_npz`; photographs as files: `read_image`, `InputError`
4. Synthetic hands: `SyntheticHands`, and the trainer's `hand_dataset`
5. Synthetic bodies: `SyntheticPoses`, `SyntheticBodies`, `SyntheticWholeBody`; 5b. real bodies
   (4D-Humans' evaluation .npz of 3DPW / EMDB / H36M): `HMR2Npz`, `HMR2Poses`; 5c. real whole bodies
   (EHF / ARCTIC as one .npz): `WholeBodyNpz`; and the trainer's `body_pose_dataset`, `body_dataset`,
   `wholebody_dataset`
6. The rendered cache: `render_once`, `RenderedSet`, `stack_samples`, `labels`
7. Pictures (all of the project's drawing): `plot_mesh_views`, `draw_skeleton`, `bone_colors`,
   `draw_demo` (demo.py's picture), `draw_samples`, `draw_hand_predictions`, `draw_body_predictions`,
   `draw_pose_reconstructions`, `python data.py --grid OUT_DIR`,
   `python data.py --bench`
The machinery: 8. pose priors (hands, bodies), 9. looks (skin, clothes, forearm, light),
10. backgrounds, 11. the renderer (`rasterize`, `render_mesh`) beside `reference_rasterize`.
"""

import argparse
import functools
import json
import math
import os
import pathlib
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

import bodymodels
import metrics
from bodymodels import (FREIHAND_PARENTS, axis_angle_to_matrix, forward_kinematics, mano_to_freihand,
                        matrix_to_axis_angle, mirror_rotation, perspective_projection, warp_image)

# ---------------------------------------------------------------------------------------------
# 1. Randomness and body models


def sample_rng(*keys):
    """A torch.Generator fixed by non-negative integer keys, e.g. (seed, epoch, index, stream).

    numpy's SeedSequence hashes the keys, so (0, 0, 1) and (0, 1, 0) give unrelated streams. No
    global RNG is touched: the same keys give the same numbers in any process, worker or rank.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(rng, low, high, shape=()):
    """Uniform float64 samples in [low, high) of the given shape (a 0-d tensor by default)."""
    return low + (high - low) * torch.rand(shape, generator=rng, dtype=torch.float64)


def _normal(rng, std, shape=()):
    return std * torch.randn(shape, generator=rng, dtype=torch.float64)


class Draws:
    """Random numbers of B samples drawn together, each sample's from its own generator.

    Row i holds the numbers of generators[i], taken from it `block` at a time (one torch.rand
    and one torch.randn call for many requests), and every request takes the next columns of
    all rows. So the numbers a sample gets depend only on its generator and on the sequence of
    requests, never on the other samples of the batch, as long as that sequence does not depend
    on the numbers drawn: a random choice draws the numbers of both branches. uniform, normal
    and chance return float64 or bool numpy arrays (B, *shape).
    """

    def __init__(self, generators, block=64):
        self.generators, self.block = list(generators), block
        empty = np.empty((len(self.generators), 0))
        self.tables = {torch.rand: empty, torch.randn: empty}  # (B, numbers drawn, not yet handed out)
        self.used = {torch.rand: 0, torch.randn: 0}

    def _take(self, fn, count):
        table, used = self.tables[fn], self.used[fn]
        if used + count > table.shape[1]:  # refill every row from its own generator
            fresh = [fn(max(self.block, count), generator=g, dtype=torch.float64).numpy() for g in self.generators]
            table, used = np.concatenate([table[:, used:], np.stack(fresh)], 1), 0
        self.tables[fn], self.used[fn] = table, used + count
        return table[:, used:used + count]

    def uniform(self, low, high, shape=()):
        return low + (high - low) * self._take(torch.rand, math.prod(shape)).reshape(-1, *shape)

    def normal(self, std, shape=()):
        return std * self._take(torch.randn, math.prod(shape)).reshape(-1, *shape)

    def chance(self, p, shape=()):
        """True with probability p."""
        return self._take(torch.rand, math.prod(shape)).reshape(-1, *shape) < p


def _image_hw(image_size):
    """int or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


@functools.lru_cache(maxsize=None)
def body_model(kind, model_dir=None):
    """The smplx model "mano" (right hand), "smpl" or "smplx" of bodymodels' loaders (defaults:
    axis-angle hand poses, flat mean hand), loaded once per process and shared by every dataset,
    which only read it. model_dir None: $HMR_BODY_MODELS, else the procedural stand-ins."""
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


def _rotations(aa):
    """float64 numpy axis-angle (..., 3) -> rotation matrices (..., 3, 3) (`axis_angle_to_matrix`)."""
    return axis_angle_to_matrix(torch.from_numpy(np.ascontiguousarray(aa))).numpy()


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
# NOTE(official vs here): the official roll is clip(N(0, 90), -180, 180) DEGREES passed to np.cos /
# np.sin as RADIANS (GetRandomScaleRotation rot_factor 90 -> get_2d3d_perspective_transform), an
# angle that wraps round the circle many times, i.e. about uniform: here uniform in [-180, 180] degrees.
OFFICIAL_HAND_AUGMENT = AugmentConfig(rotation_deg=180.0, crop="keypoints", box_scale=(1.0, 1.5), box_jitter=0.1,
                                      flip_prob=0.5, color_style="official", channel_noise=0.4, contrast=0.2,
                                      brightness=(-0.4, 0.1))
HAND_AUGMENTS = {"default": AugmentConfig(), "official": OFFICIAL_HAND_AUGMENT}  # SimpleHandConfig.train_augment


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
    height, width = _image_hw(image_size)
    centre = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    K = K.double().clone()
    if cfg.crop == "keypoints":
        if joints3d is None:
            raise ValueError("sample_augmentation: AugmentConfig.crop='keypoints' needs the sample's joints3d")
        R, K = turned_keypoint_crop(rng, cfg, K, joints3d, (height, width))
    else:
        # 1. in-plane rotation: turn the points about the optical axis and the principal point about
        #    the crop centre, so that the image turns about its centre
        R = rotation_z(math.radians(cfg.rotation_deg) * _uniform(rng, -1, 1))
        K[:2, 2] = centre + R[:2, :2] @ (K[:2, 2] - centre)
        # 2. zoom about the centre, then shift
        zoom, shift = _uniform(rng, *cfg.zoom), cfg.shift * _uniform(rng, -1, 1, (2,)) * torch.tensor([width, height])
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
        color = torch.cat([_uniform(rng, 1 - cfg.channel_noise, 1 + cfg.channel_noise, (3,)),
                           _uniform(rng, 1 - cfg.contrast, 1 + cfg.contrast, (1,)),
                           _uniform(rng, *cfg.brightness, (1,))])
    else:
        color = _uniform(rng, 1 - cfg.color, 1 + cfg.color, (3,))
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
    c = (lo + hi) / 2 + cfg.box_jitter * box[0] * _uniform(rng, -1, 1, (2,))
    c = torch.minimum(c.clamp(min=0), torch.tensor([float(width), float(height)], dtype=torch.float64))
    box = box * _uniform(rng, *cfg.box_scale)
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
    R = rotation_z(math.radians(cfg.rotation_deg) * _uniform(rng, -1, 1)) @ R_look
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


_AUGMENT_STREAM = 1  # sample_rng(seed, epoch, index, stream): stream 0 draws the sample, 1 its augmentation


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
        height, width = _image_hw(self.image_size)
        h, w = image.shape[-2:]
        scale = torch.diag(torch.tensor([width / w, height / h, 1.0], dtype=torch.float64))
        K = scale @ labels["K"].double()  # (3, 3): u' = u W / w for pixel edges at integers
        if (h, w) != (height, width):
            image = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        labels = dict(labels, K=K.float(), joints2d=perspective_projection(labels["joints3d"].double(), K).float())
        if self.augment:
            rng = sample_rng(self.seed, self.epoch, index, _AUGMENT_STREAM)
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


def _read_json(path):
    if not path.is_file():
        raise FileNotFoundError(f"FreiHAND: missing {path}\n{_FREIHAND_LAYOUT}")
    with open(path) as f:
        return json.load(f)


def _real_mano_hands_mean():
    """MANO's mean finger pose (45,) from the real model files, or None without them."""
    if not os.environ.get("HMR_BODY_MODELS"):
        return None
    mano = bodymodels.load_mano(flat_hand_mean=False)
    return mano.hand_mean.detach().cpu().numpy().reshape(45)


# FreiHAND test images as models see them (`FreiHAND(crop=...)`, SimpleHandConfig.eval_crop)
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
        if crop == "keypoints" and len(set(_image_hw(image_size))) != 1:
            raise ValueError(f"FreiHAND: the keypoint crop is square, got image_size={image_size}")
        self.crop, self.crop_description = crop, FREIHAND_CROPS[crop]
        self.root, self.split = pathlib.Path(root), split
        self.versions = tuple(versions) if split == "training" else (0,)
        if not set(self.versions) <= set(range(len(FREIHAND_VERSIONS))):
            raise ValueError(f"FreiHAND: versions must be indices into {FREIHAND_VERSIONS}, got {versions}")
        read = {name: _read_json(self.root / f"{split}_{name}.json") for name in ("K", "xyz", "verts", "mano")}
        self.K = np.asarray(read["K"], dtype=np.float32).reshape(-1, 3, 3)
        n = len(self.K)
        self.joints3d = np.asarray(read["xyz"], dtype=np.float32).reshape(n, 21, 3)
        self.verts = np.asarray(read["verts"], dtype=np.float32).reshape(n, 778, 3)
        mano = np.asarray(read["mano"], dtype=np.float32).reshape(n, 61)  # pose 48, shape 10, uv_root 2, scale 1
        if hands_mean is None:
            hands_mean = _real_mano_hands_mean()
        self.pose_relative_to_mean = hands_mean is None
        self.mano_pose = mano[:, :48].reshape(n, 16, 3).copy()
        if hands_mean is not None:
            self.mano_pose[:, 1:] += np.asarray(hands_mean, dtype=np.float32).reshape(15, 3)
        self.mano_shape = mano[:, 48:58].copy()
        self.is_right = np.ones(n, dtype=bool)
        scale_path = self.root / f"{split}_scale.json"
        self.scale = np.asarray(_read_json(scale_path), dtype=np.float32).reshape(n) if scale_path.is_file() else None
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
            image, labels = crop_around_keypoints(image, labels, _image_hw(self.image_size)[0])
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
    Samples come out with the keys of SyntheticHands, resized to image_size (K follows).

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
        if not path.is_file():
            raise FileNotFoundError(f"NpzHands: missing {path} (expected ROOT/{{split}}.npz with the keys "
                                    f"image_files, {', '.join(NPZ_LABEL_SHAPES)}[, is_right]; see NpzHands)")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
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
# 4. Synthetic hands


@dataclass
class HandPoseConfig:
    """The finger-pose distribution of SyntheticHands (angles in degrees)."""
    mcp_flex: tuple = (-15.0, 90.0)  # knuckle: slight hyperextension to a right angle
    pip_flex: tuple = (-5.0, 105.0)  # middle joint
    dip_flex: tuple = (-5.0, 80.0)  # last joint; follows the middle joint (0.7x), as tendons couple them
    spread: tuple = (20.0, 4.0, -22.0, -10.0)  # index, middle, pinky, ring abduction at full spread (+: thumbwards)
    thumb_palmar: tuple = (-10.0, 70.0)  # thumb base swinging under the palm (opposition)
    thumb_across: tuple = (-15.0, 35.0)  # thumb base sweeping across the palm towards the pinky
    thumb_flex: tuple = (-10.0, 70.0)  # thumb's last joint (its middle joint bends 0.6x as much)
    jitter: float = 7.0  # per-joint Gaussian noise on top of the coupled angles
    independent_prob: float = 0.3  # share of "gestures": each finger straight or curled on its own


@dataclass
class HandViewConfig:
    """Where the hand is and how the crop sees it."""
    distance: tuple = (0.35, 0.9)  # metres from the camera: close-up to arm's length
    off_axis_deg: float = 25.0  # direction of the hand from the full camera's optical axis (perspective varies)
    fill: tuple = (0.7, 0.9)  # larger side of the hand's projected box / crop side, as a detector's box
    centre_jitter: float = 0.03  # detector error of the box centre, fraction of the crop side (Gaussian std)
    roll_std_deg: float = 60.0  # fingers point up in the image on average, with this spread
    tilt_std_deg: float = 35.0  # palm or back towards the camera, tilted by this much about an in-plane axis


class SyntheticHands(torch.utils.data.Dataset):
    """Rendered hands with exact labels, as a hand detector's crops (keys: module docstring).

    Distribution of a sample (drawn from its own sample_rng(seed, epoch or 0, index)):
    - Shape: MANO betas ~ N(0, 1), clamped to [-2.5, 2.5].
    - Fingers: `hand_poses` (HandPoseConfig): grasp-coupled curls and gestures within joint
      ranges, never uniform over rotations.
    - Orientation: `hand_orientations` (HandViewConfig): palm or back towards the camera
      (1/2 each), tilted N(0, 35 deg), fingers up in the image on average with N(0, 60 deg) roll.
    - Place: 0.35-0.9 m from the camera, up to 25 degrees off its axis; the crop then centres the
      hand's box (Gaussian jitter of 3% of the crop) and scales its larger side to 70-90% of the
      crop, which sets K (focal length and principal point).
    - Side: a left hand with probability left_hand_prob (default 0: FreiHAND and SimpleHand's
      benchmarks are right-hand only), made by mirroring (module docstring: left hands).
    - Looks: skin tone (or one in ten, a glove colour), a forearm leaving the wrist (bare, or in
      a sleeve of any colour half of the time), a light from the camera's side, ambient
      0.25-0.55, and a random background (`background_patterns`). `scene(sample)` gives the mesh the image shows.
    With augment=True, `AugmentConfig` changes the camera before rendering (labels stay exact) and
    jitters colours after. background="black" renders on black (masks for tests and debugging).
    A sample depends on (seed, index), its augmentation also on the epoch, and with
    vary_with_epoch=True the hand too (every epoch sees new hands). A DataLoader fetches a batch
    through `__getitems__`, which renders it `render_chunk` images per pass. Speed: `python data.py --bench`.
    """

    def __init__(self, num_samples, image_size=224, seed=0, augment=False, left_hand_prob=0.0,
                 vary_with_epoch=False, augment_config=None, pose_config=None, view_config=None, background="random",
                 model_dir=None):
        if background not in ("random", "black"):
            raise ValueError(f"SyntheticHands: background must be 'random' or 'black', got {background!r}")
        self.num_samples, self.image_size, self.seed = int(num_samples), int(image_size), int(seed)
        self.background = background
        self.augment, self.left_hand_prob, self.vary_with_epoch = augment, float(left_hand_prob), vary_with_epoch
        self.augment_config = augment_config or AugmentConfig()
        self.pose_config = pose_config or HandPoseConfig()
        self.view_config = view_config or HandViewConfig()
        self.model_dir = model_dir
        self.epoch = 0
        self._mano = None  # loaded on first use in each process (see __getstate__)
        self._scratch = None  # the renderer's z-buffer, likewise

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __getstate__(self):
        # the body model is rebuilt in each DataLoader worker from the cache folder, not pickled
        return dict(self.__dict__, _mano=None, _scratch=None)

    @property
    def mano(self):
        if self._mano is None:
            self._mano = body_model("mano", self.model_dir)
            self.hand_axes = hand_axes(self._mano().joints[0].detach().double())  # from the flat mean hand
            self.faces = torch.as_tensor(np.asarray(self._mano.faces, dtype=np.int64))  # (1538, 3)
            self.wrist_loop = open_loop(self.faces)  # (L,) MANO's open wrist, where the forearm is glued
            self.scene_faces = torch.cat([self.faces, forearm_faces(self.wrist_loop, len(self._mano.v_template))])
        return self._mano

    def scene(self, sample):
        """The mesh a sample's image shows: verts (778 + 2 L + 1, 3), faces (F', 3): the hand and a
        forearm leaving its wrist, wound counter-clockwise from outside (mirrored for left hands)."""
        self.mano
        arm = forearm_verts(sample["verts"], self.wrist_loop, sample["joints3d"][0], sample["joints3d"][9])
        faces = self.scene_faces if bool(sample["is_right"]) else self.scene_faces[:, [0, 2, 1]]
        return torch.cat([sample["verts"], arm]), faces

    def sample_mano(self, draws):
        """Draw B poses (B, 16, 3) float32 (global orientation first) and shapes (B, 10) float32 from
        draws (`Draws`); pose the right hand. Returns pose, shape, verts (B, 778, 3) and joints
        (B, 21, 3) FreiHAND order, float64, in MANO's frame."""
        self.mano  # hand_axes
        fingers = hand_poses(draws, self.hand_axes, self.pose_config)  # (B, 15, 3)
        orient = matrix_to_axis_angle(torch.from_numpy(hand_orientations(draws, self.view_config)))  # (B, 3)
        shape = torch.from_numpy(draws.normal(1.0, (10,)).clip(-2.5, 2.5)).float()
        pose = torch.cat([orient[:, None], torch.from_numpy(fingers)], 1).float()  # (B, 16, 3)
        verts, joints = skinning("mano", self.model_dir)(pose, shape)  # (B, 778, 3), (B, 16, 3) float64
        return pose, shape, verts, mano_to_freihand(joints, verts)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """The samples of a list of indices (DataLoader asks for a batch this way): labels drawn
        for the whole batch at once, images rendered render_chunk at a time, which shares the
        per-call costs. Each sample depends only on its own (seed, epoch, index) (see `Draws`):
        __getitems__(indices)[k] is exactly self[indices[k]]."""
        samples, looks = self._labels(indices)
        for start in range(0, len(samples), self.render_chunk):
            chunk = slice(start, start + self.render_chunk)
            images = self._images(samples[chunk], {key: value[chunk] for key, value in looks.items()})
            for sample, image, jitter in zip(samples[chunk], images, looks["jitter"][chunk]):
                sample["image"] = recolor(image, jitter, self.augment_config.color_style) if self.augment else image
        return samples

    # images per renderer pass: on one core 8 is about 1.5x faster per image than 32, whose
    # buffers (z-buffer, images, candidates) no longer fit in the cache, and than 1 (per-call costs)
    render_chunk = 8

    def _images(self, samples, looks):
        """The images (B, 3, S, S) of samples (from `_labels`) with their looks, in one renderer pass."""
        self.mano
        S = self.image_size
        verts = torch.stack([s["verts"] for s in samples])  # (B, 778, 3)
        joints = torch.stack([s["joints3d"] for s in samples])
        verts = torch.cat([verts, forearm_verts(verts, self.wrist_loop, joints[:, 0], joints[:, 9])], 1)  # (B, V', 3)
        V = self.mano.v_template.shape[0]
        color = torch.cat([looks["skin"][:, None].expand(-1, V, 3),
                           looks["forearm"][:, None].expand(-1, verts.shape[1] - V, 3)], 1)  # (B, V', 3)
        backgrounds = upsample_backgrounds(looks["background"], S, S) if self.background == "random" else None
        mirrored = torch.tensor([not s["is_right"] for s in samples])
        return _render(verts, self.scene_faces, torch.stack([s["K"] for s in samples]), S, color, looks["light"],
                       looks["ambient"], backgrounds, cull_backfaces=True, mirrored=mirrored,
                       draw_on_background=True,  # into backgrounds
                       zbuffer=_scratch_zbuffer(self, len(samples) * S * S))[0]

    def _labels(self, indices):
        """The labels (all keys but image) of samples `indices`, a list of dicts, and their looks,
        batched: skin and forearm (B, 3) albedos, light (B, 3), ambient (B,), background (B, 3, L, L)
        patterns, jitter (B, 3) colour factors."""
        for index in indices:
            if not 0 <= index < self.num_samples:
                raise IndexError(f"SyntheticHands: index {index} out of range for {self.num_samples} samples")
        epoch = self.epoch if self.vary_with_epoch else 0
        draws = Draws([sample_rng(self.seed, epoch, index) for index in indices], block=160)
        view, S = self.view_config, self.image_size
        # 1. posed right hands, mirrored into left hands (module docstring) where drawn
        pose, shape, verts, joints = self.sample_mano(draws)
        is_right = torch.from_numpy(~draws.chance(self.left_hand_prob))  # (B,)
        mirror = torch.ones(len(indices), 1, 3, dtype=torch.float64)  # (B, 1, 3): x -> -x for left hands
        mirror[~is_right, :, 0] = -1.0
        verts, joints = verts * mirror, joints * mirror
        # 2. place them in front of the camera, off the optical axis, and crop around them
        distance = torch.from_numpy(draws.uniform(*view.distance))[:, None]  # (B, 1)
        off_axis = torch.from_numpy(np.tan(np.deg2rad(draws.uniform(-view.off_axis_deg, view.off_axis_deg, (2,)))))
        centre = (verts.amax(1) + verts.amin(1)) / 2  # (B, 3)
        shift = (torch.cat([off_axis * distance, distance], 1) - centre)[:, None]  # (B, 1, 3)
        verts, joints = verts + shift, joints + shift
        K = crop_intrinsics(verts, S, torch.from_numpy(draws.uniform(*view.fill)),
                            torch.from_numpy(draws.normal(view.centre_jitter * S, (2,))))  # (B, 3, 3)
        batch = {"K": K.float(), "joints3d": joints.float(), "verts": verts.float(),
                 "joints2d": perspective_projection(joints, K).float(), "mano_pose": pose, "mano_shape": shape,
                 "is_right": is_right}
        samples = [{key: value[i] for key, value in batch.items()} for i in range(len(indices))]
        # 3. the looks: light, skin (and a sleeve from 4 cm past the wrist half of the time), background
        light, ambient = random_lights(draws)
        skin, sleeve = skin_colors(draws), draws.uniform(0.05, 0.95, (3,))
        forearm = np.where(draws.chance(0.5)[:, None], sleeve, skin)
        looks = {key: torch.from_numpy(value).float() for key, value in (
            ("light", light), ("ambient", ambient), ("skin", skin), ("forearm", forearm),
            ("background", background_patterns(draws)))}
        looks["jitter"] = [None] * len(indices)  # the colour factors of each sample's augmentation
        # 4. augmentation moves the camera before rendering (and jitters colours after)
        if self.augment:
            for i, index in enumerate(indices):
                aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, _AUGMENT_STREAM),
                                          self.augment_config, K[i], S, samples[i]["joints3d"])
                samples[i], looks["jitter"][i] = augment_hand_labels(samples[i], aug), aug.color
        return samples, looks


# The synthetic demo's camera (train.py): hands roughly upright with the palm or the back towards the
# camera (HandViewConfig's default spreads roll and tilt three times wider). The PA metrics and the
# mean-hand baseline ignore the global rotation, so this does not make the bar lower; it leaves a
# two-core CPU's few thousand steps for the finger articulation, which is what the metrics measure.
DEMO_HAND_VIEW = HandViewConfig(roll_std_deg=20.0, tilt_std_deg=20.0)


def hand_dataset(kind, path, split, cfg, seed, num_samples):
    """The hand dataset for a split ("training" | "evaluation") of `--data kind[:path]` at cfg.image_size.

    kind "synthetic": SyntheticHands(num_samples) with DEMO_HAND_VIEW; the held-out split is the same
    generator under seed + 1_000_003, not augmented (train.py renders it once). "freihand" / "npz": the
    folder at path, augmented for training as cfg.train_augment names (HAND_AUGMENTS; "default" without
    the field). FreiHAND's evaluation split is cropped as cfg.eval_crop says (FREIHAND_CROPS; "none" without the field).
    """
    if kind == "synthetic":
        return SyntheticHands(num_samples, cfg.image_size, seed=seed + (split == "evaluation") * 1_000_003,
                              view_config=DEMO_HAND_VIEW)
    augment = HAND_AUGMENTS[getattr(cfg, "train_augment", "default")]
    if kind == "freihand":
        crop = getattr(cfg, "eval_crop", "none") if split == "evaluation" else "none"
        return FreiHAND(path, split, cfg.image_size, augment=split == "training", seed=seed, crop=crop,
                        augment_config=augment)
    if kind == "npz":
        return NpzHands(path, split, cfg.image_size, augment=split == "training", seed=seed, augment_config=augment)
    raise ValueError(f"hand_dataset: kind must be 'synthetic', 'freihand' or 'npz', got {kind!r}")


# ---------------------------------------------------------------------------------------------
# 5. Synthetic bodies
#
# The stand-in SMPL and SMPL-X (bodymodels) rest in a T-pose like the real ones: y up, facing +z,
# the body's left side towards +x, every joint's local frame the world's. Limbs are posed by
# direction: a limb's rotation is the shortest turn from its rest direction to a sampled
# direction, times a twist about it. Turned that way from the T-pose, elbows and knees keep
# bending the natural way (forwards and backwards) about their rest hinge axes.

@dataclass
class BodyPoseConfig:
    """The body-pose distribution (angles in degrees); see `sample_body_pose`."""
    arm_azimuth: tuple = (-30.0, 110.0)  # arm direction around the vertical: 0 sideways, 90 straight forwards
    elbow: tuple = (0.0, 135.0)  # elbow flexion (scaled by U(0.3, 1): mostly half bent)
    twist_std: float = 25.0  # twist of an arm about its own axis (legs: half)
    abduction: tuple = (-5.0, 30.0)  # thigh sideways, outwards
    spine_flex: tuple = (-8.0, 20.0)  # forwards bend of each of the three spine joints
    spine_std: float = 7.0  # their twist and sideways bend
    head_std: float = 15.0  # neck and head, each axis (split between the two)
    wrist_std: float = 20.0  # wrists, each axis
    yaw_frontal_prob: float = 0.5  # share of people turned towards the camera (N(0, 35) degrees); the rest any way
    tilt_std: float = 8.0  # lean of the whole body out of upright
    max_tries: int = 20  # re-draws when the cheap self-intersection test fails
    prior: str = "limbs"  # "limbs": `sample_plausible_body` (the fields above); "actions": `sample_action_body`

    def __post_init__(self):
        if self.prior not in ("limbs", "actions"):
            raise ValueError(f"BodyPoseConfig.prior={self.prior!r}: expected 'limbs' or 'actions'")


@dataclass
class BodyViewConfig:
    """Where the person is and how the crop sees it."""
    fill: tuple = (0.75, 0.9)  # larger side of the person's box / the crop's side (HMR2.0 crops the box x 1.2)
    centre_jitter: float = 0.03  # detector error of the box centre, fraction of the crop (Gaussian std)
    distance: tuple = (2.5, 8.0)  # metres, only with focal_length=None (a real camera's perspective)
    off_axis_deg: float = 20.0  # likewise


class _SyntheticBodyBase(torch.utils.data.Dataset):
    """Shared by the body datasets: the lazily loaded model, set_epoch, pickling, index checks."""

    def __init__(self, num_samples, seed, vary_with_epoch, model_dir):
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.vary_with_epoch, self.model_dir = vary_with_epoch, model_dir
        self.epoch = 0
        self._model = None
        self._scratch = None  # the renderer's z-buffer (see `_rasterize`)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __getstate__(self):
        return dict(self.__dict__, _model=None, _scratch=None)  # rebuilt in each worker from the cache folder

    @property
    def model(self):
        if self._model is None:
            self._model = self._load_model()
            self.rig = _rig(self._model)
        return self._model

    def _rng(self, index):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {self.num_samples} samples")
        return sample_rng(self.seed, self.epoch if self.vary_with_epoch else 0, index)

    def _sample_smpl_pose(self, rng):
        """SMPL pose (24, 3) axis-angle (global orientation first) and shape (10,), float32."""
        self.model
        if self.pose_config.prior == "actions":
            R = sample_action_body(rng)
        else:
            R = sample_plausible_body(rng, self.rig["rest_joints"], self.rig["parents"], self.pose_config)
        hands = torch.deg2rad(_normal(rng, 10.0, (2, 3)))  # SMPL's hand joints 22, 23: a little play
        pose = torch.cat([matrix_to_axis_angle(R), hands]).float()  # (24, 3)
        shape = torch.randn(10, generator=rng, dtype=torch.float64).clamp(-2.5, 2.5).float()
        return pose, shape


class SyntheticPoses(_SyntheticBodyBase):
    """SMPL poses only, standing in for AMASS (GenHMR's pose tokenizer): {smpl_pose (24, 3)
    axis-angle, global orientation first; smpl_shape (10,)}.

    The same distribution as SyntheticBodies, and the same draws: with equal seed (and no
    augmentation there), SyntheticPoses(n, seed)[i] is the pose and shape of SyntheticBodies(n,
    seed)[i]. See `sample_body_pose` (articulation, with a cheap self-intersection test) and
    `sample_body_orientation` (global orientation in camera coordinates: upright, half of the
    people turned towards the camera). Cheap: no rendering, about 2 ms a sample.
    """

    def __init__(self, num_samples, seed=0, vary_with_epoch=False, pose_config=None, model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        self.pose_config = pose_config or BodyPoseConfig()

    def _load_model(self):
        return body_model("smpl", self.model_dir)

    def __getitem__(self, index):
        pose, shape = self._sample_smpl_pose(self._rng(index))
        return {"smpl_pose": pose, "smpl_shape": shape}


class SyntheticBodies(_SyntheticBodyBase):
    """Rendered SMPL people in person crops, HMR2.0 / GenHMR style.

    Keys: image (3, H, W) float32 in [0, 1]; K (3, 3); joints3d (24, 3) SMPL joints, metres,
    camera coordinates; joints2d (24, 2) pixels = perspective_projection(joints3d, K);
    verts (6890, 3) camera coordinates; smpl_pose (24, 3) axis-angle, global orientation (in
    camera coordinates) first; smpl_shape (10,); cam_t (3,) with verts = SMPL(pose, shape) + cam_t
    (smplx's output, no transl).

    Distribution: poses as `SyntheticPoses` (same draws for the same seed); betas N(0, 1) clamped
    to [-2.5, 2.5]; the person centred in the crop (3% jitter), the box's larger relative side
    75-90% of the crop. focal_length=5000 (default) renders through HMR2.0's fixed camera (5000
    pixels for a 256 crop, principal point at the centre: nearly orthographic, what GenHMR's
    camera head assumes); None, through a real camera 2.5-8 m away. colors="clothes": shirt (short
    or long sleeves), trousers or shorts, shoes, hair, skin tone; "suit": one fixed colour per body
    part (`suit_colors`). Light as SyntheticHands; background "random" as SyntheticHands, "flat" one
    colour plus N(0, 0.03^2) noise per pixel. pose_config.prior="actions": the design notes' tiny prior.
    augment=True moves the camera (rotation, zoom, shift; no flip: the pose distribution is
    already symmetric) before rendering and jitters colours after. background="black": masks.
    A DataLoader fetches a batch through `__getitems__` (meshes skinned together, images rendered
    render_chunk per pass). Speed: `python data.py --bench`.
    """

    def __init__(self, num_samples, image_size=256, seed=0, augment=False, focal_length=5000.0, vary_with_epoch=False,
                 augment_config=None, pose_config=None, view_config=None, background="random", colors="clothes",
                 model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        _check_look(type(self).__name__, colors, background, ("random", "flat", "black"))
        self.background, self.colors = background, colors
        self.image_size, self.augment, self.focal_length = image_size, augment, focal_length
        self.augment_config = augment_config or AugmentConfig(flip_prob=0.0)
        self.pose_config, self.view_config = pose_config or BodyPoseConfig(), view_config or BodyViewConfig()

    def _load_model(self):
        return body_model("smpl", self.model_dir)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """The samples of a list of indices (DataLoader asks for a batch this way): the meshes
        skinned together (`skinning`), the images rendered render_chunk at a time. Each
        sample depends only on its own (seed, epoch, index): __getitems__(indices)[k] is exactly
        self[indices[k]]."""
        self.model
        rngs = [self._rng(index) for index in indices]
        pose, shape = (torch.stack(x) for x in zip(*(self._sample_smpl_pose(rng) for rng in rngs)))
        verts, joints = skinning("smpl", self.model_dir, torch.float32)(pose, shape)  # (B, 6890, 3), (B, 24, 3)
        samples, looks = zip(*(self._labels(*args) for args in zip(rngs, indices, pose, shape, verts, joints)))
        if self.background == "random":  # the last draws
            patterns = torch.from_numpy(background_patterns(Draws(rngs))).float()  # (B, 3, L, L)
        else:  # "black": none
            patterns = [flat_background(rng, _image_hw(self.image_size)) if self.background == "flat" else None
                        for rng in rngs]
        for look, pattern in zip(looks, patterns):
            look["background"] = pattern
        for start in range(0, len(samples), self.render_chunk):
            chunk = slice(start, start + self.render_chunk)
            for sample, look, image in zip(samples[chunk], looks[chunk], self._images(samples[chunk], looks[chunk])):
                sample["image"] = color_jitter(image, look["jitter"]) if self.augment else image
        return list(samples)

    render_chunk = 8  # images per renderer pass, as SyntheticHands

    def _labels(self, rng, index, pose, shape, verts, joints, frame=None):
        """One sample's labels (all keys but image) from its pose (24, 3) and shape (10,) and their
        mesh verts (6890, 3) and joints (24, 3), and its look: color (6890, 3), light (3,),
        ambient (), jitter (3,) colour factors (the background comes after, for the whole batch).
        frame: the points (N, 3) the crop is placed around (default: verts)."""
        verts, joints = verts.double(), joints.double()
        # 1. the crop
        cam_t, K = place_in_crop(rng, verts if frame is None else frame.double(), self.image_size, self.view_config,
                                 self.focal_length)
        sample = {"K": K, "verts": verts + cam_t, "joints3d": joints + cam_t, "smpl_pose": pose, "smpl_shape": shape,
                  "cam_t": cam_t}
        # 2. augmentation: a rotation Rz about the optical axis turns the global orientation to Rz R
        #    and, since SMPL turns about its root joint J0, moves cam_t to Rz (J0 + cam_t) - J0
        look = {"jitter": torch.ones(3)}
        if self.augment:
            aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, _AUGMENT_STREAM),
                                      replace(self.augment_config, flip_prob=0.0), K, self.image_size)
            Rz = aug.rotation
            sample["verts"], sample["joints3d"] = sample["verts"] @ Rz.T, sample["joints3d"] @ Rz.T
            sample["cam_t"] = Rz @ (joints[0] + cam_t) - joints[0]
            pose = pose.clone()
            pose[0] = matrix_to_axis_angle(Rz @ axis_angle_to_matrix(pose[0].double())).float()
            sample["smpl_pose"], sample["K"], look["jitter"] = pose, aug.K, aug.color
        sample["joints2d"] = perspective_projection(sample["joints3d"], sample["K"])
        sample = {key: value.float() for key, value in sample.items()}
        # 3. the look
        light, ambient = (torch.as_tensor(x[0]).float() for x in random_lights(Draws([rng])))
        look.update(light=light, ambient=ambient, color=suit_colors(self.rig["part"]) if self.colors == "suit"
                    else outfit_colors(rng, self.rig["part"], self.rig["hair"]))
        return sample, look

    def _images(self, samples, looks):
        """The images (B, 3, H, W) of samples (from `_labels`) with their looks, in one renderer pass."""
        height, width = _image_hw(self.image_size)
        backgrounds = None
        if self.background == "random":
            backgrounds = upsample_backgrounds(torch.stack([look["background"] for look in looks]), height, width)
        elif self.background == "flat":
            backgrounds = torch.stack([look["background"] for look in looks])
        return _render(torch.stack([s["verts"] for s in samples]), self.rig["faces"],
                       torch.stack([s["K"] for s in samples]), (height, width),
                       *(torch.stack([look[key] for look in looks]) for key in ("color", "light", "ambient")),
                       backgrounds, cull_backfaces=True, draw_on_background=True,
                       zbuffer=_scratch_zbuffer(self, len(samples) * height * width))[0]


# A controlled ambiguity (GenHMR's UGS, docs/genhmr.md "Where UGS must matter"): the right arm hangs
# down or is raised, a fair coin deciding, and a flat occluder covers every pixel where the two readings
# differ, so the image is the same for both and only the pose tokens' joint distribution can say that
# the arm is one way or the other, never half of each. Readings: the right shoulder's (SMPL joint 17)
# local rotation from the actions prior's "neutral" (down) and "arms_up" means, plus the same
# N(0, 0.1^2) per component in both; the rest of the body is the actions prior's, shared.
AMBIGUOUS_JOINT = 17  # SMPL right shoulder
AMBIGUOUS_READINGS = ((0.0, 0.0, 1.25), (0.0, 0.0, -1.1))  # down, up (axis-angle, radians)
AMBIGUOUS_MOVED = (19, 21, 23)  # the joints the two readings place differently: elbow, wrist, hand


def ambiguous_arm(pose, rng):
    """pose (24, 3) -> (the pose with the right arm in a reading drawn by a fair coin, the other reading's
    pose, the index of the drawn reading (0 down, 1 up))."""
    readings = torch.tensor(AMBIGUOUS_READINGS, dtype=pose.dtype)
    noise = _normal(rng, 0.1, (3,)).to(pose.dtype)
    true = int(torch.rand((), generator=rng) < 0.5)
    poses = pose.clone().expand(2, -1, -1).clone()
    poses[:, AMBIGUOUS_JOINT] = readings + noise
    return poses[true], poses[1 - true], true


class AmbiguousPoses(SyntheticPoses):
    """SyntheticPoses with `ambiguous_arm`'s right arm (the tokenizer of the ambiguous experiment)."""

    def __getitem__(self, index):
        rng = self._rng(index)
        pose, shape = self._sample_smpl_pose(rng)
        return {"smpl_pose": ambiguous_arm(pose, rng)[0], "smpl_shape": shape}


class AmbiguousBodies(SyntheticBodies):
    """SyntheticBodies whose right arm is in one of two readings (`ambiguous_arm`) under an occluder that
    covers every pixel where the readings differ: the crop is placed around both readings' meshes and the
    occluder is the box of the projections of every vertex that moves between them (+ 1 px), one flat
    colour. Extra keys: smpl_pose_other (24, 3), joints3d_other (24, 3) (the other reading, camera
    coordinates), reading () int64 (0 down, 1 up), occluder (4,) [x0, y0, x1, y1] pixels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.augment:
            raise ValueError("AmbiguousBodies: augment=True would move the occluder off the arm; not supported")

    def _sample_smpl_pose(self, rng):
        pose, shape = super()._sample_smpl_pose(rng)
        return ambiguous_arm(pose, rng)[0], shape

    def _labels(self, rng, index, pose, shape, verts, joints, frame=None):
        # the other reading from the drawn one: the same noise, the other mean
        readings = torch.tensor(AMBIGUOUS_READINGS, dtype=pose.dtype)
        true = int((pose[AMBIGUOUS_JOINT] - readings).norm(dim=-1).argmin())
        other = pose.clone()
        other[AMBIGUOUS_JOINT] = pose[AMBIGUOUS_JOINT] - readings[true] + readings[1 - true]
        verts_o, joints_o = skinning("smpl", self.model_dir, torch.float32)(other[None], shape[None])
        verts_o, joints_o = verts_o[0].double(), joints_o[0].double()
        both = torch.cat([verts.double(), verts_o])  # the crop is placed around both readings
        sample, look = super()._labels(rng, index, pose, shape, verts, joints, frame=both)
        cam_t = sample["cam_t"].double()
        moved = (verts.double() - verts_o).norm(dim=-1) > 1e-4
        uv = perspective_projection(torch.cat([verts.double()[moved], verts_o[moved]]) + cam_t, sample["K"].double())
        height, width = _image_hw(self.image_size)
        box = torch.cat([(uv.amin(0) - 1).floor().clamp_min(0), (uv.amax(0) + 1).ceil()]).minimum(
            torch.tensor([width, height, width, height], dtype=uv.dtype))
        look["occluder"] = (box, _uniform(rng, 0.1, 0.9, (3,)).float())
        sample.update(smpl_pose_other=other.float(), joints3d_other=(joints_o + cam_t).float(),
                      reading=torch.tensor(true), occluder=box.float())
        return sample, look

    def _images(self, samples, looks):
        images = super()._images(samples, looks)
        for image, look in zip(images, looks):
            (x0, y0, x1, y1), colour = look["occluder"]
            image[:, int(y0):int(y1), int(x0):int(x1)] = colour[:, None, None]
        return images


SMPLX_HAND_JOINTS = bodymodels.SMPLX_HAND_JOINTS
# SMPL-X's fingertips among smplx's extra joints (thumb, index, middle, ring, pinky)
SMPLX_FINGERTIPS = {"left": tuple(range(66, 71)), "right": tuple(range(71, 76))}


class SyntheticWholeBody(_SyntheticBodyBase):
    """Rendered SMPL-X people with both hands, for HMR-Adapter (a SMPLer-X-style body path and a
    HaMeR-style hand path that crops the hands out of the same image).

    Keys: image (3, H, W) (image_size, default 256 x 192, SMPLer-X's body input); K (3, 3);
    verts (10475, 3) and joints3d (55, 3) SMPL-X joints, camera coordinates, metres; joints2d
    (55, 2) pixels; smplx_pose (55, 3) axis-angle in SMPL-X joint order (global orientation in
    camera coordinates, body 1-21, jaw, eyes, left hand 25-39, right hand 40-54); smplx_shape
    (10,); smplx_expression (10,); cam_t (3,) with verts = SMPLX(pose, shape, expression) + cam_t.
    Per side S in {left, right}:
      S_hand_box (4,) [x0, y0, x1, y1] pixels: the square around the hand's projected vertices,
        1.2 x their larger side (a hand detector's box; the model crops the image with it);
      S_hand_joints3d (21, 3) FreiHAND order (SMPL-X's wrist and finger joints + fingertip
        vertices), camera coordinates; S_hand_joints2d (21, 2) their pixels in the image;
      S_hand_mano_pose (16, 3): the MANO-space pose, global orientation (camera frame) first, in
        the module's left-hand convention (a left hand is the mirror image of the right MANO
        hand with this pose); S_hand_visible (): share of the hand's pixels not hidden by the body;
      S_hand_occluded (): 1.0 when an occluder was painted over the hand, else 0.0;
      S_arm_pose (8, 3): SMPL-X's local rotations of the arm chain SMPLX_{LEFT,RIGHT}_ARM (pelvis,
        spine 1-3, collar, shoulder, elbow, wrist), as in smplx_pose.
    Distribution: bodies as `SyntheticBodies` but turned towards the camera four times in five
    (so both hands show most of the time: see the test), fingers of both hands from
    `hand_poses`, jaw N(0, 5 deg), expression N(0, 0.5), betas N(0, 1). With probability
    occlusion_prob per hand, an occluder (a flat textured rectangle in front of everything, as an
    object held or passing by) covers `occlusion_cover` (a range) of the hand's box; it is drawn
    from its own random stream, so the scene is the same with and without it.
    """

    def __init__(self, num_samples, image_size=(256, 192), seed=0, augment=False, focal_length=5000.0,
                 vary_with_epoch=False, augment_config=None, pose_config=None, hand_pose_config=None,
                 view_config=None, occlusion_prob=0.0, occlusion_cover=(0.4, 0.9), colors="clothes",
                 background="random", model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        _check_look(type(self).__name__, colors, background, ("random", "flat"))
        self.colors, self.background = colors, background
        self.image_size, self.augment, self.focal_length = image_size, augment, focal_length
        self.occlusion_prob, self.occlusion_cover = float(occlusion_prob), tuple(occlusion_cover)
        self.augment_config = augment_config or AugmentConfig(flip_prob=0.0)
        self.pose_config = pose_config or BodyPoseConfig(yaw_frontal_prob=0.8, arm_azimuth=(-10.0, 110.0))
        self.hand_pose_config = hand_pose_config or HandPoseConfig()
        self.view_config = view_config or BodyViewConfig()

    def _load_model(self):
        return body_model("smplx", self.model_dir)

    @property
    def model(self):
        if self._model is None:
            super().model
            # MANO's rest hand turned onto SMPL-X's rest right hand: finger poses are rotated by it
            mano_rest = body_model("mano", self.model_dir)().joints[0].detach().double()
            self.hand_axes = hand_axes(mano_rest)
            smplx_hand = self.rig["rest_joints"][list(SMPLX_HAND_JOINTS["right"])]
            self.mano_to_smplx = metrics.procrustes_transform(mano_rest[None], smplx_hand[None])[1][0]  # (3, 3)
            self.extra_joints = self._model.vertex_joint_selector.extra_joints_idxs  # smplx's joints 55-75
            # faces whose corners all belong to a hand (wrist and finger joints): (F,) masks
            in_hand = {side: torch.isin(self.rig["part"], torch.tensor(ids)) for side, ids in SMPLX_HAND_JOINTS.items()}
            self.hand_face_mask = {side: mask[self.rig["faces"]].all(1) for side, mask in in_hand.items()}
            self.hand_vert_mask = in_hand
        return self._model

    def _sample_pose(self, rng):
        """SMPL-X pose (55, 3) float64 and the right-convention MANO finger poses {side: (15, 3)}."""
        R = sample_plausible_body(rng, self.rig["rest_joints"], self.rig["parents"], self.pose_config)
        pose = torch.zeros(55, 3, dtype=torch.float64)
        pose[:22] = matrix_to_axis_angle(R)
        pose[22] = X * math.radians(abs(float(_normal(rng, 5.0))))  # the jaw opens a little
        fingers = {side: torch.from_numpy(hand_poses(Draws([rng]), self.hand_axes, self.hand_pose_config)[0])
                   for side in ("left", "right")}
        pose[40:55] = fingers["right"] @ self.mano_to_smplx.T  # axis-angle turns with the frame: R aa
        pose[25:40] = mirror_rotation(fingers["left"] @ self.mano_to_smplx.T)
        return pose, fingers

    def __getitem__(self, index):
        rng = self._rng(index)
        # 1. pose, shape, expression, mesh
        self.model
        pose, fingers = self._sample_pose(rng)
        shape = torch.randn(10, generator=rng, dtype=torch.float64).clamp(-2.5, 2.5)
        expression = _normal(rng, 0.5, (10,))
        verts, joints = skinning("smplx", self.model_dir, torch.float32)(pose, shape, expression)
        verts, joints = verts.double(), torch.cat([joints, verts[self.extra_joints]]).double()  # (10475, 3), (76, 3)
        # 2. crop, then augmentation as for SyntheticBodies (turn about the optical axis, zoom, shift)
        cam_t, K = place_in_crop(rng, verts, self.image_size, self.view_config, self.focal_length)
        if self.augment:
            aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, _AUGMENT_STREAM),
                                      replace(self.augment_config, flip_prob=0.0), K, self.image_size)
            root = joints[0]
            cam_t, K = aug.rotation @ (root + cam_t) - root, aug.K
            pose[0] = matrix_to_axis_angle(aug.rotation @ axis_angle_to_matrix(pose[0]))
            verts, joints = (verts - root) @ aug.rotation.T + root, (joints - root) @ aug.rotation.T + root
        verts, joints = verts + cam_t, joints + cam_t
        sample = {"K": K, "verts": verts, "joints3d": joints[:55], "joints2d": perspective_projection(joints[:55], K),
                  "smplx_pose": pose, "smplx_shape": shape, "smplx_expression": expression, "cam_t": cam_t}
        # 3. render the body, then paint the occluders over it
        light, ambient = (torch.from_numpy(x) for x in random_lights(Draws([rng])))
        look = (suit_colors(self.rig["part"]) if self.colors == "suit" else
                outfit_colors(rng, self.rig["part"], self.rig["hair"]))[None], light, ambient
        if self.background == "flat":
            background = flat_background(rng, _image_hw(self.image_size))
        else:
            pattern = torch.from_numpy(background_patterns(Draws([rng]))).float()
            background = upsample_backgrounds(pattern, *_image_hw(self.image_size))[0]
        image, _, face = _render(verts[None], self.rig["faces"], K[None], self.image_size, *look, background[None],
                                 True)
        world = forward_kinematics(axis_angle_to_matrix(pose[:22]), self.rig["rest_joints"][:22],
                                   self.rig["parents"][:22])[1]  # (22, 3, 3) world rotations
        image = image[0]
        occluder_rng = sample_rng(self.seed, self.epoch, index, _OCCLUDER_STREAM)
        for side in ("left", "right"):
            sample.update(self._hand_labels(side, sample, joints, world, fingers[side], face))
            occluded = float(_uniform(occluder_rng, 0, 1)) < self.occlusion_prob
            sample[f"{side}_hand_occluded"] = torch.tensor(float(occluded))
            if occluded:
                paint_occluder(image, sample[f"{side}_hand_box"], occluder_rng, self.occlusion_cover)
        sample = {key: value.float() for key, value in sample.items()}
        sample["image"] = color_jitter(image, aug.color) if self.augment else image
        return sample

    def _hand_labels(self, side, sample, joints, world, fingers, face):
        """The keys of one hand but S_hand_occluded (see the class docstring). face (P,): the body
        image's visible faces."""
        hand_verts = sample["verts"][self.hand_vert_mask[side]]
        uv = perspective_projection(hand_verts, sample["K"])
        centre, half = (uv.amax(0) + uv.amin(0)) / 2, 0.6 * (uv.amax(0) - uv.amin(0)).max()
        # visibility: the hand's pixels in the body image against the hand rendered alone
        hand_faces = self.rig["faces"][self.hand_face_mask[side]]
        alone = _rasterize(sample["verts"].float()[None], hand_faces, sample["K"].float()[None],
                           *_image_hw(self.image_size), True)[0]
        visible = self.hand_face_mask[side][face].sum() / max(len(alone), 1)
        hand_joints = torch.cat([joints[list(SMPLX_HAND_JOINTS[side])], joints[list(SMPLX_FINGERTIPS[side])]])
        hand_joints = hand_joints[list(bodymodels.MANO_TO_FREIHAND)]  # (21, 3) FreiHAND order
        # MANO-space pose: right hand W R_off; left hand M W M R_off (module docstring: left hands)
        wrist = world[SMPLX_HAND_JOINTS[side][0]]
        if side == "left":
            wrist = mirror_rotation(wrist, matrix=True)
        orient = matrix_to_axis_angle(wrist @ self.mano_to_smplx)
        arm = bodymodels.SMPLX_LEFT_ARM if side == "left" else bodymodels.SMPLX_RIGHT_ARM
        return {f"{side}_hand_box": torch.cat([centre - half, centre + half]),
                f"{side}_hand_joints3d": hand_joints,
                f"{side}_hand_joints2d": perspective_projection(hand_joints, sample["K"]),
                f"{side}_hand_mano_pose": torch.cat([orient[None], fingers]), f"{side}_hand_visible": visible,
                f"{side}_arm_pose": sample["smplx_pose"][list(arm)]}


_OCCLUDER_STREAM = 2  # sample_rng(seed, epoch, index, stream): the whole bodies' occluders


def paint_occluder(image, box, rng, cover):
    """Paint, in place, a flat rectangle over `cover` = (low, high) of the square box [x0, y0, x1,
    y1] (pixels) of image (3, H, W): its area a U(low, high) share of the box's, its aspect ratio
    U(1/2, 2) (clipped to the box), at a random place inside the box; one random colour, shaded
    by a gradient at a random angle and speckled (an object, not a hole)."""
    x0, y0, x1, y1 = box.tolist()
    side = x1 - x0
    area, aspect = float(_uniform(rng, *cover)) * side * side, math.exp(float(_uniform(rng, -0.69, 0.69)))
    w, h = min(side, math.sqrt(area * aspect)), min(side, math.sqrt(area / aspect))
    left, top = x0 + float(_uniform(rng, 0, side - w)), y0 + float(_uniform(rng, 0, side - h))
    H, W = image.shape[-2:]
    cols, rows = torch.arange(W) + 0.5, torch.arange(H) + 0.5  # pixel centres
    inside = ((rows >= top) & (rows < top + h))[:, None] & ((cols >= left) & (cols < left + w))[None]
    angle = float(_uniform(rng, 0, 2 * math.pi))
    ramp = ((cols[None] - left) * math.cos(angle) + (rows[:, None] - top) * math.sin(angle)) / max(w, h, 1.0)
    colour = _uniform(rng, 0.05, 0.95, (3,)).float()
    noise = torch.rand(H, W, generator=rng) - 0.5
    paint = (colour[:, None, None] * (0.8 + 0.3 * ramp.clamp(-1, 1)) + 0.08 * noise).clamp(0, 1)
    image[:, inside] = paint[:, inside]


# The synthetic demo's people (train.py's GenHMR stages) follow the design notes' tiny setting
# (shared/design/genhmr.md, Sec. 7): the actions prior (`sample_action_body`: four correlated modes,
# facing the camera within a quarter turn), a suit coloured by body part, a flat background. A 64 x 48
# crop of clothed people on busy backgrounds with freely moving limbs (BodyPoseConfig's "limbs" prior)
# was not learnable by any image model in two CPU-core minutes (README, "GenHMR"). The mean-pose
# baseline is fitted and scored on the same distribution, so the bar is not lower.
DEMO_BODY_POSE = BodyPoseConfig(prior="actions")
DEMO_BODY_LOOK = dict(colors="suit", background="flat")


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
# 5b. Real bodies: 4D-Humans / HMR2.0's evaluation .npz
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


def _label_arrays(path, who, required, expected):
    """The arrays of a benchmark's label file (no pickles), after checking it exists and has the
    required keys; one line naming the file and the key otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{who}: missing {path} (expected {expected})")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
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
    `center` straight onto cfg.image_hw (H, W) (`bodymodels.crop_matrix`, bilinear, black outside).
    NOTE(official vs here): no augmentation; cv2's pixel centres at integers are taken as ours (half a
    pixel); the official resize is cv2.warpAffine, here bilinear `warp_image` (antialiasing aside).

    Keys (those of SyntheticBodies that GenHMR reads, and the protocol's):
        image (3, H, W) [0, 1]; K (3, 3) HMR2.0's crop camera (f = 5000 per 256 px of crop height)
        smpl_pose (24, 3), smpl_shape (10,); has_smpl_pose (), has_smpl_shape () float 0/1
        joints2d (24, 2) crop pixels of the SMPL joints with a 2D keypoint (`SMPL_FROM_OPENPOSE`, else
            `SMPL_FROM_EXTRA`), joints2d_weight (24,) its confidence, 0 for the other ten joints
        keypoints2d (44, 3) crop pixels + confidence; keypoints3d (44, 4) metres + confidence, with
            the OpenPose body's 3D confidences 1-14 set to 0 as image_dataset.py does
    `Indexed(mesh=True)` adds joints3d / verts (the labels' SMPL mesh, no translation) and
    joints3d_weight follows has_smpl_pose: GenHMR's losses skip what a row lacks.
    """

    def __init__(self, path, image_hw, focal_length=5000.0):
        self.path = pathlib.Path(path)
        self.root, self.image_hw, self.focal_length = self.path.parent, _image_hw(image_hw), focal_length
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
        return bodymodels.crop_matrix(tuple(map(float, self.center[index])), (b * W / H, b), (H, W))

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


# ---------------------------------------------------------------------------------------------
# 5c. Real whole bodies: EHF / ARCTIC as one .npz (HMR-Adapter's Table 1)
#
# SMPLer-X (and so HMR-Adapter) scores whole bodies on EHF and ARCTIC from their SMPL-X fits. Each
# benchmark ships its own layout (EHF: meshes and a camera; ARCTIC: HumanData files), so this project
# reads one neutral format that a short script converts either into: `WholeBodyNpz`'s docstring.

WHOLEBODY_SHAPES = {  # key: shape of one row; the first six are required
    "smplx_pose": (55, 3), "smplx_shape": (10,), "smplx_expression": (10,), "transl": (3,), "K": (3, 3),
    "bbox": (4,), "left_hand_box": (4,), "right_hand_box": (4,), "hand_occluded": (2,)}
WHOLEBODY_REQUIRED = ("imgname", "smplx_pose", "smplx_shape", "smplx_expression", "transl", "K")
# official (SMPLer-X common/utils/preprocessing.py process_bbox): the person box grown to the input's
# aspect, then x ratio = cfg.bbox_ratio, 1.25 by default (config_ft_arctic.py sets 1.2)
WHOLEBODY_BOX_ENLARGE = 1.25


class WholeBodyNpz(torch.utils.data.Dataset):
    """People of a whole-body benchmark (EHF, ARCTIC, ...) in one .npz, as `SyntheticWholeBody` samples.

    The file (np.load(path, allow_pickle=False) must read it), N rows, one person each:
        imgname (N,) str            image paths relative to the .npz's folder
        smplx_pose (N, 55, 3)       SMPL-X axis-angle in SMPL-X's joint order: global orientation IN THE
                                    CAMERA FRAME, body 1-21, jaw, eyes, left hand 25-39, right hand 40-54;
                                    full finger rotations (smplx.SMPLX(flat_hand_mean=True)): parameters of
                                    smplx's default flat_hand_mean=False need SMPL-X's hands_meanl / hands_meanr
                                    added (bodymodels.hand_frames().smplx_hands_mean)
        smplx_shape (N, 10), smplx_expression (N, 10)   the neutral model's betas and expression
        transl (N, 3) metres        the camera-frame mesh is SMPLX(pose, shape, expression) + transl
        K (N, 3, 3)                 the image's intrinsics (pixels; pixel centres at j + 0.5, module docstring)
      optional:
        bbox (N, 4)                 the person box [x0, y0, x1, y1] in image pixels; absent: the box of
                                    the projected mesh. Either is grown to cfg.image_size's aspect and
                                    x WHOLEBODY_BOX_ENLARGE (1.25, SMPLer-X's process_bbox)
        left_hand_box, right_hand_box (N, 4)  [x0, y0, x1, y1] image pixels (EHF's and ARCTIC's hand boxes,
                                    xywh -> xyxy); absent: SyntheticWholeBody's rule, the square 1.2 x the
                                    larger side of the hand's projected vertices
        hand_occluded (N, 2)        [left, right] 1 where a hand is occluded (ARCTIC's objects), else 0; absent: 0
    Converting: annotations in a world frame with extrinsics X_cam = R X_world + t fold into the root,
    global orientation R R_g and transl R (transl_w + j0) + t - j0, j0 the pelvis of the rest pose
    SMPLX(0, shape, expression) (SMPL-X turns the body about it). ARCTIC: leave out the egocentric view
    as SMPLer-X and the paper (Sec. 4.1) do. A missing key, a wrong shape or a missing image raises one
    line naming the file, the key and (for an image) the row.

    Keys: those of SyntheticWholeBody, in the crop cfg.image_size that a camera change makes of the image
    (`bodymodels.crop_matrix`: K_crop = A K, verts and joints stay in the camera frame): image, K, verts,
    joints3d, joints2d, smplx_pose, smplx_shape, smplx_expression, cam_t (= transl); per side
    S_hand_box (crop pixels), S_hand_joints3d / _joints2d, S_hand_mano_pose (`bodymodels.hands_of_body`,
    the module's left-hand convention), S_hand_visible (the hand's pixels not hidden by the body's own
    mesh: objects are not modelled), S_hand_occluded, S_arm_pose. The mesh comes from the SMPL-X file
    under $HMR_BODY_MODELS (else the stand-in). NOTE(official vs here): no augmentation; the crop is
    bilinear `warp_image` (SMPLer-X: cv2.warpAffine at 512 x 384, then resized to the ViT's input).
    """

    def __init__(self, path, image_hw, enlarge=WHOLEBODY_BOX_ENLARGE, model_dir=None):
        self.path = pathlib.Path(path)
        self.root, self.image_hw = self.path.parent, _image_hw(image_hw)
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
        self.arrays = {key: torch.from_numpy(arrays[key].astype(np.float64))
                       for key in WHOLEBODY_SHAPES if key in arrays}
        self.labeller = SyntheticWholeBody(1, self.image_hw, model_dir=model_dir)  # its model, rig and hand rules

    def __len__(self):
        return len(self.imgname)

    def set_epoch(self, epoch):
        """No augmentation: every epoch sees the same crops."""

    def row(self, index):
        """Row `index` in the camera frame: pose (55, 3), shape, expression, transl, K (full image),
        verts (10475, 3) and joints (76, 3) (SMPL-X's 55 and smplx's 21 extra: fingertips, face), float64."""
        a = {key: value[index] for key, value in self.arrays.items()}
        self.labeller.model
        verts, joints = skinning("smplx", self.model_dir, torch.float32)(a["smplx_pose"], a["smplx_shape"],
                                                                        a["smplx_expression"])
        joints = torch.cat([joints, verts[self.labeller.extra_joints]]).double()
        return a, verts.double() + a["transl"], joints + a["transl"]

    def crop(self, index, verts, K):
        """A (3, 3) full-image pixels -> crop pixels: the person box (the file's, else the projected
        mesh's) grown to the crop's aspect x enlarge (`bodymodels.crop_box`)."""
        if "bbox" in self.arrays:
            box = self.arrays["bbox"][index].tolist()
        else:
            uv = perspective_projection(verts, K)
            box = (*uv.amin(0).tolist(), *uv.amax(0).tolist())
        return bodymodels.crop_matrix(*bodymodels.crop_box(box, self.image_hw, self.enlarge), self.image_hw)

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
        # the hands: SyntheticWholeBody's labels of the same mesh and crop (visibility from the faces in view)
        rig = self.labeller.rig
        _, face, _, _, (keep, *_) = _rasterize(verts.float()[None], rig["faces"], K.float()[None], *self.image_hw, True)
        world = forward_kinematics(axis_angle_to_matrix(a["smplx_pose"][:22]), rig["rest_joints"][:22],
                                   rig["parents"][:22])[1]
        hands = bodymodels.hands_of_body(a["smplx_pose"], bodymodels.hand_frames(self.model_dir))
        for s, side in enumerate(("left", "right")):
            sample.update(self.labeller._hand_labels(side, sample, joints, world, hands[side]["hand_pose"],
                                                     keep.index_select(0, face)))
            sample[f"{side}_hand_mano_pose"] = torch.cat([hands[side]["global_orient"][None], hands[side]["hand_pose"]])
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


RENDERED_KINDS = ("synthetic", "ambiguous")  # --data kinds made here (no path): rendered once into a cache


def _synthetic_only(kind, who):
    if kind not in RENDERED_KINDS:
        raise ValueError(f"{who}: --data {kind!r} is not readable here; the body stages read only 'synthetic' or "
                         f"'ambiguous' "
                         f"(convert real data to SyntheticBodies' keys to add a loader)")


def body_pose_dataset(kind, path, split, cfg, seed, num_samples):
    """SMPL poses standing in for AMASS (GenHMR's tokenizer), DEMO_BODY_POSE: SyntheticPoses plus
    "index"; the held-out split (seed + 1_000_003) also carries its mesh (joints3d, verts) to score.
    kind "hmr2" (path TRAIN.npz[,EVAL.npz], `hmr2_files`): the file's SMPL poses (`HMR2Poses`)."""
    held_out = split == "evaluation"
    if kind == "hmr2":
        return Indexed(HMR2Poses(hmr2_files(path, split)), mesh=held_out)
    _synthetic_only(kind, "body_pose_dataset")
    poses = AmbiguousPoses if kind == "ambiguous" else SyntheticPoses
    return Indexed(poses(num_samples, seed=seed + held_out * 1_000_003, pose_config=DEMO_BODY_POSE), mesh=held_out)


def body_dataset(kind, path, split, cfg, seed, num_samples):
    """Rendered SMPL people (GenHMR's images) at cfg.image_size, DEMO_BODY_POSE and _LOOK, HMR2.0's camera
    (f = 5000 for a 256 crop), plus "index"; the training split drops "verts" (82 KB a sample that
    no loss reads), the held-out split (seed + 1_000_003) keeps them to score. kind "hmr2" (path
    TRAIN.npz[,EVAL.npz], `hmr2_files`): every row of the file (`HMR2Npz`, num_samples unused), the held-out
    split scored by the benchmarks' protocol (metrics.hmr2_protocol: $HMR_J_REGRESSOR is checked here)."""
    held_out = split == "evaluation"
    if kind == "hmr2":  # every row of the file; the labels' SMPL mesh (joints3d for L_3D, verts to score)
        hmr2_protocol_check(split)
        return Indexed(HMR2Npz(hmr2_files(path, split), cfg.image_size), drop=() if held_out else ("verts",), mesh=True)
    _synthetic_only(kind, "body_dataset")
    kind_class = AmbiguousBodies if kind == "ambiguous" else SyntheticBodies
    bodies = kind_class(num_samples, cfg.image_size, seed=seed + held_out * 1_000_003,
                             pose_config=DEMO_BODY_POSE, **DEMO_BODY_LOOK)
    return Indexed(bodies, drop=() if held_out else ("verts",))


def wholebody_dataset(kind, path, split, cfg, seed, num_samples):
    """Rendered SMPL-X people with both hands (HMR-Adapter) at cfg.image_size in DEMO_BODY_LOOK (a suit
    coloured by body part and finger segment, a flat background: the design notes' tiny setting), half
    of the hands under an occluder (so that body context matters), plus "index"; the training split drops
    "verts" (126 KB a sample that no loss reads), the held-out split (seed + 1_000_003) keeps them.
    kind "wholebody" (path FILE.npz or TRAIN.npz,EVAL.npz, `wholebody_files`): every row of the file
    (`WholeBodyNpz`, num_samples unused), the same keys, so it trains and scores alike."""
    held_out = split == "evaluation"
    if kind == "wholebody":
        return Indexed(WholeBodyNpz(wholebody_files(path, split), cfg.image_size), drop=() if held_out else ("verts",))
    if kind != "synthetic":
        raise ValueError(f"wholebody_dataset: --data {kind!r} is not readable here; expected 'synthetic' or "
                         f"'wholebody:FILE.npz' (data.WholeBodyNpz)")
    bodies = SyntheticWholeBody(num_samples, cfg.image_size, seed=seed + held_out * 1_000_003, occlusion_prob=0.5,
                                **DEMO_BODY_LOOK)
    return Indexed(bodies, drop=() if held_out else ("verts",))


# ---------------------------------------------------------------------------------------------
# 6. The rendered cache: draw a synthetic set once, keep it as stacked tensors
#
# Rendering costs milliseconds a sample; a training run that sees each sample many times renders
# it once (`render_once`, every DDP rank a share) into a tensor file and reads it memory-mapped.


class RenderedSet(torch.utils.data.Dataset):
    """A dataset held as stacked tensors {key: (N, ...)}: "image" (if any) stored uint8 and returned
    float32 in [0, 1], every other key returned as stored (pose-only sets have no image)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index):
        sample = {k: v[index] for k, v in self.tensors.items()}
        if "image" in sample:
            sample["image"] = sample["image"].float() / 255
        return sample

    def set_epoch(self, epoch):
        """The set was drawn once: every epoch sees the same samples (no per-epoch randomness)."""


def stack_samples(dataset, indices, workers=0):
    """{key: (len(indices), ...)} of the samples at `indices`, read by `workers` processes; "image"
    (if any) as uint8."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=64,
                                         num_workers=workers, generator=torch.Generator())
    batches = list(loader)
    tensors = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    if "image" in tensors:
        tensors["image"] = (tensors["image"] * 255).round().to(torch.uint8)
    return tensors


def labels(dataset, limit=4096):
    """{key: (n, ...)} of every key but "image" for n <= limit evenly strided samples (indices 0,
    step, 2 step, ...): read from memory for a RenderedSet (no image is touched), else drawn."""
    n = len(dataset)
    indices = list(range(0, n, max(1, math.ceil(n / limit))))
    if isinstance(dataset, RenderedSet):
        return {k: v[indices] for k, v in dataset.tensors.items() if k != "image"}
    return {k: v for k, v in stack_samples(dataset, indices).items() if k != "image"}


def render_once(dataset, path, rank=0, world_size=1, barrier=lambda: None):
    """Draw `dataset` into the tensor file `path` unless it exists, and load it memory-mapped (the
    ranks share its pages) as a RenderedSet.

    Each of world_size ranks draws one contiguous share into path.part{rank}, then rank 0 joins
    them; barrier() (e.g. torch.distributed.barrier; a no-op for one process) is called twice by
    every rank. Files are written with `bodymodels.atomic_write`, so a crash never leaves a
    half-written cache. The caller names the file after everything the samples depend on.
    """
    path = str(path)
    if not os.path.exists(path):  # all ranks agree: the file appears only after the barrier below
        n = len(dataset)
        share = range(n * rank // world_size, n * (rank + 1) // world_size)
        workers = torch.get_num_threads() if torch.get_num_threads() > 1 else 0  # one renderer per core of this rank
        part = stack_samples(dataset, share, workers)
        bodymodels.atomic_write(f"{path}.part{rank}", lambda f: torch.save(part, f))
        barrier()
        if rank == 0:
            parts = [torch.load(f"{path}.part{r}", weights_only=True, mmap=True) for r in range(world_size)]
            joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            bodymodels.atomic_write(path, lambda f: torch.save(joined, f))
            for r in range(world_size):
                os.remove(f"{path}.part{r}")
        barrier()
    return RenderedSet(torch.load(path, weights_only=True, mmap=True))


# ---------------------------------------------------------------------------------------------
# 7. Pictures: a mesh from three views, skeletons, a demo's picture, sample grids and predictions
#    (all of the project's drawing)


# Each view: rows = screen right, screen up, towards the viewer, in model coordinates (y up,
# the body faces +z). For OpenCV camera coordinates (y down) pass verts * [1, -1, -1].
_VIEWS = {"front": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
          "side": ((0, 0, -1), (0, 1, 0), (1, 0, 0)),
          "top": ((1, 0, 0), (0, 0, -1), (0, 1, 0))}


def to_numpy(x):
    """A tensor (any device, with or without grad) or array-like -> a numpy array."""
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_mesh_views(verts, faces, joints=None, parents=None, title=None):
    """A mesh from the front, the side and the top, with its joints and kinematic tree.

    verts (V, 3), faces (F, 3), joints (J, 3), parents (J,) with -1 for the root; tensors or
    arrays. Faces are drawn as 2D polygons sorted far to near (painter's algorithm) with Lambert
    shading from a light at the viewer, which stays fast for SMPL-X's 20k faces.
    Returns a matplotlib Figure (not attached to pyplot, so nothing leaks between calls).
    """
    from matplotlib.figure import Figure

    verts, faces = to_numpy(verts).astype(np.float64), to_numpy(faces).astype(np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"plot_mesh_views: expected verts (V, 3) and faces (F, 3), "
                         f"got {verts.shape} and {faces.shape}")
    joints = None if joints is None else to_numpy(joints).astype(np.float64).reshape(-1, 3)
    if parents is not None and (joints is None or len(parents) != len(joints)):
        raise ValueError(f"plot_mesh_views: parents needs one entry per joint, got {len(parents)} "
                         f"parents for {0 if joints is None else len(joints)} joints")
    centre = (verts.max(0) + verts.min(0)) / 2
    radius = 0.55 * (verts.max(0) - verts.min(0)).max()

    fig = Figure(figsize=(12, 4.3), layout="constrained")
    for ax, (name, rows) in zip(fig.subplots(1, 3), _VIEWS.items()):
        M = np.array(rows, dtype=np.float64)
        tri = ((verts - centre) @ M.T)[faces]  # (F, 3 corners, [right, up, towards viewer])
        # 1. faces far to near, shaded with the light at the viewer (`_paint`)
        _paint(ax, tri[..., :2], -tri[..., 2], MESH_COLORS[0], normal_z=_lambert_to_viewer(tri))
        # 2. joints and bones on top
        if joints is not None:
            q = (joints - centre) @ M.T  # (J, 3)
            draw_skeleton(ax, q[:, :2], parents, color="crimson", linewidth=1.5, size=10, dots=None)
        ax.set(xlim=(-radius, radius), ylim=(-radius, radius), aspect="equal", title=name,
               xticks=[], yticks=[])
    if title:
        fig.suptitle(title)
    return fig


FINGER_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd")  # thumb, index, middle, ring, pinky


def bone_colors(parents):
    """A colour per bone (bone j joins joint j to its parent): a FreiHAND hand's five fingers get
    FINGER_COLORS, any other tree blue for the body's left side (SMPL / SMPL-X names) and red for the rest."""
    if tuple(parents) == FREIHAND_PARENTS:
        return [FINGER_COLORS[(j - 1) // 4] if j > 0 else "w" for j in range(21)]
    left = {j for j, name in enumerate(bodymodels.SMPLX_JOINT_NAMES) if name.startswith("left")}
    return ["#1f77b4" if j in left else "#d62728" for j in range(len(parents))]


def draw_skeleton(ax, points, parents, color="crimson", label=None, linewidth=1.3, size=5, dots="white", zorder=3):
    """Draw a skeleton on a matplotlib axis: the bones as one LineCollection, then the joints.

    points (J, 2) tensor or array (pixels for an image drawn with imshow); parents (J,), -1 for a
    root, or None for joints alone; color: one colour for everything, J colours (one per bone), or
    "bones" for `bone_colors(parents)`; label: the bones' legend entry; dots: the joints' face
    colour (None: the bones' colour), edged in black when given. Returns the LineCollection (or None).
    """
    from matplotlib.collections import LineCollection

    points = to_numpy(points).astype(np.float64).reshape(-1, 2)
    colors = bone_colors(parents) if isinstance(color, str) and color == "bones" else color
    bones = None
    if parents is not None:
        pairs = [(j, p) for j, p in enumerate(parents) if p >= 0]
        per_bone = colors if not isinstance(colors, str) else [colors] * len(parents)
        bones = LineCollection([points[[p, j]] for j, p in pairs], colors=[per_bone[j] for j, _ in pairs],
                               linewidths=linewidth, zorder=zorder, label=label)
        ax.add_collection(bones)
    face = dots if dots is not None else (colors if isinstance(colors, str) else "black")
    edges = dict(edgecolors="black", linewidths=0.3) if dots is not None else {}
    ax.scatter(points[:, 0], points[:, 1], s=size, c=face, zorder=zorder + 1, **edges)
    return bones


def _paint(ax, tri, depth, color, **kwargs):
    """Triangles tri (F, 3, 2) on a matplotlib axis, far first (painter's algorithm), shaded by
    Lambert's law with the light at the viewer; depth (F, 3) per corner (larger = farther) and the
    triangles' 3D corners give the shading through kwargs["normal_z"] (F,) in [0, 1]."""
    from matplotlib.collections import PolyCollection

    order = np.argsort(-depth.mean(1))
    colors = np.asarray(color)[None] * (0.25 + 0.75 * kwargs.pop("normal_z")[order, None])
    ax.add_collection(PolyCollection(tri[order], facecolors=colors, edgecolors=colors, linewidths=0.2, **kwargs))


def _lambert_to_viewer(corners):
    """|cos| between each triangle's normal and the viewing axis (z): corners (F, 3, 3) -> (F,)."""
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return np.abs(normal[:, 2]) / np.maximum(np.linalg.norm(normal, axis=1), 1e-20)


MESH_COLORS = ((0.62, 0.72, 0.85), (0.90, 0.62, 0.45), (0.55, 0.80, 0.55))


def draw_demo(path, image, meshes, K, keypoints=None):
    """Save a PNG: the image, the meshes drawn over it through the camera K (3, 3) (pixels), and the
    meshes from the side (turned 90 degrees about the vertical axis through their centre).
    meshes: [(name, verts (V, 3) camera frame, faces (F, 3))]; keypoints (N, 2) pixels, or None."""
    from matplotlib.figure import Figure

    img = to_numpy(image.permute(1, 2, 0)).clip(0, 1)
    H, W = img.shape[:2]
    fig = Figure(figsize=(12, 4.4 * max(H / W, 0.5)), layout="constrained")
    ax_in, ax_over, ax_side = fig.subplots(1, 3)
    for ax in (ax_in, ax_over):
        ax.imshow(img, extent=(0, W, H, 0))
        ax.set(xlim=(0, W), ylim=(H, 0))
        ax.set_axis_off()
    if keypoints is not None:
        ax_in.scatter(*to_numpy(keypoints)[:, :2].T, s=6, c="red")
    K = to_numpy(K).astype(np.float64)
    arrays = [(to_numpy(v).astype(np.float64), to_numpy(f).astype(np.int64)) for _, v, f in meshes]
    centre = np.concatenate([v for v, _ in arrays]).mean(0)
    turn = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # seen from the camera's right
    for k, (v, f) in enumerate(arrays):
        uvw = v @ K.T
        uv = uvw[:, :2] / uvw[:, 2:]
        _paint(ax_over, uv[f], v[f][..., 2], MESH_COLORS[k % 3], normal_z=_lambert_to_viewer(v[f]))
        s = (v - centre) @ turn.T
        _paint(ax_side, s[f][..., :2], s[f][..., 2], MESH_COLORS[k % 3], normal_z=_lambert_to_viewer(s[f]))
    side = np.concatenate([(v - centre) @ turn.T for v, _ in arrays])
    r = 0.55 * (side.max(0) - side.min(0))[:2].max()
    ax_side.set(xlim=(-r, r), ylim=(r, -r), aspect="equal", xticks=[], yticks=[])
    ax_in.set_title("input", fontsize=9)
    ax_over.set_title("predicted mesh", fontsize=9)
    ax_side.set_title("side view (from the right)", fontsize=9)
    return bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def show_image(ax, image):
    """Show an image (3, H, W) in [0, 1] on a matplotlib axis in pixel coordinates (pixel (i, j)
    covers [j, j + 1) x [i, i + 1), as the module's convention), without axes."""
    height, width = image.shape[-2:]
    ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, width, height, 0))
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.set_axis_off()


def overlay_mesh(image, verts, faces, K, color, alpha=0.7):
    """image (3, H, W) with the mesh verts (V, 3) (camera coordinates), faces (F, 3), seen through
    K (3, 3), rendered in `color` (3,) and blended in at opacity alpha. -> (3, H, W)."""
    rendered, mask = render_mesh(verts.float(), faces, K.float(), tuple(image.shape[-2:]), color=color,
                                 return_mask=True)
    return torch.where(mask, alpha * rendered + (1 - alpha) * image, image)


def draw_hand_predictions(path, eval_set, pred, gt, count=6):
    """Save a PNG of `count` held-out hands: per column, the image with the true (green) and
    predicted (red) 2D skeletons; the true mesh over the image; the predicted mesh over it.

    pred: joints2d (N, 21, 2) pixels, joints3d (N, 21, 3), verts (N, 778, 3); gt: the hand keys
    (K, joints2d, joints3d, verts) of eval_set's first N samples. The predicted 3D may be
    root-relative, so its mesh is moved to where its joints' centroid is the true joints' centroid.
    """
    from matplotlib.figure import Figure

    count = min(count, len(eval_set))
    faces = torch.as_tensor(np.asarray(body_model("mano").faces, dtype=np.int64))
    fig = Figure(figsize=(2.2 * count, 6.9), layout="constrained")
    axes = fig.subplots(3, count, squeeze=False)
    for i in range(count):
        image, K = eval_set[i]["image"], gt["K"][i]
        show_image(axes[0, i], image)
        draw_skeleton(axes[0, i], gt["joints2d"][i], FREIHAND_PARENTS, color="lime", size=4, dots=None)
        draw_skeleton(axes[0, i], pred["joints2d"][i], FREIHAND_PARENTS, color="red", size=4, dots=None)
        show_image(axes[1, i], overlay_mesh(image, gt["verts"][i], faces, K, color=(0.35, 0.9, 0.35)))
        placed = pred["verts"][i] - pred["joints3d"][i].mean(0) + gt["joints3d"][i].mean(0)
        show_image(axes[2, i], overlay_mesh(image, placed, faces, K, color=(0.95, 0.35, 0.3)))
    titles = ("2D joints: green truth, red predicted", "true mesh",
              "predicted mesh, moved to the true joints' centroid")
    for row, title in enumerate(titles):
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def _faces(kind):
    return torch.as_tensor(np.asarray(body_model(kind).faces, dtype=np.int64))


def draw_wholebody_predictions(path, eval_set, pred, gt, count=6):
    """Save a PNG of `count` held-out people with an occluded hand (HMR-Adapter): per column the
    image with the true hand boxes (green, the occluded one dashed) and the predicted ones (red);
    the SMPL-X mesh of each pipeline present (pred["pipe_P_verts"], camera coordinates; P baseline,
    adapted) over it; and the same two zoomed on the occluded hand."""
    from matplotlib.figure import Figure

    occluded = torch.stack([gt["left_hand_occluded"], gt["right_hand_occluded"]], 1) > 0.5  # (N, 2)
    chosen = (torch.nonzero(occluded.any(1))[:, 0].tolist() + list(range(len(occluded))))[:min(count, len(occluded))]
    runs = [name for name in ("baseline", "adapted", "constant") if f"pipe_{name}_verts" in pred]
    colors = {"baseline": (0.95, 0.55, 0.2), "adapted": (0.3, 0.5, 0.95), "constant": (0.6, 0.6, 0.6)}
    faces = _faces("smplx")
    height, width = eval_set[0]["image"].shape[-2:]
    rows = 1 + 2 * len(runs)
    fig = Figure(figsize=(1.7 * len(chosen) * width / height + 0.4, 1.8 * rows), layout="constrained")
    axes = fig.subplots(rows, len(chosen), squeeze=False)
    for col, i in enumerate(chosen):
        image = eval_set[i]["image"]
        show_image(axes[0, col], image)
        side = int(occluded[i].float().argmax())  # the occluded hand (0 left, 1 right)
        for s, name in enumerate(("left", "right")):
            x0, y0, x1, y1 = gt[f"{name}_hand_box"][i].tolist()
            axes[0, col].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="lime", lw=1,
                              ls="--" if occluded[i, s] else "-")
            if runs:
                box_key = f"pipe_{runs[0]}_boxes"
                x0, y0, x1, y1 = pred[box_key][i, s].tolist() if box_key in pred else (0,) * 4
                axes[0, col].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="red", lw=0.8)
        box = gt[f"{('left', 'right')[side]}_hand_box"][i]
        centre, half = (box[:2] + box[2:]) / 2, float(box[2] - box[0])
        for r, name in enumerate(runs):
            shown = overlay_mesh(image, pred[f"pipe_{name}_verts"][i], faces, gt["K"][i], color=colors[name])
            show_image(axes[1 + r, col], shown)
            zoom = axes[1 + len(runs) + r, col]
            show_image(zoom, shown)
            zoom.set_xlim(float(centre[0]) - half, float(centre[0]) + half)
            zoom.set_ylim(float(centre[1]) + half, float(centre[1]) - half)
    axes[0, 0].set_title("hand boxes: green true (dashed: occluded), red predicted", fontsize=8, loc="left")
    for r, name in enumerate(runs):
        axes[1 + r, 0].set_title(f"{name} pipeline", fontsize=8, loc="left")
        axes[1 + len(runs) + r, 0].set_title(f"{name}, the occluded hand", fontsize=8, loc="left")
    bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def draw_body_predictions(path, eval_set, pred, gt, count=6, prefix=""):
    """Save a PNG of `count` held-out people: per column the image, the true mesh over it, the
    predicted mesh (pred[prefix + "verts"], camera coordinates) and, when present, the refined one
    (pred["refined_verts"]); gt: K and verts of eval_set's samples."""
    from matplotlib.figure import Figure

    count, faces = min(count, len(eval_set)), _faces("smpl")
    rows = [("image", None, None), ("true mesh", "verts", (0.35, 0.9, 0.35)),
            ("predicted", prefix + "verts", (0.95, 0.35, 0.3)),
            ("refined with 2D keypoints", "refined_verts", (0.3, 0.5, 0.95))]
    rows = [r for r in rows if r[0] in ("image", "true mesh") or r[1] in pred]
    height, width = eval_set[0]["image"].shape[-2:]
    fig = Figure(figsize=(1.6 * count * width / height + 0.4, 1.7 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for i in range(count):
        image = eval_set[i]["image"]
        for r, (title, key, color) in enumerate(rows):
            verts = gt["verts"][i] if title == "true mesh" else pred[key][i] if key else None
            show_image(axes[r, i], image if key is None else overlay_mesh(image, verts, faces, gt["K"][i], color))
            if i == 0:
                axes[r, 0].set_title(title, fontsize=8, loc="left")
    bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


def draw_pose_reconstructions(path, eval_set, pred, gt, count=8):
    """Save a PNG of `count` held-out poses: the true SMPL mesh (green) and the reconstruction
    (red, pred["verts"]) overlaid, seen from the front and from the side. No translation needed:
    each mesh is centred on its own pelvis (joints3d[0])."""
    from matplotlib.figure import Figure

    count, faces, size = min(count, len(gt["verts"])), _faces("smpl"), 160
    K = torch.tensor([[220.0, 0, size / 2], [0, 220.0, size / 2], [0, 0, 1]])
    views = {"front": torch.eye(3), "side": bodymodels.axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))}
    fig = Figure(figsize=(1.5 * count, 3.3), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for i in range(count):
        for r, (view, R) in enumerate(views.items()):
            image = torch.ones(3, size, size)
            for key, source, color in (("verts", gt, (0.35, 0.9, 0.35)), ("verts", pred, (0.95, 0.35, 0.3))):
                centred = (source[key][i] - source["joints3d"][i][0]) @ R.T + torch.tensor([0.0, 0.0, 3.2])
                image = overlay_mesh(image, centred, faces, K, color, alpha=0.55)
            show_image(axes[r, i], image)
            if i == 0:
                axes[r, 0].set_title(f"{view}: true green, reconstructed red", fontsize=8, loc="left")
    bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def draw_samples(samples, parents, path, titles=None, columns=4, joints_key="joints2d", boxes_keys=()):
    """Save a grid of sample images with their 2D joints and bones drawn on top (a PNG at path).

    samples: dicts with image (3, H, W) and joints_key (J, 2) pixels; parents (J,) the tree to draw;
    boxes_keys: keys of (4,) boxes [x0, y0, x1, y1] in pixels to outline (e.g. hand boxes).
    """
    from matplotlib.figure import Figure

    rows = math.ceil(len(samples) / columns)
    fig = Figure(figsize=(2.6 * columns, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(samples):
            continue
        sample = samples[i]
        show_image(ax, sample["image"])
        draw_skeleton(ax, sample[joints_key], parents, color="bones")
        for key in boxes_keys:
            x0, y0, x1, y1 = sample[key].tolist()
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="yellow", linewidth=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    bodymodels.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    return path


def _samples_per_second(dataset, count, batch=1):
    """(wall-clock, CPU-time) samples per second of drawing count samples on this thread, batch at
    a time through __getitems__ when batch > 1 (as a DataLoader does); model loading not timed."""
    dataset[0]
    count = batch * math.ceil(count / batch)  # whole batches: the samples actually drawn
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, count, batch):
        indices = [i % len(dataset) for i in range(start + 1, start + 1 + batch)]
        dataset.__getitems__(indices) if batch > 1 else dataset[indices[0]]
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def _grid(out_dir, count=16):
    """Save one PNG grid per synthetic dataset into out_dir; returns their paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    hands = SyntheticHands(count, image_size=224, seed=0, left_hand_prob=0.25)
    samples = [hands[i] for i in range(count)]
    titles = [("right" if bool(s["is_right"]) else "left") for s in samples]
    paths.append(draw_samples(samples, FREIHAND_PARENTS, out_dir / "synthetic_hands.png", titles))
    augmented = SyntheticHands(count, image_size=128, seed=0, augment=True,
                               augment_config=AugmentConfig(flip_prob=0.5))
    samples = [augmented[i] for i in range(count)]
    titles = [("right" if bool(s["is_right"]) else "left") + " (augmented, 128 px)" for s in samples]
    paths.append(draw_samples(samples, FREIHAND_PARENTS, out_dir / "synthetic_hands_augmented.png", titles))
    bodies = SyntheticBodies(count, seed=0)
    paths.append(draw_samples([bodies[i] for i in range(count)], bodymodels.SMPL_PARENTS,
                              out_dir / "synthetic_bodies.png"))
    whole = SyntheticWholeBody(count // 2, seed=0, occlusion_prob=0.5)
    samples = [whole[i] for i in range(count // 2)]
    paths.append(draw_samples(samples, bodymodels.SMPLX_PARENTS, out_dir / "synthetic_wholebody.png",
                              boxes_keys=("left_hand_box", "right_hand_box")))
    return paths


def _bench(count):
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
        wall, cpu = _samples_per_second(dataset, n, batch)
        print(f"{name:46s} {wall:7.1f} samples/s wall-clock, {cpu:7.1f} per CPU-second", flush=True)


# =============================================================================================
# THE MACHINERY: pose priors, looks, backgrounds, the renderer
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# 8. Pose priors: hands
#
# The stand-in MANO (bodymodels) rests as a flat right hand: fingers along +x, back of the hand
# towards +y (palm towards -y), thumb towards -z; every joint's local frame is the world's. A
# finger bends towards the palm by turning about d x (-y), d its rest direction (so about -z for
# the four fingers), and spreads by turning about the palm normal y.

FINGERS = {"index": (1, 2, 3), "middle": (4, 5, 6), "pinky": (7, 8, 9), "ring": (10, 11, 12), "thumb": (13, 14, 15)}
PALM = (0.0, -1.0, 0.0)  # from the back of the rest hand towards the palm; its opposite is the spread axis


def _rotation(axis, angle_deg):
    """Rotations (..., 3, 3) float64 by angle_deg (...) about unit axes (..., 3)."""
    axis = torch.as_tensor(axis, dtype=torch.float64)
    angle = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64))
    return axis_angle_to_matrix(axis * angle[..., None])


def hand_axes(rest_joints):
    """Flexion axes (5, 3) of the index, middle, pinky, ring fingers and thumb (MANO's order), and
    the thumb's palmar axis (3,), from MANO's rest joints (16, 3).

    A finger with rest direction d bends towards the palm about d x palm. The thumb curls across
    the palm, so its flexion aims between the palm and the fingers (+z); its base swings under
    the palm (opposition) about d x palm.
    """
    palm = torch.tensor(PALM, dtype=torch.float64)
    chains = torch.tensor(list(FINGERS.values()))  # (5, 3)
    d = F.normalize(rest_joints[chains[:, 2]] - rest_joints[chains[:, 0]], dim=-1)  # (5, 3)
    target = palm.expand(5, 3).clone()
    target[4] = F.normalize(palm + torch.tensor([0.0, 0.0, 0.8], dtype=torch.float64), dim=0)
    flex = F.normalize(torch.linalg.cross(d, target, dim=-1), dim=-1)
    return flex, F.normalize(torch.linalg.cross(d[4], palm, dim=0), dim=0)


def hand_poses(draws, axes, cfg=HandPoseConfig()):
    """Natural random finger poses: (B, 15, 3) float64 numpy axis-angle for MANO joints 1-15;
    axes from `hand_axes`.

    1. A grasp level g ~ U(0, 1) curls all fingers together (curl c = g + N(0, 0.12), pinky and
       ring a little more); with probability cfg.independent_prob each finger instead is straight
       or curled on its own (pointing, counting, "peace" gestures).
    2. Each finger: knuckle (MCP) and middle (PIP) flexion = its range at c, + N(0, jitter); the
       last joint follows (DIP = 0.7 PIP + N(0, 3)); the knuckle spreads about the palm normal by
       cfg.spread x s, s ~ U(-0.2, 1), less as the fingers curl, + N(0, 3).
    3. Thumb: its base swings under the palm and across it with the grasp (opposition), its two
       distal joints flex with its own curl.
    Every angle is clamped to its range, so no joint bends backwards.
    """
    flex, palmar = (np.asarray(axis, dtype=np.float64) for axis in axes)  # (5, 3), (3,)
    normal = -np.array(PALM)  # spread axis: + turns a finger towards the thumb
    noise = draws.normal(1.0, (14,))  # (B, 14)
    # 1. curls (index, middle, pinky, ring, thumb): gesture or grasp, both drawn
    g = draws.uniform(0, 1)  # (B,)
    gesture = draws.chance(cfg.independent_prob)[:, None]
    straight = draws.chance(0.5, (5,))
    curl_gesture = straight * draws.uniform(0.6, 1.0, (5,)) + draws.uniform(0.0, 0.15, (5,))
    curl_grasp = g[:, None] + draws.normal(0.12, (5,)) + np.array([0.0, 0.02, 0.08, 0.05, 0.0])
    curl = np.where(gesture, curl_gesture, curl_grasp).clip(-0.1, 1.05)  # (B, 5)

    def angle(c, limits, n):  # a range at curl c, with noise, clamped
        low, high = limits
        return np.clip(low + (high - low) * c + cfg.jitter * n, low, high)

    # 2. the four fingers, (B, 4) angles in degrees
    c = curl[:, :4]
    mcp, pip = angle(c, cfg.mcp_flex, noise[:, 0:4]), angle(c, cfg.pip_flex, noise[:, 4:8])
    dip = np.clip(0.7 * pip + 3.0 * noise[:, 8:12], *cfg.dip_flex)
    spread = draws.uniform(-0.2, 1.0) * np.clip(1 - c.mean(1), 0, 1)  # (B,)
    abduction = np.array(cfg.spread) * spread[:, None] + 3.0 * draws.normal(1.0, (4,))
    # 3. the thumb
    oppose = np.clip(0.6 * g + 0.4 * draws.uniform(0, 1), 0, 1)  # (B,)
    across, under = angle(oppose, cfg.thumb_across, noise[:, 12]), angle(oppose, cfg.thumb_palmar, noise[:, 13])
    tip = np.deg2rad(angle(curl[:, 4], cfg.thumb_flex, draws.normal(1.0)))  # (B,)
    # 4. the composite rotations, converted in one batch: knuckle = spread @ flexion, thumb base = across @ under
    axes = np.concatenate([np.tile(normal, (4, 1)), flex[:4], -normal[None], palmar[None]])  # (10, 3)
    degrees = np.concatenate([abduction, mcp, across[:, None], under[:, None]], 1)  # (B, 10)
    R = _rotations(axes * np.deg2rad(degrees)[..., None])  # (B, 10, 3, 3)
    composite = np.concatenate([R[:, :4] @ R[:, 4:8], R[:, 8:9] @ R[:, 9:10]], 1)  # (B, 5, 3, 3)
    base = matrix_to_axis_angle(torch.from_numpy(composite)).numpy()  # (B, 5, 3)
    pip_aa, dip_aa = (flex[:4] * np.deg2rad(angle)[..., None] for angle in (pip, dip))  # pure flexions (B, 4, 3)
    fingers = np.stack([base[:, :4], pip_aa, dip_aa], 2)  # (B, 4, 3 joints, 3)
    thumb = np.stack([base[:, 4], flex[4] * 0.6 * tip[:, None], flex[4] * tip[:, None]], 1)[:, None]  # (B, 1, 3, 3)
    return np.concatenate([fingers, thumb], 1).reshape(-1, 15, 3)


def hand_orientations(draws, cfg=HandViewConfig()):
    """Global orientations (B, 3, 3) float64 numpy of rest-pose right hands in camera coordinates.

    Palm (or, with probability 1/2, back) towards the camera, tilted about a random in-plane axis
    by N(0, tilt_std), then rolled about the optical axis so that the fingers point up in the
    image on average, N(-90, roll_std) degrees (+x, the rest fingers' direction, turned to -y).
    """
    facing = np.where(draws.chance(0.5), 90.0, -90.0)  # +90 about x: palm (-y) -> -z, towards us
    tilt_axis = draws.uniform(0, 2 * math.pi)
    B = len(facing)
    axes = np.zeros((B, 3, 3))  # roll about z, tilt about (cos, sin, 0), face about x
    axes[:, 0, 2], axes[:, 1, 0], axes[:, 1, 1], axes[:, 2, 0] = 1, np.cos(tilt_axis), np.sin(tilt_axis), 1
    degrees = np.stack([-90.0 + draws.normal(cfg.roll_std_deg), draws.normal(cfg.tilt_std_deg), facing], 1)
    R = _rotations(axes * np.deg2rad(degrees)[..., None])  # (B, 3, 3, 3)
    roll, tilt, face = R[:, 0], R[:, 1], R[:, 2]
    return roll @ tilt @ face


def crop_intrinsics(points, image_size, fill, centre_offset):
    """Intrinsics of a crop (image_size int or (H, W)) around points (..., N, 3), as a detector's.

    Cropping a pinhole camera's image around the points' box and resizing it only sets the focal
    length f (so that the box's larger relative side is `fill` of the crop's) and moves the
    principal point (so that the box centre lands at the crop centre + centre_offset (..., 2) pixels).
    fill: a number or (...,). Returns K (..., 3, 3) float64.
    """
    height, width = _image_hw(image_size)
    size = torch.tensor([width, height], dtype=torch.float64)
    q = points[..., :2] / points[..., 2:]  # (..., N, 2) image coordinates at focal length 1
    low, high = q.amin(-2), q.amax(-2)
    f = torch.as_tensor(fill, dtype=torch.float64) / ((high - low) / size).amax(-1)  # (...,)
    K = torch.eye(3, dtype=torch.float64).repeat(*points.shape[:-2], 1, 1)
    K[..., 0, 0] = K[..., 1, 1] = f
    K[..., :2, 2] = size / 2 + torch.as_tensor(centre_offset) - f[..., None] * (low + high) / 2
    return K


# ---------------------------------------------------------------------------------------------
#    Pose priors: bodies


LEG_MODES = {  # name: probability, (thigh flexion range, knee range) of the two legs, in degrees
    "stand": (0.30, ((-5, 15), (0, 15)), ((-5, 15), (0, 15))),
    "walk": (0.22, ((10, 45), (0, 40)), ((-25, 0), (10, 60))),
    "run": (0.08, ((30, 75), (40, 110)), ((-35, -5), (40, 120))),
    "sit": (0.14, ((70, 100), (70, 110)), ((70, 100), (70, 110))),
    "squat": (0.08, ((95, 125), (110, 145)), ((95, 125), (110, 145))),
    "lunge": (0.10, ((50, 90), (50, 100)), ((-30, -5), (0, 60))),
    "kick": (0.08, ((50, 100), (0, 40)), ((-5, 15), (0, 15))),
}


ARM_MODES = {"down": (0.4, (5, 40)), "middle": (0.4, (35, 110)), "up": (0.2, (100, 170))}  # degrees from hanging down


X, Y, Z = torch.eye(3, dtype=torch.float64)  # the axes; rest limbs: legs -Y, left arm +X, right arm -X


def _choose(rng, modes):
    """A value of modes {name: (probability, *value)} drawn by probability."""
    probs = torch.tensor([m[0] for m in modes.values()], dtype=torch.float64)
    return list(modes.values())[int(torch.multinomial(probs, 1, generator=rng))][1:]


def _turn_to(rest, direction):
    """Axis-angle (..., 3) of the shortest turn taking unit vectors rest to direction (never opposite)."""
    axis = torch.linalg.cross(rest, direction, dim=-1)
    sin, cos = axis.norm(dim=-1, keepdim=True), (rest * direction).sum(-1, keepdim=True)
    return axis / sin.clamp_min(1e-12) * torch.atan2(sin, cos)


def sample_body_pose(rng, cfg=BodyPoseConfig()):
    """A plausible body pose: local rotations (22, 3, 3) float64 of SMPL / SMPL-X joints 0-21, joint 0
    the identity (the global orientation comes from `sample_body_orientation`).

    Limbs are posed by direction: a limb's rotation is the shortest turn from its T-pose direction
    to a drawn direction, then a twist about it. Turned that way, knees keep bending backwards
    about x and elbows forwards about -+y, their rest hinge axes.
    - Legs: one of LEG_MODES (standing, walking, running, sitting, squatting, lunging, kicking;
      the legs' roles swapped at random): thigh flexion and knee bend uniform in the mode's
      ranges (+ N(0, 4)), abduction in cfg.abduction, twist N(0, twist_std / 2), ankles jittered.
    - Arms, each on its own: hanging, half-raised or raised (ARM_MODES), pointing from slightly
      behind to straight forwards (cfg.arm_azimuth), twisted N(0, twist_std), the elbow bent by
      U(cfg.elbow) x U(0.3, 1), collar N(0, 5) and wrist N(0, wrist_std) per axis.
    - Spine: three joints each bent forwards in cfg.spine_flex and twisted / leaned N(0, spine_std);
      neck and head N(0, head_std / sqrt 2) per axis.
    """
    def n(std, *shape):  # Gaussian angles in degrees
        return _normal(rng, std, shape)

    sides = torch.tensor([1.0, -1.0], dtype=torch.float64)  # left, right
    # 1. legs: thigh direction from flexion f (forwards) and abduction a (outwards), from -Y
    legs = _choose(rng, LEG_MODES)
    legs = legs if torch.rand((), generator=rng) < 0.5 else legs[::-1]
    flex = torch.deg2rad(torch.stack([_uniform(rng, *leg[0]) for leg in legs]) + n(4.0, 2))
    knee = torch.stack([_uniform(rng, *leg[1]) for leg in legs]) + n(4.0, 2)
    abduct = torch.deg2rad(_uniform(rng, *cfg.abduction, (2,))) * sides
    thigh = torch.stack([flex.cos() * abduct.sin(), -flex.cos() * abduct.cos(), flex.sin()], -1)  # (2, 3)
    # 2. arms: direction from the angle away from hanging down and the azimuth (0 sideways, 90 forwards)
    down = torch.deg2rad(torch.stack([_uniform(rng, *_choose(rng, ARM_MODES)[0]) for _ in range(2)]))
    azimuth = torch.deg2rad(_uniform(rng, *cfg.arm_azimuth, (2,)))
    arm = torch.stack([sides * down.sin() * azimuth.cos(), -down.cos(), down.sin() * azimuth.sin()], -1)  # (2, 3)
    elbow = _uniform(rng, *cfg.elbow, (2,)) * _uniform(rng, 0.3, 1.0, (2,))
    # 3. every elementary turn as an axis-angle row, converted in one batch
    rest_leg, rest_arm = -Y.expand(2, 3), X * sides[:, None]
    turns = torch.cat([
        _turn_to(rest_leg, thigh), rest_leg * torch.deg2rad(n(cfg.twist_std / 2, 2))[:, None],  # 0-3 hips
        X * torch.deg2rad(knee.clamp(0, 150))[:, None],  # 4-5 knees
        X * torch.deg2rad(_uniform(rng, -20, 25, (2,)))[:, None], Z * torch.deg2rad(n(6.0, 2))[:, None],  # 6-9 ankles
        _turn_to(rest_arm, arm), rest_arm * torch.deg2rad(n(cfg.twist_std, 2))[:, None],  # 10-13 shoulders
        -Y * (sides * torch.deg2rad(elbow))[:, None],  # 14-15 elbows: left about -Y, right about +Y
        Z * (sides * torch.deg2rad(n(5.0, 2)))[:, None], Y * torch.deg2rad(n(5.0, 2))[:, None],  # 16-19 collars
        torch.deg2rad(n(cfg.wrist_std, 2, 3)),  # 20-21 wrists
        _euler_rows(torch.stack([_uniform(rng, *cfg.spine_flex, (3,)), n(cfg.spine_std, 3), n(cfg.spine_std, 3)], -1)),
        _euler_rows(n(cfg.head_std / math.sqrt(2), 2, 3)),  # 22-30 spine (3 x 3), 31-36 neck and head (2 x 3)
    ])
    T = axis_angle_to_matrix(turns)  # (37, 3, 3)
    R = torch.eye(3, dtype=torch.float64).repeat(22, 1, 1)
    R[[1, 2]], R[[4, 5]], R[[7, 8]] = T[0:2] @ T[2:4], T[4:6], T[6:8] @ T[8:10]
    R[[16, 17]], R[[18, 19]], R[[13, 14]], R[[20, 21]] = T[10:12] @ T[12:14], T[14:16], T[16:18] @ T[18:20], T[20:22]
    euler = T[22:37].view(5, 3, 3, 3)  # (joint, axis, 3, 3)
    R[[3, 6, 9, 12, 15]] = euler[:, 0] @ euler[:, 1] @ euler[:, 2]
    return R


def _euler_rows(degrees):
    """Angles (..., 3) in degrees about X, Y, Z -> their three axis-angle rows (... * 3, 3), whose
    rotations multiply in that order (Rx Ry Rz)."""
    return (torch.deg2rad(degrees)[..., None] * torch.eye(3, dtype=torch.float64)).reshape(-1, 3)


def sample_body_orientation(rng, cfg=BodyPoseConfig()):
    """Global orientation (3, 3) in camera coordinates (y down): upright (the T-pose's +y turned to
    the image's up, -y), facing the camera turned by N(0, 35) degrees with probability
    cfg.yaw_frontal_prob, else any way, and leaning by N(0, cfg.tilt_std) degrees."""
    frontal = torch.rand((), generator=rng) < cfg.yaw_frontal_prob
    yaw = _normal(rng, 35.0) if frontal else _uniform(rng, -180.0, 180.0)
    lean_axis = _uniform(rng, 0, 2 * math.pi)
    axes = torch.stack([X, torch.stack([lean_axis.cos(), torch.zeros(()), lean_axis.sin()]).double(), Y])
    upright, lean, turn = _rotation(axes, torch.stack([torch.tensor(180.0).double(), _normal(rng, cfg.tilt_std), yaw]))
    return upright @ lean @ turn  # upright: +y (up) -> -y, +z (front) -> -z (towards the camera)


def _segment_distance(p0, p1, q0, q1):
    """Smallest distance between segments [p0, p1] and [q0, q1], each (..., 3). -> (...)."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = (d1 * d1).sum(-1), (d2 * d2).sum(-1), (d2 * r).sum(-1)
    b, c = (d1 * d2).sum(-1), (d1 * r).sum(-1)
    denom = (a * e - b * b).clamp_min(1e-12)
    s = ((b * f - c * e) / denom).clamp(0, 1)
    t = ((b * s + f) / e.clamp_min(1e-12)).clamp(0, 1)
    s = ((b * t - c) / a.clamp_min(1e-12)).clamp(0, 1)
    return (p0 + d1 * s[..., None] - q0 - d2 * t[..., None]).norm(dim=-1)


# cheap self-intersection test on the posed joints: (segment a, segment b, minimum distance in metres)
_CLEARANCES = (((4, 7), (5, 8), 0.07), ((1, 4), (2, 5), 0.07), ((1, 4), (5, 8), 0.07), ((2, 5), (4, 7), 0.07),
               ((18, 20), (0, 12), 0.09), ((19, 21), (0, 12), 0.09), ((16, 18), (3, 12), 0.08),
               ((17, 19), (3, 12), 0.08), ((18, 20), (19, 21), 0.05), ((20, 20), (15, 15), 0.1),
               ((21, 21), (15, 15), 0.1), ((18, 20), (1, 4), 0.06), ((19, 21), (2, 5), 0.06))


def self_intersects(joints):
    """True when two body segments of joints (>= 22, 3) come closer than _CLEARANCES allows
    (legs through each other, forearms through the torso, hands in the head)."""
    index = torch.tensor([[a[0], a[1], b[0], b[1]] for a, b, _ in _CLEARANCES])
    p = joints[index]  # (C, 4, 3)
    distance = _segment_distance(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    return bool((distance < torch.tensor([c for _, _, c in _CLEARANCES], dtype=distance.dtype)).any())


def sample_plausible_body(rng, rest_joints, parents, cfg=BodyPoseConfig()):
    """`sample_body_pose` with the global orientation, re-drawn (up to cfg.max_tries) while
    `self_intersects`. Returns rotations (22, 3, 3) float64, joint 0 the global orientation."""
    for _ in range(cfg.max_tries):
        R = sample_body_pose(rng, cfg)
        if not self_intersects(forward_kinematics(R, rest_joints[:22], parents[:22])[0]):
            break
    R[0] = sample_body_orientation(rng, cfg)
    return R


# The design notes' tiny prior (shared/design/genhmr.md, Sec. 7): four "actions", each a fixed mean
# pose plus a rank-6 Gaussian, so that the joints move together (the correlated prior a pose tokenizer
# exists to capture) and a mean-pose guess is far from most people. Means are axis-angle (radians) per
# SMPL joint in the T-pose frame (y up, x the person's left, z their front): a shoulder about z raises
# or lowers its arm, about y swings it forwards; a hip about x (negative) lifts the thigh forwards, a
# knee about x (positive) bends it.
ACTION_MODES = {
    "neutral": {16: (0, 0, -1.25), 17: (0, 0, 1.25), 18: (0, -0.3, 0), 19: (0, 0.3, 0)},
    "arms_up": {16: (0, 0, 1.1), 17: (0, 0, -1.1), 18: (0, -0.4, 0), 19: (0, 0.4, 0), 12: (-0.2, 0, 0)},
    "squat": {1: (-1.4, 0, 0.15), 2: (-1.4, 0, -0.15), 4: (1.7, 0, 0), 5: (1.7, 0, 0), 7: (-0.3, 0, 0),
              8: (-0.3, 0, 0), 3: (0.35, 0, 0), 16: (0, -1.2, 0), 17: (0, 1.2, 0)},
    "stride": {1: (-0.6, 0, 0), 2: (0.4, 0, 0), 4: (0.3, 0, 0), 5: (0.7, 0, 0), 16: (0, 0.4, -1.2),
               17: (0, 0.4, 1.2), 18: (0, -0.5, 0), 19: (0, 0.5, 0)},
}
ACTION_RANK, ACTION_STD, ACTION_NOISE, ACTION_MAX = 6, (0.15, 0.5), 0.05, 2.0  # radians


@functools.lru_cache(maxsize=1)
def action_prior():
    """(means (4, 21, 3), bases (4, 6, 21, 3)) of the body joints 1-21, float64: fixed (seed 1234).
    Each basis row is Gaussian, scaled so that each joint's rotation vector has a std (the root of
    E ||theta_j - mean_j||^2) in ACTION_STD: s_j / sqrt(3) per component."""
    g = torch.Generator().manual_seed(1234)
    means = torch.zeros(len(ACTION_MODES), 21, 3, dtype=torch.float64)
    for m, joints in enumerate(ACTION_MODES.values()):
        for j, aa in joints.items():
            means[m, j - 1] = torch.tensor(aa, dtype=torch.float64)
    std = ACTION_STD[0] + (ACTION_STD[1] - ACTION_STD[0]) * torch.rand(
        len(ACTION_MODES), 1, 21, 1, generator=g, dtype=torch.float64)
    bases = (torch.randn(len(ACTION_MODES), ACTION_RANK, 21, 3, generator=g, dtype=torch.float64)
             * std / math.sqrt(3 * ACTION_RANK))
    return means, bases


def sample_action_body(rng):
    """A pose of the actions prior: rotations (22, 3, 3) float64, joint 0 the global orientation.

    Body: a mode drawn uniformly, theta = mean + basis^T z + n, z ~ N(0, I_6), n ~ N(0, 0.05^2) per
    component, each joint's angle clamped to 2 rad. Orientation: the camera flip (180 degrees about x)
    after pitch and roll N(0, 10) degrees after yaw U(-90, 90) degrees (the person faces the camera
    turned by up to a quarter turn)."""
    means, bases = action_prior()
    mode = int(torch.randint(len(means), (), generator=rng))
    z = torch.randn(ACTION_RANK, generator=rng, dtype=torch.float64)
    theta = means[mode] + torch.einsum("k,kjc->jc", z, bases[mode]) + _normal(rng, ACTION_NOISE, (21, 3))
    angle = theta.norm(dim=-1, keepdim=True)
    theta = theta * (ACTION_MAX / angle.clamp_min(ACTION_MAX))  # |theta_j| <= 2
    pitch_roll = _normal(rng, 10.0, (2,))
    flip, pitch, roll, yaw = _rotation(torch.stack([X, X, Z, Y]), torch.stack(
        [torch.tensor(180.0, dtype=torch.float64), pitch_roll[0], pitch_roll[1], _uniform(rng, -90.0, 90.0)]))
    return torch.cat([(flip @ pitch @ roll @ yaw)[None], axis_angle_to_matrix(theta)])


def place_in_crop(rng, verts, image_size, cfg, focal_length):
    """Translation t (3,) and intrinsics K (3, 3) (float64) that show verts (V, 3) + t centred in
    an H x W crop, the box's larger relative side filling cfg.fill of it.

    focal_length (pixels for a crop 256 pixels high, scaled with the height; HMR2.0 / GenHMR use 5000,
    a nearly orthographic camera): K is fixed with the principal point at the crop centre and t
    is solved for. None: the person stands cfg.distance away, off the optical axis, and K is
    the detector crop of a real camera (`crop_intrinsics`).
    """
    height, width = _image_hw(image_size)
    fill = _uniform(rng, *cfg.fill)
    offset = _normal(rng, cfg.centre_jitter, (2,)) * torch.tensor([width, height])
    centre = (verts.amax(0) + verts.amin(0)) / 2
    if focal_length is None:
        distance = _uniform(rng, *cfg.distance)
        off_axis = torch.tan(torch.deg2rad(_uniform(rng, -cfg.off_axis_deg, cfg.off_axis_deg, (2,))))
        t = torch.cat([off_axis * distance, distance[None]]) - centre
        return t, crop_intrinsics(verts + t, (height, width), fill, offset)
    f = focal_length * height / 256
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    size = torch.tensor([width, height], dtype=torch.float64)
    t = torch.cat([-centre[:2], (f * ((verts.amax(0) - verts.amin(0))[:2] / size).max() / fill - centre[2])[None]])
    xy, z = verts[:, :2], verts[:, 2:]

    def box():  # corners (2,) of the projection's box, uv = f (xy + t_xy) / (z + t_z) + size / 2 (= K (verts + t))
        uv = (xy + t[:2]) / (z + t[2])
        return f * uv.amin(0) + size / 2, f * uv.amax(0) + size / 2

    for _ in range(2):  # perspective makes the first guess slightly off: rescale, then recentre, on the projection
        low, high = box()
        t[2] = (centre[2] + t[2]) * ((high - low) / size).max() / fill - centre[2]
        low, high = box()
        t[:2] -= ((low + high) / 2 - size / 2 - offset) * (centre[2] + t[2]) / f
    return t, K


# ---------------------------------------------------------------------------------------------
# 9. Looks: skin, clothes, forearm, light


def skin_tones(draws):
    """Albedos (B, 3) float64 numpy of skin tones, uniform between light and dark, each channel varied by 8%."""
    light, dark = np.array([0.96, 0.80, 0.69]), np.array([0.36, 0.23, 0.16])
    t = draws.uniform(0, 1)[:, None]
    return ((light + (dark - light) * t) * draws.uniform(0.92, 1.08, (3,))).clip(0, 1)


def skin_colors(draws):
    """Hands' albedos (B, 3) float64 numpy: a skin tone, or (one in ten) a glove of any colour."""
    glove = draws.chance(0.1)[:, None]
    return np.where(glove, draws.uniform(0.1, 0.95, (3,)), skin_tones(draws))


# clothing: SMPL / SMPL-X joint ids (the vertex's strongest skinning weight) -> garment
_SHIRT, _SLEEVES, _TROUSERS, _SHINS, _SHOES = (3, 6, 9, 13, 14, 16, 17), (18, 19), (0, 1, 2), (4, 5), (7, 8, 10, 11)


def outfit_colors(rng, part, hair):
    """Per-vertex albedo (V, 3) from part (V,) (each vertex's strongest joint) and hair (V,) bool:
    a skin tone, a shirt with short or long sleeves, long trousers or shorts, shoes, hair."""
    table = torch.from_numpy(skin_tones(Draws([rng]))).float().repeat(int(part.max()) + 1, 1)  # (J, 3)
    shirt, trousers = _uniform(rng, 0.05, 0.95, (3,)).float(), _uniform(rng, 0.05, 0.7, (3,)).float()
    table[list(_SHIRT)] = shirt
    if torch.rand((), generator=rng) < 0.5:
        table[list(_SLEEVES)] = shirt
    table[list(_TROUSERS)] = trousers
    if torch.rand((), generator=rng) < 0.7:
        table[list(_SHINS)] = trousers
    table[list(_SHOES)] = _uniform(rng, 0.02, 0.4, (3,)).float()
    colors = table[part]
    colors[hair] = _uniform(rng, 0.02, 0.5).float() * torch.tensor([1.0, 0.8, 0.6])
    return colors


def suit_colors(part):
    """Per-vertex albedo (V, 3) of a body suit with one fixed colour per joint (the vertex's strongest,
    part (V,)): hues spaced by the golden ratio, so that neighbours and left / right differ (the
    design notes' tiny setting: a 64 px crop then shows which limb is where, and which side)."""
    j = torch.arange(int(part.max()) + 1, dtype=torch.float64)
    hue, sat, val = (j * 0.618034) % 1.0, 0.55 + 0.4 * ((j * 0.37) % 1.0), 0.6 + 0.35 * ((j * 0.71) % 1.0)
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue[:, None] * 6) % 6  # HSV -> RGB
    rgb = val[:, None] - val[:, None] * sat[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return rgb.float()[part]


def _rig(model):
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


def open_loop(faces):
    """The vertex ids (L,) around the one opening of a mesh (MANO's wrist), in the order of its
    faces' border edges. faces (F, 3) int64."""
    half = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # (3F, 2) directed edges
    twins = torch.cat([half, half.flip(1)])
    _, inverse, counts = torch.unique(twins, dim=0, return_inverse=True, return_counts=True)
    border = half[counts[inverse[:len(half)]] == 1]  # directed edges whose reverse no face has
    after = dict(border.tolist())
    loop = [border[0, 0].item()]
    while after[loop[-1]] != loop[0]:
        loop.append(after[loop[-1]])
    return torch.tensor(loop)


def forearm_faces(loop, num_verts):
    """Faces of a forearm tube (3 rings of L vertices, numbered from num_verts) glued to the
    opening `loop` (L,) with matching winding, and closed by a fan at its far end (one more vertex)."""
    L = len(loop)
    rings = torch.cat([loop[None], num_verts + torch.arange(2 * L).view(2, L)])  # (3, L) vertex ids
    i, j = torch.arange(L), torch.arange(1, L + 1) % L
    faces = []
    for near, far in ((rings[0], rings[1]), (rings[1], rings[2])):
        # the hand's faces run along the loop i -> j, so the tube's run j -> i
        faces += [torch.stack([near[j], near[i], far[i]], 1), torch.stack([near[j], far[i], far[j]], 1)]
    end = torch.full((L,), num_verts + 2 * L)
    faces.append(torch.stack([rings[2][j], rings[2][i], end], 1))
    return torch.cat(faces)  # (5 L, 3)


def forearm_verts(verts, loop, wrist, knuckle, length=0.3, sleeve_start=0.04):
    """Vertices (..., 2 L + 1, 3) of a forearm tube leaving the hand's opening verts[..., loop, :]
    away from the knuckle (..., 3) (the middle finger's base) through the wrist joint (..., 3): a
    ring at sleeve_start, one `length` metres out and 15% wider, and the far end's centre."""
    ring = verts[..., loop, :]  # (..., L, 3)
    centre = ring.mean(-2, keepdim=True)  # (..., 1, 3)
    direction = F.normalize(wrist - knuckle, dim=-1)[..., None, :]
    near = centre + direction * sleeve_start + (ring - centre) * 1.03
    far = centre + direction * length + (ring - centre) * 1.15
    return torch.cat([near, far, centre + direction * length], -2)


def random_lights(draws):
    """Light directions (B, 3) and ambient shares (B,), float64 numpy: from the camera's side,
    anywhere across it, ambient 0.25-0.55."""
    direction = draws.uniform(0, 1, (3,)) * np.array([2.0, 2.0, -0.7]) + np.array([-1.0, -1.0, -0.3])
    return direction, draws.uniform(0.25, 0.55)


# ---------------------------------------------------------------------------------------------
# 10. Backgrounds


def flat_background(rng, hw):
    """(3, H, W) float32: one colour U(0.05, 0.95)^3 plus N(0, 0.03^2) per pixel (the design notes' tiny setting)."""
    colour = _uniform(rng, 0.05, 0.95, (3, 1, 1)).float()
    return (colour + 0.03 * torch.randn(3, *hw, generator=rng)).clamp(0, 1)


def _check_look(who, colors, background, backgrounds):
    if colors not in ("clothes", "suit"):
        raise ValueError(f"{who}: colors must be 'clothes' or 'suit', got {colors!r}")
    if background not in backgrounds:
        raise ValueError(f"{who}: background must be one of {backgrounds}, got {background!r}")


def background_patterns(draws, low_res=32):
    """Random patterns (B, 3, L, L) float64 numpy, L = low_res, to upsample into background images.

    A colour gradient at a random angle, plus low-frequency colour noise, plus (each with
    probability 1/2) soft stripes of a random frequency, angle and colour, and 1-5 coloured
    blobs. Everything is drawn at low_res x low_res and upsampled bilinearly, which keeps it
    cheap and free of sharp edges a model could confuse with a silhouette.
    """
    lin = (np.arange(low_res) + 0.5) / low_res
    ys, xs = np.meshgrid(lin, lin, indexing="ij")  # (L, L) in [0, 1]

    def ramp(angle):  # (B, L, L): position along the direction at angle (B,)
        return xs * np.cos(angle)[:, None, None] + ys * np.sin(angle)[:, None, None]

    # 1. gradient between two random colours
    t = ramp(draws.uniform(0, 2 * math.pi))
    low, high = t.min((1, 2), keepdims=True), t.max((1, 2), keepdims=True)
    t = ((t - low) / (high - low))[:, None]  # (B, 1, L, L)
    c0, c1 = draws.uniform(0, 1, (2, 3, 1, 1)).transpose(1, 0, 2, 3, 4)  # (B, 3, 1, 1) each
    image = c0 + (c1 - c0) * t  # (B, 3, L, L)
    # 2. low-frequency noise: 4 x 4 values per channel, upsampled bicubically (as F.interpolate)
    noise = draws.uniform(0.0, 0.25)[:, None, None, None] * draws.normal(1.0, (3, 4, 4))
    up = _cubic_upsampling(4, low_res)  # (L, 4)
    image = image + up @ noise @ up.T
    # 3. stripes (half of the time: alpha = 0 otherwise)
    stripes = draws.chance(0.5)
    angle, freq, phase = draws.uniform(0, math.pi), draws.uniform(1.5, 7), draws.uniform(0, 2 * math.pi)
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq[:, None, None] * ramp(angle) + phase[:, None, None])
    alpha = (stripes * draws.uniform(0.2, 0.8))[:, None, None, None] * wave[:, None]  # (B, 1, L, L)
    image = image * (1 - alpha) + draws.uniform(0, 1, (3, 1, 1)) * alpha
    # 4. blobs (half of the time, 1-5 of them: the others get alpha = 0)
    count = np.where(draws.chance(0.5), np.floor(draws.uniform(1, 6)), 0)  # (B,)
    centre, radius = draws.uniform(0, 1, (5, 2, 1, 1)), draws.uniform(0.05, 0.25, (5, 1, 1))
    colours = draws.uniform(0, 1, (5, 3, 1, 1))
    for i in range(5):
        d2 = (xs - centre[:, i, 0]) ** 2 + (ys - centre[:, i, 1]) ** 2  # (B, L, L)
        alpha = ((i < count)[:, None, None] * np.exp(-d2 / (2 * radius[:, i] ** 2)))[:, None]  # (B, 1, L, L)
        image = image * (1 - alpha) + colours[:, i] * alpha
    return image


@functools.lru_cache(maxsize=4)
def _cubic_upsampling(low, high):
    """The (high, low) float64 numpy matrix of F.interpolate(mode="bicubic", align_corners=False) along one axis."""
    eye = torch.eye(low, dtype=torch.float64)[:, None, :, None].expand(low, 1, low, 1)  # unit impulses as columns
    return F.interpolate(eye, size=(high, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.numpy()


def upsample_backgrounds(patterns, height, width):
    """patterns (B, 3, L, L) -> (B, 3, H, W) in [0, 1], bilinear (as F.interpolate with
    align_corners=False): along the width by a small matrix product, then every output row is a
    lerp of two rows, r0 + w (r1 - r0). Several times faster than F.interpolate on one core."""
    low = patterns.shape[-1]
    rows = patterns @ _linear_upsampling(low, width).T  # (B, 3, L, W)
    U = _linear_upsampling(low, height)  # (H, L): at most two adjacent taps per row
    first = (U > 0).int().argmax(1)  # (H,) r0's row
    second = (first + 1).clamp_(max=low - 1)
    weight = torch.where(second > first, U.gather(1, second[:, None])[:, 0], 0.0)[:, None]  # (H, 1) w
    return torch.lerp(rows.index_select(-2, first), rows.index_select(-2, second), weight).clamp_(0, 1)


@functools.lru_cache(maxsize=16)
def _linear_upsampling(low, high):
    """The (high, low) matrix of F.interpolate(mode="linear", align_corners=False) from low to high samples."""
    eye = torch.eye(low)[:, None, :]  # (low, 1, low): one unit impulse per row
    return F.interpolate(eye, size=high, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


# ---------------------------------------------------------------------------------------------
# 11. Renderer
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


def _rasterize(verts, faces, K, height, width, cull_backfaces=False, mirrored=None, zbuffer=None):
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


def _scratch_zbuffer(owner, size):
    """The z-buffer `owner._scratch` (a dataset's, not pickled, so rebuilt in each worker), grown
    to at least `size` entries, all -1, for `_rasterize` to use and leave empty again."""
    if owner._scratch is None or len(owner._scratch) < size:
        owner._scratch = torch.full((size,), -1, dtype=torch.long)
    return owner._scratch


def rasterize(verts, faces, K, image_size, cull_backfaces=False):
    """Z-buffer: the nearest face under every pixel centre.

    verts (V, 3) camera coordinates, faces (F, 3) int, K (3, 3), image_size int or (H, W).
    Returns pix (P,) flat ids row * W + col of the covered pixels (sorted), face (P,) the id of the
    visible face there, and bary (P, 3) float32 barycentric weights in the image plane.
    Faces with a vertex behind the near plane are dropped. Both windings are drawn unless
    cull_backfaces, which drops faces whose corners run clockwise seen from the camera (the back
    faces of a closed mesh with counter-clockwise outward winding, as SMPL's and MANO's).
    """
    height, width = _image_hw(image_size)
    pix, face, du, dv, (keep, _, a, b) = _rasterize(verts.float()[None], faces.long(), K.float()[None], height,
                                                    width, cull_backfaces)
    bary = a.index_select(1, face) * du + b.index_select(1, face) * dv  # (3, P)
    bary[0] += 1
    return pix, keep.index_select(0, face), bary.T.contiguous()


def reference_rasterize(verts, faces, K, image_size):
    """The z-buffer written the short way, to check `rasterize` against: every pixel centre tested
    against every face (memory H W F), in float64.

    verts (V, 3) camera coordinates, faces (F, 3), K (3, 3), image_size int or (H, W). Returns
    face (H W,) the nearest face under each pixel centre (-1 = empty), margin (H W,) the smallest
    |barycentric weight| of that pixel over all faces (small: near an edge, where the two
    renderers may round differently) and gap (H W,) the inverse-depth gap between the two nearest
    faces (small: a depth tie).
    """
    height, width = _image_hw(image_size)
    uvw = verts.double() @ K.double().T
    tri = (uvw[:, :2] / uvw[:, 2:])[faces]  # (F, 3, 2) image-plane corners
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    p = torch.stack([xs.flatten(), ys.flatten()], -1).double()[:, None, :]  # (P, 1, 2) pixel centres
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]  # (F, 2)

    def cross(o, q, r):  # z of (q - o) x (r - o), broadcast to (P, F)
        return (q[..., 0] - o[..., 0]) * (r[..., 1] - o[..., 1]) - (q[..., 1] - o[..., 1]) * (r[..., 0] - o[..., 0])

    area = cross(a, b, c)  # (F,)
    l0, l1, l2 = cross(p, b, c) / area, cross(p, c, a) / area, cross(p, a, b) / area  # (P, F) barycentric
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    z = verts[:, 2].double()[faces]  # (F, 3)
    # nearest = largest
    inv_z = torch.where(inside, l0 / z[:, 0] + l1 / z[:, 1] + l2 / z[:, 2], torch.full_like(l0, -1.0))
    best = inv_z.argmax(1)
    face = torch.where(inside.any(1), best, torch.full_like(best, -1))
    margin = torch.stack([l0, l1, l2]).abs().amin(0).amin(1)  # (P,)
    top2 = inv_z.topk(2, dim=1).values if inv_z.shape[1] > 1 else torch.cat([inv_z, -inv_z], 1)
    return face, margin, top2[:, 0] - top2[:, 1]


def _corner_ids(faces, count, num_verts):
    """(3 corners, count F) ids of the corners of faces (F, 3) in count stacked meshes of num_verts vertices."""
    return (faces.T.contiguous()[:, None] + num_verts * torch.arange(count, device=faces.device)[:, None]).view(3, -1)


def render_mesh(verts, faces, K, image_size, color=(0.85, 0.64, 0.52), light=(0.4, -0.6, -1.0),
                ambient=0.35, background=None, return_mask=False, cull_backfaces=False):
    """A shaded image of a triangle mesh through a pinhole camera.

    verts (V, 3) camera coordinates (x right, y down, z forward), faces (F, 3), K (3, 3),
    image_size int or (H, W). color (3,) or per-vertex (V, 3) albedo in [0, 1]; light (3,) the
    direction from the surface towards the light in camera coordinates (the default lights from
    the upper left, on the camera's side); ambient in [0, 1] the unlit share; background
    (3, H, W) in [0, 1] or None for black; cull_backfaces as in `rasterize` (about twice as fast
    for closed meshes). Returns image (3, H, W) float32 in [0, 1], and with return_mask=True
    also mask (H, W) bool, True where the mesh covers the pixel. `render_meshes` draws a batch.

    Shading is Lambert + ambient with per-vertex normals, interpolated over faces (Gouraud):
        I = albedo * (ambient + (1 - ambient) * max(0, n . light))
    Normals are turned towards the camera first, so either winding (and mirrored meshes) shade
    the same.
    """
    background = None if background is None else background[None]
    images, pix, _ = _render(verts[None], faces, K[None], image_size, torch.as_tensor(color)[None],
                             torch.as_tensor(light)[None], torch.as_tensor(ambient)[None], background, cull_backfaces)
    if return_mask:
        mask = torch.zeros(images[0, 0].numel(), dtype=torch.bool, device=images.device)
        mask[pix] = True
        return images[0], mask.view(images.shape[-2:])
    return images[0]


def render_meshes(verts, faces, K, image_size, color, light, ambient, background=None, cull_backfaces=False,
                  mirrored=None):
    """`render_mesh` for a batch of B meshes with one topology, in one pass (several times faster
    per image on a CPU than one by one: the work is the same, the per-call overheads are shared).

    verts (B, V, 3), faces (F, 3), K (B, 3, 3), color (B, 3) or (B, V, 3), light (B, 3),
    ambient (B,), background (B, 3, H, W) or None; mirrored (B,) bool marks meshes mirrored
    (x -> -x) from their faces' winding, for cull_backfaces. Returns images (B, 3, H, W).
    """
    return _render(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored)[0]


def _render(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored=None,
            draw_on_background=False, zbuffer=None):
    """`render_meshes`, also returning pix (P,) the covered pixels as ids into the (B, H, W) stack
    and face (P,) their faces as ids into the B F faces (mesh-major). draw_on_background=True
    draws into background (contiguous float32 on verts' device, which the caller gives up) instead
    of into a copy of it; zbuffer: a scratch buffer for `_rasterize`."""
    height, width = _image_hw(image_size)
    B, V = verts.shape[:2]
    device = verts.device
    verts, faces = verts.float(), faces.long().to(device)
    # 1. per-vertex colour: albedo times the Lambert term, axis-major (3, B V) so rows are contiguous
    xyz = verts.reshape(-1, 3).T  # (3, B V)
    normals = bodymodels.vertex_normals(verts, faces).permute(2, 0, 1)  # (3, B, V), a view of an axis-major sum
    light = F.normalize(torch.as_tensor(light, dtype=torch.float32, device=device), dim=-1).T[:, :, None]  # (3, B, 1)
    ambient = torch.as_tensor(ambient, dtype=torch.float32, device=device).reshape(B, 1)
    albedo = torch.as_tensor(color, dtype=torch.float32, device=device).reshape(B, -1, 3)  # (B, V or 1, 3)
    albedo = albedo.permute(2, 0, 1)  # (3, B, V or 1)
    # normals turned towards the camera (n . x < 0), so either winding shades the same
    lambert = (normals * light).sum(0) * torch.where((normals * xyz.reshape(3, B, V)).sum(0) > 0, -1.0, 1.0)
    shaded = (albedo * (ambient + (1 - ambient) * lambert.clamp_min_(0))).reshape(3, B * V)
    # 2. visible faces; colour is linear over a face: c = c_0 + (sum_i a_i c_i) du + (sum_i b_i c_i) dv
    pix, face, du, dv, (keep, corners, a, b) = _rasterize(verts, faces, K.float().to(device), height, width,
                                                          cull_backfaces, mirrored, zbuffer)
    corner = shaded.index_select(1, corners.reshape(-1)).view(3, 3, -1)  # (3 channels, 3 corners, Fk)
    plane = torch.cat([corner[:, 0], (a * corner).sum(1), (b * corner).sum(1)])  # (9, Fk)
    plane = plane.index_select(1, face)  # (9, P)
    rgb = (plane[0:3] + plane[3:6] * du + plane[6:9] * dv).clamp_(0, 1)  # (3, P)
    # 3. composite over the backgrounds: pixel g = b H W + p of channel c sits at (3 b + c) H W + p
    if background is None:
        images = torch.zeros(B, 3, height, width, device=device)
    elif draw_on_background:
        images = background.view(B, 3, height, width)  # the caller's scratch tensor, drawn into
    else:
        images = background.to(device, torch.float32, copy=True).reshape(B, 3, height, width)
    HW = height * width
    at = pix + 2 * HW * torch.div(pix, HW, rounding_mode="floor")  # channel 0 of each covered pixel
    for c in range(3):  # channel c of those pixels: the same ids into the flat images shifted by c H W
        images.view(-1)[c * HW:].index_copy_(0, at, rgb[c])
    return images, pix, keep.index_select(0, face)



if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Synthetic data: save sample grids or measure speed.")
    parser.add_argument("--grid", metavar="OUT_DIR", help="save a PNG grid of samples of each synthetic dataset here")
    parser.add_argument("--bench", action="store_true", help="print samples per second of each dataset on one thread")
    parser.add_argument("--count", type=int, default=200, help="samples timed per dataset by --bench")
    args = parser.parse_args()
    if args.grid:
        for path in _grid(args.grid):
            print(f"saved {path}")
    if args.bench:
        _bench(args.count)
    if not (args.grid or args.bench):
        parser.print_help()
