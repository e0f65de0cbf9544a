"""The procedural stand-in body models of standins.py and the model-file loaders of bodymodels.py.

The stand-ins are checked through smplx itself (the oracle for what a model file means): exact
sizes, the template at zero pose and shape, skinning that moves what hangs below a joint and
nothing else, shape directions that change bone lengths, joints inside the mesh, fingertips at
the tips. The loaders are checked on fixture files written in the official formats (chumpy
objects, a scipy sparse J_regressor, Python-2-style pickles) and on hostile or broken files.
"""
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bodymodels as bm
from lab import standins as si

SIZES = {"mano": (778, 1538, 16, 16), "smpl": (6890, 13776, 24, 45), "smplx": (10475, 20908, 55, 127)}
PARENTS = {"mano": bm.MANO_PARENTS, "smpl": bm.SMPL_PARENTS, "smplx": bm.SMPLX_PARENTS}
LOADERS = {"mano": bm.load_mano, "smpl": bm.load_smpl, "smplx": bm.load_smplx}


@pytest.fixture(scope="module")
def standins():
    """The stand-in models, float64, loaded through smplx from the cache folder."""
    root = si.write_standins()
    models = {kind: LOADERS[kind](root, dtype=torch.float64) for kind in LOADERS}
    models["mano_left"] = bm.load_mano(root, side="left", dtype=torch.float64)
    return models


def forward(model, **pose):
    """Vertices (V, 3) and joints (J', 3) of a single-sample forward pass."""
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v, dtype=torch.float64)[None] for k, v in pose.items()})
    return out.vertices[0].numpy(), out.joints[0].numpy()


def kind_of(name):
    return name.split("_")[0]


def descendants(parents, joint):
    """joint and every joint below it in the kinematic tree."""
    out = {joint}
    for j, p in enumerate(parents):
        if p in out:
            out.add(j)
    return sorted(out)


