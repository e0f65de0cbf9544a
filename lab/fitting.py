"""MANO parameters from 778 vertices: `fit_mano`, for a method that predicts vertices, not parameters (simpleHand),
where animation tools or `hmr_adapter.attach_hands` need parameters.

Map: `fit_mano` (steps 1-4), then its helpers `_pose_from_parts` (per-joint Procrustes), `_shape_and_translation`
(linear least squares) and `_levenberg_marquardt`. `hmr_adapter.attach_hands(left_as_right=True)` reads a left
hand's fit as HaMeR gives one: the right hand that is its mirror image.
"""

import torch

from bodymodels import Skinning, load_mano, matrix_to_axis_angle
from hmr_adapter import kabsch_rotation


def fit_mano(verts, mano=None, left=False, steps=20):
    """MANO parameters whose mesh is verts (..., 778, 3) (simpleHand predicts vertices, not
    parameters; animation tools and `attach_hands` need parameters). Deterministic.

    mano: a loaded right MANO (default `load_mano()`: flat_hand_mean, so hand_pose is the full
    rotation). left: verts are a left hand; its parameters are those of the right hand that is its
    mirror image (HaMeR's convention, `attach_hands(left_as_right=True)`): verts = mirror(MANO(pose,
    betas)) + transl, as HaMeR's demo places a left hand.
    Steps: 1. a left hand's verts mirrored; 2. an initial pose from each joint's own vertices
    (`_pose_from_parts`); 3. betas and translation for it by linear least squares
    (`_shape_and_translation`); 2.-3. once more from that shape; 4. `steps` Levenberg-Marquardt
    iterations on the vertex residuals over pose, betas and translation. Float64 inside; each hand
    is its own problem (its own damping), so a hand's fit does not depend on its batch.

    Returns a dict: global_orient (..., 3), hand_pose (..., 15, 3) axis-angle, betas (..., 10),
    transl (..., 3), verts (..., 778, 3) the fitted mesh (mirrored back for a left hand), and
    error (...,) its mean vertex distance to verts, in verts' units (metres).
    """
    skin = Skinning(mano if mano is not None else load_mano(), torch.float64, per_sample=False)
    batch = verts.shape[:-2]
    target = verts.reshape(-1, 778, 3).detach().to(torch.float64)
    if left:  # 1.
        target = target * target.new_tensor([-1.0, 1.0, 1.0])
    B, L = len(target), skin.shapedirs.shape[-1]
    betas, transl = target.new_zeros(B, L), target.new_zeros(B, 3)
    for _ in range(2):  # 2.-3., twice: the second Procrustes fit starts from the shaped hand
        pose = _pose_from_parts(skin, target, betas)
        betas, transl = _shape_and_translation(skin, pose, target)

    # 4. Levenberg-Marquardt on the vertex residuals in mm, x = [pose, betas, translation in mm]
    def residuals(x):  # (B, 48 + L + 3) -> (B, 3 V)
        verts = skin(x[:, :48].view(-1, 16, 3), x[:, 48:48 + L])[0] * 1000 + x[:, None, 48 + L:]
        return (verts - target * 1000).flatten(1)

    x = torch.cat([pose.flatten(1), betas, transl * 1000], 1)
    with torch.no_grad():
        x = _levenberg_marquardt(residuals, x, steps)
    pose, betas, transl = x[:, :48].view(-1, 16, 3), x[:, 48:48 + L], x[:, 48 + L:] / 1000
    with torch.no_grad():
        fitted = skin(pose, betas)[0] + transl[:, None]
        error = (fitted - target).norm(dim=-1).mean(-1)
        pose, betas, transl = pose.detach(), betas.detach(), transl.detach()
        if left:
            fitted = fitted * fitted.new_tensor([-1.0, 1.0, 1.0])
            transl = transl * transl.new_tensor([-1.0, 1.0, 1.0])
    dtype = verts.dtype if verts.is_floating_point() else torch.float64
    out = dict(global_orient=pose[:, 0], hand_pose=pose[:, 1:], betas=betas, transl=transl, verts=fitted, error=error)
    return {k: v.to(dtype).reshape(*batch, *v.shape[1:]) for k, v in out.items()}


