"""How this project trains, evaluates and ablates GenHMR (genhmr.py, the paper's method).

train.py's stages, each a protocol (train.py's docstring) that maps its dict batches onto genhmr.py's API:
"genhmr_tokenizer" (`TokenizerStage`), "genhmr_backbone" (`BackboneStage`: `PoseRegressor`, HMR2.0's SMPL head on
GenHMR's ViT, which the image stage starts from), "genhmr_prior" (`PriorStage`: `TokenPrior`, the masked transformer
on pose tokens alone) and "genhmr", the image stage (this module: `CONFIGS`, `build_model`, `training_loss`,
`predict`, ...). Then the paper's ablation tables (`ABLATIONS`) with its figures, NOTE G13's variant, the
refinement's alternative step rule, the final evaluation's diagnostics and the parameter table. Where each differs
from the paper: docs/genhmr.md.
"""

import dataclasses
import functools
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import bodymodels
import genhmr
import metrics
from bodymodels import TransformerDecoder  # HMR2.0's SMPL head is HaMeR's head's decoder: shared, in bodymodels

# ---------------------------------------------------------------------------------------------
# The stages' presets: the image stage's (genhmr.PAPER, SMALL, TINY), the tokenizer's, and the two stages between


def _with_recipe(preset, **changes):
    return dataclasses.replace(preset, recipe=dataclasses.replace(preset.recipe, **changes))


CONFIGS = {"paper": genhmr.PAPER, "small": genhmr.SMALL, "tiny": genhmr.TINY}
TOKENIZER_CONFIGS = {"paper": genhmr.TOKENIZER_PAPER, "small": genhmr.TOKENIZER_TINY,  # poses: no image
                     "tiny": genhmr.TOKENIZER_TINY}
# The backbone stage (PoseRegressor) has the image stage's ViT fields and its own recipe. NOTE G23: the paper states
# no initialisation; PAPER's recipe is HMR2.0's (lr 1e-5, weight decay 1e-4, batch 48), its steps a starting point
# (HMR2.0 trains 1M); --set backbone_checkpoint=FILE starts from ViTPose-H or HMR2.0.
BACKBONE_CONFIGS = {"paper": _with_recipe(genhmr.PAPER, lr=1e-5, weight_decay=1e-4, max_steps=100_000),
                    "small": _with_recipe(genhmr.SMALL, max_steps=4000),
                    "tiny": _with_recipe(genhmr.TINY, max_steps=2000)}
# The prior stage (TokenPrior, NOTE G25) builds the image stage's masked transformer (PRIOR_FIELDS) with its own
# recipe, 0 steps by default: PAPER's (the paper trains its transformer with the image from the start) and TINY's,
# whose recipe --set max_steps=2000 on --model genhmr_prior turns on (docs/history.md, "a pose prior stage")
PRIOR_CONFIGS = {"paper": _with_recipe(genhmr.PAPER, max_steps=0), "small": _with_recipe(genhmr.SMALL, max_steps=0),
                 "tiny": _with_recipe(genhmr.TINY, batch_size=128, lr=1e-2, weight_decay=0.3, warmup_steps=100,
                                      pkeep=0.9, max_steps=0)}
# offset_start too: the prior's transformer carries its cross-attention's start offsets into the image stage, so
# an image stage set to other offsets than its prior's would silently train from the prior's
PRIOR_FIELDS = ("d_model", "num_layers", "num_heads", "num_points", "ffn_dim", "feature_scales", "token_head",
                "offset_start")
VIT_FIELDS = ("image_size", "patch_size", "patch_padding", "vit_width", "vit_depth", "vit_heads", "vit_mlp_ratio",
              "conv_stem", "head_hidden")