def winding_number(points, verts, faces):
    """Generalised winding number (P,) of a closed triangle mesh: 1 inside, 0 outside
    (Van Oosterom and Strackee's solid angle of each triangle, summed, over 4 pi)."""
    a, b, c = (verts[faces[:, k]][None] - points[:, None] for k in range(3))  # (P, F, 3)
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    det = (a * np.cross(b, c)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
    return 2 * np.arctan2(det, den).sum(1) / (4 * np.pi)


# --- The stand-ins through smplx ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["mano", "mano_left", "smpl", "smplx"])
def test_standins_load_through_smplx_with_the_exact_sizes(standins, name):
    V, F, J, J_out = SIZES[kind_of(name)]
    model = standins[name]
    verts, joints = forward(model)
    assert verts.shape == (V, 3) and model.faces.shape == (F, 3) and joints.shape == (J_out, 3)
    assert model.J_regressor.shape == (J, V) and model.lbs_weights.shape == (V, J)
    assert model.parents.tolist() == list(PARENTS[kind_of(name)])
    # Euler: 2V - F = 2 chi + border edges; MANO is a disk with a 16-edge wrist opening, SMPL a
    # sphere, SMPL-X a sphere plus two eyeball caps with 17-edge borders (as the real files)
    assert 2 * V - F == {"mano": 18, "smpl": 4, "smplx": 42}[kind_of(name)]


@pytest.mark.parametrize("name", ["mano", "mano_left", "smpl", "smplx"])
def test_zero_pose_and_zero_shape_give_the_template(standins, name):
    model = standins[name]
    verts, _ = forward(model)
    np.testing.assert_allclose(verts, model.v_template.numpy(), atol=1e-6)


# (model, joint to rotate, axis-angle): MANO index MCP curls, SMPL left elbow, SMPL-X left knee
ROTATIONS = [("mano", 1, (0, 0, -0.8)), ("smpl", 18, (0, -0.8, 0)), ("smplx", 4, (0.8, 0, 0))]


def pose_with(kind, joint, aa):
    """smplx keyword arguments that rotate one joint by aa (3,) and leave the others at zero."""
    full = np.zeros((SIZES[kind][2], 3))
    full[joint] = aa
    if kind == "mano":
        return dict(global_orient=full[0], hand_pose=full[1:].ravel())
    return dict(global_orient=full[0], body_pose=full[1:{"smpl": 24, "smplx": 22}[kind]].ravel())


@pytest.mark.parametrize("kind,joint,aa", ROTATIONS)
def test_rotating_one_joint_moves_its_descendants_and_leaves_far_vertices_still(standins, kind, joint, aa):
    model = standins[kind]
    rest, rest_joints = forward(model)
    posed, posed_joints = forward(model, **pose_with(kind, joint, aa))
    below = descendants(PARENTS[kind], joint)
    w = model.lbs_weights.numpy()[:, below].sum(1)
    moved = np.linalg.norm(posed - rest, axis=1)
    assert (moved[w > 0.9] > 0.003).mean() > 0.95  # what hangs below the joint moves
    np.testing.assert_allclose(posed[w == 0], rest[w == 0], atol=1e-9)  # nothing else does
    assert (w == 0).sum() > 0.5 * len(w)
    # the joint itself stays, its children move
    np.testing.assert_allclose(posed_joints[joint], rest_joints[joint], atol=1e-9)
    children = [j for j in below if j != joint]
    assert (np.linalg.norm(posed_joints[children] - rest_joints[children], axis=1) > 0.003).all()


def bone_lengths(joints, parents):
    return np.array([np.linalg.norm(joints[j] - joints[p]) for j, p in enumerate(parents) if p >= 0])


@pytest.mark.parametrize("kind", ["mano", "smpl", "smplx"])
def test_betas_change_bone_lengths_and_every_direction_changes_the_shape(standins, kind):
    model = standins[kind]
    rest, rest_joints = forward(model)
    J = SIZES[kind][2]
    for k in range(10):
        betas = np.zeros(10)
        betas[k] = 2.0
        verts, joints = forward(model, betas=betas)
        assert np.abs(verts - rest).max() > 0.002, f"beta {k} barely moves the surface"
        if k == 0:  # overall size: every bone grows
            ratio = bone_lengths(joints[:J], PARENTS[kind]) / bone_lengths(rest_joints[:J], PARENTS[kind])
            assert (ratio > 1.05).all()
    # and the finger / leg length directions lengthen those bones
    betas = np.zeros(10)
    betas[{"mano": 1, "smpl": 2, "smplx": 2}[kind]] = 2.0
    _, joints = forward(model, betas=betas)
    bone = {"mano": (2, 1), "smpl": (7, 4), "smplx": (7, 4)}[kind]  # index PIP-MCP, left ankle-knee
    grown = (np.linalg.norm(joints[bone[0]] - joints[bone[1]])
             / np.linalg.norm(rest_joints[bone[0]] - rest_joints[bone[1]]))
    assert grown > 1.05


@pytest.mark.parametrize("kind", ["mano", "smpl", "smplx"])
def test_joints_lie_inside_the_mesh(standins, kind):
    model = standins[kind]
    verts, faces = model.v_template.numpy(), model.faces.astype(np.int64)
    joints = model.J_regressor.numpy() @ verts
    check = np.arange(len(joints))
    if kind == "mano":  # close the wrist opening with a fan; the wrist joint sits in that opening
        ring = si._boundary_loops(faces)[0]
        centre = verts[ring].mean(0)
        np.testing.assert_allclose(joints[0], centre, atol=1e-6)
        verts = np.concatenate([verts, centre[None]])
        faces = np.concatenate([faces, np.stack([ring[1:].tolist() + [ring[0]], ring, np.full(16, len(verts) - 1)], 1)])
        check = check[1:]
    if kind == "smplx":  # the body surface without the eyeball caps (the eyes sit inside it)
        w = model.lbs_weights.numpy()
        faces = faces[(w[faces][..., 23:25].sum(-1) < 0.5).all(1)]
    assert (winding_number(joints[check], verts, faces) > 0.99).all()


def test_fingertip_vertices_are_the_extremal_points_of_each_finger(standins):
    model = standins["mano"]
    verts = model.v_template.numpy()
    joints = model.J_regressor.numpy() @ verts
    dominant = model.lbs_weights.numpy().argmax(1)
    # thumb, index, middle, ring, pinky: among the vertices that follow the finger's last joint,
    # the tip is the farthest from that joint and leads along the finger
    for tip, (last, middle) in zip(bm.FINGERTIP_VERTS["hamer"], [(15, 14), (3, 2), (6, 5), (12, 11), (9, 8)]):
        finger = np.flatnonzero(dominant == last)
        assert tip in finger
        assert finger[np.argmax(np.linalg.norm(verts[finger] - joints[last], axis=1))] == tip
        direction = verts[tip] - joints[last]
        assert np.degrees(np.arccos(direction @ (joints[last] - joints[middle]) / np.linalg.norm(direction)
                                    / np.linalg.norm(joints[last] - joints[middle]))) < 20
    # FreiHAND's ring and pinky tips are the vertices next to smplx's, as on the real template (4.2, 3.0 mm)
    for a, b in zip(bm.FINGERTIP_VERTS["hamer"][3:], bm.FINGERTIP_VERTS["freihand"][3:]):
        others = np.delete(np.arange(len(verts)), a)
        assert others[np.argmin(np.linalg.norm(verts[others] - verts[a], axis=1))] == b
        assert np.linalg.norm(verts[a] - verts[b]) < 0.005


def test_the_body_keypoint_vertices_sit_where_their_names_say(standins):
    for kind, name in (("smpl", "smplh"), ("smplx", "smplx")):
        model = standins[kind]
        ids = __import__("smplx.vertex_ids", fromlist=["vertex_ids"]).vertex_ids[name]
        v = model.v_template.numpy()
        at = {k: v[i] for k, i in ids.items()}
        assert at["nose"][2] > max(at["leye"][2], at["reye"][2])  # the nose is in front of the eyes
        assert at["leye"][1] > at["nose"][1] and at["lear"][0] > 0.06 > -0.06 > at["rear"][0]
        for side, sign in (("L", 1), ("R", -1)):
            assert sign * at[side + "BigToe"][0] > 0 and sign * at[side + "Heel"][0] > 0
            assert at[side + "BigToe"][2] > at[side + "Heel"][2] + 0.15  # toes 15+ cm ahead of the heel
        for side, sign in (("l", 1), ("r", -1)):  # left hand at +x, fingertips at the far end
            tips = np.array([at[side + f] for f in ("thumb", "index", "middle", "ring", "pinky")])
            assert (sign * tips[:, 0] > 0.75).all() and sign * tips[2, 0] == (sign * v[:, 0]).max()


def test_left_mano_is_the_mirror_image_of_the_right(standins):
    right, left = standins["mano"], standins["mano_left"]
    np.testing.assert_allclose(left.v_template.numpy(), right.v_template.numpy() * [-1, 1, 1])
    np.testing.assert_allclose(left.shapedirs.numpy(), right.shapedirs.numpy() * np.array([-1, 1, 1])[:, None])
    # a mirrored pose on the left hand gives the mirrored mesh
    aa = np.random.default_rng(0).normal(0, 0.4, 45)
    v_right, _ = forward(right, hand_pose=aa)
    v_left, _ = forward(left, hand_pose=(aa.reshape(15, 3) * [1, -1, -1]).ravel())
    np.testing.assert_allclose(v_left, v_right * [-1, 1, 1], atol=1e-6)


def test_hand_pca_components_are_orthonormal_and_the_first_curls_the_fingers(standins):
    bm.load_mano(si.write_standins(), use_pca=True, num_pca_comps=45, dtype=torch.float64)  # smplx reads them
    comps = si._standin_hand()["hands_components"]
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-10)
    # positive first component: every finger joint flexes (rotation about -z)
    assert (comps[0].reshape(15, 3)[:12, 2] < 0).all()
    verts, _ = forward(standins["mano"], hand_pose=2 * comps[0])
    tips = list(bm.FINGERTIP_VERTS["hamer"])
    assert (verts[tips[1:], 1] < -0.02).all()  # fingertips curl towards the palm (-y)


