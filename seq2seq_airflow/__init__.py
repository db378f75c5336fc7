"""Our Airflow-side code that is not a DAG: the SageMaker operators and their trigger, and what the DAGs
share (settings and Params, assets, the backend branches).

An installed package (not dags/) because the triggerer must import the trigger class by its path, and
the triggerer does not put the DAGs folder on sys.path. pipeline_tasks/ stays free of Airflow imports.
"""
