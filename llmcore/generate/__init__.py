"""Decoding: sampling with a KV cache (sampling), beam search with a selector hook (beam),
one prompt fanned out into groups of samples by a recipe (groups)."""