# --- The loader on files in the official formats ---------------------------------------------

class Ch:
    """A chumpy-like leaf: pickles its attributes, with the array under 'x', as chumpy.Ch does."""

    def __init__(self, x):
        self.x, self._dirty_vars, self._itr, self._depends_on_deps = x, set(), None, {}


@pytest.fixture
def fake_chumpy(monkeypatch):
    """Make `Ch` pickle as chumpy.ch.Ch, as in the official files (chumpy is not installed)."""
    module = types.ModuleType("chumpy.ch")
    module.Ch = Ch
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    yield
    Ch.__module__, Ch.__qualname__ = __name__, "Ch"


def official_pickle(arrays, path, protocol=2):
    """Write arrays as the official MANO/SMPL pickles do: shapedirs a chumpy object, J_regressor
    a scipy CSC matrix, the rest numpy arrays."""
    data = dict(arrays)
    data["shapedirs"] = Ch(np.asarray(arrays["shapedirs"]))
    data["J_regressor"] = sp.csc_matrix(np.asarray(arrays["J_regressor"]))
    data["bs_style"], data["bs_type"] = "lbs", "lrotmin"  # strings sit next to the arrays
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


def standin_arrays(kind, side="right"):
    """The arrays of a stand-in model file, as plain numpy arrays."""
    name = {"mano": f"MANO_{side.upper()}.pkl", "smpl": "SMPL_NEUTRAL.pkl", "smplx": "SMPLX_NEUTRAL.npz"}[kind]
    return bm.model_arrays(si.write_standins() / kind / name, kind)


