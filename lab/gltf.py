"""Animations out: a sequence of MANO, SMPL or SMPL-X parameters as a skinned, animated glTF 2.0 binary (.glb), the
format three.js, Blender, Unity and Godot import.

What the file holds (`write_animation`), following the glTF 2.0 specification (Khronos, sections 3.7.3 "Skins" and
3.11 "Animations"):
- the rest mesh at the sequence's shape, v_shaped = T + S beta (bodymodels' step 1; SMPL-X's expression too), with
  its faces and vertex normals;
- the skeleton as nodes, one per joint, each at its rest offset J_j - J_parent from J = J_reg v_shaped (step 2);
- skin weights: the 4 largest of the model's lbs_weights per vertex, renormalised to sum to 1 (JOINTS_0 and
  WEIGHTS_0, the one set of 4 influences every viewer reads);
- inverse bind matrices, the inverse of each joint's world transform in the rest pose;
- one animation: a rotation channel per joint (the pose's local rotations R_j as quaternions) and the root joint's
  translation channel (J_0 + transl), one keyframe per frame at t = k / fps, linear interpolation (slerp);
- with correctives=True, the pose correctives as morph targets: the model's step 3 is
  v_posed = v_shaped + P vec(R_j - I, j > 0), linear in the pose feature vec(R_j - I), so one target per
  feature (P's rows: 135 for MANO, 207 for SMPL, 486 for SMPL-X) with per-frame weights equal to the feature
  reproduces it exactly. Without them a viewer shows the mesh without step 3.

Frames. The models' poses here live in OpenCV-like camera coordinates (x right, y down, z forward: bodymodels'
conventions), while glTF is right-handed with +Y up and metres. A node above the skeleton, "y_up", turns the
model's frame into glTF's by a rotation of 180 degrees about x, C = diag(1, -1, -1); the mesh is stored in glTF's
frame (C v) and the inverse bind matrices are those of the joints under that node, so a viewer that ignores the
skin shows the same rest mesh, and an OpenCV camera at the origin is glTF's (and three.js's) default camera.

`skin_frames` is the glTF's own linear blend skinning, read back from the file: what a viewer draws, for measuring
what 4 influences cost (`python -m lab.gltf measure`, docs/reference.md, "Animation export (glTF)"). `validate` runs
Khronos' glTF-Validator and `viewer_silhouette` draws a frame with three.js's GLTFLoader in headless Chromium, both
from the npm packages that lab/gltf_check/package.json pins (`npm ci` there; Chromium: Debian's package).

Map of the file: 1. the model's arrays at a shape (`rest_rig`) and its own mesh (`model_vertices`); 2. writing
(`write_animation`); 3. reading back (`skin_frames`, `read_accessor`); 4. the external checks (`validate`,
`viewer_silhouette`); 5. the command line (`measure`, `check`).
"""

import argparse
import base64
import copy
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import torch

import bodymodels
from bodymodels import MANO_JOINT_NAMES, SMPL_JOINT_NAMES, SMPLX_JOINT_NAMES
from data import body_model, skinning
from lab.files import atomic_write
from lab.render import render_mesh, vertex_normals
from lab.smoothing import continuous_quaternions, quaternion_from_rotvec, quaternion_to_rotvec

KINDS = ("mano", "smpl", "smplx")
JOINT_NAMES = {"mano": MANO_JOINT_NAMES, "smpl": SMPL_JOINT_NAMES, "smplx": SMPLX_JOINT_NAMES}
INFLUENCES = 4  # joints per vertex in JOINTS_0 / WEIGHTS_0
Y_UP = np.diag([1.0, -1.0, -1.0])  # C: the model's (OpenCV-like) frame -> glTF's +Y up, 180 degrees about x
CHECK_DIR = Path(__file__).parent / "gltf_check"  # the npm packages of `validate` and `viewer_silhouette`

# glTF's enumerations (specification, section 5)
_FLOAT, _UNSIGNED_BYTE, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_DTYPES = {_FLOAT: np.float32, _UNSIGNED_BYTE: np.uint8, _UNSIGNED_SHORT: np.uint16, _UNSIGNED_INT: np.uint32,
           5120: np.int8, 5122: np.int16}


# ---------------------------------------------------------------------------------------------
# 1. The model at a shape


