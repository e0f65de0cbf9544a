"""Properties of metrics.py: Procrustes alignment, root-aligned and PA errors, F-score, AUC, the FreiHAND
table, the mean-shape baseline.

The oracle is a per-sample numpy/scipy re-implementation of the official FreiHAND evaluation
(lmb-freiburg/freihand eval.py and utils/eval_util.py): align_w_scale with scipy's
orthogonal_procrustes and no reflection check, F-scores from exact nearest-neighbour distances
(the original uses open3d; here scipy's k-d tree), AUC from per-point PCK curves over the dataset.
Our batched FreiHAND numbers must equal it to 1e-6 in float64 on every input, mirrored predictions
included (the official alignment then reflects); the body alignment (`procrustes_align`,
`pa_mpjpe`) keeps a proper rotation, as 4D-Humans' evaluation does. Beyond this oracle, fixtures
measured with the official code itself (tests/official/freihand, tests/official/4d_humans_eval)
hold both protocols. Random inputs: a hypothesis-drawn seed feeding a torch.Generator, float64.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

import metrics

SEEDS = st.integers(0, 2**31 - 1)
KINDS = st.sampled_from(["identity", "near_identity", "uniform", "near_pi", "half_turn"])
DOUBLE = dict(dtype=torch.float64)
FAST = settings(deadline=None, max_examples=25)




# -----------------------------------------------------------------------------
# The official protocol, one sample at a time (numpy + scipy)


def official_align_w_scale(gt, pred):
    """(aligned pred (N, 3), det of its rotation): centre, divide by Frobenius norm + 1e-8, scipy Procrustes,
    rescale."""
    gt_c, pred_c = gt - gt.mean(0), pred - pred.mean(0)
    s_gt, s_pred = np.linalg.norm(gt_c) + 1e-8, np.linalg.norm(pred_c) + 1e-8
    rotation, s = orthogonal_procrustes(gt_c / s_gt, pred_c / s_pred)
    return (pred_c / s_pred) @ rotation.T * s * s_gt + gt.mean(0), np.linalg.det(rotation)


def official_fscore(gt, pred, threshold):
    """calculate_fscore: nearest distances both ways, strict '<', F = 2 p r / (p + r) or 0."""
    d_gt = cKDTree(pred).query(gt)[0]  # for each gt point, the nearest pred point
    d_pred = cKDTree(gt).query(pred)[0]
    p, r = np.mean(d_pred < threshold), np.mean(d_gt < threshold)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def official_auc(errors, max_threshold=0.05):
    """EvalUtil.get_measures(0, max, 100) on errors (S, N): per-point PCK over the S samples, trapezoid area, mean."""
    thresholds = np.linspace(0.0, max_threshold, 100)
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    return np.mean([np.trapezoid((e[:, None] <= thresholds).mean(0), thresholds) / norm for e in errors.T])


def official_table(pred_joints, gt_joints, pred_verts, gt_verts):
    """The FreiHAND table (all aligned) from a loop over samples; inputs numpy, metres."""
    j_err, v_err, f5, f15 = [], [], [], []
    for pj, gj, pv, gv in zip(pred_joints, gt_joints, pred_verts, gt_verts):
        j_err.append(np.linalg.norm(official_align_w_scale(gj, pj)[0] - gj, axis=1))
        aligned = official_align_w_scale(gv, pv)[0]
        v_err.append(np.linalg.norm(aligned - gv, axis=1))
        f5.append(official_fscore(gv, aligned, 0.005))
        f15.append(official_fscore(gv, aligned, 0.015))
    j_err, v_err = np.stack(j_err), np.stack(v_err)
    return {"pa_mpjpe_mm": 1000 * j_err.mean(), "pa_mpvpe_mm": 1000 * v_err.mean(), "f5": np.mean(f5),
            "f15": np.mean(f15), "auc_joints": official_auc(j_err), "auc_verts": official_auc(v_err)}


# -----------------------------------------------------------------------------
# Random data


def random_rotations(g, n, kind):
    """(n, 3, 3) float64 rotation matrices with angles of the given kind (scipy builds them)."""
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, **DOUBLE), dim=-1)
    u = torch.rand(n, 1, generator=g, **DOUBLE)
    tiny = 10 ** (-12 + 11 * u)  # log-uniform in [1e-12, 0.1]
    angle = {"identity": 0 * u, "near_identity": tiny, "uniform": math.pi * u,
             "near_pi": math.pi - tiny, "half_turn": math.pi + 0 * u}[kind]
    return torch.from_numpy(Rotation.from_rotvec((axis * angle).numpy()).as_matrix())


def random_similarity(g, n, kind="uniform"):
    """scale (n,) log-uniform in [0.1, 10], rotation (n, 3, 3), translation (n, 3) of size ~10."""
    scale = 10 ** (2 * torch.rand(n, generator=g, **DOUBLE) - 1)
    return scale, random_rotations(g, n, kind), 10 * torch.randn(n, 3, generator=g, **DOUBLE)


def apply(similarity, points):
    """s R x + t on points (n, N, 3)."""
    scale, rotation, translation = similarity
    return scale[:, None, None] * points @ rotation.transpose(1, 2) + translation[:, None]


def hand_pair(g, batch, points, noise=0.004):
    """(pred, gt) (batch, points, 3) in metres: gt a hand-sized cloud 0.6 m from the camera, pred a
    similarity of it plus `noise` per axis, so the official rotation is proper and F@5 mm is mid-range."""
    gt = torch.randn(batch, points, 3, generator=g, **DOUBLE) * torch.tensor([0.04, 0.025, 0.015], **DOUBLE)
    gt = gt + torch.tensor([0.0, 0.0, 0.6], **DOUBLE)
    scale, rotation, translation = random_similarity(g, batch)
    pred = apply((0.9 + 0.02 * scale, rotation, 0.01 * translation), gt)
    return pred + noise * torch.randn(batch, points, 3, generator=g, **DOUBLE), gt


# -----------------------------------------------------------------------------
# Procrustes


@FAST
@given(seed=SEEDS, kind=KINDS, batch=st.integers(1, 3), points=st.integers(3, 40))
@example(seed=0, kind="identity", batch=1, points=3)
@example(seed=0, kind="half_turn", batch=2, points=21)
def test_procrustes_recovers_a_known_similarity(seed, kind, batch, points):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randn(batch, points, 3, generator=g, **DOUBLE)
    scale, rotation, translation = random_similarity(g, batch, kind)
    pred = apply((scale, rotation, translation), gt)  # pred = s R gt + t
    s, r, t = metrics.procrustes_transform(pred, gt)  # must be the inverse similarity
    torch.testing.assert_close(s, 1 / scale, rtol=1e-6, atol=0)  # rtol: the official +1e-8 in the norms
    torch.testing.assert_close(r, rotation.transpose(1, 2), rtol=0, atol=1e-9)
    torch.testing.assert_close(t, -(rotation.transpose(1, 2) @ translation[..., None])[..., 0] / scale[:, None],
                               rtol=1e-6, atol=1e-6)  # |t| reaches ~100 (translation 10, scale 0.1)
    torch.testing.assert_close(metrics.procrustes_align(pred, gt), gt, rtol=0, atol=1e-6)


@FAST
@given(seed=SEEDS, kind=KINDS)
@example(seed=0, kind="half_turn")
def test_procrustes_is_invariant_to_a_similarity_of_the_prediction(seed, kind):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randn(3, 21, 3, generator=g, **DOUBLE)
    pred = apply(random_similarity(g, 3), gt) + 0.3 * torch.randn(3, 21, 3, generator=g, **DOUBLE)
    moved = apply(random_similarity(g, 3, kind), pred)
    torch.testing.assert_close(metrics.procrustes_align(moved, gt), metrics.procrustes_align(pred, gt),
                               rtol=0, atol=1e-6)


@FAST
@given(seed=SEEDS, root=st.integers(0, 20), noise=st.sampled_from([0.0, 1e-6, 0.01, 0.3, 3.0]))
def test_pa_rms_error_never_exceeds_the_root_aligned_rms_error(seed, root, noise):
    """The exact property: Procrustes minimises the SUM OF SQUARED distances over all similarities,
    and moving pred's root (or centroid) onto gt's is one, so the PA root-mean-square error is at
    most the root-aligned (and the centroid-aligned) one; by Jensen, PA-MPJPE (a mean of norms) is
    at most that RMS too. PA-MPJPE <= root-aligned MPJPE (both means of norms) is NOT guaranteed."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.randn(4, 21, 3, generator=g, **DOUBLE)
    pred = apply(random_similarity(g, 4), gt) + noise * torch.randn(4, 21, 3, generator=g, **DOUBLE)
    pa_sq = (metrics.procrustes_align(pred, gt) - gt).square().sum(-1).mean(-1)  # (B,)
    root_sq = ((pred - pred[:, [root]]) - (gt - gt[:, [root]])).square().sum(-1).mean(-1)
    centroid_sq = ((pred - pred.mean(1, keepdim=True)) - (gt - gt.mean(1, keepdim=True))).square().sum(-1).mean(-1)
    slack = 1e-12  # the official +1e-8 in the norms moves the scale off the optimum by O(1e-8): O(1e-16) in squares
    assert (pa_sq <= root_sq + slack).all() and (pa_sq <= centroid_sq + slack).all()
    assert (metrics.pa_mpjpe(pred, gt) <= root_sq.sqrt() + 1e-6).all()


