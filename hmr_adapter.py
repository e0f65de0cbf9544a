"""HMR-Adapter: a lightweight adapter with dual-path cross augmentation for expressive human mesh recovery
(anonymous ACM MM 2024 submission), in one file.

Two frozen pretrained models, each adapted by a few trainable parameters that read the other path (Fig. 2):

  image -> whole-body model (SMPLer-X) -> theta_0, hand boxes, hand RoI features F^J at the 8 MCP joints
        -> body adapter (Eq. 4): theta_hat = theta_0 + FFN(CA(Q'', K'', V'')) -> arm chains theta_b (6D)
  hand crops (left flipped) -> hand expert (HaMeR) + hand adapter on theta_b (Eqs. 1-3) -> MANO hands
  -> SMPL-X (Sec. 3.1): body from theta_hat, fingers from the hand path, wrists by IK, shape, face, camera
`pipeline(..., adapted=False)` is the paper's baseline: both frozen models + IK. Training (Sec. 3.5): bases frozen,
the hand adapter reads the true body pose, the body adapter samples at the true 2D hand keypoints.

Conventions: bodymodels' (column vectors, 6D = the first two COLUMNS of R as HaMeR, axis-angle, metres). Left
hands are flipped into right hands (HaMeR), their arm chains mirrored (R -> M R M, M = diag(-1, 1, 1)).
Symbols: B batch, J joints, V vertices, C channels, L tokens, h x w ViT grid, R RoI side, S crop side, theta
poses (6D unless named), beta shape, F^H hand image tokens, F^B arm-chain tokens, F^J MCP tokens.

Map: 1 arm chains, points in crops and RoIs -> 2 hand adapter -> 3 body adapter -> 4 the model (`HMRAdapter`,
start here: its doctests) -> 5 losses (Eqs. 5-8, `compute_loss`) -> 6 inference (`pipeline`) -> 7 configs (PAPER,
TINY). Appendices: A the body models, hands on a body (`attach_hands`) and the bases (ViT, HaMeR, SMPLer-X, hand
crops, RoI-align, `Bases`), B the released weights. How this project trains, evaluates and ablates it (train.py's
protocol, the bases' tiny stand-ins, Tables 3-6's rows, parameter counts): lab/hmr_adapter_experiments.py. Running it:
`demo.py --model hmr_adapter --image PATH`, `python -m lab.bench --model hmr_adapter`. Where this differs from the paper
(NOTE N), results: docs/hmr_adapter.md.
"""

import copy
import functools
import math
import os
import types
import typing
from typing import Annotated
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import bodymodels
from bodymodels import (IMAGENET_MEAN, IMAGENET_STD, SMPLX_HAND_JOINTS, SMPLX_PARENTS, TransformerDecoder,
                        model_arrays, model_file, axis_angle_to_matrix, forward_kinematics, matrix_to_axis_angle,
                        matrix_to_rot6d, mirror_rotation, rot6d_to_matrix)

SIDES = ("left", "right")
ARMS = {"left": bodymodels.SMPLX_LEFT_ARM, "right": bodymodels.SMPLX_RIGHT_ARM}  # Sec. 3.3 arm joint groups
# SMPLer-X's 20 hand joints: FreiHAND's 21 without the wrist
HAND_JOINTS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
MCP = (4, 8, 12, 16)  # index, middle, ring, pinky knuckles among those 20 (SMPLer-X's L_MCP / R_MCP)
NUM_BODY = 22  # theta_0: root + 21 body joints
HAND_FINGER_JOINTS = tuple(range(25, 55))  # SMPL-X's 15 finger joints of each hand
FINGER_WRISTS = (20,) * 15 + (21,) * 15  # the wrist each of them hangs from (left, then right)


# ---------------------------------------------------------------------------------------------
# 1. Building blocks: the arm chains theta_b (Sec. 3.3); points in crops and RoI maps. The transformer blocks
#    of HaMeR's head, which the hand adapter copies (SA', CA', Eqs. 1-3) and the body adapter stacks (Eq. 4),
#    are the hand expert's: HMR2.0/HaMeR's decoder, bodymodels' `TransformerDecoder`


def arm_chains(body_pose, chain="global"):
    """theta_b of both arms (..., 2, 8, 6), left first: the 6D rotations of each arm chain's joints
    root -> wrist (Sec. 3.3) from local body rotations (..., >= 22, 3, 3). chain "local": the joints'
    own (SMPL-X parameter) rotations, the paper's "each joint's rotation"; "global": their products from
    the root (camera frame, forward kinematics), whose last is the hand's global orientation. The left
    chain is mirrored to match the flipped crop (mirroring commutes with the products): NOTE H3.

    NOTE H14: TINY takes "global", whose last token is the hand's orientation (local: eight to compose)."""
    R = body_rotations(body_pose, chain)
    return matrix_to_rot6d(torch.stack([mirror_rotation(R[..., list(ARMS["left"]), :, :], matrix=True),
                                        R[..., list(ARMS["right"]), :, :]], -4))


def body_rotations(body_pose, chain):
    """The 22 body joints' rotations (..., 22, 3, 3) that theta_b holds, of local ones (..., >= 22, 3, 3):
    as they are ("local") or composed from the root ("global", forward kinematics)."""
    if chain not in ("local", "global"):
        raise ValueError(f"AdapterConfig.chain: 'local' or 'global', got {chain!r}")
    R = body_pose[..., :NUM_BODY, :, :]
    if chain == "global":
        R = forward_kinematics(R, R.new_zeros(*R.shape[:-2], 3), bodymodels.SMPLX_PARENTS[:NUM_BODY])[1]
    return R


def scale_boxes(boxes, scale):
    """Square boxes (..., 4) [x0, y0, x1, y1] enlarged `scale` times about their centres."""
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]).amax(-1, keepdim=True) / 2
    return torch.cat([centre - scale * half, centre + scale * half], -1)


def to_crop(points, boxes, flip):
    """Image pixels (B, N, 2) -> normalised crop coordinates in [-0.5, 0.5] (HaMeR's 2D keypoints)
    of boxes (B, 4), mirrored (u -> -u) where flip (B,)."""
    uv = (points - boxes[:, None, :2]) / (boxes[:, 2:] - boxes[:, :2])[:, None] - 0.5
    sign = torch.stack([torch.where(flip, -1.0, 1.0), torch.ones(len(flip), device=flip.device)], -1)
    return uv * sign.to(uv)[:, None]


def to_roi(points, boxes, size, flip):
    """Image pixels (B, N, 2) -> the RoI heatmap frame of boxes (B, 4): the box's corners at 0 and
    `size` (SMPLer-X's convention), x -> size - 1 - x where flip (B,)."""
    p = (points - boxes[:, None, :2]) * size / (boxes[:, 2:] - boxes[:, :2])[:, None]
    return torch.where(flip[:, None, None], torch.stack([size - 1 - p[..., 0], p[..., 1]], -1), p)


def mcp_in_rois(hand_joints2d, boxes, size):
    """The 4 MCP joints (B, 2, 4, 2) of both hands' 2D keypoints (B, 2, 21, 2) (pixels, OpenPose order) in the RoI
    frame of hand boxes (B, 2, 4) (`to_roi`, left hands flipped)."""
    B = len(hand_joints2d)
    kp = hand_joints2d.flatten(0, 1)[:, [HAND_JOINTS[i] for i in MCP]]  # (2B, 4, 2) pixels
    return to_roi(kp, boxes.flatten(0, 1), size, flip_pattern(B, kp.device)).view(B, 2, len(MCP), 2)


def sample_joint_features(features, points):
    """Bilinear features (B, N, C) of maps (B, C, H, W) at points (B, N, 2) in map pixels (pixel p at
    coordinate p, as SMPLer-X's own sample_joint_features); zero outside the map."""
    H, W = features.shape[-2:]
    grid = torch.stack([2 * points[..., 0] / (W - 1) - 1, 2 * points[..., 1] / (H - 1) - 1], -1)
    out = F.grid_sample(features, grid[:, :, None].to(features.dtype), align_corners=True)  # (B, C, N, 1)
    return out[..., 0].transpose(1, 2)


def flip_pattern(batch, device):
    """(2 batch,) bool: True for the left hand of each sample (hands ordered left, right)."""
    return torch.tensor([True, False], device=device).repeat(batch)


# ---------------------------------------------------------------------------------------------
# 2. Hand-path adapter (Sec. 3.3, Eqs. 1-3)


class HandAdapter(nn.Module):
    """New SA' and CA' for every block of a frozen hand head, copies of SA and CA (Sec. 3.3: "SA', W'_q,
    W'_k and W'_v are initialized from SA, W_q, W_k and W_v"); CA' attends to the arm chain's tokens
    F^B = Linear(theta_b) + E (Eq. 2)."""

    def __init__(self, head, joints=len(ARMS["left"])):
        super().__init__()
        self.sa, self.ca = adapter_copies(head)
        context = head.transformer.transformer.layers[0][1].fn.to_kv.in_features
        self.body_embed = nn.Linear(6, context)  # F^B = theta_b W_B ("a linear layer", Sec. 3.3)
        self.joint_embed = nn.Parameter(torch.zeros(1, joints, context))  # NOTE H2
        nn.init.trunc_normal_(self.joint_embed, std=0.02)

    def forward(self, head, hand_tokens, theta_b):
        """head: the frozen MANOHead; hand_tokens F^H (B, h w, C); theta_b (B, J, 6) (zeros: no body
        labels, Sec. 3.3). -> pose (B, 16, 6), betas, cam through the frozen readouts."""
        return self.attend(head, hand_tokens, self.body_embed(theta_b) + self.joint_embed)  # Eq. (2): F^B

    def attend(self, head, hand_tokens, context):
        """Eq. 3 in every block of the frozen head, CA' attending to context (B, J, C) -> the frozen readouts."""
        z = head.transformer.start(len(hand_tokens))
        for (sa, ca, ff), sa2, ca2 in zip(head.transformer.transformer.layers, self.sa, self.ca):
            z_a, z_b = z + sa(z), z + sa2(z)  # frozen path; the adapter's query path (SA')
            # Eq. (3): Z_new = CA(Q, K, V) + CA(Q', K', V'), Q' = SA'(Z) W'_q, K' = F^B W'_k, V' = F^B W'_v
            z = z_a + ca(z_a, hand_tokens) + ca2(z_b, context)
            z = z + ff(z)
        return head.readout(z)


