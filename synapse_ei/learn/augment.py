"""The training augmentations, applied to a whole batch at once, and MixUp/CutMix.

:class:`BatchAugmentation` takes a scaled [0, 1] batch, (N, 1, H, W) patches or (N, 1, D, H, W)
cubes, on the CPU (after the loader reads it) or on the training device (after the copy), and
draws every random parameter per sample from one ``torch.Generator``. The geometric ops (flips,
any-angle in-plane rotation, elastic deformation, section slip) are composed into one sampling
grid per cutout and applied by a single bilinear ``grid_sample`` over the batch: every output
pixel is interpolated once, however many ops are on. A cube's sections are the channels of that
call, so they share the sample's in-plane grid (nothing mixes z, 40 nm, with the 4 nm plane); a
slipped section is resampled from the input with its grid shifted. The intensity ops
(brightness/contrast, per-section intensity) are one affine map per section, applied before the
resampling, so pixels moved in from outside stay mid-grey; then the noise (each sample's window
of one pool of normals drawn for the batch) and one clamp. The blur is kornia's batched
Gaussian with a sigma per sample.

Serial-section EM has defects a 2D library does not model: a section's brightness differs from
its neighbours', a section slips a few pixels against the stack, a section is lost (the aligner
then repeats a neighbour, or leaves it blank); ``section_intensity``, ``section_slip`` and
``missing_section`` model them.

:func:`mix_batch` mixes a batch with a shuffled copy of itself. The synapse sits at the cutout's
centre, so CutMix boxes stay in the margin around it and MixUp keeps each cutout's own weight at
least one half; the soft targets are mixed with the same weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

#: CutMix never pastes into the central box spanning this fraction of each in-plane side.
CUTMIX_CENTRE_FRACTION = 0.5
#: Grey level (on the [0, 1] scale) of blank sections and of pixels moved in from outside.
MID_GREY = 0.5
#: Ops that change z sections, for 3D cubes only.
SECTION_AUGMENTATIONS = ("section_intensity", "section_slip", "missing_section")
#: Every augmentation a model's config may name (the schema lists the same names).
AUGMENTATIONS = ("flip", "rotate", "elastic", "intensity", "blur", "noise", *SECTION_AUGMENTATIONS)
#: Ops that move pixels; they share one sampling grid.
GEOMETRIC = ("flip", "rotate", "elastic", "section_slip")
#: Kernel size of the ``blur`` op (torchvision's GaussianBlur(5) before the batched version).
BLUR_KERNEL = 5
#: On the CPU, the most values an op takes in one call where the next op is to find them in
#: cache (4 MB of float32): the blur's convolution, the conversion and intensity map after the
#: copy, the clip after the noise.
CHUNK_VALUES = 2**20
#: The noise pool a batch draws, in samples' worth of values; each sample adds a window of it.
NOISE_POOL_SAMPLES = 2


def cutouts_per_chunk(values_per_cutout: int) -> int:
    """How many cutouts of ``values_per_cutout`` one CPU call of a chunked op takes: as many as
    :data:`CHUNK_VALUES` holds, at least one."""
    return max(1, CHUNK_VALUES // max(1, values_per_cutout))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Raw uint8 values as a new float32 tensor in [0, 1] (``x / 255``), what augmentations see."""
    return x.float().div_(255.0)


def _uniform(generator: torch.Generator, low: float, high: float, size) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _chance(generator: torch.Generator, p: float, n: int) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


