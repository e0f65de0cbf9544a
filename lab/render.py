"""The renderer: Lambert shading of triangle meshes through pinhole cameras, in plain PyTorch, over data.py's z-buffer.

What draws the synthetic samples' images (lab/synthetic.py) and what draws meshes over pictures (lab/plots.py). The
z-buffer itself (`data.rasterize`, `data.rasterize_batch`: which face a pixel shows) is data.py's, since a whole
body's hand visibility is defined by it for real people too. Conventions are bodymodels.py's: camera coordinates x
right, y down, z forward; pixel (row i, column j) covers [j, j+1) x [i, i+1), its centre (j + 0.5, i + 0.5).

Map of the file: 1. the brute-force `reference_rasterize` that data.py's z-buffer is tested against; 2. shading:
mesh normals (`face_normals`, `vertex_normals`), then `render_mesh`, `render_meshes`, `render_batch`.
"""

import torch
import torch.nn.functional as F

# data.py's z-buffer (rasterize and scratch_zbuffer are importable from here too, beside the shading)
from data import image_hw, rasterize, rasterize_batch, scratch_zbuffer  # noqa: F401


# ---------------------------------------------------------------------------------------------
# 1. The z-buffer's oracle


def reference_rasterize(verts, faces, K, image_size):
    """The z-buffer written the short way, to check `data.rasterize` against: every pixel centre tested
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


def render_mesh(verts, faces, K, image_size, color=(0.85, 0.64, 0.52), light=(0.4, -0.6, -1.0),
                ambient=0.35, background=None, return_mask=False, cull_backfaces=False):
    """A shaded image of a triangle mesh through a pinhole camera.

    verts (V, 3) camera coordinates (x right, y down, z forward), faces (F, 3), K (3, 3),
    image_size int or (H, W). color (3,) or per-vertex (V, 3) albedo in [0, 1]; light (3,) the
    direction from the surface towards the light in camera coordinates (the default lights from
    the upper left, on the camera's side); ambient in [0, 1] the unlit share; background
    (3, H, W) in [0, 1] or None for black; cull_backfaces as in `data.rasterize` (about twice as fast
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
    of into a copy of it; zbuffer: a scratch buffer (`data.scratch_zbuffer`)."""
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
    pix, face, du, dv, (keep, corners, a, b) = rasterize_batch(verts, faces, K.float().to(device), height, width,
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