def _pose_from_parts(skin, target, betas):
    """Step 2 of `fit_mano`: MANO axis-angle (B, 16, 3) from the vertices each joint moves most:
    W_j = the Procrustes rotation of their shaped rest positions onto target (B, 778, 3), the local
    rotation W_parent^T W_j (a joint with fewer than 3 vertices takes its parent's W)."""
    rest = skin.v_template + torch.einsum("vkl,bl->bvk", skin.shapedirs, betas)  # (B, 778, 3)
    part = skin.lbs_weights.argmax(1)  # (778,)
    world = []
    for j, p in enumerate(skin.parents):
        ids = (part == j).nonzero()[:, 0]
        world.append(kabsch_rotation(rest[:, ids], target[:, ids]) if len(ids) >= 3 else world[p])
    local = [world[0]] + [world[p].transpose(-1, -2) @ world[j] for j, p in enumerate(skin.parents) if p >= 0]
    return matrix_to_axis_angle(torch.stack(local, 1))


def _shape_and_translation(skin, pose, target):
    """Step 3 of `fit_mano`: betas (B, L) and translation (B, 3) by linear least squares. With the
    rotations fixed, LBS is affine in beta (shape blend shapes, rest joints and so each joint's
    translation are linear in it): v(beta) = v(0) + sum_k (v(e_k) - v(0)) beta_k."""
    B, L = pose.shape[0], skin.shapedirs.shape[-1]
    basis = torch.cat([pose.new_zeros(1, L), torch.eye(L, dtype=pose.dtype)])  # (1 + L, L): 0, e_1 .. e_L
    v = skin(pose[:, None].expand(-1, L + 1, -1, -1), basis.expand(B, -1, -1))[0]  # (B, 1 + L, 778, 3)
    A = (v[:, 1:] - v[:, :1]).flatten(2).transpose(1, 2)  # (B, 3 V, L)
    A = torch.cat([A, torch.eye(3, dtype=A.dtype).repeat(778, 1).expand(B, -1, -1)], -1)  # (B, 3 V, L + 3)
    x = torch.linalg.lstsq(A, (target - v[:, 0]).flatten(1)[..., None]).solution[..., 0]  # (B, L + 3)
    return x[:, :L], x[:, L:]


def _levenberg_marquardt(residuals, x, steps, damping=1e-3):
    """Minimise |residuals(x)|^2 for each row of x (B, P) independently: `steps` iterations of
    (J^T J + lambda diag(J^T J)) dx = -J^T r, a step kept only where it lowers the cost (then
    lambda / 3, else lambda x 4). J (B, N, P) by forward-mode differentiation, one tangent per
    parameter for every row at once (rows do not interact)."""
    from torch.func import jvp, vmap
    P = x.shape[1]
    lam = x.new_full((len(x), 1), damping)
    r = residuals(x)
    cost = r.square().sum(1)
    tangents = torch.eye(P, dtype=x.dtype, device=x.device)[:, None].expand(P, len(x), P)
    for _ in range(steps):
        J = vmap(lambda t: jvp(residuals, (x,), (t,))[1])(tangents).permute(1, 2, 0)  # (B, N, P)
        JtJ, Jtr = J.transpose(1, 2) @ J, (J.transpose(1, 2) @ r[..., None])[..., 0]
        A = JtJ + lam[..., None] * torch.diag_embed(JtJ.diagonal(dim1=1, dim2=2).clamp_min(1e-9))
        x_new = x - torch.linalg.solve(A, Jtr)
        r_new = residuals(x_new)
        cost_new = r_new.square().sum(1)
        better = cost_new < cost
        x, r = torch.where(better[:, None], x_new, x), torch.where(better[:, None], r_new, r)
        cost, lam = torch.where(better, cost_new, cost), torch.where(better[:, None], lam / 3, lam * 4)
    return x
