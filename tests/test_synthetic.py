"""Tests for synthetic.py: backgrounds, the pose priors (hands, bodies, actions) and looks, and the synthetic
datasets: every label against its oracle (smplx's MANO, SMPL and SMPL-X; the renderer's silhouette), projection
consistency before and after augmentation, determinism by index, batches equal to single samples, GenHMR's
controlled ambiguity and the trainer's synthetic datasets. The renderer: test_render.py."""
import math
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bodymodels
import data
from lab import render
from lab import synthetic
from bodymodels import matrix_to_axis_angle, perspective_projection
from test_data import assert_hand_sample



# ---------------------------------------------------------------------------------------------
# 1. backgrounds

def random_background(rng, image_size):
    """One sample's background as the datasets draw it: a pattern, upsampled to (H, W)."""
    pattern = torch.from_numpy(synthetic.background_patterns(synthetic.Draws([rng]))).float()
    return synthetic.upsample_backgrounds(pattern, *image_size)[0]



def test_random_background_is_deterministic_varied_and_in_range():
    a = random_background(data.sample_rng(0, 0, 3), (40, 60))
    b = random_background(data.sample_rng(0, 0, 3), (40, 60))
    c = random_background(data.sample_rng(0, 0, 4), (40, 60))
    assert a.shape == (3, 40, 60) and torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.01
    # drawn in a batch, a background is the one its generator gives alone
    batch = synthetic.background_patterns(synthetic.Draws([data.sample_rng(0, 0, 4), data.sample_rng(0, 0, 3)]))
    assert torch.equal(synthetic.upsample_backgrounds(torch.from_numpy(batch).float(), 40, 60)[1], a)

# ---------------------------------------------------------------------------------------------
# 2. pose priors and looks

@pytest.fixture(scope="module")
def mano():
    return bodymodels.load_mano()


@pytest.fixture(scope="module")
def smpl():
    return bodymodels.load_smpl()


def test_hand_pose_prior_bends_fingers_within_their_ranges(mano):
    rest = mano().joints[0].detach().double()
    cfg = synthetic.HandPoseConfig()
    flex, _ = synthetic.hand_axes(rest)
    rng = torch.Generator().manual_seed(0)
    curls = []
    for _ in range(100):
        axes = (flex, synthetic.hand_axes(rest)[1])
        pose = torch.from_numpy(synthetic.hand_poses(synthetic.Draws([rng]), axes, cfg)[0])
        pose = pose.view(5, 3, 3)  # (finger, joint, 3)
        for f in range(4):  # index, middle, pinky, ring: the two distal joints are pure flexions
            for joint, limits in ((1, cfg.pip_flex), (2, cfg.dip_flex)):
                aa = pose[f, joint]
                angle = math.degrees(float(aa @ flex[f]))
                assert torch.allclose(aa, flex[f] * math.radians(angle), atol=1e-9)
                assert limits[0] - 1e-6 <= angle <= limits[1] + 1e-6
            curls.append(math.degrees(float(pose[f, 1] @ flex[f])))
    curls = torch.tensor(curls)
    assert curls.std() > 20 and (curls > 60).any() and (curls < 10).any()  # open and closed hands


def test_simplehands_synthetic_hands_draw_what_they_drew_before_the_whole_bodies_object_grasps():
    """SimpleHand's default run's hands (`hand_dataset`'s synthetic kind) are the numbers recorded before the
    whole-body people's hands got a prior of their own (OBJECT_GRASPS, whose plate grips draw more numbers): pose,
    shape and image, samples 0-3, tests/fixtures/synthetic_hands_seed0.json."""
    import json
    import pathlib
    want = json.loads((pathlib.Path(__file__).parent / "fixtures" / "synthetic_hands_seed0.json").read_text())
    dataset = synthetic.SyntheticHands(4, 64, seed=0, view_config=synthetic.DEMO_HAND_VIEW)
    got = dataset.__getitems__([0, 1, 2, 3])
    for key, value in (("mano_pose", lambda s: s["mano_pose"].flatten()), ("mano_shape", lambda s: s["mano_shape"]),
                       ("image_mean", lambda s: s["image"].double().mean((1, 2)))):
        torch.testing.assert_close(torch.stack([value(s).double() for s in got]),
                                   torch.tensor(want[key], dtype=torch.float64),
                                   rtol=0, atol=1e-6, msg=key)