def adapter_copies(head):
    """SA' and CA' (two ModuleLists, trainable): copies of each block's SA and CA of a frozen head.
    NOTE H1: copies of the PreNorm modules, LayerNorm and output projection included."""
    layers = head.transformer.transformer.layers
    return (nn.ModuleList(copy.deepcopy(sa) for sa, _, _ in layers).requires_grad_(True),
            nn.ModuleList(copy.deepcopy(ca) for _, ca, _ in layers).requires_grad_(True))


# ---------------------------------------------------------------------------------------------
# 3. Body-path adapter (Sec. 3.4, Eq. 4)


class BodyAdapter(nn.Module):
    """theta_hat = theta_0 + FFN(CA(Q'', K'', V'')) (Eq. 4): a 1x1 conv C -> P on the hand feature map,
    bilinear features at the 4 MCP joints of each hand (F^J, B x 8 x P), and transformer blocks on one
    empty query token (SA'', CA'' to F^J, FF); the regressor's last layer starts at zero."""

    def __init__(self, cfg, width, tokens=2 * len(MCP)):
        super().__init__()
        self.proj = nn.Conv2d(width, cfg.body_proj, 1)  # NOTE H7: no BN (the paper: "a 1-by-1 convolution")
        self.token_embed = nn.Parameter(torch.zeros(1, tokens, cfg.body_proj))  # NOTE H2
        nn.init.trunc_normal_(self.token_embed, std=0.02)
        self.transformer = TransformerDecoder(cfg.body_dim, cfg.body_depth, cfg.body_heads, cfg.body_dim_head,
                                              cfg.body_mlp, cfg.body_proj)
        self.regressor = nn.Sequential(nn.Linear(cfg.body_dim, cfg.body_dim), nn.GELU(),
                                       nn.Linear(cfg.body_dim, NUM_BODY * 6))  # NOTE H8
        nn.init.zeros_(self.regressor[-1].weight)
        nn.init.zeros_(self.regressor[-1].bias)

    def forward(self, theta0, rois, mcp):
        """theta0 (B, 22, 6); rois (B, 2, C, R, R); mcp (B, 2, 4, 2) in RoI pixels. -> theta_hat (B, 22, 6)."""
        B = len(rois)
        maps = self.proj(rois.flatten(0, 1))  # (2B, P, R, R)
        tokens = sample_joint_features(maps, mcp.flatten(0, 1)).reshape(B, 2 * len(MCP), -1) + self.token_embed  # F^J
        return self.regress(theta0, tokens)

    def regress(self, theta0, tokens):
        """Eq. 4 on tokens (B, 8, P) -> theta_hat (B, 22, 6)."""
        z = self.transformer(tokens)  # Z'' -> SA'' -> CA''(., F^J) -> FF, depth times
        return theta0 + self.regressor(z[:, 0]).view(len(theta0), NUM_BODY, 6)  # Eq. (4)


# ---------------------------------------------------------------------------------------------
# 4. The model: the adapters on the frozen bases (Sec. 3.5)


class HMRAdapter(nn.Module):
    """HMR-Adapter (Fig. 2): frozen bases (eval mode whatever train() says), the hand adapter (Eq. 3) and the body
    adapter (Eq. 4), which share no parameter (Sec. 3.5), from an `AdapterConfig` and `Bases` (appendix A):
    untrained, released (`load_pretrained`), or trained stand-ins. The small config, on untrained bases:

    >>> _ = torch.manual_seed(0)
    >>> model = HMRAdapter(TINY.model, Bases(BASES_TINY.model))
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)  # the two adapters; the bases are frozen
    252964

    A training step (`forward`, `compute_loss`): person images, the true hand boxes (left first), SMPL-X pose and
    2D hand keypoints:

    >>> image = torch.rand(2, 3, 256, 192)
    >>> hand_boxes = torch.tensor([[40.0, 120, 72, 152], [120, 120, 152, 152]]).expand(2, 2, 4)
    >>> smplx_pose, hand_joints2d = 0.2 * torch.randn(2, 55, 3), 120 + 32 * torch.rand(2, 2, 21, 2)
    >>> pred = model(image, hand_boxes, smplx_pose, hand_joints2d)
    >>> pred["hand_pose"].shape, pred["theta_hat"].shape
    (torch.Size([2, 2, 16, 6]), torch.Size([2, 22, 6]))
    >>> targets = dict(hand_pose=0.2 * torch.randn(2, 2, 16, 3), hand_joints2d=hand_joints2d, smplx_pose=smplx_pose,
    ...                joints3d=torch.randn(2, 55, 3), joints2d=256 * torch.rand(2, 55, 2))
    >>> loss, terms = compute_loss(pred, targets, TINY.model)
    >>> loss.backward()
    >>> torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    >>> all(p.grad is None for p in model.bases.parameters())
    True

    Inference (`pipeline`, Sec. 3.1) from the images (and, if at hand, a detector's hand boxes): SMPL-X in metres

    >>> verts, joints, boxes = pipeline(model.eval(), image)
    >>> verts.shape, joints.shape, boxes.shape
    (torch.Size([2, 10475, 3]), torch.Size([2, 55, 3]), torch.Size([2, 2, 4]))
    """

    FROZEN_KEYS = ("theta0", "shape", "cam")  # what the body adapter's loss reads of the whole-body output

    def __init__(self, cfg, bases):
        super().__init__()
        self.cfg, self.bases = cfg, bases.requires_grad_(False).eval()
        self.hand_adapter = HandAdapter(bases.hand_expert.mano_head)  # Sec. 3.3, on the frozen hand head
        self.body_adapter = BodyAdapter(cfg, bases.cfg.body_width)  # Sec. 3.4

    def train(self, mode=True):
        super().train(mode)
        self.bases.eval()  # frozen: dropout off, normalisation statistics never move
        return self

    # --- training (Sec. 3.5)

    @torch.no_grad()
    def frozen_inputs(self, image, hand_boxes):
        """What the frozen bases give the adapters in training: F^H of the crops at the true hand boxes (B, 2, L, C),
        the predicted hand boxes (B, 2, 4), hand feature maps (B, 2, C, R, R), `FROZEN_KEYS`."""
        tokens = hand_tokens(self.bases, image, hand_boxes)
        out = self.bases.whole_body(image)
        pred_boxes = scale_boxes(out["boxes"], self.bases.cfg.hand_box_scale)
        rois = self.bases.whole_body.hand_roi_net(out["feature_map"], pred_boxes, image.shape[-2:])
        return dict(tokens=tokens.reshape(len(image), 2, *tokens.shape[1:]), pred_boxes=pred_boxes, rois=rois,
                    **{k: out[k] for k in self.FROZEN_KEYS})

    def forward(self, image, hand_boxes, smplx_pose, hand_joints2d, body_known=None, frozen=None):
        """The training pass (Sec. 3.5). image (B, 3, H, W) in [0, 1]; hand_boxes (B, 2, 4) the true boxes
        [x0, y0, x1, y1] (pixels, left first: the crops, Sec. 4.1); smplx_pose (B, >= 22, 3) the true pose
        (axis-angle), whose arm chains the hand adapter reads; hand_joints2d (B, 2, 21, 2) the true hand
        keypoints (pixels, OpenPose order), whose MCP joints place F^J in the predicted boxes' RoIs; body_known
        (B, 2) bool: False for a hand without a body label (theta_b = 0, Sec. 3.3); frozen: `frozen_inputs`'s,
        if at hand. -> {hand_pose (B, 2, 16, 6), hand_betas (B, 2, 10), hand_cam (B, 2, 3); crop_boxes (B, 2, 4)
        what the crops show; theta_hat (B, 22, 6) with the frozen shape (B, 10), cam (B, 3); image_hw}."""
        front = self.frozen_inputs(image, hand_boxes) if frozen is None else frozen
        return dict(**self.hand_path(image, front, hand_boxes, smplx_pose, body_known),
                    **self.body_path(image, front, hand_boxes, hand_joints2d), image_hw=tuple(image.shape[-2:]))

    def hand_path(self, image, front, hand_boxes, smplx_pose, body_known):
        """Sec. 3.5.1: the hand adapter on F^H of the crops at the true boxes, given the true arm chains."""
        chain = arm_chains(axis_angle_to_matrix(smplx_pose[:, :NUM_BODY]), self.cfg.chain).flatten(0, 1)  # (2B, J, 6)
        if body_known is not None:
            chain = chain * body_known.reshape(-1, 1, 1).to(chain)
        pose, betas, cam = self.hand_adapter(self.bases.hand_expert.mano_head, front["tokens"].flatten(0, 1), chain)
        return dict(hand_pose=pose.unflatten(0, (-1, 2)), hand_betas=betas.unflatten(0, (-1, 2)),
                    hand_cam=cam.unflatten(0, (-1, 2)), crop_boxes=crop_boxes(self.bases.cfg, hand_boxes))

    def body_path(self, image, front, hand_boxes, hand_joints2d):
        """Sec. 3.5.2: the body adapter on the hand feature maps at the predicted boxes, at the true MCP joints."""
        mcp = mcp_in_rois(hand_joints2d, front["pred_boxes"], self.bases.cfg.hand_roi)
        theta_hat = self.body_adapter(front["theta0"], front["rois"], mcp)  # Eq. (4)
        return dict(theta_hat=theta_hat, shape=front["shape"], cam=front["cam"])


