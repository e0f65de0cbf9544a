"""Index lists into keypoint arrays, against the official layouts they index, and through the functions that use them.

A joint subset, a fingertip list, a keypoint order or a flip permutation that is off by one, or meant for another
layout (HMR-Adapter's 20 hand joints used on the 21 keypoints, MANO's 16 on FreiHAND's 21), keeps every shape and
every run finishing. Each list is held here to names or positions typed from the official file named in its comment
(repository, path, commit read), never to itself; and where a function applies a list, the function runs on an array
whose entry k carries k, so that what it picked is read back by name. tests/test_orders.py holds the body trees,
COCO / OpenPose / COCO-WholeBody orders and the keypoint -> SMPL maps; this file the rest.
"""
import pytest
import torch

import bodymodels as bm
import data
import genhmr
import hmr_adapter as ha
import metrics
import simplehand
from lab import hmr_adapter_experiments, standins, synthetic
from test_orders import EXTRA19_NAMES, SMPL_NAMES, SMPLX_NAMES, SMPLX_PARENTS, SMPLX_RENAMED

# ---------------------------------------------------------------------------------------------
# Official literals

# vchoutas/smplx smplx/joint_names.py SMPLH_JOINT_NAMES[37:52] (the right hand's 15; MANO's hand_pose order,
# smplx body_models.py MANO: global_orient (the wrist) then hand_pose) @ 1265df7ba545e8b00f72e7c557c766e15c71632f
SMPLH_RIGHT_HAND = [
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3", "right_thumb1",
    "right_thumb2", "right_thumb3"]
# vchoutas/smplx smplx/joint_names.py JOINT_NAMES[55:76] @ 1265df7: the extra joints smplx's SMPL-X appends
SMPLX_EXTRA_NAMES = [
    "nose", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel",
    "right_big_toe", "right_small_toe", "right_heel", "left_thumb", "left_index", "left_middle", "left_ring",
    "left_pinky", "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky"]
SMPLX_76 = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES] + SMPLX_EXTRA_NAMES
# vchoutas/smplx smplx/vertex_ids.py vertex_ids["mano"] @ 1265df7
SMPLX_MANO_TIPS = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}
# patienceFromZhou/simpleHand models/losses.py get_fingertip `idxs` (thumb, index, middle, ring, pinky) and
# remap_joints_and_fingertip `new_idxs` @ c3e6abc55512d712c4ae9b2695e529607f73b00f
SIMPLEHAND_TIPS = [744, 320, 443, 555, 672]
SIMPLEHAND_REMAP = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
# geopavlakos/hamer hamer/models/mano_wrapper.py `mano_to_openpose` @ 3a01849f4148352e9260b69bf28b65d1671a4905
HAMER_MANO_TO_OPENPOSE = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
# geopavlakos/hamer hamer/utils/render_openpose.py render_hand_keypoints `pairs` (OpenPose's hand limbs) @ 3a01849
OPENPOSE_HAND_PAIRS = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
                       (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
# CMU-Perceptual-Computing-Lab/openpose doc/02_output.md, hand output format (the 21 of the image there), as the
# FreiHAND names of this project spell them
OPENPOSE_HAND_NAMES = ["wrist"] + [f"{f}{i}" for f in ("thumb", "index", "middle", "ring", "pinky")
                                   for i in ("1", "2", "3", "_tip")]
# shubham-goel/4D-Humans hmr2/configs/datasets_eval.yaml KEYPOINT_LIST (3DPW-TEST, H36M-VAL-P2) and
# hmr2/configs_hydra/experiment/default.yaml EXTRA.PELVIS_IND @ 6ec79656a23c33237c724742ca2a0ec00b398b53
HMR2_KEYPOINT_LIST = [25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43]
HMR2_PELVIS_IND = 39
# nkolot/SPIN constants.py H36M_TO_J17 and J24_TO_J17 @ 2476c436013055be5cb3905e4e4ecfa86966fac3: J17 joint k is
# H36M-17 joint H36M_TO_J17[k] and ground-truth joint J24_TO_J17[k] (the 19 extra keypoints are the first 19 of
# those 24); SMPL_JOINTS_FLIP_PERM: SMPL joint j of a mirrored body is joint SMPL_JOINTS_FLIP_PERM[j]
SPIN_H36M_TO_J17 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
SPIN_J24_TO_J17 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17]
SPIN_SMPL_FLIP_PERM = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
# caizhongang/SMPLer-X common/utils/human_models.py SMPLX.J_regressor_idx (the neck its EHF.py aligns faces at)
# @ d3e3c10f482185b900308f32555654b6f3452d0d
SMPLERX_J_REGRESSOR_IDX = {"pelvis": 0, "lwrist": 20, "rwrist": 21, "neck": 12}
# shubham-goel/4D-Humans hmr2/datasets/image_dataset.py @ 6ec7965: body_keypoints_3d[:, [1, ..., 14], -1] = 0
HMR2_UNSEEN_3D = list(range(1, 15))
# patienceFromZhou/simpleHand cfg.py DATA.ROOT_INDEX @ c3e6abc: the joint the 3D targets are relative to
SIMPLEHAND_ROOT_INDEX = 9

