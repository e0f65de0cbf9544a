"""Each paper's training loss, at every stage train.py runs, is the sum of its terms times the paper's weights.

The weights are literals here, each citing the paper (section, equation) or the official code's config; where the
paper and the official code are silent the comment says the weight is ours. Each term is written out as a plain
formula (L1, squared error, cross-entropy) on the predictions and targets, not computed by the project's own term
functions, so a swapped weight, a dropped term or a term on the wrong quantity fails. Geometry (a body model's
joints, a camera's projection) comes from the project: it is what the predictions are, not how they are scored.
Each test also pins the PAPER and TINY configs' weight fields to the literals (or says where TINY's are ours).
"""
import pytest
import torch
from torch import nn

import bodymodels
import genhmr
from lab import genhmr_experiments
import hmr_adapter as ha
from lab import hmr_adapter_experiments as hae
import simplehand
from lab import simplehand_experiments

# ---------------------------------------------------------------------------------------------
# SimpleHand: Eq. (7), L = w_3d L_J3d + w_2d L_J2d + w_vert L_vert

# Sec. 3.4, below Eq. (7): "we have accordingly adjusted the coefficients w3d, w2d, and wvert to 10, 1, and 10"
SH_W_JOINTS3D = 10.0
SH_W_JOINTS2D = 1.0
SH_W_VERTS = 10.0
SH_ROOT = 9  # official (simpleHand infer_to_json.py): targets relative to FreiHAND joint 9, the middle MCP


def l1_per_point(a, b):
    """Eqs. (4)-(6): ||a - b||_1 over coordinates, averaged over points and batch."""
    return (a - b).abs().sum(-1).mean()


@pytest.mark.parametrize("preset", ["PAPER", "PAPER_FASTVIT", "TINY"])
def test_simplehand_eq7_is_the_papers_weighted_sum(preset):
    """simplehand_experiments.training_loss (the trainer's only SimpleHand stage): Eq. (7) with the paper's
    weights, the 3D targets made relative to joint 9 and the 2D targets turned from pixels into crop fractions of
    a non-square crop (W != H, so a swapped (W, H) fails too)."""
    cfg = getattr(simplehand, preset)
    assert (cfg.model.w_joints3d, cfg.model.w_joints2d, cfg.model.w_verts) == (SH_W_JOINTS3D, SH_W_JOINTS2D,
                                                                               SH_W_VERTS)
    assert cfg.model.root_index == SH_ROOT
    g = torch.Generator().manual_seed(1)
    B, H, W = 3, 80, 96
    pred = {"verts": torch.randn(B, 778, 3, generator=g, dtype=torch.float64) * 0.05,
            "joints3d": torch.randn(B, 21, 3, generator=g, dtype=torch.float64) * 0.05,
            "joints2d": torch.rand(B, 21, 2, generator=g, dtype=torch.float64)}
    batch = {"image": torch.zeros(B, 3, H, W, dtype=torch.float64),
             "verts": torch.randn(B, 778, 3, generator=g, dtype=torch.float64) * 0.05 + 0.5,  # metres, camera frame
             "joints3d": torch.randn(B, 21, 3, generator=g, dtype=torch.float64) * 0.05 + 0.5,
             "joints2d": torch.rand(B, 21, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])}  # pixels
    total, terms = simplehand_experiments.training_loss(lambda images: pred, batch, cfg, step=0)
    root = batch["joints3d"][:, SH_ROOT:SH_ROOT + 1]
    l_j3d = l1_per_point(pred["joints3d"], batch["joints3d"] - root)  # Eq. (4), metres
    l_j2d = l1_per_point(pred["joints2d"], batch["joints2d"] / torch.tensor([W, H]))  # Eq. (5), crop fractions
    l_vert = l1_per_point(pred["verts"], batch["verts"] - root)  # Eq. (6), metres
    expected = SH_W_JOINTS3D * l_j3d + SH_W_JOINTS2D * l_j2d + SH_W_VERTS * l_vert
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=0,
                               msg=lambda m: f"SimpleHand Eq. (7) is not 10 L_J3d + 1 L_J2d + 10 L_vert: {m}")
    for name, value in (("joints3d", l_j3d), ("joints2d", l_j2d), ("verts", l_vert)):
        torch.testing.assert_close(terms[name], value, rtol=1e-12, atol=0, msg=lambda m: f"term {name}: {m}")


# ---------------------------------------------------------------------------------------------
# GenHMR: the tokenizer's L_vq, the image stage's L_total, the backbone and prior stages train.py adds

