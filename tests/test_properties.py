"""Property-based tests that explore: hypothesis draws the tensors' shapes and values, with
their boundary cases (zeros, half turns, tiny and huge scales, degenerate point sets, L = 1, T = 1), and each
property is stated independently of the implementation: the paper's equation written out here, or an
independent oracle (scipy's Rotation, a chain of 4 x 4 rigid transforms, bilinear interpolation written out,
a float64 brute force).

No test here sets max_examples: the default run uses conftest.py's "reproducible" profile (derandomized, 25
examples each), and `pytest tests/test_properties.py --hypothesis-profile explore` draws 200 fresh ones."""
import math

import numpy as np
import pytest
import torch
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.transform import Rotation

import bodymodels
import genhmr
import metrics
import simplehand

# ---------------------------------------------------------------------------------------------
# Strategies: values with their boundary cases

UNIT = st.floats(-1.0, 1.0, allow_subnormal=False)  # 0.0, -0.0, +-1 and tiny values come up early
MAGNITUDES = st.sampled_from([1e-3, 1.0, 1e3]) | st.floats(1e-3, 1e3)  # tiny and huge scales, drawn too


@st.composite
def rotations(draw):
    """A float64 (3, 3) rotation matrix from scipy (the oracle): the identity, a half turn, just under a half
    turn, a small turn, or any rotation (a drawn quaternion)."""
    kind = draw(st.sampled_from(["identity", "half_turn", "near_half_turn", "small", "any"]))
    axis = np.array(draw(st.tuples(UNIT, UNIT, UNIT)))
    if np.linalg.norm(axis) < 1e-3:
        axis = np.array([0.0, 0.0, 1.0])
    axis = axis / np.linalg.norm(axis)
    if kind == "any":
        q = np.array(draw(st.tuples(UNIT, UNIT, UNIT, UNIT)))
        return (Rotation.from_quat(q) if np.linalg.norm(q) > 1e-3 else Rotation.identity()).as_matrix()
    angle = {"identity": 0.0, "half_turn": math.pi, "near_half_turn": math.pi - draw(st.floats(1e-9, 1e-3)),
             "small": draw(st.floats(1e-9, 1e-3))}[kind]
    return Rotation.from_rotvec(angle * axis).as_matrix()


def point_set(n):
    """(n, 3) float64 points in [-1, 1]: zeros, repeated values and tiny coordinates included."""
    return hnp.arrays(np.float64, (n, 3), elements=UNIT, fill=st.nothing())  # each value drawn, not one fill


def ceil_up_to_rounding(x, delta):
    """The integers ceil(y) for y within delta of x: one integer, or two where x lies within delta of one (the
    float value of gamma(t / T) L at an exact integer, e.g. 0.25 x 96, may come out 1 ulp above it)."""
    return {math.ceil(x - delta), math.ceil(x + delta)}


# ---------------------------------------------------------------------------------------------
# GenHMR: the masking counts, as the paper states them

# The paper's four mask scheduling functions gamma(t / T), written from its appendix ("Mask Scheduling Function"):
# the number re-masked at iteration t is ceil(gamma(t / T) L).
PAPER_GAMMA = {"cosine": lambda r: (1 + math.cos(math.pi * r)) / 2, "linear": lambda r: 1 - r,
               "cubic": lambda r: 1 - r ** 3, "sqrt": lambda r: math.sqrt(1 - r ** 2)}


@given(L=st.integers(1, 5000) | st.sampled_from([1, 96]), T=st.integers(1, 100) | st.sampled_from([1, 5]),
       schedule=st.sampled_from(sorted(PAPER_GAMMA)))
@example(L=96, T=3, schedule="cosine")  # gamma(2/3) x 96 = 24 exactly, 24.000000000000007 in floats
@example(L=1, T=1, schedule="cosine")
def test_remask_counts_are_the_papers_ceil_gamma_t_over_t_times_l(L, T, schedule):
    """App. "Mask Scheduling Function": ceil(gamma(t / T) L) tokens re-masked after iteration t = 1..T."""
    assert set(PAPER_GAMMA) == set(genhmr.SCHEDULES)
    counts = genhmr.remask_counts(L, T, schedule)
    assert len(counts) == T
    for t, n in enumerate(counts, 1):
        expected = ceil_up_to_rounding(PAPER_GAMMA[schedule](t / T) * L, 1e-9 * L)
        assert n in expected, f"t={t}/{T}, L={L}, {schedule}: {n} re-masked, the paper's ceil(gamma L) is {expected}"


