"""`container/train` as SageMaker runs it, but as a plain process under $SAGEMAKER_BASE_DIR: on channels
from our data-prep step and on channels from an independent writer, the failure paths, resume from a
checkpoint, SIGTERM, and the torchrun (DDP) path on CPU with gloo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import metrics, record_pb2, vocab
from model.checkpoint import load_model
from model.train import main
from pipeline_tasks.channels import VocabConfig, make_channels
from tests.conftest import ROOT, SAMPLE, head_lines

TRAIN = ROOT / "container" / "train"

# The AWS English–German example's hyperparameters, as the strings it passes, scaled down for CPU.
AWS_EXAMPLE_SCALED = {
    "max_seq_len_source": "60",
    "max_seq_len_target": "60",
    "optimized_metric": "bleu",
    "batch_size": "16",
    "checkpoint_frequency_num_batches": "10",
    "rnn_num_hidden": "32",
    "num_layers_encoder": "1",
    "num_layers_decoder": "1",
    "num_embed_source": "16",
    "num_embed_target": "16",
    "checkpoint_threshold": "3",
    "max_num_batches": "20",
}


@pytest.fixture(scope="module")
def prepared_channels(tmp_path_factory) -> Path:
    """train/validation/vocab written by the pipeline's own recordio step from the real WMT sample."""
    tmp = tmp_path_factory.mktemp("prep")
    files = {}
    for split, n in (("train", 400), ("val", 40)):
        for lang in ("en", "de"):
            files[f"{split}.{lang}"] = str(head_lines(SAMPLE / f"{split}.{lang}", tmp / f"{split}.{lang}", n))
    make_channels(files["train.en"], files["train.de"], files["val.en"], files["val.de"], tmp / "channels",
                  VocabConfig(num_words_source=2000, num_words_target=2000), workers=1)
    return tmp / "channels"


def sagemaker_root(root: Path, channels: Path, hyperparameters: dict[str, str]) -> Path:
    for name in ("train", "validation", "vocab"):
        if (channels / name).exists():
            shutil.copytree(channels / name, root / "input" / "data" / name)
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"ContentType": "application/x-recordio-protobuf", "TrainingInputMode": "File"}
         for c in ("train", "validation", "vocab")}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    return root