# App. > Implementation Details, first stage: "lambda_re = 1.0, lambda_E = 0.02, lambda_theta = 1.0, lambda_V = 0.5,
# and lambda_J = 0.3". lambda_E weighs the squared commitment error: with an EMA codebook the embedding term has no
# gradient, and lambda_alpha is unstated (docs/genhmr.md NOTE G3)
VQ_W_RE, VQ_W_COMMIT, VQ_W_POSE, VQ_W_VERTS, VQ_W_JOINTS = 1.0, 0.02, 1.0, 0.5, 0.3
# App. > Implementation Details, second stage: "lambda_mask = 1.0, lambda_SMPL = 1.5e-3 (with lambda_theta = 1e-3
# for pose and lambda_beta = 5e-4 for shape within L_SMPL), lambda_3D = 5e-2, and lambda_2D = 1e-2"
GEN_W_MASK, GEN_W_POSE, GEN_W_BETAS, GEN_W_3D, GEN_W_2D = 1.0, 1e-3, 5e-4, 5e-2, 1e-2
# The geometric terms are sums over joints and coordinates per sample times loss_batch. PAPER: 48, the per-GPU
# batch that HMR2.0's / TokenHMR's configs (TRAIN.BATCH_SIZE) sum them over (the paper is silent); TINY: 1, ours
# (docs/genhmr.md NOTE G20: summed over 48, the Gumbel-ST gradient swamps L_mask)
GEN_LOSS_BATCH = {"PAPER": 48, "TINY": 1}
PELVIS = 0  # SMPL joint 0 (smplx's SMPL joint names): L_3D is pelvis-relative
SMPL_VERTICES = 6890


def random_rotations(generator, *shape, scale=0.6):
    return bodymodels.axis_angle_to_matrix(torch.randn(*shape, 3, generator=generator) * scale)


def cross_entropy_by_hand(logits, ids):
    """-log p(y_i) at each position (B, L): log-softmax written out."""
    log_p = logits - logits.logsumexp(-1, keepdim=True)
    return -log_p.gather(-1, ids[..., None])[..., 0]


