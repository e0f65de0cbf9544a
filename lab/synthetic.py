"""The synthetic datasets, and how their samples are made: pose priors, looks, backgrounds.

No dataset can be downloaded here, so these render their own training images, with exact labels, from
the stand-in body models of lab/standins.py (or the real MANO/SMPL/SMPL-X files when HMR_BODY_MODELS points
to them): each draws a pose, a camera and a look with the functions below and renders the posed mesh
(lab/render.py). Their keys, conventions and augmentation are data.py's (see its docstring), the same as
the real datasets', so a model never knows which it got. Every random number comes from the sample's
torch.Generator (`data.sample_rng`; `Draws` for a batch), never from global RNG state.

Map of the file:
1. Random numbers (`Draws`) and small helpers
2. Pose priors, hands: `HandPoseConfig`, `HandViewConfig`, `hand_poses`, `hand_orientations`
3. Pose priors, bodies: `BodyPoseConfig`, `BodyViewConfig`, `sample_plausible_body`,
   `sample_action_body`, `place_in_crop`
4. Looks: skin, clothes, forearm, light
5. Backgrounds
6. Synthetic hands: `SyntheticHands` (and the demo's camera `DEMO_HAND_VIEW`)
7. Synthetic bodies: `SyntheticPoses`, `SyntheticBodies`, GenHMR's controlled ambiguity (`AmbiguousPoses`,
   `AmbiguousBodies`), `SyntheticWholeBody` (and the demo's people `DEMO_BODY_POSE`, `DEMO_BODY_LOOK`)
8. The trainer's datasets: `hand_dataset`, `body_pose_dataset`, `body_dataset`, `wholebody_dataset`, each
   a real reader of data.py for `--data KIND:PATH`, else a synthetic set; `render_once`, a synthetic set drawn
   once into a tensor file (train.py's cache)
Speed: `python -m lab.bench --data-bench`; sample grids: `python -m lab.bench --data-grid OUT_DIR`.
"""

import functools
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from bodymodels import (SMPLX_HAND_JOINTS, axis_angle_to_matrix, forward_kinematics, mano_to_freihand,
                        matrix_to_axis_angle, mirror_rotation, perspective_projection)
from data import (AUGMENT_STREAM, HAND_AUGMENTS, RENDERED_KINDS, AugmentConfig, FreiHAND, HMR2Npz, HMR2Poses, Indexed,
                  NpzHands, RenderedSet, WholeBodyHands, WholeBodyNpz, augment_hand_labels, body_model, body_rig,
                  color_jitter, hmr2_files, hmr2_protocol_check, image_hw, normal, recolor, sample_augmentation,
                  sample_rng, scratch_zbuffer, skinning, stack_samples, uniform, wholebody_files)
from lab.files import atomic_write
from lab.render import render_batch

# ---------------------------------------------------------------------------------------------
# 1. Random numbers and small helpers


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
    grasp_range: tuple = (0.0, 1.0)  # the grasp level g of step 1, mapped from [0, 1] onto this range
    plate_prob: float = 0.0  # share of plate grips: knuckles bent with the grasp, the other finger joints straight


# The whole-body people's hands hold objects, as ARCTIC's subjects' do (they grasp and move eleven articulated
# objects: a box, a laptop, scissors, a ketchup bottle, a mixer, ...), where the hand expert's own hands are a hand
# dataset's (the broad prior above: gestures, open hands and fists). So: no gestures; the grasp level stays within
# (0.3, 0.9) (an object between the fingers keeps them from opening flat or closing into a fist); and one hand in
# three holds a flat object's edge (a lid, a laptop's screen, a box's wall) in a plate grip, knuckles bent and the
# other finger joints nearly straight, which the broad prior, whose knuckle and middle joints curl together, does not
# draw. docs/hmr_adapter.md, NOTE H18, measures the gap this makes between the expert's hands and these.
OBJECT_GRASPS = HandPoseConfig(independent_prob=0.0, grasp_range=(0.3, 0.9), plate_prob=1 / 3)


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


