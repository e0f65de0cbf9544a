"""Tests for data.py: projection consistency after augmentation, real-data loaders on fixture folders built
here in the official layouts, DataLoader / pickling behaviour, batch skinning, the rendered cache and
photographs as files. The synthetic datasets: test_synthetic.py; pictures: test_plots.py."""
import math
import pickle
import types

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bodymodels
import data
from lab import synthetic
from bodymodels import axis_angle_to_matrix, perspective_projection



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
    """A FreiHAND folder in the official layout (`data.FreiHAND` lists it), with `train` hands x 4 versions."""
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
    assert (projected - sample["joints2d"].double()).abs().max() < 0.5  # within half a pixel


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
    datasets = (synthetic.SyntheticHands(2, image_size=80), data.FreiHAND(freihand_root, "training", image_size=80),
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
# 3. data loading: pickling, workers, DDP sampling; batch skinning

def test_datasets_pickle_and_load_in_worker_processes(freihand_root):
    from torch.utils.data import DataLoader, DistributedSampler

    for dataset in (synthetic.SyntheticHands(4, image_size=64, augment=True),
                    data.FreiHAND(freihand_root, "evaluation"), synthetic.SyntheticPoses(4)):
        clone = pickle.loads(pickle.dumps(dataset))
        direct = [dataset[i] for i in range(len(dataset))]
        assert all(torch.equal(clone[1][k], direct[1][k]) for k in direct[1])
        loader = DataLoader(dataset, batch_size=2, num_workers=2)
        batches = list(loader)
        for key in direct[0]:
            assert torch.equal(torch.cat([b[key] for b in batches]), torch.stack([d[key] for d in direct])), key
    # two DDP ranks draw disjoint indices; a sample is the same whichever rank draws it
    dataset = synthetic.SyntheticHands(6, image_size=32)
    seen = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=1)) for r in (0, 1)]
    assert sorted(seen[0] + seen[1]) == list(range(6))


@pytest.fixture(scope="module")
def smpl():
    return bodymodels.load_smpl()


def test_batch_skinning_is_smpl_and_independent_of_the_batch(smpl):
    """The datasets' SMPL skinning against smplx's SMPL (the oracle), and each body the same alone as in a batch."""
    rng = torch.Generator().manual_seed(0)
    pose, betas = 0.4 * torch.randn(6, 24, 3, generator=rng), torch.randn(6, 10, generator=rng)
    verts, joints = data.skinning("smpl", dtype=torch.float32)(pose, betas)
    out = smpl(betas=betas, global_orient=pose[:, 0], body_pose=pose[:, 1:].reshape(6, 69))
    assert torch.allclose(verts, out.vertices, atol=1e-5) and torch.allclose(joints, out.joints[:, :24], atol=1e-5)
    alone = data.skinning("smpl", dtype=torch.float32)(pose[4:5], betas[4:5])
    assert torch.equal(alone[0][0], verts[4]) and torch.equal(alone[1][0], joints[4])



# ---------------------------------------------------------------------------------------------
# 4. the rendered cache and the trainer's datasets

def test_render_once_writes_a_rendered_set_equal_to_the_samples(tmp_path):
    dataset = synthetic.SyntheticHands(5, image_size=32, seed=2)
    calls = []
    cached = synthetic.render_once(dataset, tmp_path / "hands.pt", barrier=lambda: calls.append(1))
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["hands.pt"]  # parts removed
    assert isinstance(cached, data.RenderedSet) and len(cached) == 5
    for i in (0, 4):
        sample, fresh = cached[i], dataset[i]
        assert set(sample) == set(fresh) and sample["image"].dtype == torch.float32
        assert (sample["image"] - fresh["image"]).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8
        assert all(torch.equal(sample[k], fresh[k]) for k in fresh if k != "image")
    cached.set_epoch(3)
    again = synthetic.render_once(dataset, tmp_path / "hands.pt")  # read back
    assert torch.equal(cached[1]["image"], again[1]["image"])


def test_render_once_shares_the_work_between_ranks(tmp_path):
    """Two ranks (run one after the other here, the barrier a no-op): rank 1 writes its part, rank 0
    its own and the joined file, which holds every sample in order."""
    dataset = synthetic.SyntheticPoses(5, seed=1)
    path = tmp_path / "poses.pt"
    torch.save(data.stack_samples(dataset, range(2, 5)), f"{path}.part1")  # rank 1's share, before the barrier
    cached = synthetic.render_once(dataset, path, rank=0, world_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.pt"]
    assert len(cached) == 5 and set(cached[0]) == {"smpl_pose", "smpl_shape"}  # a set without images
    for i in range(5):
        assert torch.equal(cached[i]["smpl_pose"], dataset[i]["smpl_pose"])


def test_labels_read_every_key_but_the_image_for_strided_samples(tmp_path):
    dataset = synthetic.SyntheticHands(9, image_size=24)
    direct = data.labels(dataset, limit=4)  # indices 0, 3, 6
    assert "image" not in direct and direct["joints3d"].shape == (3, 21, 3)
    assert torch.equal(direct["verts"][2], dataset[6]["verts"])
    cached = data.labels(synthetic.render_once(dataset, tmp_path / "h.pt"), limit=4)
    assert set(cached) == set(direct) and all(torch.equal(cached[k], direct[k]) for k in direct)
    assert len(data.labels(dataset)["K"]) == 9


def test_hand_dataset_builds_each_kind(freihand_root):
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(image_size=40))  # a preset's path to the crop size
    train, held_out = (synthetic.hand_dataset("synthetic", "", split, cfg, 3, 4)
                       for split in ("training", "evaluation"))
    assert train.image_size == 40 and train.view_config == synthetic.DEMO_HAND_VIEW
    assert held_out.seed == 3 + 1_000_003 and train.seed == 3
    real = synthetic.hand_dataset("freihand", freihand_root, "training", cfg, 0, None)
    assert isinstance(real, data.FreiHAND) and real.augment and real[0]["image"].shape == (3, 40, 40)
    with pytest.raises(ValueError, match="kind"):
        synthetic.hand_dataset("video", "", "training", cfg, 0, 4)


