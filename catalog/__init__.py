"""What exists and what it costs: the model and GPU catalog, model resolution, exact parameter counts
and the GPU-memory estimator. Depends on nothing else in automodel; imports no torch at module level."""
