"""Documents to batches: file readers, seeded splits, the tokenisation cache, the batch sampler and the DataModule."""
