"""How a synthetic sample is made: pose priors, looks, backgrounds and the renderer.

data.py's Synthetic* datasets draw a pose, a camera and a look with these functions and render the
posed mesh; the datasets, their keys and conventions are data.py's (see its docstring). Every random
number comes from a caller's torch.Generator (`Draws` for a batch), never from global RNG state.

Map of the file:
1. Random numbers (`Draws`) and small helpers
2. Pose priors, hands: `HandPoseConfig`, `HandViewConfig`, `hand_poses`, `hand_orientations`
3. Pose priors, bodies: `BodyPoseConfig`, `BodyViewConfig`, `sample_plausible_body`,
   `sample_action_body`, `place_in_crop`
4. Looks: skin, clothes, forearm, light
5. Backgrounds
6. The renderer (`rasterize`, `render_mesh`) beside `reference_rasterize`
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import bodymodels
from bodymodels import axis_angle_to_matrix, forward_kinematics, matrix_to_axis_angle

# ---------------------------------------------------------------------------------------------
# 1. Random numbers and small helpers


def _uniform(rng, low, high, shape=()):
    """Uniform float64 samples in [low, high) of the given shape (a 0-d tensor by default)."""
    return low + (high - low) * torch.rand(shape, generator=rng, dtype=torch.float64)


def _normal(rng, std, shape=()):
    return std * torch.randn(shape, generator=rng, dtype=torch.float64)


class Draws:
    """Random numbers of B samples drawn together, each sample's from its own generator.

    Row i holds the numbers of generators[i], taken from it `block` at a time (one torch.rand
    and one torch.randn call for many requests), and every request takes the next columns of
    all rows. So the numbers a sample gets depend only on its generator and on the sequence of
    requests, never on the other samples of the batch, as long as that sequence does not depend
    on the numbers drawn: a random choice draws the numbers of both branches. uniform, normal
    and chance return float64 or bool numpy arrays (B, *shape).
    """

    def __init__(self, generators, block=64):
        self.generators, self.block = list(generators), block
        empty = np.empty((len(self.generators), 0))
        self.tables = {torch.rand: empty, torch.randn: empty}  # (B, numbers drawn, not yet handed out)
        self.used = {torch.rand: 0, torch.randn: 0}

    def _take(self, fn, count):
        table, used = self.tables[fn], self.used[fn]
        if used + count > table.shape[1]:  # refill every row from its own generator
            fresh = [fn(max(self.block, count), generator=g, dtype=torch.float64).numpy() for g in self.generators]
            table, used = np.concatenate([table[:, used:], np.stack(fresh)], 1), 0
        self.tables[fn], self.used[fn] = table, used + count
        return table[:, used:used + count]

    def uniform(self, low, high, shape=()):
        return low + (high - low) * self._take(torch.rand, math.prod(shape)).reshape(-1, *shape)

    def normal(self, std, shape=()):
        return std * self._take(torch.randn, math.prod(shape)).reshape(-1, *shape)

    def chance(self, p, shape=()):
        """True with probability p."""
        return self._take(torch.rand, math.prod(shape)).reshape(-1, *shape) < p


def _image_hw(image_size):
    """int or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _rotations(aa):
    """float64 numpy axis-angle (..., 3) -> rotation matrices (..., 3, 3) (`axis_angle_to_matrix`)."""
    return axis_angle_to_matrix(torch.from_numpy(np.ascontiguousarray(aa))).numpy()



# ---------------------------------------------------------------------------------------------
# 2. Pose priors: hands
#
# The stand-in MANO (bodymodels) rests as a flat right hand: fingers along +x, back of the hand
# towards +y (palm towards -y), thumb towards -z; every joint's local frame is the world's. A
# finger bends towards the palm by turning about d x (-y), d its rest direction (so about -z for
# the four fingers), and spreads by turning about the palm normal y.


@dataclass
class HandPoseConfig:
    """The finger-pose distribution of SyntheticHands (angles in degrees)."""
    mcp_flex: tuple = (-15.0, 90.0)  # knuckle: slight hyperextension to a right angle
    pip_flex: tuple = (-5.0, 105.0)  # middle joint
    dip_flex: tuple = (-5.0, 80.0)  # last joint; follows the middle joint (0.7x), as tendons couple them
    spread: tuple = (20.0, 4.0, -22.0, -10.0)  # index, middle, pinky, ring abduction at full spread (+: thumbwards)
    thumb_palmar: tuple = (-10.0, 70.0)  # thumb base swinging under the palm (opposition)
    thumb_across: tuple = (-15.0, 35.0)  # thumb base sweeping across the palm towards the pinky
    thumb_flex: tuple = (-10.0, 70.0)  # thumb's last joint (its middle joint bends 0.6x as much)
    jitter: float = 7.0  # per-joint Gaussian noise on top of the coupled angles
    independent_prob: float = 0.3  # share of "gestures": each finger straight or curled on its own


@dataclass
class HandViewConfig:
    """Where the hand is and how the crop sees it."""
    distance: tuple = (0.35, 0.9)  # metres from the camera: close-up to arm's length
    off_axis_deg: float = 25.0  # direction of the hand from the full camera's optical axis (perspective varies)
    fill: tuple = (0.7, 0.9)  # larger side of the hand's projected box / crop side, as a detector's box
    centre_jitter: float = 0.03  # detector error of the box centre, fraction of the crop side (Gaussian std)
    roll_std_deg: float = 60.0  # fingers point up in the image on average, with this spread
    tilt_std_deg: float = 35.0  # palm or back towards the camera, tilted by this much about an in-plane axis


FINGERS = {"index": (1, 2, 3), "middle": (4, 5, 6), "pinky": (7, 8, 9), "ring": (10, 11, 12), "thumb": (13, 14, 15)}
PALM = (0.0, -1.0, 0.0)  # from the back of the rest hand towards the palm; its opposite is the spread axis


def _rotation(axis, angle_deg):
    """Rotations (..., 3, 3) float64 by angle_deg (...) about unit axes (..., 3)."""
    axis = torch.as_tensor(axis, dtype=torch.float64)
    angle = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64))
    return axis_angle_to_matrix(axis * angle[..., None])


def hand_axes(rest_joints):
    """Flexion axes (5, 3) of the index, middle, pinky, ring fingers and thumb (MANO's order), and
    the thumb's palmar axis (3,), from MANO's rest joints (16, 3).

    A finger with rest direction d bends towards the palm about d x palm. The thumb curls across
    the palm, so its flexion aims between the palm and the fingers (+z); its base swings under
    the palm (opposition) about d x palm.
    """
    palm = torch.tensor(PALM, dtype=torch.float64)
    chains = torch.tensor(list(FINGERS.values()))  # (5, 3)
    d = F.normalize(rest_joints[chains[:, 2]] - rest_joints[chains[:, 0]], dim=-1)  # (5, 3)
    target = palm.expand(5, 3).clone()
    target[4] = F.normalize(palm + torch.tensor([0.0, 0.0, 0.8], dtype=torch.float64), dim=0)
    flex = F.normalize(torch.linalg.cross(d, target, dim=-1), dim=-1)
    return flex, F.normalize(torch.linalg.cross(d[4], palm, dim=0), dim=0)


