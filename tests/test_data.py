"""Tests for data.py: projection consistency of every dataset before and after augmentation, determinism
by index, real-data loaders on fixture folders built here in the official layouts, and DataLoader /
pickling behaviour. The renderer and the pose priors: test_synthetic.py."""
import math
import os
import pickle
import types

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bodymodels
import data
import synthetic
from bodymodels import axis_angle_to_matrix, perspective_projection

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# 1. augmentation as a camera change

def random_hand_labels(rng, is_right):
    """Hand labels built from a canonical point cloud L turned by the global orientation R_g about
    the origin and shifted in front of the camera (mirrored for a left hand), so that the rule for
    mano_pose's global orientation can be checked: verts = mirror(L R_g^T) + t."""
    local = 0.05 * torch.randn(778, 3, generator=rng, dtype=torch.float64)
    pose = 0.5 * torch.randn(16, 3, generator=rng, dtype=torch.float64)
    verts = local @ axis_angle_to_matrix(pose[0]).T
    if not is_right:
        verts = verts * torch.tensor([-1.0, 1, 1])
    verts = verts + torch.tensor([0.02, -0.01, 0.5])
    joints3d = verts[:21]
    K = torch.tensor([[300.0, 0, 60], [0, 310.0, 66], [0, 0, 1]], dtype=torch.float64)
    labels = {"K": K.float(), "joints3d": joints3d.float(), "verts": verts.float(), "mano_pose": pose.float(),
              "mano_shape": torch.zeros(10), "is_right": torch.tensor(is_right),
              "joints2d": perspective_projection(joints3d, K).float()}
    return labels, local


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), is_right=st.booleans(), flip_prob=st.sampled_from([0.0, 0.5, 1.0]))
@example(seed=0, is_right=True, flip_prob=1.0)
def test_augmented_labels_move_with_the_image(seed, is_right, flip_prob):
    rng = torch.Generator().manual_seed(seed)
    labels, local = random_hand_labels(rng, is_right)
    cfg = data.AugmentConfig(rotation_deg=180.0, zoom=(0.5, 1.5), shift=0.2, flip_prob=flip_prob)
    aug = data.sample_augmentation(rng, cfg, labels["K"], (120, 128))
    out = data.augment_hand_labels(labels, aug)
    # 1. the labels are consistent with the new camera
    assert torch.allclose(perspective_projection(out["joints3d"].double(), out["K"].double()),
                          out["joints2d"].double(), atol=1e-3)
    # 2. the image moves by the pixel transform A = K' T K^-1 exactly as the projected joints do
    A = aug.K @ aug.T @ torch.linalg.inv(labels["K"].double())
    old = torch.cat([labels["joints2d"].double(), torch.ones(21, 1, dtype=torch.float64)], 1)
    moved = old @ A.T
    assert torch.allclose(moved[:, :2] / moved[:, 2:], out["joints2d"].double(), atol=1e-3)
    # 3. the new intrinsics are a camera's: positive focal lengths
    assert out["K"][0, 0] > 0 and out["K"][1, 1] > 0 and out["K"][2, 2] == 1
    # 4. is_right toggles with a flip; mano_pose's global orientation still explains the verts
    assert bool(out["is_right"]) == (is_right != aug.flip)
    mirror = torch.tensor([1.0, 1, 1]) if bool(out["is_right"]) else torch.tensor([-1.0, 1, 1])
    rebuilt = (local @ axis_angle_to_matrix(out["mano_pose"][0].double()).T) * mirror
    centred = out["verts"].double() - out["verts"].double().mean(0)
    assert torch.allclose(rebuilt - rebuilt.mean(0), centred, atol=1e-4)
    assert torch.equal(out["mano_pose"][1:], labels["mano_pose"][1:])


