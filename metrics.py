"""Evaluation metrics for 3D hand and body mesh recovery, batched over samples.

Conventions
- A point set is a tensor (B, N, 3): B samples, N points (joints or vertices), xyz last.
  Numpy arrays are accepted too; float32 and float64 both work, mixed inputs are promoted.
- Units in = units out, except `freihand_table`, which takes metres and reports millimetres.
- Per-sample metrics return (B,); a dataset number is their mean over samples (for FreiHAND that
  equals the official script's mean over points of per-point means, since every point counts).
- No Python loop over samples: loops below only walk tiles of a few MB, for the CPU cache.

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
NOTE(official vs here): the official alignment has no reflection check and can return a mirror
image (det -1); `procrustes_align` always returns a proper rotation (det +1). On data where the
official rotation is proper (any reasonable prediction) the two agree to float64 rounding.
"""
import argparse
import math
import time

import numpy as np
import torch

FREIHAND_ALIGN_EPS = 1e-8  # added to each Frobenius norm by the official align_w_scale
FREIHAND_F_THRESHOLDS = (0.005, 0.015)  # metres: F@5 mm and F@15 mm
AUC_MAX_MM = 50.0  # PCK thresholds span [0, 50 mm] ...
AUC_STEPS = 100  # ... in 100 steps, as the official get_measures(0.0, 0.05, 100)
TILE_ENTRIES = 2**19  # distance-matrix entries per tile (2 MB in float32): stays in cache
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
    bad = ~torch.isfinite(x)
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


def _align(pred, gt):
    """Procrustes pieces for checked pred, gt (B, N, 3): scale (B,), rotation (B, 3, 3), centroids (B, 1, 3) x2."""
    # 1. centre both sets
    mu_pred, mu_gt = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)  # (B, 1, 3)
    # 2. divide each by its Frobenius norm; the official +1e-8 also keeps an all-equal set finite
    norm_pred = (pred - mu_pred).flatten(1).norm(dim=1) + FREIHAND_ALIGN_EPS  # (B,)
    norm_gt = (gt - mu_gt).flatten(1).norm(dim=1) + FREIHAND_ALIGN_EPS
    a = (pred - mu_pred) / norm_pred[:, None, None]  # (B, N, 3)
    b = (gt - mu_gt) / norm_gt[:, None, None]
    # 3. orthogonal Procrustes (Umeyama): with a^T b = U S V^T, the rotation R = V D U^T maximises
    #    tr(R a^T b) over rotations; D = diag(1, 1, det(U V^T)) makes det R = +1 (official: D = I)
    u, sigma, vh = torch.linalg.svd(a.transpose(1, 2) @ b)  # (B, 3, 3), (B, 3), (B, 3, 3)
    d = torch.ones_like(sigma)  # (B, 3), the diagonal of D
    d[:, 2] = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0)
    rotation = vh.transpose(1, 2) @ (d[:, :, None] * u.transpose(1, 2))  # (B, 3, 3)
    # 4. scale: the official s = tr(S D) of the normalised sets, back to gt units
    scale = (sigma * d).sum(-1) * norm_gt / norm_pred  # (B,)
    return scale, rotation, mu_pred, mu_gt


def _aligned(pred, gt):
    """pred moved onto gt, for checked pred, gt (B, N, 3), in the official order: rotate the centred
    prediction, scale it, move it to the gt centroid."""
    scale, rotation, mu_pred, mu_gt = _align(pred, gt)
    return scale[:, None, None] * ((pred - mu_pred) @ rotation.transpose(1, 2)) + mu_gt


def procrustes_transform(pred, gt):
    """Similarity (s, R, t) with s R pred_n + t ~ gt_n in the least-squares sense (FreiHAND's align_w_scale).

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
    """Mean per-joint error after `procrustes_align`: pred, gt (B, J, 3) -> (B,), input units."""
    pred, gt = _pair(pred, gt)
    return (_aligned(pred, gt) - gt).norm(dim=-1).mean(-1)


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

    NOTE(official naming): eval.py calls these two recall and precision the other way round; F is symmetric.
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
    errors = (_aligned(pred_joints, gt_joints) - gt_joints).norm(dim=-1)  # (B, J) metres
    return {"pa_mpjpe_mm": 1000.0 * errors.mean().item(),
            "auc_joints": auc_pck(errors, max_threshold=AUC_MAX_MM / 1000.0).mean().item()}


def _freihand_vertex_rows(pred_verts, gt_verts):
    """PA-MPVPE (mm), F@5 mm, F@15 mm and AUC of aligned vertices; checked float64 inputs in metres (B, V, 3)."""
    aligned = _aligned(pred_verts, gt_verts)  # (B, V, 3)
    errors = (aligned - gt_verts).norm(dim=-1)  # (B, V) metres
    f = _f_from(*_close_fractions(aligned, gt_verts, FREIHAND_F_THRESHOLDS))  # (B, 2)
    return {"pa_mpvpe_mm": 1000.0 * errors.mean().item(), "f5": f[:, 0].mean().item(),
            "f15": f[:, 1].mean().item(),
            "auc_verts": auc_pck(errors, max_threshold=AUC_MAX_MM / 1000.0).mean().item()}


def freihand_table(pred_joints, gt_joints, pred_verts, gt_verts):
    """The standard FreiHAND numbers, all after Procrustes alignment, averaged over the batch.

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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the same resources as the numpy loop)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our functions; the best time is printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench:
        benchmark(args.samples, repeats=args.repeats)
    else:
        demo()
