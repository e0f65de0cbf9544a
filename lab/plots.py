"""Pictures: a mesh from three views, skeletons, a demo's picture, sample grids and the trainer's predictions.

All of the project's drawing, with matplotlib's object API (a `Figure` never attached to pyplot, so
nothing leaks between calls and no display is needed); meshes over images are drawn by lab/render.py.
Images are (3, H, W) in [0, 1] in data.py's pixel convention (pixel (i, j) covers [j, j + 1) x [i, i + 1)).

Map of the file:
1. Meshes and skeletons: `plot_mesh_views`, `draw_skeleton`, `bone_colors`, `draw_demo` (demo.py's picture)
2. Images: `show_image`, `overlay_mesh`, `draw_samples`; the trainer's pictures (train.py's MODELS):
   `draw_hand_predictions`, `draw_body_predictions`, `draw_pose_reconstructions`, `draw_wholebody_predictions`
"""

import math

import numpy as np
import torch

import bodymodels
from bodymodels import FREIHAND_PARENTS
from data import body_model
from lab.files import atomic_write
from lab.render import render_mesh

# ---------------------------------------------------------------------------------------------
# 1. Meshes and skeletons


# Each view: rows = screen right, screen up, towards the viewer, in model coordinates (y up,
# the body faces +z). For OpenCV camera coordinates (y down) pass verts * [1, -1, -1].
_VIEWS = {"front": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
          "side": ((0, 0, -1), (0, 1, 0), (1, 0, 0)),
          "top": ((1, 0, 0), (0, 0, -1), (0, 1, 0))}


def to_numpy(x):
    """A tensor (any device, with or without grad) or array-like -> a numpy array."""
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_mesh_views(verts, faces, joints=None, parents=None, title=None):
    """A mesh from the front, the side and the top, with its joints and kinematic tree.

    verts (V, 3), faces (F, 3), joints (J, 3), parents (J,) with -1 for the root; tensors or
    arrays. Faces are drawn as 2D polygons sorted far to near (painter's algorithm) with Lambert
    shading from a light at the viewer, which stays fast for SMPL-X's 20k faces.
    Returns a matplotlib Figure (not attached to pyplot, so nothing leaks between calls).
    """
    from matplotlib.figure import Figure

    verts, faces = to_numpy(verts).astype(np.float64), to_numpy(faces).astype(np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"plot_mesh_views: expected verts (V, 3) and faces (F, 3), "
                         f"got {verts.shape} and {faces.shape}")
    joints = None if joints is None else to_numpy(joints).astype(np.float64).reshape(-1, 3)
    if parents is not None and (joints is None or len(parents) != len(joints)):
        raise ValueError(f"plot_mesh_views: parents needs one entry per joint, got {len(parents)} "
                         f"parents for {0 if joints is None else len(joints)} joints")
    centre = (verts.max(0) + verts.min(0)) / 2
    radius = 0.55 * (verts.max(0) - verts.min(0)).max()

    fig = Figure(figsize=(12, 4.3), layout="constrained")
    for ax, (name, rows) in zip(fig.subplots(1, 3), _VIEWS.items()):
        M = np.array(rows, dtype=np.float64)
        tri = ((verts - centre) @ M.T)[faces]  # (F, 3 corners, [right, up, towards viewer])
        # 1. faces far to near, shaded with the light at the viewer (`_paint`)
        _paint(ax, tri[..., :2], -tri[..., 2], MESH_COLORS[0], normal_z=_lambert_to_viewer(tri))
        # 2. joints and bones on top
        if joints is not None:
            q = (joints - centre) @ M.T  # (J, 3)
            draw_skeleton(ax, q[:, :2], parents, color="crimson", linewidth=1.5, size=10, dots=None)
        ax.set(xlim=(-radius, radius), ylim=(-radius, radius), aspect="equal", title=name,
               xticks=[], yticks=[])
    if title:
        fig.suptitle(title)
    return fig


FINGER_COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd")  # thumb, index, middle, ring, pinky