def hand_poses(draws, axes, cfg=HandPoseConfig()):
    """Natural random finger poses: (B, 15, 3) float64 numpy axis-angle for MANO joints 1-15;
    axes from `hand_axes`.

    1. A grasp level g ~ U(0, 1) curls all fingers together (curl c = g + N(0, 0.12), pinky and
       ring a little more); with probability cfg.independent_prob each finger instead is straight
       or curled on its own (pointing, counting, "peace" gestures).
    2. Each finger: knuckle (MCP) and middle (PIP) flexion = its range at c, + N(0, jitter); the
       last joint follows (DIP = 0.7 PIP + N(0, 3)); the knuckle spreads about the palm normal by
       cfg.spread x s, s ~ U(-0.2, 1), less as the fingers curl, + N(0, 3).
    3. Thumb: its base swings under the palm and across it with the grasp (opposition), its two
       distal joints flex with its own curl.
    Every angle is clamped to its range, so no joint bends backwards.
    """
    flex, palmar = (np.asarray(axis, dtype=np.float64) for axis in axes)  # (5, 3), (3,)
    normal = -np.array(PALM)  # spread axis: + turns a finger towards the thumb
    noise = draws.normal(1.0, (14,))  # (B, 14)
    # 1. curls (index, middle, pinky, ring, thumb): gesture or grasp, both drawn
    g = draws.uniform(0, 1)  # (B,)
    gesture = draws.chance(cfg.independent_prob)[:, None]
    straight = draws.chance(0.5, (5,))
    curl_gesture = straight * draws.uniform(0.6, 1.0, (5,)) + draws.uniform(0.0, 0.15, (5,))
    curl_grasp = g[:, None] + draws.normal(0.12, (5,)) + np.array([0.0, 0.02, 0.08, 0.05, 0.0])
    curl = np.where(gesture, curl_gesture, curl_grasp).clip(-0.1, 1.05)  # (B, 5)

    def angle(c, limits, n):  # a range at curl c, with noise, clamped
        low, high = limits
        return np.clip(low + (high - low) * c + cfg.jitter * n, low, high)

    # 2. the four fingers, (B, 4) angles in degrees
    c = curl[:, :4]
    mcp, pip = angle(c, cfg.mcp_flex, noise[:, 0:4]), angle(c, cfg.pip_flex, noise[:, 4:8])
    dip = np.clip(0.7 * pip + 3.0 * noise[:, 8:12], *cfg.dip_flex)
    spread = draws.uniform(-0.2, 1.0) * np.clip(1 - c.mean(1), 0, 1)  # (B,)
    abduction = np.array(cfg.spread) * spread[:, None] + 3.0 * draws.normal(1.0, (4,))
    # 3. the thumb
    oppose = np.clip(0.6 * g + 0.4 * draws.uniform(0, 1), 0, 1)  # (B,)
    across, under = angle(oppose, cfg.thumb_across, noise[:, 12]), angle(oppose, cfg.thumb_palmar, noise[:, 13])
    tip = np.deg2rad(angle(curl[:, 4], cfg.thumb_flex, draws.normal(1.0)))  # (B,)
    # 4. the composite rotations, converted in one batch: knuckle = spread @ flexion, thumb base = across @ under
    axes = np.concatenate([np.tile(normal, (4, 1)), flex[:4], -normal[None], palmar[None]])  # (10, 3)
    degrees = np.concatenate([abduction, mcp, across[:, None], under[:, None]], 1)  # (B, 10)
    R = _rotations(axes * np.deg2rad(degrees)[..., None])  # (B, 10, 3, 3)
    composite = np.concatenate([R[:, :4] @ R[:, 4:8], R[:, 8:9] @ R[:, 9:10]], 1)  # (B, 5, 3, 3)
    base = matrix_to_axis_angle(torch.from_numpy(composite)).numpy()  # (B, 5, 3)
    pip_aa, dip_aa = (flex[:4] * np.deg2rad(angle)[..., None] for angle in (pip, dip))  # pure flexions (B, 4, 3)
    fingers = np.stack([base[:, :4], pip_aa, dip_aa], 2)  # (B, 4, 3 joints, 3)
    thumb = np.stack([base[:, 4], flex[4] * 0.6 * tip[:, None], flex[4] * tip[:, None]], 1)[:, None]  # (B, 1, 3, 3)
    return np.concatenate([fingers, thumb], 1).reshape(-1, 15, 3)


def hand_orientations(draws, cfg=HandViewConfig()):
    """Global orientations (B, 3, 3) float64 numpy of rest-pose right hands in camera coordinates.

    Palm (or, with probability 1/2, back) towards the camera, tilted about a random in-plane axis
    by N(0, tilt_std), then rolled about the optical axis so that the fingers point up in the
    image on average, N(-90, roll_std) degrees (+x, the rest fingers' direction, turned to -y).
    """
    facing = np.where(draws.chance(0.5), 90.0, -90.0)  # +90 about x: palm (-y) -> -z, towards us
    tilt_axis = draws.uniform(0, 2 * math.pi)
    B = len(facing)
    axes = np.zeros((B, 3, 3))  # roll about z, tilt about (cos, sin, 0), face about x
    axes[:, 0, 2], axes[:, 1, 0], axes[:, 1, 1], axes[:, 2, 0] = 1, np.cos(tilt_axis), np.sin(tilt_axis), 1
    degrees = np.stack([-90.0 + draws.normal(cfg.roll_std_deg), draws.normal(cfg.tilt_std_deg), facing], 1)
    R = _rotations(axes * np.deg2rad(degrees)[..., None])  # (B, 3, 3, 3)
    roll, tilt, face = R[:, 0], R[:, 1], R[:, 2]
    return roll @ tilt @ face


def crop_intrinsics(points, image_size, fill, centre_offset):
    """Intrinsics of a crop (image_size int or (H, W)) around points (..., N, 3), as a detector's.

    Cropping a pinhole camera's image around the points' box and resizing it only sets the focal
    length f (so that the box's larger relative side is `fill` of the crop's) and moves the
    principal point (so that the box centre lands at the crop centre + centre_offset (..., 2) pixels).
    fill: a number or (...,). Returns K (..., 3, 3) float64.
    """
    height, width = _image_hw(image_size)
    size = torch.tensor([width, height], dtype=torch.float64)
    q = points[..., :2] / points[..., 2:]  # (..., N, 2) image coordinates at focal length 1
    low, high = q.amin(-2), q.amax(-2)
    f = torch.as_tensor(fill, dtype=torch.float64) / ((high - low) / size).amax(-1)  # (...,)
    K = torch.eye(3, dtype=torch.float64).repeat(*points.shape[:-2], 1, 1)
    K[..., 0, 0] = K[..., 1, 1] = f
    K[..., :2, 2] = size / 2 + torch.as_tensor(centre_offset) - f[..., None] * (low + high) / 2
    return K


# ---------------------------------------------------------------------------------------------
# 3. Pose priors: bodies
#
# The stand-in SMPL and SMPL-X (bodymodels) rest in a T-pose like the real ones: y up, facing +z,
# the body's left side towards +x, every joint's local frame the world's. Limbs are posed by
# direction: a limb's rotation is the shortest turn from its rest direction to a sampled
# direction, times a twist about it. Turned that way from the T-pose, elbows and knees keep
# bending the natural way (forwards and backwards) about their rest hinge axes.


@dataclass
class BodyPoseConfig:
    """The body-pose distribution (angles in degrees); see `sample_body_pose`."""
    arm_azimuth: tuple = (-30.0, 110.0)  # arm direction around the vertical: 0 sideways, 90 straight forwards
    elbow: tuple = (0.0, 135.0)  # elbow flexion (scaled by U(0.3, 1): mostly half bent)
    twist_std: float = 25.0  # twist of an arm about its own axis (legs: half)
    abduction: tuple = (-5.0, 30.0)  # thigh sideways, outwards
    spine_flex: tuple = (-8.0, 20.0)  # forwards bend of each of the three spine joints
    spine_std: float = 7.0  # their twist and sideways bend
    head_std: float = 15.0  # neck and head, each axis (split between the two)
    wrist_std: float = 20.0  # wrists, each axis
    yaw_frontal_prob: float = 0.5  # share of people turned towards the camera (N(0, 35) degrees); the rest any way
    tilt_std: float = 8.0  # lean of the whole body out of upright
    max_tries: int = 20  # re-draws when the cheap self-intersection test fails
    prior: str = "limbs"  # "limbs": `sample_plausible_body` (the fields above); "actions": `sample_action_body`

    def __post_init__(self):
        if self.prior not in ("limbs", "actions"):
            raise ValueError(f"BodyPoseConfig.prior={self.prior!r}: expected 'limbs' or 'actions'")


@dataclass
class BodyViewConfig:
    """Where the person is and how the crop sees it."""
    fill: tuple = (0.75, 0.9)  # larger side of the person's box / the crop's side (HMR2.0 crops the box x 1.2)
    centre_jitter: float = 0.03  # detector error of the box centre, fraction of the crop (Gaussian std)
    distance: tuple = (2.5, 8.0)  # metres, only with focal_length=None (a real camera's perspective)
    off_axis_deg: float = 20.0  # likewise


