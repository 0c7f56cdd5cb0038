"""GPU-memory estimation: one Plan in, one frozen MemoryEstimate out, from two engines
(`analytic`: pure arithmetic, no torch; `simulate`: one step on fake tensors)."""