# ---------------------------------------------------------------------------------------------
# The protocol: the tokenizer stage, then the image stage (this module), the thin layer from train.py's dict batches
# to genhmr.py's classes


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
        return genhmr.PoseTokenizer(cfg.model)

    @staticmethod
    def training_loss(model, batch, cfg, step):
        """Eq. Lvq (`PoseTokenizer.compute_loss`) on the augmented poses (`genhmr.augment_pose`); one forward through
        `model` (DDP or not)."""
        pose = genhmr.augment_pose(batch["smpl_pose"].float(), cfg.recipe)
        return _unwrap(model).compute_loss(model(pose), pose)

    @staticmethod
    @torch.no_grad()
    def predict(model, batch, cfg):
        """Reconstruction through the codebook -> joints3d (B, 24, 3), verts (B, 6890, 3) (SMPL with the sample's
        beta, no translation, global orientation included), ids (B, L), num_codes (B,) = K."""
        model, pose = _unwrap(model), batch["smpl_pose"].float()
        ids = model.tokenize(pose)
        betas = batch.get("smpl_shape", pose.new_zeros(len(pose), genhmr.NUM_BETAS)).float()
        verts, joints = model.body(model.decode_ids(ids), betas)
        num_codes = torch.full((len(ids),), model.quantizer.num_codes, device=ids.device)  # for usage metrics
        return {"joints3d": joints, "verts": verts, "ids": ids, "num_codes": num_codes}


def build_model(cfg, parent=None):
    """train.py's image stage (cfg: a GenHMRPreset). `parent`: the trained TokenPrior of stage "genhmr_prior" (its
    masked transformer is copied and fine-tuned; its parent is the backbone stage's), the trained PoseRegressor of
    stage "genhmr_backbone" (its frozen tokenizer is held as a submodule; its ViT, and TINY's shape/camera head, are
    copied and fine-tuned), or a trained PoseTokenizer alone (the image encoder from scratch, or from
    backbone_checkpoint). The model itself is `genhmr.GenHMR(cfg.model, tokenizer)`, as a copier builds it (NOTE G13's
    variant, gumbel_positions "masked": `VisibleTruthGenHMR`)."""
    if parent is None:
        raise ValueError("GenHMR's image stage needs a trained parent: the stage 'genhmr_prior' (or 'genhmr_backbone' "
                         "or a pose tokenizer); train the stages before it first (a checkpoint is missing)")
    prior = parent if isinstance(parent, TokenPrior) else None
    parent = prior.parent if prior is not None else parent
    regressor = parent if isinstance(parent, PoseRegressor) else None
    tokenizer = regressor.tokenizer if regressor is not None else parent
    if not isinstance(tokenizer, genhmr.PoseTokenizer):
        raise ValueError(f"GenHMR: parent must be a PoseRegressor or a PoseTokenizer, got {type(parent).__name__}")
    if not bool(tokenizer.quantizer.initialised):
        raise ValueError("GenHMR: the parent pose tokenizer was never trained (its codebook is uninitialised)")
    model = (VisibleTruthGenHMR if cfg.model.gumbel_positions == "masked" else genhmr.GenHMR)(cfg.model, tokenizer)
    if regressor is not None:
        for name in VIT_FIELDS:
            if getattr(regressor.cfg, name) != getattr(cfg.model, name):
                raise ValueError(f"GenHMR: the backbone stage's {name}={getattr(regressor.cfg, name)!r} differs from "
                                 f"this config's {getattr(cfg.model, name)!r}; its ViT cannot start this one")
        model.backbone.load_state_dict(regressor.backbone.state_dict())  # copies: fine-tuned here, parent untouched
        if hasattr(regressor, "shape_camera_head"):  # TINY's "mlp" head; HMR2.0's reads beta and camera from its token
            model.shape_camera_head.load_state_dict(regressor.shape_camera_head.state_dict())
    elif cfg.regressor.backbone_checkpoint:
        genhmr.load_backbone(model, cfg.regressor.backbone_checkpoint)
    if prior is not None:
        for name in PRIOR_FIELDS:
            if getattr(prior.cfg, name) != getattr(cfg.model, name):
                raise ValueError(f"GenHMR: the prior stage's {name}={getattr(prior.cfg, name)!r} differs from this "
                                 f"config's {getattr(cfg.model, name)!r}; its masked transformer cannot start this one")
        model.masked_transformer.load_state_dict(prior.masked_transformer.state_dict())
    return model