def hand_poses(draws, axes, cfg=HandPoseConfig(), grasp=None):
    """Natural random finger poses: (B, 15, 3) float64 numpy axis-angle for MANO joints 1-15;
    axes from `hand_axes`; grasp (B,) in [0, 1]: the grasp level g of step 1 given (the whole bodies'
    follows the elbow), else drawn (the same draws either way, so the other numbers do not move).

    1. A grasp level g ~ U(0, 1), mapped onto cfg.grasp_range, curls all fingers together (curl
       c = g + N(0, 0.12), pinky and ring a little more); with probability cfg.independent_prob
       each finger instead is straight or curled on its own (pointing, counting, "peace" gestures).
    2. Each finger: knuckle (MCP) and middle (PIP) flexion = its range at c, + N(0, jitter); the
       last joint follows (DIP = 0.7 PIP + N(0, 3)); the knuckle spreads about the palm normal by
       cfg.spread x s, s ~ U(-0.2, 1), less as the fingers curl, + N(0, 3). With probability
       cfg.plate_prob (a plate grip) the middle joint flexes as at curl 0.1 c instead: the finger
       stays nearly straight past its bent knuckle (drawn only where plate_prob > 0, so that the
       other configs' numbers do not move).
    3. Thumb: its base swings under the palm and across it with the grasp (opposition), its two
       distal joints flex with its own curl.
    Every angle is clamped to its range, so no joint bends backwards.
    """
    flex, palmar = (np.asarray(axis, dtype=np.float64) for axis in axes)  # (5, 3), (3,)
    normal = -np.array(PALM)  # spread axis: + turns a finger towards the thumb
    noise = draws.normal(1.0, (14,))  # (B, 14)
    # 1. curls (index, middle, pinky, ring, thumb): gesture or grasp, both drawn
    g = draws.uniform(0, 1)  # (B,)
    if grasp is not None:
        g = np.asarray(grasp, dtype=np.float64).reshape(len(g))
    g = cfg.grasp_range[0] + (cfg.grasp_range[1] - cfg.grasp_range[0]) * g
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
    if cfg.plate_prob > 0:
        pip = np.where(draws.chance(cfg.plate_prob)[:, None], angle(0.1 * c, cfg.pip_flex, noise[:, 4:8]), pip)
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
    height, width = image_hw(image_size)
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
        return normal(rng, std, shape)

    sides = torch.tensor([1.0, -1.0], dtype=torch.float64)  # left, right
    # 1. legs: thigh direction from flexion f (forwards) and abduction a (outwards), from -Y
    legs = _choose(rng, LEG_MODES)
    legs = legs if torch.rand((), generator=rng) < 0.5 else legs[::-1]
    flex = torch.deg2rad(torch.stack([uniform(rng, *leg[0]) for leg in legs]) + n(4.0, 2))
    knee = torch.stack([uniform(rng, *leg[1]) for leg in legs]) + n(4.0, 2)
    abduct = torch.deg2rad(uniform(rng, *cfg.abduction, (2,))) * sides
    thigh = torch.stack([flex.cos() * abduct.sin(), -flex.cos() * abduct.cos(), flex.sin()], -1)  # (2, 3)
    # 2. arms: direction from the angle away from hanging down and the azimuth (0 sideways, 90 forwards)
    down = torch.deg2rad(torch.stack([uniform(rng, *_choose(rng, ARM_MODES)[0]) for _ in range(2)]))
    azimuth = torch.deg2rad(uniform(rng, *cfg.arm_azimuth, (2,)))
    arm = torch.stack([sides * down.sin() * azimuth.cos(), -down.cos(), down.sin() * azimuth.sin()], -1)  # (2, 3)
    elbow = uniform(rng, *cfg.elbow, (2,)) * uniform(rng, 0.3, 1.0, (2,))
    # 3. every elementary turn as an axis-angle row, converted in one batch
    rest_leg, rest_arm = -Y.expand(2, 3), X * sides[:, None]
    turns = torch.cat([
        _turn_to(rest_leg, thigh), rest_leg * torch.deg2rad(n(cfg.twist_std / 2, 2))[:, None],  # 0-3 hips
        X * torch.deg2rad(knee.clamp(0, 150))[:, None],  # 4-5 knees
        X * torch.deg2rad(uniform(rng, -20, 25, (2,)))[:, None], Z * torch.deg2rad(n(6.0, 2))[:, None],  # 6-9 ankles
        _turn_to(rest_arm, arm), rest_arm * torch.deg2rad(n(cfg.twist_std, 2))[:, None],  # 10-13 shoulders
        -Y * (sides * torch.deg2rad(elbow))[:, None],  # 14-15 elbows: left about -Y, right about +Y
        Z * (sides * torch.deg2rad(n(5.0, 2)))[:, None], Y * torch.deg2rad(n(5.0, 2))[:, None],  # 16-19 collars
        torch.deg2rad(n(cfg.wrist_std, 2, 3)),  # 20-21 wrists
        _euler_rows(torch.stack([uniform(rng, *cfg.spine_flex, (3,)), n(cfg.spine_std, 3), n(cfg.spine_std, 3)], -1)),
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
    yaw = normal(rng, 35.0) if frontal else uniform(rng, -180.0, 180.0)
    lean_axis = uniform(rng, 0, 2 * math.pi)
    axes = torch.stack([X, torch.stack([lean_axis.cos(), torch.zeros(()), lean_axis.sin()]).double(), Y])
    upright, lean, turn = _rotation(axes, torch.stack([torch.tensor(180.0).double(), normal(rng, cfg.tilt_std), yaw]))
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


# GenHMR's tiny prior (docs/genhmr.md, "Running it"): four "actions", each a fixed mean
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
    theta = means[mode] + torch.einsum("k,kjc->jc", z, bases[mode]) + normal(rng, ACTION_NOISE, (21, 3))
    angle = theta.norm(dim=-1, keepdim=True)
    theta = theta * (ACTION_MAX / angle.clamp_min(ACTION_MAX))  # |theta_j| <= 2
    pitch_roll = normal(rng, 10.0, (2,))
    flip, pitch, roll, yaw = _rotation(torch.stack([X, X, Z, Y]), torch.stack(
        [torch.tensor(180.0, dtype=torch.float64), pitch_roll[0], pitch_roll[1], uniform(rng, -90.0, 90.0)]))
    return torch.cat([(flip @ pitch @ roll @ yaw)[None], axis_angle_to_matrix(theta)])


def place_in_crop(rng, verts, image_size, cfg, focal_length):
    """Translation t (3,) and intrinsics K (3, 3) (float64) that show verts (V, 3) + t centred in
    an H x W crop, the box's larger relative side filling cfg.fill of it.

    focal_length (pixels for a crop 256 pixels high, scaled with the height; HMR2.0 / GenHMR use 5000,
    a nearly orthographic camera): K is fixed with the principal point at the crop centre and t
    is solved for. None: the person stands cfg.distance away, off the optical axis, and K is
    the detector crop of a real camera (`crop_intrinsics`).
    """
    height, width = image_hw(image_size)
    fill = uniform(rng, *cfg.fill)
    offset = normal(rng, cfg.centre_jitter, (2,)) * torch.tensor([width, height])
    centre = (verts.amax(0) + verts.amin(0)) / 2
    if focal_length is None:
        distance = uniform(rng, *cfg.distance)
        off_axis = torch.tan(torch.deg2rad(uniform(rng, -cfg.off_axis_deg, cfg.off_axis_deg, (2,))))
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
    shirt, trousers = uniform(rng, 0.05, 0.95, (3,)).float(), uniform(rng, 0.05, 0.7, (3,)).float()
    table[list(_SHIRT)] = shirt
    if torch.rand((), generator=rng) < 0.5:
        table[list(_SLEEVES)] = shirt
    table[list(_TROUSERS)] = trousers
    if torch.rand((), generator=rng) < 0.7:
        table[list(_SHINS)] = trousers
    table[list(_SHOES)] = uniform(rng, 0.02, 0.4, (3,)).float()
    colors = table[part]
    colors[hair] = uniform(rng, 0.02, 0.5).float() * torch.tensor([1.0, 0.8, 0.6])
    return colors


def suit_colors(part):
    """Per-vertex albedo (V, 3) of a body suit with one fixed colour per joint (the vertex's strongest,
    part (V,)): hues spaced by the golden ratio, so that neighbours and left / right differ (the
    tiny setting, docs/genhmr.md: a 64 px crop then shows which limb is where, and which side)."""
    j = torch.arange(int(part.max()) + 1, dtype=torch.float64)
    hue, sat, val = (j * 0.618034) % 1.0, 0.55 + 0.4 * ((j * 0.37) % 1.0), 0.6 + 0.35 * ((j * 0.71) % 1.0)
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue[:, None] * 6) % 6  # HSV -> RGB
    rgb = val[:, None] - val[:, None] * sat[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return rgb.float()[part]


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
    """(3, H, W) float32: one colour U(0.05, 0.95)^3 plus N(0, 0.03^2) per pixel (the tiny setting, docs/genhmr.md)."""
    colour = uniform(rng, 0.05, 0.95, (3, 1, 1)).float()
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
# 6. Synthetic hands


class SyntheticHands(torch.utils.data.Dataset):
    """Rendered hands with exact labels, as a hand detector's crops (keys: data.py's module docstring).

    Distribution of a sample (drawn from its own sample_rng(seed, epoch or 0, index)):
    - Shape: MANO betas ~ N(0, 1), clamped to [-2.5, 2.5].
    - Fingers: `hand_poses` (HandPoseConfig): grasp-coupled curls and gestures within joint
      ranges, never uniform over rotations.
    - Orientation: `hand_orientations` (HandViewConfig): palm or back towards the camera
      (1/2 each), tilted N(0, 35 deg), fingers up in the image on average with N(0, 60 deg) roll.
    - Place: 0.35-0.9 m from the camera, up to 25 degrees off its axis; the crop then centres the
      hand's box (Gaussian jitter of 3% of the crop) and scales its larger side to 70-90% of the
      crop, which sets K (focal length and principal point).
    - Side: a left hand with probability left_hand_prob (default 0: FreiHAND and SimpleHand's
      benchmarks are right-hand only), made by mirroring (data.py's module docstring: left hands).
    - Looks: skin tone (or one in ten, a glove colour), a forearm leaving the wrist (bare, or in
      a sleeve of any colour half of the time), a light from the camera's side, ambient
      0.25-0.55, and a random background (`background_patterns`). `scene(sample)` gives the mesh the image shows.
    With augment=True, `AugmentConfig` changes the camera before rendering (labels stay exact) and
    jitters colours after. background="black" renders on black (masks for tests and debugging).
    A sample depends on (seed, index), its augmentation also on the epoch, and with
    vary_with_epoch=True the hand too (every epoch sees new hands). A DataLoader fetches a batch
    through `__getitems__`, which renders it `render_chunk` images per pass. Speed: `python -m lab.bench --data-bench`.
    """

    def __init__(self, num_samples, image_size=224, seed=0, augment=False, left_hand_prob=0.0,
                 vary_with_epoch=False, augment_config=None, pose_config=None, view_config=None, background="random",
                 model_dir=None):
        if background not in ("random", "black"):
            raise ValueError(f"SyntheticHands: background must be 'random' or 'black', got {background!r}")
        self.num_samples, self.image_size, self.seed = int(num_samples), int(image_size), int(seed)
        self.background = background
        self.augment, self.left_hand_prob, self.vary_with_epoch = augment, float(left_hand_prob), vary_with_epoch
        self.augment_config = augment_config or AugmentConfig()
        self.pose_config = pose_config or HandPoseConfig()
        self.view_config = view_config or HandViewConfig()
        self.model_dir = model_dir
        self.epoch = 0
        self._mano = None  # loaded on first use in each process (see __getstate__)
        self._scratch = None  # the renderer's z-buffer, likewise

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __getstate__(self):
        # the body model is rebuilt in each DataLoader worker from the cache folder, not pickled
        return dict(self.__dict__, _mano=None, _scratch=None)

    @property
    def mano(self):
        if self._mano is None:
            self._mano = body_model("mano", self.model_dir)
            self.hand_axes = hand_axes(self._mano().joints[0].detach().double())  # from the flat mean hand
            self.faces = torch.as_tensor(np.asarray(self._mano.faces, dtype=np.int64))  # (1538, 3)
            self.wrist_loop = open_loop(self.faces)  # (L,) MANO's open wrist, where the forearm is glued
            self.scene_faces = torch.cat([self.faces, forearm_faces(self.wrist_loop, len(self._mano.v_template))])
        return self._mano

    def scene(self, sample):
        """The mesh a sample's image shows: verts (778 + 2 L + 1, 3), faces (F', 3): the hand and a
        forearm leaving its wrist, wound counter-clockwise from outside (mirrored for left hands)."""
        self.mano
        arm = forearm_verts(sample["verts"], self.wrist_loop, sample["joints3d"][0], sample["joints3d"][9])
        faces = self.scene_faces if bool(sample["is_right"]) else self.scene_faces[:, [0, 2, 1]]
        return torch.cat([sample["verts"], arm]), faces

    def sample_mano(self, draws):
        """Draw B poses (B, 16, 3) float32 (global orientation first) and shapes (B, 10) float32 from
        draws (`Draws`); pose the right hand. Returns pose, shape, verts (B, 778, 3) and joints
        (B, 21, 3) FreiHAND order, float64, in MANO's frame."""
        self.mano  # hand_axes
        fingers = hand_poses(draws, self.hand_axes, self.pose_config)  # (B, 15, 3)
        orient = matrix_to_axis_angle(torch.from_numpy(hand_orientations(draws, self.view_config)))  # (B, 3)
        shape = torch.from_numpy(draws.normal(1.0, (10,)).clip(-2.5, 2.5)).float()
        pose = torch.cat([orient[:, None], torch.from_numpy(fingers)], 1).float()  # (B, 16, 3)
        verts, joints = skinning("mano", self.model_dir)(pose, shape)  # (B, 778, 3), (B, 16, 3) float64
        return pose, shape, verts, mano_to_freihand(joints, verts)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """The samples of a list of indices (DataLoader asks for a batch this way): labels drawn
        for the whole batch at once, images rendered render_chunk at a time, which shares the
        per-call costs. Each sample depends only on its own (seed, epoch, index) (see `Draws`):
        __getitems__(indices)[k] is exactly self[indices[k]]."""
        samples, looks = self._labels(indices)
        for start in range(0, len(samples), self.render_chunk):
            chunk = slice(start, start + self.render_chunk)
            images = self._images(samples[chunk], {key: value[chunk] for key, value in looks.items()})
            for sample, image, jitter in zip(samples[chunk], images, looks["jitter"][chunk]):
                sample["image"] = recolor(image, jitter, self.augment_config.color_style) if self.augment else image
        return samples

    # images per renderer pass: on one core 8 is about 1.5x faster per image than 32, whose
    # buffers (z-buffer, images, candidates) no longer fit in the cache, and than 1 (per-call costs)
    render_chunk = 8

    def _images(self, samples, looks):
        """The images (B, 3, S, S) of samples (from `_labels`) with their looks, in one renderer pass."""
        self.mano
        S = self.image_size
        verts = torch.stack([s["verts"] for s in samples])  # (B, 778, 3)
        joints = torch.stack([s["joints3d"] for s in samples])
        verts = torch.cat([verts, forearm_verts(verts, self.wrist_loop, joints[:, 0], joints[:, 9])], 1)  # (B, V', 3)
        V = self.mano.v_template.shape[0]
        color = torch.cat([looks["skin"][:, None].expand(-1, V, 3),
                           looks["forearm"][:, None].expand(-1, verts.shape[1] - V, 3)], 1)  # (B, V', 3)
        backgrounds = upsample_backgrounds(looks["background"], S, S) if self.background == "random" else None
        mirrored = torch.tensor([not s["is_right"] for s in samples])
        self._scratch = scratch_zbuffer(self._scratch, len(samples) * S * S)
        return render_batch(verts, self.scene_faces, torch.stack([s["K"] for s in samples]), S, color, looks["light"],
                       looks["ambient"], backgrounds, cull_backfaces=True, mirrored=mirrored,
                       draw_on_background=True,  # into backgrounds
                            zbuffer=self._scratch)[0]

    def _labels(self, indices):
        """The labels (all keys but image) of samples `indices`, a list of dicts, and their looks,
        batched: skin and forearm (B, 3) albedos, light (B, 3), ambient (B,), background (B, 3, L, L)
        patterns, jitter (B, 3) colour factors."""
        for index in indices:
            if not 0 <= index < self.num_samples:
                raise IndexError(f"SyntheticHands: index {index} out of range for {self.num_samples} samples")
        epoch = self.epoch if self.vary_with_epoch else 0
        draws = Draws([sample_rng(self.seed, epoch, index) for index in indices], block=160)
        view, S = self.view_config, self.image_size
        # 1. posed right hands, mirrored into left hands (data.py's module docstring) where drawn
        pose, shape, verts, joints = self.sample_mano(draws)
        is_right = torch.from_numpy(~draws.chance(self.left_hand_prob))  # (B,)
        mirror = torch.ones(len(indices), 1, 3, dtype=torch.float64)  # (B, 1, 3): x -> -x for left hands
        mirror[~is_right, :, 0] = -1.0
        verts, joints = verts * mirror, joints * mirror
        # 2. place them in front of the camera, off the optical axis, and crop around them
        distance = torch.from_numpy(draws.uniform(*view.distance))[:, None]  # (B, 1)
        off_axis = torch.from_numpy(np.tan(np.deg2rad(draws.uniform(-view.off_axis_deg, view.off_axis_deg, (2,)))))
        centre = (verts.amax(1) + verts.amin(1)) / 2  # (B, 3)
        shift = (torch.cat([off_axis * distance, distance], 1) - centre)[:, None]  # (B, 1, 3)
        verts, joints = verts + shift, joints + shift
        K = crop_intrinsics(verts, S, torch.from_numpy(draws.uniform(*view.fill)),
                            torch.from_numpy(draws.normal(view.centre_jitter * S, (2,))))  # (B, 3, 3)
        batch = {"K": K.float(), "joints3d": joints.float(), "verts": verts.float(),
                 "joints2d": perspective_projection(joints, K).float(), "mano_pose": pose, "mano_shape": shape,
                 "is_right": is_right}
        samples = [{key: value[i] for key, value in batch.items()} for i in range(len(indices))]
        # 3. the looks: light, skin (and a sleeve from 4 cm past the wrist half of the time), background
        light, ambient = random_lights(draws)
        skin, sleeve = skin_colors(draws), draws.uniform(0.05, 0.95, (3,))
        forearm = np.where(draws.chance(0.5)[:, None], sleeve, skin)
        looks = {key: torch.from_numpy(value).float() for key, value in (
            ("light", light), ("ambient", ambient), ("skin", skin), ("forearm", forearm),
            ("background", background_patterns(draws)))}
        looks["jitter"] = [None] * len(indices)  # the colour factors of each sample's augmentation
        # 4. augmentation moves the camera before rendering (and jitters colours after)
        if self.augment:
            for i, index in enumerate(indices):
                aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, AUGMENT_STREAM),
                                          self.augment_config, K[i], S, samples[i]["joints3d"])
                samples[i], looks["jitter"][i] = augment_hand_labels(samples[i], aug), aug.color
        return samples, looks


