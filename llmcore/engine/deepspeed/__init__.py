"""The DeepSpeed engine (engine) and the DeepSpeed JSON it is given (config)."""
