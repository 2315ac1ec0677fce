"""Synthetic people: a 3-D stick body posed by joint angles, projected, and drawn as filled convex shapes.

The body lives in a frame with x = the person's left, y = up, z = the direction the person faces, in
units of stature (standing height 1.0). A yaw turns it about the vertical axis and the camera looks
along -z with an orthographic projection, so a person at yaw 0 faces the camera and has their left
side on the image's right -- left and right keypoints are where COCO annotators would put them, in
every view. Parts are drawn far-to-near (painter's algorithm) into the image and into a label map
(one label per person and part); keypoint visibility is then read back from that map, so occlusion
by other people, by clutter and by the person's own limbs is exact rather than guessed.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

# Body parts: the label of part p of the person drawn i-th is i * NUM_PARTS + p + 1 (0 = background).
(TORSO_UP, TORSO_LOW, HEAD, NECK, L_UARM, R_UARM, L_FARM, R_FARM, L_HAND, R_HAND,
 L_THIGH, R_THIGH, L_SHIN, R_SHIN, L_FOOT, R_FOOT) = range(16)  # fmt: skip
NUM_PARTS = 16
OCCLUDER_LABEL = 255
MAX_PEOPLE = (OCCLUDER_LABEL - 1) // NUM_PARTS

# The parts on which each COCO-17 keypoint counts as visible (shoulders/hips also on the torso when
# they are not on its far side; see ``PosedFigure.far_side``).
_OWN_PARTS: tuple[tuple[int, ...], ...] = (
    (HEAD,), (HEAD,), (HEAD,), (HEAD,), (HEAD,),
    (L_UARM, TORSO_UP), (R_UARM, TORSO_UP), (L_UARM, L_FARM), (R_UARM, R_FARM),
    (L_FARM, L_HAND), (R_FARM, R_HAND), (L_THIGH, TORSO_LOW), (R_THIGH, TORSO_LOW),
    (L_THIGH, L_SHIN), (R_THIGH, R_SHIN), (L_SHIN, L_FOOT), (R_SHIN, R_FOOT),
)  # fmt: skip
_SHIFT = 4  # sub-pixel bits for OpenCV polygon drawing
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Build:
    """Body proportions in units of stature (joint positions) plus flesh radii."""

    head_r: float
    shoulder_hw: float
    hip_hw: float
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    foot: float
    girth: float  # multiplies every flesh radius and torso width: slim < 1 < heavy


@dataclass(frozen=True)
class Pose:
    """Joint angles in radians; per-limb values are (left, right)."""

    yaw: float  # 0 faces the camera, pi shows the back
    roll: float  # in-image tilt of the whole figure
    lean: float  # torso flexion forward
    bend: float  # torso side bend
    twist: float  # shoulders against hips
    head: tuple[float, float, float]  # yaw, pitch (down +), roll
    shoulder_flex: tuple[float, float]  # 0 arm down, pi/2 forward, pi up
    shoulder_abd: tuple[float, float]  # 0 arm down, pi/2 sideways
    arm_twist: tuple[float, float]  # + turns the elbow's bend plane towards the body
    elbow: tuple[float, float]  # flexion, 0 straight
    hip_flex: tuple[float, float]  # 0 leg down, + forward
    hip_abd: tuple[float, float]
    knee: tuple[float, float]  # flexion, 0 straight


@dataclass(frozen=True)
class Garment:
    colour: tuple[float, float, float]  # BGR
    kind: str  # solid | hstripes | vstripes | checks | noise
    colour2: tuple[float, float, float]
    period: float  # pattern period in units of stature
    amount: float  # noise strength
    seed_xy: tuple[int, int]  # where this garment's noise is cut from the noise tile


@dataclass(frozen=True)
class Appearance:
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    shirt: Garment
    sleeves: int  # 0 none, 1 short, 2 long
    pants: Garment
    long_pants: bool
    shoes: tuple[float, float, float]


# --------------------------------------------------------------------------------------- sampling
SKIN_RGB = ((255, 224, 196), (241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (94, 58, 36))
_HAIR_RGB = ((20, 18, 18), (55, 38, 28), (105, 72, 45), (200, 168, 110), (150, 150, 150), (140, 62, 30))
POSE_KINDS = ("stand", "walk", "raise", "gesture", "sit", "crouch", "random")
_POSE_P = (0.22, 0.24, 0.12, 0.16, 0.10, 0.08, 0.08)


def bgr(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    return (float(rgb[2]), float(rgb[1]), float(rgb[0]))


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(rgb, float) + rng.uniform(-amount, amount, 3), 0, 255)
    return bgr(tuple(c))


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    h, s, v = rng.uniform(), rng.uniform() ** 0.7, rng.uniform(0.12, 0.95)
    return bgr(tuple(255.0 * c for c in colorsys.hsv_to_rgb(h, s, v)))


def _garment(rng: np.random.Generator, colour, kinds: tuple[str, ...], p: tuple[float, ...]) -> Garment:
    return Garment(
        colour=colour,
        kind=str(rng.choice(kinds, p=p)),
        colour2=_random_colour(rng),
        period=float(rng.uniform(0.015, 0.05)),
        amount=float(rng.uniform(0.25, 0.7)),
        seed_xy=(int(rng.integers(0, 512)), int(rng.integers(0, 512))),
    )


def sample_build(rng: np.random.Generator) -> Build:
    s = rng.uniform(0.94, 1.06, 6)
    return Build(
        head_r=float(rng.uniform(0.058, 0.072)),
        shoulder_hw=0.115 * s[0],
        hip_hw=0.085 * s[1],
        upper_arm=0.175 * s[2],
        forearm=0.15 * s[3],
        thigh=0.245 * s[4],
        shin=0.235 * s[5],
        foot=0.13,
        girth=float(rng.uniform(0.8, 1.35)),
    )


def sample_appearance(rng: np.random.Generator) -> Appearance:
    skin = _jitter(rng, SKIN_RGB[int(rng.integers(len(SKIN_RGB)))], 12)
    hair = _jitter(rng, _HAIR_RGB[int(rng.integers(len(_HAIR_RGB)))], 10)
    shirt = _garment(
        rng,
        _random_colour(rng),
        ("solid", "hstripes", "vstripes", "checks", "noise"),
        (0.45, 0.15, 0.07, 0.13, 0.2),
    )
    r = rng.uniform()
    if r < 0.4:  # denim
        pants_colour = _jitter(rng, (60, 80, 130), 25)
    elif r < 0.7:  # black / grey / brown / khaki
        pants_colour = _jitter(
            rng, ((30, 30, 32), (100, 100, 100), (90, 65, 45), (180, 165, 120))[int(r * 40) % 4], 15
        )
    else:
        pants_colour = _random_colour(rng)
    pants = _garment(rng, pants_colour, ("solid", "noise"), (0.65, 0.35))
    shoes = _jitter(rng, (30, 28, 28), 15) if rng.uniform() < 0.7 else _random_colour(rng)
    return Appearance(
        skin=skin,
        hair=hair,
        long_hair=bool(rng.uniform() < 0.3),
        shirt=shirt,
        sleeves=int(rng.choice(3, p=(0.15, 0.45, 0.4))),
        pants=pants,
        long_pants=bool(rng.uniform() < 0.75),
        shoes=shoes,
    )


def sample_yaw(rng: np.random.Generator) -> float:
    """Front-heavy like COCO, with enough side and back views that left/right must be learned."""
    r = rng.uniform()
    if r < 0.4:
        return float(rng.normal(0.0, 0.45))
    if r < 0.55:
        return float(math.pi + rng.normal(0.0, 0.45))
    return float(rng.uniform(-math.pi, math.pi))


def gait_angles(
    phase: float, amp: float, knee_gain: float = 0.8
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """(hip flexion, knee flexion, shoulder flexion) per side of a walk at ``phase`` (radians).

    The knee bends most mid-swing (hip passing forward), arms swing against the legs.
    """
    hip, knee, arm = [], [], []
    for ph in (phase, phase + math.pi):
        hip.append(amp * math.sin(ph) + 0.05)
        knee.append(0.1 + knee_gain * 2 * amp * max(0.0, math.cos(ph)) ** 2)
        arm.append(-0.9 * amp * math.sin(ph) + 0.05)
    return (hip[0], hip[1]), (knee[0], knee[1]), (arm[0], arm[1])


def sample_pose(rng: np.random.Generator, max_roll: float = 0.2, big_roll_p: float = 0.0) -> Pose:
    """A pose of one of ``POSE_KINDS`` with joint angles inside anatomical limits."""
    kind = POSE_KINDS[int(rng.choice(len(POSE_KINDS), p=_POSE_P))]
    u = rng.uniform
    lean, bend, twist = u(-0.05, 0.12), u(-0.08, 0.08), u(-0.2, 0.2)
    sf, sa = [u(-0.25, 0.35), u(-0.25, 0.35)], [u(0.05, 0.3), u(0.05, 0.3)]
    at, el = [u(-0.2, 0.6), u(-0.2, 0.6)], [u(0.0, 0.6), u(0.0, 0.6)]
    hf, ha, kn = [u(-0.1, 0.15), u(-0.1, 0.15)], [u(0.0, 0.18), u(0.0, 0.18)], [u(0, 0.15), u(0, 0.15)]
    if kind == "walk":
        gait = gait_angles(u(0, 2 * math.pi), u(0.25, 0.55), u(0.6, 1.0))
        hf, kn, sf = list(gait[0]), list(gait[1]), list(gait[2])
        el, ha = [u(0.15, 0.7), u(0.15, 0.7)], [u(0.0, 0.08), u(0.0, 0.08)]
    elif kind == "raise":
        for i in (0, 1) if u() < 0.6 else (int(rng.integers(2)),):
            if u() < 0.6:
                sf[i], sa[i] = u(2.3, 3.0), u(0.0, 0.6)
            else:
                sf[i], sa[i] = u(-0.2, 0.4), u(2.0, 2.9)
            el[i] = u(0.0, 0.9)
    elif kind == "gesture":
        for i in (0, 1):
            sf[i], sa[i], at[i], el[i] = u(-0.5, 2.2), u(0.0, 1.8), u(-0.5, 1.2), u(0.0, 2.4)
    elif kind == "sit":
        hf, kn = [u(1.3, 1.7), u(1.3, 1.7)], [u(1.3, 1.8), u(1.3, 1.8)]
        ha = [u(0.0, 0.35), u(0.0, 0.35)]
        lean = u(-0.15, 0.3)
        sf, el = [u(0.2, 1.0), u(0.2, 1.0)], [u(0.6, 1.8), u(0.6, 1.8)]
    elif kind == "crouch":
        hf, kn = [u(1.7, 2.2), u(1.7, 2.2)], [u(2.0, 2.45), u(2.0, 2.45)]
        ha = [u(0.1, 0.5), u(0.1, 0.5)]
        lean = u(0.35, 0.9)
        sf, el = [u(0.3, 1.3), u(0.3, 1.3)], [u(0.3, 1.6), u(0.3, 1.6)]
    elif kind == "random":
        lean, bend, twist = u(-0.25, 0.9), u(-0.3, 0.3), u(-0.5, 0.5)
        for i in (0, 1):
            sf[i], sa[i], at[i], el[i] = u(-0.8, 3.0), u(0.0, 2.9), u(-0.6, 1.3), u(0.0, 2.5)
            hf[i], ha[i], kn[i] = u(-0.5, 2.0), u(-0.15, 0.8), u(0.0, 2.4)
    roll = float(np.clip(rng.normal(0.0, max_roll / 3), -max_roll, max_roll))
    if big_roll_p > 0 and u() < big_roll_p:
        roll = u(-1.2, 1.2)
    return Pose(
        yaw=sample_yaw(rng),
        roll=roll,
        lean=lean,
        bend=bend,
        twist=twist,
        head=(u(-0.9, 0.9) * u(), u(-0.3, 0.45), u(-0.25, 0.25)),
        shoulder_flex=(sf[0], sf[1]),
        shoulder_abd=(sa[0], sa[1]),
        arm_twist=(at[0], at[1]),
        elbow=(el[0], el[1]),
        hip_flex=(hf[0], hf[1]),
        hip_abd=(ha[0], ha[1]),
        knee=(kn[0], kn[1]),
    )


# --------------------------------------------------------------------------------------- 3-D posing
def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _limb_frame(flex: float, abd: float, twist: float, side: float) -> np.ndarray:
    """Rotation taking a limb hanging straight down (local -y, bending in the y-z plane) to its pose."""
    return _rx(-flex) @ _rz(side * abd) @ _ry(-side * twist)


def pose_points(build: Build, pose: Pose) -> dict[str, np.ndarray]:
    """3-D points of the posed body in camera axes (x right, y up, z towards the camera), pelvis at 0."""
    b = build
    torso = _rx(pose.lean) @ _rz(pose.bend) @ _ry(pose.twist)
    half = _rx(pose.lean / 2) @ _rz(pose.bend / 2) @ _ry(pose.twist / 2)
    sh_y, neck_y, hip_y = 0.81 - 0.52, 0.835 - 0.52, 0.0
    g = b.girth
    p: dict[str, np.ndarray] = {}
    p["neck"] = torso @ np.array([0.0, neck_y, 0.0])
    hy, hp, hr = pose.head
    head_rot = torso @ _ry(hy) @ _rx(hp) @ _rz(hr)
    p["head"] = p["neck"] + head_rot @ np.array([0.0, 0.09 + (b.head_r - 0.062), 0.0])
    r = b.head_r
    for name, local in (
        ("head_top", (0.0, r, 0.0)),
        ("nose", (0.0, -0.2 * r, 1.08 * r)),
        ("l_eye", (0.36 * r, 0.12 * r, 0.84 * r)),
        ("r_eye", (-0.36 * r, 0.12 * r, 0.84 * r)),
        ("l_ear", (0.97 * r, -0.02 * r, -0.08 * r)),
        ("r_ear", (-0.97 * r, -0.02 * r, -0.08 * r)),
        ("mouth", (0.0, -0.62 * r, 0.8 * r)),
        ("hair", (0.0, 0.16 * r, -0.22 * r)),
        ("hair_low", (0.0, -1.2 * r, -0.75 * r)),
    ):
        p[name] = p["head"] + head_rot @ np.asarray(local)
    for side, tag in ((1.0, "l"), (-1.0, "r")):
        i = 0 if side > 0 else 1
        sh = torso @ np.array([side * b.shoulder_hw, sh_y, 0.0])
        arm = torso @ _limb_frame(pose.shoulder_flex[i], pose.shoulder_abd[i], pose.arm_twist[i], side)
        e = pose.elbow[i]
        elbow = sh + arm @ np.array([0.0, -b.upper_arm, 0.0])
        fdir = arm @ np.array([0.0, -math.cos(e), math.sin(e)])
        p[f"{tag}_shoulder"], p[f"{tag}_elbow"] = sh, elbow
        p[f"{tag}_wrist"] = elbow + b.forearm * fdir
        p[f"{tag}_hand"] = p[f"{tag}_wrist"] + 0.035 * fdir
        hip = np.array([side * b.hip_hw, hip_y, 0.0])
        leg = _limb_frame(pose.hip_flex[i], pose.hip_abd[i], 0.0, side)
        k = pose.knee[i]
        knee = hip + leg @ np.array([0.0, -b.thigh, 0.0])
        sdir = leg @ np.array([0.0, -math.cos(k), -math.sin(k)])
        ankle = knee + b.shin * sdir
        fwd = leg @ np.array([0.0, -math.sin(k) - 0.2 * math.cos(k), math.cos(k) - 0.2 * math.sin(k)])
        p[f"{tag}_hip"], p[f"{tag}_knee"], p[f"{tag}_ankle"] = hip, knee, ankle
        p[f"{tag}_heel"] = ankle - 0.025 * fwd
        p[f"{tag}_toe"] = ankle + b.foot * 0.8 * fwd
        # torso outline corners: chest (torso frame), waist (half-way frame), pelvis (pelvis frame)
        for dz in (1.0, -1.0):
            key = f"{tag}{'f' if dz > 0 else 'b'}"
            p[f"chest_{key}"] = torso @ np.array(
                [side * (b.shoulder_hw + 0.012) * min(g, 1.15), sh_y + 0.02, dz * 0.055 * g]
            )
            p[f"waist_{key}"] = half @ np.array([side * 0.085 * g, 0.12, dz * 0.06 * g])
            p[f"pelvis_{key}"] = np.array([side * (b.hip_hw + 0.03 * g), -0.035, dz * 0.06 * g])
    yaw = _ry(pose.yaw)
    return {name: yaw @ v for name, v in p.items()}


# --------------------------------------------------------------------------------------- 2-D shapes
@functools.lru_cache(maxsize=64)
def _half_circle(n: int) -> np.ndarray:
    return np.linspace(-math.pi / 2, math.pi / 2, n)


@functools.lru_cache(maxsize=64)
def _circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _segments(r_px: float) -> int:
    return int(min(12, max(3, r_px * 0.7)))


def capsule(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Convex polygon of a tapered capsule from ``a`` (radius ra) to ``b`` (radius rb), in pixels."""
    d = b - a
    phi = math.atan2(d[1], d[0]) if (d[0] or d[1]) else 0.0
    t = _half_circle(_segments(max(ra, rb)))
    tb, ta = phi + t, phi + math.pi + t
    return np.concatenate(
        [
            np.stack([b[0] + rb * np.cos(tb), b[1] + rb * np.sin(tb)], 1),
            np.stack([a[0] + ra * np.cos(ta), a[1] + ra * np.sin(ta)], 1),
        ]
    )


