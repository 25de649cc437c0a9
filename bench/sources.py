"""Real image content that ships with a package we already depend on (matplotlib), for held-out data.

What there is, and what the held-out suite (bench/heldout.py) takes from it:
- `mpl-data/sample_data/grace_hopper.jpg`: a 512x600 photograph -> `texture('photo')` crops;
- `jacksboro_fault_dem.npz`: a 344x403 real elevation model -> `texture('relief')` (hill-shaded, grey)
  and `texture('terrain')` (hill shade times matplotlib's terrain colour map: an aerial-map look);
- `s1045.ima.gz`: a 256x256 MRI slice -> `texture('mri')`;
- `Minduka_Present_Blue_Pack.png`: a 128x128 RGBA gift-box icon -> `sprite('gift')`; `logo2.png`:
  matplotlib's logo -> `sprite('logo')`;
- `mpl-data/fonts/ttf`: real typefaces (DejaVu, STIX, Computer Modern) -> `glyph(char, font)`.
No handwriting ships with any of our dependencies, so fine-grained glyph classes are typeset, not written.
OpenCV ships no images. Everything here is read-only and cached per process.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.ft2font import FT2Font, LoadFlags

TEXTURES = ("photo", "relief", "terrain", "mri")
SPRITES = ("gift", "logo")
# real typefaces of different design (sans, serif, mono, slanted, bold, Computer Modern)
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Bold",
         "DejaVuSerif-Italic", "DejaVuSansMono", "DejaVuSansMono-Bold", "STIXGeneral", "STIXGeneralBol",
         "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10")
GLYPH_PX = 96  # glyphs are rendered once at this size, then warped to their size in the image


def _mpl_data() -> Path:
    return Path(matplotlib.get_data_path())


def _sample(name: str) -> Path:
    path = _mpl_data() / "sample_data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: matplotlib's sample data is missing (held-out data needs it)")
    return path


def _hillshade(z: np.ndarray, azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Lambertian shading of a height field, 0..1."""
    gy, gx = np.gradient(z.astype(np.float64))
    slope = np.pi / 2 - np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)
    az, alt = np.radians(360 - azimuth + 90), np.radians(altitude)
    shade = np.sin(alt) * np.sin(slope) + np.cos(alt) * np.cos(slope) * np.cos(az - aspect)
    return np.clip(shade, 0, 1)


@lru_cache(maxsize=None)
def _texture_source(kind: str) -> np.ndarray:
    """A source image as BGR float32 0..255."""
    if kind == "photo":
        img = cv2.imread(str(_sample("grace_hopper.jpg")), cv2.IMREAD_COLOR)
        return img.astype(np.float32)
    if kind in ("relief", "terrain"):
        z = np.load(_sample("jacksboro_fault_dem.npz"))["elevation"].astype(np.float64)
        shade = _hillshade(z)
        if kind == "relief":
            return np.repeat((shade * 255)[..., None], 3, 2).astype(np.float32)
        rgb = colormaps["terrain"]((z - z.min()) / (np.ptp(z) + 1e-9))[..., :3] * (0.35 + 0.65 * shade[..., None])
        return (rgb[..., ::-1] * 255).astype(np.float32)
    if kind == "mri":
        raw = gzip.open(_sample("s1045.ima.gz")).read()
        z = np.frombuffer(raw, np.uint16).reshape(256, 256).astype(np.float32)
        z = z / max(float(np.percentile(z, 99.5)), 1.0) * 255
        return np.repeat(np.clip(z, 0, 255)[..., None], 3, 2)
    raise ValueError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")


def texture(rng: np.random.Generator, hw: tuple[int, int], kind: str | None = None) -> np.ndarray:
    """A random crop of a real image, resized to hw (h, w), flipped/rotated by 90s and colour-jittered.

    Returns BGR float32 0..255 (a new array)."""
    kind = kind or TEXTURES[rng.integers(len(TEXTURES))]
    src = _texture_source(kind)
    sh, sw = src.shape[:2]
    h, w = hw
    scale = rng.uniform(0.3, 1.0)  # share of the source's short side the crop spans
    ch = max(8, int(min(sh, sw) * scale))
    cw = min(sw, max(8, int(ch * w / h)))
    y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    out = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)
    gain = rng.uniform(0.6, 1.3, 3).astype(np.float32)  # per-channel gain: tints grey sources too
    return np.clip(out * gain + rng.uniform(-30, 30), 0, 255).astype(np.float32)


@lru_cache(maxsize=None)
def sprite_rgba(name: str) -> np.ndarray:
    """A shipped RGBA artwork, cropped to its opaque pixels: BGR float32 colour + alpha 0..1 (h, w, 4)."""
    files = {"gift": "Minduka_Present_Blue_Pack.png", "logo": "logo2.png"}
    if name not in files:
        raise ValueError(f"unknown sprite {name!r}; known: {', '.join(SPRITES)}")
    img = cv2.imread(str(_sample(files[name])), cv2.IMREAD_UNCHANGED).astype(np.float32)
    alpha = img[..., 3] / 255
    ys, xs = np.nonzero(alpha > 0.05)
    img = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    img[..., 3] /= 255
    return img


@lru_cache(maxsize=None)
def glyph(char: str, font: str) -> np.ndarray:
    """Coverage mask (float32 0..1) of one character in a shipped typeface, about GLYPH_PX tall, tightly cropped."""

    path = _mpl_data() / "fonts" / "ttf" / f"{font}.ttf"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such matplotlib font (known: {', '.join(FONTS)})")
    f = FT2Font(str(path))
    f.set_size(GLYPH_PX * 1.3, 72)  # point size at 72 dpi = pixels; digits are ~0.75 em tall
    f.set_text(char, 0.0, flags=LoadFlags.NO_HINTING)
    f.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(f.get_image(), np.float32) / 255
    ys, xs = np.nonzero(img > 0.05)
    if not len(ys):
        raise ValueError(f"font {font} draws nothing for {char!r}")
    return np.ascontiguousarray(img[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def warp(src: np.ndarray, size: float, angle: float, shear: float, aspect: float, center: tuple[float, float],
         hw: tuple[int, int]) -> np.ndarray:
    """Place `src` (h, w[, c]) into an hw canvas: its height scaled to `size` px, width times `aspect`,
    sheared, rotated by `angle` degrees about `center` (x, y). Zeros outside; bilinear."""
    sh, sw = src.shape[:2]
    s = size / sh
    a = np.radians(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([s * aspect, s])
    offset = np.asarray(center) - lin @ np.array([sw / 2, sh / 2])
    m = np.hstack([lin, offset[:, None]]).astype(np.float64)
    return cv2.warpAffine(src, m, (hw[1], hw[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
