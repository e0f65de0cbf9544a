"""The geometry the three paper files share: conventions, rotations, cameras, joint orders, skinning, model-file
loaders, released checkpoints read safely, and HMR2.0/HaMeR's transformer decoder. It imports no module of this
project; where no model files exist its loaders use the stand-ins a project registers (`standin_models`: this
project's lab registers its own).

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
  in [-0.5, 0.5] (crop pixel = (u + 0.5) S). CLIFF's `cam_crop_to_full` (this project's lab/crops.py) moves
  that camera to the full image (focal f / S * max(W, H), principal point at the image centre).
- Both float32 and float64 are supported; functions keep the dtype and device of their input.

Symbols: B batch, N points, J joints, V vertices, F faces, R rotation matrix, theta angle, n unit axis, K intrinsics,
f focal length and S crop size (pixels), s weak-perspective scale, t = [tx, ty, tz] translation, (W, H) image size.

Map of the file. Part I, the reference: 1 rotations (axis-angle <-> matrix <-> 6D, `mirror_rotation` for left
hands) -> 2 cameras -> 3 kinematic trees and joint orders (MANO, SMPL, SMPL-X, FreiHAND; `hand_joints21`: fingertips
by convention, FreiHAND's or smplx/HaMeR's) -> 4 forward kinematics and skinning (`lbs`, `Skinning`) -> 5 loaders
(`load_mano`, `load_smpl`, `load_smplx`: real files or registered stand-ins; released checkpoints: `read_checkpoint`,
`load_state_strict`) and ImageNet's mean and std. Part II, the machinery: reading model files safely. Part III: the
transformer decoder of HMR2.0's and HaMeR's heads (`TransformerDecoder`).
"""

import contextlib
import io
import os
import pickle
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
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


# ---------------------------------------------------------------------------------------------
# 3. Kinematic trees and joint orders (parents[j] < j: a parent always comes before its child)

# MANO (16): wrist; index 1-3; middle 4-6; pinky 7-9; ring 10-12; thumb 13-15
MANO_JOINT_NAMES = ("wrist",) + tuple(f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb")
                                      for i in (1, 2, 3))
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
MANO_MCP_JOINTS = {"index": 1, "middle": 4, "pinky": 7, "ring": 10, "thumb": 13}
# Fingertip vertex ids (thumb, index, middle, ring, pinky), by the convention of the data joints are compared with.
# FreiHAND's annotations and the official simpleHand (`mesh_to_joints`) take 555 and 672 for ring and pinky; smplx
# and HaMeR (and so HMR-Adapter's hand expert) 554 and 671, their neighbours (what scoring across the two costs:
# docs/reference.md). manopth's 745, 317, 444, 556, 673 are not used. Pick one with `hand_joints21(..., convention)`.
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

    per_sample=True runs one product per sample, so a sample's numbers are bitwise the same in any batch (BLAS
    chooses kernels and summation orders by the matrix sizes, batch size included)."""
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

    Adds the model's pose_mean (MANO and SMPL-X hands: zero with flat_hand_mean=True, the default of our loaders),
    appends SMPL-X's expression directions to its shape directions, and precomputes the rest joints' dependence on beta.
    dtype float64 or float32; per_sample as in `lbs` (on by default: the datasets need exact batches). Up to float
    precision it is model(betas, global_orient, body_pose / hand_pose, ...).vertices and .joints[:, :J].
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
# 5. Loaders: real model files, or registered stand-ins (this project's lab/standins.py) when there are none

_LAYOUT = ("DIR/mano/MANO_RIGHT.pkl (and MANO_LEFT.pkl), DIR/smpl/SMPL_NEUTRAL.pkl, "
           "DIR/smplx/SMPLX_NEUTRAL.npz")
_SHAPE_WARNING = "WARNING: You are using a"  # smplx's print when a file has fewer than 300 shape columns
_printed_warnings = set()


def _build_quietly(build, capped):
    """Call smplx's constructor build() and pass on what it prints, except its "only 10 shape coefficients" warning:
    that one is printed once per process, in the main process only (not in DataLoader workers, not on other DDP ranks),
    and only if `capped` (the caller asked for more coefficients than the 10 smplx keeps). Otherwise it says nothing:
    the real MANO and SMPL 1.0 files and our stand-ins have exactly 10."""
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


def model_file(model_dir, kind, names):
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

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. Defaults use_pca=False, flat_hand_mean=True,
    batch_size=1; kwargs go to smplx.MANO (dtype, num_pca_comps, ...). Applies the known fix to the official left hand
    (vchoutas/smplx#48): its shapedirs' x rows have the wrong sign, recognisable because they equal the
    right hand's.
    """
    import smplx
    from smplx.utils import Struct
    if side not in ("right", "left"):
        raise ValueError(f"load_mano: side must be 'right' or 'left', got {side!r}")
    path = model_file(model_dir, "mano", (f"MANO_{side.upper()}.pkl",))
    arrays = model_arrays(path, "mano")
    right = path.with_name("MANO_RIGHT.pkl")
    if side == "left" and right.is_file():
        right_dirs = _read_model(right, ["shapedirs"])["shapedirs"]
        if np.abs(arrays["shapedirs"][:, 0] - right_dirs[:, 0]).sum() < 1:  # the known bug
            arrays["shapedirs"] = arrays["shapedirs"] * np.array([-1, 1, 1])[:, None]
    elif side == "left":
        warnings.warn(f"{path}: no MANO_RIGHT.pkl next to it, so the official left hand's "
                      "shapedirs bug (vchoutas/smplx#48) can be neither detected nor fixed")
    kwargs = dict(dict(use_pca=False, flat_hand_mean=True, batch_size=1), **kwargs)
    return _build_quietly(lambda: smplx.MANO(str(path), is_rhand=side == "right", data_struct=Struct(**arrays),
                                             **kwargs), capped=kwargs.get("num_betas", 10) > 10)