def on_line(g, points, direction):
    """(2, points, 3): random points on the line through the origin along `direction`."""
    return torch.randn(2, points, 1, generator=g, **DOUBLE) * torch.tensor(direction, **DOUBLE)


def gaussian(g, points):
    return torch.randn(2, points, 3, generator=g, **DOUBLE)


DEGENERATE = {  # case: (make pred, make gt); None = 5 Gaussian points
    "pred_all_equal": (lambda g: torch.ones(2, 5, 3, **DOUBLE) * 0.3, None),
    "gt_all_equal": (None, lambda g: torch.full((2, 5, 3), -2.0, **DOUBLE)),
    "both_all_equal": (lambda g: torch.ones(2, 5, 3, **DOUBLE), lambda g: torch.zeros(2, 5, 3, **DOUBLE)),
    "pred_collinear": (lambda g: on_line(g, 5, [1.0, 2.0, -1.0]), None),
    "gt_collinear": (None, lambda g: on_line(g, 5, [0.0, 0.0, 1.0])),
    "one_point": (lambda g: gaussian(g, 1), lambda g: gaussian(g, 1)),
    "two_points": (lambda g: gaussian(g, 2), lambda g: gaussian(g, 2)),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_sets_give_finite_numbers_and_proper_rotations(case):
    g = torch.Generator().manual_seed(0)
    make_pred, make_gt = DEGENERATE[case]
    pred = make_pred(g) if make_pred else torch.randn(2, 5, 3, generator=g, **DOUBLE)
    gt = make_gt(g) if make_gt else torch.randn(pred.shape, generator=g, **DOUBLE)
    aligned = metrics.procrustes_align(pred, gt)
    scale, rotation, translation = metrics.procrustes_transform(pred, gt)
    assert torch.isfinite(aligned).all() and torch.isfinite(scale).all() and torch.isfinite(translation).all()
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(2, **DOUBLE))
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3, **DOUBLE).expand(2, 3, 3))
    if "all_equal" in case or case == "one_point":  # nothing to rotate or scale: everything lands on the gt centroid
        torch.testing.assert_close(aligned, gt.mean(1, keepdim=True).expand_as(gt))
    table = metrics.freihand_table(pred, gt, pred, gt)
    assert all(math.isfinite(v) for v in table.values()), table
    assert torch.isfinite(metrics.f_score(pred, gt, 0.5)).all()


@FAST
@given(seed=SEEDS)
def test_procrustes_maps_a_collinear_prediction_onto_a_collinear_gt(seed):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(2, 1, 3, generator=g, **DOUBLE), dim=-1)
    gt = torch.randn(2, 7, 1, generator=g, **DOUBLE) * direction  # (2, 7, 3) on a line
    pred = apply(random_similarity(g, 2), gt)  # still collinear: the rotation about the line is free
    torch.testing.assert_close(metrics.procrustes_align(pred, gt), gt, rtol=0, atol=1e-6)