@functools.lru_cache(maxsize=None)
def _model64(kind, model_dir):
    """data.py's smplx model copied into float64 (the oracle of `model_vertices`), once per process."""
    return copy.deepcopy(body_model(kind, model_dir)).double()


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _coefficients(model, kind, betas, expression):
    """The shape coefficients Skinning's shapedirs take: betas zero-padded to the model's count, then (SMPL-X) the
    expression's. float64 (L,)."""
    def padded(x, n, what):
        x = np.zeros(0) if x is None else np.asarray(x, dtype=np.float64).reshape(-1)
        if len(x) > n:
            raise ValueError(f"{what}: {len(x)} coefficients given, the {kind} model has {n}")
        return np.concatenate([x, np.zeros(n - len(x))])
    if kind != "smplx" and expression is not None:
        raise ValueError(f"expression: only SMPL-X has expression coefficients, not {kind}")
    coeffs = [padded(betas, model.num_betas, "betas")]
    if kind == "smplx":
        coeffs.append(padded(expression, model.num_expression_coeffs, "expression"))
    return np.concatenate(coeffs)


def rest_rig(kind, betas, expression=None, model_dir=None):
    """What the file's rest pose is made of, float64 numpy in the model's frame (the models and their buffers are
    data.py's, loaded once per process): a dict with
    v_shaped (V, 3) = T + S beta (step 1 of bodymodels' skinning), joints (J, 3) = J_reg v_shaped (step 2),
    parents (J,), faces (F, 3), lbs_weights (V, J), posedirs (P, V, 3) (step 3's P, one (V, 3) offset per
    pose feature) and pose_mean (J, 3) (zero for the loaders' flat mean hand), from the smplx model of
    bodymodels' loaders (model_dir: real model files; None: $HMR_BODY_MODELS, else the stand-ins)."""
    _check_kind(kind)
    model, skin = body_model(kind, model_dir), skinning(kind, model_dir, torch.float64)
    coeffs = torch.from_numpy(_coefficients(model, kind, betas, expression))
    v_shaped = skin.v_template + torch.einsum("vkl,l->vk", skin.shapedirs, coeffs)
    J = len(skin.parents)
    return {"v_shaped": v_shaped.numpy(), "joints": (skin.J_regressor @ v_shaped).numpy(),
            "parents": np.array(skin.parents), "faces": np.asarray(model.faces, dtype=np.int64),
            "lbs_weights": skin.lbs_weights.numpy(), "posedirs": skin.posedirs.reshape(-1, len(v_shaped), 3).numpy(),
            "pose_mean": np.broadcast_to(skin.pose_mean.numpy(), (3 * J,)).reshape(J, 3)}


def model_vertices(kind, betas, poses, transl, expression=None, model_dir=None):
    """The smplx model's own mesh of each frame, (T, V, 3) float64 numpy in the model's frame (metres): its
    forward with global_orient, body_pose / hand_pose (SMPL-X: jaw, eyes and both hands from the full pose),
    betas, expression and transl, in float64. The oracle `skin_frames` is measured against."""
    _check_kind(kind)
    model = _model64(kind, model_dir)
    poses = torch.as_tensor(np.asarray(poses), dtype=torch.float64)
    T = len(poses)
    coeffs = torch.from_numpy(_coefficients(model, kind, betas, expression))
    betas = coeffs[:model.num_betas].expand(T, -1)
    args = dict(betas=betas, global_orient=poses[:, 0], transl=torch.as_tensor(np.asarray(transl), dtype=torch.float64))
    if kind == "mano":
        args.update(hand_pose=poses[:, 1:].flatten(1))
    elif kind == "smpl":
        args.update(body_pose=poses[:, 1:].flatten(1))
    else:
        args.update(body_pose=poses[:, 1:22].flatten(1), jaw_pose=poses[:, 22], leye_pose=poses[:, 23],
                    reye_pose=poses[:, 24], left_hand_pose=poses[:, 25:40].flatten(1),
                    right_hand_pose=poses[:, 40:55].flatten(1), expression=coeffs[model.num_betas:].expand(T, -1))
    with torch.no_grad():
        return model(**args).vertices.numpy()


# ---------------------------------------------------------------------------------------------
# 2. Writing


