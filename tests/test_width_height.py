"""Width and height: every function that takes an image, a map or a box of W x H pixels, run where W != H.

A grid normalised by (H, W) instead of (W, H), a map read at (row, column) instead of (x, y), a residual scaled by a
crop's width where the height is meant, or a box side of one axis used for the other gives the right shapes and a
finite answer; on a square input it gives the right answer too. Here each function meets a non-square input whose
answer is known without the function: a map whose value is its own column and row (a bilinear read of a linear
field is exact, so any point's value is known), an image with one marked pixel, a point placed by a pinhole camera
written out in the test. Each test says where the answer comes from.
"""
import math

import numpy as np
import pytest
import torch

import bodymodels as bm
import data
import demo
import genhmr
import hmr_adapter as ha
import simplehand
from lab import crops, genhmr_experiments, simplehand_experiments, synthetic


def ramp(h, w, a=1.0, b=10.0, batch=1):
    """A (batch, 2, h, w) map: channel 0 = a x column, channel 1 = b x row (pixel (i, j) holds (a j, b i))."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    return torch.stack([a * cols, b * rows])[None].expand(batch, -1, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------
# Maps read at points: SimpleHand's tokens, GenHMR's deformable attention, SMPLer-X's joint features


def test_simplehand_sample_points_reads_x_then_y_of_a_wide_map():
    """uv = (u, v) in [0, 1], align_corners=True: uv = (j / (w - 1), i / (h - 1)) is cell (i, j) of an h x w map."""
    h, w = 3, 7
    feature = ramp(h, w).float()
    ij = torch.tensor([[0, 0], [2, 6], [1, 4], [0, 5], [2, 1]])
    uv = torch.stack([ij[:, 1] / (w - 1), ij[:, 0] / (h - 1)], -1)[None].float()
    got = simplehand.sample_points(feature, uv)[0]  # (N, 2)
    torch.testing.assert_close(got, torch.stack([ij[:, 1], 10 * ij[:, 0]], -1).float())
    # off the cells: a linear field is read exactly; clamp=True puts a point beyond the right edge on it
    uv = torch.tensor([[[0.25, 0.75], [1.5, 0.5]]])
    got = simplehand.sample_points(feature, uv, clamp=True)[0]
    expected = torch.tensor([[0.25 * (w - 1), 10 * 0.75 * (h - 1)], [w - 1.0, 10 * 0.5 * (h - 1)]])
    torch.testing.assert_close(got, expected)


def test_ms_deform_attn_reads_each_level_at_its_own_width_and_height():
    """locations (x, y) in [0, 1] of each map, pixel i covering [i, i + 1) / W_l: ((j + 0.5) / W, (i + 0.5) / H) is
    cell (i, j) of every level, whatever its size."""
    sizes = ((3, 5), (4, 9))  # (H_l, W_l)
    values = [ramp(h, w) for h, w in sizes]  # B M = 1, C / M = 2
    cells = torch.tensor([[0, 0], [2, 4], [1, 3]])  # (i, j) in level 0
    for level, (h, w) in enumerate(sizes):
        cells_l = cells * torch.tensor([1, 1]) + torch.tensor([level, 2 * level])  # inside both
        loc = torch.zeros(1, len(cells), 1, 2, 1, 2, dtype=torch.float64)
        loc[0, :, 0, level, 0] = torch.stack([(cells_l[:, 1] + 0.5) / w, (cells_l[:, 0] + 0.5) / h], -1)
        weights = torch.zeros(1, len(cells), 1, 2, 1, dtype=torch.float64)
        weights[..., level, 0] = 1.0
        got = genhmr.ms_deform_attn(values, loc, weights)[0]  # (Lq, 2)
        torch.testing.assert_close(got, torch.stack([cells_l[:, 1], 10 * cells_l[:, 0]], -1).double(), atol=1e-5,
                                   rtol=0)


def deform_attention_at(offsets_px, level, sizes):
    """One-head MSDeformAttn whose value and output projections are the identity, whose query picks `level` and
    whose single point sits `offsets_px` (dx, dy) pixels of that level from the reference."""
    attn = genhmr.MSDeformAttn(2, 1, len(sizes), 1).double()
    with torch.no_grad():
        for m in (attn.value_proj, attn.output_proj):
            m.weight.copy_(torch.eye(2)), m.bias.zero_()
        bias = torch.zeros(1, len(sizes), 1, 2, dtype=torch.float64)
        bias[0, level, 0] = torch.tensor(offsets_px, dtype=torch.float64)
        attn.sampling_offsets.weight.zero_(), attn.sampling_offsets.bias.copy_(bias.flatten())
        logits = torch.full((len(sizes),), -60.0, dtype=torch.float64)
        logits[level] = 60.0
        attn.attention_weights.weight.zero_(), attn.attention_weights.bias.copy_(logits)
    return attn


def test_deformable_attention_offsets_are_pixels_of_each_levels_width_and_height():
    """Eq. MSDA: p = p_q + dp / (W_l, H_l). A reference at the centre of cell (i, j) and an offset of (dx, dy)
    pixels reads cell (i + dy, j + dx) of a map that is wider than it is high (and of one that is higher)."""
    sizes = ((4, 11), (9, 5))  # (H_l, W_l)
    levels = [ramp(h, w) for h, w in sizes]
    query = torch.zeros(1, 1, 2, dtype=torch.float64)
    for level, (h, w) in enumerate(sizes):
        i, j, dx, dy = 1, 2, 2.0, 1.0
        attn = deform_attention_at((dx, dy), level, sizes)
        reference = torch.tensor([[[(j + 0.5) / w, (i + 0.5) / h]]], dtype=torch.float64)
        got = attn(query, reference, levels)[0, 0]
        torch.testing.assert_close(got, torch.tensor([j + dx, 10 * (i + dy)], dtype=torch.float64))


def test_offset_scale_and_level_sizes_of_a_portrait_crop():
    """NOTE G28: the start offsets shrink to 0.1 x the smaller side of a level below 10 pixels (the first point, 1
    pixel out, then stays within the reference points' 0.1 margin along both axes); level_sizes: (H / patch x s,
    W / patch x s) per pyramid scale, height first (64 x 48 crop, patch 8: the 8 x 6 ViT grid)."""
    for (H, W), expected in (((8, 6), 0.6), ((6, 8), 0.6), ((3, 40), 0.3), ((40, 3), 0.3), ((16, 12), 1.0)):
        scale = genhmr.offset_scale(H, W)
        assert scale == pytest.approx(expected), (H, W, scale)
        assert scale / W <= genhmr.REFERENCE_MARGIN + 1e-12 and scale / H <= genhmr.REFERENCE_MARGIN + 1e-12
    cfg = genhmr.GenHMRConfig(image_size=(64, 48), patch_size=8, feature_scales=(1, 2, 4))
    assert genhmr.level_sizes(cfg) == ((8, 6), (16, 12), (32, 24))
    # the start pattern of each level: Deformable DETR's (point k at k + 1 pixels along head m's direction
    # (cos, sin) / max(|cos|, |sin|)) times that level's factor
    sizes = ((3, 7), (6, 14))
    attn = genhmr.MSDeformAttn(8, 4, 2, 2, level_sizes=sizes)
    start = attn.sampling_offsets.bias.detach().view(4, 2, 2, 2)
    for m in range(4):
        theta = 2 * math.pi * m / 4
        d = torch.tensor([math.cos(theta), math.sin(theta)])
        d = d / d.abs().max()
        for level, factor in enumerate((0.3, 0.6)):
            for k in range(2):
                torch.testing.assert_close(start[m, level, k], d * (k + 1) * factor, atol=1e-6, rtol=1e-6)


def test_sample_joint_features_reads_pixels_of_a_wide_map():
    """SMPLer-X's sample_joint_features: pixel p at coordinate p (align_corners=True) on an H x W map."""
    features = ramp(4, 9).float()
    points = torch.tensor([[[0.0, 0.0], [8.0, 3.0], [5.0, 2.0], [6.5, 0.5], [1.25, 2.75]]])
    got = ha.sample_joint_features(features, points)[0]
    torch.testing.assert_close(got, torch.stack([points[0, :, 0], 10 * points[0, :, 1]], -1))