def ellipse(c: np.ndarray, rx: float, ry: float, angle: float) -> np.ndarray:
    unit = _circle(2 * _segments(max(rx, ry)) + 2)
    ca, sa = math.cos(angle), math.sin(angle)
    x, y = unit[:, 0] * rx, unit[:, 1] * ry
    return np.stack([c[0] + x * ca - y * sa, c[1] + x * sa + y * ca], 1)


def hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32))[:, 0, :].astype(np.float64)


@dataclass
class Shape:
    depth: float
    part: int
    points: np.ndarray  # (n, 2) float pixels, convex
    colour: tuple[float, float, float]
    garment: int = 0  # 0 solid colour, 1 shirt texture, 2 pants texture
    outline: bool = True
    shade: float = 1.0  # < 1 for limbs on the far side, in shadow


@dataclass
class PosedFigure:
    """A figure ready to draw: shapes and keypoints in image pixels."""

    shapes: list[Shape]
    keypoints: np.ndarray  # (17, 2) float64
    labelled: np.ndarray  # (17,) False for face points turned away from the camera (COCO leaves them out)
    far_side: np.ndarray  # (17,) True for a shoulder/hip behind the torso
    appearance: Appearance
    stature_px: float

    def bounds(self) -> tuple[float, float, float, float]:
        pts = np.concatenate([s.points for s in self.shapes])
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def translate(self, dx: float, dy: float) -> None:
        off = np.array([dx, dy])
        for s in self.shapes:
            s.points = s.points + off
        self.keypoints = self.keypoints + off


