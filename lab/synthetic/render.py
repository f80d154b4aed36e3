"""The deterministic half: render a subject plan into a cine image and its label maps.

`render_subject` paints the static surroundings, contracts the heart over the cine cycle,
applies the centre's contrast curve, bias field and Rician noise and returns int16 images with
labels at ED and ES; `render_labels` computes one frame's labels alone. All randomness (noise,
texture, bias) comes from the plan's own entropy, so the same plan always gives the same voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedcmr.common.labels import Structure
from fedcmr.lab.synthetic.subject import Heart, SubjectPlan


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume coverage of a boundary at signed distance d (mm, inside > 0)."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float):
    """Unit-variance Gaussian-filtered noise in the last two axes (texture, vessels)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    ky = np.fft.fftfreq(shape[-2])[:, None]
    kx = np.fft.rfftfreq(shape[-1])[None, :]
    filt = np.exp(-2 * (math.pi * sigma_px) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape[-2:]).astype(np.float32)
    field /= field.std() + 1e-6
    return field


def _ellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, angle: float) -> np.ndarray:
    """Approximate signed distance (mm, inside > 0) to a rotated ellipse at the origin."""
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = x * ca + y * sa, -x * sa + y * ca
    return (1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * min(a, b)


def _contraction(t: int, plan: SubjectPlan) -> float:
    """0 at ED, 1 at ES: cosine ejection, then rapid filling and diastasis."""
    u = (t - plan.ed) % plan.frames
    systole = (plan.es - plan.ed) % plan.frames
    if u <= systole:
        return 0.5 * (1 - math.cos(math.pi * u / systole))
    v = (u - systole) / (plan.frames - systole)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, 1.6 * v)))