def test_object_grasps_hold_objects_and_draw_plate_grips_the_broad_prior_does_not(mano):
    """The whole-body people's hands (OBJECT_GRASPS, ARCTIC's kind) against the hand expert's (the broad prior):
    no gestures (every finger curls with the grasp: the four fingers' knuckle flexions lie close together), the
    grasp level within (0.3, 0.9) (hardly a flat hand, knuckles under 5 deg, or a fist, middle joints over 100 deg:
    at most 4 %, the broad prior's over 10 %), and about a third plate grips (a finger's knuckle bent
    past 25 deg with its middle joint under 15 deg), which the broad prior, curling both together, draws almost
    never."""
    rest = mano().joints[0].detach().double()
    axes = synthetic.hand_axes(rest)

    def angles(cfg, n=600):
        pose = synthetic.hand_poses(synthetic.Draws([torch.Generator().manual_seed(i) for i in range(n)]), axes, cfg)
        pose = torch.from_numpy(pose).view(n, 5, 3, 3)[:, :4]  # the four fingers' (knuckle, middle, last) joints
        flex = axes[0][:4]
        pip = torch.rad2deg((pose[:, :, 1] * flex).sum(-1))  # (n, 4): a pure flexion
        return torch.rad2deg(torch.atan2(*_flexion_sin_cos(pose[:, :, 0], flex))), pip

    grasps, broad = angles(synthetic.OBJECT_GRASPS), angles(synthetic.HandPoseConfig())
    plate = lambda mcp, pip: ((mcp > 25) & (pip < 15)).float().mean()  # noqa: E731  (a share of fingers)
    assert 0.2 < plate(*grasps) < 0.4 and plate(*broad) < 0.02, (plate(*grasps), plate(*broad))
    open_or_fist = lambda mcp, pip: ((mcp.mean(-1) < 5) | (pip.mean(-1) > 100)).float().mean()  # noqa: E731
    assert open_or_fist(*grasps) < 0.04 and open_or_fist(*broad) > 0.1, (open_or_fist(*grasps), open_or_fist(*broad))


def _flexion_sin_cos(aa, flex):
    """(sin, cos) of the flexion part of knuckle rotations aa (..., 3) about their axes flex (..., 3): the angle the
    rotation turns the finger's direction about that axis."""
    R = bodymodels.axis_angle_to_matrix(aa)
    palm = torch.tensor(synthetic.PALM, dtype=flex.dtype).expand_as(flex)
    d = torch.linalg.cross(palm, flex)  # the finger's rest direction (flex = d x palm)
    d = d / d.norm(dim=-1, keepdim=True)
    e = torch.linalg.cross(flex, d)  # towards the palm: a flexion by t turns d into cos t d + sin t e
    turned = (R @ d[..., None]).squeeze(-1)
    return (turned * e).sum(-1), (turned * d).sum(-1)


def test_self_intersects_flags_crossed_legs_and_arms_in_the_torso(smpl):
    rest = smpl().joints[0, :24].detach().double()
    assert not synthetic.self_intersects(rest)  # the T-pose is clear
    crossed = rest.clone()
    crossed[[4, 7]] = rest[[5, 8]] + torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)  # left shin on the right one
    assert synthetic.self_intersects(crossed)
    inside = rest.clone()
    inside[[18, 20]] = rest[[3, 6]]  # left forearm through the spine
    assert synthetic.self_intersects(inside)