def load_smpl(model_dir=None, **kwargs):
    """smplx.SMPL from model_dir/smpl/SMPL_{GENDER}.pkl (gender="neutral" by default).

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. kwargs go to smplx.SMPL. smplx's warning about 10
    shape coefficients: see `_build_quietly`."""
    import smplx
    from smplx.utils import Struct
    kwargs = dict(dict(batch_size=1, gender="neutral"), **kwargs)
    path = model_file(model_dir, "smpl", (f"SMPL_{kwargs['gender'].upper()}.pkl",))
    arrays = model_arrays(path, "smpl")
    return _build_quietly(lambda: smplx.SMPL(str(path), data_struct=Struct(**arrays), **kwargs),
                          capped=kwargs.get("num_betas", 10) > 10)


def load_smplx(model_dir=None, **kwargs):
    """smplx.SMPLX from model_dir/smplx/SMPLX_{GENDER}.npz (or .pkl; gender="neutral" by default).

    model_dir None: $HMR_BODY_MODELS, else the procedural stand-in. Defaults batch_size=1, use_pca=False,
    flat_hand_mean=True; kwargs go to smplx.SMPLX. smplx reads SMPL-X only from a file, and would unpickle whatever it
    holds, so the checked arrays go through a temporary .npz of plain arrays unless the file is already one."""
    import smplx
    kwargs = dict(dict(batch_size=1, gender="neutral", use_pca=False, flat_hand_mean=True), **kwargs)
    name = f"SMPLX_{kwargs['gender'].upper()}"
    path = model_file(model_dir, "smplx", (name + ".npz", name + ".pkl"))
    arrays = model_arrays(path, "smplx")
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


# The per-channel mean and std by which the released backbones (timm's, ViTPose's, HaMeR's) normalise their input
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, in [0, 1]: timm's, ViTPose's, HaMeR's IMAGE_MEAN / 255
IMAGENET_STD = (0.229, 0.224, 0.225)


# =============================================================================================
# PART II: THE MACHINERY: reading model files without running code from them. The official MANO/SMPL pickles hold
# chumpy objects (chumpy no longer installs on current numpy and Python) and scipy sparse matrices, and unpickling
# can call any function the file names. The unpickler below resolves only the few names numpy arrays need; chumpy
# and scipy.sparse classes become inert records of their saved attributes, turned into arrays afterwards.
# =============================================================================================


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


def model_arrays(path, kind):
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


# =============================================================================================
# PART III: the transformer decoder of HMR2.0's SMPL head and HaMeR's MANO head (4D-Humans), which GenHMR's
# regression stage and HMR-Adapter's hand expert both build on


class PreNorm(nn.Module):
    """HMR2.0/HaMeR's PreNorm: fn(norm(x), ...) (names: norm, fn)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x, *context):
        return self.fn(self.norm(x), *context)


class SelfAttention(nn.Module):
    """HMR2.0/HaMeR's Attention: to_qkv (no bias), heads x dim_head, to_out.0 (bias)."""

    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x):
        q, k, v = self.to_qkv(x).chunk(3, -1)
        return self.to_out(attend(q, k, v, self.heads))


class CrossAttention(nn.Module):
    """HMR2.0/HaMeR's CrossAttention: to_q (dim), to_kv (context_dim), no biases, to_out.0 (bias).
    Eq. (1): CA(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q = x W_q, K = c W_k, V = c W_v."""

    def __init__(self, dim, context_dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x, context):
        k, v = self.to_kv(context).chunk(2, -1)
        return self.to_out(attend(self.to_q(x), k, v, self.heads))


def attend(q, k, v, heads):
    """Multi-head softmax attention: q (B, Lq, M d), k and v (B, Lk, M d) -> (B, Lq, M d)."""
    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, M, L, d)
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


class FeedForward(nn.Module):
    """HMR2.0/HaMeR's FeedForward: net = Linear, GELU, Dropout, Linear (dropout 0; names net.0, net.3)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class DecoderBlocks(nn.Module):
    """HMR2.0/HaMeR's TransformerCrossAttn: layers.i = [PreNorm(SA), PreNorm(CA), PreNorm(FF)]."""

    def __init__(self, dim, depth, heads, dim_head, mlp, context_dim):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([
            PreNorm(dim, SelfAttention(dim, heads, dim_head)),
            PreNorm(dim, CrossAttention(dim, context_dim, heads, dim_head)),
            PreNorm(dim, FeedForward(dim, mlp))]) for _ in range(depth))


class TransformerDecoder(nn.Module):
    """HMR2.0/HaMeR's TransformerDecoder: the zero token -> to_token_embedding -> + pos_embedding -> blocks."""

    def __init__(self, dim, depth, heads, dim_head, mlp, context_dim, num_tokens=1):
        super().__init__()
        self.to_token_embedding = nn.Linear(1, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, dim))
        self.transformer = DecoderBlocks(dim, depth, heads, dim_head, mlp, context_dim)

    def start(self, batch):
        """The query token Z (B, 1, dim) before the first block."""
        zero = self.pos_embedding.new_zeros(batch, 1, 1)
        return self.to_token_embedding(zero) + self.pos_embedding

    def forward(self, context):
        z = self.start(len(context))
        for sa, ca, ff in self.transformer.layers:
            z = z + sa(z)
            z = z + ca(z, context)
            z = z + ff(z)
        return z
