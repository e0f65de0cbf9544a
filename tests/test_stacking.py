"""The axis of every stack, split, concatenation and reduction in the metrics and the papers' losses.

A mean over the samples where the points were meant, a stack of left and right along the samples' axis, a split of
joints and vertices in the wrong order: the shapes stay right and the numbers finite. Here every input differs per
sample, per joint, per coordinate and per side, and each metric is compared with a direct computation written in the
test: one sample, one joint, one hand at a time, in numpy where it can be, with its own Procrustes (Umeyama's
closed form, scipy's orthogonal_procrustes for FreiHAND's mirrors allowed).
"""
import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree

import bodymodels as bm
import genhmr
import hmr_adapter as ha
import metrics
import simplehand


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def clouds(B=3, N=7, seed=0, noise=0.05):
    """pred, gt (B, N, 3) float64, every sample a different cloud and a different similarity of it plus noise."""
    g = gen(seed)
    gt = torch.randn(B, N, 3, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.2, 0.1]) * (
        1 + torch.arange(B, dtype=torch.float64))[:, None, None]
    R = bm.axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=torch.float64))
    pred = (0.8 + 0.2 * torch.arange(B, dtype=torch.float64))[:, None, None] * gt @ R.transpose(1, 2)
    pred = pred + torch.randn(B, 1, 3, generator=g, dtype=torch.float64) + noise * torch.randn(
        B, N, 3, generator=g, dtype=torch.float64)
    return pred, gt


def umeyama(pred, gt, proper=True):
    """One sample: the similarity s R p + t closest to gt (N, 3) numpy -> aligned pred, R. proper: det R = +1
    (4D-Humans' compute_similarity_transform); else FreiHAND's align_w_scale (scipy's orthogonal_procrustes of the
    centred sets, each over its Frobenius norm + 1e-8, mirrors allowed)."""
    mp, mg = pred.mean(0), gt.mean(0)
    p, q = pred - mp, gt - mg
    if not proper:
        sp, sg = np.linalg.norm(p) + 1e-8, np.linalg.norm(q) + 1e-8
        R, s = orthogonal_procrustes(q / sg, p / sp)
        return (p / sp) @ R.T * s * sg + mg, R.T
    U, S, Vt = np.linalg.svd(q.T @ p)  # gt^T pred
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (p ** 2).sum()
    return s * p @ R.T + mg, R


def per_point(a, b):
    return np.linalg.norm(a - b, axis=-1)


# ---------------------------------------------------------------------------------------------
# Root-aligned and Procrustes-aligned errors