def _quaternion_to_matrix(q):
    """Rotation matrices (..., 3, 3) of quaternions (..., 4) in glTF's order (x, y, z, w), normalised first."""
    q = torch.as_tensor(np.asarray(q, dtype=np.float64))
    q = (q / q.norm(dim=-1, keepdim=True))[..., [3, 0, 1, 2]]  # (w, x, y, z), lab.smoothing's order
    return bodymodels.axis_angle_to_matrix(quaternion_to_rotvec(q)).numpy()


def top_influences(lbs_weights, k=INFLUENCES):
    """The k largest weights per vertex and their joints: weights (V, k) float32 summing to 1 as closely as float32
    allows (the largest takes 1 minus the others' sum, so glTF-Validator's normalisation check passes), joints
    (V, k) int. An unused slot holds joint 0 at weight 0."""
    order = np.argsort(-lbs_weights, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(lbs_weights, order, 1).clip(0, None)
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)
    w[:, 0] = (1.0 - w[:, 1:].astype(np.float64).sum(1)).astype(np.float32)
    return w, np.where(w > 0, order, 0)


class _Binary:
    """The GLB's one buffer, built view by view (each 4-byte aligned), and the accessors onto it."""

    def __init__(self, gltf):
        self.gltf, self.chunks, self.size = gltf, [], 0

    def add(self, array, kind, component, target=None, bounds=False):
        """Append array (count, ...) as one bufferView and accessor of `kind` ("VEC3", "MAT4", ...) and
        `component` type; bounds=True writes min and max (required for positions and animation inputs)."""
        from pygltflib import Accessor, BufferView
        data = np.ascontiguousarray(array, dtype=_DTYPES[component])
        flat = data.reshape(len(data), -1)
        raw = data.tobytes()
        self.gltf.bufferViews.append(BufferView(buffer=0, byteOffset=self.size, byteLength=len(raw), target=target))
        padding = -len(raw) % 4
        self.chunks += [raw, b"\0" * padding]
        self.size += len(raw) + padding
        accessor = Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=len(data),
                            type=kind)
        if bounds:
            accessor.min, accessor.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    def blob(self):
        return b"".join(self.chunks)