# The synthetic demo's camera (train.py): hands roughly upright with the palm or the back towards the
# camera (HandViewConfig's default spreads roll and tilt three times wider). The PA metrics and the
# mean-hand baseline ignore the global rotation, so this does not make the bar lower; it leaves a
# two-core CPU's few thousand steps for the finger articulation, which is what the metrics measure.
DEMO_HAND_VIEW = HandViewConfig(roll_std_deg=20.0, tilt_std_deg=20.0)




# ---------------------------------------------------------------------------------------------
# 7. Synthetic bodies (posed by the body priors of section 3, which explain the rest T-pose)


class _SyntheticBodyBase(torch.utils.data.Dataset):
    """Shared by the body datasets: the lazily loaded model, set_epoch, pickling, index checks."""

    def __init__(self, num_samples, seed, vary_with_epoch, model_dir):
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.vary_with_epoch, self.model_dir = vary_with_epoch, model_dir
        self.epoch = 0
        self._model = None
        self._scratch = None  # the renderer's z-buffer (`data.scratch_zbuffer`)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __getstate__(self):
        return dict(self.__dict__, _model=None, _scratch=None)  # rebuilt in each worker from the cache folder

    @property
    def model(self):
        if self._model is None:
            self._model = self._load_model()
            self.rig = body_rig(self._model)
        return self._model

    def _rng(self, index):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {self.num_samples} samples")
        return sample_rng(self.seed, self.epoch if self.vary_with_epoch else 0, index)

    def _sample_smpl_pose(self, rng):
        """SMPL pose (24, 3) axis-angle (global orientation first) and shape (10,), float32."""
        self.model
        if self.pose_config.prior == "actions":
            R = sample_action_body(rng)
        else:
            R = sample_plausible_body(rng, self.rig["rest_joints"], self.rig["parents"], self.pose_config)
        hands = torch.deg2rad(normal(rng, 10.0, (2, 3)))  # SMPL's hand joints 22, 23: a little play
        pose = torch.cat([matrix_to_axis_angle(R), hands]).float()  # (24, 3)
        shape = torch.randn(10, generator=rng, dtype=torch.float64).clamp(-2.5, 2.5).float()
        return pose, shape


