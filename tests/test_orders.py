"""Joint orders, kinematic trees, keypoint mappings and image normalisation against the official sources.

Every expected value here is a literal typed from the official file named in its comment (repository, path,
commit read), never computed from this project's own tables: a swapped left/right pair, a wrong parent or a
changed constant in bodymodels.py, demo.py, data.py, hmr_adapter.py or a model's normalisation fails here with
the name of the joint, keypoint or channel that moved. Where the project departs from the official table on
purpose, the test says so and pins the departure by name.
"""
import json
import os

import numpy as np
import pytest
import torch

import bodymodels as bm
import data
import demo
import genhmr
import hmr_adapter
import simplehand
from lab import standins
from lab.crops import imagenet_normalise
from lab.configs import with_fields
from test_data import write_hmr2_npz

# ---------------------------------------------------------------------------------------------
# Official literals

# vchoutas/smplx smplx/joint_names.py SMPL_JOINT_NAMES @ 1265df7ba545e8b00f72e7c557c766e15c71632f
SMPL_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand"]
# Jeff-sjtu/HybrIK hybrik/utils/presets/simple_transform_3d_smpl.py `smpl_parents`
# @ 9b8681dcf3c902dd5dacc01520ba04982990e1e2 (SMPL's kintree_table row 0, root -1)
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
# vchoutas/smplx smplx/joint_names.py JOINT_NAMES[:55] (the SMPL-X model's 55 joints) @ 1265df7
SMPLX_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "jaw", "left_eye_smplhf",
    "right_eye_smplhf", "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3", "left_thumb1",
    "left_thumb2", "left_thumb3", "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2",
    "right_middle3", "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3"]
# SMPL-X's kintree_table row 0. No public official file writes it out: smplx (body_models.py) reads it from the
# licensed model file. Typed from: the body 0-21 as SMPL's (HybrIK above); jaw and both eyes under the head, and
# each finger a chain 1 -> 2 -> 3 hung from its wrist, as HybrIK's SMPL-X layer extends the tree
# (Jeff-sjtu/HybrIK hybrik/models/layers/smplx/body_models.py `extend_kinematic_tree` @ 9b8681d: the nose and the
# eyes' leaves hang from 22, 23, 24, the fingertips from 27, 30, 33, 36, 39 / 42, ..., 54, each finger's joint 3).
SMPLX_PARENTS = [
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,  # body: SMPL's
    15, 15, 15,  # jaw, left eye, right eye <- head
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,  # left index, middle, pinky, ring, thumb
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]  # right
SMPLX_RENAMED = {"left_eye_smplhf": "left_eye", "right_eye_smplhf": "right_eye"}  # smplx's names -> ours

# open-mmlab/mmpose configs/_base_/datasets/coco.py keypoint_info ids 0-16
# @ 759b39c13fea6ba094afc1fa932f51dc1b11cbf9 (COCO-WholeBody's 0-16 in coco_wholebody.py are the same)
COCO17_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle"]
# open-mmlab/mmpose configs/_base_/datasets/coco_wholebody.py @ 759b39c: ids 17-22 (feet), 23-90 face-0 .. face-67,
# 91-111 the left hand, 112-132 the right hand
WHOLEBODY_FEET = ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
WHOLEBODY_HAND = [  # after "left_" / "right_"
    "hand_root", "thumb1", "thumb2", "thumb3", "thumb4", "forefinger1", "forefinger2", "forefinger3", "forefinger4",
    "middle_finger1", "middle_finger2", "middle_finger3", "middle_finger4", "ring_finger1", "ring_finger2",
    "ring_finger3", "ring_finger4", "pinky_finger1", "pinky_finger2", "pinky_finger3", "pinky_finger4"]
WHOLEBODY_NAMES = (COCO17_NAMES + WHOLEBODY_FEET + [f"face-{i}" for i in range(68)]
                   + [f"left_{n}" for n in WHOLEBODY_HAND] + [f"right_{n}" for n in WHOLEBODY_HAND])

# CMU-Perceptual-Computing-Lab/openpose src/openpose/pose/poseParameters.cpp POSE_BODY_25_BODY_PARTS and
# POSE_COCO_BODY_PARTS (also doc/02_output.md) @ 5c5d96523ef917bd30301245fdc8343937cae48d
BODY25_NAMES = [
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip", "RKnee",
    "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
    "RSmallToe", "RHeel"]
COCO18_NAMES = [
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee", "RAnkle",
    "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar"]