@FAST
@given(seed=SEEDS)
def test_body_alignment_stays_proper_where_the_freihand_table_reflects_as_the_official_one(seed):
    """A mirrored prediction: the official align_w_scale answers with a reflection (det -1) and a
    smaller error, and freihand_table follows it; the body alignment (4D-Humans) keeps det +1."""
    g = torch.Generator().manual_seed(seed)
    pred, gt = hand_pair(g, 3, 21)
    mirrored = pred * torch.tensor([-1.0, 1.0, 1.0], **DOUBLE)
    scale, rotation, _ = metrics.procrustes_transform(mirrored, gt)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(3, **DOUBLE))
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3, **DOUBLE).expand(3, 3, 3))
    ours = (metrics.procrustes_align(mirrored, gt) - gt).square().sum((1, 2))
    official_errors = []
    for b in range(3):
        official, det = official_align_w_scale(gt[b].numpy(), mirrored[b].numpy())
        assert det < 0
        assert ours[b] >= ((official - gt[b].numpy()) ** 2).sum() - 1e-12
        official_errors.append(np.linalg.norm(official - gt[b].numpy(), axis=1))
    table = metrics.freihand_table(mirrored, gt, mirrored, gt)
    assert abs(table["pa_mpjpe_mm"] - 1000 * np.mean(official_errors)) <= 1e-6


OFFICIAL = Path(__file__).parent / "official"


def test_freihand_table_equals_the_official_eval_script_fixture_mirrored_samples_included():
    """tests/official/freihand: lmb-freiburg/freihand eval.py run on five samples, two of them mirrored."""
    f = np.load(OFFICIAL / "freihand" / "freihand_eval.npz")
    assert list(f["rotation_det"].round()) == [1, 1, 1, -1, -1]
    table = metrics.freihand_table(f["pred_joints"], f["gt_joints"], f["pred_verts"], f["gt_verts"])
    for key, value in table.items():
        assert abs(value - float(f[key])) <= 1e-9 * max(1.0, abs(float(f[key]))), (key, value, float(f[key]))
    fscores = [metrics.f_score(metrics._aligned(torch.as_tensor(f["pred_verts"]).double(),
                                                torch.as_tensor(f["gt_verts"]).double(), reflection=True),
                               torch.as_tensor(f["gt_verts"]).double(), t) for t in (0.005, 0.015)]
    np.testing.assert_allclose(torch.stack(fscores, 1).numpy(), f["fscores"], rtol=0, atol=1e-12)
    aligned = metrics._aligned(torch.as_tensor(f["pred_joints"]).double(), torch.as_tensor(f["gt_joints"]).double(),
                               reflection=True)
    np.testing.assert_allclose(aligned.numpy(), f["aligned_joints"], rtol=0, atol=1e-12)


def test_body_errors_equal_the_4d_humans_evaluator_fixture():
    """tests/official/4d_humans_eval: hmr2 Evaluator (pelvis-centred MPJPE, proper-rotation
    reconstruction error on 3DPW's / H36M's 14 joints), two of five samples mirrored."""
    f = np.load(OFFICIAL / "4d_humans_eval" / "body_eval.npz")
    keep, pelvis = list(f["keypoint_list"]), int(f["pelvis_index"])
    pred, gt = torch.as_tensor(f["pred_joints"]).double(), torch.as_tensor(f["gt_joints"]).double()
    pred, gt = pred - pred[:, pelvis:pelvis + 1], gt - gt[:, pelvis:pelvis + 1]
    np.testing.assert_allclose(1000 * metrics.mpjpe(pred[:, keep], gt[:, keep], None).numpy(), f["mpjpe_mm"], rtol=1e-5)
    np.testing.assert_allclose(1000 * metrics.pa_mpjpe(pred[:, keep], gt[:, keep]).numpy(), f["pa_mpjpe_mm"], rtol=1e-5)
    assert (f["pa_mpjpe_mm"][3:] > 5 * f["pa_mpjpe_mm"][:3].max()).all()  # a mirror is not undone


@FAST
@given(seed=SEEDS, tile=st.integers(1, 100), batch=st.integers(1, 7), points=st.integers(8, 40))
@example(seed=0, tile=1, batch=3, points=21)
@example(seed=0, tile=50, batch=7, points=21)
def test_alignment_in_tiles_equals_one_whole_batch_pass_and_the_official_loop(seed, tile, batch, points):
    """procrustes_align walks tiles of about ALIGN_TILE_POINTS points (one sample when a sample is
    bigger). Any tiling (uneven last tile, one sample per tile) must give the numbers of one pass over
    the whole batch (the default tile holds these small batches whole) and of the official loop."""
    g = torch.Generator().manual_seed(seed)
    pred, gt = hand_pair(g, batch, points)

    def everything():
        return (metrics.procrustes_align(pred, gt), metrics.pa_mpjpe(pred, gt), *metrics.procrustes_transform(pred, gt))

    whole = everything()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "ALIGN_TILE_POINTS", tile)
        tiled = everything()
    for ours, reference in zip(tiled, whole):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    for b in range(batch):
        expected, det = official_align_w_scale(gt[b].numpy(), pred[b].numpy())
        assert det > 0
        np.testing.assert_allclose(tiled[0][b].numpy(), expected, rtol=0, atol=1e-9)


def test_alignment_and_pa_error_gradients_equal_finite_differences_across_tiles():
    """Tiles are joined by differentiable ops (torch.cat, copies into slices), never out= buffers: the
    alignment and PA errors stay differentiable (oracle: torch.autograd.gradcheck's finite
    differences), also when every sample is its own tile."""
    g = torch.Generator().manual_seed(0)
    pred, gt = hand_pair(g, 3, 6, noise=0.01)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "ALIGN_TILE_POINTS", 4)
        assert torch.autograd.gradcheck(lambda p: metrics.pa_mpjpe(p, gt), (pred.requires_grad_(),))
        assert torch.autograd.gradcheck(lambda p: metrics.procrustes_align(p, gt), (pred,))