MANO_OFFICIAL = ["wrist"] + [n[len("right_"):] for n in SMPLH_RIGHT_HAND]
FREIHAND_TO_SMPLX_EXTRA = {f"{f}_tip": f for f in ("thumb", "index", "middle", "ring", "pinky")}


def positions_of(x):
    """The integer each row of a marked array carries (its x coordinate)."""
    return [int(round(float(v))) for v in x[..., 0].reshape(-1)]


def marked(n, offset=0.0):
    """(n, 3): row k holds (k + offset, 0, 1)."""
    return torch.stack([torch.arange(n, dtype=torch.float64) + offset, torch.zeros(n, dtype=torch.float64),
                        torch.ones(n, dtype=torch.float64)], -1)


# ---------------------------------------------------------------------------------------------
# Hands: MANO's 16, its fingertips, FreiHAND's / OpenPose's 21


def test_mano_joints_are_smplxs_mano_order_with_their_tree():
    assert list(bm.MANO_JOINT_NAMES) == MANO_OFFICIAL
    # the tree: SMPL-X's right hand (test_orders' official parents) read by name
    smplx = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES]
    for j, name in enumerate(MANO_OFFICIAL[1:], 1):
        parent = smplx[SMPLX_PARENTS[smplx.index(f"right_{name}")]]
        expected = "wrist" if parent == "right_wrist" else parent[len("right_"):]
        assert MANO_OFFICIAL[bm.MANO_PARENTS[j]] == expected, (name, MANO_OFFICIAL[bm.MANO_PARENTS[j]], expected)
    assert bm.MANO_PARENTS[0] == -1 and len(bm.MANO_PARENTS) == 16
    assert {f: MANO_OFFICIAL[j] for f, j in bm.MANO_MCP_JOINTS.items()} == {f: f"{f}1" for f in bm.MANO_MCP_JOINTS}
    assert sorted(bm.MANO_MCP_JOINTS) == ["index", "middle", "pinky", "ring", "thumb"]


def test_fingertip_vertices_are_smplxs_and_simplehands():
    assert list(bm.FINGERTIP_VERTS["hamer"]) == [SMPLX_MANO_TIPS[f] for f in ("thumb", "index", "middle", "ring",
                                                                             "pinky")]
    assert list(bm.FINGERTIP_VERTS["freihand"]) == SIMPLEHAND_TIPS


def test_freihand_order_is_openposes_and_mano_to_freihand_is_simplehands_and_hamers():
    """The 21 (wrist, thumb 1-3 and tip, index, middle, ring, pinky) from MANO's 16 + 5 tips (thumb, index, middle,
    ring, pinky): the official permutation of both codes, and by name."""
    assert list(bm.FREIHAND_JOINT_NAMES) == OPENPOSE_HAND_NAMES
    assert list(bm.MANO_TO_FREIHAND) == SIMPLEHAND_REMAP == HAMER_MANO_TO_OPENPOSE
    sources = MANO_OFFICIAL + [f"{f}_tip" for f in ("thumb", "index", "middle", "ring", "pinky")]
    assert [sources[i] for i in bm.MANO_TO_FREIHAND] == OPENPOSE_HAND_NAMES
    parents = {b: a for a, b in OPENPOSE_HAND_PAIRS}
    assert list(bm.FREIHAND_PARENTS) == [-1] + [parents[k] for k in range(1, 21)]


def test_hand_joints21_reads_the_16_joints_and_the_tips_of_each_convention():
    """MANO joint k at x = k, vertex v at x = 1000 + v: the 21 rows read back as the official sources."""
    joints, verts = marked(16), marked(778, 1000.0)
    for convention, tips in (("freihand", SIMPLEHAND_TIPS), ("hamer", [SMPLX_MANO_TIPS[f] for f in (
            "thumb", "index", "middle", "ring", "pinky")])):
        got = positions_of(bm.hand_joints21(joints[None], verts[None], convention))
        sources = list(range(16)) + [1000 + v for v in tips]
        assert got == [sources[i] for i in HAMER_MANO_TO_OPENPOSE], convention
    assert positions_of(bm.mano_to_freihand(joints, verts)) == positions_of(bm.hand_joints21(joints, verts,
                                                                                               "freihand"))


