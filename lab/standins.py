"""Procedural stand-ins for the MANO, SMPL and SMPL-X model files, which cannot be shipped.

`write_standins` generates them, deterministically, into `standin_dir()` in the official formats;
bodymodels' loaders call it where no model files exist. Built on bodymodels' geometry.
"""

import functools
import hashlib
import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import torch

import bodymodels
from bodymodels import FINGERTIP_VERTS, MANO_PARENTS, SMPL_PARENTS, SMPLX_PARENTS, mirror_rotation
from lab.files import atomic_write
from lab.render import face_normals, vertex_normals

STANDIN_VERSION = "standins-v1"  # the cache folder is named after it and a hash of the generator code


def standin_dir():
    """The stand-ins' cache folder: $HMR_CACHE/standins-v1-HASH, by default ~/.cache/hmr-reference/standins-v1-HASH.

    It has smplx's layout (mano/MANO_RIGHT.pkl, smpl/SMPL_NEUTRAL.pkl, smplx/SMPLX_NEUTRAL.npz),
    so it can be passed anywhere a folder of real model files is expected.
    """
    root = os.environ.get("HMR_CACHE") or Path.home() / ".cache" / "hmr-reference"
    return Path(root).expanduser() / f"{STANDIN_VERSION}-{_generator_hash()}"


def _generator_source(text):
    """What the stand-ins depend on: `text` (this whole file's source) plus the functions (the renderer's normals,
    bodymodels' mirror) and bodymodels' constants it uses."""
    used = (face_normals, vertex_normals, mirror_rotation)
    constants = (MANO_PARENTS, FINGERTIP_VERTS, SMPL_PARENTS, SMPLX_PARENTS)
    return text + "".join(inspect.getsource(fn) for fn in used) + repr(constants)


