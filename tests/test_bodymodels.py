"""Properties of bodymodels.py's rotations, cameras, joint orders and skinning; of the geometry built on them: a crop's
camera and pixels (lab/crops.py), mesh normals (lab/render.py), hands on a body (hmr_adapter.py), MANO fits
(lab/fitting.py); and of lab/files.py's atomic writes.

Random inputs come from a hypothesis-drawn seed feeding a torch.Generator, in float64. Rotations
mix near-identity (angles down to 1e-12), near-pi (within 1e-12 of pi) and uniform angles, plus
the exact identity and half turn. scipy.spatial.transform.Rotation is the independent oracle.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

import bodymodels as bm
import hmr_adapter as ha
import metrics
from lab import crops, files, fitting, render

SEEDS = st.integers(0, 2**31 - 1)
SHAPES = st.sampled_from([(), (1,), (3, 2)])
KINDS = st.sampled_from(["identity", "near_identity", "uniform", "near_pi", "half_turn"])
DOUBLE = dict(dtype=torch.float64)
FAST = settings(deadline=None, max_examples=60)


def random_axis_angle(seed, shape, kind):
    """(*shape, 3) float64 axis-angle vectors of the given kind."""
    g = torch.Generator().manual_seed(seed)
    axis = F.normalize(torch.randn(*shape, 3, generator=g, **DOUBLE), dim=-1)
    u = torch.rand(*shape, 1, generator=g, **DOUBLE)
    tiny = 10 ** (-12 + 11 * u)  # log-uniform in [1e-12, 0.1]
    angle = {"identity": 0 * u, "near_identity": tiny, "uniform": math.pi * u,
             "near_pi": math.pi - tiny, "half_turn": math.pi + 0 * u}[kind]
    return axis * angle


def same_rotation_vector(a, b, atol):
    """a == b up to the 2 pi ambiguity: aa and aa - 2 pi aa/|aa| are the same rotation (-aa at pi)."""
    angle = a.norm(dim=-1, keepdim=True)
    twin = a - 2 * math.pi * a / angle.clamp_min(1e-300)
    error = torch.minimum((a - b).norm(dim=-1), (twin - b).norm(dim=-1))
    return bool((error < atol).all())


def scipy_matrix(aa):
    return torch.from_numpy(Rotation.from_rotvec(aa.reshape(-1, 3).numpy()).as_matrix()).reshape(*aa.shape, 3)


# ---------------------------------------------------------------------------------------------
# Rotations


@FAST
@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_axis_angle_to_matrix_matches_scipy(seed, shape, kind):
    aa = random_axis_angle(seed, shape, kind)
    R = bm.axis_angle_to_matrix(aa)
    assert R.shape == (*shape, 3, 3) and R.dtype == torch.float64
    torch.testing.assert_close(R, scipy_matrix(aa), atol=1e-14, rtol=0)


@FAST
@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_matrix_to_axis_angle_matches_scipy(seed, shape, kind):
    R = scipy_matrix(random_axis_angle(seed, shape, kind))
    oracle = torch.from_numpy(Rotation.from_matrix(R.reshape(-1, 3, 3).numpy()).as_rotvec()).reshape(*shape, 3)
    aa = bm.matrix_to_axis_angle(R)
    assert aa.shape == (*shape, 3) and aa.dtype == torch.float64
    assert same_rotation_vector(aa, oracle, atol=1e-13)


@FAST
@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_axis_angle_round_trip_recovers_the_vector(seed, shape, kind):
    aa = random_axis_angle(seed, shape, kind)
    back = bm.matrix_to_axis_angle(bm.axis_angle_to_matrix(aa))
    assert same_rotation_vector(back, aa, atol=1e-13)
    # the relative error stays small even for angles of 1e-12
    if kind == "near_identity":
        torch.testing.assert_close(back, aa, atol=0, rtol=1e-9)


@FAST
@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_rotations_are_orthonormal_with_det_one(seed, shape, kind):
    g = torch.Generator().manual_seed(seed)
    for R in (bm.axis_angle_to_matrix(random_axis_angle(seed, shape, kind)),
              bm.rot6d_to_matrix(torch.randn(*shape, 6, generator=g, **DOUBLE))):
        eye = torch.eye(3, **DOUBLE).expand(*shape, 3, 3)
        torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-13, rtol=0)
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(shape, **DOUBLE), atol=1e-13, rtol=0)


@FAST
@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_rot6d_round_trip_recovers_the_matrix(seed, shape, kind):
    R = bm.axis_angle_to_matrix(random_axis_angle(seed, shape, kind))
    x = bm.matrix_to_rot6d(R)
    assert x.shape == (*shape, 6)
    torch.testing.assert_close(bm.rot6d_to_matrix(x), R, atol=1e-14, rtol=0)


@FAST
@given(seed=SEEDS, shape=SHAPES)
def test_rot6d_gram_schmidt_keeps_the_first_column_direction_and_the_plane(seed, shape):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, 6, generator=g, **DOUBLE)
    R = bm.rot6d_to_matrix(x)
    a1, a2 = x[..., :3], x[..., 3:]
    torch.testing.assert_close(R[..., :, 0], F.normalize(a1, dim=-1), atol=1e-13, rtol=0)
    # column 1 is a2 with its a1 component removed, so a2 = (a2.c0) c0 + (a2.c1) c1 with a2.c1 > 0
    c0, c1 = R[..., :, 0], R[..., :, 1]
    d0, d1 = (a2 * c0).sum(-1, keepdim=True), (a2 * c1).sum(-1, keepdim=True)
    torch.testing.assert_close(d0 * c0 + d1 * c1, a2, atol=1e-12, rtol=0)
    assert bool((d1 > 0).all())


def test_rot6d_is_the_first_two_columns():
    # 90 degrees about +z: x -> y, y -> -x. Columns are the images of the axes.
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], **DOUBLE)
    torch.testing.assert_close(bm.axis_angle_to_matrix(torch.tensor([0, 0, math.pi / 2], **DOUBLE)), R)
    x = bm.matrix_to_rot6d(R)
    assert x.tolist() == [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]  # [R[:, 0], R[:, 1]]
    torch.testing.assert_close(bm.rot6d_to_matrix(x), R)
    # pytorch3d's row reading of the same numbers gives the transpose, the inverse rotation
    torch.testing.assert_close(bm.rot6d_to_matrix(torch.tensor([0.0, -1, 0, 1, 0, 0], **DOUBLE)), R.T)


def test_gradients_at_zero_are_finite_and_the_log_of_exp_has_identity_jacobian():
    zero = torch.zeros(3, **DOUBLE, requires_grad=True)
    assert torch.autograd.gradcheck(bm.axis_angle_to_matrix, (zero,))
    assert torch.autograd.gradcheck(bm.matrix_to_axis_angle, (torch.eye(3, **DOUBLE).requires_grad_(),))
    jac = torch.autograd.functional.jacobian(lambda a: bm.matrix_to_axis_angle(bm.axis_angle_to_matrix(a)), zero)
    torch.testing.assert_close(jac, torch.eye(3, **DOUBLE))
    for dtype in (torch.float32, torch.float64):  # also at the half turn, and in float32
        for R in (torch.eye(3, dtype=dtype), torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype))):
            R.requires_grad_()
            bm.matrix_to_axis_angle(R).sum().backward()
            assert torch.isfinite(R.grad).all()
        a = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
        bm.rot6d_to_matrix(bm.matrix_to_rot6d(bm.axis_angle_to_matrix(a))).sum().backward()
        assert torch.isfinite(a.grad).all()


@FAST
@given(seed=SEEDS, kind=KINDS)
def test_float32_agrees_with_float64(seed, kind):
    aa = random_axis_angle(seed, (4,), kind)
    R32 = bm.axis_angle_to_matrix(aa.float())
    assert R32.dtype == torch.float32
    torch.testing.assert_close(R32.double(), bm.axis_angle_to_matrix(aa), atol=1e-6, rtol=0)
    back = bm.matrix_to_axis_angle(bm.axis_angle_to_matrix(aa).float())
    assert back.dtype == torch.float32 and same_rotation_vector(back.double(), aa, atol=2e-6)


def test_rotation_functions_reject_wrong_shapes():
    for fn, bad in ((bm.axis_angle_to_matrix, torch.zeros(2, 4)), (bm.matrix_to_axis_angle, torch.zeros(3)),
                    (bm.rot6d_to_matrix, torch.zeros(5)), (bm.matrix_to_rot6d, torch.zeros(2, 3, 2))):
        with pytest.raises(ValueError, match=fn.__name__):
            fn(bad)


def test_gradcheck_away_from_zero_and_pi():
    g = torch.Generator().manual_seed(0)
    aa = random_axis_angle(1, (5,), "uniform").clamp(-3.0, 3.0).requires_grad_()
    assert torch.autograd.gradcheck(bm.axis_angle_to_matrix, (aa,))
    R = bm.axis_angle_to_matrix(aa.detach()).requires_grad_()
    assert torch.autograd.gradcheck(bm.matrix_to_axis_angle, (R,))
    assert torch.autograd.gradcheck(bm.rot6d_to_matrix, (torch.randn(5, 6, generator=g, **DOUBLE).requires_grad_(),))


# ---------------------------------------------------------------------------------------------
# Cameras


def random_intrinsics(g, shape):
    f = 100 + 1900 * torch.rand(*shape, 2, generator=g, **DOUBLE)  # fx, fy
    c = 500 * torch.rand(*shape, 2, generator=g, **DOUBLE)  # cx, cy
    o, i = torch.zeros(shape, **DOUBLE), torch.ones(shape, **DOUBLE)
    return torch.stack([f[..., 0], o, c[..., 0], o, f[..., 1], c[..., 1], o, o, i], -1).unflatten(-1, (3, 3))


@FAST
@given(seed=SEEDS, shape=SHAPES)
def test_projection_then_back_projection_with_depth_recovers_the_points(seed, shape):
    g = torch.Generator().manual_seed(seed)
    K = random_intrinsics(g, shape)
    points = torch.randn(*shape, 7, 3, generator=g, **DOUBLE)
    points[..., 2] = 0.5 + 4.5 * torch.rand(*shape, 7, generator=g, **DOUBLE)  # in front of the camera
    uv = bm.perspective_projection(points, K)
    assert uv.shape == (*shape, 7, 2)
    rays = torch.cat([uv, torch.ones_like(uv[..., :1])], -1) @ torch.linalg.inv(K).transpose(-1, -2)
    torch.testing.assert_close(rays * points[..., 2:], points, atol=1e-12, rtol=0)


def test_projection_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"K \(\.\.\., 3, 3\)"):
        bm.perspective_projection(torch.ones(4, 3), torch.eye(4))


def random_weak_camera(g, shape):
    s = 0.5 + torch.rand(*shape, 1, generator=g, **DOUBLE)
    txy = 0.6 * torch.rand(*shape, 2, generator=g, **DOUBLE) - 0.3
    return torch.cat([s, txy], -1)


@FAST
@given(seed=SEEDS, shape=SHAPES)
def test_weak_perspective_translation_projects_like_the_weak_perspective_camera(seed, shape):
    g = torch.Generator().manual_seed(seed)
    cam = random_weak_camera(g, shape)  # (..., 3) [s, tx, ty]
    t = bm.weak_perspective_to_translation(cam)
    torch.testing.assert_close(t[..., 2], 2 * 5000.0 / (256.0 * cam[..., 0]))
    # on the root's depth plane (z = 0) the perspective camera is exactly s/2 * (x + t) in [-0.5, 0.5]
    points = torch.randn(*shape, 5, 3, generator=g, **DOUBLE)
    points[..., 2] = 0
    uv = bm.project_to_crop(points, t)
    torch.testing.assert_close(uv, cam[..., None, :1] / 2 * (points[..., :2] + cam[..., None, 1:]))
    # the point at -[tx, ty, 0] lands on the crop centre
    centre = -torch.cat([cam[..., 1:], torch.zeros_like(cam[..., :1])], -1)[..., None, :]
    torch.testing.assert_close(bm.project_to_crop(centre, t), torch.zeros(*shape, 1, 2, **DOUBLE))


def random_box(g, shape):
    """Image size [W, H] in [200, 2000], a box size and a box centre inside the image."""
    image_size = 200 + 1800 * torch.rand(*shape, 2, generator=g, **DOUBLE)
    box_size = image_size.min(-1).values * (0.1 + 0.9 * torch.rand(shape, generator=g, **DOUBLE))
    box_center = image_size * torch.rand(*shape, 2, generator=g, **DOUBLE)
    return box_center, box_size, image_size


@FAST
@given(seed=SEEDS, shape=SHAPES)
def test_full_image_camera_agrees_with_the_crop_camera_mapped_to_the_image(seed, shape):
    g = torch.Generator().manual_seed(seed)
    cam = random_weak_camera(g, shape)
    box_center, box_size, image_size = random_box(g, shape)
    points = torch.randn(*shape, 6, 3, generator=g, **DOUBLE) * 0.3
    points[..., 2] = 0  # CLIFF is exact on the root's depth plane
    # crop camera, then the crop [-0.5, 0.5]^2 mapped onto the box in the image
    in_crop = bm.project_to_crop(points, bm.weak_perspective_to_translation(cam))
    expected = box_center[..., None, :] + box_size[..., None, None] * in_crop
    # full-image camera
    t_full = crops.cam_crop_to_full(cam, box_center, box_size, image_size)
    K_full = crops.full_image_intrinsics(image_size)
    uv = bm.perspective_projection(points + t_full[..., None, :], K_full)
    torch.testing.assert_close(uv, expected, atol=1e-6, rtol=0)


@FAST
@given(seed=SEEDS, shape=SHAPES)
def test_cam_crop_to_full_is_the_crop_camera_when_the_box_is_the_whole_square_image(seed, shape):
    g = torch.Generator().manual_seed(seed)
    cam = random_weak_camera(g, shape)
    side = 100 + 900 * torch.rand(shape, generator=g, **DOUBLE)
    image_size = torch.stack([side, side], -1)
    points = torch.randn(*shape, 6, 3, generator=g, **DOUBLE) * 0.3  # any depth
    t_full = crops.cam_crop_to_full(cam, image_size / 2, side, image_size)
    uv = bm.perspective_projection(points + t_full[..., None, :], crops.full_image_intrinsics(image_size))
    in_crop = bm.project_to_crop(points, bm.weak_perspective_to_translation(cam))
    torch.testing.assert_close(uv, image_size[..., None, :] / 2 + side[..., None, None] * in_crop, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# Joint orders and kinematic trees


@pytest.mark.parametrize("shape", [(), (1,), (3, 2)])
@pytest.mark.parametrize("convention, ring, pinky", [("freihand", 1555, 1672), ("hamer", 1554, 1671)])
def test_hand_joints21_picks_the_joint_rows_and_the_convention_s_fingertips(shape, convention, ring, pinky):
    joints = torch.arange(16, **DOUBLE)[:, None].expand(*shape, 16, 3)  # row j holds j
    verts = (1000 + torch.arange(778, **DOUBLE))[:, None].expand(*shape, 778, 3)  # row v holds 1000 + v
    out = bm.hand_joints21(joints, verts, convention)
    assert out.shape == (*shape, 21, 3)
    expected = [0, 13, 14, 15, 1744, 1, 2, 3, 1320, 4, 5, 6, 1443, 10, 11, 12, ring, 7, 8, 9, pinky]
    assert out[..., 0].reshape(-1, 21)[0].tolist() == expected
    if convention == "freihand":
        assert torch.equal(bm.mano_to_freihand(joints, verts), out)
    with pytest.raises(ValueError, match=r"verts \(\.\.\., 778, 3\)"):
        bm.hand_joints21(joints, verts[..., :777, :], convention)
    with pytest.raises(ValueError, match="unknown fingertip convention 'smpl'"):
        bm.hand_joints21(joints, verts, "smpl")


def test_freihand_names_follow_from_mano_names_and_the_reorder():
    tips = tuple(f"{f}_tip" for f in ("thumb", "index", "middle", "ring", "pinky"))
    names = bm.MANO_JOINT_NAMES + tips
    assert tuple(names[i] for i in bm.MANO_TO_FREIHAND) == bm.FREIHAND_JOINT_NAMES
    assert sorted(bm.MANO_TO_FREIHAND) == list(range(21))
    assert ({f: bm.MANO_JOINT_NAMES[j] for f, j in bm.MANO_MCP_JOINTS.items()}
            == {f: f"{f}1" for f in bm.MANO_MCP_JOINTS})


@pytest.mark.parametrize("parents, names", [
    (bm.MANO_PARENTS, bm.MANO_JOINT_NAMES), (bm.SMPL_PARENTS, bm.SMPL_JOINT_NAMES),
    (bm.SMPLX_PARENTS, bm.SMPLX_JOINT_NAMES), (bm.FREIHAND_PARENTS, bm.FREIHAND_JOINT_NAMES)])
def test_kinematic_trees_list_parents_before_children(parents, names):
    assert isinstance(parents, tuple) and len(parents) == len(names) == len(set(names))
    assert parents[0] == -1 and all(0 <= p < j for j, p in enumerate(parents) if j > 0)


def test_kinematic_trees_agree_with_each_other():
    assert (len(bm.MANO_PARENTS), len(bm.SMPL_PARENTS), len(bm.SMPLX_PARENTS)) == (16, 24, 55)
    # SMPL-X: SMPL's body, and each hand is MANO's tree hung from a wrist (20 left, 21 right)
    assert bm.SMPLX_PARENTS[:22] == bm.SMPL_PARENTS[:22]
    for wrist, first in ((20, 25), (21, 40)):
        hand = tuple(wrist if p == 0 else p + first - 1 for p in bm.MANO_PARENTS[1:])
        assert bm.SMPLX_PARENTS[first:first + 15] == hand
    # FreiHAND's tree is MANO's, with each fingertip hung from its finger's last joint
    mano_tips = bm.MANO_PARENTS + (15, 3, 6, 12, 9)  # parents of tips thumb, index, middle, ring, pinky
    for i, p in enumerate(bm.FREIHAND_PARENTS[1:], start=1):
        assert bm.MANO_TO_FREIHAND[p] == mano_tips[bm.MANO_TO_FREIHAND[i]]
    # arm chains follow SMPL-X's parents from the pelvis to a wrist
    for chain, wrist in ((bm.SMPLX_LEFT_ARM, "left_wrist"), (bm.SMPLX_RIGHT_ARM, "right_wrist")):
        assert chain[0] == 0 and bm.SMPLX_JOINT_NAMES[chain[-1]] == wrist
        assert all(bm.SMPLX_PARENTS[c] == p for p, c in zip(chain, chain[1:]))
    # FreiHAND's annotations / the official simpleHand (models/losses.py) vs smplx / HaMeR (vertex_ids['mano'])
    assert bm.FINGERTIP_VERTS == {"freihand": (744, 320, 443, 555, 672), "hamer": (744, 320, 443, 554, 671)}


# ---------------------------------------------------------------------------------------------
# forward kinematics and linear blend skinning, against smplx itself (the oracle)

@pytest.mark.parametrize("kind", ["mano", "smpl"])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-7), (torch.float32, 2e-6)])
def test_lbs_and_skinning_agree_with_smplx(kind, dtype, atol):
    """bm.lbs on a model's buffers and bm.Skinning (pose_mean, precomputed joints) give smplx's
    vertices and joints (smplx's Rodrigues adds 1e-8 to the angle: hence 1e-7 m in float64)."""
    model = (bm.load_mano if kind == "mano" else bm.load_smpl)(dtype=dtype, batch_size=5)
    J = len(model.parents)
    g = torch.Generator().manual_seed(0)
    pose = (0.6 * torch.randn(5, J, 3, generator=g, **DOUBLE)).to(dtype)
    betas = torch.randn(5, 10, generator=g, **DOUBLE).to(dtype)
    rest = dict(hand_pose=pose[:, 1:].reshape(5, -1)) if kind == "mano" else dict(body_pose=pose[:, 1:].reshape(5, -1))
    out = model(betas=betas, global_orient=pose[:, 0], **rest)
    verts, joints = bm.lbs(betas, pose, model.v_template, model.shapedirs, model.posedirs, model.J_regressor,
                           model.parents.tolist(), model.lbs_weights)
    assert verts.dtype == dtype and joints.shape == (5, J, 3)
    assert torch.allclose(verts, out.vertices, atol=atol) and torch.allclose(joints, out.joints[:, :J], atol=atol)
    verts, joints = bm.Skinning(model, dtype)(pose.view(5, 1, J, 3), betas.view(5, 1, 10))  # leading dims (5, 1)
    assert verts.shape == (5, 1, model.v_template.shape[0], 3)
    assert torch.allclose(verts[:, 0], out.vertices, atol=atol)
    assert torch.allclose(joints[:, 0], out.joints[:, :J], atol=atol)


def test_skinning_of_a_sample_does_not_depend_on_its_batch():
    mano = bm.load_mano()
    skin = bm.Skinning(mano, torch.float64)
    g = torch.Generator().manual_seed(1)
    pose, betas = 0.5 * torch.randn(40, 16, 3, generator=g, **DOUBLE), torch.randn(40, 10, generator=g, **DOUBLE)
    verts, joints = skin(pose, betas)
    for i in (0, 17, 39):
        alone = skin(pose[i:i + 1], betas[i:i + 1])
        assert torch.equal(alone[0][0], verts[i]) and torch.equal(alone[1][0], joints[i])


def test_forward_kinematics_composes_rotations_down_the_tree():
    """Two-joint chain: the child's world rotation is R0 R1 and it sits at J0 + R0 (J1 - J0); a
    root keeps its rest position; leading batch dims pass through."""
    g = torch.Generator().manual_seed(2)
    R = bm.axis_angle_to_matrix(torch.randn(4, 3, 3, generator=g, **DOUBLE))  # (4 batch, 3 joints)
    rest = torch.randn(4, 3, 3, generator=g, **DOUBLE)
    posed, world = bm.forward_kinematics(R, rest, (-1, 0, 1))
    assert torch.allclose(world[:, 2], R[:, 0] @ R[:, 1] @ R[:, 2])
    assert torch.equal(posed[:, 0], rest[:, 0])
    expected = rest[:, 0] + (R[:, 0] @ (rest[:, 1] - rest[:, 0])[..., None])[..., 0]
    assert torch.allclose(posed[:, 1], expected)
    expected = expected + (R[:, 0] @ R[:, 1] @ (rest[:, 2] - rest[:, 1])[..., None])[..., 0]
    assert torch.allclose(posed[:, 2], expected)


@given(seed=SEEDS, shape=SHAPES, kind=KINDS)
@FAST
@example(seed=0, shape=(), kind="identity")
@example(seed=0, shape=(), kind="half_turn")
def test_mirror_rotation_is_m_r_m_in_both_representations(seed, shape, kind):
    aa = random_axis_angle(seed, shape, kind)
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], **DOUBLE))
    R = bm.axis_angle_to_matrix(aa)
    assert torch.allclose(bm.axis_angle_to_matrix(bm.mirror_rotation(aa)), M @ R @ M, atol=1e-12)
    assert torch.allclose(bm.mirror_rotation(R, matrix=True), M @ R @ M, atol=0)
    flat = aa.reshape(*shape, 3)[..., None, :].expand(*shape, 2, 3).reshape(*shape, 6)  # (..., 3 k) rows
    assert torch.equal(bm.mirror_rotation(flat).reshape(*shape, 2, 3)[..., 1, :], bm.mirror_rotation(aa))
    assert np.array_equal(bm.mirror_rotation(aa.numpy()), bm.mirror_rotation(aa).numpy())


