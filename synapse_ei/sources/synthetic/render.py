"""Render a synthetic serial-section EM volume around known synapses.

The volume imitates osmium-stained EM at 8x8x40 nm: light cytoplasm, dark membranes, a neuropil of
tightly packed processes. Each synapse is a presynaptic bouton (a sphere cut flat by the cleft)
apposed to a postsynaptic process, with a vesicle cloud on the pre side and a postsynaptic density
on the post side. The class cues follow Gray's types: excitatory synapses are asymmetric (thick
PSD, round ~40 nm vesicles), inhibitory ones symmetric (thin PSD, smaller flattened vesicles).

Everything is computed in optical density (OD, -log transmission), which adds where structures
overlap, so the order in which synapses are drawn does not matter. Randomness comes from
``numpy.random.default_rng`` seeded per section or per synapse, so the volume is reproducible
and independent of how it is cut into slabs.

Arrays are XYZ (as CloudVolume), indices relative to the volume's first voxel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import expit

#: nm per voxel of the rendered volume (mip 0), XYZ.
VOXEL_NM = np.array([8.0, 8.0, 40.0])
#: Half size (voxels, XYZ) of the box each synapse is drawn into.
BOX_HALF = (42, 42, 6)

# Seed-sequence tags so each random stream is independent of the others.
_TAG_BACKGROUND, _TAG_SECTION, _TAG_SYNAPSE, _TAG_NOISE = 11, 12, 13, 14

# Imaging model: brightness of unstained cytoplasm, shot/scan noise, per-section drift.
BASE_BRIGHTNESS = 196.0
NOISE_SD = 13.0
SECTION_GAIN_SD = 0.05
SECTION_OFFSET_SD = 6.0
PSF_SIGMA_PX = 0.8
# Neuropil: processes are level sets of a smooth random field computed at 1/4 resolution.
_BG_FACTOR = 4
_BG_SIGMA_LOW = (2.0, 2.0, 1.0)
_BG_HALO = 4
_MEMBRANE_OD = 0.95
_SYNAPSE_MEMBRANE_OD = 1.05
_MEMBRANE_SIGMA_NM = 4.5
# A pixel and a 40 nm section average the stain over their extent; these widen thin structures.
_PIXEL_VAR_NM2 = 8.0**2 / 12.0
_SECTION_NM = 40.0


def _plane_sigma(sigma_nm: float, normal: np.ndarray) -> float:
    """Apparent width of a thin sheet with this normal, averaged over a pixel and a section."""
    tilt_var = (normal[2] * _SECTION_NM) ** 2 / 12.0
    return float(np.sqrt(sigma_nm**2 + _PIXEL_VAR_NM2 + tilt_var))


def _in_plane_basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def _taper(n: int, start: int, full: int, ramp: int) -> np.ndarray:
    """Weights of ``n`` samples starting at offset ``start`` of a box of size ``full``."""
    idx = np.arange(start, start + n, dtype=np.float32)
    dist = np.minimum(idx, full - 1 - idx)
    return np.clip((dist + 1) / (ramp + 1), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Background neuropil
# ----------------------------------------------------------------------------------------------


def _background_low(seed: int, shape: tuple[int, int, int], z0: int, z1: int) -> np.ndarray:
    """Smooth random field at 1/4 xy resolution for sections z0..z1 (with a z halo).

    Raw noise comes from one stream per section, so any slab sees the same field.
    """
    nx = shape[0] // _BG_FACTOR + 3
    ny = shape[1] // _BG_FACTOR + 3
    zs = range(z0 - _BG_HALO, z1 + _BG_HALO)
    raw = np.empty((nx, ny, len(zs)), dtype=np.float32)
    for k, z in enumerate(zs):
        raw[:, :, k] = np.random.default_rng([seed, _TAG_BACKGROUND, z + _BG_HALO]).standard_normal(
            (nx, ny), dtype=np.float32
        )
    field = ndimage.gaussian_filter(raw, _BG_SIGMA_LOW, mode="reflect")
    # Theoretical std of smoothed white noise keeps the scale slab-independent.
    field /= np.float32(np.sqrt(np.prod([1.0 / (2.0 * np.sqrt(np.pi) * s) for s in _BG_SIGMA_LOW])))
    return field[:, :, _BG_HALO : _BG_HALO + (z1 - z0)]


def _upsample_xy(low: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """Bilinear upsampling of a (x, y, z) array by the background factor along x and y.

    Returns a contiguous (z, x, y) array cropped to (nx, ny): torch's interpolation is several
    times faster than numpy indexing here, and deterministic on the CPU.
    """
    import torch

    stack = torch.from_numpy(np.ascontiguousarray(low.transpose(2, 0, 1)))[None]
    up = torch.nn.functional.interpolate(
        stack, scale_factor=_BG_FACTOR, mode="bilinear", align_corners=False
    )
    return np.ascontiguousarray(up[0, :, :nx, :ny].numpy())


def background_od(seed: int, shape: tuple[int, int, int], z0: int, z1: int) -> np.ndarray:
    """Optical density of the neuropil for sections z0..z1, as a (z, x, y) float32 array."""
    low = _background_low(seed, shape, z0, z1)
    gx, gy = np.gradient(low, axis=(0, 1))
    grad = np.sqrt(gx * gx + gy * gy + 1e-3)
    # field / |gradient| is a signed distance (in low-res px) to the membrane at field == 0;
    # a second level set adds smaller processes (axons) between the larger ones.
    width = 0.95  # px: membranes ~ 2 px wide at 8 nm, like the MICrONS EM
    scale = np.float32(_BG_FACTOR / width)
    nz = z1 - z0
    dist = _upsample_xy(np.concatenate([low / grad, (low - 1.3) / grad], axis=2), *shape[:2])
    dist *= scale
    # Processes differ slightly in cytoplasmic tone (which side of the level set they are on).
    tone = np.clip(dist[:nz] * np.float32(0.25 * width), -1, 1)
    tone *= np.float32(0.07)
    tone += np.float32(0.12)
    np.square(dist, out=dist)
    dist *= np.float32(-0.5)
    np.exp(dist, out=dist)
    od = dist[:nz]
    od += dist[nz:]
    od *= np.float32(_MEMBRANE_OD)
    od += tone
    return od


# ----------------------------------------------------------------------------------------------
# Synapses
# ----------------------------------------------------------------------------------------------


def _ellipsoid_distance(
    r2: np.ndarray, d: np.ndarray, radius: float, depth: float, centre: float
) -> np.ndarray:
    """Approximate signed distance (nm) to an ellipsoid of revolution about the cleft normal.

    ``r2`` is the squared distance from the normal axis, ``d`` the position along it; the
    ellipsoid has in-plane semi-axis ``radius``, semi-axis ``depth`` along the normal and its
    centre at ``centre`` on the axis. First-order: level-set value over gradient norm.
    """
    a2, b2 = np.float32(radius**2), np.float32(depth**2)
    dd = d - np.float32(centre)
    g = r2 / a2 + dd * dd / b2 - 1
    grad = 2 * np.sqrt(r2 / (a2 * a2) + dd * dd / (b2 * b2) + np.float32(1e-10))
    return g / grad


def _compartment_centre(cleft_half: float, cleft_radius: float, radius: float, depth: float):
    """Distance of the ellipsoid centre from the cleft so that the cleft plane cuts a disk of
    ``cleft_radius`` out of it."""
    return cleft_half + depth * np.sqrt(max(1 - (cleft_radius / radius) ** 2, 0.0))


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """A cheap smooth step from 0 to 1 over about ``4 * width`` (logistic slope at 0)."""
    out = x * np.float32(0.25 / width)
    out += np.float32(0.5)
    return np.clip(out, 0, 1, out=out)


def _sample_vesicles(
    rng: np.random.Generator, syn, normal: np.ndarray, e1: np.ndarray, e2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vesicle centres (nm, relative to the cleft centre), in-section semi-axes and angles."""
    n = int(syn.n_vesicles)
    c = syn.cleft_width_nm / 2
    h_pre = _compartment_centre(c, syn.cleft_radius_nm, syn.bouton_radius_nm, syn.bouton_depth_nm)
    rv = syn.vesicle_radius_nm
    m = max(4 * n, 8)
    depth = rng.uniform(c + 6 + rv, c + syn.cloud_depth_nm, m)
    # Vesicles gather over the active zone, a little wider than the cleft.
    rad = syn.cleft_radius_nm * 1.15 * np.sqrt(rng.uniform(0, 1, m))
    ang = rng.uniform(0, 2 * np.pi, m)
    pts = (
        depth[:, None] * normal[None]
        + (rad * np.cos(ang))[:, None] * e1[None]
        + (rad * np.sin(ang))[:, None] * e2[None]
    )
    rho = (rad / (syn.bouton_radius_nm - rv - 6)) ** 2 + (
        (depth - h_pre) / (syn.bouton_depth_nm - rv - 6)
    ) ** 2
    pts = pts[rho < 1][:n]
    k = len(pts)
    size = rv * rng.normal(1.0, syn.vesicle_size_cv, k).clip(0.6, 1.5)
    # Flattening: semi-axes a >= b with b/a = flatness (pleomorphic for inhibitory synapses).
    flat = np.clip(syn.vesicle_flatness + rng.normal(0, syn.vesicle_flatness_sd, k), 0.35, 1.0)
    a = size / np.sqrt(flat)
    b = size * np.sqrt(flat)
    return pts, a, b, rng.uniform(0, np.pi, k)


