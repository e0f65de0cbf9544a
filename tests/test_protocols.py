"""Three kinds of mistake the other files could miss: behaviour that shows only in training mode (dropout
and stochastic depth at a rate above zero), width and height swapped (only a non-square input tells them apart), and
the point each metric aligns a prediction at before measuring it (the root its paper's protocol names)."""
import pytest
import torch

import bodymodels
import genhmr
import hmr_adapter
import metrics
import simplehand
from lab import crops
from lab.configs import with_fields

DRAWS = 20_000  # samples of one input: the mean of a rate-0.3 inverted drop is within 2 % of its expectation (6 sigma)


# -----------------------------------------------------------------------------
# Training mode: a dropped branch is rescaled by 1 / (1 - p), so the expectation over draws is eval mode's output


def stochastic_depth_functions():
    """(name, f(x, p, training)) of each paper file's stochastic depth."""
    def genhmr_drop(x, p, training):
        block = genhmr.DropPathBlock(4, 1, 1.0, p).train(training)
        return block._drop(x)
    return [("simplehand.drop_path", simplehand.drop_path), ("genhmr.DropPathBlock", genhmr_drop)]


@pytest.mark.parametrize("name, drop", stochastic_depth_functions(), ids=lambda v: v if isinstance(v, str) else "")
def test_stochastic_depth_in_training_keeps_eval_modes_expectation_and_drops_whole_samples(name, drop):
    p = 0.3
    x = torch.randn(1, 5, 4).expand(DRAWS, -1, -1)  # one sample, drawn DRAWS times
    y = drop(x, p, True)
    kept = (y != 0).flatten(1).all(1)
    assert ((y == 0).flatten(1).all(1) | kept).all(), name  # a sample's branch is dropped whole or kept whole
    assert abs(1 - kept.double().mean().item() - p) < 0.02, name  # dropped at rate p
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))  # the kept ones rescaled: inverted scaling
    torch.testing.assert_close(y.mean(0), x[0], atol=0.03 * x.abs().max().item(), rtol=0)  # E[train] = eval
    assert torch.equal(drop(x, p, False), x), name  # eval mode: the identity