def test_soft_argmax_is_x_y_z_of_a_heatmap_with_distinct_sides():
    D, H, W = 3, 4, 6
    p = torch.zeros(1, 2, D, H, W)
    p[0, 0, 2, 1, 5] = 1.0  # z = 2, y = 1, x = 5
    p[0, 1, 0, 3, 1] = 1.0
    torch.testing.assert_close(ha.soft_argmax(p)[0], torch.tensor([[5.0, 1.0, 2.0], [1.0, 3.0, 0.0]]))


# ---------------------------------------------------------------------------------------------
# GenHMR's 2D: normalised crop coordinates, the crop's camera, the refinement's residual in crop pixels


def hmr2_crop_camera(H, W):
    """HMR2.0's camera for an H x W crop, written out: focal 5000 per 256 pixels of the crop's HEIGHT, principal
    point at the crop's centre (pixel edges at integers)."""
    f = 5000.0 / 256.0 * H
    return torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_normalise_joints2d_divides_by_the_height_about_the_centre():
    H, W = 64, 48
    px = torch.tensor([[[24.0, 32.0], [48.0, 32.0], [24.0, 0.0], [0.0, 64.0]]])
    got = genhmr.normalise_joints2d(px, (H, W))
    torch.testing.assert_close(got, torch.tensor([[[0.0, 0.0], [24 / 64, 0.0], [0.0, -0.5], [-24 / 64, 0.5]]]))


def test_genhmr_projection_and_mesh_pixels_are_the_crop_cameras():
    """project (normalised) and mesh_outputs' joints2d (pixels of an H x W crop) against a pinhole camera of focal
    5000 / 256 H at the crop centre (`hmr2_crop_camera`), for a portrait and a landscape crop."""
    g = torch.Generator().manual_seed(0)
    joints = 0.3 * torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    cam = torch.tensor([[0.9, 0.05, -0.1], [1.2, -0.2, 0.1]], dtype=torch.float64)

    class Body:  # mesh_outputs reads tokenizer.body(R, betas) -> (verts, joints)
        def __call__(self, R, betas):
            return joints[:, :5] + 0.01, joints

    tokenizer = type("Tokenizer", (), {"body": Body()})()
    for H, W in ((64, 48), (48, 80)):
        uv, t = genhmr.project(joints, cam)
        px = bm.perspective_projection(joints + t[:, None], hmr2_crop_camera(H, W))
        torch.testing.assert_close(uv, genhmr.normalise_joints2d(px, (H, W)))
        out = genhmr.mesh_outputs(tokenizer, None, None, cam, (H, W))
        torch.testing.assert_close(out["joints2d"], px)
        torch.testing.assert_close(bm.perspective_projection(out["joints3d"], hmr2_crop_camera(H, W)), px)


class FakeTokenizer:
    """What refinement_problem reads: a codebook, decode (codes -> rotations) and body.joints (rotations -> joints);
    the joints move with the codes so that the objective is a function of e."""

    def __init__(self, joints):
        self.quantizer = type("Q", (), {"codebook": torch.randn(8, 3, dtype=torch.float64,
                                                                generator=torch.Generator().manual_seed(1))})()
        self.joints = joints
        tokenizer = self

        class Body:
            def joints(self, R, betas):
                return tokenizer.joints + 0.01 * R[:, :1, 0, :]

            def __call__(self, R, betas):
                j = self.joints(R, betas)
                return j[:, :3], j

        self.body = Body()

    def decode(self, e):  # (B, L, 3) -> (B, 24, 3, 3)
        return torch.eye(3, dtype=e.dtype).expand(len(e), 24, 3, 3) + e.mean(1)[:, None, :, None]


def pixel_residual(tokenizer, ids, betas, cam, targets_px, H, W):
    """Eq. (2)'s data term in crop pixels, written out: sum_j |K (J_j + t) - J_2D,j|^2 with the crop camera."""
    R = tokenizer.decode(tokenizer.quantizer.codebook[ids])
    joints = tokenizer.body.joints(R, betas)
    t = bm.weak_perspective_to_translation(cam, 5000.0, 256.0)
    px = bm.perspective_projection(joints + t[:, None], hmr2_crop_camera(H, W))
    return ((px - targets_px) ** 2).sum((1, 2))


