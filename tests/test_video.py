"""Video in, animation out: lab/frames.py (PyAV clips, image folders, the overlay video), lab/keypoints.py's per-frame
files, lab/tracking.py (the crop region from the previous predictions), lab/smoothing.py (the One-Euro filter on
rotations, positions and shape), and `demo.py --video` end to end on clips rendered by lab/clips.py, with small
untrained models (`lab.clips.untrained_checkpoint`), its outputs and its bad input."""

import json
import math

import numpy as np
import pytest
import torch

import demo
import support
from lab import clips, frames, smoothing, tracking
from lab.keypoints import read_video_keypoints

# ---------------------------------------------------------------------------------------------
# 1. Frames in: a PyAV clip (count, size, rotation), natural order, the overlay video's odd sizes


def _write_clip(path, count=5, hw=(48, 64), rotation=0, fps=10):
    """A clip written by PyAV: frame k white in its top-left 10 x 20 pixels, grey elsewhere, brighter with k (4:4:4
    chroma, which holds an odd width or height)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = hw[1], hw[0], "yuv444p"
        if rotation:
            stream.set_display_rotation(rotation)
        for k in range(count):
            a = np.full((*hw, 3), 40 + 20 * k, np.uint8)
            a[:10, :20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_pyav_clip_gives_every_frame_at_its_size_and_rate(tmp_path):
    video = frames.VideoFrames(_write_clip(tmp_path / "clip.mp4"))
    got = list(video)
    assert video.fps == 10 and video.count == 5 and len(got) == 5
    assert all(f.shape == (3, 48, 64) and f.dtype == torch.float32 for f in got)
    assert got[0][:, :10, :20].mean() > 0.95 and abs(got[4][:, 30:, 30:].mean() - 120 / 255) < 0.03
    assert len(list(video)) == 5  # read again (the overlay's second pass)


def test_a_clip_of_odd_width_and_height_is_read_at_its_size(tmp_path):
    got = list(frames.VideoFrames(_write_clip(tmp_path / "odd.mp4", count=3, hw=(47, 63))))
    assert len(got) == 3 and got[0].shape == (3, 47, 63) and got[0][:, :10, :20].mean() > 0.95


def test_the_display_rotation_is_applied_as_a_player_shows_it(tmp_path):
    """Stored 64 x 48 with a rotation of 90 degrees counter-clockwise: shown 48 wide and 64 high, the stored
    top-left block at the bottom-left (rows 44-63, columns 0-9)."""
    got = next(iter(frames.VideoFrames(_write_clip(tmp_path / "turned.mp4", rotation=90))))
    assert got.shape == (3, 64, 48)
    assert got[:, 46:62, 1:8].mean() > 0.9 and got[:, 1:8, 1:8].mean() < 0.3


def test_image_folders_are_read_in_natural_order_and_must_keep_one_size(tmp_path):
    from PIL import Image

    for k in (10, 2, 1):
        Image.fromarray(np.full((20, 16, 3), k, np.uint8)).save(tmp_path / f"frame_{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in frames.image_files(tmp_path)] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert sorted(["b10", "b9", "a100"], key=frames.natural_key) == ["a100", "b9", "b10"]
    Image.fromarray(np.zeros((21, 16, 3), np.uint8)).save(tmp_path / "frame_11.png")
    with pytest.raises(frames.InputError, match="frame_11.png: 16 x 21 pixels; the frames before it are 16 x 20"):
        list(frames.ImageFrames(tmp_path))


def test_the_overlay_video_pads_an_odd_size_and_holds_every_frame(tmp_path):
    images = [torch.full((3, 15, 21), k / 4) for k in range(4)]
    path = frames.write_video(tmp_path / "odd.mp4", images, fps=12)
    back = list(frames.VideoFrames(path))
    assert len(back) == 4 and back[0].shape == (3, 16, 22)
    np.testing.assert_allclose([f[:, :15, :21].mean().item() for f in back], [0, 0.25, 0.5, 0.75], atol=0.02)


# ---------------------------------------------------------------------------------------------
# 2. Per-frame keypoint files


def test_openpose_folders_and_mmpose_video_files_give_each_frames_people(tmp_path):
    body = (np.arange(75, dtype=float) % 50 + 1).tolist()
    folder = tmp_path / "openpose"
    folder.mkdir()
    for k, people in ((0, [{"pose_keypoints_2d": body}]), (1, []), (10, [{"pose_keypoints_2d": body}])):
        (folder / f"clip_{k:012d}_keypoints.json").write_text(json.dumps({"people": people}))
    got = read_video_keypoints(folder)
    assert [len(p) for p in got] == [1, 0, 1] and got[0][0]["body"].shape == (17, 3)
    person = {"keypoints": [[1.0, 2.0]] * 17, "keypoint_scores": [0.9] * 17}
    (tmp_path / "mmpose.json").write_text(json.dumps([{"frame_id": i, "instances": [person]} for i in (1, 2, 3)]))
    assert len(read_video_keypoints(tmp_path / "mmpose.json")) == 3
    (tmp_path / "gap.json").write_text(json.dumps([{"frame_id": i, "instances": [person]} for i in (0, 1, 3)]))
    with pytest.raises(demo.InputError, match="gap.json: frame_id 2 is missing"):
        read_video_keypoints(tmp_path / "gap.json")


# ---------------------------------------------------------------------------------------------
# 3. The tracker


def _square(cx, cy, half=10.0):
    return np.array([[cx - half, cy - half], [cx + half, cy + half]])


def test_the_tracker_follows_a_moving_box_and_extrapolates_it_within_a_batch():
    tracker = tracking.RegionTracker((120, 160), first_box=(0, 0, 40, 40), enlarge=1.5)
    assert tracker.region(0) == (0, 0, 40, 40)
    for t in range(3):  # the joints' box moves 5 pixels right per frame
        assert tracker.update(t, _square(50 + 5 * t, 60))
    np.testing.assert_allclose(tracker.region(3), (65 - 15, 45, 65 + 15, 75))  # 20 x 1.5 wide, at frame 3's place
    np.testing.assert_allclose(tracker.region(5), (75 - 15, 45, 75 + 15, 75))  # two frames on, as a batch needs


def test_the_tracker_keeps_the_last_good_box_when_a_prediction_leaves_the_image():
    tracker = tracking.RegionTracker((120, 160), enlarge=1.0)
    assert tracker.update(0, _square(100, 60)) and tracker.update(1, _square(110, 60))
    assert not tracker.update(2, _square(300, 60))  # outside the image
    assert not tracker.update(3, np.full((21, 2), np.nan))  # nothing predicted
    assert not tracker.update(4, _square(80, 60, half=0.5))  # one pixel: lost
    np.testing.assert_allclose(tracker.region(5), (100, 50, 120, 70))  # frame 1's box, not moved on
    assert tracker.accepted == [True, True, False, False, False]


# ---------------------------------------------------------------------------------------------
# 4. The One-Euro filter


FPS = 30.0


def _angle_between(a, b):
    q = smoothing.quaternion_multiply(smoothing.conjugate(smoothing.quaternion_from_rotvec(a)),
                                      smoothing.quaternion_from_rotvec(b))
    return smoothing.quaternion_to_rotvec(q).norm(dim=-1)


def test_jitter_on_a_still_signal_falls_and_a_fast_move_passes_with_less_lag_as_beta_grows():
    g = torch.Generator().manual_seed(0)
    still = 0.01 * torch.randn(300, 1, generator=g, dtype=torch.float64)
    out = smoothing.one_euro(still, FPS, smoothing.OneEuro(min_cutoff=1.0, beta=0.0))
    a = smoothing.smoothing_factor(1.0, 1 / FPS)  # an exponential smoother keeps sqrt(a / (2 - a)) of white noise
    assert out[30:].std() < 1.2 * math.sqrt(a / (2 - a)) * still.std() < 0.4 * still.std()
    ramp = torch.linspace(0, 3, 90, dtype=torch.float64)[:, None]  # 1 m/s
    lag = [(ramp - smoothing.one_euro(ramp, FPS, smoothing.OneEuro(1.0, beta)))[45:].mean().item()
           for beta in (0.0, 5.0)]
    assert lag[0] > 0.1 and 0 < lag[1] < 0.3 * lag[0]


def test_offline_filtering_has_no_lag_where_online_filtering_does():
    t = torch.arange(120, dtype=torch.float64) / FPS
    wave = torch.sin(2 * math.pi * 0.5 * t)[:, None]
    p = smoothing.OneEuro(min_cutoff=1.0, beta=0.0)

    def delay(y):  # the shift (frames) that best aligns y with the wave
        return min(range(-10, 11), key=lambda d: (y[20 + d:100 + d] - wave[20:100]).abs().mean().item())
    assert delay(smoothing.one_euro(wave, FPS, p, "online")) > 1
    assert delay(smoothing.one_euro(wave, FPS, p, "offline")) == 0


def test_rotations_near_a_half_turn_are_filtered_as_rotations_not_as_axis_angle():
    """A turn about z swinging through 180 degrees: its axis-angle jumps between (pi - e) z and -(pi - e) z, the same
    rotations. Filtered on the manifold it stays within a few degrees of the truth; averaging the raw vectors
    (what this test would catch) cuts across the identity, 180 degrees away."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(90, dtype=torch.float64) / FPS
    truth = smoothing.quaternion_to_rotvec(smoothing.quaternion_from_rotvec(
        torch.stack([0 * t, 0 * t, math.pi + 0.3 * torch.sin(2 * math.pi * 0.5 * t)], 1)))
    assert (truth[:, 2] > 0).any() and (truth[:, 2] < 0).any()  # written on both sides of the half turn
    noise = smoothing.quaternion_from_rotvec(0.03 * torch.randn(90, 3, generator=g, dtype=torch.float64))
    q = smoothing.quaternion_from_rotvec(truth)
    noisy = smoothing.quaternion_to_rotvec(smoothing.quaternion_multiply(q, noise))
    p = smoothing.SMOOTHING["rotation"]
    filtered = smoothing.one_euro_rotations(noisy, FPS, p, "offline")
    assert _angle_between(filtered, truth).max() < math.radians(6)
    assert _angle_between(filtered, truth).mean() < 0.7 * _angle_between(noisy, truth).mean()
    assert _angle_between(smoothing.one_euro(noisy, FPS, p, "offline"), truth).max() > 1.0