LEG_MODES = {  # name: probability, (thigh flexion range, knee range) of the two legs, in degrees
    "stand": (0.30, ((-5, 15), (0, 15)), ((-5, 15), (0, 15))),
    "walk": (0.22, ((10, 45), (0, 40)), ((-25, 0), (10, 60))),
    "run": (0.08, ((30, 75), (40, 110)), ((-35, -5), (40, 120))),
    "sit": (0.14, ((70, 100), (70, 110)), ((70, 100), (70, 110))),
    "squat": (0.08, ((95, 125), (110, 145)), ((95, 125), (110, 145))),
    "lunge": (0.10, ((50, 90), (50, 100)), ((-30, -5), (0, 60))),
    "kick": (0.08, ((50, 100), (0, 40)), ((-5, 15), (0, 15))),
}


ARM_MODES = {"down": (0.4, (5, 40)), "middle": (0.4, (35, 110)), "up": (0.2, (100, 170))}  # degrees from hanging down


X, Y, Z = torch.eye(3, dtype=torch.float64)  # the axes; rest limbs: legs -Y, left arm +X, right arm -X


def _choose(rng, modes):
    """A value of modes {name: (probability, *value)} drawn by probability."""
    probs = torch.tensor([m[0] for m in modes.values()], dtype=torch.float64)
    return list(modes.values())[int(torch.multinomial(probs, 1, generator=rng))][1:]


def _turn_to(rest, direction):
    """Axis-angle (..., 3) of the shortest turn taking unit vectors rest to direction (never opposite)."""
    axis = torch.linalg.cross(rest, direction, dim=-1)
    sin, cos = axis.norm(dim=-1, keepdim=True), (rest * direction).sum(-1, keepdim=True)
    return axis / sin.clamp_min(1e-12) * torch.atan2(sin, cos)


def sample_body_pose(rng, cfg=BodyPoseConfig()):
    """A plausible body pose: local rotations (22, 3, 3) float64 of SMPL / SMPL-X joints 0-21, joint 0
    the identity (the global orientation comes from `sample_body_orientation`).

    Limbs are posed by direction: a limb's rotation is the shortest turn from its T-pose direction
    to a drawn direction, then a twist about it. Turned that way, knees keep bending backwards
    about x and elbows forwards about -+y, their rest hinge axes.
    - Legs: one of LEG_MODES (standing, walking, running, sitting, squatting, lunging, kicking;
      the legs' roles swapped at random): thigh flexion and knee bend uniform in the mode's
      ranges (+ N(0, 4)), abduction in cfg.abduction, twist N(0, twist_std / 2), ankles jittered.
    - Arms, each on its own: hanging, half-raised or raised (ARM_MODES), pointing from slightly
      behind to straight forwards (cfg.arm_azimuth), twisted N(0, twist_std), the elbow bent by
      U(cfg.elbow) x U(0.3, 1), collar N(0, 5) and wrist N(0, wrist_std) per axis.
    - Spine: three joints each bent forwards in cfg.spine_flex and twisted / leaned N(0, spine_std);
      neck and head N(0, head_std / sqrt 2) per axis.
    """
    def n(std, *shape):  # Gaussian angles in degrees
        return _normal(rng, std, shape)

    sides = torch.tensor([1.0, -1.0], dtype=torch.float64)  # left, right
    # 1. legs: thigh direction from flexion f (forwards) and abduction a (outwards), from -Y
    legs = _choose(rng, LEG_MODES)
    legs = legs if torch.rand((), generator=rng) < 0.5 else legs[::-1]
    flex = torch.deg2rad(torch.stack([_uniform(rng, *leg[0]) for leg in legs]) + n(4.0, 2))
    knee = torch.stack([_uniform(rng, *leg[1]) for leg in legs]) + n(4.0, 2)
    abduct = torch.deg2rad(_uniform(rng, *cfg.abduction, (2,))) * sides
    thigh = torch.stack([flex.cos() * abduct.sin(), -flex.cos() * abduct.cos(), flex.sin()], -1)  # (2, 3)
    # 2. arms: direction from the angle away from hanging down and the azimuth (0 sideways, 90 forwards)
    down = torch.deg2rad(torch.stack([_uniform(rng, *_choose(rng, ARM_MODES)[0]) for _ in range(2)]))
    azimuth = torch.deg2rad(_uniform(rng, *cfg.arm_azimuth, (2,)))
    arm = torch.stack([sides * down.sin() * azimuth.cos(), -down.cos(), down.sin() * azimuth.sin()], -1)  # (2, 3)
    elbow = _uniform(rng, *cfg.elbow, (2,)) * _uniform(rng, 0.3, 1.0, (2,))
    # 3. every elementary turn as an axis-angle row, converted in one batch
    rest_leg, rest_arm = -Y.expand(2, 3), X * sides[:, None]
    turns = torch.cat([
        _turn_to(rest_leg, thigh), rest_leg * torch.deg2rad(n(cfg.twist_std / 2, 2))[:, None],  # 0-3 hips
        X * torch.deg2rad(knee.clamp(0, 150))[:, None],  # 4-5 knees
        X * torch.deg2rad(_uniform(rng, -20, 25, (2,)))[:, None], Z * torch.deg2rad(n(6.0, 2))[:, None],  # 6-9 ankles
        _turn_to(rest_arm, arm), rest_arm * torch.deg2rad(n(cfg.twist_std, 2))[:, None],  # 10-13 shoulders
        -Y * (sides * torch.deg2rad(elbow))[:, None],  # 14-15 elbows: left about -Y, right about +Y
        Z * (sides * torch.deg2rad(n(5.0, 2)))[:, None], Y * torch.deg2rad(n(5.0, 2))[:, None],  # 16-19 collars
        torch.deg2rad(n(cfg.wrist_std, 2, 3)),  # 20-21 wrists
        _euler_rows(torch.stack([_uniform(rng, *cfg.spine_flex, (3,)), n(cfg.spine_std, 3), n(cfg.spine_std, 3)], -1)),
        _euler_rows(n(cfg.head_std / math.sqrt(2), 2, 3)),  # 22-30 spine (3 x 3), 31-36 neck and head (2 x 3)
    ])
    T = axis_angle_to_matrix(turns)  # (37, 3, 3)
    R = torch.eye(3, dtype=torch.float64).repeat(22, 1, 1)
    R[[1, 2]], R[[4, 5]], R[[7, 8]] = T[0:2] @ T[2:4], T[4:6], T[6:8] @ T[8:10]
    R[[16, 17]], R[[18, 19]], R[[13, 14]], R[[20, 21]] = T[10:12] @ T[12:14], T[14:16], T[16:18] @ T[18:20], T[20:22]
    euler = T[22:37].view(5, 3, 3, 3)  # (joint, axis, 3, 3)
    R[[3, 6, 9, 12, 15]] = euler[:, 0] @ euler[:, 1] @ euler[:, 2]
    return R


def _euler_rows(degrees):
    """Angles (..., 3) in degrees about X, Y, Z -> their three axis-angle rows (... * 3, 3), whose
    rotations multiply in that order (Rx Ry Rz)."""
    return (torch.deg2rad(degrees)[..., None] * torch.eye(3, dtype=torch.float64)).reshape(-1, 3)


def sample_body_orientation(rng, cfg=BodyPoseConfig()):
    """Global orientation (3, 3) in camera coordinates (y down): upright (the T-pose's +y turned to
    the image's up, -y), facing the camera turned by N(0, 35) degrees with probability
    cfg.yaw_frontal_prob, else any way, and leaning by N(0, cfg.tilt_std) degrees."""
    frontal = torch.rand((), generator=rng) < cfg.yaw_frontal_prob
    yaw = _normal(rng, 35.0) if frontal else _uniform(rng, -180.0, 180.0)
    lean_axis = _uniform(rng, 0, 2 * math.pi)
    axes = torch.stack([X, torch.stack([lean_axis.cos(), torch.zeros(()), lean_axis.sin()]).double(), Y])
    upright, lean, turn = _rotation(axes, torch.stack([torch.tensor(180.0).double(), _normal(rng, cfg.tilt_std), yaw]))
    return upright @ lean @ turn  # upright: +y (up) -> -y, +z (front) -> -z (towards the camera)


