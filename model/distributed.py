"""Training on more than one process: one per GPU of a host, one host per instance of the job.

SageMaker starts the same container on every instance of a training job and tells each where it
stands in ``/opt/ml/input/config/resourceconfig.json`` (``hosts``, ``current_host``,
``network_interface_name``; docs/ARCHITECTURE.md §4). The entrypoint turns that into a torch elastic
launch (``torchrun``): ``nnodes = len(hosts)``, ``node_rank = hosts.index(current_host)``, the
rendezvous at ``hosts[0]``, one process per GPU (one on a CPU host). So global rank 0, which alone
writes the model, the checkpoints and the metric lines, runs on the leader, ``hosts[0]``.

Host names come from SageMaker's DNS, which may not answer at once when the instances start: they are
resolved with retries, as SageMaker asks of containers. Where no DNS knows them (the local backend runs
every "host" on this machine), ``$SEQ2SEQ_HOST_ADDRESSES`` maps them to addresses.

Nothing here imports torch at module level: the pipeline's side reads the names and the plan too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NUM_PROCESSES_ENV = "SEQ2SEQ_NUM_PROCESSES"   # processes per host (default: one per GPU, else one)
HOST_ADDRESSES_ENV = "SEQ2SEQ_HOST_ADDRESSES"  # JSON {host: address} where DNS does not know the hosts
MASTER_PORT_ENV = "SEQ2SEQ_MASTER_PORT"        # the rendezvous port on hosts[0]
RANK_REPORTS_ENV = "SEQ2SEQ_RANK_REPORT_DIR"    # where a rank leaves its outcome for the host's launcher
DEFAULT_MASTER_PORT = 29500                    # torch's default
RESOLVE_SECONDS = 300.0                        # how long a host name may take to appear in DNS
SINGLE_HOST = "algo-1"                         # SageMaker's name for the first (or only) instance
FULLY_REPLICATED, SHARDED_BY_S3_KEY = "FullyReplicated", "ShardedByS3Key"
# How a rank's failure reads when it only lost another rank, which failed first (the job's runner names the other).
LOST_PEER_PHRASE = "lost contact with another rank"
# What a rank's error says when another process of the job died first (gloo's words; NCCL's watchdog).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
              "Broken pipe", "NCCL communicator was aborted")


@dataclass(frozen=True)
class ResourceConfig:
    """The job's layout as resourceconfig.json gives it; absent, a single host (a plain process)."""

    hosts: tuple[str, ...] = (SINGLE_HOST,)
    current_host: str = SINGLE_HOST
    network_interface_name: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "resourceconfig.json") -> ResourceConfig:
        if not raw:
            return cls()
        hosts, current = raw.get("hosts"), raw.get("current_host")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ValueError(f"{where}: 'hosts' must be a non-empty list of host names, got {hosts!r}")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"{where}: 'hosts' names a host twice: {hosts}")
        if current not in hosts:
            raise ValueError(f"{where}: 'current_host' {current!r} is not one of the hosts {hosts}")
        interface = raw.get("network_interface_name")
        if interface is not None and not isinstance(interface, str):
            raise ValueError(f"{where}: 'network_interface_name' must be a string, got {interface!r}")
        return cls(tuple(hosts), current, interface or None)

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def leader(self) -> str:
        return self.hosts[0]