def _shade(c: tuple[float, float, float], f: float) -> tuple[float, float, float]:
    return (min(255.0, c[0] * f), min(255.0, c[1] * f), min(255.0, c[2] * f))


_LIMB_POINTS = ("shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle", "heel", "toe")
_KP_NAMES = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip


def pose_figure(build: Build, pose: Pose, look: Appearance, stature_px: float) -> PosedFigure:
    """Project the posed body to pixels (pelvis at the origin) and lay out its shapes far-to-near."""
    p3 = pose_points(build, pose)
    s = stature_px
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)

    def px(name: str) -> np.ndarray:
        x, y = p3[name][0] * s, -p3[name][1] * s
        return np.array([x * cr - y * sr, x * sr + y * cr])

    def z(name: str) -> float:
        return float(p3[name][2])

    shapes: list[Shape] = []

    def add(depth: float, part: int, pts: np.ndarray, colour, garment=0, outline=True, shade=1.0) -> None:
        shapes.append(Shape(depth, part, pts, colour, garment, outline, shade))

    # Torso halves (slightly behind everything at the same depth, so limbs beside it draw in front).
    chest = np.array([px(f"{k}_{t}") for k in ("chest", "waist") for t in ("lf", "lb", "rf", "rb")])
    pelvis = np.array([px(f"{k}_{t}") for k in ("waist", "pelvis") for t in ("lf", "lb", "rf", "rb")])
    add(0.5 * (z("l_shoulder") + z("r_shoulder")) - 0.03, TORSO_UP, hull(chest), look.shirt.colour, 1)
    add(-0.031, TORSO_LOW, hull(pelvis), look.pants.colour, 2)
    neck = capsule(px("neck"), px("head"), 0.03 * s, 0.028 * s)
    add(z("neck") - 0.01, NECK, neck, look.skin, outline=False)
    # Limbs: (colour, garment) per segment; the far-side ones darker, as they are in shadow.
    upper = (look.shirt.colour, 1) if look.sleeves else (look.skin, 0)
    lower = (look.shirt.colour, 1) if look.sleeves == 2 else (look.skin, 0)
    shin = (look.pants.colour, 2) if look.long_pants else (look.skin, 0)
    thigh = (look.pants.colour, 2)
    g = build.girth * s
    for tag, side in (("l", 0), ("r", 1)):
        q = {k: px(f"{tag}_{k}") for k in _LIMB_POINTS}
        d = {k: z(f"{tag}_{k}") for k in _LIMB_POINTS}
        fa = 0.82 if d["shoulder"] < -0.02 else 1.0
        fl = 0.82 if d["hip"] < -0.02 else 1.0
        for part, (a, b), (ra, rb), (colour, garment), shade in (
            (L_UARM, ("shoulder", "elbow"), (0.033 * g, 0.0255 * g), upper, fa),
            (L_FARM, ("elbow", "wrist"), (0.024 * g, 0.0192 * g), lower, fa),
            (L_THIGH, ("hip", "knee"), (0.05 * g, 0.036 * g), thigh, fl),
            (L_SHIN, ("knee", "ankle"), (0.033 * g, 0.02376 * g), shin, fl),
            (L_FOOT, ("heel", "toe"), (0.026 * s, 0.022 * s), (look.shoes, 0), fl),
        ):
            add((d[a] + d[b]) / 2, part + side, capsule(q[a], q[b], ra, rb), colour, garment, True, shade)
        add(
            d["hand"] + 0.001,
            L_HAND + side,
            ellipse(q["hand"], 0.027 * s, 0.027 * s, 0.0),
            look.skin,
            shade=fa,
        )
    # Head: hair, face, ears and features, ordered by their own depths around the head's.
    r, hr = build.head_r * s, build.head_r
    hc, zh = px("head"), z("head")
    up = p3["head_top"] - p3["head"]
    ang = math.atan2(-up[0], up[1]) + pose.roll
    facing = [z(k) - zh >= -0.1 * hr for k in ("nose", "l_eye", "r_eye", "l_ear", "r_ear")]
    add(zh, HEAD, ellipse(hc, r, 1.18 * r, ang), look.skin)
    add(z("hair") - 0.05 * hr, HEAD, ellipse(px("hair"), 1.04 * r, 1.12 * r, ang), look.hair)
    if look.long_hair:
        add(z("hair_low"), HEAD, capsule(hc, px("hair_low"), 0.95 * r, 0.8 * r), look.hair)
    for name, ok in (("l_ear", facing[3]), ("r_ear", facing[4])):
        if ok:
            add(z(name), HEAD, ellipse(px(name), 0.22 * r, 0.34 * r, ang), look.skin, shade=0.9)
    if r >= 4.0:  # features only where they are more than a pixel or two
        dark, lips = (25.0, 25.0, 35.0), (60.0, 50.0, 150.0)
        for name, ok in (("l_eye", facing[1]), ("r_eye", facing[2])):
            if ok:
                add(zh + 2 * hr, HEAD, ellipse(px(name), 0.13 * r, 0.09 * r, ang), dark, outline=False)
        if z("mouth") > zh:
            add(zh + 2 * hr, HEAD, ellipse(px("mouth"), 0.28 * r, 0.06 * r, ang), lips, outline=False)
        if facing[0]:
            nose = ellipse(px("nose"), 0.14 * r, 0.17 * r, ang)
            add(zh + 2.1 * hr, HEAD, nose, look.skin, outline=False, shade=0.85)
    shapes.sort(key=lambda sh: sh.depth)
    kps = np.array([px(n) for n in _KP_NAMES])
    labelled = np.ones(17, bool)
    labelled[:5] = facing
    far_side = np.zeros(17, bool)  # turned more than ~40 degrees away: behind the chest or the pelvis
    for i, n in ((5, "l_shoulder"), (6, "r_shoulder"), (11, "l_hip"), (12, "r_hip")):
        far_side[i] = z(n) < -0.65 * build.shoulder_hw
    return PosedFigure(shapes, kps, labelled, far_side, look, float(stature_px))