def test_body_pose_prior_is_upright_with_natural_hinges(smpl):
    rest, parents = smpl().joints[0, :24].detach().double(), bodymodels.SMPL_PARENTS
    rng = torch.Generator().manual_seed(0)
    clear, upright = 0, 0
    for _ in range(40):
        R = synthetic.sample_plausible_body(rng, rest, parents)  # (22, 3, 3), joint 0 the global orientation
        joints = bodymodels.forward_kinematics(R, rest[:22], parents[:22])[0]
        clear += not synthetic.self_intersects(joints)
        upright += bool(joints[15, 1] < joints[0, 1])  # head above the pelvis in the image (y down)
        aa = matrix_to_axis_angle(R)
        for joint, hinge in ((4, (1.0, 0, 0)), (5, (1.0, 0, 0)), (18, (0, -1.0, 0)), (19, (0, 1.0, 0))):
            angle = float(aa[joint] @ torch.tensor(hinge, dtype=torch.float64))
            assert torch.allclose(aa[joint], angle * torch.tensor(hinge, dtype=torch.float64), atol=1e-9)
            assert -1e-6 <= angle <= math.radians(150)  # knees backwards, elbows forwards, never the other way
    assert clear >= 38 and upright >= 36


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_action_prior_faces_the_camera_within_a_quarter_turn(seed):
    """GenHMR's tiny prior (docs/genhmr.md, "Running it"): flip (180 about x) after pitch / roll
    N(0, 10) after yaw U(-90, 90); every body joint's angle at most 2 rad. The person's front (+z) then
    points at the camera (-z) within 90 degrees of yaw plus the small tilt, and up (+y) points up in the
    image (-y)."""
    R = synthetic.sample_action_body(torch.Generator().manual_seed(seed))
    assert R.shape == (22, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R))
    front = R[0] @ torch.tensor([0.0, 0, 1], dtype=torch.float64)
    up = R[0] @ torch.tensor([0.0, 1, 0], dtype=torch.float64)
    assert front[2] < math.sin(math.radians(50)) and up[1] < -math.cos(math.radians(50))
    assert matrix_to_axis_angle(R[1:]).norm(dim=-1).max() <= 2.0 + 1e-9


def test_action_prior_modes_and_their_spread():
    """Four modes, each visited; around its mode a joint's rotation vector varies with a std near
    its basis' (0.15-0.5 rad), and joints move together (rank 6: correlated, not independent)."""
    means, bases = synthetic.action_prior()
    assert means.shape == (4, 21, 3) and bases.shape == (4, 6, 21, 3)
    std = (bases ** 2).sum((1, 3)).sqrt()  # (4, 21) expected joint std without the iid noise
    assert 0.08 < std.min() and std.max() < 0.7
    rng = torch.Generator().manual_seed(0)
    poses = torch.stack([matrix_to_axis_angle(synthetic.sample_action_body(rng)[1:]) for _ in range(200)]).flatten(1)
    # what a mode's six directions leave of (pose - its mean): the 0.05 rad noise alone for the right mode
    residual = torch.stack([(poses - m.flatten())
                            - torch.linalg.lstsq(b.flatten(1).T, (poses - m.flatten()).T).solution.T @ b.flatten(1)
                            for m, b in zip(means, bases)])  # (4, n, 63)
    rms = residual.norm(dim=-1) / math.sqrt(63)
    best = rms.min(0)
    assert set(best.indices.tolist()) == {0, 1, 2, 3}
    assert (best.values < 0.07).float().mean() > 0.95  # the noise (0.05 per component), save a few clamped joints
    assert ((poses - means.flatten(1)[best.indices]).norm(dim=-1) / math.sqrt(63)).mean() > 3 * best.values.mean()