def _segment_distance(p0, p1, q0, q1):
    """Smallest distance between segments [p0, p1] and [q0, q1], each (..., 3). -> (...)."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = (d1 * d1).sum(-1), (d2 * d2).sum(-1), (d2 * r).sum(-1)
    b, c = (d1 * d2).sum(-1), (d1 * r).sum(-1)
    denom = (a * e - b * b).clamp_min(1e-12)
    s = ((b * f - c * e) / denom).clamp(0, 1)
    t = ((b * s + f) / e.clamp_min(1e-12)).clamp(0, 1)
    s = ((b * t - c) / a.clamp_min(1e-12)).clamp(0, 1)
    return (p0 + d1 * s[..., None] - q0 - d2 * t[..., None]).norm(dim=-1)


# cheap self-intersection test on the posed joints: (segment a, segment b, minimum distance in metres)
_CLEARANCES = (((4, 7), (5, 8), 0.07), ((1, 4), (2, 5), 0.07), ((1, 4), (5, 8), 0.07), ((2, 5), (4, 7), 0.07),
               ((18, 20), (0, 12), 0.09), ((19, 21), (0, 12), 0.09), ((16, 18), (3, 12), 0.08),
               ((17, 19), (3, 12), 0.08), ((18, 20), (19, 21), 0.05), ((20, 20), (15, 15), 0.1),
               ((21, 21), (15, 15), 0.1), ((18, 20), (1, 4), 0.06), ((19, 21), (2, 5), 0.06))


def self_intersects(joints):
    """True when two body segments of joints (>= 22, 3) come closer than _CLEARANCES allows
    (legs through each other, forearms through the torso, hands in the head)."""
    index = torch.tensor([[a[0], a[1], b[0], b[1]] for a, b, _ in _CLEARANCES])
    p = joints[index]  # (C, 4, 3)
    distance = _segment_distance(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    return bool((distance < torch.tensor([c for _, _, c in _CLEARANCES], dtype=distance.dtype)).any())


def sample_plausible_body(rng, rest_joints, parents, cfg=BodyPoseConfig()):
    """`sample_body_pose` with the global orientation, re-drawn (up to cfg.max_tries) while
    `self_intersects`. Returns rotations (22, 3, 3) float64, joint 0 the global orientation."""
    for _ in range(cfg.max_tries):
        R = sample_body_pose(rng, cfg)
        if not self_intersects(forward_kinematics(R, rest_joints[:22], parents[:22])[0]):
            break
    R[0] = sample_body_orientation(rng, cfg)
    return R


# The design notes' tiny prior (shared/design/genhmr.md, Sec. 7): four "actions", each a fixed mean
# pose plus a rank-6 Gaussian, so that the joints move together (the correlated prior a pose tokenizer
# exists to capture) and a mean-pose guess is far from most people. Means are axis-angle (radians) per
# SMPL joint in the T-pose frame (y up, x the person's left, z their front): a shoulder about z raises
# or lowers its arm, about y swings it forwards; a hip about x (negative) lifts the thigh forwards, a
# knee about x (positive) bends it.
ACTION_MODES = {
    "neutral": {16: (0, 0, -1.25), 17: (0, 0, 1.25), 18: (0, -0.3, 0), 19: (0, 0.3, 0)},
    "arms_up": {16: (0, 0, 1.1), 17: (0, 0, -1.1), 18: (0, -0.4, 0), 19: (0, 0.4, 0), 12: (-0.2, 0, 0)},
    "squat": {1: (-1.4, 0, 0.15), 2: (-1.4, 0, -0.15), 4: (1.7, 0, 0), 5: (1.7, 0, 0), 7: (-0.3, 0, 0),
              8: (-0.3, 0, 0), 3: (0.35, 0, 0), 16: (0, -1.2, 0), 17: (0, 1.2, 0)},
    "stride": {1: (-0.6, 0, 0), 2: (0.4, 0, 0), 4: (0.3, 0, 0), 5: (0.7, 0, 0), 16: (0, 0.4, -1.2),
               17: (0, 0.4, 1.2), 18: (0, -0.5, 0), 19: (0, 0.5, 0)},
}
ACTION_RANK, ACTION_STD, ACTION_NOISE, ACTION_MAX = 6, (0.15, 0.5), 0.05, 2.0  # radians


@functools.lru_cache(maxsize=1)
def action_prior():
    """(means (4, 21, 3), bases (4, 6, 21, 3)) of the body joints 1-21, float64: fixed (seed 1234).
    Each basis row is Gaussian, scaled so that each joint's rotation vector has a std (the root of
    E ||theta_j - mean_j||^2) in ACTION_STD: s_j / sqrt(3) per component."""
    g = torch.Generator().manual_seed(1234)
    means = torch.zeros(len(ACTION_MODES), 21, 3, dtype=torch.float64)
    for m, joints in enumerate(ACTION_MODES.values()):
        for j, aa in joints.items():
            means[m, j - 1] = torch.tensor(aa, dtype=torch.float64)
    std = ACTION_STD[0] + (ACTION_STD[1] - ACTION_STD[0]) * torch.rand(
        len(ACTION_MODES), 1, 21, 1, generator=g, dtype=torch.float64)
    bases = (torch.randn(len(ACTION_MODES), ACTION_RANK, 21, 3, generator=g, dtype=torch.float64)
             * std / math.sqrt(3 * ACTION_RANK))
    return means, bases


def sample_action_body(rng):
    """A pose of the actions prior: rotations (22, 3, 3) float64, joint 0 the global orientation.

    Body: a mode drawn uniformly, theta = mean + basis^T z + n, z ~ N(0, I_6), n ~ N(0, 0.05^2) per
    component, each joint's angle clamped to 2 rad. Orientation: the camera flip (180 degrees about x)
    after pitch and roll N(0, 10) degrees after yaw U(-90, 90) degrees (the person faces the camera
    turned by up to a quarter turn)."""
    means, bases = action_prior()
    mode = int(torch.randint(len(means), (), generator=rng))
    z = torch.randn(ACTION_RANK, generator=rng, dtype=torch.float64)
    theta = means[mode] + torch.einsum("k,kjc->jc", z, bases[mode]) + _normal(rng, ACTION_NOISE, (21, 3))
    angle = theta.norm(dim=-1, keepdim=True)
    theta = theta * (ACTION_MAX / angle.clamp_min(ACTION_MAX))  # |theta_j| <= 2
    pitch_roll = _normal(rng, 10.0, (2,))
    flip, pitch, roll, yaw = _rotation(torch.stack([X, X, Z, Y]), torch.stack(
        [torch.tensor(180.0, dtype=torch.float64), pitch_roll[0], pitch_roll[1], _uniform(rng, -90.0, 90.0)]))
    return torch.cat([(flip @ pitch @ roll @ yaw)[None], axis_angle_to_matrix(theta)])


def place_in_crop(rng, verts, image_size, cfg, focal_length):
    """Translation t (3,) and intrinsics K (3, 3) (float64) that show verts (V, 3) + t centred in
    an H x W crop, the box's larger relative side filling cfg.fill of it.

    focal_length (pixels for a crop 256 pixels high, scaled with the height; HMR2.0 / GenHMR use 5000,
    a nearly orthographic camera): K is fixed with the principal point at the crop centre and t
    is solved for. None: the person stands cfg.distance away, off the optical axis, and K is
    the detector crop of a real camera (`crop_intrinsics`).
    """
    height, width = _image_hw(image_size)
    fill = _uniform(rng, *cfg.fill)
    offset = _normal(rng, cfg.centre_jitter, (2,)) * torch.tensor([width, height])
    centre = (verts.amax(0) + verts.amin(0)) / 2
    if focal_length is None:
        distance = _uniform(rng, *cfg.distance)
        off_axis = torch.tan(torch.deg2rad(_uniform(rng, -cfg.off_axis_deg, cfg.off_axis_deg, (2,))))
        t = torch.cat([off_axis * distance, distance[None]]) - centre
        return t, crop_intrinsics(verts + t, (height, width), fill, offset)
    f = focal_length * height / 256
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    size = torch.tensor([width, height], dtype=torch.float64)
    t = torch.cat([-centre[:2], (f * ((verts.amax(0) - verts.amin(0))[:2] / size).max() / fill - centre[2])[None]])
    xy, z = verts[:, :2], verts[:, 2:]

    def box():  # corners (2,) of the projection's box, uv = f (xy + t_xy) / (z + t_z) + size / 2 (= K (verts + t))
        uv = (xy + t[:2]) / (z + t[2])
        return f * uv.amin(0) + size / 2, f * uv.amax(0) + size / 2

    for _ in range(2):  # perspective makes the first guess slightly off: rescale, then recentre, on the projection
        low, high = box()
        t[2] = (centre[2] + t[2]) * ((high - low) / size).max() / fill - centre[2]
        low, high = box()
        t[:2] -= ((low + high) / 2 - size / 2 - offset) * (centre[2] + t[2]) / f
    return t, K


# ---------------------------------------------------------------------------------------------
# 4. Looks: skin, clothes, forearm, light


def skin_tones(draws):
    """Albedos (B, 3) float64 numpy of skin tones, uniform between light and dark, each channel varied by 8%."""
    light, dark = np.array([0.96, 0.80, 0.69]), np.array([0.36, 0.23, 0.16])
    t = draws.uniform(0, 1)[:, None]
    return ((light + (dark - light) * t) * draws.uniform(0.92, 1.08, (3,))).clip(0, 1)


def skin_colors(draws):
    """Hands' albedos (B, 3) float64 numpy: a skin tone, or (one in ten) a glove of any colour."""
    glove = draws.chance(0.1)[:, None]
    return np.where(glove, draws.uniform(0.1, 0.95, (3,)), skin_tones(draws))