@dataclass
class Draw:
    """The random parameters of one batch, one row per sample (drawn on the CPU).

    Angles are in radians: sample i's content turns by ``angle[i]`` (from +x towards +y in the
    (x, y) pixel frame, y pointing down) after the flips. A ``slip_section``,
    ``missing_section`` of -1 means none; ``missing_step`` 0 means a blank section, +1/-1 a copy
    of that neighbour. ``blur_sigma`` 0 means no blur; ``elastic`` says which samples deform.
    """

    flip_x: torch.Tensor
    flip_y: torch.Tensor
    flip_z: torch.Tensor
    angle: torch.Tensor
    elastic: torch.Tensor
    blur_sigma: torch.Tensor
    brightness: torch.Tensor  # (N,) factors
    contrast: torch.Tensor  # (N,) factors about each section's mean
    section_contrast: torch.Tensor  # (N, S) factors about mid-grey
    section_brightness: torch.Tensor  # (N, S) offsets
    slip_section: torch.Tensor
    slip_shift: torch.Tensor  # (N, 2): whole pixels (dx, dy)
    missing_section: torch.Tensor
    missing_step: torch.Tensor
    noise_sigma: float
    noise_offset: torch.Tensor  # (N,) where each sample's window starts in the batch's noise pool
    seed: int  # of the device generator that draws the noise pool and the elastic fields