COCO_TO_OPENPOSE_NAME = {  # the same body point in mmpose's and OpenPose's spelling
    "nose": "Nose", "left_eye": "LEye", "right_eye": "REye", "left_ear": "LEar", "right_ear": "REar",
    "left_shoulder": "LShoulder", "right_shoulder": "RShoulder", "left_elbow": "LElbow", "right_elbow": "RElbow",
    "left_wrist": "LWrist", "right_wrist": "RWrist", "left_hip": "LHip", "right_hip": "RHip", "left_knee": "LKnee",
    "right_knee": "RKnee", "left_ankle": "LAnkle", "right_ankle": "RAnkle"}

# shubham-goel/4D-Humans hmr2/models/smpl_wrapper.py `smpl_to_openpose` @ 6ec79656a23c33237c724742ca2a0ec00b398b53:
# OpenPose keypoint i <- SMPL output joint smpl_to_openpose[i] (24: the nose vertex, 25-34 further vertices)
SMPL_TO_OPENPOSE = [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34]
# nkolot/SPIN constants.py JOINT_NAMES[25:44] @ 2476c436013055be5cb3905e4e4ecfa86966fac3: the 19 extra keypoints
# of 4D-Humans' .npz (hmr2/datasets/image_dataset.py reads extra_keypoints_2d (N, 19, 3) after the 25 OpenPose)
EXTRA19_NAMES = [
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist", "Right Elbow",
    "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)",
    "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)"]
# The extra keypoints that are an SMPL joint of the same name. SPIN's JOINT_MAP sends these to SMPL joints too but
# for hips, 'Neck (LSP)' and 'Pelvis (MPII)', which it regresses with its own J_regressor_extra (45, 46, 47, 49);
# data.HMR2Npz takes SMPL's joint of that name (docs: the 2D targets are SMPL's 24 joints)
EXTRA_TO_SMPL_NAME = {
    "Right Ankle": "right_ankle", "Right Knee": "right_knee", "Right Hip": "right_hip", "Left Hip": "left_hip",
    "Left Knee": "left_knee", "Left Ankle": "left_ankle", "Right Wrist": "right_wrist", "Right Elbow": "right_elbow",
    "Right Shoulder": "right_shoulder", "Left Shoulder": "left_shoulder", "Left Elbow": "left_elbow",
    "Left Wrist": "left_wrist", "Neck (LSP)": "neck", "Pelvis (MPII)": "pelvis"}

# COCO-17 -> SMPL: nkolot/SPIN datasets/preprocess/coco.py `joints_idx` (COCO keypoint i -> SPIN's 24 ground-truth
# joints, after the 25 OpenPose) and constants.py JOINT_MAP (those -> SMPL joints) @ 2476c43; the same 10 pairs are
# Jeff-sjtu/HybrIK simple_transform_3d_smpl.py `s_coco_2_smpl_jt_2d` @ 9b8681d
SPIN_COCO_JOINTS_IDX = [19, 20, 21, 22, 23, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]
SPIN_GT_TO_SMPL = {  # JOINT_MAP of SPIN's ground-truth joint names, where the value is an SMPL joint (< 24)
    "Right Ankle": 8, "Right Knee": 5, "Left Knee": 4, "Left Ankle": 7, "Right Wrist": 21, "Right Elbow": 19,
    "Right Shoulder": 17, "Left Shoulder": 16, "Left Elbow": 18, "Left Wrist": 20}
SPIN_GT_NAMES = EXTRA19_NAMES + ["Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear"]  # SPIN JOINT_NAMES[25:]
HYBRIK_COCO_TO_SMPL = [  # SMPL joint j <- COCO keypoint, -1 none
    -1, -1, -1, -1, 13, 14, -1, 15, 16, -1, -1, -1, -1, -1, -1, -1, 5, 6, 7, 8, 9, 10, -1, -1]

