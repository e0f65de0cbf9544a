"""Evaluation metrics for 3D hand and body mesh recovery, batched over samples.

Conventions
- A point set is a tensor (B, N, 3): B samples, N points (joints or vertices), xyz last.
  Numpy arrays are accepted too; float32 and float64 both work, mixed inputs are promoted.
- Units in = units out, except `freihand_table`, which takes metres and reports millimetres.
- Per-sample metrics return (B,); a dataset number is their mean over samples (for FreiHAND that
  equals the official script's mean over points of per-point means, since every point counts).
- No Python loop over samples: loops below only walk tiles of a few MB, for the CPU cache.
- `MeanShapeBaseline` is the constant prediction (the training mean shape) that scores are read
  against; it knows no dataset, only label keys. For bodies, `MeanPoseBaseline` (the training
  mean pose through SMPL), with `body_metrics` and `tokenizer_metrics` in millimetres.

Symbols: B samples, N points of pred (J joints, V vertices), M points of gt (F-score only),
K thresholds, R rotation (column vectors, x' = R x, as in bodymodels.py), s scale, t translation.

The FreiHAND protocol (official `eval.py` + `utils/eval_util.py` of lmb-freiburg/freihand):
1. Align pred to gt: centre both sets, divide each by its Frobenius norm (+1e-8), orthogonal
   Procrustes (scipy.linalg.orthogonal_procrustes), rescale and move to the gt.
2. PA-MPJPE / PA-MPVPE: mean Euclidean distance between aligned pred and gt points.
3. F@5 mm, F@15 mm on the aligned vertices: nearest-neighbour distances both ways, a point counts
   when its distance is strictly below the threshold, F = 2 p r / (p + r) (0 when p + r = 0).
4. AUC: PCK (error <= threshold) at 100 thresholds np.linspace(0, 50 mm), trapezoid rule,
   divided by the trapezoid of ones (the range).
The official alignment has no reflection check: on a mirrored prediction it returns a mirror
image (det -1), and `freihand_table` does the same, so that it equals the official script on every
input (checked against a fixture of the official eval.py, tests/official/freihand).

The body protocol (4D-Humans / HMR2.0 `hmr2/utils/pose_utils.py`, which scores 3DPW, EMDB and
H36M there; HaMeR and SMPLer-X score the same way):
1. MPJPE: both joint sets minus their own pelvis joint, mean Euclidean distance (`mpjpe`).
2. PA-MPJPE ("reconstruction error"): `compute_similarity_transform`, Umeyama's similarity with
   a PROPER rotation (det +1: D = diag(1, 1, sign det(U V^T))) and scale tr(R K) / |pred_c|^2,
   then the mean distance (`pa_mpjpe`, `procrustes_align`, `procrustes_transform`). Scale and
   rotation are the FreiHAND steps 1-3 with the reflection fixed; the official has no +1e-8 in the
   norms, which changes a body-sized (>= 0.1 m) answer by less than 1e-7 relative.
3. Which joints is the benchmark's choice: `body_errors` scores the joints it is given (synthetic
   data: SMPL's 24); the benchmarks' own files (data.HMR2Npz) are scored by `hmr2_protocol`: the
   14 of KEYPOINT_LIST among 4D-Humans' 44 keypoints, pelvis 39, from a user-supplied regressor
   ($HMR_J_REGRESSOR: SMPL_to_J19.pkl, or J_regressor_h36m.npy: NOTE R3).
   PVE: vertices minus the pelvis joint.
Tables: `freihand_table` (FreiHAND, reflections allowed); `body_errors` / `body_metrics` /
`tokenizer_metrics` and HMR-Adapter's `wholebody_metrics` with `WholeBodyMeanPoseBaseline` (4D-Humans, proper
rotations).
"""
import argparse
import functools
import math
import os
import time

if __name__ == "__main__":  # the benchmark pits one thread against one: numpy's BLAS reads this at import
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch

FREIHAND_ALIGN_EPS = 1e-8  # added to each Frobenius norm by the official align_w_scale
FREIHAND_F_THRESHOLDS = (0.005, 0.015)  # metres: F@5 mm and F@15 mm
AUC_MAX_MM = 50.0  # PCK thresholds span [0, 50 mm] ...
AUC_STEPS = 100  # ... in 100 steps, as the official get_measures(0.0, 0.05, 100)
TILE_ENTRIES = 2**19  # distance-matrix entries per tile (2 MB in float32): stays in cache
ALIGN_TILE_POINTS = 2**15  # points per Procrustes tile (768 KB per float64 tile (b, N, 3)): stays in cache
SCREEN_TOL = 2e-6  # undecided band of the float32 screen, normalised squared distance (4x its error bound)


# -----------------------------------------------------------------------------
# Input checks


def _points(x, name):
    """`x` as a floating tensor (B, N, 3) with N >= 1 and finite values, else ValueError naming `name`."""
    x = torch.as_tensor(x)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, N, 3) with N >= 1")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not torch.isfinite(x.detach().sum()):  # finite only if every value is: one pass, no (B, N, 3) mask
        bad = ~torch.isfinite(x)  # a NaN, an inf, or only an overflow of huge finite values: count exactly
        if bad.any():
            raise ValueError(f"{name} (shape {tuple(x.shape)}) has {int(bad.sum())} non-finite values (NaN or inf); "
                             f"expected finite coordinates")
    return x


def _pair(pred, gt, names=("pred", "gt"), same_points=True):
    """Checked (pred, gt), promoted to one dtype. Shapes must match, or only B when same_points=False."""
    pred, gt = _points(pred, names[0]), _points(gt, names[1])
    mismatch = pred.shape != gt.shape if same_points else pred.shape[0] != gt.shape[0]
    if mismatch:
        expected = "the same shape (B, N, 3)" if same_points else "the same batch size B"
        raise ValueError(f"{names[0]} has shape {tuple(pred.shape)} but {names[1]} has shape "
                         f"{tuple(gt.shape)}; expected {expected}")
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    return pred.to(dtype), gt.to(dtype)


# -----------------------------------------------------------------------------
# Root-aligned errors


def mpjpe(pred, gt, root_index=0):
    """Mean per-joint position error after moving both roots to the origin.

    pred, gt (B, N, 3); root_index: the root point (0 = wrist for FreiHAND hands, 0 = pelvis for
    SMPL bodies), or None for no alignment. Returns (B,) in the input units.
    """
    pred, gt = _pair(pred, gt)
    if root_index is not None:
        if not -pred.shape[1] <= root_index < pred.shape[1]:
            raise ValueError(f"root_index={root_index} is out of range for {pred.shape[1]} points "
                             f"(pred shape {tuple(pred.shape)})")
        pred = pred - pred[:, [root_index]]  # (B, N, 3) minus its root (B, 1, 3)
        gt = gt - gt[:, [root_index]]
    return (pred - gt).norm(dim=-1).mean(-1)


def mpvpe(pred, gt, root_index=0):
    """Mean per-vertex position error after root alignment: `mpjpe` on vertices (B, V, 3) -> (B,).

    root_index indexes a vertex here; to align meshes by a joint (the wrist, the pelvis), subtract
    each mesh's root joint beforehand and pass root_index=None.
    """
    return mpjpe(pred, gt, root_index)


# -----------------------------------------------------------------------------
# Procrustes alignment