@pytest.mark.parametrize("preset", ["TOKENIZER_PAPER", "TOKENIZER_TINY"])
def test_genhmr_tokenizer_lvq_is_the_papers_weighted_sum(preset):
    """PoseTokenizer.compute_loss (stage genhmr_tokenizer): L_vq = lambda_re (lambda_theta L_theta + lambda_V L_V
    + lambda_J L_J) + lambda_E ||z - sg[c]||^2, L1 on rotation matrices, SMPL vertices (TINY: 1024 evenly strided
    of 6890) and joints at beta = 0; and the quantizer's commitment term is the mean squared distance of each
    encoder output to its nearest code."""
    cfg = getattr(genhmr, preset)
    m = cfg.model
    assert (m.w_re, m.w_commit, m.w_pose, m.w_verts, m.w_joints) == (VQ_W_RE, VQ_W_COMMIT, VQ_W_POSE, VQ_W_VERTS,
                                                                    VQ_W_JOINTS)
    vertex_count = {"TOKENIZER_PAPER": 0, "TOKENIZER_TINY": 1024}[preset]  # TINY's is ours: a cheaper L_V
    assert m.loss_vertices == vertex_count
    g = torch.Generator().manual_seed(2)
    tok = genhmr.PoseTokenizer(m)
    B = 3
    pose = torch.randn(B, 24, 3, generator=g) * 0.4
    pred = {"R": random_rotations(g, B, 24), "commit": torch.tensor(0.37), "perplexity": torch.tensor(5.0)}
    total, terms = tok.compute_loss(pred, pose)
    zeros = torch.zeros(B, 10)
    with torch.no_grad():
        R_gt = bodymodels.axis_angle_to_matrix(pose)
        v_gt, j_gt = tok.body(R_gt, zeros)
        v, j = tok.body(pred["R"], zeros)
    keep = (torch.linspace(0, SMPL_VERTICES - 1, vertex_count).round().long() if vertex_count
            else torch.arange(SMPL_VERTICES))
    l_pose = (pred["R"] - R_gt).abs().mean()
    l_verts = (v[:, keep] - v_gt[:, keep]).abs().mean()
    l_joints = (j - j_gt).abs().mean()
    expected = VQ_W_RE * (VQ_W_POSE * l_pose + VQ_W_VERTS * l_verts + VQ_W_JOINTS * l_joints) + VQ_W_COMMIT * 0.37
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=0,
                               msg=lambda msg: f"GenHMR L_vq is not 1.0 (1.0 L_theta + 0.5 L_V + 0.3 L_J) + "
                                               f"0.02 commit: {msg}")
    # the commitment term: ||z - sg[c]||^2 averaged, c the nearest code of each encoder output
    tok.train()
    tok(pose)  # the first training batch initialises the codebook
    tok.eval()
    with torch.no_grad():
        z = tok.encode(pose)
        codebook = tok.quantizer.codebook
        nearest = ((z[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)  # (B, L)
        commit = ((z - codebook[nearest]) ** 2).mean()
        torch.testing.assert_close(tok(pose)["commit"], commit, rtol=1e-5, atol=1e-7)


def genhmr_smpl_terms_by_hand(pred, targets, loss_batch):
    """HMR2.0's SMPL losses as the paper's L_SMPL, L_3D, L_2D: squared error on rotation matrices and betas, L1 on
    pelvis-relative 3D joints and normalised 2D joints, each summed per sample (with its 1-where-known masks),
    averaged over samples, times loss_batch."""
    B = len(pred["R"])
    ones = torch.ones(B)
    has_pose, has_shape = targets.get("has_smpl_pose", ones), targets.get("has_smpl_shape", ones)
    w3d, w2d = (targets.get(k, torch.ones(B, 24)) for k in ("joints3d_weight", "joints2d_weight"))
    R_gt = bodymodels.axis_angle_to_matrix(targets["smpl_pose"])
    j, j_gt = pred["joints3d"], targets["joints3d"]
    rel, rel_gt = j - j[:, PELVIS:PELVIS + 1], j_gt - j_gt[:, PELVIS:PELVIS + 1]
    per_sample = {"pose": ((pred["R"] - R_gt) ** 2).flatten(1).sum(1) * has_pose,
                  "betas": ((pred["betas"] - targets["smpl_shape"]) ** 2).sum(1) * has_shape,
                  "joints3d": ((rel - rel_gt).abs().sum(-1) * w3d).sum(1),
                  "joints2d": ((pred["joints2d"] - targets["joints2d"]).abs().sum(-1) * w2d).sum(1)}
    return {k: loss_batch * v.mean() for k, v in per_sample.items()}


def genhmr_targets(g, B, L, with_masks):
    targets = {"ids": torch.randint(256, (B, L), generator=g), "masked": torch.rand(B, L, generator=g) < 0.5,
               "smpl_pose": torch.randn(B, 24, 3, generator=g) * 0.4, "smpl_shape": torch.randn(B, 10, generator=g),
               "joints3d": torch.randn(B, 24, 3, generator=g) * 0.3,
               "joints2d": torch.rand(B, 24, 2, generator=g) - 0.5}
    if with_masks:  # real data's missing labels (data.HMR2Npz): 1 where known
        targets.update(has_smpl_pose=torch.tensor([1.0, 0.0, 1.0, 1.0]), has_smpl_shape=torch.tensor([0.0, 1, 1, 0]),
                       joints3d_weight=(torch.rand(B, 24, generator=g) < 0.7).float(),
                       joints2d_weight=torch.rand(B, 24, generator=g))
    return targets


def genhmr_pred(g, B, L, K=256):
    return {"logits": torch.randn(B, L, K, generator=g) * 2, "R": random_rotations(g, B, 24),
            "betas": torch.randn(B, 10, generator=g), "cam": torch.randn(B, 3, generator=g),
            "joints3d": torch.randn(B, 24, 3, generator=g) * 0.3, "joints2d": torch.rand(B, 24, 2, generator=g) - 0.5}


@pytest.mark.parametrize("preset", ["PAPER", "TINY"])
@pytest.mark.parametrize("with_masks", [False, True], ids=["all labels", "missing labels"])
def test_genhmr_image_stage_loss_is_the_papers_weighted_sum(preset, with_masks):
    """genhmr.compute_loss (stage genhmr): L_total = lambda_mask L_mask + lambda_theta L_theta + lambda_beta L_beta
    + lambda_3D L_3D + lambda_2D L_2D, L_mask the token cross-entropy over all L positions (Eq. 1 as printed,
    ce_on="all"), a sample without a pose label contributing no L_mask and no L_theta."""
    cfg = getattr(genhmr, preset).model
    assert (cfg.w_mask, cfg.w_pose, cfg.w_betas, cfg.w_3d, cfg.w_2d) == (GEN_W_MASK, GEN_W_POSE, GEN_W_BETAS,
                                                                        GEN_W_3D, GEN_W_2D)
    assert cfg.loss_batch == GEN_LOSS_BATCH[preset] and cfg.ce_on == "all"
    g = torch.Generator().manual_seed(3)
    B, L = 4, 48
    pred, targets = genhmr_pred(g, B, L), genhmr_targets(g, B, L, with_masks)
    total, terms = genhmr.compute_loss(pred, targets, cfg)
    has_pose = targets.get("has_smpl_pose", torch.ones(B))
    l_mask = (cross_entropy_by_hand(pred["logits"], targets["ids"]).mean(1) * has_pose).mean()
    smpl = genhmr_smpl_terms_by_hand(pred, targets, GEN_LOSS_BATCH[preset])
    expected = (GEN_W_MASK * l_mask + GEN_W_POSE * smpl["pose"] + GEN_W_BETAS * smpl["betas"]
                + GEN_W_3D * smpl["joints3d"] + GEN_W_2D * smpl["joints2d"])
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0,
                               msg=lambda m: f"GenHMR L_total is not 1 L_mask + 1e-3 L_theta + 5e-4 L_beta + 5e-2 "
                                             f"L_3D + 1e-2 L_2D (x loss_batch {GEN_LOSS_BATCH[preset]}): {m}")
    torch.testing.assert_close(terms["mask"], l_mask, rtol=1e-5, atol=0)


class FakeImageModel(nn.Module):
    """Stands where the trainer's model stands: holds a real pose tokenizer (train.py's parent), returns fixed
    predictions whatever it is given."""

    def __init__(self, tokenizer, outputs):
        super().__init__()
        self.tokenizer, self.num_codes, self.outputs = tokenizer, tokenizer.quantizer.num_codes, outputs

    def forward(self, *inputs):
        return self.outputs


def trained_tiny_tokenizer(g):
    tok = genhmr.PoseTokenizer(genhmr.TOKENIZER_TINY.model)
    tok.train()
    tok(torch.randn(64, 24, 3, generator=g) * 0.4)  # initialises the codebook
    return tok.eval()


def pixels_to_normalised(joints2d, H, W):
    """HMR2.0's normalised crop coordinates: (pixel - (W/2, H/2)) / H."""
    return (joints2d - torch.tensor([W / 2, H / 2])) / H


def test_genhmr_image_stage_training_loss_scores_the_true_tokens_and_normalised_joints():
    """genhmr_experiments.training_loss (what train.py calls for stage genhmr, TINY): the weighted sum above on
    the tokens the frozen tokenizer gives the true pose and the 2D joints normalised from pixels of a 64 x 48
    crop."""
    cfg = genhmr.TINY
    g = torch.Generator().manual_seed(4)
    tok = trained_tiny_tokenizer(g)
    B, H, W = 4, 64, 48
    pred = genhmr_pred(g, B, 48)
    batch = {"image": torch.zeros(B, 3, H, W), "smpl_pose": torch.randn(B, 24, 3, generator=g) * 0.4,
             "smpl_shape": torch.randn(B, 10, generator=g), "joints3d": torch.randn(B, 24, 3, generator=g) * 0.3,
             "joints2d": torch.rand(B, 24, 2, generator=g) * torch.tensor([W, H])}
    total, _ = genhmr_experiments.training_loss(FakeImageModel(tok, pred), batch, cfg, step=0)
    ids = tok.tokenize(batch["smpl_pose"])
    targets = dict(batch, joints2d=pixels_to_normalised(batch["joints2d"], H, W))
    smpl = genhmr_smpl_terms_by_hand(pred, targets, GEN_LOSS_BATCH["TINY"])
    expected = (GEN_W_MASK * cross_entropy_by_hand(pred["logits"], ids).mean() + GEN_W_POSE * smpl["pose"]
                + GEN_W_BETAS * smpl["betas"] + GEN_W_3D * smpl["joints3d"] + GEN_W_2D * smpl["joints2d"])
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)