# caizhongang/SMPLer-X common/utils/human_models.py SMPLX.joint_idx @ d3e3c10f482185b900308f32555654b6f3452d0d:
# its hand keypoints (Thumb_1..4, Index_1..4, Middle, Ring, Pinky: OpenPose's hand order without the wrist) <-
# smplx output joints (55-65 face and feet, 66-70 left tips thumb..pinky, 71-75 right)
SMPLERX_LEFT_HAND = [37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70]
SMPLERX_RIGHT_HAND = [52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48, 75]
SMPLERX_HAND_NAMES = [f"{f}_{i}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for i in (1, 2, 3, 4)]
SMPLERX_MCP = ["Index_1", "Middle_1", "Ring_1", "Pinky_1"]  # pos_joint_part['L_MCP'] / ['R_MCP']
FREIHAND_TO_WHOLEBODY_HAND = {  # our FreiHAND / OpenPose hand names -> mmpose's
    "wrist": "hand_root", **{f"thumb{i}": f"thumb{i}" for i in (1, 2, 3)}, "thumb_tip": "thumb4",
    **{f"{ours}{i}": f"{theirs}{i}" for ours, theirs in (("index", "forefinger"), ("middle", "middle_finger"),
                                                         ("ring", "ring_finger"), ("pinky", "pinky_finger"))
       for i in (1, 2, 3)},
    **{f"{ours}_tip": f"{theirs}4" for ours, theirs in (("index", "forefinger"), ("middle", "middle_finger"),
                                                        ("ring", "ring_finger"), ("pinky", "pinky_finger"))}}

# ImageNet's per-channel statistics, RGB in [0, 1]: huggingface/pytorch-image-models timm/data/constants.py
# IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD, torchvision's models docs, nkolot/SPIN constants.py IMG_NORM_MEAN/STD
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def named_mismatches(ours, official, names):
    """['name: ours X, official Y', ...] for the positions where two sequences differ."""
    return [f"{names[i]}: ours {a}, official {b}" for i, (a, b) in enumerate(zip(ours, official)) if a != b]


def table_mismatches(ours, official, key_names, value_names):
    """['key: ours value, official value', ...] (by name; None where a table has no entry) where two {index: index}
    tables differ."""
    def name(table, k):
        return value_names[table[k]] if k in table else None
    return [f"{key_names[k]}: ours {name(ours, k)}, official {name(official, k)}"
            for k in range(len(key_names)) if ours.get(k) != official.get(k)]


def parent_names(parents, names):
    return [names[p] if p >= 0 else None for p in parents]


# ---------------------------------------------------------------------------------------------
# Kinematic trees and joint names


def test_smpl_joint_names_and_tree_are_the_official_ones():
    assert list(bm.SMPL_JOINT_NAMES) == SMPL_NAMES, named_mismatches(bm.SMPL_JOINT_NAMES, SMPL_NAMES, SMPL_NAMES)
    wrong = named_mismatches(parent_names(bm.SMPL_PARENTS, SMPL_NAMES), parent_names(SMPL_PARENTS, SMPL_NAMES),
                             [f"parent of {n}" for n in SMPL_NAMES])
    assert len(bm.SMPL_PARENTS) == 24 and not wrong, wrong


def test_smplx_joint_names_and_tree_are_the_official_ones():
    official = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES]
    assert list(bm.SMPLX_JOINT_NAMES) == official, named_mismatches(bm.SMPLX_JOINT_NAMES, official, official)
    wrong = named_mismatches(parent_names(bm.SMPLX_PARENTS, official), parent_names(SMPLX_PARENTS, official),
                             [f"parent of {n}" for n in official])
    assert len(bm.SMPLX_PARENTS) == 55 and not wrong, wrong
    # each hand's joints (wrist, then MANO's 15) and the arm chains, by name
    for side in ("left", "right"):
        hand = [official[j] for j in bm.SMPLX_HAND_JOINTS[side]]
        assert hand == [f"{side}_wrist"] + [f"{side}_{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb")
                                            for i in (1, 2, 3)], (side, hand)
    arms = {"left": bm.SMPLX_LEFT_ARM, "right": bm.SMPLX_RIGHT_ARM}
    for side, chain in arms.items():
        assert [official[j] for j in chain] == ["pelvis", "spine1", "spine2", "spine3", f"{side}_collar",
                                                f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist"], side


def test_the_standins_carry_the_official_trees():
    """The stand-in model files (standins.py) as smplx loads them: kintree_table row 0 is the official tree."""
    root = standins.write_standins(kinds=("smpl", "smplx"))
    for loader, official in ((bm.load_smpl, SMPL_PARENTS), (bm.load_smplx, SMPLX_PARENTS)):
        parents = loader(root).parents.tolist()
        wrong = [f"joint {j}: stand-in parent {a}, official {b}" for j, (a, b) in enumerate(zip(parents, official))
                 if a != b]
        assert len(parents) == len(official) and not wrong, (loader.__name__, wrong)


# ---------------------------------------------------------------------------------------------
# 2D keypoint files: COCO-17, COCO-WholeBody, OpenPose BODY_25 / COCO-18 (demo.read_keypoints)


def test_coco17_names_are_mmposes():
    assert list(demo.COCO17_NAMES) == COCO17_NAMES, named_mismatches(demo.COCO17_NAMES, COCO17_NAMES, COCO17_NAMES)


@pytest.mark.parametrize("count, names", [(25, BODY25_NAMES), (18, COCO18_NAMES)])
def test_openpose_body_keypoints_become_coco17_by_name(tmp_path, count, names):
    """An OpenPose file whose keypoint k sits at x = k: read_keypoints' COCO-17 keypoint i is OpenPose's keypoint
    of the same body point."""
    path = tmp_path / "openpose.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": [v for k in range(count) for v in (k, 2 * k, 1)]}]}))
    body = demo.read_keypoints(path)[0]["body"]
    got = [names[int(x)] for x in body[:, 0]]
    expected = [COCO_TO_OPENPOSE_NAME[n] for n in COCO17_NAMES]
    assert got == expected, named_mismatches(got, expected, COCO17_NAMES)