def _tiles(num_samples, num_points):
    """Slices over the samples, each holding about ALIGN_TILE_POINTS points (at least one sample;
    one empty slice when there are no samples, so that concatenating over tiles still works)."""
    step = max(1, ALIGN_TILE_POINTS // num_points)
    return [slice(s, s + step) for s in range(0, max(num_samples, 1), step)]


def _moments(pred, gt):
    """Steps 1-3 of the alignment for checked pred, gt (B, N, 3), one tile of samples at a time:
    centroids mu_pred, mu_gt (B, 1, 3), Frobenius norms of the centred sets plus 1e-8 (B,) x2, and
    a^T b (B, 3, 3) of the centred, normalised sets a and b.

    Whole-batch (B, N, 3) temporaries would each be a fresh allocation streamed through memory; a
    tile's stay in cache. Every sample goes through the same operations as in one whole-batch pass.
    """
    pieces = []
    for t in _tiles(*pred.shape[:2]):
        p, g = pred[t], gt[t]  # (b, N, 3) views
        # 1. centre both sets
        mu_pred, mu_gt = p.mean(1, keepdim=True), g.mean(1, keepdim=True)  # (b, 1, 3)
        a, b = p - mu_pred, g - mu_gt  # (b, N, 3), in cache
        # 2. divide each by its Frobenius norm; the official +1e-8 also keeps an all-equal set finite
        norm_pred = a.flatten(1).norm(dim=1) + FREIHAND_ALIGN_EPS  # (b,)
        norm_gt = b.flatten(1).norm(dim=1) + FREIHAND_ALIGN_EPS
        # 3. the 3x3 statistic of orthogonal Procrustes
        cross = (a / norm_pred[:, None, None]).transpose(1, 2) @ (b / norm_gt[:, None, None])  # (b, 3, 3)
        pieces.append((mu_pred, mu_gt, norm_pred, norm_gt, cross))
    return [torch.cat(piece) for piece in zip(*pieces)]


def _align(pred, gt, reflection=False):
    """Procrustes pieces for checked pred, gt (B, N, 3): scale (B,), rotation (B, 3, 3), centroids (B, 1, 3) x2.
    reflection=True: FreiHAND's official alignment, which may return a mirror (det -1)."""
    # 1.-3. centroids, norms, and a^T b of the centred, normalised sets a and b
    mu_pred, mu_gt, norm_pred, norm_gt, cross = _moments(pred, gt)
    # 4. orthogonal Procrustes (Umeyama): with a^T b = U S V^T, the rotation R = V D U^T maximises
    #    tr(R a^T b); D = diag(1, 1, det(U V^T)) makes det R = +1 (4D-Humans); FreiHAND: D = I
    u, sigma, vh = torch.linalg.svd(cross)  # (B, 3, 3), (B, 3), (B, 3, 3)
    d = torch.ones_like(sigma)  # (B, 3), the diagonal of D
    if not reflection:
        d[:, 2] = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0)
    rotation = vh.transpose(1, 2) @ (d[:, :, None] * u.transpose(1, 2))  # (B, 3, 3)
    # 5. scale: the official s = tr(S D) of the normalised sets, back to gt units
    scale = (sigma * d).sum(-1) * norm_gt / norm_pred  # (B,)
    return scale, rotation, mu_pred, mu_gt


def _aligned_tiles(pred, gt, reflection=False):
    """pred moved onto gt, one tile of samples at a time, for checked pred, gt (B, N, 3): yields
    (tile slice, aligned (b, N, 3)). In the official order: rotate the centred prediction, scale it
    (both in one product with s R^T), move it to the gt centroid."""
    scale, rotation, mu_pred, mu_gt = _align(pred, gt, reflection)
    scaled_rotation_t = scale[:, None, None] * rotation.transpose(1, 2)  # (B, 3, 3): row vectors x -> s x R^T
    for t in _tiles(*pred.shape[:2]):
        yield t, torch.baddbmm(mu_gt[t], pred[t] - mu_pred[t], scaled_rotation_t[t])  # (b, N, 3)


def _aligned(pred, gt, reflection=False):
    """pred moved onto gt, for checked pred, gt (B, N, 3) -> (B, N, 3)."""
    out = torch.empty_like(pred)
    for t, aligned in _aligned_tiles(pred, gt, reflection):
        out[t] = aligned  # each tile is freed once copied: its memory serves the next one
    return out


def _aligned_errors(pred, gt, reflection=False):
    """Distances |aligned pred - gt| (B, N) for checked pred, gt (B, N, 3), with no (B, N, 3) temporaries."""
    return torch.cat([_sq_norm(aligned - gt[t]).sqrt() for t, aligned in _aligned_tiles(pred, gt, reflection)])


def procrustes_transform(pred, gt):
    """Similarity (s, R, t) with s R pred_n + t ~ gt_n in the least-squares sense, R a proper rotation
    (4D-Humans' compute_similarity_transform; FreiHAND's align_w_scale where that one is proper).

    pred, gt (B, N, 3) -> scale (B,), rotation (B, 3, 3) with det +1, translation (B, 3).
    Degenerate sets (all points equal, collinear, N = 1) give finite numbers; an all-equal pred or
    gt gets scale 0, so every point lands on the gt centroid.
    """
    pred, gt = _pair(pred, gt)
    scale, rotation, mu_pred, mu_gt = _align(pred, gt)
    translation = mu_gt[:, 0] - scale[:, None] * (rotation @ mu_pred[:, 0, :, None])[..., 0]  # (B, 3)
    return scale, rotation, translation


def procrustes_align(pred, gt):
    """pred (B, N, 3) moved onto gt (B, N, 3) by the best similarity (proper rotation, det +1) -> (B, N, 3)."""
    return _aligned(*_pair(pred, gt))


def pa_mpjpe(pred, gt):
    """Mean per-joint error after `procrustes_align` (4D-Humans' reconstruction_error): pred, gt (B, J, 3)
    -> (B,), input units."""
    return _aligned_errors(*_pair(pred, gt)).mean(-1)


def pa_mpvpe(pred, gt):
    """Mean per-vertex error after `procrustes_align`: pred, gt (B, V, 3) -> (B,), input units."""
    return pa_mpjpe(pred, gt)


# -----------------------------------------------------------------------------
# PCK curve and its area


def pck_curve(errors, thresholds):
    """Fraction of points whose error is <= each threshold (the official PCK).

    errors (B, N), thresholds (K,) increasing, same units -> (B, K) in the thresholds' dtype.
    """
    errors = errors.to(thresholds.dtype).contiguous()
    (B, N), K = errors.shape, thresholds.shape[0]
    # e <= t_k  <=>  k >= first(e), the index of the first threshold >= e (K when there is none)
    first = torch.searchsorted(thresholds, errors)  # (B, N) in [0, K]
    counts = torch.zeros(B, K + 1, dtype=errors.dtype, device=errors.device)
    counts.scatter_add_(1, first, torch.ones_like(errors))  # (B, K + 1): how many points have each first(e)
    return counts.cumsum(1)[:, :K] / N


def auc_pck(errors_or_pred, gt=None, max_threshold=AUC_MAX_MM, num_thresholds=AUC_STEPS):
    """Area under the PCK curve at `num_thresholds` thresholds in [0, max_threshold], normalised to [0, 1].

    errors_or_pred: per-point errors (B, N), or predicted points (B, N, 3) when `gt` (B, N, 3) is
    given (errors = |pred - gt|, no alignment: align first if needed). The default range is
    FreiHAND's [0, 50] in millimetres; for errors in metres pass max_threshold=0.05. -> (B,)
    """
    if gt is None:
        errors = torch.as_tensor(errors_or_pred)
        if errors.ndim != 2 or errors.shape[1] == 0 or not torch.isfinite(errors).all():
            raise ValueError(f"errors has shape {tuple(errors.shape)} (finite: {bool(torch.isfinite(errors).all())}); "
                             f"expected finite per-point errors (B, N) with N >= 1, or pass pred and gt (B, N, 3)")
    else:
        pred, gt = _pair(errors_or_pred, gt)
        errors = (pred - gt).norm(dim=-1)  # (B, N)
    if not (math.isfinite(max_threshold) and max_threshold > 0 and num_thresholds >= 2):
        raise ValueError(f"got max_threshold={max_threshold}, num_thresholds={num_thresholds}; "
                         f"expected a positive finite range and at least 2 thresholds")
    # np.linspace, as the official script: the thresholds agree with it to the last bit
    thresholds = torch.from_numpy(np.linspace(0.0, max_threshold, num_thresholds)).to(errors.device)  # (K,) float64
    pck = pck_curve(errors, thresholds)  # (B, K)
    # trapezoid rule, divided by the trapezoid of ones over the same thresholds (= the range)
    auc = torch.trapezoid(pck, thresholds) / torch.trapezoid(torch.ones_like(thresholds), thresholds)
    return auc.to(errors.dtype if errors.is_floating_point() else torch.get_default_dtype())


# -----------------------------------------------------------------------------
# F-score from nearest-neighbour distances
#
# The hot part of the FreiHAND table. A k-d tree per sample (the official script) costs about as
# much as brute force in float64; brute force in float32 is several times faster, but its squared
# distances carry an error, and a point whose nearest distance sits within that error of a
# threshold could be counted on the wrong side. So: (1) normalise each sample so that all
# distances are <= 1, (2) screen all pairs in float32 (error < 5e-7, bound below), (3) recompute
# in float64, exactly like the official script, every point whose screened value lies within
# SCREEN_TOL of a squared threshold (well under 1% of the points on FreiHAND-like data).
# Float32 error bound, normalised units (|x| + |y| <= 1): the 5-term product is accurate to
# 5 * 2^-24 * (|x| + |y|)^2 < 3e-7, and rounding the coordinates to float32 moves d^2 by < 2e-7.


