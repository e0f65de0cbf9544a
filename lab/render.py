"""The renderer: a z-buffer and Lambert shading of triangle meshes through pinhole cameras, in plain PyTorch.

What draws the synthetic samples' images (lab/synthetic.py), what tells which faces a pixel shows (the whole
bodies' hand visibility, data.py) and what draws meshes over pictures (lab/plots.py). Conventions are
bodymodels.py's: camera coordinates x right, y down, z forward; pixel (row i, column j) covers
[j, j+1) x [i, i+1), its centre (j + 0.5, i + 0.5).

Map of the file: `image_hw`; 1. the z-buffer (`rasterize`, `scratch_zbuffer`) beside the brute-force
`reference_rasterize` it is tested against; 2. shading: mesh normals (`face_normals`, `vertex_normals`), then
`render_mesh`, `render_meshes`, `render_batch`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def image_hw(image_size):
    """int or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


# ---------------------------------------------------------------------------------------------
# 1. The z-buffer
#
# A z-buffer in plain PyTorch, vectorised over faces: every face enumerates the pixel rows its
# screen-space box spans; every (face, row) pair gets the exact column span where the face's three
# edge functions are >= 0; every pixel of a span becomes a (face, pixel) candidate with its inverse
# depth 1/z (linear in screen space, so exact at the pixel centre); one scatter_reduce(amax) per
# pixel keeps the nearest. No Python loop runs over faces or pixels.

NEAR = 1e-3  # metres: faces with a vertex closer to the camera plane are dropped (there is no clipping)


EDGE_EPS = 1e-4  # pixels: spans are widened by this much so that shared edges leave no cracks


def _expand(counts):
    """Run-length expansion. counts (M,) int32 -> ids (N,) int32 with i repeated counts[i] times,
    and local (N,) int32 = 0, 1, ..., counts[i] - 1 within each run (N = counts.sum()).

    ids by a cumulative sum instead of repeat_interleave (several times faster on a CPU): with a
    mark at every run's start s_i (empty runs too), the marks up to position k count the runs
    that start at or before k, and the last of them holds k: ids[k] = cumsum(marks)[k] - 1.
    """
    end = counts.cumsum(0, dtype=torch.int32)
    n = int(end[-1]) if len(counts) else 0
    start = end - counts  # (M,) s_i
    marks = torch.zeros(n + 1, dtype=torch.int32, device=counts.device)  # + 1: empty runs at the end
    marks.index_add_(0, start, torch.ones_like(start))
    ids = marks[:n].cumsum(0, dtype=torch.int32) - 1
    return ids, torch.arange(n, dtype=torch.int32, device=counts.device) - start.index_select(0, ids)


