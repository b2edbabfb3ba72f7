"""The application builder: `serve run serve_app/serve_config.yaml` imports `serve_app.app:build_app`.

HTTP -> Ingress (FastAPI, batches requests: batching.py) --one call per batch--> Encoder (forward passes)
                                                        --one call per batch--> head_<task> (one per task in the export
                                                                                that has a head: not similarity)
"""

from __future__ import annotations

from ray.serve import Application

from mtl.export_format import model_info, read_manifest, task_type
from serve_app.args import AppArgs
from serve_app.encoder import Encoder
from serve_app.guards import check_exposure
from serve_app.ingress import Ingress
from serve_app.task_head import TaskHead


def http_host() -> str:
    """The address Serve's HTTP ingress binds (http_options.host of the running Serve instance)."""
    from ray.serve.context import _get_global_client

    return _get_global_client().http_config.host


def build_app(args: AppArgs) -> Application:
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    host = http_host()
    check_exposure(host, args.auth_token_env, args.allow_unauthenticated)  # fail the deploy before any replica starts
    model_dir = args.resolved_model_dir()
    manifest = read_manifest(model_dir)
    batching = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s}
    encoder = Encoder.options(
        num_replicas=args.encoder_replicas,
        ray_actor_options={"num_cpus": args.encoder_cpus, "num_gpus": args.encoder_gpus},
        user_config=batching,
        max_ongoing_requests=max(args.max_ongoing_requests, args.max_batch_size) * 2,
    ).bind(str(model_dir), args.precision, args.encoder_threads, "cuda" if args.encoder_gpus > 0 else "cpu")
    heads = {
        task: TaskHead.options(
            name=f"head_{task}",
            ray_actor_options={"num_cpus": args.head_cpus},
            user_config={"head_file": None},
            max_ongoing_requests=args.max_ongoing_requests * 4,  # cheap calls: never make the router wait
        ).bind(str(model_dir), task)
        for task in manifest["tasks"]
        if task_type(manifest, task) != "similarity"  # no head: the ingress computes its cosine
    }
    limits = {
        **args.model_dump(
            include={
                "max_texts",
                "max_chars",
                "max_body_bytes",
                "truncate",
                "call_timeout_s",
                "auth_token_env",
                "allow_unauthenticated",
            }
        ),  # fmt: skip
        "host": host,
    }
    return Ingress.options(
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": args.ingress_cpus},
        user_config={"max_batch_size": args.max_batch_requests, "batch_wait_timeout_s": args.batch_wait_timeout_s},
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
    ).bind(encoder, heads, model_info(manifest), limits, str(model_dir))
