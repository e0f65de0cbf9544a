"""The base models' head and camera constants against the official code's numbers.

Each number below is typed from the official file named beside it (OWNER/NAME at COMMIT, path), and the
expectation is the official formula written out with those numbers, never this project's function: HaMeR's and
HMR2.0's weak-perspective camera (focal 5000 for a 256-pixel crop), SMPLer-X's camera readout
(sqrt(f_x f_y 2.5^2 / (256 x 192))) and its projection, SimpleHand's head and recipe. A constant changed, a square
dropped or a crop size swapped for another gives finite numbers of the right shape; here it fails.
"""
import math

import pytest
import torch

import bodymodels as bm
import data
import demo
import genhmr
import hmr_adapter as ha
import simplehand

# geopavlakos/hamer @ 3a01849f4148352e9260b69bf28b65d1671a4905: hamer/configs_hydra/experiment/default.yaml
# EXTRA.FOCAL_LENGTH; hamer_vit_transformer.yaml MODEL.IMAGE_SIZE; hamer/models/__init__.py MODEL.BBOX_SHAPE;
# demo.py --rescale_factor default; hamer/models/hamer.py forward (pred_cam_t, perspective_projection with
# focal_length / IMAGE_SIZE and no principal point); hamer/models/backbones/vit.py vit(): img_size, patch_size
HAMER = dict(focal_length=5000.0, image_size=256, bbox_shape=(192, 256), rescale_factor=2.0, vit_img_size=(256, 192),
             patch_size=16)
