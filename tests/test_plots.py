"""Tests for plots.py: a mesh from three views, skeletons, and the trainer's pictures written as PNGs."""
import os
import types

import numpy as np
import pytest
import torch

import bodymodels
import data
from lab import plots
from lab import synthetic



# ---------------------------------------------------------------------------------------------
# 1. meshes and skeletons


def test_plot_mesh_views_draws_every_face_and_bone_in_three_views():
    from matplotlib.collections import LineCollection, PolyCollection

    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    fig = plots.plot_mesh_views(verts, faces, joints=verts[:3], parents=(-1, 0, 1), title="tetrahedron")
    assert [ax.get_title() for ax in fig.axes] == ["front", "side", "top"]
    for ax in fig.axes:
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        bones = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(polys) == 1 and len(polys[0].get_paths()) == 4
        assert len(bones) == 1 and len(bones[0].get_segments()) == 2
    with pytest.raises(ValueError, match="faces"):
        plots.plot_mesh_views(verts, faces[:, :2])
    with pytest.raises(ValueError, match="parents"):
        plots.plot_mesh_views(verts, faces, joints=verts, parents=(-1, 0))



def test_draw_skeleton_draws_one_line_per_bone_in_the_given_colours():
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    points = torch.rand(21, 2)
    bones = plots.draw_skeleton(ax, points, bodymodels.FREIHAND_PARENTS, color="bones", label="truth")
    assert len(bones.get_segments()) == 20 and bones.get_label() == "truth"
    assert np.allclose(bones.get_colors()[0], to_rgba(plots.FINGER_COLORS[0]))  # bone 1: the thumb
    assert np.allclose(bones.get_segments()[4], points[[0, 5]].numpy())  # bone 5: wrist -> index
    assert plots.draw_skeleton(ax, points, None) is None


# ---------------------------------------------------------------------------------------------
# 2. the trainer's pictures

def test_draw_hand_predictions_writes_a_png(tmp_path):
    eval_set = synthetic.SyntheticHands(3, image_size=64, left_hand_prob=0.5)
    gt = data.labels(eval_set)
    pred = {"joints2d": gt["joints2d"] + 2.0, "joints3d": gt["joints3d"] - gt["joints3d"][:, :1],
            "verts": gt["verts"] - gt["joints3d"][:, :1]}  # root-relative 3D
    path = plots.draw_hand_predictions(tmp_path / "predictions.png", eval_set, pred, gt, count=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plots.overlay_mesh(eval_set[0]["image"], gt["verts"][0], eval_set.faces, gt["K"][0], (0.0, 1.0, 0.0))
    assert image.shape == (3, 64, 64) and not torch.equal(image, eval_set[0]["image"])



def test_draw_body_pictures_write_pngs(tmp_path):
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(image_size=(48, 36)))  # a GenHMR preset's path
    eval_set = synthetic.body_dataset("synthetic", "", "evaluation", cfg, 0, 2)
    gt = data.stack_samples(eval_set, range(2))
    pred = {"verts": gt["verts"] + 0.02, "refined_verts": gt["verts"], "joints3d": gt["joints3d"]}
    assert os.path.getsize(plots.draw_body_predictions(tmp_path / "a.png", eval_set, pred, gt)) > 5_000
    assert os.path.getsize(plots.draw_pose_reconstructions(tmp_path / "b.png", eval_set, pred, gt)) > 5_000