@pytest.mark.parametrize("protocol", [2, 4])
def test_loader_reads_official_pickles_with_chumpy_and_sparse_arrays(tmp_path, fake_chumpy, standins, protocol):
    official_pickle(standin_arrays("mano"), tmp_path / "mano" / "MANO_RIGHT.pkl", protocol)
    official_pickle(standin_arrays("smpl"), tmp_path / "smpl" / "SMPL_NEUTRAL.pkl", protocol)
    aa = np.random.default_rng(1).normal(0, 0.3, 45)
    betas = np.random.default_rng(2).normal(0, 1, 10)
    mano = bm.load_mano(tmp_path, dtype=torch.float64)
    np.testing.assert_allclose(forward(mano, hand_pose=aa, betas=betas)[0],
                               forward(standins["mano"], hand_pose=aa, betas=betas)[0], atol=1e-9)
    smpl = bm.load_smpl(tmp_path, dtype=torch.float64)
    body = np.random.default_rng(3).normal(0, 0.3, 69)
    np.testing.assert_allclose(forward(smpl, body_pose=body, betas=betas)[0],
                               forward(standins["smpl"], body_pose=body, betas=betas)[0], atol=1e-9)


def test_loader_reads_smplx_from_pkl_and_from_npz_with_object_arrays(tmp_path, standins):
    arrays = standin_arrays("smplx")
    marker = tmp_path / "unpickled"
    (tmp_path / "a" / "smplx").mkdir(parents=True)
    with open(tmp_path / "a" / "smplx" / "SMPLX_NEUTRAL.pkl", "wb") as f:
        pickle.dump(arrays, f, protocol=2)
    # the official .npz also holds pickled Python objects (joint2num, part2num): never unpickle them
    (tmp_path / "b" / "smplx").mkdir(parents=True)
    np.savez(tmp_path / "b" / "smplx" / "SMPLX_NEUTRAL.npz", **arrays,
             joint2num=np.array([Evil(marker)], dtype=object))
    expr = np.random.default_rng(4).normal(0, 1, 10)
    want = forward(standins["smplx"], expression=expr)[1]
    for root in (tmp_path / "a", tmp_path / "b"):
        got = forward(bm.load_smplx(root, dtype=torch.float64), expression=expr)[1]
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert not marker.exists()


