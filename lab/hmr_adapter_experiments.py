"""How this project trains, evaluates and ablates HMR-Adapter (hmr_adapter.py, the paper's reference): the
experiment around the method, as nanoGPT's train.py is around its model.py.

1. train.py's protocol for the adapters (stage "hmr_adapter"): `CONFIGS`, `build_model`, `training_loss`,
   `predict` (Table 3's hand path at the true boxes and Table 1's pipelines), `learning_rate`, `param_groups`.
2. The bases' stage ("hmr_adapter_bases", `BASES`): the paper's released bases, or tiny stand-ins trained here on
   HaMeR's and SMPLer-X's own losses (`bases_loss`), with TINY's keypoint head (NOTE H17).
3. The paper's ablations (Tables 3-6): the other ways a row trains in an adapter's place, a row's model
   (`AblationRow`), the rows with the paper's figures (`ABLATIONS`, run by lab/ablate.py).
4. Parameter counts at the paper's size (`parameter_table`, lab/bench.py --params).
Where this differs from the paper (NOTE N) and what was measured: docs/hmr_adapter.md.
"""

import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import hmr_adapter as ha
import metrics
from bodymodels import axis_angle_to_matrix, matrix_to_rot6d, mirror_rotation, rot6d_to_matrix
from hmr_adapter import MCP, NUM_BODY, SIDES

CONFIGS = {"paper": ha.PAPER, "tiny": ha.TINY}  # the adapters' presets
BASE_CONFIGS = {"paper": ha.BASES_PAPER, "tiny": ha.BASES_TINY}  # the bases'


# ---------------------------------------------------------------------------------------------
# 1. train.py's protocol (train.py's docstring) for the adapters: its dict batches (data.py's whole-body keys) onto
#    hmr_adapter's tensors


def learning_rate(cfg, step):
    """Linear warm-up, then cosine decay to 0 at max_steps (NOTE H10)."""
    r = cfg.recipe
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = (step - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps)
    return r.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def build_model(cfg, parent):
    """The adapters on `parent`, the trained `Bases` (train.py's "hmr_adapter_bases" row): `HMRAdapter`, or for
    an ablation row (cfg.model.hand_method / body_method other than "adapter") `AblationRow`. With the recipe's
    cache_frozen, `frozen_cache` keeps the frozen bases' outputs per training sample."""
    if parent is None:
        raise ValueError("hmr_adapter_experiments.build_model: needs the trained bases (train.py trains "
                         "'hmr_adapter_bases' first); outside train.py: "
                         "hmr_adapter.HMRAdapter(AdapterConfig(), Bases(BaseConfig()))")
    paper = cfg.model.hand_method == cfg.model.body_method == "adapter"
    model = ((WithControl if cfg.recipe.control else ha.HMRAdapter) if paper else AblationRow)(cfg.model, parent)
    model.frozen_cache = {} if cfg.recipe.cache_frozen else None  # sample index -> `frozen_inputs` row
    return model


def gt_boxes(batch):
    return sides(batch, "hand_box")  # (B, 2, 4) the true hand boxes


def sides(batch, key):
    """A batch's left and right hand entries `left_<key>`, `right_<key>` stacked (B, 2, ...)."""
    return torch.stack([batch[f"{s}_{key}"] for s in SIDES], 1)


def targets_of(batch):
    """`compute_loss`'s targets of a batch."""
    return dict(hand_pose=sides(batch, "hand_mano_pose"), hand_joints2d=sides(batch, "hand_joints2d"),
                smplx_pose=batch["smplx_pose"], joints3d=batch["joints3d"], joints2d=batch["joints2d"])


@torch.no_grad()
def cached_frozen_inputs(model, batch):
    """`HMRAdapter.frozen_inputs` at a batch's true boxes. With the model's `frozen_cache` each training sample
    (its "index") is computed once, alone, and kept: a row's bits would otherwise depend on its place in the batch
    (BLAS blocks rows), so a resumed run would drift from an uninterrupted one. It also spares the frozen forward,
    much of a tiny step."""
    cache = getattr(model, "frozen_cache", None)
    if cache is None or "index" not in batch:
        return model.frozen_inputs(batch["image"], gt_boxes(batch))
    keys = batch["index"].tolist()
    for i, k in enumerate(keys):
        if k not in cache:
            row = model.frozen_inputs(batch["image"][i:i + 1], gt_boxes(batch)[i:i + 1])
            cache[k] = {name: value[0] for name, value in row.items()}
    rows = [cache[k] for k in keys]
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def training_loss(model, batch, cfg, step):
    """`compute_loss` of the model's training pass on a batch (an ablation row: `AblationRow.row_loss`); a
    recipe.hand_only_prob share of the hands gets no body pose. model: the `HMRAdapter` or its DDP wrapper."""
    net = getattr(model, "module", model)
    image = batch["image"]
    front = cached_frozen_inputs(net, batch)
    known = torch.rand(2 * len(image), 1, 1, device=image.device) >= cfg.recipe.hand_only_prob
    pred = model(image, gt_boxes(batch), batch["smplx_pose"], sides(batch, "hand_joints2d"),
                 body_known=known.view(-1, 2), frozen=front)
    if isinstance(net, AblationRow):
        return net.row_loss(pred, batch, cfg.model)
    loss, terms = ha.compute_loss(pred, targets_of(batch), cfg.model)
    if "control" in pred:  # Table 3 No.5 beside the adapters (`WithControl`): Eq. 5 on its hand path
        control, control_terms = ha.hand_path_loss(pred["control"], targets_of(batch), cfg.model)
        loss, terms = loss + control, dict(terms, **{f"control_{k}": v for k, v in control_terms.items()})
    return loss, terms


