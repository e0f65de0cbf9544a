"""How this project trains, evaluates and ablates SimpleHand; the method, its loss and its configs are simplehand.py's.

1. The presets train.py runs (`CONFIGS`): simplehand.py's, plus what `build_model` puts in them. 2. train.py's
protocol (its docstring): `build_model`, `training_loss`, `predict`, `learning_rate`, `check_inputs`, a thin layer
from the trainer's dict batches onto `SimpleHand` and `compute_loss`. 3. The paper's ablations (Sec. 4.5): Tables 4,
5 and 8's modules in the method's place, `ABLATIONS` with the paper's figures, `REPORTED`. 4. Parameter counts and
stage shapes. train.py, lab/ablate.py, demo.py and lab/bench.py speak to this file; docs/simplehand.md says what each
ablation row builds.
"""

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

import bodymodels
import simplehand
from simplehand import NUM_JOINTS, NUM_VERTS

# ---------------------------------------------------------------------------------------------
# 1. The presets: simplehand.py's, and what build_model builds in them


@dataclass
class SimpleHandBuild:
    """What `build_model` builds besides a preset's network: an ablation row's T or R in the method's place
    (section 3), or the released weights."""
    token_generator: Literal["point", "global", "grid", "point_stride32", "point_two_deconvolutions",
                             "point_enhanced", "coarse_mesh"] = "point"  # T: keypoint-guided point sampling
    #   (Sec. 3.1) | a Table 4-5 row's (TOKEN_GENERATORS)
    mesh_regressor: Literal["decoder", "mlp", "identity_mixer", "no_position_embedding"] = "decoder"  # R: Eq. 1-3
    #   | a Table 4 or 8 row's (MESH_REGRESSORS)
    official_checkpoint: str = ""  # a released epoch_200_rerun* file build_model loads (`simplehand.load_official`)

    def __post_init__(self):
        simplehand.check_choices(self)


@dataclass
class SimpleHandExperiment(simplehand.SimpleHandPreset):
    """A preset of simplehand.py (model, variant, recipe, data) and what build_model builds in it."""
    build: SimpleHandBuild = dataclasses.field(default_factory=SimpleHandBuild)


CONFIGS = {name: SimpleHandExperiment(p.model, p.variant, p.recipe, p.data) for name, p in (
    ("paper", simplehand.PAPER), ("paper_fastvit", simplehand.PAPER_FASTVIT), ("official", simplehand.OFFICIAL),
    ("tiny", simplehand.TINY))}


# ---------------------------------------------------------------------------------------------
# 2. train.py's protocol


@functools.lru_cache(maxsize=1)
def _mano_j_regressor():
    return bodymodels.load_mano().J_regressor.detach().clone().float()  # (16, 778)


def build_model(cfg, parent=None):
    """The SimpleHand of a preset (a name from CONFIGS or a SimpleHandExperiment), with MANO's J_regressor.

    `parent` (the trainer protocol: a trained model of an earlier stage to start from) must be None:
    SimpleHand trains in one stage, its backbone at most from ImageNet weights.
    """
    if parent is not None:
        raise ValueError(f"SimpleHand trains in one stage and starts from no earlier model, "
                         f"but build_model got parent={type(parent).__name__}")
    cfg = _config(cfg)
    if cfg.build.official_checkpoint:  # the released weights replace every initialisation
        if (cfg.build.token_generator, cfg.build.mesh_regressor) != ("point", "decoder"):
            raise ValueError(f"official_checkpoint={cfg.build.official_checkpoint!r} holds the paper's T and R, "
                             f"not token_generator={cfg.build.token_generator!r}, "
                             f"mesh_regressor={cfg.build.mesh_regressor!r}")
        return simplehand.load_official(cfg.build.official_checkpoint, cfg)
    return build_simplehand(cfg, _mano_j_regressor())


