"""Frames in, a video out: what `demo.py --video` / `--images` reads and the overlay video it writes.

A video is any container FFmpeg reads, through PyAV (its wheels carry FFmpeg): frames are decoded to RGB and
turned upright by the stream's display matrix (a phone's portrait clip is stored sideways with a rotation to
apply), so the model sees what a player shows. A folder of images is read in natural order (frame_2 before
frame_10, as a person numbers frames), every image by `data.read_image`. Either gives (3, H, W) float32 RGB
in [0, 1], one frame at a time (a long video never sits in memory), and can be read again (the overlay is drawn in
a second pass). Bad input raises `data.InputError` naming the file and, where it applies, the frame.
The overlay video is H.264 in MP4, written whole or not at all (`lab.files.atomic_write`); an odd width or height,
which the 4:2:0 chroma of H.264 cannot hold, is padded by one edge pixel.

The meshes are drawn over the frames by lab/render.py's shading (`draw_mesh`).

Map: `natural_key`, `image_files`, `upright`; `VideoFrames`, `ImageFrames`, `open_frames`; `draw_mesh`,
`write_video`.
"""

import re
from pathlib import Path

import numpy as np
import torch

from data import InputError, read_image
from lab.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def natural_key(name):
    """A sort key that orders the digit runs of a name by their value: frame_2.png < frame_10.png (case-insensitive
    otherwise)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", str(name))]


def image_files(folder):
    """The image files of a folder (by suffix, IMAGE_SUFFIXES) in natural order; InputError naming the folder if it
    is not one or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"{folder}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    return files


def upright(array, rotation):
    """A decoded frame (H, W, C) and its stream's display rotation (degrees counter-clockwise, PyAV's
    `VideoFrame.rotation`, FFmpeg's av_display_rotation_get) -> the frame as a player shows it."""
    return np.ascontiguousarray(np.rot90(array, k=int(round(rotation / 90)) % 4))


def _to_tensor(array):
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


class VideoFrames:
    """The frames of a video file, upright. .path, .name (the file's stem), .fps (the stream's average rate),
    .count (the container's frame count; 0 when it does not say); iterating yields (3, H, W) float32 tensors."""

    def __init__(self, path):
        import av

        self.path, self.name = Path(path), Path(path).stem
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or 30
                self.fps, self.count = float(rate), int(stream.frames or 0)
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: not a readable video ({type(e).__name__})") from None

    def __iter__(self):
        import av

        index = 0
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    yield _to_tensor(upright(frame.to_ndarray(format="rgb24"), frame.rotation or 0))
                    index += 1
        except av.FFmpegError as e:
            raise InputError(f"{self.path}: frame {index}: not decodable ({type(e).__name__})") from None
        if index == 0:
            raise InputError(f"{self.path}: no frames in the video")


class ImageFrames:
    """A folder of images as frames, in natural order, at `fps` (images carry no time). Every image must have the
    first one's size; .path, .name (the folder's name), .fps, .count, .files."""

    def __init__(self, folder, fps=30.0):
        self.files = image_files(folder)
        self.path, self.name, self.fps, self.count = Path(folder), Path(folder).name, float(fps), len(self.files)

    def __iter__(self):
        size = None
        for path in self.files:
            image = read_image(path)
            if size is not None and image.shape != size:
                raise InputError(f"{path}: {image.shape[2]} x {image.shape[1]} pixels; the frames before it are "
                                 f"{size[2]} x {size[1]}")
            size = image.shape
            yield image


def open_frames(video=None, images=None, fps=30.0):
    """`VideoFrames(video)` or `ImageFrames(images, fps)`, whichever is given."""
    return VideoFrames(video) if video is not None else ImageFrames(images, fps)


def draw_mesh(frame, verts, faces, K, alpha=0.7, color=(0.62, 0.72, 0.85)):
    """frame (3, H, W) with a mesh verts (V, 3) (camera frame), faces (F, 3) drawn over it through K (3, 3) pixels:
    lab/render.py's Lambert shading lit from the camera, blended at alpha over the covered pixels."""
    from lab.render import render_batch

    H, W = frame.shape[-2:]
    drawn, pix, _ = render_batch(verts[None].float(), torch.as_tensor(faces), torch.as_tensor(K)[None].float(),
                                 (H, W), torch.tensor(color), torch.tensor([[0.0, 0.0, -1.0]]), 0.35, None, False)
    out = frame.clone().reshape(3, -1)
    out[:, pix] = (1 - alpha) * out[:, pix] + alpha * drawn[0].reshape(3, -1)[:, pix]
    return out.reshape(3, H, W)


def write_video(path, frames, fps, crf=20):
    """Write frames, an iterable of (3, H, W) float images in [0, 1] or uint8 (H, W, 3) arrays, as an H.264 MP4 at
    fps, whole or not at all. An odd side is padded by repeating its last pixel row or column. Returns path."""
    import av
    from fractions import Fraction

    def write(f):
        with av.open(f, "w", format="mp4") as container:
            stream = None
            for frame in frames:
                if isinstance(frame, torch.Tensor):
                    frame = (frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                h, w = frame.shape[:2]
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                    stream.options = {"crf": str(crf)}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError(f"write_video {path}: no frames")
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, write)
