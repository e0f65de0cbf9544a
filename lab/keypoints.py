"""2D keypoint files, for one image and for a video: what pose detectors write, read into people (COCO-17 body, and
where the file has them feet, face and both hands), and the box a person's keypoints give.

One image: ViTPose / mmpose results, COCO(-WholeBody) annotations or OpenPose's JSON (`read_keypoints`).
A video (`read_video_keypoints`): a folder of OpenPose's per-frame files (its --write_json writes one
NAME_000000000000_keypoints.json per frame), or one mmpose / ViTPose file of the whole video (mmpose's demo
writes a list of {"frame_id", "instances"}, its inferencer {"predictions": [one list of people per frame]}).
A frame where the detector found no one is an empty list (the tracker then places that frame's crop); a frame
missing from the file, or another frame count than the video's, raises `data.InputError` naming the file and
the frame.

Map: the keypoint orders; `read_keypoints` and its readers of one person; `keypoint_box`, `pick_person`;
`read_video_keypoints`.
"""

import json
from pathlib import Path

import numpy as np

from data import InputError

# COCO's 17 body keypoints in the order of OpenPose's BODY_25 and COCO-18 models' outputs
COCO17_FROM_OPENPOSE = {25: (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11),
                        18: (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)}
COCO17_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                "right_knee", "left_ankle", "right_ankle")
# COCO-WholeBody's 133: body 17, feet 6, face 68, left hand 21, right hand 21. A hand's 21 follow
# OpenPose's hand order, which is FreiHAND's (wrist, then thumb, index, middle, ring, pinky, base to tip).
WHOLEBODY_PARTS = {"body": slice(0, 17), "feet": slice(17, 23), "face": slice(23, 91),
                   "left_hand": slice(91, 112), "right_hand": slice(112, 133)}


def read_keypoints(path):
    """2D keypoints of people from a JSON file -> a list of people, each a dict of (N, 3) float64
    arrays [x, y, confidence] in pixels: "body" (17, COCO order), and where the file has them
    "feet" (6), "face" (68), "left_hand" and "right_hand" (21 each, FreiHAND's order); and "score".

    Reads what pose detectors write: ViTPose / mmpose results (a list of {"keypoints": 17 or 133
    [x, y, score] triples, flat or nested, optional "keypoint_scores", "score"}, also under
    "instance_info" or "predictions"), COCO and COCO-WholeBody annotations ({"annotations": [...]},
    with "lefthand_kpts", "righthand_kpts", "foot_kpts", "face_kpts"; visibility > 0 counts as
    confidence 1), and OpenPose ({"people": [{"pose_keypoints_2d": BODY_25 or COCO-18,
    "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"}]}). Raises InputError
    naming the file and the key that does not fit."""
    path = Path(path)
    doc = _read_json(path)
    if isinstance(doc, dict) and "predictions" in doc:  # mmpose's inferencer: one list per frame
        doc = doc["predictions"][0] if doc["predictions"] else []
    people = _people(doc, path)
    if not people:
        raise InputError(f"{path}: no people in the file")
    return people


def _read_json(path):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({e})") from None


def _people(doc, path):
    """The people of one image's parsed JSON (an OpenPose dict, a list or a dict of them); [] for none."""
    if isinstance(doc, dict) and "people" in doc:
        return [_openpose_person(p, path) for p in doc["people"]]
    items = doc.get("instance_info", doc.get("annotations", doc.get("instances"))) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a list of people, or a dict with 'annotations', 'instance_info', "
                         f"'predictions' or 'people' (COCO, mmpose / ViTPose or OpenPose JSON)")
    coco = isinstance(doc, dict) and "annotations" in doc  # ground truth: visibility 0 / 1 / 2, not scores
    return [_coco_person(p, path, k, coco) for k, p in enumerate(items)]


