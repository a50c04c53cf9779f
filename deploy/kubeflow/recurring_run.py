"""Upload the compiled retrain pipeline and start its recurring run on a Kubeflow Pipelines host.

    python deploy/kubeflow/recurring_run.py --host https://kfp.example.com/pipeline \
        --namespace kubeflow-user-example-com [--interval-s 1800]

The interval defaults to RETRAIN_INTERVAL_S from the environment, else that setting's default
(1800 s, the reference talk's 30-minute recurring run). One run at a time (max_concurrency=1)
and no catch-up of runs missed while the schedule was paused. Authentication is whatever
`kfp.Client` picks up (in-cluster token, KF_PIPELINES_SA_TOKEN_PATH, `--existing-token`).
Needs the kfp SDK only (same environment as pipeline.py).
"""

import argparse
import os
from pathlib import Path

import kfp

HERE = Path(__file__).parent
PIPELINE_NAME = "recstream-retrain"
DEFAULT_INTERVAL_S = 1800  # RETRAIN_INTERVAL_S default in stream/settings.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the recurring run of the recstream retrain.")
    parser.add_argument("--host", required=True, help="KFP API endpoint")
    parser.add_argument("--namespace", required=True, help="Kubeflow profile namespace the runs go to")
    parser.add_argument("--existing-token", help="bearer token for the KFP API")
    parser.add_argument("--experiment", default="recstream", help="experiment name (created if missing)")
    parser.add_argument(
        "--interval-s",
        type=int,
        default=int(float(os.environ.get("RETRAIN_INTERVAL_S", DEFAULT_INTERVAL_S))),
        help="seconds between runs (default: RETRAIN_INTERVAL_S, else 1800)",
    )
    parser.add_argument("--package", type=Path, default=HERE / "pipeline.yaml", help="compiled pipeline")
    parser.add_argument("--version", default="0.1.0", help="pipeline version name to upload")
    args = parser.parse_args(argv)
    if args.interval_s < 1:
        parser.error("--interval-s must be >= 1")

    client = kfp.Client(host=args.host, namespace=args.namespace, existing_token=args.existing_token)
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(args.package), pipeline_name=PIPELINE_NAME)
        pipeline_id = pipeline.pipeline_id
        version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
    else:
        version = client.upload_pipeline_version(
            str(args.package), pipeline_version_name=args.version, pipeline_id=pipeline_id
        )
        version_id = version.pipeline_version_id
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    run = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=f"{PIPELINE_NAME}-every-{args.interval_s}s",
        description="update data -> train -> publish",
        interval_second=args.interval_s,
        max_concurrency=1,
        no_catchup=True,
        pipeline_id=pipeline_id,
        version_id=version_id,
        enable_caching=False,
    )
    print(f"recurring run {run.recurring_run_id}: every {args.interval_s} s in {args.namespace}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
