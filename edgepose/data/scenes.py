"""Scene layout for synthetic people: cluttered backgrounds, where people stand, occluders, camera effects.

Everything here draws with OpenCV primitives on whole arrays and takes its randomness from the caller's
``numpy.random.Generator``, so a scene is a pure function of its seed and stays fast (a few ms per
640x480 image on one core).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edgepose.data import figures as fg


@dataclass(frozen=True)
class SceneParams:
    """The distributions a scene draws from (a ``Profile`` carries one; see ``edgepose.data.synthetic``)."""

    width: int
    height: int
    min_people: int
    max_people: int
    min_stature: float
    max_stature: float
    truncation_p: float  # chance that a person may extend past the image border
    group_p: float  # chance that a person is placed next to (overlapping) an earlier one
    occluder_p: float  # chance of foreground objects in front of the people
    max_roll: float
    big_roll_p: float
    clutter: tuple[int, int]  # min/max background shapes
    distractors: tuple[int, int]  # min/max limb-like bars
    noise: tuple[float, float]  # sensor noise strength range (0-1 of the tile's std)
    blur_p: float
    photometric: float  # 0: none; >0: brightness/contrast/colour-cast jitter strength
    jpeg_p: float  # chance of a JPEG round trip (compression artefacts)


# --------------------------------------------------------------------------------------- background
def _colour(rng: np.random.Generator, lo: float = 0.0, hi: float = 255.0) -> tuple[float, float, float]:
    """A random colour, mostly muted (like walls, floors and furniture), sometimes vivid."""
    h, s, v = rng.uniform(), 0.9 * rng.uniform() ** 1.6, rng.uniform(lo, hi) / 255.0
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (255.0 * b, 255.0 * g, 255.0 * r)


def _stripes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    period = int(rng.integers(4, 40))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    n = w if rng.uniform() < 0.5 else h
    band = ((np.arange(n) // max(1, period // 2)) & 1).astype(bool)
    line = np.where(band[:, None], a, b).astype(np.uint8)
    if n == w:
        return np.ascontiguousarray(np.broadcast_to(line[None], (h, w, 3)))
    return np.ascontiguousarray(np.broadcast_to(line[:, None], (h, w, 3)))


def draw_background(rng: np.random.Generator, p: SceneParams) -> np.ndarray:
    """Gradient + soft blobs + an optional floor + clutter shapes + limb-like distractor bars + texture."""
    W, H = p.width, p.height
    # Gradient and soft blobs at 1/8 size, then one bilinear upscale: smooth and cheap.
    lw, lh = max(2, W // 8), max(2, H // 8)
    corners = np.array([_colour(rng, 20, 235) for _ in range(4)], np.float32).reshape(2, 2, 3)
    low = cv2.resize(corners, (lw, lh), interpolation=cv2.INTER_LINEAR)
    gh, gw = int(rng.integers(2, 9)), int(rng.integers(2, 12))
    blobs = rng.normal(0.0, rng.uniform(10, 45), (gh, gw, 3)).astype(np.float32)
    low += cv2.resize(blobs, (lw, lh), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(np.clip(low, 0, 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)
    if rng.uniform() < 0.5:  # a floor below a horizon
        y = int(rng.uniform(0.3, 0.75) * H)
        floor = np.full_like(img[y:], np.array(_colour(rng, 20, 200)).astype(np.uint8))
        img[y:] = cv2.addWeighted(img[y:], 0.35, floor, 0.65, 0.0)
    for _ in range(int(rng.integers(p.clutter[0], p.clutter[1] + 1))):
        _clutter_shape(rng, img)
    for _ in range(int(rng.integers(p.distractors[0], p.distractors[1] + 1))):
        _distractor(rng, img, p)
    amp = float(rng.uniform(0.05, 0.3))
    cv2.addWeighted(img, 1.0, fg.noise_crop(rng, W, H), amp, -128.0 * amp, dst=img)
    return img


def _clutter_shape(rng: np.random.Generator, img: np.ndarray) -> None:
    H, W = img.shape[:2]
    kind = int(rng.integers(6))
    c = _colour(rng)
    cx, cy = int(rng.integers(-20, W + 20)), int(rng.integers(-20, H + 20))
    size = int(rng.uniform(8, 0.45 * min(W, H)))
    if kind == 0:
        cv2.rectangle(img, (cx, cy), (cx + size, cy + int(rng.uniform(0.3, 2.0) * size)), c, -1)
    elif kind == 1:
        cv2.circle(img, (cx, cy), size // 2, c, -1)
    elif kind == 2:
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(img, (cx, cy), (size // 2, int(size * rng.uniform(0.1, 0.5))), ang, 0, 360, c, -1)
    elif kind == 3:
        pts = np.array([cx, cy]) + rng.integers(-size, size + 1, (int(rng.integers(3, 7)), 2))
        cv2.fillPoly(img, [pts.astype(np.int32)], c)
    elif kind == 4:
        x1, y1 = cx + int(rng.integers(-size, size + 1)), cy + int(rng.integers(-size, size + 1))
        cv2.line(img, (cx, cy), (x1, y1), c, int(rng.integers(1, 6)))
    else:  # a textured panel (window blinds, shelves, tiles)
        x0, y0 = max(0, cx), max(0, cy)
        x1, y1 = min(W, cx + size), min(H, cy + int(rng.uniform(0.5, 1.5) * size))
        if x1 > x0 and y1 > y0:
            img[y0:y1, x0:x1] = _stripes(rng, x1 - x0, y1 - y0)


def _distractor(rng: np.random.Generator, img: np.ndarray, p: SceneParams) -> None:
    """One to three connected capsules with skin or clothing colours: a limb without a person."""
    H, W = img.shape[:2]
    stature = float(np.exp(rng.uniform(math.log(p.min_stature), math.log(p.max_stature))))
    skin = fg.SKIN_RGB[int(rng.integers(len(fg.SKIN_RGB)))]
    colour = fg.bgr(skin) if rng.uniform() < 0.5 else _colour(rng)
    a = np.array([rng.uniform(0, W), rng.uniform(0, H)])
    ang = rng.uniform(0, 2 * math.pi)
    r = stature * rng.uniform(0.02, 0.05)
    for _ in range(int(rng.integers(1, 4))):
        length = stature * rng.uniform(0.12, 0.26)
        b = a + length * np.array([math.cos(ang), math.sin(ang)])
        pts = np.round(fg.capsule(a, b, r, r * 0.8) * 16).astype(np.int32)
        cv2.fillConvexPoly(img, pts, colour, cv2.LINE_8, 4)
        if stature >= 90:
            cv2.polylines(img, [pts], True, tuple(0.55 * v for v in colour), 1, cv2.LINE_8, 4)
        a, ang, r = b, ang + rng.uniform(-1.8, 1.8), r * 0.85


# --------------------------------------------------------------------------------------- people
def sample_figure(rng: np.random.Generator, p: SceneParams, stature_px: float) -> fg.PosedFigure:
    build = fg.sample_build(rng)
    pose = fg.sample_pose(rng, p.max_roll, p.big_roll_p)
    look = fg.sample_appearance(rng)
    return fg.pose_figure(build, pose, look, stature_px)


def layout_people(rng: np.random.Generator, p: SceneParams) -> list[fg.PosedFigure]:
    """People placed in the image, in drawing order (far to near: the taller, the nearer)."""
    W, H = p.width, p.height
    n = int(rng.integers(p.min_people, p.max_people + 1))
    lo, hi = math.log(p.min_stature), math.log(p.max_stature)
    placed: list[tuple[float, fg.PosedFigure]] = []
    for _ in range(n):
        stature = float(math.exp(rng.uniform(lo, hi)))
        fig = sample_figure(rng, p, stature)
        x0, y0, x1, y1 = fig.bounds()
        bw, bh = x1 - x0, y1 - y0
        if placed and rng.uniform() < p.group_p:  # beside someone already there
            other = placed[int(rng.integers(len(placed)))][1]
            ox0, oy0, ox1, oy1 = other.bounds()
            cx = 0.5 * (ox0 + ox1) + rng.normal(0.0, 0.45) * (ox1 - ox0 + bw) * 0.5
            cy = oy1 - 0.5 * bh + rng.normal(0.0, 0.1) * bh
        else:
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        if rng.uniform() < p.truncation_p:  # may cross the border: centre up to 10% of the box outside
            cx = float(np.clip(cx, -0.1 * bw, W + 0.1 * bw))
            cy = float(np.clip(cy, -0.1 * bh, H + 0.1 * bh))
        else:  # fully inside when it fits
            cx = float(np.clip(cx, 0.5 * bw, W - 0.5 * bw)) if bw < W else W / 2
            cy = float(np.clip(cy, 0.5 * bh, H - 0.5 * bh)) if bh < H else H / 2
        fig.translate(cx - 0.5 * (x0 + x1), cy - 0.5 * (y0 + y1))
        placed.append((stature * rng.uniform(0.85, 1.15), fig))
    placed.sort(key=lambda t: t[0])
    return [f for _, f in placed]


def draw_occluders(rng: np.random.Generator, img: np.ndarray, labels: np.ndarray) -> None:
    """A pole, a box or a sign in front of the people; hidden keypoints become visibility 1."""
    H, W = labels.shape
    for _ in range(int(rng.integers(1, 3))):
        c = _colour(rng)
        if rng.uniform() < 0.5:  # vertical pole
            x, w = int(rng.uniform(0, W)), int(rng.uniform(4, 40))
            pts = np.array([[x, -1], [x + w, -1], [x + w, H], [x, H]], np.int32)
        else:  # box rising from the bottom or a sign
            x, w = int(rng.uniform(-50, W)), int(rng.uniform(30, 200))
            y, h = int(rng.uniform(0.4 * H, H)), int(rng.uniform(20, 150))
            pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.int32)
        cv2.fillConvexPoly(img, pts, c)
        cv2.fillConvexPoly(labels, pts, fg.OCCLUDER_LABEL)
        cv2.polylines(img, [pts], True, tuple(0.6 * v for v in c), 1)


# --------------------------------------------------------------------------------------- camera
def camera_effects(rng: np.random.Generator, img: np.ndarray, p: SceneParams) -> np.ndarray:
    """Blur, photometric jitter, sensor noise and JPEG artefacts, per the profile's strengths."""
    H, W = img.shape[:2]
    if rng.uniform() < p.blur_p:
        sigma = float(rng.uniform(0.4, 1.2))
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if p.photometric > 0:
        gain = 1.0 + rng.uniform(-p.photometric, p.photometric)
        bias = rng.uniform(-40, 40) * p.photometric
        cast = 1.0 + rng.uniform(-0.5, 0.5, 3) * p.photometric
        lut = np.clip((np.arange(256, dtype=np.float32)[:, None] * gain + bias) * cast[None, :], 0, 255)
        img = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    amp = float(rng.uniform(*p.noise))
    if amp > 0:
        cv2.addWeighted(img, 1.0, fg.noise_crop(rng, W, H), amp, -128.0 * amp, dst=img)
    if p.jpeg_p > 0 and rng.uniform() < p.jpeg_p:
        quality = int(rng.integers(30, 90))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