@functools.lru_cache(maxsize=1)
def _generator_hash():
    """8 hex digits of `_generator_source`: an edited generator never reads files an older one
    cached (a stale cache would silently give other meshes)."""
    return hashlib.sha1(_generator_source(Path(__file__).read_text()).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# How the stand-ins are made
#
# The MANO, SMPL and SMPL-X files cannot be shipped (their licence forbids it), and every later
# line of code should run exactly as it would on them. So we generate stand-ins with the real
# vertex, face and joint counts, write them in the official formats (MANO and SMPL as pickles of
# plain numpy arrays, SMPL-X as .npz) and load them with smplx's own classes. They are built from
# simple geometry, deterministically, in a few seconds:
# - MANO: a "pillow". A flat comb-shaped grid (palm, four finger strips, a thumb strip) is copied
#   into a back and a palm sheet, glued along the outline except at the wrist, and inflated with
#   a round profile. It is one surface with an open wrist, like the real MANO (2V - F = 18).
# - SMPL / SMPL-X: a smooth union of capsules and ellipsoids (a signed distance function),
#   meshed by marching tetrahedra, with the stand-in hand stitched on at each wrist.
# Skinning weights blend smoothly across joints, the joint regressor averages the ring of
# vertices where a bone meets its parent (so every joint lies inside the mesh), and the shape
# directions change sizes and proportions. Pose correctives (posedirs) are zero.
# Vertices are relabelled so that the ids smplx hard-codes (fingertips, toes, eyes, ears, nose)
# sit where their names say. The stand-ins are placeholders for pipelines and pictures, not
# anatomy: numbers measured on them say nothing about the real models.


# --- Mesh helpers ----------------------------------------------------------------------------


def _smoothstep(t):
    """0 below t = -1, 1 above t = 1, a smooth cubic in between."""
    t = np.clip((t + 1) / 2, 0, 1)
    return t * t * (3 - 2 * t)


def _half_edges(faces):
    """Directed half-edges (3F, 2); half-edge 3 f + k runs from faces[f, k] to faces[f, k + 1]."""
    return faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


def _boundary_edges(faces):
    """Half-edges (B, 2) that have no twin: the border of an open surface."""
    half = _half_edges(faces)
    key = np.sort(half, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return half[counts[inverse.ravel()] == 1]


def _boundary_loops(faces):
    """Border loops of an open surface: a list of vertex-id arrays, each in half-edge order."""
    border = _boundary_edges(faces)
    after = dict(border.tolist())
    if len(after) != len(border):
        raise ValueError("mesh border touches itself (a vertex with two border edges leaving it)")
    loops = []
    while after:
        loop = [next(iter(after))]
        while after[loop[-1]] != loop[0]:
            loop.append(after.pop(loop[-1]))
        after.pop(loop[-1])
        loops.append(np.array(loop))
    return loops


def _split_edges(verts, faces, num_verts, attrs=(), frozen=None):
    """Split the longest edges at their midpoints until the mesh has `num_verts` vertices.

    Splitting an edge shared by two triangles adds one vertex and two faces, so 2V - F (twice the
    Euler characteristic plus the boundary length) never changes. attrs: per-vertex arrays
    (V, ...) interpolated to the new vertices. frozen: (V,) bool, an edge between two frozen
    vertices is never split. Returns verts, faces, attrs.
    """
    attrs = list(attrs)
    frozen = np.zeros(len(verts), bool) if frozen is None else frozen
    while len(verts) < num_verts:
        # 1. interior edges (two half-edges), longest first
        half = _half_edges(faces)
        key = np.sort(half, axis=1)
        _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        ok = (counts[inverse] == 2) & ~frozen[half].all(1) & (half[:, 0] < half[:, 1])
        length = np.linalg.norm(verts[half[:, 0]] - verts[half[:, 1]], axis=1)
        candidates = np.flatnonzero(ok)[np.argsort(-length[ok], kind="stable")]
        order = np.argsort(inverse, kind="stable")  # the two halves of an edge end up side by side
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[counts == 2]
        twin = np.full(len(half), -1)
        pairs = np.stack([order[starts], order[starts + 1]], 1)
        twin[pairs[:, 0]], twin[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
        # 2. greedily pick edges whose two faces are still untouched in this round
        used = np.zeros(len(faces), bool)
        chosen = []
        for h in candidates:
            f1, f2 = h // 3, twin[h] // 3
            if not used[f1] and not used[f2]:
                used[f1] = used[f2] = True
                chosen.append(h)
                if len(chosen) == num_verts - len(verts):
                    break
        if not chosen:
            raise RuntimeError("no edge left to split")
        verts, faces, attrs = _split_chosen(verts, faces, attrs, np.array(chosen), twin)
        frozen = np.concatenate([frozen, np.zeros(len(chosen), bool)])
    return verts, faces, attrs


def _split_chosen(verts, faces, attrs, h, twin):
    """Split the edges of half-edges h (none sharing a face) at their midpoints."""
    a, b = faces[h // 3, h % 3], faces[h // 3, (h % 3 + 1) % 3]
    c = faces[h // 3, (h % 3 + 2) % 3]
    d = faces[twin[h] // 3, (twin[h] % 3 + 2) % 3]
    m = len(verts) + np.arange(len(h))
    faces = faces.copy()
    # face (a, b, c) -> (a, m, c) + (m, b, c); twin face (b, a, d) -> (b, m, d) + (m, a, d)
    faces[h // 3] = np.stack([a, m, c], 1)
    faces[twin[h] // 3] = np.stack([b, m, d], 1)
    faces = np.concatenate([faces, np.stack([m, b, c], 1), np.stack([m, a, d], 1)])
    verts = np.concatenate([verts, (verts[a] + verts[b]) / 2])
    attrs = [np.concatenate([x, (x[a] + x[b]) / 2]) for x in attrs]
    return verts, faces, attrs


def _relabel(num_verts, wanted):
    """A vertex order that puts vertex `old` at id `new` for each new: old in `wanted`.

    Returns order (V,) with order[new_id] = old_id; every other vertex keeps its place or swaps.
    """
    order, where = np.arange(num_verts), np.arange(num_verts)  # where[old] = its current id
    for new, old in wanted.items():
        here, displaced = where[old], order[new]
        order[new], order[here] = old, displaced
        where[old], where[displaced] = new, here
    return order


def _regressor_from_weights(weights, parents, roots=None):
    """Joint regressor (J, V): joint j = the weighted mean of the vertices where its bone meets its
    parent's, weights w_j * w_parent(j) (a soft ring around the joint, so it lies inside the mesh).

    roots: {joint: vertex ids} for joints whose ring is given (the root, or where w_j and its
    parent's never overlap); a joint with no overlap and no entry uses its own region, w_j.
    """
    J = len(parents)
    reg = np.zeros((J, len(weights)))
    for j, p in enumerate(parents):
        if roots and j in roots:
            reg[j, roots[j]] = 1.0
        elif p >= 0 and (weights[:, j] * weights[:, p]).sum() > 1e-3:
            reg[j] = weights[:, j] * weights[:, p]
        else:
            reg[j] = weights[:, j]
    return reg / reg.sum(1, keepdims=True)


def _segment_distance(points, seg_a, seg_b):
    """Distance from each point (N, D) to the nearest of the segments seg_a -> seg_b (S, D). -> (N,)"""
    ab = seg_b - seg_a  # (S, D)
    t = ((points[:, None] - seg_a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-20)  # (N, S)
    closest = seg_a + np.clip(t, 0, 1)[..., None] * ab  # (N, S, D)
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(1)


# --- Stand-in MANO: the pillow hand ----------------------------------------------------------
# Right hand in the contract's rest pose: fingers along +x, back of the hand +y (the palm faces
# -y), thumb towards -z, wrist at the origin, metres. The layout is drawn in the palm plane as 2D
# points (x, z) and inflated to 3D at the end.
# NOTE R8: the real MANO_RIGHT.pkl has fingers along -x, the thumb towards +z
# (our frame turned 180 degrees about y) and the wrist joint at x = 0.096 m.

# (name, first MANO joint, MCP joint (x, z), direction in degrees from +x towards +z,
#  MCP-to-tip length, half-width at the base), radial to ulnar: index at -z, pinky at +z
_HAND_FINGERS = (
    ("index", 1, (0.089, -0.030), -4.0, 0.083, 0.0105),
    ("middle", 4, (0.093, -0.009), 0.0, 0.090, 0.0105),
    ("ring", 10, (0.088, 0.011), 4.0, 0.085, 0.0100),
    ("pinky", 7, (0.079, 0.029), 9.0, 0.068, 0.0088),
)
_HAND_PHALANGES = (0.45, 0.73)  # PIP and DIP joints at these fractions of the MCP-to-tip length
_HAND_TIP_ROWS = (0.2, 0.4, 0.6, 0.75, 0.87, 1.0)  # rows of the distal phalanx, fractions of DIP-to-tip
# thumb: CMC joint (x, z), then (length, direction in degrees) of its three bones to the tip
_HAND_THUMB = ((0.024, -0.024), ((0.045, -45.0), (0.032, -35.0), (0.028, -30.0)))
_HAND_WEB = 0.018         # the finger webs lie this far beyond the MCP joints (m)
_HAND_PALM_T = 0.0145     # half thickness of the palm (m)
_HAND_WRIST_HALF = 0.028  # half width of the wrist opening (m); the opening has 8 cells per sheet
_HAND_ROWS = 9            # palm rows of cells from the wrist to the webs (4 of them carry the thumb)


def _finger_frames():
    """Per finger: MCP (2,), unit direction d (2,) and unit normal n (2,) towards +z, in (x, z)."""
    frames = []
    for _, _, mcp, angle, _, _ in _HAND_FINGERS:
        a = np.radians(angle)
        frames.append((np.array(mcp), np.array([np.cos(a), np.sin(a)]),
                       np.array([-np.sin(a), np.cos(a)])))
    return frames


def _hand_web_row():
    """The 17 palm-top points where the four finger strips (4 cells each) attach. -> (17, 2)"""
    sides = []
    for (mcp, d, n), finger in zip(_finger_frames(), _HAND_FINGERS):
        base, w = mcp + _HAND_WEB * d, finger[5]
        sides.append((base - w * n, base + w * n))
    # shared web points: between two fingers, the mean of their facing sides
    webs = [sides[0][0]] + [(sides[k][1] + sides[k + 1][0]) / 2 for k in range(3)] + [sides[3][1]]
    row = [np.linspace(webs[k], webs[k + 1], 5)[:4] for k in range(4)]
    return np.concatenate(row + [webs[4][None]])


def _hand_palm_grid(web):
    """Palm lattice (rows + 1, 17, 2) by a Coons patch between its four border curves."""
    I, J = _HAND_ROWS, 16
    wrist, corner = _HAND_WRIST_HALF, np.array([0.020, 0.012])  # rounded corners: x, z radii
    # 1. bottom: the wrist line (8 cells) with a quarter ellipse up to each side (4 cells each)
    phi = np.linspace(np.pi / 2, 0, 5)
    left = np.stack([corner[0] * (1 - np.cos(phi)), -wrist - corner[1] * np.sin(phi)], 1)
    middle = np.stack([np.zeros(9), np.linspace(-wrist, wrist, 9)], 1)
    bottom = np.concatenate([left, middle[1:-1], left[::-1] * [1, -1]])  # (17, 2)
    # 2. sides: radial (the thumb takes cells 0-3, up to the thumb web), ulnar (slightly convex)
    thumb_web = np.array([0.066, -0.043])
    radial = np.concatenate([np.linspace(bottom[0], thumb_web, 5), np.linspace(thumb_web, web[0], I - 3)[1:]])
    v = np.linspace(0, 1, I + 1)[:, None]
    ulnar = (1 - v) * bottom[-1] + v * web[-1] + 0.004 * np.sin(np.pi * v) * [0, 1]
    # 3. Coons patch: P = ruled(bottom, top) + ruled(left, right) - bilinear(corners)
    u = np.linspace(0, 1, J + 1)[None, :, None]
    v = v[:, :, None]
    ruled_v = (1 - v) * bottom[None] + v * web[None]
    ruled_u = (1 - u) * radial[:, None] + u * ulnar[:, None]
    bilinear = ((1 - u) * (1 - v) * bottom[0] + u * (1 - v) * bottom[-1]
                + (1 - u) * v * web[0] + u * v * web[-1])
    return ruled_v + ruled_u - bilinear


def _thumb_axis():
    """Thumb joints CMC, MCP, IP, tip as 2D points (4, 2)."""
    points = [np.array(_HAND_THUMB[0])]
    for length, angle in _HAND_THUMB[1]:
        a = np.radians(angle)
        points.append(points[-1] + length * np.array([np.cos(a), np.sin(a)]))
    return np.stack(points)


def _polyline_frame(axis, s):
    """Point, unit direction and unit normal (towards +z side, rotated +90 deg) at arc length s."""
    seg = np.diff(axis, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    knots = np.concatenate([[0], np.cumsum(lengths)])
    k = min(np.searchsorted(knots, s, side="right") - 1, len(seg) - 1)
    d = seg[k] / lengths[k]
    if np.isclose(s, knots[k]) and k > 0:  # at a joint: the mean of the two bone directions
        d = d + seg[k - 1] / lengths[k - 1]
        d /= np.linalg.norm(d)
    point = axis[k] + (s - knots[k]) * seg[k] / lengths[k]
    return point, d, np.array([-d[1], d[0]])


def _strip_rows(base, axis, s_base, s_rows, half_width):
    """Cross-sections (R, 5, 2) of a finger strip growing out of `base` (5, 2) along `axis`.

    Row points sit at -w cos(theta) on the normal, theta = 0, 45, ..., 180 degrees, so that the
    inflation profile makes each cross-section an ellipse sampled at even angles. The first two
    rows lean towards the base row moved along the axis, so that a slanted base (the thumb's)
    does not fold the grid.
    """
    theta = np.linspace(0, np.pi, 5)[:, None]
    lean = (0.7, 0.35)  # share of the moved base row in rows 0 and 1
    rows = []
    for r, s in enumerate(s_rows):
        c, d, n = _polyline_frame(axis, s)
        n = n if (base[-1] - base[0]) @ n > 0 else -n
        w = half_width(s)
        row = c - w * np.cos(theta) * n  # (5, 2)
        if r == len(s_rows) - 1:  # the tip row bends back a little: its middle point leads
            row -= 0.2 * w * (1 - np.sin(theta)) * d
        a = lean[r] if r < len(lean) else 0.0
        rows.append(a * (base + (s - s_base) * d) + (1 - a) * row)
    return np.stack(rows)


def _row_stations(s_base, j1, j2, tip):
    """Arc lengths of a strip's rows: 3 up to joint j1, 3 up to j2, then _HAND_TIP_ROWS to the tip."""
    return np.concatenate([np.linspace(s_base, j1, 4)[1:], np.linspace(j1, j2, 4)[1:],
                           j2 + (tip - j2) * np.array(_HAND_TIP_ROWS)])


def _tip_cap(s, length, radius):
    """Width factor that rounds the last `radius` of a finger (never below 0.3: a short tip seam)."""
    u = np.clip((s - (length - radius)) / radius, 0, 1)
    return np.maximum(np.sqrt(1 - u * u), 0.3)


def _finger_strips(web):
    """Per finger, in layout order: axis (2, 2), joint arc lengths (3,), rows (R, 5, 2) and
    half-thickness (R,)."""
    strips = []
    for k, ((mcp, d, _), (_, _, _, _, length, w0)) in enumerate(zip(_finger_frames(), _HAND_FINGERS)):
        pip, dip = (f * length for f in _HAND_PHALANGES)
        s_rows = _row_stations(_HAND_WEB, pip, dip, length)
        taper = lambda s: w0 * (1 - 0.2 * (s - _HAND_WEB) / (length - _HAND_WEB))
        width = lambda s: taper(s) * _tip_cap(s, length, 0.8 * w0)
        axis = np.stack([mcp, mcp + length * d])
        rows = _strip_rows(web[4 * k:4 * k + 5], axis, _HAND_WEB, s_rows, width)
        strips.append((axis, np.array([0.0, pip, dip]), rows, 0.85 * taper(s_rows)))
    return strips


def _thumb_strip(base):
    """The thumb: (axis (4, 2), joint arc lengths (3,), rows (R, 5, 2), half-thickness (R,))."""
    axis = _thumb_axis()
    knots = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(axis, axis=0), axis=1))])
    d0 = (axis[1] - axis[0]) / knots[1]
    s_base = (base.mean(0) - axis[0]) @ d0  # where the base line crosses the axis
    mcp, ip, tip = knots[1:]
    s_rows = _row_stations(s_base, mcp, ip, tip)
    width = lambda s: (np.interp(s, [s_base, mcp, ip, tip], [0.016, 0.0115, 0.0105, 0.009])
                       * _tip_cap(s, tip, 0.008))
    thick = np.interp(s_rows, [s_base, mcp, ip, tip], [0.0135, 0.0105, 0.009, 0.0078])
    return axis, knots[:3], _strip_rows(base, axis, s_base, s_rows, width), thick


def _cross2(u, v):
    """z of the cross product of 2D vectors (..., 2): twice the signed area they span."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _quads_to_triangles(quads, points):
    """Split each quad (a, b, c, d) of 2D points along a diagonal: the shorter one, unless only
    the other keeps both triangles turning the way the quad turns (a non-convex quad).
    quads (Q, 4) -> triangles (2Q, 3)."""
    a, b, c, d = quads.T
    area = lambda i, j, k: _cross2(points[j] - points[i], points[k] - points[i])
    turn = np.sign(area(a, b, c) + area(a, c, d))  # the quad's own orientation (shoelace)
    ac_ok = (turn * area(a, b, c) > 0) & (turn * area(a, c, d) > 0)
    bd_ok = (turn * area(a, b, d) > 0) & (turn * area(b, c, d) > 0)
    length = lambda i, j: np.linalg.norm(points[i] - points[j], axis=1)
    ac_short = length(a, c) < length(b, d)
    ac = ac_ok & (ac_short | ~bd_ok)
    first = np.where(ac[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    second = np.where(ac[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.concatenate([first, second])


def _hand_layout():
    """The flat hand in the palm plane.

    Returns a dict: points (N, 2); triangles (F, 3); chain (N,) = -1 on the palm, else the finger
    in MANO order (0 index, 1 middle, 2 pinky, 3 ring, 4 thumb); col (N,) the palm column (NaN off
    the palm); thickness (N,); tips (5,) point ids in FINGERTIP_VERTS order (thumb, index,
    middle, ring, pinky); wrist (8, 2) the edges of the wrist opening; axes and joint arc
    lengths per chain.
    """
    web = _hand_web_row()
    grid = _hand_palm_grid(web)  # (I + 1, 17, 2)
    I, J = grid.shape[0] - 1, grid.shape[1] - 1
    ids = np.arange(grid.size // 2).reshape(I + 1, J + 1)
    points, chain = [grid.reshape(-1, 2)], [np.full(ids.size, -1)]
    col = [np.tile(np.arange(J + 1.0), I + 1)]
    thickness = [np.full(ids.size, _HAND_PALM_T)]
    quads = [np.stack([ids[:-1, :-1], ids[:-1, 1:], ids[1:, 1:], ids[1:, :-1]], -1).reshape(-1, 4)]
    # strips: fingers on the top row (4 columns each), the thumb on the radial side (rows 0-4)
    strips = _finger_strips(web) + [_thumb_strip(grid[:5, 0])]
    bases = [ids[I, 4 * k:4 * k + 5] for k in range(4)] + [ids[:5, 0]]
    mano_chain = [(f[1] - 1) // 3 for f in _HAND_FINGERS] + [4]  # layout order -> MANO chain
    axes, joints, tips, n = [None] * 5, [None] * 5, [None] * 5, ids.size
    for (axis, s_joints, rows, thick), base, c in zip(strips, bases, mano_chain):
        row_ids = n + np.arange(rows.shape[0] * 5).reshape(-1, 5)
        all_ids = np.concatenate([base[None], row_ids])
        quads.append(np.stack([all_ids[:-1, :-1], all_ids[:-1, 1:], all_ids[1:, 1:],
                               all_ids[1:, :-1]], -1).reshape(-1, 4))
        points.append(rows.reshape(-1, 2))
        chain.append(np.full(rows.shape[0] * 5, c))
        col.append(np.full(rows.shape[0] * 5, np.nan))
        thickness.append(np.repeat(thick, 5))
        axes[c], joints[c], tips[c], n = axis, s_joints, row_ids[-1, 2], n + rows.size // 2
    points = np.concatenate(points)
    triangles = _quads_to_triangles(np.concatenate(quads), points)
    corners = points[triangles]
    if (_cross2(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) >= 0).any():
        raise RuntimeError("stand-in hand layout folds over itself")  # all must turn clockwise in (x, z)
    wrist = np.stack([ids[0, 4:12], ids[0, 5:13]], 1)
    return dict(points=points, triangles=triangles,
                chain=np.concatenate(chain), col=np.concatenate(col),
                thickness=np.concatenate(thickness), tips=np.array([tips[i] for i in (4, 0, 1, 3, 2)]),
                wrist=wrist, axes=axes, joints=joints, thumb_base=ids[:5, 0])


def _pillow(layout):
    """Inflate the flat hand: a back sheet (+y) and a palm sheet (-y) glued along the outline,
    except along the wrist opening.

    Height h = sqrt(d (2T - d)) for d < T, else T, where d is the distance to the glued outline
    and T the local half-thickness: a quarter circle at the border, so fingers are round.
    Returns verts (V, 3), faces (F, 3) and source (V,), the 2D point of each vertex.
    """
    p2, tri, wrist = layout["points"], layout["triangles"], layout["wrist"]
    border = _boundary_edges(tri)
    is_wrist = (np.sort(border, 1)[:, None] == np.sort(wrist, 1)[None]).all(-1).any(1)
    glued = border[~is_wrist]
    shared = np.zeros(len(p2), bool)
    shared[glued.ravel()] = True
    # 1. heights from the distance to the glued outline
    d = _segment_distance(p2, p2[glued[:, 0]], p2[glued[:, 1]])
    T = layout["thickness"]
    h = np.where(d < T, np.sqrt(np.clip(d * (2 * T - d), 0, None)), T)
    # 2. the palm sheet reuses the glued points and copies all others
    palm_id = np.where(shared, np.arange(len(p2)), len(p2) + np.cumsum(~shared) - 1)
    source = np.concatenate([np.arange(len(p2)), np.flatnonzero(~shared)])
    sign = np.concatenate([np.ones(len(p2)), -np.ones((~shared).sum())])
    verts = np.stack([p2[source, 0], sign * h[source], p2[source, 1]], 1)
    # 3. faces: the layout's triangles have negative signed area in (x, z), i.e. normals +y
    return verts, np.concatenate([tri, palm_id[tri][:, ::-1]]), source


def _arc_length(axis, points):
    """Arc length along the polyline `axis` (K, 2) of the nearest point to each of `points` (N, 2),
    extended linearly before the first and after the last joint (so palm points get s < 0). -> (N,)"""
    seg = np.diff(axis, axis=0)  # (K - 1, 2)
    lengths = np.linalg.norm(seg, axis=1)
    knots = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    t = ((points[:, None] - axis[:-1]) * seg).sum(-1) / lengths**2  # (N, K - 1)
    lo = np.where(np.arange(len(seg)) == 0, -np.inf, 0.0)
    hi = np.where(np.arange(len(seg)) == len(seg) - 1, np.inf, 1.0)
    t = np.clip(t, lo, hi)
    dist = np.linalg.norm(points[:, None] - axis[:-1] - t[..., None] * seg, axis=-1)
    k = dist.argmin(1)
    return knots[k] + t[np.arange(len(points)), k] * lengths[k]


def _chain_weights(s, joints, blend):
    """Skinning weights along one finger: (N, 4) for [parent, joint 1, joint 2, joint 3].

    s (N,) arc length, joints (3,) their arc lengths, blend (3,) half-widths of the transitions.
    Each joint takes over smoothly: a_k = smoothstep((s - s_k) / blend_k), w = differences of a.
    """
    a = _smoothstep((s[:, None] - joints) / blend)  # (N, 3), non-increasing along k
    a = np.concatenate([np.ones((len(s), 1)), a, np.zeros((len(s), 1))], 1)
    return a[:, :-1] - a[:, 1:]


def _hand_weights(p2, chain, col, layout):
    """Skinning weights (V, 16) and chain membership (V, 5) of the hand's vertices.

    p2 (V, 2) positions in the palm plane, chain (V,) and col (V,) from the layout. A finger's
    vertices follow its chain only; palm vertices share the four fingers by column (tent
    functions) and the thumb near its base, and blend into each chain's first joint at its MCP.
    """
    # 1. membership: one-hot on the strips; on the palm, columns for fingers, distance for the thumb
    member = np.zeros((len(p2), 5))
    on_strip = chain >= 0
    member[on_strip, chain[on_strip]] = 1
    centres = np.array([2.0, 6.0, 14.0, 10.0])  # palm columns of index, middle, pinky, ring
    tents = np.clip(1 - np.abs(np.clip(col[~on_strip], 2, 14)[:, None] - centres) / 4, 0, 1)
    base = layout["points"][layout["thumb_base"]]
    near_thumb = 1 - _smoothstep((_segment_distance(p2[~on_strip], base[:-1], base[1:]) - 0.012) / 0.012)
    member[~on_strip] = np.concatenate([(1 - near_thumb)[:, None] * tents, near_thumb[:, None]], 1)
    # 2. along each chain: wrist -> joint 1 -> joint 2 -> joint 3
    weights = np.zeros((len(p2), 16))
    for c in range(5):
        blend = np.array([0.012, 0.008, 0.006]) if c == 4 else np.array([0.008, 0.006, 0.005])
        s = _arc_length(layout["axes"][c], p2)
        w = member[:, c:c + 1] * _chain_weights(s, layout["joints"][c], blend)
        weights[:, 0] += w[:, 0]
        weights[:, 1 + 3 * c:4 + 3 * c] += w[:, 1:]
    return weights, member


def _axis_point(axis, s):
    """Points (N, 3) at arc lengths s (N,) on the 2D polyline `axis` (K, 2), lifted to y = 0."""
    knots = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(axis, axis=0), axis=1))])
    x, z = np.interp(s, knots, axis[:, 0]), np.interp(s, knots, axis[:, 1])
    return np.stack([x, np.zeros_like(x), z], 1)


def _hand_shapedirs(verts, weights, member, layout, wrist):
    """Ten shape directions (V, 3, 10), in metres per unit of beta.

    0 size, 1 finger length, 2 palm width, 3 finger thickness, 4 palm length, 5 thumb length,
    6 palm thickness, 7 index longer / ring shorter, 8 pinky length, 9 finger taper.
    """
    V = len(verts)
    along, radial, share = np.zeros((5, V, 3)), np.zeros((5, V, 3)), np.zeros((5, V, 1))
    for c in range(5):  # chains in MANO order: index, middle, pinky, ring, thumb
        axis = layout["axes"][c]
        s = _arc_length(axis, verts[:, [0, 2]])
        d = np.append(axis[-1] - axis[0], 0)[[0, 2, 1]] / np.linalg.norm(axis[-1] - axis[0])  # (3,)
        tip = np.linalg.norm(np.diff(axis, axis=0), axis=1).sum()
        along[c] = member[:, c:c + 1] * np.maximum(s, 0)[:, None] * d  # grows away from joint 1
        share[c] = weights[:, 1 + 3 * c:4 + 3 * c].sum(1, keepdims=True)  # 0 on the palm
        radial[c] = share[c] * (verts - _axis_point(axis, np.clip(s, 0, tip)))
    dirs = np.zeros((V, 3, 10))
    dirs[:, :, 0] = 0.05 * (verts - wrist)
    dirs[:, :, 1] = 0.10 * along[:4].sum(0)
    dirs[:, 2, 2] = 0.08 * verts[:, 2]
    dirs[:, :, 3] = 0.12 * radial.sum(0)
    dirs[:, 0, 4] = 0.08 * np.minimum(verts[:, 0], 0.09)
    dirs[:, :, 5] = 0.10 * along[4]
    dirs[:, 1, 6] = 0.15 * verts[:, 1] * weights[:, 0]
    dirs[:, :, 7] = 0.08 * (along[0] - along[3])
    dirs[:, :, 8] = 0.12 * along[2]
    taper = np.stack([np.clip(_arc_length(layout["axes"][c], verts[:, [0, 2]]) / 0.08, 0, 1) - 0.5
                      for c in range(5)])[..., None]  # (5, V, 1): thinner tips, thicker bases
    dirs[:, :, 9] = -0.3 * (radial * taper).sum(0)
    return dirs


def _hand_pose_basis():
    """hands_components (45, 45) orthonormal rows, the first six natural synergies, and
    hands_mean (45,) a relaxed half-curl. Axis-angle per joint 1-15, MANO order, right hand."""
    thumb = _thumb_axis()
    d = np.array([thumb[-1, 0] - thumb[0, 0], 0, thumb[-1, 1] - thumb[0, 1]])
    d /= np.linalg.norm(d)
    flex = np.array([0.0, 0, -1])         # finger flexion: about -z, the fingertips go to -y
    thumb_flex = np.cross(d, [0, -1, 0])  # the thumb curls towards the palm
    oppose = np.cross(d, [0, -1, 0.7])    # the thumb tip moves under the palm towards the pinky
    oppose /= np.linalg.norm(oppose)
    spread = np.array([0.0, 1, 0])        # about +y the index moves to -z, away from the middle

    def pose(fingers=(0, 0, 0), per_finger=(1, 1, 1, 1), thumb=(0, 0, 0), thumb_axis=thumb_flex,
             spread_by=(0, 0, 0, 0)):
        p = np.zeros((15, 3))
        for c in range(4):  # index, middle, pinky, ring
            p[3 * c:3 * c + 3] = per_finger[c] * np.outer(fingers, flex)
            p[3 * c] += spread_by[c] * spread
        p[12:] = np.outer(thumb, thumb_axis)
        return p.ravel()

    synergies = [
        pose(fingers=(0.8, 1.0, 0.7), thumb=(0.3, 0.6, 0.6)),                # 1. make a fist
        pose(spread_by=(0.3, 0.0, -0.35, -0.15)) + pose(thumb=(0.3, 0, 0), thumb_axis=spread),  # 2. spread
        pose(thumb=(0.8, 0, 0), thumb_axis=oppose) + pose(thumb=(0, 0.3, 0.3)),  # 3. oppose the thumb
        pose(fingers=(0.8, -0.5, -0.5)),                                     # 4. knuckles vs. tips
        pose(fingers=(0.6, 0.8, 0.6), per_finger=(0.0, 0.3, 0.9, 0.6)),      # 5. curl towards the pinky
        pose(fingers=(0.8, 1.0, 0.7), per_finger=(-0.5, 1, 1, 1)),           # 6. point the index
    ]
    # Gram-Schmidt in this order: the synergies first, then the unit vectors fill the rest
    components = []
    for x in synergies + list(np.eye(45)):
        x = x - sum((x @ c) * c for c in components)
        if np.linalg.norm(x) > 1e-6 and len(components) < 45:
            components.append(x / np.linalg.norm(x))
    components = np.stack(components)  # (45, 45), orthonormal rows
    mean = pose(fingers=(0.15, 0.25, 0.15), thumb=(0.1, 0.1, 0.05))
    return components, mean


@functools.lru_cache(maxsize=None)
def _standin_hand():
    """The right stand-in hand: MANO arrays (key -> array) plus 'ring' (16,), the wrist opening's
    vertex ids in loop order, used to stitch the hand onto the bodies."""
    layout = _hand_layout()
    verts, faces, source = _pillow(layout)
    weights, member = _hand_weights(verts[:, [0, 2]], layout["chain"][source], layout["col"][source], layout)
    verts, faces, (weights, member) = _split_edges(verts, faces, 778, [weights, member])
    # the tip points of the layout become the fingertip ids smplx uses; as on the real template,
    # FreiHAND's ring and pinky tips (555, 672) are the vertices nearest to smplx's (554, 671)
    wanted = dict(zip(FINGERTIP_VERTS["hamer"], layout["tips"]))
    for new, tip in zip(FINGERTIP_VERTS["freihand"][3:], layout["tips"][3:]):
        distance = np.linalg.norm(verts - verts[tip], axis=1)
        distance[list(wanted.values())] = np.inf
        wanted[new] = int(distance.argmin())
    order = _relabel(len(verts), wanted)
    new_id = np.argsort(order)
    verts, weights, member, faces = verts[order], weights[order], member[order], new_id[faces]
    (ring,) = _boundary_loops(faces)  # the wrist opening, 16 edges
    components, mean = _hand_pose_basis()
    return dict(
        v_template=verts, f=faces, weights=weights,
        J_regressor=_regressor_from_weights(weights, MANO_PARENTS, roots={0: ring}),
        kintree_table=np.stack([MANO_PARENTS, np.arange(16)]),
        shapedirs=_hand_shapedirs(verts, weights, member, layout, verts[ring].mean(0)),
        posedirs=np.zeros((778, 3, 135)), hands_components=components, hands_mean=mean,
        ring=ring)


# --- Stand-in bodies: a smooth union of capsules, meshed by marching tetrahedra ---------------
# Rest T-pose as in SMPL: y up, facing +z, the body's left on +x, pelvis at the origin, metres.
# A primitive is a tapered capsule from a to b with radii ra -> rb; `squash` (3,) scales its
# cross-section per axis (an ellipsoid is a capsule with a = b). Each belongs to one joint: the
# joint whose rotation moves that part of the body. Left-side parts are mirrored to the right.

_SMPL_LEFT_TO_RIGHT = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 22: 23}
_BODY_WRIST = np.array([0.66, 0.43, -0.03])  # left wrist; the hands are stitched on here

# (joint, a, b, ra, rb, squash); b = None: a sphere (an ellipsoid, squashed)
_BODY_CENTRE = (
    (0, (0, -0.06, 0), (0, 0.04, 0), 0.16, 0.145, (1, 0.7, 0.7)),        # hips
    (3, (0, 0.04, 0), (0, 0.15, 0.005), 0.145, 0.135, (1, 1, 0.7)),      # belly
    (6, (0, 0.15, 0.005), (0, 0.26, 0), 0.135, 0.158, (1, 1, 0.72)),     # lower chest
    (9, (0, 0.26, 0), (0, 0.36, -0.01), 0.158, 0.17, (1, 0.5, 0.68)),    # chest
    (12, (0, 0.40, -0.025), (0, 0.56, -0.01), 0.055, 0.05, None),        # neck
    (15, (0, 0.665, 0.015), None, 0.105, None, (0.74, 1, 0.9)),          # skull
    (15, (0, 0.655, 0.105), None, 0.022, None, (0.55, 1, 0.9)),          # nose
    ("jaw", (0, 0.60, 0.045), None, 0.06, None, (0.97, 0.75, 1)),        # chin and jaw
)
_BODY_LEFT = (
    (0, (0.065, -0.09, -0.04), None, 0.09, None, (0.94, 1, 0.8)),        # buttock
    (15, (0.077, 0.66, 0), None, 0.028, None, (0.43, 1, 0.64)),          # ear
    (13, (0.02, 0.425, -0.03), (0.16, 0.435, -0.03), 0.05, 0.05, (1, 0.8, 1)),   # shoulder top
    (16, (0.175, 0.43, -0.025), None, 0.06, None, (1, 0.9, 0.95)),       # deltoid
    (16, (0.17, 0.43, -0.025), (0.43, 0.43, -0.03), 0.05, 0.038, None),  # upper arm
    (18, (0.43, 0.43, -0.03), (0.60, 0.43, -0.03), 0.037, 0.031, (1, 0.75, 1)),  # forearm
    (18, (0.60, 0.43, -0.03), (0.645, 0.43, -0.03), 0.03, 0.029, (1, 0.52, 1)),  # flat end of the forearm
    (20, (0.645, 0.43, -0.03), (0.67, 0.43, -0.03), 0.029, 0.028, (1, 0.52, 1)), # wrist
    (1, (0.085, -0.07, 0), (0.095, -0.47, 0.01), 0.08, 0.052, None),     # thigh
    (4, (0.095, -0.47, 0.01), (0.10, -0.85, -0.02), 0.05, 0.036, None),  # shin
    (4, (0.097, -0.58, -0.02), None, 0.09, None, (0.5, 1, 0.53)),        # calf
    (7, (0.10, -0.85, -0.02), (0.10, -0.895, -0.045), 0.036, 0.034, None),          # ankle, heel
    (7, (0.10, -0.895, -0.04), (0.105, -0.905, 0.075), 0.034, 0.032, (1, 0.75, 1)),  # foot
    (10, (0.105, -0.91, 0.085), (0.11, -0.915, 0.145), 0.028, 0.02, (1, 0.7, 1)),    # toes
)
_BODY_BLEND = 0.025  # smooth-union radius (m): how much neighbouring parts melt into each other


def _body_primitives(jaw_joint):
    """All primitives as arrays: joint (P,), a (P, 3), b (P, 3), ra (P,), rb (P,), squash (P, 3)."""
    rows = []
    for joint, a, b, ra, rb, squash in _BODY_CENTRE + _BODY_LEFT:
        joint = jaw_joint if joint == "jaw" else joint
        b, rb, squash = a if b is None else b, ra if rb is None else rb, squash or (1, 1, 1)
        rows.append((joint, a, b, ra, rb, squash))
        if a[0] > 0:  # a left-side part: mirror it to the right
            rows.append((_SMPL_LEFT_TO_RIGHT.get(joint, joint), (-a[0], *a[1:]), (-b[0], *b[1:]),
                         ra, rb, squash))
    joint, a, b, ra, rb, squash = zip(*rows)
    return dict(joint=np.array(joint), a=np.array(a, float), b=np.array(b, float),
                ra=np.array(ra, float), rb=np.array(rb, float), squash=np.array(squash, float))


def _primitive_distances(points, prims, far=0.1):
    """Signed distance (N, P) from each point to each tapered capsule (negative inside), capped
    at `far` (m).

    Measured in each primitive's squashed frame, so it is exact along unsquashed axes and an
    overestimate along squashed ones: fine for meshing and blending.
    """
    d = np.full((len(points), len(prims["a"])), far)
    for i, (a, b, ra, rb, s) in enumerate(zip(prims["a"], prims["b"], prims["ra"], prims["rb"],
                                              prims["squash"])):
        # only points in the primitive's bounding box (grown by `far`) are measured
        reach = max(ra, rb) * s + far
        lo, hi = np.minimum(a, b) - reach, np.maximum(a, b) + reach
        near = np.flatnonzero(((points > lo) & (points < hi)).all(1))
        p, a, b = points[near] / s, a / s, b / s
        ab = b - a
        t = np.clip((p - a) @ ab / max(ab @ ab, 1e-12), 0, 1)  # nearest point on the axis
        d[near, i] = np.linalg.norm(p - a - t[:, None] * ab, axis=1) - (ra + t * (rb - ra))
    return np.minimum(d, far)


def _smooth_union(d, k=_BODY_BLEND):
    """Polynomial smooth minimum over the last axis, folded left to right. (N, P) -> (N,)"""
    out = d[:, 0]
    for i in range(1, d.shape[1]):
        h = np.clip(0.5 + 0.5 * (d[:, i] - out) / k, 0, 1)
        out = d[:, i] * (1 - h) + out * h - k * h * (1 - h)
    return out


# Six tetrahedra per cube, all sharing the diagonal 0-7 (corner id = dx + 2 dy + 4 dz); the
# split is the same in every cube, so neighbouring cubes' faces match and the surface is closed.
_CUBE_TETS = np.array([[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]])


def _marching_tetrahedra(values, axes):
    """Zero level set of `values` (nx, ny, nz) sampled at the grid `axes` (xs, ys, zs).

    Returns verts (V, 3), faces (F, 3) with normals pointing to positive values (outwards).
    """
    shape = values.shape
    f = np.where(values == 0, 1e-12, values).ravel()
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    # 1. corner ids of the cubes the surface crosses
    origin = np.stack(np.meshgrid(*[np.arange(n - 1) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    offsets = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)])
    corners = np.ravel_multi_index(tuple((origin[:, None] + offsets).transpose(2, 0, 1)), shape)  # (C, 8)
    inside = f[corners] < 0
    corners = corners[inside.any(1) & ~inside.all(1)]
    # 2. tetrahedra, with their inside vertices sorted first
    tets = corners[:, _CUBE_TETS].reshape(-1, 4)  # (T, 4)
    n_in = (f[tets] < 0).sum(1)
    tets, n_in = tets[(n_in > 0) & (n_in < 4)], n_in[(n_in > 0) & (n_in < 4)]
    tets = np.take_along_axis(tets, np.argsort(f[tets] >= 0, axis=1, kind="stable"), 1)
    # 3. one triangle (1 or 3 inside) or a quad (2 inside) on the crossed edges
    one = np.concatenate([tets[n_in == 1][:, [[0, 1], [0, 2], [0, 3]]],
                          tets[n_in == 3][:, [[3, 0], [3, 1], [3, 2]]]])
    two = tets[n_in == 2][:, [[0, 2], [0, 3], [1, 3], [1, 2]]]
    edges = np.concatenate([one, two[:, [0, 1, 2]], two[:, [0, 2, 3]]])  # (F, 3 corners, 2 ends)
    # 4. one vertex per crossed grid edge, where the linear interpolant is zero
    key, vid = np.unique(np.sort(edges.reshape(-1, 2), 1), axis=0, return_inverse=True)
    fa, fb = f[key[:, 0]], f[key[:, 1]]
    verts = pos[key[:, 0]] + (fa / (fa - fb))[:, None] * (pos[key[:, 1]] - pos[key[:, 0]])
    faces = vid.reshape(-1, 3)
    # 5. orient each triangle so its normal points from the inside corner to the outside one
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inner = np.where(f[edges[:, 0, 0]] < 0, edges[:, 0, 0], edges[:, 0, 1])
    outer = edges[:, 0, 0] + edges[:, 0, 1] - inner
    flip = (normal * (pos[outer] - pos[inner])).sum(1) < 0
    faces[flip] = faces[flip][:, ::-1]
    return verts, faces


def _unique_edges(faces):
    """Undirected edges (E, 2), each once."""
    return np.unique(np.sort(_half_edges(faces), axis=1), axis=0)


def _face_normals(verts, faces):
    """`face_normals` of numpy arrays: (F, 3), length = twice the area."""
    return face_normals(torch.from_numpy(np.ascontiguousarray(verts)),
                        torch.from_numpy(np.ascontiguousarray(faces))).numpy()


def _vertex_normals(verts, faces):
    """`vertex_normals` of numpy arrays: (V, 3), unit length."""
    return vertex_normals(torch.from_numpy(np.ascontiguousarray(verts)),
                          torch.from_numpy(np.ascontiguousarray(faces))).numpy()


def _edge_opposites(faces):
    """Undirected edges (E, 2) of a closed mesh and the third vertices of their two triangles (E, 2)."""
    half = _half_edges(faces)
    third = faces[:, [2, 0, 1]].ravel()  # the vertex opposite each half-edge
    key = np.sort(half, axis=1)
    order = np.lexsort(key.T[::-1])
    pairs = order.reshape(-1, 2)  # the two halves of each edge sit side by side
    return key[pairs[:, 0]], third[pairs]


def _collapse_short_edges(verts, faces, num_verts):
    """Decimate a closed mesh to at most `num_verts` vertices by collapsing short edges.

    Each round collapses edges that are the shortest in their neighbourhood (so no two touch the
    same triangle) into their midpoints. An edge may collapse only if its ends share exactly two
    neighbours (the link condition), both keeping degree >= 3, and no triangle flips. This keeps
    the surface closed and its genus.
    """
    import scipy.sparse as sp
    refused = np.zeros((0, 2), np.int64)  # edges whose collapse would flip a triangle
    while len(verts) > num_verts:
        V = len(verts)
        edges, opposite = _edge_opposites(faces)
        # 1. edges allowed by the topology
        A = sp.coo_matrix((np.ones(2 * len(edges)), (edges.ravel(), edges[:, ::-1].ravel())), (V, V)).tocsr()
        degree = np.asarray(A.sum(1)).ravel()
        common = np.asarray((A[edges[:, 0]].multiply(A[edges[:, 1]])).sum(1)).ravel()
        ok = (common == 2) & (degree[opposite] > 3).all(1)
        ok &= ~np.isin(edges[:, 0] * V + edges[:, 1], refused[:, 0] * V + refused[:, 1])
        # 2. local minima: no shorter allowed edge touches a triangle around the edge
        length = np.where(ok, np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1), np.inf)
        rank = np.empty(len(edges), np.int64)
        rank[np.argsort(length, kind="stable")] = np.arange(len(edges))
        at_vertex = np.full(V, len(edges))
        np.minimum.at(at_vertex, edges.ravel(), np.repeat(rank, 2))
        around = np.full(V, len(edges))
        np.minimum.at(around, faces.ravel(), np.repeat(at_vertex[faces].min(1), 3))
        win = np.flatnonzero(ok & (rank == np.minimum(around[edges[:, 0]], around[edges[:, 1]])))
        win = edges[win[np.argsort(rank[win])][:V - num_verts]]
        # 3. geometry: moving both ends to the midpoint must not flip a triangle
        target = np.arange(V)
        target[win[:, 1]] = win[:, 0]
        moved = verts.copy()
        moved[win[:, 0]] = (verts[win[:, 0]] + verts[win[:, 1]]) / 2
        new_faces = target[faces]
        alive = (new_faces[:, [0, 1, 2]] != new_faces[:, [1, 2, 0]]).all(1)
        n0, n1 = _face_normals(verts, faces), _face_normals(moved, new_faces)
        flipped = alive & ((n0 * n1).sum(1) <= 0.1 * np.linalg.norm(n0, axis=1) * np.linalg.norm(n1, axis=1))
        bad = np.zeros(V, bool)
        bad[faces[flipped].ravel()] = True
        refused = np.concatenate([refused, win[bad[win[:, 0]] | bad[win[:, 1]]]])
        win = win[~(bad[win[:, 0]] | bad[win[:, 1]])]
        # 4. collapse: b -> a at the midpoint, drop the edge's two triangles and vertex b
        target = np.arange(V)
        target[win[:, 1]] = win[:, 0]
        verts = verts.copy()
        verts[win[:, 0]] = (verts[win[:, 0]] + verts[win[:, 1]]) / 2
        faces = target[faces]
        faces = faces[(faces[:, [0, 1, 2]] != faces[:, [1, 2, 0]]).all(1)]
        keep = np.ones(V, bool)
        keep[win[:, 1]] = False
        new_id = np.cumsum(keep) - 1
        verts, faces = verts[keep], new_id[faces]
        refused = np.sort(new_id[refused[keep[refused].all(1)]], axis=1)
    return verts, faces


def _body_sdf(prims):
    """The body's signed distance function, points (N, 3) -> (N,)."""
    return lambda points: _smooth_union(_primitive_distances(points, prims))


def _relax(verts, faces, sdf, movable, iterations=6):
    """Even out the triangles: move each movable vertex half-way to the mean of its neighbours
    within its tangent plane, then back onto the zero level set of `sdf` (one Newton step
    along the numerical gradient). movable (V,) bool."""
    import scipy.sparse as sp
    edges = _unique_edges(faces)
    V = len(verts)
    A = sp.coo_matrix((np.ones(2 * len(edges)), (edges.ravel(), edges[:, ::-1].ravel())), (V, V)).tocsr()
    degree = np.asarray(A.sum(1))
    offsets = np.concatenate([np.zeros((1, 3)), 1e-4 * np.eye(3)])  # forward differences
    for _ in range(iterations):
        n = _vertex_normals(verts, faces)
        step = A @ verts / degree - verts
        step -= (step * n).sum(1, keepdims=True) * n
        p = verts[movable] + 0.5 * step[movable]
        f = sdf((p[None] + offsets[:, None]).reshape(-1, 3)).reshape(4, -1)  # (4, M)
        grad = (f[1:] - f[0]).T / 1e-4  # (M, 3)
        verts = verts.copy()
        verts[movable] = p - (f[0] / np.maximum((grad * grad).sum(1), 1e-12))[:, None] * grad
    return verts


def _check_closed(faces, expected):
    """Raise unless every edge has exactly two triangles, in opposite directions, and 2V - F = expected."""
    half = _half_edges(faces)
    key = np.sort(half, axis=1)
    _, counts = np.unique(key, axis=0, return_counts=True)
    _, directed = np.unique(half, axis=0, return_counts=True)
    V = len(np.unique(faces))
    if (counts != 2).any() or (directed != 1).any() or 2 * V - len(faces) != expected:
        raise RuntimeError(f"stand-in mesh is not a closed oriented surface: 2V - F = {2 * V - len(faces)}, "
                           f"expected {expected}; edge uses {np.unique(counts)}")


def _body_surface(prims, num_verts, spacing):
    """The body's closed surface (arms end at the wrists) with `num_verts` vertices.

    Marching tetrahedra on a grid of `spacing` (m), then short-edge collapses down to the budget
    and a few rounds of relaxation onto the surface.
    """
    from scipy.sparse.csgraph import connected_components
    sdf = _body_sdf(prims)
    reach = np.maximum(prims["ra"], prims["rb"])[:, None] * prims["squash"] + 2 * spacing
    lo = np.minimum(prims["a"], prims["b"]) - reach
    hi = np.maximum(prims["a"], prims["b"]) + reach
    axes = [np.arange(l, u, spacing) for l, u in zip(lo.min(0), hi.max(0))]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    verts, faces = _marching_tetrahedra(sdf(grid).reshape([len(a) for a in axes]), axes)
    edges = _unique_edges(faces)
    n_parts = connected_components(_adjacency(edges, len(verts)))[0]
    if n_parts != 1 or 2 * len(verts) - len(faces) != 4:
        raise RuntimeError(f"body surface: {n_parts} parts, 2V - F = {2 * len(verts) - len(faces)}; "
                           "expected one closed sphere-like surface (try a finer spacing)")
    verts, faces = _collapse_short_edges(verts, faces, num_verts)
    return _relax(verts, faces, sdf, np.ones(len(verts), bool), iterations=4), faces, sdf


def _adjacency(edges, num_verts):
    """Symmetric sparse vertex adjacency (V, V) from undirected edges (E, 2)."""
    import scipy.sparse as sp
    ones = np.ones(2 * len(edges))
    return sp.coo_matrix((ones, (edges.ravel(), edges[:, ::-1].ravel())), (num_verts, num_verts)).tocsr()


def _bridge(loop_a, loop_b, verts, centre):
    """Triangles (na + nb, 3) joining two facing border loops around the x axis through `centre`.

    loop_a, loop_b: vertex ids, each in the order of its own border half-edges, so that every
    new triangle uses a border edge in the opposite direction and the result stays oriented.
    A zipper: walk both loops by angle, always advancing the loop whose next vertex comes first.
    """
    b = loop_b[::-1]  # reversed: now it turns the same way as loop_a

    def angles(ids):
        rel = verts[ids] - centre
        return np.arctan2(rel[:, 2], rel[:, 1])

    turn = lambda ids: np.sign(np.angle(np.exp(1j * np.diff(np.append(angles(ids), angles(ids)[0])))).sum())
    if turn(loop_a) != turn(b):
        raise RuntimeError("bridge: the two loops do not face each other")
    sense = turn(loop_a)
    ta = (sense * (angles(loop_a) - angles(loop_a)[0])) % (2 * np.pi)
    tb = (sense * (angles(b) - angles(loop_a)[0])) % (2 * np.pi)
    b, tb = np.roll(b, -tb.argmin()), np.roll(tb, -tb.argmin())
    ta, tb = np.append(ta, 2 * np.pi), np.append(tb, 2 * np.pi + tb[0])
    na, nb, i, j, tris = len(loop_a), len(b), 0, 0, []
    while i < na or j < nb:
        if j == nb or (i < na and ta[i + 1] <= tb[j + 1]):
            tris.append((loop_a[(i + 1) % na], loop_a[i], b[j % nb]))
            i += 1
        else:
            tris.append((b[j], b[(j + 1) % nb], loop_a[i % na]))
            j += 1
    return np.array(tris)


def _stitch_hands(verts, faces, hand):
    """Cut the body's arms just before the wrists and stitch the stand-in hand on each side.

    Left hand (+x): the right hand mirrored through z = 0; right hand (-x): the right hand turned
    180 degrees about y. Both: fingers pointing away from the body, palms down, thumbs forward.
    Returns verts, faces, hand_ids (2, 778) (left, right) and loops (2, n) the cut borders.
    """
    gap = 0.008  # m between the arm's cut and the hand's wrist opening, closed by the bridge
    x_cut = _BODY_WRIST[0] - gap
    keep = (np.abs(verts[faces][:, :, 0]) <= x_cut).all(1)
    faces = faces[keep]
    used = np.unique(faces)
    new_id = np.full(len(verts), -1)
    new_id[used] = np.arange(len(used))
    verts, faces = verts[used], new_id[faces]
    loops = sorted(_boundary_loops(faces), key=lambda l: -verts[l, 0].mean())  # left (+x) first
    hand_ids, bridges = [], []
    for side, loop in zip((1, -1), loops):
        verts[loop, 0] = side * x_cut  # square the cut
        wrist = _BODY_WRIST * [side, 1, 1]
        hv = wrist + hand["v_template"] * [side, 1, -1]
        hf = hand["f"][:, ::-1] if side == 1 else hand["f"]  # a mirror image needs flipped triangles
        offset = len(verts)
        verts, faces = np.concatenate([verts, hv]), np.concatenate([faces, hf + offset])
        bridges.append(_bridge(loop, hand["ring"][::-1] + offset if side == 1 else hand["ring"] + offset,
                               verts, wrist))
        hand_ids.append(offset + np.arange(len(hv)))
    return verts, np.concatenate([faces] + bridges), np.stack(hand_ids), loops


def _clean_weights(w, floor=0.01):
    """Normalise skinning weights per vertex, drop those below `floor`, normalise again."""
    w = w / w.sum(1, keepdims=True)
    w = np.where(w < floor, 0, w)
    return w / w.sum(1, keepdims=True)


def _body_weights(verts, prims, num_joints, tau=0.008):
    """Skinning weights (V, J) from the primitives: a soft minimum of their distances.

    w_p = exp(-(d_p - min_q d_q) / tau): where two parts meet (the elbow, the hip) both are
    near zero distance and share the vertex, with a smooth transition a few cm long.
    """
    d = _primitive_distances(verts, prims, far=1.0)
    soft = np.exp(-(d - d.min(1, keepdims=True)) / tau)  # (V, P)
    w = np.zeros((len(verts), num_joints))
    np.add.at(w.T, prims["joint"], soft.T)
    return _clean_weights(w)


def _smooth_relu(t, width=0.02):
    """max(t, 0) with the corner rounded over `width`."""
    return width * np.logaddexp(0, t / width)


def _axis_points(verts, prims):
    """For each vertex, the nearest point on the axis of its nearest primitive. (V, 3)"""
    p = _primitive_distances(verts, prims, far=1.0).argmin(1)
    a, b = prims["a"][p], prims["b"][p]
    ab = b - a
    t = np.clip(((verts - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0, 1)
    return a + t[:, None] * ab


def _body_shapedirs(verts, weights, prims, hands, head):
    """Ten shape directions (V, 3, 10), metres per unit of beta, smooth over the body.

    0 size, 1 girth, 2 leg length, 3 arm length, 4 shoulder width, 5 torso length, 6 belly,
    7 hip width, 8 head size, 9 chest depth. hands (V,) bool: hand vertices (no girth);
    head (V,) weight of the head's joints.
    """
    x, y, z = verts.T
    dirs = np.zeros((len(verts), 3, 10))
    dirs[:, :, 0] = 0.06 * verts  # about the pelvis, at the origin
    dirs[:, :, 1] = 0.15 * (verts - _axis_points(verts, prims)) * (~hands * (1 - head))[:, None]
    dirs[:, 1, 2] = -0.07 * _smooth_relu(-0.07 - y)  # below the hips
    dirs[:, 0, 3] = 0.07 * np.sign(x) * _smooth_relu(np.abs(x) - 0.18)  # beyond the shoulders
    dirs[:, 0, 4] = 0.12 * np.clip(x, -0.17, 0.17) * _smoothstep((y - 0.30) / 0.06) * (1 - head)
    dirs[:, 1, 5] = 0.08 * np.clip(y, 0, 0.40)
    dirs[:, 2, 6] = 0.04 * np.exp(-((y - 0.12) / 0.09) ** 2 - (x / 0.11) ** 2) * _smoothstep(z / 0.04)
    dirs[:, 0, 7] = 0.12 * np.clip(x, -0.16, 0.16) * np.exp(-((y + 0.06) / 0.1) ** 2)
    centre = (weights[:, 15:16] * verts).sum(0) / weights[:, 15].sum()
    dirs[:, :, 8] = 0.12 * (verts - centre) * head[:, None]
    dirs[:, 2, 9] = 0.2 * z * np.exp(-((y - 0.30) / 0.08) ** 2 - (x / 0.15) ** 2)
    return dirs


def _nearest_vertices(verts, targets, candidates):
    """Distinct vertex ids, one per target point (T, 3), nearest among `candidates` (ids)."""
    chosen = []
    for t in targets:
        d = np.linalg.norm(verts[candidates] - t, axis=1)
        d[np.isin(candidates, chosen)] = np.inf
        chosen.append(candidates[d.argmin()])
    return chosen


# extra vertices smplx reads as joints: (name, target point); names ending in a side letter are
# mirrored (R <- L, r <- l) to the person's right at -x
_BODY_KEYPOINTS = (("nose", (0, 0.655, 0.14)), ("leye", (0.032, 0.68, 0.12)),
                   ("lear", (0.095, 0.66, 0)), ("LBigToe", (0.085, -0.915, 0.17)),
                   ("LSmallToe", (0.13, -0.915, 0.15)), ("LHeel", (0.10, -0.92, -0.09)))


def _keypoint_targets():
    """{smplx vertex name: target point} for the face and feet, both sides."""
    out = {}
    for name, point in _BODY_KEYPOINTS:
        out[name] = np.array(point)
        if name[0] in "lL":
            out[{"l": "r", "L": "R"}[name[0]] + name[1:]] = np.array(point) * [-1, 1, 1]
    return out


def _ray_hits(verts, faces, origins, directions, chunk=64):
    """First triangle hit by each ray (Moller-Trumbore). -> face ids (R,), barycentric (R, 3)."""
    v0 = verts[faces[:, 0]]
    e1, e2 = verts[faces[:, 1]] - v0, verts[faces[:, 2]] - v0
    hit_face, hit_bary = [], []
    for o, d in zip(np.array_split(origins, max(1, len(origins) // chunk)),
                    np.array_split(directions, max(1, len(origins) // chunk))):
        p = np.cross(d[:, None], e2)  # (R, F, 3)
        det = (p * e1).sum(-1)
        det = np.where(np.abs(det) < 1e-15, 1e-15, det)
        s = o[:, None] - v0
        u = (s * p).sum(-1) / det
        q = np.cross(s, e1)
        v = (q * d[:, None]).sum(-1) / det
        t = (q * e2).sum(-1) / det
        t = np.where((u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0), t, np.inf)
        k = t.argmin(1)
        if np.isinf(t[np.arange(len(k)), k]).any():
            raise RuntimeError("stand-in landmarks: a ray missed the face")
        r = np.arange(len(k))
        hit_face.append(k)
        hit_bary.append(np.stack([1 - u[r, k] - v[r, k], u[r, k], v[r, k]], 1))
    return np.concatenate(hit_face), np.concatenate(hit_bary)


def _face_landmark_points():
    """51 landmarks (x, y) in the order smplx uses (68-point layout minus the jaw contour):
    brows (5 + 5), nose bridge (4), nostrils (5), eyes (6 + 6), outer lips (12), inner lips (8)."""
    brow = [(0.055, 0.695), (0.046, 0.703), (0.036, 0.706), (0.026, 0.705), (0.016, 0.700)]
    eye = [(0.046, 0.680), (0.038, 0.685), (0.026, 0.685), (0.019, 0.680), (0.026, 0.676), (0.038, 0.676)]
    right = lambda pts: [(-x, y) for x, y in pts]  # the person's right is at -x
    left_eye = [eye[i] for i in (3, 2, 1, 0, 5, 4)]  # starts at the inner corner, over the top
    points = (right(brow) + [p for p in reversed(brow)]
              + [(0, y) for y in (0.690, 0.677, 0.664, 0.652)]
              + [(-0.014, 0.641), (-0.007, 0.639), (0, 0.638), (0.007, 0.639), (0.014, 0.641)]
              + right(eye) + left_eye
              + [(-0.025, 0.615), (-0.016, 0.622), (-0.007, 0.626), (0, 0.624), (0.007, 0.626),
                 (0.016, 0.622), (0.025, 0.615), (0.016, 0.607), (0.007, 0.603), (0, 0.602),
                 (-0.007, 0.603), (-0.016, 0.607)]
              + [(-0.019, 0.615), (-0.007, 0.618), (0, 0.618), (0.007, 0.618), (0.019, 0.615),
                 (0.007, 0.611), (0, 0.611), (-0.007, 0.611)])
    return np.array(points)


def _face_landmarks(verts, faces, head_faces):
    """lmk_faces_idx (51,), lmk_bary_coords (51, 3): the landmarks, cast onto the face along -z;
    dynamic_lmk_faces_idx (79, 17), dynamic_lmk_bary_coords (79, 17, 3): the jaw contour per
    head yaw of -39..39 degrees (smplx's table order: 0..39, then -1..-39)."""
    xy = _face_landmark_points()
    origins = np.concatenate([xy, np.full((len(xy), 1), 0.4)], 1)
    f, bary = _ray_hits(verts, faces[head_faces], origins, np.tile([0.0, 0, -1], (len(xy), 1)))
    static = (head_faces[f], bary)
    # jaw contour: 17 points from the right ear (azimuth -90 deg) round the chin to the left ear,
    # turned with the head; the azimuth is measured from +z towards +x about a vertical axis
    yaw = np.concatenate([np.arange(40), -np.arange(1, 40)])  # (79,) degrees
    azimuth = np.radians(np.clip(np.linspace(-90, 90, 17)[None] + yaw[:, None], -100, 100))  # (79, 17)
    height = 0.595 + 0.06 * (np.abs(azimuth) / (np.pi / 2)) ** 1.5
    out = np.stack([np.sin(azimuth), np.zeros_like(azimuth), np.cos(azimuth)], -1)  # (79, 17, 3)
    origins = np.array([0, 0, 0.02]) + 0.4 * out + np.stack([0 * height, height, 0 * height], -1)
    f, bary = _ray_hits(verts, faces[head_faces], origins.reshape(-1, 3), -out.reshape(-1, 3))
    return static, (head_faces[f].reshape(79, 17), bary.reshape(79, 17, 3))


def _eyeball(centre, radius=0.012, rings=3, segments=17, max_angle=np.radians(110)):
    """A spherical cap facing +z: a disk whose border has `segments` edges (2V - F = 2 + segments).

    Returns verts (1 + rings * segments, 3) with the pupil (pole) first, and outward faces."""
    theta = (np.arange(1, rings + 1) * max_angle / rings)[:, None]
    phi = (np.arange(segments) * 2 * np.pi / segments)[None]
    ring = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta) + 0 * phi], -1)
    verts = centre + radius * np.concatenate([[[0, 0, 1]], ring.reshape(-1, 3)])
    k = np.arange(segments)
    faces = [np.stack([0 * k, 1 + k, 1 + (k + 1) % segments], 1)]
    for r in range(rings - 1):
        a, b = 1 + r * segments + k, 1 + (r + 1) * segments + k
        a1, b1 = 1 + r * segments + (k + 1) % segments, 1 + (r + 1) * segments + (k + 1) % segments
        faces += [np.stack([a, b, b1], 1), np.stack([a, b1, a1], 1)]
    faces = np.concatenate(faces)
    tri = verts[faces]
    inward = (np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * (tri.mean(1) - centre)).sum(1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return verts, faces


def _expression_dirs(verts, weights):
    """Ten expression directions (V, 3, 10) on the front of the face, metres per unit.

    0 open the jaw, 1 smile, 2 raise the brows, 3 puff the cheeks, 4 pucker, 5 frown,
    6 squint, 7 widen the mouth, 8 wrinkle the nose, 9 drop the lower lip.
    """
    face = weights[:, [15, 22]].sum(1) * _smoothstep((verts[:, 2] - 0.06) / 0.02)
    bump = lambda c, s: np.exp(-((verts - c) ** 2).sum(1) / s**2) * face
    pair = lambda c, s: bump(np.array(c), s) + bump(np.array(c) * [-1, 1, 1], s)  # both sides
    apart = lambda c, s: bump(np.array(c), s) - bump(np.array(c) * [-1, 1, 1], s)  # +x left, -x right
    corners, brows, cheeks = (0.025, 0.615, 0.095), (0.036, 0.705, 0.095), (0.045, 0.635, 0.075)
    d = np.zeros((len(verts), 3, 10))
    d[:, 1, 0] = -0.012 * weights[:, 22]
    d[:, 1, 1], d[:, 0, 1] = 0.006 * pair(corners, 0.012), 0.004 * apart(corners, 0.012)
    d[:, 1, 2] = 0.006 * pair(brows, 0.018)
    d[:, 0, 3], d[:, 2, 3] = 0.005 * apart(cheeks, 0.018), 0.004 * pair(cheeks, 0.018)
    d[:, 2, 4], d[:, 0, 4] = 0.007 * bump(np.array([0, 0.615, 0.10]), 0.015), -0.004 * apart(corners, 0.012)
    inner_brows = (0.016, 0.70, 0.10)
    d[:, 1, 5], d[:, 0, 5] = -0.005 * pair(inner_brows, 0.012), -0.003 * apart(inner_brows, 0.012)
    d[:, 1, 6] = 0.003 * pair((0.032, 0.672, 0.095), 0.01)
    d[:, 0, 7] = 0.006 * apart(corners, 0.012)
    d[:, 1, 8] = 0.004 * bump(np.array([0, 0.65, 0.12]), 0.015)
    d[:, 1, 9] = -0.005 * bump(np.array([0, 0.603, 0.10]), 0.012)
    return d


def _hand_pose_to_body(aa, side):
    """Stand-in MANO (right hand) axis-angle -> the body's hand. The left hand is the right one
    mirrored through z = 0, (x, y, z) -> (-x, -y, z); the right one is turned 180 degrees about y,
    (x, y, z) -> (-x, y, -z). aa (..., 45)."""
    m = np.array([-1, -1, 1] if side == "left" else [-1, 1, -1])
    return (aa.reshape(*aa.shape[:-1], -1, 3) * m).reshape(aa.shape)


def _hand_joint_map(kind, side):
    """Body joint (16,) for each MANO joint of the hand on `side` (0 left, 1 right)."""
    if kind == "smpl":  # one joint for the whole hand beyond the wrist
        return np.array([20 + side] + [22 + side] * 15)
    return np.array([20 + side] + list(range(25 + 15 * side, 40 + 15 * side)))


def _surface_z(sdf, x, y):
    """Where the line through (x, y) along z leaves the body towards +z (to 0.1 mm)."""
    z = np.linspace(0, 0.3, 3001)
    f = sdf(np.stack([np.full_like(z, x), np.full_like(z, y), z], 1))
    k = np.flatnonzero((f[:-1] < 0) & (f[1:] >= 0))[-1]
    return z[k] - f[k] * (z[k + 1] - z[k]) / (f[k + 1] - f[k])


_BODY_SIZES = {"smpl": (6890, 24), "smplx": (10475, 55)}  # vertices, joints


def _body_with_hands(prims, hand, num_verts):
    """The body surface with the stand-in hands stitched on, split to exactly `num_verts`
    vertices and relaxed again. Returns verts, faces, the SDF, hand_ids (2, 778), on_hand (V,)."""
    verts, faces, sdf = _body_surface(prims, num_verts - 2 * 778 - 40, spacing=0.02)
    verts, faces, hand_ids, _ = _stitch_hands(verts, faces, hand)
    on_hand = np.zeros(len(verts), bool)
    on_hand[hand_ids.ravel()] = True
    verts, faces, (on_hand,) = _split_edges(verts, faces, num_verts, [on_hand], frozen=on_hand)
    on_hand = on_hand == 1  # vertices split off the bridge edges (0.5) belong to the arm
    verts = _relax(verts, faces, sdf, np.abs(verts[:, 0]) < _BODY_WRIST[0] - 0.01, iterations=3)
    _check_closed(faces, 4)
    return verts, faces, sdf, hand_ids, on_hand


def _add_eyeballs(verts, faces, weights, sdf):
    """Append the two eyeballs (left eye joint 23 at +x, right 24), their pupils 2.5 mm in front
    of the face. Returns verts, faces, weights and the pupils' ids {"leye": id, "reye": id}."""
    pupils = {}
    for side, joint, name in ((1, 23, "leye"), (-1, 24, "reye")):
        x, y = 0.032 * side, 0.68
        ev, ef = _eyeball(np.array([x, y, _surface_z(sdf, x, y) + 0.0025 - 0.012]))
        pupils[name] = len(verts)
        faces, verts = np.concatenate([faces, ef + len(verts)]), np.concatenate([verts, ev])
        weights = np.concatenate([weights, np.eye(weights.shape[1])[np.full(len(ev), joint)]])
    return verts, faces, weights, pupils


@functools.lru_cache(maxsize=None)
def _standin_body(kind):
    """Stand-in SMPL (kind "smpl") or SMPL-X ("smplx"): the model file's arrays, key -> array."""
    V, J = _BODY_SIZES[kind]
    is_x = kind == "smplx"
    hand, prims = _standin_hand(), _body_primitives(jaw_joint=22 if is_x else 15)
    n_eyes = 2 * (1 + 3 * 17) if is_x else 0
    # 1. the surface; skinning weights from the primitives, the stand-in hand's own on the hands
    verts, faces, sdf, hand_ids, on_hand = _body_with_hands(prims, hand, V - n_eyes)
    weights = _body_weights(verts, prims, J)
    for side, ids in enumerate(hand_ids):
        w = np.zeros((J, 778))
        np.add.at(w, _hand_joint_map(kind, side), hand["weights"].T)
        weights[ids] = w.T
    # 2. the vertices smplx reads as keypoints
    targets = _keypoint_targets()
    keypoints = dict(zip(targets, _nearest_vertices(verts, list(targets.values()), np.flatnonzero(~on_hand))))
    for side, ids in zip("lr", hand_ids):
        for name, tip in zip(("thumb", "index", "middle", "ring", "pinky"), FINGERTIP_VERTS["hamer"]):  # smplx's
            keypoints[side + name] = ids[tip]
    extra = {}
    if is_x:  # 3. SMPL-X: face landmarks, then the eyeballs, whose pupils are the eye keypoints
        head_faces = np.flatnonzero((weights[faces][..., [15, 22]].sum(-1) > 0.5).all(1))
        static, dynamic = _face_landmarks(verts, faces, head_faces)
        extra["lmk_faces_idx"], extra["lmk_bary_coords"] = static
        extra["dynamic_lmk_faces_idx"], extra["dynamic_lmk_bary_coords"] = dynamic
        verts, faces, weights, pupils = _add_eyeballs(verts, faces, weights, sdf)
        keypoints.update(pupils)
        on_hand = np.concatenate([on_hand, np.zeros(n_eyes, bool)])
        for side, key in (("left", "l"), ("right", "r")):
            extra["hands_components" + key] = _hand_pose_to_body(hand["hands_components"], side)
            extra["hands_mean" + key] = _hand_pose_to_body(hand["hands_mean"], side)
    # 4. relabel so that smplx's hard-coded vertex ids land on the keypoints
    from smplx.vertex_ids import vertex_ids
    ids = vertex_ids["smplx" if is_x else "smplh"]
    order = _relabel(V, {ids[name]: vertex for name, vertex in keypoints.items()})
    verts, weights, on_hand, faces = verts[order], weights[order], on_hand[order], np.argsort(order)[faces]
    # 5. joint regressor, shape (and expression) directions
    parents = SMPLX_PARENTS if is_x else SMPL_PARENTS
    head = weights[:, [15, 22, 23, 24]].sum(1) if is_x else weights[:, 15]
    shapedirs = _body_shapedirs(verts, weights, prims, on_hand, head)
    if is_x:
        shapedirs = np.concatenate([shapedirs, _expression_dirs(verts, weights)], 2)
    return dict(v_template=verts, f=faces, weights=weights,
                J_regressor=_regressor_from_weights(weights, parents),
                kintree_table=np.stack([parents, np.arange(J)]), shapedirs=shapedirs,
                posedirs=np.zeros((V, 3, 9 * (J - 1))), **extra)



# --- The stand-ins' files -------------------------------------------------------------------

_STANDIN_FILES = {"mano": ("MANO_RIGHT.pkl", "MANO_LEFT.pkl"), "smpl": ("SMPL_NEUTRAL.pkl",),
                  "smplx": ("SMPLX_NEUTRAL.npz",)}


def _mirror_hand(arrays):
    """MANO_LEFT from MANO_RIGHT: the mirror image through x = 0 (smplx's left-hand convention)."""
    out = dict(arrays)
    out["v_template"] = arrays["v_template"] * [-1, 1, 1]
    out["f"] = arrays["f"][:, ::-1].copy()  # a mirror image turns the triangles inside out
    out["shapedirs"] = arrays["shapedirs"] * np.array([-1, 1, 1])[:, None]
    out["hands_components"] = mirror_rotation(arrays["hands_components"])
    out["hands_mean"] = mirror_rotation(arrays["hands_mean"])
    return out


def _official_format(arrays, sparse_regressor):
    """Arrays with the dtypes of the official files: float64, faces uint32, the root's parent
    stored as 4294967295 (uint32 -1), posedirs float32 (they are zero), optionally a sparse
    (scipy CSC) J_regressor as in the official pickles."""
    import scipy.sparse as sp
    out = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    out["f"] = arrays["f"].astype(np.uint32)
    kintree = arrays["kintree_table"]
    out["kintree_table"] = np.where(kintree < 0, 4294967295, kintree).astype(np.int64)
    out["posedirs"] = arrays["posedirs"].astype(np.float32)
    for key in ("lmk_faces_idx", "dynamic_lmk_faces_idx"):
        if key in arrays:
            out[key] = arrays[key].astype(np.int64)
    if sparse_regressor:
        out["J_regressor"] = sp.csc_matrix(out["J_regressor"])
    return out


def write_standins(root=None, kinds=("mano", "smpl", "smplx")):
    """Generate the stand-in model files that are missing under `root` (default `standin_dir()`).

    MANO_RIGHT/LEFT.pkl and SMPL_NEUTRAL.pkl are pickles of plain numpy arrays (and a scipy
    sparse J_regressor), SMPLX_NEUTRAL.npz an .npz, as in the official releases. Returns root.
    """
    root = Path(root) if root is not None else standin_dir()
    for kind in kinds:
        for name in _STANDIN_FILES[kind]:
            path = root / kind / name
            if path.exists():
                continue
            if kind == "mano":
                arrays = {k: v for k, v in _standin_hand().items() if k != "ring"}
                arrays = _mirror_hand(arrays) if "LEFT" in name else arrays
            else:
                arrays = _standin_body(kind)
            arrays = _official_format(arrays, sparse_regressor=kind != "smplx")
            if name.endswith(".pkl"):
                atomic_write(path, lambda f: pickle.dump(arrays, f, protocol=4))
            else:
                atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return root


# Where no model folder is given and HMR_BODY_MODELS is unset, bodymodels' loaders use these, written on demand.
bodymodels.standin_models = lambda kind: write_standins(kinds=(kind,))
