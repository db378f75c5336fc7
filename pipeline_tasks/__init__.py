"""Data-preparation and pipeline steps: plain functions on URIs and typed configs, no Airflow imports.

Each step is also a CLI subcommand: `python -m pipeline_tasks <step> --help`.
"""

__version__ = "0.1.0"