# ---------------------------------------------------------------------------------------------
# 5. Losses (Eqs. 5-8); the body models that pose their meshes: appendix A.1


def hand_targets(hand_pose, hand_joints2d, boxes):
    """What the hand path is scored against (2B hands, left first) of `compute_loss`'s hand targets: rotations R*
    (2B, 16, 3, 3), the mesh with zero betas, the 2D keypoints in the (flipped) crops at boxes (B, 2, 4)."""
    R = axis_angle_to_matrix(hand_pose.flatten(0, 1))
    verts, joints = mano_mesh(R, R.new_zeros(len(R), 10))
    uv = to_crop(hand_joints2d.flatten(0, 1), boxes.flatten(0, 1), flip_pattern(len(boxes), R.device))
    return dict(R=R, verts=verts, joints=joints, uv=uv)


def hand_loss(out, target, cfg):
    """Eq. (5): lambda_2D L_2D + lambda_3D L_3D + lambda_v L_v + lambda_theta L_theta + lambda_beta L_beta.
    out: (pose (N, 16, 6), betas, cam); target: `hand_targets`. 3D terms are wrist-relative (L1, m).
    Each term is a mean over every element; with cfg.loss_batch (HaMeR's calibration) it is multiplied by
    the number of elements a hand sums and by loss_batch: # official (hamer losses.py): sums over joints,
    coordinates (rotation matrix entries) and its per-GPU batch. A mean over the batch stays a mean under DDP."""
    (_, betas, cam), R = out, rot6d_to_matrix(out[0])
    verts, joints = mano_mesh(R, betas)
    wrist, wrist_gt = joints[:, :1], target["joints"][:, :1]
    uv = bodymodels.project_to_crop(joints, bodymodels.weak_perspective_to_translation(cam))
    # Eq. (6), NOTE H9: ||R - R*||^2 + (1 - cos(R, R*)) per joint, on rotation matrices
    cos = F.cosine_similarity(R.flatten(-2), target["R"].flatten(-2), dim=-1)
    terms = dict(hand_3d=(joints - wrist - target["joints"] + wrist_gt).abs().mean(),
                 hand_2d=(uv - target["uv"]).abs().mean(),
                 hand_verts=(verts - wrist - target["verts"] + wrist_gt).abs().mean(),
                 hand_pose=((R - target["R"]) ** 2).sum((-1, -2)).mean() + (1 - cos).mean(),
                 hand_betas=(betas ** 2).mean())
    if cfg.loss_batch:  # per hand: 21 x 3, 21 x 2, 778 x 3, 16 joints (each a sum over its 9 entries), 10
        per_hand = dict(hand_3d=joints[0].numel(), hand_2d=uv[0].numel(), hand_verts=verts[0].numel(),
                        hand_pose=R.shape[1], hand_betas=betas.shape[1])
        terms = {k: t * (per_hand[k] * cfg.loss_batch) for k, t in terms.items()}
    weights = (cfg.w_hand_3d, cfg.w_hand_2d, cfg.w_hand_verts, cfg.w_hand_pose, cfg.w_hand_betas)
    return sum(w * t for w, t in zip(weights, terms.values())), terms


def body_pose_loss(theta, shape, cam, targets, image_hw, cfg):
    """Eqs. (7, 8) on a body pose theta (B, 22, 6) with frozen shape and camera: lambda_theta L1 on rotation
    matrices, lambda_3D L1 on pelvis-relative joints, lambda_2D L_proj on projected joints (normalised by the
    image height), over the 22 body joints; targets: smplx_pose (B, 55, 3), joints3d (B, 55, 3), joints2d
    (B, 55, 2) pixels of an image_hw image. L_img and L_beta: no gradient here (NOTE H10). NOTE H16: lambda_3D also
    weighs the 30 finger joints relative to their wrist, posed by theta's arms and wrists with the true fingers:
    SMPLer-X's hand-root-relative joints (main/SMPLer_X.py, get_coord and loss 'smplx_joint_cam'). No body joint
    hangs below a wrist, so only these see a forearm's twist."""
    R, R_gt = rot6d_to_matrix(theta), axis_angle_to_matrix(targets["smplx_pose"][:, :NUM_BODY])
    body = list(range(NUM_BODY))
    R = torch.cat([R, axis_angle_to_matrix(targets["smplx_pose"][:, NUM_BODY:].to(R))], 1)  # true jaw, eyes, fingers
    joints, gt = body_joints(R, shape), targets["joints3d"]
    uv = bodymodels.project_to_crop(joints[:, body], smplerx_translation(cam))
    (H, W), j2d = image_hw, targets["joints2d"]
    uv_gt = (j2d[:, body] - j2d.new_tensor([W / 2, H / 2])) / H  # what a camera of focal 5000 / 256 H projects to
    fingers, wrists = list(HAND_FINGER_JOINTS), list(FINGER_WRISTS)
    relative = lambda j: j[:, fingers] - j[:, wrists]  # noqa: E731
    terms = dict(body_pose=(R[:, :NUM_BODY] - R_gt).abs().mean(),
                 body_3d=(joints[:, body] - joints[:, :1] - gt[:, body] + gt[:, :1]).abs().mean(),
                 body_2d=(uv - uv_gt).abs().mean(),
                 fingers_3d=(relative(joints) - relative(gt)).abs().mean())
    loss = cfg.w_body_pose * terms["body_pose"] + cfg.w_body_3d * terms["body_3d"] + cfg.w_body_2d * terms["body_2d"]
    return loss + cfg.w_body_3d * terms["fingers_3d"], terms


def hand_path_loss(pred, targets, cfg):  # Eq. 5 on `HMRAdapter.forward`'s hand path -> (loss, terms)
    out = tuple(pred[k].flatten(0, 1) for k in ("hand_pose", "hand_betas", "hand_cam"))
    return hand_loss(out, hand_targets(targets["hand_pose"], targets["hand_joints2d"], pred["crop_boxes"]), cfg)


def body_path_loss(pred, targets, cfg):  # Eqs. 7-8 on `HMRAdapter.forward`'s theta_hat -> (loss, terms)
    return body_pose_loss(pred["theta_hat"], pred["shape"], pred["cam"], targets, pred["image_hw"], cfg)


def compute_loss(pred, targets, cfg):
    """The adapters' loss (Sec. 3.5): Eq. 5 on the hand path plus Eqs. 7-8 on the body path -> (loss, {term:
    scalar}). pred: `HMRAdapter.forward`'s; targets: {hand_pose (B, 2, 16, 3) MANO axis-angle, left hands in
    the flipped (right-hand) frame; hand_joints2d (B, 2, 21, 2) pixels; smplx_pose (B, 55, 3) axis-angle;
    joints3d (B, 55, 3) metres; joints2d (B, 55, 2) pixels}; cfg: an AdapterConfig (the weights)."""
    hand, hand_terms = hand_path_loss(pred, targets, cfg)
    body, body_terms = body_path_loss(pred, targets, cfg)
    return hand + body, dict(hand_terms, **body_terms)


# ---------------------------------------------------------------------------------------------
# 6. Inference: the dual-path pipeline (Sec. 3.1)


def pipeline_front(models, cfg, image, hand_boxes=None):
    """What a pipeline computes first with `models`' whole-body model and hand expert (the frozen `Bases`): the
    whole-body output, the hand boxes it predicts scaled by cfg.hand_box_scale (a BaseConfig), and F^H of the crops
    there. hand_boxes (B, 2, 4) image pixels: boxes to use instead of the predicted ones (from a detector or 2D
    hand keypoints), a NaN row keeping the prediction."""
    out = models.whole_body(image)
    if hand_boxes is not None:
        out["boxes"] = torch.where(hand_boxes.isnan(), out["boxes"], hand_boxes.to(out["boxes"]))
    boxes = scale_boxes(out["boxes"], cfg.hand_box_scale)
    return out, boxes, models.hand_expert.features(hand_crops(cfg, image, out["boxes"]))


def assemble(body_R, hand_R, out):
    """SMPL-X rotations (B, 55, 3, 3): body from body_R (B, 22, 3, 3); each hand's fingers and, by
    IK, its wrist from the hand path's MANO rotations hand_R (B, 2, 16, 3, 3) (left first, flipped:
    HaMeR's convention), by `attach_hands` (A.2); the jaw from the whole-body model; eyes at rest."""
    hands = {side: dict(global_orient=hand_R[:, i, 0], hand_pose=hand_R[:, i, 1:]) for i, side in enumerate(SIDES)}
    R = attach_hands(body_R, hands)  # NOTE H4: wrists by IK
    R[:, 22] = rot6d_to_matrix(out["jaw"])
    return R


