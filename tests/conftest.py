"""One intra-op thread per test process: these models are tiny, and on a busy 2-core machine two
threads contend so badly that an epoch can take many times longer. One core per study, too."""

import os

import torch

torch.set_num_threads(1)
# One core per study: envs step in this process unless a test asks for worker processes (workers
# compute exactly what in-process envs compute; tests of that and of the default say so).
os.environ["ESPER_LAB_CORES"] = "1"