def _triples(values, count, path, key):
    """A flat or nested list of [x, y, c] (or [x, y] with scores elsewhere) -> (count, 3) float64."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 3 * count:
        return a.reshape(count, 3)
    raise InputError(f"{path}: '{key}' has {a.size} numbers; expected {count} keypoints x [x, y, confidence]")


def _coco_person(p, path, k, visibility):
    if not isinstance(p, dict) or "keypoints" not in p:
        raise InputError(f"{path}: person {k} has no 'keypoints'")
    kp = np.asarray(p["keypoints"], dtype=np.float64)
    if "keypoint_scores" in p:  # mmpose 1.x: keypoints (N, 2) and scores (N,)
        kp = np.concatenate([kp.reshape(-1, 2), np.asarray(p["keypoint_scores"], dtype=np.float64).reshape(-1, 1)], 1)
    n = kp.size // 3
    if n not in (17, 133):
        raise InputError(f"{path}: person {k}: 'keypoints' has {kp.size} numbers; expected 17 (COCO) or 133 "
                         "(COCO-WholeBody) keypoints x [x, y, confidence]")
    kp = _triples(kp, n, path, "keypoints")
    person = {part: kp[s] for part, s in WHOLEBODY_PARTS.items() if s.stop <= n}
    extra = {"foot_kpts": ("feet", 6), "face_kpts": ("face", 68), "lefthand_kpts": ("left_hand", 21),
             "righthand_kpts": ("right_hand", 21)}
    for key, (part, count) in extra.items():
        if key in p:
            person[part] = _triples(p[key], count, path, key)
    if visibility:
        for part in person:
            person[part][:, 2] = person[part][:, 2] > 0
    person["score"] = float(np.asarray(p.get("score", 1.0)).mean())
    return person


def _openpose_person(p, path):
    body = np.asarray(p.get("pose_keypoints_2d", []), dtype=np.float64)
    if body.size // 3 not in COCO17_FROM_OPENPOSE:
        raise InputError(f"{path}: 'pose_keypoints_2d' has {body.size} numbers; expected BODY_25 (75) or COCO-18 (54)")
    body = _triples(body, body.size // 3, path, "pose_keypoints_2d")
    person = {"body": body[list(COCO17_FROM_OPENPOSE[len(body)])]}
    for key, part, count in (("hand_left_keypoints_2d", "left_hand", 21), ("hand_right_keypoints_2d", "right_hand", 21),
                             ("face_keypoints_2d", "face", 70)):
        if len(p.get(key, [])):
            person[part] = _triples(p[key], count, path, key)[:68]
    person["score"] = float(body[:, 2].mean())
    return person


def keypoint_box(points, min_confidence=0.3):
    """The box (x0, y0, x1, y1) around the keypoints (N, 3) whose confidence is at least
    min_confidence, or None if fewer than two are."""
    points = np.asarray(points, dtype=np.float64)
    good = points[points[:, 2] >= min_confidence, :2]
    if len(good) < 2:
        return None
    return (*good.min(0), *good.max(0))


def pick_person(people, box=None):
    """The person to reconstruct: the one whose body keypoints' box overlaps `box` most (IoU), or
    without a box the one with the highest score."""
    if box is None:
        return max(people, key=lambda p: p["score"])

    def iou(p):
        b = keypoint_box(np.concatenate([v for k, v in p.items() if k != "score"]))
        if b is None:
            return 0.0
        w = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
        h = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
        union = (b[2] - b[0]) * (b[3] - b[1]) + (box[2] - box[0]) * (box[3] - box[1]) - w * h
        return w * h / max(union, 1e-9)
    return max(people, key=iou)


def read_video_keypoints(path):
    """Per-frame people of a video from a detector's output -> a list over frames of lists of people (as
    `read_keypoints` gives; [] where no one was found). path: a folder of OpenPose per-frame JSON files (in
    natural order), or one mmpose / ViTPose file: a list of {"frame_id", "instances"} (frame ids consecutive from
    0 or 1; a gap raises InputError naming the missing frame) or {"predictions": [[people of frame 0], ...]}."""
    from lab.frames import natural_key

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"), key=lambda p: natural_key(p.name))
        if not files:
            raise InputError(f"{path}: no .json files (expected OpenPose's per-frame keypoints)")
        return [_people(_read_json(p), p) for p in files]
    doc = _read_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        return [_people(frame, path) for frame in doc["predictions"]]
    frames = doc.get("instance_info") if isinstance(doc, dict) else doc
    if not isinstance(frames, list) or not all(isinstance(f, dict) and "frame_id" in f for f in frames):
        raise InputError(f"{path}: expected a video's keypoints: a list of {{'frame_id', 'instances'}} (mmpose), "
                         "{'predictions': [one list per frame]}, or a folder of OpenPose per-frame files")
    ids = [int(f["frame_id"]) for f in frames]
    first = min(ids, default=0)
    for expected, got in enumerate(sorted(ids), start=first):
        if got != expected:
            raise InputError(f"{path}: frame_id {expected} is missing (the file jumps to {got})")
    by_id = {int(f["frame_id"]): f for f in frames}
    return [_people(by_id[i].get("instances", []), path) for i in sorted(by_id)]