def _background(plan: SubjectPlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Static surroundings (relative intensity) and the body mask, each (nz, ny, nx)."""
    nz, ny, nx = plan.shape
    h, b, tis, sp = plan.heart, plan.body, plan.tissue, plan.spacing
    x = (np.arange(nx, dtype=np.float32) * sp - h.cx)[None, :]
    y = (np.arange(ny, dtype=np.float32) * sp - h.cy)[:, None]
    w = sp
    texture = _smooth_noise(rng, (nz, ny, nx), 3.0 / sp)
    fine = _smooth_noise(rng, (nz, ny, nx), 0.8 / sp)
    depth = _ellipse(x - b.bx, y - b.by, b.a, b.b, b.angle)
    img = np.zeros((nz, ny, nx), np.float32)
    inside = _soft(depth, w)
    fat = inside * (1 - _soft(depth - b.fat, w))
    muscle = _soft(depth - b.fat, w) * (1 - _soft(depth - b.fat - b.muscle, w))
    core = _soft(depth - b.fat - b.muscle, w)
    img += fat * tis.fat * (1 + 0.06 * texture) + muscle * tis.muscle * (1 + 0.08 * texture)
    img += core * tis.soft * (1 + 0.15 * texture)
    marbling = np.clip(1.5 * (_smooth_noise(rng, (nz, ny, nx), 4.0 / sp) - 1.0), 0, 1) * core
    img = img * (1 - marbling) + marbling * tis.fat * (1 + 0.06 * texture)
    lung = np.zeros_like(img)
    for i in range(0, len(b.lungs), 5):
        dx, dy, la, lb, ang = b.lungs[i : i + 5]
        lung = np.maximum(lung, _soft(_ellipse(x - dx, y - dy, la, lb, ang), w))
    vessels = np.clip(fine - 2.2, 0, None) * 0.6
    img = img * (1 - lung) + lung * (tis.lung + vessels) * core
    s = ((plan.z0 + plan.dz * np.arange(nz)) / h.length).astype(np.float32)[:, None, None]
    liver_scale = np.sqrt(np.clip((s - 0.3) / 0.5, 0, 1))
    ldx, ldy, la, lbb = b.liver
    liver = _soft(_ellipse(x - ldx, y - ldy, la, lbb, 0.3) - (1 - liver_scale) * lbb, w)
    img = img * (1 - liver) + liver * tis.liver * (1 + 0.1 * texture)
    aorta = _soft(11.0 - np.hypot(x - 12.0, y - 68.0), w)
    spine = _soft(17.0 - np.hypot(x + 12.0, y - 98.0), w)
    img = img * (1 - aorta) + aorta * tis.blood * 0.95
    img = img * (1 - spine) + spine * (0.45 + 0.1 * texture)
    return np.clip(img * inside, 0, None), inside


@dataclass
class _Planes:
    """Static polar geometry of the heart crop, for a set of z positions."""

    z: np.ndarray  # (P, 1, 1) mm relative to the ED base
    r: np.ndarray  # (P, hy, hx) distance from the LV axis (mm)
    shape_f: np.ndarray  # cavity contour factor (ellipticity, harmonics)
    vm: np.ndarray  # septal concentration 0..1
    fat_f: np.ndarray  # epicardial-fat angular profile 0..1
    u: np.ndarray  # coordinates in the septal frame (tangential, radial toward the RV)
    v: np.ndarray
    cos_t: np.ndarray
    sin_t: np.ndarray
    window: tuple[slice, slice]


def _planes(plan: SubjectPlan, offsets: tuple[float, ...]) -> _Planes:
    nz, ny, nx = plan.shape
    h, sp = plan.heart, plan.spacing
    half = 80.0  # mm around the LV axis: LV, RV, atrium and fat fit inside
    i0, i1 = max(0, int((h.cx - half) / sp)), min(nx, int((h.cx + half) / sp) + 1)
    j0, j1 = max(0, int((h.cy - half) / sp)), min(ny, int((h.cy + half) / sp) + 1)
    zc = plan.z0 + plan.dz * np.arange(nz, dtype=np.float32)
    z = (zc[:, None] + np.asarray(offsets, np.float32)[None, :]).ravel()[:, None, None]
    frac = z / h.length
    x = np.arange(i0, i1, dtype=np.float32)[None, None, :] * sp - h.cx - h.drift_x * frac
    y = np.arange(j0, j1, dtype=np.float32)[None, :, None] * sp - h.cy - h.drift_y * frac
    r = np.hypot(x, y)
    theta = np.arctan2(y, x)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    shape_f = 1 + h.ellipticity * np.cos(2 * (theta - h.ell_angle))
    for k, (a, b) in enumerate(zip(h.harmonics[0::2], h.harmonics[1::2], strict=True)):
        shape_f += a * np.cos((k + 3) * theta) + b * np.sin((k + 3) * theta)
    vm = np.exp(h.kappa * (np.cos(theta - h.septum) - 1))
    fat_f = np.exp(1.5 * (np.cos(theta - h.fat_angle) - 1))
    cs, ss = math.cos(h.septum), math.sin(h.septum)
    v = x * cs + y * ss
    u = -x * ss + y * cs
    return _Planes(
        z=z.astype(np.float32),
        r=r,
        shape_f=shape_f.astype(np.float32),
        vm=vm.astype(np.float32),
        fat_f=fat_f.astype(np.float32),
        u=u,
        v=v,
        cos_t=cos_t,
        sin_t=sin_t,
        window=(slice(j0, j1), slice(i0, i1)),
    )


def _wall(h: Heart, s: np.ndarray, vm: np.ndarray) -> np.ndarray:
    """ED wall thickness (mm) by long-axis position s and septal concentration vm."""
    sc = np.clip(s, 0, 1)
    bump = np.exp(-(((sc - h.bump_s) / h.bump_w) ** 2))
    if h.pattern == "normal":
        f = 1 - 0.3 * sc**2
        return (h.t_free + (h.t_max - h.t_free) * vm) * f
    if h.pattern == "concentric":
        f = 1 - 0.2 * sc**2
        return (h.t_free + (h.t_max - h.t_free) * vm) * f
    if h.pattern == "apical":
        return h.t_free + (h.t_max - h.t_free) * bump * (0.85 + 0.15 * vm)
    return h.t_free * (1 - 0.2 * sc**2) + (h.t_max - h.t_free) * bump * vm


@dataclass
class _Shape:
    """Heart boundaries at one contraction state, on a set of planes (all mm)."""

    s: np.ndarray  # long-axis position (0 base, 1 cavity apex), (P, 1, 1)
    z_base: float
    endo: np.ndarray  # cavity radius by angle
    epi: np.ndarray  # epicardial radius by angle
    rv_d: np.ndarray  # signed distance into the RV ellipse
    rv_on: np.ndarray  # planes with an RV


def _heart_shape(plan: SubjectPlan, pl: _Planes, c: float) -> _Shape:
    """Contract the ED heart to state c: apex fixed, base descends, myocardial area kept."""
    h = plan.heart
    squeeze = 1 - h.shortening * c
    length = h.length * squeeze
    z_base = h.length - length
    s = (pl.z - z_base) / length
    s_in = np.clip(s, 0, 1)
    r_cav = h.r_cavity * np.sqrt(np.clip(1 - s_in**h.taper, 0, 1)) * (s >= 0) * (s < 1)
    endo_ed = r_cav * pl.shape_f
    wall = _wall(h, s, pl.vm)
    radial = 1 - c * (1 - math.sqrt((1 - h.ef) / (1 - h.shortening)))
    endo = endo_ed * radial
    epi = np.sqrt(endo**2 + ((endo_ed + wall) ** 2 - endo_ed**2) / squeeze)
    q = np.clip((pl.z - h.length) / h.cap, 0, 1)  # apical cap below the cavity
    cap_r = _wall(h, np.ones_like(s), pl.vm) / math.sqrt(squeeze) * np.sqrt(1 - q**2)
    epi = np.where(s >= 1, cap_r * (pl.z < h.length + h.cap), epi * (s >= 0))
    rv_g = np.sqrt(np.clip(1 - (np.clip(s, 0, None) / h.rv_reach) ** 2.5, 0, 1))
    rv_g = rv_g * (s >= -0.12)
    rv_k = 1 - c * h.rv_ef
    rv_a, rv_b = h.rv_a * rv_g * rv_k + 1e-3, h.rv_b * rv_g * rv_k + 1e-3
    rv_c = (h.r_cavity + h.t_free) * 0.55 + h.rv_b * 0.6 * (1 - 0.4 * c * h.rv_ef)
    rv_q = np.sqrt((pl.u / rv_a) ** 2 + ((pl.v - rv_c) / rv_b) ** 2)
    return _Shape(s, z_base, endo, epi, (1 - rv_q) * rv_b, rv_g > 0)


def _heart_labels(pl: _Planes, sh: _Shape) -> np.ndarray:
    """Hard labels (internal numbering): myocardium always separates the two cavities."""
    rv = np.where(sh.rv_d > 0, np.uint8(Structure.RV), np.uint8(0))
    return np.where(
        pl.r < sh.endo, np.uint8(Structure.LV), np.where(pl.r < sh.epi, np.uint8(Structure.MYO), rv)
    )


def _heart_image(plan: SubjectPlan, pl: _Planes, sh: _Shape, c: float, base: np.ndarray):
    """Paint atrium, epicardial fat, RV, LV and papillary muscles over the surroundings."""
    h, tis, w = plan.heart, plan.tissue, plan.spacing
    r, s = pl.r, sh.s
    x, y = r * pl.cos_t, r * pl.sin_t
    img = base.copy()
    atrium = _soft(h.r_cavity * 0.95 - np.hypot(x + 4, y - 6), w)
    atrium *= (s < 0) & (pl.z > sh.z_base - 40)
    layers = (
        (atrium, tis.blood * 0.92),
        (_soft(sh.epi + h.fat * pl.fat_f - r, w) * (sh.epi > 0), tis.fat),
        (_soft(sh.rv_d + 2.5, w) * sh.rv_on, tis.myo),
        (_soft(sh.rv_d, w), tis.blood * 0.97),
        (_soft(sh.epi - r, w), tis.myo),
        (_soft(sh.endo - r, w), tis.blood),
    )
    for alpha, value in layers:
        img += alpha * (value - img)
    for angle in h.papillary:
        px, py = 0.7 * sh.endo * math.cos(angle), 0.7 * sh.endo * math.sin(angle)
        pap = _soft(h.pap_r * (1 + 0.3 * c) - np.hypot(x - px, y - py), w)
        pap *= (s > 0.2) & (s < 0.8)
        img += pap * (tis.myo - img)
    return img


@dataclass
class Rendered:
    """A rendered subject: int16 image and internal-numbering labels, both (t, z, y, x)."""

    image: np.ndarray
    labels: np.ndarray  # labelled at ED and ES only (internal Structure numbering)


def _bias(plan: SubjectPlan, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field (coil sensitivity), 1 at the heart, (nz, ny, nx)."""
    nz, ny, nx = plan.shape
    h = plan.heart
    half = 0.5 * max(nx, ny) * plan.spacing
    x = ((np.arange(nx, dtype=np.float32) * plan.spacing - h.cx) / half)[None, None, :]
    y = ((np.arange(ny, dtype=np.float32) * plan.spacing - h.cy) / half)[None, :, None]
    z = ((plan.z0 + plan.dz * np.arange(nz, dtype=np.float32)) / 100.0)[:, None, None]
    k = rng.normal(0, 1, 7)
    k[3:6] = -np.abs(k[3:6])  # coils brighten the periphery less than the near side
    field = (k[0] * x + k[1] * y + 0.3 * k[2] * z + 0.5 * k[3] * x**2 + 0.5 * k[4] * y**2
             + 0.5 * k[5] * x * y - 0.8 * y)  # fmt: skip
    return np.exp(plan.scanner.bias * field / 2).astype(np.float32)


def render_subject(plan: SubjectPlan, frames: Iterable[int] | None = None) -> Rendered:
    """Render the cine (all frames, or those given) on the centre's scanner model."""
    times = list(range(plan.frames)) if frames is None else list(frames)
    rng = np.random.default_rng(np.random.SeedSequence(list(plan.entropy)))
    sc, tis = plan.scanner, plan.tissue
    offsets = (-plan.dz / 4, plan.dz / 4)  # through-slice partial volume: two sub-planes
    pl = _planes(plan, offsets)
    pl_mid = _planes(plan, (0.0,))  # labels are read at the slice centre
    background, body = _background(plan, rng)
    bias = _bias(plan, rng)
    # Air is quieter than tissue, as in real magnitude images after the vendors' background
    # filtering (the real ACDC sample: air std 1-4 units against blood 200-350).
    sigma = tis.noise * sc.scale * tis.gain * (0.15 + 0.85 * body)
    nz = plan.shape[0]
    win = (slice(None), *pl.window)
    base = np.repeat(background[win], len(offsets), axis=0)
    image = np.empty((len(times), *plan.shape), np.int16)
    labels = np.zeros((len(times), *plan.shape), np.uint8)
    gain = sc.scale * tis.gain * bias
    static = gain * np.power(background, sc.gamma)  # the surroundings do not move
    for i, t in enumerate(times):
        c = _contraction(t, plan)
        crop = _heart_image(plan, pl, _heart_shape(plan, pl, c), c, base)
        crop = crop.reshape(nz, len(offsets), *crop.shape[1:]).mean(1)
        signal = static.copy()
        signal[win] = gain[win] * np.power(np.maximum(crop, 0), sc.gamma)
        if t in (plan.ed, plan.es):
            labels[i][win] = _heart_labels(pl_mid, _heart_shape(plan, pl_mid, c))
        noisy = np.hypot(
            signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32),
            sigma * rng.standard_normal(signal.shape, dtype=np.float32),
        )
        image[i] = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    return Rendered(image=image, labels=labels)


def render_labels(plan: SubjectPlan, t: int) -> np.ndarray:
    """Label map (internal numbering, (z, y, x)) at frame t, without rendering the image."""
    pl = _planes(plan, (0.0,))
    out = np.zeros(plan.shape, np.uint8)
    out[(slice(None), *pl.window)] = _heart_labels(
        pl, _heart_shape(plan, pl, _contraction(t, plan))
    )
    return out
