"""The MNIST sample's tools: dataset generator, IDX converter, training script (run as the job runs it)."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local.stack import free_port
from samples.mnist import convert_idx, make_dataset

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "samples" / "mnist"


def parse_lines(path: Path) -> list[tuple[int, list[int]]]:
    """Check every line is `|labels <one-hot 10> |features <784 ints 0..255>`; return (label, pixels)."""
    samples = []
    for line in path.read_text(encoding="ascii").splitlines():
        assert line.startswith("|labels "), line[:40]
        labels_part, _, features_part = line[len("|labels ") :].partition(" |features ")
        onehot = [int(v) for v in labels_part.split()]
        pixels = [int(v) for v in features_part.split()]
        assert len(onehot) == 10 and sorted(onehot) == [0] * 9 + [1]
        assert len(pixels) == 784 and all(0 <= p <= 255 for p in pixels)
        samples.append((onehot.index(1), pixels))
    return samples


def test_make_dataset_writes_valid_format_and_sizes(tmp_path: Path) -> None:
    assert make_dataset.main([str(tmp_path), "--train", "40", "--test", "20", "--seed", "3"]) == 0
    train = parse_lines(tmp_path / make_dataset.TRAIN_FILE)
    test = parse_lines(tmp_path / make_dataset.TEST_FILE)
    assert len(train) == 40 and len(test) == 20
    # Balanced labels, real ink on every image, and the two splits differ.
    assert sorted(label for label, _ in train) == sorted(list(range(10)) * 4)
    assert all(sum(p > 128 for p in pixels) >= 15 for _, pixels in train + test)
    assert {tuple(p) for _, p in train}.isdisjoint({tuple(p) for _, p in test})


def test_make_dataset_is_seeded(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = "9" if name == "c" else "5"
        make_dataset.main([str(tmp_path / name), "--train", "10", "--test", "10", "--seed", seed])
    read = lambda d: (tmp_path / d / make_dataset.TRAIN_FILE).read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_make_dataset_rejects_bad_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        make_dataset.main([str(tmp_path), "--train", "0"])
    assert exc.value.code != 0
    assert "--train and --test must be at least 1" in capsys.readouterr().err


def idx_bytes(dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx_pair(directory: Path, prefix: str, labels: list[int], gz: bool) -> None:
    images = b"".join(bytes((i * 7 + j) % 256 for j in range(784)) for i in range(len(labels)))
    for stem, data in (
        (f"{prefix}-images-idx3-ubyte", idx_bytes((len(labels), 28, 28), images)),
        (f"{prefix}-labels-idx1-ubyte", idx_bytes((len(labels),), bytes(labels))),
    ):
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_convert_idx_on_tiny_files(tmp_path: Path, gz: bool) -> None:
    idx_dir, out_dir = tmp_path / "idx", tmp_path / "out"
    idx_dir.mkdir()
    write_idx_pair(idx_dir, "train", [5, 0, 4], gz)
    write_idx_pair(idx_dir, "t10k", [7, 2], gz)
    assert convert_idx.main([str(idx_dir), str(out_dir)]) == 0
    train = parse_lines(out_dir / convert_idx.TRAIN_FILE)
    test = parse_lines(out_dir / convert_idx.TEST_FILE)
    assert [label for label, _ in train] == [5, 0, 4]
    assert [label for label, _ in test] == [7, 2]
    assert train[1][1] == [(7 + j) % 256 for j in range(784)]


def test_convert_idx_names_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels, out = tmp_path / "img", tmp_path / "lab", tmp_path / "out.txt"
    images.write_bytes(idx_bytes((2, 28, 28), bytes(784 * 2)))
    labels.write_bytes(idx_bytes((3,), bytes([1, 2, 3])))
    assert convert_idx.main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 1
    assert "has 2 images but" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.part"))

    labels.write_bytes(b"not an idx file")
    assert convert_idx.main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 1
    assert "bad magic number" in capsys.readouterr().err

    labels.write_bytes(idx_bytes((2,), bytes([1])))  # one label short
    assert convert_idx.main(["--images", str(images), "--labels", str(labels), "--out", str(out)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()


def test_convnet_trains_one_epoch_and_writes_model_and_metrics(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    make_dataset.main([str(data), "--train", "60", "--test", "20"])
    # Standalone, as the Batch AI job runs it: a copy of the script alone, no project on the path.
    script = tmp_path / "job" / "ConvNet_MNIST.py"
    script.parent.mkdir()
    script.write_bytes((SAMPLE_DIR / "ConvNet_MNIST.py").read_bytes())
    result = subprocess.run(
        [sys.executable, str(script), str(data), str(out), "--epochs", "1", "--batch-size", "16",
         "--seed", "2", "--width", "0.5"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path / "job", env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Epoch 1/1: loss " in result.stdout
    json_lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1
    assert {"epoch", "loss", "accuracy", "test_accuracy", "samples_per_sec"} <= set(json_lines[0])
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"model_file", "test_accuracy", "test_loss", "train_accuracy", "epochs", "batch_size",
                "seed", "train_samples", "test_samples", "device", "elapsed_seconds", "history"}  # fmt: skip
    assert expected <= set(metrics)
    assert metrics["train_samples"] == 60 and metrics["test_samples"] == 20 and metrics["epochs"] == 1
    assert metrics["device"] == "cpu" and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (out / metrics["model_file"]).stat().st_size > 1000


def test_convnet_names_a_bad_input_line(tmp_path: Path) -> None:
    (tmp_path / make_dataset.TRAIN_FILE).write_text("|labels 0 1 |features 1 2 3\n")
    (tmp_path / make_dataset.TEST_FILE).write_text("")
    result = subprocess.run(
        [sys.executable, str(SAMPLE_DIR / "ConvNet_MNIST.py"), str(tmp_path), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / make_dataset.TRAIN_FILE}:1: expected 10 labels and 784 features, got 2 and 3"
    ]


def test_run_manifest_is_a_valid_run_spec() -> None:
    from shared.runspec import SpecContext, parse_run_spec_json

    spec = parse_run_spec_json((SAMPLE_DIR / "run.json").read_text(), SpecContext())
    assert spec.toolkit == "pytorch" and spec.script == "ConvNet_MNIST.py"
    # The lowest idle cost (docs/run-spec.md): nodes only while a job wants them.
    auto = spec.cluster.auto_scale
    assert auto is not None and auto.minimum_node_count == 0 and not auto.initial_node_count
    assert set(spec.required_files()) == {
        "ConvNet_MNIST.py", make_dataset.TRAIN_FILE, make_dataset.TEST_FILE,
    }  # fmt: skip


def test_training_script_parses_as_python_3_7() -> None:
    """run.json's image (PyTorch 1.12.1, for the NC6's K80) ships Python 3.7: keep to its grammar."""
    import ast

    ast.parse((SAMPLE_DIR / "ConvNet_MNIST.py").read_text(), feature_version=(3, 7))


def run_ranks(
    tmp_path: Path, data: Path, out: Path, world: int, rank_env: dict[str, str], extra: list[str]
) -> list[subprocess.CompletedProcess[str]]:
    """Start `world` copies of the script as a service starts ranks (each with its own variables)."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SAMPLE_DIR / "ConvNet_MNIST.py"),
                str(data),
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--seed",
                "2",
                "--width",
                "0.5",
                "--threads",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", **{k: v.format(rank=rank) for k, v in rank_env.items()}},
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize(
    "service",
    ["azureml", "batchai"],
)
def test_convnet_trains_data_parallel_from_the_services_variables(tmp_path: Path, service: str) -> None:
    """Azure ML's PyTorch distribution (RANK, WORLD_SIZE, MASTER_ADDR/PORT, env://) and Batch AI's
    PyTorch toolkit (AZ_BATCHAI_TASK_INDEX, OMPI_COMM_WORLD_SIZE, AZ_BATCHAI_PYTORCH_INIT_METHOD)."""

    data, out = tmp_path / "data", tmp_path / "out"
    make_dataset.main([str(data), "--train", "61", "--test", "20"])
    port = free_port()
    if service == "azureml":
        env = {"RANK": "{rank}", "LOCAL_RANK": "{rank}", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "NODE_RANK": "0"}  # fmt: skip
    else:
        env = {
            "AZ_BATCHAI_TASK_INDEX": "{rank}",
            "OMPI_COMM_WORLD_RANK": "{rank}",
            "OMPI_COMM_WORLD_SIZE": "2",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            "AZ_BATCHAI_PYTORCH_INIT_METHOD": f"tcp://127.0.0.1:{port}",
        }
    rank0, rank1 = run_ranks(tmp_path, data, out, 2, env, [])
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr + rank1.stderr
    # Each rank trained on its half (61 samples: the odd one out is dropped so both take equal steps).
    assert "rank 0/2: shard of 30 training samples" in rank0.stdout
    assert "rank 1/2: shard of 30 training samples" in rank1.stdout
    # Rank 0 alone reports and writes; the epoch's figures cover both shards.
    assert "Epoch 1/1" in rank0.stdout and "Epoch 1/1" not in rank1.stdout
    assert not [line for line in rank1.stdout.splitlines() if line.startswith("{")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["backend"] == "gloo"
    assert (out / metrics["model_file"]).stat().st_size > 1000


def test_convnet_names_a_missing_rendezvous(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset.main([str(data), "--train", "4", "--test", "2"])
    (result,) = run_ranks(tmp_path, data, tmp_path / "out", 1, {"WORLD_SIZE": "2", "RANK": "0"}, [])
    assert result.returncode == 2
    assert "no rendezvous" in result.stderr and not (tmp_path / "out").exists()


def test_distributed_manifest_is_a_valid_run_spec_for_two_ranks() -> None:
    from shared.runspec import SpecContext, parse_run_spec_json

    spec = parse_run_spec_json((SAMPLE_DIR / "run-distributed.json").read_text(), SpecContext())
    assert spec.toolkit == "pytorch" and spec.node_count == 1 and spec.process_count == 2