class SyntheticPoses(_SyntheticBodyBase):
    """SMPL poses only, standing in for AMASS (GenHMR's pose tokenizer): {smpl_pose (24, 3)
    axis-angle, global orientation first; smpl_shape (10,)}.

    The same distribution as SyntheticBodies, and the same draws: with equal seed (and no
    augmentation there), SyntheticPoses(n, seed)[i] is the pose and shape of SyntheticBodies(n,
    seed)[i]. See `sample_body_pose` (articulation, with a cheap self-intersection test) and
    `sample_body_orientation` (global orientation in camera coordinates: upright, half of the
    people turned towards the camera). Cheap: no rendering, about 2 ms a sample.
    """

    def __init__(self, num_samples, seed=0, vary_with_epoch=False, pose_config=None, model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        self.pose_config = pose_config or BodyPoseConfig()

    def _load_model(self):
        return body_model("smpl", self.model_dir)

    def __getitem__(self, index):
        pose, shape = self._sample_smpl_pose(self._rng(index))
        return {"smpl_pose": pose, "smpl_shape": shape}


class SyntheticBodies(_SyntheticBodyBase):
    """Rendered SMPL people in person crops, HMR2.0 / GenHMR style.

    Keys: data.py's bodies (its module docstring): image, K, joints3d, joints2d, verts, smpl_pose,
    smpl_shape, cam_t.

    Distribution: poses as `SyntheticPoses` (same draws for the same seed); betas N(0, 1) clamped
    to [-2.5, 2.5]; the person centred in the crop (3% jitter), the box's larger relative side
    75-90% of the crop. focal_length=5000 (default) renders through HMR2.0's fixed camera (5000
    pixels for a 256 crop, principal point at the centre: nearly orthographic, what GenHMR's
    camera head assumes); None, through a real camera 2.5-8 m away. colors="clothes": shirt (short
    or long sleeves), trousers or shorts, shoes, hair, skin tone; "suit": one fixed colour per body
    part (`suit_colors`). Light as SyntheticHands; background "random" as SyntheticHands, "flat" one
    colour plus N(0, 0.03^2) noise per pixel. pose_config.prior="actions": GenHMR's tiny prior (`sample_action_body`).
    augment=True moves the camera (rotation, zoom, shift; no flip: the pose distribution is
    already symmetric) before rendering and jitters colours after. background="black": masks.
    A DataLoader fetches a batch through `__getitems__` (meshes skinned together, images rendered
    render_chunk per pass). Speed: `python -m lab.bench --data-bench`.
    """

    def __init__(self, num_samples, image_size=256, seed=0, augment=False, focal_length=5000.0, vary_with_epoch=False,
                 augment_config=None, pose_config=None, view_config=None, background="random", colors="clothes",
                 model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        _check_look(type(self).__name__, colors, background, ("random", "flat", "black"))
        self.background, self.colors = background, colors
        self.image_size, self.augment, self.focal_length = image_size, augment, focal_length
        self.augment_config = augment_config or AugmentConfig(flip_prob=0.0)
        self.pose_config, self.view_config = pose_config or BodyPoseConfig(), view_config or BodyViewConfig()

    def _load_model(self):
        return body_model("smpl", self.model_dir)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """The samples of a list of indices (DataLoader asks for a batch this way): the meshes
        skinned together (`skinning`), the images rendered render_chunk at a time. Each
        sample depends only on its own (seed, epoch, index): __getitems__(indices)[k] is exactly
        self[indices[k]]."""
        self.model
        rngs = [self._rng(index) for index in indices]
        pose, shape = (torch.stack(x) for x in zip(*(self._sample_smpl_pose(rng) for rng in rngs)))
        verts, joints = skinning("smpl", self.model_dir, torch.float32)(pose, shape)  # (B, 6890, 3), (B, 24, 3)
        samples, looks = zip(*(self._labels(*args) for args in zip(rngs, indices, pose, shape, verts, joints)))
        if self.background == "random":  # the last draws
            patterns = torch.from_numpy(background_patterns(Draws(rngs))).float()  # (B, 3, L, L)
        else:  # "black": none
            patterns = [flat_background(rng, image_hw(self.image_size)) if self.background == "flat" else None
                        for rng in rngs]
        for look, pattern in zip(looks, patterns):
            look["background"] = pattern
        for start in range(0, len(samples), self.render_chunk):
            chunk = slice(start, start + self.render_chunk)
            for sample, look, image in zip(samples[chunk], looks[chunk], self._images(samples[chunk], looks[chunk])):
                sample["image"] = color_jitter(image, look["jitter"]) if self.augment else image
        return list(samples)

    render_chunk = 8  # images per renderer pass, as SyntheticHands

    def _labels(self, rng, index, pose, shape, verts, joints, frame=None):
        """One sample's labels (all keys but image) from its pose (24, 3) and shape (10,) and their
        mesh verts (6890, 3) and joints (24, 3), and its look: color (6890, 3), light (3,),
        ambient (), jitter (3,) colour factors (the background comes after, for the whole batch).
        frame: the points (N, 3) the crop is placed around (default: verts)."""
        verts, joints = verts.double(), joints.double()
        # 1. the crop
        cam_t, K = place_in_crop(rng, verts if frame is None else frame.double(), self.image_size, self.view_config,
                                 self.focal_length)
        sample = {"K": K, "verts": verts + cam_t, "joints3d": joints + cam_t, "smpl_pose": pose, "smpl_shape": shape,
                  "cam_t": cam_t}
        # 2. augmentation: a rotation Rz about the optical axis turns the global orientation to Rz R
        #    and, since SMPL turns about its root joint J0, moves cam_t to Rz (J0 + cam_t) - J0
        look = {"jitter": torch.ones(3)}
        if self.augment:
            aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, AUGMENT_STREAM),
                                      replace(self.augment_config, flip_prob=0.0), K, self.image_size)
            Rz = aug.rotation
            sample["verts"], sample["joints3d"] = sample["verts"] @ Rz.T, sample["joints3d"] @ Rz.T
            sample["cam_t"] = Rz @ (joints[0] + cam_t) - joints[0]
            pose = pose.clone()
            pose[0] = matrix_to_axis_angle(Rz @ axis_angle_to_matrix(pose[0].double())).float()
            sample["smpl_pose"], sample["K"], look["jitter"] = pose, aug.K, aug.color
        sample["joints2d"] = perspective_projection(sample["joints3d"], sample["K"])
        sample = {key: value.float() for key, value in sample.items()}
        # 3. the look
        light, ambient = (torch.as_tensor(x[0]).float() for x in random_lights(Draws([rng])))
        look.update(light=light, ambient=ambient, color=suit_colors(self.rig["part"]) if self.colors == "suit"
                    else outfit_colors(rng, self.rig["part"], self.rig["hair"]))
        return sample, look

    def _images(self, samples, looks):
        """The images (B, 3, H, W) of samples (from `_labels`) with their looks, in one renderer pass."""
        height, width = image_hw(self.image_size)
        backgrounds = None
        if self.background == "random":
            backgrounds = upsample_backgrounds(torch.stack([look["background"] for look in looks]), height, width)
        elif self.background == "flat":
            backgrounds = torch.stack([look["background"] for look in looks])
        self._scratch = scratch_zbuffer(self._scratch, len(samples) * height * width)
        return render_batch(torch.stack([s["verts"] for s in samples]), self.rig["faces"],
                       torch.stack([s["K"] for s in samples]), (height, width),
                       *(torch.stack([look[key] for look in looks]) for key in ("color", "light", "ambient")),
                       backgrounds, cull_backfaces=True, draw_on_background=True,
                            zbuffer=self._scratch)[0]


