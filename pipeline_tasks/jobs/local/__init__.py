"""The ``local`` and ``docker`` backends: a SageMaker request executed on this machine, answered with a
Describe…Job-like dict (docs/ARCHITECTURE.md §5).

- ``training``: ``run_training_job``, the emulation of a training job, and its stored result;
- ``transform``: ``run_transform_job``, the emulation of a batch transform job against ``serve``;
- ``staging``: files between storage and the job root (channels, checkpoints, the model archive);
- ``docker``: the engine and GPU probes and every ``docker`` command the jobs run;
- ``process``: the job's child process, which never outlives its task, and the reaper that stops it.
"""