def test_genhmr_backbone_stage_loss_is_the_image_stages_smpl_terms():
    """BackboneStage.training_loss (stage genhmr_backbone, ours: docs/genhmr.md NOTE G23, HMR2.0's SMPL head on
    GenHMR's ViT): the image stage's SMPL terms with the same weights, no L_mask, on the regressed SMPL's joints
    (forward kinematics) and their projection by the regressed camera."""
    cfg = genhmr_experiments.BACKBONE_CONFIGS["tiny"]
    g = torch.Generator().manual_seed(5)
    tok = trained_tiny_tokenizer(g)
    B, H, W = 4, 64, 48
    out = {"R": random_rotations(g, B, 24), "betas": torch.randn(B, 10, generator=g),
           "cam": torch.tensor([[0.9, 0.05, -0.1]]).repeat(B, 1) + 0.05 * torch.randn(B, 3, generator=g)}
    batch = {"image": torch.zeros(B, 3, H, W), "smpl_pose": torch.randn(B, 24, 3, generator=g) * 0.4,
             "smpl_shape": torch.randn(B, 10, generator=g), "joints3d": torch.randn(B, 24, 3, generator=g) * 0.3,
             "joints2d": torch.rand(B, 24, 2, generator=g) * torch.tensor([W, H])}
    total, _ = genhmr_experiments.BackboneStage.training_loss(FakeImageModel(tok, out), batch, cfg, step=0)
    pred = genhmr.smpl_prediction(tok.body, **out)  # the prediction's joints and projection (geometry, not a loss)
    targets = dict(batch, joints2d=pixels_to_normalised(batch["joints2d"], H, W))
    smpl = genhmr_smpl_terms_by_hand(pred, targets, GEN_LOSS_BATCH["TINY"])
    expected = (GEN_W_POSE * smpl["pose"] + GEN_W_BETAS * smpl["betas"] + GEN_W_3D * smpl["joints3d"]
                + GEN_W_2D * smpl["joints2d"])
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0,
                               msg=lambda m: f"the backbone stage's loss is not 1e-3 L_theta + 5e-4 L_beta + 5e-2 L_3D "
                                             f"+ 1e-2 L_2D: {m}")