def test_suit_colours_tell_parts_and_sides_apart():
    part = torch.arange(24)
    colors = synthetic.suit_colors(part)
    assert colors.shape == (24, 3) and 0 <= colors.min() and colors.max() <= 1
    distance = torch.cdist(colors, colors) + torch.eye(24) * 10
    assert distance.min() > 0.05
    for left, right in ((1, 2), (4, 5), (7, 8), (13, 14), (16, 17), (18, 19), (20, 21)):
        assert (colors[left] - colors[right]).norm() > 0.15, (left, right)


# ---------------------------------------------------------------------------------------------
# 3. synthetic hands

NO_COLOR = data.AugmentConfig(color=0.0, flip_prob=0.5, rotation_deg=60.0)


def test_synthetic_hands_keys_shapes_and_projection():
    for kwargs in ({}, {"augment": True, "left_hand_prob": 0.5}, {"image_size": 96}):
        dataset = synthetic.SyntheticHands(4, **kwargs)
        for i in range(len(dataset)):
            assert_hand_sample(dataset[i], kwargs.get("image_size", 224))


@pytest.mark.parametrize("kwargs", [{}, {"left_hand_prob": 1.0},
                                    {"augment": True, "augment_config": NO_COLOR, "left_hand_prob": 0.5}])
def test_synthetic_hand_image_shows_the_labelled_mesh(kwargs):
    """On a black background, the rendered pixels are exactly the silhouette of (verts, K): the image
    and the labels agree, for right and mirrored left hands and after augmentation."""
    dataset = synthetic.SyntheticHands(6, image_size=96, background="black", **kwargs)
    for i in range(len(dataset)):
        sample = dataset[i]
        _, mask = render.render_mesh(*dataset.scene(sample), sample["K"], 96, return_mask=True)  # hand and forearm
        drawn = sample["image"].sum(0) > 0
        assert (drawn == mask).float().mean() > 0.995
        _, mask = render.render_mesh(sample["verts"], dataset.faces, sample["K"], 96,
                                     return_mask=True)  # the hand alone
        u, v = sample["joints2d"].round().long().clamp(0, 95).T
        assert mask[v, u].float().mean() >= 0.8  # the joints lie on the hand
        if "augment" not in kwargs:  # a detector's crop: the hand's box fills 70-90% of the crop, centred
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            size = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / 96
            assert 0.6 <= size <= 0.95
            centre = torch.tensor([(cols.max() + cols.min() + 1) / 2, (rows.max() + rows.min() + 1) / 2])
            assert (centre - 48).abs().max() < 0.15 * 96


@pytest.mark.parametrize("left_hand_prob", [0.0, 1.0])
def test_synthetic_hand_labels_are_mano_of_its_parameters(mano, left_hand_prob):
    """verts = MANO_right(mano_pose, mano_shape) (mirrored for a left hand) + a translation, and
    joints3d are its FreiHAND joints: the oracle is smplx's MANO itself."""
    dataset = synthetic.SyntheticHands(3, image_size=64, left_hand_prob=left_hand_prob, augment=True,
                                       augment_config=data.AugmentConfig(flip_prob=0.5))
    for i in range(len(dataset)):
        s = dataset[i]
        out = mano(betas=s["mano_shape"][None], global_orient=s["mano_pose"][None, 0],
                   hand_pose=s["mano_pose"][None, 1:].reshape(1, 45))
        verts = out.vertices[0]
        joints = bodymodels.mano_to_freihand(out.joints[0], verts)
        if not bool(s["is_right"]):
            verts, joints = verts * torch.tensor([-1.0, 1, 1]), joints * torch.tensor([-1.0, 1, 1])
        shift = (s["verts"] - verts).mean(0)
        assert torch.allclose(verts + shift, s["verts"], atol=1e-4)
        assert torch.allclose(joints + shift, s["joints3d"], atol=1e-4)