def training_loss(model, batch, cfg, step):
    """train.py's image stage: `genhmr.training_step` (Y* tokenized on the fly, after any augmentation, masked and
    swapped, the Gumbel temperature of Eq. (5) at the optimiser step, L_total) on a batch of SyntheticBodies keys
    (image, smpl_pose, smpl_shape, joints3d in camera coordinates, joints2d in pixels; data.HMR2Npz's label masks).
    One forward through `model` (DDP or not); no state changes."""
    raw, pose, images = _unwrap(model), batch["smpl_pose"].float(), batch["image"]
    forward = model
    if cfg.model.gumbel_positions == "masked":  # NOTE G13's variant (`VisibleTruthGenHMR`) is told the true codes
        forward = functools.partial(model, true_ids=raw.tokenizer.tokenize(pose))
    joints2d = genhmr.normalise_joints2d(batch["joints2d"].float(), images.shape[-2:])
    return genhmr.training_step(forward, raw.tokenizer, images, pose, dict(batch, joints2d=joints2d), step, cfg)


def joints2d_noise(index, std_px, shape):
    """N(0, std_px^2) noise (B, *shape) in pixels, one generator per sample seeded by its dataset
    index (B,): the same whichever rank or batch evaluates the sample."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(i))) for i in index.reshape(-1)]
    return torch.stack(noise).to(index.device) * std_px


# NOTE G27: the refinement's 2D joints at evaluation. The paper refines towards "2D pose clues from off-the-shelf 2D
# pose detectors such as OpenPose" (its 2D Pose-Guided Refinement); the renders come with none, so `predict` draws
# joints that err as a published detector errs on MPII: a share `miss` of the joints lands anywhere in the crop, the
# rest within an isotropic Gaussian, both fitted to the detector's PCKh at 0.1 and 0.5 head segments
# (recipe.detector_pckh).


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
    """NOTE G27: detector-like 2D joints (B, J, 2) in pixels of the H x W crop from the true ones: N(0, (sigma
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
    """The 2D joints `predict` refines towards, from the labels (NOTE G27): {"refined_": detector-like
    (`detector_joints2d`; the head segment in pixels from the labels' camera: f / depth of the pelvis),
    "refined_oracle_": the labels + `joints2d_noise` (oracle_noise_px)} -> pixels (B, 24, 2), seeded by
    batch["index"]; and the per-joint weights batch["joints2d_weight"] (B, 24) or None."""
    for key in ("index", "K", "joints3d"):
        if key not in batch:
            raise ValueError(f"genhmr_experiments.predict: the batch needs {key!r} (index: the samples' dataset "
                             "indices that seed the 2D joints' errors, data.Indexed adds it; K and joints3d: the "
                             "labels' camera)")
    joints2d, index = batch["joints2d"].float(), batch["index"]
    detected = detector_joints2d(joints2d, head_pixels(batch, body), index, cfg.recipe.detector_pckh,
                                 batch["image"].shape[-2:])
    oracle = joints2d + joints2d_noise(index, cfg.recipe.oracle_noise_px, (genhmr.NUM_JOINTS, 2))
    weights = batch.get("joints2d_weight")  # real data: 0 for the joints without a 2D keypoint
    return {"refined_": detected, "refined_oracle_": oracle}, None if weights is None else weights.float()


@torch.no_grad()
def predict(model, batch, cfg):
    """train.py's image stage: `GenHMR.generate` (cfg.inference, UGS's choice noise seeded by batch["index"]), its
    samples refined (`refine_towards`, Eq. (4)'s eta by cfg.recipe.refine_eta_rule) towards detector-like 2D
    joints (`evaluation_joints2d`) and towards the oracle's -> per-sample tensors: joints3d (B, 24, 3), verts
    (B, 6890, 3) in metres in the labels' camera frame, joints2d (B, 24, 2) pixels, cam_t (B, 3), ids (B, L), betas
    (B, 10); the same refined with prefixes refined_ and refined_oracle_; reproj_error_px and refined_reproj_error_px
    (B,): mean 2D distance to the detected joints; detected_error_px, detected_pckh_01 and detected_pckh_05 (B,): the
    detected joints against the labels."""
    raw, image_hw = _unwrap(model), batch["image"].shape[-2:]
    targets, weights = evaluation_joints2d(batch, cfg, raw.tokenizer.body)
    out = raw.generate(batch["image"], cfg=cfg.inference, seeds=batch["index"])
    refine = REFINEMENTS[cfg.recipe.refine_eta_rule]
    for prefix in ("refined_", "refined_oracle_"):  # the same UGS tokens towards each
        out.update(refine_towards(raw.tokenizer, out, targets[prefix], weights, cfg.inference, image_hw, prefix,
                                  refine))
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


def refine_towards(tokenizer, sampled, joints2d, weights, inference, image_hw, prefix, refine):
    """`GenHMR.refine_towards` by `refine` (`REFINEMENTS`) -> the refined mesh's keys (`genhmr.mesh_outputs`) with
    `prefix`: sampled (ids, betas, cam) refined towards joints2d (B, 24, 2) in pixels of the H x W crop."""
    betas, cam = sampled["betas"], sampled["cam"]
    targets = genhmr.normalise_joints2d(joints2d.float(), image_hw)
    problem = genhmr.refinement_problem(tokenizer, sampled["ids"], betas, cam, targets, inference.refine_reg,
                                        image_hw[0], weights)
    return genhmr.mesh_outputs(tokenizer, tokenizer.decode(refine(*problem, inference)[-1]), betas, cam, image_hw,
                               prefix)


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
    path = cfg.regressor.backbone_checkpoint
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist: expected ViTPose-H's or HMR2.0's "
                                "weights (RegressorConfig.backbone_checkpoint)")


def param_groups(model, cfg):
    """train.py's optimiser groups of the image stage: the image encoder (ViT) at backbone_lr_scale x lr, the
    rest at lr."""
    vit = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [(1.0, [p for p in trainable if id(p) not in vit]),
            (cfg.recipe.backbone_lr_scale, [p for p in trainable if id(p) in vit])]


class BackboneStage:
    """train.py's stage "genhmr_backbone" (`PoseRegressor`, below): batches as the image stage's."""
    CONFIGS = BACKBONE_CONFIGS
    learning_rate, check_inputs = staticmethod(learning_rate), staticmethod(check_inputs)

    @staticmethod
    def build_model(cfg, parent=None):
        if not isinstance(parent, genhmr.PoseTokenizer):
            raise ValueError("GenHMR's backbone stage starts from the trained pose tokenizer (stage "
                             f"'genhmr_tokenizer'), got {type(parent).__name__}")
        return PoseRegressor(cfg.model, cfg.regressor, parent)

    @staticmethod
    def training_loss(model, batch, cfg, step):
        """HMR2.0's losses on the regressed SMPL: w_theta L_theta + w_beta L_beta + w_3D L_3D + w_2D L_2D
        (`smpl_losses`, the weights of the image stage's SMPL terms)."""
        genhmr.check_pose(batch["smpl_pose"])
        pred = genhmr.smpl_prediction(_unwrap(model).tokenizer.body, **model(batch["image"]))
        joints2d = genhmr.normalise_joints2d(batch["joints2d"].float(), batch["image"].shape[-2:])
        terms = genhmr.smpl_losses(pred, dict(batch, joints2d=joints2d), cfg.model)
        m = cfg.model
        return (m.w_pose * terms["pose"] + m.w_betas * terms["betas"] + m.w_3d * terms["joints3d"]
                + m.w_2d * terms["joints2d"]), terms

    @staticmethod
    @torch.no_grad()
    def predict(model, batch, cfg):
        """-> regression_joints3d (B, 24, 3), regression_verts (B, 6890, 3) in the labels' camera frame."""
        model, image_hw = _unwrap(model), batch["image"].shape[-2:]
        out = model(batch["image"])
        mesh = genhmr.mesh_outputs(model.tokenizer, out["R"], out["betas"], out["cam"], image_hw, "regression_")
        return {key: mesh[key] for key in ("regression_joints3d", "regression_verts")}


# ---------------------------------------------------------------------------------------------
# The backbone stage's model (NOTE G23): GenHMR's ViT with HMR2.0's SMPL head, which the image stage starts from


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
        self.decpose, self.decshape = nn.Linear(width, genhmr.NUM_JOINTS * 6), nn.Linear(width, genhmr.NUM_BETAS)
        self.deccam = nn.Linear(width, 3)
        identity = bodymodels.matrix_to_rot6d(torch.eye(3))
        self.register_buffer("init_body_pose", identity.repeat(1, genhmr.NUM_JOINTS))  # (1, 144)
        self.register_buffer("init_betas", torch.zeros(1, genhmr.NUM_BETAS))
        self.register_buffer("init_cam", torch.tensor([[0.9, 0.0, 0.0]]))

    def forward(self, feature):
        """feature (B, C, h, w) -> R (B, 24, 3, 3), beta (B, 10), cam [s, tx, ty] (B, 3)."""
        B = len(feature)
        context = feature.flatten(2).transpose(1, 2)  # (B, h w, C)
        token = self.transformer(context)[:, 0]  # (B, width): the one query token after the blocks
        pose = self.decpose(token) + self.init_body_pose  # (B, 144)
        betas, cam = self.decshape(token) + self.init_betas, self.deccam(token) + self.init_cam
        return bodymodels.rot6d_to_matrix(pose.view(B, genhmr.NUM_JOINTS, 6)), betas, cam


class PoseRegressor(nn.Module):
    """The backbone stage ("genhmr_backbone"), HMR2.0 here: GenHMR's ViT with a regression head, images ->
    SMPL pose (24 x 6D), beta, camera, trained by HMR2.0's losses; the image stage starts from its ViT.
    The paper's encoder is a ViT-H whose initialisation it does not state; HMR2.0 and TokenHMR start from
    ViTPose-H. `genhmr.load_backbone` reads ViTPose-H or HMR2.0 weights into it (cfg.backbone_checkpoint). The
    frozen pose tokenizer rides along (its SMPL layer poses the predictions) to be handed on.
    NOTE G23: head "hmr2" is HMR2.0's (`HMR2Head`); TINY's "mlp" is flatten -> MLP for the
    pose and GenHMR's pooled shape/camera head, the smallest head that keeps where things are in the map
    (pooling loses it); the image stage starts from that head too. cfg: GenHMRConfig (the ViT); head:
    RegressorConfig."""

    def __init__(self, cfg, head, tokenizer):
        super().__init__()
        self.cfg, self.head, self.tokenizer = cfg, head, tokenizer.eval().requires_grad_(False)
        self.backbone = genhmr.DropPathViT(cfg)
        if head.regressor_head == "hmr2":
            self.smpl_head = HMR2Head(head.hmr2_head, cfg.vit_width)
        else:
            self.shape_camera_head = genhmr.ShapeCameraHead(cfg.vit_width, cfg.head_hidden)
            grid = self.backbone.grid
            self.pose_head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.vit_width * grid[0] * grid[1],
                                                                   head.regressor_hidden),
                                           nn.ReLU(), nn.Linear(head.regressor_hidden, genhmr.NUM_JOINTS * 6))
            nn.init.xavier_uniform_(self.pose_head[-1].weight, gain=0.01), nn.init.zeros_(self.pose_head[-1].bias)
            identity = bodymodels.matrix_to_rot6d(torch.eye(3))
            self.register_buffer("identity6d", identity.repeat(genhmr.NUM_JOINTS, 1))  # (24, 6)
        imagenet = torch.tensor([bodymodels.IMAGENET_MEAN, bodymodels.IMAGENET_STD])[..., None, None]
        self.register_buffer("mean_std", imagenet)  # (2, 3, 1, 1), as GenHMR's
        if head.backbone_checkpoint:
            genhmr.load_backbone(self, head.backbone_checkpoint)

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
            rot6d = self.pose_head(feature).view(-1, genhmr.NUM_JOINTS, 6) + self.identity6d  # residual on rest pose
            R = bodymodels.rot6d_to_matrix(rot6d)
        return {"R": R, "betas": betas, "cam": cam}


