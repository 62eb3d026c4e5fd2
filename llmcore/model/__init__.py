"""The model: ModelArgs (args), named sizes (presets), the decoder (transformer), the KV cache and FLOP counts."""
