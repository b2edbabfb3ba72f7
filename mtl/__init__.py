"""Multi-task sentence encoder; packages along the data path: data, model, train, inference, evaluation."""