@pytest.mark.parametrize("hw", [(64, 48), (48, 96)])
def test_refinement_residual_is_in_crop_pixels(hw, monkeypatch):
    """GenHMR.refine_towards and genhmr_experiments.refine_towards: with lambda = 0 the objective at the sampled
    codes is the squared distance in crop PIXELS of the projected joints to the 2D joints (pixels of the H x W
    crop), whatever the crop's aspect: the residual is scaled by the crop's height, as normalise_joints2d divides by
    it."""
    H, W = hw
    g = torch.Generator().manual_seed(0)
    joints = 0.3 * torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    tokenizer = FakeTokenizer(joints)
    ids = torch.randint(0, 8, (2, 4), generator=g)
    betas, cam = torch.zeros(2, 10, dtype=torch.float64), torch.tensor([[0.9, 0.05, -0.1], [1.1, -0.1, 0.2]],
                                                                          dtype=torch.float64)
    targets_px = torch.rand(2, 24, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])
    expected = pixel_residual(tokenizer, ids, betas, cam, targets_px, H, W)
    seen = {}

    def capture(objective, e, cfg):
        seen["G"] = objective(e)
        return [e]

    inference = genhmr.InferenceConfig(refine_reg=0.0, refine_iterations=0)
    sampled = dict(ids=ids, betas=betas, cam=cam)
    genhmr_experiments.refine_towards(tokenizer, sampled, targets_px, None, inference, (H, W), "", capture)
    torch.testing.assert_close(seen.pop("G"), expected)
    monkeypatch.setattr(genhmr, "refine", capture)
    model = type("Model", (), {"tokenizer": tokenizer})()
    genhmr.GenHMR.refine_towards(model, sampled, targets_px, None, inference, (H, W))
    torch.testing.assert_close(seen.pop("G"), expected)


def test_detector_joints2d_misses_land_anywhere_in_a_wide_crop(monkeypatch):
    """NOTE G27: a missed joint lands anywhere in the H x W crop: x in [0, W), y in [0, H)."""
    monkeypatch.setattr(genhmr_experiments, "detector_error_model", lambda *pckh: (0.1, 1.0))  # every joint missed
    H, W = 20, 200
    joints = torch.full((8, 24, 2), 5.0)
    out = genhmr_experiments.detector_joints2d(joints, torch.ones(8), torch.arange(8), (0.5, 0.9), (H, W))
    assert (out[..., 0] >= 0).all() and (out[..., 0] < W).all() and (out[..., 1] >= 0).all() and (out[..., 1] < H).all()
    assert out[..., 0].max() > 0.9 * W and out[..., 1].max() > 0.9 * H  # 192 draws per axis span the crop


# ---------------------------------------------------------------------------------------------
# HMR-Adapter: points in crops and RoI maps, the hand boxes, the RoI, the crops, the body's 2D term


def test_to_crop_and_to_roi_of_a_box_wider_than_high():
    """to_crop: (p - box corner) / (w, h) - 0.5, u -> -u where flipped; to_roi: (p - corner) size / (w, h),
    x -> size - 1 - x where flipped. Box 40 wide, 20 high."""
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0]] * 2)
    points = torch.tensor([[[30.0, 25.0], [50.0, 40.0], [10.0, 30.0]]] * 2)
    flip = torch.tensor([False, True])
    uv = ha.to_crop(points, boxes, flip)
    torch.testing.assert_close(uv[0], torch.tensor([[0.0, -0.25], [0.5, 0.5], [-0.5, 0.0]]))
    torch.testing.assert_close(uv[1], torch.tensor([[0.0, -0.25], [-0.5, 0.5], [0.5, 0.0]]))
    roi = ha.to_roi(points, boxes, 16, flip)
    torch.testing.assert_close(roi[0], torch.tensor([[8.0, 4.0], [16.0, 16.0], [0.0, 8.0]]))
    torch.testing.assert_close(roi[1], torch.tensor([[7.0, 4.0], [-1.0, 16.0], [15.0, 8.0]]))


def test_mcp_in_rois_of_boxes_wider_than_high():
    """The 4 MCP keypoints (OpenPose 5, 9, 13, 17) in each hand's RoI frame; the left hand flipped."""
    kp = torch.zeros(1, 2, 21, 2)
    for k in (5, 9, 13, 17):
        kp[0, :, k] = torch.tensor([10.0 + k, 20.0 + k / 2])
    boxes = torch.tensor([[[10.0, 20.0, 50.0, 40.0], [0.0, 10.0, 30.0, 40.0]]])  # 40 x 20, then 30 x 30
    got = ha.mcp_in_rois(kp, boxes, 8)
    for s, (x0, y0, x1, y1) in enumerate(boxes[0].tolist()):
        for n, k in enumerate((5, 9, 13, 17)):
            x, y = (10.0 + k - x0) * 8 / (x1 - x0), (20.0 + k / 2 - y0) * 8 / (y1 - y0)
            expected = torch.tensor([8 - 1 - x if s == 0 else x, y])
            torch.testing.assert_close(got[0, s, n], expected)


def box_net_with_peaks(cfg, x, sizes):
    """BoxNet whose deconvolutions output x (B, c, 8h, 8w), whose centre logits are 1000 x channels 0 (left) and
    1 (right) of x, and whose size heads output `sizes` ((w, h) left, (w, h) right, map units)."""
    net = ha.BoxNet(cfg).double()

    class Fixed(torch.nn.Module):
        def forward(self, _):
            return x

    net.deconv = Fixed()
    with torch.no_grad():
        conv = net.bbox_center[0]
        conv.weight.zero_(), conv.bias.zero_()
        conv.weight[0, 0], conv.weight[1, 1] = 1000.0, 1000.0
        for head, size in zip((net.lhand_size, net.rhand_size), sizes):
            head[2].weight.zero_(), head[2].bias.copy_(torch.tensor(size, dtype=torch.float64))
    return net