# --------------------------------------------------------------------------------------- drawing
def noise_crop(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random (height, width, 3) window of the noise tile (wrapped around for large images)."""
    tile = noise_tile()
    if width > tile.shape[1] or height > tile.shape[0]:
        reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
        tile = np.tile(tile, reps)
    ox = int(rng.integers(0, tile.shape[1] - width + 1))
    oy = int(rng.integers(0, tile.shape[0] - height + 1))
    return tile[oy : oy + height, ox : ox + width]


@functools.cache
def noise_tile() -> np.ndarray:
    """A fixed 1024x1024x3 noise image (mean 128); crops of it texture clothes and backgrounds cheaply."""
    rng = np.random.default_rng(20240611)
    fine = rng.normal(128.0, 40.0, (1024, 1024, 3))
    coarse = cv2.resize(rng.normal(0.0, 60.0, (128, 128, 3)), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    return np.clip(fine * 0.6 + 51.2 + coarse * 0.6, 0, 255).astype(np.uint8)


def _garment_texture(gm: Garment, stature_px: float, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
    """The garment's pattern over the image window (x0, y0, w, h); None for a plain colour."""
    if gm.kind == "solid" or w <= 0 or h <= 0:
        return None
    c1 = np.array(gm.colour, np.float32)
    c2 = np.array(gm.colour2, np.float32)
    period = max(2.0, gm.period * stature_px)
    if gm.kind in ("hstripes", "vstripes"):
        n = h if gm.kind == "hstripes" else w
        o = y0 if gm.kind == "hstripes" else x0
        band = ((np.arange(o, o + n) / (period / 2)).astype(np.int64) & 1).astype(bool)
        line = np.where(band[:, None], c2, c1).astype(np.uint8)
        return np.broadcast_to(line[:, None, :] if gm.kind == "hstripes" else line[None, :, :], (h, w, 3))
    if gm.kind == "checks":
        ys = (np.arange(y0, y0 + h) / period).astype(np.int64)
        xs = (np.arange(x0, x0 + w) / period).astype(np.int64)
        cell = ((ys[:, None] + xs[None, :]) & 1).astype(bool)
        return np.where(cell[:, :, None], c2.astype(np.uint8), c1.astype(np.uint8))
    tile = noise_tile()
    sx, sy = (gm.seed_xy[0] + x0) % 512, (gm.seed_xy[1] + y0) % 512
    crop = tile[sy : sy + min(h, 512), sx : sx + min(w, 512)]
    if crop.shape[0] < h or crop.shape[1] < w:
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
    base = np.empty((h, w, 3), np.uint8)
    base[:] = np.clip(c1 - 128.0 * gm.amount, 0, 255).astype(np.uint8)
    return cv2.addWeighted(crop, gm.amount, base, 1.0, 0.0)


def paint_figure(img: np.ndarray, labels: np.ndarray, fig: PosedFigure, index: int) -> None:
    """Draw ``fig`` into ``img`` (BGR uint8) and ``labels`` (uint8), as the ``index``-th person."""
    if index >= MAX_PEOPLE:
        raise ValueError(f"at most {MAX_PEOPLE} people fit in the label map")
    H, W = labels.shape
    x0, y0, x1, y1 = fig.bounds()
    bx0, by0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
    bx1, by1 = min(W, int(math.ceil(x1)) + 2), min(H, int(math.ceil(y1)) + 2)
    if bx1 <= bx0 or by1 <= by0:
        return
    look = fig.appearance
    tex: dict[int, np.ndarray | None] = {}
    outline = fig.stature_px >= 90
    base = index * NUM_PARTS + 1
    for sh in fig.shapes:
        pts = np.round(sh.points * _ONE).astype(np.int32)
        colour = _shade(sh.colour, sh.shade) if sh.shade != 1.0 else sh.colour
        label = base + sh.part
        if sh.garment:
            if sh.garment not in tex:
                gm = look.shirt if sh.garment == 1 else look.pants
                tex[sh.garment] = _garment_texture(gm, fig.stature_px, bx0, by0, bx1 - bx0, by1 - by0)
            t = tex[sh.garment]
        else:
            t = None
        if t is None:
            cv2.fillConvexPoly(img, pts, colour, cv2.LINE_8, _SHIFT)
            cv2.fillConvexPoly(labels, pts, label, cv2.LINE_8, _SHIFT)
        else:
            px0 = max(bx0, int(sh.points[:, 0].min()) - 1)
            py0 = max(by0, int(sh.points[:, 1].min()) - 1)
            px1 = min(bx1, int(sh.points[:, 0].max()) + 2)
            py1 = min(by1, int(sh.points[:, 1].max()) + 2)
            if px1 <= px0 or py1 <= py0:
                continue
            mask = np.zeros((py1 - py0, px1 - px0), np.uint8)
            cv2.fillConvexPoly(
                mask, pts - np.array([px0 * _ONE, py0 * _ONE], np.int32), 1, cv2.LINE_8, _SHIFT
            )
            m = mask.view(bool)
            patch = t[py0 - by0 : py1 - by0, px0 - bx0 : px1 - bx0][m]
            img[py0:py1, px0:px1][m] = patch if sh.shade == 1.0 else (patch * sh.shade).astype(np.uint8)
            labels[py0:py1, px0:px1][m] = label
        if outline and sh.outline:
            cv2.polylines(img, [pts], True, _shade(colour, 0.55), 1, cv2.LINE_8, _SHIFT)


def keypoint_visibility(labels: np.ndarray, fig: PosedFigure, index: int) -> np.ndarray:
    """(17, 3) float32 [x, y, v]: v=2 seen, 1 hidden (by anyone), 0 outside the image or turned away."""
    H, W = labels.shape
    out = np.zeros((17, 3), np.float32)
    base = index * NUM_PARTS + 1
    for k in range(17):
        x, y = fig.keypoints[k]
        xi, yi = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        if not fig.labelled[k] or not (0 <= xi < W and 0 <= yi < H):
            continue
        parts = _OWN_PARTS[k]
        if fig.far_side[k]:
            parts = parts[:1]
        seen = int(labels[yi, xi]) - base in parts
        out[k] = (x, y, 2.0 if seen else 1.0)
    return out