def test_vertex_normals_of_a_closed_mesh_point_outwards():
    """A tetrahedron wound counter-clockwise from outside: every vertex normal points away from the
    centroid, face normals are twice the area, and a batch gives each mesh's normals."""
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], **DOUBLE)
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    n = render.vertex_normals(verts, faces)
    assert torch.allclose(n.norm(dim=-1), torch.ones(4, **DOUBLE))
    assert ((n * (verts - verts.mean(0))).sum(-1) > 0).all()
    assert torch.allclose(render.face_normals(verts, faces)[3].norm(), torch.tensor(3.0, **DOUBLE).sqrt())
    batch = torch.stack([verts, 2 * verts + 1])
    assert torch.equal(render.vertex_normals(batch, faces)[0], n)


def test_atomic_write_replaces_whole_files_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    files.atomic_write(path, lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, fail)
    assert path.read_bytes() == b"one" and sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


# ---------------------------------------------------------------------------------------------
# lab/crops.py: boxes, crop matrices, warps, a crop's camera in the full image


def test_crop_matrix_maps_the_crop_onto_the_output_and_warp_image_reads_it_there():
    image = torch.zeros(3, 60, 80)
    image[:, 30, 50] = 1  # pixel centre (50.5, 30.5)
    A = crops.crop_matrix((50.0, 30.0), (20.0, 20.0), (40, 40))  # pixels 40..60 x 20..40 -> 40 x 40
    assert torch.allclose(A @ torch.tensor([40.0, 20.0, 1], **DOUBLE), torch.tensor([0.0, 0, 1], **DOUBLE))
    crop = crops.warp_image(image, A, (40, 40))
    centres = torch.arange(40) + 0.5
    w = crop[0] / crop[0].sum()
    centroid = ((w.sum(1) * centres).sum(), (w.sum(0) * centres).sum())  # (y, x) of the dot in the crop
    assert torch.allclose(torch.stack(centroid), torch.tensor([21.0, 21.0]), atol=1e-5)  # 2 x (30.5 - 20, 50.5 - 40)
    flipped = crops.warp_image(image, crops.crop_matrix((50.0, 30.0), (20.0, 20.0), (40, 40), flip=True), (40, 40))
    assert torch.allclose(flipped, crop.flip(-1), atol=1e-6)
    assert crops.crop_box((0, 0, 40, 60), (256, 192)) == ((20.0, 30.0), (45.0, 60.0))  # 60 high: 45 wide at 4:3


