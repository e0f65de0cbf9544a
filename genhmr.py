"""GenHMR: "GenHMR: Generative Human Mesh Recovery" (Saleem et al., AAAI 2025, arXiv 2412.14444).

One person crop in, an SMPL mesh out, through two trained stages and a two-step inference:

    stage 1  pose tokenizer (VQ-VAE):  theta (24 x 3) -> E -> z (L x D) -> nearest code -> ids (L) -> D -> theta
    stage 2  image -> ViT -> pyramid {1x, 4x, 8x} ; [MASK]ed ids -> masked transformer (self-attn -> MSDA
             -> FFN) x 4 -> logits (L x K) ; beta, camera from the image features
    infer    uncertainty-guided sampling (T iterations, re-mask the least confident) -> ids
             -> 2D-pose-guided refinement (Eqs. 2-4: gradient descent on the code vectors) -> SMPL

Sections: 1 the pose tokenizer (`PoseTokenizer`); 2 the image stage (`GenHMR`: the copier's start, its doctest); 3
training (masking, Gumbel-softmax, `compute_loss`, `training_step`); 4 inference (UGS, refinement;
`GenHMR.generate`); 5 configs (presets `PAPER`, `TINY` of `GenHMRConfig`, `InferenceConfig`, ...; the tokenizer's
`augment_pose`). Appendices: A support architecture (SMPL, the ViT, TINY's tied token head and the project's other
additions); B official checkpoints (ViTPose-H, HMR2.0).
How this project trains, evaluates and ablates it (train.py's stages, `ABLATIONS`, diagnostics):
lab/genhmr_experiments.py.

Conventions: bodymodels.py's (column vectors, 6D = first two COLUMNS, axis-angle, metres, OpenCV camera).
HMR2.0's camera [s, tx, ty]: t = [tx, ty, 2 f / (S s)], f = 5000, S = 256; 2D points in normalised crop
coordinates uv = (pixel - (W/2, H/2)) / H. Images (B, 3, H, W) RGB in [0, 1]. Symbols: B batch, J = 24
joints, V = 6890 vertices, L tokens, K codes, D code dimension, C ViT width, d decoder width, M heads,
n_levels pyramid levels, P sampling points, T UGS iterations, theta pose, beta shape, R rotation matrices,
e code vectors, Y token ids; tau: the masking variable (`mask_tau`) or Eq. 5-6's Gumbel `temperature`.
Where this differs from the paper (`NOTE Gn` in the code, item Gn of its list), stages, results: docs/genhmr.md.
"""

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import bodymodels