def test_synthetic_hands_are_deterministic_by_index_and_differ_between_indices():
    a, b = synthetic.SyntheticHands(5, image_size=64, seed=3), synthetic.SyntheticHands(5, image_size=64, seed=3)
    for i in (0, 4):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in x)
    x, y = a[0], a[1]
    assert not torch.allclose(x["image"], y["image"], atol=0.05) and not torch.allclose(x["joints3d"], y["joints3d"])
    assert x["image"].std() > 0.03  # not blank
    assert not torch.equal(synthetic.SyntheticHands(5, image_size=64, seed=4)[0]["joints3d"], x["joints3d"])


def test_batched_getitems_gives_exactly_the_single_samples():
    dataset = synthetic.SyntheticHands(6, image_size=48, augment=True, left_hand_prob=0.5)
    batch = dataset.__getitems__([5, 0, 3])
    for index, sample in zip((5, 0, 3), batch):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single)
    dataset.render_chunk = 2  # a batch split across renderer passes, the last one short
    for index, sample in zip((4, 1, 5, 2, 0), dataset.__getitems__([4, 1, 5, 2, 0])):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single)
    many = synthetic.SyntheticHands(40, image_size=32, left_hand_prob=0.5)  # a DataLoader-sized batch
    indices = list(range(39, 3, -3))
    for index, sample in zip(indices, many.__getitems__(indices)):
        single = many[index]
        assert all(torch.equal(sample[k], single[k]) for k in single), index


def test_set_epoch_changes_augmented_and_varying_samples_only():
    fixed = synthetic.SyntheticHands(2, image_size=64)
    augmented = synthetic.SyntheticHands(2, image_size=64, augment=True)
    varying = synthetic.SyntheticHands(2, image_size=64, vary_with_epoch=True)
    before = [d[1] for d in (fixed, augmented, varying)]
    for d in (fixed, augmented, varying):
        d.set_epoch(7)
    after = [d[1] for d in (fixed, augmented, varying)]
    assert torch.equal(before[0]["image"], after[0]["image"])
    assert not torch.equal(before[1]["image"], after[1]["image"])
    assert torch.equal(before[1]["mano_shape"], after[1]["mano_shape"])  # same hand, new camera
    assert not torch.equal(before[2]["mano_shape"], after[2]["mano_shape"])  # a new hand


# ---------------------------------------------------------------------------------------------
# 4. synthetic bodies

BODY_KEYS = {"image": (3, 64, 64), "K": (3, 3), "joints3d": (24, 3), "joints2d": (24, 2), "verts": (6890, 3),
             "smpl_pose": (24, 3), "smpl_shape": (10,), "cam_t": (3,)}


@pytest.mark.parametrize("kwargs", [{}, {"augment": True}, {"focal_length": None}])
def test_synthetic_body_labels_are_smpl_of_its_parameters(smpl, kwargs):
    """Keys and shapes; verts = SMPL(smpl_pose, smpl_shape) + cam_t and joints3d its joints (oracle: smplx's SMPL);
    joints2d their projection; the person inside the crop."""
    dataset = synthetic.SyntheticBodies(3, image_size=64, **kwargs)
    for i in range(len(dataset)):
        s = dataset[i]
        assert {k: tuple(v.shape) for k, v in s.items()} == BODY_KEYS
        out = smpl(betas=s["smpl_shape"][None], global_orient=s["smpl_pose"][None, 0],
                   body_pose=s["smpl_pose"][None, 1:].reshape(1, 69))
        assert torch.allclose(out.vertices[0] + s["cam_t"], s["verts"], atol=1e-4)
        assert torch.allclose(out.joints[0, :24] + s["cam_t"], s["joints3d"], atol=1e-4)
        projected = perspective_projection(s["joints3d"].double(), s["K"].double())
        assert (projected - s["joints2d"].double()).abs().max() < 0.5
        inside = ((s["joints2d"] > -4) & (s["joints2d"] < 68)).all(1).float().mean()
        assert inside > (0.8 if "augment" in kwargs else 0.99)