def test_simplehand_regresses_freihands_21_and_is_relative_to_the_middle_mcp():
    """regress_joints: MANO's J_regressor then FreiHAND's tips in FreiHAND order; RootRelative subtracts joint 9,
    the official ROOT_INDEX, FreiHAND's middle1 (the middle finger's MCP)."""
    assert simplehand.SimpleHandConfig().root_index == SIMPLEHAND_ROOT_INDEX
    assert bm.FREIHAND_JOINT_NAMES[SIMPLEHAND_ROOT_INDEX] == "middle1"
    regressor = torch.zeros(16, 778)
    regressor[torch.arange(16), torch.arange(16)] = 1.0  # MANO joint k = vertex k
    model = simplehand.SimpleHand(simplehand.TINY.model, j_regressor=regressor)
    verts = marked(778, 1000.0).float()
    got = positions_of(model.regress_joints(verts[None]))
    sources = [1000 + k for k in range(16)] + [1000 + v for v in SIMPLEHAND_TIPS]
    assert got == [sources[i] for i in SIMPLEHAND_REMAP]
    joints = marked(21).float()[None]
    _, rel = simplehand.RootRelative(simplehand.SimpleHandConfig().root_index)(verts[None], joints)
    assert rel[0, SIMPLEHAND_ROOT_INDEX].abs().max() == 0 and rel[0, 0, 0] == -SIMPLEHAND_ROOT_INDEX


# ---------------------------------------------------------------------------------------------
# SMPL-X hands on a body: data.py's 21 keypoints, HMR-Adapter's 20 joints, MCPs, fingers and wrists


def test_smplx_fingertips_are_smplxs_extra_joints():
    for side in ("left", "right"):
        assert [SMPLX_76[j] for j in data.SMPLX_FINGERTIPS[side]] == [
            f"{side}_{f}" for f in ("thumb", "index", "middle", "ring", "pinky")]


def smplx_name_of_keypoint(side, name):
    """Our FreiHAND keypoint name -> the SMPL-X (smplx) joint of a hand on `side`."""
    return f"{side}_{FREIHAND_TO_SMPLX_EXTRA.get(name, name)}"


def test_wholebody_hand_keypoints_are_the_smplx_joints_of_the_same_name():
    """WholeBodyHands.labels on joints (76, 3) whose joint k sits at x = k (a camera far in front): each side's
    hand_joints3d row i is SMPL-X's joint of FreiHAND keypoint i's name, the tips smplx's extra joints; the arm pose
    is the arm chain's rows of the pose."""
    hands = data.WholeBodyHands.__new__(data.WholeBodyHands)
    V = 6
    hands._model, hands.image_size = object(), 32
    hands.vert_mask = {"left": torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool),
                       "right": torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)}
    hands.rig = {"faces": torch.tensor([[0, 1, 2], [3, 4, 5]])}
    hands.face_mask = {"left": torch.tensor([True, False]), "right": torch.tensor([False, True])}
    hands.mano_to_smplx = torch.eye(3)
    verts = torch.tensor([[0.0, 0, 5], [0.1, 0, 5], [0, 0.1, 5], [0.2, 0, 5], [0.3, 0, 5], [0.2, 0.1, 5]])
    K = torch.tensor([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]])
    pose = marked(55).float()
    sample = {"verts": verts[:V], "K": K, "smplx_pose": pose}
    joints = marked(76).float() + torch.tensor([0.0, 0.0, 100.0])
    world = torch.eye(3).expand(22, 3, 3)
    for side in ("left", "right"):
        out = hands.labels(side, sample, joints, world, torch.zeros(15, 3), torch.zeros(0, dtype=torch.long))
        got = [SMPLX_76[k] for k in positions_of(out[f"{side}_hand_joints3d"])]
        assert got == [smplx_name_of_keypoint(side, n) for n in OPENPOSE_HAND_NAMES], (side, got)
        arm = [SMPLX_76[k] for k in positions_of(out[f"{side}_arm_pose"])]
        assert arm == ["pelvis", "spine1", "spine2", "spine3", f"{side}_collar", f"{side}_shoulder", f"{side}_elbow",
                       f"{side}_wrist"], (side, arm)