@given(L=st.integers(1, 5000), tau=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
def test_training_masks_ceil_cos_pi_tau_over_2_times_l_tokens(L, tau):
    """Training Strategy: m = ceil(gamma(tau) L), gamma(tau) = cos(pi tau / 2); at least one token (NOTE G11)."""
    m = int(genhmr.num_masked(torch.tensor([tau]), L))
    x = math.cos(math.pi * tau / 2) * L
    expected = {min(L, max(1, n)) for n in ceil_up_to_rounding(x, 1e-5 * L)}  # float32 tau and cos
    assert m in expected, f"tau={tau}, L={L}: {m} masked, the paper's ceil(cos(pi tau / 2) L) is {expected}"


class ScoreTable:
    """A stand-in generator for `genhmr.sample_from_features`: call t returns logits[t - 1] (B, L, K)."""

    def __init__(self, logits, num_codes):
        self.logits_table, self.num_tokens, self.num_codes, self.calls = logits, logits.shape[2], num_codes, 0

    def logits(self, ids, levels):
        self.calls += 1
        return self.logits_table[self.calls - 1]


@st.composite
def ugs_problems(draw):
    """(logits (T, B, L, K), T, schedule): drawn sizes, L = 1 and T = 1 included; logits drawn, with exact ties
    (values from a few levels) and huge spreads."""
    T, B, L, K = draw(st.integers(1, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 6))
    levels = draw(st.sampled_from(["ties", "any"]))
    values = st.sampled_from([0.0, 1.0, -1.0]) if levels == "ties" else st.floats(-50, 50, allow_subnormal=False)
    logits = draw(hnp.arrays(np.float32, (T, B, L, K), elements=values))
    return torch.from_numpy(logits), T, draw(st.sampled_from(sorted(PAPER_GAMMA)))


@given(problem=ugs_problems())
def test_ugs_remasks_ceil_gamma_l_of_the_least_confident_masked_tokens(problem):
    """UGS (greedy, c = 0): after iteration t exactly ceil(gamma(t / T) L) positions are masked (the paper's
    schedule), all from those still masked before t (a fixed token stays fixed), and none of them more confident
    than a position fixed at t; after T nothing is masked and every id is a code."""
    logits, T, schedule = problem
    _, B, L, K = logits.shape
    model = ScoreTable(logits, num_codes=K)
    ids, history = genhmr.sample_from_features(model, [torch.zeros(B, 1)], T, schedule, choice_temperature=0.0)
    assert model.calls == T and len(history) == T
    before = torch.ones(B, L, dtype=torch.bool)
    for t, (masked, confidence, _) in enumerate(history, 1):
        expected = ceil_up_to_rounding(PAPER_GAMMA[schedule](t / T) * L, 1e-9 * L)
        counts = set(masked.sum(1).tolist())
        assert len(counts) == 1 and counts <= expected, f"t={t}/{T}, L={L}, {schedule}: re-masked {counts}, " \
                                                        f"the paper's ceil(gamma L) is {expected}"
        assert not (masked & ~before).any(), f"t={t}: a token fixed earlier was re-masked"
        p = logits[t - 1].softmax(-1).max(-1).values  # the confidence of each position's greedy token
        torch.testing.assert_close(confidence, p, rtol=0, atol=0)
        fixed_now = before & ~masked
        for b in range(B):
            if masked[b].any() and fixed_now[b].any():
                assert p[b][masked[b]].max() <= p[b][fixed_now[b]].min(), f"t={t}: a more confident token re-masked"
        before = masked
    assert not before.any() and ((ids >= 0) & (ids < K)).all()


# ---------------------------------------------------------------------------------------------
# Procrustes (metrics.procrustes_transform) against scipy's rotation fit and the closed-form scale


@st.composite
def similarity_problems(draw):
    """(pred (N, 3), gt (N, 3), R, s, t, noisy): gt = s R pred + t (+ noise), with drawn N (1 included), point
    sets (generic, collinear, all equal, coplanar), magnitudes and scales from 1e-3 to 1e3, translations up to 1e3,
    half turns."""
    n = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["generic", "generic", "generic", "collinear", "all_equal", "coplanar"]))
    pred = draw(point_set(n))
    if kind == "collinear":
        pred = pred[:, :1] * draw(point_set(1))  # (n, 1) x (1, 3)
    elif kind == "all_equal":
        pred = np.repeat(pred[:1], n, axis=0)
    elif kind == "coplanar":
        pred[:, 2] = 0.0
    pred = draw(MAGNITUDES) * pred
    R, s = draw(rotations()), draw(MAGNITUDES)
    t = 1e3 * np.array(draw(st.tuples(UNIT, UNIT, UNIT)))
    gt = s * pred @ R.T + t
    noisy = draw(st.booleans())
    if noisy:
        gt = gt + 1e-2 * s * np.abs(pred).max() * draw(hnp.arrays(np.float64, (n, 3), elements=UNIT))
    return pred, gt, R, s, t, noisy