def test_synthetic_body_image_shows_the_labelled_mesh():
    dataset = synthetic.SyntheticBodies(4, image_size=64, background="black", augment=True,
                                        augment_config=data.AugmentConfig(color=0.0))
    for i in range(len(dataset)):
        s = dataset[i]
        _, mask = render.render_mesh(s["verts"], dataset.rig["faces"], s["K"], 64, return_mask=True)
        assert ((s["image"].sum(0) > 0) == mask).float().mean() > 0.995
        assert s["image"].std() > 0.05


def test_synthetic_poses_are_the_poses_of_synthetic_bodies_and_deterministic():
    poses, bodies = synthetic.SyntheticPoses(4, seed=5), synthetic.SyntheticBodies(4, image_size=32, seed=5)
    for i in (0, 3):
        p, b = poses[i], bodies[i]
        assert set(p) == {"smpl_pose", "smpl_shape"}
        assert torch.equal(p["smpl_pose"], b["smpl_pose"]) and torch.equal(p["smpl_shape"], b["smpl_shape"])
        again = synthetic.SyntheticBodies(4, image_size=32, seed=5)[i]
        assert all(torch.equal(again[k], b[k]) for k in b)
    assert not torch.allclose(poses[0]["smpl_pose"], poses[1]["smpl_pose"])
    assert not torch.allclose(bodies[0]["image"], bodies[1]["image"], atol=0.05)


@pytest.mark.parametrize("kwargs", [{}, {"augment": True, "focal_length": None}])
def test_batched_body_getitems_gives_exactly_the_single_samples(kwargs):
    dataset = synthetic.SyntheticBodies(7, image_size=40, **kwargs)
    dataset.render_chunk = 3  # a batch split across renderer passes, the last one short
    indices = [6, 0, 3, 5, 1]
    for index, sample in zip(indices, dataset.__getitems__(indices)):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single), index


def test_flat_background_is_one_colour_with_little_noise():
    bodies = synthetic.SyntheticBodies(2, (64, 48), background="flat", colors="suit")
    masks = synthetic.SyntheticBodies(2, (64, 48), background="black", colors="suit")
    for i in range(2):
        image, mask = bodies[i]["image"], masks[i]["image"].sum(0) == 0  # the person is never exactly black
        background = image[:, mask]
        assert background.shape[1] > 1000
        assert (background.std(1) < 0.05).all() and (background.std(1) > 0.01).all()
    with pytest.raises(ValueError, match="colors must be 'clothes' or 'suit'"):
        synthetic.SyntheticBodies(2, colors="paint")
    whole = synthetic.SyntheticWholeBody(1, (64, 48), colors="suit", background="flat")[0]["image"]
    corner = whole[:, :6, :6].reshape(3, -1)  # the person is centred: the corners are background
    assert (corner.std(1) < 0.05).all()
    with pytest.raises(ValueError, match="SyntheticWholeBody: background must be one of"):
        synthetic.SyntheticWholeBody(1, background="black")


# ---------------------------------------------------------------------------------------------
# 5. synthetic whole bodies

