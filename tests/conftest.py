"""One intra-op thread per test process: these models are tiny, and on a busy 2-core machine two
threads contend so badly that an epoch can take many times longer."""

import torch

torch.set_num_threads(1)
