"""A small stand-in for the recipes' ConvMNIST.py: reads the dataset from the blob-mounted input
directory, "trains" for a few epochs with the given hyperparameters, prints progress to stdout and
writes `metric = <error>%` lines to progress.log in the output directory (what the recipes'
MetricExtractor reads). With --fail-once MARKER it fails the first time (creating MARKER) and succeeds
after, to exercise resubmission."""
import argparse
import math
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--feedforward_const", type=float, default=1.0)
parser.add_argument("--hidden_layers_dim", type=int, default=100)
parser.add_argument("--datadir", required=True)
parser.add_argument("--outputdir", required=True)
parser.add_argument("--fail-once")
args = parser.parse_args()

if args.fail_once and not os.path.exists(args.fail_once):
    open(args.fail_once, "w").close()
    print("first attempt fails on purpose", file=sys.stderr)
    sys.exit(3)

samples = [tuple(map(int, line.split())) for line in open(os.path.join(args.datadir, "train.txt"))]
assert samples, "the dataset is empty"
os.makedirs(args.outputdir, exist_ok=True)
with open(os.path.join(args.outputdir, "progress.log"), "w") as log:
    for epoch in range(3):
        error = (abs(math.log10(args.feedforward_const)) * 10 + 1000.0 / args.hidden_layers_dim
                 + sum(y for _, y in samples) / len(samples)) / (epoch + 1)
        print("epoch %d on %d samples: error %.4f" % (epoch, len(samples), error), flush=True)
        log.write("epoch %d: metric = %.4f%%\n" % (epoch, error))
        time.sleep(0.2)