def test_genhmr_prior_stage_loss_is_eq1_alone():
    """PriorStage.training_loss (stage genhmr_prior, ours: docs/genhmr.md NOTE G25): Eq. (1)'s token
    cross-entropy over all positions of the true pose's tokens, weight 1 (lambda_mask), nothing else."""
    cfg = genhmr_experiments.PRIOR_CONFIGS["tiny"]
    g = torch.Generator().manual_seed(6)
    tok = trained_tiny_tokenizer(g)
    B = 4
    logits = torch.randn(B, 48, tok.quantizer.num_codes, generator=g) * 2
    pose = torch.randn(B, 24, 3, generator=g) * 0.4
    total, _ = genhmr_experiments.PriorStage.training_loss(FakeImageModel(tok, logits), {"smpl_pose": pose}, cfg, 0)
    expected = GEN_W_MASK * cross_entropy_by_hand(logits, tok.tokenize(pose)).mean()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# HMR-Adapter: Eq. (5) on the hand path, Eqs. (7, 8) on the body path, the bases' own losses

# The paper gives Eqs. (5) and (7) without numbers (Sec. 3.5); NOTE H10 of docs/hmr_adapter.md: HaMeR's and
# SMPLer-X's. HaMeR (hamer/configs_hydra/experiment/hamer_vit_transformer.yaml, LOSS_WEIGHTS): KEYPOINTS_3D 0.05,
# KEYPOINTS_2D 0.01, GLOBAL_ORIENT 0.001 and HAND_POSE 0.001 (one lambda_theta here: a hand's 16 joints), BETAS 0.0005
HAND_W_3D, HAND_W_2D, HAND_W_POSE, HAND_W_BETAS = 0.05, 0.01, 0.001, 0.0005
# lambda_v: HaMeR has no vertex loss. Ours: lambda_3D per point, 778 vertices weighing as the 21 joints (PAPER,
# on sums); TINY's 0.05 on means, ours
HAND_W_VERTS = {"PAPER": 0.05 * 21 / 778, "TINY": 0.05}
# HaMeR's weights act on sums over joints, coordinates and its per-GPU batch of 8 crops (hamer/models/losses.py,
# TRAIN.BATCH_SIZE 8 in the same yaml): loss_batch 8; TINY: 0, means over every element (ours)
HAND_LOSS_BATCH = {"PAPER": 8, "TINY": 0}
# SMPLer-X (main/SMPLer_X.py's loss dict, means): SMPL-X pose x10, 3D joints x100, projected 2D joints x1 in its
# 16 x 12 heatmap units, which are 1/16 of the image height: x16 in image heights here (PAPER). TINY's 1.0: ours
BODY_W_POSE, BODY_W_3D = 10.0, 100.0
BODY_W_2D = {"PAPER": 16.0, "TINY": 1.0}
# SMPL-X joint names (smplx/joint_names.py): 20 left_wrist, 21 right_wrist, 25-39 the left hand's 15 finger joints,
# 40-54 the right hand's; 0 pelvis; 22 body joints (pelvis + 21)
SMPLX_FINGERS, SMPLX_FINGER_WRISTS, SMPLX_BODY = list(range(25, 55)), [20] * 15 + [21] * 15, 22


def hand_terms_by_hand(pose6d, betas, cam, target, loss_batch):
    """Eq. (5)'s terms of N hands: L1 on wrist-relative 3D joints and vertices (metres) and on 2D joints
    (normalised crop coordinates), ||R - R*||^2 + (1 - cos(R, R*)) per joint on rotation matrices (Eq. 6, NOTE H9),
    ||beta||^2. loss_batch 0: means over every element; else each hand's sum, averaged over hands, x loss_batch."""
    R = bodymodels.rot6d_to_matrix(pose6d)
    verts, joints = ha.mano_mesh(R, betas)
    uv = bodymodels.project_to_crop(joints, bodymodels.weak_perspective_to_translation(cam))
    wrist, wrist_gt = joints[:, :1], target["joints"][:, :1]
    a, b = R.flatten(-2), target["R"].flatten(-2)  # (N, 16, 9)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    per_element = {"3d": (joints - wrist - target["joints"] + wrist_gt).abs(),  # (N, 21, 3)
                   "2d": (uv - target["uv"]).abs(),  # (N, 21, 2)
                   "verts": (verts - wrist - target["verts"] + wrist_gt).abs(),  # (N, 778, 3)
                   "pose": ((a - b) ** 2).sum(-1) + (1 - cos),  # (N, 16): one value per joint
                   "betas": betas ** 2}  # (N, 10)
    if not loss_batch:
        return {k: v.mean() for k, v in per_element.items()}
    return {k: loss_batch * v.flatten(1).sum(1).mean() for k, v in per_element.items()}


def hand_total(terms, preset):
    return (HAND_W_3D * terms["3d"] + HAND_W_2D * terms["2d"] + HAND_W_VERTS[preset] * terms["verts"]
            + HAND_W_POSE * terms["pose"] + HAND_W_BETAS * terms["betas"])