def build_simplehand(cfg, j_regressor):
    """The SimpleHand of a preset around `j_regressor` (16, 778): the backbone, then the paper's T and R or an
    ablation row's in their place (section 3), then the official code's behaviours the variant names
    (simplehand.py's appendix B). Randomly initialised, in this order."""
    if cfg.build.token_generator == "coarse_mesh":  # Table 5's coarse mesh adds outputs and a loss term
        model = build_coarse_mesh_hand(cfg, j_regressor)
    else:
        model = simplehand.SimpleHand(cfg.model, j_regressor, simplehand.build_backbone(cfg.model),
                                      build_token_generator(cfg), build_mesh_regressor(cfg))
    return simplehand.with_official_behaviours(model, cfg.variant)


def build_token_generator(cfg):
    """T of a preset: the paper's TokenGenerator, or a Table 4-5 row's (TOKEN_GENERATORS)."""
    return TOKEN_GENERATORS[cfg.build.token_generator](cfg.model)


def build_mesh_regressor(cfg):
    """R of a preset: the paper's decoder or a Table 4 / 8 row's (MESH_REGRESSORS), its first layer reading as
    many tokens as the preset's T gives. num_tokens[0] may be written 21, as Tables 6-7 write it whatever the
    sampling, or as that count."""
    n, model = TOKEN_GENERATORS[cfg.build.token_generator].num_tokens, cfg.model
    if model.num_tokens[0] not in (NUM_JOINTS, n):
        raise ValueError(f"SimpleHandConfig.num_tokens[0]={model.num_tokens[0]} but token_generator="
                         f"{cfg.build.token_generator!r} gives {n} tokens: set num_tokens[0] to {n} (or "
                         f"{NUM_JOINTS}, which follows the token generator)")
    return MESH_REGRESSORS[cfg.build.mesh_regressor](
        dataclasses.replace(model, num_tokens=(n,) + model.num_tokens[1:]))


def check_inputs(cfg, kind, path):
    """train.py's protocol: the files the preset names (the released checkpoint, else the backbone's
    ImageNet weights) must exist, checked before any stage trains; raises in one line as build_model would."""
    if cfg.build.official_checkpoint:
        if not os.path.isfile(cfg.build.official_checkpoint):
            raise FileNotFoundError(f"official_checkpoint={cfg.build.official_checkpoint!r}: no such file "
                                    f"(expected {simplehand.RELEASED})")
    elif cfg.model.backbone != "tiny_cnn":
        simplehand.pretrained_weights(cfg.model)


def _config(cfg):
    """A SimpleHandExperiment, or the one CONFIGS names."""
    if isinstance(cfg, str):
        if cfg not in CONFIGS:
            raise ValueError(f"unknown SimpleHand config {cfg!r}: expected one of {sorted(CONFIGS)}")
        return CONFIGS[cfg]
    return cfg


def learning_rate(cfg, step):
    """train.py's protocol: the preset's recipe's learning rate at step `step` (`simplehand.learning_rate`)."""
    return simplehand.learning_rate(cfg.recipe, step)


def crop_size(images, dtype):
    """(W, H) of a batch of crops (B, 3, H, W) as a tensor: pixels <-> fractions of the crop."""
    H, W = images.shape[-2:]
    return torch.tensor([W, H], dtype=dtype, device=images.device)