def test_quaternion_signs_and_axis_angle_wraps_do_not_change_the_filtered_rotations():
    g = torch.Generator().manual_seed(2)
    r = torch.cumsum(0.05 * torch.randn(40, 2, 3, generator=g, dtype=torch.float64), 0) + torch.tensor([2.5, 0, 0])
    q = smoothing.quaternion_from_rotvec(r)
    flipped = q * torch.where(torch.arange(40) % 2 == 0, 1.0, -1.0).double()[:, None, None]
    continuous = smoothing.continuous_quaternions(flipped)
    assert ((continuous[1:] * continuous[:-1]).sum(-1) >= 0).all() and torch.allclose(continuous, q)
    wrapped = r - 2 * math.pi * r / r.norm(dim=-1, keepdim=True)  # the same rotations, the other way round
    p = smoothing.SMOOTHING["rotation"]
    a, b = (smoothing.one_euro_rotations(x, FPS, p, "online") for x in (r, wrapped))
    assert _angle_between(a, b).max() < 1e-9


def test_a_motion_keeps_one_shape_and_each_quantity_its_own_units():
    g = torch.Generator().manual_seed(3)
    motion = {"pose": torch.zeros(20, 16, 3), "root": torch.tensor([0.0, 0.0, 2.0]).expand(20, 3).clone(),
              "betas": torch.randn(20, 10, generator=g), "expression": torch.zeros(20, 10)}
    motion["root"][:, 2] += 0.05 * torch.randn(20, generator=g)
    out = smoothing.smooth_motion(motion, FPS, "offline")
    assert out["betas"].shape == (10,) and torch.equal(out["betas"], motion["betas"].double().median(0).values)
    assert out["pose"].shape == (20, 16, 3) and out["expression"].shape == (20, 10)
    assert out["root"][:, 2].std() < 0.5 * motion["root"][:, 2].std()  # depth, its own (lower) cutoff
    assert torch.allclose(smoothing.smooth_motion(motion, FPS, "off")["root"], motion["root"].double())


