"""The application builder: `serve run serve_app/serve_config.yaml` imports `serve_app.app:build_app`.

Ingress (FastAPI) --handle--> Encoder (@serve.batch)  --pooled vectors-->  head_<task> (one per task)
"""

from __future__ import annotations

from ray.serve import Application

from mtl.inference import model_info, read_manifest
from serve_app.args import AppArgs
from serve_app.encoder import Encoder
from serve_app.ingress import Ingress
from serve_app.task_head import TaskHead


def build_app(args: AppArgs) -> Application:
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    model_dir = args.resolved_model_dir()
    manifest = read_manifest(model_dir)
    encoder = Encoder.options(
        num_replicas=args.encoder_replicas,
        ray_actor_options={"num_cpus": args.encoder_cpus, "num_gpus": args.encoder_gpus},
        user_config={"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s},
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
    }
    limits = {"max_texts": args.max_texts, "max_chars": args.max_chars, "auth_token_env": args.auth_token_env}
    return Ingress.options(
        num_replicas=args.ingress_replicas,
        ray_actor_options={"num_cpus": args.ingress_cpus},
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
    ).bind(encoder, heads, model_info(manifest), limits)
