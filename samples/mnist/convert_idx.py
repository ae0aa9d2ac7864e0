"""Convert the real MNIST IDX files (gzipped or not) to the CNTK text format the sample trains on.

For anyone who has `train-images-idx3-ubyte(.gz)`, `train-labels-idx1-ubyte(.gz)`,
`t10k-images-idx3-ubyte(.gz)` and `t10k-labels-idx1-ubyte(.gz)`:

    python convert_idx.py IDX_DIR OUT_DIR        # finds the four files by their usual names
    python convert_idx.py --images X --labels Y --out FILE   # one pair to one file

Writes `Train-28x28_cntk_text.txt` and `Test-28x28_cntk_text.txt` (`|labels <one-hot 10> |features
<784 values 0..255>` per line). Standard library only: streams, never holds a whole file of text.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TRAIN_FILE = "Train-28x28_cntk_text.txt"
TEST_FILE = "Test-28x28_cntk_text.txt"
UNSIGNED_BYTE = 0x08
SPLITS = {
    TRAIN_FILE: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    TEST_FILE: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxError(ValueError):
    """A file that is not a usable IDX file; the message names the file and the problem."""


def open_idx(path: Path) -> BinaryIO:
    """Open plain or gzipped IDX by content (gzip magic), not by name."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")  # type: ignore[return-value]


def read_header(f: BinaryIO, path: Path, dims: int) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise IdxError(f"{path}: not an IDX file (bad magic number)")
    if head[2] != UNSIGNED_BYTE:
        raise IdxError(f"{path}: element type 0x{head[2]:02x} is not unsigned byte (0x08)")
    if head[3] != dims:
        raise IdxError(f"{path}: {head[3]} dimensions, expected {dims}")
    raw = f.read(4 * dims)
    if len(raw) < 4 * dims:
        raise IdxError(f"{path}: truncated header")
    return struct.unpack(f">{dims}I", raw)


def read_exact(f: BinaryIO, size: int, path: Path, what: str) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise IdxError(f"{path}: truncated: {what} ends early")
    return data


def iter_samples(images_path: Path, labels_path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (label, row-major pixels) pairs, checking the two files agree."""
    with open_idx(images_path) as images, open_idx(labels_path) as labels:
        try:
            count, rows, cols = read_header(images, images_path, 3)
            (label_count,) = read_header(labels, labels_path, 1)
        except (OSError, EOFError) as exc:  # gzip errors on corrupt archives
            raise IdxError(f"{images_path} / {labels_path}: {exc}") from None
        if count != label_count:
            raise IdxError(f"{images_path} has {count} images but {labels_path} has {label_count} labels")
        if (rows, cols) != (28, 28):
            raise IdxError(f"{images_path}: images are {rows}x{cols}, expected 28x28")
        for i in range(count):
            label = read_exact(labels, 1, labels_path, f"label {i}")[0]
            if label > 9:
                raise IdxError(f"{labels_path}: label {i} is {label}, expected 0..9")
            yield label, read_exact(images, rows * cols, images_path, f"image {i}")


def convert(images_path: Path, labels_path: Path, out_path: Path) -> int:
    """Write one CNTK text file; returns the number of samples."""
    count = 0
    tmp = out_path.with_name(out_path.name + ".part")
    try:
        with tmp.open("w", encoding="ascii") as out:
            for label, pixels in iter_samples(images_path, labels_path):
                onehot = " ".join("1" if i == label else "0" for i in range(10))
                out.write(f"|labels {onehot} |features {' '.join(map(str, pixels))}\n")
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out_path)  # no half-written file under the final name
    return count


def find(idx_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (idx_dir / name).is_file():
            return idx_dir / name
    raise IdxError(f"{idx_dir}: no {stem} or {stem}.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_idx.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("idx_dir", nargs="?", type=Path, help="directory holding the four MNIST IDX files")
    parser.add_argument("out_dir", nargs="?", type=Path, help="directory to write the two text files into")
    parser.add_argument("--images", type=Path, help="one images IDX file (with --labels and --out)")
    parser.add_argument("--labels", type=Path, help="one labels IDX file")
    parser.add_argument("--out", type=Path, help="the text file to write for --images/--labels")
    args = parser.parse_args(argv)
    try:
        if args.images or args.labels or args.out:
            if not (args.images and args.labels and args.out) or args.idx_dir:
                parser.error("--images, --labels and --out go together, without IDX_DIR/OUT_DIR")
            jobs = [(args.images, args.labels, args.out)]
        elif args.idx_dir and args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            jobs = [(find(args.idx_dir, i), find(args.idx_dir, lab), args.out_dir / out)
                    for out, (i, lab) in SPLITS.items()]  # fmt: skip
        else:
            parser.error("give IDX_DIR and OUT_DIR, or --images, --labels and --out")
        for images, labels, out in jobs:
            count = convert(images, labels, out)
            print(f"{out}: {count} samples from {images.name} and {labels.name}")
    except (IdxError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