# -----------------------------------------------------------------------------
# Against the official protocol


@settings(deadline=None, max_examples=10)
@given(seed=SEEDS, batch=st.integers(1, 3), noise=st.sampled_from([0.002, 0.004, 0.008]))
def test_batched_numbers_equal_the_official_protocol(seed, batch, noise):
    g = torch.Generator().manual_seed(seed)
    pred_j, gt_j = hand_pair(g, batch, 21, noise)
    pred_v, gt_v = hand_pair(g, batch, 778, noise)
    ours = metrics.freihand_table(pred_j, gt_j, pred_v, gt_v)
    official = official_table(pred_j.numpy(), gt_j.numpy(), pred_v.numpy(), gt_v.numpy())
    assert list(ours) == ["pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_joints", "auc_verts"]
    for key in ours:
        assert abs(ours[key] - official[key]) <= 1e-6, (key, ours[key], official[key])
    # per sample too: the aligned points, PA errors, AUCs, F-scores
    aligned, pa_mpvpe = metrics.procrustes_align(pred_v, gt_v), metrics.pa_mpvpe(pred_v, gt_v)
    f5, f15 = metrics.f_score(aligned, gt_v, 0.005), metrics.f_score(aligned, gt_v, 0.015)
    for b in range(batch):
        expected, det = official_align_w_scale(gt_v[b].numpy(), pred_v[b].numpy())
        assert det > 0  # the construction keeps the official rotation proper: the two must agree
        np.testing.assert_allclose(aligned[b].numpy(), expected, rtol=0, atol=1e-9)
        errors = np.linalg.norm(expected - gt_v[b].numpy(), axis=1)
        assert abs(pa_mpvpe[b].item() - errors.mean()) <= 1e-9
        assert abs(metrics.auc_pck(1000 * errors[None])[0].item() - official_auc(errors[None])) <= 1e-6
        assert abs(f5[b].item() - official_fscore(gt_v[b].numpy(), expected, 0.005)) <= 1e-12
        assert abs(f15[b].item() - official_fscore(gt_v[b].numpy(), expected, 0.015)) <= 1e-12


@FAST
@given(seed=SEEDS, n=st.integers(1, 150), m=st.integers(1, 150), log_scale=st.floats(-3, 3),
       offset=st.sampled_from([0.0, 1.0, 1e3]))
def test_f_score_equals_the_kd_tree_oracle_for_any_sizes_and_units(seed, n, m, log_scale, offset):
    g = torch.Generator().manual_seed(seed)
    scale = 10**log_scale
    gt = scale * (torch.randn(2, m, 3, generator=g, **DOUBLE) + offset)
    pred = scale * (torch.randn(2, n, 3, generator=g, **DOUBLE) + offset)
    threshold = scale * 10 ** (torch.rand(1, generator=g, **DOUBLE).item() - 1)  # 0.1 .. 1 of the spread
    f = metrics.f_score(pred, gt, threshold)
    for b in range(2):
        assert abs(f[b].item() - official_fscore(gt[b].numpy(), pred[b].numpy(), threshold)) <= 1e-12


@FAST
@given(seed=SEEDS, points=st.integers(2, 60))
def test_f_score_decides_distances_closer_to_the_threshold_than_float32_can_tell(seed, points):
    """Each pred point sits at threshold * (1 -+ 1e-9) from its gt partner (sparse clouds, so the
    partner is the nearest point). float32 cannot separate these; the float64 re-check must."""
    g = torch.Generator().manual_seed(seed)
    threshold = 0.01
    gt = torch.randn(1, points, 3, generator=g, **DOUBLE) + 5.0  # spread 1 >> threshold, far from the origin
    direction = torch.nn.functional.normalize(torch.randn(1, points, 3, generator=g, **DOUBLE), dim=-1)
    inside = torch.rand(1, points, 1, generator=g) < 0.5
    pred = gt + direction * threshold * (1 + 1e-9 - 2e-9 * inside.double())
    expected = official_fscore(gt[0].numpy(), pred[0].numpy(), threshold)
    d_pred = cKDTree(gt[0].numpy()).query(pred[0].numpy())[0]
    assert np.allclose(np.abs(d_pred / threshold - 1), 1e-9, rtol=1e-3)  # the construction did what it says
    assert metrics.f_score(pred, gt, threshold)[0].item() == pytest.approx(expected, abs=1e-12)


@FAST
@given(seed=SEEDS, n=st.integers(1, 50), m=st.integers(1, 50))
def test_f_score_is_in_the_unit_interval_and_one_at_zero_error(seed, n, m):
    g = torch.Generator().manual_seed(seed)
    pred, gt = torch.randn(3, n, 3, generator=g, **DOUBLE), torch.randn(3, m, 3, generator=g, **DOUBLE)
    f = metrics.f_score(pred, gt, 0.5)
    assert ((f >= 0) & (f <= 1)).all()
    shuffled = gt[:, torch.randperm(m, generator=g)]  # point order does not matter
    torch.testing.assert_close(metrics.f_score(shuffled, gt, 1e-9), torch.ones(3, **DOUBLE))
    torch.testing.assert_close(metrics.f_score(pred + 100.0, gt, 0.5), torch.zeros(3, **DOUBLE))


