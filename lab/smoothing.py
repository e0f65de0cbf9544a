"""Smoothing over time: the One-Euro filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass
Filter for Noisy Input in Interactive Systems", CHI 2012) on what a mesh-recovery model predicts frame by frame.

A per-frame model jitters: its crop moves with the detector's box, and each frame is predicted alone. The One-Euro
filter is a first-order low-pass filter whose cutoff rises with the signal's speed (as the paper writes it):
    x_hat_t = a(f_c) x_t + (1 - a(f_c)) x_hat_{t-1},   f_c = f_min + beta |dx_hat_t|,   a(f) = 1 / (1 + 1 / (2 pi f dt))
with the speed dx_hat_t itself low-passed at a fixed cutoff d_cutoff: slow motion is smoothed hard (little jitter),
fast motion passes with little lag. Each kind of quantity is filtered in its own space and units:
- rotations on the rotation manifold: the step from the last estimate to the new rotation is taken as a rotation
  vector (the log of a unit quaternion, the shorter of q and -q), scaled by a and applied (a slerp); the speed is
  the angular velocity in rad/s. Filtering raw axis-angle instead averages r and -r' across the half turn (the same
  rotation written two ways) into the identity.
- positions in metres (the root joint's x and y; its depth z, which a monocular model sees worst, has its own
  parameters); the speed is the 3D (or 1D) velocity's norm in m/s.
- the shape: one per sequence, the median over frames (a person's shape does not change).
`offline` runs the filter forwards, then backwards over the result (as a zero-phase filtfilt does): the two lags
cancel, for a file processed whole. `online` is the causal filter alone, for a live stream.

Map: 1. unit quaternions; 2. the filter (`one_euro`, `one_euro_rotations`); 3. the parameters and a motion's
smoothing (`SMOOTHING`, `smooth_motion`).
"""

import math
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------------------------------------
# 1. Unit quaternions (w, x, y, z), float64; rotation vectors (axis x angle, radians)


def quaternion_from_rotvec(v):
    """(..., 3) rotation vectors -> (..., 4) unit quaternions (cos(t/2), sin(t/2) v / t); the Taylor series
    sin(t/2) / t = 1/2 - t^2 / 48 below t = 1e-4."""
    v = torch.as_tensor(v, dtype=torch.float64)
    t = v.norm(dim=-1, keepdim=True)
    small = t < 1e-4
    k = torch.where(small, 0.5 - t * t / 48, torch.sin(t / 2) / torch.where(small, torch.ones_like(t), t))
    return torch.cat([torch.cos(t / 2), k * v], -1)


def quaternion_to_rotvec(q):
    """(..., 4) unit quaternions -> (..., 3) rotation vectors of angle <= pi (q and -q are the same rotation: the
    shorter one is taken). t = 2 atan2(|v|, w); the Taylor series t / sin(t/2) = 2 + t^2 / 12 for |v| < 1e-6."""
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., :1], q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    t = 2 * torch.atan2(s, w)
    small = s < 1e-6
    return v * torch.where(small, 2 / w.clamp_min(1e-12), t / torch.where(small, torch.ones_like(s), s))


def quaternion_multiply(a, b):
    """Hamilton product a b of (..., 4) quaternions: the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def conjugate(q):
    """The inverse of unit quaternions (..., 4)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def continuous_quaternions(q):
    """(T, ..., 4) quaternions over time -> the same rotations with signs chosen so that each frame's quaternion is
    in the half of the sphere of the frame before it (q_t . q_{t-1} >= 0): a sequence without the jumps between
    q and -q that a per-frame conversion makes, as a quaternion curve or a keyframed animation needs."""
    out = [q[0]]
    for x in q[1:]:
        out.append(torch.where((x * out[-1]).sum(-1, keepdim=True) < 0, -x, x))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# 2. The One-Euro filter (Casiez et al. 2012: the filter and its pseudocode)


@dataclass(frozen=True)
class OneEuro:
    """The filter's parameters: min_cutoff f_min (Hz), beta (Hz per unit of speed: per m/s, per rad/s), d_cutoff,
    the speed's own cutoff (Hz; the paper's 1 Hz)."""
    min_cutoff: float
    beta: float
    d_cutoff: float = 1.0


def smoothing_factor(cutoff, dt):
    """a = 1 / (1 + tau / dt) with tau = 1 / (2 pi cutoff): the weight of the new sample in an exponential
    smoother of that cutoff frequency (Casiez et al. 2012)."""
    r = 2 * math.pi * cutoff * dt
    return r / (r + 1)


