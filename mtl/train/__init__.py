"""Training: `mtl.train.driver.train_on_ray` (Ray Data -> Ray Train -> DeepSpeed) and
`mtl.train.local_session.train_locally` (one process, no Ray) both run the recipe in `mtl.train.recipe`.

Not imported here, so `import mtl.train.optim` does not start pulling in Ray.
"""
