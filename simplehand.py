"""SimpleHand: "A Simple Baseline for Efficient Hand Mesh Reconstruction" (Zhou et al., CVPR 2024).
Paper: http://simplehand.github.io; official code: github.com/patienceFromZhou/simpleHand.

A crop of a right hand in, the 778 MANO vertices and 21 joints out:

    image (B, 3, H, W) -> backbone (App. A) -> map X_b (stride 8 or 32), pooled map (stride 32)
    T: pooled map -> mean -> Linear -> 2D joints (B, 21, 2)                                     Sec. 3.1, Fig. 4
       X_b -> [4x deconv] -> read at the 2D joints (grid_sample) -> tokens X_m (B, 21, C_t)     Sec. 3.1, 3.3
    R: X_m -> H_0 -> H_1 -> H_2 (21 -> 84 -> 336 -> 778 tokens) -> Linear -> V (B, 778, 3)      Sec. 3.2, Eq. 1-3
       joints (B, 21, 3) = J x V and 5 fingertip vertices; loss: L1 on V, 3D and 2D joints      Sec. 3.4, Eq. 4-7

Conventions: images RGB in [0, 1]; 2D joints (u, v) / (W, H) of the crop; 3D in metres, OpenCV camera
axes, relative to joint 9 (middle MCP) of 21 joints in FreiHAND order.
Symbols: B batch, C / C_t backbone / token channels, J = 21 joints, V = 778 vertices, n_k / c_k tokens /
width of decoder layer k, emb_k / P_k / MF_k / U_k its position embedding, width-reducing Linear,
MetaFormer block and token-upsampling Linear, J (the matrix) MANO's 16 x 778 joint regressor.

Sections: 1 building blocks, 2 the model (`SimpleHand(cfg)`: start from its docstring), 3 the loss (`compute_loss`),
4 configs (PAPER, PAPER_FASTVIT, OFFICIAL, TINY: presets of a model config, the official code's behaviours it keeps,
a recipe and its Sec. 4.1 schedule `learning_rate`, and data). Appendices: A backbones, B the official code (its
behaviours, key map, `load_official`). How this project trains, evaluates and ablates it (train.py's protocol,
Tables 4-8): lab/simplehand_experiments.py. docs/simplehand.md: where this differs from the paper and the official code
(the NOTE N list), results.
"""

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import bodymodels

NUM_JOINTS = 21  # FreiHAND order
NUM_VERTS = 778  # MANO


# ---------------------------------------------------------------------------------------------
# 1. Building blocks: reading the map at points (Sec. 3.1), the decoder layer H_k (Sec. 3.2, Eq. 2-3)


def sample_points(feature, uv, clamp=False):
    """Bilinear features at points: feature (B, C, h, w), uv (B, N, 2) in [0, 1] -> (B, N, C).

    `align_corners=True`: uv = 0 and 1 are the centres of the first and last cells (official code).
    Differentiable in uv as well as in the feature. clamp=True first moves points outside the crop
    onto its border, where they also stop getting a gradient (official `remap_uv`).
    """
    grid = (uv - 0.5) * 2  # (B, N, 2) in [-1, 1], x first
    if clamp:
        grid = grid.clamp(-1, 1)  # official (models/modules.py remap_uv): clamp((uv - 0.5) * 2, -1, 1)
    grid = grid.unsqueeze(2)  # (B, N, 1, 2)
    tokens = F.grid_sample(feature, grid, mode="bilinear", align_corners=True)  # (B, C, N, 1)
    return tokens.squeeze(-1).transpose(1, 2)  # (B, N, C)


def drop_path(x, p, training):
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class Attention(nn.Module):
    """Multi-head self-attention over tokens: (B, N, c) -> (B, N, c)."""

    def __init__(self, dim, num_heads, dropout):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, c = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, nh, N, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, c))  # (B, N, c)


class MetaFormerBlock(nn.Module):
    """MF_k: x + Attention(LN(x)), then x + MLP(LN(x)) (pre-norm; MetaFormer, Yu et al. 2022), (B, N, c) -> same."""

    def __init__(self, dim, num_heads, mlp_ratio, dropout):
        super().__init__()
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = Attention(dim, num_heads, dropout)  # the token mixer (Table 8: attention)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (B, N, c) -> (B, N, c)
        x = x + drop_path(self.mixer(self.norm1(x)), self.dropout, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.dropout, self.training)


