"""Data-parallel training over the processes of one node (``training.gpus`` > 1).

``amdiff train`` relaunches itself under torchrun (``torch.distributed.run --standalone``) with
one process per GPU (``training.device: cuda``; process k uses cuda:k) or per CPU worker (gloo,
which is how the tests run it). Each process builds the same model from the same seed, samples
the same patches and draws the same diffusion noise as a single process would; it trains on its
contiguous block of every global batch (``training.batch_size``, a multiple of the process
count) and the gradients are averaged across processes before every optimizer step. So a loss
that is a mean over the batch's items (L_diff, the supervised baselines' L1) gives the
single-process gradients up to float rounding. Terms that pool over a batch (AMDiff's auxiliary
terms over the items with small t, a Dice pooled over the batch) are the mean of the processes'
shard values instead, as in every data-parallel trainer (nnU-Net's too).

Only process 0 validates, writes checkpoints, the log and the progress plot; every process
resumes from the same last.pt. The logged training losses are the means over the global batch.

Our choice: gradients are averaged by an optimizer step pre-hook (one flattened all-reduce per
optimizer) rather than by wrapping the model in DistributedDataParallel, because the trainers
call several sub-networks (denoiser, revision, segmenter, a GAN's discriminator) outside one
``forward``; DDP's overlap of communication with the backward pass is what this gives up.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from amdiff.errors import InputError

# a process waits this long for the others (process 0 validates while they wait)
TIMEOUT = datetime.timedelta(hours=2)


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_sizes(training: dict, processes: int) -> None:
    """Every global batch splits into equal shards (so the mean of the shards' gradients is the
    batch's): training.batch_size and patches_per_epoch are multiples of the processes."""
    for key in ("batch_size", "patches_per_epoch"):
        if int(training[key]) % processes:
            raise InputError(f"training.{key}", f"{training[key]} is not a multiple of the "
                                                f"{processes} data-parallel processes (training.gpus)")


class DataParallel:
    """This process's place among torchrun's processes (one process: rank 0 of 1, a no-op)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group; the device this process trains on (cuda:<local rank>)."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return device

    def rows(self, n_global: int) -> slice:
        """This process's contiguous block of a global batch of ``n_global`` items."""
        per = n_global // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def shard(self, batch: dict) -> dict:
        """This process's items of a collated batch."""
        if not self.enabled:
            return batch
        rows = self.rows(len(batch["hc"]))
        return {k: v[rows] for k, v in batch.items()}

    def average_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Before each of ``optimizer``'s steps, replace every gradient by its mean over the
        processes (one flattened all-reduce). A parameter without a gradient in one process
        counts as zero there; one without a gradient in every process keeps none, so the
        optimizer skips it as a single process would (a segmenter before AMDiff's warm-up)."""
        if not self.enabled:
            return

        def hook(opt, args, kwargs):
            params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
            present = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
            flat = torch.cat([present] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                          for p in params])
            dist.all_reduce(flat)
            offset = len(params)
            for p, anywhere in zip(params, flat[:len(params)].tolist()):
                grad = flat[offset:offset + p.numel()].view_as(p) / self.world
                offset += p.numel()
                p.grad = grad.clone() if anywhere else None
        optimizer.register_step_pre_hook(hook)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums over the processes."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def finish(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