# clothing: SMPL / SMPL-X joint ids (the vertex's strongest skinning weight) -> garment
_SHIRT, _SLEEVES, _TROUSERS, _SHINS, _SHOES = (3, 6, 9, 13, 14, 16, 17), (18, 19), (0, 1, 2), (4, 5), (7, 8, 10, 11)


def outfit_colors(rng, part, hair):
    """Per-vertex albedo (V, 3) from part (V,) (each vertex's strongest joint) and hair (V,) bool:
    a skin tone, a shirt with short or long sleeves, long trousers or shorts, shoes, hair."""
    table = torch.from_numpy(skin_tones(Draws([rng]))).float().repeat(int(part.max()) + 1, 1)  # (J, 3)
    shirt, trousers = _uniform(rng, 0.05, 0.95, (3,)).float(), _uniform(rng, 0.05, 0.7, (3,)).float()
    table[list(_SHIRT)] = shirt
    if torch.rand((), generator=rng) < 0.5:
        table[list(_SLEEVES)] = shirt
    table[list(_TROUSERS)] = trousers
    if torch.rand((), generator=rng) < 0.7:
        table[list(_SHINS)] = trousers
    table[list(_SHOES)] = _uniform(rng, 0.02, 0.4, (3,)).float()
    colors = table[part]
    colors[hair] = _uniform(rng, 0.02, 0.5).float() * torch.tensor([1.0, 0.8, 0.6])
    return colors


def suit_colors(part):
    """Per-vertex albedo (V, 3) of a body suit with one fixed colour per joint (the vertex's strongest,
    part (V,)): hues spaced by the golden ratio, so that neighbours and left / right differ (the
    design notes' tiny setting: a 64 px crop then shows which limb is where, and which side)."""
    j = torch.arange(int(part.max()) + 1, dtype=torch.float64)
    hue, sat, val = (j * 0.618034) % 1.0, 0.55 + 0.4 * ((j * 0.37) % 1.0), 0.6 + 0.35 * ((j * 0.71) % 1.0)
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue[:, None] * 6) % 6  # HSV -> RGB
    rgb = val[:, None] - val[:, None] * sat[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return rgb.float()[part]


def _rig(model):
    """What a dataset needs from an smplx model, computed once: faces (F, 3), rest joints (J, 3)
    float64, parents (J,), part (V,) strongest joint per vertex, hair (V,) bool (head top)."""
    with torch.no_grad():
        rest = model()
    joints = rest.joints[0].double()
    part = model.lbs_weights.argmax(1)
    head = 15
    hair = (part == head) & (rest.vertices[0, :, 1].double() > joints[head, 1] + 0.04)
    faces = torch.as_tensor(np.asarray(model.faces, dtype=np.int64))
    return {"faces": faces, "rest_joints": joints, "parents": model.parents.tolist(), "part": part, "hair": hair}


def open_loop(faces):
    """The vertex ids (L,) around the one opening of a mesh (MANO's wrist), in the order of its
    faces' border edges. faces (F, 3) int64."""
    half = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)  # (3F, 2) directed edges
    twins = torch.cat([half, half.flip(1)])
    _, inverse, counts = torch.unique(twins, dim=0, return_inverse=True, return_counts=True)
    border = half[counts[inverse[:len(half)]] == 1]  # directed edges whose reverse no face has
    after = dict(border.tolist())
    loop = [border[0, 0].item()]
    while after[loop[-1]] != loop[0]:
        loop.append(after[loop[-1]])
    return torch.tensor(loop)


def forearm_faces(loop, num_verts):
    """Faces of a forearm tube (3 rings of L vertices, numbered from num_verts) glued to the
    opening `loop` (L,) with matching winding, and closed by a fan at its far end (one more vertex)."""
    L = len(loop)
    rings = torch.cat([loop[None], num_verts + torch.arange(2 * L).view(2, L)])  # (3, L) vertex ids
    i, j = torch.arange(L), torch.arange(1, L + 1) % L
    faces = []
    for near, far in ((rings[0], rings[1]), (rings[1], rings[2])):
        # the hand's faces run along the loop i -> j, so the tube's run j -> i
        faces += [torch.stack([near[j], near[i], far[i]], 1), torch.stack([near[j], far[i], far[j]], 1)]
    end = torch.full((L,), num_verts + 2 * L)
    faces.append(torch.stack([rings[2][j], rings[2][i], end], 1))
    return torch.cat(faces)  # (5 L, 3)


def forearm_verts(verts, loop, wrist, knuckle, length=0.3, sleeve_start=0.04):
    """Vertices (..., 2 L + 1, 3) of a forearm tube leaving the hand's opening verts[..., loop, :]
    away from the knuckle (..., 3) (the middle finger's base) through the wrist joint (..., 3): a
    ring at sleeve_start, one `length` metres out and 15% wider, and the far end's centre."""
    ring = verts[..., loop, :]  # (..., L, 3)
    centre = ring.mean(-2, keepdim=True)  # (..., 1, 3)
    direction = F.normalize(wrist - knuckle, dim=-1)[..., None, :]
    near = centre + direction * sleeve_start + (ring - centre) * 1.03
    far = centre + direction * length + (ring - centre) * 1.15
    return torch.cat([near, far, centre + direction * length], -2)


def random_lights(draws):
    """Light directions (B, 3) and ambient shares (B,), float64 numpy: from the camera's side,
    anywhere across it, ambient 0.25-0.55."""
    direction = draws.uniform(0, 1, (3,)) * np.array([2.0, 2.0, -0.7]) + np.array([-1.0, -1.0, -0.3])
    return direction, draws.uniform(0.25, 0.55)


# ---------------------------------------------------------------------------------------------
# 5. Backgrounds


def flat_background(rng, hw):
    """(3, H, W) float32: one colour U(0.05, 0.95)^3 plus N(0, 0.03^2) per pixel (the design notes' tiny setting)."""
    colour = _uniform(rng, 0.05, 0.95, (3, 1, 1)).float()
    return (colour + 0.03 * torch.randn(3, *hw, generator=rng)).clamp(0, 1)


def _check_look(who, colors, background, backgrounds):
    if colors not in ("clothes", "suit"):
        raise ValueError(f"{who}: colors must be 'clothes' or 'suit', got {colors!r}")
    if background not in backgrounds:
        raise ValueError(f"{who}: background must be one of {backgrounds}, got {background!r}")


