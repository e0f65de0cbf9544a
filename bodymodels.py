"""Body models, the ground floor of the three paper files: conventions, rotations, cameras, joint orders,
skinning, model-file loaders, hands on a body. It imports no module of this project; where no model files exist
its loaders use the stand-ins a project registers (`standin_models`: this project's lab registers its own).

Conventions (every function in this file follows them; the paper files rely on them):

- Column vectors: a rotation acts as x' = R x, so a batch of points (..., N, 3) is rotated by
  `points @ R.transpose(-1, -2)`. This is what smplx's LBS and HMR2.0/HaMeR use.
- Axis-angle (..., 3): the direction is the axis n, the length the angle theta in radians, with
  R = exp([theta n]_x). MANO, SMPL and SMPL-X poses are axis-angle, one 3-vector per joint.
- 6D rotation (..., 6) = the first two COLUMNS of R, as in HMR2.0/HaMeR: x = [R[..., :, 0], R[..., :, 1]],
  i.e. `R[..., :, :2].transpose(-1, -2).reshape(..., 6)`. Gram-Schmidt turns any 6 numbers back
  into a rotation. pytorch3d reads the same 6 numbers as the first two ROWS (its matrix is the
  transpose of ours), and SPIN's original `x.view(-1, 3, 2)` interleaves the two columns: weights
  trained under one reading are wrong under the others.
- Units: metres and radians; pixels only where a function says so.
- Cameras: camera coordinates are OpenCV's (x right, y down, z forward, away from the camera).
  A pinhole with intrinsics K (3, 3) maps a point X to uv = (K X)[:2] / (K X)[2], in pixels.
  HMR2.0/HaMeR's head predicts a weak-perspective camera [s, tx, ty] for a square crop of S = 256
  pixels; with a fixed focal length f = 5000 it becomes the translation t = [tx, ty, 2 f / (S s)],
  and points project with focal f / S and principal point 0, into normalised crop coordinates
  in [-0.5, 0.5] (crop pixel = (u + 0.5) S). CLIFF's `cam_crop_to_full` moves that camera to the
  full image (focal f / S * max(W, H), principal point at the image centre).
- Both float32 and float64 are supported; functions keep the dtype and device of their input.

Symbols: B batch, N points, J joints, V vertices, F faces, R rotation matrix, theta angle,
n unit axis, K intrinsics, f focal length (pixels), S crop size (pixels), s weak-perspective scale,
t = [tx, ty, tz] translation, b box size (pixels), (cx, cy) box centre, (W, H) image size.

Map of the file. Part I, the reference:
1. Rotations: axis-angle <-> matrix <-> 6D, and `mirror_rotation` (left hands <-> right hands).
2. Cameras: perspective projection, weak perspective -> translation, crop -> full image.
3. Kinematic trees and joint orders (MANO, SMPL, SMPL-X, FreiHAND); `hand_joints21` / `mano_to_freihand`
   (fingertips by convention: FreiHAND's or smplx/HaMeR's).
4. Forward kinematics and linear blend skinning: `forward_kinematics`, `lbs`, `Skinning`.
5. Mesh normals: `face_normals`, `vertex_normals`.
6. Loaders: `load_mano`, `load_smpl`, `load_smplx` (real files, or registered stand-ins), and
   `load_state_strict` (a mapped checkpoint into a module, every wrong key named).
7. Crops: `crop_box` (a box grown to an aspect), `crop_matrix` (a crop's pixel transform),
   `warp_image`, `crop_translation_to_full` (a crop's camera moved to the full image's, CLIFF's); hand crops:
   `crop_images` (grid_sample) and `hamer_crops` (HaMeR's, to the bit: `hamer_square`, `gaussian_blur`, `cv2_warp`).
8. Hands on a body: `attach_hands` (MANO hand results, HaMeR's left-hand and hands_mean conventions
   included, onto an SMPL-X body: fingers turned into SMPL-X's hand frame, wrists by IK),
   `hand_frames` (what relates the two models' hands), `fit_mano` (MANO parameters from 778 vertices).
Part II, the machinery: reading model files safely, `atomic_write`.
"""

import contextlib
import functools
import io
import os
import pickle
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# 1. Rotations

_SMALL = 1e-6  # below this squared angle (or squared sine) Taylor series replace 0 / 0


def _check_shape(x, tail, name):
    """Raise a ValueError naming `name` unless x.shape ends with `tail`."""
    if x.dim() < len(tail) or tuple(x.shape[-len(tail):]) != tail:
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {tuple(x.shape)}")


