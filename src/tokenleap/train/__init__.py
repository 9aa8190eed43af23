"""Training what the methods need: a draft model, lookahead embeddings, early-exit heads."""
