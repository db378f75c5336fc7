"""``train``: the container's training entrypoint (SageMaker's contract, docs/ARCHITECTURE.md §4).

Reads the config files and channels under ``/opt/ml`` (or ``$SAGEMAKER_BASE_DIR``), trains, and
leaves in the model directory everything serving needs. Any error ends with its reason in
``output/failure`` and a non-zero exit — the message SageMaker shows as FailureReason, so it names
the channel, file, record or hyperparameter at fault.

With more than one host in ``resourceconfig.json``, several GPUs, or ``SEQ2SEQ_NUM_PROCESSES`` > 1, it
re-launches itself under ``torchrun``: one process per GPU (one on a CPU host) on every host of the job,
global rank 0 on the leader (model/distributed.py).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

from model import checkpoint as ckpt
from model import data_io, warm_start
from model.constants import (
    CHANNELS,
    MODEL_CHANNEL,
    PARENT_MODEL_URI_ENV,
    TRAIN_CHANNEL,
    VALIDATION_CHANNEL,
    VOCAB_CHANNEL,
)
from model.distributed import (
    RANK_REPORTS_ENV,
    SHARDED_BY_S3_KEY,
    DistInfo,
    LaunchPlan,
    ResourceConfig,
    channel_distribution,
    die_with_launcher,
    failure_message,
    host_outcome,
    plan_launch,
    processes_per_host,
    report_rank,
)
from model.hyperparameters import Hyperparameters, parse_hyperparameters
from model.model import build_model, count_parameters
from model.optim import build_optimizer, build_schedule
from model.sagemaker import SageMakerPaths, read_json_file, write_failure
from model.tokenizer import copy_tokenizer
from model.training import STOPPED_BY_SIGTERM, Trainer
from model.vocab import reverse

log = logging.getLogger("model.train")

# true: also write the CTranslate2 export (model/ctranslate.py) into the model directory, so that
# model.tar.gz carries it to serving and batch transform (the int8 CPU engine). Transformer models only.
CTRANSLATE2_EXPORT_ENV = "SEQ2SEQ_CTRANSLATE2_EXPORT"


def wants_ctranslate2_export(environ: dict[str, str] | os._Environ, hp: Hyperparameters) -> bool:
    """Whether to export after training; checked before training starts, so that a job asked for an export
    it cannot write fails in seconds, not after hours of training."""
    raw = environ.get(CTRANSLATE2_EXPORT_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw not in ("1", "true", "yes"):
        raise ValueError(f"{CTRANSLATE2_EXPORT_ENV}={raw!r}: expected true or false")
    from model.engines import library_installed

    if hp.encoder_type != "transformer" or hp.decoder_type != "transformer":
        raise ValueError(f"{CTRANSLATE2_EXPORT_ENV}=true needs encoder_type=transformer and decoder_type=transformer, "
                         f"not {hp.encoder_type}/{hp.decoder_type}")
    if not library_installed():
        raise ValueError(f"{CTRANSLATE2_EXPORT_ENV}=true, but the ctranslate2 library is not installed in this image")
    return True


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def read_resources(paths: SageMakerPaths) -> ResourceConfig:
    return ResourceConfig.from_dict(read_json_file(paths.resource_config_file, "resourceconfig.json", required=False),
                                    str(paths.resource_config_file))


def launch(plan: LaunchPlan, paths: SageMakerPaths, resources: ResourceConfig) -> int:
    """Run this entrypoint under torchrun, this host's part of the job; returns its exit status and, when it
    fails, writes the host's failure (the rank that failed first of its own accord, named).

    SageMaker stops a job by signalling each container's first process, this one: SIGTERM and SIGINT are
    passed on to torchrun (which passes them to every rank), so the ranks checkpoint and exit together
    instead of being killed when the container goes."""
    import signal
    import subprocess

    if plan.nnodes == 1:
        log.info("launching %d training processes with torchrun", plan.nproc_per_node)
    else:
        log.info("launching %d training process(es) with torchrun on host %s (%d of %d hosts; rendezvous at %s:%d, "
                 "%s; %d processes in all)", plan.nproc_per_node, resources.current_host, plan.node_rank + 1,
                 plan.nnodes, plan.master_addr, plan.master_port, resources.leader, plan.world_size)
    signalled = []
    with (tempfile.TemporaryDirectory(prefix="rank-reports-") as reports,
          tempfile.TemporaryDirectory(prefix="torchrun-") as torchrun_logs):
        env = {**os.environ, **plan.env, RANK_REPORTS_ENV: reports}
        proc = subprocess.Popen(plan.command(sys.executable, log_dir=torchrun_logs), env=env)

        def forward(signum: int, frame: object) -> None:
            log.warning("%s received: passing it on to the training processes", signal.Signals(signum).name)
            signalled.append(signum)
            proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            status = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failure = host_outcome(Path(reports), resources.current_host, status, plan.nproc_per_node, bool(signalled))
    if failure is not None:
        write_failure(paths, failure)
        return status or 1
    if status != 0:
        log.info("torchrun exited with status %d after the signal; every rank checkpointed and ended cleanly", status)
    return 0


def setup_distributed(resources: ResourceConfig) -> tuple[DistInfo, torch.device]:
    dist = DistInfo.from_env(os.environ, resources)
    if "RANK" not in os.environ or dist.world_size == 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistInfo(host=resources.current_host, num_hosts=len(resources.hosts)), device
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # Rank 0 evaluates BLEU while the others wait at the next collective: allow for long evaluations.
    torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=2))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)
    else:
        device = torch.device("cpu")
    return dist, device


def run(paths: SageMakerPaths, resources: ResourceConfig | None = None) -> int:
    resources = resources or ResourceConfig()
    raw = read_json_file(paths.hyperparameters_file, "hyperparameters.json", required=False)
    hp: Hyperparameters = parse_hyperparameters(raw)
    input_config = read_json_file(paths.input_data_config_file, "inputdataconfig.json", required=False)
    for channel in input_config:
        if channel not in (*CHANNELS, MODEL_CHANNEL):
            log.warning("channel %r is not used by this algorithm (%s, and %s for a warm start)", channel,
                        ", ".join(CHANNELS), MODEL_CHANNEL)

    dist, device = setup_distributed(resources)
    export = wants_ctranslate2_export(os.environ, hp)
    # ShardedByS3Key: each host holds only its share of the training files, so its ranks split that share.
    distribution = channel_distribution(input_config, TRAIN_CHANNEL)
    sharded = dist.num_hosts > 1 and distribution == SHARDED_BY_S3_KEY
    if dist.is_main:
        log.info("device %s, %d process(es)%s, precision %s", device, dist.world_size,
                 f" on {dist.num_hosts} hosts" if dist.num_hosts > 1 else "", hp.precision)
        if dist.num_hosts > 1:
            log.info("training channel %s: %s", distribution,
                     "each host trains on its own files" if sharded else "the ranks take turns through every batch")
    torch.manual_seed(hp.seed)

    source_vocab, target_vocab = data_io.load_vocabularies(paths.channel(VOCAB_CHANNEL))
    scratch = tempfile.TemporaryDirectory(prefix="parent-model-")
    parent = warm_start.parent_dir(paths.channel(MODEL_CHANNEL), Path(scratch.name))
    if parent is not None:  # checked before the data is loaded: a wrong parent fails in seconds
        warm_start.check_compatible(parent, hp, source_vocab, target_vocab)
    load = {"source_vocab_size": len(source_vocab), "target_vocab_size": len(target_vocab),
            "max_seq_len_source": hp.max_seq_len_source, "max_seq_len_target": hp.max_seq_len_target}
    started = time.monotonic()
    try:
        train_data = data_io.load_channel(paths.channel(TRAIN_CHANNEL), TRAIN_CHANNEL, **load)
    except data_io.ChannelError as e:
        if sharded and "is empty" in str(e):
            raise data_io.ChannelError(f"{e} on host {dist.host}: with ShardedByS3Key each instance gets some of the "
                                       "channel's files, so the channel needs at least as many files as instances "
                                       "(the recordio step's shards)") from None
        raise
    val_data = data_io.load_channel(paths.channel(VALIDATION_CHANNEL), VALIDATION_CHANNEL, **load)
    if dist.is_main or (dist.num_hosts > 1 and dist.local_rank == 0):  # each host's share under ShardedByS3Key
        log.info("loaded %d training and %d validation pairs in %.1fs%s; vocabularies %d source / %d target",
                 len(train_data), len(val_data), time.monotonic() - started,
                 f" on {dist.host}" if dist.num_hosts > 1 else "", len(source_vocab), len(target_vocab))

    model = build_model(hp, len(source_vocab), len(target_vocab))
    parent_identity = None
    if parent is not None:
        parent_identity = {**warm_start.load_parent_weights(model, parent),
                           "uri": os.environ.get(PARENT_MODEL_URI_ENV) or None}
    scratch.cleanup()
    model = model.to(device)
    if dist.is_main:
        log.info("model %s encoder / %s decoder, %d parameters%s", hp.encoder_type, hp.decoder_type,
                 count_parameters(model), ", warm-started from the parent model" if parent_identity else "")
        ckpt.save_model_files(paths.model_dir, hp, source_vocab, target_vocab, data_io.length_ratio(train_data),
                              parent=parent_identity)
        shipped = copy_tokenizer(paths.channel(VOCAB_CHANNEL), paths.model_dir)
        if shipped:
            log.info("tokenizer from the vocab channel copied into the model: %s", ", ".join(shipped))
    optimizer = build_optimizer(model.parameters(), hp)
    schedule = build_schedule(optimizer, hp)
    trainer = Trainer(hp, model, optimizer, schedule, train_data, val_data, reverse(target_vocab),
                      paths.model_dir, paths.checkpoint_dir, device, dist, parent=parent_identity,
                      sharded_train=sharded)
    trainer.resume()
    trainer.agree_on_start()
    if dist.enabled:
        trainer.model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    state = trainer.fit()
    if dist.enabled:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if dist.is_main:
        log.info("model written to %s (%s)", paths.model_dir, state.stop_reason)
        if export and state.stop_reason != STOPPED_BY_SIGTERM:  # a stopped job exports when it finishes
            from model.ctranslate import export as export_ctranslate2

            log.info("CTranslate2 export: %s", export_ctranslate2(paths.model_dir))
    return 0


def main() -> int:
    configure_logging()
    paths = SageMakerPaths.from_env()
    resources = ResourceConfig()
    if os.environ.get(RANK_REPORTS_ENV) and "RANK" in os.environ:
        die_with_launcher()  # a rank of ours: never outlive the torchrun agent
    try:
        resources = read_resources(paths)
        if "RANK" not in os.environ:  # the container's first process: launch the ranks if there are several
            plan = plan_launch(resources, processes_per_host(os.environ, gpu_count()), os.environ)
            if plan is not None:
                return launch(plan, paths, resources)
        status = run(paths, resources)
        report_rank(os.environ, DistInfo.from_env(os.environ, resources))
        return status
    except Exception as e:
        dist = DistInfo.from_env(os.environ, resources)
        reason = failure_message(dist, e)
        # A rank under our launcher reports to it; the launcher writes the host's failure file.
        if not report_rank(os.environ, dist, e) and dist.rank == 0:
            write_failure(paths, reason)
        log.error("training failed: %s\n%s", reason, traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
