"""The Assets the DAGs emit and are scheduled on, defined once: a consumer matches a producer by URI, so
two spellings of one Asset would be two Assets.

- ``DATASET``: wmt_seq2seq's ``upload`` task emits it with the run's channels.
- ``MODEL``: wmt_seq2seq's ``promote`` task emits it on promotion; wmt_seq2seq_batch_transform runs on it.
"""

from __future__ import annotations

from airflow.sdk import Asset

DATASET = Asset(name="wmt_seq2seq_dataset", uri="wmt-seq2seq://dataset")
MODEL = Asset(name="wmt_seq2seq_model", uri="wmt-seq2seq://model")
