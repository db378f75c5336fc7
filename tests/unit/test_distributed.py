"""model/distributed.py: how a container finds its place in a job of several instances, and how a host's
outcome is told from its ranks' reports."""

from __future__ import annotations

import json

import pytest

from model.distributed import (
    DistInfo,
    LaunchPlan,
    ResourceConfig,
    channel_distribution,
    failure_message,
    host_outcome,
    plan_launch,
    processes_per_host,
    report_rank,
    resolve_host,
    shard_objects,
)

THREE = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth0"}


def test_resourceconfig_places_the_host():
    rc = ResourceConfig.from_dict(THREE)
    assert (rc.node_rank, rc.leader, rc.network_interface_name) == (1, "algo-1", "eth0")
    assert ResourceConfig.from_dict({}) == ResourceConfig()  # no file: one host, algo-1


@pytest.mark.parametrize("raw,needle", [
    ({"current_host": "algo-4", "hosts": ["algo-1"]}, "'current_host' 'algo-4' is not one of the hosts ['algo-1']"),
    ({"current_host": "algo-1", "hosts": []}, "'hosts' must be a non-empty list"),
    ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, "names a host twice"),
    ({"current_host": "a", "hosts": ["a"], "network_interface_name": 3}, "'network_interface_name' must be a string"),
])
def test_a_bad_resourceconfig_is_named(raw, needle):
    with pytest.raises(ValueError) as e:
        ResourceConfig.from_dict(raw, "/opt/ml/input/config/resourceconfig.json")
    assert str(e.value).startswith("/opt/ml/input/config/resourceconfig.json: ") and needle in str(e.value)


