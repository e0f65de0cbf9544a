"""demo.py: reading keypoint files and boxes, placing meshes, the .obj / .npz files, the command's errors, and
--intrinsics (the meshes placed in a given camera); bench.py's printed lines. The runs of each paper's trained
model through demo.py are in that paper's test file (they share its short-trained checkpoints)."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lab import bench
import bodymodels as bm
import demo
import genhmr
from lab import genhmr_experiments
from lab import hmr_adapter_experiments
import support
from lab.crops import full_image_intrinsics

ROOT = Path(__file__).resolve().parents[1]
SEEDS = st.integers(0, 2**31 - 1)
DOUBLE = dict(dtype=torch.float64)
FAST = settings(deadline=None, max_examples=60)


# ---------------------------------------------------------------------------------------------
# 1-3. Reading, placing, writing, the shared command


def _save(tmp_path, name, array, mode=None, **kwargs):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def test_read_keypoints_reads_mmpose_coco_wholebody_and_openpose_files(tmp_path):
    import json

    rng = np.random.default_rng(0)
    whole = rng.uniform(0, 100, (133, 3))
    (tmp_path / "vitpose.json").write_text(json.dumps([{"keypoints": whole.ravel().tolist(), "score": 0.7},
                                                       {"keypoints": whole[:17].tolist(), "score": 0.9}]))
    a, b = demo.read_keypoints(tmp_path / "vitpose.json")
    assert np.array_equal(a["right_hand"], whole[112:]) and np.array_equal(a["face"], whole[23:91])
    assert set(b) == {"body", "score"} and demo.pick_person([a, b]) is b
    ann = {"keypoints": [10, 20, 2] * 17, "lefthand_kpts": [5, 6, 1] * 21, "righthand_kpts": [0, 0, 0] * 21}
    (tmp_path / "coco.json").write_text(json.dumps({"annotations": [ann]}))
    (p,) = demo.read_keypoints(tmp_path / "coco.json")
    assert (p["body"][:, 2] == 1).all() and (p["left_hand"][:, 2] == 1).all() and (p["right_hand"][:, 2] == 0).all()
    body25 = np.arange(75, dtype=np.float64).reshape(25, 3)
    (tmp_path / "openpose.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": body25.ravel().tolist(),
                                                                    "hand_left_keypoints_2d": [1.0] * 63}]}))
    (p,) = demo.read_keypoints(tmp_path / "openpose.json")
    # COCO's left shoulder (5) is OpenPose's LShoulder (5), its right hip (12) OpenPose's RHip (9)
    assert np.array_equal(p["body"][5], body25[5]) and np.array_equal(p["body"][12], body25[9])
    assert p["left_hand"].shape == (21, 3) and "right_hand" not in p
    (tmp_path / "bad.json").write_text(json.dumps([{"keypoints": [1, 2, 3] * 20}]))
    with pytest.raises(demo.InputError, match="bad.json: person 0: 'keypoints' has 60 numbers"):
        demo.read_keypoints(tmp_path / "bad.json")


@given(seed=SEEDS)
@FAST
@example(seed=0)
def test_solve_translation_recovers_the_translation_of_exactly_projected_points(seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(21, 3, generator=g, **DOUBLE) * 0.05
    t = torch.tensor([0.3, -0.2, 2.0], **DOUBLE) * torch.rand(3, generator=g, **DOUBLE) + torch.tensor([-0.1, 0.1, 0.3])
    f = 200 + 2000 * torch.rand((), generator=g, **DOUBLE)
    K = torch.tensor([[f, 0, 120.0], [0, f, 90.0], [0, 0, 1]], **DOUBLE)
    uv = bm.perspective_projection(points + t, K)
    assert torch.allclose(demo.solve_translation(points, uv, K), t, atol=1e-9)


@given(seed=SEEDS)
@FAST
@example(seed=0)
def test_solve_translation_keeps_every_point_in_front_when_3d_and_2d_disagree(seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(21, 3, generator=g, **DOUBLE) * 0.05
    uv = torch.rand(21, 2, generator=g, **DOUBLE) * 200  # unrelated to the points
    K = torch.tensor([[500.0, 0, 100.0], [0, 500.0, 100.0], [0, 0, 1]], **DOUBLE)
    t = demo.solve_translation(points, uv, K, min_depth=0.01)
    assert (points[:, 2] + t[2]).min() >= 0.01 - 1e-12 and torch.isfinite(t).all()


def test_check_box_refuses_empty_and_outside_boxes_naming_them():
    assert demo.check_box([1, 2, 30, 40], (50, 60)) == (1.0, 2.0, 30.0, 40.0)
    with pytest.raises(demo.InputError, match="--box 5 5 5 9: empty"):
        demo.check_box([5, 5, 5, 9], (50, 60))
    with pytest.raises(demo.InputError, match="outside the image of 60 x 50 pixels"):
        demo.check_box([70, 0, 90, 10], (50, 60))


def test_obj_round_trips_and_mirrored_meshes_still_face_outwards(tmp_path):
    m = bm.load_smpl()
    verts = torch.as_tensor(m.v_template, dtype=torch.float64) + torch.tensor([0.1, 0.2, 3.0], **DOUBLE)
    faces = torch.as_tensor(np.asarray(m.faces, dtype=np.int64))

    assert support.signed_volume(verts, faces) > 0
    mirrored, flipped = demo.mirror_mesh(verts, faces)
    assert support.signed_volume(mirrored, flipped) > 0 and support.signed_volume(mirrored, faces) < 0
    demo.write_obj(tmp_path / "m.obj", mirrored, flipped)
    v, f = demo.read_obj(tmp_path / "m.obj")
    assert torch.allclose(v, mirrored, atol=5e-7) and torch.equal(f, flipped)


def test_write_npz_documents_every_key_and_refuses_undocumented_ones(tmp_path):
    demo.write_npz(tmp_path / "a.npz", {"verts": torch.zeros(4, 3)}, {"verts": "metres, camera frame"})
    with np.load(tmp_path / "a.npz") as npz:
        assert npz["verts"].shape == (4, 3) and "verts (4, 3): metres, camera frame" in str(npz["README"])
    with pytest.raises(ValueError, match="without a description: \\['K'\\]"):
        demo.write_npz(tmp_path / "b.npz", {"K": torch.eye(3)}, {})
    assert not (tmp_path / "b.npz").exists()


def test_run_demo_stops_in_one_line_with_status_2_and_writes_nothing(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser, "stage", hands=True)
    image = _save(tmp_path, "photo.png", np.zeros((40, 50, 3), np.uint8))
    out = tmp_path / "out"
    for argv, expected in (([str(tmp_path / "none.png")], "none.png: no such file"),
                           ([str(image), "--box", "60", "0", "90", "10"], "outside the image of 50 x 40 pixels")):
        args = parser.parse_args(["--image", *argv, "--out", str(out)])
        with pytest.raises(SystemExit) as e:
            demo.run_demo(args, lambda *a: pytest.fail("infer must not run"), "demo.py")
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and expected in err and err.startswith("demo.py: ")
    assert not out.exists()


def test_run_demo_writes_the_picture_one_obj_per_mesh_and_the_npz(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser, "stage", hands=True)
    image = _save(tmp_path, "photo.png", np.full((40, 50, 3), 90, np.uint8))
    m = bm.load_mano()
    faces = np.asarray(m.faces, dtype=np.int64)
    verts = torch.as_tensor(m.v_template, dtype=torch.float32) + torch.tensor([0.0, 0.0, 0.6])
    K = full_image_intrinsics((50, 40))

    def infer(img, box, people, args):
        assert img.shape == (3, 40, 50) and box is None and people is None
        return {"meshes": [("right", verts, faces), ("left", *demo.mirror_mesh(verts, torch.as_tensor(faces)))],
                "K": K, "arrays": {"verts": verts}, "docs": {"verts": "metres"}}

    args = parser.parse_args(["--image", str(image), "--out", str(tmp_path / "out")])
    written = demo.run_demo(args, infer, "demo.py")
    names = [p.name for p in written]
    assert names == ["photo.png", "photo_right.obj", "photo_left.obj", "photo.npz"]
    assert capsys.readouterr().out.splitlines() == [f"wrote {p}" for p in written]
    assert written[0].stat().st_size > 10_000 and len(list((tmp_path / "out").iterdir())) == 4


# ---------------------------------------------------------------------------------------------
# --intrinsics: the meshes placed in a given camera


def test_check_intrinsics_builds_k_and_refuses_bad_values_naming_them():
    K = demo.check_intrinsics([500, 520, 100.5, 80])
    assert torch.equal(K, torch.tensor([[500.0, 0, 100.5], [0, 520, 80], [0, 0, 1]], **DOUBLE))
    for values, words in (([0, 500, 10, 10], "--intrinsics 0 500 10 10: expected focal lengths FX, FY > 0"),
                          ([500, -1, 10, 10], "--intrinsics 500 -1 10 10"),
                          ([500, 500, float("nan"), 10], "finite principal point"),
                          ([500, 500, 10], "--intrinsics: 3 numbers; expected FX FY CX CY")):
        with pytest.raises(demo.InputError, match=words):
            demo.check_intrinsics(values)


@pytest.mark.parametrize("values,words", [(["0", "500", "40", "30"], "demo.py: --intrinsics 0 500 40 30: expected"),
                                          (["500", "500", "inf", "30"], "demo.py: --intrinsics 500 500 inf 30"),
                                          (["500", "500", "40"], "--intrinsics: expected 4 arguments")],
                         ids=["zero focal", "infinite centre", "three numbers"])
def test_bad_intrinsics_stop_the_command_in_one_line_with_status_2(tmp_path, capsys, values, words):
    """Checked before any checkpoint is read (none exists here) and nothing is written."""
    image = _save(tmp_path, "photo.png", np.zeros((60, 80, 3), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        demo.main(["--model", "genhmr", "--image", str(image), "--checkpoint", str(tmp_path / "none.pt"),
                   "--intrinsics", *values, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and not out.exists()
    if words.startswith("demo.py: "):
        assert err.count("\n") == 1


def test_image_camera_is_hamers_convention_unless_intrinsics_are_given():
    default = full_image_intrinsics((80, 60))
    assert demo.image_camera(argparse.Namespace(intrinsics=None), default) is default
    K = demo.image_camera(argparse.Namespace(intrinsics=[300.0, 300.0, 41.0, 29.0]), default)
    assert K.dtype == default.dtype and torch.equal(K, torch.tensor([[300.0, 0, 41], [0, 300, 29], [0, 0, 1]]))
    docs = {"K": "HaMeR's", "verts": "metres"}
    assert demo.camera_docs(docs, argparse.Namespace(intrinsics=None)) is docs
    given_docs = demo.camera_docs(docs, argparse.Namespace(intrinsics=[1.0, 1, 0, 0]))
    assert "--intrinsics" in given_docs["K"] and given_docs["verts"] == "metres" and docs["K"] == "HaMeR's"


# ---------------------------------------------------------------------------------------------
# bench.py


def _bench(argv, capsys):
    bench.main(argv)
    return capsys.readouterr().out.splitlines()


def test_bench_params_prints_each_papers_table(capsys):
    rows = genhmr_experiments.parameter_table(genhmr.PAPER, genhmr.TOKENIZER_PAPER)
    lines = _bench(["--model", "genhmr", "--params"], capsys)
    assert lines[0] == f"[paper] {rows[0][0]:34s} {rows[0][1] / 1e6:9.2f}M" and len(lines) == len(rows) + 1
    assert lines[-1].startswith("[paper] total (trained in stage 2)")
    table = hmr_adapter_experiments.parameter_table()
    lines = _bench(["--model", "hmr_adapter", "--params"], capsys)
    assert len(lines) == len(table) and lines[2].startswith("hand adapter") and "paper: 27M (Sec. 4.1)" in lines[2]


def test_bench_shapes_and_bad_config(capsys):
    lines = _bench(["--model", "simplehand", "--shapes", "--threads", "1"], capsys)
    assert lines[0].startswith("SimpleHand [tiny]: ") and "M outside the backbone" in lines[0]
    with pytest.raises(SystemExit) as e:
        bench.main(["--model", "hmr_adapter", "--config", "huge"])
    assert e.value.code == 2 and "--config 'huge' is not one of hmr_adapter's: paper, tiny" in capsys.readouterr().err


def test_bench_script_runs_as_a_command():
    run = subprocess.run([sys.executable, "-m", "lab.bench", "--model", "hmr_adapter", "--params"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.splitlines()[0].startswith("hand expert ViT"), run.stderr
