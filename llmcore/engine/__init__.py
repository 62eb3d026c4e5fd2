"""Training engines behind one protocol (base): single, ddp and deepspeed (ZeRO 1-3); built by build.build_engine."""