# A controlled ambiguity (GenHMR's UGS, docs/history.md "Where UGS must matter"): the right arm hangs
# down or is raised, a fair coin deciding, and a flat occluder covers every pixel where the two readings
# differ, so the image is the same for both and only the pose tokens' joint distribution can say that
# the arm is one way or the other, never half of each. Readings: the right shoulder's (SMPL joint 17)
# local rotation from the actions prior's "neutral" (down) and "arms_up" means, plus the same
# N(0, 0.1^2) per component in both; the rest of the body is the actions prior's, shared.
AMBIGUOUS_JOINT = 17  # SMPL right shoulder
AMBIGUOUS_READINGS = ((0.0, 0.0, 1.25), (0.0, 0.0, -1.1))  # down, up (axis-angle, radians)
AMBIGUOUS_MOVED = (19, 21, 23)  # the joints the two readings place differently: elbow, wrist, hand


def ambiguous_arm(pose, rng):
    """pose (24, 3) -> (the pose with the right arm in a reading drawn by a fair coin, the other reading's
    pose, the index of the drawn reading (0 down, 1 up))."""
    readings = torch.tensor(AMBIGUOUS_READINGS, dtype=pose.dtype)
    noise = normal(rng, 0.1, (3,)).to(pose.dtype)
    true = int(torch.rand((), generator=rng) < 0.5)
    poses = pose.clone().expand(2, -1, -1).clone()
    poses[:, AMBIGUOUS_JOINT] = readings + noise
    return poses[true], poses[1 - true], true


class AmbiguousPoses(SyntheticPoses):
    """SyntheticPoses with `ambiguous_arm`'s right arm (the tokenizer of the ambiguous experiment)."""

    def __getitem__(self, index):
        rng = self._rng(index)
        pose, shape = self._sample_smpl_pose(rng)
        return {"smpl_pose": ambiguous_arm(pose, rng)[0], "smpl_shape": shape}