# ---------------------------------------------------------------------------------------------
# The prior stage (NOTE G25, not the paper's): the image stage's masked transformer on pose tokens alone


class TokenPrior(nn.Module):
    """NOTE G25: the stage "genhmr_prior", MEGA's pretraining (g-fiche/MEGA pretrain_mega.py,
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
        transformer = genhmr.masked_transformer_class(cfg)
        self.masked_transformer = transformer(cfg, self.num_tokens, self.tokenizer.quantizer.codebook)
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
        genhmr.check_pose(batch["smpl_pose"])
        y_gt = raw.tokenizer.tokenize(batch["smpl_pose"].float())
        y_m, masked = genhmr.corrupt_tokens(y_gt, raw.num_codes, cfg.recipe)
        logits = model(y_m)
        loss = genhmr.token_cross_entropy(logits, y_gt, masked, cfg.model.ce_on).mean()
        return loss, {"mask": loss, "masked_acc": genhmr.masked_accuracy(logits, y_gt, masked)}

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
        ids, _ = genhmr.sample_from_features(model, None, inf.ugs_iterations, inf.schedule, inf.top_k,
                                             choice_temperature=inf.choice_temperature, seeds=batch["index"])
        generated, generated_joints = tok.body(tok.decode_ids(ids), betas)
        return {"prior_joints3d": joints, "prior_verts": verts,
                "prior_generated_verts": generated - generated_joints[:, genhmr.PELVIS:genhmr.PELVIS + 1],
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


# ---------------------------------------------------------------------------------------------
# The paper's ablation tables as train.py --ablation data; NOTE G13's variant; the refinement's alternative step rule


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


class VisibleTruthGenHMR(genhmr.GenHMR):
    """NOTE G13's variant (GenHMRConfig.gumbel_positions "masked"), not the paper's: `GenHMR.forward` with the true
    codes true_ids (B, L) in place of the Gumbel draw at the visible positions of ids (`training_loss` passes them)."""

    def forward(self, images, ids, temperature=1.0, true_ids=None):
        if true_ids is None:
            return super().forward(images, ids, temperature)
        levels, betas, cam = self.encode_image(images)
        logits = self.logits(ids, levels)
        y = genhmr.gumbel_softmax_st(logits, temperature)
        y = torch.where((ids == self.num_codes)[..., None], y, F.one_hot(true_ids, self.num_codes).to(y.dtype))
        R = self.tokenizer.decode(y @ self.tokenizer.quantizer.codebook)
        return {"logits": logits, **genhmr.smpl_prediction(self.tokenizer.body, R, betas, cam)}


@torch.no_grad()
def backtracking_step(objective, e, G, grad, eta, halvings=6):
    """NOTE G18: per sample, the largest of eta, eta / 2, ... (halvings tries) that lowers G, 0 where
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


