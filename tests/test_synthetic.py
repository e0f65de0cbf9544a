"""Tests for synthetic.py: the renderer against the brute-force z-buffer `synthetic.reference_rasterize`,
backgrounds, and the pose priors (hands, bodies, actions) and looks of the synthetic samples."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bodymodels
import data
import synthetic
from bodymodels import matrix_to_axis_angle

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# helpers

def icosphere(subdivisions=2):
    """Unit sphere mesh: verts (V, 3) float64, faces (F, 3) with outward counter-clockwise winding."""
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [tuple(c / math.sqrt(sum(x * x for x in v)) for c in v) for v in verts]
    for _ in range(subdivisions):
        midpoint, new_faces = {}, []

        def mid(a, b):
            if (a, b) not in midpoint:
                p = [(x + y) / 2 for x, y in zip(verts[a], verts[b])]
                norm = math.sqrt(sum(c * c for c in p))
                verts.append(tuple(c / norm for c in p))
                midpoint[(a, b)] = midpoint[(b, a)] = len(verts) - 1
            return midpoint[(a, b)]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)


def random_background(rng, image_size):
    """One sample's background as the datasets draw it: a pattern, upsampled to (H, W)."""
    pattern = torch.from_numpy(synthetic.background_patterns(synthetic.Draws([rng]))).float()
    return synthetic.upsample_backgrounds(pattern, *image_size)[0]


def random_triangle_soup(rng, count):
    """count random triangles in front of a camera K; -> verts (3 count, 3), faces (count, 3), K."""
    centres = torch.stack([torch.empty(count).uniform_(-0.3, 0.3, generator=rng),
                           torch.empty(count).uniform_(-0.3, 0.3, generator=rng),
                           torch.empty(count).uniform_(1.0, 3.0, generator=rng)], -1)
    verts = (centres[:, None, :] + 0.3 * torch.randn(count, 3, 3, generator=rng) * torch.tensor([1, 1, 0.3]))
    verts = verts.reshape(-1, 3)
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
    return verts.float(), torch.arange(3 * count).view(count, 3), K


# ---------------------------------------------------------------------------------------------
# 1. renderer

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), count=st.integers(1, 40))
@example(seed=0, count=1)
def test_rasterize_agrees_with_brute_force_zbuffer(seed, count):
    rng = torch.Generator().manual_seed(seed)
    verts, faces, K = random_triangle_soup(rng, count)
    height, width = 24, 32
    pix, face, bary = synthetic.rasterize(verts, faces, K, (height, width))
    oracle, margin, gap = synthetic.reference_rasterize(verts, faces, K, (height, width))
    got = torch.full((height * width,), -1, dtype=torch.long)
    got[pix] = face
    clear = (margin > 1e-3) & (gap > 1e-4)  # pixels far from every edge and without a depth tie
    assert torch.equal(got[clear], oracle[clear])
    # the barycentric weights reproduce the pixel centre
    uvw = verts.double() @ K.double().T
    uv = (uvw[:, :2] / uvw[:, 2:])[faces[face]]  # (P, 3, 2)
    centre = torch.stack([pix % width + 0.5, pix // width + 0.5], -1).double()
    assert torch.allclose((bary.double()[:, :, None] * uv).sum(1), centre, atol=1e-3)
    assert torch.allclose(bary.sum(1), torch.ones(len(pix)), atol=1e-5)


def test_rasterize_sphere_covers_its_projected_disc_without_cracks():
    verts, faces = icosphere(3)
    radius, depth, f = 0.1, 1.0, 400.0
    verts = (verts * radius + torch.tensor([0.0, 0.0, depth])).float()
    K = torch.tensor([[f, 0, 64], [0, f, 64], [0, 0, 1]])
    _, mask = synthetic.render_mesh(verts, faces, K, 128, return_mask=True)
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    r = ((xs - 64) ** 2 + (ys - 64) ** 2).sqrt()
    r_disc = f * radius / math.sqrt(depth**2 - radius**2)  # silhouette of a sphere seen in perspective
    assert mask[r < r_disc - 1.5].all()  # no cracks inside
    assert not mask[r > r_disc + 0.5].any()


def test_backface_culling_changes_nothing_for_a_closed_outward_mesh():
    verts, faces = icosphere(2)
    verts = (verts * torch.tensor([0.1, 0.06, 0.08]) + torch.tensor([0.02, -0.01, 0.5])).float()
    K = torch.tensor([[300.0, 0, 40], [0, 300.0, 36], [0, 0, 1]])
    both = synthetic.render_mesh(verts, faces, K, (72, 80))
    culled = synthetic.render_mesh(verts, faces, K, (72, 80), cull_backfaces=True)
    assert torch.allclose(both, culled, atol=1e-5) and both.max() > 0
    # culling with the winding reversed leaves only the inside of the far half: a different picture
    inside = synthetic.render_mesh(verts, faces.flip(1), K, (72, 80), cull_backfaces=True)
    assert not torch.allclose(both, inside, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_render_mesh_gives_the_same_image_on_the_gpu():
    verts, faces = icosphere(3)
    verts = (verts * torch.tensor([0.1, 0.06, 0.08]) + torch.tensor([0.02, -0.01, 0.5])).float()
    K = torch.tensor([[300.0, 0, 40], [0, 300.0, 36], [0, 0, 1]])
    background = random_background(data.sample_rng(0, 0, 0), (72, 80))
    cpu = synthetic.render_mesh(verts, faces, K, (72, 80), background=background)
    gpu = synthetic.render_mesh(verts.cuda(), faces.cuda(), K.cuda(), (72, 80), background=background.cuda())
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() < 1e-4
    zoom = torch.diag(torch.tensor([1.1, 1.1, 1.0], dtype=torch.float64))
    warped = data.warp_image(background.cuda(), zoom, (72, 80))
    assert warped.is_cuda


def test_render_mesh_lambert_shading_of_a_facing_square():
    # a square facing the camera, light from the camera: I = albedo (ambient + (1 - ambient) cos)
    verts = torch.tensor([[-1.0, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    K = torch.tensor([[8.0, 0, 8], [0, 8.0, 8], [0, 0, 1]])
    color, ambient = torch.tensor([0.8, 0.5, 0.2]), 0.3
    tilt = math.radians(60)
    light = (0.0, math.sin(tilt), -math.cos(tilt))
    image = synthetic.render_mesh(verts, faces, K, 16, color=color, light=light, ambient=ambient)
    expected = color * (ambient + (1 - ambient) * math.cos(tilt))
    assert torch.allclose(image[:, 8, 8], expected, atol=1e-5)
    assert torch.allclose(image[:, 0, 0], torch.zeros(3))  # outside: black background
    # winding does not matter
    flipped = synthetic.render_mesh(verts, faces.flip(1), K, 16, color=color, light=light, ambient=ambient)
    assert torch.allclose(image, flipped)


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
    """Design notes Sec. 7: flip (180 about x) after pitch / roll N(0, 10) after yaw U(-90, 90); every
    body joint's angle at most 2 rad. The person's front (+z) then points at the camera (-z) within
    90 degrees of yaw plus the small tilt, and up (+y) points up in the image (-y)."""
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