# --------------------------------------------------------------------------------------- video
@dataclass
class _Actor:
    track_id: int
    kind: str  # pacer (walks to and fro, always fully inside) | crosser (walks through) | waver (stands)
    build: fg.Build
    look: fg.Appearance
    stature: float
    x: float
    y: float
    speed: float  # px/s
    rates: np.ndarray  # angular frequencies of the smooth joint-angle trajectories
    phases: np.ndarray
    yaw0: float


def _actor(rng: np.random.Generator, track_id: int, kind: str, p: SceneParams, stature: float) -> _Actor:
    W, H = p.width, p.height
    return _Actor(
        track_id=track_id,
        kind=kind,
        build=fg.sample_build(rng),
        look=fg.sample_appearance(rng),
        stature=stature,
        x=float(rng.uniform(0.15 * W, 0.85 * W)),
        y=float(rng.uniform(0.35 * H, 0.7 * H)),
        speed=float(stature * rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])),
        rates=rng.uniform(0.8, 4.0, 8),
        phases=rng.uniform(0, 2 * math.pi, 8),
        yaw0=fg.sample_yaw(rng),
    )


def _wave(a: _Actor, t: float, i: int) -> float:
    return math.sin(a.rates[i] * t + a.phases[i])


def _actor_pose(a: _Actor, t: float, velocity: float, gait_phase: float) -> fg.Pose:
    amp = 0.5 * min(1.0, abs(velocity) / (0.6 * a.stature))
    hip, knee, arm = fg.gait_angles(gait_phase, amp)
    if a.kind == "waver":
        yaw = a.yaw0 + 0.8 * _wave(a, t, 0)
        sf = (0.7 + 0.7 * _wave(a, t, 1), 0.3 + 0.5 * _wave(a, t, 2))
        sa = (1.0 + 0.9 * _wave(a, t, 3), 0.4 + 0.35 * _wave(a, t, 4))
        el = (1.1 + 0.9 * _wave(a, t, 5), 0.6 + 0.5 * _wave(a, t, 6))
    else:
        yaw = 0.5 * math.pi * math.tanh(velocity / (0.3 * a.stature)) + 0.15 * _wave(a, t, 0)
        sf = arm
        sa = (0.12 + 0.05 * _wave(a, t, 3), 0.12 + 0.05 * _wave(a, t, 4))
        el = (0.35 + 0.2 * _wave(a, t, 5), 0.35 + 0.2 * _wave(a, t, 6))
    return fg.Pose(
        yaw=yaw,
        roll=0.0,
        lean=0.05,
        bend=0.03 * _wave(a, t, 7),
        twist=0.1 * _wave(a, t, 2),
        head=(0.5 * _wave(a, t, 7), 0.1 + 0.1 * _wave(a, t, 1), 0.05 * _wave(a, t, 3)),
        shoulder_flex=sf,
        shoulder_abd=sa,
        arm_twist=(0.2, 0.2),
        elbow=el,
        hip_flex=hip,
        hip_abd=(0.06, 0.06),
        knee=knee,
    )