def pipeline(model, image, adapted=True, hand_boxes=None, details=False):
    """Sec. 3.1: image (B, 3, H, W) in [0, 1], the person -> SMPL-X verts (B, 10475, 3) and joints (B, 55, 3)
    in camera coordinates, and the hand boxes (B, 2, 4) used. adapted=True: theta_hat from the body adapter,
    hands from the hand adapter conditioned on theta_hat's arm chains (NOTE H5), MCP joints from the whole-body
    model's hand position net (NOTE H6); False: the paper's baseline (`baseline_pipeline` of model.bases).
    hand_boxes: `pipeline_front`'s. details: a dict of the outputs and what made them (`mesh`)."""
    bases = model.bases
    if not adapted:
        return baseline_pipeline(bases, image, hand_boxes, details)
    out, boxes, tokens = pipeline_front(bases, bases.cfg, image, hand_boxes)
    rois, hand_joints = bases.whole_body.hands(out["feature_map"], boxes, image.shape[-2:])
    theta = model.body_adapter(out["theta0"], rois, hand_joints[:, :, list(MCP), :2])  # theta_hat (B, 22, 6), Eq. 4
    chain = arm_chains(rot6d_to_matrix(theta), model.cfg.chain).flatten(0, 1)  # theta_b of theta_hat (2B, J, 6)
    pose, _, _ = model.hand_adapter(bases.hand_expert.mano_head, tokens, chain)  # Eq. 3
    return mesh(out, boxes, theta, pose, details)


def baseline_pipeline(bases, image, hand_boxes=None, details=False):
    """The paper's baseline (Sec. 4.2): both frozen models + IK; arguments and result as `pipeline`'s."""
    out, boxes, tokens = pipeline_front(bases, bases.cfg, image, hand_boxes)
    pose, _, _ = bases.hand_expert.mano_head(tokens)
    return mesh(out, boxes, out["theta0"], pose, details)


def mesh(out, boxes, theta, hand_pose, details=False):
    """SMPL-X of a body pose theta (B, 22, 6), the hand path's poses hand_pose (2B, 16, 6) (left first) and
    the whole-body output `out` (shape, expression, jaw, camera) -> (verts, joints, boxes) in camera
    coordinates; details: a dict of verts, joints, boxes, R (B, 55, 3, 3), shape (B, 10), expression
    (B, 10), t (B, 3), hand_boxes (B, 2, 4) before scaling."""
    R = assemble(rot6d_to_matrix(theta), rot6d_to_matrix(hand_pose).view(-1, 2, 16, 3, 3), out)
    verts, joints = body_models().smplx.from_rotations(R, torch.cat([out["shape"], out["expression"]], -1))
    t = smplerx_translation(out["cam"])[:, None]
    if details:
        return dict(verts=verts + t, joints=joints + t, boxes=boxes, R=R, shape=out["shape"],
                    expression=out["expression"], t=t[:, 0], hand_boxes=out["boxes"])
    return verts + t, joints + t, boxes


# ---------------------------------------------------------------------------------------------
# 7. Configs: the bases and the adapters, PAPER (the paper's numbers) and TINY (2 CPU cores), each a preset of
#    the model's config (what building reads), the recipe and the data


# The range of each numeric field, an interval (configs.check_ranges: train.py refuses a value outside it)
AtLeast1 = Annotated[int, "[1, inf)"]  # sizes, counts, widths
AtLeast0 = Annotated[int, "[0, inf)"]  # steps, and counts whose 0 the field's comment explains
NonNegative = Annotated[float, "[0, inf)"]  # loss weights, learning rates, decays
Positive = Annotated[float, "(0, inf)"]
Fraction = Annotated[float, "[0, 1]"]  # probabilities, dropout
Sizes = Annotated[tuple, "[1, inf)"]  # each item a size


@dataclass
class BaseConfig:
    """The two frozen bases: HaMeR's and SMPLer-X-H32's architectures (what `Bases` reads)."""
    # --- hand expert (HaMeR's ViT-H and transformer head) ---
    hand_crop: AtLeast1 = 256  # I_h: 256 x 256 (Sec. 3.2.2); the ViT reads its centre 256 x 192
    # HaMeR's crop (vitdet_dataset.py; rescale_factor 2.0 of its demo.py): the square of side 2 max(4/3 w, h) about
    # the hand box, cv2-warped, blurred when shrunk > 2.2 x, ImageNet-normalised 0-255 pixels: what its ViT was
    # trained on. 0 (TINY): a grid_sample crop of the [0, 1] image at the box squared x hand_box_scale, fed as it is
    hamer_rescale: NonNegative = 2.0
    hand_patch: AtLeast1 = 16
    hand_patch_padding: AtLeast0 = 2  # ViTPose's PatchEmbed (16 x 12 tokens from 256 x 192)
    hand_width: AtLeast1 = 1280  # ViT-H
    hand_depth: AtLeast1 = 32
    hand_heads: AtLeast1 = 16
    head_dim: AtLeast1 = 1024  # the transformer head: one zero token -> Linear(1 -> 1024)
    head_depth: AtLeast1 = 6
    head_heads: AtLeast1 = 8
    head_dim_head: AtLeast1 = 64
    head_mlp: AtLeast1 = 1024
    hand_stem: Sizes = ()  # () = ViTPose's patch_embed.proj; TINY: a conv stem's widths (NOTE H13)
    # --- whole-body model (SMPLer-X-H32) ---
    body_image: Sizes = (256, 192)  # its input (the image, resized)
    # SMPLer-X's F.interpolate default (main/SMPLer_X.py); TINY "area" (its own choice)
    body_resize: typing.Literal["nearest", "area", "bilinear", "bicubic", "nearest-exact"] = "nearest"
    body_patch: AtLeast1 = 16
    body_patch_padding: AtLeast0 = 2
    body_width: AtLeast1 = 1280
    body_depth: AtLeast1 = 32
    body_heads: AtLeast1 = 16
    body_stem: Sizes = ()  # () = ViTPose's patch_embed.proj; TINY: a conv stem's widths (NOTE H13)
    body_keypoints: AtLeast1 = 25  # body joints of the position net = body task tokens (31 tokens in all)
    body_hm_depth: AtLeast1 = 16  # 3D heatmap depth bins (16 x 16 x 12 in SMPLer-X)
    body_rot_hidden: AtLeast1 = 512  # Linear 1280 -> 512 per body token
    box_channels: Sizes = (256, 256, 256)  # box net deconvolutions (16 x 12 -> 128 x 96)
    hand_roi: AtLeast1 = 16  # RoI side
    hand_roi_channels: Sizes = (640, 320)  # deconvolutions before RoI-align (16 x 12 -> 64 x 48)
    hand_hm_depth: AtLeast1 = 16
    hand_box_scale: Positive = 2.0  # RoI boxes: squared and enlarged x 2 (SMPLer-X's restore_bbox); TINY's crops too
    # 0: mmcv's roi_align as SMPLer-X calls it (aligned=False, ceil(bin) samples a bin side, 0 outside [-1, H]);
    # TINY 2: its own 2 x 2 samples a bin clamped to the border (`roi_align_grid`)
    roi_sampling: AtLeast0 = 0


@dataclass
class ReleasedWeights:
    """The released weights the paper's bases start from (HaMeR's and SMPLer-X-H32's files), loaded by
    `load_pretrained`; "" for none."""
    hamer_checkpoint: str = "checkpoints/hamer.ckpt"  # HaMeR's _DATA/hamer_ckpts/checkpoints/hamer.ckpt
    smplerx_checkpoint: str = "checkpoints/smpler_x_h32.pth.tar"  # SMPLer-X-H32's snapshot


@dataclass
class BasesRecipe:
    """How train.py trains the tiny stand-ins of the bases (the paper loads the released checkpoints: 0 steps)."""
    batch_size: AtLeast1 = 32
    max_steps: AtLeast0 = 0
    lr: NonNegative = 1e-3
    warmup_steps: AtLeast0 = 0
    weight_decay: NonNegative = 1e-4
    grad_clip: NonNegative = 0.0
    amp: bool = False
    losses: typing.Literal["paper", "tiny"] = "paper"  # the adapters' preset whose Eq. 5 / 7 weights (and
    #   calibration) the stand-ins train with
    # NOTE H17 (TINY only): a keypoint head on the expert's tokens trained with it, as HaMeR's ViT starts from
    # ViTPose's 2D-keypoint weights (hmr_adapter_experiments.KeypointHead: its width, 0 = none; its L1 weight), and
    # the expert's own rotation weight (0 = the losses preset's w_hand_pose); NOTE H19: the box term's weight
    hand_keypoint_channels: AtLeast0 = 0
    w_hand_keypoints: NonNegative = 0.0
    w_expert_hand_pose: NonNegative = 0.0
    w_boxes: NonNegative = 1.0  # 1: SMPLer-X's


@dataclass
class WholeBodyData:
    """The person images both stages train and score on (synthetic.wholebody_dataset, data.WholeBodyNpz)."""
    image_size: Sizes = (512, 384)  # (H, W): SMPLer-X's input_img_shape; the hand crops come from it
    # TINY: the hand expert's own training images (side, px): each hand alone, a hand dataset's (NOTE H18)
    hand_image: AtLeast0 = 0


@dataclass
class BasesPreset:
    """train.py's "hmr_adapter_bases" presets."""
    model: BaseConfig = field(default_factory=BaseConfig)
    weights: ReleasedWeights = field(default_factory=ReleasedWeights)
    recipe: BasesRecipe = field(default_factory=BasesRecipe)
    data: WholeBodyData = field(default_factory=WholeBodyData)