@given(seed=SEEDS)
@FAST
@example(seed=0)
def test_crop_translation_to_full_is_cliffs_cam_crop_to_full_for_hmr2_crops(seed):
    """A square crop seen with HMR2.0's camera (focal 5000 per 256 crop pixels): the general move equals
    CLIFF's `cam_crop_to_full` of the weak-perspective camera, and the root lands on the same pixel."""
    g = torch.Generator().manual_seed(seed)
    W, H = 300 + int(torch.randint(0, 700, (), generator=g)), 200 + int(torch.randint(0, 700, (), generator=g))
    side = 40 + 200 * torch.rand((), generator=g, **DOUBLE)
    centre = (torch.rand(2, generator=g, **DOUBLE) * torch.tensor([W, H], **DOUBLE)).tolist()
    A = crops.crop_matrix(centre, (side, side), (256, 256))
    t = torch.tensor([0.2, -0.1, 30.0], **DOUBLE) * (0.5 + torch.rand(3, generator=g, **DOUBLE))
    full = crops.crop_translation_to_full(t, A, (256, 256), (W, H), 5000.0)
    cam = torch.stack([2 * 5000.0 / (256 * t[2]), t[0], t[1]])
    assert torch.allclose(full, crops.cam_crop_to_full(cam, centre, side, (W, H)), rtol=1e-9)
    K_crop = torch.tensor([[5000.0, 0, 128], [0, 5000.0, 128], [0, 0, 1]], **DOUBLE)
    root_px = bm.perspective_projection(t[None], torch.linalg.inv(A) @ K_crop)
    K_full = crops.full_image_intrinsics((W, H), dtype=torch.float64)
    assert torch.allclose(bm.perspective_projection(full[None], K_full), root_px, atol=1e-7)


