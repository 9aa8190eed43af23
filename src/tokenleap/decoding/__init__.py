"""Pieces every decoding method shares: warping, KV cache, stopping, statistics."""
