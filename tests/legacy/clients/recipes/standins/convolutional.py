"""Stand-in for the TensorFlow-GPU recipe's convolutional.py (TensorFlow is not installed here): prints
what a worker of the service sees, as the recipe's job prints its training progress."""
import json
import os

task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
print("Step 0 (epoch 0.00): worker %s, task %s" % (os.environ.get("AZ_BATCHAI_TASK_INDEX"), task), flush=True)
print("Test error: 0.8%", flush=True)