def _vesicle_stamps(
    centre_vox: np.ndarray, pts: np.ndarray, a: np.ndarray, b: np.ndarray, psi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vesicle 2D stamps: absolute voxel indices (K, 3, S) and OD (K, S) per section hit."""
    vox = centre_vox[None] + pts / VOXEL_NM[None]
    rz = np.sqrt(a * b)  # extent along z ~ the mean radius
    out_idx, out_od = [], []
    half = 4
    off = np.arange(-half, half + 1)
    ox, oy = np.meshgrid(off, off, indexing="ij")
    ox = ox.ravel()
    oy = oy.ravel()
    for dz in (-1, 0, 1):
        zsec = np.rint(vox[:, 2]).astype(np.int64) + dz
        # Distance (nm) from vesicle centre to the nearest point of this 40 nm section.
        gap = np.maximum(np.abs(zsec - vox[:, 2]) * VOXEL_NM[2] - VOXEL_NM[2] / 2, 0.0)
        keep = gap < rz * 0.95
        if not keep.any():
            continue
        scale = np.sqrt(1 - (gap[keep] / rz[keep]) ** 2)
        # A thin sliver of a vesicle in a section is fainter: weight by the chord through it.
        weight = np.clip((rz[keep] - gap[keep]) / rz[keep], 0.3, 1.0)
        ka, kb, kpsi = a[keep] * scale, b[keep] * scale, psi[keep]
        cx, cy = vox[keep, 0], vox[keep, 1]
        ix = np.rint(cx).astype(np.int64)[:, None] + ox[None]
        iy = np.rint(cy).astype(np.int64)[:, None] + oy[None]
        dx = (ix - cx[:, None]) * VOXEL_NM[0]
        dy = (iy - cy[:, None]) * VOXEL_NM[1]
        cos, sin = np.cos(kpsi)[:, None], np.sin(kpsi)[:, None]
        u = dx * cos + dy * sin
        v = -dx * sin + dy * cos
        rho = np.sqrt((u / ka[:, None]) ** 2 + (v / kb[:, None]) ** 2)
        r_mean = np.sqrt(ka * kb)[:, None]
        ring_sigma = np.sqrt(3.0**2 + _PIXEL_VAR_NM2)
        od = 0.75 * np.exp(-0.5 * ((rho - 1.0) * r_mean / ring_sigma) ** 2)
        od += 0.25 * expit((1.0 - rho) * r_mean / 2.0)
        od *= weight[:, None]
        iz = np.broadcast_to(zsec[keep][:, None], ix.shape)
        out_idx.append(np.stack([ix, iy, iz], axis=1))
        out_od.append(od)
    if not out_idx:
        return np.zeros((0, 3, ox.size), np.int64), np.zeros((0, ox.size))
    return np.concatenate(out_idx), np.concatenate(out_od)


@dataclass
class SynapseRender:
    """One synapse drawn into its box: where the box starts and what to add there."""

    start: tuple[int, int, int]
    od: np.ndarray
    inside: np.ndarray
    brightness: np.ndarray
    vesicle_index: np.ndarray  # (K, 3, S) absolute voxel indices
    vesicle_od: np.ndarray  # (K, S)

    @property
    def z_end(self) -> int:
        return self.start[2] + self.od.shape[2]


@dataclass
class _Box:
    """The box a synapse is drawn into, clipped to the volume, and its voxel coordinates (nm,
    relative to the synapse centre, broadcastable along x, y and z)."""

    centre: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    full: np.ndarray  # size of the unclipped box
    start_in_box: np.ndarray  # where the clipped box starts in the unclipped one
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray

    def crop(self, values: np.ndarray) -> np.ndarray:
        """The clipped part of an array the size of the unclipped box."""
        return values[
            tuple(slice(s, s + (h - l)) for s, l, h in zip(self.start_in_box, self.lo, self.hi))
        ]


def _synapse_box(syn, shape: tuple[int, int, int]) -> _Box:
    centre = np.array([syn.vx, syn.vy, syn.vz], dtype=np.int64)
    lo = np.maximum(centre - BOX_HALF, 0)
    hi = np.minimum(centre + BOX_HALF + 1, shape)
    px = ((np.arange(lo[0], hi[0]) - centre[0]) * VOXEL_NM[0]).astype(np.float32)[:, None, None]
    py = ((np.arange(lo[1], hi[1]) - centre[1]) * VOXEL_NM[1]).astype(np.float32)[None, :, None]
    pz = ((np.arange(lo[2], hi[2]) - centre[2]) * VOXEL_NM[2]).astype(np.float32)[None, None, :]
    full = 2 * np.array(BOX_HALF) + 1
    return _Box(centre, lo, hi, full, lo - (centre - BOX_HALF), px, py, pz)


def _cleft_normal(syn) -> np.ndarray:
    """Unit normal of the cleft, pointing to the presynaptic side."""
    return np.array(
        [np.cos(syn.phi) * np.cos(syn.theta), np.cos(syn.phi) * np.sin(syn.theta), np.sin(syn.phi)]
    )


def _membranes(
    syn, normal: np.ndarray, r2: np.ndarray, d: np.ndarray, d_curved: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Membrane OD of the bouton and the postsynaptic process (with the axon's axoplasm tone
    inside the bouton), and how much inside them each voxel is (0..2 before clipping).

    Both compartments are ellipsoids cut flat by the (curved) cleft; ``r2`` is the squared
    distance from the normal axis, ``d`` the position along it.
    """
    c = float(syn.cleft_width_nm / 2)
    big_r = float(syn.cleft_radius_nm)
    h_pre = _compartment_centre(c, big_r, syn.bouton_radius_nm, syn.bouton_depth_nm)
    h_post = _compartment_centre(c, big_r, syn.post_radius_nm, syn.post_depth_nm)
    sd_pre = np.maximum(
        _ellipsoid_distance(r2, d, syn.bouton_radius_nm, syn.bouton_depth_nm, h_pre),
        np.float32(c) - d_curved,
    )
    sd_post = np.maximum(
        _ellipsoid_distance(r2, d, syn.post_radius_nm, syn.post_depth_nm, -h_post),
        d_curved + np.float32(c),
    )
    sigma_m = _plane_sigma(_MEMBRANE_SIGMA_NM, normal)
    amp_m = _SYNAPSE_MEMBRANE_OD * np.sqrt(_MEMBRANE_SIGMA_NM**2 + _PIXEL_VAR_NM2) / sigma_m
    k = np.float32(-0.5 / sigma_m**2)
    od = np.exp(sd_pre * sd_pre * k)
    od *= np.float32(syn.membrane_od_scale)  # the axon's membrane darkness (a neuron trait)
    od += np.exp(sd_post * sd_post * k)
    od *= np.float32(amp_m)
    inside_pre = _ramp(-sd_pre, 6.0)
    # The axon's axoplasm tone (a neuron trait): 0 adds exactly nothing.
    od += inside_pre * np.float32(syn.axoplasm_od)
    inside = inside_pre
    inside += _ramp(-sd_post, 6.0)
    return od, inside


def _densities(
    rng: np.random.Generator,
    syn,
    box: _Box,
    normal: np.ndarray,
    r2: np.ndarray,
    d_curved: np.ndarray,
) -> np.ndarray:
    """OD of the postsynaptic density (a band ``psd_thickness_nm`` thick inside the post
    membrane) and the thin presynaptic dense projections, over the active zone."""
    c = np.float32(syn.cleft_width_nm / 2)
    edge = _plane_sigma(3.0, normal)
    fluff = box.crop(rng.uniform(0.55, 1.45, tuple(box.full)).astype(np.float32))
    radial = _ramp(np.float32(syn.psd_radius_frac * syn.cleft_radius_nm) - np.sqrt(r2), 12.0)
    radial *= fluff
    below = -c - d_curved  # depth into the postsynaptic process
    band = _ramp(below, edge)
    band *= _ramp(np.float32(syn.psd_thickness_nm) - below, edge)
    band *= np.float32(syn.psd_od)
    # Presynaptic dense projections: thin on both types.
    above = d_curved - c
    pre = _ramp(above, edge)
    pre *= _ramp(np.float32(syn.pre_density_nm) - above, edge)
    band += pre * np.float32(syn.pre_density_od)
    band *= radial
    return band


def _box_fade(box: _Box) -> np.ndarray:
    """Weights that fade a synapse box out at its faces, so it blends into the neuropil."""
    lo, hi, start, full = box.lo, box.hi, box.start_in_box, box.full
    return (
        _taper(hi[0] - lo[0], start[0], full[0], 8)[:, None, None]
        * _taper(hi[1] - lo[1], start[1], full[1], 8)[None, :, None]
        * _taper(hi[2] - lo[2], start[2], full[2], 1)[None, None, :]
    )


def render_synapse(syn, shape: tuple[int, int, int], seed: int) -> SynapseRender:
    """Draw one synapse (a row of the truth table) into a box around its centre voxel.

    The cleft is a slightly curved disk of radius ``cleft_radius_nm`` whose normal
    ``(theta, phi)`` points to the presynaptic side; the bouton and the postsynaptic process are
    ellipsoids cut flat by the cleft.
    """
    rng = np.random.default_rng([seed, _TAG_SYNAPSE, int(syn.render_index)])
    box = _synapse_box(syn, shape)
    normal = _cleft_normal(syn)
    n0, n1, n2 = (np.float32(v) for v in normal)
    d = box.px * n0 + box.py * n1 + box.pz * n2
    p2 = box.px * box.px + box.py * box.py + box.pz * box.pz
    r2 = np.maximum(p2 - d * d, 0)
    d_curved = d - np.float32(syn.curvature_per_nm) * r2

    od, inside = _membranes(syn, normal, r2, d, d_curved)
    od += _densities(rng, syn, box, normal, r2, d_curved)
    _draw_mitochondria(rng, syn.mitochondria_rate, box.px, box.py, box.pz, od, inside)

    w = _box_fade(box)
    od *= w * np.float32(syn.contrast)
    np.clip(inside, 0, 1, out=inside)
    inside *= w
    # The axon's brightness signature, strongest at the synapse and gone at the box faces.
    brightness = np.exp(p2 * np.float32(-0.5 / 150.0**2))
    brightness *= np.float32(syn.brightness)

    e1, e2 = _in_plane_basis(normal)
    pts, a, b, psi = _sample_vesicles(rng, syn, normal, e1, e2)
    ves_idx, ves_od = _vesicle_stamps(box.centre.astype(float), pts, a, b, psi)
    ves_od = ves_od * syn.contrast
    return SynapseRender(tuple(int(v) for v in box.lo), od, inside, brightness, ves_idx, ves_od)


def _draw_mitochondria(
    rng: np.random.Generator,
    rate: float,
    px: np.ndarray,
    py: np.ndarray,
    pz: np.ndarray,
    od: np.ndarray,
    inside: np.ndarray,
) -> None:
    """Add a Poisson number (mean ``rate``) of mitochondria (dark ellipsoids with cristae) away
    from the cleft, in place."""
    for _ in range(rng.poisson(rate)):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(220, 320)
        cx, cy, cz = dist * np.cos(ang), dist * np.sin(ang), rng.uniform(-120, 120)
        length, width, height = rng.uniform(110, 220), rng.uniform(50, 75), rng.uniform(60, 140)
        axis = rng.uniform(0, np.pi)
        period = rng.uniform(30, 45)
        # Only the sub-box that can hold the mitochondrion is computed.
        reach = length + 20
        sx = slice(*np.searchsorted(px.ravel(), [cx - reach, cx + reach]))
        sy = slice(*np.searchsorted(py.ravel(), [cy - reach, cy + reach]))
        sz = slice(*np.searchsorted(pz.ravel(), [cz - height - 40, cz + height + 40]))
        if sx.start >= sx.stop or sy.start >= sy.stop or sz.start >= sz.stop:
            continue
        ca, sa = np.float32(np.cos(axis)), np.float32(np.sin(axis))
        qx, qy, qz = px[sx] - np.float32(cx), py[:, sy] - np.float32(cy), pz[:, :, sz]
        u = qx * ca + qy * sa
        v = -qx * sa + qy * ca
        w = qz - np.float32(cz)
        rho = np.sqrt((u / length) ** 2 + (v / width) ** 2 + (w / height) ** 2)
        sd = (rho - 1) * np.float32(width)  # approximate distance to the outer membrane (nm)
        body = _ramp(-sd, 5.0)
        cristae = 0.5 + 0.5 * np.cos(u * np.float32(2 * np.pi / period))
        od[sx, sy, sz] += 0.9 * np.exp(-0.5 * (sd / 6.0) ** 2) + body * (0.35 + 0.3 * cristae)
        np.maximum(inside[sx, sy, sz], body, out=inside[sx, sy, sz])


# ----------------------------------------------------------------------------------------------
# Volume
# ----------------------------------------------------------------------------------------------


def _paste_synapses(
    truth: pd.DataFrame,
    shape: tuple[int, int, int],
    z0: int,
    z1: int,
    seed: int,
    cache: dict[int, SynapseRender],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synapse OD, inside-ness and brightness of sections z0..z1, each a (z, x, y) array."""
    nx, ny, _ = shape
    nz = z1 - z0
    # Work in (z, x, y) so each section is contiguous; xyz views index the synapse boxes.
    od_syn = np.zeros((nz, nx, ny), np.float32)
    inside = np.zeros((nz, nx, ny), np.float32)
    bright = np.full((nz, nx, ny), BASE_BRIGHTNESS, np.float32)
    od_xyz, inside_xyz, bright_xyz = (v.transpose(1, 2, 0) for v in (od_syn, inside, bright))
    hz = BOX_HALF[2]
    near = truth[(truth.vz + hz >= z0) & (truth.vz - hz < z1)]
    ves_idx, ves_od = [], []
    for syn in near.itertuples(index=False):
        key = int(syn.render_index)
        rendered = cache.pop(key, None) or render_synapse(syn, shape, seed)
        if rendered.z_end > z1:
            cache[key] = rendered
        zs, ze = rendered.start[2], rendered.z_end
        a, b = max(zs, z0), min(ze, z1)
        if a >= b:
            continue
        sl = (
            slice(rendered.start[0], rendered.start[0] + rendered.od.shape[0]),
            slice(rendered.start[1], rendered.start[1] + rendered.od.shape[1]),
            slice(a - z0, b - z0),
        )
        local = slice(a - zs, b - zs)
        od_xyz[sl] += rendered.od[:, :, local]
        np.maximum(inside_xyz[sl], rendered.inside[:, :, local], out=inside_xyz[sl])
        bright_xyz[sl] += rendered.brightness[:, :, local]
        ves_idx.append(rendered.vesicle_index)
        ves_od.append(rendered.vesicle_od)
    if ves_idx:
        _add_vesicles(od_syn, np.concatenate(ves_idx), np.concatenate(ves_od), z0)
    return od_syn, inside, bright


def _add_vesicles(od_syn: np.ndarray, idx: np.ndarray, vod: np.ndarray, z0: int) -> None:
    """Add vesicle stamps (absolute XYZ voxel indices, OD) to a (z, x, y) slab from z0, in place;
    stamp pixels outside the slab are dropped."""
    nz, nx, ny = od_syn.shape
    vod = vod.astype(np.float32)
    ix, iy, iz = idx[:, 0].ravel(), idx[:, 1].ravel(), idx[:, 2].ravel() - z0
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    flat = np.ravel_multi_index((iz[ok], ix[ok], iy[ok]), od_syn.shape)
    np.add.at(od_syn.reshape(-1), flat, vod.ravel()[ok])


def _image(
    od_syn: np.ndarray, inside: np.ndarray, bright: np.ndarray, seed: int, shape, z0: int, z1: int
) -> np.ndarray:
    """The uint8 (z, x, y) sections: neuropil and synapse OD through the imaging model (light
    transmission, blur, per-section gain and offset, noise). Overwrites ``inside``."""
    nx, ny, _ = shape
    od = background_od(seed, shape, z0, z1)
    inside -= 1
    od *= inside
    od *= -1  # background membranes vanish inside boutons, spines and mitochondria
    od += od_syn
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= bright
    image = ndimage.gaussian_filter(od, (0, PSF_SIGMA_PX, PSF_SIGMA_PX), mode="nearest")
    for k, z in enumerate(range(z0, z1)):
        rng = np.random.default_rng([seed, _TAG_SECTION, z])
        gain = 1.0 + SECTION_GAIN_SD * rng.standard_normal()
        offset = SECTION_OFFSET_SD * rng.standard_normal()
        section = image[k]
        section *= np.float32(gain)
        section += rng.standard_normal((nx, ny), dtype=np.float32) * np.float32(NOISE_SD)
        section += np.float32(offset)
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def render_slab(
    truth: pd.DataFrame,
    shape: tuple[int, int, int],
    z0: int,
    z1: int,
    seed: int,
    cache: dict[int, SynapseRender] | None = None,
) -> np.ndarray:
    """Render sections z0..z1 of the volume as uint8, XYZ.

    ``cache`` carries synapses that reach into the next slab, so each is drawn once when slabs
    are rendered in order; the result is the same with or without it.
    """
    cache = {} if cache is None else cache
    od_syn, inside, bright = _paste_synapses(truth, shape, z0, z1, seed, cache)
    return _image(od_syn, inside, bright, seed, shape, z0, z1).transpose(1, 2, 0)


def iter_slabs(shape: tuple[int, int, int], slab_z: int) -> Iterator[tuple[int, int]]:
    """Section ranges [z0, z1) of ``slab_z`` sections (the last may be shorter)."""
    for z0 in range(0, shape[2], slab_z):
        yield z0, min(z0 + slab_z, shape[2])