def squared_residual(pred, gt, s, R, t):
    return float(((s * pred @ R.T + t - gt) ** 2).sum())


@given(problem=similarity_problems())
def test_procrustes_finds_the_drawn_similarity_and_scipys_rotation(problem):
    """s R pred + t ~ gt in least squares, R proper (Umeyama 1991): without noise it lands every point on gt
    (collinear, coplanar, N = 1 and all-equal sets too); with noise no similarity does better (the drawn one, or
    scipy's rotation with the closed-form scale, are candidates); on a well-spread set its rotation is scipy's
    Rotation.align_vectors and its scale the closed form s = sum b . R a / sum |a|^2 of the centred sets."""
    pred, gt, R_true, s_true, t_true, noisy = problem
    scale, R, t = (x[0].numpy() for x in metrics.procrustes_transform(torch.from_numpy(pred[None]),
                                                                       torch.from_numpy(gt[None])))
    assert np.isfinite(scale) and np.isfinite(R).all() and np.isfinite(t).all()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9, err_msg="rotation not orthonormal")
    assert abs(np.linalg.det(R) - 1) < 1e-9, "a reflection, not a rotation"
    a, b = pred - pred.mean(0), gt - gt.mean(0)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ours, centroid = squared_residual(pred, gt, scale, R, t), float((b ** 2).sum())
    # the official +1e-8 on both norms (FreiHAND's align_w_scale) shrinks the scale towards 0 (s = tr / (|a| + e)^2,
    # never past the optimum): never worse than landing every point on gt's centroid, whatever the set
    rounding = gt.size * (1e-13 * (np.abs(gt).max() + np.abs(scale * pred).max() + np.abs(t).max())) ** 2
    assert ours <= centroid * (1 + 1e-9) + rounding, f"residual {ours:.3g} above the centroid's {centroid:.3g}"
    event(f"procrustes: {'noisy' if noisy else 'exact'}, |a| {'0' if na == 0 else '< 1e-5' if na < 1e-5 else 'ok'}")
    if na == 0:  # an all-equal prediction: every point on gt's centroid (the docstring's promise), with a scale
        #   of 0 up to the rounding of the centroid (exploring found 2e-180)
        np.testing.assert_allclose(scale * pred @ R.T + t, np.broadcast_to(gt.mean(0), gt.shape), rtol=1e-12,
                                   atol=1e-12 * (np.abs(gt).max() + 1))
        return
    # that shrink moves the scale by about 2e-8 / |a| relatively, and a 1e3 translation costs float64 1e-13
    # absolute: the tolerances, from the official eps, the dtype and the sizes
    rel = 10 * 1e-8 / na + 1e-9
    if rel > 1e-3:  # a set within the eps of a point: only the bound above holds
        return
    tol = rel * nb + 1e-12 * (np.abs(gt).max() + 1)
    if not noisy:
        worst = np.abs(scale * pred @ R.T + t - gt).max()
        assert worst <= tol, f"an exact similarity left a residual of {worst:.3g} (tolerance {tol:.3g})"
        return
    assert ours <= squared_residual(pred, gt, s_true, R_true, t_true) * (1 + 2 * rel) + tol ** 2 + rounding
    sv = np.linalg.svd(a, compute_uv=False)
    if len(pred) >= 3 and sv[1] > 0.1 * sv[0]:  # a spread set: the rotation is unique
        event("procrustes: compared with scipy")
        R_scipy = Rotation.align_vectors(b, a)[0].as_matrix()  # argmin_R sum |b_n - R a_n|^2
        np.testing.assert_allclose(R, R_scipy, atol=1e-6, err_msg="rotation differs from scipy's align_vectors")
        s_closed = (b * (a @ R_scipy.T)).sum() / (a * a).sum()
        np.testing.assert_allclose(scale, s_closed, rtol=rel, err_msg="scale differs from the closed form")