def _flatnonzero(mask):
    """Ids (P,) int64 of the True entries of a 1-D bool tensor; numpy's on a CPU (torch.nonzero is
    several times slower there)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


# rows of the per-face table of `_face_setup` (one column per face, so a row is contiguous)
_X0, _Y0, _FIRST, _INV_Z0, _DA, _DB = range(6)  # corner 0, first pixel row, 1/z at corner 0 and its slopes


_P_LO, _Q_LO, _P_HI, _Q_HI = slice(6, 9), slice(9, 12), slice(12, 15), slice(15, 18)  # span bounds (3 each)


def _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored=None):
    """Screen-space set-up of the faces of B meshes that can cover a pixel centre of their image.

    verts (B, V, 3), faces (F, 3) shared, K (B, 3, 3). Everything is relative to each face's
    first corner (x0, y0), so float32 stays exact enough for sub-pixel faces. With du = u - x0 and
    dv = v - y0 for a pixel centre (u, v), the barycentric coordinate of corner i is
    l_i = a_i du + b_i dv + [i == 0], and the inverse depth, linear in screen space under
    perspective, is 1/z = 1/z_0 + da du + db dv.
    Returns keep (Fk,) int64, the ids of those faces among the B F faces (mesh-major); corners
    (3, Fk) their corners' ids among the B V vertices; a and b (3, Fk) (corner-major: a row is
    contiguous); table (18, Fk) float32, per face the rows [x0, y0, first row, 1/z_0, da, db]
    and, per corner i, the bounds of l_i >= 0 along a row,
    du >= lo_i(dv) = p_i + q_i dv (left edges) and du <= hi_i(dv) (right edges), as rows
    [p_lo (3), q_lo (3), p_hi (3), q_hi (3)]; h (Fk,) int32 each face's row count; image (Fk,)
    int32 the first pixel id of its image in the stacked B H W pixels. mirrored (B,) bool marks
    meshes seen in a mirror (x -> -x), whose faces run the other way round.
    """
    B, V = verts.shape[:2]
    z = verts[..., 2].reshape(-1)  # (B V,)
    uv = (verts @ K.transpose(-1, -2))[..., :2].reshape(-1, 2) / z.clamp_min(NEAR)[:, None]  # (B V, 2)
    corner_ids = _corner_ids(faces, B, V).view(-1)  # (3 B F,)
    x, y = uv.T.contiguous().index_select(1, corner_ids).view(2, 3, -1)  # (3 corners, B F) each
    dx1, dx2, dy1, dy2 = x[1] - x[0], x[2] - x[0], y[1] - y[0], y[2] - y[0]
    area = dx1 * dy2 - dx2 * dy1  # (B F,) twice the signed area
    # rows whose centre v = row + 0.5 lies inside the face's vertical extent
    first = torch.ceil(y.amin(0) - 0.5).clamp_(0, height)
    h = (torch.floor(y.amax(0) - 0.5).clamp_(-1, height - 1) - first + 1).clamp_min_(0)
    # with y pointing down, a face whose corners run counter-clockwise seen from outside has area < 0
    if cull_backfaces and mirrored is not None:
        facing = area * (1 - 2 * mirrored.float()).repeat_interleave(len(faces)) < 0
    else:
        facing = area < 0 if cull_backfaces else area != 0
    near = z.index_select(0, corner_ids).view(3, -1).amin(0) > NEAR
    keep = _flatnonzero(facing & near & (h > 0) & (x.amax(0) > 0) & (x.amin(0) < width)).to(verts.device)
    dx1, dx2, dy1, dy2, area, x0, y0 = (t.index_select(0, keep) for t in (dx1, dx2, dy1, dy2, area, x[0], y[0]))
    # l_i = ((x_j - u)(y_k - v) - (x_k - u)(y_j - v)) / area for (i, j, k) cyclic, written in du, dv;
    # l_0 = 1 - l_1 - l_2 keeps the three summing to 1 in float32
    a1, a2, b1, b2 = dy2 / area, -dy1 / area, -dx2 / area, dx1 / area
    a, b = torch.stack([-a1 - a2, a1, a2]), torch.stack([-b1 - b2, b1, b2])  # (3, Fk) each
    # perspective: 1/z = sum_i l_i / z_i
    corners = corner_ids.view(3, -1).index_select(1, keep)  # (3, Fk) vertex ids among the B V
    inv_z = 1 / z.index_select(0, corners.view(-1)).view(3, -1)  # (3, Fk)
    depth = torch.stack([inv_z[0], (a * inv_z).sum(0), (b * inv_z).sum(0)])  # (3, Fk)
    # l_i >= 0 on a row: du >= -(b_i dv + [i == 0]) / a_i if a_i > 0, du <= ... if a_i < 0;
    # a_i = 0 (a horizontal edge) never limits a row inside the face's vertical extent
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    p, q = -torch.eye(3, device=a.device)[:, :1] / safe_a, -b / safe_a  # (3, Fk) each
    lower, upper = a > 0, a < 0
    bounds = [p.masked_fill(~lower, -math.inf), q.masked_fill(~lower, 0),
              p.masked_fill(~upper, math.inf), q.masked_fill(~upper, 0)]
    table = torch.cat([x0[None], y0[None], first.index_select(0, keep)[None], depth] + bounds)  # (18, Fk)
    image = (torch.div(keep, len(faces), rounding_mode="floor") * (height * width)).int()
    return keep, corners, a, b, table, h.index_select(0, keep).int(), image


def _rasterize(verts, faces, K, height, width, cull_backfaces=False, mirrored=None, zbuffer=None):
    """The z-buffer of B meshes (see `rasterize`): verts (B, V, 3), faces (F, 3), K (B, 3, 3).
    Returns pix (P,) int64 covered pixels (sorted) as ids into the stacked (B, H, W) images,
    face (P,) the winner as an index into keep, du and dv (P,) its pixel centre relative to the
    face origin, and keep, corners, a, b from `_face_setup`. zbuffer: None, or an int64 scratch
    tensor of at least B H W entries, all -1, which is used and left so (on a CPU, allocating and
    filling a fresh z-buffer per pass costs more than the scatter into it)."""
    keep, corners, a, b, table, h, image = _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored)
    # 1. (face, row) spans: the columns j0 ... j0 + n - 1 whose centre u = col + 0.5 is in [lo, hi]
    face, r = _expand(h)  # (M,)
    t = table.index_select(1, face)  # (18, M)
    row = t[_FIRST] + r
    dv = row + 0.5 - t[_Y0]
    lo = (t[_P_LO] + t[_Q_LO] * dv).amax(0) + t[_X0]  # leftmost u with all l_i >= 0
    hi = (t[_P_HI] + t[_Q_HI] * dv).amin(0) + t[_X0]
    j0 = torch.ceil(lo - EDGE_EPS - 0.5).clamp_(0, width)
    n = (torch.floor(hi + EDGE_EPS - 0.5).clamp_(-1, width - 1) - j0 + 1).clamp_min_(0).int()
    du0 = j0 + 0.5 - t[_X0]
    start = image.index_select(0, face) + (row * width + j0).int()  # (M,) first pixel id
    inv_z0 = t[_INV_Z0] + t[_DA] * du0 + t[_DB] * dv  # (M,)
    # 2. (span, pixel) candidates and their inverse depth 1/z = 1/z_0 + da du + db dv
    span, k = _expand(n)  # (N,)
    pix = (start.index_select(0, span) + k).long()
    inv_z = (inv_z0.index_select(0, span) + t[_DA].index_select(0, span) * k).clamp_min_(0)
    # 3. nearest per pixel: the bits of a positive float32 sort like the float, so packing them
    #    above the span id makes one integer amax return the winner (ties: the larger id)
    key = (inv_z.view(torch.int32).long() << 32) | span
    size = len(verts) * height * width
    reuse = zbuffer is not None and len(zbuffer) >= size
    best = zbuffer[:size] if reuse else torch.full((size,), -1, dtype=torch.long, device=pix.device)
    best.scatter_reduce_(0, pix, key, "amax")
    pix = _flatnonzero(best >= 0).to(pix.device)  # (P,)
    won = (best.index_select(0, pix) & 0xFFFFFFFF).int()  # (P,) the winners' spans
    if reuse:
        best.index_fill_(0, pix, -1)  # back to empty for the next pass
    du = du0.index_select(0, won) + (pix.int() - start.index_select(0, won))
    return pix, face.index_select(0, won), du, dv.index_select(0, won), (keep, corners, a, b)


def scratch_zbuffer(zbuffer, size):
    """A z-buffer for `render_batch` to use and leave empty again: zbuffer (None, or one this gave
    before, e.g. a dataset's, not pickled, so rebuilt in each worker) if it has at least `size`
    entries, else a new one of `size` entries, all -1."""
    if zbuffer is None or len(zbuffer) < size:
        zbuffer = torch.full((size,), -1, dtype=torch.long)
    return zbuffer


def rasterize(verts, faces, K, image_size, cull_backfaces=False):
    """Z-buffer: the nearest face under every pixel centre.

    verts (V, 3) camera coordinates, faces (F, 3) int, K (3, 3), image_size int or (H, W).
    Returns pix (P,) flat ids row * W + col of the covered pixels (sorted), face (P,) the id of the
    visible face there, and bary (P, 3) float32 barycentric weights in the image plane.
    Faces with a vertex behind the near plane are dropped. Both windings are drawn unless
    cull_backfaces, which drops faces whose corners run clockwise seen from the camera (the back
    faces of a closed mesh with counter-clockwise outward winding, as SMPL's and MANO's).
    """
    height, width = image_hw(image_size)
    pix, face, du, dv, (keep, _, a, b) = _rasterize(verts.float()[None], faces.long(), K.float()[None], height,
                                                    width, cull_backfaces)
    bary = a.index_select(1, face) * du + b.index_select(1, face) * dv  # (3, P)
    bary[0] += 1
    return pix, keep.index_select(0, face), bary.T.contiguous()


def reference_rasterize(verts, faces, K, image_size):
    """The z-buffer written the short way, to check `rasterize` against: every pixel centre tested
    against every face (memory H W F), in float64.

    verts (V, 3) camera coordinates, faces (F, 3), K (3, 3), image_size int or (H, W). Returns
    face (H W,) the nearest face under each pixel centre (-1 = empty), margin (H W,) the smallest
    |barycentric weight| of that pixel over all faces (small: near an edge, where the two
    renderers may round differently) and gap (H W,) the inverse-depth gap between the two nearest
    faces (small: a depth tie).
    """
    height, width = image_hw(image_size)
    uvw = verts.double() @ K.double().T
    tri = (uvw[:, :2] / uvw[:, 2:])[faces]  # (F, 3, 2) image-plane corners
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    p = torch.stack([xs.flatten(), ys.flatten()], -1).double()[:, None, :]  # (P, 1, 2) pixel centres
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]  # (F, 2)

    def cross(o, q, r):  # z of (q - o) x (r - o), broadcast to (P, F)
        return (q[..., 0] - o[..., 0]) * (r[..., 1] - o[..., 1]) - (q[..., 1] - o[..., 1]) * (r[..., 0] - o[..., 0])

    area = cross(a, b, c)  # (F,)
    l0, l1, l2 = cross(p, b, c) / area, cross(p, c, a) / area, cross(p, a, b) / area  # (P, F) barycentric
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    z = verts[:, 2].double()[faces]  # (F, 3)
    # nearest = largest
    inv_z = torch.where(inside, l0 / z[:, 0] + l1 / z[:, 1] + l2 / z[:, 2], torch.full_like(l0, -1.0))
    best = inv_z.argmax(1)
    face = torch.where(inside.any(1), best, torch.full_like(best, -1))
    margin = torch.stack([l0, l1, l2]).abs().amin(0).amin(1)  # (P,)
    top2 = inv_z.topk(2, dim=1).values if inv_z.shape[1] > 1 else torch.cat([inv_z, -inv_z], 1)
    return face, margin, top2[:, 0] - top2[:, 1]


# ---------------------------------------------------------------------------------------------
# 2. Shading: mesh normals, then Lambert shading


def face_normals(verts, faces):
    """Triangle normals (..., F, 3) of meshes verts (..., V, 3) sharing faces (F, 3): e1 x e2 with
    e1 = p1 - p0, e2 = p2 - p0, whose length is twice the triangle's area."""
    p = verts[..., faces, :]  # (..., F, 3 corners, 3)
    return torch.linalg.cross(p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :], dim=-1)