def _causal(x, fps, p, step, difference):
    """The filter's recursion over time for any space: step(estimate, sample, a) -> new estimate,
    difference(sample, estimate) -> the change (..., D) whose norm over D is the speed."""
    dt = 1.0 / fps
    a_d = smoothing_factor(p.d_cutoff, dt)
    estimate, speed = x[0], torch.zeros_like(difference(x[0], x[0]))
    out = [estimate]
    for sample in x[1:]:
        speed = speed + a_d * (difference(sample, estimate) / dt - speed)  # the low-passed derivative
        cutoff = p.min_cutoff + p.beta * speed.norm(dim=-1, keepdim=True)
        a = 2 * math.pi * cutoff * dt / (2 * math.pi * cutoff * dt + 1)  # smoothing_factor, per element
        estimate = step(estimate, sample, a)
        out.append(estimate)
    return torch.stack(out)


def _two_ways(filter_once, x, mode):
    if mode == "off":
        return x
    if mode not in ("online", "offline"):
        raise ValueError(f"smoothing mode {mode!r}: expected off, online or offline")
    y = filter_once(x)
    return filter_once(y.flip(0)).flip(0) if mode == "offline" else y


def one_euro(x, fps, params, mode="online"):
    """x (T, ..., D) float over T frames at fps -> the One-Euro-filtered sequence in float64. The speed is the norm of
    each D-vector's velocity (D = 1: a scalar's own). mode "online" (causal), "offline" (forwards, then backwards: no
    lag) or "off"."""
    x = torch.as_tensor(x, dtype=torch.float64)
    once = lambda s: _causal(s, fps, params, lambda e, v, a: e + a * (v - e), lambda v, e: v - e)  # noqa: E731
    return _two_ways(once, x, mode)


def one_euro_rotations(rotvecs, fps, params, mode="online"):
    """Rotations (T, ..., 3) as rotation vectors -> the One-Euro-filtered rotations (T, ..., 3), filtered on the
    manifold: each step moves the estimate q_hat towards the new rotation q by the fraction a of the rotation
    between them (a slerp: q_hat exp(a log(q_hat^-1 q))), and the speed is the angular velocity (rad/s). Neither
    the sign of a quaternion nor the axis-angle's wrap at pi can make a jump."""
    q = quaternion_from_rotvec(rotvecs)

    def step(estimate, sample, a):
        delta = quaternion_to_rotvec(quaternion_multiply(conjugate(estimate), sample))  # the shorter way
        return quaternion_multiply(estimate, quaternion_from_rotvec(a * delta))

    def difference(sample, estimate):
        return quaternion_to_rotvec(quaternion_multiply(conjugate(estimate), sample))

    once = lambda s: _causal(s, fps, params, step, difference)  # noqa: E731
    return quaternion_to_rotvec(_two_ways(once, q, mode))


# ---------------------------------------------------------------------------------------------
# 3. The parameters, and a whole motion smoothed


# Chosen on a synthetic clip of each paper with known truth (`python -m lab.clips --measure --sweep --seed 1`,
# docs/video.md): scaling every min_cutoff from 1/4 to 4 moved the offline MPJPE by about 1 % either way while the
# acceleration error rose with the cutoff; these sit in the middle, as a real hand or body moves faster than the
# clip's one change of pose in two seconds. The depth's beta is 0: at a body's distance under HaMeR's demo camera
# its jitter is metres per frame, so any beta made the cutoff follow the jitter.
SMOOTHING = {
    "rotation": OneEuro(min_cutoff=1.5, beta=0.5),  # Hz, Hz per rad/s
    "position": OneEuro(min_cutoff=1.0, beta=2.0),  # the root's x and y: Hz, Hz per m/s
    "depth": OneEuro(min_cutoff=0.5, beta=0.0),  # the root's z: Hz
    "expression": OneEuro(min_cutoff=1.5, beta=0.0),  # SMPL-X expression coefficients
}


def smooth_motion(motion, fps, mode="offline", params=None):
    """A motion over T frames -> the same smoothed. motion: "pose" (T, J, 3) axis-angle rotations (global orientation
    first), "root" (T, 3) the root joint's position (metres, camera frame), "betas" (T, S), optional "expression"
    (T, E). Returns float64 "pose" (T, J, 3), "root" (T, 3), "betas" (S,) (the median of the frames': one shape per
    sequence, also with mode "off"), "expression" (T, E) if given. params: {name: OneEuro} over SMOOTHING."""
    p = dict(SMOOTHING, **(params or {}))
    root = torch.as_tensor(motion["root"], dtype=torch.float64)
    out = {"pose": one_euro_rotations(motion["pose"], fps, p["rotation"], mode),
           "root": torch.cat([one_euro(root[:, :2], fps, p["position"], mode),
                              one_euro(root[:, 2:], fps, p["depth"], mode)], 1),
           "betas": torch.as_tensor(motion["betas"], dtype=torch.float64).median(0).values}
    if motion.get("expression") is not None:
        out["expression"] = one_euro(torch.as_tensor(motion["expression"])[..., None], fps, p["expression"],
                                     mode)[..., 0]
    return out