def test_genhmr_paper_vit_rates_rise_linearly_to_its_drop_path_and_only_in_training():
    """HMR2.0's ViT: block i drops at drop_path * i / (depth - 1) (PAPER: 0.55, timm's rule), none in eval mode."""
    cfg = genhmr.PAPER.model
    assert cfg.drop_path > 0
    small = with_fields(genhmr.PAPER, image_size=32, patch_size=8, vit_width=16, vit_depth=3, vit_heads=2).model
    vit = genhmr.DropPathViT(small)
    assert [b.drop_path for b in vit.blocks] == pytest.approx([0.0, cfg.drop_path / 2, cfg.drop_path])
    images = torch.randn(2, 3, 32, 32)
    vit.eval()
    torch.testing.assert_close(vit(images), vit(images), rtol=0, atol=0)  # eval: deterministic
    vit.train()
    draws = [vit(images) for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # training: the paths are dropped


def test_simplehand_attention_dropout_in_training_keeps_eval_modes_expectation():
    """SimpleHand's attention dropout (PAPER: 0.1; 0.3 here): dropped attention weights rescaled by 1 / (1 - p), so
    the mean of many training outputs is the eval output (the output is linear in the dropped weights)."""
    assert simplehand.PAPER.model.dropout > 0
    attention = simplehand.Attention(8, 2, 0.3)
    x = torch.randn(1, 5, 8).expand(DRAWS // 4, -1, -1)
    with torch.no_grad():
        expected = attention.eval()(x[:1])[0]
        assert torch.equal(attention(x[:1]), attention(x[:1]))  # eval: no dropout
        y = attention.train()(x)
    assert not torch.equal(y[0], y[1])  # training: dropout acts
    torch.testing.assert_close(y.mean(0), expected, atol=0.03 * expected.abs().max().item(), rtol=0)


# -----------------------------------------------------------------------------
# Non-square inputs: (H, W) is read as height then width everywhere


def test_genhmr_vit_reads_a_non_square_crop_as_height_by_width():
    """GenHMR TINY's 64 x 48 (H x W) crops: an 8 x 6 patch grid, positional embeddings for 48 patches; the same
    crop turned (48 x 64) is refused rather than read with the wrong grid."""
    cfg = genhmr.TINY.model
    H, W = cfg.image_hw
    assert H != W
    vit = genhmr.DropPathViT(cfg).eval()
    grid = (H // cfg.patch_size, W // cfg.patch_size)
    assert vit.grid == grid and vit.pos_embed.shape[1] == 1 + grid[0] * grid[1]
    with torch.no_grad():
        assert vit(torch.randn(1, 3, H, W)).shape == (1, cfg.vit_width, *grid)
        with pytest.raises(ValueError, match="patch grid"):
            vit(torch.randn(1, 3, W, H))


def test_genhmr_normalised_keypoints_of_a_non_square_crop_centre_on_width_and_height():
    """(pixel - (W/2, H/2)) / H: the crop's centre is 0, its bottom-middle (0, 0.5), its right-middle (W/2H, 0)."""
    H, W = 64, 48
    pixels = torch.tensor([[[W / 2, H / 2], [W / 2, H], [W, H / 2]]])
    expected = torch.tensor([[[0.0, 0.0], [0.0, 0.5], [W / (2 * H), 0.0]]])
    torch.testing.assert_close(genhmr.normalise_joints2d(pixels, (H, W)), expected)


def test_hmr_adapter_hand_crop_of_a_non_square_image_finds_a_bright_pixel_at_its_centre():
    """A 40 x 70 (H x W) image, dark but for one pixel at row 10, column 55: the crop of a box centred on it shows the
    pixel at the crop's centre (grid_sample's x divides by W, y by H)."""
    H, W, row, col, size = 40, 70, 10, 55, 9
    image = torch.zeros(1, 3, H, W)
    image[..., row, col] = 1.0
    box = torch.tensor([[col + 0.5 - size / 2, row + 0.5 - size / 2, col + 0.5 + size / 2, row + 0.5 + size / 2]])
    crop = hmr_adapter.crop_images(image, box, size, torch.tensor([False]))
    assert crop[0, 0].argmax().item() == (size // 2) * size + size // 2
    assert crop[0, 0, size // 2, size // 2] == pytest.approx(1.0, abs=1e-5)


def test_crop_matrix_maps_a_non_square_box_onto_a_non_square_output_corner_to_corner():
    """lab.crops: the (w, h) rectangle onto an (H, W) image: top-left corner to (0, 0), bottom-right to (W, H)."""
    (cx, cy), (w, h), (H, W) = (50.0, 30.0), (20.0, 40.0), (64, 48)
    A = crops.crop_matrix((cx, cy), (w, h), (H, W))
    corners = torch.tensor([[cx - w / 2, cy - h / 2, 1.0], [cx + w / 2, cy + h / 2, 1.0]], dtype=torch.float64)
    torch.testing.assert_close((corners @ A.T)[:, :2], torch.tensor([[0.0, 0.0], [W, H]], dtype=torch.float64))
    centre, size = crops.crop_box((40.0, 10.0, 60.0, 50.0), (64, 48))  # a 20 x 40 box at H:W = 4:3
    assert size == pytest.approx((30.0, 40.0)) and centre == pytest.approx((50.0, 30.0))


# -----------------------------------------------------------------------------
# Where each metric aligns: a pure translation (a similarity for PA) costs nothing, and moving the root the protocol
# names alone moves every other point relative to it


def similarity(points, generator):
    R = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    R = R * torch.linalg.det(R).sign()  # proper
    return 1.7 * points @ R.T + torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)


def test_body_errors_align_at_the_smpl_pelvis_joint_0_and_pa_at_a_similarity():
    """body_errors (GenHMR's synthetic tables, SMPL's 24 joints): MPJPE after moving the pelvis (joint 0), so a
    translated prediction scores 0 and moving the pelvis alone by d costs 23/24 |d| (any other root: 1/24 |d|)."""
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    verts = torch.randn(2, 50, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)
    out = metrics.body_errors(gt + shift, gt, verts + shift, verts)
    assert out["mpjpe_mm"] == pytest.approx(0, abs=1e-9) and out["pve_mm"] == pytest.approx(0, abs=1e-9)
    assert metrics.body_errors(similarity(gt, g), gt)["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-3)  # < 1 um
    d = torch.tensor([0.03, 0.0, -0.04], dtype=torch.float64)  # 5 cm
    moved = gt.clone()
    moved[:, 0] += d
    out = metrics.body_errors(moved, gt, verts, verts)
    assert out["mpjpe_mm"] == pytest.approx(50 * 23 / 24)
    assert out["pve_mm"] == pytest.approx(50)  # the mesh minus its pelvis joint: every vertex 5 cm off
    moved = gt.clone()
    moved[:, 1] += d  # a joint other than the pelvis: only itself is off
    assert metrics.body_errors(moved, gt)["mpjpe_mm"] == pytest.approx(50 / 24)


def test_hmr2_protocol_aligns_at_keypoint_39_and_scores_only_its_14():
    """4D-Humans' Evaluator: both sets minus keypoint 39 (the J19 pelvis), MPJPE on KEYPOINT_LIST's 14: moving 39
    alone by d moves all 14 (|d|), moving one of the 14 costs |d| / 14, moving one outside them nothing."""
    g = torch.Generator().manual_seed(1)
    gt = torch.randn(2, 44, 3, generator=g, dtype=torch.float64)
    e, pa = metrics.hmr2_protocol(gt + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), gt)
    assert e.abs().max() < 1e-12 and pa.abs().max() < 1e-6
    _, pa = metrics.hmr2_protocol(similarity(gt, g), gt)
    assert pa.abs().max() < 1e-6
    d = torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64)
    for joint, expected in ((39, 0.05), (25, 0.05 / 14), (38, 0.0), (0, 0.0)):  # 25: the right ankle, 38: outside
        moved = gt.clone()
        moved[:, joint] += d
        torch.testing.assert_close(metrics.hmr2_protocol(moved, gt)[0], torch.full((2,), expected, dtype=torch.float64))


def test_freihand_numbers_align_with_a_similarity_and_hand_mpjpe_at_the_wrist():
    """FreiHAND: every number after Procrustes (a similarity, a mirror image allowed as the official eval.py); a
    hand's root-aligned MPJPE at point 0, the wrist of FreiHAND's 21 joints."""
    g = torch.Generator().manual_seed(2)
    joints, verts = (torch.randn(2, n, 3, generator=g, dtype=torch.float64) for n in (21, 60))
    both = similarity(torch.cat([joints, verts], 1), g)
    table = metrics.freihand_table(both[:, :21], joints, both[:, 21:], verts)
    assert table["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-3) and table["pa_mpvpe_mm"] == pytest.approx(0, abs=1e-3)
    assert table["f5"] == table["f15"] == 1.0
    mirrored = torch.cat([joints, verts], 1) * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    table = metrics.freihand_table(mirrored[:, :21], joints, mirrored[:, 21:], verts)
    assert table["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-3)  # the official alignment reflects
    assert metrics.pa_mpjpe(mirrored[:, :21], joints).min() > 0.1  # the body protocol's does not
    moved = joints.clone()
    moved[:, 0] += torch.tensor([0.0, 0.0, 0.021], dtype=torch.float64)  # the wrist alone, 21 mm
    torch.testing.assert_close(metrics.mpjpe(moved, joints), torch.full((2,), 0.020, dtype=torch.float64))


def test_wholebody_metrics_align_the_body_at_the_pelvis_each_hand_at_its_wrist_and_the_face_at_the_neck():
    """HMR-Adapter's Table 1 (SMPLer-X's evaluate): PVE of the whole body after moving SMPL-X joint 0 (pelvis), of
    each hand after moving its wrist (20 left, 21 right), of the face after moving joint 12 (neck). A translated
    prediction scores 0 everywhere; moving one of those joints alone by d costs exactly its own part |d|."""
    assert bodymodels.SMPLX_HAND_JOINTS["left"][0] == 20 and bodymodels.SMPLX_HAND_JOINTS["right"][0] == 21
    assert metrics.WHOLEBODY_NECK == 12
    g = torch.Generator().manual_seed(3)
    num_verts = metrics._wholebody_models()["num_verts"]
    gt = dict(verts=torch.randn(2, num_verts, 3, generator=g), joints3d=torch.randn(2, 55, 3, generator=g),
              left_hand_occluded=torch.tensor([1.0, 0.0]), right_hand_occluded=torch.tensor([0.0, 0.0]))
    shift = torch.tensor([0.4, 0.1, -0.3])

    def pve(joint=None):
        joints = gt["joints3d"] + shift
        if joint is not None:
            joints[:, joint] += torch.tensor([0.0, 0.06, 0.0])  # 6 cm
        out = metrics.wholebody_metrics(dict(pipe_p_verts=gt["verts"] + shift, pipe_p_joints=joints), gt)
        return {part: out[f"pipeline/p/{part}/pve_mm"] for part in ("all", "hands", "hands_occluded", "face")}

    assert pve() == pytest.approx(dict(all=0, hands=0, hands_occluded=0, face=0), abs=1e-3)
    assert pve(0) == pytest.approx(dict(all=60, hands=0, hands_occluded=0, face=0), abs=1e-3)
    assert pve(20) == pytest.approx(dict(all=0, hands=30, hands_occluded=60, face=0), abs=1e-3)  # left: 1 of 2 hands
    assert pve(21) == pytest.approx(dict(all=0, hands=30, hands_occluded=0, face=0), abs=1e-3)
    assert pve(12) == pytest.approx(dict(all=0, hands=0, hands_occluded=0, face=60), abs=1e-3)