@pytest.mark.parametrize("root", [0, 3, None])
def test_mpjpe_is_each_samples_own_root_aligned_mean(root):
    pred, gt = clouds()
    expected = []
    for p, q in zip(pred.numpy(), gt.numpy()):
        if root is not None:
            p, q = p - p[root], q - q[root]
        expected.append(np.mean([np.sqrt(((p[j] - q[j]) ** 2).sum()) for j in range(len(p))]))
    torch.testing.assert_close(metrics.mpjpe(pred, gt, root), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(metrics.mpvpe(pred, gt, root), torch.tensor(expected, dtype=torch.float64))


def test_pa_errors_and_procrustes_are_each_samples_own_similarity():
    pred, gt = clouds(B=4, N=9)
    aligned = [umeyama(p, q) for p, q in zip(pred.numpy(), gt.numpy())]
    torch.testing.assert_close(metrics.procrustes_align(pred, gt), torch.tensor(np.stack([a for a, _ in aligned])))
    expected = torch.tensor([per_point(a, q).mean() for (a, _), q in zip(aligned, gt.numpy())])
    torch.testing.assert_close(metrics.pa_mpjpe(pred, gt), expected)
    torch.testing.assert_close(metrics.pa_mpvpe(pred, gt), expected)
    s, R, t = metrics.procrustes_transform(pred, gt)
    torch.testing.assert_close(R, torch.tensor(np.stack([r for _, r in aligned])))
    torch.testing.assert_close(s[:, None, None] * pred @ R.transpose(1, 2) + t[:, None], metrics.procrustes_align(pred,
                                                                                                                  gt))


def test_pck_and_auc_are_each_samples_own_curve():
    g = gen(1)
    errors = torch.rand(3, 11, generator=g, dtype=torch.float64) * torch.tensor([[10.0], [30.0], [60.0]])
    thresholds = torch.linspace(0, 50, 26, dtype=torch.float64)
    expected = np.array([[np.mean(e <= t) for t in thresholds.numpy()] for e in errors.numpy()])
    torch.testing.assert_close(metrics.pck_curve(errors, thresholds), torch.tensor(expected))
    t = np.linspace(0.0, 50.0, 100)
    auc = [np.trapezoid([np.mean(e <= x) for x in t], t) / 50.0 for e in errors.numpy()]
    torch.testing.assert_close(metrics.auc_pck(errors), torch.tensor(auc))
    pred, gt = clouds()
    direct = [np.trapezoid([np.mean(per_point(p, q) <= x) for x in t], t) / 50.0
              for p, q in zip(pred.numpy(), gt.numpy())]
    torch.testing.assert_close(metrics.auc_pck(pred, gt), torch.tensor(direct))


def fscore(pred, gt, threshold):
    """One sample, numpy: precision over pred's points, recall over gt's, strict."""
    p = np.mean(cKDTree(gt).query(pred)[0] < threshold)
    r = np.mean(cKDTree(pred).query(gt)[0] < threshold)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def test_f_score_is_each_samples_own_with_different_point_counts():
    g = gen(2)
    pred = torch.randn(3, 40, 3, generator=g, dtype=torch.float64) * torch.tensor([[[0.02]], [[0.05]], [[0.1]]])
    gt = torch.randn(3, 25, 3, generator=g, dtype=torch.float64) * 0.05
    expected = [fscore(p, q, 0.02) for p, q in zip(pred.numpy(), gt.numpy())]
    torch.testing.assert_close(metrics.f_score(pred, gt, 0.02), torch.tensor(expected))


def test_freihand_table_is_the_mean_over_samples_of_each_samples_numbers():
    pj, gj = clouds(B=3, N=21, seed=3, noise=0.004)
    pv, gv = clouds(B=3, N=60, seed=4, noise=0.0)
    pj, gj, pv, gv = (x * 0.1 for x in (pj, gj, pv, gv))
    pv = pv + torch.randn(pv.shape, generator=gen(5), dtype=torch.float64) * torch.tensor([0.001, 0.004, 0.012])[
        :, None, None]  # each sample its own F@5 and F@15
    mirrored = pj.clone()
    mirrored[1, :, 0] *= -1  # a mirror image: FreiHAND's alignment follows it
    table = metrics.freihand_table(mirrored, gj, pv, gv)
    f5 = [fscore(umeyama(p, q, proper=False)[0], q, 0.005) for p, q in zip(pv.numpy(), gv.numpy())]
    assert len(set(f5)) == 3, f5
    ej = np.stack([per_point(umeyama(p, q, proper=False)[0], q) for p, q in zip(mirrored.numpy(), gj.numpy())])
    av = [umeyama(p, q, proper=False)[0] for p, q in zip(pv.numpy(), gv.numpy())]
    ev = np.stack([per_point(a, q) for a, q in zip(av, gv.numpy())])
    t = np.linspace(0.0, 0.05, 100)
    auc = lambda e: np.mean([np.trapezoid([np.mean(x <= c) for c in t], t) / 0.05 for x in e])  # noqa: E731
    expected = {"pa_mpjpe_mm": 1000 * ej.mean(), "pa_mpvpe_mm": 1000 * ev.mean(),
                "f5": np.mean([fscore(a, q, 0.005) for a, q in zip(av, gv.numpy())]),
                "f15": np.mean([fscore(a, q, 0.015) for a, q in zip(av, gv.numpy())]),
                "auc_joints": auc(ej), "auc_verts": auc(ev)}
    assert table == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Baselines: the mean shape, the mean rotations


def test_mirror_x_negates_x_of_the_left_samples_only():
    points = torch.randn(3, 4, 3, generator=gen(5))
    got = metrics.mirror_x(points, torch.tensor([True, False, True]))
    expected = points.clone()
    expected[1, :, 0] *= -1
    torch.testing.assert_close(got, expected)


def test_mean_shape_is_the_average_of_every_shape_aligned_to_the_running_mean():
    g = gen(6)
    shapes = torch.randn(4, 6, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.2])
    rel = (shapes - shapes[:, :1]).numpy()
    mean = rel[0]
    for _ in range(2):
        mean = np.mean([umeyama(s, mean)[0] for s in rel], axis=0)
    torch.testing.assert_close(metrics.mean_shape(shapes, iterations=2), torch.tensor(mean - mean[:1]))


