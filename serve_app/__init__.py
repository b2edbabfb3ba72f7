"""The Ray Serve application: shared encoder + one deployment per task head behind a FastAPI ingress."""