def background_patterns(draws, low_res=32):
    """Random patterns (B, 3, L, L) float64 numpy, L = low_res, to upsample into background images.

    A colour gradient at a random angle, plus low-frequency colour noise, plus (each with
    probability 1/2) soft stripes of a random frequency, angle and colour, and 1-5 coloured
    blobs. Everything is drawn at low_res x low_res and upsampled bilinearly, which keeps it
    cheap and free of sharp edges a model could confuse with a silhouette.
    """
    lin = (np.arange(low_res) + 0.5) / low_res
    ys, xs = np.meshgrid(lin, lin, indexing="ij")  # (L, L) in [0, 1]

    def ramp(angle):  # (B, L, L): position along the direction at angle (B,)
        return xs * np.cos(angle)[:, None, None] + ys * np.sin(angle)[:, None, None]

    # 1. gradient between two random colours
    t = ramp(draws.uniform(0, 2 * math.pi))
    low, high = t.min((1, 2), keepdims=True), t.max((1, 2), keepdims=True)
    t = ((t - low) / (high - low))[:, None]  # (B, 1, L, L)
    c0, c1 = draws.uniform(0, 1, (2, 3, 1, 1)).transpose(1, 0, 2, 3, 4)  # (B, 3, 1, 1) each
    image = c0 + (c1 - c0) * t  # (B, 3, L, L)
    # 2. low-frequency noise: 4 x 4 values per channel, upsampled bicubically (as F.interpolate)
    noise = draws.uniform(0.0, 0.25)[:, None, None, None] * draws.normal(1.0, (3, 4, 4))
    up = _cubic_upsampling(4, low_res)  # (L, 4)
    image = image + up @ noise @ up.T
    # 3. stripes (half of the time: alpha = 0 otherwise)
    stripes = draws.chance(0.5)
    angle, freq, phase = draws.uniform(0, math.pi), draws.uniform(1.5, 7), draws.uniform(0, 2 * math.pi)
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq[:, None, None] * ramp(angle) + phase[:, None, None])
    alpha = (stripes * draws.uniform(0.2, 0.8))[:, None, None, None] * wave[:, None]  # (B, 1, L, L)
    image = image * (1 - alpha) + draws.uniform(0, 1, (3, 1, 1)) * alpha
    # 4. blobs (half of the time, 1-5 of them: the others get alpha = 0)
    count = np.where(draws.chance(0.5), np.floor(draws.uniform(1, 6)), 0)  # (B,)
    centre, radius = draws.uniform(0, 1, (5, 2, 1, 1)), draws.uniform(0.05, 0.25, (5, 1, 1))
    colours = draws.uniform(0, 1, (5, 3, 1, 1))
    for i in range(5):
        d2 = (xs - centre[:, i, 0]) ** 2 + (ys - centre[:, i, 1]) ** 2  # (B, L, L)
        alpha = ((i < count)[:, None, None] * np.exp(-d2 / (2 * radius[:, i] ** 2)))[:, None]  # (B, 1, L, L)
        image = image * (1 - alpha) + colours[:, i] * alpha
    return image