@dataclass
class AdapterConfig:
    """The two adapters (Secs. 3.3, 3.4) and their losses' weights (Eqs. 5, 7)."""
    # theta_b's rotations (Sec. 3.3, "each joint's rotation"): "local", SMPL-X's own pose parameters of the arm
    # joints (the paper's reading), or "global", their products from the root (TINY: NOTE H14)
    chain: typing.Literal["local", "global"] = "local"
    body_proj: AtLeast1 = 512  # 1x1 conv 1280 -> 512 (Sec. 3.4)
    body_dim: AtLeast1 = 1024  # NOTE H7
    body_depth: AtLeast1 = 6  # "6 attention layers" (Sec. 4.1)
    body_heads: AtLeast1 = 8
    body_dim_head: AtLeast1 = 64
    body_mlp: AtLeast1 = 1024
    # --- Eq. 5 (hand) and Eq. 7 (body) weights. NOTE H10: HaMeR's / SMPLer-X's ---
    # HaMeR's weights act on SUMS over joints, coordinates and its per-GPU batch of 8 (hamer losses.py,
    # hamer_vit_transformer.yaml): each Eq. 5 term is loss_batch x the global batch's mean of one hand's sum (the
    # same on any number of ranks). 0 (TINY): means over every element, which its weights were tuned on.
    loss_batch: AtLeast0 = 8
    w_hand_3d: NonNegative = 0.05
    w_hand_2d: NonNegative = 0.01
    w_hand_verts: NonNegative = 0.05 * 21 / 778  # not in HaMeR: lambda_3D per point (778 vertices weigh as its 21
    #   joints)
    w_hand_pose: NonNegative = 0.001
    w_hand_betas: NonNegative = 0.0005
    # SMPLer-X's weights act on means (its train.py: loss[k].mean()), as ours. Its 2D loss is in 16 x 12 heatmap
    # units (1/16 of the image height), ours in image heights: x 16. w_body_3d also weighs Eq. 7's finger term
    # (`body_pose_loss`), as SMPLer-X supervises its wrist-relative hand joints
    w_body_pose: NonNegative = 10.0
    w_body_3d: NonNegative = 100.0
    w_body_2d: NonNegative = 16.0
    # --- an ablation row's other way in the hand or the body adapter's place (Tables 3-6): nothing here reads them;
    # hmr_adapter_experiments.build_model builds its `AblationRow` for any value but "adapter" (its `ABLATIONS`) ---
    hand_method: typing.Literal["adapter", "whole_body_pose", "image", "concat", "weighted_sum", "head", "full",
                                "scratch", "frozen"] = "adapter"
    body_method: typing.Literal["adapter", "task_tokens", "concat", "weighted_sum", "head", "full", "scratch",
                                "frozen"] = "adapter"


@dataclass
class AdapterRecipe:
    """How the adapters train (Sec. 4.1: one machine, 4 V100, 10K steps, batch 32 per GPU, about 6 hours)."""
    batch_size: AtLeast1 = 128  # 32 x 4
    max_steps: AtLeast0 = 10_000
    lr: NonNegative = 1e-4  # the hand adapter. NOTE H10
    body_lr: NonNegative = 1e-4  # the body adapter (its own run in Sec. 3.5, so its own rate)
    warmup_steps: AtLeast0 = 500
    weight_decay: NonNegative = 1e-4
    grad_clip: NonNegative = 0.0  # the adapters train together here, so no shared clipping norm
    amp: bool = False
    hand_only_prob: Fraction = 0.0  # share of training hands with a zero body pose. NOTE H12
    # Keep what the frozen bases give each training sample (by its "index") instead of recomputing it
    # every epoch. Only where a sample index is always the same image: the rendered synthetic set, not
    # data augmented on the fly. Off for the paper (and its datasets are far too big to keep).
    cache_frozen: bool = False
    control: bool = False  # TINY: Table 3 No.5 trains beside them (the lab's hmr_adapter_experiments.WithControl)
    gpus: AtLeast0 = 4  # the paper's training hardware: 4 V100 on one machine (TINY: 0, two CPU cores)


@dataclass
class AdapterPreset:
    """train.py's "hmr_adapter" presets."""
    model: AdapterConfig = field(default_factory=AdapterConfig)
    recipe: AdapterRecipe = field(default_factory=AdapterRecipe)
    data: WholeBodyData = field(default_factory=WholeBodyData)


BASES_PAPER = BasesPreset()  # HaMeR (ViT-H + 39.5M head) and SMPLer-X-H32 shapes, their released weights
BASES_TINY = BasesPreset(  # 2 CPU cores: crops 32 x 32 (ViT on 32 x 24, patch 4 -> 8 x 6), body 128 x 96 (8 x 6)
    model=BaseConfig(
        hand_crop=32, hand_patch=4, hand_patch_padding=0, hand_width=64, hand_depth=3, hand_heads=4,
        head_dim=64, head_depth=3, head_heads=4, head_dim_head=16, head_mlp=128, hamer_rescale=0.0,
        hand_stem=(32, 64),
        body_image=(128, 96), body_resize="area", body_patch=16, body_patch_padding=0, body_width=64, body_depth=3,
        body_heads=4, body_stem=(16, 32, 64, 64),
        body_keypoints=22, body_hm_depth=8, body_rot_hidden=32, box_channels=(32, 32), hand_roi=8,
        hand_roi_channels=(32,), hand_hm_depth=8, hand_box_scale=1.5, roi_sampling=2),
    weights=ReleasedWeights(hamer_checkpoint="", smplerx_checkpoint=""),
    recipe=BasesRecipe(losses="tiny", batch_size=32, max_steps=3500, lr=1e-3, warmup_steps=100,
                       hand_keypoint_channels=32, w_hand_keypoints=0.3, w_expert_hand_pose=0.01, w_boxes=10.0),
    data=WholeBodyData(image_size=(256, 192), hand_image=32))
PAPER = AdapterPreset()  # the adapters: hand 26.8M, body 36.5M (hmr_adapter_experiments.parameter_table)
# TINY's lr, body_lr and max_steps: each adapter's own (docs/history.md, "TINY's recipe"); a faster body adapter
# moves theta_hat's arm chain away from what the hand adapter reads
TINY = AdapterPreset(
    model=AdapterConfig(chain="global", loss_batch=0, w_hand_verts=0.05, w_body_2d=1.0, body_proj=32, body_dim=64,
                        body_depth=3, body_heads=4, body_dim_head=16, body_mlp=128),
    recipe=AdapterRecipe(hand_only_prob=0.2, cache_frozen=True, control=True, batch_size=32, max_steps=2500, lr=4e-3,
                         body_lr=1e-3, warmup_steps=50, gpus=0),
    data=WholeBodyData(image_size=(256, 192), hand_image=32))


# ---------------------------------------------------------------------------------------------
# Appendix A. The body models, hands on a body, and the bases HMR-Adapter adapts (HaMeR, SMPLer-X): ViT, hand
#             expert, whole-body model, hand crops, RoI-align, `Bases`


# A.1 The body models (bodymodels' MANO and SMPL-X), posed by rotation matrices: the losses' meshes


@functools.lru_cache(maxsize=None)
def body_models():
    """MANO (right hand) and SMPL-X (bodymodels' loaders: $HMR_BODY_MODELS or the stand-ins) as
    float32 Skinning, SMPL-X's parents and faces, and R_off (3, 3): the rotation that turns MANO's rest hand onto
    SMPL-X's rest right hand (a MANO pose's global rotation G is SMPL-X's wrist rotation G R_off^T, its
    fingers R_off aa; `hand_frames` (A.2), whose `attach_hands` puts the hand path's hands on the body)."""
    mano, smplx = bodymodels.load_mano(), bodymodels.load_smplx()
    return types.SimpleNamespace(
        mano=bodymodels.Skinning(mano, torch.float32, per_sample=False),
        smplx=bodymodels.Skinning(smplx, torch.float32, per_sample=False), parents=smplx.parents.tolist(),
        smplx_faces=smplx.faces_tensor.long(), r_off=hand_frames().r_off.float())


def mano_mesh(R, betas):
    """MANO verts (B, 778, 3) and 21 joints (B, 21, 3) in OpenPose order with HaMeR's (smplx's)
    fingertips, of rotations R (B, 16, 3, 3), betas (B, 10)."""
    verts, joints = body_models().mano.from_rotations(R, betas)
    return verts, bodymodels.hand_joints21(joints, verts, "hamer")  # official (HaMeR mano_wrapper.py): smplx tips


def body_joints(R, betas):
    """SMPL-X's first J joints (B, J, 3) of rotations R (B, J, 3, 3) (J = 22: the body) by forward
    kinematics (what its LBS gives them, without skinning 10475 vertices); betas (B, 10)."""
    m, J = body_models().smplx, R.shape[1]
    rest = m.J_template.to(betas) + (betas @ m.J_shapedirs[:, :10].T.to(betas)).view(len(betas), -1, 3)
    return forward_kinematics(R, rest[:, :J], m.parents[:J])[0]


