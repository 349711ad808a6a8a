"""Training: the Estimator model_fn and train op, the run (config + dataset +
run directory), towers and clusters, hooks, warm start, time budgets."""
