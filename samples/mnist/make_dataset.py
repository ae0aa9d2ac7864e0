"""Write an MNIST-like dataset in the CNTK text format, with no network and no fonts on the machine.

Digits are drawn from vector stroke definitions written here (several "fonts", i.e. stroke styles,
per digit), then each sample gets its own slant, rotation, scale, aspect, shift, smooth warp, stroke
width and pixel noise, and is rasterised to 28x28 as a distance field. Only torch is needed (already
the sample's one dependency), so the generator runs wherever the training script runs.

Each line is `|labels <one-hot 10> |features <784 integers 0..255>`, row-major, as in the files the
quickstart used (`Train-28x28_cntk_text.txt`, `Test-28x28_cntk_text.txt`).

    python make_dataset.py OUT_DIR [--train N] [--test N] [--seed S]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

# torch warns at import when numpy is absent; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

TRAIN_FILE = "Train-28x28_cntk_text.txt"
TEST_FILE = "Test-28x28_cntk_text.txt"
SIZE = 28
DEFAULT_TRAIN = 6000
DEFAULT_TEST = 1000

Point = tuple[float, float]
Polyline = list[Point]


# --- stroke primitives: unit box, x to the right, y downwards ---------------------------------------
def line(*points: Point) -> Polyline:
    return list(points)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 10) -> Polyline:
    """Elliptical arc; angles in degrees, 0 = right, 90 = down (y grows downwards)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in (start + (end - start) * i / steps for i in range(steps + 1))
    ]


def bezier(p0: Point, control: Point, p1: Point, steps: int = 12) -> Polyline:
    """Quadratic Bezier curve: the bent stems of 6, 7 and 9."""
    out = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        out.append(
            (
                u * u * p0[0] + 2 * u * t * control[0] + t * t * p1[0],
                u * u * p0[1] + 2 * u * t * control[1] + t * t * p1[1],
            )
        )
    return out


# Several stroke styles per digit: the "fonts". Each style is a list of polylines.
STYLES: dict[int, list[list[Polyline]]] = {
    0: [
        [arc(0.5, 0.5, 0.45, 0.5, 0, 360, 20)],
        [arc(0.5, 0.5, 0.36, 0.5, -80, 285, 20)],
        [arc(0.5, 0.5, 0.42, 0.48, 0, 360, 20), line((0.8, 0.15), (0.2, 0.85))],
    ],
    1: [
        [line((0.5, 0.0), (0.5, 1.0))],
        [line((0.25, 0.22), (0.55, 0.0), (0.55, 1.0))],
        [line((0.25, 0.2), (0.5, 0.0), (0.5, 1.0)), line((0.2, 1.0), (0.8, 1.0))],
    ],
    2: [
        [arc(0.5, 0.28, 0.42, 0.28, 200, 400), line((0.82, 0.46), (0.05, 1.0), (0.95, 1.0))],
        [
            arc(0.5, 0.3, 0.4, 0.3, 190, 380),
            bezier((0.89, 0.4), (0.5, 0.7), (0.05, 1.0)),
            line((0.05, 1.0), (1.0, 0.95)),
        ],
        [
            arc(0.5, 0.27, 0.4, 0.27, 200, 390),
            line((0.86, 0.4), (0.1, 0.95)),
            arc(0.22, 0.88, 0.12, 0.12, 150, 390, 10),
            line((0.3, 0.97), (0.95, 1.0)),
        ],
    ],
    3: [
        [arc(0.5, 0.26, 0.38, 0.26, 200, 450), arc(0.5, 0.75, 0.44, 0.25, -90, 160)],
        [line((0.1, 0.0), (0.9, 0.0), (0.42, 0.42)), arc(0.5, 0.72, 0.44, 0.28, -100, 155)],
        [
            arc(0.5, 0.25, 0.36, 0.25, 190, 440),
            line((0.35, 0.5), (0.5, 0.5)),
            arc(0.5, 0.75, 0.45, 0.25, -90, 170),
        ],
    ],
    4: [
        [line((0.72, 1.0), (0.72, 0.0), (0.0, 0.68), (1.0, 0.68))],
        [line((0.15, 0.0), (0.05, 0.6), (0.95, 0.6)), line((0.72, 0.22), (0.72, 1.0))],
        [line((0.3, 0.0), (0.0, 0.62), (0.95, 0.62)), line((0.75, 0.3), (0.7, 1.0))],
    ],
    5: [
        [line((0.9, 0.0), (0.22, 0.0), (0.18, 0.45)), arc(0.5, 0.68, 0.42, 0.32, -130, 150)],
        [
            line((0.95, 0.02), (0.25, 0.0)),
            line((0.25, 0.0), (0.15, 0.48)),
            arc(0.48, 0.7, 0.44, 0.3, -140, 155),
        ],
    ],
    6: [
        [bezier((0.8, 0.02), (0.12, 0.15), (0.1, 0.7)), arc(0.5, 0.7, 0.4, 0.3, 0, 360, 18)],
        [arc(0.55, 0.55, 0.45, 0.55, 270, 180, 12), arc(0.5, 0.72, 0.4, 0.28, 180, 540, 18)],
    ],
    7: [
        [line((0.0, 0.0), (1.0, 0.0), (0.35, 1.0))],
        [line((0.0, 0.0), (1.0, 0.0), (0.35, 1.0)), line((0.3, 0.52), (0.88, 0.52))],
        [line((0.0, 0.12), (0.05, 0.0), (1.0, 0.0)), bezier((1.0, 0.0), (0.55, 0.45), (0.45, 1.0))],
    ],
    8: [
        [arc(0.5, 0.25, 0.33, 0.25, 0, 360, 18), arc(0.5, 0.72, 0.42, 0.28, 0, 360, 18)],
        [arc(0.5, 0.24, 0.3, 0.24, 90, 450, 18), arc(0.5, 0.73, 0.4, 0.27, -90, 270, 18)],
    ],
    9: [
        [arc(0.5, 0.3, 0.4, 0.3, 0, 360, 18), line((0.9, 0.3), (0.85, 1.0))],
        [arc(0.5, 0.3, 0.4, 0.3, 0, 360, 18), bezier((0.9, 0.3), (0.9, 0.9), (0.3, 1.0))],
        [arc(0.45, 0.28, 0.4, 0.28, 0, 360, 18), line((0.85, 0.3), (0.55, 1.0))],
    ],
}