def test_box_net_scales_centres_and_sizes_by_each_axis():
    """The hand boxes in image pixels: the centre (a peak at column cx, row cy of the 8h x 8w map) times
    (W / 8w, H / 8h), the size (w', h') in units of the h x w feature map times (W / w, H / h); an image whose
    aspect is not the map's tells the axes apart."""
    cfg = ha.BASES_TINY.model
    h, w = 4, 3
    x = torch.zeros(1, cfg.box_channels[-1], 8 * h, 8 * w, dtype=torch.float64)
    x[0, 0, 20, 6] = 1.0  # left: column 6, row 20
    x[0, 1, 4, 18] = 1.0  # right: column 18, row 4
    net = box_net_with_peaks(cfg, x, ((1.0, 0.5), (0.5, 2.0)))
    H, W = 160, 240
    feature_map = torch.zeros(1, cfg.body_width, h, w, dtype=torch.float64)
    heatmaps = torch.zeros(1, cfg.body_keypoints, cfg.body_hm_depth, h, w, dtype=torch.float64)
    boxes = net(feature_map, heatmaps, (H, W))[0]
    # left: centre (6 x 240 / 24, 20 x 160 / 32) = (60, 100); half (1 x 240 / 3, 0.5 x 160 / 4) / 2 = (40, 10)
    # right: centre (18 x 10, 4 x 5) = (180, 20); half (0.5 x 80, 2 x 40) / 2 = (20, 40)
    torch.testing.assert_close(boxes, torch.tensor([[20.0, 90.0, 100.0, 110.0], [160.0, -20.0, 200.0, 60.0]],
                                                   dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampling", [0, 2])
def test_hand_roi_net_maps_image_boxes_onto_the_upsampled_map(sampling):
    """HandRoINet: boxes in pixels of a 512 x 384 image on a 64 x 48 map (1 / 8 along both axes). The map holds its
    own column and row, so each RoI bin holds the map position of its centre: box corner / 8 + (bin + 0.5) x box
    side / 8 / R along each axis; the left hand's RoI mirrored."""
    cfg = ha.BaseConfig(**{**ha.BASES_TINY.model.__dict__, "roi_sampling": sampling})
    net = ha.HandRoINet(cfg).double()
    up = ramp(64, 48)

    class Fixed(torch.nn.Module):
        def forward(self, _):
            return up

    net.deconv, net.conv = Fixed(), torch.nn.Identity()
    boxes = torch.tensor([[[80.0, 200.0, 240.0, 280.0], [100.0, 160.0, 260.0, 240.0]]], dtype=torch.float64)
    rois = net(torch.zeros(1, 2, 8, 6, dtype=torch.float64), boxes, (512, 384))  # (1, 2, 2, R, R)
    R = cfg.hand_roi
    k = torch.arange(R, dtype=torch.float64) + 0.5
    for s, (x0, y0, x1, y1) in enumerate(boxes[0].tolist()):
        x = x0 / 8 + k * (x1 - x0) / 8 / R
        y = y0 / 8 + k * (y1 - y0) / 8 / R
        x = x.flip(0) if s == 0 else x
        torch.testing.assert_close(rois[0, s, 0], x[None, :].expand(R, R), atol=1e-9, rtol=0)
        torch.testing.assert_close(rois[0, s, 1], 10 * y[:, None].expand(R, R), atol=1e-9, rtol=0)


@pytest.mark.parametrize("sampling", [0, 2])
def test_hand_roi_net_scales_each_axis_for_an_image_of_another_aspect(sampling):
    """WholeBody takes an image of any size (resized to its 256 x 192 input) and gives hand boxes in that image's
    pixels; SMPLer-X's HandRoI maps a box onto the upsampled map by x / W x w_map and y / H x h_map (# official
    caizhongang/SMPLer-X common/nets/smpler_x.py HandRoI.forward @ d3e3c10). A 256 x 256 image on a 64 x 48 map:
    x / 256 x 48, y / 256 x 64."""
    cfg = ha.BaseConfig(**{**ha.BASES_TINY.model.__dict__, "roi_sampling": sampling})
    net = ha.HandRoINet(cfg).double()
    up = ramp(64, 48)

    class Fixed(torch.nn.Module):
        def forward(self, _):
            return up

    net.deconv, net.conv = Fixed(), torch.nn.Identity()
    boxes = torch.tensor([[[32.0, 64.0, 96.0, 128.0], [128.0, 32.0, 192.0, 96.0]]], dtype=torch.float64)
    rois = net(torch.zeros(1, 2, 8, 6, dtype=torch.float64), boxes, (256, 256))
    R = cfg.hand_roi
    k = torch.arange(R, dtype=torch.float64) + 0.5
    for s, (x0, y0, x1, y1) in enumerate(boxes[0].tolist()):
        x = (x0 + k * (x1 - x0) / R) * 48 / 256
        y = (y0 + k * (y1 - y0) / R) * 64 / 256
        x = x.flip(0) if s == 0 else x
        torch.testing.assert_close(rois[0, s, 0], x[None, :].expand(R, R), atol=1e-9, rtol=0)
        torch.testing.assert_close(rois[0, s, 1], 10 * y[:, None].expand(R, R), atol=1e-9, rtol=0)


@pytest.mark.parametrize("align", ["roi_align", "roi_align_grid"])
def test_roi_align_bins_of_a_box_wider_than_high_on_a_wide_map(align):
    """roi_align (mmcv's, aligned=False) and TINY's roi_align_grid on a map holding 3 x column + 7 x row: each bin
    averages samples spread evenly over it, so it holds the field at its centre, box corner + (bin + 0.5) x side / R
    per axis (times spatial_scale); flip mirrors the columns."""
    features = (3 * ramp(9, 17)[:, :1] + 0.7 * ramp(9, 17)[:, 1:]).double()  # (1, 1, 9, 17): 3 x + 7 y
    boxes = torch.tensor([[2.0, 4.0, 26.0, 12.0]] * 2, dtype=torch.float64)  # image pixels; x 0.5 on the map
    flip = torch.tensor([False, True])
    R = 4
    if align == "roi_align":
        out = ha.roi_align(features.expand(2, -1, -1, -1), boxes, 0.5, R, flip)
    else:
        out = ha.roi_align_grid(features.expand(2, -1, -1, -1), boxes, 0.5, R, 2, flip)
    k = torch.arange(R, dtype=torch.float64) + 0.5
    x, y = 1.0 + k * 12.0 / R, 2.0 + k * 4.0 / R
    expected = 3 * x[None, :] + 7 * y[:, None]
    torch.testing.assert_close(out[0, 0], expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(out[1, 0], expected.flip(-1), atol=1e-9, rtol=0)


def test_crop_grid_and_crop_images_of_a_wide_image():
    """TINY's hand crops: crop pixel (i, j) of a box shows the image at box corner + (j + 0.5, i + 0.5) x side /
    size (pixel edges at integers, so a ramp image, value 3 (x - 0.5) + 7 (y - 0.5) at (x, y), gives it exactly
    inside); the box is 30 x 20 on a 40 x 64 image; a flipped crop is the mirror image."""
    H, W, S = 40, 64, 8
    image = (3 * ramp(H, W)[:, :1] + 0.7 * ramp(H, W)[:, 1:]).expand(2, 3, -1, -1).double()
    boxes = torch.tensor([[10.0, 5.0, 40.0, 25.0]] * 2, dtype=torch.float64)
    flip = torch.tensor([False, True])
    crops_ = ha.crop_images(image, boxes, S, flip)
    t = (torch.arange(S, dtype=torch.float64) + 0.5) / S
    x, y = 10.0 + 30.0 * t, 5.0 + 20.0 * t
    expected = 3 * (x[None, :] - 0.5) + 7 * (y[:, None] - 0.5)
    torch.testing.assert_close(crops_[0, 0], expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(crops_[1, 2], expected.flip(-1), atol=1e-9, rtol=0)
    grid = ha.crop_grid(boxes[:1], S, (H, W), flip[:1])[0]  # (S, S, 2) in [-1, 1], x first
    torch.testing.assert_close(grid[0, :, 0], 2 * x / W - 1)
    torch.testing.assert_close(grid[:, 0, 1], 2 * y / H - 1)


def test_hamer_square_widens_the_box_to_192_x_256():
    """HaMeR's crop square: rescale x the box grown to its ViT's BBOX_SHAPE [192, 256] (w:h = 3:4), its larger
    side (expand_to_aspect_ratio(...).max(), # official geopavlakos/hamer hamer/datasets/vitdet_dataset.py @
    3a01849): a 30 x 30 box -> 40, a 10 x 30 box -> 30, a 60 x 20 box -> 80; times rescale 2."""
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [5.0, 0.0, 15.0, 30.0], [0.0, 10.0, 60.0, 30.0]])
    centre, side = ha.hamer_square(boxes, 2.0)
    torch.testing.assert_close(side[:, 0], torch.tensor([80.0, 60.0, 160.0]))
    torch.testing.assert_close(centre, torch.tensor([[15.0, 15.0], [10.0, 15.0], [30.0, 20.0]]))


def test_hamer_crops_of_a_wide_image_find_the_marked_pixels_and_mirror_the_left_hand():
    """HaMeR's crop (cv2's convention, pixel centres at integers): crop pixel (j, i) samples the image at centre +
    ((j, i) - size / 2) side / size; a left hand's image is flipped, its centre moved to W - 1 - c_x. Two marked
    pixels of a 40 x 96 image, beyond x = 40 (the height): the right hand's crop shows them where they are, the
    left hand's mirrored."""
    H, W, S = 40, 96, 16
    image = torch.zeros(1, 3, H, W)
    image[0, :, 20, 70] = 1.0  # the box centre
    image[0, :, 20, 73] = 1.0  # 3 pixels to its right
    boxes = torch.tensor([[64.0, 12.0, 76.0, 28.0]] * 2)  # 12 x 16: side max(16, 16) = 16, no blur at S = 16
    crops_ = ha.hamer_crops(image.expand(2, -1, -1, -1), boxes, S, torch.tensor([False, True]), 1.0)
    pixels = crops_[:, 0] * bm.IMAGENET_STD[0] + bm.IMAGENET_MEAN[0]  # back to [0, 1]
    bright = [sorted(map(tuple, (p > 0.5).nonzero().tolist())) for p in pixels]
    assert bright[0] == [(8, 8), (8, 11)], bright[0]  # right hand: centre at (8, 8), the other 3 columns right
    assert bright[1] == [(8, 5), (8, 8)], bright[1]  # left hand: mirrored about the centre column


def test_cv2_warp_reads_columns_beyond_the_height_of_a_wide_image():
    image = torch.zeros(1, 20, 50, dtype=torch.float64)
    image[0, 10, 40] = 255.0
    crop = ha.cv2_warp(image, torch.tensor([40.0, 10.0]), torch.tensor(16.0), 16, round_to_8bit=True)
    assert crop[0, 8, 8] == 255 and crop.sum() == 255


def test_gaussian_blur_of_a_non_square_image_is_scipys():
    """skimage.filters.gaussian (HaMeR's anti-aliasing) is scipy.ndimage.gaussian_filter, mode 'nearest',
    truncate 4, over rows and columns."""
    from scipy.ndimage import gaussian_filter

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 11, 29, generator=g, dtype=torch.float64)
    image[:, :, 25:] += 3.0  # a step near the right edge
    for sigma in (0.7, 1.6):
        expected = gaussian_filter(image.numpy(), sigma=(0, sigma, sigma), mode="nearest", truncate=4.0)
        torch.testing.assert_close(ha.gaussian_blur(image, sigma), torch.from_numpy(expected), atol=1e-12, rtol=0)


def smplerx_crop_camera(H, W):
    """SMPLer-X's camera of its H x W input, written out: focal 5000 per 256 pixels of the height (cfg.focal
    (5000, 5000) for input_body_shape (256, 192)), principal point at the centre (cfg.princpt = (W / 2, H / 2))."""
    return hmr2_crop_camera(H, W)


def test_body_pose_loss_2d_term_is_zero_for_joints_the_crop_camera_sees(monkeypatch):
    """Eq. 8's L_proj: 2D targets in pixels of an H x W image become (p - (W/2, H/2)) / H; joints projected by the
    crop camera of focal 5000 / 256 H at the translation smplerx_translation gives are then matched exactly, so at
    the true pose the 2D term is 0 (and 1 pixel off in x it is 1 / H / 2 per coordinate: mean over x and y)."""
    g = torch.Generator().manual_seed(0)
    pose = 0.2 * torch.randn(1, 55, 3, generator=g)
    shape, cam = torch.zeros(1, 10), torch.tensor([[0.1, -0.05, 0.6]])
    R = bm.axis_angle_to_matrix(pose)
    joints = 0.3 * torch.randn(1, 55, 3, generator=g)  # the body model's joints: fixed, only the camera is tested
    monkeypatch.setattr(ha, "body_joints", lambda R, betas: joints.to(R))
    H, W = 256, 192
    t = ha.smplerx_translation(cam)
    px = bm.perspective_projection((joints + t[:, None]).double(), smplerx_crop_camera(H, W)).float()
    theta = bm.matrix_to_rot6d(R[:, :ha.NUM_BODY])
    cfg = ha.TINY.model
    targets = dict(smplx_pose=pose, joints3d=joints, joints2d=px)
    _, terms = ha.body_pose_loss(theta, shape, cam, targets, (H, W), cfg)
    assert terms["body_2d"] < 1e-6, terms["body_2d"]
    _, terms = ha.body_pose_loss(theta, shape, cam, dict(targets, joints2d=px + torch.tensor([1.0, 0.0])), (H, W), cfg)
    assert terms["body_2d"].item() == pytest.approx(1 / H / 2, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# A crop's camera in the full image (lab/crops.py) and cutting crops (data.py)


def test_full_image_intrinsics_and_cam_crop_to_full_of_a_landscape_image():
    """HaMeR's / HMR2.0's demo camera of a W x H image: focal 5000 / 256 x max(W, H), principal point (W/2, H/2);
    CLIFF's move puts the root where the crop camera showed it: crop pixel (s / 2 (tx, ty) f / tz-ish, written
    below) -> image pixel box centre + (crop pixel - S/2) x box size / S."""
    W, H = 640, 480
    K = crops.full_image_intrinsics((W, H)).double()
    torch.testing.assert_close(K, torch.tensor([[12500.0, 0, 320], [0, 12500.0, 240], [0, 0, 1]], dtype=torch.float64))
    cam = torch.tensor([0.8, 0.1, -0.05], dtype=torch.float64)
    centre, size = torch.tensor([500.0, 120.0], dtype=torch.float64), 200.0
    t = crops.cam_crop_to_full(cam, centre, size, torch.tensor([W, H], dtype=torch.float64))
    # the root (the origin of the mesh) in the crop: t_crop = (tx, ty, 2 f / (S s)), uv = f / S (tx, ty) / tz
    tz = 2 * 5000.0 / (256.0 * 0.8)
    uv = 5000.0 / 256.0 * cam[1:] / tz  # normalised crop coordinates, [-0.5, 0.5]
    expected = centre + uv * size
    torch.testing.assert_close(bm.perspective_projection(t[None, None], K)[0, 0], expected)


def test_crop_translation_to_full_of_a_portrait_crop_of_a_landscape_image():
    """A crop of 64 x 48 pixels (rectangle 60 x 80 at (400, 150) of a 640 x 360 image) whose camera has focal
    F crop pixels at the crop centre: the root it places lands on the same image pixel through the full camera."""
    A = data.crop_matrix((400.0, 150.0), (60.0, 80.0), (64, 48))
    F_crop = 5000.0 / 256.0 * 64
    t = torch.tensor([0.05, -0.1, 30.0], dtype=torch.float64)
    K_crop = torch.tensor([[F_crop, 0, 24.0], [0, F_crop, 32.0], [0, 0, 1]], dtype=torch.float64)
    p_crop = bm.perspective_projection(t[None], K_crop)[0]
    p_image = torch.linalg.solve(A, torch.cat([p_crop, torch.ones(1, dtype=torch.float64)]))[:2]
    t_full = crops.crop_translation_to_full(t, A, (64, 48), (640, 360), F_crop)
    K = crops.full_image_intrinsics((640, 360)).double()
    torch.testing.assert_close(bm.perspective_projection(t_full[None], K)[0], p_image)


def test_crop_box_grows_to_the_aspect_height_first():
    """aspect_hw = (H, W): a 40 x 10 box to H:W = 2:1 -> 40 x 80; a 10 x 40 box to H:W = 3:4 -> 53.3 x 40 (x 1.5)."""
    assert data.crop_box((0, 0, 40, 10), (2, 1)) == ((20.0, 5.0), (40, 80))
    (c, size) = data.crop_box((0, 0, 10, 40), (3, 4), enlarge=1.5)
    assert c == (5.0, 20.0) and size == pytest.approx((80.0, 60.0))


def test_crop_matrix_and_warp_image_of_a_wide_output():
    """crop_matrix: the rectangle's corners onto the output's (W, H) corners (x mirrored with flip); warp_image at
    (H, W): a marked pixel of the image lands on the output pixel the matrix sends it to."""
    A = data.crop_matrix((35.0, 20.0), (30.0, 10.0), (10, 30))  # 30 x 10 at (35, 20) onto H 10, W 30: scale 1
    corners = torch.tensor([[20.0, 15.0, 1.0], [50.0, 25.0, 1.0]], dtype=torch.float64) @ A.T
    torch.testing.assert_close(corners[:, :2], torch.tensor([[0.0, 0.0], [30.0, 10.0]], dtype=torch.float64))
    Af = data.crop_matrix((35.0, 20.0), (30.0, 10.0), (10, 30), flip=True)
    corners = torch.tensor([[20.0, 15.0, 1.0], [50.0, 25.0, 1.0]], dtype=torch.float64) @ Af.T
    torch.testing.assert_close(corners[:, :2], torch.tensor([[30.0, 0.0], [0.0, 10.0]], dtype=torch.float64))
    image = torch.zeros(3, 40, 60)
    image[:, 22, 44] = 1.0  # pixel [44, 45) x [22, 23): output pixel (24, 7)
    out = data.warp_image(image, A, (10, 30))
    assert out.shape == (3, 10, 30)
    assert (out[0] > 0.5).nonzero().tolist() == [[7, 24]]
    out = data.warp_image(image, Af, (10, 30))
    assert (out[0] > 0.5).nonzero().tolist() == [[7, 30 - 1 - 24]]


# ---------------------------------------------------------------------------------------------
# data.py: augmentation, the evaluation crop, the benchmarks' crops


def point_at(K, uv, z=0.5):
    """A 3D point (3,) seen at pixel uv through K."""
    return z * torch.linalg.solve(K, torch.tensor([uv[0], uv[1], 1.0], dtype=torch.float64))


def test_sample_augmentation_flips_about_the_width_and_turns_about_the_centre():
    """A landscape image (H 64, W 192): a flip sends pixel u to W - u; a roll turns every pixel about the image
    centre (W/2, H/2); a shift moves x by at most shift x W and y by at most shift x H."""
    H, W = 64, 192
    K = torch.tensor([[300.0, 0, 90.0], [0, 300.0, 40.0], [0, 0, 1]], dtype=torch.float64)
    X = torch.stack([point_at(K, (150.0, 20.0)), point_at(K, (W / 2, H / 2)), point_at(K, (10.0, 60.0))])
    uv = bm.perspective_projection(X, K)

    def seen(aug):
        return bm.perspective_projection(X @ aug.T.T, aug.K)

    flip = data.AugmentConfig(rotation_deg=0.0, zoom=(1.0, 1.0), shift=0.0, flip_prob=1.0)
    aug = data.sample_augmentation(torch.Generator().manual_seed(0), flip, K, (H, W))
    torch.testing.assert_close(seen(aug), torch.stack([W - uv[:, 0], uv[:, 1]], -1))
    centre = torch.tensor([W / 2, H / 2], dtype=torch.float64)
    roll = data.AugmentConfig(rotation_deg=60.0, zoom=(1.0, 1.0), shift=0.0)
    for seed in range(3):
        aug = data.sample_augmentation(torch.Generator().manual_seed(seed), roll, K, (H, W))
        R2 = aug.rotation[:2, :2]
        torch.testing.assert_close(seen(aug) - centre, (uv - centre) @ R2.T)
    shift = data.AugmentConfig(rotation_deg=0.0, zoom=(1.0, 1.0), shift=0.1)
    moves = torch.stack([seen(data.sample_augmentation(torch.Generator().manual_seed(s), shift, K, (H, W)))[0] - uv[0]
                         for s in range(40)]).abs()
    assert (moves[:, 0] <= 0.1 * W + 1e-9).all() and (moves[:, 1] <= 0.1 * H + 1e-9).all(), moves.amax(0)
    assert moves[:, 0].max() > 0.05 * W and moves[:, 1].max() > 0.05 * H, moves.amax(0)


def keypoints_with_an_outlier(K, H, W):
    """21 keypoints (3D, seen through K) inside a portrait H x W image, and the same with one moved to
    ((W + H) / 2, 0.3 H): beyond the image's width, though x < H and y < W."""
    g = torch.Generator().manual_seed(0)
    uv = torch.tensor([W * 0.3, H * 0.4], dtype=torch.float64) + 20 * torch.rand(21, 2, generator=g,
                                                                                 dtype=torch.float64)
    X = torch.stack([point_at(K, p) for p in uv])
    moved = X.clone()
    moved[3] = point_at(K, ((W + H) / 2, H * 0.3))
    return X, moved


def test_keypoint_crops_leave_out_keypoints_beyond_the_width_of_a_portrait_image():
    """The official crops box only the keypoints inside the image (0 < u < W, 0 < v < H): one moved beyond the width
    of a 200 x 100 (H x W) image, though inside its height, changes neither keypoint_crop nor turned_keypoint_crop
    (nor sample_augmentation's "keypoints" crop); the crop's principal point is its centre (W/2, H/2)."""
    H, W = 200, 100
    K = torch.tensor([[150.0, 0, 50.0], [0, 150.0, 100.0], [0, 0, 1]], dtype=torch.float64)
    X, moved = keypoints_with_an_outlier(K, H, W)
    R0, K0 = data.keypoint_crop(K, bm.perspective_projection(X, K), (H, W), 64)
    R1, K1 = data.keypoint_crop(K, bm.perspective_projection(moved, K), (H, W), 64)
    torch.testing.assert_close((R0, K0), (R1, K1))
    cfg = data.OFFICIAL_HAND_AUGMENT
    R0, K0 = data.turned_keypoint_crop(torch.Generator().manual_seed(1), cfg, K, X, (H, W))
    R1, K1 = data.turned_keypoint_crop(torch.Generator().manual_seed(1), cfg, K, moved, (H, W))
    torch.testing.assert_close((R0, K0), (R1, K1))
    torch.testing.assert_close(K0[:2, 2], torch.tensor([W / 2, H / 2], dtype=torch.float64))
    a0 = data.sample_augmentation(torch.Generator().manual_seed(2), cfg, K, (H, W), X)
    a1 = data.sample_augmentation(torch.Generator().manual_seed(2), cfg, K, (H, W), moved)
    torch.testing.assert_close((a0.rotation, a0.K), (a1.rotation, a1.K))
    torch.testing.assert_close(a0.K[:2, 2], torch.tensor([W / 2, H / 2], dtype=torch.float64))


def centroid(image):
    """The intensity-weighted centre (x, y) of channel 0 of an image (3, H, W), pixel centres at j + 0.5."""
    w = image[0].double()
    rows, cols = torch.meshgrid(torch.arange(w.shape[0], dtype=torch.float64) + 0.5,
                                torch.arange(w.shape[1], dtype=torch.float64) + 0.5, indexing="ij")
    return torch.stack([(w * cols).sum(), (w * rows).sum()]) / w.sum()


@pytest.mark.parametrize("augment", [False, True])
def test_hand_photos_resize_and_flip_keep_the_keypoint_on_its_pixels(augment):
    """A hand photo of 60 x 100 pixels resized to 30 x 40 (each axis by its own factor) and, with augmentation, flipped
    about the new width: the joint seen at a marked block's centre is still at the block's centre in the image the
    model gets (K follows the image: u' = u W' / W, v' = v H' / H)."""
    image = torch.zeros(3, 60, 100)
    image[:, 20:24, 70:74] = 1.0  # centre (72, 22), pixel edges at integers
    K = torch.tensor([[120.0, 0, 50.0], [0, 120.0, 30.0], [0, 0, 1]], dtype=torch.float64)
    joints3d = torch.stack([point_at(K, (72.0, 22.0))] + [point_at(K, (10.0 + k, 10.0)) for k in range(20)]).float()
    labels = {"K": K.float(), "joints3d": joints3d, "verts": joints3d[:1].expand(778, 3),
              "mano_pose": torch.zeros(16, 3), "mano_shape": torch.zeros(10), "is_right": torch.tensor(True)}
    hands = data._PhotoHands((30, 40), augment=augment, augment_config=data.AugmentConfig(
        rotation_deg=0.0, zoom=(1.0, 1.0), shift=0.0, color=0.0, flip_prob=1.0))
    out = hands._finish(image, labels, 0)
    assert out["image"].shape == (3, 30, 40)
    expected = torch.tensor([40 - 72 * 0.4 if augment else 72 * 0.4, 22 * 0.5], dtype=torch.float64)
    torch.testing.assert_close(out["joints2d"][0].double(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(centroid(out["image"]), expected, atol=0.05, rtol=0)


def test_hmr2_npz_box_is_4d_humans_expand_to_aspect_ratio():
    """image_dataset.py: bbox_size = expand_to_aspect_ratio(scale x 200, BBOX_SHAPE [192, 256]).max() (# official
    shubham-goel/4D-Humans hmr2/datasets/utils.py @ 6ec7965: h / w < 256 / 192 -> h = max(w 256 / 192, h), else
    w = max(h 192 / 256, w)), and the crop is the b W/H x b rectangle about the centre onto the 64 x 48 input."""
    rows = data.HMR2Npz.__new__(data.HMR2Npz)
    rows.image_hw = (64, 48)
    rows.box_wh = np.array([[100.0, 60.0], [30.0, 100.0], [60.0, 80.0]])
    rows.center = np.array([[200.0, 100.0]] * 3, dtype=np.float32)
    assert [rows.box_size(i) for i in range(3)] == pytest.approx([100 * 256 / 192, 100.0, 80.0])
    A = rows.crop(0)
    b = 100 * 256 / 192
    corners = torch.tensor([[200 - 0.375 * b, 100 - b / 2, 1.0], [200 + 0.375 * b, 100 + b / 2, 1.0]],
                           dtype=torch.float64) @ A.T
    torch.testing.assert_close(corners[:, :2], torch.tensor([[0.0, 0.0], [48.0, 64.0]], dtype=torch.float64))


def test_wholebody_npz_crop_grows_the_box_to_the_inputs_aspect():
    """The person box grown to H:W = 256:192 about its centre, x 1.25 (SMPLer-X's process_bbox), onto (256, 192):
    a 100 x 100 box -> 125 x 166.7 pixels."""
    rows = data.WholeBodyNpz.__new__(data.WholeBodyNpz)
    rows.image_hw, rows.enlarge = (256, 192), 1.25
    rows.arrays = {"bbox": torch.tensor([[50.0, 100.0, 150.0, 200.0]], dtype=torch.float64)}
    A = rows.crop(0, None, None)
    w, h = 125.0, 125.0 * 256 / 192
    corners = torch.tensor([[100 - w / 2, 150 - h / 2, 1.0], [100 + w / 2, 150 + h / 2, 1.0]],
                           dtype=torch.float64) @ A.T
    torch.testing.assert_close(corners[:, :2], torch.tensor([[0.0, 0.0], [192.0, 256.0]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# demo.py: the crops it cuts, the boxes it checks, the targets it builds


def test_demo_crops_of_a_landscape_image_without_a_box():
    """No box, no keypoints: the whole W x H image (0, 0, W, H) grown to the model's aspect; SimpleHand's square
    about the image centre (W/2, H/2)."""
    H, W = 100, 300
    box, A = demo.person_crop((H, W), (64, 48))
    assert box == (0.0, 0.0, 300.0, 100.0)
    # grown to H:W = 4:3 about (150, 50): 300 x 400
    corners = torch.tensor([[0.0, 50 - 200.0, 1.0], [300.0, 50 + 200.0, 1.0]], dtype=torch.float64) @ A.T
    torch.testing.assert_close(corners[:, :2], torch.tensor([[0.0, 0.0], [48.0, 64.0]], dtype=torch.float64))
    [(is_right, centre, size)] = demo.hand_crops((H, W))
    assert is_right and centre == (150.0, 50.0) and size == (300, 300)


def test_demo_check_box_reads_x_against_the_width_and_y_against_the_height():
    H, W = 100, 300
    assert demo.check_box((150, 10, 200, 50), (H, W)) == (150.0, 10.0, 200.0, 50.0)  # x beyond H, inside W
    with pytest.raises(data.InputError):
        demo.check_box((10, 150, 50, 200), (H, W))  # y beyond H


def test_demo_keypoint_targets_are_normalised_by_the_crops_height_about_its_centre():
    """COCO-17 keypoints at crop pixels (A = I) -> (p - (W/2, H/2)) / H at their SMPL joints (a 64 x 48 crop)."""
    kp = np.zeros((17, 3))
    kp[:, :2], kp[:, 2] = [[24.0, 32.0]], 1.0
    left_wrist = demo.COCO17_NAMES.index("left_wrist")
    kp[left_wrist, :2] = [48.0, 0.0]
    targets, weights = demo.keypoint_targets({"body": kp}, torch.eye(3, dtype=torch.float64), (64, 48))
    j = bm.SMPL_JOINT_NAMES.index("left_wrist")
    torch.testing.assert_close(targets[0, j], torch.tensor([0.375, -0.5]))
    assert targets[0, bm.SMPL_JOINT_NAMES.index("right_knee")].abs().max() == 0 and weights[0, j] == 1


# ---------------------------------------------------------------------------------------------
# The lab's synthetic crops, SimpleHand's pixel <-> fraction size


def test_crop_intrinsics_centre_the_box_and_fill_the_larger_relative_side():
    """A detector's crop of an H x W image: the points' box lands centred at (W/2, H/2) + offset, and its larger
    side relative to the crop's (width / W or height / H) is `fill`."""
    H, W = 60, 200
    g = torch.Generator().manual_seed(0)
    points = torch.randn(30, 3, generator=g, dtype=torch.float64) * torch.tensor([0.1, 0.3, 0.05]) + torch.tensor(
        [0.2, -0.1, 3.0])
    K = synthetic.crop_intrinsics(points, (H, W), 0.8, torch.tensor([3.0, -2.0], dtype=torch.float64))
    uv = bm.perspective_projection(points, K)
    low, high = uv.amin(0), uv.amax(0)
    torch.testing.assert_close((low + high) / 2, torch.tensor([W / 2 + 3.0, H / 2 - 2.0], dtype=torch.float64))
    assert ((high - low) / torch.tensor([W, H])).max().item() == pytest.approx(0.8)


def test_place_in_crop_with_hmr2s_focal_centres_and_fills_a_wide_crop():
    """focal 5000 per 256 pixels of the crop's height, principal point (W/2, H/2); the person's projected box centred,
    its larger relative side the drawn fill."""
    H, W = 64, 160
    g = torch.Generator().manual_seed(0)
    verts = torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([0.2, 0.6, 0.1])
    cfg = synthetic.BodyViewConfig(fill=(0.8, 0.8), centre_jitter=0.0)
    t, K = synthetic.place_in_crop(torch.Generator().manual_seed(0), verts, (H, W), cfg, 5000.0)
    torch.testing.assert_close(K, torch.tensor([[1250.0, 0, 80.0], [0, 1250.0, 32.0], [0, 0, 1]], dtype=torch.float64))
    uv = bm.perspective_projection(verts + t, K)
    low, high = uv.amin(0), uv.amax(0)
    torch.testing.assert_close((low + high) / 2, torch.tensor([W / 2, H / 2], dtype=torch.float64), atol=1e-3, rtol=0)
    assert ((high - low) / torch.tensor([W, H])).max().item() == pytest.approx(0.8, abs=1e-4)


def test_upsample_backgrounds_of_a_wide_size_is_bilinear_interpolation():
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(2, 3, 5, 5, generator=g)
    expected = torch.nn.functional.interpolate(patterns, size=(12, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(synthetic.upsample_backgrounds(patterns, 12, 40), expected.clamp(0, 1))


def test_simplehand_crop_size_is_width_then_height():
    assert simplehand_experiments.crop_size(torch.zeros(2, 3, 40, 96), torch.float32).tolist() == [96.0, 40.0]