def hand_meshes(name, pose, betas):
    """{hand_<name>_verts (B, 2, 778, 3), hand_<name>_joints (B, 2, 21, 3)}: the MANO meshes of the hand
    path's poses (2B, 16, 6) and betas (2B, 10), both hands of each sample, left first."""
    verts, joints = ha.mano_mesh(rot6d_to_matrix(pose), betas)
    return {f"hand_{name}_verts": verts.unflatten(0, (-1, 2)), f"hand_{name}_joints": joints.unflatten(0, (-1, 2))}


@torch.no_grad()
def predict(model, batch, cfg):
    """Held-out predictions for metrics.wholebody_metrics: the hand path at the true boxes (like Table 3) of the
    frozen expert and of the adapter (given the true body pose, as in training), as MANO meshes
    {hand_M_verts (B, 2, 778, 3), hand_M_joints (B, 2, 21, 3)}; the pipeline at the predicted boxes (like
    Table 1) of the baseline and the adapted model: {pipe_P_verts (B, 10475, 3), pipe_P_joints (B, 55, 3),
    pipe_P_boxes}, and the adapted one at the true boxes (P = adapted_true_boxes)."""
    image, boxes = batch["image"], gt_boxes(batch)
    baseline = predict_baseline(model.bases, batch, cfg)
    front = dict(tokens=ha.hand_tokens(model.bases, image, boxes).unflatten(0, (-1, 2)))
    hands = model.hand_path(image, front, boxes, batch["smplx_pose"], body_known=None)
    if hands:
        adapter = hand_meshes("adapter", hands["hand_pose"].flatten(0, 1), hands["hand_betas"].flatten(0, 1))
    else:  # a row whose hand path is the frozen expert (Table 3 "HaMeR")
        adapter = {k.replace("_expert_", "_adapter_"): v for k, v in baseline.items() if k.startswith("hand_")}
    if isinstance(model, WithControl):  # Table 3 No.5, trained beside the adapters
        pose, betas, _ = model.control(model.bases.hand_expert.mano_head, front["tokens"].flatten(0, 1), None)
        adapter.update(hand_meshes("control", pose, betas))
    piped, at_true = adapted_pipeline(model, image), adapted_pipeline(model, image, boxes)  # at true boxes: the
    names = ("verts", "joints", "boxes")  # ceiling that better predicted boxes could reach (docs, NOTE H19)
    return {**baseline, **adapter, **{f"pipe_adapted_{k}": v for k, v in zip(names, piped)},
            **{f"pipe_adapted_true_boxes_{k}": v for k, v in zip(names, at_true)}}


def adapted_pipeline(model, image, hand_boxes=None, details=False):
    """`hmr_adapter.pipeline` (adapted) of a model `build_model` built: the paper's, or an ablation row's own
    (`AblationRow.pipeline`). What demo.py runs on a trained checkpoint."""
    if isinstance(model, AblationRow):
        return model.pipeline(image, hand_boxes, details)
    return ha.pipeline(model, image, hand_boxes=hand_boxes, details=details)


@torch.no_grad()
def predict_baseline(bases, batch, cfg=None):
    """`predict`'s figures of the paper's baseline alone (the frozen bases; train.py's protocol for the
    bases' stage): {hand_expert_verts, hand_expert_joints, pipe_baseline_verts, pipe_baseline_joints,
    pipe_baseline_boxes}, and where the batch has the hands' own images (`own_hand_crops`), the expert on them:
    hand_expert_own_* on its own hands (the domain it was trained on, scored against their own labels) and
    hand_expert_own_target_* on these people's hands drawn the same way (the gap's pose part, docs/hmr_adapter.md)."""
    pose, betas, _ = bases.hand_expert.mano_head(ha.hand_tokens(bases, batch["image"], gt_boxes(batch)))
    piped = ha.baseline_pipeline(bases, batch["image"])
    own = {}
    for name, key in (("expert_own", "hand_image"), ("expert_own_target", "hand_target_image")):
        crops = own_hand_crops(batch, key)
        if crops is not None:
            own.update(hand_meshes(name, *bases.hand_expert.mano_head(bases.hand_expert.features(crops))[:2]))
    return dict(hand_meshes("expert", pose, betas), **own,
                **dict(zip(("pipe_baseline_verts", "pipe_baseline_joints", "pipe_baseline_boxes"), piped)))


def check_inputs(cfg, kind, path):
    """Before any stage trains: Table 1's face and hand vertex ids ($HMR_FLAME_VERTEX_IDS,
    $HMR_MANO_SMPLX_VERTEX_IDS) must read. Raises in one line naming the variable."""
    metrics.face_vertex_ids(), metrics.hand_vertex_ids()


def param_groups(model, cfg):
    """The optimiser's groups: the hand adapter (and `WithControl`'s control) at lr, the body adapter at body_lr."""
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    control = trainable(model.control) if isinstance(model, WithControl) else []
    return [(1.0, trainable(model.hand_adapter) + control),
            (cfg.recipe.body_lr / cfg.recipe.lr, trainable(model.body_adapter))]


# ---------------------------------------------------------------------------------------------
# 2. The bases' stage (train.py's "hmr_adapter_bases"): the released bases, or tiny stand-ins trained here on
#    HaMeR's and SMPLer-X's own losses