def run_train(root: Path, *, extra_env: dict[str, str] | None = None, cmd: list[str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(cmd or [sys.executable, str(TRAIN)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def metric_values(stdout: str) -> dict[str, list[float]]:
    """What a SageMaker training job would extract with our MetricDefinitions."""
    return {d["Name"]: [float(v) for v in re.findall(d["Regex"], stdout)] for d in metrics.METRIC_DEFINITIONS}


def test_trains_on_data_prep_channels_with_the_aws_example_strings(tmp_path, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, AWS_EXAMPLE_SCALED)
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = metric_values(proc.stdout)
    for name in ("train:loss", "train:perplexity", "validation:perplexity", "validation:accuracy",
                 "validation:bleu"):
        assert len(found[name]) == 2, (name, proc.stdout)  # one line per checkpoint (updates 10 and 20)
    assert all(0 <= b <= 100 for b in found["validation:bleu"])
    assert "target tokens" in proc.stderr or "training done" in proc.stderr
    model_dir = root / "model"
    for name in ("params.pt", "config.json", "hyperparameters.json", "vocab.src.json", "vocab.trg.json",
                 "metrics.json"):
        assert (model_dir / name).is_file(), name
    assert vocab.load(model_dir / "vocab.src.json") == vocab.load(prepared_channels / "vocab" / "vocab.src.json")
    summary = json.loads((model_dir / "metrics.json").read_text())
    assert summary["num_updates"] == 20 and summary["stop_reason"] == "max_num_batches=20 reached"
    assert [h["updates"] for h in summary["history"]] == [10, 20]
    assert not (root / "output" / "failure").exists()
    loaded = load_model(model_dir)  # everything serving needs is in the model directory
    assert loaded.hp.rnn_num_hidden == 32 and loaded.hp.optimized_metric == "bleu"


MAGIC = struct.pack("<I", 0xCED7230A)


def dmlc_parts(payload: bytes) -> list[bytes]:
    """dmlc's RecordIOWriter: a payload is split wherever the magic number occurs at a 4-byte aligned
    offset, and that magic is dropped (the reader puts it back between the parts)."""
    parts, start = [], 0
    for pos in range(0, len(payload) - 3, 4):
        if payload[pos:pos + 4] == MAGIC:
            parts.append(payload[start:pos])
            start = pos + 4
    parts.append(payload[start:])
    return parts


def write_independent_rec(path: Path, pairs: list[tuple[list[int], list[int]]], magic_in_label: bool = False) -> None:
    """A RecordIO writer that shares no code with ours: protobuf message objects and struct framing as
    dmlc writes it. With magic_in_label, every record carries a label whose bytes contain the magic
    number, so each one becomes a multi-part record (flags 1, 2…, 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for s, t in pairs:
            rec = record_pb2.Record()
            rec.features["source"].int32_tensor.values.extend(s)
            rec.features["target"].int32_tensor.values.extend(t)
            payload = rec.SerializeToString()
            if magic_in_label:
                for pad in range(4):  # some padding puts one copy at an aligned offset
                    rec.label["note"].bytes.value[:] = [b"\0" * pad + MAGIC * 2]
                    payload = rec.SerializeToString()
                    if len(dmlc_parts(payload)) > 1:
                        break
                assert len(dmlc_parts(payload)) > 1
            parts = dmlc_parts(payload)
            for k, part in enumerate(parts):
                flag = 0 if len(parts) == 1 else (1 if k == 0 else 3 if k == len(parts) - 1 else 2)
                f.write(struct.pack("<II", 0xCED7230A, (flag << 29) | len(part)))
                f.write(part + b"\0" * (-len(part) % 4))


def test_trains_on_channels_from_an_independent_writer(tmp_path):
    words = ["the", "house", "is", "small", "big", "a", "cat", "dog"]
    src_vocab = {s: i for i, s in enumerate(vocab.SPECIAL_SYMBOLS)} | {w: i + 4 for i, w in enumerate(words)}
    trg_words = ["das", "haus", "ist", "klein", "groß", "eine", "katze", "hund"]
    trg_vocab = {s: i for i, s in enumerate(vocab.SPECIAL_SYMBOLS)} | {w: i + 4 for i, w in enumerate(trg_words)}
    pairs = [([4 + (i % 8), 4 + ((i * 3) % 8), 6], [4 + (i % 8), 4 + ((i * 3) % 8), 6]) for i in range(200)]
    channels = tmp_path / "channels"
    write_independent_rec(channels / "train" / "part-0.rec", pairs[:120], magic_in_label=True)
    write_independent_rec(channels / "train" / "part-1.rec", pairs[120:])
    write_independent_rec(channels / "validation" / "dev.rec", pairs[:30])
    (channels / "vocab").mkdir()
    (channels / "vocab" / "vocab.src.json").write_text(json.dumps(src_vocab, indent=2))
    (channels / "vocab" / "vocab.trg.json").write_text(json.dumps(trg_vocab, ensure_ascii=False))
    root = sagemaker_root(tmp_path / "ml", channels, {**AWS_EXAMPLE_SCALED, "max_num_batches": "10"})
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "channel train: 200 pairs" in proc.stderr
    assert len(metric_values(proc.stdout)["validation:perplexity"]) == 1


def run_main(monkeypatch, root: Path) -> int:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(root))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SEQ2SEQ_NUM_PROCESSES", raising=False)
    return main()


def failure(root: Path) -> str:
    return (root / "output" / "failure").read_text()


def test_missing_channel(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, AWS_EXAMPLE_SCALED)
    shutil.rmtree(root / "input" / "data" / "validation")
    assert run_main(monkeypatch, root) == 1
    assert "channel 'validation' is missing" in failure(root)


def test_empty_channel(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, AWS_EXAMPLE_SCALED)
    for f in (root / "input" / "data" / "train").iterdir():
        f.unlink()
    assert run_main(monkeypatch, root) == 1
    assert "channel 'train' is empty" in failure(root)


def test_corrupt_rec_names_file_and_offset(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, AWS_EXAMPLE_SCALED)
    rec = root / "input" / "data" / "train" / "train.rec"
    data = bytearray(rec.read_bytes())
    first_len = struct.unpack_from("<I", data, 4)[0] & ((1 << 29) - 1)
    second = 8 + first_len + (-first_len % 4)
    data[second:second + 4] = b"\xde\xad\xbe\xef"  # the second record's magic
    rec.write_bytes(bytes(data))
    assert run_main(monkeypatch, root) == 1
    text = failure(root)
    assert "train.rec" in text and f"byte offset {second}" in text and "magic" in text


def test_vocab_smaller_than_the_ids_in_the_data(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, AWS_EXAMPLE_SCALED)
    src = root / "input" / "data" / "vocab" / "vocab.src.json"
    small = dict(list(vocab.load(src).items())[:50])
    vocab.save(small, src)
    assert run_main(monkeypatch, root) == 1
    assert re.search(r"channel 'train': train\.rec record \d+: source id \d+ is outside the source vocabulary "
                     r"\(ids 0\.\.49\)", failure(root))


@pytest.mark.parametrize("bad,needle", [
    ({"rnn_cell_type": "lstmm"}, 'hyperparameter rnn_cell_type="lstmm": must be one of lstm, gru'),
    ({"batch_size": "sixty-four"}, "batch_size"),
    ({"rnn_num_hiden": "64"}, "did you mean rnn_num_hidden"),
])
def test_bad_hyperparameter(tmp_path, monkeypatch, prepared_channels, bad, needle):
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, **bad})
    assert run_main(monkeypatch, root) == 1
    assert needle in failure(root)
    assert not (root / "model" / "params.pt").exists()


def test_bad_hyperparameter_as_a_process_exits_nonzero(tmp_path, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, "optimized_metric": "rouge"})
    proc = run_train(root, cmd=[str(ROOT / "container" / "entrypoint.sh"), "train"],
                     extra_env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 1
    assert "optimized_metric" in failure(root) and "rouge" in failure(root)
    assert "training failed" in proc.stderr


def test_resume_continues_the_batch_count(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, "optimized_metric": "perplexity"})
    assert run_main(monkeypatch, root) == 0
    first = torch.load(root / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert first["state"]["num_updates"] == 20
    # The job is restarted (spot) with a higher limit: it carries on from update 20, not from 0.
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {**AWS_EXAMPLE_SCALED, "optimized_metric": "perplexity", "max_num_batches": "40"}))
    assert run_main(monkeypatch, root) == 0
    summary = json.loads((root / "model" / "metrics.json").read_text())
    assert summary["num_updates"] == 40
    assert [h["updates"] for h in summary["history"]] == [10, 20, 30, 40]
    assert [h["checkpoint"] for h in summary["history"]] == [1, 2, 3, 4]


def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path, monkeypatch, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, "max_num_batches": "10"})
    assert run_main(monkeypatch, root) == 0
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {**AWS_EXAMPLE_SCALED, "rnn_num_hidden": "64"}))
    assert run_main(monkeypatch, root) == 1
    assert "different architecture hyperparameters (rnn_num_hidden)" in failure(root)


RESUME_HP = {**AWS_EXAMPLE_SCALED, "optimized_metric": "perplexity", "max_num_batches": "300",
             "checkpoint_frequency_num_batches": "10", "checkpoint_threshold": "100000"}


def test_sigterm_then_a_restart_carries_on_to_the_uninterrupted_end_state(tmp_path, prepared_channels):
    """A spot interruption: SIGTERM saves a checkpoint and exits 0; the restarted job resumes and trains to
    its own stopping criterion, ending with the same weights and metrics as a job never interrupted."""
    straight = sagemaker_root(tmp_path / "straight", prepared_channels, RESUME_HP)
    done = run_train(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    root = sagemaker_root(tmp_path / "stopped", prepared_channels, RESUME_HP)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(TRAIN)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    ckpt_file = root / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert ckpt_file.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM received" in err and "stopped by SIGTERM at update" in err
    assert not (root / "output" / "failure").exists()
    stopped = torch.load(ckpt_file, weights_only=True)["state"]
    assert 10 <= stopped["num_updates"] < 300, "the job finished before the SIGTERM landed"
    assert stopped["stop_reason"] == ""  # the checkpoint does not record the job as finished

    again = run_train(root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{stopped['num_updates']} updates done" in again.stderr
    assert "training done: max_num_batches=300 reached" in again.stderr
    resumed = json.loads((root / "model" / "metrics.json").read_text())
    expected = json.loads((straight / "model" / "metrics.json").read_text())
    assert resumed["num_updates"] == 300 and resumed["stop_reason"] == expected["stop_reason"]
    assert [h["updates"] for h in resumed["history"]] == list(range(10, 301, 10))
    assert len(resumed["history"]) > stopped["num_checkpoints"]
    assert [h["metrics"] for h in resumed["history"]] == [h["metrics"] for h in expected["history"]]
    for name in ("model/params.pt", "checkpoints/checkpoint.pt"):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(root / name, weights_only=True)
        a, b = (a["model"], b["model"]) if "model" in a else (a, b)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: weights differ from the uninterrupted run"


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch, prepared_channels):
    """Whoever can write the checkpoint prefix must not get code run with the job's role."""
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, "max_num_batches": "10"})
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 1, "state": Exploit()}, root / "checkpoints" / "checkpoint.pt")
    assert run_main(monkeypatch, root) == 1
    assert not marker.exists()
    text = failure(root)
    assert "checkpoint.pt: refusing to load this training checkpoint" in text and "posix.system" in text


