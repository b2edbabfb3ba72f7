"""Multi-task sentence encoder: config, model, data contract, training and inference."""