def write_animation(path, kind, betas, poses, transl, fps, correctives=False, model_dir=None, expression=None):
    """Write a sequence of one body model's parameters as a skinned, animated glTF 2.0 binary (.glb) at `path`.

    kind: "mano" (a right MANO hand), "smpl" or "smplx". betas (S,): the sequence's one shape (zero-padded to the
    model's count); poses (T, J, 3): axis-angle, the model's full pose in its own joint order, global orientation
    first (MANO 16 = global_orient + 15 finger joints; SMPL 24; SMPL-X 55); transl (T, 3): metres, the model's
    transl argument (its mesh is the posed mesh + transl); fps: frames per second (frame k plays at k / fps);
    correctives: add the pose correctives as morph targets (exact; the file grows by P V 12 bytes: 1.3 MB for
    MANO, 17.1 MB for SMPL, 61.1 MB for SMPL-X); model_dir: a folder of real model files in smplx's layout (None:
    $HMR_BODY_MODELS, else the stand-ins); expression (E,): SMPL-X's expression coefficients.

    Frames: the parameters are read in the model's frame, OpenCV-like in this project's demo (x right, y down,
    z forward from the camera); the node "y_up" above the skeleton turns it into glTF's +Y up by a rotation of
    180 degrees about x, so a camera at the origin looking down -z (glTF's default) sees what the OpenCV camera saw.
    Left hands: a MANO file always holds the right hand. This project's left-hand parameters (data.py: those of
    the right hand whose mirror image x -> -x is the left hand, HaMeR's convention) give that right hand; the
    caller mirrors it where it is shown (a scale of -1 on x above the scene), since a mirror inside a skinned
    glTF turns the mesh's winding inside out in viewers that judge it from the mesh node.

    The file (nodes: 0 the mesh, 1 "y_up", 2 + j joint j, named as bodymodels' joint names) is written whole
    (`lab.files.atomic_write`): a failed write leaves no file, or the previous one. Returns path.
    """
    from pygltflib import (GLTF2, Animation, AnimationChannel, AnimationChannelTarget, AnimationSampler, Asset,
                           Attributes, Buffer, Material, Mesh, Node, PbrMetallicRoughness, Primitive, Scene, Skin)
    poses = np.asarray(poses, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64)
    rig = rest_rig(kind, betas, expression, model_dir)
    J, parents = len(rig["joints"]), rig["parents"]
    if poses.ndim != 3 or poses.shape[1:] != (J, 3) or len(poses) == 0:
        raise ValueError(f"poses: expected (T, {J}, 3) axis-angle for {kind}, got {poses.shape}")
    if transl.shape != (len(poses), 3):
        raise ValueError(f"transl: expected ({len(poses)}, 3) metres, got {transl.shape}")
    if not fps > 0:
        raise ValueError(f"fps: expected a positive number of frames per second, got {fps}")
    T, joints = len(poses), rig["joints"]
    pose = poses + rig["pose_mean"]  # smplx adds the mean pose (zero for the loaders' flat mean hand)

    gltf = GLTF2(asset=Asset(generator="lab.gltf (hmr reference)"), scene=0)
    binary = _Binary(gltf)
    # 1. the rest mesh in glTF's frame: positions C v_shaped, normals, faces
    positions = rig["v_shaped"] @ Y_UP.T
    normals = vertex_normals(torch.from_numpy(positions), torch.from_numpy(rig["faces"])).numpy()
    attributes = Attributes(POSITION=binary.add(positions, "VEC3", _FLOAT, _ARRAY_BUFFER, bounds=True),
                            NORMAL=binary.add(normals, "VEC3", _FLOAT, _ARRAY_BUFFER))
    # 2. skin weights: the 4 largest per vertex, renormalised
    weights, influences = top_influences(rig["lbs_weights"])
    attributes.JOINTS_0 = binary.add(influences, "VEC4", _UNSIGNED_BYTE if J < 256 else _UNSIGNED_SHORT,
                                     _ARRAY_BUFFER)
    attributes.WEIGHTS_0 = binary.add(weights, "VEC4", _FLOAT, _ARRAY_BUFFER)
    primitive = Primitive(attributes=attributes, material=0,
                          indices=binary.add(rig["faces"].reshape(-1), "SCALAR", _UNSIGNED_INT
                                             if len(positions) > 65535 else _UNSIGNED_SHORT, _ELEMENT_ARRAY_BUFFER))
    mesh = Mesh(name=kind, primitives=[primitive])
    # 3. pose correctives: one morph target per pose feature (R_j - I)[r, c], j > 0, in smplx's order
    if correctives:
        primitive.targets = [Attributes(POSITION=binary.add(d @ Y_UP.T, "VEC3", _FLOAT, _ARRAY_BUFFER, bounds=True))
                             for d in rig["posedirs"]]
        mesh.extras = {"targetNames": [f"{name}_R{r}{c}" for name in JOINT_NAMES[kind][1:]
                                       for r in range(3) for c in range(3)]}
    gltf.meshes, gltf.materials = [mesh], [Material(name="skin", doubleSided=True, pbrMetallicRoughness=(
        PbrMetallicRoughness(baseColorFactor=[0.85, 0.64, 0.52, 1.0], metallicFactor=0.0, roughnessFactor=0.8)))]
    # 4. the skeleton: joint j at its rest offset from its parent, the root under "y_up"
    gltf.nodes = [Node(name=kind, mesh=0, skin=0), Node(name="y_up", rotation=[1.0, 0.0, 0.0, 0.0], children=[2])]
    for j, p in enumerate(parents):
        offset = joints[j] - (joints[p] if p >= 0 else 0.0)
        gltf.nodes.append(Node(name=JOINT_NAMES[kind][j], translation=offset.tolist(),
                               children=[2 + c for c in np.flatnonzero(parents == j).tolist()]))
    gltf.scenes = [Scene(name=kind, nodes=[0, 1])]
    # 5. inverse bind matrices: joint j's rest world transform is C Tr(J_j), its inverse Tr(-J_j) C^-1
    inverse_bind = np.tile(np.eye(4), (J, 1, 1))
    inverse_bind[:, :3, :3] = Y_UP.T
    inverse_bind[:, :3, 3] = -joints
    gltf.skins = [Skin(name=kind, joints=list(range(2, 2 + J)), skeleton=2,
                       inverseBindMatrices=binary.add(inverse_bind.transpose(0, 2, 1), "MAT4", _FLOAT))]  # columns
    # 6. the animation: frame k at k / fps; local rotations, the root's translation J_0 + transl, morph weights
    # (T, J, 4) in glTF's order (x, y, z, w), each frame's sign the one nearer the frame before (shortest arcs)
    quaternions = continuous_quaternions(quaternion_from_rotvec(pose)).numpy()[..., [1, 2, 3, 0]]
    times = binary.add(np.arange(T) / fps, "SCALAR", _FLOAT, bounds=True)
    outputs = [(2 + j, "rotation", binary.add(quaternions[:, j], "VEC4", _FLOAT)) for j in range(J)]
    outputs.append((2, "translation", binary.add(joints[0] + transl, "VEC3", _FLOAT)))
    if correctives:
        R = bodymodels.axis_angle_to_matrix(torch.from_numpy(pose)).numpy()  # (T, J, 3, 3)
        feature = (R[:, 1:] - np.eye(3)).reshape(T, -1)  # (T, P): step 3's vec(R_j - I, j > 0)
        outputs.append((0, "weights", binary.add(feature.reshape(-1), "SCALAR", _FLOAT)))
    gltf.animations = [Animation(name="sequence", samplers=[AnimationSampler(input=times, output=o)
                                                            for _, _, o in outputs],
                                 channels=[AnimationChannel(sampler=i, target=AnimationChannelTarget(node=n, path=p))
                                           for i, (n, p, _) in enumerate(outputs)])]
    blob = binary.blob()
    gltf.buffers = [Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(blob)
    return atomic_write(path, lambda f: f.writelines(gltf.save_to_bytes()))


# ---------------------------------------------------------------------------------------------
# 3. Reading back: the glTF's own skinning


def read_accessor(gltf, index, blob=None):
    """Accessor `index` of a loaded glTF (pygltflib.GLTF2) as a float64 or integer numpy array (count, components)
    (MAT4: (count, 4, 4), in the matrix's row-major reading), from its buffer view (byteStride honoured,
    normalised integers scaled to [0, 1]). Sparse accessors are not read."""
    accessor = gltf.accessors[index]
    if accessor.sparse is not None:
        raise ValueError(f"accessor {index}: sparse accessors are not read")
    view = gltf.bufferViews[accessor.bufferView]
    blob = gltf.binary_blob() if blob is None else blob
    dtype = np.dtype(_DTYPES[accessor.componentType])
    n = _COMPONENTS[accessor.type]
    stride = view.byteStride or n * dtype.itemsize
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    rows = np.ndarray((accessor.count, n), dtype, buffer=blob, offset=start, strides=(stride, dtype.itemsize))
    out = rows.astype(np.float64) if accessor.componentType == _FLOAT else rows.copy()
    if accessor.normalized:
        out = out / np.iinfo(dtype).max
    return out.reshape(-1, 4, 4).transpose(0, 2, 1) if accessor.type == "MAT4" else out


def _local_matrix(node):
    """A node's local 4 x 4 transform: its matrix, or Tr R S."""
    if node.matrix is not None:
        return np.asarray(node.matrix, dtype=np.float64).reshape(4, 4).T
    M = np.eye(4)
    M[:3, :3] = _quaternion_to_matrix(np.asarray(node.rotation or [0, 0, 0, 1], dtype=np.float64))
    M[:3, :3] *= np.asarray(node.scale or [1, 1, 1], dtype=np.float64)
    M[:3, 3] = node.translation or [0, 0, 0]
    return M


def skin_frames(path_or_gltf, frames=None):
    """The glTF's own linear blend skinning of its first skinned mesh: (T, V, 3) float64 vertices in glTF's world
    frame (+Y up; Y_UP @ v gives the model's frame back), what a viewer draws at each keyframe.

    path_or_gltf: a .glb/.gltf path or a loaded pygltflib.GLTF2; frames: keyframe indices of the first animation
    (None: all). At keyframe k every channel takes its k-th output (the files `write_animation` writes share one
    time input), each node's local Tr R S is composed down from the scene's roots, and (specification 3.7.3)
    v' = sum_i w_i (G_{j_i} IBM_{j_i}) (v + sum_m omega_m d_m), with the 4 influences (j_i, w_i) of JOINTS_0 and
    WEIGHTS_0, the morph targets d_m and their weights omega_m; the skinned mesh node's own transform is ignored.
    """
    from pygltflib import GLTF2
    gltf = path_or_gltf if isinstance(path_or_gltf, GLTF2) else GLTF2.load(str(path_or_gltf))
    blob = gltf.binary_blob()
    node_id = next(i for i, n in enumerate(gltf.nodes) if n.mesh is not None and n.skin is not None)
    mesh, skin = gltf.meshes[gltf.nodes[node_id].mesh], gltf.skins[gltf.nodes[node_id].skin]
    primitive = mesh.primitives[0]
    positions = read_accessor(gltf, primitive.attributes.POSITION, blob)
    influences = read_accessor(gltf, primitive.attributes.JOINTS_0, blob).astype(np.int64)
    weights = read_accessor(gltf, primitive.attributes.WEIGHTS_0, blob)
    targets = [t["POSITION"] if isinstance(t, dict) else t.POSITION for t in (primitive.targets or [])]
    offsets = np.stack([read_accessor(gltf, t, blob) for t in targets]) if targets else np.zeros((0,) + positions.shape)
    inverse_bind = read_accessor(gltf, skin.inverseBindMatrices, blob)
    # the animation's values at each keyframe
    animation = gltf.animations[0]
    values = {(c.target.node, c.target.path): read_accessor(gltf, animation.samplers[c.sampler].output, blob)
              for c in animation.channels}
    count = gltf.accessors[animation.samplers[0].input].count
    morph = values.get((node_id, "weights"), np.tile(np.asarray(mesh.weights or [0.0] * len(targets)), count))
    morph = morph.reshape(count, len(targets))
    children = {i: list(n.children or []) for i, n in enumerate(gltf.nodes)}
    roots = gltf.scenes[gltf.scene or 0].nodes
    out = []
    for k in range(count) if frames is None else np.asarray(frames).reshape(-1).tolist():
        world = {}

        def visit(i, parent):
            node = gltf.nodes[i]
            local = _local_matrix(node)
            if (i, "rotation") in values:
                local[:3, :3] = _quaternion_to_matrix(values[i, "rotation"][k]) * np.asarray(node.scale or [1, 1, 1])
            if (i, "scale") in values:
                local[:3, :3] = local[:3, :3] / np.linalg.norm(local[:3, :3], axis=0) * values[i, "scale"][k]
            if (i, "translation") in values:
                local[:3, 3] = values[i, "translation"][k]
            world[i] = parent @ local
            for c in children[i]:
                visit(c, world[i])

        for root in roots:
            visit(root, np.eye(4))
        joint_matrices = np.stack([world[j] for j in skin.joints]) @ inverse_bind  # (J, 4, 4)
        blend = np.einsum("vi,vikl->vkl", weights, joint_matrices[influences])  # (V, 4, 4)
        v = positions + np.einsum("m,mvk->vk", morph[k], offsets)
        out.append(np.einsum("vkl,vl->vk", blend[:, :3, :3], v) + blend[:, :3, 3])
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# 4. The external checks: Khronos' glTF-Validator, three.js in headless Chromium


def _node():
    """The node executable and lab/gltf_check's installed packages, or FileNotFoundError naming what is missing."""
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node (Node.js) is not on PATH")
    for package in ("gltf-validator", "three"):
        if not (CHECK_DIR / "node_modules" / package / "package.json").is_file():
            raise FileNotFoundError(f"the npm package {package} is not installed in lab/gltf_check/node_modules "
                                    "(run `npm ci` there)")
    return node


def validate(*paths):
    """Khronos' glTF-Validator's report of each file in paths, in one run of Node.js (validate.mjs in
    lab/gltf_check): a list of dicts with numErrors, numWarnings, numInfos, numHints and messages [{code,
    severity (0 error ... 3 hint), message, pointer}]."""
    done = subprocess.run([_node(), str(CHECK_DIR / "validate.mjs"), *(str(Path(p).resolve()) for p in paths)],
                          capture_output=True, text=True, timeout=300)
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(reports) != len(paths):
        raise RuntimeError(f"glTF-Validator gave {len(reports)} reports for {len(paths)} files: {done.stderr.strip()}")
    return reports


def chromium():
    """The Chromium executable (Debian's package: chromium), or FileNotFoundError."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("chromium is not on PATH (Debian: apt-get install chromium)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """A static file server that logs nothing and serves ES modules as JavaScript (a browser refuses a module
    script of another type)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".glb": "model/gltf-binary"}

    def log_message(self, *args):
        pass