def test_warp_image_moves_a_dot_to_its_transformed_pixel():
    image = torch.zeros(3, 40, 50)
    image[:, 10:13, 20:23] = 1.0  # a dot centred at pixel coordinates (21.5, 11.5)
    angle = math.radians(30)
    A = torch.tensor([[math.cos(angle), -math.sin(angle), 8.0], [math.sin(angle), math.cos(angle), -2.0],
                      [0, 0, 1]], dtype=torch.float64)
    out = data.warp_image(image, A, (40, 50))
    target = A @ torch.tensor([21.5, 11.5, 1.0], dtype=torch.float64)
    weights = out[0]
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(50) + 0.5, indexing="ij")
    centroid = torch.stack([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
    assert torch.allclose(centroid.double(), target[:2], atol=0.05)


# ---------------------------------------------------------------------------------------------
# 2. real data: FreiHAND and npz fixture folders built here

DOT = (1.0, 0.1, 0.1)  # the fixture images carry a red dot on the wrist and are grey elsewhere


def fake_hands(rng, count):
    """MANO-free labels: a random blob of 778 'vertices' and 21 joints about 0.5 m in front."""
    centre = torch.tensor([0.0, 0.0, 0.5]) + 0.02 * torch.randn(count, 1, 3, generator=rng)
    verts = centre + 0.04 * torch.randn(count, 778, 3, generator=rng)
    joints3d = centre + 0.04 * torch.randn(count, 21, 3, generator=rng)
    K = torch.tensor([[480.0, 0, 112], [0, 490.0, 110], [0, 0, 1]]).repeat(count, 1, 1)
    mano = 0.3 * torch.randn(count, 61, generator=rng)
    return K, joints3d, verts, mano


def dot_image(path, uv, size=(224, 224)):
    from PIL import Image

    image = np.full((*size, 3), 128, dtype=np.uint8)
    x, y = int(uv[0]), int(uv[1])
    image[max(y - 4, 0):y + 5, max(x - 4, 0):x + 5] = (np.array(DOT) * 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=95)


def write_freihand(root, rng, train=3, evaluation=2):
    """A FreiHAND folder in the official layout (FACTS.md), with `train` hands x 4 versions."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    for split, count, versions in (("training", train, 4), ("evaluation", evaluation, 1)):
        K, joints3d, verts, mano = fake_hands(rng, count)
        for name, value in (("K", K), ("xyz", joints3d), ("verts", verts), ("mano", mano[:, None, :]),
                            ("scale", torch.full((count,), 0.03))):
            (root / f"{split}_{name}.json").write_text(json.dumps(value.tolist()))
        (root / split / "rgb").mkdir(parents=True)
        uv = perspective_projection(joints3d, K)
        for version in range(versions):
            for i in range(count):
                dot_image(root / split / "rgb" / f"{i + count * version:08d}.jpg", uv[i, 0])
    return root


@pytest.fixture
def freihand_root(tmp_path):
    return write_freihand(tmp_path / "FreiHAND", torch.Generator().manual_seed(0))


def assert_hand_sample(sample, image_size):
    shapes = {"image": (3, image_size, image_size), "K": (3, 3), "joints3d": (21, 3), "joints2d": (21, 2),
              "verts": (778, 3), "mano_pose": (16, 3), "mano_shape": (10,), "is_right": ()}
    assert set(sample) == set(shapes) == set(data.HAND_KEYS)
    for key, shape in shapes.items():
        assert sample[key].shape == shape, key
        assert sample[key].dtype == (torch.bool if key == "is_right" else torch.float32), key
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    projected = perspective_projection(sample["joints3d"].double(), sample["K"].double())
    assert (projected - sample["joints2d"].double()).abs().max() < 0.5  # the half pixel


def test_freihand_reads_the_official_layout(freihand_root):
    train = data.FreiHAND(freihand_root, "training")
    assert len(train) == 12 and len(data.FreiHAND(freihand_root, "training", versions=(0, 2))) == 6
    evaluation = data.FreiHAND(freihand_root, "evaluation")
    assert len(evaluation) == 2
    for dataset in (train, evaluation):
        sample = dataset[len(dataset) - 1]
        assert_hand_sample(sample, 224)
        assert bool(sample["is_right"])
        u, v = sample["joints2d"][0].round().long().tolist()
        assert torch.allclose(sample["image"][:, v, u], torch.tensor(DOT), atol=0.12)  # the dot on the wrist
    # version 3 of hand 1 is file 1 + 3 * 3 and carries hand 1's labels
    assert train._image_path(10).name == "00000010.jpg"
    assert torch.equal(train[10]["joints3d"], train[1]["joints3d"])


def test_freihand_pose_gets_the_mean_hand_added(freihand_root):
    """FreiHAND's finger pose is relative to MANO's mean hand; ours is absolute (flat_hand_mean=True)."""
    mean = np.linspace(-0.1, 0.1, 45)
    flat = data.FreiHAND(freihand_root, "evaluation", hands_mean=mean)
    raw = data.FreiHAND(freihand_root, "evaluation", hands_mean=np.zeros(45))
    assert not flat.pose_relative_to_mean
    delta = flat[0]["mano_pose"] - raw[0]["mano_pose"]
    assert torch.allclose(delta[1:], torch.tensor(mean, dtype=torch.float32).view(15, 3))
    assert torch.equal(delta[0], torch.zeros(3))  # the global orientation is left alone


def test_freihand_resizes_with_k(freihand_root):
    big = data.FreiHAND(freihand_root, "evaluation")[0]
    small = data.FreiHAND(freihand_root, "evaluation", image_size=96)[0]
    assert_hand_sample(small, 96)
    assert torch.allclose(small["joints2d"], big["joints2d"] * 96 / 224, atol=1e-3)
    u, v = small["joints2d"][0].round().long().tolist()
    assert small["image"][0, v, u] > 0.7 and small["image"][1, v, u] < 0.4


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_freihand_augmentation_keeps_the_dot_under_the_wrist(seed, tmp_path_factory):
    root = write_freihand(tmp_path_factory.mktemp("fh"), torch.Generator().manual_seed(1), train=1, evaluation=1)
    cfg = data.AugmentConfig(rotation_deg=90.0, zoom=(0.8, 1.2), shift=0.1, color=0.0, flip_prob=0.5)
    dataset = data.FreiHAND(root, "evaluation", image_size=128, augment=True, seed=seed, augment_config=cfg)
    sample = dataset[0]
    assert_hand_sample(sample, 128)
    u, v = sample["joints2d"][0].tolist()
    if 3 <= u < 125 and 3 <= v < 125:
        pixel = sample["image"][:, int(v), int(u)]
        assert pixel[0] > 0.6 and pixel[1] < 0.4, (u, v, pixel)


def test_freihand_missing_files_are_named(freihand_root):
    (freihand_root / "training_verts.json").unlink()
    with pytest.raises(FileNotFoundError, match="training_verts.json"):
        data.FreiHAND(freihand_root, "training")
    (freihand_root / "evaluation" / "rgb" / "00000001.jpg").unlink()
    dataset = data.FreiHAND(freihand_root, "evaluation")
    with pytest.raises(FileNotFoundError, match="00000001.jpg"):
        dataset[1]
    with pytest.raises(ValueError, match="split"):
        data.FreiHAND(freihand_root, "test")


def write_npz_fixture(root, rng, count=3, size=(100, 90)):
    K, joints3d, verts, mano = fake_hands(rng, count)
    K[:, :2] *= torch.tensor([size[1] / 224, size[0] / 224])[:, None]  # images of 90 x 100 pixels
    uv = perspective_projection(joints3d, K)
    (root / "crops").mkdir(parents=True)
    files = []
    for i in range(count):
        files.append(f"crops/{i}.png")
        dot_image(root / files[-1], uv[i, 0], size)
    return data.write_npz(root, "val", files, K=K, joints3d=joints3d, verts=verts, mano_pose=mano[:, :48],
                          mano_shape=mano[:, 48:58], is_right=[True, False, True][:count])


def test_npz_hands_round_trip(tmp_path):
    write_npz_fixture(tmp_path, torch.Generator().manual_seed(2))
    dataset = data.NpzHands(tmp_path, "val", image_size=64)
    assert len(dataset) == 3
    sample = dataset[1]
    assert_hand_sample(sample, 64)
    assert not bool(sample["is_right"])
    u, v = sample["joints2d"][0].round().long().tolist()
    assert sample["image"][0, v, u] > 0.7 and sample["image"][1, v, u] < 0.4


def test_synthetic_and_real_hands_have_identical_keys_shapes_and_dtypes(freihand_root, tmp_path):
    write_npz_fixture(tmp_path / "npz", torch.Generator().manual_seed(4))
    datasets = (data.SyntheticHands(2, image_size=80), data.FreiHAND(freihand_root, "training", image_size=80),
                data.NpzHands(tmp_path / "npz", "val", image_size=80),
                data.FreiHAND(freihand_root, "evaluation", image_size=80, augment=True))
    signatures = [{k: (tuple(v.shape), v.dtype) for k, v in d[1].items()} for d in datasets]
    assert all(sig == signatures[0] for sig in signatures)


def test_npz_hands_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.npz"):
        data.NpzHands(tmp_path, "val")
    path = write_npz_fixture(tmp_path, torch.Generator().manual_seed(3))
    arrays = dict(np.load(path))
    np.savez(path, **{k: v for k, v in arrays.items() if k != "verts"})
    with pytest.raises(ValueError, match="verts"):
        data.NpzHands(tmp_path, "val")
    np.savez(path, **dict(arrays, joints3d=arrays["joints3d"][:, :20]))
    with pytest.raises(ValueError, match="joints3d"):
        data.NpzHands(tmp_path, "val")


# ---------------------------------------------------------------------------------------------
# 3. synthetic hands

NO_COLOR = data.AugmentConfig(color=0.0, flip_prob=0.5, rotation_deg=60.0)


@pytest.fixture(scope="module")
def mano():
    return bodymodels.load_mano()


def test_synthetic_hands_keys_shapes_and_projection():
    for kwargs in ({}, {"augment": True, "left_hand_prob": 0.5}, {"image_size": 96}):
        dataset = data.SyntheticHands(4, **kwargs)
        for i in range(len(dataset)):
            assert_hand_sample(dataset[i], kwargs.get("image_size", 224))


@pytest.mark.parametrize("kwargs", [{}, {"left_hand_prob": 1.0},
                                    {"augment": True, "augment_config": NO_COLOR, "left_hand_prob": 0.5}])
def test_synthetic_hand_image_shows_the_labelled_mesh(kwargs):
    """On a black background, the rendered pixels are exactly the silhouette of (verts, K): the image
    and the labels agree, for right and mirrored left hands and after augmentation."""
    dataset = data.SyntheticHands(6, image_size=96, background="black", **kwargs)
    for i in range(len(dataset)):
        sample = dataset[i]
        _, mask = synthetic.render_mesh(*dataset.scene(sample), sample["K"], 96, return_mask=True)  # hand and forearm
        drawn = sample["image"].sum(0) > 0
        assert (drawn == mask).float().mean() > 0.995
        _, mask = synthetic.render_mesh(sample["verts"], dataset.faces, sample["K"], 96,
                                        return_mask=True)  # the hand alone
        u, v = sample["joints2d"].round().long().clamp(0, 95).T
        assert mask[v, u].float().mean() >= 0.8  # the joints lie on the hand
        if "augment" not in kwargs:  # a detector's crop: the hand's box fills 70-90% of the crop, centred
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            size = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / 96
            assert 0.6 <= size <= 0.95
            centre = torch.tensor([(cols.max() + cols.min() + 1) / 2, (rows.max() + rows.min() + 1) / 2])
            assert (centre - 48).abs().max() < 0.15 * 96


@pytest.mark.parametrize("left_hand_prob", [0.0, 1.0])
def test_synthetic_hand_labels_are_mano_of_its_parameters(mano, left_hand_prob):
    """verts = MANO_right(mano_pose, mano_shape) (mirrored for a left hand) + a translation, and
    joints3d are its FreiHAND joints: the oracle is smplx's MANO itself."""
    dataset = data.SyntheticHands(3, image_size=64, left_hand_prob=left_hand_prob, augment=True,
                                  augment_config=data.AugmentConfig(flip_prob=0.5))
    for i in range(len(dataset)):
        s = dataset[i]
        out = mano(betas=s["mano_shape"][None], global_orient=s["mano_pose"][None, 0],
                   hand_pose=s["mano_pose"][None, 1:].reshape(1, 45))
        verts = out.vertices[0]
        joints = data.mano_to_freihand(out.joints[0], verts)
        if not bool(s["is_right"]):
            verts, joints = verts * torch.tensor([-1.0, 1, 1]), joints * torch.tensor([-1.0, 1, 1])
        shift = (s["verts"] - verts).mean(0)
        assert torch.allclose(verts + shift, s["verts"], atol=1e-4)
        assert torch.allclose(joints + shift, s["joints3d"], atol=1e-4)


def test_synthetic_hands_are_deterministic_by_index_and_differ_between_indices():
    a, b = data.SyntheticHands(5, image_size=64, seed=3), data.SyntheticHands(5, image_size=64, seed=3)
    for i in (0, 4):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in x)
    x, y = a[0], a[1]
    assert not torch.allclose(x["image"], y["image"], atol=0.05) and not torch.allclose(x["joints3d"], y["joints3d"])
    assert x["image"].std() > 0.03  # not blank
    assert not torch.equal(data.SyntheticHands(5, image_size=64, seed=4)[0]["joints3d"], x["joints3d"])


def test_batched_getitems_gives_exactly_the_single_samples():
    dataset = data.SyntheticHands(6, image_size=48, augment=True, left_hand_prob=0.5)
    batch = dataset.__getitems__([5, 0, 3])
    for index, sample in zip((5, 0, 3), batch):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single)
    dataset.render_chunk = 2  # a batch split across renderer passes, the last one short
    for index, sample in zip((4, 1, 5, 2, 0), dataset.__getitems__([4, 1, 5, 2, 0])):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single)
    many = data.SyntheticHands(40, image_size=32, left_hand_prob=0.5)  # a DataLoader-sized batch
    indices = list(range(39, 3, -3))
    for index, sample in zip(indices, many.__getitems__(indices)):
        single = many[index]
        assert all(torch.equal(sample[k], single[k]) for k in single), index