def backtracking_refine(objective, e, cfg):
    """NOTE G18: `genhmr.refine` with eta per sample by `backtracking_step`, from cfg.refine_lr -> [e_0, ..., e_P]."""
    eta = torch.full((len(e), 1, 1), float(cfg.refine_lr), device=e.device)
    trajectory = [e]
    for _ in range(cfg.refine_iterations):
        G, grad = genhmr.objective_gradient(objective, e)
        step, eta = backtracking_step(objective, e.detach(), G, grad, eta)
        e = e.detach() - step * grad  # Eq. (4) at this step's eta
        trajectory.append(e)
    return trajectory


REFINEMENTS = {"fixed": genhmr.refine, "backtracking": backtracking_refine}  # GenHMRRecipe.refine_eta_rule



# ---------------------------------------------------------------------------------------------
# Diagnostics (not the paper's inference): the report-only tables, the soft readout, context
# accuracy against the neighbour-count yardstick (train.py's final evaluation); parameter counts


TABLE_ITERATIONS = (1, 2, 3, 5, 10)  # UGS T, each under every schedule (Tables 2, 11)
TABLE_REFINE_STEPS = (0, 5, 20)  # refinement steps P after UGS (Table 3)
COUNT_TABLE_MAX_CELLS = 2 ** 26  # the neighbour counts' (L - 1) K^2 int32 cells: TINY 3.1M; none above 268 MB


