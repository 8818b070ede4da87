"""How long a worker node takes to receive a tuning job's dataset through Ray's object store.

    python benchmarks/dataset_transfer.py [--rows 1000000] [--repeats 3] [--json]

Starts a two-node local cluster (rlservice.runtime.local_cluster, loopback addresses, each node
with its own directories), joins it as a driver on the head, builds a synthetic `OfflineData` of
Hopper shapes (11 obs, 3 actions) with `--rows` transitions, `ray.put`s it once, as the tuning
driver does, and times a task pinned to the worker node that `ray.get`s it and reads every
array (what a trial does before it builds its replay buffer). The first repeat moves the bytes
from the head's object store to the worker's; later repeats on the same node find them there.
A task started beforehand keeps the worker process's start-up out of the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_hopper(rows: int):
    from rlservice.data.minari_io import OfflineData

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((rows, 11), dtype=np.float32)
    return OfflineData(
        dataset_id="rlservice/hopper-v5/synthetic-v0", env_id="Hopper-v5", observations=obs,
        actions=rng.uniform(-1, 1, (rows, 3)).astype(np.float32), rewards=rng.standard_normal(rows, dtype=np.float32),
        next_observations=np.roll(obs, -1, axis=0), terminals=np.zeros(rows, np.float32),
        timeouts=np.zeros(rows, np.float32), action_low=-np.ones(3, np.float32), action_high=np.ones(3, np.float32),
        ref_min_score=-20.0, ref_max_score=3234.3, episode_returns=np.zeros(rows // 1000), metadata={},
        digest="sha256:synthetic",
    )


def payload_bytes(data) -> int:
    return sum(v.nbytes for v in vars(data).values() if isinstance(v, np.ndarray))


def measure(rows: int, repeats: int) -> dict:
    from rlservice.runtime import local_cluster

    state = Path(tempfile.mkdtemp(prefix="rls-transfer-"))
    cluster = local_cluster.start(state, workers=1, cpus=1)
    os.environ.update(local_cluster.client_env(state))  # read by Ray when it is imported
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(address=cluster["gcs"], _node_ip_address=local_cluster.HEAD_IP, log_to_driver=False)
        worker = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] != local_cluster.HEAD_IP)
        on_worker = NodeAffinitySchedulingStrategy(worker, soft=False)

        @ray.remote(num_cpus=1, scheduling_strategy=on_worker)
        def receive(refs):
            start = time.perf_counter()
            data = ray.get(refs[0])
            checksum = float(sum(v.sum(dtype=np.float64) for v in vars(data).values() if isinstance(v, np.ndarray)))
            return time.perf_counter() - start, checksum, ray.get_runtime_context().get_node_id()

        ray.get(receive.remote([ray.put(synthetic_hopper(1000))]))  # the worker process is up from here on
        data = synthetic_hopper(rows)
        start = time.perf_counter()
        ref = ray.put(data)
        put_s = time.perf_counter() - start
        expected = float(sum(v.sum(dtype=np.float64) for v in vars(data).values() if isinstance(v, np.ndarray)))
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            inside, checksum, node = ray.get(receive.remote([ref]))  # in a list: the task gets the ref, not the value
            timings.append({"task_s": round(inside, 3), "round_trip_s": round(time.perf_counter() - start, 3)})
            assert node == worker and np.isclose(checksum, expected), (node, checksum, expected)
        return {"rows": rows, "megabytes": round(payload_bytes(data) / 1e6, 1), "put_s": round(put_s, 3),
                "first_on_worker": timings[0], "again_on_worker": timings[1:]}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        local_cluster.stop(state)
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = measure(args.rows, args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        first = result["first_on_worker"]
        print(f"{result['rows']} transitions, {result['megabytes']} MB: ray.put {result['put_s']} s on the head; "
              f"the worker received and read it in {first['task_s']} s ({first['round_trip_s']} s round trip); "
              f"again on the same node: {', '.join(str(t['task_s']) for t in result['again_on_worker'])} s")


if __name__ == "__main__":
    main()