def _skew(v):
    """Cross-product matrix [v]_x with [v]_x y = v x y. (..., 3) -> (..., 3, 3)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(aa):
    """Rodrigues' formula. aa (..., 3) -> R (..., 3, 3).

    R = I + a [aa]_x + b [aa]_x^2 with a = sin(theta) / theta, b = (1 - cos(theta)) / theta^2,
    written in theta^2 so that the value and the gradient stay finite at aa = 0.
    """
    _check_shape(aa, (3,), "axis_angle_to_matrix")
    # 1. theta^2, and a theta that is safe to divide by (the small branch never uses it)
    theta2 = (aa * aa).sum(-1)[..., None, None]  # (..., 1, 1)
    small = theta2 < _SMALL
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    # 2. a and b; b = 2 sin^2(theta/2) / theta^2 avoids the cancellation in 1 - cos(theta)
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(theta) / theta)
    half = torch.sin(theta / 2) / (theta / 2)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, 0.5 * half * half)
    # 3. Rodrigues
    k = _skew(aa)  # (..., 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(R):
    """Logarithm of a rotation. R (..., 3, 3) -> aa (..., 3), angle theta in [0, pi].

    Exact near 0 and near pi. R - R^T holds sin(theta) n, which vanishes at both ends, so:
    below pi/2 aa = theta / sin(theta) * v (a Taylor series near 0), and above pi/2 the axis comes
    from the symmetric part, (R + R^T) / 2 - cos(theta) I = (1 - cos(theta)) n n^T, which is
    well conditioned there. At exactly pi, aa and -aa are the same rotation; either may come
    back. Gradients are finite at R = I.
    """
    _check_shape(R, (3, 3), "matrix_to_axis_angle")
    # 1. v = sin(theta) n from the antisymmetric part, c = cos(theta) from the trace
    v = 0.5 * torch.stack([R[..., 2, 1] - R[..., 1, 2],
                           R[..., 0, 2] - R[..., 2, 0],
                           R[..., 1, 0] - R[..., 0, 1]], dim=-1)  # (..., 3)
    c = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)[..., None]  # (..., 1)

    # 2. theta <= pi/2: aa = theta / sin(theta) * v; near 0, asin(s)/s = 1 + s^2/6 + 3 s^4/40
    s2 = (v * v).sum(-1, keepdim=True)  # sin^2(theta)
    small = s2 < _SMALL
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    factor = torch.where(small, 1 + s2 / 6 + 3 * s2**2 / 40, torch.atan2(s, c) / s)
    aa_low = factor * v

    # 3. theta > pi/2: n = the column of (1 - c) n n^T with the largest diagonal, normalised,
    #    signed so that sin(theta) = n . v >= 0; theta = atan2(n . v, c) needs no square root
    B = 0.5 * (R + R.transpose(-1, -2)) - c[..., None] * torch.eye(3, dtype=R.dtype, device=R.device)
    k = B.diagonal(dim1=-2, dim2=-1).argmax(-1)  # (...,)
    col = torch.gather(B, -1, k[..., None, None].expand(*B.shape[:-1], 1))[..., 0]  # (..., 3)
    norm2 = torch.where(c > 0, torch.ones_like(c), (col * col).sum(-1, keepdim=True))
    n = col / norm2.sqrt()
    sin = (n * v).sum(-1, keepdim=True)
    n = torch.where(sin < 0, -n, n)
    aa_high = torch.atan2(sin.abs(), c) * n

    return torch.where(c > 0, aa_low, aa_high)


def rot6d_to_matrix(x):
    """6D -> rotation by Gram-Schmidt (Zhou et al. 2019). x (..., 6) -> R (..., 3, 3).

    x[..., :3] and x[..., 3:] are the first and second COLUMNS of R (HMR2.0/HaMeR convention).
    """
    _check_shape(x, (6,), "rot6d_to_matrix")
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


def matrix_to_rot6d(R):
    """R (..., 3, 3) -> x (..., 6) = [R[..., :, 0], R[..., :, 1]] (first two columns)."""
    _check_shape(R, (3, 3), "matrix_to_rot6d")
    return R[..., :, :2].transpose(-1, -2).flatten(-2)


def mirror_rotation(x, matrix=False):
    """The same turn seen in the mirror x -> -x: R -> M R M with M = diag(-1, 1, 1).

    Axis-angle (..., 3), or flat (..., 3 k) rows of k of them: (ax, ay, az) -> (ax, -ay, -az), since
    an axis is a pseudovector (its components along the mirror plane flip). matrix=True: R (..., 3, 3).
    A left hand is the mirror image of a right one, so its MANO pose is the mirror of the right
    hand's (smplx's MANO_LEFT, HaMeR's flip). Tensors or numpy arrays; the type is kept.
    """
    if matrix:
        m = x.new_tensor([-1.0, 1.0, 1.0]) if torch.is_tensor(x) else np.array([-1.0, 1.0, 1.0])
        return x * m[:, None] * m[None, :]
    m = x.new_tensor([1.0, -1.0, -1.0]) if torch.is_tensor(x) else np.array([1.0, -1.0, -1.0])
    return (x.reshape(*x.shape[:-1], -1, 3) * m).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# 2. Cameras


def perspective_projection(points, K):
    """Pinhole projection. points (..., N, 3) camera coordinates, K (..., 3, 3) -> uv (..., N, 2) pixels.

    uv = (K X)[:2] / (K X)[2]. Points must lie in front of the camera (z > 0).
    """
    if points.shape[-1] != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"perspective_projection: expected points (..., N, 3) and K (..., 3, 3), "
                         f"got points {tuple(points.shape)} and K {tuple(K.shape)}")
    p = points @ K.transpose(-1, -2)  # (..., N, 3)
    return p[..., :2] / p[..., 2:]


def weak_perspective_to_translation(cam, focal_length=5000.0, crop_size=256.0):
    """HMR2.0/HaMeR camera head output -> translation. cam (..., 3) = [s, tx, ty] -> t (..., 3).

    A model whose root sits at depth tz seen with focal f in a crop of S pixels looks scaled by
    f / tz in pixels, i.e. by s / 2 in normalised crop units ([-0.5, 0.5]) when tz = 2 f / (S s).
    """
    s, tx, ty = cam.unbind(-1)
    # t = [tx, ty, 2 f / (S s)]; the 1e-9 keeps s = 0 finite, as in HMR2.0/HaMeR's code
    tz = 2 * focal_length / (crop_size * s + 1e-9)
    return torch.stack([tx, ty, tz], dim=-1)


def project_to_crop(points, cam_t, focal_length=5000.0, crop_size=256.0):
    """HMR2.0/HaMeR's 2D keypoints. points (..., N, 3), cam_t (..., 3) -> uv (..., N, 2).

    Focal f / S and principal point 0 give normalised crop coordinates: the crop spans
    [-0.5, 0.5] (crop pixel = (uv + 0.5) * S).
    """
    p = points + cam_t[..., None, :]  # (..., N, 3)
    return (focal_length / crop_size) * p[..., :2] / p[..., 2:]


def cam_crop_to_full(cam, box_center, box_size, image_size, focal_length=5000.0, crop_size=256.0):
    """CLIFF: a crop's weak-perspective camera -> translation in the full image's camera.

    cam (..., 3) = [s, tx, ty] for a square box of `box_size` (...) pixels centred at
    `box_center` (..., 2); image_size (..., 2) = [W, H]. Returns t (..., 3) for the camera
    `full_image_intrinsics(image_size)`: focal f / S * max(W, H), principal point (W/2, H/2).
    Points on the root's depth plane then land exactly where the crop camera put them.
    """
    cam = torch.as_tensor(cam)
    box_center, box_size, image_size = (torch.as_tensor(a, dtype=cam.dtype, device=cam.device)
                                        for a in (box_center, box_size, image_size))
    s, tx, ty = cam.unbind(-1)
    cx, cy = box_center.unbind(-1)
    W, H = image_size.unbind(-1)
    f_full = focal_length / crop_size * torch.maximum(W, H)
    bs = box_size * s + 1e-9  # b s = 2 x (pixels per metre at the root's depth)
    # tz = 2 f_full / (b s),  tx' = tx + 2 (cx - W/2) / (b s),  ty' = ty + 2 (cy - H/2) / (b s)
    return torch.stack([tx + 2 * (cx - W / 2) / bs, ty + 2 * (cy - H / 2) / bs, 2 * f_full / bs], dim=-1)


def full_image_intrinsics(image_size, focal_length=5000.0, crop_size=256.0, dtype=None):
    """The camera that `cam_crop_to_full` assumes. image_size (..., 2) = [W, H] -> K (..., 3, 3).

    Focal f / S * max(W, H) and principal point (W/2, H/2); integer sizes give float32.
    """
    image_size = torch.as_tensor(image_size, dtype=dtype)
    W, H = image_size.unbind(-1)
    f = focal_length / crop_size * torch.maximum(W, H)
    o, i = torch.zeros_like(f), torch.ones_like(f)
    return torch.stack([f, o, W / 2, o, f, H / 2, o, o, i], dim=-1).unflatten(-1, (3, 3))


# ---------------------------------------------------------------------------------------------
# 3. Kinematic trees and joint orders (parents[j] < j: a parent always comes before its child)

# MANO (16): wrist; index 1-3; middle 4-6; pinky 7-9; ring 10-12; thumb 13-15
MANO_JOINT_NAMES = ("wrist",) + tuple(f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb")
                                      for i in (1, 2, 3))
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
MANO_MCP_JOINTS = {"index": 1, "middle": 4, "pinky": 7, "ring": 10, "thumb": 13}
# Fingertip vertex ids (thumb, index, middle, ring, pinky), by the convention of the data joints
# are compared with. FreiHAND's annotations and the official simpleHand (`mesh_to_joints`) take
# 555 and 672 for ring and pinky; smplx and HaMeR (and so HMR-Adapter's hand expert) 554 and 671,
# their neighbours: 4.2 and 3.0 mm apart on the real MANO template, a 0.68 mm PA-MPJPE floor when
# a perfect mesh is scored with one convention against joints of the other. (manopth: 745, 317,
# 444, 556, 673, not used here.) Pick one with `hand_joints21(..., convention)`.
FINGERTIP_VERTS = {"freihand": (744, 320, 443, 555, 672), "hamer": (744, 320, 443, 554, 671)}

# FreiHAND / OpenPose (21): wrist; thumb 1-4; index 5-8; middle 9-12; ring 13-16; pinky 17-20
FREIHAND_JOINT_NAMES = ("wrist",) + tuple(f"{f}{i}" for f in ("thumb", "index", "middle", "ring", "pinky")
                                          for i in ("1", "2", "3", "_tip"))
FREIHAND_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
# rows of [16 MANO joints, tips of thumb 16, index 17, middle 18, ring 19, pinky 20] in FreiHAND order
MANO_TO_FREIHAND = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)

SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand")
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# SMPL-X (55): SMPL's first 22 body joints; 22 jaw, 23/24 eyes; 25-39 left and 40-54 right hand
# fingers, each in MANO's order (index, middle, pinky, ring, thumb; 1-3)
SMPLX_JOINT_NAMES = (SMPL_JOINT_NAMES[:22] + ("jaw", "left_eye", "right_eye")
                     + tuple(f"left_{n}" for n in MANO_JOINT_NAMES[1:])
                     + tuple(f"right_{n}" for n in MANO_JOINT_NAMES[1:]))
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53)
# HMR-Adapter's "arm joint group": pelvis -> spine -> collar -> shoulder -> elbow -> wrist
SMPLX_LEFT_ARM = (0, 3, 6, 9, 13, 16, 18, 20)
SMPLX_RIGHT_ARM = (0, 3, 6, 9, 14, 17, 19, 21)
# SMPL-X joints of each hand in MANO's order (wrist, then the 15 finger joints)
SMPLX_HAND_JOINTS = {"left": (20,) + tuple(range(25, 40)), "right": (21,) + tuple(range(40, 55))}


def hand_joints21(joints, verts, convention):
    """MANO output -> 21 joints in FreiHAND / OpenPose order with the fingertips of `convention`.

    joints (..., 16, 3), verts (..., 778, 3) -> (..., 21, 3). smplx 0.1.28's MANO returns 16
    joints (no fingertips); the tips are the vertices FINGERTIP_VERTS[convention] ("freihand":
    FreiHAND's annotations and the official simpleHand; "hamer": smplx and HaMeR), appended as
    rows 16-20 and then reordered by MANO_TO_FREIHAND (HaMeR's OpenPose order is the same).
    """
    if convention not in FINGERTIP_VERTS:
        raise ValueError(f"hand_joints21: unknown fingertip convention {convention!r}; "
                         f"expected one of {sorted(FINGERTIP_VERTS)}")
    if joints.shape[-2:] != (16, 3) or verts.shape[-2:] != (778, 3):
        raise ValueError(f"hand_joints21: expected joints (..., 16, 3) and verts (..., 778, 3), "
                         f"got {tuple(joints.shape)} and {tuple(verts.shape)}")
    tips = verts[..., list(FINGERTIP_VERTS[convention]), :]  # (..., 5, 3)
    return torch.cat([joints, tips], dim=-2)[..., list(MANO_TO_FREIHAND), :]


def mano_to_freihand(joints, verts):
    """FreiHAND's 21 joints from a MANO output: joints (..., 16, 3), verts (..., 778, 3) -> (..., 21, 3),
    with FreiHAND's fingertips (744, 320, 443, 555, 672), as in its annotations."""
    return hand_joints21(joints, verts, "freihand")


# ---------------------------------------------------------------------------------------------
# 4. Forward kinematics and linear blend skinning (smplx's `lbs.py`, step by step)
#
# A body model (MANO, SMPL, SMPL-X) maps shape coefficients beta (L,) and per-joint local rotations
# R_j (J, 3, 3) to a mesh, in five steps:
#   1. v_shaped = T + S beta                            (V, 3) shape blend shapes
#   2. J = J_reg v_shaped                               (J, 3) rest joints
#   3. v_posed = v_shaped + P vec(R_j - I, j > 0)       (V, 3) pose correctives
#   4. W_j = W_parent R_j, t_j = t_parent + W_parent (J_j - J_parent)   down the tree
#   5. v' = sum_j w_vj (W_j (v_posed - J_j) + t_j)      skinning
# T v_template, S shapedirs, J_reg J_regressor, P posedirs, w lbs_weights: smplx's buffer names.


def forward_kinematics(rot_mats, joints, parents):
    """Pose a skeleton. rot_mats (..., J, 3, 3) local rotations, joints (..., J, 3) rest positions,
    parents (J,) with parents[j] < j and -1 for a root (which stays at its rest position).

    Returns posed joints (..., J, 3) and world rotations (..., J, 3, 3):
        W_j = W_parent R_j,   t_j = t_parent + W_parent (J_j - J_parent)
    The point transform of joint j, x -> W_j (x - J_j) + t_j, moves its rest-pose points (`lbs`).
    """
    world, posed = [None] * len(parents), [None] * len(parents)
    for j, p in enumerate(parents):
        R_j, J_j = rot_mats[..., j, :, :], joints[..., j, :]
        if p < 0:
            world[j], posed[j] = R_j, J_j
        else:
            world[j] = world[p] @ R_j
            posed[j] = posed[p] + (world[p] @ (J_j - joints[..., p, :])[..., None])[..., 0]
    return torch.stack(posed, -2), torch.stack(world, -3)


def _apply(M, X, per_sample):
    """M (N, K) applied to every sample of X (B, K, ...) -> (B, N, ...).

    per_sample=True runs one product per sample, so a sample's numbers are bitwise the same in
    any batch (BLAS chooses kernels and summation orders by the matrix sizes, batch size included).
    """
    if per_sample and len(X):
        return torch.stack([M @ x for x in X])
    return torch.einsum("nk,bk...->bn...", M, X)


def lbs(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights, pose2rot=True,
        rest_joints=None, per_sample=False):
    """smplx's `lbs` with any leading batch dims (...). Returns verts (..., V, 3), joints (..., J, 3).

    betas (..., L); pose (..., J, 3) axis-angle (or (..., 3 J)), global orientation first, or with
    pose2rot=False rotation matrices (..., J, 3, 3); v_template (V, 3); shapedirs (V, 3, L);
    posedirs (9 (J - 1), 3 V) as smplx stores it; J_regressor (J, V); parents (J,); lbs_weights (V, J).
    rest_joints (..., J, 3): step 2's J if the caller has it (it is linear in beta, J = J_reg T +
    (J_reg S) beta, which `Skinning` precomputes); per_sample: see `_apply` (exact batches, slower
    on a GPU). The returned joints are the posed J (smplx's MANO output; SMPL appends more).
    """
    batch, L = betas.shape[:-1], betas.shape[-1]
    V, J = v_template.shape[0], len(parents)
    betas = betas.reshape(-1, L)
    B = len(betas)
    # 1. shape blend shapes: v_shaped = T + S beta
    v_shaped = v_template + _apply(shapedirs.reshape(3 * V, L), betas, per_sample).view(B, V, 3)
    # 2. rest joints J = J_reg v_shaped
    if rest_joints is None:
        rest_joints = _apply(J_regressor, v_shaped, per_sample)  # (B, J, 3)
    rest_joints = rest_joints.reshape(B, J, 3)
    # 3. pose correctives from the non-root rotations: v_posed = v_shaped + P vec(R_j - I)
    R = pose.reshape(B, J, 3, 3) if not pose2rot else axis_angle_to_matrix(pose.reshape(B, J, 3))
    feature = (R[:, 1:] - torch.eye(3, dtype=R.dtype, device=R.device)).reshape(B, -1)  # (B, 9 (J - 1))
    v_posed = v_shaped + _apply(posedirs.T, feature, per_sample).view(B, V, 3)
    # 4. forward kinematics, and each joint's transform of rest-pose points [W_j | t_j - W_j J_j]
    posed, world = forward_kinematics(R, rest_joints, parents)  # (B, J, 3), (B, J, 3, 3)
    offset = posed - (world @ rest_joints[..., None])[..., 0]
    G = torch.cat([world, offset[..., None]], -1).view(B, J, 12)  # (B, J, 3 x 4)
    # 5. skinning: blend the transforms by the weights, then move each vertex by its own blend
    T = _apply(lbs_weights, G, per_sample).view(B, V, 3, 4)
    verts = T[..., 0] * v_posed[..., :1] + T[..., 1] * v_posed[..., 1:2] + T[..., 2] * v_posed[..., 2:] + T[..., 3]
    return verts.view(*batch, V, 3), posed.view(*batch, J, 3)


class Skinning:
    """`lbs` with a loaded smplx model's buffers (MANO, SMPL or SMPL-X), prepared once.

    Adds the model's pose_mean (MANO and SMPL-X hands: zero with flat_hand_mean=True, the default
    of our loaders), appends SMPL-X's expression directions to its shape directions, and
    precomputes the rest joints' dependence on beta. dtype float64 or float32; per_sample as in
    `lbs` (on by default: the datasets need exact batches). Up to float precision it is
    model(betas, global_orient, body_pose / hand_pose, ...).vertices and .joints[:, :J].
    """

    def __init__(self, model, dtype=torch.float64, per_sample=True):
        def buffer(name):
            return getattr(model, name).detach().to(dtype).contiguous()

        self.parents, self.per_sample = model.parents.tolist(), per_sample
        self.v_template, self.shapedirs = buffer("v_template"), buffer("shapedirs")  # (V, 3), (V, 3, L)
        if hasattr(model, "expr_dirs"):  # SMPL-X: betas then expression coefficients
            self.shapedirs = torch.cat([self.shapedirs, buffer("expr_dirs")], -1)
        self.posedirs, self.lbs_weights = buffer("posedirs"), buffer("lbs_weights")  # (P, 3 V), (V, J)
        self.J_regressor = buffer("J_regressor")
        self.pose_mean = buffer("pose_mean") if hasattr(model, "pose_mean") else torch.zeros((), dtype=dtype)
        # J = J_reg (T + S beta) = J_reg T + (J_reg S) beta
        self.J_template = self.J_regressor @ self.v_template  # (J, 3)
        self.J_shapedirs = torch.einsum("jv,vkl->jkl", self.J_regressor, self.shapedirs).reshape(
            -1, self.shapedirs.shape[-1])

    def __call__(self, pose, betas, expression=None):
        """pose (..., J, 3) axis-angle, global orientation first; betas (..., L); expression (..., E)
        for SMPL-X. -> verts (..., V, 3), joints (..., J, 3) in self's dtype."""
        if expression is not None:
            betas = torch.cat([betas, expression], -1)
        pose, betas = pose.to(self.v_template.dtype), betas.to(self.v_template.dtype)
        batch = betas.shape[:-1]
        pose = pose.reshape(*batch, -1) + self.pose_mean
        flat = betas.reshape(-1, betas.shape[-1])
        rest = self.J_template + _apply(self.J_shapedirs, flat, self.per_sample).view(len(flat), -1, 3)
        return lbs(betas, pose, self.v_template, self.shapedirs, self.posedirs, self.J_regressor, self.parents,
                   self.lbs_weights, rest_joints=rest, per_sample=self.per_sample)

    def from_rotations(self, R, betas):
        """The mesh of rotation matrices R (B, J, 3, 3) (no pose_mean added) and betas (B, L), in R's dtype
        (the losses' differentiable meshes) -> verts (B, V, 3), joints (B, J, 3)."""
        rest = self.J_template.to(betas) + (betas @ self.J_shapedirs.T.to(betas)).view(len(betas), -1, 3)
        return lbs(betas, R, self.v_template.to(R), self.shapedirs.to(R), self.posedirs.to(R), self.J_regressor.to(R),
                   self.parents, self.lbs_weights.to(R), pose2rot=False, rest_joints=rest)


# ---------------------------------------------------------------------------------------------
# 5. Mesh normals


def face_normals(verts, faces):
    """Triangle normals (..., F, 3) of meshes verts (..., V, 3) sharing faces (F, 3): e1 x e2 with
    e1 = p1 - p0, e2 = p2 - p0, whose length is twice the triangle's area."""
    p = verts[..., faces, :]  # (..., F, 3 corners, 3)
    return torch.linalg.cross(p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :], dim=-1)


def vertex_normals(verts, faces):
    """Area-weighted unit vertex normals (..., V, 3) of meshes verts (..., V, 3) sharing faces (F, 3).

    They point to the side from which the faces' corners run counter-clockwise (outwards for
    SMPL, MANO and SMPL-X). Every face's e1 x e2 (`face_normals`) is summed into its three corners.
    Computed axis-major (one flat index_add_, the fastest on a CPU); the result is a view of
    that (3, M V) layout, which the renderer reads without a copy. Each mesh's sums run in the same
    order whatever the batch, so a mesh's normals never depend on the batch it is in.
    """
    V = verts.shape[-2]
    xyz = verts.reshape(-1, 3).T.contiguous()  # (3, M V), M the number of meshes
    M = xyz.shape[1] // V
    corners = (faces.T.contiguous()[:, None] + V * torch.arange(M, device=faces.device)[:, None]).view(3, -1)
    p = xyz.index_select(1, corners.reshape(-1)).view(3, 3, -1)  # (3 axes, 3 corners, M F)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    n = torch.stack([e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]])
    # element (axis k, vertex i) of the flat sum is k M V + i
    element = (corners[None] + xyz.shape[1] * torch.arange(3, device=xyz.device)[:, None, None]).reshape(-1)
    out = torch.zeros(xyz.numel(), dtype=xyz.dtype, device=xyz.device)
    out.index_add_(0, element, n[:, None].expand(3, 3, -1).reshape(-1))
    out = out.view(3, -1)
    out = out / (out[0] * out[0] + out[1] * out[1] + out[2] * out[2]).sqrt_().clamp_min_(1e-12)
    return out.T.reshape(verts.shape)


# ---------------------------------------------------------------------------------------------
# 6. Loaders: real model files, or registered stand-ins (this project's lab/standins.py) when there are none

_LAYOUT = ("DIR/mano/MANO_RIGHT.pkl (and MANO_LEFT.pkl), DIR/smpl/SMPL_NEUTRAL.pkl, "
           "DIR/smplx/SMPLX_NEUTRAL.npz")
_SHAPE_WARNING = "WARNING: You are using a"  # smplx's print when a file has fewer than 300 shape columns
_printed_warnings = set()


def _build_quietly(build, capped):
    """Call smplx's constructor build() and pass on what it prints, except its "only 10 shape
    coefficients" warning: that one is printed once per process, in the main process only (not in
    DataLoader workers, not on other DDP ranks), and only if `capped` (the caller asked for more
    coefficients than the 10 smplx keeps). Otherwise it says nothing: the real MANO and SMPL 1.0
    files and our stand-ins have exactly 10."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            return build()
    finally:
        main = torch.utils.data.get_worker_info() is None and int(os.environ.get("RANK", 0)) == 0
        for line in buffer.getvalue().splitlines(keepends=True):
            if not line.startswith(_SHAPE_WARNING):
                sys.stdout.write(line)
            elif capped and main and line not in _printed_warnings:
                _printed_warnings.add(line)
                sys.stdout.write(line)


# Where neither model_dir nor $HMR_BODY_MODELS names a folder: a function kind -> folder that a project may register
# (this project's lab/standins.py registers its procedural stand-ins when the lab is imported); a copy has none.
standin_models = None


def _model_file(model_dir, kind, names):
    """The model file under model_dir/kind: the first of `names` that exists (real files), or the
    registered stand-in (`standin_models`) when model_dir and $HMR_BODY_MODELS are both unset."""
    if model_dir is None and not os.environ.get("HMR_BODY_MODELS"):
        if standin_models is None:  # this file copied alone: name what to set instead
            raise FileNotFoundError(
                f"no {kind.upper()} model file: set HMR_BODY_MODELS to a folder laid out as {_LAYOUT} (the "
                "licensed files, or procedural stand-ins, which this project's lab/standins.py writes: "
                "standins.write_standins(DIR)), or pass model_dir")
        model_dir = standin_models(kind)
    elif model_dir is None:
        model_dir = os.environ["HMR_BODY_MODELS"]
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"body model folder {root} does not exist; expected smplx's layout {_LAYOUT}")
    for name in names:
        if (root / kind / name).is_file():
            return root / kind / name
    raise FileNotFoundError(f"{root / kind / names[0]} does not exist; expected smplx's layout {_LAYOUT}")


def load_mano(model_dir=None, side="right", **kwargs):
    """smplx.MANO for `side` ("right" or "left") from model_dir/mano/MANO_{RIGHT,LEFT}.pkl.

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. Defaults use_pca=False,
    flat_hand_mean=True, batch_size=1; kwargs go to smplx.MANO (dtype, num_pca_comps, ...).
    Applies the known fix to the official left hand (github.com/vchoutas/smplx issue 48): its shapedirs' x rows
    have the wrong sign, recognisable because they equal the right hand's.
    """
    import smplx
    from smplx.utils import Struct
    if side not in ("right", "left"):
        raise ValueError(f"load_mano: side must be 'right' or 'left', got {side!r}")
    path = _model_file(model_dir, "mano", (f"MANO_{side.upper()}.pkl",))
    arrays = _checked_arrays(path, "mano")
    right = path.with_name("MANO_RIGHT.pkl")
    if side == "left" and right.is_file():
        right_dirs = _read_model(right, ["shapedirs"])["shapedirs"]
        if np.abs(arrays["shapedirs"][:, 0] - right_dirs[:, 0]).sum() < 1:  # the known bug
            arrays["shapedirs"] = arrays["shapedirs"] * np.array([-1, 1, 1])[:, None]
    elif side == "left":
        warnings.warn(f"{path}: no MANO_RIGHT.pkl next to it, so the official left hand's "
                      "shapedirs bug (github.com/vchoutas/smplx issue 48) can be neither detected nor fixed")
    kwargs = dict(dict(use_pca=False, flat_hand_mean=True, batch_size=1), **kwargs)
    return _build_quietly(lambda: smplx.MANO(str(path), is_rhand=side == "right", data_struct=Struct(**arrays),
                                             **kwargs), capped=kwargs.get("num_betas", 10) > 10)


def load_smpl(model_dir=None, **kwargs):
    """smplx.SMPL from model_dir/smpl/SMPL_{GENDER}.pkl (gender="neutral" by default).

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. kwargs go to smplx.SMPL.
    smplx's warning about 10 shape coefficients: see `_build_quietly`.
    """
    import smplx
    from smplx.utils import Struct
    kwargs = dict(dict(batch_size=1, gender="neutral"), **kwargs)
    path = _model_file(model_dir, "smpl", (f"SMPL_{kwargs['gender'].upper()}.pkl",))
    arrays = _checked_arrays(path, "smpl")
    return _build_quietly(lambda: smplx.SMPL(str(path), data_struct=Struct(**arrays), **kwargs),
                          capped=kwargs.get("num_betas", 10) > 10)


def load_smplx(model_dir=None, **kwargs):
    """smplx.SMPLX from model_dir/smplx/SMPLX_{GENDER}.npz (or .pkl; gender="neutral" by default).

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. Defaults batch_size=1,
    use_pca=False, flat_hand_mean=True; kwargs go to smplx.SMPLX. smplx reads SMPL-X only from a
    file, and would unpickle whatever it holds, so the checked arrays go through a temporary
    .npz of plain arrays unless the file is already one.
    """
    import smplx
    kwargs = dict(dict(batch_size=1, gender="neutral", use_pca=False, flat_hand_mean=True), **kwargs)
    name = f"SMPLX_{kwargs['gender'].upper()}"
    path = _model_file(model_dir, "smplx", (name + ".npz", name + ".pkl"))
    arrays = _checked_arrays(path, "smplx")
    capped = max(kwargs.get("num_betas", 10), kwargs.get("num_expression_coeffs", 10)) > 10
    if path.suffix == ".npz" and _plain_npz(path):
        return _build_quietly(lambda: smplx.SMPLX(str(path), ext="npz", **kwargs), capped)
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / (name + ".npz")
        np.savez(clean, **arrays)
        return _build_quietly(lambda: smplx.SMPLX(str(clean), ext="npz", **kwargs), capped)


def _plain_npz(path):
    """True if every array in the .npz loads without unpickling."""
    with np.load(path, allow_pickle=False) as npz:
        try:
            for key in npz.files:
                npz[key]
        except ValueError:
            return False
    return True


def load_state_strict(module, state, source):
    """module.load_state_dict(state, strict=True), after one ValueError naming `source` (a file, or
    what the state came from) and every unknown, missing and wrongly shaped key. The paper files
    load released checkpoints through it, once their keys are mapped to the module's names."""
    own = module.state_dict()
    unknown, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    shapes = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    problems = [f"{what} {items[:8]}" + (f" and {len(items) - 8} more" if len(items) > 8 else "")
                for what, items in (("unknown keys", unknown), ("missing keys", missing), ("wrong shapes", shapes))
                if items]
    if problems:
        raise ValueError(f"{source}: does not fit {type(module).__name__} (after the key mapping): "
                         + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def read_checkpoint(path, what, container=None):
    """The dict of tensors in the released checkpoint at `path`, read with torch.load(weights_only=True) (so the
    file cannot run code); `what` names the file in errors (e.g. "the official simpleHand's epoch_200_rerun1").
    container: the key the weights sit under ("state_dict", "network"), taken when present. Every failure is one
    ValueError or FileNotFoundError naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. a Lightning file's pickled hyper-parameters or yacs config
        names = ", ".join(sorted(set(re.findall(r"GLOBAL (\S+)", str(e)))))
        if not names:  # not a pickle at all: garbage or a truncated file
            raise ValueError(f"{path}: torch.load(weights_only=True) cannot read it as {what}: {e}") from None
        raise ValueError(f"{path}: holds pickled objects besides tensors ({names}), which "
                         "torch.load(weights_only=True) refuses. If you trust the file, keep only its weights once: "
                         f"torch.load it inside `with torch.serialization.safe_globals([{names}]):` and "
                         "torch.save its weights") from None
    except Exception as e:  # not a torch.save file, or a truncated one
        raise ValueError(f"{path}: torch.load(weights_only=True) cannot read it as {what}: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected {what}, a dict of tensors, found {type(checkpoint).__name__}")
    return checkpoint.get(container, checkpoint) if container else checkpoint


def rename_keys(state, table=(), skip=()):
    """A checkpoint's state dict in a module's names: keys starting with a prefix in `skip` dropped, then each
    (old, new) of `table` replaced in turn in every key (str.replace; a prefix to strip is (prefix, ""))."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(tuple(skip)):
            continue
        for old, new in table:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


# ---------------------------------------------------------------------------------------------
# 7. Crops: a box grown to an aspect, the crop's pixel transform, warping, a crop's camera in the full image;
#    hand crops (grid_sample's, HaMeR's)


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, in [0, 1]: timm's, ViTPose's, HaMeR's IMAGE_MEAN / 255
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(images):
    """images (B, 3, H, W) RGB in [0, 1] -> (images - mean) / std with ImageNet's per-channel mean and std."""
    mean, std = (images.new_tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images - mean) / std


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


def crop_translation_to_full(t, A, crop_hw, image_wh, crop_focal, K=None):
    """CLIFF's crop -> full image move (`cam_crop_to_full`) for any crop camera. t (..., 3) places a
    mesh in the camera of a crop (crop_matrix A, size crop_hw = (H, W), focal crop_focal in crop
    pixels, principal point at the crop's centre) -> t' in the full image's camera K (3, 3) (pixels;
    default `full_image_intrinsics(image_wh)`, HaMeR's demo convention). With F = crop_focal / A[1, 1]
    the crop camera's focal in image pixels, c the crop's centre in the image and (f, c_full) the full
    camera's focal and principal point:
        tz' = tz f / F,   (tx', ty') = (tx, ty) + (c - c_full) tz / F,
    so every point on the mesh root's depth plane lands on the pixel where the crop camera put it; a
    point dZ off that plane moves by about dZ / tz' times its distance from that pixel's ray, which is
    small at HMR2.0's focal 5000 per 256 pixels (a person seen from about 40 m). A K with fx != fy
    takes f = sqrt(fx fy): the root plane's points then land off by the factor sqrt(fx / fy) in x
    (sqrt(fy / fx) in y) about the root's pixel."""
    A = torch.as_tensor(A).to(t)
    F_crop = crop_focal / A[1, 1]
    c = torch.linalg.solve(A, A.new_tensor([crop_hw[1] / 2, crop_hw[0] / 2, 1.0]))[:2]
    K = full_image_intrinsics(image_wh, dtype=t.dtype) if K is None else torch.as_tensor(K, dtype=t.dtype)
    K = K.to(t.device)
    f = K[0, 0] if K[0, 0] == K[1, 1] else (K[0, 0] * K[1, 1]).sqrt()
    tz = t[..., 2:]
    return torch.cat([t[..., :2] + (c - K[:2, 2]) * tz / F_crop, tz * f / F_crop], -1)


# Hand crops of a person image: a grid_sample crop of boxes (HMR-Adapter TINY's), and HaMeR's as its ViT was trained
# on (its box, skimage's blur, cv2's fixed-point warp and ImageNet normalisation, to the bit: tests/official/hamer).


def crop_grid(boxes, size, image_hw, flip):
    """grid_sample grid (B, size, size, 2) that resamples boxes (B, 4) pixels of an image of
    image_hw into size x size crops (pixel (i, j) covers [j, j + 1) x [i, i + 1)); flip (B,) bool
    mirrors a crop left-right."""
    H, W = image_hw
    t = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size  # (S,) bin centres
    x = boxes[:, None, 0] + t * (boxes[:, None, 2] - boxes[:, None, 0])  # (B, S) pixels
    y = boxes[:, None, 1] + t * (boxes[:, None, 3] - boxes[:, None, 1])
    x = torch.where(flip[:, None], x.flip(-1), x)
    gx, gy = 2 * x / W - 1, 2 * y / H - 1  # align_corners=False
    return torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], -1)