# shubham-goel/4D-Humans @ 6ec79656a23c33237c724742ca2a0ec00b398b53: hmr2/configs_hydra/experiment/default.yaml
# EXTRA.FOCAL_LENGTH; hmr_vit_transformer.yaml MODEL.IMAGE_SIZE; hmr2/models/__init__.py MODEL.BBOX_SHAPE;
# hmr2/models/hmr2.py forward (the same camera as HaMeR's)
HMR2 = dict(focal_length=5000.0, image_size=256, bbox_shape=(192, 256))
# caizhongang/SMPLer-X @ d3e3c10f482185b900308f32555654b6f3452d0d: main/config/config_smpler_x_h32.py focal,
# input_body_shape, camera_3d_size, output_hm_shape, output_hand_hm_shape, princpt = (W / 2, H / 2);
# main/SMPLer_X.py get_camera_trans (k = sqrt(focal_x focal_y camera_3d_size^2 / (H W)), t_z = k sigmoid(c)),
# get_coord (x = X / Z focal_x + princpt_x), restore_bbox(..., 2.0) of the hand boxes; common/nets/smpler_x.py BoxNet
# make_deconv_layers([..., 256, 256, 256]), HandRoI(upscale=4) (feat_dim // 2, feat_dim // 4), BodyRotationNet
# body_conv [feat_dim, 512]; common/utils/preprocessing.py get_bbox extend_ratio 1.2, process_bbox ratio 1.25
SMPLERX = dict(focal=(5000.0, 5000.0), input_body_shape=(256, 192), camera_3d_size=2.5, output_hm_shape=(16, 16, 12),
               output_hand_hm_shape=(16, 16, 16), hand_box_scale=2.0, box_channels=(256, 256, 256),
               hand_roi_channels=(1280 // 2, 1280 // 4), body_rot_hidden=512, feat_dim=1280, get_bbox=1.2,
               process_bbox=1.25)
# patienceFromZhou/simpleHand @ c3e6abc55512d712c4ae9b2695e529607f73b00f: cfg.py (DATA.IMAGE_SHAPE, UV_HEAD
# out_features, MESH_HEAD token_nums / dims / depths / dropout, BACKBONE drop_path_rate, LOSSES, DATA.ROOT_INDEX,
# VAL.BMK.scale_enlarge, TRAIN: BASE_LR, WEIGHT_DECAY, WARMUP_EPOCH, MAX_EPOCH, MINIBATCH_PER_EPOCH,
# MINIBATCH_SIZE_PER_DIVICE, CLIP_GRAD.MAX_NORM; DATA.AUG)
SIMPLEHAND = dict(image_size=224, uv_out=42, token_nums=(21, 84, 336), dims=(256, 128, 64), depths=(1, 1, 1),
                  dropout=0.1, drop_path=0.2, uv_weight=1.0, joints_weight=10.0, vertices_weight=10.0, root_index=9,
                  scale_enlarge=1.25, lr=5e-4, weight_decay=1e-2, warmup_epochs=5, max_epochs=200,
                  iters_per_epoch=256, batch_per_gpu=32, clip=1.0, box_jitter=0.1, box_scale=(1.0, 1.5),
                  channel_noise=0.4, brightness=(-0.4, 0.1), flip_prob=0.5)


def official_weak_perspective(points, cam, focal_length, image_size):
    """HaMeR's / HMR2.0's forward, written out: pred_cam_t = [tx, ty, 2 f / (S s + 1e-9)], then the points projected
    with focal f / S and no principal point: normalised crop coordinates."""
    s, tx, ty = cam.unbind(-1)
    t = torch.stack([tx, ty, 2 * focal_length / (image_size * s + 1e-9)], -1)
    p = points + t[..., None, :]
    return focal_length / image_size * p[..., :2] / p[..., 2:], t


def points_and_cameras(seed=0):
    g = torch.Generator().manual_seed(seed)
    points = 0.3 * torch.randn(3, 21, 3, generator=g, dtype=torch.float64)
    cam = torch.tensor([[0.9, 0.05, -0.1], [1.3, -0.2, 0.1], [0.6, 0.0, 0.3]], dtype=torch.float64)
    return points, cam


# ---------------------------------------------------------------------------------------------
# HaMeR (the hand expert) and HMR2.0 (GenHMR's SMPL head): f = 5000 for a 256-pixel crop


def test_hamer_weak_perspective_camera_is_hamers():
    """bodymodels' defaults are HaMeR's camera: the translation and the normalised 2D keypoints of hamer.py."""
    points, cam = points_and_cameras()
    uv, t = official_weak_perspective(points, cam, HAMER["focal_length"], HAMER["image_size"])
    torch.testing.assert_close(bm.weak_perspective_to_translation(cam), t)
    torch.testing.assert_close(bm.project_to_crop(points, t), uv)


def test_hamer_hand_loss_2d_term_projects_with_hamers_camera(monkeypatch):
    """Eq. 5's L_2D: keypoints where HaMeR's camera puts the predicted MANO joints score 0 (MANO replaced by fixed
    points that turn with the pose: only the camera is under test)."""
    monkeypatch.setattr(ha, "mano_mesh", lambda R, betas: (R[:, :1, :, 0].expand(-1, 778, -1) * 0.05,
                                                            torch.cat([R[:, :, :, 0], R[:, :5, :, 1]], 1) * 0.05))
    g = torch.Generator().manual_seed(1)
    R = bm.axis_angle_to_matrix(0.3 * torch.randn(4, 16, 3, generator=g))
    betas, cam = torch.zeros(4, 10), torch.tensor([[0.9, 0.0, 0.1], [1.1, 0.1, 0.0], [1.0, -0.1, 0.05], [1.2, 0, 0]])
    verts, joints = ha.mano_mesh(R, betas)
    uv, _ = official_weak_perspective(joints.double(), cam.double(), HAMER["focal_length"], HAMER["image_size"])
    target = dict(R=R, verts=verts, joints=joints, uv=uv.float())
    _, terms = ha.hand_loss((bm.matrix_to_rot6d(R), betas, cam), target, ha.AdapterConfig(loss_batch=0))
    assert terms["hand_2d"].item() < 1e-6


def test_hamer_crop_constants_are_hamers():
    """The hand crop: 256 pixels (its ViT reads the centre 256 x 192 in 16-pixel patches), the box widened to
    BBOX_SHAPE w:h = 192:256 and x rescale_factor 2.0 (demo.py). A 60 x 60 box: side 2 x 60 x 256 / 192 = 160."""
    cfg = ha.BaseConfig()
    assert cfg.hand_crop == HAMER["image_size"] and cfg.hamer_rescale == HAMER["rescale_factor"]
    assert (cfg.hand_crop, cfg.hand_crop * 3 // 4) == HAMER["vit_img_size"] and cfg.hand_patch == HAMER["patch_size"]
    w, h = HAMER["bbox_shape"]
    _, side = ha.hamer_square(torch.tensor([[0.0, 0.0, 60.0, 60.0]]), HAMER["rescale_factor"])
    assert side.item() == pytest.approx(HAMER["rescale_factor"] * 60 * h / w)


def test_genhmr_smpl_head_camera_is_hmr2s():
    assert (genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE) == (HMR2["focal_length"], HMR2["image_size"])
    points, cam = points_and_cameras(2)
    points = torch.cat([points, points[:, :3]], 1)  # 24 joints
    uv, t = official_weak_perspective(points, cam, HMR2["focal_length"], HMR2["image_size"])
    ours_uv, ours_t = genhmr.project(points, cam)
    torch.testing.assert_close((ours_uv, ours_t), (uv, t))
    assert data.HMR2_BOX_ASPECT == HMR2["bbox_shape"]


def test_hmr2_npz_crop_camera_is_5000_per_256_pixels_of_height(tmp_path):
    """The benchmarks' crop camera (data.HMR2Npz): focal 5000 / 256 x the crop's height, principal point at its
    centre, so that its pixels are HMR2.0's normalised coordinates x H + (W/2, H/2)."""
    from test_data import write_hmr2_npz

    path, _ = write_hmr2_npz(tmp_path, count=1)
    K = data.HMR2Npz(path, (64, 48))[0]["K"]
    f = HMR2["focal_length"] / HMR2["image_size"] * 64
    torch.testing.assert_close(K, torch.tensor([[f, 0.0, 24.0], [0.0, f, 32.0], [0.0, 0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------
# SMPLer-X (the whole-body model): its camera readout, its projection, its head sizes


def official_smplerx_k(focal=SMPLERX["focal"], shape=SMPLERX["input_body_shape"], size=SMPLERX["camera_3d_size"]):
    return math.sqrt(focal[0] * focal[1] * size * size / (shape[0] * shape[1]))


def test_smplerx_translation_is_get_camera_trans():
    """t = (c_x, c_y, k sigmoid(c_z)), k = sqrt(5000 x 5000 x 2.5 x 2.5 / (256 x 192)) = 56.4 m."""
    cam = torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.3, 1.2], [-0.5, 0.0, -2.0]], dtype=torch.float64)
    k = official_smplerx_k()
    assert k == pytest.approx(56.38186, rel=1e-6)
    expected = torch.cat([cam[:, :2], k * torch.sigmoid(cam[:, 2:])], -1)
    torch.testing.assert_close(ha.smplerx_translation(cam), expected)
    # another input size scales k by the root of the area
    torch.testing.assert_close(ha.smplerx_translation(cam, image_hw=(512, 384))[:, 2],
                               official_smplerx_k(shape=(512, 384)) * torch.sigmoid(cam[:, 2]))


def test_smplerx_body_2d_term_projects_as_get_coord(monkeypatch):
    """Eq. 8's L_proj at SMPLer-X's input (256 x 192): targets where get_coord's projection (X / Z x 5000 + princpt,
    princpt = (96, 128)) puts the joints at get_camera_trans' translation score 0."""
    g = torch.Generator().manual_seed(3)
    pose = 0.2 * torch.randn(1, 55, 3, generator=g)
    shape, cam = torch.zeros(1, 10), torch.tensor([[0.1, -0.05, 0.6]])
    R = bm.axis_angle_to_matrix(pose)
    joints = 0.3 * torch.randn(1, 55, 3, generator=g, dtype=torch.float64)  # the body model's: only the camera counts
    monkeypatch.setattr(ha, "body_joints", lambda R, betas: joints.to(R))
    H, W = SMPLERX["input_body_shape"]
    k = official_smplerx_k()
    t = torch.cat([cam[:, :2].double(), k * torch.sigmoid(cam[:, 2:].double())], -1)
    p = joints + t[:, None]
    px = torch.stack([p[..., 0] / p[..., 2] * SMPLERX["focal"][0] + W / 2,
                      p[..., 1] / p[..., 2] * SMPLERX["focal"][1] + H / 2], -1).float()
    targets = dict(smplx_pose=pose, joints3d=joints.float(), joints2d=px)
    _, terms = ha.body_pose_loss(bm.matrix_to_rot6d(R[:, :ha.NUM_BODY]), shape, cam, targets, (H, W), ha.TINY.model)
    assert terms["body_2d"].item() < 1e-6


def test_smplerx_head_sizes_and_box_constants_are_smplerxs():
    cfg = ha.BaseConfig()
    assert tuple(cfg.body_image) == SMPLERX["input_body_shape"]
    assert cfg.body_hm_depth == SMPLERX["output_hm_shape"][0]
    assert (cfg.hand_hm_depth, cfg.hand_roi, cfg.hand_roi) == SMPLERX["output_hand_hm_shape"]
    assert cfg.hand_box_scale == SMPLERX["hand_box_scale"] and tuple(cfg.box_channels) == SMPLERX["box_channels"]
    assert cfg.body_width == SMPLERX["feat_dim"] and tuple(cfg.hand_roi_channels) == SMPLERX["hand_roi_channels"]
    assert cfg.body_rot_hidden == SMPLERX["body_rot_hidden"]
    # the body map (16 x 12 patches of 16 pixels) is output_hm_shape's H x W
    H, W = SMPLERX["input_body_shape"]
    assert (H // cfg.body_patch, W // cfg.body_patch) == SMPLERX["output_hm_shape"][1:]
    assert demo.PERSON_BOX_ENLARGE == pytest.approx(SMPLERX["get_bbox"] * SMPLERX["process_bbox"])
    assert data.WHOLEBODY_BOX_ENLARGE == SMPLERX["process_bbox"]


# ---------------------------------------------------------------------------------------------
# SimpleHand: its head, its loss, its crops, its recipe


def test_simplehand_head_loss_and_crop_constants_are_the_official_codes():
    cfg = simplehand.PAPER.model
    assert cfg.image_size == SIMPLEHAND["image_size"]
    assert simplehand.TokenGenerator(simplehand.TINY.model).keypoint_head.out_features == SIMPLEHAND["uv_out"]
    assert (tuple(cfg.num_tokens), tuple(cfg.dims), tuple(cfg.depths), cfg.dropout) == (
        SIMPLEHAND["token_nums"], SIMPLEHAND["dims"], SIMPLEHAND["depths"], SIMPLEHAND["dropout"])
    assert simplehand.OFFICIAL.model.backbone_drop_path == SIMPLEHAND["drop_path"]
    assert (cfg.w_joints2d, cfg.w_joints3d, cfg.w_verts) == (SIMPLEHAND["uv_weight"], SIMPLEHAND["joints_weight"],
                                                             SIMPLEHAND["vertices_weight"])
    assert cfg.root_index == SIMPLEHAND["root_index"]
    assert data.KEYPOINT_CROP_ENLARGE == SIMPLEHAND["scale_enlarge"] == demo.SIMPLEHAND_KEYPOINT_ENLARGE


def test_simplehand_official_recipe_and_augmentation_are_the_official_codes():
    recipe, n = simplehand.OFFICIAL.recipe, SIMPLEHAND["iters_per_epoch"]
    assert (recipe.lr, recipe.weight_decay, recipe.grad_clip) == (SIMPLEHAND["lr"], SIMPLEHAND["weight_decay"],
                                                                  SIMPLEHAND["clip"])
    assert (recipe.max_steps, recipe.warmup_steps) == (SIMPLEHAND["max_epochs"] * n, SIMPLEHAND["warmup_epochs"] * n)
    assert simplehand.PAPER.recipe.batch_per_gpu == SIMPLEHAND["batch_per_gpu"]
    aug = data.OFFICIAL_HAND_AUGMENT
    assert (aug.box_jitter, tuple(aug.box_scale), aug.channel_noise, tuple(aug.brightness), aug.flip_prob) == (
        SIMPLEHAND["box_jitter"], SIMPLEHAND["box_scale"], SIMPLEHAND["channel_noise"], SIMPLEHAND["brightness"],
        SIMPLEHAND["flip_prob"])
