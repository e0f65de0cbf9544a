"""GenHMR: "GenHMR: Generative Human Mesh Recovery" (Saleem et al., AAAI 2025, arXiv 2412.14444).

One person crop in, an SMPL mesh out, through two trained stages and a two-step inference:

    stage 1  pose tokenizer (VQ-VAE):  theta (24 x 3) -> E -> z (L x D) -> nearest code -> ids (L) -> D -> theta
    (init)   stage "genhmr_backbone": the ViT trained by SMPL regression (the paper's start is unstated)
    (init)   stage "genhmr_prior": the masked transformer on pose tokens alone (not the paper's; 0 steps by default)
    stage 2  image -> ViT -> pyramid {1x, 4x, 8x} ; [MASK]ed ids -> masked transformer (self-attn -> MSDA
             -> FFN) x 4 -> logits (L x K) ; beta, camera from the image features
    infer    uncertainty-guided sampling (T iterations, re-mask the least confident) -> ids
             -> 2D-pose-guided refinement (Eqs. 2-4: gradient descent on the code vectors) -> SMPL

Sections: 1 the pose tokenizer (`PoseTokenizer`); 2 the image stage (`GenHMR`: the copier's start, its doctest);
3 training (masking, Gumbel-softmax, `compute_loss`); 4 inference (UGS, refinement; `GenHMR.generate`); 5 configs
(presets `PAPER`, `TINY` of `GenHMRConfig`, `InferenceConfig`, ...), `build_model` and train.py's protocol.
Appendices: A support architecture (SMPL, the ViT, the backbone stage `PoseRegressor`); B official checkpoints;
C `ABLATIONS`; D `diagnostics` and `parameter_table`; E the project's additions (TINY's tied head, the prior stage).
Running it: `demo.py --model genhmr --image PATH`, `bench.py --model genhmr [--params]`.

Conventions: bodymodels.py's (column vectors, 6D = first two COLUMNS, axis-angle, metres, OpenCV camera).
HMR2.0's camera [s, tx, ty]: t = [tx, ty, 2 f / (S s)], f = 5000, S = 256; 2D points in normalised crop
coordinates uv = (pixel - (W/2, H/2)) / H. Images (B, 3, H, W) RGB in [0, 1]. Symbols: B batch, J = 24
joints, V = 6890 vertices, L tokens, K codes, D code dimension, C ViT width, d decoder width, M heads,
n_levels pyramid levels, P sampling points, T UGS iterations, theta pose, beta shape, R rotation matrices,
e code vectors, Y token ids; tau: the masking variable (`mask_tau`) or Eq. 5-6's Gumbel `temperature`.
Where this differs from the paper (`NOTE N:` in the code, item N of its list), stages, results: docs/genhmr.md.
"""

import dataclasses
import functools
import math
import os
import pickle
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import bodymodels
import metrics

NUM_JOINTS, NUM_BETAS, PELVIS = 24, 10, 0  # SMPL
FOCAL_LENGTH, CROP_SIZE = 5000.0, 256.0  # official (4D-Humans hmr2.py): EXTRA.FOCAL_LENGTH, MODEL.IMAGE_SIZE
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# 1. Pose tokenizer (stage 1): VQ-VAE over the SMPL pose, its loss (Eq. Lvq) and reconstruction


class ResBlock1D(nn.Module):
    """x + Conv1x1(ReLU(Conv3(ReLU(x), dilation))), TokenHMR/T2M-GPT's ResConv1DBlock."""

    def __init__(self, width, dilation):
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def resnet1d(width, depth, growth, reverse=False):
    dilations = [growth ** i for i in range(depth)]
    return nn.Sequential(*[ResBlock1D(width, d) for d in (dilations[::-1] if reverse else dilations)])


def squared_distances(x, codebook):
    """||x - c_k||^2 = ||x||^2 - 2 x.c_k + ||c_k||^2: x (..., D), codebook (K, D) -> (..., K)."""
    x, codebook = x.float(), codebook.float()
    return (x * x).sum(-1, keepdim=True) - 2 * x @ codebook.T + (codebook * codebook).sum(-1)


class QuantizeEMAReset(nn.Module):
    """Nearest-code quantiser, EMA codebook and dead-code reset (T2M-GPT / TokenHMR). Buffers, untouched
    by the optimiser: codebook (K, D), code_sum (K, D), code_count (K,), initialised (). Under
    torch.distributed every rank ends each update with the same codebook (NOTE 6)."""

    def __init__(self, num_codes, dim, decay):
        super().__init__()
        self.num_codes, self.dim, self.decay = num_codes, dim, decay
        self.register_buffer("codebook", torch.zeros(num_codes, dim))
        self.register_buffer("code_sum", torch.zeros(num_codes, dim))
        self.register_buffer("code_count", torch.zeros(num_codes))
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, z):
        """z (..., D) -> ids (...,) of the nearest code in Euclidean distance (ties: lowest id)."""
        return squared_distances(z.reshape(-1, self.dim), self.codebook).argmin(1).view(z.shape[:-1])

    def candidates(self, flat):
        """K rows of flat (N, D), tiled with noise when N < K, in a random order; rank 0's under DDP."""
        if len(flat) < self.num_codes:
            reps = math.ceil(self.num_codes / len(flat))
            flat = (flat.repeat(reps, 1)
                    + torch.randn(len(flat) * reps, self.dim, device=flat.device) * 0.01 / math.sqrt(self.dim))
        out = flat[torch.randperm(len(flat), device=flat.device)[:self.num_codes]].contiguous()
        if _distributed():
            dist.broadcast(out, 0)
        return out

    @torch.no_grad()
    def update(self, z, ids):
        """One EMA step (decay mu) from encoder outputs z (N, D) and their ids (N,) -> the batch perplexity."""
        onehot = F.one_hot(ids, self.num_codes).float()  # (N, K)
        batch_sum, batch_count = onehot.T @ z, onehot.sum(0)  # sum_{i: id_i = k} z_i (K, D), n_k (K,)
        if _distributed():  # NOTE 6: the references do not all-reduce; ranks must agree
            dist.all_reduce(batch_sum)
            dist.all_reduce(batch_count)
        rand, mu = self.candidates(z), self.decay
        # code_sum_k <- mu code_sum_k + (1 - mu) sum_{i: id_i = k} z_i ; code_count_k <- mu code_count_k + (1 - mu) n_k
        self.code_sum.mul_(mu).add_((1 - mu) * batch_sum)
        self.code_count.mul_(mu).add_((1 - mu) * batch_count)
        # codebook_k = code_sum_k / code_count_k if code_count_k >= 1, else a random encoder output (reset)
        used = (self.code_count >= 1.0)[:, None]
        self.codebook.copy_(torch.where(used, self.code_sum / self.code_count.clamp_min(1e-12)[:, None], rand))
        p = batch_count / batch_count.sum()
        return torch.exp(-(p * torch.log(p + 1e-10)).sum())

    @torch.no_grad()
    def initialise(self, z):
        """First training batch: the codebook is K encoder outputs (code_sum = them, code_count = 1)."""
        self.codebook.copy_(self.candidates(z))
        self.code_sum.copy_(self.codebook)
        self.code_count.fill_(1.0)
        self.initialised.fill_(True)

    def forward(self, z):
        """z (B, L, D) -> (z_q straight-through (B, L, D), ids (B, L), commitment loss (), perplexity ())."""
        z = z.float()
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.initialised):
            self.initialise(flat.detach())
        ids = self.nearest(z)
        z_q = self.codebook[ids]  # the codebook before this step's update (T2M-GPT order)
        perplexity = self.update(flat.detach(), ids.reshape(-1)) if self.training else z.new_zeros(())
        commit = F.mse_loss(z, z_q.detach())  # ||z - sg[c]||^2
        return z + (z_q - z).detach(), ids, commit, perplexity  # straight-through: dz_st / dz = I


def _distributed():
    return dist.is_available() and dist.is_initialized()


class PoseTokenizer(nn.Module):
    """theta (B, 24, 3) axis-angle -> E -> z (B, L, D) -> ids (B, L) -> D -> R (B, 24, 3, 3).

    Encoder: Conv(C_in -> w) -> nearest x (2 L / 24) -> Conv -> [Conv(k4, s2) -> Resnet1D] (2L -> L)
    -> Conv(w -> D). Decoder: Conv(D -> w) -> Resnet1D -> Conv(k = s = L / 24) (L -> 24) -> Conv -> 6D.
    NOTE 2: TokenHMR-like; the paper names only ResBlocks, 1D convolutions and one quantizer.
    NOTE 1: the encoder reads 6D rotations (TokenHMR), C_in = 6.
    Built from its config alone, untrained: the codebook starts from the encoder outputs of the first batch it
    sees in training mode (`tok.train()(poses)`, as `compute_loss`'s step does); body: SMPL (default the file
    under $HMR_BODY_MODELS, bodymodels.load_smpl).
    """

    def __init__(self, cfg, body=None):
        super().__init__()
        self.cfg = cfg
        w, D, r = cfg.width, cfg.code_dim, cfg.num_tokens // NUM_JOINTS
        self.encoder = nn.Sequential(
            nn.Conv1d(6, w, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2 * r, mode="nearest"),
            nn.Conv1d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv1d(w, w, 4, stride=2, padding=1), resnet1d(w, cfg.res_depth, cfg.dilation_growth),
            nn.Conv1d(w, D, 3, padding=1))
        self.quantizer = QuantizeEMAReset(cfg.codebook_size, D, cfg.ema_decay)
        self.decoder = nn.Sequential(
            nn.Conv1d(D, w, 3, padding=1), nn.ReLU(), resnet1d(w, cfg.res_depth, cfg.dilation_growth, reverse=True),
            nn.Conv1d(w, w, r, stride=r), nn.ReLU(), nn.Conv1d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv1d(w, 6, 3, padding=1))
        self.body = body if body is not None else SMPLLayer(_smpl())

    def encode(self, pose):
        """theta (B, 24, 3) axis-angle -> z (B, L, D)."""
        check_pose(pose)
        x = bodymodels.matrix_to_rot6d(bodymodels.axis_angle_to_matrix(pose))  # (B, 24, 6)
        return self.encoder(x.transpose(1, 2)).transpose(1, 2)  # (B, 6, 24) -> (B, D, L) -> (B, L, D)

    def decode(self, e):
        """Code vectors e (B, L, D) -> rotations R (B, 24, 3, 3) (6D (B, 24, 6) -> Gram-Schmidt)."""
        return bodymodels.rot6d_to_matrix(self.decoder(e.transpose(1, 2)).transpose(1, 2))

    @torch.no_grad()
    def tokenize(self, pose):
        """theta (B, 24, 3) -> ids (B, L); never updates the codebook."""
        return self.quantizer.nearest(self.encode(pose))

    def decode_ids(self, ids):
        return self.decode(self.quantizer.codebook[ids])

    def forward(self, pose):
        """-> {"R" (B, 24, 3, 3), "ids" (B, L), "commit" (), "perplexity" ()}; EMA update in training mode."""
        z_q, ids, commit, perplexity = self.quantizer(self.encode(pose))
        return {"R": self.decode(z_q), "ids": ids, "commit": commit, "perplexity": perplexity}

    def compute_loss(self, pred, pose):
        """Eq. Lvq on `forward`'s pred and the target pose (B, 24, 3) -> (loss, {term: ()}): L = w_re (w_pose L_theta
        + w_verts L_V + w_joints L_J) + w_commit ||z - sg[c]||^2, L1 on the rotation matrices, vertices and joints of
        SMPL at beta = 0 (NOTE 4). Each term is a mean over samples, so equal shards on any number of ranks average
        to it; the EMA codebook update sums its statistics over the ranks (NOTE 6)."""
        cfg, R_gt, zeros = self.cfg, bodymodels.axis_angle_to_matrix(pose), pose.new_zeros(len(pose), NUM_BETAS)
        with torch.no_grad():
            v_gt, j_gt = self.body(R_gt, zeros, cfg.loss_vertices)
        v, j = self.body(pred["R"], zeros, cfg.loss_vertices)
        terms = {"pose": (pred["R"] - R_gt).abs().mean(), "verts": (v - v_gt).abs().mean(),
                 "joints": (j - j_gt).abs().mean(), "commit": pred["commit"]}
        recon = cfg.w_pose * terms["pose"] + cfg.w_verts * terms["verts"] + cfg.w_joints * terms["joints"]
        return cfg.w_re * recon + cfg.w_commit * terms["commit"], dict(terms, perplexity=pred["perplexity"])


def check_pose(pose):
    if pose.dim() != 3 or tuple(pose.shape[1:]) != (NUM_JOINTS, 3):
        raise ValueError(f"GenHMR: expected an SMPL pose (B, 24, 3) axis-angle (global orientation first), "
                         f"got shape {tuple(pose.shape)}")


def augment_pose(pose, cfg):
    """App. > Data Augmentation: the global orientation pre-multiplied by Rz(roll) Ry(yaw), in camera axes
    (y vertical, z the optical axis), yaw ~ U(+-aug_yaw_deg), roll ~ U(+-aug_roll_deg) (NOTE 5)."""
    if not (cfg.aug_yaw_deg or cfg.aug_roll_deg):
        return pose
    u = torch.rand(len(pose), 2, device=pose.device) * 2 - 1
    yaw, roll = torch.deg2rad(u[:, 0] * cfg.aug_yaw_deg), torch.deg2rad(u[:, 1] * cfg.aug_roll_deg)
    zero = torch.zeros_like(yaw)
    Ry = bodymodels.axis_angle_to_matrix(torch.stack([zero, yaw, zero], -1))
    Rz = bodymodels.axis_angle_to_matrix(torch.stack([zero, zero, roll], -1))
    R0 = Rz @ Ry @ bodymodels.axis_angle_to_matrix(pose[:, 0])
    return torch.cat([bodymodels.matrix_to_axis_angle(R0)[:, None], pose[:, 1:]], 1)