def test_mean_shape_baseline_stacks_keys_along_points_and_splits_them_back():
    """Joints (5) and vertices (9) of one hand in many similarity poses, some mirrored (left): the baseline's
    joints and vertices are that hand's, placed together (one similarity for both), mirrored back for left gts."""
    g = gen(7)
    joints = torch.randn(5, 3, generator=g, dtype=torch.float64)
    verts = torch.randn(9, 3, generator=g, dtype=torch.float64) * 2
    n = 6
    R = bm.axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=torch.float64))
    scale = 0.5 + torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    is_right = torch.tensor([True, False, True, True, False, True])
    place = lambda x: metrics.mirror_x(scale * x @ R.transpose(1, 2) + 1.0, is_right)  # noqa: E731
    base = metrics.MeanShapeBaseline({"joints3d": place(joints), "verts": place(verts), "is_right": is_right})
    assert base.mean["joints3d"].shape == (5, 3) and base.mean["verts"].shape == (9, 3)
    both = torch.cat([base.mean["joints3d"], base.mean["verts"]]).double().numpy()
    truth = torch.cat([joints, verts]).numpy()
    assert per_point(umeyama(both, truth)[0], truth).max() < 1e-5
    pred = base({"joints3d": torch.zeros(2, 5, 3), "is_right": torch.tensor([True, False])})
    torch.testing.assert_close(pred["verts"][1], metrics.mirror_x(base.mean["verts"][None], torch.tensor([False]))[0])
    torch.testing.assert_close(pred["verts"][0], base.mean["verts"])


def test_mean_rotations_are_each_joints_own_chordal_mean():
    g = gen(8)
    R = bm.axis_angle_to_matrix(0.4 * torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
                                + torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))  # (n, J, 3, 3)
    got = metrics.mean_rotations(R)
    for j in range(3):
        U, _, Vt = np.linalg.svd(R[:, j].numpy().mean(0))
        expected = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
        torch.testing.assert_close(got[j], torch.tensor(expected))


# ---------------------------------------------------------------------------------------------
# Bodies: errors, two readings, codebook usage


def test_body_errors_are_means_over_samples_of_each_samples_errors():
    pred, gt = clouds(B=3, N=24, seed=9)
    pv, gv = clouds(B=3, N=30, seed=10)
    out = metrics.body_errors(pred, gt, pv, gv, prefix="x_")
    p, q = pred.numpy(), gt.numpy()
    mpjpe = np.mean([per_point(a - a[0], b - b[0]).mean() for a, b in zip(p, q)])
    pa = np.mean([per_point(umeyama(a, b)[0], b).mean() for a, b in zip(p, q)])
    pve = np.mean([per_point(v - a[0], w - b[0]).mean() for v, w, a, b in zip(pv.numpy(), gv.numpy(), p, q)])
    assert out == pytest.approx({"x_mpjpe_mm": 1e3 * mpjpe, "x_pa_mpjpe_mm": 1e3 * pa, "x_pve_mm": 1e3 * pve},
                                rel=1e-7)