def random_hands(g, N):
    cam = torch.tensor([[1.2, 0.05, -0.05]]).repeat(N, 1) + 0.1 * torch.randn(N, 3, generator=g)
    pose6d = bodymodels.matrix_to_rot6d(random_rotations(g, N, 16, scale=0.5))
    return pose6d + 0.1 * torch.randn(N, 16, 6, generator=g), 0.5 * torch.randn(N, 10, generator=g), cam


def pin_adapter_weights(cfg, preset):
    assert (cfg.w_hand_3d, cfg.w_hand_2d, cfg.w_hand_verts, cfg.w_hand_pose, cfg.w_hand_betas) == (
        HAND_W_3D, HAND_W_2D, HAND_W_VERTS[preset], HAND_W_POSE, HAND_W_BETAS), preset
    assert cfg.loss_batch == HAND_LOSS_BATCH[preset], preset
    assert (cfg.w_body_pose, cfg.w_body_3d, cfg.w_body_2d) == (BODY_W_POSE, BODY_W_3D, BODY_W_2D[preset]), preset


@pytest.mark.parametrize("preset", ["PAPER", "TINY"])
def test_hmr_adapter_hand_loss_eq5_is_hamers_weighted_sum(preset):
    """ha.hand_loss: Eq. (5) with HaMeR's weights and calibration, on 4 hands against a target mesh of other
    rotations."""
    cfg = getattr(ha, preset).model
    pin_adapter_weights(cfg, preset)
    g = torch.Generator().manual_seed(7)
    N = 4
    R_gt = random_rotations(g, N, 16, scale=0.5)
    verts_gt, joints_gt = ha.mano_mesh(R_gt, torch.zeros(N, 10))
    target = {"R": R_gt, "verts": verts_gt, "joints": joints_gt, "uv": torch.rand(N, 21, 2, generator=g) - 0.5}
    out = random_hands(g, N)
    total, _ = ha.hand_loss(out, target, cfg)
    expected = hand_total(hand_terms_by_hand(*out, target, HAND_LOSS_BATCH[preset]), preset)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0,
                               msg=lambda m: f"Eq. (5) is not 0.05 L_3D + 0.01 L_2D + {HAND_W_VERTS[preset]:.4g} L_v "
                                             f"+ 0.001 L_theta + 0.0005 L_beta: {m}")


def body_terms_by_hand(theta, shape, cam, targets, image_hw):
    """Eqs. (7, 8)'s terms: L1 on the 22 body rotation matrices, on pelvis-relative 3D body joints, on the body
    joints projected by SMPLer-X's camera against the 2D labels (image heights from the image centre), and on the
    30 finger joints relative to their wrist (the arms posed by theta, the fingers by the labels)."""
    R = torch.cat([bodymodels.rot6d_to_matrix(theta),
                   bodymodels.axis_angle_to_matrix(targets["smplx_pose"][:, SMPLX_BODY:])], 1)
    R_gt = bodymodels.axis_angle_to_matrix(targets["smplx_pose"][:, :SMPLX_BODY])
    joints, gt = ha.body_joints(R, shape), targets["joints3d"]  # (B, 55, 3)
    uv = bodymodels.project_to_crop(joints[:, :SMPLX_BODY], ha.smplerx_translation(cam))
    H, W = image_hw
    uv_gt = (targets["joints2d"][:, :SMPLX_BODY] - torch.tensor([W / 2, H / 2])) / H
    fingers = lambda j: j[:, SMPLX_FINGERS] - j[:, SMPLX_FINGER_WRISTS]  # noqa: E731
    return {"pose": (R[:, :SMPLX_BODY] - R_gt).abs().mean(),
            "3d": ((joints - joints[:, :1] - gt + gt[:, :1])[:, :SMPLX_BODY]).abs().mean(),
            "2d": (uv - uv_gt).abs().mean(), "fingers": (fingers(joints) - fingers(gt)).abs().mean()}


def body_total(terms, preset):
    return (BODY_W_POSE * terms["pose"] + BODY_W_3D * terms["3d"] + BODY_W_2D[preset] * terms["2d"]
            + BODY_W_3D * terms["fingers"])  # NOTE H16: lambda_3D weighs the wrist-relative finger joints too


def random_body(g, B, H, W):
    theta = bodymodels.matrix_to_rot6d(random_rotations(g, B, SMPLX_BODY, scale=0.4))
    shape = 0.3 * torch.randn(B, 10, generator=g)
    cam = torch.tensor([[0.05, -0.05, 0.5]]).repeat(B, 1) + 0.1 * torch.randn(B, 3, generator=g)
    targets = {"smplx_pose": 0.3 * torch.randn(B, 55, 3, generator=g),
               "joints3d": 0.3 * torch.randn(B, 55, 3, generator=g),
               "joints2d": torch.rand(B, 55, 2, generator=g) * torch.tensor([W, H])}
    return theta, shape, cam, targets