@given(seed=SEEDS, focal=st.floats(0.2, 5.0))
@FAST
@example(seed=0, focal=1.0)
def test_crop_translation_to_a_given_camera_puts_the_root_plane_where_the_crop_camera_saw_it(seed, focal):
    """demo.py --intrinsics: with any full-image camera K (focal lengths equal), every point on the mesh root's
    depth plane projects to the image pixel where the crop's camera put it (through the crop matrix)."""
    g = torch.Generator().manual_seed(seed)
    W, H = 200 + int(torch.randint(0, 800, (), generator=g)), 150 + int(torch.randint(0, 800, (), generator=g))
    side = 40 + 150 * torch.rand((), generator=g, **DOUBLE)
    centre = (torch.rand(2, generator=g, **DOUBLE) * torch.tensor([W, H], **DOUBLE)).tolist()
    crop_hw, crop_focal = (256, 192), 5000.0
    A = crops.crop_matrix(centre, (side * 0.75, side), crop_hw)
    t = torch.tensor([0.3, -0.2, 40.0], **DOUBLE) * (0.5 + torch.rand(3, generator=g, **DOUBLE))
    f = focal * max(W, H)
    K = torch.tensor([[f, 0, W * torch.rand((), generator=g)], [0, f, H * torch.rand((), generator=g)], [0, 0, 1]],
                     **DOUBLE)
    full = crops.crop_translation_to_full(t, A, crop_hw, (W, H), crop_focal, K)
    K_crop = torch.tensor([[crop_focal, 0, crop_hw[1] / 2], [0, crop_focal, crop_hw[0] / 2], [0, 0, 1]], **DOUBLE)
    plane = torch.cat([torch.randn(5, 2, generator=g, **DOUBLE) * 0.3, torch.zeros(5, 1, **DOUBLE)], 1)
    seen = bm.perspective_projection(plane + t, K_crop)  # crop pixels
    seen = torch.cat([seen, torch.ones(5, 1, **DOUBLE)], 1) @ torch.linalg.inv(A).T  # image pixels
    torch.testing.assert_close(bm.perspective_projection(plane + full, K), seen[:, :2], rtol=1e-9, atol=1e-7)
    assert torch.equal(crops.crop_translation_to_full(t, A, crop_hw, (W, H), crop_focal),
                       crops.crop_translation_to_full(t, A, crop_hw, (W, H), crop_focal,
                                                      crops.full_image_intrinsics((W, H))))