def bone_colors(parents):
    """A colour per bone (bone j joins joint j to its parent): a FreiHAND hand's five fingers get
    FINGER_COLORS, any other tree blue for the body's left side (SMPL / SMPL-X names) and red for the rest."""
    if tuple(parents) == FREIHAND_PARENTS:
        return [FINGER_COLORS[(j - 1) // 4] if j > 0 else "w" for j in range(21)]
    left = {j for j, name in enumerate(bodymodels.SMPLX_JOINT_NAMES) if name.startswith("left")}
    return ["#1f77b4" if j in left else "#d62728" for j in range(len(parents))]


def draw_skeleton(ax, points, parents, color="crimson", label=None, linewidth=1.3, size=5, dots="white", zorder=3):
    """Draw a skeleton on a matplotlib axis: the bones as one LineCollection, then the joints.

    points (J, 2) tensor or array (pixels for an image drawn with imshow); parents (J,), -1 for a
    root, or None for joints alone; color: one colour for everything, J colours (one per bone), or
    "bones" for `bone_colors(parents)`; label: the bones' legend entry; dots: the joints' face
    colour (None: the bones' colour), edged in black when given. Returns the LineCollection (or None).
    """
    from matplotlib.collections import LineCollection

    points = to_numpy(points).astype(np.float64).reshape(-1, 2)
    colors = bone_colors(parents) if isinstance(color, str) and color == "bones" else color
    bones = None
    if parents is not None:
        pairs = [(j, p) for j, p in enumerate(parents) if p >= 0]
        per_bone = colors if not isinstance(colors, str) else [colors] * len(parents)
        bones = LineCollection([points[[p, j]] for j, p in pairs], colors=[per_bone[j] for j, _ in pairs],
                               linewidths=linewidth, zorder=zorder, label=label)
        ax.add_collection(bones)
    face = dots if dots is not None else (colors if isinstance(colors, str) else "black")
    edges = dict(edgecolors="black", linewidths=0.3) if dots is not None else {}
    ax.scatter(points[:, 0], points[:, 1], s=size, c=face, zorder=zorder + 1, **edges)
    return bones


def _paint(ax, tri, depth, color, **kwargs):
    """Triangles tri (F, 3, 2) on a matplotlib axis, far first (painter's algorithm), shaded by
    Lambert's law with the light at the viewer; depth (F, 3) per corner (larger = farther) and the
    triangles' 3D corners give the shading through kwargs["normal_z"] (F,) in [0, 1]."""
    from matplotlib.collections import PolyCollection

    order = np.argsort(-depth.mean(1))
    colors = np.asarray(color)[None] * (0.25 + 0.75 * kwargs.pop("normal_z")[order, None])
    ax.add_collection(PolyCollection(tri[order], facecolors=colors, edgecolors=colors, linewidths=0.2, **kwargs))


def _lambert_to_viewer(corners):
    """|cos| between each triangle's normal and the viewing axis (z): corners (F, 3, 3) -> (F,)."""
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return np.abs(normal[:, 2]) / np.maximum(np.linalg.norm(normal, axis=1), 1e-20)


MESH_COLORS = ((0.62, 0.72, 0.85), (0.90, 0.62, 0.45), (0.55, 0.80, 0.55))


def draw_demo(path, image, meshes, K, keypoints=None):
    """Save a PNG: the image, the meshes drawn over it through the camera K (3, 3) (pixels), and the
    meshes from the side (turned 90 degrees about the vertical axis through their centre).
    meshes: [(name, verts (V, 3) camera frame, faces (F, 3))]; keypoints (N, 2) pixels, or None."""
    from matplotlib.figure import Figure

    img = to_numpy(image.permute(1, 2, 0)).clip(0, 1)
    H, W = img.shape[:2]
    fig = Figure(figsize=(12, 4.4 * max(H / W, 0.5)), layout="constrained")
    ax_in, ax_over, ax_side = fig.subplots(1, 3)
    for ax in (ax_in, ax_over):
        ax.imshow(img, extent=(0, W, H, 0))
        ax.set(xlim=(0, W), ylim=(H, 0))
        ax.set_axis_off()
    if keypoints is not None:
        ax_in.scatter(*to_numpy(keypoints)[:, :2].T, s=6, c="red")
    K = to_numpy(K).astype(np.float64)
    arrays = [(to_numpy(v).astype(np.float64), to_numpy(f).astype(np.int64)) for _, v, f in meshes]
    centre = np.concatenate([v for v, _ in arrays]).mean(0)
    turn = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # seen from the camera's right
    for k, (v, f) in enumerate(arrays):
        uvw = v @ K.T
        uv = uvw[:, :2] / uvw[:, 2:]
        _paint(ax_over, uv[f], v[f][..., 2], MESH_COLORS[k % 3], normal_z=_lambert_to_viewer(v[f]))
        s = (v - centre) @ turn.T
        _paint(ax_side, s[f][..., :2], s[f][..., 2], MESH_COLORS[k % 3], normal_z=_lambert_to_viewer(s[f]))
    side = np.concatenate([(v - centre) @ turn.T for v, _ in arrays])
    r = 0.55 * (side.max(0) - side.min(0))[:2].max()
    ax_side.set(xlim=(-r, r), ylim=(r, -r), aspect="equal", xticks=[], yticks=[])
    ax_in.set_title("input", fontsize=9)
    ax_over.set_title("predicted mesh", fontsize=9)
    ax_side.set_title("side view (from the right)", fontsize=9)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


# ---------------------------------------------------------------------------------------------
# 2. Images and the trainer's pictures


def show_image(ax, image):
    """Show an image (3, H, W) in [0, 1] on a matplotlib axis in pixel coordinates (pixel (i, j)
    covers [j, j + 1) x [i, i + 1), data.py's convention), without axes."""
    height, width = image.shape[-2:]
    ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, width, height, 0))
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.set_axis_off()


