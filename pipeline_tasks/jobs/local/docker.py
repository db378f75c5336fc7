"""The docker backend's engine: is there one, are there GPUs, and the ``docker`` commands that start,
stop and clean up a job's container as SageMaker starts its training and serving containers
(docs/ARCHITECTURE.md §4, §5).

Every ``docker`` invocation of the local jobs is here, so the training and the transform side cannot
drift apart in how they mount, name, expose or kill a container.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path


class DockerUnavailableError(RuntimeError):
    """The docker backend was asked for but no engine answers: an environment problem, not a job failure."""


def docker_available(timeout_s: float = 30.0) -> str:
    """The engine's version when ``docker info`` answers; otherwise DockerUnavailableError saying what to do."""
    def fail(why: str) -> DockerUnavailableError:
        return DockerUnavailableError(f"docker backend: no Docker engine answers (`docker info` failed: {why}); "
                                      "use backend=local or start Docker")
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError:
        raise fail("no `docker` command on PATH") from None
    except subprocess.TimeoutExpired:
        raise fail(f"no answer within {timeout_s:.0f}s") from None
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
        raise fail(detail[-1] if detail else f"exit status {proc.returncode}")
    return version


def nvidia_gpus_available(timeout_s: float = 15.0) -> bool:
    """True when ``nvidia-smi -L`` lists a GPU: then the docker backend passes ``--gpus all``."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


# --- starting a container ----------------------------------------------------------------------------------

def docker_run_command(image: str, entrypoint: str, *, name: str, volume: str, gpus: bool,
                       publish: str | None = None, shm_size: str | None = None, user: str | None = None,
                       env: Mapping[str, str] | None = None, network: str | None = None,
                       hostname: str | None = None) -> list[str]:
    """``docker run --rm`` of the image's `entrypoint` (train or serve), the container named `name` (so
    it can be stopped by name), `volume` mounted, all GPUs when `gpus`, `publish` a port mapping; on
    `network` as `hostname` (its name there, too) when the job has several hosts."""
    cmd = ["docker", "run", "--rm", "--name", name]
    if network:
        cmd += ["--network", network]
    if hostname:
        cmd += ["--hostname", hostname] + (["--network-alias", hostname] if network else [])
    if publish:
        cmd += ["-p", publish]
    cmd += ["-v", volume]
    if gpus:
        cmd += ["--gpus", "all"]
    if shm_size:
        cmd += ["--shm-size", shm_size]
    if user:
        cmd += ["--user", user]
    for k, v in sorted((env or {}).items()):
        cmd += ["-e", f"{k}={v}"]
    return [*cmd, image, entrypoint]


def docker_train_command(image: str, root: str | os.PathLike[str], gpus: bool, *, name: str | None = None,
                         user: str | None = None, env: Mapping[str, str] | None = None,
                         network: str | None = None, hostname: str | None = None) -> list[str]:
    """``docker run`` as SageMaker starts a training container: the job root mounted at /opt/ml, the
    container named after the job (so it can be killed by name), all GPUs when there are any, a larger
    /dev/shm for data-loader workers. `user` ("uid:gid") keeps the files it writes owned by us. A job of
    several instances runs one container per host on the job's own `network`, each reachable there by
    its host name (algo-1, algo-2, …), as SageMaker's instances reach each other."""
    root = Path(root).resolve()
    return docker_run_command(image, "train", name=name or root.name, volume=f"{root}:/opt/ml", gpus=gpus,
                              shm_size="1g", user=user, env=env, network=network, hostname=hostname)


def docker_network_create(name: str) -> None:
    """A bridge network of the job's own, where its containers find each other by host name (a network
    left by a crashed attempt is removed first)."""
    docker_network_remove(name)
    proc = subprocess.run(["docker", "network", "create", name], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise DockerUnavailableError(f"docker network create {name} failed: "
                                     f"{(proc.stderr or proc.stdout).strip() or proc.returncode}")


def docker_network_remove(name: str) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=60)


def docker_serve_command(image: str, model_dir: str | os.PathLike[str], port: int, environment: dict[str, str],
                         gpus: bool, name: str) -> list[str]:
    """``docker run`` as SageMaker starts a serving container: the model at /opt/ml/model (read-only), the
    container's port 8080 on 127.0.0.1:`port`, the environment of the CreateModel request."""
    return docker_run_command(image, "serve", name=name, publish=f"127.0.0.1:{port}:8080",
                              volume=f"{Path(model_dir).resolve()}:/opt/ml/model:ro", gpus=gpus, env=environment)


# --- stopping and cleaning up ------------------------------------------------------------------------------

def docker_remove(name: str) -> None:
    """Remove the container `name` if there is one: a container left by a crashed attempt of the job."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def docker_kill(name: str) -> None:
    """Killing the docker client does not stop its container; this does."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["docker", "kill", name], capture_output=True, timeout=60)


def docker_stop(name: str, grace_s: float) -> None:
    """``docker stop``: SIGTERM to the container, SIGKILL after `grace_s` (at least 1 s)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["docker", "stop", "--time", str(max(1, round(grace_s))), name],
                       capture_output=True, timeout=grace_s + 60)
