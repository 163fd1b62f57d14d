"""Run under torchrun: trains a tiny net with DDP (gloo) and writes each rank's weights and scores."""
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from falf_fx.models import lenet5
from falf_fx.training import TrainConfig, all_reduce_mean, init_distributed_from_env, train

assert init_distributed_from_env()
rank = torch.distributed.get_rank()
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
model = lenet5()
loss = lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1])  # noqa: E731
train(model, DataLoader(data, batch_size=8, shuffle=True), loss, TrainConfig(epochs=1, lr=0.05), progress=False)
local_scores = torch.full((4,), float(rank))  # each rank sees different data; the decision must be shared
torch.save({"weights": model.state_dict(), "scores": all_reduce_mean(local_scores)}, f"{sys.argv[1]}/rank{rank}.pt")
torch.distributed.destroy_process_group()