@pytest.mark.parametrize("preset", ["PAPER", "TINY"])
def test_hmr_adapter_body_pose_loss_eq7_is_smplerxs_weighted_sum(preset):
    """ha.body_pose_loss: Eq. (7) with SMPLer-X's weights (L_img and L_beta have no gradient with frozen bases,
    NOTE H10), on a non-square image."""
    cfg = getattr(ha, preset).model
    pin_adapter_weights(cfg, preset)
    g = torch.Generator().manual_seed(8)
    B, H, W = 3, 64, 48
    theta, shape, cam, targets = random_body(g, B, H, W)
    total, _ = ha.body_pose_loss(theta, shape, cam, targets, (H, W), cfg)
    expected = body_total(body_terms_by_hand(theta, shape, cam, targets, (H, W)), preset)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0,
                               msg=lambda m: f"Eq. (7) is not 10 L_theta + 100 (L_3D + L_fingers) + "
                                             f"{BODY_W_2D[preset]} L_2D: {m}")


def crop_coordinates_by_hand(points, boxes, left):
    """Image pixels (N, 21, 2) -> HaMeR's normalised crop coordinates of boxes (N, 4), u mirrored for left hands."""
    uv = (points - boxes[:, None, :2]) / (boxes[:, None, 2:] - boxes[:, None, :2]) - 0.5
    return uv * torch.stack([torch.where(left, -1.0, 1.0), torch.ones(len(left))], -1)[:, None]


@pytest.mark.parametrize("preset", ["PAPER", "TINY"])
def test_hmr_adapter_compute_loss_is_eq5_on_both_hands_plus_eq7(preset):
    """ha.compute_loss (stage hmr_adapter): Eq. (5) on both hands of each sample (left first, the left hand's
    label in the flipped frame and its 2D joints mirrored in its crop) plus Eq. (7) on theta_hat, unweighted
    between the two (the paper trains the adapters apart, Sec. 3.5)."""
    cfg = getattr(ha, preset).model
    g = torch.Generator().manual_seed(9)
    B, H, W = 2, 64, 48
    pose6d, betas, cam = random_hands(g, 2 * B)
    corner = torch.rand(B, 2, 2, generator=g) * 20
    boxes = torch.cat([corner, corner + 16 + 8 * torch.rand(B, 2, 1, generator=g)], -1)  # (B, 2, 4) squares
    theta, shape, body_cam, targets = random_body(g, B, H, W)
    targets.update(hand_pose=0.4 * torch.randn(B, 2, 16, 3, generator=g),
                   hand_joints2d=corner[:, :, None] + 16 * torch.rand(B, 2, 21, 2, generator=g))
    pred = {"hand_pose": pose6d.unflatten(0, (B, 2)), "hand_betas": betas.unflatten(0, (B, 2)),
            "hand_cam": cam.unflatten(0, (B, 2)), "crop_boxes": boxes, "theta_hat": theta, "shape": shape,
            "cam": body_cam, "image_hw": (H, W)}
    total, terms = ha.compute_loss(pred, targets, cfg)
    R_gt = bodymodels.axis_angle_to_matrix(targets["hand_pose"].flatten(0, 1))
    verts_gt, joints_gt = ha.mano_mesh(R_gt, torch.zeros(2 * B, 10))
    left = torch.tensor([True, False]).repeat(B)  # hands ordered left, right
    hand_target = {"R": R_gt, "verts": verts_gt, "joints": joints_gt,
                   "uv": crop_coordinates_by_hand(targets["hand_joints2d"].flatten(0, 1), boxes.flatten(0, 1), left)}
    hand = hand_terms_by_hand(pose6d, betas, cam, hand_target, HAND_LOSS_BATCH[preset])
    body = body_terms_by_hand(theta, shape, body_cam, targets, (H, W))
    torch.testing.assert_close(total, hand_total(hand, preset) + body_total(body, preset), rtol=1e-5, atol=0,
                               msg=lambda m: f"compute_loss is not Eq. (5) on both hands + Eq. (7): {m}")
    assert_terms(terms, hand, HAND_TERM_NAMES)  # each term too: a small one (TINY's L_2D) must not hide in the sum
    assert_terms(terms, body, BODY_TERM_NAMES)


HAND_TERM_NAMES = {"hand_3d": "3d", "hand_2d": "2d", "hand_verts": "verts", "hand_pose": "pose", "hand_betas": "betas"}
BODY_TERM_NAMES = {"body_pose": "pose", "body_3d": "3d", "body_2d": "2d", "fingers_3d": "fingers"}


def assert_terms(terms, by_hand, names):
    for name, mine in names.items():
        torch.testing.assert_close(terms[name], by_hand[mine], rtol=1e-5, atol=1e-8,
                                   msg=lambda m: f"term {name} differs from its formula: {m}")