def video_figures(rng: np.random.Generator, p: SceneParams, num_frames: int, fps: float):
    """Yield, per frame, ``[(track_id, PosedFigure), ...]`` in drawing order.

    Track 0 paces to and fro and is always fully inside the frame (drawn last, nearest); one to three
    others cross the scene (entering and leaving: truncated) or stand and gesture. Every joint angle
    and position is a smooth function of time.
    """
    W, H = p.width, p.height
    pacer = _actor(rng, 0, "pacer", p, float(rng.uniform(0.38, 0.58) * H))
    pacer.y = H / 2 + 0.03 * pacer.stature
    amplitude = max(0.0, W / 2 - 0.45 * pacer.stature - 8)
    period = float(rng.uniform(6.0, 10.0))
    others = [
        _actor(rng, k + 1, str(rng.choice(["crosser", "waver"])), p, float(rng.uniform(0.2, 0.5) * H))
        for k in range(int(rng.integers(1, 4)))
    ]
    others.sort(key=lambda a: a.stature)
    gait = {a.track_id: float(rng.uniform(0, 2 * math.pi)) for a in [*others, pacer]}
    span = W + 0.8 * max(a.stature for a in [*others, pacer])
    dt = 1.0 / fps
    for f in range(num_frames):
        t = f * dt
        frame: list[tuple[int, fg.PosedFigure]] = []
        for a in [*others, pacer]:
            if a.kind == "pacer":
                w = 2 * math.pi / period
                x, v = W / 2 + amplitude * math.sin(w * t), amplitude * w * math.cos(w * t)
            elif a.kind == "crosser":
                v = a.speed
                x = (a.x + v * t + 0.4 * a.stature) % span - 0.4 * a.stature
            else:
                x, v = a.x + 10 * _wave(a, t, 4), 0.0
            gait[a.track_id] += 2 * math.pi * abs(v) * dt / (1.4 * a.stature)
            fig = fg.pose_figure(a.build, _actor_pose(a, t, v, gait[a.track_id]), a.look, a.stature)
            y = a.y + 0.01 * a.stature * math.sin(2 * gait[a.track_id])
            fig.translate(x, y)
            if a.kind == "pacer":  # keep the whole figure inside, whatever the pose
                x0, y0, x1, y1 = fig.bounds()
                fig.translate(
                    max(0.0, 2 - x0) - max(0.0, x1 - (W - 3)), max(0.0, 2 - y0) - max(0.0, y1 - (H - 3))
                )
            frame.append((a.track_id, fig))
        yield frame
