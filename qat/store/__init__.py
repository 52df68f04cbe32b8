"""A cell's state on disk beside its checkpoints: its claim, the shared FP trunks, and the
provenance of trained weights. Storage only: it trains nothing and knows no engine."""