def viewer_silhouette(path, frame, K, image_size, timeout=120):
    """What three.js's GLTFLoader shows of the .glb at path at keyframe `frame`: a bool mask (H, W), True where the
    mesh covers a pixel centre, drawn by headless Chromium (software WebGL: SwiftShader) through the pinhole camera
    K (3, 3) placed as an OpenCV camera at the model frame's origin (glTF's default camera at the origin), for
    image_size int or (H, W).

    lab/gltf_check/view.html loads the file from a server on 127.0.0.1 that lives for this call, plays the first
    animation to the keyframe's time, draws the mesh unlit on black without antialiasing, reads the pixels back
    and writes them into the page, which Chromium's --dump-dom prints."""
    _node()
    height, width = (image_size, image_size) if isinstance(image_size, int) else map(int, image_size)
    from pygltflib import GLTF2
    gltf = GLTF2.load(str(path))
    time = float(read_accessor(gltf, gltf.animations[0].samplers[0].input)[frame, 0])
    K = np.asarray(K, dtype=np.float64)
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        for name in ("view.html", "node_modules"):
            (root / name).symlink_to(CHECK_DIR / name)
        shutil.copy(path, root / "model.glb")
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            query = urllib.parse.urlencode(dict(model="model.glb", time=repr(time), width=width, height=height,
                                                fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2]))
            url = f"http://127.0.0.1:{server.server_address[1]}/view.html?{query}"
            done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                                   f"--user-data-dir={root / 'profile'}", "--virtual-time-budget=60000",
                                   "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
        finally:
            server.shutdown()
            server.server_close()
    text = done.stdout
    start, end = text.find('<pre id="result">'), text.find("</pre>")
    if start < 0 or end < 0:
        raise RuntimeError(f"Chromium's page gave no result (exit {done.returncode}): {done.stderr[-2000:]}")
    result = text[start + len('<pre id="result">'):end].strip()
    if not result.startswith("mask:"):
        raise RuntimeError(f"three.js could not draw {path}: {result}")
    mask = np.frombuffer(base64.b64decode(result[len("mask:"):]), dtype=np.uint8)
    return mask.reshape(height, width) > 127


