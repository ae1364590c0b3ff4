"""The model: what a SavedModel offers, and scoring batches with it."""