# ---------------------------------------------------------------------------------------------
# 5. demo.py --video end to end, each paper on a small untrained model


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A hand clip and a person clip, 4 frames each, rendered by lab/clips.py and written by PyAV."""
    folder = tmp_path_factory.mktemp("clips")
    hand = clips.hand_clip(frames=4, hw=(96, 128))
    person = clips.body_clip("smpl", frames=4, hw=(128, 96))
    return {"mano": frames.write_video(folder / "hand.mp4", hand.frames, 12),
            "smpl": frames.write_video(folder / "person.mp4", person.frames, 12)}


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrained")
    return {model: clips.untrained_checkpoint(model, folder) for model in demo.MODELS}


@pytest.mark.parametrize("model", ["simplehand", "genhmr", "hmr_adapter"])
def test_video_command_writes_the_npz_the_overlay_and_the_animation(model, clip_files, untrained, tmp_path, capsys):
    import pygltflib

    clip = clip_files["mano" if model == "simplehand" else "smpl"]
    out = tmp_path / "out"
    correctives = ["--correctives"] if model == "simplehand" else []  # passed through to the .glb's morph targets
    status, stdout, _ = support.run_demo(model, ["--video", clip, "--checkpoint", untrained[model], "--out", out,
                                                 "--batch-size", "3", "--threads", "1"] + correctives, capsys)
    assert status == 0 and stdout == [f"wrote {out / clip.stem}{ext}" for ext in (".npz", ".mp4", ".glb")]
    npz = np.load(out / f"{clip.stem}.npz")
    kind = demo.MODELS[model].kind
    V, J = {"mano": (778, 21), "smpl": (6890, 24), "smplx": (10475, 55)}[kind]
    assert npz["verts"].shape == (4, V, 3) and npz["joints3d"].shape == (4, J, 3) and npz["box"].shape == (4, 4)
    assert npz["betas"].ndim == 1 and npz["raw_verts"].shape == (4, V, 3) and float(npz["fps"]) == 12
    assert len(list(frames.VideoFrames(out / f"{clip.stem}.mp4"))) == 4
    glb = pygltflib.GLTF2().load(str(out / f"{clip.stem}.glb"))
    assert len(glb.animations) == 1 and len(glb.skins) == 1
    assert bool(glb.meshes[0].primitives[0].targets) == bool(correctives)


def test_smoothing_off_keeps_the_frames_own_rotations(clip_files, untrained, tmp_path, capsys):
    """--smooth off: the .npz's poses are the frames' own (pose equals raw_pose) and the meshes the body model posed
    by them with the sequence's one shape."""
    status, _, _ = support.run_demo("genhmr", ["--video", clip_files["smpl"], "--checkpoint", untrained["genhmr"],
                                               "--out", tmp_path, "--smooth", "off", "--threads", "1"], capsys)
    npz = np.load(tmp_path / "person.npz")
    assert status == 0 and str(npz["smooth"]) == "off"
    np.testing.assert_allclose(npz["pose"], npz["raw_pose"], atol=1e-6)