def test_two_reading_errors_per_sample_and_per_hidden_joint():
    g = gen(11)
    B = 4
    a = torch.randn(B, 24, 3, generator=g, dtype=torch.float64) * 0.3
    b = a.clone()
    moved = [[19, 21, 23], [21, 23], [19, 21, 23], [23]]  # a different hidden arm in each sample
    for n, js in enumerate(moved):
        b[n, js] += torch.randn(len(js), 3, generator=g, dtype=torch.float64) * 0.2 * (n + 1)
    p = torch.stack([a[0] + 0.001, b[1] + 0.002, (a[2] + b[2]) / 2, a[3] * 1.01])
    out = metrics.two_reading_errors(p, a, b, "t_")
    near, committed, on_true, full = [], [], [], []
    for n in range(B):
        P, A, Bn = (x[n].numpy() - x[n, 0].numpy() for x in (p, a, b))
        hidden = [j for j in range(24) if np.linalg.norm(A[j] - Bn[j]) > 0.01]
        arm = lambda x, y: np.mean([np.linalg.norm(x[j] - y[j]) for j in hidden])  # noqa: E731
        to_a, to_b, sep = arm(P, A), arm(P, Bn), arm(A, Bn)
        near.append(min(to_a, to_b))
        committed.append(min(to_a, to_b) < sep / 3)
        on_true.append(committed[-1] and to_a < to_b)
        full.append(min(per_point(P, A).mean(), per_point(P, Bn).mean()))
    expected = {"t_nearest_reading_mpjpe_mm": 1e3 * np.mean(full), "t_hidden_arm_mm": 1e3 * np.mean(near),
                "t_committed_fraction": np.mean(committed), "t_true_reading_fraction": sum(on_true) / sum(committed)}
    assert out == pytest.approx(expected, rel=1e-6)


def test_codebook_usage_counts_every_id_of_every_sample():
    ids = torch.tensor([[0, 0, 1, 3], [3, 3, 3, 5]])
    out = metrics.codebook_usage(ids, 8)
    p = np.array([2, 1, 0, 4, 0, 1, 0, 0]) / 8
    nz = p[p > 0]
    assert out == pytest.approx({"codebook_perplexity": math.exp(-(nz * np.log(nz)).sum()), "dead_codes": 4.0})


def test_body_metrics_averages_the_refinement_numbers_and_nan_rows_per_sample():
    pred, gt = clouds(B=3, N=24, seed=12)
    before, after = torch.tensor([3.0, 1.0, 5.0]), torch.tensor([2.0, 2.0, 4.0])
    accuracy = torch.tensor([0.5, float("nan"), 0.8])
    out = metrics.body_metrics({"joints3d": pred, "reproj_error_px": before, "refined_reproj_error_px": after,
                                "masked_token_accuracy_75": accuracy}, {"joints3d": gt})
    assert out["refine_2d_improved_fraction"] == pytest.approx(2 / 3)
    assert out["reproj_error_px"] == pytest.approx(3.0) and out["refined_reproj_error_px"] == pytest.approx(8 / 3)
    assert out["masked_token_accuracy_75"] == pytest.approx(0.65)


# ---------------------------------------------------------------------------------------------
# HMR-Adapter's whole-body protocol: hands stacked left, right per sample; occluded hands split out


@pytest.fixture(scope="module")
def wholebody_case():
    """Two people (N = 2) whose four hands differ, one occluded; predictions off by different amounts per hand. The
    protocol's parts are given (each hand's and the face's SMPL-X vertex ids), so no SMPL-X model is built."""
    import os
    for key in ("HMR_FLAME_VERTEX_IDS", "HMR_MANO_SMPLX_VERTEX_IDS"):
        assert key not in os.environ, f"unset {key}: the parts given here are used"
    models = dict(mano=bm.Skinning(bm.load_mano(), torch.float32, per_sample=False), num_verts=10475,
                  hand_verts={"left": torch.arange(0, 800), "right": torch.arange(800, 1600)},
                  head_verts=torch.arange(2000, 3000))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "_wholebody_models", lambda: models)
        yield _wholebody_case()


