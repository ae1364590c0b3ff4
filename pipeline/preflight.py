"""batch-predict preflight: a run's sample, decoded and scored here (to be built)."""


def main(argv: list) -> int:
  """`batch-predict preflight [run options]`: the exit status."""
  raise NotImplementedError


def before_run(config) -> int:
  """`--preflight` on a run: 0 to go on, else the exit status to stop with."""
  raise NotImplementedError