# ---------------------------------------------------------------------------------------------
# 2. The image stage: feature pyramid, masked transformer with multi-scale deformable cross-attention, GenHMR


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W) (ViTDet)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def pyramid_level(width, scale, d_model):
    """ViTDet simple feature pyramid, one level: log2(scale) x [ConvT(2, 2) halving the channels,
    then LayerNorm2d + GELU between two], then Conv1x1 -> d_model + GroupNorm (NOTE 7)."""
    layers, c = [], width
    for i in range(int(math.log2(scale))):
        if i:
            layers += [LayerNorm2d(c), nn.GELU()]
        layers.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
        c //= 2
    layers += [nn.Conv2d(c, d_model, 1), nn.GroupNorm(min(32, d_model // 4), d_model)]
    return nn.Sequential(*layers)


def _attend(q, k, v, heads):
    """Multi-head softmax attention: q (B, Lq, M d), k and v (B, Lk, M d) -> (B, Lq, M d)."""
    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, M, L, d)
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head self-attention with one qkv Linear (ViTPose names: qkv, proj)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)  # (B, N, C) each
        return self.proj(_attend(q, k, v, self.heads))


def ms_deform_attn(values, locations, weights):
    """Eq. MSDA's sum, plain PyTorch: sum_l sum_k A_lqk x^l(p_lqk) per head.

    values: n_levels maps (B M, C/M, H_l, W_l); locations (B, Lq, M, n_levels, P, 2) as (x, y) in
    [0, 1] of each map; weights (B, Lq, M, n_levels, P). Bilinear, zero outside, align_corners=False
    (pixel i covers [i, i + 1) / W_l). -> (B, Lq, C).
    """
    B, Lq, M, nL, P, _ = locations.shape
    grids = 2 * locations - 1
    samples = [F.grid_sample(v, grids[:, :, :, l].transpose(1, 2).flatten(0, 1), mode="bilinear",
                             padding_mode="zeros", align_corners=False)  # (B M, C/M, Lq, P)
               for l, v in enumerate(values)]
    s = torch.stack(samples, dim=-2)  # (B M, C/M, Lq, n_levels, P)
    w = weights.transpose(1, 2).flatten(0, 1)[:, None]  # (B M, 1, Lq, n_levels, P)
    out = (s * w).sum((-1, -2))  # (B M, C/M, Lq)
    return out.view(B, M * out.shape[1], Lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al. 2020), Eq. MSDA in multi-head form:
    MSDA(Y, p, {x^l}) = sum_m W_m [sum_l sum_k A_mlqk W'_m x^l(phi_l(p_q) + dp_mlqk)]."""

    def __init__(self, d, heads, levels, points, level_sizes=None):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.level_sizes = level_sizes  # ((H_l, W_l), ...) or None: where the offsets start (`reset_parameters`)
        self.sampling_offsets = nn.Linear(d, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d, heads * levels * points)
        self.value_proj, self.output_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR: offsets start on a radial pattern (point k at k + 1 pixels along head m's
        direction), attention weights uniform, value/output projections Xavier. With level_sizes, each level's
        pattern is scaled by `offset_scale` (NOTE 28)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads) * (2 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # (M, 2)
        grid = grid[:, None, None] * torch.arange(1, self.points + 1)[None, None, :, None]  # (M, 1, P, 2)
        grid = grid.expand(-1, self.levels, -1, -1)  # (M, n_levels, P, 2)
        if self.level_sizes is not None:
            grid = grid * torch.tensor([offset_scale(*hw) for hw in self.level_sizes])[None, :, None, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight), nn.init.zeros_(self.attention_weights.bias)
        for m in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(m.weight), nn.init.zeros_(m.bias)

    def sampling(self, query, reference):
        """query (B, Lq, d) -> offsets (B, Lq, M, n_levels, P, 2) in pixels of each level, weights A
        (B, Lq, M, n_levels, P). `reference` (B or 1, Lq, 2) is not read: forward adds it."""
        B, Lq, _ = query.shape
        offsets = self.sampling_offsets(query).view(B, Lq, self.heads, self.levels, self.points, 2)
        logits = self.attention_weights(query).view(B, Lq, self.heads, self.levels * self.points)
        A = logits.softmax(-1).view(B, Lq, self.heads, self.levels, self.points)  # sums to 1 over (l, k)
        return offsets, A

    def forward(self, query, reference, levels):
        """query (B, Lq, d), reference (B or 1, Lq, 2), levels: n_levels maps (B, d, H_l, W_l) -> (B, Lq, d)."""
        B, Lq, d = query.shape
        offsets, A = self.sampling(query, reference)
        sizes = torch.tensor([[x.shape[-1], x.shape[-2]] for x in levels], dtype=query.dtype, device=query.device)
        # p_mlqk = p_q + dp_mlqk / (W_l, H_l): offsets are in pixels of each level
        loc = reference[:, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
        # W' x^l as a 1x1 convolution on the (B, d, H_l, W_l) maps (the same Linear, no transposes)
        weight = self.value_proj.weight[:, :, None, None]
        values = [F.conv2d(x, weight, self.value_proj.bias).reshape(B * self.heads, d // self.heads, *x.shape[-2:])
                  for x in levels]
        return self.output_proj(ms_deform_attn(values, loc, A))


REFERENCE_MARGIN = 0.1  # the reference points start in [0.1, 0.9] of the image (`MaskedTransformer`)


def offset_scale(H, W):
    """NOTE 28: the factor on Deformable DETR's start offsets for an H x W map, min(1, 0.1 min(H, W)): each head's
    first point (1 pixel out) then stays within the reference points' starting margin, so inside the map; at
    least 10 pixels a side (every level at the paper's size) it is Deformable DETR's own start."""
    return min(1.0, REFERENCE_MARGIN * min(H, W))


def level_sizes(cfg):
    """The pyramid's (H_l, W_l) per level: the ViT grid (H / patch, W / patch) x each of cfg.feature_scales."""
    H, W = cfg.image_hw
    return tuple((H // cfg.patch_size * s, W // cfg.patch_size * s) for s in cfg.feature_scales)


class DecoderLayer(nn.Module):
    """Pre-norm: Y + SA(LN Y) -> Y + MSDA(LN Y, p, {x^l}) -> Y + FFN(LN Y). NOTE 8."""

    def __init__(self, cfg, levels):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.num_heads)
        self.cross_attn = MSDeformAttn(d, cfg.num_heads, levels, cfg.num_points,
                                       level_sizes(cfg) if cfg.offset_start == "map" else None)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, y, reference, levels):
        y = y + self.dropout(self.self_attn(self.norm1(y)))  # inter-token dependencies
        # Eq. MSDA: pose-token queries attend to a few points around p_y on every level (levels None: `TokenPrior`)
        if levels is not None:
            y = y + self.dropout(self.cross_attn(self.norm2(y), reference, levels))
        return y + self.dropout(self.ffn(self.norm3(y)))


class MaskedTransformer(nn.Module):
    """The masked transformer decoder: ids Y_M (B, L) with [MASK] = K, pyramid, codebook C (K, D) -> logits (B, L, K)
    of p(y_i | Y_M, X): Linear(d, K) on the normed last token state h (the paper's logits). code_init: None (a fresh
    table) or f(C, d) -> (K, d), the codes' rows of the token embedding at unit std (build_model's, NOTE 26)."""

    def __init__(self, cfg, num_tokens, codebook, head_width=None, code_init=None):
        super().__init__()
        d, self.mask_id = cfg.d_model, len(codebook)
        # NOTE 24: token and position embeddings at one scale, std 0.02 (BERT / MaskGIT), so that self-attention
        # can find a token's neighbours by position
        self.tok_emb = nn.Embedding(len(codebook) + 1, d)  # the last row is the learnable [MASK]
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        if code_init is not None:
            with torch.no_grad():
                self.tok_emb.weight[:-1] = code_init(codebook, d) * 0.02
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, d) * 0.02)
        # learnable reference points p_y = sigmoid(r_y), r (L, 2), spread over the image at the start
        # NOTE 9: Deformable DETR's start puts all L points at the centre: every token reads one place
        self.reference = nn.Parameter(torch.logit(torch.rand(num_tokens, 2) * (1 - 2 * REFERENCE_MARGIN)
                                                  + REFERENCE_MARGIN))
        self.layers = nn.ModuleList(DecoderLayer(cfg, len(cfg.feature_scales)) for _ in range(cfg.num_layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, head_width or len(codebook))

    def reference_points(self):
        return self.reference.sigmoid()[None]  # (1, L, 2) as (x, y) in [0, 1] of the image

    def forward(self, ids, levels, codebook):
        y = self.tok_emb(ids) + self.pos_emb  # (B, L, d)
        ref = self.reference_points()
        for layer in self.layers:
            y = layer(y, ref, levels)
        return self.readout(self.norm(y), codebook)

    def readout(self, h, codebook):
        return self.head(h)  # (B, L, K)


class ShapeCameraHead(nn.Module):
    """beta (B, 10) and weak-perspective camera [s, tx, ty] (B, 3) from the pooled 1x ViT map, as
    residuals on HMR2.0's mean parameters (beta = 0, cam = [0.9, 0, 0]). NOTE 10."""

    def __init__(self, width, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, NUM_BETAS + 3))
        nn.init.xavier_uniform_(self.mlp[-1].weight, gain=0.01), nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("mean", torch.tensor([0.0] * NUM_BETAS + [0.9, 0.0, 0.0]))

    def forward(self, feature):
        out = self.mlp(feature.mean((-1, -2))) + self.mean  # (B, 13)
        return out[:, :NUM_BETAS], out[:, NUM_BETAS:]


class GenHMR(nn.Module):
    """The image stage: images -> ViT -> pyramid; [MASK]ed pose tokens -> masked transformer -> logits over the frozen
    tokenizer's codebook; beta and camera from the ViT map. `forward`: training's pass, its loss `compute_loss`;
    `generate`: the paper's inference. tokenizer: a PoseTokenizer, trained or not (frozen here); masked_transformer:
    its class (build_model puts TINY's additions in its place, appendix E).

    >>> tok = PoseTokenizer(TOKENIZER_TINY.model)  # SMPL from $HMR_BODY_MODELS
    >>> poses = torch.randn(8, 24, 3) * 0.3
    >>> loss, terms = tok.compute_loss(tok.train()(poses), poses)  # Eq. Lvq; this first batch starts the codebook
    >>> loss.backward()
    >>> model = GenHMR(TINY.model, tok.eval())
    >>> images, ids = torch.rand(2, 3, *TINY.model.image_hw), tok.tokenize(poses[:2])  # crops; Y* (2, L)
    >>> masked_ids, masked = random_masking(ids, model.num_codes)
    >>> pred = model(images, masked_ids, temperature=1.0)  # logits, and the pose they imply (Gumbel-ST)
    >>> pred["logits"].shape
    torch.Size([2, 48, 256])
    >>> targets = dict(ids=ids, masked=masked, smpl_pose=poses[:2], smpl_shape=torch.zeros(2, 10),
    ...                joints3d=torch.randn(2, 24, 3), joints2d=torch.rand(2, 24, 2) - 0.5)
    >>> loss, terms = compute_loss(pred, targets, TINY.model)
    >>> loss.backward()
    >>> out = model.eval().generate(images)  # UGS (T = 5) -> SMPL
    >>> out["verts"].shape
    torch.Size([2, 6890, 3])
    >>> out = model.generate(images, joints2d=out["joints2d"] + 1.0)  # + refinement to detected 2D joints (pixels)
    >>> out["refined_verts"].shape
    torch.Size([2, 6890, 3])
    """

    def __init__(self, cfg, tokenizer, masked_transformer=MaskedTransformer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer.eval().requires_grad_(False)
        self.num_tokens, self.num_codes = tokenizer.cfg.num_tokens, tokenizer.cfg.codebook_size
        self.backbone = DropPathViT(cfg)
        self.pyramid = nn.ModuleList(pyramid_level(cfg.vit_width, s, cfg.d_model) for s in cfg.feature_scales)
        self.masked_transformer = masked_transformer(cfg, self.num_tokens, tokenizer.quantizer.codebook)
        self.shape_camera_head = ShapeCameraHead(cfg.vit_width, cfg.head_hidden)
        self.register_buffer("mean_std", torch.tensor([IMAGENET_MEAN, IMAGENET_STD])[..., None, None])

    def train(self, mode=True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: the codebook never updates here
        return self

    def encode_image(self, images):
        """images (B, 3, H, W) in [0, 1] -> (pyramid: n_levels maps (B, d, s h, s w), beta, cam)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"GenHMR: expected images (B, 3, H, W), got {tuple(images.shape)}")
        feature = self.backbone((images - self.mean_std[0]) / self.mean_std[1])  # (B, C, h, w)
        betas, cam = self.shape_camera_head(feature)
        return [level(feature) for level in self.pyramid], betas, cam

    def logits(self, ids, levels):
        """masked ids (B, L), an encoded pyramid -> logits (B, L, K) over the frozen codebook."""
        return self.masked_transformer(ids, levels, self.tokenizer.quantizer.codebook)

    def forward(self, images, ids, temperature=1.0, true_ids=None):
        """Training's pass: images (B, 3, H, W) in [0, 1], ids Y_M (B, L) with [MASK] = K -> {"logits" (B, L, K), and
        the pose they imply through straight-through Gumbel-softmax at `temperature` (Eq. 5, 6): "R" (B, 24, 3, 3),
        "betas" (B, 10), "cam" (B, 3), "joints3d" (B, 24, 3) (SMPL's frame), "joints2d" (B, 24, 2) (normalised)}.
        true_ids (B, L): NOTE 13's variant, the true codes replace the draw at the visible positions."""
        levels, betas, cam = self.encode_image(images)
        logits = self.logits(ids, levels)
        y = gumbel_softmax_st(logits, temperature)  # one-hot tokens forward, soft gradient backward
        if true_ids is not None:
            y = torch.where((ids == self.num_codes)[..., None], y, F.one_hot(true_ids, self.num_codes).to(y.dtype))
        R = self.tokenizer.decode(y @ self.tokenizer.quantizer.codebook)  # e = y C through the frozen decoder
        return {"logits": logits, **smpl_prediction(self.tokenizer.body, R, betas, cam)}

    @torch.no_grad()
    def generate(self, images, joints2d=None, joints2d_weight=None, cfg=None, seeds=None, generator=None):
        """The paper's inference: UGS (cfg: InferenceConfig, default the paper's), then, given detected 2D joints
        (B, 24, 2) in pixels of the images (joints2d_weight (B, 24): e.g. confidences, 0 without a keypoint), the
        2D pose-guided refinement (Eqs. 2-4, `refine_towards`), then SMPL. seeds (B,): UGS's choice noise drawn per
        sample from generators seeded by them (else from `generator`). -> {ids (B, L), betas (B, 10), cam (B, 3),
        joints3d (B, 24, 3), verts (B, 6890, 3) in metres in the crop's camera, joints2d (B, 24, 2) pixels, cam_t
        (B, 3)}, and with joints2d the same refined, prefixed refined_ (the paper's answer)."""
        cfg, image_hw = cfg or InferenceConfig(), images.shape[-2:]
        ugs = uncertainty_guided_sampling(self, images, cfg.ugs_iterations, cfg.schedule, cfg.top_k, generator,
                                          cfg.choice_temperature, seeds)
        ids, betas, cam = ugs["ids"], ugs["betas"], ugs["cam"]
        out = dict(mesh_outputs(self.tokenizer, self.tokenizer.decode_ids(ids), betas, cam, image_hw),
                   ids=ids, betas=betas, cam=cam)
        if joints2d is not None:
            out.update(self.refine_towards(out, joints2d, joints2d_weight, cfg, image_hw))
        return out

    @torch.no_grad()
    def refine_towards(self, sampled, joints2d, joints2d_weight, cfg, image_hw, prefix="refined_"):
        """Sec. 3.3: the sampled tokens (sampled: ids, betas, cam from `generate`) refined towards 2D joints (B, 24, 2)
        in pixels of the H x W crop -> the refined mesh's keys (`mesh_outputs`), prefixed."""
        tok, betas, cam = self.tokenizer, sampled["betas"], sampled["cam"]
        targets = normalise_joints2d(joints2d.float(), image_hw)
        problem = refinement_problem(tok, sampled["ids"], betas, cam, targets, cfg.refine_reg, image_hw[0],
                                     joints2d_weight)
        return mesh_outputs(tok, tok.decode(refine(*problem, cfg)[-1]), betas, cam, image_hw, prefix)


# ---------------------------------------------------------------------------------------------
# 3. Training: masking, Gumbel-softmax, losses (Eq. 1, 5, 6)


def num_masked(mask_tau, L):
    """Training Strategy: m = ceil(cos(pi tau / 2) L), clamped to [1, L] (NOTE 11); tau: the masking variable."""
    return torch.ceil(torch.cos(math.pi * mask_tau / 2) * L - 1e-6).clamp(1, L).long()


def random_masking(ids, mask_id, mask_tau_max=1.0, generator=None):
    """ids (B, L) -> (Y_M with m per-sample random positions set to mask_id, mask (B, L) bool), tau ~ U(0, max)."""
    B, L = ids.shape
    mask_tau = torch.rand(B, device=ids.device, generator=generator) * mask_tau_max
    m = num_masked(mask_tau, L)  # (B,)
    ranks = torch.rand(B, L, device=ids.device, generator=generator).argsort(1).argsort(1)  # random permutation
    mask = ranks < m[:, None]
    return torch.where(mask, torch.full_like(ids, mask_id), ids), mask


def corrupt_tokens(y_gt, num_codes, cfg):
    """The training input: Y* (B, L) [MASK]ed (`random_masking`), its visible tokens swapped (`swap_visible`)
    -> (Y_M, masked (B, L) bool); cfg: the recipe (mask_tau_max, pkeep)."""
    y_m, masked = random_masking(y_gt, num_codes, cfg.mask_tau_max)
    return swap_visible(y_m, masked, num_codes, cfg.pkeep), masked


def gumbel_temperature(cfg, step):
    """Eq. (5) over the first anneal_fraction of max_steps, then held at temperature_end (NOTE 14); cfg: the recipe."""
    T = max(1.0, cfg.anneal_fraction * cfg.max_steps)
    t = min(float(step), T)
    return cfg.temperature_end + 0.5 * (cfg.temperature_start - cfg.temperature_end) * (1 + math.cos(math.pi * t / T))


def gumbel_softmax_st(logits, temperature, noise=None):
    """Straight-through Gumbel-softmax: forward one-hot(argmax(l + n)), backward d softmax((l + n) / temperature).

    Eq. (6): p_k = exp((l_k + n_k) / tau) / sum_j exp((l_j + n_j) / tau), n ~ Gumbel(0, 1), tau the temperature.
    """
    if noise is None:
        u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-7)
        noise = -torch.log(-torch.log(u))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast -> fp32
    soft = F.softmax((logits + noise) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def normalise_joints2d(joints2d, image_hw):
    """Pixels (B, J, 2) of an H x W crop -> normalised crop coordinates (pixel - (W/2, H/2)) / H."""
    H, W = image_hw
    return (joints2d - joints2d.new_tensor([W / 2, H / 2])) / H


def project(joints, cam):
    """HMR2.0's camera: joints (B, J, 3), cam [s, tx, ty] (B, 3) -> normalised 2D (B, J, 2), t (B, 3)."""
    t = bodymodels.weak_perspective_to_translation(cam, FOCAL_LENGTH, CROP_SIZE)
    return bodymodels.project_to_crop(joints, t, FOCAL_LENGTH, CROP_SIZE), t


def smpl_prediction(body, R, betas, cam):
    """What the SMPL losses read: {R (B, 24, 3, 3), betas (B, 10), cam (B, 3), joints3d (B, 24, 3) (SMPL's frame, no
    translation), joints2d (B, 24, 2) (normalised crop coordinates)}."""
    betas, cam = betas.float(), cam.float()
    joints = body.joints(R, betas)  # SMPL root at its rest position
    return {"R": R, "betas": betas, "cam": cam, "joints3d": joints, "joints2d": project(joints, cam)[0]}


def compute_loss(pred, targets, cfg):
    """L_total = w_mask L_mask (Eq. 1) + w_theta L_theta + w_beta L_beta + w_3D L_3D + w_2D L_2D -> (loss, {term: ()}).
    pred: GenHMR.forward's; cfg: GenHMRConfig; targets: ids Y* (B, L), masked (B, L) bool (the [MASK]ed positions),
    smpl_pose (B, 24, 3), smpl_shape (B, 10), joints3d (B, 24, 3) (any frame), joints2d (B, 24, 2) normalised,
    optional 1-where-known masks (real data): has_smpl_pose, has_smpl_shape (B,), joints2d_weight, joints3d_weight
    (B, 24). No state changes."""
    # Eq. (1): L_mask = -E_Y [sum_i log p(y_i | Y_M, X)], a mean over samples: no sample's weight depends on the
    # others', so equal shards on any number of ranks average to it
    per_sample = token_cross_entropy(pred["logits"], targets["ids"], targets["masked"], cfg.ce_on)
    l_mask = (per_sample * targets.get("has_smpl_pose", torch.ones_like(per_sample)).float()).mean()
    terms = {"mask": l_mask, **smpl_losses(pred, targets, cfg)}
    loss = (cfg.w_mask * terms["mask"] + cfg.w_pose * terms["pose"] + cfg.w_betas * terms["betas"]
            + cfg.w_3d * terms["joints3d"] + cfg.w_2d * terms["joints2d"])
    return loss, terms


def token_cross_entropy(logits, y_gt, masked, ce_on="all"):
    """Eq. (1) per sample: -sum_i log p(y_i | Y_M, X), the sum as a mean over the positions i of each sample
    ("all": the L positions; "masked": its m >= 1 [MASK]s) -> (B,). NOTE 12."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y_gt.flatten(), reduction="none").view_as(y_gt)
    return ce.mean(1) if ce_on == "all" else (ce * masked).sum(1) / masked.sum(1)


def smpl_losses(pred, targets, cfg):
    """L_theta, L_beta (MSE), L_3D (pelvis-centred L1), L_2D (normalised L1) of `smpl_prediction`'s pred against
    targets (`compute_loss`'s): each summed over joints and coordinates per sample, as HMR2.0/TokenHMR, then
    loss_batch x the mean over samples (NOTE 15: their sums over a GPU's 48 samples, the same on any ranks)."""
    R, joints, uv = pred["R"], pred["joints3d"], pred["joints2d"]
    R_gt = bodymodels.axis_angle_to_matrix(targets["smpl_pose"].float())
    j3d_gt, uv_gt = targets["joints3d"].float(), targets["joints2d"].float()
    # real data (data.HMR2Npz) lacks some labels: optional masks, 1 where known (HMR2.0's has_smpl_params
    # and keypoint confidences), each multiplying its term; synthetic samples have every label
    ones = torch.ones(len(R), device=R.device)
    w2d, w3d = (targets.get(k, ones[:, None].expand(-1, NUM_JOINTS)).float()
                for k in ("joints2d_weight", "joints3d_weight"))
    per_sample = {"pose": ((R - R_gt) ** 2).sum((1, 2, 3)) * targets.get("has_smpl_pose", ones).float(),  # (B,)
                  "betas": (((pred["betas"] - targets["smpl_shape"].float()) ** 2).sum(1)
                            * targets.get("has_smpl_shape", ones).float()),
                  "joints3d": (((joints - joints[:, PELVIS:PELVIS + 1])
                                - (j3d_gt - j3d_gt[:, PELVIS:PELVIS + 1])).abs().sum(2) * w3d).sum(1),
                  "joints2d": ((uv - uv_gt).abs().sum(2) * w2d).sum(1)}
    return {name: cfg.loss_batch * value.mean() for name, value in per_sample.items()}


# ---------------------------------------------------------------------------------------------
# 4. Inference: uncertainty-guided sampling, 2D-pose-guided refinement (`GenHMR.generate` runs them)


# gamma(r) of App. > Mask Scheduling Function, r = t / T in [0, 1] (the paper adopts the cosine; Table 11)
SCHEDULES = {"cosine": lambda r: (1 + math.cos(math.pi * r)) / 2, "linear": lambda r: 1 - r,
             "cubic": lambda r: 1 - r ** 3, "sqrt": lambda r: math.sqrt(max(0.0, 1 - r * r))}


def remask_counts(L, T, schedule="cosine"):
    """Tokens re-masked after iterations t = 1..T: ceil(gamma(t / T) L) (n_T = 0). NOTE 17.
    The 1e-9 keeps exact products exact (cos, T = 3, t = 2: 0.25 x 96 = 24, not 24.000000000000007 -> 25)."""
    if T < 1:
        raise ValueError(f"UGS needs T >= 1 iterations, got {T}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown mask schedule {schedule!r}: expected one of {tuple(SCHEDULES)}")
    gamma = SCHEDULES[schedule]
    return [min(L, math.ceil(gamma(t / T) * L - 1e-9)) for t in range(1, T + 1)]


def sample_tokens(probs, top_k, generator=None):
    """probs (B, L, K) -> ids (B, L): argmax for top_k = 1, else a draw among each position's top k."""
    if top_k == 1:
        return probs.argmax(-1)
    p, idx = probs.topk(top_k, dim=-1)  # (B, L, k)
    choice = torch.multinomial(p.flatten(0, 1), 1, generator=generator).view(*p.shape[:2], 1)
    return idx.gather(-1, choice)[..., 0]


@torch.no_grad()
def uncertainty_guided_sampling(model, images, T=5, schedule="cosine", top_k=1, generator=None,
                                choice_temperature=0.0, seeds=None):
    """Inference Strategy > UGS: start all [MASK]; each iteration samples every masked token, then
    re-masks the ceil(gamma(t / T) L) least confident of them; the image encoder runs once.
    -> {"ids" (B, L), "betas", "cam", "history": [(masked (B, L) bool after t, confidence (B, L), ids (B, L))]}."""
    model = _unwrap(model)
    levels, betas, cam = model.encode_image(images)  # once, whatever T is
    ids, history = sample_from_features(model, levels, T, schedule, top_k, generator, choice_temperature, seeds)
    return {"ids": ids, "betas": betas, "cam": cam, "history": history}


@torch.no_grad()
def sample_from_features(model, levels, T=5, schedule="cosine", top_k=1, generator=None, choice_temperature=0.0,
                         seeds=None):
    """UGS's iterations on an encoded image pyramid -> (ids (B, L), history: per iteration t, (masked (B, L) after t,
    confidence (B, L) of the sampled tokens, ids (B, L) sampled or fixed at t, before re-masking)).
    choice_temperature c > 0 ranks the masked tokens by log p + c (1 - t / T) g, g ~ Gumbel(0, 1) (MaskGIT's,
    NOTE 17: `gumbel_noise`, appendix E)."""
    # levels None: no image (`TokenPrior`); the batch size and device then come from seeds
    B, device = (len(levels[0]), levels[0].device) if levels is not None else (len(seeds), seeds.device)
    L = model.num_tokens
    ids = torch.full((B, L), model.num_codes, dtype=torch.long, device=device)
    masked = torch.ones(B, L, dtype=torch.bool, device=device)
    history = []
    for t, n in enumerate(remask_counts(L, T, schedule), 1):
        probs = model.logits(ids, levels).float().softmax(-1)  # (B, L, K)
        sampled = sample_tokens(probs, top_k, generator)
        confidence = probs.gather(-1, sampled[..., None])[..., 0]  # probability of the chosen token
        ids = torch.where(masked, sampled, ids)
        score = confidence
        if choice_temperature > 0 and n:
            noise = gumbel_noise((B, L), seeds, t, generator, device)
            score = confidence.clamp_min(1e-30).log() + choice_temperature * (1 - t / T) * noise
        score = torch.where(masked, score, torch.full_like(score, math.inf))  # fixed stay fixed
        order = score.argsort(dim=1, stable=True)  # least confident first, ties to the lower index
        masked = torch.zeros_like(masked).scatter(1, order[:, :n], True)
        history.append((masked.clone(), confidence, ids))  # ids: every position sampled or fixed, before re-masking
        ids = torch.where(masked, torch.full_like(ids, model.num_codes), ids)
    return ids, history


def refinement_objective(tokenizer, e, betas, t, targets, R0, reg, scale, weights=None):
    """Eq. (2)-(3) per sample: G = sum_j w_j ||S (Pi(K(J'_3D + t)) - J_2D)||^2 + lambda ||R(e) - R_0||^2 -> (B,);
    weights (B, 24) per joint (a detector's confidences, 0 where a joint has no keypoint), None = all 1 (Eq. 3)."""
    R = tokenizer.decode(e)
    joints = tokenizer.body.joints(R, betas)
    uv = bodymodels.project_to_crop(joints, t, FOCAL_LENGTH, CROP_SIZE)
    residual = (((uv - targets) * scale) ** 2).sum(2)  # (B, 24)
    residual = residual if weights is None else residual * weights
    return residual.sum(1) + reg * ((R - R0) ** 2).sum((1, 2, 3))


def fixed_step(objective, e, G, grad, eta):
    """Eq. (4) as printed: the same eta (B, 1, 1) at every step -> (eta for this step, eta for the next)."""
    return eta, eta


def refinement_problem(tokenizer, ids, betas, cam, targets, reg, scale, weights=None):
    """Inference Strategy > 2D Pose-Guided Refinement for the sampled tokens ids (B, L), beta (B, 10) and camera
    (B, 3) (both fixed) -> (Eqs. (2)-(3)'s objective G: e (B, L, D) -> (B,), the start e_0 = C[Y] (B, L, D)), with
    R_0 = D(e_0), targets: normalised 2D joints (B, 24, 2), weights (B, 24) or None, lambda = reg, the residual in
    crop pixels (scale: the crop height)."""
    e = tokenizer.quantizer.codebook[ids]
    with torch.no_grad():
        t = bodymodels.weak_perspective_to_translation(cam, FOCAL_LENGTH, CROP_SIZE)
        R0 = tokenizer.decode(e)
    objective = functools.partial(refinement_objective, tokenizer, betas=betas, t=t, targets=targets, R0=R0,
                                  reg=reg, scale=float(scale), weights=weights)
    return objective, e


def refine(objective, e, cfg):
    """Eq. (4): P = cfg.refine_iterations steps of gradient descent on the code vectors e (B, L, D), fed to the frozen
    tokenizer decoder (not re-quantised); no network changes. eta: cfg.refine_lr, by the rule
    STEP_SIZES[cfg.refine_eta_rule]. -> [e_0, e_1, ..., e_P], each (B, L, D)."""
    step_size = STEP_SIZES[cfg.refine_eta_rule]
    eta = torch.full((len(e), 1, 1), float(cfg.refine_lr), device=e.device)
    trajectory = [e]
    for _ in range(cfg.refine_iterations):
        with torch.enable_grad():
            e = e.detach().requires_grad_(True)
            G = objective(e)
            grad, = torch.autograd.grad(G.sum(), e)  # only e: no parameter receives a gradient
        e, G = e.detach(), G.detach()
        eta_now, eta = step_size(objective, e, G, grad, eta)
        e = e - eta_now * grad  # Eq. (4): e <- e - eta grad_e G
        trajectory.append(e)
    return trajectory


def mesh_outputs(tokenizer, R, betas, cam, image_hw, prefix=""):
    """SMPL mesh in the crop's camera (HMR2.0's) -> {joints3d, verts, joints2d (pixels of the H x W crop), cam_t}."""
    verts, joints = tokenizer.body(R, betas)
    uv, t = project(joints, cam)
    H, W = image_hw
    return {f"{prefix}joints3d": joints + t[:, None], f"{prefix}verts": verts + t[:, None],
            f"{prefix}joints2d": uv * H + uv.new_tensor([W / 2, H / 2]), f"{prefix}cam_t": t}


# ---------------------------------------------------------------------------------------------
# 5. Configs (PAPER, TINY): a preset per stage of sub-configs (the model's, inference, the recipe); build_model and
#    train.py's protocol, the thin layer from its dict batches to the classes above


@dataclass
class TokenizerConfig:
    """What building the pose tokenizer reads, and its loss (App. > Implementation Details; Tables 5, 6)."""
    num_tokens: int = 96  # L (Table 6: 96 chosen)
    codebook_size: int = 2048  # K (Table 5: 2048 x 256 chosen)
    code_dim: int = 256  # D
    width: int = 512  # conv width. NOTE 2: unstated; TokenHMR's
    res_depth: int = 2  # ResBlocks per Resnet1D (TokenHMR)
    dilation_growth: int = 3  # dilations 1, 3, 9, ... (TokenHMR)
    ema_decay: float = 0.99  # EMA codebook (Method: "exponential moving average and codebook reset")
    # --- loss Eq. Lvq (App. > Implementation Details) ---
    w_re: float = 1.0  # lambda_re
    w_pose: float = 1.0  # lambda_theta
    w_verts: float = 0.5  # lambda_V
    w_joints: float = 0.3  # lambda_J
    w_commit: float = 0.02  # lambda_E used as commitment weight. NOTE 3
    loss_vertices: int = 0  # vertices in L_V, evenly strided (0 = all 6890)

    def __post_init__(self):
        if self.num_tokens % NUM_JOINTS:
            raise ValueError(f"TokenizerConfig.num_tokens={self.num_tokens}: expected a multiple of "
                             f"{NUM_JOINTS} (each joint owns num_tokens / 24 tokens)")


@dataclass
class TokenizerRecipe:
    """What train.py reads for the tokenizer (App. > Implementation Details; data: AMASS + MOYO, SMPL-H -> SMPL)."""
    # App. > Data Augmentation: "we rotate the poses at varying degrees"
    aug_yaw_deg: float = 180.0  # NOTE 5: ranges unstated
    aug_roll_deg: float = 30.0
    batch_size: int = 512  # global batch
    lr: float = 1e-4  # Adam
    max_steps: int = 200_000  # "200K iterations"
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (to lr * 0.01 at max_steps)
    weight_decay: float = 0.0  # Adam
    grad_clip: float = 0.0
    amp: bool = False

    def __post_init__(self):
        _check_choice(self, "lr_schedule", ("constant", "cosine"))


@dataclass
class TokenizerPreset:
    model: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    recipe: TokenizerRecipe = dataclasses.field(default_factory=TokenizerRecipe)


@dataclass
class GenHMRConfig:
    """What building the image stage reads (GenHMR, and the backbone stage's ViT), and its loss."""
    # --- image encoder (Method > Image Encoder: HMR2.0's ViT-H) ---
    image_size: tuple = (256, 192)  # (H, W) crop, as HMR2.0; the paper states no resolution
    patch_size: int = 16  # ViT-H/16
    patch_padding: int = 2  # HMR2.0's PatchEmbed padding (4 + 2 (ratio // 2 - 1), ratio 1)
    vit_width: int = 1280  # C
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.0
    drop_path: float = 0.55  # HMR2.0's backbone config
    conv_stem: tuple = ()  # () = HMR2.0's patch_embed.proj; else the widths of a conv stem (TINY only, NOTE 22)
    feature_scales: tuple = (1, 4, 8)  # App. > Impl.; Table 15 adds 16. NOTE 7
    # --- masked transformer decoder (Method > Masked Transformer Decoder; Table 16) ---
    d_model: int = 256  # NOTE 8: unstated, Deformable-DETR default
    num_layers: int = 4  # "4 deformable cross attention layers" (Table 16)
    num_heads: int = 8  # self-attention and MSDA heads
    num_points: int = 4  # MSDA sampling points per head and level
    # where the sampling offsets start: "detr", Deformable DETR's radial pattern in pixels of every level, or "map",
    # that pattern scaled to each map (`offset_scale`, NOTE 28: the same at the paper's size)
    offset_start: str = "detr"
    ffn_dim: int = 1024
    dropout: float = 0.1
    head_hidden: int = 1024  # beta/camera MLP. NOTE 10
    token_head: str = "linear"  # "linear": Linear(d, K), the paper's logits | "tied" to the codebook (TINY, NOTE 21)
    # --- loss (Training Strategy; App. > Implementation Details) ---
    ce_on: str = "all"  # "all" (Eq. 1 as printed) | "masked". NOTE 12
    gumbel_positions: str = "all"  # "all" | "masked" (GT one-hot at visible). NOTE 13
    w_mask: float = 1.0
    w_pose: float = 1e-3  # lambda_theta within lambda_SMPL = 1.5e-3
    w_betas: float = 5e-4
    w_3d: float = 5e-2
    w_2d: float = 1e-2
    loss_batch: int = 48  # the geometric terms' calibration: HMR2.0/TokenHMR sum them over a GPU's 48 samples
    # (their configs' TRAIN.BATCH_SIZE); here loss_batch x the mean over samples, the same on any number of ranks

    def __post_init__(self):
        for name, allowed in (("ce_on", ("all", "masked")), ("gumbel_positions", ("all", "masked")),
                              ("token_head", ("linear", "tied")), ("offset_start", ("detr", "map"))):
            _check_choice(self, name, allowed)
        self.image_size = tuple(self.image_size) if isinstance(self.image_size, (list, tuple)) else self.image_size
        self.feature_scales, self.conv_stem = tuple(self.feature_scales), tuple(self.conv_stem)
        if self.conv_stem and 2 ** len(self.conv_stem) != self.patch_size:
            raise ValueError(f"GenHMRConfig.conv_stem={self.conv_stem}: expected log2(patch_size={self.patch_size}) "
                             f"stride-2 stages, one width each")
        if any(s < 1 or s & (s - 1) for s in self.feature_scales):
            raise ValueError(f"GenHMRConfig.feature_scales={self.feature_scales}: expected powers of two")

    @property
    def image_hw(self):
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size


@dataclass
class InferenceConfig:
    """What `GenHMR.generate` reads: UGS and the refinement (App. > Impl.; Tables 2, 3, 11, 12)."""
    ugs_iterations: int = 5  # T
    schedule: str = "cosine"  # gamma, one of SCHEDULES
    top_k: int = 1  # greedy
    choice_temperature: float = 0.0  # UGS re-masks by log p + c (1 - t / T) Gumbel (MaskGIT); 0 = by p alone. NOTE 17
    refine_iterations: int = 20  # P (Table 1 = Table 3's 20-iteration row)
    refine_eta_rule: str = "fixed"  # Eq. (4): "fixed" eta = refine_lr (as printed) | "backtracking" (NOTE 18)
    refine_lr: float = 0.03  # eta of Eq. (4), unstated: chosen at TINY (docs/genhmr.md); G is in crop px^2
    refine_reg: float = 10.0  # lambda_theta' (px^2 per unit ||R - R_0||^2)

    def __post_init__(self):
        _check_choice(self, "schedule", tuple(SCHEDULES))
        _check_choice(self, "refine_eta_rule", ("fixed", "backtracking"))  # STEP_SIZES (appendix C)


@dataclass
class RegressorConfig:
    """The backbone stage's head (PoseRegressor, NOTE 23): HMR2.0's SMPL head (its config) or TINY's MLP."""
    regressor_head: str = "hmr2"  # "hmr2": HMR2.0's SMPL transformer decoder | "mlp": flatten -> MLP (TINY)
    hmr2_head: tuple = (1024, 6, 8, 64, 1024)  # HMR2.0's (width, depth, heads, head width, MLP width)
    regressor_hidden: int = 512  # the "mlp" head's hidden width
    backbone_checkpoint: str = ""  # ViTPose-H or HMR2.0 weights the backbone stage starts from (`load_backbone`)

    def __post_init__(self):
        _check_choice(self, "regressor_head", ("hmr2", "mlp"))
        self.hmr2_head = tuple(self.hmr2_head)


@dataclass
class GenHMRRecipe:
    """What train.py reads for the image stages (App. > Implementation Details; data: H36M, COCO, MPI-INF-3DHP,
    MPII)."""
    # --- masking and Gumbel-softmax (Training Strategy; Tables 4, 8, 9) ---
    mask_tau_max: float = 1.0  # tau ~ U(0, mask_tau_max) (Table 4: U(0, 1))
    pkeep: float = 0.5  # each visible token kept w.p. pkeep, else a uniform random code. NOTE 11
    temperature_start: float = 1.0  # Gumbel temperature (Table 8)
    temperature_end: float = 0.01
    anneal_fraction: float = 0.5  # Table 9: 50 % of training
    # evaluation: the refinement's 2D joints err as a published detector's (`detector_joints2d`, NOTE 27): HRNet-W32
    # (256 x 256) on MPII val, PCKh@0.1 and PCKh@0.5 (mmpose, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/mpii/
    # hrnet_mpii.md); the oracle row refines towards the labels + N(0, oracle_noise_px^2) instead (refined_oracle_*)
    detector_pckh: tuple = (0.334, 0.900)
    oracle_noise_px: float = 1.0
    batch_size: int = 48  # "batch size of 48"; per GPU or global is unstated
    lr: float = 1e-5  # Adam
    backbone_lr_scale: float = 1.0  # the image encoder's lr / lr (the paper and MEGA: one lr for all)
    max_steps: int = 100_000  # NOTE 16
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    amp: bool = False
    gpus: int = 2  # NVIDIA RTX A6000 (App. > Impl.)

    def __post_init__(self):
        _check_choice(self, "lr_schedule", ("constant", "cosine"))


@dataclass
class GenHMRPreset:
    model: GenHMRConfig = dataclasses.field(default_factory=GenHMRConfig)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    regressor: RegressorConfig = dataclasses.field(default_factory=RegressorConfig)
    recipe: GenHMRRecipe = dataclasses.field(default_factory=GenHMRRecipe)


def _check_choice(cfg, name, allowed):
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r}: expected one of {allowed}")


def _with_recipe(preset, **changes):
    return dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, **changes))


TOKENIZER_PAPER = TokenizerPreset()  # 96 tokens, 2048 x 256 codebook
TOKENIZER_TINY = TokenizerPreset(  # 2 CPU cores, synthetic poses (synthetic.body_pose_dataset)
    # 48 tokens: the paper's 96 reconstruct nearer, but UGS is then further from the truth (docs/genhmr.md)
    model=TokenizerConfig(num_tokens=48, codebook_size=256, code_dim=32, width=64, loss_vertices=1024),
    recipe=TokenizerRecipe(aug_yaw_deg=20.0, aug_roll_deg=15.0,  # SyntheticPoses already spans every yaw
                           # lr 1e-3: 3e-3 reconstructs nearer and brings UGS nearer, but iterating then loses on
                           # the controlled ambiguity (docs/genhmr.md, "the tokenizer's floor")
                           batch_size=128, lr=1e-3, max_steps=1000, warmup_steps=50, lr_schedule="cosine"))
PAPER = GenHMRPreset()
TINY = GenHMRPreset(  # 2 CPU cores: 64 x 48 crops (the paper's 4:3), patch 8 -> 8 x 6 grid, levels 1x, 2x
    model=GenHMRConfig(
        image_size=(64, 48), patch_size=8, vit_width=128, vit_depth=4, vit_heads=4, vit_mlp_ratio=2.0, drop_path=0.0,
        conv_stem=(32, 64, 128), feature_scales=(1, 2), d_model=64, num_layers=3, num_heads=4, ffn_dim=128,
        # levels (1, 2, 4) cost more time a step for no gain (docs/genhmr.md)
        dropout=0.0, head_hidden=128, token_head="tied",  # NOTE 21
        # NOTE 20: the paper's weights on per-sample sums, averaged (loss_batch 1, not HMR2.0's 48): summed, the
        # Gumbel-ST gradient swamps L_mask
        loss_batch=1),
    # MaskGIT's confidence noise (docs/genhmr.md); Eq. (4)'s fixed eta = 0.03, as PAPER: nearer in 3D than the
    # backtracking step, and cheaper (docs/genhmr.md)
    # lambda_theta' = 3000: the refinement's regulariser, chosen for detector-like joints (NOTE 27) on renders of
    # another held-out seed (docs/genhmr.md); the oracle's joints would take a weaker one
    inference=InferenceConfig(choice_temperature=4.5, refine_reg=3000.0),
    regressor=RegressorConfig(regressor_head="mlp"),  # NOTE 23
    # the image stage fine-tunes the backbone stage's ViT (the paper's start is unstated); MMM's input swap pkeep
    recipe=GenHMRRecipe(pkeep=0.5, batch_size=32, lr=6e-4, max_steps=1500, warmup_steps=100, lr_schedule="cosine",
                        weight_decay=0.0, grad_clip=1.0, gpus=0))  # synthetic.body_dataset's synthetic bodies
# Between TINY and PAPER, to see whether the generative path closes on its regression as compute grows
# (docs/genhmr.md, "GenHMR as it scales"): renders of twice TINY's side (128 x 96; patch 16 keeps the 8 x 6 grid),
# the masked transformer at d_model 256, twice TINY's steps here and twice its samples (train.py --train-samples);
# the backbone stage (the regression it is compared with) trains at the same scale
SMALL = dataclasses.replace(
    TINY, model=dataclasses.replace(TINY.model, image_size=(128, 96), patch_size=16, conv_stem=(32, 64, 128, 128),
                                    d_model=256, num_heads=8, ffn_dim=512),
    recipe=dataclasses.replace(TINY.recipe, max_steps=3000, warmup_steps=200))
CONFIGS = {"paper": PAPER, "small": SMALL, "tiny": TINY}
# The backbone stage (PoseRegressor) has the image stage's ViT fields and its own recipe. NOTE 23: the paper states
# no initialisation; PAPER's recipe is HMR2.0's (lr 1e-5, weight decay 1e-4, batch 48), its steps a starting point
# (HMR2.0 trains 1M); --set backbone_checkpoint=FILE starts from ViTPose-H or HMR2.0.
BACKBONE_CONFIGS = {"paper": _with_recipe(PAPER, lr=1e-5, weight_decay=1e-4, max_steps=100_000),
                    "small": _with_recipe(SMALL, max_steps=4000), "tiny": _with_recipe(TINY, max_steps=2000)}
TOKENIZER_CONFIGS = {"paper": TOKENIZER_PAPER, "small": TOKENIZER_TINY, "tiny": TOKENIZER_TINY}  # poses: no image
# The prior stage (TokenPrior, NOTE 25) builds the image stage's masked transformer (PRIOR_FIELDS) with its own
# recipe: PAPER none (0 steps: the paper trains its transformer with the image from the start). TINY's recipe (a
# larger batch and lr, weight decay, fewer swapped tokens) learns the context in 2000 steps (0.21 of the hidden
# quarter right, the neighbour counts' 0.21), but its 1500-step image stage then reads the image less well and UGS
# drifts (docs/genhmr.md, "The pose prior stage"): TINY trains it 0 steps; --set max_steps=2000 on
# --model genhmr_prior turns it on
PRIOR_CONFIGS = {"paper": _with_recipe(PAPER, max_steps=0), "small": _with_recipe(SMALL, max_steps=0),
                 "tiny": _with_recipe(TINY, batch_size=128, lr=1e-2, weight_decay=0.3, warmup_steps=100, pkeep=0.9,
                                      max_steps=0)}
# offset_start too: the prior's transformer carries its cross-attention's start offsets into the image stage, so
# an image stage set to other offsets than its prior's would silently train from the prior's
PRIOR_FIELDS = ("d_model", "num_layers", "num_heads", "num_points", "ffn_dim", "feature_scales", "token_head",
                "offset_start")
VIT_FIELDS = ("image_size", "patch_size", "patch_padding", "vit_width", "vit_depth", "vit_heads", "vit_mlp_ratio",
              "conv_stem", "head_hidden")


def learning_rate(cfg, step):
    """Linear warm-up, then constant or cosine to lr / 100 at max_steps; a pure function of the step (cfg: a preset)."""
    r = cfg.recipe
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    if r.lr_schedule == "constant":
        return r.lr
    t = min(1.0, (step - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    return r.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class TokenizerStage:
    """train.py's stage "genhmr_tokenizer": the pose tokenizer on batches {smpl_pose (B, 24, 3), smpl_shape (B, 10)}."""
    CONFIGS = TOKENIZER_CONFIGS
    learning_rate = staticmethod(learning_rate)

    @staticmethod
    def build_model(cfg, parent=None):
        if parent is not None:
            raise ValueError("the pose tokenizer is the first GenHMR stage and starts from no parent model")
        return PoseTokenizer(cfg.model)

    @staticmethod
    def training_loss(model, batch, cfg, step):
        """Eq. Lvq (`PoseTokenizer.compute_loss`) on the augmented poses; one forward through `model` (DDP or not)."""
        pose = augment_pose(batch["smpl_pose"].float(), cfg.recipe)
        return _unwrap(model).compute_loss(model(pose), pose)

    @staticmethod
    @torch.no_grad()
    def predict(model, batch, cfg):
        """Reconstruction through the codebook -> joints3d (B, 24, 3), verts (B, 6890, 3) (SMPL with the sample's
        beta, no translation, global orientation included), ids (B, L), num_codes (B,) = K."""
        model, pose = _unwrap(model), batch["smpl_pose"].float()
        ids = model.tokenize(pose)
        betas = batch.get("smpl_shape", pose.new_zeros(len(pose), NUM_BETAS)).float()
        verts, joints = model.body(model.decode_ids(ids), betas)
        num_codes = torch.full((len(ids),), model.quantizer.num_codes, device=ids.device)  # for usage metrics
        return {"joints3d": joints, "verts": verts, "ids": ids, "num_codes": num_codes}


def build_model(cfg, parent=None):
    """train.py's image stage (cfg: a GenHMRPreset). `parent`: the trained TokenPrior of stage "genhmr_prior" (its
    masked transformer is copied and fine-tuned; its parent is the backbone stage's), the trained PoseRegressor of
    stage "genhmr_backbone" (its frozen tokenizer is held as a submodule; its ViT, and TINY's shape/camera head, are
    copied and fine-tuned), or a trained PoseTokenizer alone (the image encoder from scratch, or from
    backbone_checkpoint). The masked transformer is `masked_transformer_class`'s (appendix E). A copier builds
    `GenHMR(cfg.model, tokenizer)` directly."""
    if parent is None:
        raise ValueError("GenHMR's image stage needs a trained parent: the stage 'genhmr_prior' (or 'genhmr_backbone' "
                         "or a pose tokenizer); train the stages before it first (a checkpoint is missing)")
    prior = parent if isinstance(parent, TokenPrior) else None
    parent = prior.parent if prior is not None else parent
    regressor = parent if isinstance(parent, PoseRegressor) else None
    tokenizer = regressor.tokenizer if regressor is not None else parent
    if not isinstance(tokenizer, PoseTokenizer):
        raise ValueError(f"GenHMR: parent must be a PoseRegressor or a PoseTokenizer, got {type(parent).__name__}")
    if not bool(tokenizer.quantizer.initialised):
        raise ValueError("GenHMR: the parent pose tokenizer was never trained (its codebook is uninitialised)")
    model = GenHMR(cfg.model, tokenizer, masked_transformer_class(cfg.model))
    if regressor is not None:
        for name in VIT_FIELDS:
            if getattr(regressor.cfg, name) != getattr(cfg.model, name):
                raise ValueError(f"GenHMR: the backbone stage's {name}={getattr(regressor.cfg, name)!r} differs from "
                                 f"this config's {getattr(cfg.model, name)!r}; its ViT cannot start this one")
        model.backbone.load_state_dict(regressor.backbone.state_dict())  # copies: fine-tuned here, parent untouched
        if hasattr(regressor, "shape_camera_head"):  # TINY's "mlp" head; HMR2.0's reads beta and camera from its token
            model.shape_camera_head.load_state_dict(regressor.shape_camera_head.state_dict())
    elif cfg.regressor.backbone_checkpoint:
        load_backbone(model, cfg.regressor.backbone_checkpoint)
    if prior is not None:
        for name in PRIOR_FIELDS:
            if getattr(prior.cfg, name) != getattr(cfg.model, name):
                raise ValueError(f"GenHMR: the prior stage's {name}={getattr(prior.cfg, name)!r} differs from this "
                                 f"config's {getattr(cfg.model, name)!r}; its masked transformer cannot start this one")
        model.masked_transformer.load_state_dict(prior.masked_transformer.state_dict())
    return model


def training_loss(model, batch, cfg, step):
    """train.py's image stage: `compute_loss` on a batch of SyntheticBodies keys (image, smpl_pose, smpl_shape,
    joints3d in camera coordinates, joints2d in pixels; data.HMR2Npz's label masks), Y* tokenized on the fly
    (after any augmentation), masked and swapped (`corrupt_tokens`), the Gumbel temperature of Eq. (5) at the
    optimiser step. One forward through `model` (DDP or not); no state changes."""
    raw, pose, images = _unwrap(model), batch["smpl_pose"].float(), batch["image"]
    check_pose(pose)
    y_gt = raw.tokenizer.tokenize(pose)
    y_m, masked = corrupt_tokens(y_gt, raw.num_codes, cfg.recipe)
    temperature = gumbel_temperature(cfg.recipe, step)
    pred = model(images, y_m, temperature, y_gt if cfg.model.gumbel_positions == "masked" else None)
    joints2d = normalise_joints2d(batch["joints2d"].float(), images.shape[-2:])
    loss, terms = compute_loss(pred, dict(batch, ids=y_gt, masked=masked, joints2d=joints2d), cfg.model)
    return loss, dict(terms, temperature=torch.tensor(temperature),
                      masked_acc=masked_accuracy(pred["logits"], y_gt, masked))


def masked_accuracy(logits, y_gt, masked):
    """The share of [MASK]ed tokens whose argmax is right, per sample, averaged (the training log's)."""
    hits = (logits.argmax(-1) == y_gt).float()
    return ((hits * masked).sum(1) / masked.sum(1)).mean()


def joints2d_noise(index, std_px, shape):
    """N(0, std_px^2) noise (B, *shape) in pixels, one generator per sample seeded by its dataset
    index (B,): the same whichever rank or batch evaluates the sample."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(i))) for i in index.reshape(-1)]
    return torch.stack(noise).to(index.device) * std_px


# NOTE 27: the refinement's 2D joints at evaluation. The paper refines towards "2D pose clues from off-the-shelf 2D
# pose detectors such as OpenPose" (Sec. 3.3); the renders come with none, so `predict` draws joints that err as a
# published detector errs on MPII: a share `miss` of the joints lands anywhere in the crop, the rest within an
# isotropic Gaussian, both fitted to the detector's PCKh at 0.1 and 0.5 head segments (recipe.detector_pckh).


def detector_error_model(pckh_01, pckh_05):
    """(sigma, miss) such that a joint lies within r head segments of the truth with probability
    (1 - miss) (1 - exp(-r^2 / 2 sigma^2)): pckh_01 at r = 0.1, pckh_05 at r = 0.5 (sigma per axis, in head
    segments; the misses' chance of landing near the truth is left out)."""
    def within(r, sigma):
        return 1 - math.exp(-r * r / (2 * sigma * sigma))
    lo, hi = 1e-3, 10.0  # within(0.1) / within(0.5) falls from 1 to 0.04 as sigma grows: bisect for the ratio
    for _ in range(200):
        sigma = math.sqrt(lo * hi)
        lo, hi = (sigma, hi) if within(0.1, sigma) / within(0.5, sigma) > pckh_01 / pckh_05 else (lo, sigma)
    return sigma, 1 - pckh_05 / within(0.5, sigma)


def head_segment_m(body):
    """MPII's head segment (PCKh's unit, "60 % of the diagonal of the head bounding box"), in metres: 0.6 x the
    diagonal of the front-view (x, y) box of body's (`SMPLLayer`) template vertices skinned mostly to the head (15)."""
    head = body.v_template[body.lbs_weights.argmax(1) == 15]
    w, h = (head[:, :2].amax(0) - head[:, :2].amin(0)).tolist()
    return 0.6 * math.hypot(w, h)


def detector_joints2d(joints2d, head_px, index, pckh, image_hw):
    """NOTE 27: detector-like 2D joints (B, J, 2) in pixels of the H x W crop from the true ones: N(0, (sigma
    head_px)^2) per axis, or with probability miss anywhere in the crop (`detector_error_model` of pckh); head_px
    (B,): the head segment in pixels; one generator per sample seeded by its dataset index (B,)."""
    sigma, miss = detector_error_model(*pckh)
    (H, W), out = image_hw, []
    for uv, scale, i in zip(joints2d.detach().cpu().float(), head_px.detach().cpu().float(), index.reshape(-1)):
        g = torch.Generator().manual_seed(int(i))
        near = uv + torch.randn(uv.shape, generator=g) * sigma * scale
        missed = torch.rand(len(uv), generator=g) < miss
        anywhere = torch.rand(uv.shape, generator=g) * torch.tensor([float(W), float(H)])
        out.append(torch.where(missed[:, None], anywhere, near))
    return torch.stack(out).to(joints2d.device)


def evaluation_joints2d(batch, cfg, body):
    """The 2D joints `predict` refines towards, from the labels (NOTE 27): {"refined_": detector-like
    (`detector_joints2d`; the head segment in pixels from the labels' camera: f / depth of the pelvis),
    "refined_oracle_": the labels + `joints2d_noise` (oracle_noise_px)} -> pixels (B, 24, 2), seeded by
    batch["index"]; and the per-joint weights batch["joints2d_weight"] (B, 24) or None."""
    for key in ("index", "K", "joints3d"):
        if key not in batch:
            raise ValueError(f"genhmr.predict: the batch needs {key!r} (index: the samples' dataset indices that seed "
                             "the 2D joints' errors, data.Indexed adds it; K and joints3d: the labels' camera)")
    joints2d, index = batch["joints2d"].float(), batch["index"]
    detected = detector_joints2d(joints2d, head_pixels(batch, body), index, cfg.recipe.detector_pckh,
                                 batch["image"].shape[-2:])
    oracle = joints2d + joints2d_noise(index, cfg.recipe.oracle_noise_px, (NUM_JOINTS, 2))
    weights = batch.get("joints2d_weight")  # real data: 0 for the joints without a 2D keypoint
    return {"refined_": detected, "refined_oracle_": oracle}, None if weights is None else weights.float()


@torch.no_grad()
def predict(model, batch, cfg):
    """train.py's image stage: `GenHMR.generate` (cfg.inference) on batch["image"] towards detector-like 2D joints
    (`evaluation_joints2d`), UGS's choice noise seeded by batch["index"], and the same samples refined towards the
    oracle's joints -> per-sample tensors: joints3d (B, 24, 3), verts (B, 6890, 3) in metres in the labels' camera
    frame, joints2d (B, 24, 2) pixels, cam_t (B, 3), ids (B, L), betas (B, 10); the same refined with prefixes
    refined_ and refined_oracle_; reproj_error_px and refined_reproj_error_px (B,): mean 2D distance to the detected
    joints; detected_error_px, detected_pckh_01 and detected_pckh_05 (B,): the detected joints against the labels."""
    raw, image_hw = _unwrap(model), batch["image"].shape[-2:]
    targets, weights = evaluation_joints2d(batch, cfg, raw.tokenizer.body)
    out = raw.generate(batch["image"], targets["refined_"], weights, cfg.inference, seeds=batch["index"])
    out.update(raw.refine_towards(out, targets["refined_oracle_"], weights, cfg.inference, image_hw,
                                  "refined_oracle_"))
    del out["cam"]
    seen = None if weights is None else (weights > 0).float()
    for prefix in ("", "refined_"):
        out[f"{prefix}reproj_error_px"] = _joint_mean((out[f"{prefix}joints2d"] - targets["refined_"]).norm(dim=-1),
                                                      seen)
    error = (targets["refined_"] - batch["joints2d"].float()).norm(dim=-1)  # (B, 24)
    head_px = head_pixels(batch, raw.tokenizer.body)[:, None]
    out.update(detected_error_px=_joint_mean(error, seen),
               detected_pckh_01=_joint_mean((error < 0.1 * head_px).float(), seen),
               detected_pckh_05=_joint_mean((error < 0.5 * head_px).float(), seen))
    return out


def head_pixels(batch, body):
    """The head segment (`head_segment_m`) in pixels of each crop (B,): f / depth of the labels' pelvis."""
    return head_segment_m(body) * batch["K"][:, 0, 0].float() / batch["joints3d"][:, 0, 2].float()


def _joint_mean(x, seen):
    """Per-sample mean (B,) of x (B, J) over the joints, or over those with seen (B, J) 1."""
    return x.mean(-1) if seen is None else (x * seen).sum(-1) / seen.sum(-1).clamp_min(1)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def check_inputs(cfg, kind, path):
    """train.py's protocol, for both image stages, before any stage trains: --data hmr2 is scored by the
    benchmarks' protocol, whose keypoint regressor ($HMR_J_REGRESSOR) must read; a backbone_checkpoint
    the config names must exist. Raises in one line naming the variable or file."""
    if kind == "hmr2":
        metrics.keypoint_regressor()
    if cfg.regressor.backbone_checkpoint:
        check_backbone_file(cfg.regressor.backbone_checkpoint)


def param_groups(model, cfg):
    """train.py's optimiser groups of the image stage: the image encoder (ViT) at backbone_lr_scale x lr, the
    rest at lr."""
    vit = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [(1.0, [p for p in trainable if id(p) not in vit]),
            (cfg.recipe.backbone_lr_scale, [p for p in trainable if id(p) in vit])]


class BackboneStage:
    """train.py's stage "genhmr_backbone" (`PoseRegressor`, appendix A): batches as the image stage's."""
    CONFIGS = BACKBONE_CONFIGS
    learning_rate, check_inputs = staticmethod(learning_rate), staticmethod(check_inputs)

    @staticmethod
    def build_model(cfg, parent=None):
        if not isinstance(parent, PoseTokenizer):
            raise ValueError("GenHMR's backbone stage starts from the trained pose tokenizer (stage "
                             f"'genhmr_tokenizer'), got {type(parent).__name__}")
        return PoseRegressor(cfg.model, cfg.regressor, parent)

    @staticmethod
    def training_loss(model, batch, cfg, step):
        """HMR2.0's losses on the regressed SMPL: w_theta L_theta + w_beta L_beta + w_3D L_3D + w_2D L_2D
        (`smpl_losses`, the weights of the image stage's SMPL terms)."""
        check_pose(batch["smpl_pose"])
        pred = smpl_prediction(_unwrap(model).tokenizer.body, **model(batch["image"]))
        joints2d = normalise_joints2d(batch["joints2d"].float(), batch["image"].shape[-2:])
        terms = smpl_losses(pred, dict(batch, joints2d=joints2d), cfg.model)
        m = cfg.model
        return (m.w_pose * terms["pose"] + m.w_betas * terms["betas"] + m.w_3d * terms["joints3d"]
                + m.w_2d * terms["joints2d"]), terms

    @staticmethod
    @torch.no_grad()
    def predict(model, batch, cfg):
        """-> regression_joints3d (B, 24, 3), regression_verts (B, 6890, 3) in the labels' camera frame."""
        model, image_hw = _unwrap(model), batch["image"].shape[-2:]
        out = model(batch["image"])
        mesh = mesh_outputs(model.tokenizer, out["R"], out["betas"], out["cam"], image_hw, "regression_")
        return {key: mesh[key] for key in ("regression_joints3d", "regression_verts")}


# ---------------------------------------------------------------------------------------------
# Appendix A. Support architecture: SMPL, the ViT backbone, the backbone stage (HMR2.0's SMPL head)


class SMPLLayer(nn.Module):
    """SMPL from bodymodels.load_smpl: R (B, 24, 3, 3), beta (B, 10) -> joints, vertices. Its buffers
    are non-persistent: they come from the model file, not from checkpoints."""

    def __init__(self, smpl):
        super().__init__()
        skin = bodymodels.Skinning(smpl, torch.float32, per_sample=False)  # J = J_template + J_shapedirs beta
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "J_template", "J_shapedirs"):
            self.register_buffer(name, getattr(skin, name).clone(), persistent=False)
        self.parents, self.faces = skin.parents, torch.as_tensor(smpl.faces.astype("int64"))
        self._subsets = {}  # vertex subsets for the losses, built on first use

    def rest_joints(self, betas):
        return self.J_template + (betas @ self.J_shapedirs.T).view(len(betas), -1, 3)  # (B, 24, 3)

    def joints(self, R, betas):
        """Posed joints (B, 24, 3) by forward kinematics alone (no skinning)."""
        return bodymodels.forward_kinematics(R, self.rest_joints(betas), self.parents)[0]

    def _skin_buffers(self, count):
        """(v_template, shapedirs, posedirs, lbs_weights) of all vertices, or of `count` evenly strided (cached)."""
        if not count:
            return self.v_template, self.shapedirs, self.posedirs, self.lbs_weights
        key = (count, self.v_template.device)
        if key not in self._subsets:
            ids = torch.linspace(0, len(self.v_template) - 1, count).round().long().to(self.v_template.device)
            cols = (ids[:, None] * 3 + torch.arange(3, device=ids.device)).flatten()  # posedirs columns 3 v + c
            self._subsets[key] = (self.v_template[ids], self.shapedirs[ids], self.posedirs[:, cols].contiguous(),
                                  self.lbs_weights[ids])
        return self._subsets[key]

    def forward(self, R, betas, vertex_count=0):
        """-> verts (B, V', 3) (all, or `vertex_count` evenly strided), joints (B, 24, 3); no translation."""
        vt, sd, pd, w = self._skin_buffers(vertex_count)
        return bodymodels.lbs(betas, R, vt, sd, pd, self.J_regressor, self.parents, w, pose2rot=False,
                              rest_joints=self.rest_joints(betas))


@functools.lru_cache(maxsize=1)
def _smpl():
    return bodymodels.load_smpl()


class Mlp(nn.Module):
    """The ViT block's MLP: fc2(GELU(fc1(x))) (ViTPose names: fc1, fc2)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DropPathBlock(nn.Module):
    """Pre-norm ViT block with stochastic depth and an MLP ratio (HMR2.0's): x + attn(norm1(x)), then
    x + mlp(norm2(x)) (ViTPose names: norm1, attn, norm2, mlp); in training a sample's residual branch is
    dropped at rate drop_path."""

    def __init__(self, dim, heads, mlp_ratio, drop_path):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads), Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def _drop(self, x):
        if not self.training or self.drop_path == 0:
            return x
        keep = torch.rand(len(x), 1, 1, device=x.device) >= self.drop_path
        return x * keep / (1 - self.drop_path)

    def forward(self, x):
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


def conv_bn_stem(widths, out):
    """NOTE 22 (TINY only): a convolutional patch embedding (Xiao et al. 2021, "Early
    convolutions help transformers see better"): per width c, Conv3x3 stride 2 -> BN -> ReLU -> Conv3x3
    -> BN -> ReLU, then Conv1x1 -> the ViT width; len(widths) = log2(patch) stages. One linear map of a
    small crop's 8 x 8 patches learns body pose too slowly."""
    layers, c_in = [], 3
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                   nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.Conv2d(c_in, out, 1))


class ConvBNPatchEmbed(nn.Module):
    """ViTPose's linear patch embedding `proj`, or (stem = widths, TINY only) the convolutional stem with
    BatchNorm (`conv_bn_stem`); the config checks that the stem gives the patch size."""

    def __init__(self, patch, padding, width, stem=()):
        super().__init__()
        if not stem:
            self.proj = nn.Conv2d(3, width, patch, stride=patch, padding=padding)
            return
        self.stem = conv_bn_stem(stem, width)

    def forward(self, images):
        return self.stem(images) if hasattr(self, "stem") else self.proj(images)


class DropPathViT(nn.Module):
    """images (B, 3, H, W) -> feature map (B, C, H/p, W/p), with stochastic depth. official (4D-Humans
    backbones/vit.py, ViTPose's mmpose ViT): HMR2.0's `ViT`, parameter names included (patch_embed.proj,
    pos_embed (1, 1 + h w, C) with a class-token slot, blocks.i.*, last_norm); held to 4D-Humans' module by
    tests/official/hmr2."""

    def __init__(self, cfg):
        super().__init__()
        H, W = cfg.image_hw
        self.grid = (H // cfg.patch_size, W // cfg.patch_size)
        self.patch_embed = ConvBNPatchEmbed(cfg.patch_size, cfg.patch_padding, cfg.vit_width, cfg.conv_stem)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], cfg.vit_width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = [cfg.drop_path * i / max(1, cfg.vit_depth - 1) for i in range(cfg.vit_depth)]  # stochastic depth
        self.blocks = nn.ModuleList(DropPathBlock(cfg.vit_width, cfg.vit_heads, cfg.vit_mlp_ratio, r) for r in rates)
        self.last_norm = nn.LayerNorm(cfg.vit_width, eps=1e-6)

    def forward(self, images):
        x = self.patch_embed(images)  # (B, C, h, w)
        B, C, h, w = x.shape
        if (h, w) != self.grid:
            raise ValueError(f"ViT: images {tuple(images.shape[-2:])} give a {h}x{w} patch grid, expected {self.grid}")
        # ViTPose (HMR2.0, HaMeR, SMPLer-X): the class-token slot of pos_embed is added to every patch
        x = x.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]  # (B, h w, C)
        for block in self.blocks:
            x = block(x)
        return self.last_norm(x).transpose(1, 2).reshape(B, C, h, w)


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
        return self.to_out(_attend(q, k, v, self.heads))


class CrossAttention(nn.Module):
    """HMR2.0/HaMeR's CrossAttention: to_q (dim), to_kv (context_dim), no biases, to_out.0 (bias).
    softmax(Q K^T / sqrt(d)) V with Q = x W_q, K = c W_k, V = c W_v (HMR2.0's SMPL head)."""

    def __init__(self, dim, context_dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x, context):
        k, v = self.to_kv(context).chunk(2, -1)
        return self.to_out(_attend(self.to_q(x), k, v, self.heads))


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


class HMR2Head(nn.Module):
    """HMR2.0's SMPL head (`SMPLTransformerDecoderHead`, 4D-Humans `hmr2/models/heads/smpl_head.py`, names
    included): ONE zero token cross-attends to the h w ViT tokens; its state reads out 6D pose (24 x 6,
    our column convention), beta and camera as residuals on mean parameters, one iteration (IEF_ITERS 1).
    The mean parameters are buffers: identity pose, beta = 0, cam [0.9, 0, 0] here; HMR2.0's
    smpl_mean_params.npz values come with its checkpoint. Held to 4D-Humans' module by tests/official/hmr2."""

    def __init__(self, hmr2_head, vit_width):
        super().__init__()
        width, depth, heads, dim_head, mlp = hmr2_head  # RegressorConfig.hmr2_head
        self.transformer = TransformerDecoder(width, depth, heads, dim_head, mlp, vit_width)
        self.decpose, self.decshape = nn.Linear(width, NUM_JOINTS * 6), nn.Linear(width, NUM_BETAS)
        self.deccam = nn.Linear(width, 3)
        identity = bodymodels.matrix_to_rot6d(torch.eye(3))
        self.register_buffer("init_body_pose", identity.repeat(1, NUM_JOINTS))  # (1, 144)
        self.register_buffer("init_betas", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.tensor([[0.9, 0.0, 0.0]]))

    def forward(self, feature):
        """feature (B, C, h, w) -> R (B, 24, 3, 3), beta (B, 10), cam [s, tx, ty] (B, 3)."""
        B = len(feature)
        context = feature.flatten(2).transpose(1, 2)  # (B, h w, C)
        token = self.transformer(context)[:, 0]  # (B, width): the one query token after the blocks
        pose = self.decpose(token) + self.init_body_pose  # (B, 144)
        betas, cam = self.decshape(token) + self.init_betas, self.deccam(token) + self.init_cam
        return bodymodels.rot6d_to_matrix(pose.view(B, NUM_JOINTS, 6)), betas, cam


class PoseRegressor(nn.Module):
    """The backbone stage ("genhmr_backbone"), HMR2.0 here: GenHMR's ViT with a regression head, images ->
    SMPL pose (24 x 6D), beta, camera, trained by HMR2.0's losses; the image stage starts from its ViT.
    The paper's encoder is a ViT-H whose initialisation it does not state; HMR2.0 and TokenHMR start from
    ViTPose-H. `load_backbone` reads ViTPose-H or HMR2.0 weights into it (cfg.backbone_checkpoint). The
    frozen pose tokenizer rides along (its SMPL layer poses the predictions) to be handed on.
    NOTE 23: head "hmr2" is HMR2.0's (`HMR2Head`); TINY's "mlp" is flatten -> MLP for the
    pose and GenHMR's pooled shape/camera head, the smallest head that keeps where things are in the map
    (pooling loses it); the image stage starts from that head too. cfg: GenHMRConfig (the ViT); head:
    RegressorConfig."""

    def __init__(self, cfg, head, tokenizer):
        super().__init__()
        self.cfg, self.head, self.tokenizer = cfg, head, tokenizer.eval().requires_grad_(False)
        self.backbone = DropPathViT(cfg)
        if head.regressor_head == "hmr2":
            self.smpl_head = HMR2Head(head.hmr2_head, cfg.vit_width)
        else:
            self.shape_camera_head = ShapeCameraHead(cfg.vit_width, cfg.head_hidden)
            grid = self.backbone.grid
            self.pose_head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.vit_width * grid[0] * grid[1],
                                                                   head.regressor_hidden),
                                           nn.ReLU(), nn.Linear(head.regressor_hidden, NUM_JOINTS * 6))
            nn.init.xavier_uniform_(self.pose_head[-1].weight, gain=0.01), nn.init.zeros_(self.pose_head[-1].bias)
            identity = bodymodels.matrix_to_rot6d(torch.eye(3))
            self.register_buffer("identity6d", identity.repeat(NUM_JOINTS, 1))  # (24, 6)
        self.register_buffer("mean_std", torch.tensor([IMAGENET_MEAN, IMAGENET_STD])[..., None, None])
        if head.backbone_checkpoint:
            load_backbone(self, head.backbone_checkpoint)

    def train(self, mode=True):
        super().train(mode)
        self.tokenizer.eval()
        return self

    def forward(self, images):
        """images (B, 3, H, W) in [0, 1] -> {"R" (B, 24, 3, 3), "betas" (B, 10), "cam" (B, 3)}."""
        # official (HMR2.0 vitdet_dataset.py): (pixel - 255 mean) / (255 std) on 0-255 RGB, = (x - mean) / std
        feature = self.backbone((images - self.mean_std[0]) / self.mean_std[1])
        if self.head.regressor_head == "hmr2":
            R, betas, cam = self.smpl_head(feature)
        else:
            betas, cam = self.shape_camera_head(feature)
            rot6d = self.pose_head(feature).view(-1, NUM_JOINTS, 6) + self.identity6d  # residual on the rest pose
            R = bodymodels.rot6d_to_matrix(rot6d)
        return {"R": R, "betas": betas, "cam": cam}


# ---------------------------------------------------------------------------------------------
# Appendix B. Agreement with the official code: ViTPose-H and HMR2.0 checkpoints


# Released weights (HMR2.0 and TokenHMR start their ViT-H from ViTPose-H; docs/genhmr.md, NOTE 23). Three layouts,
# each a dict with "state_dict" (tests/official_keys/ lists names and shapes, made from the official constructors):
# HMR2.0's Lightning checkpoint (backbone.*, smpl_head.*, discriminator.*, smpl.*, initialized), ViTPose-H's
# mmpose checkpoint (backbone.*, keypoint_head.*), HMR2.0's vitpose_backbone.pth (the ViT's own names).


def check_backbone_file(path):
    """Raise in one line unless `path` is a file (ViTPose-H's or HMR2.0's weights)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist: expected ViTPose-H's or HMR2.0's "
                                "weights (RegressorConfig.backbone_checkpoint)")


def load_backbone(model, path):
    """ViTPose-H or HMR2.0 weights from `path` into model's ViT (model: a ViT, PoseRegressor or GenHMR; the
    names are HMR2.0's and ViTPose's), and HMR2.0's smpl_head.* into a PoseRegressor with head "hmr2".
    Each part loads strictly; the file's other parts (adversary, SMPL buffers, heatmap head) are left
    out. Read with torch.load(weights_only=True), so the file cannot run code. -> the parts loaded."""
    check_backbone_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. HMR2.0's Lightning file pickles its yacs config
        names = ", ".join(re.findall(r"Unsupported global: GLOBAL (\S+)", str(e))) or "its classes"
        raise ValueError(f"{path}: holds pickled objects besides tensors ({names}), which "
                         "torch.load(weights_only=True) refuses. If you trust the file, keep only its weights once: "
                         f"torch.load it inside `with torch.serialization.safe_globals([{names}]):` and "
                         "torch.save({'state_dict': checkpoint['state_dict']}, path)") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict of tensors (or one under 'state_dict'), "
                         f"got {type(checkpoint).__name__}")
    parts = backbone_state_dicts(checkpoint)
    targets = {"backbone": model if isinstance(model, DropPathViT) else model.backbone,
               "smpl_head": getattr(model, "smpl_head", None)}
    loaded = [part for part in parts if parts[part] and targets[part] is not None]
    for part in loaded:
        bodymodels.load_state_strict(targets[part], parts[part], f"{path} ({part}.*)")
    return loaded


def backbone_state_dicts(checkpoint):
    """A released checkpoint dict -> {"backbone": the ViT's state, "smpl_head": HMR2.0's head's ({} if none)}:
    the prefixes backbone. and smpl_head. dropped (a file with no backbone.* key is the ViT's own)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not any(k.startswith("backbone.") for k in state):  # HMR2.0's vitpose_backbone.pth
        return {"backbone": dict(state), "smpl_head": {}}
    return {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            for part in ("backbone", "smpl_head")}


# ---------------------------------------------------------------------------------------------
# Appendix C. The paper's ablation tables as train.py --ablation data; an alternative only a config uses


# The paper's ablation tables as train.py's --ablation data: rows of config overrides beside the paper's figures,
# copied from its tables' 3DPW columns (MPJPE, MVE = our pve_mm) for the image stage, AMASS for the tokenizer's
# Tables 5 and 6. Inference rows score one trained model; the others retrain from the first stage they change.
_3DPW = (("mpjpe_mm", "MPJPE (mm), 3DPW"), ("pve_mm", "MVE (mm), 3DPW"))
_CODEBOOKS = ((1024, 256), (2048, 128), (2048, 256), (4096, 256))
ABLATIONS = {
    "table2": dict(caption="Iterations of uncertainty-guided sampling (Table 2)", inference=True, columns=_3DPW,
                   rows=tuple((str(T), {"ugs_iterations": T}, f) for T, f in (
                       (1, (73.5, 84.2)), (3, (70.2, 81.9)), (5, (68.1, 77.5)), (10, (67.8, 79.1)),
                       (15, (67.6, 78.5)), (20, (67.4, 78.1)))), chosen="5"),
    "table3": dict(caption="2D pose-guided refinement steps after UGS-5 (Table 3)", inference=True,
                   columns=(("refined_mpjpe_mm", "MPJPE (mm), 3DPW"), ("refined_pve_mm", "MVE (mm), 3DPW")),
                   rows=tuple((label, {"ugs_iterations": 5, "refine_iterations": P}, f) for label, P, f in (
                       ("UGS* (no refinement)", 0, (68.1, 77.5)), ("1", 1, (66.5, 77.0)), ("3", 3, (63.6, 73.5)),
                       ("5", 5, (60.2, 70.4)), ("10", 10, (57.5, 68.5)), ("20", 20, (54.7, 67.5)))), chosen="20"),
    "table4": dict(caption="Masking ratio during training, gamma(tau), tau ~ U(0, max) (Table 4)", columns=_3DPW,
                   rows=tuple((f"U(0, {m})", {"mask_tau_max": m}, f) for m, f in (
                       (1.0, (68.1, 77.5)), (0.3, (72.1, 84.2)), (0.5, (69.8, 81.7)), (0.7, (67.9, 77.1)))),
                   chosen="U(0, 1.0)"),
    "table5": dict(caption="Codebook size x code dimension, 96 tokens (Table 5, the tokenizer)",
                   stage="genhmr_tokenizer",
                   columns=(("tokenizer_mpjpe_mm", "MPJPE (mm), AMASS"), ("tokenizer_pve_mm", "MVE (mm), AMASS")),
                   rows=tuple((f"{K}x{D}", {"codebook_size": K, "code_dim": D, "num_tokens": 96}, f)
                              for (K, D), f in zip(_CODEBOOKS, ((10.5, 9.2), (8.9, 8.1), (8.5, 7.8), (6.1, 5.9)))),
                   chosen="2048x256"),
    "table6": dict(caption="Number of pose tokens, codebook 2048 x 256 (Table 6, the tokenizer)",
                   stage="genhmr_tokenizer",
                   columns=(("tokenizer_mpjpe_mm", "MPJPE (mm), AMASS"), ("tokenizer_pve_mm", "MVE (mm), AMASS")),
                   rows=tuple((str(L), {"num_tokens": L, "codebook_size": 2048, "code_dim": 256}, f) for L, f in (
                       (48, (11.1, 10.5)), (96, (8.5, 7.8)), (192, (7.8, 6.9)), (384, (7.1, 6.0)))), chosen="96"),
    "table11": dict(caption="Mask scheduling functions x UGS iterations (Table 11)", inference=True, columns=_3DPW,
                    rows=tuple((f"{name} T={T}", {"schedule": name, "ugs_iterations": T}, f) for name, T, f in (
                        ("cosine", 1, (73.5, 84.2)), ("cosine", 3, (70.2, 81.9)), ("cosine", 5, (68.1, 77.5)),
                        ("cosine", 10, (67.8, 79.1)), ("cosine", 15, (67.6, 78.5)), ("cosine", 20, (67.4, 78.1)),
                        ("cubic", 5, (69.7, 78.9)), ("cubic", 10, (69.1, 79.1)), ("cubic", 15, (68.8, 79.0)),
                        ("cubic", 20, (68.6, 79.2)), ("linear", 5, (71.6, 81.2)), ("linear", 10, (71.3, 80.7)),
                        ("linear", 15, (71.0, 80.9)), ("linear", 20, (70.8, 81.1)), ("sqrt", 5, (73.4, 82.8)),
                        ("sqrt", 10, (73.1, 83.0)), ("sqrt", 15, (73.3, 83.3)), ("sqrt", 20, (73.6, 83.5)))),
                    chosen="cosine T=5"),
    "table13": dict(caption="Codebook size x code dimension, 96 tokens, on GenHMR (Table 13)", columns=_3DPW,
                    rows=tuple((f"{K}x{D}", {"codebook_size": K, "code_dim": D, "num_tokens": 96}, f)
                               for (K, D), f in zip(_CODEBOOKS, ((70.1, 82.5), (69.9, 80.3), (68.1, 77.5),
                                                                 (69.5, 80.4)))),
                    chosen="2048x256"),
    "table14": dict(caption="Number of pose tokens, codebook 2048 x 256, on GenHMR (Table 14)", columns=_3DPW,
                    rows=tuple((str(L), {"num_tokens": L, "codebook_size": 2048, "code_dim": 256}, f)
                               for L, f in ((48, (68.5, 80.5)), (96, (68.1, 77.5)), (192, (72.5, 83.6)),
                                            (384, (82.5, 91.5)))), chosen="96"),
    "table15": dict(caption="Feature-pyramid levels of the image encoder (Table 15)",
                    columns=(("mpjpe_mm", "MPJPE (mm), 3DPW"),),
                    rows=tuple((" ".join(f"{s}x" for s in scales), {"feature_scales": scales}, (f,)) for scales, f in (
                        ((1, 4, 8, 16), 68.3), ((1,), 71.3), ((1, 4), 69.8), ((1, 4, 8), 68.8), ((4, 8, 16), 68.8),
                        ((1, 8, 16), 69.3), ((1, 4, 16), 69.8))), chosen="1x 4x 8x"),
    "table16": dict(caption="Deformable cross-attention layers of the masked transformer (Table 16)", columns=_3DPW,
                    rows=tuple((str(n), {"num_layers": n}, f) for n, f in (
                        (2, (70.5, 85.9)), (4, (68.1, 77.5)), (6, (69.5, 77.1)), (8, (70.9, 79.9)))), chosen="4"),
}


@torch.no_grad()
def backtracking_step(objective, e, G, grad, eta, halvings=6):
    """NOTE 18: per sample, the largest of eta, eta / 2, ... (halvings tries) that lowers G, 0 where
    none does; doubled for the next step after a success -> (eta for this step, eta for the next), (B, 1, 1)."""
    step, done = torch.zeros_like(eta), torch.zeros(len(e), dtype=torch.bool, device=e.device)
    for _ in range(halvings):
        accept = (objective(e - eta * grad) < G) & ~done
        step = torch.where(accept[:, None, None], eta, step)
        eta = torch.where((~done & ~accept)[:, None, None], eta / 2, eta)
        done |= accept
        if bool(done.all()):
            break
    return step, torch.where(done[:, None, None], eta * 2, eta)


STEP_SIZES = {"fixed": fixed_step, "backtracking": backtracking_step}  # InferenceConfig.refine_eta_rule



# ---------------------------------------------------------------------------------------------
# Appendix D. Diagnostics (not the paper's inference): the report-only tables, the soft readout, context
#             accuracy against the neighbour-count yardstick (train.py's final evaluation); parameter counts


TABLE_ITERATIONS = (1, 2, 3, 5, 10)  # UGS T, each under every schedule (Tables 2, 11)
TABLE_REFINE_STEPS = (0, 5, 20)  # refinement steps P after UGS (Table 3)
COUNT_TABLE_MAX_CELLS = 2 ** 26  # the neighbour counts' (L - 1) K^2 int32 cells: TINY 3.1M; none above 268 MB


def diagnostics(model, cfg, train_labels):
    """train.py's final-evaluation pass beside `predict` -> a callable batch -> {key: (B, ...)}: joints3d (B, 24, 3)
    (root-relative) of UGS for every T in TABLE_ITERATIONS x schedule (table_{schedule}_T{T}_joints3d), of
    `soft_readout` (table_soft_T1_joints3d), of refinement after UGS for every P in TABLE_REFINE_STEPS
    (table_refine_P{P}_joints3d), `context_accuracies` with the neighbour counts of train_labels["smpl_pose"]
    (n, 24, 3) tokenized (count_table_accuracy_75, when the table has at most COUNT_TABLE_MAX_CELLS cells), and
    `ugs_commits` of UGS at the inference config's T and schedule."""
    model = _unwrap(model)
    tok, counts = model.tokenizer, neighbour_counts(model, train_labels)

    @torch.no_grad()
    def diagnose(batch):
        inf, image_hw = cfg.inference, batch["image"].shape[-2:]
        levels, betas, cam = model.encode_image(batch["image"])
        ugs = functools.partial(sample_from_features, model, levels, top_k=inf.top_k,
                                choice_temperature=inf.choice_temperature, seeds=batch["index"])
        out = context_accuracies(model, levels, batch, counts)
        out.update(ugs_commits(tok, ugs(inf.ugs_iterations, inf.schedule)[1], betas, batch))
        runs = {(schedule, T): ugs(T, schedule)[0] for schedule in SCHEDULES for T in TABLE_ITERATIONS}
        for (schedule, T), ids in runs.items():
            out[f"table_{schedule}_T{T}_joints3d"] = tok.body.joints(tok.decode_ids(ids), betas)
        out["table_soft_T1_joints3d"] = tok.body.joints(soft_readout(model, levels), betas)
        ids = runs.get((inf.schedule, inf.ugs_iterations))
        ids = ugs(inf.ugs_iterations, inf.schedule)[0] if ids is None else ids
        targets, weights = evaluation_joints2d(batch, cfg, tok.body)
        joints2d = targets["refined_"]
        longest = dataclasses.replace(inf, refine_iterations=max(TABLE_REFINE_STEPS))
        targets = normalise_joints2d(joints2d, image_hw)
        problem = refinement_problem(tok, ids, betas, cam, targets, inf.refine_reg, image_hw[0], weights)
        e = refine(*problem, longest)  # every P in one
        for P in TABLE_REFINE_STEPS:
            out[f"table_refine_P{P}_joints3d"] = tok.body.joints(tok.decode(e[P]), betas)
        return out
    return diagnose


def neighbour_counts(model, train_labels):
    """`NeighbourCounts` of train_labels["smpl_pose"] (n, 24, 3) (its rows with a pose label) tokenized by the
    model's tokenizer; None without poses or when the table would exceed COUNT_TABLE_MAX_CELLS cells."""
    tok, L, K = model.tokenizer, model.num_tokens, model.num_codes
    if "smpl_pose" not in train_labels or (L - 1) * K * K > COUNT_TABLE_MAX_CELLS:
        return None
    poses = torch.as_tensor(train_labels["smpl_pose"]).float()
    if "has_smpl_pose" in train_labels:  # real data: the rows with a pose label
        poses = poses[torch.as_tensor(train_labels["has_smpl_pose"]) > 0]
    device = tok.quantizer.codebook.device
    counts = NeighbourCounts(L, K).to(device)
    for chunk in poses.split(1024):
        counts.add(tok.tokenize(chunk.to(device)))
    return counts


class NeighbourCounts(nn.Module):
    """The token generator's yardstick (not the paper's): a table of neighbouring-token counts,
    n[i, a, b] = how often tokens i and i + 1 of the training poses were (a, b). Given the visible tokens, a
    masked position i takes the naive-Bayes argmax_k log n_i(k) + sum over its visible neighbours of
    log n(neighbour | k) (counts + 0.1). Its (L - 1) K^2 counts are the module's extra state."""

    def __init__(self, num_tokens, num_codes):
        super().__init__()
        self.pairs = torch.zeros(num_tokens - 1, num_codes, num_codes, dtype=torch.int32)

    def get_extra_state(self):
        return self.pairs

    def set_extra_state(self, state):
        self.pairs = state.to(self.pairs)

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the table too
        self.pairs = fn(self.pairs)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def add(self, ids):
        """Count the adjacent pairs of ids (B, L)."""
        L, K = ids.shape[1], self.pairs.shape[-1]
        flat = (torch.arange(L - 1, device=ids.device) * K + ids[:, :-1]) * K + ids[:, 1:]  # (B, L - 1)
        self.pairs.view(-1).index_add_(0, flat.flatten(), torch.ones(flat.numel(), dtype=self.pairs.dtype,
                                                                      device=ids.device))

    @torch.no_grad()
    def predict(self, ids, masked, alpha=0.1):
        """ids (B, L) with the true tokens where ~masked -> the table's ids (B, L) (masked positions filled)."""
        n = self.pairs.double() + alpha
        K = n.shape[-1]
        # n_i(k): position i's code counts, from the pair it starts (i < L - 1) or ends (the last)
        unigram = torch.cat([n.sum(2), n[-1].sum(0)[None]]) - alpha * K  # (L, K)
        log_n = (unigram + alpha).log()
        score = log_n.expand(len(ids), -1, -1).clone()  # (B, L, K)
        # left neighbour visible: + log n[i - 1, y_{i-1}, k] - log n_i(k); right: + log n[i, k, y_{i+1}] - log n_i(k)
        left = n[torch.arange(1, ids.shape[1]) - 1, ids[:, :-1]].log() - log_n[1:]  # (B, L - 1, K)
        right = n[torch.arange(ids.shape[1] - 1), :, ids[:, 1:]].log() - log_n[:-1]  # (B, L - 1, K)
        score[:, 1:] += left * ~masked[:, :-1, None]
        score[:, :-1] += right * ~masked[:, 1:, None]
        return torch.where(masked, score.argmax(-1), ids)


@torch.no_grad()
def soft_readout(model, levels):
    """Not the paper's: one pass from all [MASK], each token's expected code vector sum_k p_k c_k decoded
    (a yardstick beside UGS's argmax: a broad posterior averages instead of picking one far code)
    -> rotations (B, 24, 3, 3)."""
    B, L = len(levels[0]), model.num_tokens
    ids = torch.full((B, L), model.num_codes, dtype=torch.long, device=levels[0].device)
    probs = model.logits(ids, levels).float().softmax(-1)
    return model.tokenizer.decode(probs @ model.tokenizer.quantizer.codebook.float())


def context_masks(index, L, visible=0.75):
    """(B, L) bool, True at the L - round(visible L) positions hidden from each sample: a permutation drawn
    by a generator seeded by the sample's dataset index (the same on any rank or batch), its smallest values."""
    hidden = L - round(visible * L)
    return torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(int(i))) < hidden
                        for i in index.reshape(-1)]).to(index.device)


@torch.no_grad()
def ugs_commits(tokenizer, history, betas, batch):
    """What UGS commits, per iteration t of its history (`sample_from_features`): ugs_t{t}_commit_precision (B,), the
    share of the tokens fixed at t (masked before t, not after) that are the true pose's tokens (batch["smpl_pose"]
    tokenized; NaN where none was fixed or the sample has no pose label), and ugs_t{t}_joints3d (B, 24, 3)
    (root-relative), the pose decoded from every position's token at t (the fixed ones and this iteration's samples)."""
    out, before = {}, torch.ones_like(history[0][0])
    y = tokenizer.tokenize(batch["smpl_pose"].float()) if "smpl_pose" in batch else None
    labelled = batch.get("has_smpl_pose", torch.ones(len(betas), device=betas.device)) > 0
    for t, (masked, _, ids) in enumerate(history, 1):
        out[f"ugs_t{t}_joints3d"] = tokenizer.body.joints(tokenizer.decode_ids(ids), betas)
        if y is not None:
            fixed = before & ~masked  # (B, L) committed at t
            precision = ((ids == y) & fixed).sum(1) / fixed.sum(1)  # NaN where nothing was fixed
            out[f"ugs_t{t}_commit_precision"] = torch.where(labelled, precision.float(), math.nan)
        before = masked
    return out


def context_accuracies(model, levels, batch, counts=None):
    """Does the token generator use its context? Given 75 % of the true tokens Y* (the sample's pose
    tokenized, `context_masks` hiding the rest), the share of the hidden tokens predicted right (argmax)
    per sample: masked_token_accuracy_75 (B,), and the same for a table of the training tokens' neighbour
    counts (`NeighbourCounts`, when given) as count_table_accuracy_75. NaN for a sample without a pose label."""
    if "smpl_pose" not in batch:
        return {}
    y = model.tokenizer.tokenize(batch["smpl_pose"].float())
    hidden = context_masks(batch["index"], y.shape[1])
    labelled = batch.get("has_smpl_pose", torch.ones(len(y), device=y.device)) > 0
    def accuracy(pred):
        acc = ((pred == y) & hidden).sum(1) / hidden.sum(1)
        return torch.where(labelled, acc.float(), torch.full_like(acc.float(), math.nan))
    out = {"masked_token_accuracy_75":
           accuracy(model.logits(y.masked_fill(hidden, model.num_codes), levels).argmax(-1))}
    if counts is not None:
        out["count_table_accuracy_75"] = accuracy(counts.predict(y, hidden))
    return out


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def parameter_table(cfg, tcfg):
    """(part, parameters) at a preset pair (GenHMRPreset, TokenizerPreset), built on the meta device (no body
    model, no weights)."""
    cfg, tcfg = cfg.model, tcfg.model
    with torch.device("meta"):
        m = GenHMR(cfg, PoseTokenizer(tcfg, body=nn.Module()), masked_transformer_class(cfg))
    parts = [("tokenizer.encoder", m.tokenizer.encoder), ("tokenizer.decoder", m.tokenizer.decoder),
             ("backbone (ViT)", m.backbone), ("pyramid", m.pyramid), ("masked_transformer", m.masked_transformer),
             ("shape_camera_head", m.shape_camera_head)]
    rows = [(name, count_parameters(module)) for name, module in parts]
    rows.insert(2, ("tokenizer codebook (buffer, EMA)", tcfg.codebook_size * tcfg.code_dim))
    return rows


# ---------------------------------------------------------------------------------------------
# Appendix E. The project's additions (not the paper's): the token embedding's start and TINY's tied token head
#             (build_model's), MMM's input swap, MaskGIT's choice noise, the prior stage (`TokenPrior`)


def code_embedding(codebook, d):
    """NOTE 26: codebook C (K, D) -> (K, d): C centred, through a random map P (d x D, orthonormal rows or
    columns), scaled to unit std per element: distances between codes kept up to one scale."""
    K, D = codebook.shape
    P = torch.linalg.qr(torch.randn(max(d, D), min(d, D), device=codebook.device))[0]  # orthonormal columns
    P = P if d >= D else P.T  # (d, D)
    E = (codebook - codebook.mean(0)) @ P.T
    return E / E.std().clamp_min(1e-12)


class TiedMaskedTransformer(MaskedTransformer):
    """NOTE 21: (TINY only) the token head tied to the frozen codebook, logit_k = -exp(s) ||W h - c_k||^2,
    W (D x d), s a learnable log-scale started at -log(mean over codes of the squared distance to the nearest
    other code). A code's logit rises with every step towards any code near it: the codebook's geometry is
    learned, not K unrelated classes."""

    def __init__(self, cfg, num_tokens, codebook, code_init=None):
        super().__init__(cfg, num_tokens, codebook, head_width=codebook.shape[1], code_init=code_init)
        self.log_scale = nn.Parameter(torch.zeros(()))
        with torch.no_grad():
            d2 = squared_distances(codebook, codebook) + torch.eye(len(codebook), device=codebook.device) * 1e30
            self.log_scale.copy_(-d2.min(1)[0].clamp_min(1e-12).mean().log())

    def readout(self, h, codebook):
        return -self.log_scale.exp() * squared_distances(self.head(h), codebook)  # (B, L, K)


def masked_transformer_class(cfg):
    """The masked transformer build_model puts in GenHMR (and TokenPrior): the paper's, its codes' embeddings started
    from the codebook (NOTE 26), with TINY's tied head (NOTE 21) when cfg.token_head is "tied"."""
    return functools.partial(TiedMaskedTransformer if cfg.token_head == "tied" else MaskedTransformer,
                             code_init=code_embedding)


def swap_visible(ids, masked, num_codes, pkeep, generator=None):
    """MMM's input corruption (exitudio/MMM, `--pkeep`): each visible token kept with probability pkeep,
    else replaced by a code drawn uniformly from the K; [MASK]ed positions untouched. NOTE 11.
    The targets stay the true tokens, so the generator learns to doubt its context, as it must at
    inference, where the context is its own earlier guesses."""
    swap = (torch.rand(ids.shape, device=ids.device, generator=generator) >= pkeep) & ~masked
    random_ids = torch.randint(num_codes, ids.shape, device=ids.device, generator=generator)
    return torch.where(swap, random_ids, ids)



def gumbel_noise(shape, seeds=None, step=0, generator=None, device=None):
    """Gumbel(0, 1) noise (B, *shape[1:]); with seeds (B,) one generator per sample seeded by (seed, step),
    so a sample's draw is the same whichever rank or batch it is in."""
    if seeds is None:
        u = torch.rand(shape, generator=generator, device=device)
    else:
        u = torch.stack([torch.rand(shape[1:], generator=torch.Generator().manual_seed(int(i) * 1009 + step))
                         for i in seeds.reshape(-1)]).to(device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))



class TokenPrior(nn.Module):
    """NOTE 25: the stage "genhmr_prior", MEGA's pretraining (g-fiche/MEGA pretrain_mega.py,
    then train_mega.py loads it): the image stage's masked transformer trained first on the tokens of poses
    alone, with no image and so no cross-attention, by Eq. (1) with the image stage's masking and swap. It
    learns p(y_i | Y_M), the prior the pose tokens live in, from poses, which cost nothing to draw next to
    rendered images; `build_model` starts the image stage's transformer from it. parent: the trained backbone
    stage, frozen, handed on to the image stage (its tokenizer gives the tokens)."""

    def __init__(self, cfg, parent):
        super().__init__()
        self.cfg, self.parent = cfg, parent.eval().requires_grad_(False)
        self.tokenizer = parent.tokenizer  # the same module (a checkpoint holds it once, with the parent's)
        self.num_tokens, self.num_codes = self.tokenizer.cfg.num_tokens, self.tokenizer.cfg.codebook_size
        self.masked_transformer = masked_transformer_class(cfg)(cfg, self.num_tokens, self.tokenizer.quantizer.codebook)
        for layer in self.masked_transformer.layers:  # what reads the image waits, untrained, for the image stage
            layer.norm2.requires_grad_(False), layer.cross_attn.requires_grad_(False)
        self.masked_transformer.reference.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.parent.eval()
        return self

    def logits(self, ids, levels=None):
        """masked ids (B, L) -> logits (B, L, K) of p(y_i | Y_M); levels: unread (no image here)."""
        return self.masked_transformer(ids, None, self.tokenizer.quantizer.codebook)

    def forward(self, ids):
        return self.logits(ids)


class PriorStage:
    """train.py's stage "genhmr_prior" (`TokenPrior`): batches {smpl_pose (B, 24, 3), smpl_shape (B, 10), index}."""
    CONFIGS = PRIOR_CONFIGS
    learning_rate = staticmethod(learning_rate)

    @staticmethod
    def build_model(cfg, parent=None):
        if not isinstance(parent, PoseRegressor):
            raise ValueError("GenHMR's prior stage starts from the trained backbone stage ('genhmr_backbone'), "
                             f"got {type(parent).__name__}")
        return TokenPrior(cfg.model, parent)

    @staticmethod
    def training_loss(model, batch, cfg, step):
        """The prior stage's loss: Eq. (1) on the tokens of batch["smpl_pose"] (B, 24, 3), no image."""
        raw = _unwrap(model)
        check_pose(batch["smpl_pose"])
        y_gt = raw.tokenizer.tokenize(batch["smpl_pose"].float())
        y_m, masked = corrupt_tokens(y_gt, raw.num_codes, cfg.recipe)
        logits = model(y_m)
        loss = token_cross_entropy(logits, y_gt, masked, cfg.model.ce_on).mean()
        return loss, {"mask": loss, "masked_acc": masked_accuracy(logits, y_gt, masked)}

    @staticmethod
    @torch.no_grad()
    def predict(model, batch, cfg):
        """The prior stage's held-out figures, per pose batch["smpl_pose"] (B, 24, 3) with its smpl_shape and index:
        its tokens with a quarter hidden (`context_masks`) filled by the prior's argmax ->
        prior_masked_token_accuracy_75 (B,) and the filled pose's prior_joints3d (B, 24, 3), prior_verts (B, 6890, 3)
        (SMPL's frame); the pose UGS draws from all [MASK] with no image (cfg.inference's T, schedule and confidence
        noise, seeded by index) -> prior_generated_verts (B, 6890, 3), centred on its pelvis."""
        model, tok, inf = _unwrap(model), _unwrap(model).tokenizer, cfg.inference
        y, betas = tok.tokenize(batch["smpl_pose"].float()), batch["smpl_shape"].float()
        hidden = context_masks(batch["index"], y.shape[1])
        filled = torch.where(hidden, model.logits(y.masked_fill(hidden, model.num_codes)).argmax(-1), y)
        verts, joints = tok.body(tok.decode_ids(filled), betas)
        ids, _ = sample_from_features(model, None, inf.ugs_iterations, inf.schedule, inf.top_k,
                                      choice_temperature=inf.choice_temperature, seeds=batch["index"])
        generated, generated_joints = tok.body(tok.decode_ids(ids), betas)
        return {"prior_joints3d": joints, "prior_verts": verts,
                "prior_generated_verts": generated - generated_joints[:, PELVIS:PELVIS + 1],
                "prior_masked_token_accuracy_75": (((filled == y) & hidden).sum(1) / hidden.sum(1)).float()}

    @staticmethod
    def diagnostics(model, cfg, train_labels):
        """The prior stage's yardstick at its final evaluation: the neighbour-count table of the training poses
        (`neighbour_counts`) given the same 75 % of each held-out pose's tokens -> prior_count_table_accuracy_75
        (B,)."""
        model = _unwrap(model)
        counts = neighbour_counts(model, train_labels)
        return lambda batch: {} if counts is None else {
            "prior_count_table_accuracy_75": context_accuracies(model, None, batch, counts)["count_table_accuracy_75"]}
