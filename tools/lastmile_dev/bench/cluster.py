"""Scenario: the read model on a Redis Cluster of 3 masters, and how evenly the masters share its work.

A fresh cluster (real ``redis-server --cluster-enabled``) gets the run's registry; a worker on it
(LASTMILE_REDIS_CLUSTER_NODES) folds the run's whole scan topic from its start, everything the scenarios before posted.
Its figures are checked against the generator's count, and each master's CPU (INFO cpu) is measured over the fold.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Final

from redis.asyncio.cluster import RedisCluster

from coverage_service.readmodel.registry_store import load_registry
from lastmile import redis_client
from lastmile_dev import devstack
from lastmile_dev.bench import cpu
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.exact import check_exact, wait_applied
from lastmile_dev.bench.throughput import generator_of

MASTERS: Final = 3
TARGET_BUSIEST_SHARE: Final = 0.40  # of the cluster's Redis CPU; 1/3 is perfect balance


async def run(ctx: Context) -> Result:
    config, stack, gen = ctx.config, ctx.stack, generator_of(ctx)
    assert ctx.registry is not None
    workdir = stack.workdir / "cluster"
    procs, nodes = await asyncio.to_thread(devstack.start_redis_cluster, workdir, MASTERS)
    settings = stack.settings.replace(
        redis_cluster_nodes=",".join(nodes), consumer_group=f"{stack.settings.consumer_group}-cluster"
    )
    prefix = settings.redis_key_prefix
    redis = redis_client.connect(settings)
    worker = None
    try:
        await load_registry(
            redis,
            prefix,
            ctx.registry,
            progress=lambda done, total: ctx.progress("cluster: loading the registry", done, total),
            population_tiers=settings.population_tiers,
        )
        target = gen.events_distinct  # the topic holds every event the run posted (each was acked before 202)
        before = await _master_cpu(redis)
        worker = stack.start_worker(settings)
        first: list[float] = []  # when the worker's first events were seen applied (its start-up left out)

        def seen(n: int) -> None:
            if n and not first:
                first.append(time.monotonic())
            ctx.progress("cluster: folding the topic", n, target)

        t_done, final = await wait_applied(redis, prefix, target, progress=seen, poll_seconds=0.02)
        worker_cpu = cpu.group_cpu_seconds(worker.pid)
        after = await _master_cpu(redis)
        exact = await check_exact(redis, prefix, ctx.registry, gen.expected())
        keys = await redis.dbsize()
    finally:
        if worker is not None:
            worker.stop()
        await redis.aclose()
        for proc in procs:
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # AOFs of a national read model: gigabytes

    used = {node: after[node] - before.get(node, 0.0) for node in after}
    total = sum(used.values())
    shares = {node: s / total for node, s in used.items()} if total > 0 else {}
    busiest = max(shares.values(), default=None)
    seconds = (t_done - first[0]) if t_done is not None and first else None
    result = Result("cluster", exact=exact.ok and t_done is not None)
    spread = ", ".join(f"{share:.1%}" for share in sorted(shares.values(), reverse=True))
    result.figures = [
        Figure(
            "Redis Cluster: busiest master's share of Redis CPU",
            busiest * 100 if busiest is not None else None,
            "%",
            f"≤ {TARGET_BUSIEST_SHARE:.0%} (33% is even)",
            busiest is not None and busiest <= TARGET_BUSIEST_SHARE,
            note=f"{MASTERS} masters, slots shared evenly by redis-cli --cluster create; the masters' shares: {spread}"
            f"; {total * 1e6 / final if final else 0:.1f} µs of Redis CPU per event over all masters",
        ),
        Figure(
            "Redis Cluster: the topic folded by one worker",
            final / seconds if seconds else None,
            "events/s",
            "reported",
            None,
            note=f"{final:,} events from the topic's start, from the first seen applied to the last; {MASTERS} masters "
            f"on this one host; worker CPU {worker_cpu * 1e6 / final if final else 0:.1f} µs per event; {keys:,} keys",
        ),
        Figure(
            "Redis Cluster: figures exact",
            1.0 if result.exact else 0.0,
            "",
            "exact",
            result.exact,
            note=f"{exact.checked:,} figures compared with the generator's count"
            if exact.ok
            else f"{len(exact.mismatches)} mismatches, e.g. {exact.mismatches[:1]}",
        ),
    ]
    result.samples = {
        "masters": nodes,
        "cpu_seconds_per_master": used,
        "share_per_master": shares,
        "events_applied": final,
        "fold_seconds": seconds,
        "exactness": exact.as_sample(),
        "quick": config.quick,
    }
    return result


async def _master_cpu(redis: object) -> dict[str, float]:
    """Each master's CPU seconds so far (INFO cpu, as :func:`cpu.info_cpu_seconds`)."""
    assert isinstance(redis, RedisCluster)
    per_node = await redis.info("cpu", target_nodes=RedisCluster.PRIMARIES)
    return {node: cpu.info_cpu_seconds(info) for node, info in per_node.items()}