# ---------------------------------------------------------------------------------------------
# 5. The command line: the cost of 4 influences, the external checks


def sequence(kind, frames, seed=0):
    """A sequence to measure on: `frames` poses from this project's synthetic priors (lab/synthetic.py: hands'
    `SyntheticHands`, bodies' `SyntheticPoses`, whole bodies' `SyntheticWholeBody`), each frame a new draw, with
    the first draw's shape (and expression). Returns betas, poses (T, J, 3), transl (T, 3) (the sample's cam_t;
    hands 0.5 m in front of the camera), expression (or None), float64 numpy."""
    from lab import synthetic
    if kind == "mano":
        data = synthetic.SyntheticHands(frames, image_size=32, seed=seed, background="black")
        samples = [data[i] for i in range(frames)]
        poses, betas = np.stack([s["mano_pose"].numpy() for s in samples]), samples[0]["mano_shape"].numpy()
        return betas, poses, np.tile([0.0, 0.0, 0.5], (frames, 1)), None
    if kind == "smpl":
        data = synthetic.SyntheticPoses(frames, seed=seed)
        samples = [data[i] for i in range(frames)]
        poses, betas = np.stack([s["smpl_pose"].numpy() for s in samples]), samples[0]["smpl_shape"].numpy()
        return betas, poses, np.tile([0.0, 0.0, 3.0], (frames, 1)), None
    data = synthetic.SyntheticWholeBody(frames, image_size=(32, 24), seed=seed, background="flat", colors="suit")
    samples = [data[i] for i in range(frames)]
    poses = np.stack([s["smplx_pose"].numpy() for s in samples]).astype(np.float64)
    return (samples[0]["smplx_shape"].numpy(), poses, np.stack([s["cam_t"].numpy() for s in samples]),
            samples[0]["smplx_expression"].numpy())