def diagnostics(model, cfg, train_labels):
    """train.py's final-evaluation pass beside `predict` -> a callable batch -> {key: (B, ...)}: joints3d (B, 24, 3)
    (root-relative) of UGS for every T in TABLE_ITERATIONS x schedule (table_{schedule}_T{T}_joints3d), of
    `soft_readout` (table_soft_T1_joints3d), of refinement after UGS for every P in TABLE_REFINE_STEPS
    (table_refine_P{P}_joints3d), `context_accuracies` with the neighbour counts of train_labels["smpl_pose"]
    (n, 24, 3) tokenized (count_table_accuracy_75, when the table has at most COUNT_TABLE_MAX_CELLS cells),
    `ugs_commits` of UGS at the inference config's T and schedule, and `context_use`."""
    model = _unwrap(model)
    tok, counts = model.tokenizer, neighbour_counts(model, train_labels)

    @torch.no_grad()
    def diagnose(batch):
        inf, image_hw = cfg.inference, batch["image"].shape[-2:]
        levels, betas, cam = model.encode_image(batch["image"])
        ugs = functools.partial(genhmr.sample_from_features, model, levels, top_k=inf.top_k,
                                choice_temperature=inf.choice_temperature, seeds=batch["index"])
        out = context_accuracies(model, levels, batch, counts)
        out.update(context_use(model, levels, betas, batch, inf.choice_temperature))
        out.update(ugs_commits(tok, ugs(inf.ugs_iterations, inf.schedule)[1], betas, batch))
        runs = {(schedule, T): ugs(T, schedule)[0] for schedule in genhmr.SCHEDULES for T in TABLE_ITERATIONS}
        for (schedule, T), ids in runs.items():
            out[f"table_{schedule}_T{T}_joints3d"] = tok.body.joints(tok.decode_ids(ids), betas)
        out["table_soft_T1_joints3d"] = tok.body.joints(soft_readout(model, levels), betas)
        ids = runs.get((inf.schedule, inf.ugs_iterations))
        ids = ugs(inf.ugs_iterations, inf.schedule)[0] if ids is None else ids
        targets, weights = evaluation_joints2d(batch, cfg, tok.body)
        joints2d = targets["refined_"]
        longest = dataclasses.replace(inf, refine_iterations=max(TABLE_REFINE_STEPS))
        targets = genhmr.normalise_joints2d(joints2d, image_hw)
        problem = genhmr.refinement_problem(tok, ids, betas, cam, targets, inf.refine_reg, image_hw[0], weights)
        e = REFINEMENTS[cfg.recipe.refine_eta_rule](*problem, longest)  # every P in one
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


