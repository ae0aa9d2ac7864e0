"""The quickstart's MNIST ConvNet, in PyTorch, reading the CNTK text format the quickstart's data uses.

Called as the quickstart's Batch AI job called the CNTK script:

    python ConvNet_MNIST.py <input dir> <output dir> [--epochs N] [--batch-size B] [--seed S] ...

The input directory holds `Train-28x28_cntk_text.txt` and `Test-28x28_cntk_text.txt`, one sample per
line: `|labels <one-hot 10> |features <784 values>` (0..255, or 0..1 floats). The script prints one line
per epoch, both for a person and as a JSON line (prefix-free, starts with `{`), and writes the trained
model (`ConvNet_MNIST.pt`: state dict plus the architecture settings) and `metrics.json` into the
output directory. It runs inside a Batch AI job, so it imports nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import warnings
from array import array
from pathlib import Path

# torch warns at import when numpy is absent; the script never needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

TRAIN_FILE = "Train-28x28_cntk_text.txt"
TEST_FILE = "Test-28x28_cntk_text.txt"
MODEL_FILE = "ConvNet_MNIST.pt"
METRICS_FILE = "metrics.json"
NUM_CLASSES = 10
IMAGE_SIZE = 28


class ConvNet(nn.Module):
    """The CNTK example's ConvNet_MNIST: conv5x5/32 -> pool3/2 -> conv3x3/48 -> pool3/2 -> conv3x3/64
    -> dense 96 with dropout 0.5 -> 10. `width` scales the channel counts (1.0 is the original)."""

    def __init__(self, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, d = (max(4, round(c * width)) for c in (32, 48, 64, 96))
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)  # 28x28
        self.conv2 = nn.Conv2d(c1, c2, 3)  # pool -> 13x13, conv -> 11x11
        self.conv3 = nn.Conv2d(c2, c3, 3)  # pool -> 5x5, conv -> 3x3
        self.fc = nn.Linear(c3 * 3 * 3, d)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, 2)
        x = F.relu(self.conv3(x))
        x = self.drop(F.relu(self.fc(x.flatten(1))))
        return self.out(x)


class DataError(ValueError):
    """The input files are missing or not in the CNTK text format; the message names file and line."""


def read_cntk_text(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse `|labels ... |features ...` lines into (N, 1, 28, 28) float images in [0, 1] and labels."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    labels: list[int] = []
    pixels = array("f")
    with path.open("r", encoding="ascii", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            fields = {}
            for part in text.split("|")[1:]:
                name, _, values = part.partition(" ")
                fields[name] = values.split()
            if "labels" not in fields or "features" not in fields:
                raise DataError(f"{path}:{number}: expected '|labels ... |features ...'")
            onehot, features = fields["labels"], fields["features"]
            if len(onehot) != NUM_CLASSES or len(features) != IMAGE_SIZE * IMAGE_SIZE:
                raise DataError(
                    f"{path}:{number}: expected {NUM_CLASSES} labels and {IMAGE_SIZE * IMAGE_SIZE} "
                    f"features, got {len(onehot)} and {len(features)}"
                )
            try:
                label_values = [float(v) for v in onehot]
                pixels.extend(map(float, features))
            except ValueError as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
            labels.append(max(range(NUM_CLASSES), key=label_values.__getitem__))
    if not labels:
        raise DataError(f"{path}: no samples")
    images = torch.frombuffer(pixels, dtype=torch.float32).clone().reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    if images.max() > 1.0:  # MNIST's CNTK text files hold 0..255
        images /= 255.0
    return images, torch.tensor(labels, dtype=torch.long)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int) -> tuple[float, float]:  # fmt: skip
    """Mean loss and accuracy over a dataset, without gradients or dropout."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


def idle_cores() -> int:
    """CPU threads to train with: the cores this process may use that are not busy already.

    torch's default divides the cores by OMPI_COMM_WORLD_LOCAL_SIZE, which Batch AI (and the local
    emulator) set for every job, so it must be set here anyway. On a dedicated node that is every core;
    on a shared machine (the local stack) OpenMP threads that wait for busy cores run many times slower
    than fewer threads, so cores already loaded (1-minute load average) are left out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ConvNet_MNIST.py",
        description="Train the quickstart's MNIST ConvNet (PyTorch) on CNTK text format data.",
    )
    parser.add_argument("input_dir", type=Path, help=f"directory holding {TRAIN_FILE} and {TEST_FILE}")
    parser.add_argument("output_dir", type=Path, help="directory to write the model and metrics.json into")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (default %(default)s)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default 0: the cores not busy already)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to train (default: CUDA when available, CPU otherwise)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.width <= 0:
        parser.error("--epochs, --batch-size, --lr and --width must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    seed_everything(args.seed)
    torch.set_num_threads(args.threads or idle_cores())
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but CUDA is not available", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    try:
        train_x, train_y = read_cntk_text(args.input_dir / TRAIN_FILE)
        test_x, test_y = read_cntk_text(args.input_dir / TEST_FILE)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_seconds = time.monotonic() - started
    name = torch.cuda.get_device_name(0) if use_cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {device} [{name}]; {len(train_y)} training and {len(test_y)} test samples "
          f"loaded in {load_seconds:.1f}s", flush=True)  # fmt: skip

    model = ConvNet(width=args.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(train_y) + args.batch_size - 1) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    shuffle = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        epoch_start = time.monotonic()
        order = torch.randperm(len(train_y), generator=shuffle)
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        train_seconds = time.monotonic() - epoch_start
        test_loss, test_accuracy = evaluate(model, test_x, test_y, device, 512)
        record = {
            "epoch": epoch,
            "loss": round(total_loss / len(train_y), 6),
            "accuracy": round(correct / len(train_y), 6),
            "test_loss": round(test_loss, 6),
            "test_accuracy": round(test_accuracy, 6),
            "samples_per_sec": round(len(train_y) / train_seconds, 1),
            "seconds": round(time.monotonic() - epoch_start, 3),
        }
        history.append(record)
        print(f"Epoch {epoch}/{args.epochs}: loss {record['loss']:.4f}, accuracy {record['accuracy']:.2%}, "
              f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.2%}, "
              f"{record['samples_per_sec']:.0f} samples/s", flush=True)  # fmt: skip
        print(json.dumps(record), flush=True)  # a metrics record: docs/run-spec.md, read live by the monitor

    args.output_dir.mkdir(parents=True, exist_ok=True)
    config = {"width": args.width, "num_classes": NUM_CLASSES, "image_size": IMAGE_SIZE}
    torch.save({"state_dict": model.state_dict(), "config": config}, args.output_dir / MODEL_FILE)
    final = history[-1]
    metrics = {
        "model_file": MODEL_FILE,
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "train_accuracy": final["accuracy"],
        "train_loss": final["loss"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "width": args.width,
        "seed": args.seed,
        "train_samples": len(train_y),
        "test_samples": len(test_y),
        "device": str(device),
        "device_name": name,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "load_seconds": round(load_seconds, 3),
        "elapsed_seconds": round(time.monotonic() - started, 3),
        "history": history,
    }
    (args.output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"final test accuracy {final['test_accuracy']:.2%}; model and metrics written to "
          f"{args.output_dir} in {metrics['elapsed_seconds']:.1f}s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