def training_loss(model, batch, cfg, step):
    """The trainer protocol's loss: one forward of `model` (possibly a DDP wrapper) on batch["image"], then
    Eq. (7) on data.py's keys joints3d (B, 21, 3), verts (B, 778, 3) (metres, camera coordinates) and joints2d
    (B, 21, 2) (pixels of the crop) -> (total (), unweighted terms {"verts", "joints3d", "joints2d"})."""
    missing = [k for k in ("image", "joints3d", "verts", "joints2d") if k not in batch]
    if missing:
        raise ValueError(f"training_loss: batch lacks keys {missing} (expected data.py's hand sample keys)")
    pred = model(batch["image"])
    wh = crop_size(batch["image"], batch["joints2d"].dtype)
    total, terms = simplehand.compute_loss(pred, batch["verts"], batch["joints3d"], batch["joints2d"] / wh, cfg.model)
    if "coarse2d" in pred:  # Table 5's coarse-mesh row (section 3): its points' Eq. (5) term, weighted as 2D joints
        if "K" not in batch:
            raise ValueError("the coarse-mesh loss needs batch['K'] (B, 3, 3) to project the coarse mesh's "
                             "ground truth")
        coarse_loss = getattr(model, "module", model).coarse_loss
        terms["coarse2d"] = coarse_loss(pred["coarse2d"], batch["verts"], batch["K"], wh)
        total = total + cfg.model.w_joints2d * terms["coarse2d"]
    return total, terms


def predict(model, batch, cfg):
    """The trainer protocol's predictions (call under no_grad, model in eval mode) -> per-sample tensors:
    joints2d (B, 21, 2) in PIXELS of the crop; joints3d (B, 21, 3), verts (B, 778, 3) root-relative metres."""
    out = model(batch["image"])
    # official (infer_to_json.py): joints and vertices minus the predicted joint 9 (the paper configs' outputs
    # already are root-relative: it subtracts zeros)
    root = out["joints3d"][:, cfg.model.root_index:cfg.model.root_index + 1]  # (B, 1, 3)
    return {"joints2d": out["joints2d"] * crop_size(batch["image"], out["joints2d"].dtype),  # -> (u, v) pixels
            "joints3d": out["joints3d"] - root, "verts": out["verts"] - root}


# ---------------------------------------------------------------------------------------------
# 3. The paper's ablations (Sec. 4.5): Tables 4, 5 and 8's alternatives to T and R, ABLATIONS, REPORTED
#
# Each is a module with the forward of the one it replaces; `build_simplehand` puts it in the method's
# place when the preset's `token_generator` / `mesh_regressor` names it (TOKEN_GENERATORS, MESH_REGRESSORS).


GRID_SIZE = 7  # Table 5 "Grid 7x7": a fixed 7 x 7 lattice
COARSE_VERTICES = 195  # FastMETRO's coarse MANO mesh: 195 of the 778 vertices


class GlobalTokens(simplehand.TokenGenerator):
    """Fig. 2a, Table 5 "Global 1x1": one token, the mean of the map the points would be read from ->
    tokens (B, 1, C_t), joints2d (B, 21, 2) (supervised, but no token depends on them)."""

    num_tokens = 1

    def forward(self, feature, pooled):
        joints2d = self.predict_joints2d(pooled)
        return self.upsample(feature).mean(dim=(2, 3)).unsqueeze(1), joints2d  # (B, 1, C_t), (B, 21, 2)


class Stride32Tokens(simplehand.TokenGenerator):
    """Table 5 "Point 7x7" and "Point 14x14": keypoint-guided sampling of the stride-32 map the keypoint head
    pools (Hiera's and FastViT's 7x7 map), through the config's feature_upsample (1: 7x7, 2: 14x14 at 224 px).
    HRNet and tiny otherwise sample their stride-8 map (28x28 at 224 px)."""

    def __init__(self, cfg):
        super().__init__(dataclasses.replace(cfg, feature_channels=cfg.global_channels))  # T of the pooled map

    def forward(self, feature, pooled):
        return super().forward(pooled, pooled)


class GridTokens(Stride32Tokens):
    """Fig. 2b, Table 5 "Grid 7x7": tokens read at a fixed GRID_SIZE x GRID_SIZE lattice over the stride-32
    map, whatever the 2D joints -> tokens (B, 49, C_t), joints2d (B, 21, 2)."""

    num_tokens = GRID_SIZE ** 2

    def __init__(self, cfg):
        super().__init__(cfg)
        g = torch.linspace(0, 1, GRID_SIZE)
        lattice = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # (49, 2), (u, v)
        self.register_buffer("grid_uv", lattice, persistent=False)

    def forward(self, feature, pooled):
        joints2d = self.predict_joints2d(pooled)
        x = self.upsample(pooled)  # (B, C_t, h f, w f)
        return simplehand.sample_points(x, self.grid_uv.to(x.dtype).expand(len(x), -1, -1)), joints2d  # (B, 49, C_t)