@FAST
@given(seed=SEEDS)
def test_screen_error_stays_well_inside_the_undecided_band(seed):
    """The float32 screen may only be trusted outside SCREEN_TOL; its error must stay far below it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 300, 3, generator=g, **DOUBLE) * torch.rand(2, 1, 3, generator=g, **DOUBLE)
    y = x + 0.05 * torch.randn(2, 300, 3, generator=g, **DOUBLE)
    radius = x.norm(dim=-1).amax(1) + y.norm(dim=-1).amax(1)  # the normalisation _close_fractions uses
    x, y = x / radius[:, None, None], y / radius[:, None, None]
    dx, dy = metrics._screen_sq_distances(x, y)
    exact = (x[:, :, None] - y[:, None]).square().sum(-1)  # (B, N, M)
    assert (dx - exact.amin(2)).abs().max() <= metrics.SCREEN_TOL / 4
    assert (dy - exact.amin(1)).abs().max() <= metrics.SCREEN_TOL / 4


# -----------------------------------------------------------------------------
# AUC and root-aligned errors


@FAST
@given(seed=SEEDS)
def test_auc_is_one_at_zero_error_zero_beyond_the_range_and_falls_as_errors_grow(seed):
    g = torch.Generator().manual_seed(seed)
    errors = 60 * torch.rand(3, 21, generator=g, **DOUBLE)  # millimetres
    torch.testing.assert_close(metrics.auc_pck(torch.zeros(3, 21, **DOUBLE)), torch.ones(3, **DOUBLE))
    torch.testing.assert_close(metrics.auc_pck(errors + 50.1), torch.zeros(3, **DOUBLE))
    auc = metrics.auc_pck(errors)
    assert ((auc >= 0) & (auc <= 1)).all() and (metrics.auc_pck(errors + 1.0) <= auc).all()
    pred = torch.randn(3, 21, 3, generator=g, **DOUBLE)
    torch.testing.assert_close(metrics.auc_pck(pred, pred.clone()), torch.ones(3, **DOUBLE))
    np.testing.assert_allclose(metrics.auc_pck(errors / 1000, max_threshold=0.05).numpy(),
                               [official_auc(e[None].numpy()) for e in errors / 1000], rtol=0, atol=1e-12)


def test_auc_of_errors_at_half_the_range_is_one_half():
    # PCK is 0 at thresholds 50 k / 99 < 25 (k <= 49) and 1 from k = 50: area 49.5 steps of 99
    assert metrics.auc_pck(torch.full((1, 5), 25.0, **DOUBLE)).item() == pytest.approx(0.5, abs=1e-12)


@FAST
@given(seed=SEEDS, root=st.integers(-21, 20))
def test_root_aligned_errors_ignore_translation_and_match_a_direct_computation(seed, root):
    g = torch.Generator().manual_seed(seed)
    pred, gt = torch.randn(3, 21, 3, generator=g, **DOUBLE), torch.randn(3, 21, 3, generator=g, **DOUBLE)
    p, q = pred.numpy(), gt.numpy()
    direct = np.linalg.norm((p - p[:, [root]]) - (q - q[:, [root]]), axis=-1).mean(-1)
    np.testing.assert_allclose(metrics.mpjpe(pred, gt, root).numpy(), direct, rtol=1e-12)
    shifted = pred + torch.randn(3, 1, 3, generator=g, **DOUBLE)
    torch.testing.assert_close(metrics.mpvpe(shifted, gt, root), metrics.mpjpe(pred, gt, root))
    np.testing.assert_allclose(metrics.mpjpe(pred, gt, None).numpy(), np.linalg.norm(p - q, axis=-1).mean(-1))


def test_float32_and_numpy_inputs_give_the_float64_table():
    g = torch.Generator().manual_seed(1)
    pred_j, gt_j = (x.float() for x in hand_pair(g, 3, 21))
    pred_v, gt_v = (x.float() for x in hand_pair(g, 3, 778))
    as_float64 = metrics.freihand_table(pred_j.double(), gt_j.double(), pred_v.double(), gt_v.double())
    assert metrics.freihand_table(pred_j, gt_j, pred_v, gt_v) == as_float64
    assert metrics.freihand_table(pred_j.numpy(), gt_j.numpy(), pred_v.numpy(), gt_v.numpy()) == as_float64


# -----------------------------------------------------------------------------
# The mean-shape baseline


def similar_copies(g, shape, count, kind):
    """`count` copies of shape (P, 3) under random similarities (rotations of `kind`, scale in
    [0.5, 2], shift ~0.5), every third one mirrored and flagged left: (count, P, 3), is_right (count,)."""
    scale = 0.5 + 1.5 * torch.rand(count, generator=g, **DOUBLE)
    shift = 0.5 * torch.randn(count, 3, generator=g, **DOUBLE)
    copies = apply((scale, random_rotations(g, count, kind), shift), shape.expand(count, -1, -1))
    is_right = torch.arange(count) % 3 != 0
    return metrics.mirror_x(copies, is_right), is_right


@FAST
@given(seed=SEEDS, batch=st.integers(0, 6), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_mirror_x_round_trips_exactly_and_negates_only_x_of_left_samples(seed, batch, dtype):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(batch, 7, 3, generator=g, dtype=dtype)
    is_right = torch.rand(batch, generator=g) < 0.5
    mirrored = metrics.mirror_x(points, is_right)
    assert mirrored.dtype == dtype and torch.equal(metrics.mirror_x(mirrored, is_right), points)
    assert torch.equal(mirrored[is_right], points[is_right]) and torch.equal(mirrored[..., 1:], points[..., 1:])
    assert torch.equal(mirrored[~is_right][..., 0], -points[~is_right][..., 0])
    if (~is_right).any():  # a mirror image is no pose: no proper rotation undoes it (a generic set is chiral)
        assert (metrics.pa_mpjpe(mirrored[~is_right].double(), points[~is_right].double()) > 1e-3).all()


@FAST
@given(seed=SEEDS, kind=KINDS, count=st.integers(1, 12))
@example(seed=0, kind="identity", count=1)
@example(seed=0, kind="half_turn", count=5)
def test_mean_shape_of_one_shape_in_many_similarity_poses_is_that_shape(seed, kind, count):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(40, 3, generator=g, **DOUBLE)
    copies = apply(random_similarity(g, count, kind), shape.expand(count, -1, -1))  # scales 0.1 .. 10
    mean = metrics.mean_shape(copies)
    assert mean.shape == (40, 3) and mean.dtype == torch.float64 and torch.equal(mean[0], torch.zeros(3, **DOUBLE))
    assert metrics.pa_mpjpe(mean[None], shape[None]).item() < 1e-6  # the official +1e-8 in the norms: O(1e-8)


@settings(deadline=None, max_examples=10)
@given(seed=SEEDS, kind=KINDS)
@example(seed=0, kind="identity")
@example(seed=0, kind="half_turn")
def test_mean_shape_baseline_of_one_hand_in_many_poses_predicts_that_hand_left_and_right(seed, kind):
    """Training labels = one hand H (21 joints + 778 vertices, float32 as a dataset gives them) under
    random similarities, every third one mirrored and flagged left. The baseline predicts H for right
    samples and mirrored H for left ones, up to a similarity, so its PA errors vanish; not mirroring
    back fails on the left samples, and a plain average in camera coordinates is a blur."""
    g = torch.Generator().manual_seed(seed)
    hand = 0.05 * torch.randn(21 + 778, 3, generator=g, **DOUBLE)
    train, train_right = similar_copies(g, hand, 30, kind)
    labels = dict(joints3d=train[:, :21].float(), verts=train[:, 21:].float(), is_right=train_right)
    baseline = metrics.MeanShapeBaseline(labels)
    assert {k: (tuple(v.shape), v.dtype) for k, v in baseline.mean.items()} == {
        "joints3d": ((21, 3), torch.float32), "verts": ((778, 3), torch.float32)}
    assert torch.equal(baseline.mean["joints3d"][0], torch.zeros(3))  # relative to point 0 of the first key
    test, test_right = similar_copies(g, hand, 9, "uniform")
    gt = dict(joints3d=test[:, :21].float(), verts=test[:, 21:].float(), is_right=test_right)
    pred = baseline(gt)
    for key in ("joints3d", "verts"):
        assert pred[key].shape == gt[key].shape
        assert metrics.pa_mpjpe(pred[key].double(), gt[key].double()).max() < 1e-5
    unmirrored = baseline({"joints3d": gt["joints3d"]})["joints3d"]  # no flags: every sample read as right
    errors = metrics.pa_mpjpe(unmirrored.double(), gt["joints3d"].double())
    assert (errors[test_right] < 1e-5).all() and (errors[~test_right] > 1e-3).all()
    blur = labels["joints3d"].mean(0, keepdim=True).expand(9, -1, -1)
    assert metrics.pa_mpjpe(blur.double(), gt["joints3d"].double()).mean() > 1e-3


def test_mean_shape_baseline_skips_absent_keys_and_aligns_present_keys_together():
    g = torch.Generator().manual_seed(0)
    joints, verts = torch.randn(6, 4, 3, generator=g), torch.randn(6, 9, 3, generator=g)
    # only joints, no flags: the mean shape of the joints; every gt sample is read as right
    alone = metrics.MeanShapeBaseline({"joints3d": joints})
    assert list(alone.mean) == ["joints3d"] and torch.equal(alone.mean["joints3d"], metrics.mean_shape(joints))
    assert torch.equal(alone({"joints3d": torch.zeros(2, 4, 3)})["joints3d"], alone.mean["joints3d"].expand(2, -1, -1))
    flagged = alone({"joints3d": torch.zeros(2, 4, 3), "is_right": torch.tensor([False, True])})["joints3d"]
    assert torch.equal(flagged, torch.stack([alone.mean["joints3d"] * torch.tensor([-1.0, 1.0, 1.0]),
                                             alone.mean["joints3d"]]))
    # both keys, in `keys` order whatever the dict order: one mean of the stacked points, split back
    both = metrics.MeanShapeBaseline({"verts": verts, "joints3d": joints, "is_right": torch.ones(6, dtype=torch.bool)})
    stacked = metrics.mean_shape(torch.cat([joints, verts], 1).double()).float()
    assert list(both.mean) == ["joints3d", "verts"]
    assert torch.equal(torch.cat([both.mean["joints3d"], both.mean["verts"]]), stacked)
    # mirror_key=None: flags are ignored when fitting and predicting
    left = torch.zeros(6, dtype=torch.bool)
    unflagged = metrics.MeanShapeBaseline({"joints3d": joints, "is_right": left}, mirror_key=None)
    assert torch.equal(unflagged.mean["joints3d"], alone.mean["joints3d"])
    assert torch.equal(unflagged({"joints3d": joints, "is_right": left})["joints3d"][0], alone.mean["joints3d"])


# -----------------------------------------------------------------------------
# Bad input

GOOD = torch.zeros(2, 21, 3)
NAN = GOOD.clone().index_put_((torch.tensor([1]), torch.tensor([3]), torch.tensor([0])), torch.tensor(math.nan))
INF = GOOD.clone().fill_(math.inf)
BAD_CALLS = {
    "nan_pred": (lambda: metrics.pa_mpjpe(NAN, GOOD), r"pred \(shape \(2, 21, 3\)\) has 1 non-finite"),
    "inf_gt": (lambda: metrics.procrustes_align(GOOD, INF), r"gt \(shape \(2, 21, 3\)\) has 126 non-finite"),
    "shape_mismatch": (lambda: metrics.mpjpe(GOOD, torch.zeros(2, 20, 3)),
                       r"\(2, 21, 3\) but gt has shape \(2, 20, 3\)"),
    "no_batch_axis": (lambda: metrics.pa_mpvpe(torch.zeros(21, 3), torch.zeros(21, 3)),
                      r"pred has shape \(21, 3\); expected \(B, N, 3\)"),
    "two_coordinates": (lambda: metrics.mpvpe(torch.zeros(2, 21, 2), torch.zeros(2, 21, 2)),
                        r"\(2, 21, 2\); expected \(B, N, 3\)"),
    "no_points": (lambda: metrics.procrustes_transform(torch.zeros(2, 0, 3), torch.zeros(2, 0, 3)), r"N >= 1"),
    "root_out_of_range": (lambda: metrics.mpjpe(GOOD, GOOD, root_index=21), r"root_index=21 is out of range for 21"),
    "f_batch_mismatch": (lambda: metrics.f_score(GOOD, torch.zeros(3, 5, 3), 0.1), r"expected the same batch size"),
    "f_threshold": (lambda: metrics.f_score(GOOD, GOOD, 0.0), r"threshold=0.0; expected a positive"),
    "auc_errors_shape": (lambda: metrics.auc_pck(GOOD), r"errors has shape \(2, 21, 3\)"),
    "auc_nan_errors": (lambda: metrics.auc_pck(torch.tensor([[math.nan]])), r"expected finite per-point errors"),
    "table_nan_verts": (lambda: metrics.freihand_table(GOOD, GOOD, NAN, GOOD), r"pred_verts \(shape \(2, 21, 3\)\)"),
    "table_batch": (lambda: metrics.freihand_table(GOOD, GOOD, GOOD[:1], GOOD[:1]), r"same batch size"),
    "mirror_flags": (lambda: metrics.mirror_x(GOOD, torch.ones(3, dtype=torch.bool)), r"is_right \(3,\)"),
    "mean_of_nothing": (lambda: metrics.mean_shape(GOOD[:0]), r"at least one shape"),
    "baseline_keys": (lambda: metrics.MeanShapeBaseline({"pose": GOOD}), r"at least one of \['joints3d', 'verts'\]"),
    "baseline_batch": (lambda: metrics.MeanShapeBaseline({"joints3d": GOOD, "verts": GOOD[:1]}), r"one n for all"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_a_value_error_naming_the_argument_and_shape(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------
# Bodies: errors in mm, codebook usage, the mean-pose baseline


def test_body_errors_are_millimetres_pelvis_aligned_and_zero_on_the_truth():
    g = torch.Generator().manual_seed(0)
    joints, verts = torch.randn(5, 24, 3, generator=g), torch.randn(5, 50, 3, generator=g)
    shift = torch.randn(5, 1, 3, generator=g)
    same = metrics.body_errors(joints + shift, joints, verts + shift, verts)
    assert all(v < 1e-3 for v in same.values()) and set(same) == {"mpjpe_mm", "pa_mpjpe_mm", "pve_mm"}
    moved = joints.clone()
    moved[:, 5] += torch.tensor([0.0, 0.0, 0.024])  # one of 24 joints 24 mm off: MPJPE 1 mm
    assert metrics.body_errors(moved, joints, prefix="x_")["x_mpjpe_mm"] == pytest.approx(1.0, rel=1e-5)


def test_body_metrics_scores_every_variant_and_the_refinement_fraction():
    g = torch.Generator().manual_seed(1)
    gt = {"joints3d": torch.randn(4, 24, 3, generator=g), "verts": torch.randn(4, 30, 3, generator=g)}
    pred = {"joints3d": gt["joints3d"] + 0.01, "verts": gt["verts"] + 0.01, "table_a_joints3d": gt["joints3d"] * 1.1,
            "refined_joints3d": gt["joints3d"], "refined_verts": gt["verts"],
            "reproj_error_px": torch.tensor([2.0, 2.0, 2.0, 2.0]),
            "refined_reproj_error_px": torch.tensor([1.0, 3.0, 1.0, 1.0])}
    out = metrics.body_metrics(pred, gt)
    assert next(iter(out)) == "mpjpe_mm" and out["mpjpe_mm"] == pytest.approx(0.0, abs=1e-4)  # a shift: pelvis-aligned
    assert out["refined_pve_mm"] == pytest.approx(0.0, abs=1e-4) and "table_a_pve_mm" not in out
    assert out["table_a_mpjpe_mm"] > 10 and out["table_a_pa_mpjpe_mm"] < 1e-3  # a scaling: PA removes it
    assert out["refine_2d_improved_fraction"] == 0.75


def test_codebook_usage_perplexity_and_dead_codes():
    assert metrics.codebook_usage(torch.arange(8).repeat(3), 10) == pytest.approx({"codebook_perplexity": 8.0,
                                                                                    "dead_codes": 2.0})
    assert metrics.codebook_usage(torch.zeros(5, 7, dtype=torch.long), 4)["codebook_perplexity"] == pytest.approx(1.0)


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_mean_rotations_is_proper_and_recovers_a_concentrated_set(seed):
    g = torch.Generator().manual_seed(seed)
    centre = torch.linalg.qr(torch.randn(3, 3, 3, dtype=torch.float64, generator=g))[0]
    centre = centre * torch.sign(torch.det(centre))[:, None, None]  # (3 joints) proper rotations
    small = torch.tensor(Rotation.from_rotvec(0.05 * torch.randn(40 * 3, 3, generator=g).numpy()).as_matrix())
    small = small.view(40, 3, 3, 3)
    mean = metrics.mean_rotations(centre @ small)
    assert torch.allclose(torch.det(mean), torch.ones(3, dtype=torch.float64))
    assert (mean - centre).abs().max() < 0.05


def test_mean_pose_baseline_predicts_the_mean_pose_through_smpl():
    import bodymodels
    g = torch.Generator().manual_seed(0)
    pose = torch.zeros(6, 24, 3)
    pose[:, 0] = torch.tensor([math.pi, 0.0, 0.0])  # upright in the camera
    pose[:, 1:] = 0.2 * torch.randn(6, 23, 3, generator=g)
    same = pose[:1].expand(6, -1, -1)
    shape = torch.randn(6, 10, generator=g)
    baseline = metrics.MeanPoseBaseline({"smpl_pose": same, "smpl_shape": shape}, prefixes=("", "refined_"))
    out = baseline({"smpl_shape": shape[:2]})
    skin = bodymodels.Skinning(bodymodels.load_smpl(), torch.float32)
    verts, joints = skin(same[:2], shape.mean(0).expand(2, -1))
    assert set(out) == {"joints3d", "verts", "refined_joints3d", "refined_verts"}
    torch.testing.assert_close(out["joints3d"], joints, atol=1e-4, rtol=0)
    own = metrics.MeanPoseBaseline({"smpl_pose": same, "smpl_shape": shape}, own_shape=True)({"smpl_shape": shape[:2]})
    torch.testing.assert_close(own["verts"], skin(same[:2], shape[:2])[0], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"smpl_pose \(n, 24, 3\)"):
        metrics.MeanPoseBaseline({"smpl_pose": pose[:, :5], "smpl_shape": shape})


# -----------------------------------------------------------------------------
# The body benchmarks' protocol (4D-Humans eval.py on 3DPW-TEST, H36M-VAL-P2, EMDB)


def test_hmr2_protocol_equals_the_4d_humans_evaluator_fixture():
    """hmr2_protocol on the fixture's 44 keypoints: the Evaluator's numbers, with its own keypoint list and pelvis."""
    f = np.load(OFFICIAL / "4d_humans_eval" / "body_eval.npz")
    assert tuple(f["keypoint_list"]) == metrics.HMR2_KEYPOINT_LIST
    assert int(f["pelvis_index"]) == metrics.HMR2_PELVIS_INDEX
    gt = np.concatenate([f["gt_joints"], np.ones((*f["gt_joints"].shape[:2], 1), np.float32)], -1)  # + confidence
    e, pa = metrics.hmr2_protocol(f["pred_joints"], gt)
    np.testing.assert_allclose(1000 * e.numpy(), f["mpjpe_mm"], rtol=1e-5)
    np.testing.assert_allclose(1000 * pa.numpy(), f["pa_mpjpe_mm"], rtol=1e-5)


def test_hmr2_protocol_by_hand_reads_only_its_14_joints_after_the_pelvis():
    """A hand-made case: gt keypoints at 0; the prediction moved as a whole (the pelvis takes it away),
    one scored joint 3 cm off (MPJPE = 30 / 14 mm), junk on every keypoint the protocol never reads."""
    gt = torch.zeros(1, 44, 4, dtype=torch.float64)
    pred = torch.full((1, 44, 3), 7.0, dtype=torch.float64)  # unscored keypoints: far away
    scored = list(metrics.HMR2_KEYPOINT_LIST) + [metrics.HMR2_PELVIS_INDEX]
    gt[0, scored, :3] = torch.randn(15, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pred[0, scored] = gt[0, scored, :3] + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    pred[0, 27, 0] += 0.03
    e, pa = metrics.hmr2_protocol(pred, gt)
    assert e.item() == pytest.approx(0.03 / 14, rel=1e-9) and 0 < pa.item() < 0.03


def test_hmr2_keypoints_from_j19_and_h36m_regressors(tmp_path):
    """hmr2_keypoints puts J19's rows at 25-43 and J_regressor_h36m's joints at their slots; keypoint_regressor
    reads .npy / .pkl and names a bad file."""
    g = torch.Generator().manual_seed(1)
    verts = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
    j19 = torch.rand(19, 30, generator=g, dtype=torch.float64)
    kp = metrics.hmr2_keypoints(verts, j19)
    torch.testing.assert_close(kp[:, 25:], torch.einsum("jv,bvc->bjc", j19, verts))
    assert kp[:, :25].isnan().all()
    h36m = torch.rand(17, 30, generator=g, dtype=torch.float64)
    kp = metrics.hmr2_keypoints(verts, h36m)
    torch.testing.assert_close(kp[:, 25 + 14], h36m[0] @ verts)  # H36M pelvis -> the protocol's pelvis (39)
    torch.testing.assert_close(kp[:, 25 + 12], h36m[8] @ verts)  # thorax -> neck
    assert not kp[:, [*metrics.HMR2_KEYPOINT_LIST, metrics.HMR2_PELVIS_INDEX]].isnan().any()
    np.save(tmp_path / "J_regressor_h36m.npy", h36m.numpy())
    torch.testing.assert_close(metrics.keypoint_regressor(str(tmp_path / "J_regressor_h36m.npy")), h36m)
    import pickle
    with open(tmp_path / "SMPL_to_J19.pkl", "wb") as fh:
        pickle.dump(j19.numpy(), fh)
    torch.testing.assert_close(metrics.keypoint_regressor(str(tmp_path / "SMPL_to_J19.pkl")), j19)
    np.save(tmp_path / "bad.npy", np.zeros((5, 30)))
    with pytest.raises(ValueError, match=r"bad.npy: shape \(5, 30\)"):
        metrics.keypoint_regressor(str(tmp_path / "bad.npy"))

    class Payload:  # a pickle that would run a function when loaded
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "SMPL_to_J19.pkl"),))
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(Payload(), fh)
    with pytest.raises(Exception, match="evil.pkl"):
        metrics.keypoint_regressor(str(tmp_path / "evil.pkl"))
    assert (tmp_path / "SMPL_to_J19.pkl").exists()  # nothing ran


def test_two_reading_errors_score_the_nearer_reading_and_whether_the_hidden_arm_commits():
    """Two readings apart in joints 19, 21, 23 only: a prediction on either scores 0 against the nearer
    and commits; one halfway between commits to neither; a far one on the other reading counts as committed,
    not true; the whole-body error is the smaller pelvis-aligned MPJPE."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 24, 3, generator=g)
    a[:, 0] = 0
    b = a.clone()
    b[:, [19, 21, 23]] += torch.tensor([0.0, 0.6, 0.0])  # 0.6 m apart on the three hidden joints
    pred = torch.stack([a[0], b[1], (a[2] + b[2]) / 2, b[3]])
    pred[3, 1:] += torch.tensor([0.0, 0.05, 0.0])  # every joint but the pelvis 5 cm off
    pred = pred + 1.0  # anywhere: pelvis-aligned
    out = metrics.two_reading_errors(pred, a, b, "x_")
    assert out["x_committed_fraction"] == 0.75  # the halfway one commits to neither (0.3 > 0.6 / 3)
    assert out["x_true_reading_fraction"] == pytest.approx(1 / 3)  # of three committed, one on the true reading
    arm = torch.tensor([0.0, 0.0, 0.3, 0.05])  # hidden-joint error to the nearer reading, per sample
    assert out["x_hidden_arm_mm"] == pytest.approx(arm.mean().item() * 1e3, rel=1e-5)
    whole = torch.tensor([0.0, 0.0, 0.3 * 3 / 24, 0.05 * 23 / 24])  # 3 of 24 joints 0.3 m off; 23 joints 5 cm off
    assert out["x_nearest_reading_mpjpe_mm"] == pytest.approx(whole.mean().item() * 1e3, rel=1e-5)
    both = metrics.body_metrics({"joints3d": pred}, {"joints3d": a, "joints3d_other": b})
    assert both["committed_fraction"] == 0.75 and both["mpjpe_mm"] > both["nearest_reading_mpjpe_mm"]