# A.2 Hands on a body: MANO hand results onto an SMPL-X body (the pipeline's fingers and wrists, Sec. 3.1)
# A hand expert (HaMeR) gives MANO parameters per hand: a global orientation G (camera frame), the 15 finger
# rotations F_j and betas. A left hand comes as the RIGHT MANO hand that is its mirror image (HaMeR flips the crop),
# so the left hand itself has the mirrored pose M G M, M F_j M with M = diag(-1, 1, 1) (`mirror_rotation`). SMPL-X's
# hands carry the same fingers in their own rest frame: R_off (3, 3) turns MANO's rest right hand onto SMPL-X's rest
# right hand (about the identity for the official files; about a half turn about y for the stand-ins, whose right
# hand is MANO's turned, see `standins._stitch_hands`), and SMPL-X's left hand is the mirror image of its right. A
# hand posed by MANO then looks the same on SMPL-X when their world rotations agree up to R_off:
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
    docs/reference.md's NOTE R1: on the stand-ins the fit is 0.7 degrees from the exact half turn diag(-1, 1, -1) of
    `standins._stitch_hands` (SMPL-X's wrist joint is regressed from the forearm too, MANO's is not).
    data.py's hand labels and HMR-Adapter use the same fit, so the synthetic world is
    self-consistent; a MANO mesh and SMPL-X's hand agree to about a millimetre, not exactly.
    """
    mano = model_file(model_dir, "mano", ("MANO_RIGHT.pkl",))
    body = model_file(model_dir, "smplx", ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl"))
    return _hand_frames(mano, body)


@functools.lru_cache(maxsize=None)
def _hand_frames(mano_path, smplx_path):
    def array(a, key):
        return torch.from_numpy(np.asarray(a[key], np.float64))

    mano, body = model_arrays(mano_path, "mano"), model_arrays(smplx_path, "smplx")
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
      (HaMeR, simpleHand on a flipped crop); False: parameters of smplx's left MANO (MANO_LEFT.pkl), their mirror.
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


# A.3 ViT (ViTPose / HaMeR / SMPLer-X names: patch_embed.proj, pos_embed, blocks.i.*, last_norm)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv Linear (ViTPose names: qkv, proj)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)  # (B, N, C) each
        return self.proj(bodymodels.attend(q, k, v, self.heads))


class Mlp(nn.Module):
    """The ViT block's MLP: fc2(GELU(fc1(x))) (ViTPose names: fc1, fc2)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)) (ViTPose names: norm1, attn, norm2,
    mlp). The MLP is 4 x wide, as in every ViT these bases use."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_stem(widths, out):
    """NOTE H13 (TINY only): a convolutional patch embedding: per width c, Conv3x3 stride 2 ->
    GroupNorm -> ReLU, then Conv1x1 -> the ViT width; len(widths) = log2(patch) stages. A linear map per
    16 x 16 patch is too weak for the tiny whole-body model at 128 x 96; the released models keep `proj`."""
    layers, c_in = [], 3
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c // 4), c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.Conv2d(c_in, out, 1))


class PatchEmbed(nn.Module):
    """ViTPose's linear patch embedding `proj`, or (stem = widths, TINY only) a convolutional stem
    (`conv_stem`), checked here to give the patch size."""

    def __init__(self, patch, padding, width, stem=()):
        super().__init__()
        if not stem:
            self.proj = nn.Conv2d(3, width, patch, stride=patch, padding=padding)
            return
        if 2 ** len(stem) != patch or padding:
            raise ValueError(f"PatchEmbed: a stem of {len(stem)} stride-2 convolutions gives patch {2 ** len(stem)}, "
                             f"expected log2(patch={patch}) of them and no padding (got {padding})")
        self.stem = conv_stem(stem, width)

    def forward(self, images):
        return self.stem(images) if hasattr(self, "stem") else self.proj(images)


class ViT(nn.Module):
    """images (B, 3, H, W) -> (patch tokens (B, h w, C), task tokens (B, T, C)). official (ViTPose's mmpose ViT
    as HaMeR and SMPLer-X use it): parameter names included (patch_embed.proj, pos_embed (1, 1 + h w, C) with a
    class-token slot, blocks.i.*, last_norm; SMPLer-X's task_tokens); held to HaMeR's and SMPLer-X's modules
    by tests/official/hamer and tests/official/smplerx. SMPLer-X's encoder puts its T learnable task tokens
    (no position embedding) before the patch tokens; T = 0 for HaMeR's."""

    def __init__(self, image_hw, patch, padding, width, depth, heads, num_task_tokens=0, stem=()):
        super().__init__()
        H, W = image_hw
        self.grid = ((H + 2 * padding - patch) // patch + 1, (W + 2 * padding - patch) // patch + 1)
        self.patch_embed = PatchEmbed(patch, padding, width, stem)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.task_tokens = nn.Parameter(torch.randn(1, num_task_tokens, width) * 0.02) if num_task_tokens else None
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.last_norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, images):
        x = self.patch_embed(images)  # (B, C, h, w)
        if tuple(x.shape[-2:]) != self.grid:
            raise ValueError(f"ViT: images {tuple(images.shape[-2:])} give a {tuple(x.shape[-2:])} patch grid, "
                             f"expected {self.grid}")
        # ViTPose (HMR2.0, HaMeR, SMPLer-X): the class-token slot of pos_embed is added to every patch
        x = x.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]  # (B, h w, C)
        n = 0 if self.task_tokens is None else self.task_tokens.shape[1]
        if n:
            x = torch.cat([self.task_tokens.expand(len(x), -1, -1), x], 1)
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        return x[:, n:], x[:, :n]


# A.4 Hand expert (HaMeR): ViT on the crop's centre, transformer head with one query token


class MANOHead(nn.Module):
    """HaMeR's MANO head (`MANOTransformerDecoderHead`, `hamer/models/heads/mano_head.py`, names included):
    ONE zero token cross-attends to the h w ViT tokens; its state reads out 6D pose (16 x 6), betas (10) and
    camera (3) as residuals on mean parameters, one iteration (IEF_ITERS 1). The mean parameters are buffers:
    identity pose (a flat hand), betas = 0, cam [0.9, 0, 0] here; HaMeR's come with its checkpoint. Held to
    HaMeR's module by tests/official/hamer."""

    def __init__(self, cfg):
        super().__init__()
        self.transformer = TransformerDecoder(cfg.head_dim, cfg.head_depth, cfg.head_heads, cfg.head_dim_head,
                                              cfg.head_mlp, cfg.hand_width)
        self.decpose, self.decshape, self.deccam = (nn.Linear(cfg.head_dim, n) for n in (16 * 6, 10, 3))
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        self.register_buffer("init_hand_pose", matrix_to_rot6d(torch.eye(3)).repeat(16)[None])  # (1, 96)
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.tensor([[0.9, 0.0, 0.0]]))

    def readout(self, z):
        """z (B, 1, dim) -> pose (B, 16, 6), betas (B, 10), cam (B, 3) [s, tx, ty]."""
        z = z[:, 0]
        pose = self.decpose(z) + self.init_hand_pose
        return pose.view(-1, 16, 6), self.decshape(z) + self.init_betas, self.deccam(z) + self.init_cam

    def forward(self, context):
        return self.readout(self.transformer(context))


