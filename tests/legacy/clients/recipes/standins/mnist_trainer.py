"""Stand-in for the PyTorch-GPU-Distributed-Gloo recipe's mnist_trainer.py: the recipe's command line
(--epochs, --world-size, --dist-backend, --dist-url, --rank), a real gloo rendezvous through the URL
the service gave (torch.distributed.init_process_group), one all_reduce, and lines on stdout as the
recipe streams them. `--fail-rank R` makes rank R exit 3 after the rendezvous (the others then wait)."""
import argparse
import sys
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--world-size", type=int, default=1)
parser.add_argument("--dist-backend", default="gloo")
parser.add_argument("--dist-url", default="")
parser.add_argument("--rank", type=int, default=-1)
parser.add_argument("--fail-rank", type=int, default=-1)
args = parser.parse_args()
print("rank %d of %d, init %s" % (args.rank, args.world_size, args.dist_url), flush=True)
dist.init_process_group(backend=args.dist_backend, init_method=args.dist_url,
                        world_size=args.world_size, rank=args.rank)
if args.rank == args.fail_rank:
    print("rank %d fails on purpose" % args.rank, file=sys.stderr, flush=True)
    sys.exit(3)
if args.fail_rank >= 0:
    time.sleep(120)  # stopped by the service when the failing rank exits
total = torch.tensor([float(args.rank + 1)])
dist.all_reduce(total)
for epoch in range(1, args.epochs + 1):
    print("Epoch: [%d] rank %d all_reduce %d" % (epoch, args.rank, int(total.item())), flush=True)
dist.destroy_process_group()