def test_synthetic_whole_body_keys_and_labels():
    dataset = synthetic.SyntheticWholeBody(6, image_size=(64, 48))
    smplx_model, mano = bodymodels.load_smplx(), bodymodels.load_mano()
    visible = 0
    for i in range(len(dataset)):
        s = dataset[i]
        assert s["image"].shape == (3, 64, 48) and s["joints3d"].shape == (55, 3) and s["verts"].shape == (10475, 3)
        p = s["smplx_pose"]
        out = smplx_model(betas=s["smplx_shape"][None], expression=s["smplx_expression"][None],
                          global_orient=p[None, 0],
                          body_pose=p[None, 1:22].reshape(1, 63), jaw_pose=p[None, 22], leye_pose=p[None, 23],
                          reye_pose=p[None, 24], left_hand_pose=p[None, 25:40].reshape(1, 45),
                          right_hand_pose=p[None, 40:55].reshape(1, 45))
        assert torch.allclose(out.vertices[0] + s["cam_t"], s["verts"], atol=1e-4)
        assert (perspective_projection(s["joints3d"].double(), s["K"].double()) - s["joints2d"]).abs().max() < 0.5
        for side, arm in (("left", bodymodels.SMPLX_LEFT_ARM), ("right", bodymodels.SMPLX_RIGHT_ARM)):
            joints = s[f"{side}_hand_joints3d"].double()
            uv, box = perspective_projection(joints, s["K"].double()), s[f"{side}_hand_box"]
            assert (uv - s[f"{side}_hand_joints2d"]).abs().max() < 0.5 and s[f"{side}_hand_occluded"] == 0
            # the box holds the hand's joints in the body image
            assert ((uv >= box[:2] - 1) & (uv <= box[2:] + 1)).all()
            assert torch.equal(s[f"{side}_arm_pose"], p[list(arm)])
            # MANO posed by the MANO-space pose points its bones the same way as SMPL-X's hand
            # (the two stand-ins' proportions differ a little, so compare directions, not positions)
            mp = s[f"{side}_hand_mano_pose"]
            m = mano(global_orient=mp[None, 0], hand_pose=mp[None, 1:].reshape(1, 45))
            mj = bodymodels.mano_to_freihand(m.joints[0], m.vertices[0]).detach().double()
            if side == "left":
                mj = mj * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
            parents = torch.tensor(bodymodels.FREIHAND_PARENTS[1:])
            bones = [torch.nn.functional.normalize(j[1:] - j[parents], dim=-1) for j in (mj, joints)]
            assert torch.rad2deg(torch.acos((bones[0] * bones[1]).sum(-1).clamp(-1, 1))).mean() < 5
            visible += float(s[f"{side}_hand_visible"]) > 0.5
    assert visible >= 0.6 * 2 * len(dataset)  # both hands show most of the time


def test_whole_bodies_grasp_with_bent_elbows_and_the_hands_alone_keep_their_draws():
    """The whole bodies' grasp level follows each elbow (`elbow_grasp`, NOTE H20 of docs/hmr_adapter.md), so the arm
    chain tells something of the fingers: over 200 people the elbow's flexion and the mean finger rotation of its
    hand correlate (measured 0.59); given no grasp, `hand_poses` draws what it drew before (SimpleHand's hands)."""
    bodies = synthetic.SyntheticWholeBody(200, image_size=(64, 48))
    bodies.model
    flexion, curl = [], []
    for i in range(200):
        pose, _ = bodies._sample_pose(bodies._rng(i))
        for elbow, hand in ((18, slice(25, 40)), (19, slice(40, 55))):
            flexion.append(float(pose[elbow].norm()))
            curl.append(float(pose[hand].norm(dim=-1).mean()))
    assert np.corrcoef(flexion, curl)[0, 1] > 0.4
    axes = bodies.hand_axes
    draws = lambda: synthetic.Draws([torch.Generator().manual_seed(3)])  # noqa: E731
    drawn = synthetic.hand_poses(draws(), axes)
    again = draws()
    again.normal(1.0, (14,))
    g = again.uniform(0, 1)  # the grasp level hand_poses draws, after its 14 noises
    np.testing.assert_array_equal(synthetic.hand_poses(draws(), axes, grasp=g), drawn)
    assert not np.array_equal(synthetic.hand_poses(draws(), axes, grasp=1 - g), drawn)
    open_hand, fist = (synthetic.hand_poses(draws(), axes, grasp=[level]) for level in (0.0, 1.0))
    assert np.linalg.norm(fist, axis=-1).mean() > np.linalg.norm(open_hand, axis=-1).mean()


# ---------------------------------------------------------------------------------------------
# 6. GenHMR's controlled ambiguity and the trainer's synthetic datasets