def overlay_mesh(image, verts, faces, K, color, alpha=0.7):
    """image (3, H, W) with the mesh verts (V, 3) (camera coordinates), faces (F, 3), seen through
    K (3, 3), rendered in `color` (3,) and blended in at opacity alpha. -> (3, H, W)."""
    rendered, mask = render_mesh(verts.float(), faces, K.float(), tuple(image.shape[-2:]), color=color,
                                 return_mask=True)
    return torch.where(mask, alpha * rendered + (1 - alpha) * image, image)


def draw_hand_predictions(path, eval_set, pred, gt, count=6):
    """Save a PNG of `count` held-out hands: per column, the image with the true (green) and
    predicted (red) 2D skeletons; the true mesh over the image; the predicted mesh over it.

    pred: joints2d (N, 21, 2) pixels, joints3d (N, 21, 3), verts (N, 778, 3); gt: the hand keys
    (K, joints2d, joints3d, verts) of eval_set's first N samples. The predicted 3D may be
    root-relative, so its mesh is moved to where its joints' centroid is the true joints' centroid.
    """
    from matplotlib.figure import Figure

    count = min(count, len(eval_set))
    faces = torch.as_tensor(np.asarray(body_model("mano").faces, dtype=np.int64))
    fig = Figure(figsize=(2.2 * count, 6.9), layout="constrained")
    axes = fig.subplots(3, count, squeeze=False)
    for i in range(count):
        image, K = eval_set[i]["image"], gt["K"][i]
        show_image(axes[0, i], image)
        draw_skeleton(axes[0, i], gt["joints2d"][i], FREIHAND_PARENTS, color="lime", size=4, dots=None)
        draw_skeleton(axes[0, i], pred["joints2d"][i], FREIHAND_PARENTS, color="red", size=4, dots=None)
        show_image(axes[1, i], overlay_mesh(image, gt["verts"][i], faces, K, color=(0.35, 0.9, 0.35)))
        placed = pred["verts"][i] - pred["joints3d"][i].mean(0) + gt["joints3d"][i].mean(0)
        show_image(axes[2, i], overlay_mesh(image, placed, faces, K, color=(0.95, 0.35, 0.3)))
    titles = ("2D joints: green truth, red predicted", "true mesh",
              "predicted mesh, moved to the true joints' centroid")
    for row, title in enumerate(titles):
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def _faces(kind):
    return torch.as_tensor(np.asarray(body_model(kind).faces, dtype=np.int64))