def vertex_normals(verts, faces):
    """Area-weighted unit vertex normals (..., V, 3) of meshes verts (..., V, 3) sharing faces (F, 3).

    They point to the side from which the faces' corners run counter-clockwise (outwards for
    SMPL, MANO and SMPL-X). Every face's e1 x e2 (`face_normals`) is summed into its three corners.
    Computed axis-major (one flat index_add_, the fastest on a CPU); the result is a view of
    that (3, M V) layout, which the renderer reads without a copy. Each mesh's sums run in the same
    order whatever the batch, so a mesh's normals never depend on the batch it is in.
    """
    V = verts.shape[-2]
    xyz = verts.reshape(-1, 3).T.contiguous()  # (3, M V), M the number of meshes
    M = xyz.shape[1] // V
    corners = (faces.T.contiguous()[:, None] + V * torch.arange(M, device=faces.device)[:, None]).view(3, -1)
    p = xyz.index_select(1, corners.reshape(-1)).view(3, 3, -1)  # (3 axes, 3 corners, M F)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    n = torch.stack([e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]])
    # element (axis k, vertex i) of the flat sum is k M V + i
    element = (corners[None] + xyz.shape[1] * torch.arange(3, device=xyz.device)[:, None, None]).reshape(-1)
    out = torch.zeros(xyz.numel(), dtype=xyz.dtype, device=xyz.device)
    out.index_add_(0, element, n[:, None].expand(3, 3, -1).reshape(-1))
    out = out.view(3, -1)
    out = out / (out[0] * out[0] + out[1] * out[1] + out[2] * out[2]).sqrt_().clamp_min_(1e-12)
    return out.T.reshape(verts.shape)