class TwoDeconvolutionTokens(Stride32Tokens):
    """Sec. 3.1's "double 2x upsampling" (no figure in Table 5): the stride-32 map through two k = s = 2
    deconvolutions (BN, ReLU) instead of one 4x, whatever the config's feature_upsample."""

    def __init__(self, cfg):
        super().__init__(dataclasses.replace(cfg, feature_upsample=2))  # the first 2x
        self.upsample.extend(simplehand.deconv_bn_relu(cfg.token_channels, cfg.token_channels, 2))  # the second


class EnhancedTokens(simplehand.TokenGenerator):
    """Fig. 2e, Table 5 "Point 28x28 enhanced": the sampled map "further improved by convolution" after the
    upsample. NOTE S9: no layout in the paper; ours: `convs` 3x3 conv-BN-ReLU blocks."""

    def __init__(self, cfg, convs=2):
        super().__init__(cfg)
        c = cfg.token_channels
        layers = [] if isinstance(self.upsample, nn.Identity) else list(self.upsample)
        for _ in range(convs):
            layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*layers)


class CoarseMeshTokens(simplehand.TokenGenerator):
    """Fig. 2f, Table 5 "Coarse mesh 28x28" (FastMETRO): tokens at the 21 2D joints and at the 2D points of
    `vertices` coarse-mesh vertices, which a second Linear predicts from the pooled feature ->
    tokens (B, 21 + N_c, C_t), points (B, 21 + N_c, 2): the 2D joints, then the coarse points."""

    num_tokens = NUM_JOINTS + COARSE_VERTICES

    def __init__(self, cfg, vertices=COARSE_VERTICES):
        super().__init__(cfg)
        self.vertices, self.num_tokens = vertices, NUM_JOINTS + vertices
        self.coarse_head = nn.Linear(cfg.global_channels, vertices * 2)

    def forward(self, feature, pooled):
        pooled_vector = pooled.mean(dim=(2, 3))  # (B, C_g)
        logits = torch.cat([self.keypoint_head(pooled_vector).reshape(len(pooled), NUM_JOINTS, 2),
                            self.coarse_head(pooled_vector).reshape(len(pooled), -1, 2)], 1)  # (B, 21 + N_c, 2)
        points = self.keypoint_activation(logits)
        return simplehand.sample_points(self.upsample(feature), points, clamp=True), points  # (B, 21 + N_c, C_t)


class CoarseMeshHand(simplehand.SimpleHand):
    """SimpleHand with CoarseMeshTokens: also coarse2d (B, N_c, 2), the predicted 2D points of the template's
    vertices `coarse_index`, supervised by Eq. (5) as the 2D joints are (`coarse_loss`). `template` (778, 3):
    MANO's rest vertices, the coarse mesh is chosen from; the parts as SimpleHand's (token_generator given)."""

    def __init__(self, cfg, j_regressor, template, backbone=None, token_generator=None, mesh_regressor=None):
        super().__init__(cfg, j_regressor, backbone, token_generator, mesh_regressor)
        if template is None or tuple(template.shape) != (NUM_VERTS, 3):
            raise ValueError(f"the coarse-mesh model needs MANO's template (778, 3) to pick the coarse mesh from, "
                             f"got {None if template is None else tuple(template.shape)}")
        # NOTE S10: farthest-point sampling of the template for FastMETRO's coarse mesh
        self.register_buffer("coarse_index", farthest_points(template.float(), token_generator.vertices))  # (N_c,)

    def from_features(self, feature, pooled):
        out = super().from_features(feature, pooled)
        points = out["joints2d"]  # (B, 21 + N_c, 2)
        return dict(out, joints2d=points[:, :NUM_JOINTS], coarse2d=points[:, NUM_JOINTS:])

    def coarse_loss(self, coarse2d, verts, K, wh):
        """Eq. (5) on the coarse points: coarse2d (B, N_c, 2) crop fractions against the ground-truth vertices
        (B, 778, 3) projected by K (B, 3, 3), divided by the crop's (W, H) `wh` -> ()."""
        uv = bodymodels.perspective_projection(verts[:, self.coarse_index], K) / wh  # (B, N_c, 2)
        return simplehand.l1_distance(coarse2d, uv)


