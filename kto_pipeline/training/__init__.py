"""Model loading, KTO training and the tiny local model. Plain modules, no Dagster."""