def _corner_ids(faces, count, num_verts):
    """(3 corners, count F) ids of the corners of faces (F, 3) in count stacked meshes of num_verts vertices."""
    return (faces.T.contiguous()[:, None] + num_verts * torch.arange(count, device=faces.device)[:, None]).view(3, -1)


def render_mesh(verts, faces, K, image_size, color=(0.85, 0.64, 0.52), light=(0.4, -0.6, -1.0),
                ambient=0.35, background=None, return_mask=False, cull_backfaces=False):
    """A shaded image of a triangle mesh through a pinhole camera.

    verts (V, 3) camera coordinates (x right, y down, z forward), faces (F, 3), K (3, 3),
    image_size int or (H, W). color (3,) or per-vertex (V, 3) albedo in [0, 1]; light (3,) the
    direction from the surface towards the light in camera coordinates (the default lights from
    the upper left, on the camera's side); ambient in [0, 1] the unlit share; background
    (3, H, W) in [0, 1] or None for black; cull_backfaces as in `rasterize` (about twice as fast
    for closed meshes). Returns image (3, H, W) float32 in [0, 1], and with return_mask=True
    also mask (H, W) bool, True where the mesh covers the pixel. `render_meshes` draws a batch.

    Shading is Lambert + ambient with per-vertex normals, interpolated over faces (Gouraud):
        I = albedo * (ambient + (1 - ambient) * max(0, n . light))
    Normals are turned towards the camera first, so either winding (and mirrored meshes) shade
    the same.
    """
    background = None if background is None else background[None]
    images, pix, _ = render_batch(verts[None], faces, K[None], image_size, torch.as_tensor(color)[None],
                             torch.as_tensor(light)[None], torch.as_tensor(ambient)[None], background, cull_backfaces)
    if return_mask:
        mask = torch.zeros(images[0, 0].numel(), dtype=torch.bool, device=images.device)
        mask[pix] = True
        return images[0], mask.view(images.shape[-2:])
    return images[0]