FAR = 1.0e4  # padding segments live far outside the image and never light a pixel


def _style_segments() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Every style as a padded tensor of segments (styles, max_segments, 2 endpoints, xy), centred at 0."""
    flat: list[list[tuple[Point, Point]]] = []
    index: list[tuple[int, int]] = []  # (digit, style row)
    for digit, styles in STYLES.items():
        for polylines in styles:
            segs = [(a, b) for poly in polylines for a, b in itertools.pairwise(poly)]
            index.append((digit, len(flat)))
            flat.append(segs)
    longest = max(len(s) for s in flat)
    table = torch.full((len(flat), longest, 2, 2), FAR)
    for i, segs in enumerate(flat):
        t = torch.tensor(segs, dtype=torch.float32) - 0.5  # centre of the unit box at the origin
        table[i, : len(segs)] = t
    return table, index


def render(labels: torch.Tensor, generator: torch.Generator, batch: int = 64) -> torch.Tensor:
    """Rasterise one image per label: (N, 28, 28) uint8, each with its own random style and distortion."""
    table, index = _style_segments()
    by_digit: dict[int, list[int]] = {}
    for digit, row in index:
        by_digit.setdefault(digit, []).append(row)
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (784, 2)
    out = torch.empty((len(labels), SIZE, SIZE), dtype=torch.uint8)
    g = generator

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g)

    for start in range(0, len(labels), batch):
        lab = labels[start : start + batch]
        n = len(lab)
        pick = torch.rand(n, generator=g)
        rows = torch.tensor(
            [by_digit[int(d)][int(p * len(by_digit[int(d)]))] for d, p in zip(lab, pick, strict=True)]
        )
        segs = table[rows].clone()  # (n, S, 2, 2)
        pad = segs[..., 0] >= FAR / 2
        # Smooth random warp of the strokes: two sine waves across the glyph, so lines wobble like a pen.
        amp = uniform(n, 0.0, 0.06)[:, None, None]
        fx, fy = uniform(n, 1.5, 4.0)[:, None, None], uniform(n, 1.5, 4.0)[:, None, None]
        px, py = uniform(n, 0, 6.3)[:, None, None], uniform(n, 0, 6.3)[:, None, None]
        x, y = segs[..., 0], segs[..., 1]
        x2 = x + amp * torch.sin(fy * y * 3.14 + px)
        y2 = y + amp * torch.sin(fx * x * 3.14 + py)
        # Affine: aspect, scale, slant (shear), rotation, shift. MNIST digits fill a ~20 px box.
        height = uniform(n, 15.0, 21.0)[:, None, None]
        width = height * uniform(n, 0.5, 0.85)[:, None, None]
        shear = uniform(n, -0.35, 0.35)[:, None, None]
        angle = torch.deg2rad(uniform(n, -14.0, 14.0))[:, None, None]
        x3 = x2 * width - shear * y2 * height
        y3 = y2 * height
        cos, sin = torch.cos(angle), torch.sin(angle)
        x4 = cos * x3 - sin * y3 + SIZE / 2 + uniform(n, -2.5, 2.5)[:, None, None]
        y4 = sin * x3 + cos * y3 + SIZE / 2 + uniform(n, -2.5, 2.5)[:, None, None]
        x4 = torch.where(pad, FAR, x4)
        y4 = torch.where(pad, FAR, y4)
        # Distance from every pixel centre to the nearest segment, component-wise (n, 784, S) to stay
        # cheap: the minimum over segments, then one square root.
        ax, ay = x4[..., 0][:, None, :], y4[..., 0][:, None, :]
        dx, dy = x4[..., 1][:, None, :] - ax, y4[..., 1][:, None, :] - ay
        inv_len2 = 1.0 / (dx * dx + dy * dy).clamp_min(1e-6)
        apx = pixels[None, :, None, 0] - ax
        apy = pixels[None, :, None, 1] - ay
        t = ((apx * dx + apy * dy) * inv_len2).clamp_(0, 1)
        apx.sub_(t * dx)
        apy.sub_(t * dy)
        dist = (apx * apx + apy * apy).amin(dim=-1).sqrt_()  # (n, 784)
        # Stroke: half-width in pixels with a soft edge (pen pressure and blur differ per sample).
        half = uniform(n, 0.7, 1.9)[:, None]
        edge = uniform(n, 0.5, 1.2)[:, None]
        ink = ((half - dist) / edge + 0.5).clamp(0, 1) * uniform(n, 0.75, 1.0)[:, None]
        noise = torch.randn(n, SIZE * SIZE, generator=g) * uniform(n, 0.0, 0.08)[:, None]
        speckle = (torch.rand(n, SIZE * SIZE, generator=g) < 0.01) * torch.rand(n, SIZE * SIZE, generator=g)
        image = (ink + noise.clamp_min(0) * (ink < 0.05) + noise * (ink >= 0.05) + 0.6 * speckle).clamp(0, 1)
        out[start : start + n] = (image * 255).round().to(torch.uint8).reshape(n, SIZE, SIZE)
    return out


def format_line(label: int, image: Sequence[int]) -> str:
    onehot = " ".join("1" if i == label else "0" for i in range(10))
    return f"|labels {onehot} |features {' '.join(map(str, image))}\n"


def write_split(path: Path, count: int, seed: int) -> None:
    """Balanced labels (each digit count/10 times, shuffled), rendered and written as CNTK text."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    labels = labels[torch.randperm(count, generator=g)]
    images = render(labels, g).reshape(count, -1).tolist()
    with path.open("w", encoding="ascii") as f:
        for label, image in zip(labels.tolist(), images, strict=True):
            f.write(format_line(label, image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_dataset.py",
        description="Write an MNIST-like dataset (CNTK text format) rendered from vector strokes, offline.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the two files into (created)")
    parser.add_argument(
        "--train", type=int, default=DEFAULT_TRAIN, help="training samples (default %(default)s)"
    )
    parser.add_argument("--test", type=int, default=DEFAULT_TEST, help="test samples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    args = parser.parse_args(argv)
    if args.train < 1 or args.test < 1:
        parser.error("--train and --test must be at least 1")
    started = time.monotonic()
    # Small tensor ops: one thread is as fast alone and far faster when other work shares the cores.
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Different seeds for the two splits: the test set never repeats a training image.
    write_split(args.out_dir / TRAIN_FILE, args.train, args.seed)
    write_split(args.out_dir / TEST_FILE, args.test, args.seed + 1_000_003)
    print(
        f"wrote {args.train} training and {args.test} test samples to {args.out_dir} "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
