"""The batch-prediction job: options, the pipeline graph and the command line."""