def test_hmr_adapter_bases_loss_weighs_each_term_as_hamer_and_smplerx():
    """hmr_adapter_experiments.bases_loss (stage hmr_adapter_bases, TINY: the stand-ins of the released bases):
    Eq. (5) with HaMeR's weights except the expert's rotation weight, Eq. (7) with its finger term, SMPLer-X's
    other L1 terms at weight 1 each (its loss dict's) but TINY's box term (NOTE H19), and TINY's keypoint head. Each
    term's formula is pinned above (Eq. 5, Eq. 7); here the weights of the sum, on the terms the function returns,
    from a real forward."""
    cfg = hae.BASE_CONFIGS["tiny"]
    assert cfg.recipe.losses == "tiny"
    # ours (docs/hmr_adapter.md NOTE H17): the keypoint head's L1 weight and the expert's own rotation weight
    W_KEYPOINTS, W_EXPERT_POSE = 0.3, 0.01
    assert (cfg.recipe.w_hand_keypoints, cfg.recipe.w_expert_hand_pose) == (W_KEYPOINTS, W_EXPERT_POSE)
    W_SMPLERX_OTHER = 1.0  # SMPLer-X main/SMPLer_X.py: joint_img, hand boxes, shape, face, hand joint_img, each x1
    W_BOXES = 10.0  # ours at TINY (docs/hmr_adapter.md NOTE H19): the hand boxes' term
    assert cfg.recipe.w_boxes == W_BOXES and ha.BASES_PAPER.recipe.w_boxes == W_SMPLERX_OTHER
    from lab import synthetic
    data = synthetic.wholebody_dataset("synthetic", None, "train", cfg, 0, 2)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    model = hae.BASES.build_model(cfg)
    total, terms = hae.BASES.training_loss(model, batch, cfg, step=0)
    expected = (HAND_W_3D * terms["hand_3d"] + HAND_W_2D * terms["hand_2d"] + HAND_W_VERTS["TINY"] * terms["hand_verts"]
                + W_EXPERT_POSE * terms["hand_pose"] + HAND_W_BETAS * terms["hand_betas"]
                + W_KEYPOINTS * terms["hand_keypoints"]
                + BODY_W_POSE * terms["body_pose"] + BODY_W_3D * (terms["body_3d"] + terms["fingers_3d"])
                + BODY_W_2D["TINY"] * terms["body_2d"]
                + W_SMPLERX_OTHER * sum(terms[k] for k in ("joints_img", "shape", "face", "hand_joints_img"))
                + W_BOXES * terms["boxes"])
    assert set(terms) == {"hand_3d", "hand_2d", "hand_verts", "hand_pose", "hand_betas", "hand_keypoints",
                          "body_pose", "body_3d", "body_2d", "fingers_3d", "joints_img", "boxes", "shape", "face",
                          "hand_joints_img"}
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0,
                               msg=lambda m: f"bases_loss is not the weighted sum of HaMeR's and SMPLer-X's terms: {m}")


def test_every_config_train_py_builds_carries_the_weights_above():
    """train.py builds its stages from the experiments modules' CONFIGS (--config NAME): each carries the literals
    above, so a preset that drops back to a default or swaps two weights fails here by name."""
    for name, cfg in simplehand_experiments.CONFIGS.items():
        assert (cfg.model.w_joints3d, cfg.model.w_joints2d, cfg.model.w_verts, cfg.model.root_index) == (
            SH_W_JOINTS3D, SH_W_JOINTS2D, SH_W_VERTS, SH_ROOT), f"simplehand --config {name}"
    for name, cfg in genhmr_experiments.TOKENIZER_CONFIGS.items():
        m = cfg.model
        assert (m.w_re, m.w_commit, m.w_pose, m.w_verts, m.w_joints) == (
            VQ_W_RE, VQ_W_COMMIT, VQ_W_POSE, VQ_W_VERTS, VQ_W_JOINTS), f"genhmr_tokenizer --config {name}"
    loss_batch = {"paper": GEN_LOSS_BATCH["PAPER"], "small": GEN_LOSS_BATCH["TINY"], "tiny": GEN_LOSS_BATCH["TINY"]}
    for stage, configs in (("genhmr", genhmr_experiments.CONFIGS), ("genhmr_backbone",
                           genhmr_experiments.BACKBONE_CONFIGS), ("genhmr_prior", genhmr_experiments.PRIOR_CONFIGS)):
        for name, cfg in configs.items():
            m = cfg.model
            assert (m.w_mask, m.w_pose, m.w_betas, m.w_3d, m.w_2d, m.loss_batch, m.ce_on) == (
                GEN_W_MASK, GEN_W_POSE, GEN_W_BETAS, GEN_W_3D, GEN_W_2D, loss_batch[name], "all"), \
                f"{stage} --config {name}"
    for name, cfg in hae.CONFIGS.items():
        pin_adapter_weights(cfg.model, name.upper())
    for name, cfg in hae.BASE_CONFIGS.items():  # the bases train on the adapters' preset of the same name
        assert cfg.recipe.losses == name, f"hmr_adapter_bases --config {name}"