class HandExpert(nn.Module):
    """HaMeR (Sec. 3.2.2): crop (B, 3, S, S) of a right hand -> F^H (B, h w, C) -> MANO pose, betas, cam."""

    def __init__(self, cfg):
        super().__init__()
        self.crop = cfg.hand_crop
        self.backbone = ViT((cfg.hand_crop, cfg.hand_crop * 3 // 4), cfg.hand_patch, cfg.hand_patch_padding,
                            cfg.hand_width, cfg.hand_depth, cfg.hand_heads, stem=cfg.hand_stem)
        self.mano_head = MANOHead(cfg)

    def features(self, crops):
        """F^H: the ViT's tokens of the crop's centre S x 3S/4 (HaMeR drops S/8 columns each side)."""
        S = crops.shape[-1]
        if crops.shape[-2:] != (self.crop, self.crop):
            raise ValueError(f"HandExpert: crops are {tuple(crops.shape[-2:])}, expected {self.crop} x {self.crop}")
        return self.backbone(crops[..., S // 8: S - S // 8])[0]

    def forward(self, crops):
        return self.mano_head(self.features(crops))


def hand_tokens(bases, image, boxes):
    """F^H (2B, h w, C) of the frozen hand expert on both hands' crops at hand boxes (B, 2, 4), left first and
    flipped (`hand_crops`)."""
    return bases.hand_expert.features(hand_crops(bases.cfg, image, boxes))


# A.5 Whole-body model (SMPLer-X): task tokens, body joints, body regressor, boxes, hand RoI
#     Module names, layer indices and 6D/heatmap/camera conventions are SMPLer-X's (official SMPLer-X
#     main/SMPLer_X.py and the modules it builds), so its released weights load after `smplerx_state_dict`.


def soft_argmax(p):
    """Expected position of heatmaps p (B, K, D, H, W) (each sums to 1) -> (B, K, 3) as (x, y, z) in
    heatmap pixels (pixel p at coordinate p, SMPLer-X's soft_argmax_3d)."""
    D, H, W = p.shape[-3:]
    axes = [torch.arange(n, device=p.device, dtype=p.dtype) for n in (W, H, D)]
    x, y, z = (p.sum(dims) @ a for dims, a in zip(((2, 3), (2, 4), (3, 4)), axes))
    return torch.stack([x, y, z], -1)


def deconvs(channels):
    """SMPLer-X's make_deconv_layers: per step ConvTranspose 4 x 4 stride 2 (x2, no bias), BatchNorm, ReLU."""
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    return nn.Sequential(*layers)


def linear(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, n_out))  # SMPLer-X's make_linear_layers([n_in, n_out]): key `.0.`


def smplerx_translation(cam, focal=5000.0, image_hw=(256, 192), size_3d=2.5):
    """SMPLer-X's camera readout (B, 3) -> translation (cam_x, cam_y, k sigmoid(cam_z)) with
    k = sqrt(f^2 2.5^2 / (H W)) (focal 5000, input 256 x 192, camera_3d_size 2.5: SMPLer-X's config)."""
    k = math.sqrt(focal * focal * size_3d ** 2 / (image_hw[0] * image_hw[1]))
    return torch.cat([cam[..., :2], k * torch.sigmoid(cam[..., 2:])], -1)


class PositionNet(nn.Module):
    """SMPLer-X's position net: 1x1 conv -> K 3D heatmaps (depth x H x W) -> soft-argmax."""

    def __init__(self, width, joints, depth):
        super().__init__()
        self.joints, self.depth = joints, depth
        # its 1x1 weight channels-last, as its input (the ViT's tokens viewed as a map): the gradient then has the
        # weight's strides (no DDP layout warning, no copy); for a 1x1 kernel the same memory order
        self.conv = nn.Sequential(nn.Conv2d(width, joints * depth, 1).to(memory_format=torch.channels_last))

    def heatmaps(self, feature_map):
        """(B, C, H, W) -> probabilities (B, K, D, H, W)."""
        B, _, H, W = feature_map.shape
        return self.conv(feature_map).reshape(B, self.joints, -1).softmax(-1).view(B, self.joints, self.depth, H, W)

    def forward(self, feature_map):
        return soft_argmax(self.heatmaps(feature_map))  # (B, K, 3)


class BodyRotationNet(nn.Module):
    """SMPLer-X's body regressor (Sec. 3.2.3): Linear C -> hidden on each body token, concatenated with
    the detached 3D joints, flattened -> root 6D and 21 x 6D (theta_0); shape and camera from their tokens."""

    def __init__(self, width, joints, hidden):
        super().__init__()
        self.body_conv = linear(width, hidden)
        self.root_pose_out, self.body_pose_out = linear(joints * (hidden + 3), 6), linear(joints * (hidden + 3), 21 * 6)
        self.shape_out, self.cam_out = linear(width, 10), linear(width, 3)
        for layer in (self.root_pose_out[0], self.body_pose_out[0]):
            nn.init.zeros_(layer.weight)
        with torch.no_grad():  # the stand-ins start from the identity pose and a person filling 90% of the image
            self.root_pose_out[0].bias.copy_(matrix_to_rot6d(torch.eye(3)))
            self.body_pose_out[0].bias.copy_(matrix_to_rot6d(torch.eye(3)).repeat(21))
            self.cam_out[0].bias.copy_(torch.tensor([0.0, 0.0, 1.2]))  # k sigmoid(1.2) = 43 m = 2 f / (256 x 0.9)

    def forward(self, body_tokens, joints, shape_token, cam_token):
        x = torch.cat([self.body_conv(body_tokens), joints.detach()], -1).flatten(1)
        theta0 = torch.cat([self.root_pose_out(x), self.body_pose_out(x)], -1).view(-1, NUM_BODY, 6)
        return theta0, self.shape_out(shape_token), self.cam_out(cam_token)


class BoxNet(nn.Module):
    """SMPLer-X's box net: the image map and the body joints' (detached) heatmaps (C + K D channels)
    upsampled x2 per deconvolution (`box_channels`: x8 in SMPLer-X, x4 at TINY, where a third one
    costs too much of a training step) -> hand centre heatmaps (soft-argmax) and each hand's (w, h) from
    the features at its centre, in map units -> (B, 2, 4) [x0, y0, x1, y1] image pixels (left, right).
    Its face box is not used by HMR-Adapter (`smplerx_state_dict` drops it). The sizes are taken as
    |size| (SMPLer-X: as they are; the same for the positive sizes a trained model gives)."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.box_channels
        self.deconv = deconvs((cfg.body_width + cfg.body_keypoints * cfg.body_hm_depth, *c))
        self.bbox_center = nn.Sequential(nn.Conv2d(c[-1], 2, 1))
        self.lhand_size, self.rhand_size = (nn.Sequential(nn.Linear(c[-1], c[-1]), nn.ReLU(), nn.Linear(c[-1], 2))
                                            for _ in SIDES)

    def forward(self, feature_map, body_heatmaps, image_hw):
        B, _, h, w = feature_map.shape
        x = self.deconv(torch.cat([feature_map, body_heatmaps.detach().flatten(1, 2)], 1))  # (B, c, 8h, 8w)
        centre = soft_argmax(self.bbox_center(x).flatten(2).softmax(-1).view(B, 2, 1, *x.shape[-2:]))[..., :2]
        feats = sample_joint_features(x, centre.detach())  # (B, 2, c)
        size = torch.stack([self.lhand_size(feats[:, 0]), self.rhand_size(feats[:, 1])], 1)  # (w, h), map units
        H, W = image_hw
        centre, half = (centre * centre.new_tensor([W / x.shape[-1], H / x.shape[-2]]),
                        size.abs() * centre.new_tensor([W / w, H / h]) / 2)
        return torch.cat([centre - half, centre + half], -1)


class HandRoINet(nn.Module):
    """SMPLer-X's hand RoI: deconvolutions upsample the image map, RoI-align at each hand box (left flipped;
    # official: x / W x the map's width, y / H x its height), 1x1 conv back to C: (B, 2, C, R, R)."""

    def __init__(self, cfg):
        super().__init__()
        self.deconv = deconvs((cfg.body_width, *cfg.hand_roi_channels))
        self.conv = nn.Sequential(nn.Conv2d(cfg.hand_roi_channels[-1], cfg.body_width, 1))
        self.size, self.sampling = cfg.hand_roi, cfg.roi_sampling

    def forward(self, feature_map, boxes, image_hw):
        up = self.deconv(feature_map)  # (B, c, h up, w up)
        B = len(up)
        maps, boxes, flip = up.repeat_interleave(2, 0), boxes.reshape(2 * B, 4), flip_pattern(B, up.device)
        scale = boxes.new_tensor([up.shape[-1] / image_hw[1], up.shape[-2] / image_hw[0]]).repeat(2)
        if self.sampling:  # TINY's own
            rois = roi_align_grid(maps, boxes, scale, self.size, self.sampling, flip)
        else:
            rois = roi_align(maps, boxes, scale, self.size, flip)
        return self.conv(rois).view(B, 2, -1, self.size, self.size)


class WholeBody(nn.Module):
    """SMPLer-X (Sec. 3.2.3): image (B, 3, H, W) -> theta_0, shape, camera, expression, jaw, body
    joints, hand boxes; `hands(...)` -> the hand feature map and the hand joints in its frame.
    NOTE H11: SMPLer-X's hand regressor and face box are left out (the hand expert replaces them)."""

    def __init__(self, cfg):
        super().__init__()
        self.image_hw, self.resize, K = tuple(cfg.body_image), cfg.body_resize, cfg.body_keypoints
        self.num_task_tokens = 6 + K  # shape, cam, expression, jaw, left hand, right hand, body x K
        self.encoder = ViT(self.image_hw, cfg.body_patch, cfg.body_patch_padding, cfg.body_width, cfg.body_depth,
                           cfg.body_heads, self.num_task_tokens, cfg.body_stem)
        self.body_position_net = PositionNet(cfg.body_width, K, cfg.body_hm_depth)
        self.body_regressor = BodyRotationNet(cfg.body_width, K, cfg.body_rot_hidden)
        self.box_net = BoxNet(cfg)
        self.hand_roi_net = HandRoINet(cfg)
        self.hand_position_net = PositionNet(cfg.body_width, len(HAND_JOINTS), cfg.hand_hm_depth)
        self.face_regressor = nn.ModuleDict(dict(expr_out=linear(cfg.body_width, 10),
                                                 jaw_pose_out=linear(cfg.body_width, 6)))
        nn.init.zeros_(self.face_regressor.jaw_pose_out[0].weight)
        with torch.no_grad():
            self.face_regressor.jaw_pose_out[0].bias.copy_(matrix_to_rot6d(torch.eye(3)))

    def forward(self, image):
        """image (B, 3, H, W) in [0, 1] at any size (resized to the body input). 6D outputs in our
        column convention (`smplerx_state_dict` reorders SMPLer-X's rows); cam is SMPLer-X's
        (`smplerx_translation`)."""
        x = F.interpolate(image, self.image_hw, mode=self.resize) if tuple(image.shape[-2:]) != self.image_hw else image
        tokens, task = self.encoder(x)
        B, (h, w) = len(x), self.encoder.grid
        feature_map = tokens.transpose(1, 2).reshape(B, -1, h, w)  # a channels-last view of the tokens
        heatmaps = self.body_position_net.heatmaps(feature_map)  # (B, K, D, h, w)
        joints = soft_argmax(heatmaps)  # (B, K, 3) heatmap pixels (x, y) and depth bin
        theta0, shape, cam = self.body_regressor(task[:, 6:], joints, task[:, 0], task[:, 1])
        face = self.face_regressor
        return dict(feature_map=feature_map, body_joints=joints, body_tokens=task[:, 6:], theta0=theta0, shape=shape,
                    cam=cam, expression=face.expr_out(task[:, 2]), jaw=face.jaw_pose_out(task[:, 3]),
                    boxes=self.box_net(feature_map, heatmaps, image.shape[-2:]))

    def hands(self, feature_map, boxes, image_hw):
        """Hand feature map (B, 2, C, R, R) at boxes (B, 2, 4) (image pixels) and the 20 hand joints
        (B, 2, 20, 3) in its frame (left hands flipped)."""
        rois = self.hand_roi_net(feature_map, boxes, image_hw)
        joints = self.hand_position_net(rois.flatten(0, 1)).view(len(rois), 2, len(HAND_JOINTS), 3)
        return rois, joints


# A.6 Hand crops: HaMeR's as its ViT was trained on (its box, skimage's blur, cv2's fixed-point warp and ImageNet
#     normalisation, to the bit: tests/official/hamer; `hamer_crops`) or TINY's (grid_sample of boxes, `crop_images`)


def hand_crops(cfg, image, boxes):
    """The hand expert's crops (2B, 3, S, S) of both hands, left first and flipped, at hand boxes
    (B, 2, 4) of image (B, 3, H, W) in [0, 1]: HaMeR's or TINY's (cfg.hamer_rescale)."""
    flip, images = flip_pattern(len(image), image.device), image.repeat_interleave(2, 0)
    if cfg.hamer_rescale:
        return hamer_crops(images, boxes.flatten(0, 1), cfg.hand_crop, flip, cfg.hamer_rescale)
    return crop_images(images, crop_boxes(cfg, boxes).flatten(0, 1), cfg.hand_crop, flip)


def crop_boxes(cfg, boxes):
    """The squares (..., 4) the hand expert's crops of hand boxes (..., 4) show (`hand_crops`)."""
    if cfg.hamer_rescale:
        centre, side = hamer_square(boxes, cfg.hamer_rescale)
        return torch.cat([centre - side / 2, centre + side / 2], -1).to(boxes.dtype)
    return scale_boxes(boxes, cfg.hand_box_scale)


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


# A.7 RoI-align: SMPLer-X's (mmcv's) and TINY's


def roi_align(features, boxes, spatial_scale, size, flip, sampling=0):
    """SMPLer-X's hand RoI: # official (SMPLer-X smpler_x.py): mmcv's roi_align(features, rois, size, 1.0,
    0, 'avg', False), in plain PyTorch. features (B, C, Hf, Wf); boxes (B, 4) image pixels, times
    spatial_scale (a number, or (4,) per coordinate) in map pixels (pixel p at coordinate p); flip (B,) bool
    mirrors the output left-right (left hands). -> (B, C, size, size).
    mmcv (aligned=False): the box's sides at least 1 pixel; each bin averages a grid of ceil(bin side)
    samples per side (sampling 0; a fixed count otherwise) at (k + 0.5) / grid of the bin; a sample is
    0 outside [-1, H] x [-1, W], else bilinear with its coordinates clamped into [0, H - 1] x [0, W - 1].
    Bilinear weights and the validity test factor over y and x, so the bin averages are A_y F A_x^T
    with A (B, size, H) the averaged 1D weights: no sample grid is ever built.
    """
    box = boxes * spatial_scale
    length = (box[:, 2:] - box[:, :2]).clamp(min=1)  # (B, 2) RoI w, h
    grid = torch.ceil(length / size) if sampling == 0 else torch.full_like(length, sampling)  # samples a bin side
    A_y = _roi_weights(box[:, 1], length[:, 1], grid[:, 1], size, features.shape[-2])  # (B, size, Hf)
    A_x = _roi_weights(box[:, 0], length[:, 0], grid[:, 0], size, features.shape[-1])  # (B, size, Wf)
    out = torch.einsum("bph,bchw,bqw->bcpq", A_y, features, A_x)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def _roi_weights(start, length, grid, size, n):
    """A (B, size, n): row p = the mean over bin p's `grid` samples of their bilinear weights on the n
    pixels of one axis (mmcv's bilinear_interpolate: 0 outside [-1, n], clamped into [0, n - 1])."""
    k = torch.arange(int(grid.max()), device=start.device, dtype=start.dtype)  # (G,) samples, `grid` of them used
    bin_ = (length / size)[:, None, None]
    p = torch.arange(size, device=start.device, dtype=start.dtype)[None, :, None]
    t = start[:, None, None] + p * bin_ + (k + 0.5) * bin_ / grid[:, None, None]  # (B, size, G)
    valid = ((t >= -1) & (t <= n) & (k < grid[:, None, None])).to(t)
    t = t.clamp(0, n - 1)
    low = t.floor()
    frac, low = t - low, low.long()
    A = t.new_zeros(*t.shape[:2], n + 1)  # pixel n: where the weight 0 of the last pixel's "high" neighbour lands
    A.scatter_add_(-1, low, (1 - frac) * valid).scatter_add_(-1, low + 1, frac * valid)
    return A[..., :n] / grid[:, None, None]


def roi_align_grid(features, boxes, spatial_scale, size, sampling, flip):
    """TINY's RoI-align (`BaseConfig.roi_sampling` > 0): a sampling x sampling grid of bilinear samples
    per bin, written with grid_sample; samples outside the map take the border value (mmcv's: 0).
    Arguments and result as `roi_align`'s."""
    B, C, Hf, Wf = features.shape
    box = boxes * spatial_scale
    n = size * sampling
    t = (torch.arange(n, device=box.device, dtype=box.dtype) + 0.5) / n  # sample positions in the box, (n,)
    x = box[:, None, 0] + t * (box[:, None, 2] - box[:, None, 0]).clamp(min=1)  # (B, n)
    y = box[:, None, 1] + t * (box[:, None, 3] - box[:, None, 1]).clamp(min=1)
    gx, gy = 2 * x / (Wf - 1) - 1, 2 * y / (Hf - 1) - 1  # align_corners=True: pixel p at coordinate p
    grid = torch.stack([gx[:, None, :].expand(-1, n, -1), gy[:, :, None].expand(-1, -1, n)], -1)
    samples = F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="border",
                            align_corners=True)  # (B, C, n, n)
    out = F.avg_pool2d(samples, sampling)  # (B, C, size, size)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


# A.8 The two bases


class Bases(nn.Module):
    """The two bases of a `BaseConfig`: HaMeR's hand expert and SMPLer-X's whole-body model, untrained or holding the
    released weights (`load_pretrained`); hmr_adapter_experiments trains tiny stand-ins of them (their parameters
    are disjoint: two separate trainings). `HMRAdapter` freezes them."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.hand_expert, self.whole_body = HandExpert(cfg), WholeBody(cfg)


# ---------------------------------------------------------------------------------------------
# Appendix B. Agreement with the official code: the released weights, their key maps and loading


# The released weights. HaMeR's file is a Lightning checkpoint ({"state_dict": ...}, keys backbone.*,
# mano_head.*, discriminator.*, mano.*, initialized); SMPLer-X's a snapshot ({"network": ...}, keys
# module.<part>.*). The key lists with shapes, made from the official constructors, are in
# tests/official_keys/.
HAMER_SKIP = ("discriminator.", "mano.", "initialized")  # its adversary, MANO layer buffers, a flag
SMPLERX_RENAMES = (("module.", ""), ("backbone.", "encoder."), ("body_rotation_net.", "body_regressor."),
                   ("hand_rotation_net.", "hand_regressor."))
SMPLERX_SKIP = ("hand_regressor.", "box_net.face_size.", "smplx_layer.")  # replaced by the hand expert; unused
SMPLERX_6D = [0, 2, 4, 1, 3, 5]  # its 6D is the rows of a 3 x 2 matrix (view(-1, 3, 2)); ours the columns


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


def hamer_state_dict(state):
    """HaMeR's state dict (its checkpoint's "state_dict") -> `HandExpert`'s: backbone.* and mano_head.* as they are
    (the same names and 6D convention), the rest (`HAMER_SKIP`) dropped."""
    return rename_keys(state, skip=HAMER_SKIP)


def smplerx_state_dict(state):
    """SMPLer-X's state dict (its snapshot's "network") -> `WholeBody`'s: `module.` dropped; the old names SMPLer-X's
    own loader renames (backbone, body_rotation_net, hand_rotation_net) renamed (`SMPLERX_RENAMES`); its hand
    regressor and face box dropped (`SMPLERX_SKIP`), and the face channel of bbox_center; the 6D readouts' rows
    reordered to our convention (`SMPLERX_6D`)."""
    state = rename_keys(rename_keys(state, SMPLERX_RENAMES), skip=SMPLERX_SKIP)
    for k, v in state.items():
        if k.startswith("box_net.bbox_center."):
            state[k] = v[:2]  # lhand, rhand, face -> lhand, rhand
        if k.startswith(("body_regressor.root_pose_out.", "body_regressor.body_pose_out.",
                         "face_regressor.jaw_pose_out.")):
            state[k] = v.unflatten(0, (-1, 6))[:, SMPLERX_6D].flatten(0, 1)
    return state


def released_checkpoints(cfg):
    """The released files the paper bases start from, of a `ReleasedWeights`: [(path, field)]; [] when both
    fields are "" (TINY's stand-ins, or random paper bases for a size check). A missing file is an error."""
    fields = ("hamer_checkpoint", "smplerx_checkpoint")
    if not any(getattr(cfg, f) for f in fields):
        return []
    for name in fields:
        path = getattr(cfg, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"base checkpoint {path!r} (ReleasedWeights.{name}) does not exist: the paper "
                                    "config adapts the released HaMeR and SMPLer-X-H32 weights; put them there "
                                    "(README), or set both to '' (--set hamer_checkpoint= --set smplerx_checkpoint=) "
                                    "for random bases: a size check, not the paper")
    return [(getattr(cfg, f), f) for f in fields]


def load_pretrained(bases, cfg):
    """The released HaMeR and SMPLer-X weights (a `ReleasedWeights`' hamer_checkpoint, smplerx_checkpoint) into
    the bases, read by `bodymodels.read_checkpoint` (weights only: a checkpoint cannot run code), strictly."""
    loads = {"hamer_checkpoint": (bases.hand_expert, "HaMeR's Lightning checkpoint", "state_dict", hamer_state_dict),
             "smplerx_checkpoint": (bases.whole_body, "SMPLer-X's snapshot", "network", smplerx_state_dict)}
    for path, name in released_checkpoints(cfg):
        module, what, container, mapping = loads[name]
        bodymodels.load_state_strict(module, mapping(bodymodels.read_checkpoint(path, what, container)), path)
