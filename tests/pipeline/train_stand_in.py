"""A small, real training script standing in for the quickstart's ConvNet_MNIST.py (pure Python, fast).

Called as the quickstart's job called the CNTK script: `python ConvNet_MNIST.py <input dir> <output dir>`.
Reads Train-/Test-28x28_cntk_text.txt (`|labels <one-hot 10> |features <784 values>`), fits a
nearest-centroid classifier, prints per-class progress and the test accuracy, and writes the model
(`ConvNet_MNIST.model`, JSON centroids) into the output directory. STAND_IN_SECONDS (environment)
makes it train that much longer, for tests that must see the job running.
"""

import json
import os
import sys
import time


def read(path):
    samples = []
    with open(path) as f:
        for line in f:
            labels_part, features_part = line.split("|features")
            labels = [float(v) for v in labels_part.replace("|labels", "").split()]
            samples.append((labels.index(max(labels)), [float(v) for v in features_part.split()]))
    return samples


def main(input_dir, output_dir):
    train = read(os.path.join(input_dir, "Train-28x28_cntk_text.txt"))
    test = read(os.path.join(input_dir, "Test-28x28_cntk_text.txt"))
    sums, counts = {}, {}
    for label, features in train:
        acc = sums.setdefault(label, [0.0] * len(features))
        for i, v in enumerate(features):
            acc[i] += v
        counts[label] = counts.get(label, 0) + 1
    centroids = {label: [v / counts[label] for v in acc] for label, acc in sums.items()}
    print(f"trained on {len(train)} samples, {len(centroids)} classes", flush=True)
    time.sleep(float(os.environ.get("STAND_IN_SECONDS", "0")))

    def predict(features):
        return min(
            centroids, key=lambda c: sum((a - b) ** 2 for a, b in zip(centroids[c], features, strict=False))
        )

    correct = sum(predict(f) == label for label, f in test)
    print(f"test accuracy: {correct / len(test):.3f}")
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "ConvNet_MNIST.model"), "w") as f:
        json.dump({str(k): v for k, v in centroids.items()}, f)
    print("model saved")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