def _wholebody_case():
    g = gen(13)
    N = 2
    gt = {f"{s}_hand_mano_pose": 0.3 * torch.randn(N, 16, 3, generator=g) for s in ("left", "right")}
    gt["left_hand_occluded"], gt["right_hand_occluded"] = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    gt["joints3d"] = torch.randn(N, 55, 3, generator=g) * 0.3
    gt["verts"] = torch.randn(N, 10475, 3, generator=g) * 0.3
    gt["left_hand_box"] = torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 20.0, 90.0, 60.0]])
    gt["right_hand_box"] = torch.tensor([[100.0, 10.0, 110.0, 20.0], [0.0, 0.0, 60.0, 60.0]])
    hands = [[metrics._mano_rotations_mesh(bm.axis_angle_to_matrix(gt[f"{s}_hand_mano_pose"][n][None]),
                                           torch.zeros(1, 10)) for s in ("left", "right")] for n in range(N)]
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    pred = {"hand_m_verts": torch.stack([torch.stack([hands[n][s][0][0] + 0.002 * scale[n, s] * torch.randn(
                778, 3, generator=g) for s in range(2)]) for n in range(N)]),
            "hand_m_joints": torch.stack([torch.stack([hands[n][s][1][0] + 0.002 * scale[n, s] * torch.randn(
                21, 3, generator=g) for s in range(2)]) for n in range(N)]),
            "pipe_p_verts": gt["verts"] + 0.01 * torch.randn(N, 10475, 3, generator=g) * torch.tensor([[[1.0]],
                                                                                                        [[3.0]]]),
            "pipe_p_joints": gt["joints3d"] + 0.01 * torch.randn(N, 55, 3, generator=g),
            "pipe_p_boxes": torch.tensor([[[12.0, 10.0, 32.0, 30.0], [100.0, 12.0, 110.0, 22.0]],
                                          [[50.0, 30.0, 90.0, 70.0], [6.0, 0.0, 66.0, 60.0]]])}
    return gt, pred, hands, metrics.wholebody_metrics(pred, gt)


def part_errors(pv, gv, pj, gj, root):
    """One part of one person, numpy: PVE after moving joint `root` of each to the origin, PA-PVE, PA-MPJPE (mm)."""
    pve = per_point(pv - pj[root], gv - gj[root]).mean()
    return {"pve_mm": 1e3 * pve, "pa_pve_mm": 1e3 * per_point(umeyama(pv, gv)[0], gv).mean(),
            "pa_mpjpe_mm": 1e3 * per_point(umeyama(pj, gj)[0], gj).mean()}


def test_wholebody_hand_path_splits_each_hand_by_its_own_occlusion(wholebody_case):
    gt, pred, hands, out = wholebody_case
    occluded = {(0, 0): False, (0, 1): False, (1, 0): True, (1, 1): False}  # (person, side): left of person 1
    per_hand = {}
    for (n, s) in occluded:
        pv, pj = pred["hand_m_verts"][n, s].double().numpy(), pred["hand_m_joints"][n, s].double().numpy()
        gv, gj = hands[n][s][0][0].double().numpy(), hands[n][s][1][0].double().numpy()
        e = part_errors(pv, gv, pj, gj, 0)
        R = umeyama(pv, gv)[1]
        e["rot_deg"] = math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
        per_hand[n, s] = e
    for split, want in (("clean", False), ("occluded", True)):
        chosen = [per_hand[k] for k, o in occluded.items() if o == want]
        for key in ("pve_mm", "pa_pve_mm", "pa_mpjpe_mm", "rot_deg"):
            assert out[f"hand_path/m/{split}/{key}"] == pytest.approx(np.mean([e[key] for e in chosen]), rel=1e-4,
                                                                      abs=1e-4), (split, key)