@functools.lru_cache(maxsize=4)
def _cubic_upsampling(low, high):
    """The (high, low) float64 numpy matrix of F.interpolate(mode="bicubic", align_corners=False) along one axis."""
    eye = torch.eye(low, dtype=torch.float64)[:, None, :, None].expand(low, 1, low, 1)  # unit impulses as columns
    return F.interpolate(eye, size=(high, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.numpy()


def upsample_backgrounds(patterns, height, width):
    """patterns (B, 3, L, L) -> (B, 3, H, W) in [0, 1], bilinear (as F.interpolate with
    align_corners=False): along the width by a small matrix product, then every output row is a
    lerp of two rows, r0 + w (r1 - r0). Several times faster than F.interpolate on one core."""
    low = patterns.shape[-1]
    rows = patterns @ _linear_upsampling(low, width).T  # (B, 3, L, W)
    U = _linear_upsampling(low, height)  # (H, L): at most two adjacent taps per row
    first = (U > 0).int().argmax(1)  # (H,) r0's row
    second = (first + 1).clamp_(max=low - 1)
    weight = torch.where(second > first, U.gather(1, second[:, None])[:, 0], 0.0)[:, None]  # (H, 1) w
    return torch.lerp(rows.index_select(-2, first), rows.index_select(-2, second), weight).clamp_(0, 1)


@functools.lru_cache(maxsize=16)
def _linear_upsampling(low, high):
    """The (high, low) matrix of F.interpolate(mode="linear", align_corners=False) from low to high samples."""
    eye = torch.eye(low)[:, None, :]  # (low, 1, low): one unit impulse per row
    return F.interpolate(eye, size=high, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


# ---------------------------------------------------------------------------------------------
# 6. Renderer
#
# A z-buffer in plain PyTorch, vectorised over faces: every face enumerates the pixel rows its
# screen-space box spans; every (face, row) pair gets the exact column span where the face's three
# edge functions are >= 0; every pixel of a span becomes a (face, pixel) candidate with its inverse
# depth 1/z (linear in screen space, so exact at the pixel centre); one scatter_reduce(amax) per
# pixel keeps the nearest. No Python loop runs over faces or pixels.

NEAR = 1e-3  # metres: faces with a vertex closer to the camera plane are dropped (there is no clipping)


EDGE_EPS = 1e-4  # pixels: spans are widened by this much so that shared edges leave no cracks


def _expand(counts):
    """Run-length expansion. counts (M,) int32 -> ids (N,) int32 with i repeated counts[i] times,
    and local (N,) int32 = 0, 1, ..., counts[i] - 1 within each run (N = counts.sum()).

    ids by a cumulative sum instead of repeat_interleave (several times faster on a CPU): with a
    mark at every run's start s_i (empty runs too), the marks up to position k count the runs
    that start at or before k, and the last of them holds k: ids[k] = cumsum(marks)[k] - 1.
    """
    end = counts.cumsum(0, dtype=torch.int32)
    n = int(end[-1]) if len(counts) else 0
    start = end - counts  # (M,) s_i
    marks = torch.zeros(n + 1, dtype=torch.int32, device=counts.device)  # + 1: empty runs at the end
    marks.index_add_(0, start, torch.ones_like(start))
    ids = marks[:n].cumsum(0, dtype=torch.int32) - 1
    return ids, torch.arange(n, dtype=torch.int32, device=counts.device) - start.index_select(0, ids)


def _flatnonzero(mask):
    """Ids (P,) int64 of the True entries of a 1-D bool tensor; numpy's on a CPU (torch.nonzero is
    several times slower there)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


# rows of the per-face table of `_face_setup` (one column per face, so a row is contiguous)
_X0, _Y0, _FIRST, _INV_Z0, _DA, _DB = range(6)  # corner 0, first pixel row, 1/z at corner 0 and its slopes


_P_LO, _Q_LO, _P_HI, _Q_HI = slice(6, 9), slice(9, 12), slice(12, 15), slice(15, 18)  # span bounds (3 each)


def _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored=None):
    """Screen-space set-up of the faces of B meshes that can cover a pixel centre of their image.

    verts (B, V, 3), faces (F, 3) shared, K (B, 3, 3). Everything is relative to each face's
    first corner (x0, y0), so float32 stays exact enough for sub-pixel faces. With du = u - x0 and
    dv = v - y0 for a pixel centre (u, v), the barycentric coordinate of corner i is
    l_i = a_i du + b_i dv + [i == 0], and the inverse depth, linear in screen space under
    perspective, is 1/z = 1/z_0 + da du + db dv.
    Returns keep (Fk,) int64, the ids of those faces among the B F faces (mesh-major); corners
    (3, Fk) their corners' ids among the B V vertices; a and b (3, Fk) (corner-major: a row is
    contiguous); table (18, Fk) float32, per face the rows [x0, y0, first row, 1/z_0, da, db]
    and, per corner i, the bounds of l_i >= 0 along a row,
    du >= lo_i(dv) = p_i + q_i dv (left edges) and du <= hi_i(dv) (right edges), as rows
    [p_lo (3), q_lo (3), p_hi (3), q_hi (3)]; h (Fk,) int32 each face's row count; image (Fk,)
    int32 the first pixel id of its image in the stacked B H W pixels. mirrored (B,) bool marks
    meshes seen in a mirror (x -> -x), whose faces run the other way round.
    """
    B, V = verts.shape[:2]
    z = verts[..., 2].reshape(-1)  # (B V,)
    uv = (verts @ K.transpose(-1, -2))[..., :2].reshape(-1, 2) / z.clamp_min(NEAR)[:, None]  # (B V, 2)
    corner_ids = _corner_ids(faces, B, V).view(-1)  # (3 B F,)
    x, y = uv.T.contiguous().index_select(1, corner_ids).view(2, 3, -1)  # (3 corners, B F) each
    dx1, dx2, dy1, dy2 = x[1] - x[0], x[2] - x[0], y[1] - y[0], y[2] - y[0]
    area = dx1 * dy2 - dx2 * dy1  # (B F,) twice the signed area
    # rows whose centre v = row + 0.5 lies inside the face's vertical extent
    first = torch.ceil(y.amin(0) - 0.5).clamp_(0, height)
    h = (torch.floor(y.amax(0) - 0.5).clamp_(-1, height - 1) - first + 1).clamp_min_(0)
    # with y pointing down, a face whose corners run counter-clockwise seen from outside has area < 0
    if cull_backfaces and mirrored is not None:
        facing = area * (1 - 2 * mirrored.float()).repeat_interleave(len(faces)) < 0
    else:
        facing = area < 0 if cull_backfaces else area != 0
    near = z.index_select(0, corner_ids).view(3, -1).amin(0) > NEAR
    keep = _flatnonzero(facing & near & (h > 0) & (x.amax(0) > 0) & (x.amin(0) < width)).to(verts.device)
    dx1, dx2, dy1, dy2, area, x0, y0 = (t.index_select(0, keep) for t in (dx1, dx2, dy1, dy2, area, x[0], y[0]))
    # l_i = ((x_j - u)(y_k - v) - (x_k - u)(y_j - v)) / area for (i, j, k) cyclic, written in du, dv;
    # l_0 = 1 - l_1 - l_2 keeps the three summing to 1 in float32
    a1, a2, b1, b2 = dy2 / area, -dy1 / area, -dx2 / area, dx1 / area
    a, b = torch.stack([-a1 - a2, a1, a2]), torch.stack([-b1 - b2, b1, b2])  # (3, Fk) each
    # perspective: 1/z = sum_i l_i / z_i
    corners = corner_ids.view(3, -1).index_select(1, keep)  # (3, Fk) vertex ids among the B V
    inv_z = 1 / z.index_select(0, corners.view(-1)).view(3, -1)  # (3, Fk)
    depth = torch.stack([inv_z[0], (a * inv_z).sum(0), (b * inv_z).sum(0)])  # (3, Fk)
    # l_i >= 0 on a row: du >= -(b_i dv + [i == 0]) / a_i if a_i > 0, du <= ... if a_i < 0;
    # a_i = 0 (a horizontal edge) never limits a row inside the face's vertical extent
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    p, q = -torch.eye(3, device=a.device)[:, :1] / safe_a, -b / safe_a  # (3, Fk) each
    lower, upper = a > 0, a < 0
    bounds = [p.masked_fill(~lower, -math.inf), q.masked_fill(~lower, 0),
              p.masked_fill(~upper, math.inf), q.masked_fill(~upper, 0)]
    table = torch.cat([x0[None], y0[None], first.index_select(0, keep)[None], depth] + bounds)  # (18, Fk)
    image = (torch.div(keep, len(faces), rounding_mode="floor") * (height * width)).int()
    return keep, corners, a, b, table, h.index_select(0, keep).int(), image


def _rasterize(verts, faces, K, height, width, cull_backfaces=False, mirrored=None, zbuffer=None):
    """The z-buffer of B meshes (see `rasterize`): verts (B, V, 3), faces (F, 3), K (B, 3, 3).
    Returns pix (P,) int64 covered pixels (sorted) as ids into the stacked (B, H, W) images,
    face (P,) the winner as an index into keep, du and dv (P,) its pixel centre relative to the
    face origin, and keep, corners, a, b from `_face_setup`. zbuffer: None, or an int64 scratch
    tensor of at least B H W entries, all -1, which is used and left so (on a CPU, allocating and
    filling a fresh z-buffer per pass costs more than the scatter into it)."""
    keep, corners, a, b, table, h, image = _face_setup(verts, faces, K, height, width, cull_backfaces, mirrored)
    # 1. (face, row) spans: the columns j0 ... j0 + n - 1 whose centre u = col + 0.5 is in [lo, hi]
    face, r = _expand(h)  # (M,)
    t = table.index_select(1, face)  # (18, M)
    row = t[_FIRST] + r
    dv = row + 0.5 - t[_Y0]
    lo = (t[_P_LO] + t[_Q_LO] * dv).amax(0) + t[_X0]  # leftmost u with all l_i >= 0
    hi = (t[_P_HI] + t[_Q_HI] * dv).amin(0) + t[_X0]
    j0 = torch.ceil(lo - EDGE_EPS - 0.5).clamp_(0, width)
    n = (torch.floor(hi + EDGE_EPS - 0.5).clamp_(-1, width - 1) - j0 + 1).clamp_min_(0).int()
    du0 = j0 + 0.5 - t[_X0]
    start = image.index_select(0, face) + (row * width + j0).int()  # (M,) first pixel id
    inv_z0 = t[_INV_Z0] + t[_DA] * du0 + t[_DB] * dv  # (M,)
    # 2. (span, pixel) candidates and their inverse depth 1/z = 1/z_0 + da du + db dv
    span, k = _expand(n)  # (N,)
    pix = (start.index_select(0, span) + k).long()
    inv_z = (inv_z0.index_select(0, span) + t[_DA].index_select(0, span) * k).clamp_min_(0)
    # 3. nearest per pixel: the bits of a positive float32 sort like the float, so packing them
    #    above the span id makes one integer amax return the winner (ties: the larger id)
    key = (inv_z.view(torch.int32).long() << 32) | span
    size = len(verts) * height * width
    reuse = zbuffer is not None and len(zbuffer) >= size
    best = zbuffer[:size] if reuse else torch.full((size,), -1, dtype=torch.long, device=pix.device)
    best.scatter_reduce_(0, pix, key, "amax")
    pix = _flatnonzero(best >= 0).to(pix.device)  # (P,)
    won = (best.index_select(0, pix) & 0xFFFFFFFF).int()  # (P,) the winners' spans
    if reuse:
        best.index_fill_(0, pix, -1)  # back to empty for the next pass
    du = du0.index_select(0, won) + (pix.int() - start.index_select(0, won))
    return pix, face.index_select(0, won), du, dv.index_select(0, won), (keep, corners, a, b)


def _scratch_zbuffer(owner, size):
    """The z-buffer `owner._scratch` (a dataset's, not pickled, so rebuilt in each worker), grown
    to at least `size` entries, all -1, for `_rasterize` to use and leave empty again."""
    if owner._scratch is None or len(owner._scratch) < size:
        owner._scratch = torch.full((size,), -1, dtype=torch.long)
    return owner._scratch


def rasterize(verts, faces, K, image_size, cull_backfaces=False):
    """Z-buffer: the nearest face under every pixel centre.

    verts (V, 3) camera coordinates, faces (F, 3) int, K (3, 3), image_size int or (H, W).
    Returns pix (P,) flat ids row * W + col of the covered pixels (sorted), face (P,) the id of the
    visible face there, and bary (P, 3) float32 barycentric weights in the image plane.
    Faces with a vertex behind the near plane are dropped. Both windings are drawn unless
    cull_backfaces, which drops faces whose corners run clockwise seen from the camera (the back
    faces of a closed mesh with counter-clockwise outward winding, as SMPL's and MANO's).
    """
    height, width = _image_hw(image_size)
    pix, face, du, dv, (keep, _, a, b) = _rasterize(verts.float()[None], faces.long(), K.float()[None], height,
                                                    width, cull_backfaces)
    bary = a.index_select(1, face) * du + b.index_select(1, face) * dv  # (3, P)
    bary[0] += 1
    return pix, keep.index_select(0, face), bary.T.contiguous()


def reference_rasterize(verts, faces, K, image_size):
    """The z-buffer written the short way, to check `rasterize` against: every pixel centre tested
    against every face (memory H W F), in float64.

    verts (V, 3) camera coordinates, faces (F, 3), K (3, 3), image_size int or (H, W). Returns
    face (H W,) the nearest face under each pixel centre (-1 = empty), margin (H W,) the smallest
    |barycentric weight| of that pixel over all faces (small: near an edge, where the two
    renderers may round differently) and gap (H W,) the inverse-depth gap between the two nearest
    faces (small: a depth tie).
    """
    height, width = _image_hw(image_size)
    uvw = verts.double() @ K.double().T
    tri = (uvw[:, :2] / uvw[:, 2:])[faces]  # (F, 3, 2) image-plane corners
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    p = torch.stack([xs.flatten(), ys.flatten()], -1).double()[:, None, :]  # (P, 1, 2) pixel centres
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]  # (F, 2)

    def cross(o, q, r):  # z of (q - o) x (r - o), broadcast to (P, F)
        return (q[..., 0] - o[..., 0]) * (r[..., 1] - o[..., 1]) - (q[..., 1] - o[..., 1]) * (r[..., 0] - o[..., 0])

    area = cross(a, b, c)  # (F,)
    l0, l1, l2 = cross(p, b, c) / area, cross(p, c, a) / area, cross(p, a, b) / area  # (P, F) barycentric
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    z = verts[:, 2].double()[faces]  # (F, 3)
    # nearest = largest
    inv_z = torch.where(inside, l0 / z[:, 0] + l1 / z[:, 1] + l2 / z[:, 2], torch.full_like(l0, -1.0))
    best = inv_z.argmax(1)
    face = torch.where(inside.any(1), best, torch.full_like(best, -1))
    margin = torch.stack([l0, l1, l2]).abs().amin(0).amin(1)  # (P,)
    top2 = inv_z.topk(2, dim=1).values if inv_z.shape[1] > 1 else torch.cat([inv_z, -inv_z], 1)
    return face, margin, top2[:, 0] - top2[:, 1]


def _corner_ids(faces, count, num_verts):
    """(3 corners, count F) ids of the corners of faces (F, 3) in count stacked meshes of num_verts vertices."""
    return (faces.T.contiguous()[:, None] + num_verts * torch.arange(count, device=faces.device)[:, None]).view(3, -1)


def render_mesh(verts, faces, K, image_size, color=(0.85, 0.64, 0.52), light=(0.4, -0.6, -1.0),
                ambient=0.35, background=None, return_mask=False, cull_backfaces=False):
    """A shaded image of a triangle mesh through a pinhole camera.

    verts (V, 3) camera coordinates (x right, y down, z forward), faces (F, 3), K (3, 3),
    image_size int or (H, W). color (3,) or per-vertex (V, 3) albedo in [0, 1]; light (3,) the
    direction from the surface towards the light in camera coordinates (the default lights from
    the upper left, on the camera's side); ambient in [0, 1] the unlit share; background
    (3, H, W) in [0, 1] or None for black; cull_backfaces as in `rasterize` (about twice as fast
    for closed meshes). Returns image (3, H, W) float32 in [0, 1], and with return_mask=True
    also mask (H, W) bool, True where the mesh covers the pixel. `render_meshes` draws a batch.

    Shading is Lambert + ambient with per-vertex normals, interpolated over faces (Gouraud):
        I = albedo * (ambient + (1 - ambient) * max(0, n . light))
    Normals are turned towards the camera first, so either winding (and mirrored meshes) shade
    the same.
    """
    background = None if background is None else background[None]
    images, pix, _ = _render(verts[None], faces, K[None], image_size, torch.as_tensor(color)[None],
                             torch.as_tensor(light)[None], torch.as_tensor(ambient)[None], background, cull_backfaces)
    if return_mask:
        mask = torch.zeros(images[0, 0].numel(), dtype=torch.bool, device=images.device)
        mask[pix] = True
        return images[0], mask.view(images.shape[-2:])
    return images[0]


def render_meshes(verts, faces, K, image_size, color, light, ambient, background=None, cull_backfaces=False,
                  mirrored=None):
    """`render_mesh` for a batch of B meshes with one topology, in one pass (several times faster
    per image on a CPU than one by one: the work is the same, the per-call overheads are shared).

    verts (B, V, 3), faces (F, 3), K (B, 3, 3), color (B, 3) or (B, V, 3), light (B, 3),
    ambient (B,), background (B, 3, H, W) or None; mirrored (B,) bool marks meshes mirrored
    (x -> -x) from their faces' winding, for cull_backfaces. Returns images (B, 3, H, W).
    """
    return _render(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored)[0]


def _render(verts, faces, K, image_size, color, light, ambient, background, cull_backfaces, mirrored=None,
            draw_on_background=False, zbuffer=None):
    """`render_meshes`, also returning pix (P,) the covered pixels as ids into the (B, H, W) stack
    and face (P,) their faces as ids into the B F faces (mesh-major). draw_on_background=True
    draws into background (contiguous float32 on verts' device, which the caller gives up) instead
    of into a copy of it; zbuffer: a scratch buffer for `_rasterize`."""
    height, width = _image_hw(image_size)
    B, V = verts.shape[:2]
    device = verts.device
    verts, faces = verts.float(), faces.long().to(device)
    # 1. per-vertex colour: albedo times the Lambert term, axis-major (3, B V) so rows are contiguous
    xyz = verts.reshape(-1, 3).T  # (3, B V)
    normals = bodymodels.vertex_normals(verts, faces).permute(2, 0, 1)  # (3, B, V), a view of an axis-major sum
    light = F.normalize(torch.as_tensor(light, dtype=torch.float32, device=device), dim=-1).T[:, :, None]  # (3, B, 1)
    ambient = torch.as_tensor(ambient, dtype=torch.float32, device=device).reshape(B, 1)
    albedo = torch.as_tensor(color, dtype=torch.float32, device=device).reshape(B, -1, 3)  # (B, V or 1, 3)
    albedo = albedo.permute(2, 0, 1)  # (3, B, V or 1)
    # normals turned towards the camera (n . x < 0), so either winding shades the same
    lambert = (normals * light).sum(0) * torch.where((normals * xyz.reshape(3, B, V)).sum(0) > 0, -1.0, 1.0)
    shaded = (albedo * (ambient + (1 - ambient) * lambert.clamp_min_(0))).reshape(3, B * V)
    # 2. visible faces; colour is linear over a face: c = c_0 + (sum_i a_i c_i) du + (sum_i b_i c_i) dv
    pix, face, du, dv, (keep, corners, a, b) = _rasterize(verts, faces, K.float().to(device), height, width,
                                                          cull_backfaces, mirrored, zbuffer)
    corner = shaded.index_select(1, corners.reshape(-1)).view(3, 3, -1)  # (3 channels, 3 corners, Fk)
    plane = torch.cat([corner[:, 0], (a * corner).sum(1), (b * corner).sum(1)])  # (9, Fk)
    plane = plane.index_select(1, face)  # (9, P)
    rgb = (plane[0:3] + plane[3:6] * du + plane[6:9] * dv).clamp_(0, 1)  # (3, P)
    # 3. composite over the backgrounds: pixel g = b H W + p of channel c sits at (3 b + c) H W + p
    if background is None:
        images = torch.zeros(B, 3, height, width, device=device)
    elif draw_on_background:
        images = background.view(B, 3, height, width)  # the caller's scratch tensor, drawn into
    else:
        images = background.to(device, torch.float32, copy=True).reshape(B, 3, height, width)
    HW = height * width
    at = pix + 2 * HW * torch.div(pix, HW, rounding_mode="floor")  # channel 0 of each covered pixel
    for c in range(3):  # channel c of those pixels: the same ids into the flat images shifted by c H W
        images.view(-1)[c * HW:].index_copy_(0, at, rgb[c])
    return images, pix, keep.index_select(0, face)