def test_wholebody_file_parts_are_mmposes_keypoints(tmp_path):
    """A COCO-WholeBody prediction (133 keypoints, keypoint k at x = k): every part read_keypoints returns holds
    mmpose's keypoints of that part in mmpose's order, and each hand is in our FreiHAND order."""
    path = tmp_path / "wholebody.json"
    path.write_text(json.dumps([{"keypoints": [[k, 2 * k] for k in range(133)], "keypoint_scores": [1.0] * 133}]))
    person = demo.read_keypoints(path)[0]
    got = {part: [WHOLEBODY_NAMES[int(x)] for x in person[part][:, 0]] for part in demo.WHOLEBODY_PARTS}
    expected = {"body": COCO17_NAMES, "feet": WHOLEBODY_FEET, "face": [f"face-{i}" for i in range(68)],
                **{f"{s}_hand": [f"{s}_{FREIHAND_TO_WHOLEBODY_HAND[n]}" for n in bm.FREIHAND_JOINT_NAMES]
                   for s in ("left", "right")}}
    for part in expected:
        assert got[part] == expected[part], (part, named_mismatches(got[part], expected[part], expected[part]))


# ---------------------------------------------------------------------------------------------
# Keypoints -> SMPL / SMPL-X joints


def test_coco17_to_smpl_is_spins_and_hybriks_with_the_hips_by_name():
    """GenHMR's refinement targets (demo.COCO17_TO_SMPL): SPIN's and HybrIK's COCO -> SMPL pairs (shoulders,
    elbows, wrists, knees, ankles); the hips, which both leave out (SPIN regresses its own), are matched to SMPL's
    hips by name (NOTE G18 of docs/genhmr.md); the face has no SMPL joint."""
    spin = {i: SPIN_GT_TO_SMPL[SPIN_GT_NAMES[g]] for i, g in enumerate(SPIN_COCO_JOINTS_IDX)
            if SPIN_GT_NAMES[g] in SPIN_GT_TO_SMPL}
    hybrik = {coco: smpl for smpl, coco in enumerate(HYBRIK_COCO_TO_SMPL) if coco >= 0}
    assert spin == hybrik  # the two official tables agree
    expected = {**spin, COCO17_NAMES.index("left_hip"): 1, COCO17_NAMES.index("right_hip"): 2}  # NOTE G18
    ours = dict(demo.COCO17_TO_SMPL)
    wrong = table_mismatches(ours, expected, COCO17_NAMES, SMPL_NAMES)
    assert not wrong, wrong
    # and through the refinement targets: SMPL joint j gets the COCO keypoint the official tables give it
    kp = np.stack([np.arange(17.0), np.zeros(17), np.ones(17)], 1)
    targets, weights = demo.keypoint_targets({"body": kp}, torch.eye(3, dtype=torch.float64), (64, 48))
    x = (targets[0, :, 0] * 64 + 24).round().long()  # back to crop pixels: x = the COCO keypoint's index
    got = {int(x[j]): j for j in range(24) if weights[0, j] > 0}
    assert got == expected, {COCO17_NAMES[c]: SMPL_NAMES[j] for c, j in got.items() if expected.get(c) != j}