@dataclass(frozen=True)
class LaunchPlan:
    """One host's part of a distributed launch: what torchrun is told."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    env: dict[str, str] = field(default_factory=dict)  # set for the launcher and its ranks

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def command(self, python: str, module: str = "model.train", log_dir: str | None = None) -> list[str]:
        """The torchrun command line; a single host keeps torchrun's standalone rendezvous. `log_dir`: where
        torchrun keeps its per-attempt folders; without it, torchrun makes a ``/tmp/torchelastic_*`` folder
        that nothing removes, one per launch."""
        run = [python, "-m", "torch.distributed.run", f"--nproc_per_node={self.nproc_per_node}", "--max_restarts=0"]
        if log_dir is not None:
            run.append(f"--log-dir={log_dir}")
        if self.nnodes == 1:
            return [*run, "--standalone", "-m", module]
        return [*run, f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}", "-m", module]


def host_addresses(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get(HOST_ADDRESSES_ENV, "").strip()
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"${HOST_ADDRESSES_ENV} is not valid JSON: {e}") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise ValueError(f"${HOST_ADDRESSES_ENV} must be a JSON object of host name -> address, got {raw!r}")
    return table


def resolve_host(name: str, environ: Mapping[str, str], timeout_s: float = RESOLVE_SECONDS,
                 sleep: Callable[[float], None] = time.sleep,
                 lookup: Callable[[str], str] = socket.gethostbyname) -> str:
    """The address of host `name`, retrying while DNS does not know it yet (SageMaker's instances come up
    one by one); ``$SEQ2SEQ_HOST_ADDRESSES`` answers first."""
    table = host_addresses(environ)
    if name in table:
        return table[name]
    deadline = time.monotonic() + timeout_s
    delay, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            return lookup(name)
        except OSError as e:
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"cannot resolve host {name!r} after {attempt} attempts over {timeout_s:.0f}s: "
                                   f"{e}") from None
            log.info("host %s not resolvable yet (%s); retrying in %.0fs", name, e, delay)
            sleep(delay)
            delay = min(delay * 2, 10.0)


def processes_per_host(environ: Mapping[str, str], gpus: int) -> int:
    explicit = environ.get(NUM_PROCESSES_ENV, "").strip()
    if explicit:
        try:
            n = int(explicit)
        except ValueError:
            raise ValueError(f"${NUM_PROCESSES_ENV}={explicit!r}: expected a whole number") from None
        return max(1, n)
    return max(1, gpus)


def plan_launch(resources: ResourceConfig, nproc_per_node: int, environ: Mapping[str, str],
                resolve: Callable[[str, Mapping[str, str]], str] = resolve_host) -> LaunchPlan | None:
    """How this host takes part in the job, or None when the job is one process (no launcher)."""
    nnodes = len(resources.hosts)
    if nnodes == 1 and nproc_per_node == 1:
        return None
    env: dict[str, str] = {}
    if nnodes == 1:
        return LaunchPlan(1, 0, nproc_per_node, "127.0.0.1", 0, env)
    port_text = environ.get(MASTER_PORT_ENV, "").strip() or str(DEFAULT_MASTER_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"${MASTER_PORT_ENV}={port_text!r}: expected a TCP port")
    if resources.network_interface_name:
        # NCCL (GPUs) and gloo (CPU) find the other hosts through this interface, as SageMaker names it.
        for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            if not environ.get(var):
                env[var] = resources.network_interface_name
    return LaunchPlan(nnodes, resources.node_rank, nproc_per_node, resolve(resources.leader, environ),
                      int(port_text), env)


def shard_objects(names: list[str], host_index: int, num_hosts: int) -> list[str]:
    """Host `host_index`'s share of a channel's objects under ShardedByS3Key: every `num_hosts`-th name in
    key order, so each instance gets about 1/N of the objects (and, from N objects up, at least one)."""
    return sorted(names)[host_index::num_hosts]


def channel_distribution(input_config: Mapping[str, Any], channel: str) -> str:
    """The channel's S3DistributionType as inputdataconfig.json gives it (FullyReplicated when absent)."""
    entry = input_config.get(channel) or {}
    value = entry.get("S3DistributionType", FULLY_REPLICATED) if isinstance(entry, Mapping) else FULLY_REPLICATED
    if value not in (FULLY_REPLICATED, SHARDED_BY_S3_KEY):
        raise ValueError(f"inputdataconfig.json: channel {channel!r} has S3DistributionType {value!r}; expected "
                         f"{FULLY_REPLICATED} or {SHARDED_BY_S3_KEY}")
    return value


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: its global rank, its host, its place on the host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    host: str = SINGLE_HOST
    num_hosts: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"{self.host} rank {self.rank}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], resources: ResourceConfig) -> DistInfo:
        """What torchrun told this rank (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
        return cls(rank=int(environ.get("RANK", "0")), world_size=int(environ.get("WORLD_SIZE", "1")),
                   local_rank=int(environ.get("LOCAL_RANK", "0")),
                   local_world_size=int(environ.get("LOCAL_WORLD_SIZE", "1")),
                   host=resources.current_host, num_hosts=len(resources.hosts))


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when the thread that started it ends (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere, or with a libc without prctl, nothing happens). Here because the
    container ships model/ alone; the pipeline's job processes and worker pools use it too."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def die_with_launcher() -> None:
    """Make this rank die when its torchrun agent does. torchrun starts each rank in a session of its own,
    so signalling the container's process group (the local backend's stop, a killed task) reaches the
    agent but not the ranks: an agent killed outright would leave its ranks training on, orphaned."""
    import signal

    parent = os.getppid()
    set_parent_death_signal(signal.SIGKILL)
    if parent == 1 or os.getppid() != parent:  # the agent was gone before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def lost_a_peer(error: BaseException) -> bool:
    """Whether `error` is this rank hearing that another process of the job died: a consequence, not the
    cause, so the job's failure should name the other one."""
    text = str(error)
    return any(s in text for s in _PEER_LOST)


def failure_message(dist: DistInfo, error: BaseException) -> str:
    """A rank's failure as the job reports it: which host and rank, and what happened."""
    reason = f"{type(error).__name__}: {error}"
    if dist.world_size == 1:
        return reason
    if lost_a_peer(error):
        return f"{dist.describe()}: {LOST_PEER_PHRASE}, which failed first (see its host): {reason}"
    return f"{dist.describe()}: {reason}"


def report_rank(environ: Mapping[str, str], dist: DistInfo, error: BaseException | None = None) -> bool:
    """Leave this rank's outcome where the host's launcher finds it (the launcher writes output/failure and
    decides the host's exit status); False when this process was not started by the launcher."""
    folder = environ.get(RANK_REPORTS_ENV)
    if not folder:
        return False
    report: dict[str, Any] = {"time": time.time(), "ok": error is None}
    if error is not None:
        report.update({"secondary": lost_a_peer(error), "message": failure_message(dist, error)})
    (Path(folder) / f"rank-{dist.rank:05d}.json").write_text(json.dumps(report), encoding="utf-8")
    return True


def host_outcome(folder: Path, host: str, status: int, ranks: int, signalled: bool) -> str | None:
    """None when this host's part of the job ended well, else its failure: the first of its ranks that failed
    of its own accord, else the first to report one, else torchrun's exit status.

    torchrun exits non-zero when it is stopped by a signal even if its ranks, told in turn, checkpointed and
    ended cleanly: after a forwarded SIGTERM (`signalled`), every rank reporting success is success."""
    reports = []
    for path in sorted(folder.glob("rank-*.json")) if folder.is_dir() else []:
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    failed = sorted((r for r in reports if not r.get("ok")), key=lambda r: (bool(r.get("secondary")), r["time"]))
    if failed:
        return str(failed[0]["message"])
    if status == 0 or (signalled and len(reports) == ranks):
        return None
    return f"{host}: distributed training failed: torchrun exited with status {status}"


def parameter_checksum(state: Mapping[str, Any]) -> str:
    """sha256 of a state dict's tensors (names in order, then bytes): equal on every rank while DDP keeps
    the replicas in sync, and equal to the saved model's when it is the same parameters."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