def test_set_epoch_changes_augmented_and_varying_samples_only():
    fixed = data.SyntheticHands(2, image_size=64)
    augmented = data.SyntheticHands(2, image_size=64, augment=True)
    varying = data.SyntheticHands(2, image_size=64, vary_with_epoch=True)
    before = [d[1] for d in (fixed, augmented, varying)]
    for d in (fixed, augmented, varying):
        d.set_epoch(7)
    after = [d[1] for d in (fixed, augmented, varying)]
    assert torch.equal(before[0]["image"], after[0]["image"])
    assert not torch.equal(before[1]["image"], after[1]["image"])
    assert torch.equal(before[1]["mano_shape"], after[1]["mano_shape"])  # same hand, new camera
    assert not torch.equal(before[2]["mano_shape"], after[2]["mano_shape"])  # a new hand


# ---------------------------------------------------------------------------------------------
# 4. data loading: pickling, workers, DDP sampling

def test_datasets_pickle_and_load_in_worker_processes(freihand_root):
    from torch.utils.data import DataLoader, DistributedSampler

    for dataset in (data.SyntheticHands(4, image_size=64, augment=True), data.FreiHAND(freihand_root, "evaluation"),
                    data.SyntheticPoses(4)):
        clone = pickle.loads(pickle.dumps(dataset))
        direct = [dataset[i] for i in range(len(dataset))]
        assert all(torch.equal(clone[1][k], direct[1][k]) for k in direct[1])
        loader = DataLoader(dataset, batch_size=2, num_workers=2)
        batches = list(loader)
        for key in direct[0]:
            assert torch.equal(torch.cat([b[key] for b in batches]), torch.stack([d[key] for d in direct])), key
    # two DDP ranks draw disjoint indices; a sample is the same whichever rank draws it
    dataset = data.SyntheticHands(6, image_size=32)
    seen = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=1)) for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == list(range(6))


# ---------------------------------------------------------------------------------------------
# 5. synthetic bodies