# --- hmr_adapter.py's hands on a body (A.2), and lab/fitting.py's MANO fits ---------------------


@FAST
@given(seed=SEEDS, kind=KINDS, batch=st.sampled_from([1, 2, 5]), points=st.sampled_from([1, 2, 3, 16]),
       sets=st.sampled_from(["noisy", "mirrored", "collinear", "all_equal"]))
@example(seed=0, kind="identity", batch=1, points=16, sets="noisy")
@example(seed=0, kind="half_turn", batch=1, points=16, sets="noisy")
def test_kabsch_rotation_is_the_rotation_of_metrics_procrustes(seed, kind, batch, points, sets):
    """hmr_adapter's own Kabsch (a paper file imports no metrics) gives metrics.procrustes_transform's
    rotation bit for bit, degenerate and mirrored sets included; a proper rotation with det +1."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, points, 3, generator=g, **DOUBLE)
    if sets == "collinear":
        a = torch.randn(batch, 1, 3, generator=g, **DOUBLE) * torch.randn(batch, points, 1, generator=g, **DOUBLE)
    if sets == "all_equal":
        a = a[:, :1].expand(batch, points, 3)
    R = bm.axis_angle_to_matrix(random_axis_angle(seed, (batch,), kind))  # (B, 3, 3)
    b = 1.7 * a @ R.transpose(1, 2) + torch.randn(batch, 1, 3, generator=g, **DOUBLE)
    b = b + {"noisy": 0.1, "mirrored": 0.0}.get(sets, 0.0) * torch.randn(batch, points, 3, generator=g, **DOUBLE)
    if sets == "mirrored":
        b = b * torch.tensor([-1.0, 1.0, 1.0], **DOUBLE)
    rotation = ha.kabsch_rotation(a, b)
    assert torch.equal(rotation, metrics.procrustes_transform(a, b)[1])
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(batch, **DOUBLE))
    if sets == "noisy" and points >= 16:  # enough points to pin the rotation down
        torch.testing.assert_close(ha.kabsch_rotation(a, b.float()), metrics.procrustes_transform(a, b.float())[1])
        exact = 1.7 * a @ R.transpose(1, 2) - 3.0
        torch.testing.assert_close(ha.kabsch_rotation(a, exact), R, rtol=0, atol=1e-9)


STANDIN_R_OFF = torch.diag(torch.tensor([-1.0, 1.0, -1.0], **DOUBLE))  # standins._stitch_hands: the hand turned


@given(seed=SEEDS, mano_flat=st.booleans(), smplx_flat=st.booleans(), left_as_right=st.booleans())
@settings(deadline=None, max_examples=12)
@example(seed=0, mano_flat=True, smplx_flat=True, left_as_right=True)
@example(seed=0, mano_flat=False, smplx_flat=False, left_as_right=False)
def test_attach_hands_gives_back_the_smplx_pose_whose_hands_hamer_would_see(seed, mano_flat, smplx_flat, left_as_right):
    """SMPL-X pose -> each hand's MANO result as HaMeR gives it -> attach_hands -> the same pose and
    mesh, for axis-angle and rotation-matrix hands, both hands_mean conventions on either side."""
    g = torch.Generator().manual_seed(seed)
    frames = ha.hand_frames()
    param = 0.6 * torch.randn(2, 55, 3, generator=g, **DOUBLE)  # SMPL-X's parameters, jaw and eyes included
    full = param.clone()
    if not smplx_flat:
        for side, (_, *fingers) in bm.SMPLX_HAND_JOINTS.items():
            full[:, fingers] += frames.smplx_hands_mean[side]
    R = bm.axis_angle_to_matrix(full)
    hands = ha.hands_of_body(bm.matrix_to_axis_angle(R), frames, left_as_right, mano_flat)  # what HaMeR would see
    if mano_flat:  # from rotation matrices: the same hands
        mats = ha.hands_of_body(R, frames, left_as_right)
        for side, hand in hands.items():
            torch.testing.assert_close(bm.axis_angle_to_matrix(hand["global_orient"]), mats[side]["global_orient"])
            torch.testing.assert_close(bm.axis_angle_to_matrix(hand["hand_pose"]), mats[side]["hand_pose"])
    body = param.clone()
    for _, *fingers in bm.SMPLX_HAND_JOINTS.values():
        body[:, fingers] = 0.0  # attach_hands must replace them
    out = ha.attach_hands(body, hands, frames, left_as_right, mano_flat, smplx_flat)  # (2, 55, 3)
    assert out.shape == (2, 55, 3) and out.dtype == torch.float64
    got = out.clone()
    if not smplx_flat:
        for side, (_, *fingers) in bm.SMPLX_HAND_JOINTS.items():
            got[:, fingers] += frames.smplx_hands_mean[side]
    torch.testing.assert_close(bm.axis_angle_to_matrix(got), R, atol=1e-9, rtol=0)
    smplx = bm.Skinning(bm.load_smplx(flat_hand_mean=smplx_flat), per_sample=False)
    shape, expression = torch.randn(2, 2, 10, generator=g, **DOUBLE)
    torch.testing.assert_close(smplx(out, shape, expression)[0], smplx(param, shape, expression)[0], atol=1e-9, rtol=0)
    # rotation matrices in (HaMeR's pred_mano_params: global_orient (B, 1, 3, 3)) and out
    if mano_flat and smplx_flat:
        mats = {s: dict(global_orient=bm.axis_angle_to_matrix(h["global_orient"])[:, None],
                        hand_pose=bm.axis_angle_to_matrix(h["hand_pose"])) for s, h in hands.items()}
        out_R = ha.attach_hands(bm.axis_angle_to_matrix(body[:, :22]), mats, frames, left_as_right)  # (2, 55, 3, 3)
        torch.testing.assert_close(out_R[:, list(range(22)) + list(range(25, 55))],
                                   R[:, list(range(22)) + list(range(25, 55))], atol=1e-9, rtol=0)
        torch.testing.assert_close(out_R[:, 22:25], torch.eye(3, **DOUBLE).expand(2, 3, 3, 3))  # J = 22: rest


def test_attached_hands_are_the_mano_meshes_they_came_from():
    """The independent oracle: with the stand-ins' exact frame offset, SMPL-X's hands after
    attach_hands are the MANO meshes of the given parameters (a left hand: the mirror image of the
    right MANO mesh), up to where the wrist sits. float32, HaMeR's rotation matrices."""
    g = torch.Generator().manual_seed(7)
    frames = ha.HandFrames(STANDIN_R_OFF, *list(vars(ha.hand_frames()).values())[1:])
    mano = bm.Skinning(bm.load_mano(), torch.float32, per_sample=False)
    smplx = bm.Skinning(bm.load_smplx(), torch.float32, per_sample=False)
    hand_R = bm.axis_angle_to_matrix(0.5 * torch.randn(3, 2, 16, 3, generator=g)).float()  # (B, 2 sides, 16, 3, 3)
    body = bm.axis_angle_to_matrix(0.5 * torch.randn(3, 22, 3, generator=g)).float()
    hands = {side: dict(global_orient=hand_R[:, i, :1], hand_pose=hand_R[:, i, 1:])
             for i, side in enumerate(("left", "right"))}
    R = ha.attach_hands(body, hands, frames)
    verts, joints = smplx(bm.matrix_to_axis_angle(R), torch.zeros(3, 10), torch.zeros(3, 10))
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    for i, side in enumerate(("left", "right")):
        mano_verts, mano_joints = mano(bm.matrix_to_axis_angle(hand_R[:, i]), torch.zeros(3, 10))
        mano_rest = mano.v_template.double()
        if side == "left":  # the mirror image of the right hand HaMeR saw
            mano_verts, mano_joints, mano_rest = mano_verts * mirror, mano_joints * mirror, mano_rest * mirror
        # at rest, SMPL-X's hand is MANO's turned by R_off and moved: find each MANO vertex in it
        mcp = bm.SMPLX_HAND_JOINTS[side][bm.MANO_MCP_JOINTS["middle"]]
        body_rest = smplx.J_template[mcp].double()
        middle_mcp = mano.J_template[bm.MANO_MCP_JOINTS["middle"]].double() * (mirror if side == "left" else 1)
        moved = (mano_rest - middle_mcp) @ STANDIN_R_OFF.T + body_rest
        distance, match = torch.cdist(moved, smplx.v_template.double()).min(1)
        assert distance.max() < 1e-6
        # posed: the same vertices, relative to the middle finger's knuckle
        got = verts[:, match] - joints[:, mcp, None]
        want = mano_verts - mano_joints[:, bm.MANO_MCP_JOINTS["middle"], None]
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