class KeypointHead(nn.Module):
    """NOTE H17 (TINY only): ViTPose's simple decoder on the expert's tokens (B, h w, C): two 4 x 4 stride-2
    deconvolutions (BatchNorm, ReLU) and a 1 x 1 convolution to 21 maps of 4h x 4w, read by a soft-argmax -> the 21
    2D keypoints (B, 21, 2) in the crop's [-0.5, 0.5] frame (`to_crop`), the ViT reading the crop's centre columns.
    cfg: a BaseConfig; c: the head's width; grid: the expert ViT's (h, w)."""

    def __init__(self, cfg, c, grid):
        super().__init__()
        self.crop, self.grid = cfg.hand_crop, grid
        self.net = nn.Sequential(nn.ConvTranspose2d(cfg.hand_width, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.ConvTranspose2d(c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.Conv2d(c, 21, 1).to(memory_format=torch.channels_last))  # as PositionNet's

    def forward(self, tokens):
        maps = self.net(tokens.transpose(1, 2).unflatten(2, self.grid))  # (B, 21, 4h, 4w)
        p = torch.softmax(maps.flatten(2), -1).view_as(maps)
        H, W = maps.shape[-2:]
        margin = self.crop // 8  # the columns `HandExpert.features` drops each side
        x = (p.sum(-2) * (torch.arange(W, device=p.device) + 0.5)).sum(-1) * (self.crop - 2 * margin) / W + margin
        y = (p.sum(-1) * (torch.arange(H, device=p.device) + 0.5)).sum(-1) * self.crop / H
        return torch.stack([x, y], -1) / self.crop - 0.5


class StandInBases(ha.Bases):
    """`Bases` as the bases' stage builds them: the paper's (released weights, 0 steps) or the tiny stand-ins trained
    here, with (TINY, NOTE H17) a keypoint head on the expert's tokens whose keys stay outside `HandExpert`'s (HaMeR's).
    `forward` gives what their training loss (`bases_loss`) reads."""

    def __init__(self, cfg, keypoint_channels=0):
        super().__init__(cfg)
        self.hand_keypoints = (KeypointHead(cfg, keypoint_channels, self.hand_expert.backbone.grid) if keypoint_channels
                               else None)

    def forward(self, image, hand_boxes, hand_crops=None):
        """Both bases on images (B, 3, H, W) and the true hand boxes (B, 2, 4): the hand expert's (pose, betas,
        cam) of both hands' crops (2B, ...), left first, `whole_body_outputs`, and the keypoint head's 2D keypoints
        (2B, 21, 2) (None without one). hand_crops (2B, 3, S, S): the expert's own images instead of crops of the
        body image (`own_hand_crops`)."""
        if hand_crops is None:
            hand_crops = ha.hand_crops(self.cfg, image, hand_boxes)
        tokens = self.hand_expert.features(hand_crops)
        keypoints = self.hand_keypoints(tokens) if self.hand_keypoints is not None else None
        return (self.hand_expert.mano_head(tokens), whole_body_outputs(self.whole_body, self.cfg, image, hand_boxes),
                keypoints)


def own_hand_crops(batch, key="hand_image"):
    """The hand expert's own images of a batch's hands (`WholeBodyData.hand_image`: a hand dataset's, rendered
    alone; key "hand_target_image": these people's own hands drawn the same way), as its crops (2B, 3, S, S), left
    first and flipped (`hmr_adapter.hand_crops`); None without them."""
    if f"left_{key}" not in batch:
        return None
    images = sides(batch, key)  # (B, 2, 3, S, S)
    return torch.stack([images[:, 0].flip(-1), images[:, 1]], 1).flatten(0, 1)


def build_bases(cfg):
    """The bases of a `BasesPreset` as the bases' stage trains and checkpoints them (untrained)."""
    return StandInBases(cfg.model, cfg.recipe.hand_keypoint_channels)


SMPLERX_TERMS = ("joints_img", "boxes", "shape", "face", "hand_joints_img")  # SMPLer-X's terms besides Eq. 7's


def whole_body_outputs(whole_body, bcfg, image, hand_boxes):
    """A whole-body model's outputs on images (B, 3, H, W) with its 20 hand joints `hand_joints` (B, 2, 20, 3)
    in the RoIs of the true hand boxes (B, 2, 4): what `whole_body_loss` reads."""
    out = whole_body(image)
    boxes = ha.scale_boxes(hand_boxes, bcfg.hand_box_scale)  # the RoI boxes
    out["hand_joints"] = whole_body.hands(out["feature_map"], boxes, image.shape[-2:])[1]
    return out


def whole_body_loss(out, bcfg, batch, weights):
    """SMPLer-X's training loss of a whole-body model's outputs (`whole_body_outputs`; its L1 terms): Eq. 7's
    (`body_pose_loss`, with the weights, an AdapterConfig) -> (that loss, terms), the terms holding SMPLERX_TERMS
    too, each weight 1."""
    image = batch["image"]
    boxes = ha.scale_boxes(gt_boxes(batch), bcfg.hand_box_scale)  # the RoI boxes
    body, terms = ha.body_pose_loss(out["theta0"], out["shape"], out["cam"], batch, image.shape[-2:], weights)
    H, W = image.shape[-2:]
    (h, w), D = out["feature_map"].shape[-2:], bcfg.body_hm_depth
    # L_img: the position net's body joints (heatmap pixels and depth bins, SMPLer-X's joint_img)
    xy = batch["joints2d"][:, :NUM_BODY] * batch["joints2d"].new_tensor([w / W, h / H])
    z = batch["joints3d"][:, :NUM_BODY, 2] - batch["joints3d"][:, :1, 2]  # pelvis-relative depth, +-1 m
    joints_img = (out["body_joints"][:, :NUM_BODY]
                  - torch.cat([xy, ((z + 1) / 2 * D - 0.5)[..., None]], -1)).abs().mean()
    # the hand boxes' centres and sizes (w, h) in body-map units
    unit = out["boxes"].new_tensor([w / W, h / H]).repeat(2)
    centre_size = lambda b: (  # noqa: E731
        torch.cat([b[..., :2] + b[..., 2:], 2 * (b[..., 2:] - b[..., :2])], -1) * unit / 2)
    terms.update(joints_img=joints_img, boxes=(centre_size(out["boxes"]) - centre_size(gt_boxes(batch))).abs().mean(),
                 shape=(out["shape"] - batch["smplx_shape"]).abs().mean(),
                 face=(out["expression"] - batch["smplx_expression"]).abs().mean() +
                 (rot6d_to_matrix(out["jaw"]) - axis_angle_to_matrix(batch["smplx_pose"][:, 22])).abs().mean())
    # the hand position net's 20 joints in the RoI frame (x, y; depth bins of +-0.15 m)
    hand_joints = out["hand_joints"]
    R, D = bcfg.hand_roi, bcfg.hand_hm_depth
    kp = sides(batch, "hand_joints2d").flatten(0, 1)[:, list(ha.HAND_JOINTS)]
    xy = ha.to_roi(kp, boxes.flatten(0, 1), R, ha.flip_pattern(len(boxes), boxes.device))
    j3 = sides(batch, "hand_joints3d").flatten(0, 1)
    z = (j3[:, list(ha.HAND_JOINTS), 2] - j3[:, :1, 2]) / 0.15
    terms["hand_joints_img"] = (hand_joints.flatten(0, 1)
                                - torch.cat([xy, ((z + 1) / 2 * D - 0.5)[..., None]], -1)).abs().mean()
    return body, terms


def bases_loss(pred, batch, bcfg, weights, recipe):
    """The bases' training loss of their outputs `pred` (`StandInBases.forward`): HaMeR's and SMPLer-X's losses are
    Eqs. 5 and 7's terms with the weights (an AdapterConfig: the recipe's `losses` preset); Eq. 7 with its finger
    term (SMPLer-X supervises its whole-body joints, fingers included), plus SMPLERX_TERMS, and (TINY, NOTE H17) the
    keypoint head's term with the recipe's (a BasesRecipe) weights -> (loss, terms)."""
    hand_out, out, keypoints = pred
    # the expert's images: its own (a hand dataset's hands, with their own labels), else its crops of the body image
    if "left_hand_image" in batch:
        target = ha.hand_targets(sides(batch, "hand_image_mano_pose"), sides(batch, "hand_image_joints2d"),
                                 sides(batch, "hand_image_box"))
    else:
        target = ha.hand_targets(sides(batch, "hand_mano_pose"), sides(batch, "hand_joints2d"),
                                 ha.crop_boxes(bcfg, gt_boxes(batch)))
    hand_weights = dataclasses.replace(weights, w_hand_pose=recipe.w_expert_hand_pose or weights.w_hand_pose)
    hand, hand_terms = ha.hand_loss(hand_out, target, hand_weights)
    if keypoints is not None:  # TINY's keypoint head (`KeypointHead`): L1 in the crop's frame
        hand_terms["hand_keypoints"] = (keypoints - target["uv"]).abs().mean()
        hand = hand + recipe.w_hand_keypoints * hand_terms["hand_keypoints"]
    body, terms = whole_body_loss(out, bcfg, batch, weights)
    weight = dict.fromkeys(SMPLERX_TERMS, 1.0) | {"boxes": recipe.w_boxes}  # NOTE H19: SMPLer-X's are all 1
    return hand + body + sum(weight[k] * terms[k] for k in SMPLERX_TERMS), dict(hand_terms, **terms)


class BasesStage:
    """train.py's row "hmr_adapter_bases": the tiny stand-ins of the pretrained bases, trained on HaMeR's and
    SMPLer-X's own losses (`bases_loss`), or (paper) the released weights, checked before the 1.3B parameters are
    built. Both paths "" keep the paper bases' random weights."""
    CONFIGS = BASE_CONFIGS

    @staticmethod
    def build_model(cfg, parent=None):
        ha.released_checkpoints(cfg.weights)  # a missing file fails here, in one line
        bases = build_bases(cfg)
        ha.load_pretrained(bases, cfg.weights)
        return bases

    @staticmethod
    def training_loss(model, batch, cfg, step):
        pred = model(batch["image"], gt_boxes(batch), own_hand_crops(batch))
        return bases_loss(pred, batch, cfg.model, CONFIGS[cfg.recipe.losses].model, cfg.recipe)

    @staticmethod
    def predict(model, batch, cfg):
        return predict_baseline(model, batch, cfg)

    @staticmethod
    def learning_rate(cfg, step):
        return learning_rate(cfg, step)

    @staticmethod
    def check_inputs(cfg, kind, path):
        """The released files the paper bases load (`released_checkpoints`), then the vertex ids their
        evaluation reads (`check_inputs`)."""
        ha.released_checkpoints(cfg.weights)
        check_inputs(cfg, kind, path)


BASES = BasesStage()


# ---------------------------------------------------------------------------------------------
# 3. The paper's ablations (Tables 3-6): the other ways a row trains in an adapter's place (`AdapterConfig.hand_method`,
#    `body_method`), a row's model (`AblationRow`), the rows (`ABLATIONS`)


class ImageAdapter(ha.HandAdapter):
    """Table 3 No.5, the control: the hand adapter with CA' attending to the hand image tokens F^H again,
    Eq. 3's extra capacity without the body's information (no F^B parameters)."""

    def __init__(self, head):
        nn.Module.__init__(self)  # HandAdapter's SA' and CA' without its F^B
        self.sa, self.ca = ha.adapter_copies(head)

    def forward(self, head, hand_tokens, theta_b):
        return self.attend(head, hand_tokens, hand_tokens)  # CA' attends to F^H


class WithControl(ha.HMRAdapter):
    """`HMRAdapter` and, beside it, Table 3 No.5's control (`ImageAdapter`, the hand adapter attending to F^H) on
    the same frozen bases, trained on the same batches (AdapterRecipe.control): one run then holds Table 3's
    frozen expert, No.5 and No.6 (the paper's). The paper's parts are HMRAdapter's, and train as without it."""

    def __init__(self, cfg, bases):
        super().__init__(cfg, bases)
        self.control = ImageAdapter(bases.hand_expert.mano_head)

    def forward(self, image, hand_boxes, smplx_pose, hand_joints2d, body_known=None, frozen=None):
        front = self.frozen_inputs(image, hand_boxes) if frozen is None else frozen
        pred = super().forward(image, hand_boxes, smplx_pose, hand_joints2d, body_known, front)
        pose, betas, cam = self.control(self.bases.hand_expert.mano_head, front["tokens"].flatten(0, 1), None)
        pred["control"] = dict(hand_pose=pose.unflatten(0, (-1, 2)), hand_betas=betas.unflatten(0, (-1, 2)),
                               hand_cam=cam.unflatten(0, (-1, 2)), crop_boxes=pred["crop_boxes"])
        return pred


MIRROR_BODY = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20)  # SMPL-X's 22, L <-> R


def whole_body_chains(body_pose, chain):
    """Table 5's "whole-body pose": theta_b of all 22 body joints (..., 2, 22, 6), left first, instead of the
    arm's (`arm_chains`); the left hand's flipped crop sees the mirrored body, its left and right joints
    swapped (MIRROR_BODY)."""
    R = ha.body_rotations(body_pose, chain)
    return matrix_to_rot6d(torch.stack([mirror_rotation(R[..., list(MIRROR_BODY), :, :], matrix=True), R], -4))


class FrozenHand(nn.Module):
    """Table 3 "HaMeR (pre-trained)": nothing trains in the hand path, the frozen head reads F^H."""

    def forward(self, head, hand_tokens, theta_b):
        return head(hand_tokens)


class FusedHead(nn.Module):
    """The body pose feature merged into the hand image feature F^H before a fine-tuned copy of the
    hand head ("It fine-tunes HaMeR's original decoder head and learns an extra body feature projection
    layer", Table 3 No.4; Table 5's first two rows):
    - "concat" (Hand4Whole [24]): F^B = Linear(theta_b) + E (as the adapter's), appended to F^H as more tokens;
    - "weighted_sum" (PIXIE's moderator [8]): f^B = Linear(theta_b, all joints) is one token's worth; an MLP
      on [mean of F^H, f^B] gives two confidences (softmax) and every image token becomes w_H F^H + w_B f^B.
    NOTE H15: the moderator's input (the mean image token) and widths (C -> C -> 2, ReLU) are ours."""

    def __init__(self, head, joints, how):
        super().__init__()
        self.head, self.how = copy.deepcopy(head).requires_grad_(True), how
        context = head.transformer.transformer.layers[0][1].fn.to_kv.in_features
        if how == "concat":
            self.body_embed = nn.Linear(6, context)
            self.joint_embed = nn.Parameter(torch.zeros(1, joints, context))
            nn.init.trunc_normal_(self.joint_embed, std=0.02)
        else:
            self.body_embed = nn.Linear(joints * 6, context)
            self.moderator = nn.Sequential(nn.Linear(2 * context, context), nn.ReLU(), nn.Linear(context, 2))

    def forward(self, head, hand_tokens, theta_b):
        """As `HandAdapter.forward` (the frozen `head` is not used: this row fine-tunes its own copy)."""
        if self.how == "concat":
            context = torch.cat([hand_tokens, self.body_embed(theta_b) + self.joint_embed], 1)
        else:
            body = self.body_embed(theta_b.flatten(1))  # (B, C)
            w = self.moderator(torch.cat([hand_tokens.mean(1), body], -1)).softmax(-1)  # (B, 2) confidences
            context = w[:, :1, None] * hand_tokens + w[:, 1:, None] * body[:, None]
        return self.head(context)


class TunedHand(nn.Module):
    """Table 3 No.1-3, no body input: "head" fine-tunes a copy of the hand head (No.3), "full" a copy of
    the whole hand expert (No.1), "scratch" trains a new hand expert (No.2). `expert`: the hand expert
    whose backbone gives F^H for this row (None: the frozen one's)."""

    def __init__(self, expert, cfg, how):
        super().__init__()
        if how == "head":
            self.expert, self.head = None, copy.deepcopy(expert.mano_head).requires_grad_(True)
        else:
            self.expert = (ha.HandExpert(cfg) if how == "scratch" else copy.deepcopy(expert)).requires_grad_(True)
            self.head = self.expert.mano_head

    def forward(self, head, hand_tokens, theta_b):
        return self.head(hand_tokens)  # this row's own head; no body input


class FusedRegressor(nn.Module):
    """Table 4 No.4, Table 6's first two rows: the MCP features F^J (the body adapter's 1x1 convolution
    and sampling) merged into the input of a fine-tuned copy of SMPLer-X's body regressor (its body_conv
    and pose readouts; theta_0's inputs: the body task tokens and the 3D body joints):
    - "concat" (Hand4Whole [24]): F^J (flattened) appended to the regressor's input; the readouts' new
      columns start at zero, so the copy starts at theta_0;
    - "weighted_sum" (PIXIE's moderator [8]): f^J = Linear(F^J) of the input's size; an MLP on [input,
      f^J] gives two confidences (softmax) and the readouts read w_0 input + w_J f^J.
    NOTE H15: the paper names the two ways only; these readings (zero columns, the moderator's
    widths input -> body_dim -> 2) are ours. Shape and camera stay the frozen model's."""

    def __init__(self, cfg, regressor, width, how):
        super().__init__()
        self.how = how
        self.proj = nn.Conv2d(width, cfg.body_proj, 1)
        self.token_embed = nn.Parameter(torch.zeros(1, 2 * len(MCP), cfg.body_proj))
        nn.init.trunc_normal_(self.token_embed, std=0.02)
        self.body_conv = copy.deepcopy(regressor.body_conv).requires_grad_(True)
        frozen = (regressor.root_pose_out[0], regressor.body_pose_out[0])
        n_in, n_hand = frozen[0].in_features, 2 * len(MCP) * cfg.body_proj
        if how == "concat":
            self.root_pose_out, self.body_pose_out = (nn.Linear(n_in + n_hand, f.out_features) for f in frozen)
            with torch.no_grad():
                for new, old in zip((self.root_pose_out, self.body_pose_out), frozen):
                    new.weight.zero_()
                    new.weight[:, :n_in].copy_(old.weight)
                    new.bias.copy_(old.bias)
        else:
            self.root_pose_out, self.body_pose_out = (copy.deepcopy(f).requires_grad_(True) for f in frozen)
            self.hand_embed = nn.Linear(n_hand, n_in)
            self.moderator = nn.Sequential(nn.Linear(2 * n_in, cfg.body_dim), nn.ReLU(), nn.Linear(cfg.body_dim, 2))

    def forward(self, theta0, rois, mcp, body_tokens, body_joints):
        """As `BodyAdapter.forward`, with the whole-body model's body tokens (B, K, C) and joints (B, K, 3)."""
        B = len(rois)
        maps = self.proj(rois.flatten(0, 1))
        hand = ha.sample_joint_features(maps, mcp.flatten(0, 1)).reshape(B, 2 * len(MCP), -1)
        hand = (hand + self.token_embed).flatten(1)
        x = torch.cat([self.body_conv(body_tokens), body_joints.detach()], -1).flatten(1)  # SMPLer-X's input
        if self.how == "concat":
            x = torch.cat([x, hand], -1)
        else:
            hand = self.hand_embed(hand)
            w = self.moderator(torch.cat([x, hand], -1)).softmax(-1)
            x = w[:, :1] * x + w[:, 1:] * hand
        return torch.cat([self.root_pose_out(x), self.body_pose_out(x)], -1).view(B, NUM_BODY, 6)


class TunedBody(nn.Module):
    """Table 4 No.1-3: "head" fine-tunes a copy of SMPLer-X's neck and heads, its encoder frozen (No.3,
    "31M"), "full" a copy of the whole model (No.1), "scratch" trains a new one (No.2), each with its own
    training loss (`whole_body_loss`); the row's pipeline reads this model instead of the frozen one."""

    def __init__(self, whole_body, cfg, how):
        super().__init__()
        self.whole_body = (ha.WholeBody(cfg) if how == "scratch" else copy.deepcopy(whole_body)).requires_grad_(True)
        if how == "head":
            self.whole_body.encoder.requires_grad_(False)

    def forward(self, theta0, rois, mcp, body_tokens, body_joints):
        return theta0  # the row's own whole-body model's theta_0: no refinement


class TaskTokenAdapter(ha.BodyAdapter):
    """Table 4 No.5: Eq. 4's adapter on the whole-body model's K body task tokens instead of F^J (no hand
    input), through the same 1x1 convolution (as a Linear on each token)."""

    def forward(self, theta0, rois, mcp, body_tokens, body_joints):
        tokens = F.linear(body_tokens, self.proj.weight[:, :, 0, 0], self.proj.bias) + self.token_embed
        return self.regress(theta0, tokens)


class FrozenBody(nn.Module):
    """Table 4 "SMPLer-X (pre-trained)": nothing trains in the body path, theta_hat = theta_0."""

    def forward(self, theta0, rois, mcp, body_tokens, body_joints):
        return theta0


def hand_method(cfg, bases):
    """The module in the hand adapter's place for cfg.hand_method."""
    head, how = bases.hand_expert.mano_head, cfg.hand_method
    if how == "adapter":
        return ha.HandAdapter(head)
    if how == "whole_body_pose":
        return ha.HandAdapter(head, joints=NUM_BODY)
    if how == "image":
        return ImageAdapter(head)
    if how in ("concat", "weighted_sum"):
        return FusedHead(head, len(ha.ARMS["left"]), how)
    if how in ("head", "full", "scratch"):
        return TunedHand(bases.hand_expert, bases.cfg, how)
    if how == "frozen":
        return FrozenHand()
    raise ValueError(f"AdapterConfig.hand_method: unknown {how!r}")


def body_method(cfg, bases):
    """The module in the body adapter's place for cfg.body_method."""
    how, width = cfg.body_method, bases.cfg.body_width
    if how == "adapter":
        return ha.BodyAdapter(cfg, width)
    if how == "task_tokens":
        return TaskTokenAdapter(cfg, width, tokens=bases.cfg.body_keypoints)
    if how in ("concat", "weighted_sum"):
        return FusedRegressor(cfg, bases.whole_body.body_regressor, width, how)
    if how in ("head", "full", "scratch"):
        return TunedBody(bases.whole_body, bases.cfg, how)
    if how == "frozen":
        return FrozenBody()
    raise ValueError(f"AdapterConfig.body_method: unknown {how!r}")


class AblationRow(ha.HMRAdapter):
    """A row of Tables 3-6: `HMRAdapter`'s bases and training pass with cfg.hand_method's module in the hand
    adapter's place and cfg.body_method's in the body adapter's (one of them "adapter", the paper's), and the
    row's own hand and body paths and pipeline. What differs from the method, and only here:
    - the modules (`hand_method`, `body_method`); the body ways read the whole-body model's task tokens and
      joints too; Table 5's whole-body pose reads all 22 body joints (`whole_body_chains`);
    - Table 3 No.1, 2 bring their own hand expert, whose backbone trains and gives F^H; Table 4 No.1-3
      their own whole-body model, trained on its own loss (`whole_body_loss`), whose theta_0 the row's
      pipeline reads;
    - a "frozen" path trains nothing: its loss is 0 (`row_loss`, the row's training loss)."""

    FROZEN_KEYS = ha.HMRAdapter.FROZEN_KEYS + ("body_tokens", "body_joints")

    def __init__(self, cfg, bases):
        nn.Module.__init__(self)  # HMRAdapter's attributes, the row's modules in the adapters' places
        self.cfg, self.bases = cfg, bases.requires_grad_(False).eval()
        self.hand_adapter, self.body_adapter = hand_method(cfg, bases), body_method(cfg, bases)

    @property
    def hand_expert(self):  # whose backbone gives F^H: the row's own (TunedHand "full", "scratch") or the frozen one
        own = getattr(self.hand_adapter, "expert", None)
        return self.bases.hand_expert if own is None else own

    @property
    def whole_body(self):  # the row's own whole-body model (TunedBody) or the frozen one
        own = getattr(self.body_adapter, "whole_body", None)
        return self.bases.whole_body if own is None else own

    def chains(self, body_R):  # theta_b (B, 2, J, 6) of body rotations (B, >= 22, 3, 3)
        if self.cfg.hand_method == "whole_body_pose":
            return whole_body_chains(body_R, self.cfg.chain)
        return ha.arm_chains(body_R, self.cfg.chain)

    def hand(self, tokens, theta_b):  # the hand module on F^H (N, h w, C) given theta_b -> pose, betas, cam
        return self.hand_adapter(self.hand_expert.mano_head, tokens, theta_b)

    def body(self, out, rois, mcp):  # theta_hat of a whole-body output, its hand maps, MCP joints in them
        if self.cfg.body_method == "adapter":
            return self.body_adapter(out["theta0"], rois, mcp)
        return self.body_adapter(out["theta0"], rois, mcp, out["body_tokens"], out["body_joints"])

    def hand_path(self, image, front, hand_boxes, smplx_pose, body_known):
        if self.cfg.hand_method == "frozen":
            return {}
        tokens = front["tokens"].flatten(0, 1)
        if self.hand_expert is not self.bases.hand_expert:  # its own backbone gives F^H, and trains
            tokens = self.hand_expert.features(ha.hand_crops(self.bases.cfg, image, hand_boxes))
        chain = self.chains(axis_angle_to_matrix(smplx_pose[:, :NUM_BODY])).flatten(0, 1)
        if body_known is not None:
            chain = chain * body_known.reshape(-1, 1, 1).to(chain)
        pose, betas, cam = self.hand(tokens, chain)
        return dict(hand_pose=pose.unflatten(0, (-1, 2)), hand_betas=betas.unflatten(0, (-1, 2)),
                    hand_cam=cam.unflatten(0, (-1, 2)), crop_boxes=ha.crop_boxes(self.bases.cfg, hand_boxes))

    def body_path(self, image, front, hand_boxes, hand_joints2d):
        if self.cfg.body_method == "frozen":
            return {}
        if self.whole_body is not self.bases.whole_body:  # its own model, on its own loss
            return dict(own_whole_body=whole_body_outputs(self.whole_body, self.bases.cfg, image, hand_boxes))
        mcp = ha.mcp_in_rois(hand_joints2d, front["pred_boxes"], self.bases.cfg.hand_roi)
        return dict(theta_hat=self.body(front, front["rois"], mcp), shape=front["shape"], cam=front["cam"])

    def pipeline(self, image, hand_boxes=None, details=False):
        """`hmr_adapter.pipeline` (adapted) with the row's parts: its hand and body modules, hand expert,
        whole-body model and chains."""
        out, boxes, tokens = ha.pipeline_front(self, self.bases.cfg, image, hand_boxes)
        rois, hand_joints = self.whole_body.hands(out["feature_map"], boxes, image.shape[-2:])
        theta = self.body(out, rois, hand_joints[:, :, list(MCP), :2])
        pose, _, _ = self.hand(tokens, self.chains(rot6d_to_matrix(theta)).flatten(0, 1))
        return ha.mesh(out, boxes, theta, pose, details)

    def row_loss(self, pred, batch, cfg):
        """The row's training loss of its `forward`'s pred: `compute_loss`'s part for a path trained the paper's
        way, 0 for a frozen one, `whole_body_loss` for its own whole-body model -> (loss, terms)."""
        zero, targets = torch.zeros((), device=batch["image"].device), targets_of(batch)
        hand, hand_terms = ha.hand_path_loss(pred, targets, cfg) if "hand_pose" in pred else (zero, {})
        if "own_whole_body" in pred:
            body, terms = whole_body_loss(pred["own_whole_body"], self.bases.cfg, batch, cfg)
            body = body + sum(terms[k] for k in SMPLERX_TERMS)
        elif "theta_hat" in pred:
            body, terms = ha.body_path_loss(pred, targets, cfg)
        else:
            body, terms = zero, {}
        return hand + body, dict(hand_terms, **terms)


# The paper's ablations (Sec. 4.3) as rows of `hand_method` / `body_method` (the ways above), each trained on the frozen
# bases like the adapters, with the paper's figures beside them (lab/ablate.py --table tableN; docs/hmr_adapter.md).
# The paper scores Tables 3 and 5 on ARCTIC's hands at the true boxes (our hand path: its "adapter" is the row's
# method, on the occluded hands, as ARCTIC's hands hold objects), Tables 4 and 6 on whole bodies (our pipeline).
# The last column of Tables 3 and 5 is ours: the hand path above reads the TRUE body pose (whose wrist token is the
# answer with global chains), the pipeline reads theta_hat's.
_HAND_COLUMNS = (("hand_path/adapter/occluded/pa_pve_mm", "PA-PVE"), ("hand_path/adapter/occluded/pve_mm", "PVE"))
_PIPE_HANDS = ("pipeline/adapted/hands_occluded/pve_mm", "none (ours: the pipeline's occluded hands, PVE)")
_BODY_COLUMNS = (("pipeline/adapted/all/pa_pve_mm", "PA-PVE"), ("pipeline/adapted/all/pve_mm", "PVE"),
                 ("pipeline/adapted/all/pa_mpjpe_mm", "PA-MPJPE"))
ABLATIONS = {
    "table3": dict(
        caption="Fine-tuning methods on HaMeR (Table 3, ARCTIC hands; No.2 trains twice as long, as in the paper)",
        stage="hmr_adapter",
        columns=(*_HAND_COLUMNS, ("hand_path/adapter/occluded/pa_mpjpe_mm", "PA-MPJPE"), _PIPE_HANDS),
        rows=(("HaMeR (pre-trained)", {"hand_method": "frozen"}, (16.2, 38.5, 17.1, None)),
              ("No.1 full fine-tuning", {"hand_method": "full"}, (13.9, 45.3, 15.0, None)),
              ("No.2 from scratch", {"hand_method": "scratch"}, (15.1, 53.3, 16.3, None)),
              ("No.3 decoder head", {"hand_method": "head"}, (14.1, 56.1, 15.1, None)),
              ("No.4 concatenation", {"hand_method": "concat"}, (17.9, 36.7, 18.4, None)),
              ("No.5 adapter, hand image input", {"hand_method": "image"}, (9.0, 30.9, 9.2, None)),
              ("No.6 adapter, body pose input", {}, (8.4, 24.1, 8.5, None))),
        chosen="No.6 adapter, body pose input", longer={"No.2 from scratch": 2}),
    "table4": dict(
        caption="Fine-tuning methods on SMPLer-X (Table 4, ARCTIC whole bodies; No.2 trains twice as long, "
                "as in the paper)",
        stage="hmr_adapter",
        columns=_BODY_COLUMNS,
        rows=(("SMPLer-X (pre-trained)", {"body_method": "frozen"}, (29.3, 48.5, 28.9)),
              ("No.1 full fine-tuning", {"body_method": "full"}, (19.5, 24.4, 21.1)),
              ("No.2 from scratch", {"body_method": "scratch"}, (27.0, 35.0, 34.6)),
              ("No.3 neck and heads", {"body_method": "head"}, (21.0, 25.1, 21.2)),
              ("No.4 concatenation", {"body_method": "concat"}, (23.6, 29.9, 25.1)),
              ("No.5 adapter, body task tokens input", {"body_method": "task_tokens"}, (20.8, 24.7, 21.2)),
              ("No.6 adapter, MCP features input", {}, (20.7, 24.7, 21.0))),
        chosen="No.6 adapter, MCP features input", longer={"No.2 from scratch": 2}),
    "table5": dict(
        caption="Ways to inject the body feature into HaMeR (Table 5, ARCTIC hands)",
        stage="hmr_adapter",
        columns=(*_HAND_COLUMNS, _PIPE_HANDS),
        rows=(("Concatenation", {"hand_method": "concat"}, (15.2, 41.9, None)),
              ("Weighted sum", {"hand_method": "weighted_sum"}, (12.1, 26.0, None)),
              ("Whole-body pose", {"hand_method": "whole_body_pose"}, (13.4, 27.7, None)),
              ("HMR-Adapter (Ours)", {}, (10.5, 23.6, None))),
        chosen="HMR-Adapter (Ours)"),
    "table6": dict(
        caption="Ways to inject the hand joint feature into SMPLer-X (Table 6, EHF whole bodies)",
        stage="hmr_adapter",
        columns=_BODY_COLUMNS,
        rows=(("Concatenation", {"body_method": "concat"}, (79.3, 95.4, 94.0)),
              ("Weighted sum", {"body_method": "weighted_sum"}, (57.0, 74.5, 68.0)),
              ("HMR-Adapter (Ours)", {}, (36.8, 57.1, 42.0))),
        chosen="HMR-Adapter (Ours)"),
}


# ---------------------------------------------------------------------------------------------
# 4. Parameter counts at the paper's size (lab/bench.py --params)


PAPER_COUNTS = {"hand expert head": "39M (Tab. 3 No.3)", "hand adapter": "27M (Sec. 4.1)",
                "whole-body neck + heads":
                "31M (Tab. 4 No.3): SMPLer-X's 30.88M less its hand regressor and face box, 1.65M",
                "body adapter": "37M (Sec. 4.1)"}


def parameter_table(base_cfg=ha.BASES_PAPER, cfg=ha.PAPER):
    """{part: (trainable, frozen)} parameter counts, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = ha.HMRAdapter(cfg.model, ha.Bases(base_cfg.model))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    wb = model.bases.whole_body
    return {"hand expert ViT": (0, count(model.bases.hand_expert.backbone)),
            "hand expert head": (0, count(model.bases.hand_expert.mano_head)),
            "hand adapter": (count(model.hand_adapter), 0),
            "whole-body encoder": (0, count(wb.encoder)),
            "whole-body neck + heads": (0, count(wb) - count(wb.encoder)),
            "body adapter": (count(model.body_adapter), 0)}