def test_hmr2_openpose_and_extra_keypoints_to_smpl_are_4d_humans_and_spins(tmp_path):
    """data.SMPL_FROM_OPENPOSE / SMPL_FROM_EXTRA against 4D-Humans' smpl_to_openpose and SPIN's 19 extra names,
    all joints, and through data.HMR2Npz: every SMPL joint with a keypoint gets the official one (OpenPose first,
    the extra 19 where OpenPose has no confidence), the others weight 0."""
    from_openpose = {smpl: op for op, smpl in enumerate(SMPL_TO_OPENPOSE) if smpl < 24}
    wrong = table_mismatches(data.SMPL_FROM_OPENPOSE, from_openpose, SMPL_NAMES, BODY25_NAMES)
    assert not wrong, wrong
    from_extra = {SMPL_NAMES.index(smpl): EXTRA19_NAMES.index(extra) for extra, smpl in EXTRA_TO_SMPL_NAME.items()}
    wrong = table_mismatches(data.SMPL_FROM_EXTRA, from_extra, SMPL_NAMES, EXTRA19_NAMES)
    assert not wrong, wrong
    # end to end: row 0 with every keypoint confident, row 1 with no OpenPose keypoint
    path, arrays = write_hmr2_npz(tmp_path, count=2)
    arrays["body_keypoints_2d"][:, :, 2] = [[1.0], [0.0]]
    arrays["extra_keypoints_2d"][:, :, 2] = 1.0
    np.savez(path, **arrays)
    dataset = data.HMR2Npz(path, (64, 48))
    for row, table, offset, names in ((0, from_openpose, 0, BODY25_NAMES), (1, from_extra, 25, EXTRA19_NAMES)):
        sample = dataset[row]
        for j in range(24):
            if j in table:
                k = offset + table[j]
                assert sample["joints2d_weight"][j] == 1, (row, SMPL_NAMES[j])
                assert torch.equal(sample["joints2d"][j], sample["keypoints2d"][k, :2]), \
                    (row, SMPL_NAMES[j], names[table[j]])
            else:
                assert sample["joints2d_weight"][j] == 0, (row, SMPL_NAMES[j])


def test_wholebody_hands_to_smplx_joints_are_smplerxs():
    """The 21 hand keypoints (OpenPose / COCO-WholeBody order, FreiHAND's names) -> SMPL-X joints, through
    SMPLX_HAND_JOINTS and MANO_TO_FREIHAND (tips: smplx's extra joints 66-75), are SMPLer-X's joint_idx; and
    HMR-Adapter's 20 hand joints and its MCP knuckles are SMPLer-X's."""
    for side, official in (("left", SMPLERX_LEFT_HAND), ("right", SMPLERX_RIGHT_HAND)):
        ours = []
        for i in range(1, 21):  # FreiHAND's 21 without the wrist
            m = bm.MANO_TO_FREIHAND[i]
            ours.append(bm.SMPLX_HAND_JOINTS[side][m] if m < 16 else (66 if side == "left" else 71) + m - 16)
        assert ours == official, (side, named_mismatches(ours, official, SMPLERX_HAND_NAMES))
    names = [bm.FREIHAND_JOINT_NAMES[i] for i in hmr_adapter.HAND_JOINTS]
    expected = [n.lower().replace("_4", "_tip").replace("_", "") for n in SMPLERX_HAND_NAMES]
    assert [n.replace("_", "") for n in names] == expected, names
    mcp = [SMPLERX_HAND_NAMES.index(n) for n in SMPLERX_MCP]
    assert list(hmr_adapter.MCP) == mcp, (hmr_adapter.MCP, mcp)


# ---------------------------------------------------------------------------------------------
# ImageNet normalisation in every module that normalises


def constant_image(value=(0.2, 0.5, 0.9), hw=(64, 48)):
    return torch.tensor(value).view(1, 3, 1, 1).expand(2, 3, *hw).contiguous()