# ---------------------------------------------------------------------------------------------
# Forward kinematics (bodymodels.forward_kinematics) against a chain of 4 x 4 rigid transforms


@st.composite
def skeletons(draw):
    """(parents (J,), rest joints (J, 3), local rotations (J, 3, 3)): a drawn tree (J = 1 included; every parent
    before its child, one root), drawn rest positions (coincident joints included) and rotations (half turns)."""
    J = draw(st.integers(1, 12))
    parents = [-1] + [draw(st.integers(0, j - 1)) for j in range(1, J)]
    joints = draw(MAGNITUDES) * draw(point_set(J))
    R = np.stack([draw(rotations()) for _ in range(J)])
    return parents, joints, R


@given(skeleton=skeletons())
def test_forward_kinematics_is_the_chain_of_rigid_transforms_and_keeps_bone_lengths(skeleton):
    """SMPL's Eq. (4) (Loper et al. 2015): G_j = G_parent [R_j | J_j - J_parent; 0 1], the root [R_0 | J_0]; a
    posed joint is G_j's translation, its world rotation G_j's rotation; every bone keeps its length."""
    parents, joints, R = skeleton
    posed, world = bodymodels.forward_kinematics(torch.from_numpy(R), torch.from_numpy(joints), parents)
    G = []
    for j, p in enumerate(parents):
        local = np.eye(4)
        local[:3, :3], local[:3, 3] = R[j], joints[j] - (joints[p] if p >= 0 else 0)
        G.append(local if p < 0 else G[p] @ local)
    G = np.stack(G)
    size = np.abs(joints).max() + 1e-300
    np.testing.assert_allclose(posed.numpy(), G[:, :3, 3], rtol=0, atol=1e-12 * size * len(parents))
    np.testing.assert_allclose(world.numpy(), G[:, :3, :3], rtol=0, atol=1e-12 * len(parents))
    for j, p in enumerate(parents[1:], 1):
        np.testing.assert_allclose(np.linalg.norm(posed[j].numpy() - posed[p].numpy()),
                                   np.linalg.norm(joints[j] - joints[p]), rtol=1e-9, atol=1e-12 * size,
                                   err_msg=f"bone {p} -> {j} changed length")


# ---------------------------------------------------------------------------------------------
# SimpleHand's point sampling (simplehand.sample_points) against bilinear interpolation written out


@st.composite
def sampling_problems(draw):
    """(feature (B, C, h, w), uv (B, N, 2)): drawn sizes, h = 1 and w = 1 included; uv at the corners, on the
    cells' centres, anywhere in the crop, and (clamp=True) outside it."""
    B, C, h, w, N = (draw(st.integers(1, n)) for n in (2, 3, 9, 9, 6))
    feature = draw(hnp.arrays(np.float64, (B, C, h, w), elements=st.floats(-1e3, 1e3, allow_subnormal=False)))
    inside = st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0) | st.integers(0, 8).map(lambda i: i / 8)
    clamp = draw(st.booleans())
    coords = (inside | st.floats(-2.0, 3.0)) if clamp else inside
    uv = draw(hnp.arrays(np.float64, (B, N, 2), elements=coords))
    return feature, uv, clamp