def skinning_error(kind, frames=32, seed=0, correctives=False, model_dir=None, folder=None):
    """Max and mean vertex distance (mm) between the glTF's own skinning (`skin_frames`) of `sequence(kind, frames,
    seed)` and the smplx model's mesh of the same parameters (`model_vertices`), over all frames and vertices; the
    file's size in bytes. The .glb goes to folder (default: a temporary one)."""
    betas, poses, transl, expression = sequence(kind, frames, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder or tmp) / f"{kind}{'_correctives' if correctives else ''}.glb"
        write_animation(path, kind, betas, poses, transl, 30, correctives, model_dir, expression)
        skinned = skin_frames(path)
        size = path.stat().st_size
    truth = model_vertices(kind, betas, poses, transl, expression, model_dir) @ Y_UP.T
    error = np.linalg.norm(skinned - truth, axis=-1) * 1000
    return float(error.max()), float(error.mean()), size


def measure(args):
    """`python -m lab.gltf measure`: the table of docs/reference.md's "Animation export (glTF)": per model, how many
    vertices have more than 4 influences and the largest weight dropped, then the error and size of each file."""
    print(f"{'model':6} {'correctives':11} {'max mm':>9} {'mean mm':>9} {'file MB':>8}   ({args.frames} frames, "
          f"seed {args.seed})")
    for kind in args.kinds:
        w = rest_rig(kind, np.zeros(10), model_dir=args.model_dir)["lbs_weights"]
        dropped = 1 - np.sort(w, 1)[:, -INFLUENCES:].sum(1)
        print(f"{kind}: {((w > 0).sum(1) > INFLUENCES).sum()} of {len(w)} vertices have more than {INFLUENCES} "
              f"influences; the largest weight dropped is {dropped.max():.4f}")
        for correctives in (False, True):
            worst, mean, size = skinning_error(kind, args.frames, args.seed, correctives, args.model_dir)
            print(f"{kind:6} {'yes' if correctives else 'no':11} {worst:9.3g} {mean:9.3g} {size / 1e6:8.2f}")