def test_hmr_adapter_finger_joints_wrists_and_body():
    """The 30 finger joints (left, then right, smplx's order), the wrist each hangs from (walking SMPL-X's official
    tree up), theta_0's 22 body joints (pelvis .. right wrist; 22 is the jaw)."""
    names = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES]
    fingers = [f"{s}_{f}{i}" for s in ("left", "right") for f in ("index", "middle", "pinky", "ring", "thumb")
               for i in (1, 2, 3)]
    assert [names[j] for j in ha.HAND_FINGER_JOINTS] == fingers
    for j, w in zip(ha.HAND_FINGER_JOINTS, ha.FINGER_WRISTS):
        while not names[j].endswith("_wrist"):
            j = SMPLX_PARENTS[j]
        assert names[w] == names[j], (names[w], names[j])
    assert names[ha.NUM_BODY - 1] == "right_wrist" and names[ha.NUM_BODY] == "jaw"
    assert genhmr.PELVIS == 0 and SMPL_NAMES[genhmr.PELVIS] == "pelvis"


def test_mcp_in_rois_picks_the_four_mcp_keypoints_of_the_21():
    """SMPLer-X's L_MCP / R_MCP (Index_1, Middle_1, Ring_1, Pinky_1) among the 21 keypoints, whose keypoint k sits at
    x = k: HMR-Adapter's 20 hand joints (the 21 without the wrist) index the 21 through HAND_JOINTS, never directly."""
    kp = marked(21)[None, None, :, :2].expand(1, 2, -1, -1).float()
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0]] * 2])  # the RoI frame is the image's (size 32, box 32)
    got = ha.mcp_in_rois(kp, boxes, 32)
    right = [OPENPOSE_HAND_NAMES[k] for k in positions_of(got[0, 1])]
    assert right == ["index1", "middle1", "ring1", "pinky1"]
    left = [OPENPOSE_HAND_NAMES[32 - 1 - k] for k in positions_of(got[0, 0])]  # flipped: x -> 31 - x
    assert left == ["index1", "middle1", "ring1", "pinky1"]


# ---------------------------------------------------------------------------------------------
# Bodies: the benchmarks' keypoints, H36M's joints in the 19, the whole-body protocol's joints, flips


def test_hmr2_protocol_keypoints_and_pelvis_are_4d_humans():
    assert list(metrics.HMR2_KEYPOINT_LIST) == HMR2_KEYPOINT_LIST and metrics.HMR2_PELVIS_INDEX == HMR2_PELVIS_IND
    assert EXTRA19_NAMES[HMR2_PELVIS_IND - 25] == "Pelvis (MPII)"
    assert [EXTRA19_NAMES[k - 25] for k in HMR2_KEYPOINT_LIST] == EXTRA19_NAMES[:13] + ["Head (H36M)"]
    # through the protocol: only the listed keypoints count, each pelvis-relative
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(1, 44, 3, generator=g, dtype=torch.float64)
    pred = gt.clone()
    pred[0, [k for k in range(44) if k not in HMR2_KEYPOINT_LIST and k != HMR2_PELVIS_IND]] += 5.0
    mpjpe, pa = metrics.hmr2_protocol(pred, gt)
    assert mpjpe.item() < 1e-12 and pa.item() < 1e-6
    pred = gt.clone()
    pred[0, 43, 0] += 1.4
    assert metrics.hmr2_protocol(pred, gt)[0].item() == pytest.approx(1.4 / 14, rel=1e-9)
    pred = gt.clone()
    pred[0, HMR2_PELVIS_IND, 0] += 1.4  # every listed keypoint moves by 1.4 relative to the pelvis
    assert metrics.hmr2_protocol(pred, gt)[0].item() == pytest.approx(1.4, rel=1e-9)


def test_h36m_joints_fill_the_19s_slots_as_spins_h36m_to_j17():
    """A 17-row (H36M) regressor: slot s of the 19 extra keypoints gets the H36M joint SPIN's J17 tables pair with
    it, for every slot the protocol reads (KEYPOINT_LIST and the pelvis); the others stay NaN."""
    spin = {j24: h36m for j24, h36m in zip(SPIN_J24_TO_J17, SPIN_H36M_TO_J17)}
    assert all(spin[s] == h for s, h in metrics.H36M17_TO_EXTRA.items())
    read = [k - 25 for k in HMR2_KEYPOINT_LIST] + [HMR2_PELVIS_IND - 25]
    assert sorted(metrics.H36M17_TO_EXTRA) == sorted(read)
    regressor = torch.zeros(17, 17, dtype=torch.float64)
    regressor[torch.arange(17), torch.arange(17)] = 1.0  # H36M joint j = vertex j
    out = metrics.hmr2_keypoints(marked(17)[None], regressor)[0]
    for s in range(19):
        if s in spin and s in read:
            assert int(out[25 + s, 0]) == spin[s], (EXTRA19_NAMES[s], int(out[25 + s, 0]), spin[s])


