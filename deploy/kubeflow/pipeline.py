"""The retrain as a Kubeflow Pipelines v2 pipeline: update data -> train -> publish.

The reference talk's recurring pipeline, run with the recstream image. Each step is
`recstream retrain --step STEP --run-id RUN_ID` in its own pod; the steps hand their results
over through the object store under the run's id (the KFP run id), not through KFP artifacts:
`<MODEL_NAME>/_runs/<run id>/` in MODELS_BUCKET (retrain/steps.py), removed by publish.

1. update-data: read the training window of ingested transactions from the data bucket and
   split it with the temporal holdout; store the training events and held-out items (Parquet).
2. train: build the interactions on the active version's vocabulary, train (warm start from the
   active version), evaluate against the popularity baseline and the active model on the same
   holdout, export the candidate SavedModel for this run.
3. publish: gate the candidate, register it as the next version in the models bucket and send
   `published` or `rejected` on model-updates (the updater takes it from there).

The work is the same code as one-shot `recstream retrain` (retrain/job.py). Retries are safe: a
step run again replaces its own output, and a publish retried after it announced only cleans up.

Every step reads its settings from the ConfigMap recstream-settings and its credentials from the
Secret recstream-minio (deploy/k8s), which must exist in the namespace the pipeline runs in.

Compile (kfp 2.17, kfp-kubernetes 2.17; see deploy/README.md):

    python deploy/kubeflow/pipeline.py [--image REGISTRY/recstream:TAG] [--output pipeline.yaml]
"""

import argparse
from pathlib import Path

from kfp import compiler, dsl, kubernetes

# The image built from deploy/Dockerfile, pushed to your registry (exact tag, or tag@sha256).
IMAGE = "registry.example.com/recstream:0.1.0"
SETTINGS_CONFIG_MAP = "recstream-settings"
CREDENTIALS_SECRET = "recstream-minio"
PIPELINE_NAME = "recstream-retrain"

# Settings (stream/settings.py FIELDS) the steps take from the ConfigMap, under the same names.
SETTINGS = (
    "RECSTREAM_ENV",
    "LOG_LEVEL",
    "KAFKA_BOOTSTRAP",
    "MINIO_ENDPOINT",
    "MINIO_SECURE",
    "MINIO_REGION",
    "MODEL_NAME",
    "DATA_BUCKET",
    "MODELS_BUCKET",
    "MODEL_UPDATES_TOPIC",
)
CREDENTIALS = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")

# Per step: CPU request/limit, memory request/limit, retries, timeout in seconds.
RESOURCES = {
    "data": ("500m", "2", "1Gi", "4Gi", 2, 1800),
    "train": ("1", "4", "2Gi", "8Gi", 1, 3600),
    "publish": ("250m", "1", "1Gi", "2Gi", 2, 900),
}


def _component(step: str, image: str):
    """A container component running one step of `recstream retrain`."""

    def run(run_id: str):
        return dsl.ContainerSpec(
            image=image,
            command=["recstream"],
            args=["retrain", "--step", step, "--run-id", run_id],
        )

    run.__name__ = {"data": "update_data", "train": "train", "publish": "publish"}[step]
    return dsl.container_component(run)


def _configure(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    cpu_request, cpu_limit, memory_request, memory_limit, retries, timeout = RESOURCES[step]
    # Every run must see new data: never reuse a cached step.
    task.set_caching_options(False)
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s")
    kubernetes.set_timeout(task, timeout)
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {name: name for name in SETTINGS})
    kubernetes.use_secret_as_env(task, CREDENTIALS_SECRET, {name: name for name in CREDENTIALS})
    # The image's user; the steps write only under RECSTREAM_HOME (its home directory).
    kubernetes.set_security_context(task, run_as_user=10001, run_as_group=10001, run_as_non_root=True)
    return task


def build_pipeline(image: str = IMAGE):
    update_data = _component("data", image)
    train = _component("train", image)
    publish = _component("publish", image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="recstream retrain: update data -> train -> publish (gated) a model version",
    )
    def retrain_pipeline():
        # The KFP run id names this run's intermediate objects in the store.
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        data_task = _configure(update_data(run_id=run_id), "data").set_display_name("update data")
        train_task = _configure(train(run_id=run_id), "train").set_display_name("train").after(data_task)
        _configure(publish(run_id=run_id), "publish").set_display_name("publish").after(train_task)

    return retrain_pipeline


def compile_pipeline(output: Path, image: str = IMAGE) -> Path:
    compiler.Compiler().compile(build_pipeline(image), package_path=str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the recstream retrain pipeline.")
    parser.add_argument("--image", default=IMAGE, help=f"recstream image (default {IMAGE})")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("pipeline.yaml"), help="output YAML"
    )
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output, args.image))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
