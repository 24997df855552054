"""Generated from proto/pilothouse/v1 by scripts/gen_protos.py. Do not edit."""
