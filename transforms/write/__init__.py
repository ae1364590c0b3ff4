"""Output records in each output format, and the sharded files they are written to."""