BODY_KEYS = {"image": (3, 64, 64), "K": (3, 3), "joints3d": (24, 3), "joints2d": (24, 2), "verts": (6890, 3),
             "smpl_pose": (24, 3), "smpl_shape": (10,), "cam_t": (3,)}


@pytest.fixture(scope="module")
def smpl():
    return bodymodels.load_smpl()


@pytest.mark.parametrize("kwargs", [{}, {"augment": True}, {"focal_length": None}])
def test_synthetic_body_labels_are_smpl_of_its_parameters(smpl, kwargs):
    """Keys and shapes; verts = SMPL(smpl_pose, smpl_shape) + cam_t and joints3d its joints (oracle: smplx's SMPL);
    joints2d their projection; the person inside the crop."""
    dataset = data.SyntheticBodies(3, image_size=64, **kwargs)
    for i in range(len(dataset)):
        s = dataset[i]
        assert {k: tuple(v.shape) for k, v in s.items()} == BODY_KEYS
        out = smpl(betas=s["smpl_shape"][None], global_orient=s["smpl_pose"][None, 0],
                   body_pose=s["smpl_pose"][None, 1:].reshape(1, 69))
        assert torch.allclose(out.vertices[0] + s["cam_t"], s["verts"], atol=1e-4)
        assert torch.allclose(out.joints[0, :24] + s["cam_t"], s["joints3d"], atol=1e-4)
        projected = perspective_projection(s["joints3d"].double(), s["K"].double())
        assert (projected - s["joints2d"].double()).abs().max() < 0.5
        inside = ((s["joints2d"] > -4) & (s["joints2d"] < 68)).all(1).float().mean()
        assert inside > (0.8 if "augment" in kwargs else 0.99)


def test_synthetic_body_image_shows_the_labelled_mesh():
    dataset = data.SyntheticBodies(4, image_size=64, background="black", augment=True,
                                   augment_config=data.AugmentConfig(color=0.0))
    for i in range(len(dataset)):
        s = dataset[i]
        _, mask = synthetic.render_mesh(s["verts"], dataset.rig["faces"], s["K"], 64, return_mask=True)
        assert ((s["image"].sum(0) > 0) == mask).float().mean() > 0.995
        assert s["image"].std() > 0.05


def test_synthetic_poses_are_the_poses_of_synthetic_bodies_and_deterministic():
    poses, bodies = data.SyntheticPoses(4, seed=5), data.SyntheticBodies(4, image_size=32, seed=5)
    for i in (0, 3):
        p, b = poses[i], bodies[i]
        assert set(p) == {"smpl_pose", "smpl_shape"}
        assert torch.equal(p["smpl_pose"], b["smpl_pose"]) and torch.equal(p["smpl_shape"], b["smpl_shape"])
        again = data.SyntheticBodies(4, image_size=32, seed=5)[i]
        assert all(torch.equal(again[k], b[k]) for k in b)
    assert not torch.allclose(poses[0]["smpl_pose"], poses[1]["smpl_pose"])
    assert not torch.allclose(bodies[0]["image"], bodies[1]["image"], atol=0.05)


@pytest.mark.parametrize("kwargs", [{}, {"augment": True, "focal_length": None}])
def test_batched_body_getitems_gives_exactly_the_single_samples(kwargs):
    dataset = data.SyntheticBodies(7, image_size=40, **kwargs)
    dataset.render_chunk = 3  # a batch split across renderer passes, the last one short
    indices = [6, 0, 3, 5, 1]
    for index, sample in zip(indices, dataset.__getitems__(indices)):
        single = dataset[index]
        assert all(torch.equal(sample[k], single[k]) for k in single), index


def test_batch_skinning_is_smpl_and_independent_of_the_batch(smpl):
    """The datasets' SMPL skinning against smplx's SMPL (the oracle), and each body the same alone as in a batch."""
    rng = torch.Generator().manual_seed(0)
    pose, betas = 0.4 * torch.randn(6, 24, 3, generator=rng), torch.randn(6, 10, generator=rng)
    verts, joints = data.skinning("smpl", dtype=torch.float32)(pose, betas)
    out = smpl(betas=betas, global_orient=pose[:, 0], body_pose=pose[:, 1:].reshape(6, 69))
    assert torch.allclose(verts, out.vertices, atol=1e-5) and torch.allclose(joints, out.joints[:, :24], atol=1e-5)
    alone = data.skinning("smpl", dtype=torch.float32)(pose[4:5], betas[4:5])
    assert torch.equal(alone[0][0], verts[4]) and torch.equal(alone[1][0], joints[4])


def test_flat_background_is_one_colour_with_little_noise():
    bodies = data.SyntheticBodies(2, (64, 48), background="flat", colors="suit")
    masks = data.SyntheticBodies(2, (64, 48), background="black", colors="suit")
    for i in range(2):
        image, mask = bodies[i]["image"], masks[i]["image"].sum(0) == 0  # the person is never exactly black
        background = image[:, mask]
        assert background.shape[1] > 1000
        assert (background.std(1) < 0.05).all() and (background.std(1) > 0.01).all()
    with pytest.raises(ValueError, match="colors must be 'clothes' or 'suit'"):
        data.SyntheticBodies(2, colors="paint")
    whole = data.SyntheticWholeBody(1, (64, 48), colors="suit", background="flat")[0]["image"]
    corner = whole[:, :6, :6].reshape(3, -1)  # the person is centred: the corners are background
    assert (corner.std(1) < 0.05).all()
    with pytest.raises(ValueError, match="SyntheticWholeBody: background must be one of"):
        data.SyntheticWholeBody(1, background="black")


# ---------------------------------------------------------------------------------------------
# 6. synthetic whole bodies