def _screen_sq_distances(x, y):
    """Squared nearest-neighbour distances both ways in float32, by tiled matrix products.

    x (B, N, 3), y (B, M, 3) float64, normalised -> dx (B, N) to the nearest y, dy (B, M) to the nearest x.
    """
    (B, N, _), M = x.shape, y.shape[1]
    # float32, unless the user allowed reduced-precision (bf16 / tf32) float32 matrix products
    reduced = torch.get_float32_matmul_precision() != "highest" or (x.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    like = dict(dtype=torch.float64 if reduced else torch.float32, device=x.device)
    # |x - y|^2 = [x, |x|^2, 1] . [-2 y, 1, |y|^2]: one matrix product per tile, no extra passes
    xa = torch.ones(B, N, 5, **like)
    xa[..., :3], xa[..., 3] = x, _sq_norm(x)
    ya = torch.ones(B, 5, M, **like)
    ya[:, :3], ya[:, 4] = -2 * y.transpose(1, 2), _sq_norm(y)
    rows = min(N, 64)
    samples = max(1, TILE_ENTRIES // (rows * M))
    dx = torch.empty(B, N, **like)
    dy = torch.full((B, M), math.inf, **like)
    for s in range(0, B, samples):
        for r in range(0, N, rows):
            d2 = torch.bmm(xa[s:s + samples, r:r + rows], ya[s:s + samples])  # (samples, rows, M)
            dx[s:s + samples, r:r + rows] = d2.amin(2)
            torch.minimum(dy[s:s + samples], d2.amin(1), out=dy[s:s + samples])
    return dx.double(), dy.double()


def _sq_norm(x):
    """|x|^2 over the last axis of (..., 3), written out (a reduction over 3 entries is slow on CPU)."""
    return x[..., 0].square() + x[..., 1].square() + x[..., 2].square()


def _refine_near_thresholds(d2, x, y, sq_thresholds):
    """Exact float64 squared nearest distances (sums of squared differences) where d2 cannot decide.

    d2 (B, N) screened values for the points x (B, N, 3) against y (B, M, 3); sq_thresholds (B, K).
    """
    near = ((d2[:, :, None] - sq_thresholds[:, None]).abs() <= SCREEN_TOL).any(-1)  # (B, N)
    b, i = near.nonzero(as_tuple=True)
    y_by_axis = y.transpose(1, 2).contiguous()  # (B, 3, M): each coordinate contiguous
    rows = max(1, TILE_ENTRIES // y.shape[1])
    for s in range(0, len(b), rows):
        bs, js = b[s:s + rows], i[s:s + rows]
        diff = x[bs, js][:, :, None] - y_by_axis[bs]  # (k, 3, M)
        d2[bs, js] = _sq_norm(diff.transpose(1, 2)).amin(-1)  # (k,)
    return d2


def _close_fractions(pred, gt, thresholds):
    """precision (B, K): fraction of pred points with a gt point closer than each threshold;
    recall (B, K): fraction of gt points with a pred point closer than it. pred (B, N, 3), gt (B, M, 3).

    NOTE R2: eval.py calls these two recall and precision the other way round; F is symmetric.
    """
    x, y = pred.double(), gt.double()
    # 1. centre on the gt centroid, divide by r = max |x| + max |y|: every |x_i - y_j| <= 1
    centre = y.mean(1, keepdim=True)  # (B, 1, 3)
    x, y = x - centre, y - centre
    r = x.norm(dim=-1).amax(1) + y.norm(dim=-1).amax(1)  # (B,)
    r = torch.where(r > 0, r, 1.0)
    x, y = x / r[:, None, None], y / r[:, None, None]
    sq_thresholds = (torch.as_tensor(thresholds, dtype=torch.float64, device=x.device) / r[:, None]).square()  # (B, K)
    # 2. float32 screen, 3. exact float64 distances near a threshold
    dx, dy = _screen_sq_distances(x, y)
    dx = _refine_near_thresholds(dx, x, y, sq_thresholds)  # (B, N)
    dy = _refine_near_thresholds(dy, y, x, sq_thresholds)  # (B, M)
    # 4. the official test: distance strictly below the threshold
    precision = (dx[:, :, None] < sq_thresholds[:, None]).double().mean(1)  # (B, K)
    recall = (dy[:, :, None] < sq_thresholds[:, None]).double().mean(1)
    return precision, recall


def _f_from(precision, recall):
    """F = 2 p r / (p + r), and 0 where p + r = 0 (the official convention)."""
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), 0.0)


def f_score(pred, gt, threshold):
    """F-score at `threshold` from nearest-neighbour distances both ways (FreiHAND's calculate_fscore).

    pred (B, N, 3) and gt (B, M, 3) need not have the same number of points; threshold in the
    input units (FreiHAND: 0.005 and 0.015 m, on aligned vertices). -> (B,) in [0, 1].
    """
    pred, gt = _pair(pred, gt, same_points=False)
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold={threshold}; expected a positive finite distance in the units of "
                         f"pred {tuple(pred.shape)}")
    precision, recall = _close_fractions(pred, gt, (threshold,))
    return _f_from(precision, recall)[:, 0].to(pred.dtype)


# -----------------------------------------------------------------------------
# The FreiHAND table


def _freihand_joint_rows(pred_joints, gt_joints):
    """PA-MPJPE (mm) and AUC of aligned joints; checked float64 inputs in metres (B, J, 3)."""
    errors = _aligned_errors(pred_joints, gt_joints, reflection=True)  # (B, J) metres, official: mirrors allowed
    return {"pa_mpjpe_mm": 1000.0 * errors.mean().item(),
            "auc_joints": auc_pck(errors, max_threshold=AUC_MAX_MM / 1000.0).mean().item()}


def _freihand_vertex_rows(pred_verts, gt_verts):
    """PA-MPVPE (mm), F@5 mm, F@15 mm and AUC of aligned vertices; checked float64 inputs in metres (B, V, 3)."""
    aligned = _aligned(pred_verts, gt_verts, reflection=True)  # (B, V, 3), official: mirrors allowed
    errors = (aligned - gt_verts).norm(dim=-1)  # (B, V) metres
    f = _f_from(*_close_fractions(aligned, gt_verts, FREIHAND_F_THRESHOLDS))  # (B, 2)
    return {"pa_mpvpe_mm": 1000.0 * errors.mean().item(), "f5": f[:, 0].mean().item(),
            "f15": f[:, 1].mean().item(),
            "auc_verts": auc_pck(errors, max_threshold=AUC_MAX_MM / 1000.0).mean().item()}


