"""The SageMaker job side of the pipeline: what the `train` and `transform` jobs are, whichever backend
runs them (docs/ARCHITECTURE.md §5).

- ``names``: the per-try job name (unique per run and try, valid for SageMaker) and our prefix key;
- ``requests``: the CreateTrainingJob and CreateModel + CreateTransformJob requests and their checks;
- ``metrics``: MetricDefinitions read out of a job's log;
- ``local/``: the ``local`` and ``docker`` backends, which execute those same requests on this machine.

The ``sagemaker`` backend is the amazon provider's operators (seq2seq_airflow/operators.py) submitting
the requests built here. Nothing here imports torch or Airflow.
"""