def assert_imagenet(normalised, value=(0.2, 0.5, 0.9), scale=1.0, who=""):
    """normalised (B, 3, ...) of a constant image `value` (x scale): (v - mean) / std per channel, official mean/std."""
    for c, channel in enumerate("RGB"):
        expected = (value[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        got = normalised[:, c].double()
        assert torch.allclose(got, torch.full_like(got, expected), rtol=1e-5, atol=1e-6), \
            f"{who}: channel {channel} gives {got.flatten()[0].item():.6f}, (v - {IMAGENET_MEAN[c]}) / " \
            f"{IMAGENET_STD[c]} = {expected:.6f}"


def test_imagenet_statistics_are_timms():
    assert list(bm.IMAGENET_MEAN) == IMAGENET_MEAN and list(bm.IMAGENET_STD) == IMAGENET_STD
    assert_imagenet(imagenet_normalise(constant_image()), who="lab.crops.imagenet_normalise")


def test_simplehand_normalises_rgb_with_imagenet_statistics():
    assert_imagenet(simplehand.ImageNetNormalise()(constant_image()), who="simplehand.ImageNetNormalise")


def test_hamer_crops_normalise_with_imagenet_statistics():
    """HMR-Adapter's hand expert input (hmr_adapter.hamer_crops): a uniform 8-bit image, cropped well inside."""
    value = (51 / 255, 128 / 255, 230 / 255)
    image = constant_image(value, (96, 96))
    boxes = torch.tensor([[40.0, 40.0, 56.0, 56.0]] * 2)
    crops = hmr_adapter.hamer_crops(image, boxes, 16, torch.tensor([False, True]), 2.0)
    assert_imagenet(crops, value, who="hmr_adapter.hamer_crops")


def genhmr_on_the_hmr2_fixture():
    """GenHMR at the HMR2.0 fixture's ViT size (tests/official/hmr2), its backbone loaded from the fixture."""
    fx = torch.load(os.path.join(os.path.dirname(__file__), "official", "hmr2", "hmr2_vit_smpl_head.pt"),
                    weights_only=True)
    tokenizer = genhmr.PoseTokenizer(with_fields(genhmr.TOKENIZER_PAPER, num_tokens=24, codebook_size=32, code_dim=8,
                                                 width=16).model, body=torch.nn.Module())
    cfg = with_fields(genhmr.PAPER, image_size=(64, 48), vit_width=32, vit_depth=2, vit_heads=2, d_model=32,
                      num_layers=1, num_heads=2, num_points=2, ffn_dim=64, head_hidden=32)
    model = genhmr.GenHMR(cfg.model, tokenizer).eval()
    bm.load_state_strict(model.backbone, genhmr.backbone_state_dicts(fx)["backbone"], "fixture")
    return model, fx


def test_genhmr_encode_image_gives_hmr2s_official_features():
    """GenHMR's encode_image on the fixture's uint8 pixels / 255: its ViT reads HMR2.0's normalised image and gives
    HMR2.0's features (4D-Humans' own ViT, tests/official/hmr2), and the pyramid and the shape / camera head read
    those features."""
    model, fx = genhmr_on_the_hmr2_fixture()
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.update(input=i[0], feature=o))
    with torch.no_grad():
        levels, betas, cam = model.encode_image(fx["image_uint8"].float() / 255)
        for key, official in (("input", fx["image_normalised"]), ("feature", fx["feature"])):
            error = ((captured[key] - official).abs().max() / official.abs().max()).item()
            assert error < 1e-5, f"encode_image's ViT {key}: max relative error {error:.2e} to HMR2.0's"
        expected = [level(fx["feature"]) for level in model.pyramid]
        for ours, theirs in zip(levels, expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close((betas, cam), model.shape_camera_head(fx["feature"]), rtol=1e-4, atol=1e-5)
    assert_imagenet(_normalised_by(model, constant_image()), who="genhmr.GenHMR.encode_image")


def _normalised_by(model, images):
    """What model.encode_image feeds its backbone for images."""
    captured = {}
    handle = model.backbone.register_forward_hook(lambda m, i, o: captured.update(input=i[0]))
    with torch.no_grad():
        model.encode_image(images)
    handle.remove()
    return captured["input"]


def test_genhmr_backbone_stage_normalises_with_imagenet_statistics():
    from lab import genhmr_experiments

    cfg = with_fields(genhmr_experiments.BACKBONE_CONFIGS["paper"], image_size=(64, 48), vit_width=32, vit_depth=2,
                      vit_heads=2, hmr2_head=(32, 2, 2, 16, 64))
    tokenizer = genhmr.PoseTokenizer(with_fields(genhmr.TOKENIZER_PAPER, num_tokens=24, codebook_size=32, code_dim=8,
                                                 width=16).model, body=torch.nn.Module())
    regressor = genhmr_experiments.PoseRegressor(cfg.model, cfg.regressor, tokenizer).eval()
    captured = {}
    regressor.backbone.register_forward_hook(lambda m, i, o: captured.update(input=i[0]))
    with torch.no_grad():
        regressor(constant_image())
    assert_imagenet(captured["input"], who="genhmr_experiments.PoseRegressor")
