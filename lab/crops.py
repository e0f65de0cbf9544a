"""Crops of full images and their cameras: what data.py and demo.py cut from an image, and where a crop's mesh lands
in the full image (CLIFF's move). The conventions are bodymodels.py's (OpenCV camera, HMR2.0/HaMeR's weak perspective
for a crop of S pixels); no paper file needs these (HMR-Adapter's hand crops are hmr_adapter.py's).

Map: 1. a crop's camera in the full image (`cam_crop_to_full`, `full_image_intrinsics`, `crop_translation_to_full`);
2. cutting a crop (`crop_box`, `crop_matrix`, `warp_image`) and `imagenet_normalise`.
"""

import torch
import torch.nn.functional as F

from bodymodels import IMAGENET_MEAN, IMAGENET_STD

# ---------------------------------------------------------------------------------------------
# 1. A crop's camera in the full image


def cam_crop_to_full(cam, box_center, box_size, image_size, focal_length=5000.0, crop_size=256.0):
    """CLIFF: a crop's weak-perspective camera -> translation in the full image's camera.

    cam (..., 3) = [s, tx, ty] for a square box of `box_size` (...) pixels centred at
    `box_center` (..., 2); image_size (..., 2) = [W, H]. Returns t (..., 3) for the camera
    `full_image_intrinsics(image_size)`: focal f / S * max(W, H), principal point (W/2, H/2).
    Points on the root's depth plane then land exactly where the crop camera put them.
    """
    cam = torch.as_tensor(cam)
    box_center, box_size, image_size = (torch.as_tensor(a, dtype=cam.dtype, device=cam.device)
                                        for a in (box_center, box_size, image_size))
    s, tx, ty = cam.unbind(-1)
    cx, cy = box_center.unbind(-1)
    W, H = image_size.unbind(-1)
    f_full = focal_length / crop_size * torch.maximum(W, H)
    bs = box_size * s + 1e-9  # b s = 2 x (pixels per metre at the root's depth)
    # tz = 2 f_full / (b s),  tx' = tx + 2 (cx - W/2) / (b s),  ty' = ty + 2 (cy - H/2) / (b s)
    return torch.stack([tx + 2 * (cx - W / 2) / bs, ty + 2 * (cy - H / 2) / bs, 2 * f_full / bs], dim=-1)


def full_image_intrinsics(image_size, focal_length=5000.0, crop_size=256.0, dtype=None):
    """The camera that `cam_crop_to_full` assumes. image_size (..., 2) = [W, H] -> K (..., 3, 3).

    Focal f / S * max(W, H) and principal point (W/2, H/2); integer sizes give float32.
    """
    image_size = torch.as_tensor(image_size, dtype=dtype)
    W, H = image_size.unbind(-1)
    f = focal_length / crop_size * torch.maximum(W, H)
    o, i = torch.zeros_like(f), torch.ones_like(f)
    return torch.stack([f, o, W / 2, o, f, H / 2, o, o, i], dim=-1).unflatten(-1, (3, 3))


def crop_translation_to_full(t, A, crop_hw, image_wh, crop_focal, K=None):
    """CLIFF's crop -> full image move (`cam_crop_to_full`) for any crop camera. t (..., 3) places a
    mesh in the camera of a crop (crop_matrix A, size crop_hw = (H, W), focal crop_focal in crop
    pixels, principal point at the crop's centre) -> t' in the full image's camera K (3, 3) (pixels;
    default `full_image_intrinsics(image_wh)`, HaMeR's demo convention). With F = crop_focal / A[1, 1]
    the crop camera's focal in image pixels, c the crop's centre in the image and (f, c_full) the full
    camera's focal and principal point:
        tz' = tz f / F,   (tx', ty') = (tx, ty) + (c - c_full) tz / F,
    so every point on the mesh root's depth plane lands on the pixel where the crop camera put it; a
    point dZ off that plane moves by about dZ / tz' times its distance from that pixel's ray, which is
    small at HMR2.0's focal 5000 per 256 pixels (a person seen from about 40 m). A K with fx != fy
    takes f = sqrt(fx fy): the root plane's points then land off by the factor sqrt(fx / fy) in x
    (sqrt(fy / fx) in y) about the root's pixel."""
    A = torch.as_tensor(A).to(t)
    F_crop = crop_focal / A[1, 1]
    c = torch.linalg.solve(A, A.new_tensor([crop_hw[1] / 2, crop_hw[0] / 2, 1.0]))[:2]
    K = full_image_intrinsics(image_wh, dtype=t.dtype) if K is None else torch.as_tensor(K, dtype=t.dtype)
    K = K.to(t.device)
    f = K[0, 0] if K[0, 0] == K[1, 1] else (K[0, 0] * K[1, 1]).sqrt()
    tz = t[..., 2:]
    return torch.cat([t[..., :2] + (c - K[:2, 2]) * tz / F_crop, tz * f / F_crop], -1)