# ---------------------------------------------------------------------------------------------
# 5. real bodies: 4D-Humans / HMR2.0's evaluation .npz


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
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(image_size=(64, 48)))  # a GenHMR preset's path
    poses = synthetic.body_pose_dataset("hmr2", str(path), "training", cfg, 0, 99)
    assert len(poses) == 3 and set(poses[0]) == {"smpl_pose", "smpl_shape", "index"}
    monkeypatch.delenv("HMR_J_REGRESSOR", raising=False)
    with pytest.raises(FileNotFoundError, match="HMR_J_REGRESSOR"):
        synthetic.body_dataset("hmr2", str(path), "evaluation", cfg, 0, 99)
    train_set = synthetic.body_dataset("hmr2", str(path), "training", cfg, 0, 99)
    sample = train_set[3]
    assert "verts" not in sample and sample["joints3d"].shape == (24, 3) and int(sample["index"]) == 3


# ---------------------------------------------------------------------------------------------
# 6. real whole bodies: EHF / ARCTIC as one .npz (data.WholeBodyNpz)

WHOLEBODY_OFFSET = (16, 20)  # (x, y): where the synthetic crop sits in the fixture's larger image


def write_wholebody_npz(folder, count=3, size=(64, 48)):
    """A whole-body .npz from WholeBodyNpz's description, built from SyntheticWholeBody people: each
    rendered crop pasted at WHOLEBODY_OFFSET into a 100 x 80 PNG whose K is the crop's shifted there;
    the person box so that the loader's crop (x 1.25) is the synthetic crop again; hand boxes in image
    pixels, hand_occluded. Returns the path, the arrays and the synthetic samples."""
    from PIL import Image

    people = synthetic.SyntheticWholeBody(count, image_size=size, seed=3)
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
    MANO hand poses (WholeBodyHands.mano_fingers against the sampled fingers), visibility and arm poses."""
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
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(image_size=(64, 48)))  # an HMR-Adapter preset's path
    train_set = synthetic.wholebody_dataset("wholebody", str(path), "training", cfg, 0, 99)
    eval_set = synthetic.wholebody_dataset("wholebody", f"{path},{path}", "evaluation", cfg, 0, 99)
    assert len(train_set) == len(eval_set) == 2
    assert "verts" not in train_set[1] and eval_set[1]["verts"].shape == (10475, 3) and int(eval_set[1]["index"]) == 1
    with pytest.raises(ValueError, match="'freihand' is not readable"):
        synthetic.wholebody_dataset("freihand", str(path), "training", cfg, 0, 99)


def test_mano_fingers_of_a_body_are_hmr_adapters_hands_of_body():
    """The oracle: HMR-Adapter's `hands_of_body`, the same map built from the files' arrays (Kabsch on the regressed
    rest joints) where WholeBodyHands fits the posed models' rest joints: both hands' MANO-space fingers agree."""
    import hmr_adapter

    labeller = data.WholeBodyHands((64, 48))
    pose = 0.4 * torch.randn(55, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hands = hmr_adapter.hands_of_body(pose, hmr_adapter.hand_frames())
    for side in ("left", "right"):
        torch.testing.assert_close(labeller.mano_fingers(side, pose), hands[side]["hand_pose"], atol=1e-5, rtol=0)



# ---------------------------------------------------------------------------------------------
# 7. photographs as files (`read_image`)


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


# ---------------------------------------------------------------------------------------------
# 8. the floor data.py stands on


def test_data_imports_no_paper_and_nothing_of_the_lab():
    """data.py is what a sample is, for readers with real files: every import statement, those inside functions too,
    names only the standard library, third-party packages and the shared modules below it (bodymodels, metrics)."""
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "data.py").read_text())
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level], "relative import"
    assert {"bodymodels", "metrics"} <= {n.split(".")[0] for n in names}  # the check reads the imports it should
    banned = sorted(n for n in names if n.split(".")[0] in ("simplehand", "genhmr", "hmr_adapter", "lab", "train",
                                                           "demo"))
    assert not banned, f"data.py imports {banned}"