def test_synthetic_whole_body_keys_and_labels():
    dataset = data.SyntheticWholeBody(6, image_size=(64, 48))
    smplx_model, mano = bodymodels.load_smplx(), bodymodels.load_mano()
    visible = 0
    for i in range(len(dataset)):
        s = dataset[i]
        assert s["image"].shape == (3, 64, 48) and s["joints3d"].shape == (55, 3) and s["verts"].shape == (10475, 3)
        p = s["smplx_pose"]
        out = smplx_model(betas=s["smplx_shape"][None], expression=s["smplx_expression"][None],
                          global_orient=p[None, 0],
                          body_pose=p[None, 1:22].reshape(1, 63), jaw_pose=p[None, 22], leye_pose=p[None, 23],
                          reye_pose=p[None, 24], left_hand_pose=p[None, 25:40].reshape(1, 45),
                          right_hand_pose=p[None, 40:55].reshape(1, 45))
        assert torch.allclose(out.vertices[0] + s["cam_t"], s["verts"], atol=1e-4)
        assert (perspective_projection(s["joints3d"].double(), s["K"].double()) - s["joints2d"]).abs().max() < 0.5
        for side, arm in (("left", bodymodels.SMPLX_LEFT_ARM), ("right", bodymodels.SMPLX_RIGHT_ARM)):
            joints = s[f"{side}_hand_joints3d"].double()
            uv, box = perspective_projection(joints, s["K"].double()), s[f"{side}_hand_box"]
            assert (uv - s[f"{side}_hand_joints2d"]).abs().max() < 0.5 and s[f"{side}_hand_occluded"] == 0
            # the box holds the hand's joints in the body image
            assert ((uv >= box[:2] - 1) & (uv <= box[2:] + 1)).all()
            assert torch.equal(s[f"{side}_arm_pose"], p[list(arm)])
            # MANO posed by the MANO-space pose points its bones the same way as SMPL-X's hand
            # (the two stand-ins' proportions differ a little, so compare directions, not positions)
            mp = s[f"{side}_hand_mano_pose"]
            m = mano(global_orient=mp[None, 0], hand_pose=mp[None, 1:].reshape(1, 45))
            mj = data.mano_to_freihand(m.joints[0], m.vertices[0]).detach().double()
            if side == "left":
                mj = mj * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
            parents = torch.tensor(data.FREIHAND_PARENTS[1:])
            bones = [torch.nn.functional.normalize(j[1:] - j[parents], dim=-1) for j in (mj, joints)]
            assert torch.rad2deg(torch.acos((bones[0] * bones[1]).sum(-1).clamp(-1, 1))).mean() < 5
            visible += float(s[f"{side}_hand_visible"]) > 0.5
    assert visible >= 0.6 * 2 * len(dataset)  # both hands show most of the time


# ---------------------------------------------------------------------------------------------
# 7. the rendered cache and the trainer's helpers

def test_render_once_writes_a_rendered_set_equal_to_the_samples(tmp_path):
    dataset = data.SyntheticHands(5, image_size=32, seed=2)
    calls = []
    cached = data.render_once(dataset, tmp_path / "hands.pt", barrier=lambda: calls.append(1))
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["hands.pt"]  # parts removed
    assert isinstance(cached, data.RenderedSet) and len(cached) == 5
    for i in (0, 4):
        sample, fresh = cached[i], dataset[i]
        assert set(sample) == set(fresh) and sample["image"].dtype == torch.float32
        assert (sample["image"] - fresh["image"]).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8
        assert all(torch.equal(sample[k], fresh[k]) for k in fresh if k != "image")
    cached.set_epoch(3)
    assert torch.equal(cached[1]["image"], data.render_once(dataset, tmp_path / "hands.pt")[1]["image"])  # read back