def _bad_inputs(tmp_path, clip):
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "no_images").mkdir()
    person = {"keypoints": [[40.0, 40.0]] * 17, "keypoint_scores": [0.9] * 17}
    (tmp_path / "gap.json").write_text(json.dumps([{"frame_id": i, "instances": [person]} for i in (0, 2, 3, 4)]))
    (tmp_path / "short.json").write_text(json.dumps({"predictions": [[]] * 2}))
    return [(["--video", tmp_path / "text.mp4"], "text.mp4: not a readable video"),
            (["--video", tmp_path / "empty.mp4"], "empty.mp4: not a readable video"),
            (["--images", tmp_path / "no_images"], "no_images: no images"),
            (["--video", clip, "--keypoints", tmp_path / "gap.json"], "gap.json: frame_id 1 is missing"),
            (["--video", clip, "--keypoints", tmp_path / "short.json"],
             f"short.json: keypoints of 2 frames; {clip} has more"),
            (["--video", clip, "--box", "500", "0", "600", "50"], "--box 500 0 600 50: outside the image of 128 x 96"),
            (["--video", clip, "--out", clip.parent], f"the overlay {clip} would replace the input video")]


def test_bad_video_input_stops_in_one_line_with_status_2_and_writes_nothing(clip_files, untrained, tmp_path, capsys):
    clip = clip_files["mano"]
    for k, (argv, words) in enumerate(_bad_inputs(tmp_path, clip)):
        out = tmp_path / f"out{k}"
        argv = argv + ([] if "--out" in argv else ["--out", out])
        status, stdout, stderr = support.run_demo("simplehand", argv + ["--checkpoint", untrained["simplehand"],
                                                                        "--threads", "1"], capsys)
        assert status == 2 and len(stderr) == 1 and stderr[0].startswith("demo.py: ") and words in stderr[0], stderr
        assert stdout == [] and not out.exists() and sorted(p.name for p in clip.parent.iterdir()) == ["hand.mp4",
                                                                                                       "person.mp4"]