def test_wholebody_pipeline_hands_face_and_boxes_per_person_and_side(wholebody_case):
    gt, pred, _, out = wholebody_case
    ids, face = {"left": torch.arange(0, 800), "right": torch.arange(800, 1600)}, torch.arange(2000, 3000)
    pv, pj = pred["pipe_p_verts"].double().numpy(), pred["pipe_p_joints"].double().numpy()
    gv, gj = gt["verts"].double().numpy(), gt["joints3d"].double().numpy()
    every = [part_errors(pv[n], gv[n], pj[n], gj[n], 0) for n in range(2)]
    hands, occluded_hands = [], []
    for n in range(2):
        for s, side in enumerate(("left", "right")):
            v, hj = ids[side].numpy(), list(bm.SMPLX_HAND_JOINTS[side])
            e = part_errors(pv[n][v], gv[n][v], pj[n][hj], gj[n][hj], 0)
            hands.append(e)
            if gt[f"{side}_hand_occluded"][n] > 0.5:
                occluded_hands.append(e)
    f = face.numpy()
    faces = [{"pve_mm": 1e3 * per_point(pv[n][f] - pj[n][12], gv[n][f] - gj[n][12]).mean(),
              "pa_pve_mm": 1e3 * per_point(umeyama(pv[n][f], gv[n][f])[0], gv[n][f]).mean()} for n in range(2)]
    for name, rows in (("all", every), ("hands", hands), ("hands_occluded", occluded_hands), ("face", faces)):
        for key in rows[0]:
            assert out[f"pipeline/p/{name}/{key}"] == pytest.approx(np.mean([e[key] for e in rows]), rel=1e-4), \
                (name, key)
    boxes, true = pred["pipe_p_boxes"].numpy(), {s: gt[f"{s}_hand_box"].numpy() for s in ("left", "right")}
    errors = [np.linalg.norm((boxes[n, s, :2] + boxes[n, s, 2:]) / 2 - (t[n, :2] + t[n, 2:]) / 2)
              / (t[n, 2:] - t[n, :2]).max() for n in range(2) for s, t in enumerate(true.values())]
    assert out["pipeline/p/hands/box_centre_error_sides"] == pytest.approx(np.mean(errors), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# The papers' losses


def test_simplehand_l1_sums_coordinates_and_averages_points_and_samples():
    g = gen(14)
    pred, target = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    d = (pred - target).abs().numpy()
    expected = np.mean([[d[b, n].sum() for n in range(5)] for b in range(3)])
    assert simplehand.l1_distance(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_simplehand_loss_is_relative_to_each_samples_own_root():
    g = gen(15)
    cfg = simplehand.TINY.model
    joints3d = torch.randn(2, 21, 3, generator=g)
    verts = torch.randn(2, 778, 3, generator=g)
    pred = {"joints3d": joints3d - joints3d[:, 9:10], "verts": verts - joints3d[:, 9:10],
            "joints2d": torch.rand(2, 21, 2, generator=g)}
    _, terms = simplehand.compute_loss(pred, verts, joints3d, pred["joints2d"], cfg)
    assert terms["joints3d"].item() < 1e-7 and terms["verts"].item() < 1e-7


def test_genhmr_token_cross_entropy_and_masked_accuracy_per_sample():
    g = gen(16)
    logits = torch.randn(3, 4, 6, generator=g)
    ids = torch.randint(0, 6, (3, 4), generator=g)
    masked = torch.tensor([[1, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    logp = torch.log_softmax(logits.double(), -1).numpy()
    ce = -np.array([[logp[b, i, ids[b, i]] for i in range(4)] for b in range(3)])
    m = masked.numpy()
    torch.testing.assert_close(genhmr.token_cross_entropy(logits, ids, masked, "all").double(),
                               torch.tensor(ce.mean(1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(genhmr.token_cross_entropy(logits, ids, masked, "masked").double(),
                               torch.tensor([(ce[b] * m[b]).sum() / m[b].sum() for b in range(3)]), rtol=1e-5,
                               atol=1e-6)
    right = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)  # argmax == id where 1
    logits = torch.where(right[..., None], 10 * torch.nn.functional.one_hot(ids, 6), -10 * torch.nn.functional.one_hot(
        ids, 6)).float()
    # per sample: 1 of 2 masked right, 1 of 4, 1 of 1 -> their mean, 0.583 (pooled over the batch: 3 of 7)
    expected = np.mean([(right[b] & masked[b]).sum().item() / masked[b].sum().item() for b in range(3)])
    assert genhmr.masked_accuracy(logits, ids, masked).item() == pytest.approx(expected)


def test_genhmr_smpl_losses_sum_joints_and_coordinates_then_average_samples():
    g = gen(17)
    B, cfg = 3, genhmr.GenHMRConfig(loss_batch=1)
    R = bm.axis_angle_to_matrix(0.3 * torch.randn(B, 24, 3, generator=g))
    pred = {"R": R, "betas": torch.randn(B, 10, generator=g), "joints3d": torch.randn(B, 24, 3, generator=g),
            "joints2d": torch.randn(B, 24, 2, generator=g)}
    targets = {"smpl_pose": 0.3 * torch.randn(B, 24, 3, generator=g), "smpl_shape": torch.randn(B, 10, generator=g),
               "joints3d": torch.randn(B, 24, 3, generator=g), "joints2d": torch.randn(B, 24, 2, generator=g),
               "has_smpl_pose": torch.tensor([1.0, 0.0, 1.0]), "has_smpl_shape": torch.tensor([0.0, 1.0, 1.0]),
               "joints2d_weight": torch.rand(B, 24, generator=g), "joints3d_weight": torch.rand(B, 24, generator=g)}
    terms = genhmr.smpl_losses(pred, targets, cfg)
    Rg = bm.axis_angle_to_matrix(targets["smpl_pose"]).double().numpy()
    P = {k: v.double().numpy() for k, v in pred.items()}
    T = {k: v.double().numpy() for k, v in targets.items()}
    pose = [T["has_smpl_pose"][b] * sum(((P["R"][b, j] - Rg[b, j]) ** 2).sum() for j in range(24)) for b in range(B)]
    betas = [T["has_smpl_shape"][b] * ((P["betas"][b] - T["smpl_shape"][b]) ** 2).sum() for b in range(B)]
    j3 = [sum(T["joints3d_weight"][b, j] * np.abs((P["joints3d"][b, j] - P["joints3d"][b, 0])
                                                   - (T["joints3d"][b, j] - T["joints3d"][b, 0])).sum()
              for j in range(24)) for b in range(B)]
    j2 = [sum(T["joints2d_weight"][b, j] * np.abs(P["joints2d"][b, j] - T["joints2d"][b, j]).sum() for j in range(24))
          for b in range(B)]
    expected = {"pose": np.mean(pose), "betas": np.mean(betas), "joints3d": np.mean(j3), "joints2d": np.mean(j2)}
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(expected, rel=1e-5)


def mano_like(R, betas):
    """A cheap stand-in for MANO (verts (N, 778, 3), 21 joints): points that turn with the rotations and sit where
    the betas put them, so that each hand's wrist is elsewhere (MANO's own wrists barely move)."""
    joints = torch.cat([R[:, :, :, 0], R[:, :5, :, 1]], 1) * 0.05 + betas[:, None, :3]  # (N, 21, 3)
    return joints[:, torch.arange(778) % 21] + 0.001 * torch.arange(778)[:, None].to(R), joints


def test_hmr_adapter_hand_loss_terms_are_means_over_hands_joints_and_entries(monkeypatch):
    """Eq. 5's terms (loss_batch 0: plain means): 3D wrist-relative L1, 2D L1 in the crop, vertices wrist-relative,
    Eq. 6's ||R - R*||^2 summed over a rotation's entries + (1 - cos) per joint, both averaged over hands and joints."""
    g = gen(18)
    N = 4  # two people's hands, left first
    monkeypatch.setattr(ha, "mano_mesh", mano_like)
    R = bm.axis_angle_to_matrix(0.3 * torch.randn(N, 16, 3, generator=g))
    pose6d, betas = bm.matrix_to_rot6d(R), 0.5 * torch.randn(N, 10, generator=g)
    cam = torch.tensor([[0.9, 0.0, 0.1], [1.1, 0.1, 0.0], [1.0, -0.1, 0.05], [1.2, 0.0, 0.0]])
    target = ha.hand_targets(0.3 * torch.randn(2, 2, 16, 3, generator=g), 100 * torch.rand(2, 2, 21, 2, generator=g),
                             torch.tensor([[[0.0, 0.0, 100.0, 100.0]] * 2] * 2))
    cfg = ha.AdapterConfig(loss_batch=0)
    _, terms = ha.hand_loss((pose6d, betas, cam), target, cfg)
    verts, joints = ha.mano_mesh(R, betas)
    v, j = verts.double().numpy(), joints.double().numpy()
    tv, tj = target["verts"].double().numpy(), target["joints"].double().numpy()
    Rn, Rt = R.double().numpy(), target["R"].double().numpy()
    pose = np.mean([((Rn[n, k] - Rt[n, k]) ** 2).sum() for n in range(N) for k in range(16)]) + np.mean(
        [1 - (Rn[n, k] * Rt[n, k]).sum() / np.linalg.norm(Rn[n, k]) / np.linalg.norm(Rt[n, k])
         for n in range(N) for k in range(16)])
    expected = {"hand_3d": np.mean([np.abs((j[n] - j[n, 0]) - (tj[n] - tj[n, 0])).mean() for n in range(N)]),
                "hand_verts": np.mean([np.abs((v[n] - j[n, 0]) - (tv[n] - tj[n, 0])).mean() for n in range(N)]),
                "hand_pose": pose, "hand_betas": (betas.double().numpy() ** 2).mean()}
    assert {k: terms[k].item() for k in expected} == pytest.approx(expected, rel=1e-4)