class AmbiguousBodies(SyntheticBodies):
    """SyntheticBodies whose right arm is in one of two readings (`ambiguous_arm`) under an occluder that
    covers every pixel where the readings differ: the crop is placed around both readings' meshes and the
    occluder is the box of the projections of every vertex that moves between them (+ 1 px), one flat
    colour. Extra keys: smpl_pose_other (24, 3), joints3d_other (24, 3) (the other reading, camera
    coordinates), reading () int64 (0 down, 1 up), occluder (4,) [x0, y0, x1, y1] pixels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.augment:
            raise ValueError("AmbiguousBodies: augment=True would move the occluder off the arm; not supported")

    def _sample_smpl_pose(self, rng):
        pose, shape = super()._sample_smpl_pose(rng)
        return ambiguous_arm(pose, rng)[0], shape

    def _labels(self, rng, index, pose, shape, verts, joints, frame=None):
        # the other reading from the drawn one: the same noise, the other mean
        readings = torch.tensor(AMBIGUOUS_READINGS, dtype=pose.dtype)
        true = int((pose[AMBIGUOUS_JOINT] - readings).norm(dim=-1).argmin())
        other = pose.clone()
        other[AMBIGUOUS_JOINT] = pose[AMBIGUOUS_JOINT] - readings[true] + readings[1 - true]
        verts_o, joints_o = skinning("smpl", self.model_dir, torch.float32)(other[None], shape[None])
        verts_o, joints_o = verts_o[0].double(), joints_o[0].double()
        both = torch.cat([verts.double(), verts_o])  # the crop is placed around both readings
        sample, look = super()._labels(rng, index, pose, shape, verts, joints, frame=both)
        cam_t = sample["cam_t"].double()
        moved = (verts.double() - verts_o).norm(dim=-1) > 1e-4
        uv = perspective_projection(torch.cat([verts.double()[moved], verts_o[moved]]) + cam_t, sample["K"].double())
        height, width = image_hw(self.image_size)
        box = torch.cat([(uv.amin(0) - 1).floor().clamp_min(0), (uv.amax(0) + 1).ceil()]).minimum(
            torch.tensor([width, height, width, height], dtype=uv.dtype))
        look["occluder"] = (box, uniform(rng, 0.1, 0.9, (3,)).float())
        sample.update(smpl_pose_other=other.float(), joints3d_other=(joints_o + cam_t).float(),
                      reading=torch.tensor(true), occluder=box.float())
        return sample, look

    def _images(self, samples, looks):
        images = super()._images(samples, looks)
        for image, look in zip(images, looks):
            (x0, y0, x1, y1), colour = look["occluder"]
            image[:, int(y0):int(y1), int(x0):int(x1)] = colour[:, None, None]
        return images


class SyntheticWholeBody(_SyntheticBodyBase):
    """Rendered SMPL-X people with both hands, for HMR-Adapter (a SMPLer-X-style body path and a
    HaMeR-style hand path that crops the hands out of the same image).

    Keys: data.py's whole bodies (its module docstring; per hand, `data.WholeBodyHands`), the image
    image_size (default 256 x 192, SMPLer-X's body input); S_hand_occluded () is 1.0 when an occluder
    was painted over the hand, else 0.0. With hand_images = S > 0, also the hand expert's own training images
    (HaMeR's hand datasets, `hand_render`), per hand: S_hand_image (3, S, S), the hand and forearm alone in a
    square S_hand_image_box (4,) (body-image pixels) about the hand, on a pattern background, in its own light,
    its fingers drawn again from the broad prior (`HandPoseConfig()`, a hand dataset's, independent of the body),
    with their labels S_hand_image_mano_pose (16, 3) (the body's wrist, those fingers) and S_hand_image_joints2d
    (21, 2) (body-image pixels); and S_hand_target_image (3, S, S) in S_hand_target_image_box (4,): the person's
    own hand (the S_hand_* labels) drawn the same way, which parts the expert's gap on these people into pose
    and picture (docs/hmr_adapter.md).
    Distribution: bodies as `SyntheticBodies` but turned towards the camera four times in five
    (so both hands show most of the time: see the test), fingers of both hands from
    `hand_poses` with OBJECT_GRASPS (hands holding objects, as ARCTIC's), each hand's grasp level following its
    elbow (`elbow_grasp`), jaw N(0, 5 deg), expression N(0, 0.5), betas N(0, 1). With probability
    occlusion_prob per hand, an occluder (a flat textured rectangle in front of everything, as an
    object held or passing by) covers `occlusion_cover` (a range) of the hand's box; it is drawn
    from its own random stream, so the scene is the same with and without it.
    """

    def __init__(self, num_samples, image_size=(256, 192), seed=0, augment=False, focal_length=5000.0,
                 vary_with_epoch=False, augment_config=None, pose_config=None, hand_pose_config=None,
                 view_config=None, occlusion_prob=0.0, occlusion_cover=(0.4, 0.9), colors="clothes",
                 background="random", hand_images=0, model_dir=None):
        super().__init__(num_samples, seed, vary_with_epoch, model_dir)
        self.hand_images = int(hand_images)
        _check_look(type(self).__name__, colors, background, ("random", "flat"))
        self.colors, self.background = colors, background
        self.image_size, self.augment, self.focal_length = image_size, augment, focal_length
        self.occlusion_prob, self.occlusion_cover = float(occlusion_prob), tuple(occlusion_cover)
        self.augment_config = augment_config or AugmentConfig(flip_prob=0.0)
        self.pose_config = pose_config or BodyPoseConfig(yaw_frontal_prob=0.8, arm_azimuth=(-10.0, 110.0))
        self.hand_pose_config = hand_pose_config or OBJECT_GRASPS
        self.view_config = view_config or BodyViewConfig()
        self.hand_labeller = WholeBodyHands(image_size, model_dir)

    @property
    def model(self):
        """SMPL-X, its rig and the hand keys' rule (`data.WholeBodyHands`, shared with data.WholeBodyNpz)."""
        if self._model is None:
            self._model, self.rig = self.hand_labeller.model, self.hand_labeller.rig
            self.hand_axes = hand_axes(self.hand_labeller.mano_rest)  # the finger prior in MANO's rest frame
            # each hand with its forearm (the vertices the wrist's, a finger's or the elbow's joint moves most)
            faces, part = self.rig["faces"], self.rig["part"]
            self.arm_faces = {side: faces[torch.isin(part, torch.tensor(joints + (elbow,)))[faces].all(1)]
                              for (side, joints), elbow in zip(SMPLX_HAND_JOINTS.items(), (18, 19))}
        return self._model

    def _sample_pose(self, rng):
        """SMPL-X pose (55, 3) float64 and the right-convention MANO finger poses {side: (15, 3)}."""
        R = sample_plausible_body(rng, self.rig["rest_joints"], self.rig["parents"], self.pose_config)
        pose = torch.zeros(55, 3, dtype=torch.float64)
        pose[:22] = matrix_to_axis_angle(R)
        pose[22] = X * math.radians(abs(float(normal(rng, 5.0))))  # the jaw opens a little
        fingers = {side: torch.from_numpy(hand_poses(Draws([rng]), self.hand_axes, self.hand_pose_config,
                                                     grasp=[elbow_grasp(R[elbow], rng, self.pose_config)])[0])
                   for side, elbow in (("left", 18), ("right", 19))}  # SMPL-X's elbows
        return self._with_fingers(pose, fingers), fingers

    def _with_fingers(self, pose, fingers):
        """The SMPL-X pose (55, 3) with both hands' fingers set from MANO-space finger poses {side: (15, 3)}."""
        pose = pose.clone()
        mano_to_smplx = self.hand_labeller.mano_to_smplx  # MANO's rest hand turned onto SMPL-X's right hand
        pose[40:55] = fingers["right"] @ mano_to_smplx.T  # axis-angle turns with the frame: R aa
        pose[25:40] = mirror_rotation(fingers["left"] @ mano_to_smplx.T)
        return pose

    def __getitem__(self, index):
        rng = self._rng(index)
        # 1. pose, shape, expression, mesh
        self.model
        pose, fingers = self._sample_pose(rng)
        shape = torch.randn(10, generator=rng, dtype=torch.float64).clamp(-2.5, 2.5)
        expression = normal(rng, 0.5, (10,))
        verts, joints = skinning("smplx", self.model_dir, torch.float32)(pose, shape, expression)
        extra = verts[self.hand_labeller.extra_joints]  # smplx's joints 55-75: fingertips, face
        verts, joints = verts.double(), torch.cat([joints, extra]).double()  # (10475, 3), (76, 3)
        # 2. crop, then augmentation as for SyntheticBodies (turn about the optical axis, zoom, shift)
        cam_t, K = place_in_crop(rng, verts, self.image_size, self.view_config, self.focal_length)
        if self.augment:
            aug = sample_augmentation(sample_rng(self.seed, self.epoch, index, AUGMENT_STREAM),
                                      replace(self.augment_config, flip_prob=0.0), K, self.image_size)
            root = joints[0]
            cam_t, K = aug.rotation @ (root + cam_t) - root, aug.K
            pose[0] = matrix_to_axis_angle(aug.rotation @ axis_angle_to_matrix(pose[0]))
            verts, joints = (verts - root) @ aug.rotation.T + root, (joints - root) @ aug.rotation.T + root
        verts, joints = verts + cam_t, joints + cam_t
        sample = {"K": K, "verts": verts, "joints3d": joints[:55], "joints2d": perspective_projection(joints[:55], K),
                  "smplx_pose": pose, "smplx_shape": shape, "smplx_expression": expression, "cam_t": cam_t}
        # 3. render the body, then paint the occluders over it
        light, ambient = (torch.from_numpy(x) for x in random_lights(Draws([rng])))
        look = (suit_colors(self.rig["part"]) if self.colors == "suit" else
                outfit_colors(rng, self.rig["part"], self.rig["hair"]))[None], light, ambient
        if self.background == "flat":
            background = flat_background(rng, image_hw(self.image_size))
        else:
            pattern = torch.from_numpy(background_patterns(Draws([rng]))).float()
            background = upsample_backgrounds(pattern, *image_hw(self.image_size))[0]
        image, _, face = render_batch(verts[None], self.rig["faces"], K[None], self.image_size, *look,
                                      background[None], True)
        world = forward_kinematics(axis_angle_to_matrix(pose[:22]), self.rig["rest_joints"][:22],
                                   self.rig["parents"][:22])[1]  # (22, 3, 3) world rotations
        image = image[0]
        occluder_rng = sample_rng(self.seed, self.epoch, index, _OCCLUDER_STREAM)
        hand_rng = sample_rng(self.seed, self.epoch, index, _HAND_STREAM)
        for side in ("left", "right"):
            sample.update(self.hand_labeller.labels(side, sample, joints, world, fingers[side], face))
            occluded = float(uniform(occluder_rng, 0, 1)) < self.occlusion_prob
            sample[f"{side}_hand_occluded"] = torch.tensor(float(occluded))
            if occluded:
                paint_occluder(image, sample[f"{side}_hand_box"], occluder_rng, self.occlusion_cover)
        if self.hand_images:
            sample.update(self.own_hands(sample, shape, expression, look[0], hand_rng))
        sample = {key: value.float() for key, value in sample.items()}
        sample["image"] = color_jitter(image, aug.color) if self.augment else image
        return sample

    def own_hands(self, sample, shape, expression, colors, rng):
        """The hand images keys of one sample (the class docstring): both hands' fingers drawn again from the broad
        prior, the person posed with them (the same body, wrists and camera), and each hand drawn alone
        (`hand_render`) with those fingers and with the person's own."""
        labeller = self.hand_labeller
        own = {side: torch.from_numpy(hand_poses(Draws([rng]), self.hand_axes, HandPoseConfig())[0])
               for side in ("left", "right")}
        verts, joints = skinning("smplx", self.model_dir, torch.float32)(
            self._with_fingers(sample["smplx_pose"], own), shape, expression)
        joints = torch.cat([joints, verts[labeller.extra_joints]]).double() + sample["cam_t"]
        verts = verts.double() + sample["cam_t"]
        keys = {}
        for side in ("left", "right"):
            joints2d = perspective_projection(labeller.hand_joints(side, joints), sample["K"])
            keys[f"{side}_hand_image_mano_pose"] = torch.cat([sample[f"{side}_hand_mano_pose"][:1], own[side]])
            keys[f"{side}_hand_image_joints2d"] = joints2d
            keys[f"{side}_hand_image"], keys[f"{side}_hand_image_box"] = self.hand_render(
                verts, labeller.hand_box(side, verts, sample["K"]), sample["K"], side, colors, rng)
            keys[f"{side}_hand_target_image"], keys[f"{side}_hand_target_image_box"] = self.hand_render(
                sample["verts"], sample[f"{side}_hand_box"], sample["K"], side, colors, rng)
        return keys

    def hand_render(self, verts, box, K, side, colors, rng):
        """The hand expert's own image of one hand (3, S, S) and its square (4,) in body-image pixels: what a
        hand dataset gives HaMeR, as against the hand in the body image. The hand and its forearm alone
        (`arm_faces`) of verts (V, 3) seen by K (3, 3), in the person's colours, framed about its box (4,) as the
        expert's crops are (HAND_RENDER_FRAMING), rendered at twice the side and averaged down (smooth edges, where
        the body image's hands, about 24 pixels wide at 256 x 192, are drawn without anti-aliasing), on a pattern
        background (the body's is flat), in a light of its own, with no occluder and no body around it."""
        S, (scale, zoom, shift) = self.hand_images, HAND_RENDER_FRAMING
        half = (box[2:] - box[:2]).max() / 2 * scale * float(uniform(rng, 1 - zoom, 1 + zoom))
        centre = (box[:2] + box[2:]) / 2 + normal(rng, shift * 2 * half, (2,))
        square = torch.cat([centre - half, centre + half])
        R = 2 * S
        to_render = torch.tensor([[R / (2 * half), 0.0, -square[0] * R / (2 * half)],
                                  [0.0, R / (2 * half), -square[1] * R / (2 * half)], [0.0, 0.0, 1.0]],
                                 dtype=torch.float64)
        light, ambient = (torch.from_numpy(x) for x in random_lights(Draws([rng])))
        background = upsample_backgrounds(torch.from_numpy(background_patterns(Draws([rng]))).float(), R, R)
        image = render_batch(verts[None], self.arm_faces[side], (to_render @ K)[None], (R, R), colors,
                             light, ambient, background, True)[0]
        return F.avg_pool2d(image, 2)[0], square


def elbow_grasp(elbow, rng, cfg, noise=0.15):
    """A whole body's grasp level for one hand (`hand_poses` step 1) from its elbow's local rotation (3, 3):
    its flexion over the largest (cfg.elbow), + N(0, noise), clipped to [0, 1]. A bent arm holds something and a
    hanging one's hand relaxes, as ARCTIC's hands follow the task (docs/hmr_adapter.md, NOTE H20): so the arm
    chain tells something of the fingers; the gestures of `hand_poses` stay independent of it."""
    flexion = math.degrees(float(matrix_to_axis_angle(elbow).norm()))
    return min(max(flexion / cfg.elbow[1] + float(normal(rng, noise)), 0.0), 1.0)


# the expert's own hand images: the square about a hand box x 1.5 (BASES_TINY.hand_box_scale, the crop it reads in a
# body image), its side x U(0.85, 1.15) and its centre moved N(0, 0.05 x side) per axis, as a detector's boxes vary
HAND_RENDER_FRAMING = (1.5, 0.15, 0.05)
_OCCLUDER_STREAM = 2  # sample_rng(seed, epoch, index, stream): the whole bodies' occluders
_HAND_STREAM = 3  # the expert's own hand images (the body image is the same with and without them)


def paint_occluder(image, box, rng, cover):
    """Paint, in place, a flat rectangle over `cover` = (low, high) of the square box [x0, y0, x1,
    y1] (pixels) of image (3, H, W): its area a U(low, high) share of the box's, its aspect ratio
    U(1/2, 2) (clipped to the box), at a random place inside the box; one random colour, shaded
    by a gradient at a random angle and speckled (an object, not a hole)."""
    x0, y0, x1, y1 = box.tolist()
    side = x1 - x0
    area, aspect = float(uniform(rng, *cover)) * side * side, math.exp(float(uniform(rng, -0.69, 0.69)))
    w, h = min(side, math.sqrt(area * aspect)), min(side, math.sqrt(area / aspect))
    left, top = x0 + float(uniform(rng, 0, side - w)), y0 + float(uniform(rng, 0, side - h))
    H, W = image.shape[-2:]
    cols, rows = torch.arange(W) + 0.5, torch.arange(H) + 0.5  # pixel centres
    inside = ((rows >= top) & (rows < top + h))[:, None] & ((cols >= left) & (cols < left + w))[None]
    angle = float(uniform(rng, 0, 2 * math.pi))
    ramp = ((cols[None] - left) * math.cos(angle) + (rows[:, None] - top) * math.sin(angle)) / max(w, h, 1.0)
    colour = uniform(rng, 0.05, 0.95, (3,)).float()
    noise = torch.rand(H, W, generator=rng) - 0.5
    paint = (colour[:, None, None] * (0.8 + 0.3 * ramp.clamp(-1, 1)) + 0.08 * noise).clamp(0, 1)
    image[:, inside] = paint[:, inside]


# The synthetic demo's people (train.py's GenHMR stages) follow the tiny setting (docs/genhmr.md,
# "Running it"): the actions prior (`sample_action_body`: four correlated modes,
# facing the camera within a quarter turn), a suit coloured by body part, a flat background. A 64 x 48
# crop of clothed people on busy backgrounds with freely moving limbs (BodyPoseConfig's "limbs" prior)
# was not learnable by any image model in two CPU-core minutes (README, "GenHMR"). The mean-pose
# baseline is fitted and scored on the same distribution, so the bar is not lower.
DEMO_BODY_POSE = BodyPoseConfig(prior="actions")
DEMO_BODY_LOOK = dict(colors="suit", background="flat")


# ---------------------------------------------------------------------------------------------
# 8. The trainer's datasets (train.py's MODELS): --data KIND[:PATH] -> a real reader of data.py, else a
#    synthetic set


def hand_dataset(kind, path, split, cfg, seed, num_samples):
    """The hand dataset for a split ("training" | "evaluation") of `--data kind[:path]` at cfg.model.image_size.

    kind "synthetic": SyntheticHands(num_samples) with DEMO_HAND_VIEW; the held-out split is the same
    generator under seed + 1_000_003, not augmented (train.py renders it once). "freihand" / "npz": the
    folder at path, augmented for training as cfg.data.train_augment names (HAND_AUGMENTS; "default" without
    the field). FreiHAND's evaluation split is cropped as cfg.data.eval_crop says (data.FREIHAND_CROPS; "none"
    without the field).
    """
    size, data_cfg = cfg.model.image_size, getattr(cfg, "data", None)
    if kind == "synthetic":
        return SyntheticHands(num_samples, size, seed=seed + (split == "evaluation") * 1_000_003,
                              view_config=DEMO_HAND_VIEW)
    augment = HAND_AUGMENTS[getattr(data_cfg, "train_augment", "default")]
    if kind == "freihand":
        crop = getattr(data_cfg, "eval_crop", "none") if split == "evaluation" else "none"
        return FreiHAND(path, split, size, augment=split == "training", seed=seed, crop=crop, augment_config=augment)
    if kind == "npz":
        return NpzHands(path, split, size, augment=split == "training", seed=seed, augment_config=augment)
    raise ValueError(f"hand_dataset: kind must be 'synthetic', 'freihand' or 'npz', got {kind!r}")


def _synthetic_only(kind, who):
    if kind not in RENDERED_KINDS:
        raise ValueError(f"{who}: --data {kind!r} is not readable here; the body stages read only 'synthetic' or "
                         f"'ambiguous' "
                         f"(convert real data to SyntheticBodies' keys to add a loader)")


def body_pose_dataset(kind, path, split, cfg, seed, num_samples):
    """SMPL poses standing in for AMASS (GenHMR's tokenizer), DEMO_BODY_POSE: SyntheticPoses plus
    "index"; the held-out split (seed + 1_000_003) also carries its mesh (joints3d, verts) to score.
    kind "hmr2" (path TRAIN.npz[,EVAL.npz], `hmr2_files`): the file's SMPL poses (`HMR2Poses`)."""
    held_out = split == "evaluation"
    if kind == "hmr2":
        return Indexed(HMR2Poses(hmr2_files(path, split)), mesh=held_out)
    _synthetic_only(kind, "body_pose_dataset")
    poses = AmbiguousPoses if kind == "ambiguous" else SyntheticPoses
    return Indexed(poses(num_samples, seed=seed + held_out * 1_000_003, pose_config=DEMO_BODY_POSE), mesh=held_out)


def body_dataset(kind, path, split, cfg, seed, num_samples):
    """Rendered SMPL people (GenHMR's images) at cfg.model.image_size, DEMO_BODY_POSE and _LOOK, HMR2.0's camera
    (f = 5000 for a 256 crop), plus "index"; the training split drops "verts" (82 KB a sample that
    no loss reads), the held-out split (seed + 1_000_003) keeps them to score. kind "hmr2" (path
    TRAIN.npz[,EVAL.npz], `hmr2_files`): every row of the file (`HMR2Npz`, num_samples unused), the held-out
    split scored by the benchmarks' protocol (metrics.hmr2_protocol: $HMR_J_REGRESSOR is checked here)."""
    held_out = split == "evaluation"
    if kind == "hmr2":  # every row of the file; the labels' SMPL mesh (joints3d for L_3D, verts to score)
        hmr2_protocol_check(split)
        return Indexed(HMR2Npz(hmr2_files(path, split), cfg.model.image_size), drop=() if held_out else ("verts",),
                       mesh=True)
    _synthetic_only(kind, "body_dataset")
    kind_class = AmbiguousBodies if kind == "ambiguous" else SyntheticBodies
    bodies = kind_class(num_samples, cfg.model.image_size, seed=seed + held_out * 1_000_003,
                             pose_config=DEMO_BODY_POSE, **DEMO_BODY_LOOK)
    return Indexed(bodies, drop=() if held_out else ("verts",))


def wholebody_dataset(kind, path, split, cfg, seed, num_samples):
    """Rendered SMPL-X people with both hands (HMR-Adapter) at cfg.data.image_size in DEMO_BODY_LOOK (a suit
    coloured by body part and finger segment, a flat background: the tiny setting, docs/hmr_adapter.md), half
    of the hands under an occluder (so that body context matters), plus "index"; the training split drops
    "verts" (126 KB a sample that no loss reads), the held-out split (seed + 1_000_003) keeps them. With
    cfg.data.hand_image = S, each hand's own S x S image too, what the tiny hand expert trains on (a hand dataset's).
    kind "wholebody" (path FILE.npz or TRAIN.npz,EVAL.npz, `wholebody_files`): every row of the file
    (`WholeBodyNpz`, num_samples unused), the same keys, so it trains and scores alike."""
    held_out = split == "evaluation"
    if kind == "wholebody":
        return Indexed(WholeBodyNpz(wholebody_files(path, split), cfg.data.image_size),
                       drop=() if held_out else ("verts",))
    if kind != "synthetic":
        raise ValueError(f"wholebody_dataset: --data {kind!r} is not readable here; expected 'synthetic' or "
                         f"'wholebody:FILE.npz' (data.WholeBodyNpz)")
    bodies = SyntheticWholeBody(num_samples, cfg.data.image_size, seed=seed + held_out * 1_000_003,
                                occlusion_prob=0.5, hand_images=cfg.data.hand_image, **DEMO_BODY_LOOK)
    return Indexed(bodies, drop=() if held_out else ("verts",))


# The rendered cache: rendering costs milliseconds a sample; a training run that sees each sample many times
# renders it once (`render_once`, every DDP rank a share) into a tensor file and reads it memory-mapped.


def render_once(dataset, path, rank=0, world_size=1, barrier=lambda: None, worker_init_fn=None):
    """Draw `dataset` into the tensor file `path` unless it exists, and load it memory-mapped (the
    ranks share its pages) as a `data.RenderedSet` (images 8-bit, `data.stack_samples`).

    Each of world_size ranks draws one contiguous share into path.part{rank}, then rank 0 joins
    them; barrier() (e.g. torch.distributed.barrier; a no-op for one process) is called twice by
    every rank. Files are written with `lab.files.atomic_write`, so a crash never leaves a
    half-written cache. The caller names the file after everything the samples depend on;
    `worker_init_fn` starts each rendering process (train.py's: they leave SIGTERM to the rank).
    """
    path = str(path)
    if not os.path.exists(path):  # all ranks agree: the file appears only after the barrier below
        n = len(dataset)
        share = range(n * rank // world_size, n * (rank + 1) // world_size)
        workers = torch.get_num_threads() if torch.get_num_threads() > 1 else 0  # one renderer per core of this rank
        part = stack_samples(dataset, share, workers, worker_init_fn)
        atomic_write(f"{path}.part{rank}", lambda f: torch.save(part, f))
        barrier()
        if rank == 0:
            parts = [torch.load(f"{path}.part{r}", weights_only=True, mmap=True) for r in range(world_size)]
            joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            atomic_write(path, lambda f: torch.save(joined, f))
            for r in range(world_size):
                os.remove(f"{path}.part{r}")
        barrier()
    return RenderedSet(torch.load(path, weights_only=True, mmap=True))
