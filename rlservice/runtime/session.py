"""Starting or joining Ray, the same way everywhere."""

from __future__ import annotations

import os
from contextlib import contextmanager

import ray

# Ray rewrites 127.0.0.1 and localhost to the machine's network address, but keeps other
# loopback addresses: an embedded Ray on 127.0.0.2 stays on this machine.
EMBEDDED_NODE_IP = "127.0.0.2"


def start_ray(log_to_driver: bool = True) -> bool:
    """Inside a Ray job (RAY_ADDRESS is set) join its cluster; else start Ray here, sized to the
    machine, on a loopback address. Returns False when Ray was already initialised."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address=EMBEDDED_NODE_IP,
                 log_to_driver=log_to_driver)
    return True


@contextmanager
def ray_session():
    """Ray for the duration of a block: the caller's if it started one, else one started (and
    shut down) here, with the workers' output kept off the driver's progress bars."""
    started = start_ray(log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