def test_ambiguous_bodies_show_both_readings_in_the_same_image():
    """AmbiguousBodies: the image of a person is the same whichever reading of the right arm the coin
    picked (the occluder covers every pixel where they differ), the other reading is the labelled pose with
    only the shoulder's mean swapped, and its joints are SMPL's of that pose in the same camera."""
    dataset = synthetic.AmbiguousBodies(6, image_size=(64, 48), seed=5, pose_config=synthetic.DEMO_BODY_POSE,
                                        **synthetic.DEMO_BODY_LOOK)
    drawn = dataset.__getitems__(list(range(6)))
    original = synthetic.ambiguous_arm

    def swapped(pose, rng):  # the same draws, the coin's outcome reversed
        mine, other, true = original(pose, rng)
        return other, mine, 1 - true

    synthetic.ambiguous_arm = swapped
    try:
        flipped = dataset.__getitems__(list(range(6)))
    finally:
        synthetic.ambiguous_arm = original
    readings = torch.tensor(synthetic.AMBIGUOUS_READINGS)
    assert {int(s["reading"]) for s in drawn} == {0, 1}
    for a, b in zip(drawn, flipped):
        assert int(a["reading"]) == 1 - int(b["reading"])
        assert torch.equal(a["image"], b["image"])  # nothing in the picture tells the readings apart
        torch.testing.assert_close(a["smpl_pose_other"], b["smpl_pose"])
        torch.testing.assert_close(a["joints3d_other"], b["joints3d"])
        moved = (a["smpl_pose"] - a["smpl_pose_other"]).abs().sum(1) > 0
        assert moved.nonzero().flatten().tolist() == [synthetic.AMBIGUOUS_JOINT]
        torch.testing.assert_close(a["smpl_pose"][17] - a["smpl_pose_other"][17],
                                   readings[int(a["reading"])] - readings[1 - int(a["reading"])])
        apart = (a["joints3d"] - a["joints3d_other"]).norm(dim=-1) > 0.01
        assert apart.nonzero().flatten().tolist() == list(synthetic.AMBIGUOUS_MOVED)
        x0, y0, x1, y1 = a["occluder"].long().tolist()
        for joints in (a["joints3d"], a["joints3d_other"]):  # every hidden joint of both readings under the occluder
            uv = bodymodels.perspective_projection(joints[list(synthetic.AMBIGUOUS_MOVED)].double(), a["K"].double())
            assert ((uv >= torch.tensor([x0, y0])) & (uv <= torch.tensor([x1, y1]))).all()
    with pytest.raises(ValueError, match="augment"):
        synthetic.AmbiguousBodies(2, image_size=32, augment=True)



def test_body_datasets_for_the_trainer_carry_index_and_the_meshes_they_are_scored_on():
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(image_size=(32, 24)))  # a GenHMR preset's path
    poses = synthetic.body_pose_dataset("synthetic", "", "evaluation", cfg, 0, 3)
    sample = poses[2]
    assert int(sample["index"]) == 2 and sample["verts"].shape == (6890, 3) and sample["joints3d"].shape == (24, 3)
    verts, joints = data.skinning("smpl", None, torch.float32)(sample["smpl_pose"][None], sample["smpl_shape"][None])
    torch.testing.assert_close(sample["joints3d"], joints[0])
    assert "verts" not in synthetic.body_pose_dataset("synthetic", "", "training", cfg, 0, 3)[0]
    train_bodies = synthetic.body_dataset("synthetic", "", "training", cfg, 0, 2)
    held_out = synthetic.body_dataset("synthetic", "", "evaluation", cfg, 0, 2)
    assert "verts" not in train_bodies[0] and held_out[1]["verts"].shape == (6890, 3)
    assert held_out[1]["image"].shape == (3, 32, 24) and int(held_out[1]["index"]) == 1
    assert not torch.equal(train_bodies[0]["smpl_pose"], held_out[0]["smpl_pose"])  # another seed
    with pytest.raises(ValueError, match="only 'synthetic'"):
        synthetic.body_dataset("npz", "/x", "training", cfg, 0, 2)
