"""plan's checks: what the trigger form's JSON schema cannot say, named precisely, in milliseconds."""

from __future__ import annotations

import pytest

from pipeline_tasks.plan import PlanError, check_conf, check_hyperparameters, check_training_run, unknown_keys

PARAMS = {"source_lang": "en", "target_lang": "de", "backend": "local", "artifact_root": "/tmp/x",
          "image": "wmt-seq2seq:latest", "init_model": "none",
          "role_arn": None, "gate": {"metric": "test:bleu"}, "hyperparameters": {"rnn_num_hidden": 64},
          "subset_size": 10}


@pytest.mark.parametrize("hp,needle", [
    ({"rnn_num_hidden": -3}, 'rnn_num_hidden="-3": must be an integer in [1, 16384]'),
    ({"rnn_num_hidden": 1_000_000_000}, 'rnn_num_hidden="1000000000": must be an integer in [1, 16384]'),
    ({"learning_rate": 1e300}, 'learning_rate="1e+300": must be a float in (0, 10]'),
    ({"optimizer_type": "adamw"}, 'optimizer_type="adamw": must be one of adam, sgd, rmsprop'),
    ({"rnn_num_hiden": 64}, "unknown hyperparameter(s): rnn_num_hiden (did you mean rnn_num_hidden?)"),
    ({"batch_size": [64]}, "hyperparameter batch_size: list value [64] cannot be passed"),
])
def test_bad_hyperparameters_are_named_with_the_containers_message(hp, needle):
    with pytest.raises(PlanError) as e:
        check_hyperparameters(hp)
    assert needle in str(e.value)
    assert len(str(e.value)) < 200  # names the bad one, never the list of every name


def test_unknown_conf_keys_get_the_nearest_param():
    assert unknown_keys({"subset_size": 1}, PARAMS, "conf key") is None
    assert unknown_keys({"subset_sise": 1, "zzz": 2}, PARAMS, "conf key") == (
        "unknown conf keys subset_sise (did you mean subset_size?), zzz")
    with pytest.raises(PlanError, match=r"unknown conf key subset_sise \(did you mean subset_size\?\)"):
        check_conf({"subset_sise": 10}, PARAMS)


def test_a_warm_start_needs_this_projects_image():
    builtin = "224300973850.dkr.ecr.eu-west-1.amazonaws.com/seq2seq:1"
    check_training_run({**PARAMS, "image": builtin, "init_model": "none"}, None, PARAMS)
    with pytest.raises(PlanError, match=r"init_model=promoted needs this project's image: .* is the built-in seq2seq "
                                        r"algorithm, whose training jobs take no 'model' channel"):
        check_training_run({**PARAMS, "image": builtin, "init_model": "promoted"}, None, PARAMS)


def test_a_whole_run_and_the_backend_needs():
    check_training_run(PARAMS, {"subset_size": 5}, PARAMS)
    with pytest.raises(PlanError, match="are the same"):
        check_training_run({**PARAMS, "target_lang": "en"}, None, PARAMS)
    with pytest.raises(PlanError, match="s3:// artifact_root"):
        check_training_run({**PARAMS, "backend": "sagemaker"}, None, PARAMS)
    with pytest.raises(PlanError, match="needs role_arn"):
        check_training_run({**PARAMS, "backend": "sagemaker", "artifact_root": "s3://b/p"}, None, PARAMS)
    with pytest.raises(PlanError, match=r"^gate: "):
        check_training_run({**PARAMS, "gate": {"metric": "test:bleu", "min_delt": 1}}, None, PARAMS)
    with pytest.raises(PlanError, match="register_model_package needs backend=sagemaker: a SageMaker model package "
                                        "names an S3 model and an ECR image, and backend=local has neither"):
        check_training_run({**PARAMS, "register_model_package": True}, None, PARAMS)
    check_training_run({**PARAMS, "backend": "sagemaker", "artifact_root": "s3://b/p", "role_arn": "arn:r",
                        "register_model_package": True}, None, PARAMS)



def test_a_tuning_range_the_algorithm_cannot_take_fails_in_plan():
    good = {"objective": "validation:bleu", "ranges": {"IntegerParameterRanges": [
        {"Name": "num_layers_encoder", "MinValue": 1, "MaxValue": 2}]}}
    check_training_run({**PARAMS, "tuning": good}, None, PARAMS)
    bad = {"objective": "validation:bleu", "ranges": {"ContinuousParameterRanges": [
        {"Name": "learning_rate", "MinValue": 0, "MaxValue": 0.1, "ScalingType": "Logarithmic"}]}}
    with pytest.raises(PlanError, match="tuning range of learning_rate: MinValue 0: must be a float in"):
        check_training_run({**PARAMS, "tuning": bad}, None, PARAMS)
    # A tuned name may also be in the run's hyperparameters: the tuned value wins in every trial.
    tuned = {"objective": "validation:bleu", "ranges": {"IntegerParameterRanges": [
        {"Name": "rnn_num_hidden", "MinValue": 32, "MaxValue": 64}]}}
    check_training_run({**PARAMS, "tuning": tuned}, None, PARAMS)
    with pytest.raises(PlanError, match="tuning: unknown key"):
        check_training_run({**PARAMS, "tuning": {**good, "max_trials": 3}}, None, PARAMS)


def test_several_instances_need_this_projects_image_and_a_shard_for_each():
    builtin = "224300973850.dkr.ecr.eu-west-1.amazonaws.com/seq2seq:1"
    with pytest.raises(PlanError, match=r"instance_count=2 with the built-in seq2seq algorithm .* would each train "
                                        "alone"):
        check_training_run({**PARAMS, "image": builtin, "instance_count": 2}, None, PARAMS)
    check_training_run({**PARAMS, "instance_count": 3, "train_distribution": "ShardedByS3Key"}, None, PARAMS)
    with pytest.raises(PlanError, match=r"train_shards=2 with ShardedByS3Key over instance_count=3: .* 1 would get "
                                        "none; use at least 3 shards"):
        check_training_run({**PARAMS, "instance_count": 3, "train_distribution": "ShardedByS3Key",
                            "train_shards": 2}, None, PARAMS)
    check_training_run({**PARAMS, "instance_count": 3, "train_shards": 2}, None, PARAMS)  # replicated: any number


def test_training_shards_default_to_one_per_instance_when_sharded():
    from pipeline_tasks.plan import training_shards

    assert training_shards("ShardedByS3Key", None, 4) == 4
    assert training_shards("FullyReplicated", None, 4) == 1
    assert training_shards("FullyReplicated", 6, 4) == 6


def test_the_length_filters_moved_to_cleaning_and_a_conf_that_names_them_is_told():
    with pytest.raises(PlanError, match=r"conf: max_len is now cleaning\.max_len; max_ratio is now "
                                        r"cleaning\.max_ratio \(the clean step filters by length\)"):
        check_conf({"max_len": 80, "max_ratio": 2.5}, PARAMS)