def bilinear(feature, u, v):
    """feature (C, h, w) at the point whose cell centres sit at u = i / (w - 1), v = k / (h - 1) -> (C,)."""
    C, h, w = feature.shape
    x, y = u * (w - 1), v * (h - 1)  # pixel coordinates: uv = 0 and 1 are the first and last cell centres
    x0, y0 = min(int(math.floor(x)), w - 1), min(int(math.floor(y)), h - 1)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = (1 - fx) * feature[:, y0, x0] + fx * feature[:, y0, x1]
    bottom = (1 - fx) * feature[:, y1, x0] + fx * feature[:, y1, x1]
    return (1 - fy) * top + fy * bottom


@given(problem=sampling_problems())
def test_sample_points_is_bilinear_interpolation_between_cell_centres(problem):
    """Sec. 3.1's point sampling, as the official code reads it (grid_sample, align_corners=True): a point's
    token is the bilinear interpolation of the four cells around it; clamp=True (official remap_uv) reads a
    point outside the crop at the crop's border."""
    feature, uv, clamp = problem
    got = simplehand.sample_points(torch.from_numpy(feature), torch.from_numpy(uv), clamp=clamp).numpy()
    B, N = uv.shape[:2]
    for b in range(B):
        for n in range(N):
            u, v = np.clip(uv[b, n], 0.0, 1.0)
            expected = bilinear(feature[b], u, v)
            np.testing.assert_allclose(got[b, n], expected, rtol=1e-9, atol=1e-9 * np.abs(feature).max(),
                                       err_msg=f"point {uv[b, n]} on a {feature.shape[2:]} map")


# ---------------------------------------------------------------------------------------------
# FreiHAND's F-score (metrics.f_score) against a float64 brute force


@st.composite
def fscore_problems(draw):
    """(pred (N, 3), gt (M, 3), threshold): drawn sizes (1 point included) and magnitudes; some pred points
    placed at a gt point plus the threshold times (1 +- delta), delta down to 1e-7, where a float32 distance
    cannot decide."""
    n, m = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    size = draw(MAGNITUDES)
    gt = size * draw(point_set(m))
    pred = size * draw(point_set(n))
    threshold = size * draw(st.sampled_from([0.005, 0.015]) | st.floats(1e-3, 1.0))
    for i in range(draw(st.integers(0, n))):  # near the threshold
        direction = np.array(draw(st.tuples(UNIT, UNIT, UNIT)))
        direction = direction / np.linalg.norm(direction) if np.linalg.norm(direction) > 1e-3 else np.eye(3)[0]
        delta = draw(st.floats(1e-7, 1e-3)) * draw(st.sampled_from([-1, 1]))
        pred[i] = gt[draw(st.integers(0, m - 1))] + threshold * (1 + delta) * direction
    return pred, gt, threshold


@given(problem=fscore_problems())
def test_f_score_is_the_brute_force_nearest_neighbour_f_score(problem):
    """FreiHAND's calculate_fscore: precision, the fraction of pred points with a gt point closer than the threshold
    (strictly), recall the other way round, F = 2 p r / (p + r), 0 when both are 0."""
    pred, gt, threshold = problem
    d = np.sqrt(((pred[:, None] - gt[None]) ** 2).sum(-1))  # (N, M), float64
    close_pred, close_gt = d.min(1), d.min(0)
    # a distance within 1e-12 of the threshold is a tie that rounding may settle either way: skip those points
    undecided = np.abs(np.concatenate([close_pred, close_gt]) - threshold) <= 1e-12 * threshold
    if undecided.any():
        event("f-score: a tie at the threshold, skipped")
        return
    p, r = (close_pred < threshold).mean(), (close_gt < threshold).mean()
    expected = 2 * p * r / (p + r) if p + r > 0 else 0.0
    got = metrics.f_score(torch.from_numpy(pred[None]), torch.from_numpy(gt[None]), threshold)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12), f"precision {p}, recall {r}"