class BatchAugmentation:
    """The augmentations ``augmentations`` of a model for ``kind`` ('2d'/'3d') at ``strength``.

    ``strength`` scales every op but flips and rotation, in magnitude and probability; 0 keeps
    only those two. Magnitudes and odds (at strength 1): flips in x, y (and z for cubes) with
    odds 1/2 each; rotation by any angle; elastic deformation of about a pixel (torchvision's
    field: uniform noise smoothed by a Gaussian of sigma ``min(5, (side - 1) / 8)`` px, alpha
    10 sigma) with odds 1/2; brightness and contrast factors in 1 +- 0.15 (contrast about each
    section's own mean, before a turn brings in mid-grey); blur with sigma in [0.1, 1] px, odds
    0.3; per-section contrast 1 +- 0.1 about mid-grey and brightness +- 0.05, odds 1/2; one
    section slipped by up to 3 whole pixels, odds 0.3; one section lost (a neighbour's copy or
    blank mid-grey), odds 0.2; Gaussian noise of sigma 0.03. Results are clipped to [0, 1];
    pixels moved in from outside are mid-grey (before the noise).
    Picklable, so DataLoader workers can run it.
    """

    def __init__(self, kind: str, augmentations: Collection[str], strength: float = 1.0) -> None:
        self.kind, self.strength = kind, float(strength)
        s = self.strength
        chosen = set(augmentations)
        always = {"flip", "rotate"}  # strength never turns these off
        self.ops = frozenset(op for op in chosen if op in always or s > 0)
        if kind != "3d":
            self.ops -= set(SECTION_AUGMENTATIONS)
        self._buffers: dict[str, tuple[tuple, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (f"BatchAugmentation({self.kind!r}, {sorted(self.ops)}, "
                f"strength={self.strength})")

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` (raw uint8, or float in [0, 1]) augmented, as a new float tensor in [0, 1] of
        the same shape (uint8 input is scaled by :func:`to_unit_range` first). Without a
        ``generator``, one is seeded from torch's global generator (each DataLoader worker's
        is seeded from the loader's, the main process's by the training seed), so a seeded run
        replays every draw."""
        if not self.ops:
            return to_unit_range(x) if x.dtype == torch.uint8 else x
        if generator is None:
            generator = torch.Generator().manual_seed(
                int(torch.randint(2**62, (), dtype=torch.int64)))
        return self.apply(x, self.draw(x.shape, generator))

    def draw(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> Draw:
        """The random parameters for a batch of ``shape``, drawn from ``generator``."""
        n, height, width = shape[0], shape[-2], shape[-1]
        sections = shape[2] if len(shape) == 5 else 1
        s, ops, g = self.strength, self.ops, generator
        none = torch.zeros(n, dtype=torch.bool)
        flips = _chance(g, 0.5, (3, n)) if "flip" in ops else torch.zeros(3, n, dtype=torch.bool)
        angle = (_uniform(g, -math.pi, math.pi, n) if "rotate" in ops
                 else torch.zeros(n))
        elastic = _chance(g, min(1.0, 0.5 * s), n) if "elastic" in ops else none
        brightness, contrast = torch.ones(n), torch.ones(n)
        if "intensity" in ops:
            brightness = _uniform(g, max(0.0, 1 - 0.15 * s), 1 + 0.15 * s, n)
            contrast = _uniform(g, max(0.0, 1 - 0.15 * s), 1 + 0.15 * s, n)
        blur_sigma = torch.zeros(n)
        if "blur" in ops:
            fire = _chance(g, min(1.0, 0.3 * s), n)
            blur_sigma = torch.where(fire, _uniform(g, 0.1, max(0.1, 1.0 * s), n), 0.0)
        section_contrast, section_brightness = torch.ones(n, sections), torch.zeros(n, sections)
        if "section_intensity" in ops:
            fire = _chance(g, 0.5, n).view(n, 1)
            section_contrast = torch.where(
                fire, _uniform(g, 1 - 0.1 * s, 1 + 0.1 * s, (n, sections)), 1.0)
            section_brightness = torch.where(
                fire, _uniform(g, -0.05 * s, 0.05 * s, (n, sections)), 0.0)
        slip_section, slip_shift = torch.full((n,), -1), torch.zeros(n, 2, dtype=torch.int64)
        if "section_slip" in ops:
            fire = _chance(g, min(1.0, 0.3 * s), n)
            slip_section = torch.where(fire, torch.randint(sections, (n,), generator=g), -1)
            # A whole-pixel shift of up to `most` along x and y, never (0, 0).
            most = max(1, round(3 * s))
            side = 2 * most + 1
            k = torch.randint(side * side - 1, (n,), generator=g)
            k = k + (k >= side * side // 2)
            slip_shift = torch.stack([k % side - most, k // side - most], dim=1)
        missing_section, missing_step = torch.full((n,), -1), torch.zeros(n, dtype=torch.int64)
        if "missing_section" in ops and sections >= 2:
            fire = _chance(g, min(1.0, 0.2 * s), n)
            missing_section = torch.where(fire, torch.randint(sections, (n,), generator=g), -1)
            blank = _chance(g, 0.5, n)
            step = torch.where(_chance(g, 0.5, n), 1, -1)
            step = torch.where(missing_section == 0, 1, step)
            step = torch.where(missing_section == sections - 1, -1, step)
            missing_step = torch.where(blank, 0, step)
        return Draw(
            flip_x=flips[0], flip_y=flips[1], flip_z=flips[2] & (sections > 1), angle=angle,
            elastic=elastic, blur_sigma=blur_sigma, brightness=brightness, contrast=contrast,
            section_contrast=section_contrast, section_brightness=section_brightness,
            slip_section=slip_section, slip_shift=slip_shift, missing_section=missing_section,
            missing_step=missing_step, noise_sigma=0.03 * s if "noise" in ops else 0.0,
            seed=int(torch.randint(2**62, (), generator=g, dtype=torch.int64)),
            noise_offset=torch.randint((NOISE_POOL_SAMPLES - 1) * math.prod(shape[1:]) + 1, (n,),
                                       generator=g),
        )

    def apply(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``x`` (N, 1, H, W) or (N, 1, D, H, W), raw uint8 or float in [0, 1], augmented with
        the parameters ``draw``: a new float tensor in [0, 1] (``x`` is left as it was).

        The order: z flip (an exact reordering), the per-section affine map of the intensity
        ops, one resampling, blur, lost sections, noise, one clip. Before a resampling the
        values are centred on mid-grey, so the resampling's zero padding brings in mid-grey;
        the noise's mean puts the centre back, in the same pass. An autocast region around the
        call is switched off inside it: the batch stays in its own precision (a bf16 blur
        written into the float batch would fail, a bf16 resampling lose the 8-bit values)."""
        if not len(x):  # nothing to augment; the ops below size their work by the first cutout
            return torch.empty(x.shape, device=x.device,
                               dtype=x.dtype if x.is_floating_point() else torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._apply(x, draw)

    def _apply(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        planes = x.reshape(n, -1, height, width)  # a cube's sections as channels
        device = x.device
        # The large random fields (noise, elastic) are drawn where the batch is.
        fields = torch.Generator(device=device).manual_seed(draw.seed)
        geometric = bool(self.ops & set(GEOMETRIC))
        # Only the resampling reads the float copy, so one buffer serves every batch. On the
        # CPU a cube's sections go innermost, where grid_sample reads a corner's sections at
        # once (its output is in the usual layout); that copy also does the z flip.
        sections_last = geometric and device.type == "cpu" and planes.shape[1] > 1
        if bool(draw.flip_z.any()) and not sections_last:
            # The z flip reorders whole sections, exactly; on raw uint8 it is a cheap copy.
            sections = planes.shape[1]
            order = torch.arange(sections).repeat(n, 1)
            order[draw.flip_z] = order[draw.flip_z].flip(1)
            order += sections * torch.arange(n).view(n, 1)
            planes = planes.reshape(n * sections, height, width).index_select(
                0, _on(order.flatten(), device)).view(n, sections, height, width)
        unit = 1 / 255 if planes.dtype == torch.uint8 else 1.0
        dtype = planes.dtype if planes.is_floating_point() else torch.float32
        centre = MID_GREY if geometric else 0.0
        maps = _intensity_maps(draw, unit, centre, device, dtype)
        if sections_last:
            values = self._buffer("input", planes.shape, dtype, device, torch.channels_last)
            raw = values if planes.dtype == dtype else self._buffer(
                "raw", planes.shape, planes.dtype, device, torch.channels_last)

            def finish(rows: slice) -> None:
                # The conversion and intensity map of cubes just copied, while in cache.
                if raw is not values:
                    values[rows].copy_(raw[rows])  # the same layout: a contiguous conversion
                if maps is not None:
                    _intensity(values[rows], *(m if m is None else m[rows] for m in maps))

            copy_sections_last(planes, raw, draw.flip_z.tolist(), finish)
        else:
            values = (self._buffer("input", planes.shape, dtype, device) if geometric
                      else torch.empty(planes.shape, dtype=dtype, device=device))
            values.copy_(planes)
            if maps is not None:
                _intensity(values, *maps)
        out = _resample(values, draw, fields) if geometric else values
        blurred = torch.nonzero(draw.blur_sigma > 0).flatten()
        if len(blurred):
            # On the CPU a few cutouts at a time: oneDNN's depthwise convolution, kornia's
            # blur, slows ~10x once its input outgrows the cache (BENCHMARKS.md).
            step = cutouts_per_chunk(out[0].numel()) if device.type == "cpu" else len(blurred)
            for part in blurred.split(step):
                # sigma stays on the CPU, where kornia checks it without waiting for the GPU.
                sigma = draw.blur_sigma[part]
                rows = _on(part, device)
                out[rows] = gaussian_blur2d(out[rows], BLUR_KERNEL,
                                            torch.stack([sigma, sigma], dim=1), "reflect")
        _lose_sections(out, draw, MID_GREY - centre)
        if draw.noise_sigma > 0:
            pool = self._buffer("noise", (NOISE_POOL_SAMPLES * out[0].numel(),), out.dtype,
                                device)
            _add_noise_and_clip(out, pool, draw, centre, fields)
        else:
            if centre:
                out.add_(centre)
            out.clamp_(0.0, 1.0)
        return out.reshape(x.shape)

    def _buffer(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device,
                layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """A reused buffer, one per ``name``: a fresh CPU allocation of a batch of cubes (tens
        of MB) faults its pages in at every call and costs about as much as filling it."""
        key = (tuple(shape), dtype, device, layout)
        if self._buffers.get(name, (None,))[0] != key:  # one at a time: shapes are fixed
            self._buffers[name] = (key, torch.empty(shape, dtype=dtype, device=device,
                                                    memory_format=layout))
        return self._buffers[name][1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": {}}


def _on(values: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
        ) -> torch.Tensor:
    """CPU ``values`` (a draw's parameters) on ``device`` as ``dtype``. To a GPU they go from
    pinned memory without waiting: a copy from pageable memory waits for every kernel queued
    before it, so each one stalled the host behind the training step still running there."""
    if dtype is not None:
        values = values.to(dtype)
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return _on(torch.nonzero(mask).flatten(), device)


def _resample(planes: torch.Tensor, draw: Draw, fields: torch.Generator) -> torch.Tensor:
    """One bilinear resampling of (N, S, H, W) ``planes``, centred on mid-grey, through each
    sample's composed grid: flips, rotation and elastic field shared by its sections, a shift
    for a slipped section. Pixels from outside are 0: mid-grey once the centre is put back."""
    n, sections, height, width = planes.shape
    device = planes.device
    cos, sin = draw.angle.cos(), draw.angle.sin()
    fx, fy = 1.0 - 2.0 * draw.flip_x.float(), 1.0 - 2.0 * draw.flip_y.float()
    # Output pixel p (from the centre, in px) reads input pixel F R(-angle) p: the content turns
    # by +angle after the flips F. affine_grid works in [-1, 1] coordinates: A -> S^-1 A S.
    pixel = torch.stack([fx * cos, fx * sin, -fy * sin, fy * cos], dim=1).view(n, 2, 2)
    half = torch.tensor([width / 2, height / 2])
    normalised = pixel * half.view(1, 1, 2) / half.view(1, 2, 1)
    grid = linear_grid(_on(normalised, device, planes.dtype), height, width)
    deformed = _rows(draw.elastic, device)
    if len(deformed):
        grid[deformed] += _elastic_field(len(deformed), height, width, fields, device,
                                         planes.dtype)
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cpu_rows = torch.nonzero(draw.slip_section >= 0).flatten()
    if len(cpu_rows):
        slipped = _on(cpu_rows, device)
        section = _on(draw.slip_section[cpu_rows], device)
        # The slipped section's output pixel p reads where p - shift would: grid - A shift.
        shift = draw.slip_shift[cpu_rows].float() * 2 / torch.tensor([width, height])
        delta = (normalised[cpu_rows] @ shift.unsqueeze(-1)).squeeze(-1)
        moved_grid = grid[slipped] - _on(delta, device, grid.dtype).view(-1, 1, 1, 2)
        moved = F.grid_sample(planes[slipped, section].unsqueeze(1), moved_grid, mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        out[slipped, section] = moved[:, 0]
    return out


def linear_grid(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid`` of the (N, 2, 2) linear maps ``matrix`` (no translation), for an
    (height, width) output, ``align_corners=False``: (N, H, W, 2), x then y in [-1, 1] units.

    affine_grid copies every pixel's (x, y, 1) for each sample and multiplies them by theta
    in a batched matrix product of inner size 3: on the CPU that took longer than the
    resampling of a 2D batch itself (BENCHMARKS.md, "Feeding training"). Here each coordinate
    plane is a broadcast sum of a row and a column over affine_grid's base coordinates. The
    grid is a view of (N, 2, H, W) memory, one plane a coordinate, a layout ``grid_sample``
    reads directly."""
    def base(steps: int) -> torch.Tensor:  # as affine_grid's, to the rounding
        if steps <= 1:
            return torch.zeros(steps, dtype=matrix.dtype, device=matrix.device)
        return torch.linspace(-1, 1, steps, dtype=matrix.dtype, device=matrix.device) * (
            steps - 1) / steps

    xs, ys, n = base(width), base(height), len(matrix)
    planes = (matrix[:, :, 0].reshape(n, 2, 1, 1) * xs.view(1, 1, 1, width)
              + matrix[:, :, 1].reshape(n, 2, 1, 1) * ys.view(1, 1, height, 1))
    return planes.permute(0, 2, 3, 1)


def _elastic_field(count: int, height: int, width: int, fields: torch.Generator,
                   device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(count, H, W, 2) displacements in [-1, 1] grid units: torchvision's elastic field
    (uniform noise smoothed by a Gaussian, times alpha / side), with a sigma that fits the
    cutout (the kernel spans 8 sigma + 1 px) and ``alpha = 10 sigma`` (about a pixel's move).

    The smoothing is kornia's Gaussian blur with reflected borders, applied as two matrix
    products (:func:`blur_matrices`): a 41-tap depthwise convolution of a 128x128 field took
    longer on the CPU than the product of its 128x128 matrices (BENCHMARKS.md, "Feeding
    training")."""
    sigma = min(5.0, (min(height, width) - 1) / 8)
    kernel = int(8 * sigma + 1)
    kernel += 1 - kernel % 2
    alpha = 10.0 * sigma
    noise = torch.rand(count, 2, height, width, generator=fields, device=device, dtype=dtype)
    along_y, along_x = blur_matrices(height, width, kernel, sigma, device, dtype)
    field = torch.matmul(torch.matmul(along_y, noise * 2 - 1), along_x)
    sides = _on(torch.tensor([width, height], dtype=dtype), device).view(1, 2, 1, 1)
    field = field * alpha / sides
    return field.permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=16)
def blur_matrices(height: int, width: int, kernel: int, sigma: float, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(along_y, along_x)``, (H, H) and (W, W): ``along_y @ x @ along_x`` is kornia's
    ``gaussian_blur2d(x, kernel, (sigma, sigma), "reflect")`` of an (..., H, W) ``x``, to the
    rounding. Each matrix is that blur of an identity along one axis (row ``j`` of ``along_x``
    is where input column ``j`` goes), so the kernel and the borders are kornia's own."""
    def along_rows(size: int) -> torch.Tensor:
        eye = torch.eye(size, device=device, dtype=dtype).view(1, 1, size, size)
        return gaussian_blur2d(eye, (1, kernel), (sigma, sigma), "reflect")[0, 0]

    return along_rows(height).t().contiguous(), along_rows(width)


def _add_noise_and_clip(out: torch.Tensor, pool: torch.Tensor, draw: Draw, centre: float,
                        fields: torch.Generator) -> None:
    """In place: Gaussian noise of mean ``centre`` and sigma ``draw.noise_sigma`` on every value
    of ``out``, then the clip to [0, 1], a few samples at a time on the CPU (the clip reads what
    the adds have just brought into cache). Each sample adds the window of ``pool``
    (:data:`NOISE_POOL_SAMPLES` samples' worth, drawn anew for the batch) that starts at its
    ``draw.noise_offset``: a sample's values are independent normals, and a batch draws a few
    samples' worth of normals, not one per value of every sample (drawing them was the largest
    cost of a CPU batch). Samples of a batch share values, each at its own shifted position."""
    size = out[0].numel()
    pool.normal_(centre, draw.noise_sigma, generator=fields)
    rows, starts = out.view(len(out), size), draw.noise_offset.tolist()
    step = cutouts_per_chunk(size) if out.device.type == "cpu" else len(out)
    for first in range(0, len(out), step):
        for row, start in zip(rows[first:first + step], starts[first:first + step]):
            row.add_(pool[start:start + size])
        rows[first:first + step].clamp_(0.0, 1.0)


def _lose_sections(planes: torch.Tensor, draw: Draw, blank: float) -> None:
    """In place: each lost section becomes ``blank`` (mid-grey in the values' frame) or a copy
    of its neighbour."""
    cpu_rows = torch.nonzero(draw.missing_section >= 0).flatten()
    if not len(cpu_rows):
        return
    lost = _on(cpu_rows, planes.device)
    section = draw.missing_section[cpu_rows]
    step = draw.missing_step[cpu_rows]
    copies = planes[lost, _on(section + step, planes.device)]
    is_blank = _on(step == 0, planes.device).view(-1, 1, 1)
    planes[lost, _on(section, planes.device)] = torch.where(is_blank, blank, copies)


def copy_sections_last(planes: torch.Tensor, out: torch.Tensor,
                       reverse: Sequence[bool] | None = None,
                       then: Callable[[slice], None] | None = None) -> None:
    """``planes`` (N, S, H, W) copied into ``out``, the same shape and dtype in channels-last
    memory (each pixel's S sections together); sample ``i``'s sections in reverse order where
    ``reverse[i]`` (the z flip, an exact reordering). ``then(rows)``, if given, runs on each
    slice of samples as soon as they are copied, in the same thread, while they are in cache
    (:data:`CHUNK_VALUES` at most, or one sample).

    One (S, H*W) to (H*W, S) transposing copy per sample, which torch runs as a blocked
    transpose (a 2D copy of a transposed matrix), where one strided copy of the whole batch
    goes voxel by voxel (BENCHMARKS.md, "Feeding training"). That copy is single-threaded, so
    the batch is split into a share per intra-op thread, each its own Python thread (the copy
    releases the GIL), and torch's ops in them (``then``'s) run on one intra-op thread each;
    the threads are started per call, so a forked DataLoader worker never inherits a pool's
    dead threads. A reversed sample is flipped first, a contiguous copy of that sample
    alone instead of an ``index_select`` over the whole batch."""
    n, sections = planes.shape[:2]
    source = planes.reshape(n, sections, -1)
    target = out.permute(0, 2, 3, 1).view(n, -1, sections)  # a view of out's memory
    reverse = reverse or [False] * n
    step = cutouts_per_chunk(source[0].numel())

    def copy_rows(rows: range) -> None:
        for first in range(rows.start, rows.stop, step):
            last = min(first + step, rows.stop)
            for i in range(first, last):
                target[i].copy_((source[i].flip(0) if reverse[i] else source[i]).t())
            if then is not None:
                then(slice(first, last))

    threads = torch.get_num_threads()
    # A small batch stays in this thread: starting another costs more than it would save.
    parts = max(1, min(threads, n, math.ceil(planes.numel() / CHUNK_VALUES)))
    bounds = [k * n // parts for k in range(parts + 1)]
    shares = [range(bounds[k], bounds[k + 1]) for k in range(parts)]
    if parts == 1:
        copy_rows(shares[0])
        return
    # New threads take the process's count when they first run an op: set it before they start.
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(parts - 1) as helpers:
            running = [helpers.submit(copy_rows, share) for share in shares[1:]]
            copy_rows(shares[0])
            for share in running:
                share.result()  # a helper's error is raised here
    finally:
        torch.set_num_threads(threads)


IntensityMaps = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


def _intensity_maps(draw: Draw, unit: float, centre: float, device: torch.device,
                    dtype: torch.dtype) -> IntensityMaps | None:
    """The intensity ops of ``draw`` as one affine map ``x * scale + offset`` per section, for
    values ``unit`` apart (1/255 for raw uint8) that become the [0, 1] image after brightness,
    contrast about each section's mean and the per-section intensity, minus ``centre``:
    ``(scale, weight, base)``, each (N, S, 1, 1) on ``device``, with ``offset = base + weight *
    the section's mean`` (``weight`` None where no contrast is drawn). None where the map is the
    identity. torchvision clipped after each op; here the one clip comes last, and the
    difference is in the clipped tails."""
    n, sections = draw.section_contrast.shape
    # Decided on the CPU draw: testing the maps where they are would wait for the GPU.
    if (unit == 1 and centre == 0 and bool((draw.brightness == 1).all())
            and bool((draw.contrast == 1).all()) and bool((draw.section_contrast == 1).all())
            and bool((draw.section_brightness == 0).all())):
        return None
    brightness, contrast = draw.brightness.view(n, 1, 1, 1), draw.contrast.view(n, 1, 1, 1)
    section_contrast = draw.section_contrast.view(n, sections, 1, 1)
    scale = section_contrast * brightness * contrast * unit
    base = (MID_GREY * (1 - section_contrast)
            + draw.section_brightness.view(n, sections, 1, 1) - centre)
    weight = None
    if bool((draw.contrast != 1).any()):
        weight = _on(section_contrast * brightness * (1 - contrast) * unit, device, dtype)
    return _on(scale, device, dtype), weight, _on(base, device, dtype)


def _intensity(planes: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None,
               base: torch.Tensor) -> None:
    """In place: the maps of :func:`_intensity_maps` on ``planes`` (N, S, H, W). (An
    ``addcmul`` runs both in one pass, but unvectorized where the maps vary along memory's
    outer dimensions only: 8x the time on a batch of patches.)"""
    offset = base if weight is None else base + weight * planes.mean(dim=(-2, -1),
                                                                     keepdim=True)
    planes.mul_(scale).add_(offset)


def _beta(alpha: float) -> float:
    concentration = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(concentration, concentration).sample())


def centre_margins(height: int, width: int) -> tuple[int, int]:
    """Widths (y, x) of the frame around the protected centre that CutMix may paste into."""
    return (int(height * (1 - CUTMIX_CENTRE_FRACTION)) // 2,
            int(width * (1 - CUTMIX_CENTRE_FRACTION)) // 2)


def _cutmix_box(height: int, width: int, lam: float) -> tuple[slice, slice]:
    """A box of about ``(1 - lam)`` of the plane inside one side's margin (may be empty)."""
    margin_y, margin_x = centre_margins(height, width)
    sides = [side for side, margin in (("top", margin_y), ("bottom", margin_y),
                                       ("left", margin_x), ("right", margin_x)) if margin > 0]
    if not sides:
        return slice(0, 0), slice(0, 0)
    side = sides[int(torch.randint(len(sides), ()))]
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * ratio), round(width * ratio)
    if side in ("top", "bottom"):
        box_h = min(box_h, margin_y)
        y0 = int(torch.randint(margin_y - box_h + 1, ()))
        y0 = y0 if side == "top" else height - margin_y + y0
        x0 = int(torch.randint(width - box_w + 1, ()))
    else:
        box_w = min(box_w, margin_x)
        x0 = int(torch.randint(margin_x - box_w + 1, ()))
        x0 = x0 if side == "left" else width - margin_x + x0
        y0 = int(torch.randint(height - box_h + 1, ()))
    return slice(y0, y0 + box_h), slice(x0, x0 + box_w)


def mix_batch(
    x: torch.Tensor, target: torch.Tensor, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with a shuffled copy of itself; soft targets mixed alike.

    ``x`` is (N, C, H, W) or (N, C, D, H, W), ``target`` (N, classes). An alpha of 0 turns that
    method off; with both on, each batch uses one of them, chosen with equal odds. MixUp draws
    ``lam ~ Beta(alpha, alpha)`` and keeps ``max(lam, 1 - lam)`` as the cutout's own weight, so
    the own synapse always dominates. CutMix pastes the partner's box (through every section)
    into one side of the margin around the central :data:`CUTMIX_CENTRE_FRACTION` box, so the
    synapse at the centre is untouched; the targets mix by the pasted area.
    """
    methods = [name for name, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha))
               if alpha > 0]
    if not methods or len(x) < 2:
        return x, target
    method = methods[int(torch.randint(len(methods), ()))]
    partner = _on(torch.randperm(len(x)), x.device)
    if method == "mixup":
        lam = _beta(mixup_alpha)
        lam = max(lam, 1.0 - lam)
        mixed = x * lam + x[partner] * (1.0 - lam)
    else:
        height, width = x.shape[-2:]
        rows, cols = _cutmix_box(height, width, _beta(cutmix_alpha))
        mixed = x.clone()
        mixed[..., rows, cols] = x[partner][..., rows, cols]
        pasted = (rows.stop - rows.start) * (cols.stop - cols.start)
        lam = 1.0 - pasted / (height * width)
    return mixed, target * lam + target[partner] * (1.0 - lam)