def build_coarse_mesh_hand(cfg, j_regressor):
    """The coarse-mesh row's model (Table 5) of a preset, its coarse mesh chosen from MANO's template."""
    template = bodymodels.load_mano().v_template.detach().float()  # (778, 3)
    return CoarseMeshHand(cfg.model, j_regressor, template, simplehand.build_backbone(cfg.model),
                          build_token_generator(cfg), build_mesh_regressor(cfg))


def farthest_points(points, n):
    """Farthest-point sampling: points (V, 3) -> (n,) int64 indices, from point 0, each next the
    point farthest from those already chosen. Picks an evenly spread coarse mesh from a template."""
    if not 0 < n <= len(points):
        raise ValueError(f"farthest_points: cannot choose {n} of {len(points)} points")
    chosen, dist = [0], (points - points[0]).norm(dim=1)  # (V,) distance to the nearest chosen point
    for _ in range(n - 1):
        chosen.append(int(dist.argmax()))
        dist = torch.minimum(dist, (points - points[chosen[-1]]).norm(dim=1))
    return torch.tensor(chosen)


class MLPRegressor(nn.Module):
    """Table 4's baseline regressor, "a Multilayer Perceptron": tokens (B, n_0, C_t), flattened ->
    Linear -> GELU -> Linear -> vertices (B, 778, 3).

    NOTE S8: the paper gives no widths; ours has one hidden layer of dims[0].
    """

    def __init__(self, cfg):
        super().__init__()
        hidden = cfg.dims[0]
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(cfg.num_tokens[0] * cfg.token_channels, hidden),
                                                   nn.GELU())])
        self.head = nn.Linear(hidden, NUM_VERTS * 3)

    def forward(self, x):
        return self.head(self.layers[0](x.flatten(1))).view(-1, NUM_VERTS, 3)  # (B, 778, 3)


class MixerFreeBlock(nn.Module):
    """Table 8 "Identity mixer": MF_k without its token-mixing branch, x + MLP(LN(x)): tokens never see each
    other. The signature of MetaFormerBlock (num_heads unused)."""

    def __init__(self, dim, num_heads, mlp_ratio, dropout):
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (B, N, c) -> (B, N, c)
        return x + simplehand.drop_path(self.mlp(self.norm(x)), self.dropout, self.training)


