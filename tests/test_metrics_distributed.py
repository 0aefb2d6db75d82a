"""Accumulating metrics give the same results in 1 and in 2 real processes (torch.distributed, gloo)."""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from peft_memcontrol.metrics import (
    AverageMinCosineDistance,
    FrechetDistance,
    KernelDistance,
    MemorizationReward,
    ReplicationRate,
)


def features():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(30, 8, generator=generator), torch.randn(41, 8, generator=generator)


def scores(rank: int = 0, world_size: int = 1) -> dict:
    """Each process updates with its own shard (rows rank, rank + world_size, ...) and computes."""
    generated, training = features()
    amd = AverageMinCosineDistance(feature=None, direction="training_to_generated")
    replication = ReplicationRate(feature=None, threshold=0.4)
    fid = FrechetDistance(feature=None, num_features=8)
    reward = MemorizationReward()
    for metric in (amd, replication, fid):
        metric.update(generated[rank::world_size], real=False)
        metric.update(training[rank::world_size], real=True)
    reward.total += float(rank + 1)  # one "batch" per process with reward rank + 1
    reward.batches += 1
    # KID's subsets are drawn by index from the gathered features (rank 0's, then rank 1's): one process feeds the
    # shards in that order
    kid = KernelDistance(feature=None, num_features=8, num_subsets=10)
    for shard in [rank] if world_size > 1 else [0, 1]:
        kid.update(generated[shard::2], real=False)
        kid.update(training[shard::2], real=True)
    kid_result = kid.compute()
    return {
        "kid": kid_result.mean.item(),
        "kid_se": kid_result.standard_error.item(),
        "amd": amd.compute().amd.item(),
        "rate": replication.compute().rate.item(),
        "p95": replication.compute().percentile_95.item(),
        "fid": fid.compute().item(),
        "reward": reward.compute().item(),
    }


def empty_rank_scores(rank: int = 0, world_size: int = 1) -> dict:
    """Two shards, the second without generations, or without any update (its feature width unknown): each process
    updates with its own shard; one process (world_size 1) updates with both, in rank order. Processes that embed in
    different widths are refused on every process."""
    generated, training = features()
    no_generations = AverageMinCosineDistance(feature=None)
    no_updates = AverageMinCosineDistance(feature=None, direction="training_to_generated")
    for shard in [rank] if world_size > 1 else [0, 1]:
        if shard == 0:
            no_generations.update(generated, real=False)
            no_updates.update(generated, real=False)
            no_updates.update(training, real=True)
        no_generations.update(training[shard::2], real=True)
    kid_no_generations = KernelDistance(feature=None, num_features=8, num_subsets=10)
    for shard in [rank] if world_size > 1 else [0, 1]:
        if shard == 0:
            kid_no_generations.update(generated, real=False)
        kid_no_generations.update(training[shard::2], real=True)
    results = {"refusal": "", "kid": tuple(kid_no_generations.compute())}
    for name, metric in (("no_generations", no_generations), ("no_updates", no_updates)):
        result = metric.compute()
        results[name] = {"distances": result.distances, "indices": result.indices}
    if world_size > 1:
        mixed_widths = AverageMinCosineDistance(feature=None)
        mixed_widths.update(generated[:, : 8 - rank], real=False)
        mixed_widths.update(training[:, : 8 - rank], real=True)
        with pytest.raises(ValueError) as refusal:
            mixed_widths.compute()
        results["refusal"] = str(refusal.value)
    return results


def worker(rank: int, world_size: int, port: int, output: str, score=scores) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(score(rank, world_size), f"{output}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    output = str(tmp_path / "scores")
    mp.spawn(worker, args=(2, free_port(), output), nprocs=2, join=True)
    single = scores()
    for rank in range(2):
        distributed = torch.load(f"{output}.{rank}")
        for name in ("amd", "rate", "p95", "fid", "kid", "kid_se"):
            assert distributed[name] == pytest.approx(single[name], rel=1e-5), name
        assert distributed["reward"] == pytest.approx(1.5)  # (1 + 2) / 2 batches


@pytest.mark.slow
def test_a_process_without_features_joins_the_gather(tmp_path):
    # torchmetrics gave an empty list state a 1-D shape, and gloo aborted the processes while gathering it.
    output = str(tmp_path / "scores")
    mp.spawn(worker, args=(2, free_port(), output, empty_rank_scores), nprocs=2, join=True)
    single = empty_rank_scores()
    for rank in range(2):
        distributed = torch.load(f"{output}.{rank}")
        for name in ("no_generations", "no_updates"):
            assert torch.allclose(distributed[name]["distances"], single[name]["distances"], atol=1e-6), name
            assert torch.equal(distributed[name]["indices"], single[name]["indices"]), name
        assert "different widths [7, 8]" in distributed["refusal"]
        for got, expected in zip(distributed["kid"], single["kid"]):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert single["no_generations"]["indices"].unique().numel() > 5  # indices into the gathered training order