NUM_JOINTS, NUM_BETAS, PELVIS = 24, 10, 0  # SMPL
FOCAL_LENGTH, CROP_SIZE = 5000.0, 256.0  # official (4D-Humans hmr2.py): EXTRA.FOCAL_LENGTH, MODEL.IMAGE_SIZE


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
    torch.distributed every rank ends each update with the same codebook (NOTE G6)."""

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
        if _distributed():  # NOTE G6: the references do not all-reduce; ranks must agree
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


class PoseTokenizer(nn.Module):
    """theta (B, 24, 3) axis-angle -> E -> z (B, L, D) -> ids (B, L) -> D -> R (B, 24, 3, 3).

    Encoder: Conv(C_in -> w) -> nearest x (2 L / 24) -> Conv -> [Conv(k4, s2) -> Resnet1D] (2L -> L)
    -> Conv(w -> D). Decoder: Conv(D -> w) -> Resnet1D -> Conv(k = s = L / 24) (L -> 24) -> Conv -> 6D.
    NOTE G2: TokenHMR-like; the paper names only ResBlocks, 1D convolutions and one quantizer.
    NOTE G1: the encoder reads 6D rotations (TokenHMR), C_in = 6.
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
        SMPL at beta = 0 (NOTE G4). Each term is a mean over samples, so equal shards on any number of ranks average
        to it; the EMA codebook update sums its statistics over the ranks (NOTE G6)."""
        cfg, R_gt, zeros = self.cfg, bodymodels.axis_angle_to_matrix(pose), pose.new_zeros(len(pose), NUM_BETAS)
        with torch.no_grad():
            v_gt, j_gt = self.body(R_gt, zeros, cfg.loss_vertices)
        v, j = self.body(pred["R"], zeros, cfg.loss_vertices)
        terms = {"pose": (pred["R"] - R_gt).abs().mean(), "verts": (v - v_gt).abs().mean(),
                 "joints": (j - j_gt).abs().mean(), "commit": pred["commit"]}
        recon = cfg.w_pose * terms["pose"] + cfg.w_verts * terms["verts"] + cfg.w_joints * terms["joints"]
        return cfg.w_re * recon + cfg.w_commit * terms["commit"], dict(terms, perplexity=pred["perplexity"])


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
    then LayerNorm2d + GELU between two], then Conv1x1 -> d_model + GroupNorm (NOTE G7)."""
    layers, c = [], width
    for i in range(int(math.log2(scale))):
        if i:
            layers += [LayerNorm2d(c), nn.GELU()]
        layers.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
        c //= 2
    # the map comes channels-last (the ViT's tokens (B, h w, C) viewed as (B, C, h, w), ConvT keeps that): the 1x1
    # conv's weight too (for a 1x1 kernel the same memory order), so its gradient comes in the parameter's layout
    conv = nn.Conv2d(c, d_model, 1).to(memory_format=torch.channels_last)
    layers += [conv, nn.GroupNorm(min(32, d_model // 4), d_model)]
    return nn.Sequential(*layers)


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
        pattern is scaled by `offset_scale` (NOTE G28)."""
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


class DecoderLayer(nn.Module):
    """Pre-norm: Y + SA(LN Y) -> Y + MSDA(LN Y, p, {x^l}) -> Y + FFN(LN Y). NOTE G8."""

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
        # Eq. MSDA: pose-token queries attend to a few points around p_y on every level (levels None: no image)
        if levels is not None:
            y = y + self.dropout(self.cross_attn(self.norm2(y), reference, levels))
        return y + self.dropout(self.ffn(self.norm3(y)))


class MaskedTransformer(nn.Module):
    """The masked transformer decoder: ids Y_M (B, L) with [MASK] = K, pyramid, codebook C (K, D) -> logits (B, L, K)
    of p(y_i | Y_M, X): Linear(d, K) on the normed last token state h (the paper's logits). code_init: None (a fresh
    table) or f(C, d) -> (K, d), the codes' rows of the token embedding at unit std (`code_embedding`, NOTE G26)."""

    def __init__(self, cfg, num_tokens, codebook, head_width=None, code_init=None):
        super().__init__()
        d, self.mask_id = cfg.d_model, len(codebook)
        # NOTE G24: token and position embeddings at one scale, std 0.02 (BERT / MaskGIT), so that self-attention
        # can find a token's neighbours by position
        self.tok_emb = nn.Embedding(len(codebook) + 1, d)  # the last row is the learnable [MASK]
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        if code_init is not None:
            with torch.no_grad():
                self.tok_emb.weight[:-1] = code_init(codebook, d) * 0.02
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, d) * 0.02)
        # learnable reference points p_y = sigmoid(r_y), r (L, 2), spread over the image at the start
        # NOTE G9: Deformable DETR's start puts all L points at the centre: every token reads one place
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
    residuals on HMR2.0's mean parameters (beta = 0, cam = [0.9, 0, 0]). NOTE G10."""

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
    its class, default cfg.token_head's (`masked_transformer_class`, appendix A).

    >>> tok = PoseTokenizer(TOKENIZER_TINY.model)  # SMPL from $HMR_BODY_MODELS
    >>> poses = torch.randn(8, 24, 3) * 0.3
    >>> loss, terms = tok.compute_loss(tok.train()(poses), poses)  # Eq. Lvq; this first batch starts the codebook
    >>> loss.backward()
    >>> model = GenHMR(TINY.model, tok.eval())
    >>> images = torch.rand(2, 3, *TINY.model.image_hw)  # crops
    >>> targets = dict(smpl_shape=torch.zeros(2, 10), joints3d=torch.randn(2, 24, 3), joints2d=torch.rand(2, 24, 2))
    >>> loss, terms = training_step(model, tok, images, poses[:2], targets, step=0, cfg=TINY)  # Y* masked; Eqs. 1, 5-6
    >>> loss.backward()
    >>> out = model.eval().generate(images)  # UGS (T = 5) -> SMPL
    >>> out["verts"].shape
    torch.Size([2, 6890, 3])
    >>> out = model.generate(images, joints2d=out["joints2d"] + 1.0)  # + refinement to detected 2D joints (pixels)
    >>> out["refined_verts"].shape
    torch.Size([2, 6890, 3])
    """

    def __init__(self, cfg, tokenizer, masked_transformer=None):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer.eval().requires_grad_(False)
        self.num_tokens, self.num_codes = tokenizer.cfg.num_tokens, tokenizer.cfg.codebook_size
        self.backbone = DropPathViT(cfg)
        self.pyramid = nn.ModuleList(pyramid_level(cfg.vit_width, s, cfg.d_model) for s in cfg.feature_scales)
        masked_transformer = masked_transformer or masked_transformer_class(cfg)
        self.masked_transformer = masked_transformer(cfg, self.num_tokens, tokenizer.quantizer.codebook)
        self.shape_camera_head = ShapeCameraHead(cfg.vit_width, cfg.head_hidden)
        imagenet = torch.tensor([bodymodels.IMAGENET_MEAN, bodymodels.IMAGENET_STD])[..., None, None]
        self.register_buffer("mean_std", imagenet)  # (2, 3, 1, 1): (x - mean) / std

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

    def forward(self, images, ids, temperature=1.0):
        """Training's pass: images (B, 3, H, W) in [0, 1], ids Y_M (B, L) with [MASK] = K -> {"logits" (B, L, K), and
        the pose they imply through straight-through Gumbel-softmax at `temperature` (Eq. 5, 6): "R" (B, 24, 3, 3),
        "betas" (B, 10), "cam" (B, 3), "joints3d" (B, 24, 3) (SMPL's frame), "joints2d" (B, 24, 2) (normalised)}."""
        levels, betas, cam = self.encode_image(images)
        logits = self.logits(ids, levels)
        y = gumbel_softmax_st(logits, temperature)  # one-hot tokens forward, soft gradient backward
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
    def refine_towards(self, sampled, joints2d, joints2d_weight, cfg, image_hw):
        """The paper's "Inference Strategy" (2D pose-guided refinement): the sampled tokens (sampled: ids, betas, cam
        from `generate`) refined towards 2D joints (B, 24, 2) in pixels of the H x W crop -> the refined mesh's keys
        (`mesh_outputs`), prefixed refined_."""
        tok, betas, cam = self.tokenizer, sampled["betas"], sampled["cam"]
        problem = refinement_problem(tok, sampled["ids"], betas, cam, normalise_joints2d(joints2d.float(), image_hw),
                                     cfg.refine_reg, image_hw[0], joints2d_weight)
        return mesh_outputs(tok, tok.decode(refine(*problem, cfg)[-1]), betas, cam, image_hw, "refined_")


# ---------------------------------------------------------------------------------------------
# 3. Training: masking, Gumbel-softmax, losses (Eq. 1, 5, 6), the step


def num_masked(mask_tau, L):
    """Training Strategy: m = ceil(cos(pi tau / 2) L), clamped to [1, L] (NOTE G11); tau: the masking variable."""
    return torch.ceil(torch.cos(math.pi * mask_tau / 2) * L - 1e-6).clamp(1, L).long()


def random_masking(ids, mask_id, mask_tau_max=1.0, generator=None):
    """ids (B, L) -> (Y_M with m per-sample random positions set to mask_id, mask (B, L) bool), tau ~ U(0, max)."""
    B, L = ids.shape
    mask_tau = torch.rand(B, device=ids.device, generator=generator) * mask_tau_max
    m = num_masked(mask_tau, L)  # (B,)
    ranks = torch.rand(B, L, device=ids.device, generator=generator).argsort(1).argsort(1)  # random permutation
    mask = ranks < m[:, None]
    return torch.where(mask, torch.full_like(ids, mask_id), ids), mask


def corrupt_tokens(ids, mask_id, recipe):
    """Y* (B, L) [MASK]ed (`random_masking`), its visible tokens swapped (NOTE G11) -> (Y_M, masked (B, L) bool)."""
    y_m, masked = random_masking(ids, mask_id, recipe.mask_tau_max)
    return swap_visible(y_m, masked, mask_id, recipe.pkeep), masked


def gumbel_temperature(cfg, step):
    """Eq. (5) over the first anneal_fraction of max_steps, then held at temperature_end (NOTE G14); cfg: the recipe."""
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
    ("all": the L positions; "masked": its m >= 1 [MASK]s) -> (B,). NOTE G12."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y_gt.flatten(), reduction="none").view_as(y_gt)
    return ce.mean(1) if ce_on == "all" else (ce * masked).sum(1) / masked.sum(1)


def smpl_losses(pred, targets, cfg):
    """L_theta, L_beta (MSE), L_3D (pelvis-centred L1), L_2D (normalised L1) of `smpl_prediction`'s pred against
    targets (`compute_loss`'s): each summed over joints and coordinates per sample, as HMR2.0/TokenHMR, then
    loss_batch x the mean over samples (NOTE G15: their sums over a GPU's 48 samples, the same on any ranks)."""
    R, joints, uv = pred["R"], pred["joints3d"], pred["joints2d"]
    R_gt = bodymodels.axis_angle_to_matrix(targets["smpl_pose"].float())
    j3d_gt, uv_gt = targets["joints3d"].float(), targets["joints2d"].float()
    # optional masks for real data's missing labels, 1 where known (HMR2.0's has_smpl_params, keypoint confidences)
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


def training_step(model, tokenizer, images, pose, targets, step, cfg):
    """The image stage's loss at step `step` (Training Strategy), one forward through `model` (a GenHMR or its DDP
    wrapper) -> (L_total, {term: ()} and the temperature, `masked_accuracy`). tokenizer: model's; images (B, 3, H, W);
    pose theta (B, 24, 3); targets: `compute_loss`'s but ids, masked, smpl_pose (= pose); cfg: a GenHMRPreset."""
    ids = tokenizer.tokenize(pose)  # Y*: the frozen tokenizer's ids (B, L)
    y_m, masked = corrupt_tokens(ids, tokenizer.cfg.codebook_size, cfg.recipe)  # m = ceil(cos(pi tau / 2) L)
    temperature = gumbel_temperature(cfg.recipe, step)  # Eq. (5)
    pred = model(images, y_m, temperature)  # logits, and the pose of their Gumbel-ST draw (Eq. 6)
    loss, terms = compute_loss(pred, dict(targets, smpl_pose=pose, ids=ids, masked=masked), cfg.model)  # Eq. (1)
    return loss, dict(terms, temperature=torch.tensor(temperature),
                      masked_acc=masked_accuracy(pred["logits"], ids, masked))


# ---------------------------------------------------------------------------------------------
# 4. Inference: uncertainty-guided sampling, 2D-pose-guided refinement (`GenHMR.generate` runs them)


# gamma(r) of App. > Mask Scheduling Function, r = t / T in [0, 1] (the paper adopts the cosine; Table 11)
SCHEDULES = {"cosine": lambda r: (1 + math.cos(math.pi * r)) / 2, "linear": lambda r: 1 - r,
             "cubic": lambda r: 1 - r ** 3, "sqrt": lambda r: math.sqrt(max(0.0, 1 - r * r))}


def remask_counts(L, T, schedule="cosine"):
    """Tokens re-masked after iterations t = 1..T: ceil(gamma(t / T) L) (n_T = 0). NOTE G17.
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
    levels, betas, cam = model.encode_image(images)  # once, whatever T is
    ids, history = sample_from_features(model, levels, T, schedule, top_k, generator, choice_temperature, seeds)
    return {"ids": ids, "betas": betas, "cam": cam, "history": history}


@torch.no_grad()
def sample_from_features(model, levels, T=5, schedule="cosine", top_k=1, generator=None, choice_temperature=0.0,
                         seeds=None):
    """UGS's iterations on an encoded image pyramid -> (ids (B, L), history: per iteration t, (masked (B, L) after t,
    confidence (B, L) of the sampled tokens, ids (B, L) sampled or fixed at t, before re-masking)).
    choice_temperature c > 0 ranks the masked tokens by log p + c (1 - t / T) g, g ~ Gumbel(0, 1) (MaskGIT's,
    NOTE G17: `gumbel_noise`, appendix A)."""
    # levels None: no image (a pose prior); the batch size and device then come from seeds
    B, device = (len(levels[0]), levels[0].device) if levels is not None else (len(seeds), seeds.device)
    L = model.num_tokens
    ids = torch.full((B, L), model.num_codes, dtype=torch.long, device=device)
    masked, history = torch.ones(B, L, dtype=torch.bool, device=device), []
    for t, n in enumerate(remask_counts(L, T, schedule), 1):
        ids, sampled, confidence = sample_masked(model, ids, masked, levels, top_k, generator)
        score = confidence
        if choice_temperature > 0 and n:
            noise = gumbel_noise((B, L), seeds, t, generator, device)
            score = confidence.clamp_min(1e-30).log() + choice_temperature * (1 - t / T) * noise
        masked = least_confident(score, masked, n)
        history.append((masked.clone(), confidence, ids))  # ids: every position sampled or fixed, before re-masking
        ids = torch.where(masked, torch.full_like(ids, model.num_codes), ids)
    return ids, history


def sample_masked(model, ids, masked, levels, top_k=1, generator=None):
    """One UGS pass: p(y_i | Y_M, X), a draw at every position -> (ids filled where masked, draws, confidence)."""
    probs = model.logits(ids, levels).float().softmax(-1)  # (B, L, K)
    sampled = sample_tokens(probs, top_k, generator)
    confidence = probs.gather(-1, sampled[..., None])[..., 0]  # probability of the chosen token
    return torch.where(masked, sampled, ids), sampled, confidence


def least_confident(score, masked, n):
    """The n lowest-scored (B, L) of the masked positions (B, L) -> masked (B, L) after the iteration."""
    score = torch.where(masked, score, torch.full_like(score, math.inf))  # fixed stay fixed
    order = score.argsort(dim=1, stable=True)  # least confident first, ties to the lower index
    return torch.zeros_like(masked).scatter(1, order[:, :n], True)


def refinement_objective(tokenizer, e, betas, t, targets, R0, reg, scale, weights=None):
    """Eq. (2)-(3) per sample: G = sum_j w_j ||S (Pi(K(J'_3D + t)) - J_2D)||^2 + lambda ||R(e) - R_0||^2 -> (B,);
    weights (B, 24) per joint (a detector's confidences, 0 where a joint has no keypoint), None = all 1 (Eq. 3)."""
    R = tokenizer.decode(e)
    joints = tokenizer.body.joints(R, betas)
    uv = bodymodels.project_to_crop(joints, t, FOCAL_LENGTH, CROP_SIZE)
    residual = (((uv - targets) * scale) ** 2).sum(2)  # (B, 24)
    residual = residual if weights is None else residual * weights
    return residual.sum(1) + reg * ((R - R0) ** 2).sum((1, 2, 3))


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
    """Eq. (4): P = cfg.refine_iterations steps of gradient descent, eta = cfg.refine_lr, on the code vectors e
    (B, L, D) fed to the frozen tokenizer decoder (not re-quantised); no network changes -> [e_0, e_1, ..., e_P]."""
    trajectory = [e]
    for _ in range(cfg.refine_iterations):
        e = e - float(cfg.refine_lr) * objective_gradient(objective, e)[1]  # Eq. (4): e <- e - eta grad_e G
        trajectory.append(e)
    return trajectory


def objective_gradient(objective, e):
    """-> (G (B,), grad_e G (B, L, D)) at e (B, L, D), detached: only e receives a gradient, no parameter."""
    with torch.enable_grad():
        e = e.detach().requires_grad_(True)
        G = objective(e)
        grad, = torch.autograd.grad(G.sum(), e)
    return G.detach(), grad


def mesh_outputs(tokenizer, R, betas, cam, image_hw, prefix=""):
    """SMPL mesh in the crop's camera (HMR2.0's) -> {joints3d, verts, joints2d (pixels of the H x W crop), cam_t}."""
    verts, joints = tokenizer.body(R, betas)
    uv, t = project(joints, cam)
    H, W = image_hw
    return {f"{prefix}joints3d": joints + t[:, None], f"{prefix}verts": verts + t[:, None],
            f"{prefix}joints2d": uv * H + uv.new_tensor([W / 2, H / 2]), f"{prefix}cam_t": t}


# ---------------------------------------------------------------------------------------------
# 5. Configs (PAPER, TINY): a preset per stage of sub-configs (the model's, inference, the recipe)


# The range of each numeric field, an interval (configs.check_ranges: train.py refuses a value outside it)
AtLeast1 = Annotated[int, "[1, inf)"]  # sizes, counts, widths
AtLeast0 = Annotated[int, "[0, inf)"]  # steps, and counts whose 0 the field's comment explains
NonNegative = Annotated[float, "[0, inf)"]  # loss weights, learning rates, decays
Positive = Annotated[float, "(0, inf)"]
Fraction = Annotated[float, "[0, 1]"]  # probabilities, dropout
Sizes = Annotated[tuple, "[1, inf)"]  # each item a size


@dataclass
class TokenizerConfig:
    """What building the pose tokenizer reads, and its loss (App. > Implementation Details; Tables 5, 6)."""
    num_tokens: AtLeast1 = 96  # L (Table 6: 96 chosen)
    codebook_size: AtLeast1 = 2048  # K (Table 5: 2048 x 256 chosen)
    code_dim: AtLeast1 = 256  # D
    width: AtLeast1 = 512  # conv width. NOTE G2: unstated; TokenHMR's
    res_depth: AtLeast1 = 2  # ResBlocks per Resnet1D (TokenHMR)
    dilation_growth: AtLeast1 = 3  # dilations 1, 3, 9, ... (TokenHMR)
    ema_decay: Fraction = 0.99  # EMA codebook (Method: "exponential moving average and codebook reset")
    # --- loss Eq. Lvq (App. > Implementation Details) ---
    w_re: NonNegative = 1.0  # lambda_re
    w_pose: NonNegative = 1.0  # lambda_theta
    w_verts: NonNegative = 0.5  # lambda_V
    w_joints: NonNegative = 0.3  # lambda_J
    w_commit: NonNegative = 0.02  # lambda_E used as commitment weight. NOTE G3
    loss_vertices: AtLeast0 = 0  # vertices in L_V, evenly strided (0 = all 6890)

    def __post_init__(self):
        if self.num_tokens % NUM_JOINTS:
            raise ValueError(f"TokenizerConfig.num_tokens={self.num_tokens}: expected a multiple of "
                             f"{NUM_JOINTS} (each joint owns num_tokens / 24 tokens)")


@dataclass
class TokenizerRecipe:
    """What train.py reads for the tokenizer (App. > Implementation Details; data: AMASS + MOYO, SMPL-H -> SMPL)."""
    # App. > Data Augmentation: "we rotate the poses at varying degrees"
    aug_yaw_deg: Annotated[float, "[0, 180]"] = 180.0  # NOTE G5: ranges unstated
    aug_roll_deg: Annotated[float, "[0, 180]"] = 30.0
    batch_size: AtLeast1 = 512  # global batch
    lr: NonNegative = 1e-4  # Adam
    max_steps: AtLeast0 = 200_000  # "200K iterations"
    warmup_steps: AtLeast0 = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (to lr * 0.01 at max_steps)
    weight_decay: NonNegative = 0.0  # Adam
    grad_clip: NonNegative = 0.0
    amp: bool = False

    def __post_init__(self):
        _check_choice(self, "lr_schedule", ("constant", "cosine"))


def augment_pose(pose, recipe):
    """The tokenizer's training poses (B, 24, 3) rotated (App. > Data Augmentation: "we rotate the poses at varying
    degrees"): the global orientation pre-multiplied by Rz(roll) Ry(yaw), in camera axes (y vertical, z the optical
    axis), yaw ~ U(+-aug_yaw_deg), roll ~ U(+-aug_roll_deg) (NOTE G5); recipe: a TokenizerRecipe."""
    if not (recipe.aug_yaw_deg or recipe.aug_roll_deg):
        return pose
    u = torch.rand(len(pose), 2, device=pose.device) * 2 - 1
    yaw, roll = torch.deg2rad(u[:, 0] * recipe.aug_yaw_deg), torch.deg2rad(u[:, 1] * recipe.aug_roll_deg)
    zero = torch.zeros_like(yaw)
    Ry = bodymodels.axis_angle_to_matrix(torch.stack([zero, yaw, zero], -1))
    Rz = bodymodels.axis_angle_to_matrix(torch.stack([zero, zero, roll], -1))
    R0 = Rz @ Ry @ bodymodels.axis_angle_to_matrix(pose[:, 0])
    return torch.cat([bodymodels.matrix_to_axis_angle(R0)[:, None], pose[:, 1:]], 1)


@dataclass
class TokenizerPreset:
    model: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    recipe: TokenizerRecipe = dataclasses.field(default_factory=TokenizerRecipe)


@dataclass
class GenHMRConfig:
    """What building the image stage reads (GenHMR, and the backbone stage's ViT), and its loss."""
    # --- image encoder (Method > Image Encoder: HMR2.0's ViT-H) ---
    image_size: Sizes = (256, 192)  # (H, W) crop, as HMR2.0; the paper states no resolution
    patch_size: AtLeast1 = 16  # ViT-H/16
    patch_padding: AtLeast0 = 2  # HMR2.0's PatchEmbed padding (4 + 2 (ratio // 2 - 1), ratio 1)
    vit_width: AtLeast1 = 1280  # C
    vit_depth: AtLeast1 = 32
    vit_heads: AtLeast1 = 16
    vit_mlp_ratio: Positive = 4.0
    drop_path: Fraction = 0.55  # HMR2.0's backbone config
    conv_stem: Sizes = ()  # () = HMR2.0's patch_embed.proj; else the widths of a conv stem (TINY only, NOTE G22)
    feature_scales: Sizes = (1, 4, 8)  # App. > Impl.; Table 15 adds 16. NOTE G7
    # --- masked transformer decoder (Method > Masked Transformer Decoder; Table 16) ---
    d_model: AtLeast1 = 256  # NOTE G8: unstated, Deformable-DETR default
    num_layers: AtLeast1 = 4  # "4 deformable cross attention layers" (Table 16)
    num_heads: AtLeast1 = 8  # self-attention and MSDA heads
    num_points: AtLeast1 = 4  # MSDA sampling points per head and level
    # where the sampling offsets start: "detr", Deformable DETR's radial pattern in pixels of every level, or "map",
    # that pattern scaled to each map (`offset_scale`, NOTE G28: the same at the paper's size)
    offset_start: str = "detr"
    ffn_dim: AtLeast1 = 1024
    dropout: Fraction = 0.1
    head_hidden: AtLeast1 = 1024  # beta/camera MLP. NOTE G10
    token_head: str = "linear"  # "linear": Linear(d, K), the paper's logits | "tied" to the codebook (TINY, NOTE G21)
    # --- loss (Training Strategy; App. > Implementation Details) ---
    ce_on: str = "all"  # "all" (Eq. 1 as printed) | "masked". NOTE G12
    gumbel_positions: str = "all"  # "all" | "masked" (GT one-hot at visible). NOTE G13
    w_mask: NonNegative = 1.0
    w_pose: NonNegative = 1e-3  # lambda_theta within lambda_SMPL = 1.5e-3
    w_betas: NonNegative = 5e-4
    w_3d: NonNegative = 5e-2
    w_2d: NonNegative = 1e-2
    loss_batch: AtLeast0 = 48  # the geometric terms' calibration: HMR2.0/TokenHMR sum them over a GPU's 48 samples
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
    ugs_iterations: AtLeast1 = 5  # T
    schedule: str = "cosine"  # gamma, one of SCHEDULES
    top_k: AtLeast1 = 1  # greedy
    choice_temperature: NonNegative = 0.0  # UGS re-masks by log p + c (1 - t / T) Gumbel (MaskGIT); 0 = by p
    #   alone. NOTE G17
    refine_iterations: AtLeast0 = 20  # P (Table 1 = Table 3's 20-iteration row)
    refine_lr: NonNegative = 0.03  # eta of Eq. (4), unstated: chosen at TINY (docs/genhmr.md); G is in crop px^2
    refine_reg: NonNegative = 10.0  # lambda_theta' (px^2 per unit ||R - R_0||^2)

    def __post_init__(self):
        _check_choice(self, "schedule", tuple(SCHEDULES))


@dataclass
class RegressorConfig:
    """The backbone stage's head (genhmr_experiments.PoseRegressor, NOTE G23): HMR2.0's SMPL head or TINY's MLP."""
    regressor_head: str = "hmr2"  # "hmr2": HMR2.0's SMPL transformer decoder | "mlp": flatten -> MLP (TINY)
    hmr2_head: Sizes = (1024, 6, 8, 64, 1024)  # HMR2.0's (width, depth, heads, head width, MLP width)
    regressor_hidden: AtLeast1 = 512  # the "mlp" head's hidden width
    backbone_checkpoint: str = ""  # ViTPose-H or HMR2.0 weights the backbone stage starts from (`load_backbone`)

    def __post_init__(self):
        _check_choice(self, "regressor_head", ("hmr2", "mlp"))
        self.hmr2_head = tuple(self.hmr2_head)


@dataclass
class GenHMRRecipe:
    """What train.py reads for the image stages (App. > Implementation Details; data: H36M, COCO, MPI-INF-3DHP,
    MPII)."""
    # --- masking and Gumbel-softmax (Training Strategy; Tables 4, 8, 9) ---
    mask_tau_max: Fraction = 1.0  # tau ~ U(0, mask_tau_max) (Table 4: U(0, 1))
    pkeep: Fraction = 0.5  # each visible token kept w.p. pkeep, else a uniform random code. NOTE G11
    temperature_start: Positive = 1.0  # Gumbel temperature (Table 8)
    temperature_end: Positive = 0.01
    anneal_fraction: Fraction = 0.5  # Table 9: 50 % of training
    # evaluation: the refinement's 2D joints err as a published detector's (`detector_joints2d`, NOTE G27): HRNet-W32
    # (256 x 256) on MPII val, PCKh@0.1 and PCKh@0.5 (mmpose, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/mpii/
    # hrnet_mpii.md); the oracle row refines towards the labels + N(0, oracle_noise_px^2) instead (refined_oracle_*)
    detector_pckh: Annotated[tuple, "[0, 1]"] = (0.334, 0.900)
    oracle_noise_px: NonNegative = 1.0
    # Eq. (4)'s eta at evaluation: "fixed" (as printed) | "backtracking" (genhmr_experiments.REFINEMENTS, NOTE G18)
    refine_eta_rule: str = "fixed"
    batch_size: AtLeast1 = 48  # "batch size of 48"; per GPU or global is unstated
    lr: NonNegative = 1e-5  # Adam
    backbone_lr_scale: NonNegative = 1.0  # the image encoder's lr / lr (the paper and MEGA: one lr for all)
    max_steps: AtLeast0 = 100_000  # NOTE G16
    warmup_steps: AtLeast0 = 0
    lr_schedule: str = "constant"
    weight_decay: NonNegative = 0.0
    grad_clip: NonNegative = 0.0
    amp: bool = False
    gpus: AtLeast0 = 2  # NVIDIA RTX A6000 (App. > Impl.)

    def __post_init__(self):
        _check_choice(self, "lr_schedule", ("constant", "cosine"))
        _check_choice(self, "refine_eta_rule", ("fixed", "backtracking"))


@dataclass
class GenHMRPreset:
    model: GenHMRConfig = dataclasses.field(default_factory=GenHMRConfig)
    inference: InferenceConfig = dataclasses.field(default_factory=InferenceConfig)
    regressor: RegressorConfig = dataclasses.field(default_factory=RegressorConfig)
    recipe: GenHMRRecipe = dataclasses.field(default_factory=GenHMRRecipe)


def _check_choice(cfg, name, allowed):
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r}: expected one of {allowed}")



TOKENIZER_PAPER = TokenizerPreset()  # 96 tokens, 2048 x 256 codebook
TOKENIZER_TINY = TokenizerPreset(  # 2 CPU cores, synthetic poses (synthetic.body_pose_dataset)
    # 48 tokens: UGS lands nearer the truth than with the paper's 96 (docs/genhmr.md)
    model=TokenizerConfig(num_tokens=48, codebook_size=256, code_dim=32, width=64, loss_vertices=1024),
    recipe=TokenizerRecipe(aug_yaw_deg=20.0, aug_roll_deg=15.0,  # SyntheticPoses already spans every yaw
                           # lr 1e-3: UGS's iterations keep their gain on the controlled ambiguity (docs/genhmr.md)
                           batch_size=128, lr=1e-3, max_steps=1000, warmup_steps=50, lr_schedule="cosine"))
PAPER = GenHMRPreset()
TINY = GenHMRPreset(  # 2 CPU cores: 64 x 48 crops (the paper's 4:3), patch 8 -> 8 x 6 grid, levels 1x, 2x
    model=GenHMRConfig(
        image_size=(64, 48), patch_size=8, vit_width=128, vit_depth=4, vit_heads=4, vit_mlp_ratio=2.0, drop_path=0.0,
        conv_stem=(32, 64, 128), feature_scales=(1, 2), d_model=64, num_layers=3, num_heads=4, ffn_dim=128,
        dropout=0.0, head_hidden=128, token_head="tied",  # NOTE G21
        # NOTE G20: the paper's weights on per-sample sums, averaged (loss_batch 1, not HMR2.0's 48): summed, the
        # Gumbel-ST gradient swamps L_mask
        loss_batch=1),
    # MaskGIT's confidence noise (NOTE G17); lambda_theta' for detector-like joints (NOTE G27, docs/genhmr.md)
    inference=InferenceConfig(choice_temperature=4.5, refine_reg=3000.0),
    regressor=RegressorConfig(regressor_head="mlp"),  # NOTE G23
    # the image stage fine-tunes the backbone stage's ViT (the paper's start is unstated); MMM's input swap pkeep
    recipe=GenHMRRecipe(pkeep=0.5, batch_size=32, lr=6e-4, max_steps=1500, warmup_steps=100, lr_schedule="cosine",
                        weight_decay=0.0, grad_clip=1.0, gpus=0))  # synthetic.body_dataset's synthetic bodies
# Between TINY and PAPER (docs/genhmr.md, "GenHMR as it scales"): renders of twice TINY's side (128 x 96; patch 16
# keeps the 8 x 6 grid), the masked transformer at d_model 256, twice TINY's steps
SMALL = dataclasses.replace(
    TINY, model=dataclasses.replace(TINY.model, image_size=(128, 96), patch_size=16, conv_stem=(32, 64, 128, 128),
                                    d_model=256, num_heads=8, ffn_dim=512),
    recipe=dataclasses.replace(TINY.recipe, max_steps=3000, warmup_steps=200))


# ---------------------------------------------------------------------------------------------
# Appendix A. Support architecture: SMPL, the ViT backbone; the project's additions (TINY's token head)


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


def check_pose(pose):
    """A pose's shape, checked where the tokenizer reads one: (B, 24, 3) axis-angle."""
    if pose.dim() != 3 or tuple(pose.shape[1:]) != (NUM_JOINTS, 3):
        raise ValueError(f"GenHMR: expected an SMPL pose (B, 24, 3) axis-angle (global orientation first), "
                         f"got shape {tuple(pose.shape)}")


def _distributed():
    """Whether a torch.distributed process group runs (the codebook's EMA statistics are then summed over ranks)."""
    return dist.is_available() and dist.is_initialized()


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
    """NOTE G22 (TINY only): a convolutional patch embedding (Xiao et al. 2021, "Early
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


# A.2 The project's additions (not the paper's): the code embedding's start (NOTE G26), TINY's tied token head
#     (NOTE G21), MSDA's start offsets for small maps (NOTE G28), MaskGIT's choice noise for UGS (NOTE G17), MMM's swap
#     of the visible training tokens (NOTE G11), the training log's masked accuracy


def code_embedding(codebook, d):
    """NOTE G26: codebook C (K, D) -> (K, d): C centred, through a random map P (d x D, orthonormal rows or
    columns), scaled to unit std per element: distances between codes kept up to one scale."""
    K, D = codebook.shape
    P = torch.linalg.qr(torch.randn(max(d, D), min(d, D), device=codebook.device))[0]  # orthonormal columns
    P = P if d >= D else P.T  # (d, D)
    E = (codebook - codebook.mean(0)) @ P.T
    return E / E.std().clamp_min(1e-12)


class TiedMaskedTransformer(MaskedTransformer):
    """NOTE G21: (TINY only) the token head tied to the frozen codebook, logit_k = -exp(s) ||W h - c_k||^2,
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
    """The masked transformer class for cfg (GenHMRConfig): the paper's, its codes' embeddings started from the
    codebook (NOTE G26), with TINY's tied head (NOTE G21) when cfg.token_head is "tied"."""
    return functools.partial(TiedMaskedTransformer if cfg.token_head == "tied" else MaskedTransformer,
                             code_init=code_embedding)


def offset_scale(H, W):
    """NOTE G28: the factor on Deformable DETR's start offsets for an H x W map, min(1, 0.1 min(H, W)): each head's
    first point (1 pixel out) then stays within the reference points' starting margin, so inside the map; at
    least 10 pixels a side (every level at the paper's size) it is Deformable DETR's own start."""
    return min(1.0, REFERENCE_MARGIN * min(H, W))


def level_sizes(cfg):
    """The pyramid's (H_l, W_l) per level: the ViT grid (H / patch, W / patch) x each of cfg.feature_scales."""
    H, W = cfg.image_hw
    return tuple((H // cfg.patch_size * s, W // cfg.patch_size * s) for s in cfg.feature_scales)


def gumbel_noise(shape, seeds=None, step=0, generator=None, device=None):
    """Gumbel(0, 1) noise (B, *shape[1:]); with seeds (B,) one generator per sample seeded by (seed, step),
    so a sample's draw is the same whichever rank or batch it is in."""
    if seeds is None:
        u = torch.rand(shape, generator=generator, device=device)
    else:
        u = torch.stack([torch.rand(shape[1:], generator=torch.Generator().manual_seed(int(i) * 1009 + step))
                         for i in seeds.reshape(-1)]).to(device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))


def swap_visible(ids, masked, num_codes, pkeep, generator=None):
    """NOTE G11: MMM's input corruption (exitudio/MMM, `--pkeep`): each visible token of ids (B, L) kept with
    probability pkeep, else replaced by a code drawn uniformly from the K; [MASK]ed positions untouched. The targets
    stay the true tokens, so the generator learns to doubt its context, as it must at inference, where the context is
    its own earlier guesses."""
    swap = (torch.rand(ids.shape, device=ids.device, generator=generator) >= pkeep) & ~masked
    random_ids = torch.randint(num_codes, ids.shape, device=ids.device, generator=generator)
    return torch.where(swap, random_ids, ids)


def masked_accuracy(logits, y_gt, masked):
    """The share of [MASK]ed tokens whose argmax is right, per sample, averaged (the training log's)."""
    return (((logits.argmax(-1) == y_gt) & masked).sum(1) / masked.sum(1)).mean()


# ---------------------------------------------------------------------------------------------
# Appendix B. Agreement with the official code: ViTPose-H and HMR2.0 checkpoints


# Released weights (HMR2.0 and TokenHMR start their ViT-H from ViTPose-H; docs/genhmr.md, NOTE G23). Three layouts,
# each a dict with "state_dict" (tests/official_keys/ lists names and shapes, made from the official constructors):
# HMR2.0's Lightning checkpoint (backbone.*, smpl_head.*, discriminator.*, smpl.*, initialized), ViTPose-H's
# mmpose checkpoint (backbone.*, keypoint_head.*), HMR2.0's vitpose_backbone.pth (the ViT's own names).


def load_backbone(model, path):
    """ViTPose-H or HMR2.0 weights from `path` into model's ViT (model: a DropPathViT, or a module with one as
    `backbone`: GenHMR, the backbone stage's regressor; the names are HMR2.0's and ViTPose's), and HMR2.0's
    smpl_head.* into a module that has a `smpl_head` (the backbone stage's, genhmr_experiments.HMR2Head). Each part
    loads strictly; the file's other parts (adversary, SMPL buffers, heatmap head) are left out. Read with
    torch.load(weights_only=True), so the file cannot run code. -> the parts loaded."""
    checkpoint = bodymodels.read_checkpoint(path, "ViTPose-H's or HMR2.0's weights (backbone_checkpoint)")
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