def test_render_once_shares_the_work_between_ranks(tmp_path):
    """Two ranks (run one after the other here, the barrier a no-op): rank 1 writes its part, rank 0
    its own and the joined file, which holds every sample in order."""
    dataset = data.SyntheticPoses(5, seed=1)
    path = tmp_path / "poses.pt"
    torch.save(data.stack_samples(dataset, range(2, 5)), f"{path}.part1")  # rank 1's share, before the barrier
    cached = data.render_once(dataset, path, rank=0, world_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.pt"]
    assert len(cached) == 5 and set(cached[0]) == {"smpl_pose", "smpl_shape"}  # a set without images
    for i in range(5):
        assert torch.equal(cached[i]["smpl_pose"], dataset[i]["smpl_pose"])


def test_labels_read_every_key_but_the_image_for_strided_samples(tmp_path):
    dataset = data.SyntheticHands(9, image_size=24)
    direct = data.labels(dataset, limit=4)  # indices 0, 3, 6
    assert "image" not in direct and direct["joints3d"].shape == (3, 21, 3)
    assert torch.equal(direct["verts"][2], dataset[6]["verts"])
    cached = data.labels(data.render_once(dataset, tmp_path / "h.pt"), limit=4)
    assert set(cached) == set(direct) and all(torch.equal(cached[k], direct[k]) for k in direct)
    assert len(data.labels(dataset)["K"]) == 9


def test_hand_dataset_builds_each_kind(freihand_root):
    cfg = types.SimpleNamespace(image_size=40)
    train, held_out = (data.hand_dataset("synthetic", "", split, cfg, 3, 4) for split in ("training", "evaluation"))
    assert train.image_size == 40 and train.view_config == data.DEMO_HAND_VIEW
    assert held_out.seed == 3 + 1_000_003 and train.seed == 3
    real = data.hand_dataset("freihand", freihand_root, "training", cfg, 0, None)
    assert isinstance(real, data.FreiHAND) and real.augment and real[0]["image"].shape == (3, 40, 40)
    with pytest.raises(ValueError, match="kind"):
        data.hand_dataset("video", "", "training", cfg, 0, 4)


def test_draw_hand_predictions_writes_a_png(tmp_path):
    eval_set = data.SyntheticHands(3, image_size=64, left_hand_prob=0.5)
    gt = data.labels(eval_set)
    pred = {"joints2d": gt["joints2d"] + 2.0, "joints3d": gt["joints3d"] - gt["joints3d"][:, :1],
            "verts": gt["verts"] - gt["joints3d"][:, :1]}  # root-relative 3D
    path = data.draw_hand_predictions(tmp_path / "predictions.png", eval_set, pred, gt, count=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = data.overlay_mesh(eval_set[0]["image"], gt["verts"][0], eval_set.faces, gt["K"][0], (0.0, 1.0, 0.0))
    assert image.shape == (3, 64, 64) and not torch.equal(image, eval_set[0]["image"])


def test_body_datasets_for_the_trainer_carry_index_and_the_meshes_they_are_scored_on():
    cfg = types.SimpleNamespace(image_size=(32, 24))
    poses = data.body_pose_dataset("synthetic", "", "evaluation", cfg, 0, 3)
    sample = poses[2]
    assert int(sample["index"]) == 2 and sample["verts"].shape == (6890, 3) and sample["joints3d"].shape == (24, 3)
    verts, joints = data.skinning("smpl", None, torch.float32)(sample["smpl_pose"][None], sample["smpl_shape"][None])
    torch.testing.assert_close(sample["joints3d"], joints[0])
    assert "verts" not in data.body_pose_dataset("synthetic", "", "training", cfg, 0, 3)[0]
    train_bodies = data.body_dataset("synthetic", "", "training", cfg, 0, 2)
    held_out = data.body_dataset("synthetic", "", "evaluation", cfg, 0, 2)
    assert "verts" not in train_bodies[0] and held_out[1]["verts"].shape == (6890, 3)
    assert held_out[1]["image"].shape == (3, 32, 24) and int(held_out[1]["index"]) == 1
    assert not torch.equal(train_bodies[0]["smpl_pose"], held_out[0]["smpl_pose"])  # another seed
    with pytest.raises(ValueError, match="only 'synthetic'"):
        data.body_dataset("npz", "/x", "training", cfg, 0, 2)


def test_draw_body_pictures_write_pngs(tmp_path):
    cfg = types.SimpleNamespace(image_size=(48, 36))
    eval_set = data.body_dataset("synthetic", "", "evaluation", cfg, 0, 2)
    gt = data.stack_samples(eval_set, range(2))
    pred = {"verts": gt["verts"] + 0.02, "refined_verts": gt["verts"], "joints3d": gt["joints3d"]}
    assert os.path.getsize(data.draw_body_predictions(tmp_path / "a.png", eval_set, pred, gt)) > 5_000
    assert os.path.getsize(data.draw_pose_reconstructions(tmp_path / "b.png", eval_set, pred, gt)) > 5_000


# ---------------------------------------------------------------------------------------------
# 5b. real bodies: 4D-Humans / HMR2.0's evaluation .npz


def write_hmr2_npz(folder, count=4, size=(120, 100), seed=0):
    """An HMR2.0 evaluation .npz from the format's description (image_dataset.py): `count` people in
    PNGs of `size` (H, W) under folder/images, a red dot at each OpenPose MidHip (keypoint 8), person
    boxes of 60 x 80 px (scale (N, 2) / 200), SMPL labels on some rows (has_body_pose, has_betas)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    center = np.stack([rng.uniform(40, 60, count), rng.uniform(50, 70, count)], 1)
    kp2d = np.concatenate([center[:, None] + rng.uniform(-30, 30, (count, 44, 2)), np.ones((count, 44, 1))], 2)
    kp2d[:, 8, :2] = center + rng.uniform(-8, 8, (count, 2))  # MidHip: the dot
    kp2d[:, 3, 2] = 0  # a right elbow nobody saw (SMPL joint 19 falls back to the extra keypoints)
    imgname = []
    for i in range(count):
        imgname.append(f"images/{i:03d}.png")
        dot_image(folder / imgname[-1], kp2d[i, 8, :2], size)
    arrays = dict(imgname=np.asarray(imgname), center=center, scale=np.tile([[0.3, 0.4]], (count, 1)),
                  body_pose=rng.normal(0, 0.2, (count, 72)), has_body_pose=np.array([1, 1, 0, 1][:count], float),
                  betas=rng.normal(0, 1, (count, 10)), has_betas=np.array([1, 0, 1, 1][:count], float),
                  body_keypoints_2d=kp2d[:, :25], extra_keypoints_2d=kp2d[:, 25:],
                  body_keypoints_3d=np.concatenate([rng.normal(0, 0.3, (count, 25, 3)), np.ones((count, 25, 1))], 2),
                  extra_keypoints_3d=np.concatenate([rng.normal(0, 0.3, (count, 19, 3)), np.ones((count, 19, 1))], 2))
    np.savez(folder / "bench.npz", **arrays)
    return folder / "bench.npz", arrays


def test_hmr2_npz_crops_the_box_and_moves_the_keypoints_with_it(tmp_path):
    path, arrays = write_hmr2_npz(tmp_path)
    dataset = data.HMR2Npz(path, (64, 48))
    assert len(dataset) == 4
    sample = dataset[1]
    shapes = {"image": (3, 64, 48), "K": (3, 3), "smpl_pose": (24, 3), "smpl_shape": (10,), "has_smpl_pose": (),
              "has_smpl_shape": (), "joints2d": (24, 2), "joints2d_weight": (24,), "joints3d_weight": (24,),
              "keypoints2d": (44, 3), "keypoints3d": (44, 4)}
    assert {k: tuple(v.shape) for k, v in sample.items()} == shapes
    assert all(v.dtype == torch.float32 for v in sample.values())
    # the box 60 x 80 px grown to 3:4 is 80 px high: 64 / 80 crop pixels per image pixel, centred
    scale = 64 / 80
    expected = (arrays["body_keypoints_2d"][1, :, :2] - arrays["center"][1]) * scale + np.array([24.0, 32.0])
    np.testing.assert_allclose(sample["keypoints2d"][:25, :2].numpy(), expected, atol=1e-4)
    u, v = sample["joints2d"][0].round().long().tolist()  # SMPL pelvis <- OpenPose MidHip: on the dot
    assert sample["image"][0, v, u] > 0.7 and sample["image"][1, v, u] < 0.4
    assert sample["joints2d_weight"][0] == 1 and sample["joints2d_weight"][19] == 1  # elbow from the extra 19
    np.testing.assert_allclose(sample["joints2d"][19].numpy(), sample["keypoints2d"][25 + 7, :2].numpy())
    assert sample["joints2d_weight"][3] == 0  # spine: no keypoint
    assert sample["has_smpl_shape"] == 0 and dataset[2]["has_smpl_pose"] == 0
    assert (sample["keypoints3d"][1:15, 3] == 0).all() and (sample["keypoints3d"][15:, 3] == 1).all()
    np.testing.assert_allclose(sample["smpl_pose"].numpy().reshape(72), arrays["body_pose"][1], rtol=1e-6)
    # official expand_to_aspect_ratio(scale * 200, [192, 256]).max(): a square box grows by 4/3
    dataset.box_wh[0] = (90.0, 90.0)
    assert dataset.box_size(0) == pytest.approx(120.0)


def test_hmr2_npz_errors_name_the_file_and_key(tmp_path):
    path, arrays = write_hmr2_npz(tmp_path)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "center"})
    with pytest.raises(ValueError, match="bench.npz has no key 'center'"):
        data.HMR2Npz(path, (64, 48))
    np.savez(path, **{k: v for k, v in arrays.items() if k != "has_betas"})
    with pytest.raises(ValueError, match="no key 'has_betas'"):
        data.HMR2Npz(path, (64, 48))
    np.savez(path, **dict(arrays, extra_keypoints_3d=arrays["extra_keypoints_3d"][:, :, :3]))
    with pytest.raises(ValueError, match=r"key 'extra_keypoints_3d' has shape \(4, 19, 3\), expected \(4, 19, 4\)"):
        data.HMR2Npz(path, (64, 48))
    np.savez(path, **arrays)
    (tmp_path / "images" / "002.png").unlink()
    dataset = data.HMR2Npz(path, (64, 48))
    with pytest.raises(FileNotFoundError, match="row 2 key 'imgname': missing image .*002.png"):
        dataset[2]
    with pytest.raises(FileNotFoundError, match="missing"):
        data.HMR2Npz(tmp_path / "nothing.npz", (64, 48))


def test_hmr2_datasets_for_the_genhmr_stages(tmp_path, monkeypatch):
    """body_dataset / body_pose_dataset reach the file: the tokenizer gets the labelled poses, the image
    stages every row with the labels' SMPL mesh; the held-out split needs the protocol's regressor."""
    path, arrays = write_hmr2_npz(tmp_path)
    cfg = types.SimpleNamespace(image_size=(64, 48))
    poses = data.body_pose_dataset("hmr2", str(path), "training", cfg, 0, 99)
    assert len(poses) == 3 and set(poses[0]) == {"smpl_pose", "smpl_shape", "index"}
    monkeypatch.delenv("HMR_J_REGRESSOR", raising=False)
    with pytest.raises(FileNotFoundError, match="HMR_J_REGRESSOR"):
        data.body_dataset("hmr2", str(path), "evaluation", cfg, 0, 99)
    train_set = data.body_dataset("hmr2", str(path), "training", cfg, 0, 99)
    sample = train_set[3]
    assert "verts" not in sample and sample["joints3d"].shape == (24, 3) and int(sample["index"]) == 3


# ---------------------------------------------------------------------------------------------
# 5c. real whole bodies: EHF / ARCTIC as one .npz (data.WholeBodyNpz)

WHOLEBODY_OFFSET = (16, 20)  # (x, y): where the synthetic crop sits in the fixture's larger image


def write_wholebody_npz(folder, count=3, size=(64, 48)):
    """A whole-body .npz from WholeBodyNpz's description, built from SyntheticWholeBody people: each
    rendered crop pasted at WHOLEBODY_OFFSET into a 100 x 80 PNG whose K is the crop's shifted there;
    the person box so that the loader's crop (x 1.25) is the synthetic crop again; hand boxes in image
    pixels, hand_occluded. Returns the path, the arrays and the synthetic samples."""
    from PIL import Image

    people = data.SyntheticWholeBody(count, image_size=size, seed=3)
    samples = [people[i] for i in range(count)]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (ox, oy), (H, W) = WHOLEBODY_OFFSET, size
    shift = np.array([ox, oy, ox, oy], float)
    imgname = []
    for i, s in enumerate(samples):
        canvas = np.zeros((100, 80, 3), np.uint8)
        canvas[oy:oy + H, ox:ox + W] = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        imgname.append(f"images/{i:03d}.png")
        Image.fromarray(canvas).save(folder / imgname[-1])
    K = np.stack([s["K"].double().numpy() for s in samples])
    K[:, 0, 2] += ox
    K[:, 1, 2] += oy
    box = np.array([ox + W / 2 - W / 2.5, oy + H / 2 - H / 2.5, ox + W / 2 + W / 2.5, oy + H / 2 + H / 2.5])
    stack = lambda key: np.stack([s[key].double().numpy() for s in samples])
    arrays = dict(imgname=np.asarray(imgname), smplx_pose=stack("smplx_pose"), smplx_shape=stack("smplx_shape"),
                  smplx_expression=stack("smplx_expression"), transl=stack("cam_t"), K=K, bbox=np.tile(box, (count, 1)),
                  left_hand_box=stack("left_hand_box") + shift, right_hand_box=stack("right_hand_box") + shift,
                  hand_occluded=np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])[:count])
    np.savez(folder / "wholebody.npz", **arrays)
    return folder / "wholebody.npz", arrays, samples


def test_wholebody_npz_gives_back_the_synthetic_people_it_was_written_from(tmp_path):
    """The oracle: SyntheticWholeBody's own labels. Written into the format (a larger image, its K, the
    parameters), read back through the person crop: the same image, camera, mesh, joints, hand boxes,
    MANO hand poses (bodymodels.hands_of_body against the sampled fingers), visibility and arm poses."""
    path, arrays, samples = write_wholebody_npz(tmp_path)
    dataset = data.WholeBodyNpz(path, (64, 48))
    assert len(dataset) == 3
    for i, want in enumerate(samples):
        got = dataset[i]
        assert set(got) == set(want)
        assert all(got[k].shape == want[k].shape and got[k].dtype == torch.float32 for k in got)
        assert (got["image"] - want["image"]).abs().max() < 1 / 255  # PNG: 8 bits
        for key in set(want) - {"image", "left_hand_occluded", "right_hand_occluded"}:
            torch.testing.assert_close(got[key], want[key], atol=2e-4, rtol=1e-4, msg=key)
        assert [float(got[f"{s}_hand_occluded"]) for s in ("left", "right")] == arrays["hand_occluded"][i].tolist()
    # no hand boxes or occlusion in the file: SyntheticWholeBody's box rule, 0; no person box: the mesh's, x 1.25
    np.savez(path, **{k: v for k, v in arrays.items() if k not in ("left_hand_box", "right_hand_box", "hand_occluded")})
    got = data.WholeBodyNpz(path, (64, 48))[1]
    torch.testing.assert_close(got["right_hand_box"], samples[1]["right_hand_box"], atol=2e-4, rtol=0)
    assert got["left_hand_occluded"] == 0 and got["right_hand_occluded"] == 0
    np.savez(path, **{k: v for k, v in arrays.items() if k != "bbox"})
    got = data.WholeBodyNpz(path, (64, 48))[1]
    uv = got["joints2d"]
    low, high = uv.amin(0), uv.amax(0)
    assert (low > -1).all() and (high < torch.tensor([49.0, 65.0])).all()  # the person fills the crop ...
    assert ((high - low) / torch.tensor([48.0, 64.0])).max() > 0.6  # ... about 1 / 1.25 of it


def test_wholebody_npz_errors_name_the_file_key_and_row(tmp_path):
    path, arrays, _ = write_wholebody_npz(tmp_path, count=2)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "smplx_expression"})
    with pytest.raises(ValueError, match="wholebody.npz has no key 'smplx_expression'"):
        data.WholeBodyNpz(path, (64, 48))
    np.savez(path, **dict(arrays, smplx_pose=arrays["smplx_pose"][:, :22]))
    with pytest.raises(ValueError, match=r"key 'smplx_pose' has shape \(2, 22, 3\), expected \(2, 55, 3\)"):
        data.WholeBodyNpz(path, (64, 48))
    np.savez(path, **dict(arrays, left_hand_box=arrays["left_hand_box"][:1]))
    with pytest.raises(ValueError, match=r"key 'left_hand_box' has shape \(1, 4\), expected \(2, 4\)"):
        data.WholeBodyNpz(path, (64, 48))
    np.savez(path, **arrays)
    (tmp_path / "images" / "001.png").unlink()
    dataset = data.WholeBodyNpz(path, (64, 48))
    with pytest.raises(FileNotFoundError, match="row 1 key 'imgname': missing image .*001.png"):
        dataset[1]
    with pytest.raises(FileNotFoundError, match="missing"):
        data.WholeBodyNpz(tmp_path / "nothing.npz", (64, 48))


def test_wholebody_dataset_reaches_the_file(tmp_path):
    path, _, _ = write_wholebody_npz(tmp_path, count=2)
    cfg = types.SimpleNamespace(image_size=(64, 48))
    train_set = data.wholebody_dataset("wholebody", str(path), "training", cfg, 0, 99)
    eval_set = data.wholebody_dataset("wholebody", f"{path},{path}", "evaluation", cfg, 0, 99)
    assert len(train_set) == len(eval_set) == 2
    assert "verts" not in train_set[1] and eval_set[1]["verts"].shape == (10475, 3) and int(eval_set[1]["index"]) == 1
    with pytest.raises(ValueError, match="'freihand' is not readable"):
        data.wholebody_dataset("freihand", str(path), "training", cfg, 0, 99)


def test_ambiguous_bodies_show_both_readings_in_the_same_image():
    """AmbiguousBodies: the image of a person is the same whichever reading of the right arm the coin
    picked (the occluder covers every pixel where they differ), the other reading is the labelled pose with
    only the shoulder's mean swapped, and its joints are SMPL's of that pose in the same camera."""
    dataset = data.AmbiguousBodies(6, image_size=(64, 48), seed=5, pose_config=data.DEMO_BODY_POSE,
                                   **data.DEMO_BODY_LOOK)
    drawn = dataset.__getitems__(list(range(6)))
    original = data.ambiguous_arm

    def swapped(pose, rng):  # the same draws, the coin's outcome reversed
        mine, other, true = original(pose, rng)
        return other, mine, 1 - true

    data.ambiguous_arm = swapped
    try:
        flipped = dataset.__getitems__(list(range(6)))
    finally:
        data.ambiguous_arm = original
    readings = torch.tensor(data.AMBIGUOUS_READINGS)
    assert {int(s["reading"]) for s in drawn} == {0, 1}
    for a, b in zip(drawn, flipped):
        assert int(a["reading"]) == 1 - int(b["reading"])
        assert torch.equal(a["image"], b["image"])  # nothing in the picture tells the readings apart
        torch.testing.assert_close(a["smpl_pose_other"], b["smpl_pose"])
        torch.testing.assert_close(a["joints3d_other"], b["joints3d"])
        moved = (a["smpl_pose"] - a["smpl_pose_other"]).abs().sum(1) > 0
        assert moved.nonzero().flatten().tolist() == [data.AMBIGUOUS_JOINT]
        torch.testing.assert_close(a["smpl_pose"][17] - a["smpl_pose_other"][17],
                                   readings[int(a["reading"])] - readings[1 - int(a["reading"])])
        apart = (a["joints3d"] - a["joints3d_other"]).norm(dim=-1) > 0.01
        assert apart.nonzero().flatten().tolist() == list(data.AMBIGUOUS_MOVED)
        x0, y0, x1, y1 = a["occluder"].long().tolist()
        for joints in (a["joints3d"], a["joints3d_other"]):  # every hidden joint of both readings under the occluder
            uv = bodymodels.perspective_projection(joints[list(data.AMBIGUOUS_MOVED)].double(), a["K"].double())
            assert ((uv >= torch.tensor([x0, y0])) & (uv <= torch.tensor([x1, y1]))).all()
    with pytest.raises(ValueError, match="augment"):
        data.AmbiguousBodies(2, image_size=32, augment=True)


# ---------------------------------------------------------------------------------------------
# 7. Pictures (moved from bodymodels) and photographs as files (`read_image`)


def test_plot_mesh_views_draws_every_face_and_bone_in_three_views():
    from matplotlib.collections import LineCollection, PolyCollection

    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    fig = data.plot_mesh_views(verts, faces, joints=verts[:3], parents=(-1, 0, 1), title="tetrahedron")
    assert [ax.get_title() for ax in fig.axes] == ["front", "side", "top"]
    for ax in fig.axes:
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        bones = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(polys) == 1 and len(polys[0].get_paths()) == 4
        assert len(bones) == 1 and len(bones[0].get_segments()) == 2
    with pytest.raises(ValueError, match="faces"):
        data.plot_mesh_views(verts, faces[:, :2])
    with pytest.raises(ValueError, match="parents"):
        data.plot_mesh_views(verts, faces, joints=verts, parents=(-1, 0))



def test_draw_skeleton_draws_one_line_per_bone_in_the_given_colours():
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    points = torch.rand(21, 2)
    bones = data.draw_skeleton(ax, points, bodymodels.FREIHAND_PARENTS, color="bones", label="truth")
    assert len(bones.get_segments()) == 20 and bones.get_label() == "truth"
    assert np.allclose(bones.get_colors()[0], to_rgba(data.FINGER_COLORS[0]))  # bone 1: the thumb
    assert np.allclose(bones.get_segments()[4], points[[0, 5]].numpy())  # bone 5: wrist -> index
    assert data.draw_skeleton(ax, points, None) is None


def _save_image(tmp_path, name, array, mode=None, **kwargs):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def test_read_image_reads_gray_alpha_palette_and_16_bit_images_as_rgb_in_unit_range(tmp_path):
    from PIL import Image

    gray = np.tile(np.arange(32, dtype=np.uint8)[None] * 8, (20, 1))  # (20, 32)
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 7)], -1)
    rgba = np.concatenate([rgb, np.zeros_like(gray)[..., None]], -1)  # fully transparent: colour kept
    expected_rgb = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    assert torch.equal(data.read_image(_save_image(tmp_path, "rgb.png", rgb)), expected_rgb)
    assert torch.equal(data.read_image(_save_image(tmp_path, "rgba.png", rgba)), expected_rgb)
    assert torch.equal(data.read_image(_save_image(tmp_path, "gray.png", gray)), expected_rgb[:1].expand(3, -1, -1))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "p.png")
    palette = data.read_image(tmp_path / "p.png")
    assert palette.shape == (3, 20, 32) and (palette - expected_rgb).abs().max() < 0.05
    deep = (np.arange(20 * 32, dtype=np.uint16).reshape(20, 32) * 100)  # values up to 63900 of 65535
    image16 = data.read_image(_save_image(tmp_path, "deep.png", deep))
    assert torch.allclose(image16[1], torch.from_numpy(deep / 65535).float(), atol=1e-7)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif)
    assert data.read_image(tmp_path / "turned.jpg").shape == (3, 32, 20)


def test_read_image_errors_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    good = _save_image(tmp_path, "good.png", np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    cases = {tmp_path / "missing.png": "no such file", tmp_path / "text.png": "not a readable image",
             tmp_path / "cut.png": "not a readable image",
             _save_image(tmp_path, "tiny.png", np.zeros((8, 40, 3), np.uint8)): "40 x 8 pixels"}
    for path, expected in cases.items():
        with pytest.raises(data.InputError) as e:
            data.read_image(path)
        assert str(path) in str(e.value) and expected in str(e.value)