# ---------------------------------------------------------------------------------------------
# 2. Cutting a crop: a box grown to an aspect, the crop's pixel transform, warping; ImageNet's normalisation


def imagenet_normalise(images):
    """images (B, 3, H, W) RGB in [0, 1] -> (images - mean) / std with ImageNet's per-channel mean and std."""
    mean, std = (images.new_tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images - mean) / std


def crop_box(box, aspect_hw, enlarge=1.0):
    """The crop around box (x0, y0, x1, y1): the smallest rectangle of aspect H:W = aspect_hw
    centred on the box that covers it, times enlarge -> (centre (cx, cy), size (w, h)) in pixels."""
    x0, y0, x1, y1 = box
    ratio = aspect_hw[0] / aspect_hw[1]
    w, h = x1 - x0, y1 - y0
    w, h = max(w, h / ratio), max(h, w * ratio)
    return ((x0 + x1) / 2, (y0 + y1) / 2), (w * enlarge, h * enlarge)


def crop_matrix(centre, size, out_hw, flip=False):
    """The pixel transform A (3, 3) of a crop: the rectangle of `size` (w, h) at `centre` (cx, cy) of
    the full image onto an image of out_hw (H, W), mirrored left-right if flip. Pixel edges map to
    pixel edges (the rectangle's corner (cx - w/2, cy - h/2) to (0, 0)), as `warp_image` reads them;
    a camera K of the full image becomes A @ K for the crop (a mirror also mirrors x)."""
    (cx, cy), (w, h), (H, W) = centre, size, out_hw
    sx, sy = W / w, H / h
    A = torch.tensor([[sx, 0.0, -sx * (cx - w / 2)], [0.0, sy, -sy * (cy - h / 2)], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    if flip:
        A = torch.tensor([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) @ A
    return A


def warp_image(image, A, size, steps=None):
    """Resample image (3, h, w) so that input pixel p lands on output pixel ~ A p (A (3, 3): an
    affine transform or any homography), at size (int or (H, W)). Bilinear, black outside, pixel
    centres at j + 0.5 (grid_sample's align_corners=False). steps: read positions rounded to
    1/steps pixel, as cv2's INTER_LINEAR does with steps = 32 (a visible difference only where a
    bilinear read straddles the black outside); None = exact."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = image.shape[-2:]
    if (h, w) == (height, width) and torch.equal(torch.as_tensor(A, dtype=torch.float64),
                                                 torch.eye(3, dtype=torch.float64)):
        return image.clone()  # exactly the image (the resampling grid below is float32, off by ~1e-6)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    q = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (H, W, 3) output pixel centres
    p = q @ torch.linalg.inv(torch.as_tensor(A).double()).T  # where each output pixel reads
    p = p[..., :2] / p[..., 2:]
    if steps:
        p = torch.round(p * steps) / steps  # (p - 0.5) * steps is an integer shift away: cv2's grid too
    grid = (p / torch.tensor([w, h], dtype=torch.float64) * 2 - 1).float()  # align_corners=False
    return F.grid_sample(image[None], grid[None].to(image.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]
