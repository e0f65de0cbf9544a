"""A crop's camera in the full image: where a crop's mesh lands in the full image (CLIFF's move), what demo.py puts
its meshes back with. The conventions are bodymodels.py's (OpenCV camera, HMR2.0/HaMeR's weak perspective for a crop
of S pixels); no paper file needs these (HMR-Adapter's hand crops are hmr_adapter.py's). Cutting a crop (`crop_box`,
`crop_matrix`, `warp_image`) is data.py's, as its real readers cut crops; they are importable from here too.

Map: 1. a crop's camera in the full image (`cam_crop_to_full`, `full_image_intrinsics`, `crop_translation_to_full`);
2. ImageNet's normalisation (`imagenet_normalise`).
"""

import torch

from bodymodels import IMAGENET_MEAN, IMAGENET_STD
from data import crop_box, crop_matrix, warp_image  # noqa: F401  (data.py's; demo.py and the tests cut crops with them)

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
# 2. ImageNet's normalisation


def imagenet_normalise(images):
    """images (B, 3, H, W) RGB in [0, 1] -> (images - mean) / std with ImageNet's per-channel mean and std."""
    mean, std = (images.new_tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images - mean) / std