class DecoderLayer(nn.Module):
    """H_k: (B, n_in, c_in) -> (B, n_out, c), Eq. (2) with the position embedding of Eq. (3). `block` builds
    each of MF_k's `depth` blocks: block(c, num_heads, mlp_ratio, dropout)."""

    def __init__(self, n_in, n_out, c_in, c, depth, cfg, block=MetaFormerBlock):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, n_in, c_in))  # emb_k
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.reduce = nn.Linear(c_in, c)  # P_k: width c_in -> c
        self.blocks = nn.Sequential(*[block(c, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(depth)])
        self.upsample = nn.Linear(n_in, n_out)  # U_k: tokens n_in -> n_out

    def forward(self, x):
        # Eq. (3): X_k = X_k + emb_k
        x = x + self.pos_embedding  # (B, n_in, c_in)
        # Eq. (2): H_k(X_k) = U_k(MF_k(P_k(X_k))); U_k acts on the token axis
        x = self.blocks(self.reduce(x))  # (B, n_in, c)
        return self.upsample(x.transpose(1, 2)).transpose(1, 2)  # (B, n_out, c)


# ---------------------------------------------------------------------------------------------
# 2. The model: token generator T (Sec. 3.1, 3.3), mesh regressor R (Sec. 3.2, Eq. 1), SimpleHand


def deconv_bn_relu(c_in, c_out, k):
    """A k x k transposed convolution of stride k (no bias), BatchNorm, ReLU: (B, c_in, h, w) -> (B, c_out, kh, kw)."""
    return [nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def feature_upsampler(c_in, c, factor):
    """The map the tokens are read from: (B, c_in, h, w) -> (B, c, h f, w f), f = `factor`. Sec. 3.3: "for image
    classification style backbones like FastViT, we apply a 4x upsample deconvolution" (k = stride = f, no bias,
    BN, ReLU: official). HRNet's stride-8 map (and tiny's) is used as it is; factor 1 with another width: 1x1."""
    if factor == 1 and c_in == c:
        return nn.Identity()
    return nn.Sequential(*deconv_bn_relu(c_in, c, factor))


class TokenGenerator(nn.Module):
    """T: backbone maps -> (tokens X_m (B, 21, C_t), 2D joints (B, 21, 2)). Sec. 3.1, Fig. 2d and 4.

    Keypoint-guided point sampling: a Linear on the pooled map predicts the 21 2D joints (fractions of
    the crop), and each joint's token is the upsampled map read there. The 2D joints are not detached:
    the 3D losses move the keypoint head too.
    """

    num_tokens = NUM_JOINTS  # n_0: one token a joint

    def __init__(self, cfg):
        super().__init__()
        # 2D joints from the pooled global feature (Fig. 4: "Global Feature -> 2D Keypoints")
        self.keypoint_head = nn.Linear(cfg.global_channels, NUM_JOINTS * 2)
        # NOTE S3: a sigmoid keeps the 2D joints in [0, 1]; the official Linear is clamped where read
        self.keypoint_activation = nn.Sigmoid()
        self.upsample = feature_upsampler(cfg.feature_channels, cfg.token_channels, cfg.feature_upsample)

    def predict_joints2d(self, pooled):
        """The pooled map (B, C_g, h', w') -> 2D joints (B, 21, 2), (u, v) / (W, H) of the crop."""
        # official (hand_net.py): AvgPool2d((7, 7)) of the 7 x 7 map, i.e. its mean at 224 px
        logits = self.keypoint_head(pooled.mean(dim=(2, 3)))  # (B, 42)
        return self.keypoint_activation(logits.reshape(-1, NUM_JOINTS, 2))

    def forward(self, feature, pooled):
        """feature X_b (B, C, h, w), pooled (B, C_g, h', w') -> tokens X_m (B, 21, C_t), joints2d (B, 21, 2)."""
        joints2d = self.predict_joints2d(pooled)
        # official (models/modules.py remap_uv): a 2D joint outside the crop is read at its border
        tokens = sample_points(self.upsample(feature), joints2d, clamp=True)  # (B, 21, C_t)
        return tokens, joints2d


class MeshRegressor(nn.Module):
    """R = H_{K-1} ... H_0 (Eq. 1), then a Linear c_{K-1} -> 3: tokens X_m (B, n_0, C_t) -> vertices (B, 778, 3).

    n_k = cfg.num_tokens (21, 84, 336), c_k = cfg.dims, cfg.depths blocks a layer. `layer` builds each H_k and
    `block` each block of its MF_k (DecoderLayer and MetaFormerBlock).
    """

    def __init__(self, cfg, layer=DecoderLayer, block=MetaFormerBlock):
        super().__init__()
        n_in = cfg.num_tokens  # 21, 84, 336
        n_out = cfg.num_tokens[1:] + (NUM_VERTS,)  # 84, 336, 778
        c_in = (cfg.token_channels,) + cfg.dims[:-1]  # 256, 256, 128
        self.layers = nn.ModuleList(layer(n, m, ci, c, d, cfg, block) for n, m, ci, c, d
                                    in zip(n_in, n_out, c_in, cfg.dims, cfg.depths))
        self.head = nn.Linear(cfg.dims[-1], 3)

    def forward(self, x):
        for layer in self.layers:
            # Eq. (1): X_{k+1} = H_k(X_k)
            x = layer(x)  # (B, n_{k+1}, c_k)
        return self.head(x)  # (B, 778, 3)


class RootRelative(nn.Module):
    """NOTE S5: vertices (B, 778, 3), joints (B, 21, 3) -> both minus joint `root` (9, the middle MCP)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def forward(self, verts, joints3d):
        root = joints3d[:, self.root:self.root + 1]  # (B, 1, 3)
        return verts - root, joints3d - root


class SimpleHand(nn.Module):
    """images (B, 3, H, W) RGB in [0, 1] -> dict(joints2d (B, 21, 2), verts (B, 778, 3), joints3d (B, 21, 3)).

    Built from the model config alone: the backbone (appendix A) gives the maps, T the tokens and 2D joints, R the
    vertices; the joints are J x V and 5 fingertip vertices, J = `j_regressor` (MANO's (16, 778); by default
    `bodymodels.load_mano()`'s, from HMR_BODY_MODELS). joints2d are fractions of the crop, 3D outputs root-relative
    metres. A part given replaces the config's. A preset p's: with_official_behaviours(SimpleHand(p.model), p.variant).

    >>> cfg = TINY.model  # the CPU preset's model config: a small CNN backbone, a scaled-down decoder
    >>> cfg.image_size, cfg.num_tokens, cfg.dims
    (96, (21, 84, 168), (96, 48, 24))
    >>> model = SimpleHand(cfg)
    >>> images = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    >>> pred = model(images)
    >>> {k: tuple(v.shape) for k, v in pred.items()}
    {'joints2d': (2, 21, 2), 'verts': (2, 778, 3), 'joints3d': (2, 21, 3)}
    >>> verts = torch.randn(2, 778, 3) * 0.03 + torch.tensor([0.0, 0.0, 0.5])  # targets: metres, camera axes
    >>> joints3d, joints2d = model.regress_joints(verts), torch.rand(2, 21, 2)  # 2D: fractions of the crop
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> total, terms = compute_loss(model(images), verts, joints3d, joints2d, cfg)  # one step of Eq. (7)
    >>> total.backward(); opt.step()
    >>> sorted(terms), total.item() > 0
    (['joints2d', 'joints3d', 'verts'], True)
    >>> with torch.no_grad(): mesh = model.eval()(images)["verts"]  # inference is the forward
    >>> mesh.shape
    torch.Size([2, 778, 3])
    """

    def __init__(self, cfg, j_regressor=None, backbone=None, token_generator=None, mesh_regressor=None):
        super().__init__()
        j_regressor = bodymodels.load_mano().J_regressor if j_regressor is None else j_regressor
        if tuple(j_regressor.shape) != (16, NUM_VERTS):
            raise ValueError(f"j_regressor: expected MANO's (16, {NUM_VERTS}), got {tuple(j_regressor.shape)}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg) if backbone is None else backbone  # images -> (X_b, map to pool)
        self.token_generator = TokenGenerator(cfg) if token_generator is None else token_generator  # T
        self.mesh_regressor = MeshRegressor(cfg) if mesh_regressor is None else mesh_regressor  # R
        # a buffer, so that a checkpoint carries the regressor it was trained with
        self.register_buffer("j_regressor", j_regressor.detach().clone().float())  # (16, 778)
        self.normalise = ImageNetNormalise()  # NOTE S4: what the ImageNet-pretrained backbones expect (appendix B)
        self.root_relative = RootRelative(cfg.root_index)  # NOTE S5

    def forward(self, images):
        feature, pooled = self.backbone(self.normalise(images))  # X_b (B, C, H/s, W/s)
        return self.from_features(feature, pooled)

    def from_features(self, feature, pooled):
        """Everything after the backbone: its maps X_b (B, C, h, w), pooled (B, C_g, h', w') -> the outputs."""
        tokens, joints2d = self.token_generator(feature, pooled)  # X_m (B, 21, C_t), (B, 21, 2)
        verts = self.mesh_regressor(tokens)  # (B, 778, 3)
        verts, joints3d = self.root_relative(verts, self.regress_joints(verts))  # (B, 778, 3), (B, 21, 3)
        return {"joints2d": joints2d, "verts": verts, "joints3d": joints3d}

    def regress_joints(self, verts):
        """Sec. 3.4: J_3d = J x V_3d, plus 5 fingertip vertices: (B, 778, 3) -> (B, 21, 3), FreiHAND order.

        official (simpleHand models/losses.py mesh_to_joints): MANO's J_regressor and FreiHAND's tip
        vertices 744, 320, 443, 555, 672, which are `bodymodels.mano_to_freihand`'s, in every config.
        """
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor.to(verts.dtype), verts)  # (B, 16, 3)
        return bodymodels.mano_to_freihand(joints, verts)  # (B, 21, 3)


# ---------------------------------------------------------------------------------------------
# 3. The loss (Sec. 3.4, Eq. 4-7)


def l1_distance(pred, target):
    """Eq. (4)-(6): L1 summed over coordinates, averaged over points and batch: (B, N, D) x 2 -> ()."""
    return (pred - target).abs().sum(dim=-1).mean()


def compute_loss(pred, verts, joints3d, joints2d, cfg):
    """Eq. (7): L = w_3d L_J3d + w_2d L_J2d + w_vert L_vert -> (total, {"verts", "joints3d", "joints2d"}).

    pred: SimpleHand's outputs. Targets: verts (B, 778, 3) and joints3d (B, 21, 3) in metres (camera
    coordinates; made relative to joints3d[:, cfg.root_index] here), joints2d (B, 21, 2) fractions of the
    crop. The returned terms are unweighted (metres and crop fractions); the total is weighted.
    NOTE S11: the official loss masks 2D joints (and hands) outside the crop; not reproduced.
    """
    root = joints3d[:, cfg.root_index:cfg.root_index + 1]  # (B, 1, 3)
    terms = {"verts": l1_distance(pred["verts"], verts - root),  # Eq. (6)
             "joints3d": l1_distance(pred["joints3d"], joints3d - root),  # Eq. (4)
             "joints2d": l1_distance(pred["joints2d"], joints2d)}  # Eq. (5)
    total = cfg.w_verts * terms["verts"] + cfg.w_joints3d * terms["joints3d"] + cfg.w_joints2d * terms["joints2d"]
    return total, terms


# ---------------------------------------------------------------------------------------------
# 4. Configs: the model, the official code's behaviours, the recipe, the data; PAPER, PAPER_FASTVIT, OFFICIAL, TINY
#
# A preset is the model config (what `SimpleHand(cfg.model)` reads), the variant (the official code's behaviours
# in the method's place, appendix B), the recipe and the data. Every field name is unique in a preset.


FREIHAND_TRAIN_SAMPLES = 130_240  # 32,560 x 4 versions (Sec. 4.2); one paper epoch
STEPS_PER_EPOCH = FREIHAND_TRAIN_SAMPLES // 256  # 508 steps of the paper's global batch 256 (8 x 32, Sec. 4.1)


# The range of each numeric field, an interval (configs.check_ranges: train.py refuses a value outside it)
AtLeast1 = Annotated[int, "[1, inf)"]  # sizes, counts, widths
AtLeast0 = Annotated[int, "[0, inf)"]  # steps, and counts whose 0 the field's comment explains
NonNegative = Annotated[float, "[0, inf)"]  # loss weights, learning rates, decays
Positive = Annotated[float, "(0, inf)"]
Fraction = Annotated[float, "[0, 1]"]  # probabilities, dropout
Sizes = Annotated[tuple, "[1, inf)"]  # each item a size


def check_choices(cfg):
    """Raise ValueError naming the field unless every Literal field of the dataclass `cfg` holds one of its choices."""
    for field in dataclasses.fields(cfg):
        allowed = typing.get_args(field.type) if typing.get_origin(field.type) is Literal else None
        if allowed and getattr(cfg, field.name) not in allowed:
            raise ValueError(f"{type(cfg).__name__}.{field.name}={getattr(cfg, field.name)!r}: expected one of "
                             f"{allowed}")


@dataclass
class SimpleHandConfig:
    """The model: what building `SimpleHand` reads (the backbone, T, R) and the loss weights."""
    # --- backbone (Sec. 4.1) ---
    backbone: str = "hrnet_w64"  # "tiny_cnn" (written below) or a timm model name
    image_size: AtLeast1 = 224  # square crop, pixels (FreiHAND images are 224 x 224)
    feature_channels: AtLeast1 = 256  # C of the map the tokens are sampled from
    feature_stride: AtLeast1 = 8  # its stride: 8 for HRNet-style, 32 for classification backbones
    global_channels: AtLeast1 = 1024  # channels of the map the 2D keypoint head pools
    timm_out_indices: Annotated[tuple, "[0, inf)"] = (2, 4)  # timm features_only indices (sample map, pooled
    #   map); () = forward_features
    pretrained_backbone: bool = True  # start from ImageNet weights (Sec. 4.1), read from backbone_weights
    backbone_weights: str = ""  # local file of timm's ImageNet weights (.pth/.bin/.safetensors): no hub here
    backbone_drop_path: Fraction = 0.0  # stochastic depth inside the timm backbone (the paper is silent)
    tiny_widths: Sizes = (16, 32, 64, 128)  # tiny_cnn only: channels at strides 2, 4, 8, 32
    # --- token generator T (Sec. 3.1, 3.3) ---
    feature_upsample: AtLeast1 = 1  # deconvolution factor of the sampled map: 4 for stride 32 (Sec. 3.3), 1 for
    #   stride 8
    token_channels: AtLeast1 = 256  # C_t after the upsample (official deconv width 256)
    # --- mesh regressor R (Sec. 3.2) ---
    num_tokens: Sizes = (21, 84, 336)  # n_k: input tokens of each decoder layer; the last outputs 778
    dims: Sizes = (256, 128, 64)  # c_k: block widths (Table 7: 256, 128, 64 best)
    depths: Sizes = (1, 1, 1)  # blocks per layer (Table 7: 1, 1, 1 best)
    num_heads: AtLeast1 = 4  # official code
    mlp_ratio: Positive = 4.0  # official code
    dropout: Fraction = 0.1  # attention dropout and drop path. NOTE S2: official code, paper silent
    # --- losses (Sec. 3.4, Eq. 7) ---
    w_verts: NonNegative = 10.0
    w_joints3d: NonNegative = 10.0
    w_joints2d: NonNegative = 1.0
    root_index: Annotated[int, "[0, 20]"] = 9  # FreiHAND joint the 3D outputs are relative to (middle MCP,
    #   official code)

    def __post_init__(self):
        self.num_tokens, self.dims, self.depths = tuple(self.num_tokens), tuple(self.dims), tuple(self.depths)
        if not len(self.num_tokens) == len(self.dims) == len(self.depths) >= 1:
            raise ValueError(f"SimpleHandConfig: num_tokens {self.num_tokens}, dims {self.dims} and depths "
                             f"{self.depths} must have the same length (one entry per decoder layer)")
        if self.feature_upsample < 1:
            raise ValueError(f"SimpleHandConfig.feature_upsample={self.feature_upsample}: expected a factor >= 1")


@dataclass
class SimpleHandVariant:
    """The official code's behaviours in the method's place (appendix B's `with_official_behaviours` reads it)."""
    position_encoding: Literal["sine", "none"] = "sine"  # NOTE S1: the official sine encoding of the sampled map
    input_norm: Literal["imagenet", "bgr_minus_half"] = "imagenet"  # RGB, (x - mean) / std as ImageNet
    #   weights expect | "bgr_minus_half" (official)
    keypoint_activation: Literal["sigmoid", "none"] = "sigmoid"  # keeps the 2D joints in [0, 1] (ours)
    #   | "none": the raw Linear (official)
    subtract_root: bool = True  # the model subtracts its own joint 9: root-relative outputs by construction

    def __post_init__(self):
        check_choices(self)


@dataclass
class SimpleHandRecipe:
    """The training recipe read by train.py, in optimisation steps (batch_size is the GLOBAL batch), and the
    paper's hardware. Epochs and the per-GPU batch are derived properties: they follow `--set batch_size=...`."""
    batch_size: AtLeast1 = 256  # 8 GPUs x 32 (Sec. 4.1)
    lr: NonNegative = 5e-4  # AdamW (Sec. 4.1)
    lr_final: NonNegative = 5e-5  # after the drop (Sec. 4.1)
    lr_schedule: Literal["step", "cosine"] = "step"  # "step": lr until lr_drop_step, then lr_final
    #   | "cosine": lr -> lr_final
    max_steps: AtLeast0 = 100 * STEPS_PER_EPOCH  # 100 epochs (Sec. 4.1)
    lr_drop_step: AtLeast0 = 50 * STEPS_PER_EPOCH  # the drop at epoch 50 (Sec. 4.1)
    warmup_steps: AtLeast0 = 5 * STEPS_PER_EPOCH  # linear warm-up, 5 epochs (official code; the paper is silent)
    weight_decay: NonNegative = 1e-2  # official code (the paper is silent)
    grad_clip: NonNegative = 1.0  # max gradient norm, official code (the paper is silent); 0 = off
    amp: bool = True  # fp16 autocast, official code (the paper is silent)
    gpus: AtLeast0 = 8  # RTX 2080 Ti (Sec. 4.1); 0 = not a paper run

    def __post_init__(self):
        check_choices(self)

    @property
    def iters_per_epoch(self):
        """Optimisation steps per pass over FreiHAND's 130,240 training images: 508 at batch 256."""
        return FREIHAND_TRAIN_SAMPLES // self.batch_size

    @property
    def epochs(self):
        return self.max_steps / self.iters_per_epoch  # float: 100.0 for the paper

    @property
    def warmup_epochs(self):
        return self.warmup_steps / self.iters_per_epoch

    @property
    def lr_drop_epoch(self):
        return self.lr_drop_step / self.iters_per_epoch

    @property
    def batch_per_gpu(self):
        """The global batch split over the paper's `gpus` (32 = 256 / 8); None if gpus = 0 or it does not split."""
        if self.gpus and self.batch_size % self.gpus == 0:
            return self.batch_size // self.gpus
        return None


def learning_rate(recipe, step):
    """The learning rate at optimisation step `step` (0-based) of a SimpleHandRecipe: linear warm-up, then "step"
    (Sec. 4.1: lr until lr_drop_step, lr_final after) or "cosine" (lr -> lr_final at max_steps)."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "step":
        return recipe.lr if step < recipe.lr_drop_step else recipe.lr_final
    t = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps))
    return recipe.lr_final + (recipe.lr - recipe.lr_final) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class SimpleHandData:
    """What the data functions read (synthetic.hand_dataset) besides the model's image_size."""
    train_augment: Literal["default", "official"] = "official"  # real training data (FreiHAND, .npz): the
    #   official code's augmentation (data.HAND_AUGMENTS; NOTE S7) | data.AugmentConfig()'s
    eval_crop: Literal["none", "keypoints"] = "none"  # FreiHAND test images as they are | "keypoints": the
    #   official re-crop (data.py)

    def __post_init__(self):
        check_choices(self)


@dataclass
class SimpleHandPreset:
    """A preset: the model config, the official code's behaviours it keeps, the recipe and the data."""
    model: SimpleHandConfig = dataclasses.field(default_factory=SimpleHandConfig)
    variant: SimpleHandVariant = dataclasses.field(default_factory=SimpleHandVariant)
    recipe: SimpleHandRecipe = dataclasses.field(default_factory=SimpleHandRecipe)
    data: SimpleHandData = dataclasses.field(default_factory=SimpleHandData)


PAPER = SimpleHandPreset()  # HRNet-W64, stride-8 feature used directly (Sec. 4.1); decoder 1.55M params (NOTE S12)
PAPER_FASTVIT = SimpleHandPreset(SimpleHandConfig(  # FastViT-MA36 + 4x deconvolution (Sec. 3.3); decoder 6.54M params
    backbone="fastvit_ma36", feature_channels=1216, feature_stride=32, global_channels=1216,
    timm_out_indices=(), feature_upsample=4))
TINY = SimpleHandPreset(  # 0.57M params (0.28M outside the backbone); train.py's CPU demo
    SimpleHandConfig(
        backbone="tiny_cnn", image_size=96, feature_channels=64, feature_stride=8, global_channels=128,
        timm_out_indices=(), pretrained_backbone=False,  # written here: no ImageNet weights exist
        token_channels=64,  # = feature_channels: no projection, no BatchNorm
        # Tables 6-7 scaled down for two CPU cores (docs/simplehand.md): cheaper steps, so more of them fit
        num_tokens=(21, 84, 168), dims=(96, 48, 24), mlp_ratio=2.0,
        num_heads=2,  # CPU attention costs more with narrower heads (docs/simplehand.md)
        dropout=0.0),  # deterministic steps: two DDP ranks match one process exactly
    recipe=SimpleHandRecipe(batch_size=32, lr=2e-3, lr_final=2e-5, lr_schedule="cosine", lr_drop_step=0,
                            warmup_steps=100, max_steps=6000, weight_decay=1e-2, grad_clip=1.0, amp=False,
                            gpus=0),  # not a paper run
    data=SimpleHandData(train_augment="default"))  # real data: data.AugmentConfig() (synthetic sets are rendered
#   once, unaugmented)

# NOTE S6: the official code's recipe: 200 "epochs" of 256 iterations, the drop at 100; apply with
# `dataclasses.replace(PAPER, recipe=dataclasses.replace(PAPER.recipe, **OFFICIAL_CODE_RECIPE))`.
OFFICIAL_CODE_RECIPE = dict(
    max_steps=200 * 256, lr_drop_step=100 * 256, warmup_steps=5 * 256,
    weight_decay=1e-2, grad_clip=1.0, amp=True)

# The official code's HandNet (simpleHand cfg.py, hand_net.py): paper_fastvit's network (the same
# state-dict shapes, so the released epoch_200_rerun* weights load: `load_official`) with the
# official behaviours, and the official code's recipe. 49.39M params (6.54M outside the backbone; the
# official 50.61M count timm's 1000-class head, which forward_features never uses and we do not build).
OFFICIAL = SimpleHandPreset(
    dataclasses.replace(PAPER_FASTVIT.model, backbone_drop_path=0.2),  # official (cfg.py): timm's drop_path_rate 0.2
    SimpleHandVariant(
        input_norm="bgr_minus_half",  # official (hand_net.py): cv2.imread's BGR, image / 255 - 0.5
        keypoint_activation="none",  # official (hand_net.py): the raw Linear; clamped to the crop where sampled
        subtract_root=False),  # official (hand_net.py): raw outputs, trained towards root-relative targets
    dataclasses.replace(PAPER_FASTVIT.recipe, **OFFICIAL_CODE_RECIPE),
    SimpleHandData(eval_crop="keypoints"))  # official (eval_datataset.py): FreiHAND test images re-cropped around
#   their keypoints


# ---------------------------------------------------------------------------------------------
# Appendix A. Support architecture: the backbones (a small CNN written here; timm's HRNet and FastViT)


def build_backbone(cfg):
    """The config's backbone: images (B, 3, H, W) -> (sampled map X_b, map for the keypoint head)."""
    if cfg.backbone != "tiny_cnn":
        return TimmBackbone(cfg)
    expected = dict(feature_channels=cfg.tiny_widths[2], global_channels=cfg.tiny_widths[3], feature_stride=8)
    for name, value in expected.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"tiny_cnn with tiny_widths={cfg.tiny_widths} gives {name}={value}, "
                             f"but the config declares {getattr(cfg, name)}")
    return TinyCNN(cfg.tiny_widths)


class TinyCNN(nn.Module):
    """A plain 7-convolution network: images (B, 3, H, W) -> (X_b (B, w[2], H/8, W/8), (B, w[3], H/32, W/32)).

    Stands in for HRNet on two CPU cores: the stride-8 map is sampled directly (like HRNet's), the
    stride-32 map feeds the keypoint head. GroupNorm instead of BatchNorm keeps every sample
    independent of its batch, so a step split over DDP ranks equals the same step in one process.
    """

    def __init__(self, widths):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stride8 = nn.Sequential(
            conv_gn_relu(3, w1, 2),  # H/2
            conv_gn_relu(w1, w2, 2), conv_gn_relu(w2, w2, 1),  # H/4
            conv_gn_relu(w2, w3, 2), conv_gn_relu(w3, w3, 1))  # H/8
        self.stride32 = nn.Sequential(conv_gn_relu(w3, w4, 2), conv_gn_relu(w4, w4, 2))  # H/16, H/32

    def forward(self, x):
        feature = self.stride8(x)  # (B, w3, H/8, W/8)
        return feature, self.stride32(feature)  # ..., (B, w4, H/32, W/32)


def conv_gn_relu(c_in, c_out, stride):
    """3x3 convolution -> GroupNorm (8 channels a group) -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.GroupNorm(max(1, c_out // 8), c_out), nn.ReLU(inplace=True))


class TimmBackbone(nn.Module):
    """A timm model: images (B, 3, H, W) -> (sampled map (B, C, h, w), pooled map (B, C_g, h', w')).

    HRNet-W64: `features_only` outputs 2 (stride 8, 256 channels) and 4 (stride 32, 1024 channels),
    computed by `hrnet_features` on a network that `prune_hrnet` has cut to what those two need.
    FastViT-MA36: `forward_features` (stride 32; its `final_conv` widens 608 -> 1216), used for both.
    """

    def __init__(self, cfg):
        super().__init__()
        pretrained = pretrained_weights(cfg)  # refuses before timm is imported
        try:
            import timm
        except ImportError as err:
            raise ImportError(f"backbone {cfg.backbone!r} needs timm (pip install timm); without it, "
                              f"TokenGenerator(cfg) and MeshRegressor(cfg) still build") from err
        self.out_indices = tuple(cfg.timm_out_indices)
        kwargs = dict(pretrained=pretrained is not None)
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = dict(file=pretrained)  # timm reads the local file, no hub
        if cfg.backbone_drop_path:
            kwargs["drop_path_rate"] = cfg.backbone_drop_path
        if self.out_indices:
            self.net = timm.create_model(cfg.backbone, features_only=True, out_indices=self.out_indices, **kwargs)
            got = tuple(self.net.feature_info.channels())
        else:
            self.net = timm.create_model(cfg.backbone, num_classes=0, **kwargs)
            got = (self.net.num_features,) * 2
        if got != (cfg.feature_channels, cfg.global_channels):
            raise ValueError(f"timm {cfg.backbone!r} gives channels {got}, but the config declares "
                             f"feature_channels={cfg.feature_channels}, global_channels={cfg.global_channels}")
        stride = self.net.feature_info.reduction()[0] if self.out_indices else 32
        if stride != cfg.feature_stride:
            raise ValueError(f"timm {cfg.backbone!r} samples a stride-{stride} map, but the config declares "
                             f"feature_stride={cfg.feature_stride}")
        self.hrnet = bool(self.out_indices) and all(hasattr(self.net, a) for a in HRNET_ATTRIBUTES)
        if self.hrnet:
            prune_hrnet(self.net, self.out_indices)

    def forward(self, x):
        if self.hrnet:
            return tuple(hrnet_features(self.net, x, self.out_indices))
        if self.out_indices:
            feature, pooled = self.net(x)
            return feature, pooled
        feature = self.net.forward_features(x)
        return feature, feature


def pretrained_weights(cfg):
    """The ImageNet weights file the backbone starts from (Sec. 4.1), or None with pretrained_backbone=False.

    No model hub is reachable here, so the file must be given; without it this refuses in one line
    that says how to go on (train.py: --set backbone_weights=PATH or --set pretrained_backbone=false).
    """
    if not cfg.pretrained_backbone:
        return None
    if cfg.backbone == "tiny_cnn":
        raise ValueError("backbone 'tiny_cnn' has no ImageNet weights: set pretrained_backbone=false")
    if not cfg.backbone_weights:
        raise ValueError(f"backbone {cfg.backbone!r} starts from ImageNet weights (Sec. 4.1), read from a local "
                         f"file as no model hub is reachable: pass --set backbone_weights=PATH (timm's "
                         f"{cfg.backbone} weights, .pth/.bin/.safetensors), or --set pretrained_backbone=false "
                         f"to train it from scratch")
    if not os.path.isfile(cfg.backbone_weights):
        raise FileNotFoundError(f"backbone_weights={cfg.backbone_weights!r}: no such file (timm's {cfg.backbone} "
                                f"ImageNet weights), or set pretrained_backbone=false")
    return cfg.backbone_weights


# timm's HighResolutionNetFeatures (timm/models/hrnet.py, read at 1.0.x): the stem conv1/bn1/act1
# (feature index 0, stride 2) and conv2/bn2/act2, then layer1, transition1-3 between stage2-4, whose
# last module returns four branches at strides 4, 8, 16, 32; incre_modules[i] widens branch i into
# feature index i + 1 (128, 256, 512, 1024 channels). Its forward widens all four and returns only the
# requested ones, so under DDP the others' parameters never get a gradient and the second step fails
# ("Expected to have finished reduction in the prior iteration").
HRNET_ATTRIBUTES = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "layer1", "transition1", "stage2",
                    "transition2", "stage3", "transition3", "stage4", "incre_modules")


def prune_hrnet(net, out_indices):
    """Delete the parts of timm's HRNet features net whose output `out_indices` throws away, in place.

    Besides the unused incre modules, the LAST module of stage 4 fuses all four branches into four
    outputs (output i sums fuse_layers[i][j](branch j) over j); only the rows of kept branches stay.
    Kept modules keep their names (ModuleDict keys "1", "3"), so state-dict keys do not change.
    """
    rows = [i - 1 for i in out_indices if i >= 1]  # stage-4 branch behind each feature index
    if not rows:
        raise ValueError(f"prune_hrnet: out_indices {out_indices} name no stage output (indices 1-4)")
    last = net.stage4[-1]
    last.fuse_layers = nn.ModuleDict({str(r): last.fuse_layers[r] for r in rows})
    if net.incre_modules is not None:
        net.incre_modules = nn.ModuleDict({str(r): net.incre_modules[r] for r in rows})


def hrnet_features(net, x, out_indices):
    """The maps timm's HighResolutionNetFeatures.forward returns for `out_indices`, from a net cut by
    `prune_hrnet`: images (B, 3, H, W) -> [(B, C_i, H / 2^(i+1), W / 2^(i+1)) for i in out_indices]."""
    stem = net.act1(net.bn1(net.conv1(x)))  # (B, 64, H/2, W/2): feature index 0
    x = net.layer1(net.act2(net.bn2(net.conv2(stem))))  # (B, 256, H/4, W/4)
    # HighResolutionNet.stages: a transition either passes branch i on (Identity) or makes a new
    # branch from the lowest-resolution one; each stage returns one map per branch
    xs = net.stage2([t(x) for t in net.transition1])
    xs = net.stage3([xs[i] if isinstance(t, nn.Identity) else t(xs[-1]) for i, t in enumerate(net.transition2)])
    xs = [xs[i] if isinstance(t, nn.Identity) else t(xs[-1]) for i, t in enumerate(net.transition3)]
    for module in list(net.stage4)[:-1]:
        xs = module(xs)
    last = net.stage4[-1]
    xs = [branch(b) for branch, b in zip(last.branches, xs)]  # the last module, fusing kept rows only
    out = []
    for i in out_indices:
        if i == 0:
            out.append(stem)
            continue
        y = None
        for j, fuse in enumerate(last.fuse_layers[str(i - 1)]):  # Identity for j == i - 1
            y = fuse(xs[j]) if y is None else y + fuse(xs[j])
        y = last.fuse_act(y)  # (B, C_b, H / 2^(i+1), W / 2^(i+1))
        out.append(y if net.incre_modules is None else net.incre_modules[str(i - 1)](y))
    return out


# ---------------------------------------------------------------------------------------------
# Appendix B. Agreement with the official code: its behaviours, state-dict keys and released weights


class ImageNetNormalise(nn.Module):
    """NOTE S4: RGB in [0, 1] (B, 3, H, W) -> (x - mean) / std with ImageNet's statistics (B, 3, H, W), as the
    ImageNet-pretrained timm backbones expect (the paper and the official code feed BGR minus 0.5)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(bodymodels.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(bodymodels.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        return (images - self.mean) / self.std


class BGRMinusHalf(nn.Module):
    """The official network's input: RGB in [0, 1] (B, 3, H, W) -> BGR minus 0.5 (B, 3, H, W)."""

    def forward(self, images):
        # official (simpleHand hand_net.py): image / 255 - 0.5, BGR (cv2.imread's channel order)
        return images.flip(1) - 0.5


def sine_position_encoding(h, w, channels, device=None, dtype=torch.float32, temperature=10000.0):
    """DETR's fixed 2D sine encoding -> (channels, h, w): half the channels encode y, half x.

    Positions 1..h (1..w) are scaled to (0, 2 pi] as p / (h + 1e-6) * 2 pi (DETR's and the official
    position_embedding.py's normalisation); channel pair (2i, 2i+1) holds sin and cos of
    position / temperature^(2i / (channels/2)).
    """
    half = channels // 2
    freq = temperature ** (2 * (torch.arange(half, device=device) // 2) / half)  # (half,)
    ys = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6) * (2 * math.pi)
    xs = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6) * (2 * math.pi)

    def encode(pos):  # (n,) -> (n, half): sin on even channels, cos on odd ones
        angles = pos[:, None] / freq  # (n, half)
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(h, w, half)  # (h, w, half)
    pos_x = encode(xs)[None, :, :].expand(h, w, half)  # (h, w, half)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1).to(dtype)  # (channels, h, w)


class SinePositionEncoding(nn.Module):
    """NOTE S1: the sampled map plus `sine_position_encoding`, (B, C, h, w) -> same: in the official code only
    (models/modules.py MeshHead), where every config has it; no parameters."""

    def forward(self, x):
        return x + sine_position_encoding(x.shape[2], x.shape[3], x.shape[1], x.device, x.dtype)


class RawOutputs(nn.Module):
    """In SimpleHand.root_relative's place: the official HandNet's raw outputs, (verts, joints3d) -> the same."""

    def forward(self, verts, joints3d):
        return verts, joints3d  # official (hand_net.py): the raw vertices and mesh_to_joints


def with_official_behaviours(model, cfg):
    """`model` with the official code's behaviours that the variant `cfg` asks for in place of the method's (in
    place). Modules without parameters: the state-dict keys do not change."""
    if cfg.position_encoding == "sine":  # after the upsample, before the tokens are read
        t = model.token_generator
        t.upsample = nn.Sequential(*([] if isinstance(t.upsample, nn.Identity) else t.upsample), SinePositionEncoding())
    if cfg.keypoint_activation == "none":  # official (hand_net.py): the raw Linear, clamped to the crop where read
        model.token_generator.keypoint_activation = nn.Identity()
    if cfg.input_norm == "bgr_minus_half":
        model.normalise = BGRMinusHalf()
    if not cfg.subtract_root:  # official (hand_net.py): raw outputs, trained towards root-relative targets
        model.root_relative = RawOutputs()
    return model


# The official HandNet's state dict (official simpleHand hand_net.py, models/modules.py) -> ours:
# (pattern at the start of an official key, our prefix); the rest of the key is kept, the first
# pattern that matches wins, {layer} is our mesh_regressor.layers.(k - 1). for the official _k.
OFFICIAL_PREFIXES = (
    (r"backbone\.head\.fc\.", None),  # the 1000-class classifier, which forward_features never reaches
    (r"backbone\.", "backbone.net."),  # timm fastvit_ma36: the same names and shapes in timm 0.9.12 and 1.0
    (r"keypoints_2d_head\.", "token_generator.keypoint_head."),
    (r"mesh_head\.deconv\.", "token_generator.upsample."),  # ConvTranspose2d, BatchNorm2d, ReLU
    (r"mesh_head\.pos_emb_(\d)$", "{layer}pos_embedding"),  # emb_k
    (r"mesh_head\.proj_(\d)\.", "{layer}reduce."),  # P_k
    # nn.MultiheadAttention's in_proj stacks q, k, v as our qkv Linear does; timm Mlp's fc1, fc2
    (r"mesh_head\.encoder_(\d)\.(\d+)\.token_mixer\.in_proj_", r"{layer}blocks.\2.mixer.qkv."),
    (r"mesh_head\.encoder_(\d)\.(\d+)\.token_mixer\.out_proj\.", r"{layer}blocks.\2.mixer.proj."),
    (r"mesh_head\.encoder_(\d)\.(\d+)\.mlp\.fc1\.", r"{layer}blocks.\2.mlp.0."),
    (r"mesh_head\.encoder_(\d)\.(\d+)\.mlp\.fc2\.", r"{layer}blocks.\2.mlp.2."),
    (r"mesh_head\.encoder_(\d)\.(\d+)\.(norm[12])\.", r"{layer}blocks.\2.\3."),
    (r"mesh_head\.upsample_(\d)\.upsample\.", "{layer}upsample."),  # U_k
    (r"mesh_head\.pred_final\.", "mesh_regressor.head."),
)


def official_key(key):
    """Our name for an official HandNet state-dict key, None for a key we drop, False for an unknown one."""
    for pattern, ours in OFFICIAL_PREFIXES:
        m = re.match(pattern, key)
        if m:
            if ours is None:
                return None
            layer = f"mesh_regressor.layers.{int(m.group(1)) - 1}." if "{layer}" in ours else ""
            return m.expand(ours).replace("{layer}", layer) + key[m.end():]
    return False


def official_state_dict(official_sd, j_regressor=None, source="official state dict"):
    """The official HandNet's state dict (`backbone.*`, `keypoints_2d_head.*`, `mesh_head.*`) -> ours.

    Keys are renamed by OFFICIAL_PREFIXES, tensors kept as they are. The official joints use MANO's
    J_regressor, which its state dict does not hold: `j_regressor` (16, 778) is added, by default
    `bodymodels.load_mano()`'s (the real MANO's where HMR_BODY_MODELS points to it). Raises a
    ValueError naming `source` and every key no pattern knows.
    """
    state, unknown = {}, []
    for key, value in official_sd.items():
        name = official_key(key)
        if name is False:
            unknown.append(key)
        elif name is not None:
            state[name] = value
    if unknown:
        raise ValueError(f"{source}: keys that are not the official simpleHand HandNet's: {unknown}")
    state["j_regressor"] = bodymodels.load_mano().J_regressor.float() if j_regressor is None else j_regressor
    return state


RELEASED = "the official simpleHand's released epoch_200_rerun1 or epoch_200_rerun2"  # what load_official reads


def load_official(path, cfg=OFFICIAL):
    """A released official checkpoint (`epoch_200_rerun1` / `epoch_200_rerun2`: a torch.save dict with
    `state_dict`, `optimizer_state_dict`, `scaler_state_dict`) -> the SimpleHand of the preset `cfg` in eval mode.

    Read by `bodymodels.read_checkpoint` (torch.load(weights_only=True): the file cannot run code), loaded
    strictly. The `OFFICIAL` preset gives the official HandNet's outputs.
    """
    state = bodymodels.read_checkpoint(path, RELEASED, container="state_dict")
    model = SimpleHand(dataclasses.replace(cfg.model, pretrained_backbone=False))  # the file holds every weight
    model = with_official_behaviours(model, cfg.variant)
    bodymodels.load_state_strict(model, official_state_dict(state, model.j_regressor, source=path), path)
    return model.eval()
