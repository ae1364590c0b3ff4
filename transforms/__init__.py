"""Reusable PTransforms and DoFns of the batch-prediction job: read, decode,
score, format and write."""
