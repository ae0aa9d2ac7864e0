"""The quickstart's MNIST ConvNet, in PyTorch, reading the CNTK text format the quickstart's data uses.

Called as the quickstart's Batch AI job called the CNTK script:

    python ConvNet_MNIST.py <input dir> <output dir> [--epochs N] [--batch-size B] [--seed S] ...

The input directory holds `Train-28x28_cntk_text.txt` and `Test-28x28_cntk_text.txt`, one sample per
line: `|labels <one-hot 10> |features <784 values>` (0..255, or 0..1 floats). The script prints one line
per epoch, both for a person and as a JSON line (prefix-free, starts with `{`), and writes the trained
model (`ConvNet_MNIST.pt`: state dict plus the architecture settings) and `metrics.json` into the
output directory. It runs inside a Batch AI job, so it imports nothing from the project.

Data-parallel mode (PyTorch DistributedDataParallel: `gloo` on the CPU, `nccl` with CUDA) starts by
itself when the service runs several processes: the world size comes from `WORLD_SIZE` (Azure ML's
PyTorch distribution; the Batch AI emulator sets it too) or `OMPI_COMM_WORLD_SIZE` (Batch AI runs a
toolkit's processes through MPI), the rank from `RANK`, `AZ_BATCHAI_TASK_INDEX` or
`OMPI_COMM_WORLD_RANK`, and the rendezvous from `AZ_BATCHAI_PYTORCH_INIT_METHOD` (Batch AI's PyTorch
toolkit) or `MASTER_ADDR`/`MASTER_PORT` (`env://`, Azure ML). `--dist-url`, `--rank` and
`--world-size` override them, as in Microsoft's PyTorch-GPU-Distributed-Gloo recipe. Every rank trains
on its shard of each epoch's shuffled order (every world-size-th sample from its rank on) and prints
`rank R/W: shard of N training samples`; rank 0 alone prints the epoch lines and writes the model and
metrics.
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


class Distributed:
    """Where this process stands in a data-parallel job: rank, world size and rendezvous URL."""

    def __init__(self, rank: int, world_size: int, init_method: str, local_rank: int, local_size: int):
        self.rank, self.world_size, self.init_method = rank, world_size, init_method
        self.local_rank, self.local_size = local_rank, local_size

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(env: dict[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise DataError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def distributed_from(args: argparse.Namespace, env: dict[str, str]) -> Distributed:
    """The rank, world size and rendezvous the service gave this process (flags first).

    Batch AI: `AZ_BATCHAI_TASK_INDEX`, `OMPI_COMM_WORLD_*` and `AZ_BATCHAI_PYTORCH_INIT_METHOD`; Azure
    ML's PyTorch distribution: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`."""
    world = args.world_size or _env_int(env, "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE") or 1
    if world == 1:
        return Distributed(0, 1, "", 0, 1)
    rank = (
        args.rank
        if args.rank is not None
        else _env_int(env, "RANK", "AZ_BATCHAI_TASK_INDEX", "OMPI_COMM_WORLD_RANK")
    )
    if rank is None or not 0 <= rank < world:
        raise DataError(f"world size {world} but no valid rank (got {rank}): set RANK or pass --rank")
    init = args.dist_url or env.get("AZ_BATCHAI_PYTORCH_INIT_METHOD", "")
    if not init:
        if not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
            raise DataError(
                "world size > 1 but no rendezvous: set AZ_BATCHAI_PYTORCH_INIT_METHOD, "
                "MASTER_ADDR and MASTER_PORT, or pass --dist-url"
            )
        init = "env://"
    local_rank = _env_int(env, "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")
    return Distributed(rank, world, init, rank if local_rank is None else local_rank, local_size or world)


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
    parser.add_argument(
        "--dist-url", default="", help="rendezvous (default: AZ_BATCHAI_PYTORCH_INIT_METHOD, else env://)"
    )
    parser.add_argument(
        "--rank", type=int, default=None, help="this process's rank (default: from the service)"
    )
    parser.add_argument(
        "--world-size", type=int, default=0, help="processes in all (default: from the service)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.width <= 0:
        parser.error("--epochs, --batch-size, --lr and --width must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    seed_everything(args.seed)
    try:
        dist = distributed_from(args, dict(os.environ))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cores = idle_cores() if not dist.enabled else max(1, idle_cores() // max(1, dist.local_size))
    torch.set_num_threads(args.threads or cores)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but CUDA is not available", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    try:
        train_x, train_y = read_cntk_text(args.input_dir / TRAIN_FILE)
        test_x, test_y = read_cntk_text(args.input_dir / TEST_FILE)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dist.enabled:
        import torch.distributed as torch_dist

        backend = "nccl" if use_cuda else "gloo"
        torch_dist.init_process_group(backend, init_method=dist.init_method, rank=dist.rank,
                                      world_size=dist.world_size)  # fmt: skip
    try:
        code = train(args, dist, device, use_cuda, train_x, train_y, test_x, test_y, started)
        if dist.enabled:
            # Leave together: a rank that tears gloo down while rank 0 still evaluates and writes the
            # model can abort ("terminate called without an active exception", exit -6).
            torch_dist.barrier()
        return code
    finally:
        if dist.enabled:
            torch_dist.destroy_process_group()


def train(args: argparse.Namespace, dist: Distributed, device: torch.device, use_cuda: bool,
          train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
          started: float) -> int:  # fmt: skip
    """Train (data-parallel when dist.enabled); rank 0 reports and writes the model and metrics."""
    lead = dist.rank == 0
    load_seconds = time.monotonic() - started
    name = torch.cuda.get_device_name(device) if use_cuda else f"CPU ({torch.get_num_threads()} threads)"
    # Every rank sees the same shuffled order each epoch and keeps every world_size-th sample from its
    # rank on; the tail that does not divide evenly is dropped so every rank takes the same steps.
    usable = len(train_y) - len(train_y) % dist.world_size
    shard_size = usable // dist.world_size
    batch_size = max(1, -(-args.batch_size // dist.world_size))  # the global batch stays args.batch_size
    if dist.enabled:
        scheme = dist.init_method.split("://")[0]
        print(f"rank {dist.rank}/{dist.world_size}: shard of {shard_size} training samples "
              f"(batch {batch_size} per rank, {scheme} rendezvous)", flush=True)  # fmt: skip
    if lead:
        print(f"device {device} [{name}]; {len(train_y)} training and {len(test_y)} test samples "
              f"loaded in {load_seconds:.1f}s", flush=True)  # fmt: skip

    model = ConvNet(width=args.width).to(device)
    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
        torch.manual_seed(args.seed + dist.rank)  # same initial weights, different dropout per rank
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = (shard_size + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    shuffle = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        epoch_start = time.monotonic()
        order = torch.randperm(len(train_y), generator=shuffle)[dist.rank : usable : dist.world_size]
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        seen = len(order)
        if dist.enabled:  # the epoch's figures over every rank's shard
            import torch.distributed as torch_dist

            totals = torch.tensor(
                [total_loss, float(correct), float(seen)], dtype=torch.float64, device=device
            )
            torch_dist.all_reduce(totals)
            total_loss, correct, seen = totals[0].item(), int(totals[1].item()), int(totals[2].item())
        train_seconds = time.monotonic() - epoch_start
        if not lead:
            continue
        test_loss, test_accuracy = evaluate(model, test_x, test_y, device, 512)
        record = {
            "epoch": epoch,
            "loss": round(total_loss / seen, 6),
            "accuracy": round(correct / seen, 6),
            "test_loss": round(test_loss, 6),
            "test_accuracy": round(test_accuracy, 6),
            "samples_per_sec": round(seen / train_seconds, 1),
            "seconds": round(time.monotonic() - epoch_start, 3),
        }
        history.append(record)
        print(f"Epoch {epoch}/{args.epochs}: loss {record['loss']:.4f}, accuracy {record['accuracy']:.2%}, "
              f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.2%}, "
              f"{record['samples_per_sec']:.0f} samples/s", flush=True)  # fmt: skip
        print(json.dumps(record), flush=True)  # a metrics record: docs/run-spec.md, read live by the monitor

    if not lead:
        print(f"rank {dist.rank}/{dist.world_size}: done; rank 0 writes the model", flush=True)
        return 0
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
        "world_size": dist.world_size,
        "backend": ("nccl" if use_cuda else "gloo") if dist.enabled else None,
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