def framing(verts, size, fill=0.8):
    """A pinhole K (3, 3) whose square image of `size` pixels holds verts (V, 3) (model frame, in front of the
    camera) centred, their larger extent `fill` of the side."""
    uv = verts[:, :2] / verts[:, 2:]
    low, high = uv.min(0), uv.max(0)
    focal = fill * size / (high - low).max()
    centre = size / 2 - focal * (low + high) / 2
    return np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])


def silhouette_iou(path, kind, betas, poses, transl, frame, size=256, expression=None, model_dir=None):
    """IoU of three.js's silhouette of keyframe `frame` of the .glb at path (`viewer_silhouette`) and this project's
    renderer's (lab/render.py's `render_mesh`) of the smplx model's mesh of the same parameters, through one camera
    (`framing`). Returns iou and both masks (H, W)."""
    verts = model_vertices(kind, betas, poses[frame:frame + 1], transl[frame:frame + 1], expression, model_dir)[0]
    K = framing(verts, size)
    faces = torch.from_numpy(rest_rig(kind, betas, expression, model_dir)["faces"])
    ours = render_mesh(torch.from_numpy(verts).float(), faces, torch.from_numpy(K).float(), size,
                       return_mask=True)[1].numpy()
    theirs = viewer_silhouette(path, frame, K, size)
    return float((ours & theirs).sum() / max((ours | theirs).sum(), 1)), ours, theirs


def check(args):
    """`python -m lab.gltf check`: each kind's .glb through glTF-Validator, and keyframe `--frame` drawn by three.js
    in headless Chromium against this project's renderer through the same camera (`silhouette_iou`)."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            betas, poses, transl, expression = sequence(kind, args.frames, args.seed)
            path = write_animation(Path(tmp) / f"{kind}.glb", kind, betas, poses, transl, 30, args.correctives,
                                   args.model_dir, expression)
            (report,) = validate(path)
            iou, ours, theirs = silhouette_iou(path, kind, betas, poses, transl, args.frame, 256, expression,
                                               args.model_dir)
            codes = sorted({m["code"] for m in report["messages"]})
            print(f"{kind}: {path.stat().st_size / 1e6:.2f} MB; glTF-Validator: {report['numErrors']} errors, "
                  f"{report['numWarnings']} warnings, {report['numInfos']} infos, {report['numHints']} hints "
                  f"{codes}; three.js keyframe {args.frame} against lab.render: IoU {iou:.4f} ({ours.sum()} and "
                  f"{theirs.sum()} pixels)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.gltf", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("measure", "check"))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame", type=int, default=0, help="check: the keyframe three.js draws")
    parser.add_argument("--correctives", action="store_true", help="check: with the pose correctives")
    parser.add_argument("--model-dir", default=None, help="real model files in smplx's layout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (measure if args.command == "measure" else check)(args)


if __name__ == "__main__":
    main()