def crop_images(images, boxes, size, flip):
    """Square crops (B, 3, size, size) of images (B, 3, H, W) at boxes (B, 4), bilinear (`crop_grid`), black
    outside; flip (B,) bool mirrors a crop. HMR-Adapter TINY's hand crops."""
    grid = crop_grid(boxes, size, images.shape[-2:], flip)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def hamer_square(boxes, rescale):
    """HaMeR's crop square of hand boxes (..., 4) [x0, y0, x1, y1]: centre (..., 2) and side (..., 1),
    float32 as its numpy code. # official (hamer vitdet_dataset.py): side = rescale x max(4/3 w, h), the
    box widened to its ViT's 192 x 256 (BBOX_SHAPE, expand_to_aspect_ratio), about the box centre."""
    boxes = boxes.float()
    wh = rescale * (boxes[..., 2:] - boxes[..., :2]) / 200 * 200  # its scale (x 200 px) and back
    return (boxes[..., 2:] + boxes[..., :2]) / 2, torch.maximum(wh[..., :1] * 256 / 192, wh[..., 1:])


def hamer_crops(images, boxes, size, flip, rescale):
    """HaMeR's hand crops as its ViT reads them (N, 3, size, size), from images (N, 3, H, W) in [0, 1]
    (8-bit values / 255) at hand boxes (N, 4) (`hamer_square`); flip (N,) bool for left hands.
    # official (hamer vitdet_dataset.py, datasets/utils.py): 1. Gaussian blur (skimage) when the crop shrinks
    the image more than 2.2 x; 2. a left hand's image is flipped and its centre moved to W - 1 - c_x (so its
    crop is the mirror image shifted by one source pixel); 3. cv2.warpAffine, bilinear, black border; 4. RGB,
    (pixel - 255 mean) / (255 std). The warp is cv2's fixed-point one (`cv2_warp`), so 8-bit crops are exact."""
    mean, std = (255 * images.new_tensor(v, dtype=torch.float64)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    pixels = (images.double() * 255).round()
    crops = []
    for image, centre, side, mirrored in zip(pixels, *hamer_square(boxes, rescale), flip.tolist()):
        side = side[0]
        shrink = side / size / 2
        blurred = bool(shrink > 1.1)
        if blurred:  # its anti-aliasing: skimage.filters.gaussian(sigma=(shrink - 1) / 2, preserve_range=True)
            image = gaussian_blur(image, float((shrink - 1) / 2))
        if mirrored:
            image, centre = image.flip(-1), torch.stack([image.shape[-1] - centre[0] - 1, centre[1]])
        crops.append(cv2_warp(image, centre, side, size, round_to_8bit=not blurred))
    return ((torch.stack(crops) - mean) / std).to(images.dtype)


def gaussian_blur(image, sigma):
    """skimage.filters.gaussian of image (C, H, W) over H and W (float64): scipy's gaussian_filter, a
    kernel of radius int(4 sigma + 0.5), edges repeated ('nearest')."""
    r = int(4.0 * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64, device=image.device)
    k = torch.exp(-0.5 / (sigma * sigma) * x ** 2)
    k = k / k.sum()
    image = F.conv2d(F.pad(image[:, None], (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))  # rows
    return F.conv2d(F.pad(image, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))[:, 0]  # then columns


def affine_from_points(src, dst):
    """cv2.getAffineTransform ((2, 3) nested lists) of three point pairs (x, y) given in float32: the 6 x 6
    system solved as cv2 solves it (LU with partial pivoting in float64), so the last bits agree."""
    A, y = [], []
    for (sx, sy), (dx, dy) in zip(src, dst):
        sx, sy = float(sx), float(sy)
        A += [[sx, sy, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, sx, sy, 1.0]]
        y += [float(dx), float(dy)]
    for i in range(6):  # elimination
        k = max(range(i, 6), key=lambda r: (abs(A[r][i]), -r))  # the first row of the largest pivot
        A[i], A[k], y[i], y[k] = A[k], A[i], y[k], y[i]
        d = -1 / A[i][i]
        for r in range(i + 1, 6):
            alpha = A[r][i] * d
            A[r][i + 1:] = [v + alpha * w for v, w in zip(A[r][i + 1:], A[i][i + 1:])]
            y[r] += alpha * y[i]
    x = [0.0] * 6
    for i in reversed(range(6)):  # back substitution
        s = y[i]
        for k in range(i + 1, 6):
            s -= A[i][k] * x[k]
        x[i] = s / A[i][i]
    return [x[:3], x[3:]]


def cv2_warp(image, centre, side, size, round_to_8bit):
    """The size x size crop (C, size, size) float64 of image (C, H, W) (float64 pixel values) that HaMeR's
    cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) gives: crop pixel (j, i) samples the image at
    centre + ((j, i) - size / 2) side / size (float32 centre (2,) and side, as its code computes them).
    1. the map from gen_trans_from_patch_cv's float32 points (`affine_from_points`), inverted in float64
       as warpAffine does; 2. source positions in fixed point, rounded to 1/32 pixel (INTER_BITS 5,
       AB_BITS 10); 3. bilinear weights (32 - f)/32, f/32 per axis, 0 outside the image; 8-bit images:
       integer weights x 32768 and rounding to 0..255, others (the blurred float64 image): exact weights.
    OpenCV 4 (HaMeR's; 5.0 rewrote warpAffine): equal to cv2's crops (checked on the test's fixture)."""
    half, (cx, cy) = side * 0.5, centre  # float32
    (m00, m01, m02), (m10, m11, m12) = affine_from_points([(cx, cy), (cx, cy + half), (cx + half, cy)],
                                                          [(size / 2, size / 2), (size / 2, size), (size, size / 2)])
    d = 1.0 / (m00 * m11 - m01 * m10)  # warpAffine's inverse
    a, c, e, b = m11 * d, -m01 * d, -m10 * d, m00 * d  # x = a j + c i + tx, y = e j + b i + ty
    tx, ty = -a * m02 - c * m12, -e * m02 - b * m12
    i = j = torch.arange(size, dtype=torch.float64, device=image.device)  # crop rows, columns
    # warpAffine: per row i, round((c i + tx) 1024); per column j, round(a j 1024); + 16, then >> 5
    X = (torch.round((c * i + tx) * 1024)[:, None] + torch.round(a * j * 1024)[None, :] + 16).long() // 32  # (i, j)
    Y = (torch.round((b * i + ty) * 1024)[:, None] + torch.round(e * j * 1024)[None, :] + 16).long() // 32
    x0, fx, y0, fy = X // 32, X % 32, Y // 32, Y % 32  # source pixel, 1/32 fraction
    C, H, W = image.shape
    out = 0
    for dy, wy in ((0, 32 - fy), (1, fy)):
        for dx, wx in ((0, 32 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            v = image[:, yy.clamp(0, H - 1), xx.clamp(0, W - 1)] * inside  # (C, size, size)
            w = wy * wx  # (size, size), in 1/1024
            out = out + (v * (w * 32) if round_to_8bit else v * (w / 1024))
    return torch.div(out + 16384, 32768, rounding_mode="floor").clamp(0, 255) if round_to_8bit else out


# ---------------------------------------------------------------------------------------------
# 8. Hands on a body: MANO hand results onto an SMPL-X body, and MANO parameters from 778 vertices
#
# A hand expert (HaMeR) gives MANO parameters per hand: a global orientation G (camera frame), the
# 15 finger rotations F_j and betas. A left hand comes as the RIGHT MANO hand that is its mirror
# image (HaMeR flips the crop), so the left hand itself has the mirrored pose M G M, M F_j M with
# M = diag(-1, 1, 1) (`mirror_rotation`). SMPL-X's hands carry the same fingers in their own rest
# frame: R_off (3, 3) turns MANO's rest right hand onto SMPL-X's rest right hand (about the identity
# for the official files; about a half turn about y for the stand-ins, whose right hand is MANO's
# turned, see `standins._stitch_hands`), and SMPL-X's left hand is the mirror image of its right. A hand
# posed by MANO then looks the same on SMPL-X when their world rotations agree up to R_off:
#   W_j^X = W_j^MANO R_off^T  =>  wrist world G R_off^T;  finger j R_off F_j R_off^T (axis-angle R_off a_j)
# and the wrist's LOCAL rotation follows by inverse kinematics under the body's elbow:
#   R_wrist = W_elbow^T G R_off^T                          (HMR-Adapter's baseline, Sec. 4.2)
# hands_mean: MANO and SMPL-X built with flat_hand_mean=False add a mean pose to their axis-angle
# finger parameters (full = parameter + hands_mean); rotation matrices (smplx's *Layer classes,
# HaMeR's output) are always the full rotations.


def kabsch_rotation(a, b):
    """The proper rotation R (B, 3, 3), det +1, that best turns point set a onto b, both (B, N, 3):
    R minimises sum_n |R (a_n - mean a) - (b_n - mean b)|^2 (Kabsch; Umeyama's without the scale).

    The same steps, in the same order, as metrics.procrustes_transform's rotation (a test compares
    the two), so that hand frames and fits are those the metrics would give.
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    # 1. centre both sets and divide each by its Frobenius norm (+1e-8 keeps an all-equal set finite)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)  # (B, N, 3)
    a = a / (a.flatten(1).norm(dim=1) + 1e-8)[:, None, None]
    b = b / (b.flatten(1).norm(dim=1) + 1e-8)[:, None, None]
    # 2. with a^T b = U S V^T, R = V D U^T maximises tr(R a^T b); D = diag(1, 1, det(U V^T)) keeps det R = +1
    u, sigma, vh = torch.linalg.svd(a.transpose(1, 2) @ b)  # (B, 3, 3), (B, 3), (B, 3, 3)
    d = torch.ones_like(sigma)  # (B, 3), the diagonal of D
    d[:, 2] = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0)
    return vh.transpose(1, 2) @ (d[:, :, None] * u.transpose(1, 2))  # (B, 3, 3)


@dataclass(frozen=True)
class HandFrames:
    """What relates MANO hands to an SMPL-X body's hands (`hand_frames` reads it from the files).

    r_off (3, 3): MANO's rest right hand -> SMPL-X's rest right hand (SMPL-X's left: M r_off M).
    mano_hands_mean (15, 3): the right MANO's hands_mean, axis-angle per finger joint.
    smplx_hands_mean: {"left": (15, 3), "right": (15, 3)}: SMPL-X's hands_meanl, hands_meanr.
    All float64.
    """
    r_off: torch.Tensor
    mano_hands_mean: torch.Tensor
    smplx_hands_mean: dict


def hand_frames(model_dir=None):
    """`HandFrames` of the MANO (right) and SMPL-X (neutral) files under model_dir (None:
    $HMR_BODY_MODELS, else the stand-ins); cached per pair of files.

    r_off is the rotation of the Procrustes fit (`kabsch_rotation`) of MANO's 16 rest
    joints onto SMPL-X's right wrist and finger joints, J = J_regressor v_template.
    NOTE 1: on the stand-ins the fit is 0.7 degrees from the exact half turn diag(-1, 1, -1) of
    `standins._stitch_hands` (SMPL-X's wrist joint is regressed from the forearm too, MANO's is not).
    data.py's hand labels and HMR-Adapter use the same fit, so the synthetic world is
    self-consistent; a MANO mesh and SMPL-X's hand agree to about a millimetre, not exactly.
    """
    mano = _model_file(model_dir, "mano", ("MANO_RIGHT.pkl",))
    body = _model_file(model_dir, "smplx", ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl"))
    return _hand_frames(mano, body)


@functools.lru_cache(maxsize=None)
def _hand_frames(mano_path, smplx_path):
    def array(a, key):
        return torch.from_numpy(np.asarray(a[key], np.float64))

    mano, body = _checked_arrays(mano_path, "mano"), _checked_arrays(smplx_path, "smplx")
    mano_rest = array(mano, "J_regressor") @ array(mano, "v_template")  # (16, 3)
    body_rest = (array(body, "J_regressor") @ array(body, "v_template"))[list(SMPLX_HAND_JOINTS["right"])]
    r_off = kabsch_rotation(mano_rest[None], body_rest[None])[0]
    means = {side: array(body, "hands_mean" + side[0]).view(15, 3) for side in ("left", "right")}
    return HandFrames(r_off, array(mano, "hands_mean").view(15, 3), means)


def _turn_hand(x, r_off, mirror):
    """Finger rotations x (..., 3, 3) or axis-angle (..., 3) in MANO's right-hand frame -> SMPL-X's
    hand: R_off x R_off^T (axis-angle: R_off a), then mirrored for a left hand (M . M)."""
    matrix = x.shape[-2:] == (3, 3)
    x = r_off @ x @ r_off.T if matrix else x @ r_off.T
    return mirror_rotation(x, matrix=matrix) if mirror else x


def attach_hands(body_pose, hands, frames=None, left_as_right=True, mano_flat_hand_mean=True,
                 smplx_flat_hand_mean=True):
    """An SMPL-X pose whose hands are MANO hand results: the fingers from MANO, each wrist by IK.

    body_pose: the SMPL-X pose, global orientation first, axis-angle (..., J, 3) or rotation
      matrices (..., J, 3, 3); J = 22 (global orientation and the 21 body joints) or 55 (a whole
      SMPL-X pose: jaw and eyes are kept, the hands given replace its hands).
    hands: {"left": hand, "right": hand}, either side optional (a missing side keeps body_pose's
      hand when J = 55, else stays at rest). A hand is a dict of
      "global_orient" (..., 3) or (..., 3, 3) (HaMeR's (..., 1, 3, 3) too): the hand's world rotation,
        in the frame of body_pose's global orientation (both in the camera frame, say), and
      "hand_pose" (..., 15, 3) axis-angle or (..., 15, 3, 3) rotations, as global_orient is
        (HaMeR's pred_mano_params fit as they are; betas are not needed: the body shapes its hands).
    frames: `HandFrames` (default `hand_frames()`: the files the loaders read).
    left_as_right: a left hand's parameters are those of the RIGHT MANO hand that is its mirror image
      (HaMeR, simpleHand on a flipped crop, `fit_mano(left=True)`); False: parameters of smplx's left
      MANO (MANO_LEFT.pkl), the mirror of those.
    mano_flat_hand_mean: False if axis-angle hand poses are relative to MANO's hands_mean
      (smplx.MANO(flat_hand_mean=False), smplx's default).
    smplx_flat_hand_mean: False to return axis-angle finger parameters relative to SMPL-X's hands_mean
      (for smplx.SMPLX(flat_hand_mean=False), smplx's default; our loaders use True).
      Both flags concern axis-angle only (rotation matrices are full rotations); with rotation
      matrices a False flag is a ValueError.

    Returns the SMPL-X pose (..., 55, 3) axis-angle, or (..., 55, 3, 3) if body_pose is rotations,
    in body_pose's dtype and device: body, jaw and eyes from body_pose; fingers R_off F_j R_off^T
    (left hands: mirrored, M R_off F_j R_off^T M); wrists R_wrist = W_elbow^T G R_off^T (mirrored
    for the left: M G R_off^T M). Differentiable.
    """
    matrices = body_pose.shape[-2:] == (3, 3)
    tail = (3, 3) if matrices else (3,)
    J = body_pose.shape[-1 - len(tail)]
    if J not in (22, 55):
        raise ValueError(f"attach_hands: body_pose must have 22 or 55 joints, got shape {tuple(body_pose.shape)}")
    if matrices and not smplx_flat_hand_mean:
        raise ValueError("attach_hands: smplx_flat_hand_mean=False needs an axis-angle body_pose "
                         "(hands_mean offsets axis-angle parameters; rotation matrices are full rotations)")
    frames = frames or hand_frames()

    def at(j):  # index of joint(s) j in a pose (..., 55, *tail)
        return (..., j) + (slice(None),) * len(tail)

    # 1. the output pose (rest beyond J), and the world rotations of the 22 body joints
    rest = (torch.eye(3) if matrices else torch.zeros(3)).to(body_pose)
    pose = torch.cat([body_pose, rest.expand(*body_pose.shape[:-1 - len(tail)], 55 - J, *tail)], -1 - len(tail))
    R = body_pose[at(slice(22))] if matrices else axis_angle_to_matrix(body_pose[at(slice(22))])  # (..., 22, 3, 3)
    world = forward_kinematics(R, R.new_zeros(R.shape[:-1]), SMPLX_PARENTS[:22])[1]  # (..., 22, 3, 3)
    r_off = frames.r_off.to(R)
    for side, hand in hands.items():
        if hand is None:
            continue
        G, F_j = _right_mano_hand(hand, side == "left" and not left_as_right, frames, mano_flat_hand_mean, R)
        # 2. the wrist: world rotation G R_off^T (mirrored for a left hand), local rotation by IK
        wrist, *fingers = SMPLX_HAND_JOINTS[side]
        W = G @ r_off.T
        W = mirror_rotation(W, matrix=True) if side == "left" else W
        R_wrist = world[..., SMPLX_PARENTS[wrist], :, :].transpose(-1, -2) @ W  # W_elbow^T W_wrist
        pose[at(wrist)] = R_wrist if matrices else matrix_to_axis_angle(R_wrist)
        # 3. the fingers in SMPL-X's hand frame, of the output's kind and hands_mean convention
        F_j = _turn_hand(F_j, r_off, side == "left")
        if matrices != (F_j.shape[-2:] == (3, 3)):
            F_j = axis_angle_to_matrix(F_j) if matrices else matrix_to_axis_angle(F_j)
        if not smplx_flat_hand_mean:
            F_j = F_j - frames.smplx_hands_mean[side].to(F_j)
        pose[at(fingers)] = F_j
    return pose


def hands_of_body(pose, frames=None, left_as_right=True, mano_flat_hand_mean=True):
    """The inverse of `attach_hands`: each hand of an SMPL-X pose as a MANO hand result, as HaMeR
    would give it (the hand path's labels for a real whole-body annotation).

    pose: SMPL-X pose (..., 55, 3) axis-angle or (..., 55, 3, 3) rotations, global orientation first,
      full finger rotations (smplx.SMPLX(flat_hand_mean=True); add SMPL-X's hands_mean to parameters
      of flat_hand_mean=False first).
    Returns {"left": hand, "right": hand}, hand = {"global_orient" (..., 3), "hand_pose" (..., 15, 3)}
    (rotations (..., 3, 3), (..., 15, 3, 3) for rotation input), in pose's dtype:
      G = W_wrist R_off (W_wrist the wrist's world rotation in pose's frame), fingers R_off^T F_j R_off;
      a left hand (left_as_right) as the right MANO hand that is its mirror image: G = M W M R_off,
      fingers R_off^T M F_j M R_off (False: smplx's MANO_LEFT parameters, the mirror of those);
      mano_flat_hand_mean False: axis-angle fingers relative to MANO's hands_mean (smplx's MANO default).
    attach_hands(pose, hands_of_body(pose)) gives back pose (tests/test_bodymodels.py).
    """
    matrices = pose.shape[-2:] == (3, 3)
    if pose.shape[-2 - matrices] != 55:
        raise ValueError(f"hands_of_body: pose must have 55 joints, got shape {tuple(pose.shape)}")
    if matrices and not mano_flat_hand_mean:
        raise ValueError("hands_of_body: mano_flat_hand_mean=False needs an axis-angle pose")
    frames = frames or hand_frames()
    R = pose if matrices else axis_angle_to_matrix(pose)  # (..., 55, 3, 3)
    world = forward_kinematics(R[..., :22, :, :], R.new_zeros(R.shape[:-3] + (22, 3)), SMPLX_PARENTS[:22])[1]
    r_off = frames.r_off.to(R)
    hands = {}
    for side, (wrist, *fingers) in SMPLX_HAND_JOINTS.items():
        W, F_j = world[..., wrist, :, :], R[..., fingers, :, :]
        if side == "left":  # the right hand that is the left hand's mirror image
            W, F_j = mirror_rotation(W, matrix=True), mirror_rotation(F_j, matrix=True)
        G, F_j = W @ r_off, r_off.T @ F_j @ r_off
        if not matrices:
            G, F_j = matrix_to_axis_angle(G), matrix_to_axis_angle(F_j)
            if not mano_flat_hand_mean:
                F_j = F_j - frames.mano_hands_mean.to(F_j)
        if side == "left" and not left_as_right:  # MANO_LEFT's parameters: the mirror (hands_mean's too)
            G, F_j = mirror_rotation(G, matrix=matrices), mirror_rotation(F_j, matrix=matrices)
        hands[side] = {"global_orient": G, "hand_pose": F_j}
    return hands


def _right_mano_hand(hand, mirror, frames, flat_hand_mean, like):
    """A hand dict of `attach_hands` -> G (..., 3, 3) and finger rotations (..., 15, 3, 3) or full
    axis-angle (..., 15, 3) of the right MANO hand (the mirror image of a MANO_LEFT pose if mirror)."""
    F_j, G = hand["hand_pose"].to(like), hand["global_orient"].to(like)
    matrix = F_j.shape[-2:] == (3, 3)
    if not matrix and F_j.shape[-2:] != (15, 3) or matrix and F_j.shape[-3] != 15:
        raise ValueError(f"attach_hands: hand_pose must be (..., 15, 3) or (..., 15, 3, 3), got {tuple(F_j.shape)}")
    batch = F_j.shape[:-3] if matrix else F_j.shape[:-2]
    G = G.reshape(*batch, 3, 3) if matrix else axis_angle_to_matrix(G.reshape(*batch, 3))
    if mirror:  # MANO_LEFT parameters -> the right hand that is their mirror image (so is its hands_mean)
        G, F_j = mirror_rotation(G, matrix=True), mirror_rotation(F_j, matrix=matrix)
    if not flat_hand_mean:
        if matrix:
            raise ValueError("attach_hands: mano_flat_hand_mean=False needs an axis-angle hand_pose "
                             "(hands_mean offsets axis-angle parameters; rotation matrices are full rotations)")
        F_j = F_j + frames.mano_hands_mean.to(F_j)  # smplx's MANO: full = parameter + hands_mean
    return G, F_j


def fit_mano(verts, mano=None, left=False, steps=20):
    """MANO parameters whose mesh is verts (..., 778, 3) (simpleHand predicts vertices, not
    parameters; animation tools and `attach_hands` need parameters). Deterministic.

    mano: a loaded right MANO (default `load_mano()`: flat_hand_mean, so hand_pose is the full
    rotation). left: verts are a left hand; its parameters are those of the right hand that is its
    mirror image (HaMeR's convention, `attach_hands(left_as_right=True)`): verts = mirror(MANO(pose,
    betas)) + transl, as HaMeR's demo places a left hand.
    Steps: 1. a left hand's verts mirrored; 2. an initial pose from each joint's own vertices
    (`_pose_from_parts`); 3. betas and translation for it by linear least squares
    (`_shape_and_translation`); 2.-3. once more from that shape; 4. `steps` Levenberg-Marquardt
    iterations on the vertex residuals over pose, betas and translation. Float64 inside; each hand
    is its own problem (its own damping), so a hand's fit does not depend on its batch.

    Returns a dict: global_orient (..., 3), hand_pose (..., 15, 3) axis-angle, betas (..., 10),
    transl (..., 3), verts (..., 778, 3) the fitted mesh (mirrored back for a left hand), and
    error (...,) its mean vertex distance to verts, in verts' units (metres).
    """
    skin = Skinning(mano if mano is not None else load_mano(), torch.float64, per_sample=False)
    batch = verts.shape[:-2]
    target = verts.reshape(-1, 778, 3).detach().to(torch.float64)
    if left:  # 1.
        target = target * target.new_tensor([-1.0, 1.0, 1.0])
    B, L = len(target), skin.shapedirs.shape[-1]
    betas, transl = target.new_zeros(B, L), target.new_zeros(B, 3)
    for _ in range(2):  # 2.-3., twice: the second Procrustes fit starts from the shaped hand
        pose = _pose_from_parts(skin, target, betas)
        betas, transl = _shape_and_translation(skin, pose, target)

    # 4. Levenberg-Marquardt on the vertex residuals in mm, x = [pose, betas, translation in mm]
    def residuals(x):  # (B, 48 + L + 3) -> (B, 3 V)
        verts = skin(x[:, :48].view(-1, 16, 3), x[:, 48:48 + L])[0] * 1000 + x[:, None, 48 + L:]
        return (verts - target * 1000).flatten(1)

    x = torch.cat([pose.flatten(1), betas, transl * 1000], 1)
    with torch.no_grad():
        x = _levenberg_marquardt(residuals, x, steps)
    pose, betas, transl = x[:, :48].view(-1, 16, 3), x[:, 48:48 + L], x[:, 48 + L:] / 1000
    with torch.no_grad():
        fitted = skin(pose, betas)[0] + transl[:, None]
        error = (fitted - target).norm(dim=-1).mean(-1)
        pose, betas, transl = pose.detach(), betas.detach(), transl.detach()
        if left:
            fitted = fitted * fitted.new_tensor([-1.0, 1.0, 1.0])
            transl = transl * transl.new_tensor([-1.0, 1.0, 1.0])
    dtype = verts.dtype if verts.is_floating_point() else torch.float64
    out = dict(global_orient=pose[:, 0], hand_pose=pose[:, 1:], betas=betas, transl=transl, verts=fitted, error=error)
    return {k: v.to(dtype).reshape(*batch, *v.shape[1:]) for k, v in out.items()}


def _pose_from_parts(skin, target, betas):
    """Step 2 of `fit_mano`: MANO axis-angle (B, 16, 3) from the vertices each joint moves most:
    W_j = the Procrustes rotation of their shaped rest positions onto target (B, 778, 3), the local
    rotation W_parent^T W_j (a joint with fewer than 3 vertices takes its parent's W)."""
    rest = skin.v_template + torch.einsum("vkl,bl->bvk", skin.shapedirs, betas)  # (B, 778, 3)
    part = skin.lbs_weights.argmax(1)  # (778,)
    world = []
    for j, p in enumerate(skin.parents):
        ids = (part == j).nonzero()[:, 0]
        world.append(kabsch_rotation(rest[:, ids], target[:, ids]) if len(ids) >= 3 else world[p])
    local = [world[0]] + [world[p].transpose(-1, -2) @ world[j] for j, p in enumerate(skin.parents) if p >= 0]
    return matrix_to_axis_angle(torch.stack(local, 1))


def _shape_and_translation(skin, pose, target):
    """Step 3 of `fit_mano`: betas (B, L) and translation (B, 3) by linear least squares. With the
    rotations fixed, LBS is affine in beta (shape blend shapes, rest joints and so each joint's
    translation are linear in it): v(beta) = v(0) + sum_k (v(e_k) - v(0)) beta_k."""
    B, L = pose.shape[0], skin.shapedirs.shape[-1]
    basis = torch.cat([pose.new_zeros(1, L), torch.eye(L, dtype=pose.dtype)])  # (1 + L, L): 0, e_1 .. e_L
    v = skin(pose[:, None].expand(-1, L + 1, -1, -1), basis.expand(B, -1, -1))[0]  # (B, 1 + L, 778, 3)
    A = (v[:, 1:] - v[:, :1]).flatten(2).transpose(1, 2)  # (B, 3 V, L)
    A = torch.cat([A, torch.eye(3, dtype=A.dtype).repeat(778, 1).expand(B, -1, -1)], -1)  # (B, 3 V, L + 3)
    x = torch.linalg.lstsq(A, (target - v[:, 0]).flatten(1)[..., None]).solution[..., 0]  # (B, L + 3)
    return x[:, :L], x[:, L:]



def _levenberg_marquardt(residuals, x, steps, damping=1e-3):
    """Minimise |residuals(x)|^2 for each row of x (B, P) independently: `steps` iterations of
    (J^T J + lambda diag(J^T J)) dx = -J^T r, a step kept only where it lowers the cost (then
    lambda / 3, else lambda x 4). J (B, N, P) by forward-mode differentiation, one tangent per
    parameter for every row at once (rows do not interact)."""
    from torch.func import jvp, vmap
    P = x.shape[1]
    lam = x.new_full((len(x), 1), damping)
    r = residuals(x)
    cost = r.square().sum(1)
    tangents = torch.eye(P, dtype=x.dtype, device=x.device)[:, None].expand(P, len(x), P)
    for _ in range(steps):
        J = vmap(lambda t: jvp(residuals, (x,), (t,))[1])(tangents).permute(1, 2, 0)  # (B, N, P)
        JtJ, Jtr = J.transpose(1, 2) @ J, (J.transpose(1, 2) @ r[..., None])[..., 0]
        A = JtJ + lam[..., None] * torch.diag_embed(JtJ.diagonal(dim1=1, dim2=2).clamp_min(1e-9))
        x_new = x - torch.linalg.solve(A, Jtr)
        r_new = residuals(x_new)
        cost_new = r_new.square().sum(1)
        better = cost_new < cost
        x, r = torch.where(better[:, None], x_new, x), torch.where(better[:, None], r_new, r)
        cost, lam = torch.where(better, cost_new, cost), torch.where(better[:, None], lam / 3, lam * 4)
    return x


# =============================================================================================
# PART II: THE MACHINERY
#
# Reading model files without running code from them, and writing files atomically. The procedural
# stand-ins that take the place of the licensed MANO / SMPL / SMPL-X files are standins.py's.
# =============================================================================================

# --- Reading model files without running code from them --------------------------------------
# The official MANO/SMPL pickles hold chumpy objects (chumpy no longer installs on current numpy
# and Python) and scipy sparse matrices, and unpickling can call any function the file names.
# The unpickler below resolves only the few names numpy arrays need; chumpy and scipy.sparse
# classes become inert records of their saved attributes, turned into arrays afterwards.


class _Record:
    """An unpickled chumpy or scipy.sparse object: just its saved attributes, no behaviour."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"x": state}


# the only names a model pickle may resolve: numpy's array and dtype constructors, and the
# harmless helpers that Python 2 and protocol-2 pickles use to rebuild plain objects and bytes
_ALLOWED_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float64(1).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(1).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    ("builtins", "object"): object, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "object"): object, ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): __import__("copyreg")._reconstructor,
    ("copy_reg", "_reconstructor"): __import__("copyreg")._reconstructor,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only _ALLOWED_NAMES, and maps chumpy.* and scipy.sparse matrices to _Record
    subclasses. Any other name raises before anything is called."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")  # Python 2 pickles hold latin-1 byte strings
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_NAMES:
            return _ALLOWED_NAMES[module, name]
        if module.split(".")[0] == "chumpy" or (module.startswith("scipy.sparse")
                                                and name.endswith(("_matrix", "_array"))):
            return type(name, (_Record,), {"origin": f"{module}.{name}"})
        raise ValueError(f"{self.path}: refusing to unpickle {module}.{name}; a body model file may "
                         "only hold numpy arrays, scipy.sparse matrices and chumpy arrays")


def _as_array(value, key, path):
    """A numpy array from an unpickled value: an array, a chumpy record or a sparse record."""
    if not isinstance(value, _Record):
        return value if isinstance(value, np.ndarray) else np.asarray(value)
    kind, state = value.origin.rsplit(".", 1)[-1], value.state
    if value.origin.startswith("chumpy"):
        if "x" not in state:  # a chumpy expression, not a stored array
            raise ValueError(f"{path}: key '{key}' is a chumpy {kind} expression, which cannot be "
                             "evaluated without running chumpy")
        return _as_array(state["x"], key, path)
    import scipy.sparse as sp
    shape = tuple(state.get("_shape", state.get("shape", ())))
    if kind.startswith(("csc", "csr")):
        cls = sp.csc_matrix if kind.startswith("csc") else sp.csr_matrix
        return cls((state["data"], state["indices"], state["indptr"]), shape=shape).toarray()
    coords = state.get("coords", (state.get("row"), state.get("col")))
    return sp.coo_matrix((state["data"], tuple(coords)), shape=shape).toarray()


def _read_model(path, keys):
    """{key: array} for the `keys` present in a .pkl or .npz model file, without running code."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for key in set(keys) & set(npz.files):
                try:
                    out[key] = npz[key]
                except ValueError as e:  # an object array: only readable by unpickling
                    raise ValueError(f"{path}: key '{key}' holds Python objects; "
                                     "refusing to unpickle it") from e
            return out
    with open(path, "rb") as f:
        data = _SafeUnpickler(f, path).load()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict of arrays, found {type(data).__name__}")
    return {key: _as_array(data[key], key, path) for key in keys if key in data}


def read_pickled_array(path, key=None):
    """One array from a pickle (an official regressor such as 4D-Humans' SMPL_to_J19.pkl: a numpy
    array, or a scipy sparse or chumpy one; with `key`, that entry of a pickled dict such as SMPL-X's
    MANO_SMPLX_vertex_ids.pkl), read by the restricted unpickler: no code runs."""
    path = Path(path)
    with open(path, "rb") as f:
        data = _SafeUnpickler(f, path).load()
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: expected a pickled dict with key '{key}'")
        data = data[key]
    return _as_array(data, key or "the pickled array", path)


# Expected shapes (None: any size). The first keys are required, the rest optional.
_MODEL_KEYS = {
    "mano": dict(v_template=(778, 3), f=(1538, 3), J_regressor=(16, 778), weights=(778, 16),
                 kintree_table=(2, 16), shapedirs=(778, 3, None), posedirs=(778, 3, 135),
                 hands_components=(45, 45), hands_mean=(45,)),
    "smpl": dict(v_template=(6890, 3), f=(13776, 3), J_regressor=(24, 6890), weights=(6890, 24),
                 kintree_table=(2, 24), shapedirs=(6890, 3, None), posedirs=(6890, 3, 207)),
    "smplx": dict(v_template=(10475, 3), f=(20908, 3), J_regressor=(55, 10475), weights=(10475, 55),
                  kintree_table=(2, 55), shapedirs=(10475, 3, None), posedirs=(10475, 3, 486),
                  hands_componentsl=(45, 45), hands_componentsr=(45, 45), hands_meanl=(45,),
                  hands_meanr=(45,), lmk_faces_idx=(51,), lmk_bary_coords=(51, 3)),
}
_OPTIONAL_KEYS = {"smplx": dict(dynamic_lmk_faces_idx=(79, 17), dynamic_lmk_bary_coords=(79, 17, 3))}


def _checked_arrays(path, kind):
    """Read a model file's arrays and check every shape; ValueError names the key and shapes."""
    expected = {**_MODEL_KEYS[kind], **_OPTIONAL_KEYS.get(kind, {})}
    arrays = _read_model(path, list(expected))
    for key, shape in expected.items():
        if key not in arrays:
            if key in _MODEL_KEYS[kind]:
                raise ValueError(f"{path}: key '{key}' is missing (expected shape {shape})")
            continue
        found = arrays[key].shape
        if len(found) != len(shape) or any(e is not None and e != s for e, s in zip(shape, found)):
            wanted = "(" + ", ".join("B" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{path}: key '{key}' has shape {found}, expected {wanted}")
    if kind == "smplx" and arrays["shapedirs"].shape[2] < 20:
        raise ValueError(f"{path}: key 'shapedirs' has {arrays['shapedirs'].shape[2]} columns, "
                         "expected at least 20 (10 shape + 10 expression)")
    return arrays


# --- Writing files atomically ---------------------------------------------------------------


def atomic_write(path, write):
    """Create the file `path` all at once: write(f) writes into a binary file object of a temporary
    file in the same folder, which is flushed, fsynced and renamed into place (os.replace), so a
    reader or a racing process (DDP ranks) never sees a half-written file, and a crash leaves the
    old file or none. The temporary file is removed on error (a SIGKILL leaves it: the caller's
    next start sweeps it, `checkpoints.sweep_temporaries`). The file is readable by everyone
    (0o644), as a model file or a checkpoint is meant to be shared. Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)  # the old file stays whole until this moment
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut only once its
        try:  # folder is on disk too
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
