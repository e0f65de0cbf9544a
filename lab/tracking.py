"""Where to crop in each frame of a video when no detector gives a box: the region-of-interest tracking that hand and
body trackers use (MediaPipe Hands, Zhang et al. 2020: the next frame's hand crop comes from the landmarks
predicted in the current one, and the palm detector runs again only when they are lost).

The first frame's region is given (`--box`, else the whole image). After each prediction, the tracker takes the box
of the predicted 2D joints, grown by the margin the paper's crops from keypoints take, as the region for the next
frame. The model
runs on batches of frames, so a batch's crops are all placed before it runs: each frame's region is extrapolated at
constant velocity (centre and size) from the last two accepted predictions, which a batch of one reduces to the
previous frame's. A prediction is refused when its box is not finite, smaller than `min_size` pixels, or has less
than half of its area inside the image (the model lost the person or hand): the region then stays at the last good
box, which does not move, until a prediction is accepted again.

`track` runs a model over a video this way: each frame's crop from its keypoints where they give one, else from
the tracker, --batch-size frames per call, a progress line on stderr when it is a terminal.

Map: `points_box`, `inside_fraction`, `RegionTracker`, `batches`, `track`.
"""

import sys

import numpy as np
import torch

from data import InputError


def points_box(points):
    """The box (x0, y0, x1, y1) of the finite rows of points (N, 2) pixels, or None without two of them."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    points = points[np.isfinite(points).all(1)]
    if len(points) < 2:
        return None
    return np.concatenate([points.min(0), points.max(0)])


def inside_fraction(box, image_hw):
    """The fraction of box's area that lies inside an image of size (H, W)."""
    H, W = image_hw
    x0, y0, x1, y1 = box
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    inside = max(min(x1, W) - max(x0, 0.0), 0.0) * max(min(y1, H) - max(y0, 0.0), 0.0)
    return inside / area if area > 0 else 0.0


class RegionTracker:
    """The crop region of each frame from the predictions of the frames before it.

    image_hw (H, W); first_box (x0, y0, x1, y1) the first frame's region (None: the whole image); enlarge: the
    region around a prediction's box, as a factor on its width and height (the margin the paper's crops have around
    the hand or person); min_size: the smallest accepted prediction box, pixels.
    `region(t)` is frame t's region, from the accepted predictions before t; `update(t, points)` offers frame t's
    predicted points (N, 2) pixels (the predicted 2D joints) and says whether they were accepted."""

    def __init__(self, image_hw, first_box=None, enlarge=1.25, min_size=4.0):
        H, W = image_hw
        self.image_hw, self.enlarge, self.min_size = (H, W), float(enlarge), float(min_size)
        box = np.asarray(first_box if first_box is not None else (0.0, 0.0, W, H), dtype=np.float64)
        self.history = [(-1, _centre_size(box))]  # accepted (frame, (cx, cy, w, h)); the given box before frame 0
        self.accepted = []

    def region(self, t):
        """Frame t's region (x0, y0, x1, y1): the last accepted one, moved on at the velocity between the last two
        accepted ones (up to t - 1), sizes kept positive."""
        (t1, last) = self.history[-1]
        c = last
        if len(self.history) >= 2 and t1 >= 0 and self.history[-2][0] >= 0:
            t0, c0 = self.history[-2]
            c = last + (last - c0) / (t1 - t0) * (t - t1)
            c[2:] = np.maximum(c[2:], last[2:] / 2)  # never shrinks below half in one go
            if inside_fraction(_corners(c), self.image_hw) < 0.5:  # moved on out of the image: stay
                c = last
        return _corners(c)

    def update(self, t, points):
        """Offer frame t's predicted points (N, 2) pixels. Accepted (returns True) when their box is finite, at
        least min_size pixels on each side and at least half inside the image: the region that follows is that
        box grown by `enlarge`. Refused (False): the last good region stays."""
        box = points_box(points)
        ok = (box is not None and min(box[2] - box[0], box[3] - box[1]) >= self.min_size
              and inside_fraction(box, self.image_hw) >= 0.5)
        if ok:
            c = _centre_size(box)
            c[2:] *= self.enlarge
            self.history = (self.history + [(t, c)])[-2:]
        else:  # stay: the last good region, without the velocity that led off
            self.history = self.history[-1:]
        self.accepted.append(bool(ok))
        return bool(ok)


def _corners(c):
    cx, cy, w, h = c
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _centre_size(box):
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def batches(frames, size):
    """The items of an iterable in lists of `size` (the last may be shorter)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def track(frames, predict, first_box, enlarge, batch_size, keypoints=None, keypoints_name="", usable=bool):
    """Run predict over the frames (an iterable of (3, H, W); .name, .path, .count as lab/frames.py's) in batches of
    batch_size, each frame's crop from its own keypoints (keypoints: a list over frames of people, `usable(people)`
    saying whether they give a crop) or else from a `RegionTracker` started at first_box with `enlarge`.
    predict(images (B, 3, H, W), boxes [region or None], people [people or None]) -> a result per frame with
    "points" (N, 2) its predicted 2D joints (pixels), which the tracker follows, and "region" the crop region
    used. Returns (results, regions (T, 4), accepted (T,) bool: the tracker took the frame's joints). A keypoint
    file of another frame count than the video raises InputError naming both."""
    results, regions, accepted, tracker, t = [], [], [], None, 0
    total = len(keypoints) if keypoints is not None else frames.count
    show = sys.stderr.isatty()
    for batch in batches(frames, batch_size):
        images = torch.stack(batch)
        tracker = tracker or RegionTracker(tuple(images.shape[-2:]), first_box, enlarge)
        if keypoints is not None and t + len(batch) > len(keypoints):
            raise InputError(f"{keypoints_name}: keypoints of {len(keypoints)} frames; {frames.path} has more")
        people = [keypoints[t + k] if keypoints is not None and usable(keypoints[t + k]) else None
                  for k in range(len(batch))]
        boxes = [None if p is not None else tracker.region(t + k) for k, p in enumerate(people)]
        for k, result in enumerate(predict(images, boxes, people)):
            accepted.append(tracker.update(t + k, np.asarray(result["points"], dtype=np.float64)))
            regions.append(np.asarray(result["region"], dtype=np.float64))
            results.append(result)
        t += len(batch)
        if show:
            print(f"\r{frames.name}: frame {t}/{total or '?'}", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    if keypoints is not None and t != len(keypoints):
        raise InputError(f"{keypoints_name}: keypoints of {len(keypoints)} frames; {frames.path} has {t}")
    return results, torch.tensor(np.stack(regions)), torch.tensor(accepted)