def test_distributed_data_parallel_on_cpu_with_two_processes(tmp_path, prepared_channels):
    root = sagemaker_root(tmp_path, prepared_channels, {**AWS_EXAMPLE_SCALED, "optimized_metric": "perplexity"})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = run_train(root, extra_env={"SEQ2SEQ_NUM_PROCESSES": "2", "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 2 training processes with torchrun" in proc.stderr
    # torchrun's per-launch folder is gone (torch's compile cache, torchinductor_<user>, is meant to stay)
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert "2 process(es)" in proc.stderr
    assert len(metric_values(proc.stdout)["validation:perplexity"]) == 2  # rank 0 alone prints metrics
    summary = json.loads((root / "model" / "metrics.json").read_text())
    assert summary["num_updates"] == 20
    load_model(root / "model")


def test_sigterm_to_the_entrypoint_reaches_every_rank_of_a_distributed_job(tmp_path, prepared_channels):
    """SageMaker signals the container's first process only: under torchrun, the ranks must still get the
    SIGTERM, checkpoint together and exit, leaving no process behind."""
    import psutil

    root = sagemaker_root(tmp_path, prepared_channels, RESUME_HP)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "OMP_NUM_THREADS": "1", "SEQ2SEQ_NUM_PROCESSES": "2"}
    proc = subprocess.Popen([sys.executable, str(TRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    ckpt_file = root / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 180
    while not ckpt_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt_file.exists(), proc.communicate()[1][-2000:]
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, signal.SIGTERM)  # the entrypoint alone, as `docker stop` does
    _, err = proc.communicate(timeout=120)
    assert "passing it on to the training processes" in err and "SIGTERM received" in err, err[-3000:]
    assert "stopped by SIGTERM at update" in err
    state = torch.load(ckpt_file, weights_only=True)["state"]
    assert state["stop_reason"] == "" and state["num_updates"] >= 10
    for pid in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"pid {pid} still runs"