class Evil:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_raises_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    arrays = standin_arrays("mano")
    arrays["hands_mean"] = Evil(marker)
    (tmp_path / "mano").mkdir()
    with open(tmp_path / "mano" / "MANO_RIGHT.pkl", "wb") as f:
        pickle.dump(arrays, f, protocol=2)
    with pytest.raises(ValueError, match=r"MANO_RIGHT\.pkl.*refusing to unpickle (posix|os|nt)\.system"):
        bm.load_mano(tmp_path)
    assert not marker.exists()


def test_missing_folder_or_file_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*smplx's layout.*mano/MANO_RIGHT\.pkl"):
        bm.load_mano(tmp_path / "nowhere")
    (tmp_path / "smpl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"smpl/SMPL_NEUTRAL\.pkl does not exist"):
        bm.load_smpl(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"smplx/SMPLX_NEUTRAL\.npz does not exist"):
        bm.load_smplx(tmp_path)


def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path, monkeypatch):
    arrays = standin_arrays("mano")
    arrays["weights"] = arrays["weights"][:, :15]
    (tmp_path / "mano").mkdir()
    with open(tmp_path / "mano" / "MANO_RIGHT.pkl", "wb") as f:
        pickle.dump(arrays, f)
    with pytest.raises(ValueError, match=r"MANO_RIGHT\.pkl: key 'weights' has shape \(778, 15\), expected \(778, 16\)"):
        bm.load_mano(tmp_path)
    del arrays["weights"]
    with open(tmp_path / "mano" / "MANO_RIGHT.pkl", "wb") as f:
        pickle.dump(arrays, f)
    monkeypatch.setenv("HMR_BODY_MODELS", str(tmp_path))  # model_dir=None reads the variable
    with pytest.raises(ValueError, match=r"key 'weights' is missing"):
        bm.load_mano()


def test_the_official_left_hand_gets_its_shapedirs_fixed(tmp_path, fake_chumpy, standins):
    right, left = standin_arrays("mano"), standin_arrays("mano", "left")
    buggy = dict(left, shapedirs=left["shapedirs"] * np.array([-1, 1, 1])[:, None])  # x rows = right's
    official_pickle(right, tmp_path / "mano" / "MANO_RIGHT.pkl")
    with open(tmp_path / "mano" / "MANO_LEFT.pkl", "wb") as f:
        pickle.dump(buggy, f)
    fixed = bm.load_mano(tmp_path, side="left", dtype=torch.float64)
    np.testing.assert_allclose(fixed.shapedirs.numpy(), standins["mano_left"].shapedirs.numpy(), atol=1e-12)


def test_two_processes_writing_the_standins_at_once_leave_complete_files(tmp_path):
    code = f"from lab import standins; standins.write_standins({str(tmp_path)!r}, kinds=('mano',))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "mano").iterdir()) == ["MANO_LEFT.pkl", "MANO_RIGHT.pkl"]
    assert bm.load_mano(tmp_path, side="left").v_template.shape == (778, 3)


def test_the_cache_key_hashes_the_generator_file_and_not_the_loaders():
    """Editing the loaders keeps the stand-ins' cache folder; editing any line of standins.py does not."""
    text = open(si.__file__).read()
    base = si._generator_source(text)
    assert "def load_mano" not in base  # the loaders are bodymodels', outside the hash
    assert si._generator_source(text.replace("def _pillow(layout):", "def _pillow(layout):  # edited")) != base
    assert si._generator_source(text.replace('"""Procedural stand-ins', '"""The stand-ins')) != base
    assert si.standin_dir().name == f"{si.STANDIN_VERSION}-{si._generator_hash()}"


def test_the_ten_shape_coefficients_warning_is_printed_at_most_once(capfd):
    """smplx prints it for every model with fewer than 300 shape columns; with the stand-ins' (and
    real MANO's) 10 it says nothing and is dropped; asked for more, it is printed once."""
    root = si.write_standins()
    capfd.readouterr()
    bm.load_mano(root)
    bm.load_smplx(root)
    assert "WARNING" not in capfd.readouterr().out
    bm.load_mano(root, num_betas=16)
    bm.load_mano(root, num_betas=16)
    assert capfd.readouterr().out.count("WARNING: You are using a MANO model") == 1
