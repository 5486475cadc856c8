"""Procedural test scenes: the Moon, a banded planet and the solar photosphere.

Every scene is rendered deterministically from a seed as a float32 image on the
``[0, 1]`` scale, mono ``(H, W)`` or colour ``(H, W, 3)`` in RGB order, of any requested
size. Feature sizes are set by a reference length ``scale`` (pixels), not by the canvas
size, so a canvas rendered larger than the frame (to leave room for drift) shows the same
features at the same size, only over a wider field; the scene is centred on the canvas.

* ``"moon"``: cratered terrain lit by a low sun (cast shadows), with dark smooth maria,
  bright young craters and fine texture, so that local contrast varies across the field.
* ``"planet"``: a Jupiter-like oblate disk, 40 % of ``scale`` across, with turbulent
  belts and zones, an oval spot and limb darkening, plus a small moon beside it, on black
  sky.
* ``"sun"``: photospheric granulation with a sunspot (umbra and filamentary penumbra).
* ``"mare"``: a low-contrast lunar mare under a high sun: the Moon's terrain with its
  contrast brought down to :data:`MARE_CONTRAST` (RMS) around a mid grey, the kind of
  field whose correlation peaks are weak.
* ``"terminator"``: the cratered Moon with the terminator crossing the field: the light
  fades into night over the last part of the field (long shadows beside darkness).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from live_stack.frames import LUMA_WEIGHTS

__all__ = ["SCENES", "render_scene"]

#: The scene names :func:`render_scene` knows.
SCENES = ("moon", "planet", "sun", "mare", "terminator")

#: Smallest canvas side, in pixels.
MIN_SIZE = 16
#: Largest canvas side, in pixels (a guard against typos such as 64000x48000).
MAX_SIZE = 16384
#: Random stream number of the scene generator (the seeing uses other streams).
SCENE_STREAM = 1

# --- Moon -------------------------------------------------------------------------------
#: Sun elevation above the local horizontal, degrees (low: long shadows).
MOON_SUN_ELEVATION_DEG = 14.0
#: Smallest and largest crater radius: pixels, and fraction of ``scale``.
MOON_CRATER_RMIN_PX = 1.2
MOON_CRATER_RMAX_FRAC = 0.16
#: Craters with radius > r_min per pixel of area, times r_min**2 (cumulative density).
MOON_CRATER_DENSITY = 0.02
#: Exponent of the cumulative size distribution N(>r) ~ r**-b.
MOON_CRATER_SLOPE = 2.0
#: Fraction of craters kept inside maria (maria are younger, less cratered).
MOON_MARE_CRATER_KEEP = 0.12
#: Fraction of the area covered by maria (approximately).
MOON_MARE_FRACTION = 0.38
#: Albedo of the highlands and of the maria.
MOON_ALBEDO_HIGHLAND = 0.80
MOON_ALBEDO_MARE = 0.50
#: Radius, in pixels, above which craters get flat floors and central peaks.
MOON_COMPLEX_RADIUS_PX = 14.0
#: Brightness of level ground in full light (before albedo), and of shadowed ground.
MOON_FLAT_LEVEL = 0.45
MOON_SHADOW_LEVEL = 0.03
#: RGB tint of the colour Moon.
MOON_TINT = (1.0, 0.96, 0.90)

#: "mare": RMS contrast of the surface around its mean level, and that level.
MARE_CONTRAST = 0.04
MARE_LEVEL = 0.55
#: "terminator": where the night begins (fraction of the width from the lit side) and the
#: width of the twilight band (fraction of ``scale``).
TERMINATOR_AT = 0.78
TERMINATOR_WIDTH = 0.12

# --- Planet -----------------------------------------------------------------------------
#: Equatorial radius of the disk as a fraction of ``scale`` (disk 40 % of the frame).
PLANET_RADIUS_FRAC = 0.20
#: Polar flattening of the disk.
PLANET_FLATTENING = 0.065
#: Minnaert limb-darkening exponent: I ~ mu**k.
PLANET_LIMB_K = 0.6
#: Radius of the small moon as a fraction of the planet's radius, its distance from the
#: planet's centre in planet radii, and its peak brightness.
PLANET_MOON_RADIUS_FRAC = 0.037
PLANET_MOON_DISTANCE = 1.55
PLANET_MOON_BRIGHTNESS = 0.75
#: Texture map size (latitude rows, longitude columns over 360 degrees).
PLANET_MAP_ROWS = 512
PLANET_MAP_COLS = 1024
#: RGB colours of the zones (bright), the belts (dark), the poles and the spot.
PLANET_ZONE_RGB = (0.93, 0.88, 0.76)
PLANET_BELT_RGB = (0.66, 0.48, 0.34)
PLANET_POLE_RGB = (0.55, 0.52, 0.50)
PLANET_SPOT_RGB = (0.84, 0.50, 0.36)
#: RMS displacement (degrees of latitude) of the band edges by turbulence, and how much
#: longer than wide (along longitude) the turbulent features are.
PLANET_TURB_DEG = 1.1
PLANET_TURB_STRETCH = 3
#: Number of small white ovals and dark barges.
PLANET_SMALL_OVALS = 14
#: Peak brightness of the brightest zone at the disk centre.
PLANET_PEAK = 0.8

# --- Sun --------------------------------------------------------------------------------
#: Mean granule diameter as a fraction of ``scale``.
SUN_GRANULE_FRAC = 1.0 / 36.0
#: Brightness of granule centres, intergranular lanes, penumbra and umbra.
SUN_GRANULE_LEVEL = 0.72
SUN_LANE_LEVEL = 0.45
SUN_PENUMBRA_LEVEL = 0.36
SUN_UMBRA_LEVEL = 0.07
#: Outer radii of the umbra and the penumbra as fractions of ``scale``.
SUN_UMBRA_FRAC = 0.055
SUN_PENUMBRA_FRAC = 0.14
#: Typical spacing of penumbral filaments at mid-penumbra, pixels.
SUN_FILAMENT_PX = 4.0
#: RGB tint of the colour Sun (a white-light image through a yellowish filter).
SUN_TINT = (1.0, 0.82, 0.52)
#: Samples per turn of the tabulated angular noise (sunspot outlines and filaments).
ANGLE_TABLE_SIZE = 4096


def render_scene(
    name: str,
    *,
    width: int,
    height: int,
    seed: int = 0,
    colour: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """Render a test scene.

    Parameters
    ----------
    name : str
        One of :data:`SCENES`.
    width, height : int
        Canvas size in pixels (16..16384).
    seed : int
        Seed (>= 0); the same seed, size and scale give the same image.
    colour : bool
        Return an ``(H, W, 3)`` RGB image instead of a mono ``(H, W)`` one.
    scale : float, optional
        Reference length in pixels that the feature sizes follow: normally the height of
        the frames the scene will be seen through. Defaults to ``height``.

    Returns
    -------
    numpy.ndarray
        float32 image on the ``[0, 1]`` scale, centred on the canvas centre.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or ``width``, ``height``, ``seed`` or ``scale`` is out of
        range.
    """
    if name not in SCENES:
        raise ValueError(f"name must be one of {SCENES}, got {name!r}")
    for arg, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{arg} must be an integer, got {value!r}")
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"{arg} must be {MIN_SIZE}..{MAX_SIZE}, got {value}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if scale is None:
        scale = float(height)
    if not (math.isfinite(scale) and MIN_SIZE <= scale <= MAX_SIZE):
        raise ValueError(f"scale must be {MIN_SIZE}..{MAX_SIZE} pixels, got {scale!r}")
    rng = np.random.default_rng([int(seed), SCENE_STREAM, SCENES.index(name)])
    shape = (int(height), int(width))
    if name == "planet":
        rgb = _planet(rng, shape, float(scale))
        image = rgb if colour else _luma(rgb)
    else:
        if name == "sun":
            mono = _sun(rng, shape, float(scale))
        else:
            mono = _moon(rng, shape, float(scale))
            if name == "mare":
                mono = _low_contrast(mono)
            elif name == "terminator":
                mono = _terminator(mono, float(scale))
        tint = SUN_TINT if name == "sun" else MOON_TINT
        image = _tint(mono, tint) if colour else mono
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


# --- shared helpers ----------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.tensordot(rgb, LUMA_WEIGHTS, axes=([2], [0])).astype(np.float32)


def _tint(mono: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    """Colour a mono image with ``tint``, keeping its Rec. 601 luminance."""
    weights = np.asarray(tint, dtype=np.float32)
    weights /= float(np.dot(weights, LUMA_WEIGHTS))
    return mono[:, :, None] * weights[None, None, :]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Unit-variance-ish random field with features about ``cell`` pixels across."""
    h, w = shape
    cell = max(cell, 1.0)
    gh = int(math.ceil(h / cell)) + 3
    gw = int(math.ceil(w / cell)) + 3
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(
        grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC
    )
    oy = (big.shape[0] - h) // 2
    ox = (big.shape[1] - w) // 2
    field = big[oy : oy + h, ox : ox + w]
    if cell > 2.0:
        # cubic interpolation of white noise leaves faint grid artefacts: smooth them away
        field = cv2.GaussianBlur(field, (0, 0), cell / 4.0)
    std = float(field.std())
    return (field - float(field.mean())) / (std if std > 0 else 1.0)