def freihand_table(pred_joints, gt_joints, pred_verts, gt_verts):
    """The standard FreiHAND numbers, all after the official Procrustes alignment (a mirror image
    allowed, as lmb-freiburg/freihand eval.py), averaged over the batch.

    pred_joints, gt_joints (B, J, 3) and pred_verts, gt_verts (B, V, 3) in metres (computed in
    float64). Returns floats: pa_mpjpe_mm, pa_mpvpe_mm (millimetres), f5, f15 (F-scores at 5 and
    15 mm), auc_joints, auc_verts (PCK area over [0, 50 mm]).
    """
    pj, gj = _pair(pred_joints, gt_joints, ("pred_joints", "gt_joints"))
    pv, gv = _pair(pred_verts, gt_verts, ("pred_verts", "gt_verts"))
    if pj.shape[0] != pv.shape[0] or pj.shape[0] == 0:
        raise ValueError(f"pred_joints has shape {tuple(pj.shape)} and pred_verts {tuple(pv.shape)}; "
                         f"expected the same batch size B >= 1")
    joints = _freihand_joint_rows(pj.double(), gj.double())
    verts = _freihand_vertex_rows(pv.double(), gv.double())
    rows = {**joints, **verts}
    return {k: rows[k] for k in ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_joints", "auc_verts")}


def freihand_metrics(pred, gt):
    """`freihand_table` on prediction and label dicts ({"joints3d": (B, 21, 3), "verts": (B, 778, 3), ...}):
    the metric table train.py reports for hand models."""
    return freihand_table(pred["joints3d"], gt["joints3d"], pred["verts"], gt["verts"])


# -----------------------------------------------------------------------------
# The mean-shape baseline
#
# The constant prediction every method is scored against: the training set's mean shape, placed
# for every test sample. Under PA metrics only the shape matters, so the mean must be one shape in
# one pose: each training shape is similarity-aligned to the running mean before averaging
# (generalised Procrustes). A plain average of shapes in random orientations is a blur.
# Hands come as left and right; mirroring the left ones (x -> -x) makes them all right hands,
# and the prediction for a left sample is the mean mirrored back.


def mirror_x(points, is_right):
    """points (B, N, 3); x -> -x where is_right (B,) bool is False (left hands read as right hands).

    Its own inverse: mirror_x(mirror_x(p, r), r) == p exactly. -> (B, N, 3) in the dtype of points.
    """
    points = torch.as_tensor(points)
    is_right = torch.as_tensor(is_right, device=points.device)
    if points.ndim != 3 or points.shape[-1] != 3 or is_right.dtype != torch.bool or is_right.shape != points.shape[:1]:
        raise ValueError(f"points has shape {tuple(points.shape)} and is_right {tuple(is_right.shape)} "
                         f"({is_right.dtype}); expected (B, N, 3) and (B,) bool")
    sign = torch.ones(points.shape[0], 1, 3, dtype=points.dtype, device=points.device)  # (B, 1, 3)
    sign[:, 0, 0] = torch.where(is_right, 1, -1)
    return points * sign


def mean_shape(points, iterations=3):
    """Generalised-Procrustes mean (N, 3) of shapes (B, N, 3), translated so point 0 is the origin: each
    shape is similarity-aligned to the running mean before averaging, so the mean is one shape in one pose
    (the best constant prediction under PA metrics), not a blur of shapes in random orientations.

    Computed in float64, returned in the dtype of points. The first shape is the starting mean;
    `iterations` >= 1 rounds of (align every shape to the mean, average). Shapes that are all
    similar copies of one shape give that shape (up to a similarity) after one round.
    """
    points = _points(points, "points")
    if points.shape[0] == 0 or iterations < 1:
        raise ValueError(f"points has shape {tuple(points.shape)}, iterations={iterations}; "
                         f"expected at least one shape (B >= 1) and iterations >= 1")
    # 1. every shape relative to its point 0, in float64
    shapes = points.double() - points.double()[:, :1]  # (B, N, 3)
    # 2. start from the first shape; align every shape onto the mean, average, repeat (tile by tile:
    #    the aligned shapes are summed as they come, never stored)
    mean = shapes[0]  # (N, 3)
    for _ in range(iterations):
        tiles = _aligned_tiles(shapes, mean.expand_as(shapes))
        mean = sum(aligned.sum(0) for _, aligned in tiles) / len(shapes)  # (N, 3)
    # 3. point 0 to the origin (alignment keeps the mean's centroid, not its point 0)
    return (mean - mean[:1]).to(points.dtype)


class MeanShapeBaseline:
    """The constant baseline every paper is scored against: fit on training labels, predict for any gt.

    labels: {key: (n, N_k, 3), plus optionally mirror_key: (n,) bool, True = right}. The present
    `keys` (absent ones are skipped) are stacked along the point axis and aligned TOGETHER, so
    joints and vertices stay consistent; left samples (mirror_key False) are mirrored first, and
    the mean is relative to point 0 of the first key (the wrist of FreiHAND joints). The cost grows
    linearly with n: a few thousand evenly strided training samples are plenty.
    self.mean: {key: (N_k, 3) float32}. mirror_key=None: no mirroring.
    """

    def __init__(self, labels, keys=("joints3d", "verts"), mirror_key="is_right", iterations=3):
        # 1. the keys present, checked, with one batch size
        self.keys, self.mirror_key = [k for k in keys if k in labels], mirror_key
        if not self.keys:
            raise ValueError(f"labels have keys {sorted(labels)}; expected at least one of {list(keys)}")
        points = [_points(labels[k], k) for k in self.keys]
        if len({len(p) for p in points}) > 1:
            raise ValueError(f"labels have batch sizes {({k: len(p) for k, p in zip(self.keys, points)})}; "
                             f"expected one n for all keys")
        # 2. stacked along the point axis, left samples mirrored
        stacked = torch.cat([p.double() for p in points], 1)  # (n, N_1 + N_2 + ..., 3)
        stacked = mirror_x(stacked, self._is_right(labels, len(stacked), stacked.device))
        # 3. one generalised-Procrustes mean of all points together, split back into the keys
        mean = mean_shape(stacked, iterations).float()  # (N_1 + N_2 + ..., 3)
        self.mean = {k: m.clone() for k, m in zip(self.keys, mean.split([p.shape[1] for p in points]))}

    def _is_right(self, rows, n, device):
        """rows[mirror_key] as (n,) bool on `device`, or all True when there is no mirror key."""
        if self.mirror_key is None or self.mirror_key not in rows:
            return torch.ones(n, dtype=torch.bool, device=device)
        return torch.as_tensor(rows[self.mirror_key], device=device)

    def __call__(self, gt):
        """gt: {key: (n, N_k, 3), optionally mirror_key (n,) bool} -> {key: (n, N_k, 3)} for every fitted
        key: the mean for every sample, mirrored back for left samples (float32, on the device of gt).
        Only n and the mirror flags are read from gt."""
        present = [gt[k] for k in (*self.keys, self.mirror_key) if k is not None and k in gt]
        if not present:
            raise ValueError(f"gt has keys {sorted(gt)}; expected one of {self.keys} or {self.mirror_key!r}")
        n, device = len(present[0]), torch.as_tensor(present[0]).device
        is_right = self._is_right(gt, n, device)
        return {k: mirror_x(mean.to(device).expand(n, -1, -1), is_right) for k, mean in self.mean.items()}


# -----------------------------------------------------------------------------
# Bodies: SMPL errors in millimetres, codebook usage, the mean-pose baseline


def body_errors(pred_joints, gt_joints, pred_verts=None, gt_verts=None, prefix=""):
    """{prefix}mpjpe_mm (pelvis-aligned), {prefix}pa_mpjpe_mm and, with vertices, {prefix}pve_mm
    (each mesh minus its own pelvis joint), means over samples in mm; inputs (B, J, 3) and
    (B, V, 3) in metres with the pelvis at joint 0 (SMPL)."""
    out = {f"{prefix}mpjpe_mm": mpjpe(pred_joints, gt_joints, 0).mean().item() * 1e3,
           f"{prefix}pa_mpjpe_mm": pa_mpjpe(pred_joints, gt_joints).mean().item() * 1e3}
    if pred_verts is not None and gt_verts is not None:
        placed = pred_verts - pred_joints[:, :1], gt_verts - gt_joints[:, :1]
        out[f"{prefix}pve_mm"] = mpvpe(*placed, None).mean().item() * 1e3
    return out


def two_reading_errors(pred_joints, gt_joints, other_joints, prefix=""):
    """GenHMR's controlled ambiguity (data.AmbiguousBodies): the image shows two readings of each person
    equally well, the true one (gt_joints) and the other (other_joints), all (B, 24, 3) metres, pelvis at 0.
    Each prediction is scored against the nearer reading, and the joints the readings place apart by more
    than 1 cm (the hidden arm) are asked whether they commit to one: within a third of the readings'
    separation from it (a prediction halfway between is a third of it from neither). -> {prefix}...
    nearest_reading_mpjpe_mm (whole body, pelvis-aligned, mean over samples of the smaller MPJPE),
    hidden_arm_mm (the hidden joints' mean error to the nearer reading), committed_fraction, and
    true_reading_fraction (of the committed: the share on the true reading, 0.5 if the image tells nothing)."""
    aligned = [j - j[:, :1] for j in (pred_joints, gt_joints, other_joints)]
    p, a, b = aligned
    hidden = ((a - b).norm(dim=-1) > 0.01).to(p.dtype)  # (B, 24)
    count = hidden.sum(1).clamp_min(1)

    def arm(x, y):
        return ((x - y).norm(dim=-1) * hidden).sum(1) / count  # (B,)

    to_a, to_b, separation = arm(p, a), arm(p, b), arm(a, b)
    nearest = torch.minimum(to_a, to_b)
    committed = nearest < separation / 3
    full = torch.minimum(mpjpe(pred_joints, gt_joints, 0), mpjpe(pred_joints, other_joints, 0))
    on_true = (to_a < to_b) & committed
    return {f"{prefix}nearest_reading_mpjpe_mm": full.mean().item() * 1e3,
            f"{prefix}hidden_arm_mm": nearest.mean().item() * 1e3,
            f"{prefix}committed_fraction": committed.double().mean().item(),
            f"{prefix}true_reading_fraction": (on_true.sum() / committed.sum().clamp_min(1)).item()}


def body_metrics(pred, gt):
    """The body table train.py reports: `body_errors` of every prediction variant in pred (a prefix p
    with pred[p + "joints3d"]: "" first, then e.g. "refined_" or a table row's), against gt's
    joints3d and verts; with pred["reproj_error_px"] and pred["refined_reproj_error_px"] (B,), their
    means and refine_2d_improved_fraction, the share of samples whose 2D error fell; with pred["detected_*"] (B,)
    (the 2D joints refinement was given, against the labels), their means; with
    pred[p + "masked_token_accuracy_75"] / pred[p + "count_table_accuracy_75"] / pred["ugs_t{t}_commit_precision"] /
    pred["context_*_hidden_accuracy"] / pred["context_true25_overruled"] (B,), their means over the rows that have them.
    Real benchmarks (gt from data.HMR2Npz, with "keypoints3d"): a variant with meshes is scored by
    the benchmarks' protocol (`hmr2_errors`, regressor from $HMR_J_REGRESSOR), one without (a table
    row's joints) by `body_errors` on the rows with SMPL labels. With gt["joints3d_other"]
    (data.AmbiguousBodies), also `two_reading_errors` of each variant."""
    prefixes = [k[:-len("joints3d")] for k in pred if k.endswith("joints3d")]
    protocol, rows = "keypoints3d" in gt, _labelled(gt)
    regressor = keypoint_regressor() if protocol else None
    out = {}
    for p in sorted(prefixes, key=lambda p: p != ""):
        if protocol and p + "verts" in pred:
            out.update(hmr2_errors(pred[p + "joints3d"], pred[p + "verts"], gt, regressor, p))
        elif rows.any():
            out.update(body_errors(pred[p + "joints3d"][rows], gt["joints3d"][rows],
                                   pred[p + "verts"][rows] if p + "verts" in pred else None,
                                   gt["verts"][rows] if "verts" in gt else None, p))
        if "joints3d_other" in gt:  # data.AmbiguousBodies: which of two readings each prediction commits to
            out.update(two_reading_errors(pred[p + "joints3d"], gt["joints3d"], gt["joints3d_other"], p))
    # GenHMR's: NaN on rows without a pose
    for key in [k for k in pred if k.endswith(("_accuracy_75", "_commit_precision", "_hidden_accuracy", "_overruled"))]:
        if not torch.isnan(pred[key]).all():
            out[key] = torch.nanmean(pred[key].double()).item()
    for key in [k for k in pred if k.startswith("detected_")]:  # GenHMR's: the 2D joints its refinement was given
        out[key] = pred[key].double().mean().item()
    if "reproj_error_px" in pred and "refined_reproj_error_px" in pred:
        before, after = pred["reproj_error_px"], pred["refined_reproj_error_px"]
        out.update(refine_2d_improved_fraction=(after < before).float().mean().item(),
                   reproj_error_px=before.mean().item(), refined_reproj_error_px=after.mean().item())
    return out


def codebook_usage(ids, num_codes):
    """Perplexity exp(H(p)) of the code frequencies p in ids (any shape) and the number of codes never used."""
    counts = torch.bincount(torch.as_tensor(ids).reshape(-1), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return {"codebook_perplexity": entropy.exp().item(), "dead_codes": float((counts == 0).sum())}


def tokenizer_metrics(pred, gt):
    """A pose tokenizer's reconstruction: tokenizer_ + `body_errors`; with pred["ids"] (B, L) and
    pred["num_codes"] (B,), `codebook_usage` on the held-out set."""
    out = body_errors(pred["joints3d"], gt["joints3d"], pred.get("verts"), gt.get("verts"), "tokenizer_")
    if "ids" in pred:
        out.update(codebook_usage(pred["ids"], int(pred["num_codes"][0])))
    return out


def mean_rotations(R):
    """Chordal mean of rotations R (n, J, 3, 3) -> (J, 3, 3): per joint, the mean matrix projected
    onto SO(3) (the rotation nearest to it in Frobenius norm)."""
    U, _, Vh = torch.linalg.svd(torch.as_tensor(R).double().mean(0))
    d = torch.sign(torch.det(U @ Vh))  # -1 where U Vh would be a reflection
    return (U * torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)[:, None, :]) @ Vh


class MeanPoseBaseline:
    """The constant body baseline: the training mean pose (per-joint chordal mean of the rotation
    matrices, global orientation included) with the training mean shape, or each sample's own shape
    (own_shape=True: a pose tokenizer reconstructs poses, not shapes), posed by SMPL.

    labels: smpl_pose (n, 24, 3) axis-angle, smpl_shape (n, 10). Called on gt (smpl_shape read only
    with own_shape) -> {p + "joints3d": (n, 24, 3), p + "verts": (n, 6890, 3)} for p in prefixes, the
    same constant under every prefix (e.g. "refined_": a constant has nothing to refine).
    """

    def __init__(self, labels, own_shape=False, prefixes=("",), model_dir=None):
        import bodymodels  # the metrics above need no body model
        for key, shape in (("smpl_pose", (24, 3)), ("smpl_shape", (10,))):
            if key not in labels or tuple(labels[key].shape[1:]) != shape:
                raise ValueError(f"MeanPoseBaseline: labels need {key} (n, {', '.join(map(str, shape))}); "
                                 f"got {tuple(labels[key].shape) if key in labels else 'no such key'}")
        # real data: its labelled rows
        if "has_smpl_pose" in labels and (torch.as_tensor(labels["has_smpl_pose"]) > 0).any():
            keep = torch.as_tensor(labels["has_smpl_pose"]) > 0
            labels = {k: torch.as_tensor(labels[k])[keep] for k in ("smpl_pose", "smpl_shape")}
        R = mean_rotations(bodymodels.axis_angle_to_matrix(torch.as_tensor(labels["smpl_pose"]).double()))
        self.pose = bodymodels.matrix_to_axis_angle(R).float()  # (24, 3)
        self.shape = torch.as_tensor(labels["smpl_shape"]).float().mean(0)  # (10,)
        self.own_shape, self.prefixes = own_shape, prefixes
        self.skin = bodymodels.Skinning(bodymodels.load_smpl(model_dir), torch.float32)

    def __call__(self, gt):
        n = len(gt["smpl_shape"] if self.own_shape else next(iter(gt.values())))
        shape = torch.as_tensor(gt["smpl_shape"]).float() if self.own_shape else self.shape.expand(n, -1)
        verts, joints = self.skin(self.pose.expand(n, -1, -1), shape)
        return {f"{p}{k}": v for p in self.prefixes for k, v in (("joints3d", joints), ("verts", verts))}


# -----------------------------------------------------------------------------
# HMR-Adapter's whole-body protocol (Table 1; SMPLer-X's evaluate, EHF.py and humandata.py, which the paper follows)
#
# The hand path at the true boxes (Table 3) is scored on MANO meshes, wrist-aligned; the pipeline (Table 1) on
# SMPL-X meshes: all (pelvis-aligned), each hand (wrist-aligned, left and right averaged) and the face
# (neck-aligned), on the vertex ids SMPL-X's files give (SMPL-X__FLAME_vertex_ids.npy, MANO_SMPLX_vertex_ids.pkl)
# or, without them, the stand-ins' parts. `WholeBodyMeanPoseBaseline` is the constant prediction it is read against.

WHOLEBODY_HEAD_JOINTS = (15, 22, 23, 24)  # SMPL-X head, jaw, left and right eye: the stand-ins' face
WHOLEBODY_NECK = 12  # official (SMPLer-X EHF.py / humandata.py evaluate): face vertices are aligned at the neck joint
WHOLEBODY_SIDES = ("left", "right")


@functools.lru_cache(maxsize=None)
def _wholebody_models():
    """MANO (right hand) and SMPL-X (bodymodels' loaders: $HMR_BODY_MODELS or the stand-ins) as float32
    Skinning, each hand's SMPL-X vertices and the head's (the strongest skinning joint in the part)."""
    import bodymodels
    mano, smplx = bodymodels.load_mano(), bodymodels.load_smplx()
    part = smplx.lbs_weights.argmax(1)
    ids = lambda joints: torch.isin(part, torch.tensor(joints)).nonzero()[:, 0]  # noqa: E731
    return dict(mano=bodymodels.Skinning(mano, torch.float32, per_sample=False),
                smplx=bodymodels.Skinning(smplx, torch.float32, per_sample=False),
                hand_verts={s: ids(bodymodels.SMPLX_HAND_JOINTS[s]) for s in WHOLEBODY_SIDES},
                head_verts=ids(WHOLEBODY_HEAD_JOINTS), num_verts=len(smplx.v_template))


def _mano_rotations_mesh(R, betas):
    """MANO verts (B, 778, 3) and 21 joints (B, 21, 3) in OpenPose order with HaMeR's (smplx's) fingertips."""
    import bodymodels
    verts, joints = _wholebody_models()["mano"].from_rotations(R, betas)
    return verts, bodymodels.hand_joints21(joints, verts, "hamer")


def face_vertex_ids():
    """SMPL-X vertex ids (F,) of the face for Table 1's face metrics: the file that $HMR_FLAME_VERTEX_IDS
    names, as SMPLer-X's evaluation reads it (`SMPL-X__FLAME_vertex_ids.npy`, SMPL-X's 5023 FLAME
    vertices, distributed with SMPL-X), else the vertices whose strongest skinning joint is the head,
    jaw or an eye (WHOLEBODY_HEAD_JOINTS): the stand-ins have no FLAME correspondence, so their face is that head
    region (the neck and back of the head included, as FLAME's are)."""
    path = os.environ.get("HMR_FLAME_VERTEX_IDS")
    if not path:
        return _wholebody_models()["head_verts"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HMR_FLAME_VERTEX_IDS: missing {path} (expected SMPL-X__FLAME_vertex_ids.npy)")
    ids = np.load(path, allow_pickle=False)
    num_verts = _wholebody_models()["num_verts"]
    integers = ids.ndim == 1 and len(ids) > 0 and np.issubdtype(ids.dtype, np.integer)
    if not integers or ids.min() < 0 or ids.max() >= num_verts:
        raise ValueError(f"HMR_FLAME_VERTEX_IDS: {path} must hold SMPL-X vertex ids (F,) in [0, {num_verts}), "
                         f"got {ids.dtype} {ids.shape}")
    return torch.from_numpy(ids.astype(np.int64))


def hand_vertex_ids():
    """{side: SMPL-X vertex ids} of each hand for Table 1's hand metrics: SMPL-X's
    `MANO_SMPLX_vertex_ids.pkl` ("left_hand", "right_hand": 778 each) where $HMR_MANO_SMPLX_VERTEX_IDS
    names it, as SMPLer-X's evaluation reads it, else the vertices whose strongest skinning joint is a
    hand joint (the stand-ins have no MANO correspondence file)."""
    import bodymodels
    path = os.environ.get("HMR_MANO_SMPLX_VERTEX_IDS")
    if not path:
        return _wholebody_models()["hand_verts"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HMR_MANO_SMPLX_VERTEX_IDS: missing {path} (expected MANO_SMPLX_vertex_ids.pkl)")
    num_verts = _wholebody_models()["num_verts"]
    ids = {s: bodymodels.read_pickled_array(path, f"{s}_hand").astype(np.int64).ravel() for s in WHOLEBODY_SIDES}
    if any(len(i) == 0 or i.min() < 0 or i.max() >= num_verts for i in ids.values()):
        raise ValueError(f"HMR_MANO_SMPLX_VERTEX_IDS: {path} must hold SMPL-X vertex ids in [0, {num_verts})")
    return {s: torch.from_numpy(i) for s, i in ids.items()}


def _wholebody_errors(pred_verts, gt_verts, pred_joints, gt_joints, root):
    """PVE after moving joint `root` of each to the origin, PA-PVE, PA-MPJPE: (N,) each, input units."""
    pve = (pred_verts - pred_joints[:, root:root + 1] - gt_verts + gt_joints[:, root:root + 1]).norm(dim=-1).mean(-1)
    return dict(pve_mm=pve, pa_pve_mm=pa_mpvpe(pred_verts, gt_verts), pa_mpjpe_mm=pa_mpjpe(pred_joints, gt_joints))


def rotation_angle_deg(R):
    """The angle (...,) in degrees of rotation matrices R (..., 3, 3): acos((trace R - 1) / 2)."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def _face_errors(pred_verts, gt_verts, pred_neck, gt_neck, ids):
    """Face PVE after moving the neck (B, 3) of each onto the other, and PA-PVE, over vertices ids: (N,) each."""
    pred_face, gt_face = pred_verts[:, ids], gt_verts[:, ids]
    pve = (pred_face - pred_neck[:, None] - gt_face + gt_neck[:, None]).norm(dim=-1).mean(-1)
    return dict(pve_mm=pve, pa_pve_mm=pa_mpvpe(pred_face, gt_face))


# The hand path's predictions on the expert's own hand images (a hand dataset's hands, drawn again apart from the
# people: synthetic.SyntheticWholeBody) are scored against those hands' own labels; every other one against the
# people's hands (S_hand_mano_pose).
HAND_TRUTH = {"expert_own": "hand_image_mano_pose", "constant_own": "hand_image_mano_pose"}


def wholebody_metrics(pred, gt):
    """HMR-Adapter's protocol (Sec. 4.1, Table 1) in mm, as {"hand_path/M/{clean,occluded}/E": ...,
    "pipeline/P/{all,hands,hands_occluded,face}/E": ...} (train.py nests the names at "/"); E is pve_mm,
    pa_pve_mm, pa_mpjpe_mm, and for the hand path rot_deg, the angle of the rotation in the Procrustes fit of the
    hand mesh (its global orientation's error: with PA-PVE, the articulation's, it splits the wrist-aligned PVE).
    pred: hand_M_verts (N, 2, 778, 3), hand_M_joints (N, 2, 21, 3) (left first, left
    hands flipped; scored against HAND_TRUTH's key), pipe_P_verts (N, 10475, 3), pipe_P_joints (N, 55, 3); gt:
    {left,right}_hand_mano_pose,
    {left,right}_hand_occluded, verts, joints3d (data.py's whole-body keys). Alignment as SMPLer-X's evaluate
    (EHF.py, humandata.py, which the paper follows): PVE after moving the pelvis (all), each wrist (hands;
    averaged over left and right) or the neck (face) of the prediction onto the truth's; PA-PVE and PA-MPJPE
    after a Procrustes fit of each part alone; hands/box_centre_error_sides: the mean distance of a pipeline's
    hand box centre (pipe_P_boxes) from the true one's (left_hand_box, right_hand_box), in true box sides.
    Face: PVE and PA-PVE on `face_vertex_ids()` (SMPLer-X reports no face PA-MPJPE: nor does this). A split
    with no hand in it (a file without occluded hands) is left out."""
    import bodymodels
    result = {}
    occluded = torch.stack([gt[f"{s}_hand_occluded"] for s in WHOLEBODY_SIDES], 1).flatten() > 0.5  # (2N,)
    hand_names = [k[5:-6] for k in pred if k.startswith("hand_") and k.endswith("_verts")]
    truths = {}
    for name in hand_names:
        key = HAND_TRUTH.get(name, "hand_mano_pose")
        if key not in truths:
            pose = torch.stack([gt[f"{s}_{key}"] for s in WHOLEBODY_SIDES], 1).flatten(0, 1)
            truths[key] = _mano_rotations_mesh(bodymodels.axis_angle_to_matrix(pose), pose.new_zeros(len(pose), 10))
        gt_verts, gt_joints = truths[key]
        verts = pred[f"hand_{name}_verts"].flatten(0, 1)
        e = {k: 1000 * v for k, v in _wholebody_errors(verts, gt_verts, pred[f"hand_{name}_joints"].flatten(0, 1),
                                                        gt_joints, 0).items()}  # mm
        e["rot_deg"] = rotation_angle_deg(procrustes_transform(verts.double(), gt_verts.double())[1])
        for split, mask in (("clean", ~occluded), ("occluded", occluded)):
            if not mask.any():
                continue
            result.update({f"hand_path/{name}/{split}/{k}": v[mask].mean() for k, v in e.items()})
    face, hand_ids = face_vertex_ids(), hand_vertex_ids()
    for name in [k[5:-6] for k in pred if k.startswith("pipe_") and k.endswith("_verts")]:
        verts, joints = pred[f"pipe_{name}_verts"], pred[f"pipe_{name}_joints"]
        e = _wholebody_errors(verts, gt["verts"], joints, gt["joints3d"], 0)
        result.update({f"pipeline/{name}/all/{k}": 1000 * v.mean() for k, v in e.items()})
        per_hand = []
        for side in WHOLEBODY_SIDES:
            ids, hj = hand_ids[side], list(bodymodels.SMPLX_HAND_JOINTS[side])
            per_hand.append(_wholebody_errors(verts[:, ids], gt["verts"][:, ids], joints[:, hj], gt["joints3d"][:, hj],
                                              0))
        hands = {k: torch.stack([h[k] for h in per_hand], 1).flatten() for k in per_hand[0]}  # (2N,) left, right
        result.update({f"pipeline/{name}/hands/{k}": 1000 * v.mean() for k, v in hands.items()})
        if occluded.any():
            result.update({f"pipeline/{name}/hands_occluded/{k}": 1000 * v[occluded].mean() for k, v in hands.items()})
        if f"pipe_{name}_boxes" in pred and "left_hand_box" in gt:  # the hand boxes' centres, in true box sides
            box, true = pred[f"pipe_{name}_boxes"], torch.stack([gt[f"{s}_hand_box"] for s in WHOLEBODY_SIDES], 1)
            centre = lambda b: (b[..., :2] + b[..., 2:]) / 2  # noqa: E731
            error = (centre(box) - centre(true)).norm(dim=-1) / (true[..., 2:] - true[..., :2]).amax(-1)
            result[f"pipeline/{name}/hands/box_centre_error_sides"] = error.mean()
        neck = WHOLEBODY_NECK
        result.update({f"pipeline/{name}/face/{k}": 1000 * v.mean() for k, v in
                       _face_errors(verts, gt["verts"], joints[:, neck], gt["joints3d"][:, neck], face).items()})
    return {k: float(v) for k, v in result.items()}


class WholeBodyMeanPoseBaseline:
    """The constant baseline `wholebody_metrics` scores: the training set's mean MANO pose (per-joint chordal
    mean, both hands in the right-hand frame) for the hand path (and, where the labels hold the expert's own hands,
    theirs: constant_own), and its mean SMPL-X pose and shape for the
    pipeline, placed at the true pelvis; labels: training labels (train.py)."""

    def __init__(self, labels):
        import bodymodels
        self.hand_R = {}  # name -> (16, 3, 3): the people's hands, and the expert's own where the labels have them
        for name, key in (("constant", "hand_mano_pose"), ("constant_own", "hand_image_mano_pose")):
            if f"left_{key}" in labels:
                pose = torch.stack([labels[f"{s}_{key}"] for s in WHOLEBODY_SIDES], 1).flatten(0, 1)
                self.hand_R[name] = mean_rotations(bodymodels.axis_angle_to_matrix(pose.double())).float()
        self.body_R = mean_rotations(bodymodels.axis_angle_to_matrix(labels["smplx_pose"].double())).float()  # (55,3,3)
        self.shape = torch.cat([labels["smplx_shape"].mean(0), labels["smplx_expression"].mean(0)])

    def __call__(self, gt):
        N = len(gt["smplx_pose"])
        out = {}
        for name, R in self.hand_R.items():
            verts, joints = _mano_rotations_mesh(R.expand(2 * N, -1, -1, -1), torch.zeros(2 * N, 10))
            out.update({f"hand_{name}_verts": verts.unflatten(0, (N, 2)),
                        f"hand_{name}_joints": joints.unflatten(0, (N, 2))})
        bv, bj = _wholebody_models()["smplx"].from_rotations(self.body_R[None], self.shape[None])
        shift = gt["joints3d"][:, :1] - bj[:, :1]
        return dict(out, pipe_constant_verts=bv + shift, pipe_constant_joints=bj + shift)


# -----------------------------------------------------------------------------
# The body benchmarks' protocol (4D-Humans / HMR2.0 eval.py on 3DPW-TEST, EMDB, H36M-VAL-P2)
#
# 1. Keypoints of the prediction: 4D-Humans' SMPL wrapper gives 44 (smpl_wrapper.py): OpenPose 25
#    (SMPL's joints through its joint map), then 19 from the vertices by J_regressor_extra
#    (SMPL_to_J19.pkl, (19, 6890)). The protocol reads only the 19 (`hmr2_keypoints`).
# 2. Both sets minus their pelvis, keypoint 39 (EXTRA.PELVIS_IND: the 19's pelvis), no confidence mask.
# 3. MPJPE and PA-MPJPE (proper rotation) on KEYPOINT_LIST [25..37, 43] (datasets_eval.yaml: the 13
#    LSP joints and the H36M head), means over samples in mm (`hmr2_protocol`).
# 4. PVE (not in 4D-Humans' eval.py; the field's 3DPW number): the meshes of the labels' SMPL
#    parameters, each minus its pelvis joint, on the rows with has_body_pose and has_betas.
# NOTE R3: 4D-Humans scores H36M-VAL-P2 with the same J19 regressor. A user-supplied
# J_regressor_h36m (17, 6890) (SPIN's H36M protocol) is read too: its joints fill the 19's slots that
# the protocol reads (`H36M17_TO_EXTRA`), so the numbers are SPIN-style H36M joints against the file's.
# NOTE R4: 3DPW's labels are gendered SMPL meshes in other codebases; PVE here poses the
# neutral (or stand-in) SMPL with the file's parameters.
# The regressors are licensed downloads: the path comes from the environment variable HMR_J_REGRESSOR.

HMR2_KEYPOINT_LIST = tuple(range(25, 38)) + (43,)  # datasets_eval.yaml KEYPOINT_LIST (3DPW-TEST, H36M-VAL-P2)
HMR2_PELVIS_INDEX = 39  # EXTRA.PELVIS_IND
HMR2_EXTRA_OFFSET = 25  # the 19 extra keypoints follow OpenPose's 25
# slot in the 19 <- H36M-17 joint (SPIN's H36M_TO_J14 for the LSP 13 + head; pelvis 0 -> slot 14)
H36M17_TO_EXTRA = {0: 6, 1: 5, 2: 4, 3: 1, 4: 2, 5: 3, 6: 16, 7: 15, 8: 14, 9: 11, 10: 12, 11: 13, 12: 8,
                   14: 0, 18: 10}


def keypoint_regressor(path=None):
    """The protocol's regressor (19 or 17, V) float64 from `path` or $HMR_J_REGRESSOR: .npy, .npz
    (its first array) or the official .pkl (read without running code). Raises one line naming it."""
    path = path or os.environ.get("HMR_J_REGRESSOR")
    if not path:
        raise FileNotFoundError("HMR_J_REGRESSOR is not set: the body benchmarks' protocol needs SMPL_to_J19.pkl "
                                "(19, 6890) or J_regressor_h36m.npy (17, 6890) (see metrics.hmr2_protocol)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HMR_J_REGRESSOR={path}: no such file")
    if path.endswith(".pkl"):
        import bodymodels  # its restricted unpickler: a pickle cannot run code
        R = bodymodels.read_pickled_array(path)
    else:
        loaded = np.load(path, allow_pickle=False)
        R = loaded if isinstance(loaded, np.ndarray) else loaded[loaded.files[0]]
    R = np.asarray(R.toarray() if hasattr(R, "toarray") else R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] not in (17, 19):
        raise ValueError(f"HMR_J_REGRESSOR={path}: shape {R.shape}, expected (19, V) or (17, V)")
    return torch.from_numpy(R)


def hmr2_keypoints(verts, regressor):
    """verts (B, V, 3), regressor (19 or 17, V) -> the 44 keypoints (B, 44, 3) of 4D-Humans' SMPL
    wrapper as far as the protocol reads them: slots 25-43 from the regressor (17 rows: H36M joints
    placed by H36M17_TO_EXTRA, the rest NaN); the OpenPose slots 0-24 are NaN (never read)."""
    verts = torch.as_tensor(verts)
    R = torch.as_tensor(regressor).to(verts)
    if R.shape[1] != verts.shape[1]:
        raise ValueError(f"hmr2_keypoints: the regressor has {R.shape[1]} columns for {verts.shape[1]} vertices")
    joints = torch.einsum("jv,bvc->bjc", R, verts)  # (B, 19 or 17, 3)
    out = verts.new_full((len(verts), 44, 3), float("nan"))
    if len(R) == 19:
        out[:, HMR2_EXTRA_OFFSET:] = joints
    else:
        slots, h36m = zip(*H36M17_TO_EXTRA.items())
        out[:, [HMR2_EXTRA_OFFSET + s for s in slots]] = joints[:, list(h36m)]
    return out


def hmr2_protocol(pred_keypoints, gt_keypoints, keypoint_list=HMR2_KEYPOINT_LIST, pelvis_index=HMR2_PELVIS_INDEX):
    """4D-Humans' Evaluator (mode_mpjpe, mode_re) per sample: (B, 44, 3) each (gt may carry a 4th
    confidence column, ignored as there) -> (mpjpe (B,), pa_mpjpe (B,)) in the input units."""
    pred, gt = torch.as_tensor(pred_keypoints).double(), torch.as_tensor(gt_keypoints)[..., :3].double()
    pred, gt = pred - pred[:, [pelvis_index]], gt - gt[:, [pelvis_index]]
    keep = list(keypoint_list)
    return mpjpe(pred[:, keep], gt[:, keep], None), pa_mpjpe(pred[:, keep], gt[:, keep])


def hmr2_errors(pred_joints, pred_verts, gt, regressor, prefix=""):
    """The protocol's table in mm for predicted SMPL joints (B, 24, 3) and meshes (B, V, 3) against gt
    of data.HMR2Npz: {prefix}mpjpe_mm, {prefix}pa_mpjpe_mm on gt["keypoints3d"] (steps 1-3), and
    {prefix}pve_mm (step 4) on the rows with SMPL labels (`_labelled`), when there are any."""
    e, pa = hmr2_protocol(hmr2_keypoints(torch.as_tensor(pred_verts).double(), regressor), gt["keypoints3d"])
    out = {f"{prefix}mpjpe_mm": e.mean().item() * 1e3, f"{prefix}pa_mpjpe_mm": pa.mean().item() * 1e3}
    rows = _labelled(gt)
    if rows.any() and "verts" in gt:
        pred_placed = (pred_verts - pred_joints[:, :1])[rows]
        gt_placed = (gt["verts"] - gt["joints3d"][:, :1])[rows]
        out[f"{prefix}pve_mm"] = mpvpe(pred_placed, gt_placed, None).mean().item() * 1e3
    return out


def _labelled(gt):
    """Rows of gt with SMPL pose and shape labels (B,) bool (all rows for synthetic data)."""
    n = len(gt["joints3d"])
    has = torch.ones(n, dtype=torch.bool)
    for key in ("has_smpl_pose", "has_smpl_shape"):
        if key in gt:
            has &= torch.as_tensor(gt[key]) > 0
    return has


# -----------------------------------------------------------------------------
# The official protocol one sample at a time: the benchmark's baseline and a check of our numbers.
# Re-implemented from the description of lmb-freiburg/freihand eval.py (numpy + scipy). The
# original measures distances with open3d, which builds a k-d tree of the target cloud on every
# call; scipy's k-d tree computes the same exact float64 distances.


def _official_align_w_scale(gt, pred):
    """align_w_scale: pred (N, 3) moved onto gt (N, 3), numpy. No reflection check."""
    from scipy.linalg import orthogonal_procrustes
    gt_c, pred_c = gt - gt.mean(0), pred - pred.mean(0)
    s_gt, s_pred = np.linalg.norm(gt_c) + 1e-8, np.linalg.norm(pred_c) + 1e-8
    rotation, s = orthogonal_procrustes(gt_c / s_gt, pred_c / s_pred)
    return (pred_c / s_pred) @ rotation.T * s * s_gt + gt.mean(0)


def _official_fscores(gt, pred, thresholds, per_threshold):
    """F-scores of pred (M, 3) against gt (N, 3); per_threshold=True rebuilds the trees for each threshold (eval.py)."""
    from scipy.spatial import cKDTree
    scores = []
    for k, threshold in enumerate(thresholds):
        if per_threshold or k == 0:
            d_gt = cKDTree(pred).query(gt)[0]  # nearest pred point of each gt point
            d_pred = cKDTree(gt).query(pred)[0]  # nearest gt point of each pred point
        p, r = np.mean(d_pred < threshold), np.mean(d_gt < threshold)
        scores.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return scores


def _official_auc(errors):
    """EvalUtil.get_measures(0, 0.05, 100): PCK curve of each point over the dataset, its area, mean over points."""
    thresholds = np.linspace(0.0, 0.05, 100)
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    return np.mean([np.trapezoid((e[:, None] <= thresholds).mean(0), thresholds) / norm for e in errors.T])


def _official_joint_rows(pred_joints, gt_joints):
    errors = np.stack([np.linalg.norm(_official_align_w_scale(g, p) - g, axis=1)
                       for p, g in zip(pred_joints, gt_joints)])
    return {"pa_mpjpe_mm": 1000.0 * errors.mean(), "auc_joints": _official_auc(errors)}


def _official_vertex_rows(pred_verts, gt_verts, per_threshold=True):
    errors, fscores = [], []
    for p, g in zip(pred_verts, gt_verts):
        aligned = _official_align_w_scale(g, p)
        errors.append(np.linalg.norm(aligned - g, axis=1))
        fscores.append(_official_fscores(g, aligned, FREIHAND_F_THRESHOLDS, per_threshold))
    errors, fscores = np.stack(errors), np.array(fscores)
    return {"pa_mpvpe_mm": 1000.0 * errors.mean(), "f5": fscores[:, 0].mean(), "f15": fscores[:, 1].mean(),
            "auc_verts": _official_auc(errors)}


def _random_rotations(n, generator):
    """n uniform random rotations (n, 3, 3), float64: QR of Gaussian matrices with the signs fixed."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    return q * torch.linalg.det(q)[:, None, None]  # det -1 -> +1


def _hand_like_pairs(num_samples, num_points, generator):
    """(pred, gt) (S, P, 3) in metres: gt a hand-sized cloud in front of a camera, pred a similarity
    of it plus 4 mm noise per axis (aligned errors of a few mm, so F@5 mm is far from 0 and 1)."""
    S, P, like = num_samples, num_points, dict(generator=generator, dtype=torch.float64)
    gt = torch.randn(S, P, 3, **like) * torch.tensor([0.04, 0.025, 0.015], dtype=torch.float64)  # metres
    gt = gt @ _random_rotations(S, generator).transpose(1, 2) + torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64)
    scale = 0.9 + 0.2 * torch.rand(S, 1, 1, **like)
    pred = scale * gt @ _random_rotations(S, generator).transpose(1, 2) + 0.05 * torch.randn(S, 1, 3, **like)
    return pred + 0.004 * torch.randn(S, P, 3, **like), gt


def _timed(fn, *args, repeats=1):
    """(best wall-clock seconds over `repeats`, last result)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


MESHES = {"MANO hand": 778, "SMPL body": 6890, "SMPL-X body": 10475}  # vertices of each benchmarked mesh


def _official_align_loop(pred, gt):
    """The official align_w_scale over samples: numpy pred, gt (S, N, 3) -> aligned (S, N, 3)."""
    return np.stack([_official_align_w_scale(g, p) for p, g in zip(pred, gt)])


def benchmark_alignment(num_samples=3960, body_samples=500, seed=0, repeats=3):
    """Print the time of `procrustes_align` against the official per-sample loop, for a hand mesh
    (`num_samples` samples) and two body meshes (`body_samples` samples: 3960 SMPL-X meshes are 1 GB
    per float64 tensor). Both get the same float64 inputs; each time is the best of `repeats`."""
    g = torch.Generator().manual_seed(seed)
    print(f"Procrustes alignment, torch threads {torch.get_num_threads()}, numpy BLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, float64 in")
    for mesh, vertices in MESHES.items():
        samples = num_samples if vertices == MESHES["MANO hand"] else body_samples
        pred, gt = _hand_like_pairs(samples, vertices, g)
        t_ours, ours = _timed(procrustes_align, pred, gt, repeats=repeats)
        t_official, official = _timed(_official_align_loop, pred.numpy(), gt.numpy(), repeats=repeats)
        diff = np.abs(ours.numpy() - official).max()
        print(f"{vertices:6d} vertices ({mesh}, {samples} samples): ours {t_ours:7.3f} s   official loop "
              f"{t_official:7.3f} s   speed-up {t_official / t_ours:5.1f}x   max |diff| {diff:.1e}")


def benchmark(num_samples=3960, seed=0, repeats=3):
    """Print the time of our batched table against a per-sample loop of the official protocol."""
    g = torch.Generator().manual_seed(seed)
    pred_j, gt_j = _hand_like_pairs(num_samples, 21, g)
    pred_v, gt_v = _hand_like_pairs(num_samples, 778, g)
    np_j, np_v = (pred_j.numpy(), gt_j.numpy()), (pred_v.numpy(), gt_v.numpy())
    print(f"FreiHAND table over {num_samples} samples, torch threads {torch.get_num_threads()}, float64 in")
    t_ours_j, ours_j = _timed(_freihand_joint_rows, pred_j, gt_j, repeats=repeats)
    t_ours_v, ours_v = _timed(_freihand_vertex_rows, pred_v, gt_v, repeats=repeats)
    t_ours_all, _ = _timed(freihand_table, pred_j, gt_j, pred_v, gt_v, repeats=repeats)
    t_off_j, off_j = _timed(_official_joint_rows, *np_j)
    t_off_v, off_v = _timed(_official_vertex_rows, *np_v, True)
    t_lean_v, _ = _timed(_official_vertex_rows, *np_v, False)
    print(f"21 joints   (PA-MPJPE, AUC):         ours {t_ours_j:7.3f} s   official loop {t_off_j:7.3f} s   "
          f"speed-up {t_off_j / t_ours_j:6.1f}x")
    print(f"778 vertices (PA-MPVPE, F@5/15, AUC): ours {t_ours_v:7.3f} s   official loop {t_off_v:7.3f} s   "
          f"speed-up {t_off_v / t_ours_v:6.1f}x")
    print(f"  (official loop with each sample's k-d trees shared by both thresholds: {t_lean_v:.3f} s, "
          f"speed-up {t_lean_v / t_ours_v:.1f}x)")
    print(f"whole freihand_table: ours {t_ours_all:.3f} s   official loop {t_off_j + t_off_v:.3f} s   "
          f"speed-up {(t_off_j + t_off_v) / t_ours_all:.1f}x")
    official = {**off_j, **off_v}
    for key, value in {**ours_j, **ours_v}.items():
        print(f"  {key:12s} ours {value:.9f}   official {official[key]:.9f}   |diff| {abs(value - official[key]):.1e}")


def demo():
    """A tiny worked example: a prediction that is a rotated, scaled, shifted and noisy copy of the gt."""
    g = torch.Generator().manual_seed(0)
    pred_j, gt_j = _hand_like_pairs(4, 21, g)
    pred_v, gt_v = _hand_like_pairs(4, 778, g)
    print("root-aligned MPJPE (mm) ", (1000 * mpjpe(pred_j, gt_j)).numpy().round(1))
    print("PA-MPJPE (mm)           ", (1000 * pa_mpjpe(pred_j, gt_j)).numpy().round(1))
    print("F@5 mm before alignment ", f_score(pred_v, gt_v, 0.005).numpy().round(3))
    print("F@5 mm after alignment  ", f_score(procrustes_align(pred_v, gt_v), gt_v, 0.005).numpy().round(3))
    print("FreiHAND table          ", {k: round(v, 4) for k, v in freihand_table(pred_j, gt_j, pred_v, gt_v).items()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FreiHAND metrics: a small demonstration, or --bench for timings.")
    parser.add_argument("--bench", action="store_true",
                        help="time our batched table against the official per-sample loop")
    parser.add_argument("--samples", type=int, default=3960, help="benchmark samples (FreiHAND evaluation set: 3960)")
    parser.add_argument("--body-samples", type=int, default=500,
                        help="samples of the body-mesh alignment benchmark (6890 and 10475 vertices)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the same resources as the numpy loop, whose BLAS gets 1 thread)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each timed function (the official alignment loop too); the best time is printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench:
        benchmark_alignment(args.samples, args.body_samples, repeats=args.repeats)
        benchmark(args.samples, repeats=args.repeats)
    else:
        demo()