@given(seed=SEEDS, left=st.booleans())
@settings(deadline=None, max_examples=4)
@example(seed=0, left=False)
@example(seed=0, left=True)
def test_fit_mano_recovers_the_parameters_of_mano_meshes(seed, left):
    """Random MANO hands (any global orientation, fingers N(0, 0.6 rad), betas N(0, 1), a translation):
    fit_mano from the 778 vertices alone gives the mesh back (mean error measured 2e-14 m; asserted
    under a micrometre) and the parameters; a left hand is mirror(MANO(params)) + transl."""
    g = torch.Generator().manual_seed(seed)
    mano = bm.load_mano()
    skin = bm.Skinning(mano, per_sample=False)
    pose = torch.cat([2 * torch.randn(3, 1, 3, generator=g, **DOUBLE),
                      0.6 * torch.randn(3, 15, 3, generator=g, **DOUBLE)], 1)
    betas, transl = torch.randn(3, 10, generator=g, **DOUBLE), 0.2 * torch.randn(3, 3, generator=g, **DOUBLE)
    verts = skin(pose, betas)[0]
    verts = verts * torch.tensor([-1.0, 1.0, 1.0], **DOUBLE) if left else verts
    verts = verts + transl[:, None]
    fit = fitting.fit_mano(verts.view(3, 1, 778, 3), mano, left=left)
    assert fit["hand_pose"].shape == (3, 1, 15, 3) and fit["error"].shape == (3, 1)
    assert fit["error"].max() < 1e-6 and (fit["verts"] - verts[:, None]).norm(dim=-1).mean() < 1e-6
    torch.testing.assert_close(bm.axis_angle_to_matrix(fit["hand_pose"][:, 0]), bm.axis_angle_to_matrix(pose[:, 1:]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(bm.axis_angle_to_matrix(fit["global_orient"][:, 0]), bm.axis_angle_to_matrix(pose[:, 0]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(fit["betas"][:, 0], betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(fit["transl"][:, 0], transl, atol=1e-9, rtol=0)