def render_meshes(verts, faces, K, image_size, color, light, ambient, background=None, cull_backfaces=False,
                  mirrored=None):
    """`render_mesh` for a batch of B meshes with one topology, in one pass (several times faster
    per image on a CPU than one by one: the work is the same, the per-call overheads are shared).

    verts (B, V, 3), faces (F, 3), K (B, 3, 3), color (B, 3) or (B, V, 3), light (B, 3),
    ambient (B,), background (B, 3, H, W) or None; mirrored (B,) bool marks meshes mirrored
    (x -> -x) from their faces' winding, for cull_backfaces. Returns images (B, 3, H, W).
    """
    return render_batch(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored)[0]


def render_batch(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored=None,
                 draw_on_background=False, zbuffer=None):
    """`render_meshes`, also returning pix (P,) the covered pixels as ids into the (B, H, W) stack
    and face (P,) their faces as ids into the B F faces (mesh-major). draw_on_background=True
    draws into background (contiguous float32 on verts' device, which the caller gives up) instead
    of into a copy of it; zbuffer: a scratch buffer (`scratch_zbuffer`)."""
    height, width = image_hw(image_size)
    B, V = verts.shape[:2]
    device = verts.device
    verts, faces = verts.float(), faces.long().to(device)
    # 1. per-vertex colour: albedo times the Lambert term, axis-major (3, B V) so rows are contiguous
    xyz = verts.reshape(-1, 3).T  # (3, B V)
    normals = vertex_normals(verts, faces).permute(2, 0, 1)  # (3, B, V), a view of an axis-major sum
    light = F.normalize(torch.as_tensor(light, dtype=torch.float32, device=device), dim=-1).T[:, :, None]  # (3, B, 1)
    ambient = torch.as_tensor(ambient, dtype=torch.float32, device=device).reshape(B, 1)
    albedo = torch.as_tensor(color, dtype=torch.float32, device=device).reshape(B, -1, 3)  # (B, V or 1, 3)
    albedo = albedo.permute(2, 0, 1)  # (3, B, V or 1)
    # normals turned towards the camera (n . x < 0), so either winding shades the same
    lambert = (normals * light).sum(0) * torch.where((normals * xyz.reshape(3, B, V)).sum(0) > 0, -1.0, 1.0)
    shaded = (albedo * (ambient + (1 - ambient) * lambert.clamp_min_(0))).reshape(3, B * V)
    # 2. visible faces; colour is linear over a face: c = c_0 + (sum_i a_i c_i) du + (sum_i b_i c_i) dv
    pix, face, du, dv, (keep, corners, a, b) = _rasterize(verts, faces, K.float().to(device), height, width,
                                                          cull_backfaces, mirrored, zbuffer)
    corner = shaded.index_select(1, corners.reshape(-1)).view(3, 3, -1)  # (3 channels, 3 corners, Fk)
    plane = torch.cat([corner[:, 0], (a * corner).sum(1), (b * corner).sum(1)])  # (9, Fk)
    plane = plane.index_select(1, face)  # (9, P)
    rgb = (plane[0:3] + plane[3:6] * du + plane[6:9] * dv).clamp_(0, 1)  # (3, P)
    # 3. composite over the backgrounds: pixel g = b H W + p of channel c sits at (3 b + c) H W + p
    if background is None:
        images = torch.zeros(B, 3, height, width, device=device)
    elif draw_on_background:
        images = background.view(B, 3, height, width)  # the caller's scratch tensor, drawn into
    else:
        images = background.to(device, torch.float32, copy=True).reshape(B, 3, height, width)
    HW = height * width
    at = pix + 2 * HW * torch.div(pix, HW, rounding_mode="floor")  # channel 0 of each covered pixel
    for c in range(3):  # channel c of those pixels: the same ids into the flat images shifted by c H W
        images.view(-1)[c * HW:].index_copy_(0, at, rgb[c])
    return images, pix, keep.index_select(0, face)