def test_wholebody_protocol_face_and_neck_joints():
    names = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES]
    assert metrics.WHOLEBODY_NECK == SMPLERX_J_REGRESSOR_IDX["neck"] and names[metrics.WHOLEBODY_NECK] == "neck"
    assert [names[j] for j in metrics.WHOLEBODY_HEAD_JOINTS] == ["head", "jaw", "left_eye", "right_eye"]
    assert [names[j] for j in bm.SMPLX_HAND_JOINTS["left"][:1] + bm.SMPLX_HAND_JOINTS["right"][:1]] == [
        names[SMPLERX_J_REGRESSOR_IDX["lwrist"]], names[SMPLERX_J_REGRESSOR_IDX["rwrist"]]]


def test_whole_body_flip_permutation_is_spins_and_swaps_sides_by_name():
    perm = list(hmr_adapter_experiments.MIRROR_BODY)
    assert perm == SPIN_SMPL_FLIP_PERM[:22]
    names = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES][:22]
    swap = {"left": "right", "right": "left"}
    for j, k in enumerate(perm):
        side = names[j].split("_")[0]
        assert names[k] == (names[j].replace(side, swap[side], 1) if side in swap else names[j]), (names[j], names[k])


def test_hmr2_npz_drops_the_3d_confidences_image_dataset_drops(tmp_path):
    from test_data import write_hmr2_npz

    path, _ = write_hmr2_npz(tmp_path, count=1)
    keypoints3d = data.HMR2Npz(path, (64, 48)).keypoints3d[0]
    assert [k for k in range(44) if keypoints3d[k, -1] == 0] == HMR2_UNSEEN_3D


def test_smplerx_6d_rows_become_our_columns():
    """SMPLer-X's 6D x is read as x.view(-1, 3, 2), a1 = x[:, :, 0], a2 = x[:, :, 1] (# official caizhongang/SMPLer-X
    common/utils/transforms.py rot6d_to_axis_angle @ d3e3c10): for a rotation R its 6D is R[:, :2] row by row;
    reordered by SMPLERX_6D it is ours, [R[:, 0], R[:, 1]]; smplerx_state_dict reorders the 6D readouts' rows so."""
    R = bm.axis_angle_to_matrix(torch.tensor([[0.3, -0.8, 0.5]], dtype=torch.float64))[0]
    theirs = R[:, :2].reshape(6)
    torch.testing.assert_close(theirs[ha.SMPLERX_6D], bm.matrix_to_rot6d(R))
    weight = torch.arange(12.0)[:, None].expand(12, 3)  # two 6D outputs
    state = ha.smplerx_state_dict({"module.body_rotation_net.root_pose_out.0.weight": weight})
    assert state["body_regressor.root_pose_out.0.weight"][:, 0].tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]


# ---------------------------------------------------------------------------------------------
# The lab's lists: synthetic hands' fingers, the ambiguous arm, the stand-ins' hand joints


def test_synthetic_fingers_and_the_ambiguous_arm_are_named_joints():
    assert {f: [MANO_OFFICIAL[j] for j in js] for f, js in synthetic.FINGERS.items()} == {
        f: [f"{f}1", f"{f}2", f"{f}3"] for f in ("index", "middle", "pinky", "ring", "thumb")}
    assert SMPL_NAMES[synthetic.AMBIGUOUS_JOINT] == "right_shoulder"
    assert [SMPL_NAMES[j] for j in synthetic.AMBIGUOUS_MOVED] == ["right_elbow", "right_wrist", "right_hand"]


def test_standins_hand_joint_maps_are_the_bodys_hand_joints():
    names = [SMPLX_RENAMED.get(n, n) for n in SMPLX_NAMES]
    for s, side in enumerate(("left", "right")):
        assert [names[j] for j in standins._hand_joint_map("smplx", s)] == (
            [f"{side}_wrist"] + [f"{side}_{n}" for n in MANO_OFFICIAL[1:]])
        assert [SMPL_NAMES[j] for j in standins._hand_joint_map("smpl", s)] == [f"{side}_wrist"] + [f"{side}_hand"] * 15