def _fbm(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    largest: float,
    smallest: float,
    persistence: float = 0.55,
) -> np.ndarray:
    """Fractal noise: octaves of :func:`_smooth_noise` from ``largest`` down to ``smallest``."""
    total = np.zeros(shape, np.float32)
    cell, amp = largest, 1.0
    while cell >= smallest:
        total += np.float32(amp) * _smooth_noise(rng, shape, cell)
        cell /= 2.0
        amp *= persistence
    std = float(total.std())
    return total / (std if std > 0 else 1.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _offsets(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the canvas centre: (y, x) as float32 grids."""
    h, w = shape
    y = np.arange(h, dtype=np.float32) - (h - 1) / 2.0
    x = np.arange(w, dtype=np.float32) - (w - 1) / 2.0
    return np.meshgrid(y, x, indexing="ij")


# --- Moon --------------------------------------------------------------------------------


def _moon(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    h, w = shape
    # maria: a low-frequency field thresholded with soft shores
    mare_field = _fbm(rng, shape, largest=scale * 0.6, smallest=scale * 0.08)
    threshold = float(np.quantile(mare_field, 1.0 - MOON_MARE_FRACTION))
    mare = _smoothstep((mare_field - threshold) / 0.35 + 0.5)

    # terrain heights, in pixels: rolling highland hills, flatter maria, fine texture
    hills = _fbm(rng, shape, largest=scale * 0.25, smallest=4.0) * np.float32(0.006 * scale)
    texture = _fbm(rng, shape, largest=6.0, smallest=1.0, persistence=0.7)
    height = hills * (1.0 - 0.85 * mare) + texture * np.float32(0.12)

    albedo_ratio = MOON_ALBEDO_MARE / MOON_ALBEDO_HIGHLAND
    albedo = MOON_ALBEDO_HIGHLAND * (1.0 - (1.0 - albedo_ratio) * mare)
    albedo = albedo * (1.0 + 0.07 * _fbm(rng, shape, largest=scale * 0.3, smallest=3.0))
    albedo = albedo.astype(np.float32)

    _add_craters(rng, height, albedo, mare, scale)

    # Lambertian shading, sun low in the -x direction (light travels towards +x), with
    # cast shadows; the surface normal is (-dh/dx, -dh/dy, 1) normalised
    elev = math.radians(MOON_SUN_ELEVATION_DEG)
    gy, gx = np.gradient(height)
    cos_i = (gx * math.cos(elev) + math.sin(elev)) / np.sqrt(1.0 + gx * gx + gy * gy)
    shade = np.clip(cos_i / math.sin(elev), 0.0, None) * MOON_FLAT_LEVEL
    lit = _sunlit(height, math.tan(elev))
    shade = np.where(lit, shade, 0.0)
    # soften the shadow edges (penumbra of the finite solar disk, ~0.5 px)
    shade = cv2.GaussianBlur(shade.astype(np.float32), (0, 0), 0.5)
    image = albedo * shade + MOON_SHADOW_LEVEL * albedo
    # soft shoulder instead of a hard clip for the brightest slopes
    return (1.0 - np.exp(-image * 1.6)) / (1.0 - math.exp(-1.6))


def _low_contrast(image: np.ndarray) -> np.ndarray:
    """The image with RMS contrast :data:`MARE_CONTRAST` around :data:`MARE_LEVEL`."""
    mean = float(image.mean())
    std = max(float(image.std()), 1e-6)
    return MARE_LEVEL * (1.0 + MARE_CONTRAST * (image - mean) / std)


def _terminator(image: np.ndarray, scale: float) -> np.ndarray:
    """The image faded into night beyond :data:`TERMINATOR_AT` of its width."""
    w = image.shape[1]
    x = (np.arange(w, dtype=np.float32) - TERMINATOR_AT * w) / (TERMINATOR_WIDTH * scale)
    return image * (1.0 - _smoothstep(x + 0.5))[None, :]


def _sunlit(height: np.ndarray, tan_elev: float) -> np.ndarray:
    """Cast shadows: a pixel is lit if no terrain towards the sun (at -x) rises above the
    ray to the sun. Scanned column by column, vectorised over rows."""
    h, w = height.shape
    lit = np.ones((h, w), bool)
    horizon = height[:, 0].copy()
    for x in range(1, w):
        horizon -= tan_elev
        col = height[:, x]
        lit[:, x] = col >= horizon
        np.maximum(horizon, col, out=horizon)
    return lit


def _add_craters(
    rng: np.random.Generator,
    height: np.ndarray,
    albedo: np.ndarray,
    mare: np.ndarray,
    scale: float,
) -> None:
    """Add craters in place: bowl, raised rim, ejecta; complex craters get flat floors and
    central peaks; young small craters get bright halos."""
    h, w = height.shape
    rmin = MOON_CRATER_RMIN_PX
    rmax = max(rmin * 2.0, MOON_CRATER_RMAX_FRAC * scale)
    count = int(MOON_CRATER_DENSITY * h * w / rmin**2)
    # truncated Pareto radii: N(>r) ~ r**-b between rmin and rmax
    u = rng.random(count)
    b = MOON_CRATER_SLOPE
    lo, hi = rmin**-b, rmax**-b
    radii = (lo - u * (lo - hi)) ** (-1.0 / b)
    cy = rng.random(count) * (h + 2 * radii) - radii
    cx = rng.random(count) * (w + 2 * radii) - radii
    freshness = rng.random(count) ** 0.7  # old craters are shallower and softer
    halo = rng.random(count) < 0.04
    keep_draw = rng.random(count)
    for r, y0, x0, fresh, bright, k in zip(radii, cy, cx, freshness, halo, keep_draw, strict=True):
        yi = min(max(int(y0), 0), h - 1)
        xi = min(max(int(x0), 0), w - 1)
        if k > 1.0 - (1.0 - MOON_MARE_CRATER_KEEP) * float(mare[yi, xi]):
            continue
        extent = r * 2.6
        ya, yb = max(int(y0 - extent), 0), min(int(y0 + extent) + 2, h)
        xa, xb = max(int(x0 - extent), 0), min(int(x0 + extent) + 2, w)
        if ya >= yb or xa >= xb:
            continue
        yy = (np.arange(ya, yb, dtype=np.float32) - y0)[:, None]
        xx = (np.arange(xa, xb, dtype=np.float32) - x0)[None, :]
        rho = np.sqrt(yy * yy + xx * xx) / np.float32(r)
        complex_ = r > MOON_COMPLEX_RADIUS_PX
        depth = r * (0.22 if complex_ else 0.42) * (0.35 + 0.65 * fresh)
        rim = 0.3 * depth
        if complex_:
            # flat floor: the bowl profile saturates at 70 % of the depth
            bowl = np.maximum(rho**2 - 1.0, -0.7) * depth + rim
            bowl += 0.25 * depth * np.exp(-((rho / 0.14) ** 2))  # central peak
        else:
            bowl = (rho**2 - 1.0) * depth + rim
        outside = rim * np.clip(rho, 1.0, None) ** -3.0
        taper = _smoothstep((2.6 - rho) / 0.8)
        profile = np.where(rho < 1.0, bowl, outside * taper)
        height[ya:yb, xa:xb] += profile.astype(np.float32)
        if bright and r < 6 * rmin:
            albedo[ya:yb, xa:xb] *= (1.0 + 0.35 * np.exp(-((rho / 1.6) ** 2))).astype(np.float32)


# --- Planet ------------------------------------------------------------------------------


def _planet(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    texture = _planet_map(rng)
    h, w = shape
    radius = PLANET_RADIUS_FRAC * scale
    yy, xx = _offsets(shape)
    u = xx / radius
    v = yy / (radius * (1.0 - PLANET_FLATTENING))
    rho2 = u * u + v * v
    inside = rho2 < 1.0
    z = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    lat = np.arcsin(np.clip(v, -1.0, 1.0))  # +y (down in the image) is south: fine
    lon = np.arctan2(u, np.maximum(z, 1e-6))
    map_x = ((lon / (2 * math.pi) + 0.5) * PLANET_MAP_COLS - 0.5).astype(np.float32)
    map_y = ((lat / math.pi + 0.5) * PLANET_MAP_ROWS - 0.5).astype(np.float32)
    surface = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    limb = z**PLANET_LIMB_K
    # anti-aliased edge: coverage over about one pixel at the limb
    edge = np.clip((1.0 - np.sqrt(rho2)) * radius + 0.5, 0.0, 1.0)
    image = surface * (limb * edge * inside)[:, :, None]

    # the small moon, on the equator line at one side
    side = 1.0 if rng.random() < 0.5 else -1.0
    m_r = max(1.5, PLANET_MOON_RADIUS_FRAC * radius)
    m_x = side * min(PLANET_MOON_DISTANCE * radius, (w - 1) / 2.0 - 3.0 * m_r)
    m_y = 0.15 * radius * (rng.random() - 0.5)
    d = np.sqrt((yy - m_y) ** 2 + (xx - m_x) ** 2) / m_r
    m_z = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    m_edge = np.clip((1.0 - d) * m_r + 0.5, 0.0, 1.0)
    moon = PLANET_MOON_BRIGHTNESS * m_z**0.4 * m_edge
    image = image + moon[:, :, None] * np.asarray((0.95, 0.92, 0.86), np.float32)
    return image.astype(np.float32)


def _planet_map(rng: np.random.Generator) -> np.ndarray:
    """Equirectangular RGB map (rows: latitude -90..90 degrees) of belts, zones and a spot."""
    rows, cols = PLANET_MAP_ROWS, PLANET_MAP_COLS
    lat = (np.arange(rows, dtype=np.float32) + 0.5) / rows * 180.0 - 90.0
    lon = (np.arange(cols, dtype=np.float32) + 0.5) / cols * 360.0 - 180.0
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    # turbulence: latitudes displaced by noise stretched along longitude, so band edges
    # wave and curl
    turb = _fbm(rng, (rows, cols // PLANET_TURB_STRETCH), largest=32.0, smallest=2.0)
    turb = cv2.resize(turb, (cols, rows), interpolation=cv2.INTER_CUBIC)
    fine = _fbm(rng, (rows, cols), largest=24.0, smallest=1.5, persistence=0.65)
    lat_t = lat2 + PLANET_TURB_DEG * turb

    # band edges (degrees), Jupiter-like with random perturbations; belts are 1, zones 0
    edges = np.array([-62, -48, -38, -28, -18, -8, 7, 18, 26, 34, 44, 56], np.float32)
    edges = edges + rng.uniform(-2.5, 2.5, edges.size).astype(np.float32)
    belt = np.zeros_like(lat2)
    strength = rng.uniform(0.5, 1.0, edges.size // 2).astype(np.float32)
    for i in range(0, edges.size - 1, 2):
        lo, hi = edges[i], edges[i + 1]
        # soft belt edges, one to two degrees wide
        inside = _smoothstep((lat_t - lo) / 2.0 + 0.5) * _smoothstep((hi - lat_t) / 2.0 + 0.5)
        belt = np.maximum(belt, inside * strength[i // 2])
    belt = np.clip(belt * (1.0 + 0.25 * fine), 0.0, 1.0)
    zone = np.asarray(PLANET_ZONE_RGB, np.float32)
    belt_c = np.asarray(PLANET_BELT_RGB, np.float32)
    rgb = zone[None, None, :] * (1.0 - belt[..., None]) + belt_c[None, None, :] * belt[..., None]
    rgb *= (1.0 + 0.09 * fine)[..., None]
    # darker, greyer polar regions
    pole = _smoothstep((np.abs(lat_t) - 58.0) / 14.0)
    pole_c = np.asarray(PLANET_POLE_RGB, np.float32)
    rgb = rgb * (1.0 - pole[..., None]) + pole_c[None, None, :] * pole[..., None]

    # the oval spot in the southern hemisphere, near the central meridian
    s_lat = -22.0 + rng.uniform(-1.5, 1.5)
    s_lon = rng.uniform(-35.0, 35.0)
    s_a, s_b = 10.0, 5.5  # semi-axes in degrees of longitude and latitude
    e = np.sqrt(((lon2 - s_lon) / s_a) ** 2 + ((lat2 - s_lat) / s_b) ** 2)
    e = e + 0.08 * fine
    spot = _smoothstep((1.0 - e) / 0.25)
    collar = np.exp(-(((e - 1.15) / 0.15) ** 2))  # pale hollow around the spot
    spot_c = np.asarray(PLANET_SPOT_RGB, np.float32)
    rgb = rgb * (1.0 - spot[..., None]) + spot_c[None, None, :] * spot[..., None]
    rgb = rgb * (1.0 - 0.6 * collar[..., None]) + zone[None, None, :] * 0.6 * collar[..., None]
    # small white ovals and dark barges scattered over the disk
    for _ in range(PLANET_SMALL_OVALS):
        o_lat = rng.uniform(-50.0, 50.0)
        o_lon = rng.uniform(-100.0, 100.0)
        o_size = rng.uniform(1.2, 3.0)
        o_c = zone * 1.06 if rng.random() < 0.6 else belt_c * 0.8
        # only the oval's bounding box (it reaches 1.2 sizes from its centre)
        r0, r1 = np.searchsorted(lat, [o_lat - 1.3 * o_size, o_lat + 1.3 * o_size])
        c0, c1 = np.searchsorted(lon, [o_lon - 2.4 * o_size, o_lon + 2.4 * o_size])
        box = (slice(r0, r1), slice(c0, c1))
        o_e = np.sqrt(
            ((lon2[box] - o_lon) / (1.8 * o_size)) ** 2 + ((lat2[box] - o_lat) / o_size) ** 2
        )
        o_w = _smoothstep((1.0 - o_e) / 0.4)[..., None]
        rgb[box] = rgb[box] * (1.0 - o_w) + o_c[None, None, :] * o_w
    rgb *= PLANET_PEAK / float(zone.max())
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


# --- Sun ---------------------------------------------------------------------------------


def _sun(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    h, w = shape
    granule = max(4.0, SUN_GRANULE_FRAC * scale)
    photosphere = _granulation(rng, shape, granule)
    yy, xx = _offsets(shape)
    # the spot lies near the centre of the field
    sy = (rng.random() - 0.5) * 0.2 * min(h, scale)
    sx = (rng.random() - 0.5) * 0.2 * min(w, scale)
    dy, dx = yy - sy, xx - sx
    r = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    # irregular outlines: radii modulated by smooth noise around the angle
    angle_noise = _angular_noise(rng, theta, harmonics=7, amplitude=0.12)
    r_umbra = SUN_UMBRA_FRAC * scale * (1.0 + angle_noise)
    r_pen = SUN_PENUMBRA_FRAC * scale * (1.0 + _angular_noise(rng, theta, 6, 0.09))
    # penumbral filaments: radial streaks (angular noise of high order) that wander
    rel = np.clip((r - r_umbra) / np.maximum(r_pen - r_umbra, 1.0), 0.0, 1.0)
    circumference = math.pi * (SUN_UMBRA_FRAC + SUN_PENUMBRA_FRAC) * scale
    n_fil = int(max(24, circumference / SUN_FILAMENT_PX))
    twist = 0.08 * _angular_noise(rng, theta, harmonics=5, amplitude=1.0)
    filaments = _angular_noise(rng, theta + twist * rel, harmonics=n_fil, amplitude=1.0, power=0.3)
    filaments = filaments / max(float(np.abs(filaments).max()), 1e-6)
    grains = _smooth_noise(rng, shape, SUN_FILAMENT_PX)  # brightness along the filaments
    penumbra = SUN_PENUMBRA_LEVEL * (1.0 + 0.45 * filaments + 0.12 * grains) * (0.85 + 0.3 * rel)
    umbra = SUN_UMBRA_LEVEL * (1.0 + 0.3 * _smooth_noise(rng, shape, granule * 0.5))
    width = 0.12 * granule
    in_pen = _smoothstep((r_pen - r) / width + 0.5)
    in_umbra = _smoothstep((r_umbra - r) / width + 0.5)
    image = photosphere * (1.0 - in_pen) + penumbra * in_pen
    image = image * (1.0 - in_umbra) + umbra * in_umbra
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.6)


def _granulation(rng: np.random.Generator, shape: tuple[int, int], granule: float) -> np.ndarray:
    """Cellular pattern: bright granules bounded by dark lanes (a warped Voronoi diagram)."""
    h, w = shape
    pad = int(2 * granule)
    ph, pw = h + 2 * pad, w + 2 * pad
    # jittered grid of granule centres
    ny, nx = int(ph / granule) + 1, int(pw / granule) + 1
    gy = (np.arange(ny)[:, None] + rng.uniform(0.1, 0.9, (ny, nx))) * granule
    gx = (np.arange(nx)[None, :] + rng.uniform(0.1, 0.9, (ny, nx))) * granule
    seeds = np.full((ph, pw), 255, np.uint8)
    iy = np.clip(gy.astype(int), 0, ph - 1)
    ix = np.clip(gx.astype(int), 0, pw - 1)
    seeds[iy, ix] = 0
    dist_c, labels = cv2.distanceTransformWithLabels(
        seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # lanes: where the nearest centre changes
    lane = np.zeros((ph, pw), np.uint8)
    lane[:, 1:] |= (labels[:, 1:] != labels[:, :-1]).astype(np.uint8)
    lane[1:, :] |= (labels[1:, :] != labels[:-1, :]).astype(np.uint8)
    dist_l = cv2.distanceTransform((1 - lane).astype(np.uint8), cv2.DIST_L2, 5)
    t = dist_l / np.maximum(dist_l + dist_c, 1e-3)
    # per-granule brightness variation
    bright = rng.uniform(0.85, 1.15, labels.max() + 1).astype(np.float32)
    level = np.sqrt(_smoothstep(t * 1.6)) * bright[labels]
    image = SUN_LANE_LEVEL + (SUN_GRANULE_LEVEL - SUN_LANE_LEVEL) * level
    image = image.astype(np.float32)
    # warp to round the polygonal cells, then soften the lanes slightly
    wy = _smooth_noise(rng, (ph, pw), granule) * np.float32(granule * 0.18)
    wx = _smooth_noise(rng, (ph, pw), granule) * np.float32(granule * 0.18)
    base_y, base_x = np.mgrid[0:ph, 0:pw].astype(np.float32)
    image = cv2.remap(
        image, base_x + wx, base_y + wy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    )
    image = cv2.GaussianBlur(image, (0, 0), granule * 0.05 + 0.3)
    image *= 1.0 + 0.03 * _smooth_noise(rng, (ph, pw), granule * 0.25)
    return image[pad : pad + h, pad : pad + w]


def _angular_noise(
    rng: np.random.Generator,
    theta: np.ndarray,
    harmonics: int,
    amplitude: float,
    power: float = 1.0,
) -> np.ndarray:
    """Smooth periodic noise in the angle ``theta``: a random Fourier series whose
    ``k``-th harmonic has amplitude ``k**-power``, scaled to ``amplitude`` RMS.

    The series is tabulated over one turn and looked up by linear interpolation."""
    k = np.arange(1, harmonics + 1, dtype=np.float64)
    coef = rng.standard_normal((2, harmonics)) * k ** (-power)
    norm = float(np.sqrt(0.5 * np.sum(coef**2)))
    samples = max(ANGLE_TABLE_SIZE, 16 * harmonics)
    grid = np.linspace(-math.pi, math.pi, samples + 1)
    phase = np.outer(k, grid)
    table = coef[0] @ np.cos(phase) + coef[1] @ np.sin(phase)
    table *= amplitude / max(norm, 1e-9)
    wrapped = np.mod(theta + math.pi, 2 * math.pi) - math.pi
    return np.interp(wrapped, grid, table).astype(np.float32)