def test_per_frame_keypoints_place_their_frames_crops_and_the_tracker_the_rest(clip_files, untrained, tmp_path, capsys):
    """An mmpose file of the video whose frame 1 has no one: frames 0, 2 and 3 are cropped at their keypoints' box,
    frame 1 where the tracker put it (frame 0's predicted joints)."""
    body = np.stack([np.linspace(20, 70, 17), np.linspace(30, 110, 17), np.full(17, 0.9)], 1)
    frames_kp = [{"frame_id": i, "instances": [] if i == 1 else [{"keypoints": (body[:, :2] + i).tolist(),
                                                                   "keypoint_scores": body[:, 2].tolist()}]}
                 for i in range(4)]
    (tmp_path / "kp.json").write_text(json.dumps(frames_kp))
    status, _, err = support.run_demo("genhmr", ["--video", clip_files["smpl"], "--keypoints", tmp_path / "kp.json",
                                                 "--checkpoint", untrained["genhmr"], "--out", tmp_path / "o",
                                                 "--batch-size", "1", "--threads", "1"], capsys)
    assert status == 0, err
    boxes = np.load(tmp_path / "o" / "person.npz")["box"]
    for i in (0, 2, 3):
        np.testing.assert_allclose(boxes[i], [20 + i, 30 + i, 70 + i, 110 + i], atol=1e-4)
    assert np.isfinite(boxes[1]).all() and not np.allclose(boxes[1], boxes[0])


def test_an_image_folder_is_a_video_at_the_given_rate(clip_files, untrained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "shots"
    folder.mkdir()
    for k, frame in enumerate(frames.VideoFrames(clip_files["mano"])):
        Image.fromarray((frame.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{k + 1}.png")
    status, stdout, _ = support.run_demo("simplehand", ["--images", folder, "--fps", "5", "--checkpoint",
                                                        untrained["simplehand"], "--out", tmp_path / "o",
                                                        "--threads", "1"], capsys)
    npz = np.load(tmp_path / "o" / "shots.npz")
    assert status == 0 and stdout[0] == f"wrote {tmp_path / 'o' / 'shots.npz'}"
    assert float(npz["fps"]) == 5 and npz["verts"].shape == (4, 778, 3)