def test_the_launch_plan_of_a_host():
    seen = []

    def resolve(name, environ):
        seen.append(name)
        return "10.0.0.7"

    plan = plan_launch(ResourceConfig.from_dict(THREE), 4, {}, resolve)
    assert seen == ["algo-1"]  # the rendezvous is at the leader
    assert plan == LaunchPlan(3, 1, 4, "10.0.0.7", 29500, {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"})
    assert plan.world_size == 12
    assert plan.command("py") == ["py", "-m", "torch.distributed.run", "--nproc_per_node=4", "--max_restarts=0",
                                  "--nnodes=3", "--node_rank=1", "--master_addr=10.0.0.7", "--master_port=29500",
                                  "-m", "model.train"]
    # an interface chosen by the user stays; the port can be moved
    plan = plan_launch(ResourceConfig.from_dict(THREE), 1, {"GLOO_SOCKET_IFNAME": "ens5",
                                                            "SEQ2SEQ_MASTER_PORT": "7777"}, resolve)
    assert plan.env == {"NCCL_SOCKET_IFNAME": "eth0"} and plan.master_port == 7777
    with pytest.raises(ValueError, match="SEQ2SEQ_MASTER_PORT='http': expected a TCP port"):
        plan_launch(ResourceConfig.from_dict(THREE), 1, {"SEQ2SEQ_MASTER_PORT": "http"}, resolve)


def test_one_host_one_process_needs_no_launcher_and_one_host_several_is_standalone():
    assert plan_launch(ResourceConfig(), 1, {}) is None
    plan = plan_launch(ResourceConfig(), 2, {})
    assert plan.command("py") == ["py", "-m", "torch.distributed.run", "--nproc_per_node=2", "--max_restarts=0",
                                  "--standalone", "-m", "model.train"]
    assert plan.command("py", log_dir="/tmp/x")[4:7] == ["--max_restarts=0", "--log-dir=/tmp/x", "--standalone"]
    assert processes_per_host({}, gpus=0) == 1 and processes_per_host({}, gpus=8) == 8
    assert processes_per_host({"SEQ2SEQ_NUM_PROCESSES": "3"}, gpus=8) == 3
    with pytest.raises(ValueError, match="SEQ2SEQ_NUM_PROCESSES='two': expected a whole number"):
        processes_per_host({"SEQ2SEQ_NUM_PROCESSES": "two"}, gpus=0)


def test_host_names_are_resolved_with_retries_and_the_table_answers_first():
    attempts, sleeps = [], []

    def lookup(name):
        attempts.append(name)
        if len(attempts) < 3:
            raise OSError("[Errno -2] Name or service not known")
        return "10.0.0.9"

    assert resolve_host("algo-1", {}, sleep=sleeps.append, lookup=lookup) == "10.0.0.9"
    assert len(attempts) == 3 and sleeps == [1.0, 2.0]
    assert resolve_host("algo-1", {"SEQ2SEQ_HOST_ADDRESSES": json.dumps({"algo-1": "127.0.0.1"})},
                        lookup=lambda n: pytest.fail("DNS asked")) == "127.0.0.1"

    def never(name):
        raise OSError("Name or service not known")

    with pytest.raises(RuntimeError, match=r"cannot resolve host 'algo-1' after \d+ attempts over 3s"):
        resolve_host("algo-1", {}, timeout_s=3, sleep=lambda s: None, lookup=never)
    with pytest.raises(ValueError, match="SEQ2SEQ_HOST_ADDRESSES is not valid JSON"):
        resolve_host("algo-1", {"SEQ2SEQ_HOST_ADDRESSES": "{algo-1"})


def test_sharded_by_s3_key_gives_each_host_every_nth_key():
    keys = [f"train-{i:05d}-of-00005.rec" for i in range(1, 6)]
    shares = [shard_objects(list(reversed(keys)), i, 2) for i in range(2)]
    assert shares == [keys[0::2], keys[1::2]]
    assert sorted(shares[0] + shares[1]) == keys
    assert shard_objects(["a.rec"], 1, 2) == []  # fewer files than hosts: the second gets none
    config = {"train": {"S3DistributionType": "ShardedByS3Key"}, "validation": {}}
    assert channel_distribution(config, "train") == "ShardedByS3Key"
    assert channel_distribution(config, "validation") == channel_distribution(config, "vocab") == "FullyReplicated"
    with pytest.raises(ValueError, match="channel 'train' has S3DistributionType 'Sharded'"):
        channel_distribution({"train": {"S3DistributionType": "Sharded"}}, "train")


def test_a_ranks_failure_names_host_and_rank_and_says_when_it_only_lost_a_peer():
    dist = DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=2, host="algo-2", num_hosts=2)
    assert failure_message(dist, ValueError("bad id")) == "algo-2 rank 3: ValueError: bad id"
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.5]:4242")
    assert failure_message(dist, lost).startswith("algo-2 rank 3: lost contact with another rank, which failed first")
    assert failure_message(DistInfo(), ValueError("x")) == "ValueError: x"  # one process: as before


def test_the_hosts_outcome_from_its_ranks_reports(tmp_path):
    env = {"SEQ2SEQ_RANK_REPORT_DIR": str(tmp_path)}
    ranks = [DistInfo(rank=r, world_size=4, local_rank=r - 2, local_world_size=2, host="algo-2", num_hosts=2)
             for r in (2, 3)]
    assert report_rank({}, ranks[0]) is False  # not under our launcher: nothing to report to
    # torchrun exits 1 after a forwarded SIGTERM even when every rank checkpointed and ended well
    for d in ranks:
        assert report_rank(env, d)
    assert host_outcome(tmp_path, "algo-2", 1, ranks=2, signalled=True) is None
    assert host_outcome(tmp_path, "algo-2", 1, ranks=3, signalled=True) == (
        "algo-2: distributed training failed: torchrun exited with status 1")  # one rank never reported
    assert host_outcome(tmp_path, "algo-2", 1, ranks=2, signalled=False).endswith("torchrun exited with status 1")
    # the rank that failed of its own accord is the host's failure, even when it reported after one that lost it
    report_rank(env, ranks[0], RuntimeError("Connection reset by peer"))
    report_rank(env, ranks[1], KeyError("source"))
    assert host_outcome(tmp_path, "algo-2", 1, ranks=2, signalled=False) == "algo-2 rank 3: KeyError: 'source'"