def draw_wholebody_predictions(path, eval_set, pred, gt, count=6):
    """Save a PNG of `count` held-out people with an occluded hand (HMR-Adapter): per column the
    image with the true hand boxes (green, the occluded one dashed) and the predicted ones (red);
    the SMPL-X mesh of each pipeline present (pred["pipe_P_verts"], camera coordinates; P baseline,
    adapted) over it; and the same two zoomed on the occluded hand."""
    from matplotlib.figure import Figure

    occluded = torch.stack([gt["left_hand_occluded"], gt["right_hand_occluded"]], 1) > 0.5  # (N, 2)
    chosen = (torch.nonzero(occluded.any(1))[:, 0].tolist() + list(range(len(occluded))))[:min(count, len(occluded))]
    runs = [name for name in ("baseline", "adapted", "constant") if f"pipe_{name}_verts" in pred]
    colors = {"baseline": (0.95, 0.55, 0.2), "adapted": (0.3, 0.5, 0.95), "constant": (0.6, 0.6, 0.6)}
    faces = _faces("smplx")
    height, width = eval_set[0]["image"].shape[-2:]
    rows = 1 + 2 * len(runs)
    fig = Figure(figsize=(1.7 * len(chosen) * width / height + 0.4, 1.8 * rows), layout="constrained")
    axes = fig.subplots(rows, len(chosen), squeeze=False)
    for col, i in enumerate(chosen):
        image = eval_set[i]["image"]
        show_image(axes[0, col], image)
        side = int(occluded[i].float().argmax())  # the occluded hand (0 left, 1 right)
        for s, name in enumerate(("left", "right")):
            x0, y0, x1, y1 = gt[f"{name}_hand_box"][i].tolist()
            axes[0, col].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="lime", lw=1,
                              ls="--" if occluded[i, s] else "-")
            if runs:
                box_key = f"pipe_{runs[0]}_boxes"
                x0, y0, x1, y1 = pred[box_key][i, s].tolist() if box_key in pred else (0,) * 4
                axes[0, col].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="red", lw=0.8)
        box = gt[f"{('left', 'right')[side]}_hand_box"][i]
        centre, half = (box[:2] + box[2:]) / 2, float(box[2] - box[0])
        for r, name in enumerate(runs):
            shown = overlay_mesh(image, pred[f"pipe_{name}_verts"][i], faces, gt["K"][i], color=colors[name])
            show_image(axes[1 + r, col], shown)
            zoom = axes[1 + len(runs) + r, col]
            show_image(zoom, shown)
            zoom.set_xlim(float(centre[0]) - half, float(centre[0]) + half)
            zoom.set_ylim(float(centre[1]) + half, float(centre[1]) - half)
    axes[0, 0].set_title("hand boxes: green true (dashed: occluded), red predicted", fontsize=8, loc="left")
    for r, name in enumerate(runs):
        axes[1 + r, 0].set_title(f"{name} pipeline", fontsize=8, loc="left")
        axes[1 + len(runs) + r, 0].set_title(f"{name}, the occluded hand", fontsize=8, loc="left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path


def draw_body_predictions(path, eval_set, pred, gt, count=6, prefix=""):
    """Save a PNG of `count` held-out people: per column the image, the true mesh over it, the
    predicted mesh (pred[prefix + "verts"], camera coordinates) and, when present, the refined one
    (pred["refined_verts"]); gt: K and verts of eval_set's samples."""
    from matplotlib.figure import Figure

    count, faces = min(count, len(eval_set)), _faces("smpl")
    rows = [("image", None, None), ("true mesh", "verts", (0.35, 0.9, 0.35)),
            ("predicted", prefix + "verts", (0.95, 0.35, 0.3)),
            ("refined with 2D keypoints", "refined_verts", (0.3, 0.5, 0.95))]
    rows = [r for r in rows if r[0] in ("image", "true mesh") or r[1] in pred]
    height, width = eval_set[0]["image"].shape[-2:]
    fig = Figure(figsize=(1.6 * count * width / height + 0.4, 1.7 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for i in range(count):
        image = eval_set[i]["image"]
        for r, (title, key, color) in enumerate(rows):
            verts = gt["verts"][i] if title == "true mesh" else pred[key][i] if key else None
            show_image(axes[r, i], image if key is None else overlay_mesh(image, verts, faces, gt["K"][i], color))
            if i == 0:
                axes[r, 0].set_title(title, fontsize=8, loc="left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


def draw_pose_reconstructions(path, eval_set, pred, gt, count=8):
    """Save a PNG of `count` held-out poses: the true SMPL mesh (green) and the reconstruction
    (red, pred["verts"]) overlaid, seen from the front and from the side. No translation needed:
    each mesh is centred on its own pelvis (joints3d[0])."""
    from matplotlib.figure import Figure

    count, faces, size = min(count, len(gt["verts"])), _faces("smpl"), 160
    K = torch.tensor([[220.0, 0, size / 2], [0, 220.0, size / 2], [0, 0, 1]])
    views = {"front": torch.eye(3), "side": bodymodels.axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))}
    fig = Figure(figsize=(1.5 * count, 3.3), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for i in range(count):
        for r, (view, R) in enumerate(views.items()):
            image = torch.ones(3, size, size)
            for key, source, color in (("verts", gt, (0.35, 0.9, 0.35)), ("verts", pred, (0.95, 0.35, 0.3))):
                centred = (source[key][i] - source["joints3d"][i][0]) @ R.T + torch.tensor([0.0, 0.0, 3.2])
                image = overlay_mesh(image, centred, faces, K, color, alpha=0.55)
            show_image(axes[r, i], image)
            if i == 0:
                axes[r, 0].set_title(f"{view}: true green, reconstructed red", fontsize=8, loc="left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def draw_token_prior(path, eval_set, pred, gt, count=8):
    """Save a PNG of GenHMR's pose prior (genhmr_experiments.PriorStage.predict): `count` held-out poses, true (green)
    and with a quarter of their tokens filled in by the prior (red, pred["prior_verts"]), front and side; below, poses
    the prior drew from an all-[MASK] start with no image (blue, pred["prior_generated_verts"]), front and side."""
    from matplotlib.figure import Figure

    count, faces, size = min(count, len(gt["verts"])), _faces("smpl"), 160
    K = torch.tensor([[220.0, 0, size / 2], [0, 220.0, size / 2], [0, 0, 1]])
    views = {"front": torch.eye(3), "side": bodymodels.axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))}
    green, red, blue = (0.35, 0.9, 0.35), (0.95, 0.35, 0.3), (0.3, 0.45, 0.95)
    rows = [(f"{view}: true green, a quarter of its tokens filled by the prior red", R,
             [(gt["verts"][i] - gt["joints3d"][i][0], green) for i in range(count)],
             [(pred["prior_verts"][i] - pred["prior_joints3d"][i][0], red) for i in range(count)])
            for view, R in views.items()]
    rows += [(f"{view}: drawn by UGS from all [MASK], no image", R,
              [(pred["prior_generated_verts"][i], blue) for i in range(count)], [None] * count)
             for view, R in views.items()]
    fig = Figure(figsize=(1.5 * count, 6.4), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for r, (title, R, first, second) in enumerate(rows):
        for i in range(count):
            image = torch.ones(3, size, size)
            for layer in (first[i], second[i]):
                if layer is not None:
                    image = overlay_mesh(image, layer[0] @ R.T + torch.tensor([0.0, 0.0, 3.2]), faces, K, layer[1],
                                         alpha=0.55)
            show_image(axes[r, i], image)
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def draw_samples(samples, parents, path, titles=None, columns=4, joints_key="joints2d", boxes_keys=()):
    """Save a grid of sample images with their 2D joints and bones drawn on top (a PNG at path).

    samples: dicts with image (3, H, W) and joints_key (J, 2) pixels; parents (J,) the tree to draw;
    boxes_keys: keys of (4,) boxes [x0, y0, x1, y1] in pixels to outline (e.g. hand boxes).
    """
    from matplotlib.figure import Figure

    rows = math.ceil(len(samples) / columns)
    fig = Figure(figsize=(2.6 * columns, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(samples):
            continue
        sample = samples[i]
        show_image(ax, sample["image"])
        draw_skeleton(ax, sample[joints_key], parents, color="bones")
        for key in boxes_keys:
            x0, y0, x1, y1 = sample[key].tolist()
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="yellow", linewidth=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    return path