REMASK_ORDERS = ("confidence", "noise", "random", "oracle")  # `context_use`'s UGS re-masking orders


@torch.no_grad()
def context_use(model, levels, betas, batch, choice_temperature, T=5):
    """Why iterating UGS does or does not pay: how much the transformer uses the tokens it is shown. A quarter of
    the L positions is shown (`context_masks(visible=0.25)`), filled with nothing ([MASK]), the true tokens Y*
    (batch["smpl_pose"] tokenized) or the model's own one-pass argmax; the hidden three quarters are predicted in
    one pass. -> per sample (B,): context_{none,true25,own25}_hidden_accuracy (the hidden tokens right),
    context_true25_overruled (the shown true tokens whose own prediction differs: Eq. 1's loss runs over every
    position, so the logits there can overrule what they are given), and (B, 24, 3) root-relative joints
    context_{none,true25,own25}_joints3d (the hidden tokens replaced, the shown ones kept from the one pass: only the
    context's effect differs; `none` is UGS T = 1), and remask_{order}_T{T}_joints3d of UGS T under each of
    REMASK_ORDERS: the least confident first (the paper's, choice temperature 0), MaskGIT's noise (log p plus
    c (1 - t / T) Gumbel, c = choice_temperature), a random order, and an oracle that commits the right tokens
    first (then by confidence). {} for a batch without poses."""
    if "smpl_pose" not in batch:
        return {}
    tok, K = model.tokenizer, model.num_codes
    y = tok.tokenize(batch["smpl_pose"].float())
    hidden = context_masks(batch["index"], y.shape[1], visible=0.25)
    labelled = batch.get("has_smpl_pose", torch.ones(len(y), device=y.device)) > 0
    def share(right, where):
        value = ((right & where).sum(1) / where.sum(1)).float()
        return torch.where(labelled, value, torch.full_like(value, math.nan))
    one_pass = model.logits(torch.full_like(y, K), levels).argmax(-1)  # UGS T = 1
    out = {}
    for name, shown in (("none", torch.full_like(y, K)), ("true25", y), ("own25", one_pass)):
        pred = model.logits(torch.where(hidden, torch.full_like(y, K), shown), levels).argmax(-1)
        out[f"context_{name}_hidden_accuracy"] = share(pred == y, hidden)
        out[f"context_{name}_joints3d"] = tok.body.joints(tok.decode_ids(torch.where(hidden, pred, one_pass)), betas)
        if name == "true25":
            out["context_true25_overruled"] = share(pred != y, ~hidden)
    seeds = batch["index"]
    ugs = functools.partial(genhmr.sample_from_features, model, levels, T, seeds=seeds)
    ranked = functools.partial(ranked_sampling, model, levels, T)
    orders = {"confidence": lambda: ugs(), "noise": lambda: ugs(choice_temperature=choice_temperature),
              "random": lambda: ranked(lambda t, sampled, p: genhmr.gumbel_noise(p.shape, seeds, t, device=p.device)),
              "oracle": lambda: ranked(lambda t, sampled, p: (sampled == y).float() * 2 + p)}  # p <= 1 < 2
    for order, run in orders.items():
        out[f"remask_{order}_T{T}_joints3d"] = tok.body.joints(tok.decode_ids(run()[0]), betas)
    return out


