# Vendored unmodified (below this header) from github.com/Azure/BatchAI, utilities/__init__.py at commit 2238607d5a028a0c5e037168aefca7d7bb165d5c.
# Copyright (c) Microsoft Corporation. All rights reserved. Licensed under the MIT License (see LICENSE
# in this folder).
import utilities.cluster as cluster
import utilities.config as config
import utilities.dataset as dataset
import utilities.experiment as experiment
import utilities.job_factory as job_factory
import utilities.job as job