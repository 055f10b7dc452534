"""Numbers about artifacts: parity against the eager model, SR metrics, datasets, evaluation, timing, verify."""
