"""The stream worker that folds scan events into Redis, and the regulator-facing coverage API."""