@torch.no_grad()
def ranked_sampling(model, levels, T, rank_by):
    """Not the paper's: `genhmr.sample_from_features` (top-1, cosine schedule) re-masking the lowest of rank_by(t,
    sampled, confidence) (B, L) in place of the confidence (`context_use`'s orders) -> (ids (B, L), history)."""
    L, K = model.num_tokens, model.num_codes
    ids = torch.full((len(levels[0]), L), K, dtype=torch.long, device=levels[0].device)
    masked, history = torch.ones_like(ids, dtype=torch.bool), []
    for t, n in enumerate(genhmr.remask_counts(L, T), 1):
        ids, sampled, confidence = genhmr.sample_masked(model, ids, masked, levels)
        masked = genhmr.least_confident(rank_by(t, sampled, confidence), masked, n)
        history.append((masked.clone(), confidence, ids))
        ids = torch.where(masked, torch.full_like(ids, K), ids)
    return ids, history


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def parameter_table(cfg, tcfg):
    """(part, parameters) at a preset pair (GenHMRPreset, TokenizerPreset), built on the meta device (no body
    model, no weights)."""
    cfg, tcfg = cfg.model, tcfg.model
    with torch.device("meta"):
        m = genhmr.GenHMR(cfg, genhmr.PoseTokenizer(tcfg, body=nn.Module()))
    parts = [("tokenizer.encoder", m.tokenizer.encoder), ("tokenizer.decoder", m.tokenizer.decoder),
             ("backbone (ViT)", m.backbone), ("pyramid", m.pyramid), ("masked_transformer", m.masked_transformer),
             ("shape_camera_head", m.shape_camera_head)]
    rows = [(name, count_parameters(module)) for name, module in parts]
    rows.insert(2, ("tokenizer codebook (buffer, EMA)", tcfg.codebook_size * tcfg.code_dim))
    return rows