class LayerWithoutPositionEmbedding(nn.Module):
    """Table 8 "w/o position emb": H_k without Eq. (3)'s emb_k, (B, n_in, c_in) -> (B, n_out, c). The
    signature of DecoderLayer."""

    def __init__(self, n_in, n_out, c_in, c, depth, cfg, block=simplehand.MetaFormerBlock):
        super().__init__()
        self.reduce = nn.Linear(c_in, c)  # P_k
        self.blocks = nn.Sequential(*[block(c, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(depth)])
        self.upsample = nn.Linear(n_in, n_out)  # U_k

    def forward(self, x):
        x = self.blocks(self.reduce(x))  # Eq. (2) alone: (B, n_in, c)
        return self.upsample(x.transpose(1, 2)).transpose(1, 2)  # (B, n_out, c)


# What a preset's `token_generator` / `mesh_regressor` names: the paper's module first
TOKEN_GENERATORS = {
    "point": simplehand.TokenGenerator,  # Fig. 2d: keypoint-guided point sampling (the paper's)
    "global": GlobalTokens,  # Fig. 2a
    "grid": GridTokens,  # Fig. 2b
    "point_stride32": Stride32Tokens,  # Table 5's Point 7x7 and 14x14
    "point_two_deconvolutions": TwoDeconvolutionTokens,  # Sec. 3.1's double 2x upsampling
    "point_enhanced": EnhancedTokens,  # Fig. 2e
    "coarse_mesh": CoarseMeshTokens,  # Fig. 2f (its model: CoarseMeshHand)
}
MESH_REGRESSORS = {
    "decoder": simplehand.MeshRegressor,  # Eq. 1-3 (the paper's)
    "mlp": MLPRegressor,  # Table 4's baseline
    "identity_mixer": functools.partial(simplehand.MeshRegressor, block=MixerFreeBlock),  # Table 8
    "no_position_embedding": functools.partial(simplehand.MeshRegressor,
                                               layer=LayerWithoutPositionEmbedding),  # Table 8
}


# The paper's ablations (Sec. 4.5, Tables 4-8; Hiera-tiny on FreiHAND), as data for train.py's
# `--ablation tableN`: each row's config overrides on top of the chosen config (TINY by default),
# the paper's PA-MPJPE / PA-MPVPE in mm beside it. A row changes what the paper's row changes (a module
# above, or the decoder's sizes); the row the paper chose is the config's own. At TINY and PAPER (HRNet)
# the sampled map is stride 8 (Table 5's 28x28); "point_stride32" reads the stride-32 one (7x7, 14x14 after 2x).
_COLUMNS = (("pa_mpjpe_mm", "PA-MPJPE (mm), FreiHAND"), ("pa_mpvpe_mm", "PA-MPVPE (mm), FreiHAND"))
_DIMS = (256, 128, 64)  # Table 7's best
ABLATIONS = {
    "table4": dict(
        caption="Token generator and mesh regressor against a simple baseline (Table 4)",
        columns=_COLUMNS,
        rows=(("Simple Baseline (global feature, MLP)", {"token_generator": "global", "mesh_regressor": "mlp"},
               (6.9, 7.2)),
              ("+ mesh regressor", {"token_generator": "global"}, (6.5, 6.8)),
              ("+ token generator", {"mesh_regressor": "mlp"}, (6.6, 7.1)),
              ("+ both", {}, (6.2, 6.5))),
        chosen="+ both"),
    "table5": dict(
        caption="Token generator: sampling and resolution of the sampled map (Table 5)",
        columns=_COLUMNS,
        rows=(("Global 1x1", {"token_generator": "global"}, (6.5, 6.8)),
              ("Grid 7x7", {"token_generator": "grid"}, (6.3, 6.6)),
              ("Point 7x7", {"token_generator": "point_stride32"}, (6.3, 6.6)),
              ("Point 14x14", {"token_generator": "point_stride32", "feature_upsample": 2}, (6.3, 6.6)),
              ("Point 28x28", {}, (6.2, 6.5)),
              ("Point 28x28 enhanced", {"token_generator": "point_enhanced"}, (6.2, 6.5)),
              # Sec. 3.1 names it beside "enhanced" ("performance remains consistent"), Table 5 gives no figure
              ("Point 28x28, two 2x deconvolutions (text only)", {"token_generator": "point_two_deconvolutions"},
               (None, None)),
              ("Coarse mesh 28x28", {"token_generator": "coarse_mesh"}, (6.2, 6.5))),
        chosen="Point 28x28"),
    "table6": dict(
        caption="Decoder layers and their token numbers (Table 6; widths: Table 7's best, halved per layer)",
        columns=_COLUMNS,
        rows=tuple((f"{len(n)} {list(n)}", {"num_tokens": n, "dims": (_DIMS + (32,))[:len(n)], "depths": (1,) * len(n)},
                    paper) for n, paper in (((21,), (6.6, 7.1)), ((21, 256), (6.3, 6.6)), ((21, 384), (6.3, 6.6)),
                                            ((21, 256, 384), (6.2, 6.5)), ((21, 84, 336), (6.2, 6.5)),
                                            ((21, 128, 256, 384), (6.2, 6.5)), ((21, 63, 126, 252), (6.3, 6.6)))),
        chosen="3 [21, 84, 336]"),
    "table7": dict(
        caption="Decoder widths and blocks per layer (Table 7)",
        columns=_COLUMNS,
        rows=(("dims 64, 32, 16", {"dims": (64, 32, 16)}, (6.5, 6.9)),
              ("dims 128, 64, 32", {"dims": (128, 64, 32)}, (6.3, 6.6)),
              ("dims 256, 128, 64 (blocks 1, 1, 1)", {"dims": _DIMS}, (6.2, 6.5)),
              ("dims 512, 256, 12 (sic: read 128)", {"dims": (512, 256, 128)}, (6.2, 6.5)),
              ("dims 1024, 512, 256", {"dims": (1024, 512, 256)}, (6.4, 6.7)),
              ("blocks 2, 2, 2", {"dims": _DIMS, "depths": (2, 2, 2)}, (6.2, 6.6)),
              ("blocks 3, 3, 3", {"dims": _DIMS, "depths": (3, 3, 3)}, (6.3, 6.6))),
        chosen="dims 256, 128, 64 (blocks 1, 1, 1)"),
    "table8": dict(
        caption="Token mixer and position embedding (Table 8)",
        columns=_COLUMNS,
        rows=(("hiera-tiny sota", {}, (6.2, 6.5)),
              ("Identity mixer", {"mesh_regressor": "identity_mixer"}, (6.3, 6.6)),
              ("w/o position emb", {"mesh_regressor": "no_position_embedding"}, (6.3, 6.6))),
        chosen="hiera-tiny sota"),
}

# The paper's reported figures for its presets (Sec. 4.1, Table 1): training hours ("11 hours with HRNet",
# "7 hours training with FastViT-MA36" on 8 RTX 2080 Ti), FPS at batch 1 on an RTX 2080 Ti without TensorRT,
# and FreiHAND PA-MPJPE (mm). `official` is paper_fastvit's network; `tiny` is not a paper run.
REPORTED = {"paper": dict(hours=11.0, fps=33.0, pa_mpjpe_mm=5.8),
            "paper_fastvit": dict(hours=7.0, fps=70.0, pa_mpjpe_mm=5.7),
            "official": dict(hours=7.0, fps=70.0, pa_mpjpe_mm=5.7)}


# ---------------------------------------------------------------------------------------------
# 4. Parameter counts (Table 2's "#Params") and stage shapes


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def non_backbone_parameters(cfg):
    """Parameters of token generator + mesh regressor of a preset (Table 2's "#Params"), built on the meta device."""
    with torch.device("meta"):
        return count_parameters(build_token_generator(cfg)) + count_parameters(build_mesh_regressor(cfg))


def describe(model, images):
    """Run the model once and list (stage name, output shape) for every stage, in order."""
    rows = [("images", tuple(images.shape))]
    stages = [("backbone", model.backbone), ("token_generator", model.token_generator)]
    stages += [(f"mesh_regressor.layers[{k}]", m) for k, m in enumerate(model.mesh_regressor.layers)]
    stages += [("mesh_regressor.head", model.mesh_regressor.head)]

    def hook(name):
        def record(module, args, out):
            outs = out if isinstance(out, tuple) else (out,)
            rows.append((name, tuple(tuple(o.shape) for o in outs) if len(outs) > 1 else tuple(out.shape)))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in stages]
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        for h in handles:
            h.remove()
    return rows + [(f"output {k}", tuple(v.shape)) for k, v in out.items()]
