"""Beam's state sampler, sampled every SAMPLING_PERIOD_MS instead of 200 ms.

Each bundle processor runs a thread that samples which step is running (the
steps' msec counters) and sleeps between samples, up to 200 ms once a bundle
has run about a second; at the bundle's end Beam joins that thread, so every
bundle ends with up to 200 ms of waiting, about 100 ms on average (Beam says
so in statesampler_fast.pyx; its sleep cannot be interrupted). That is about
5% of a one-bundle local run of 100,000 MLP instances, and up to about 8% of
every bundle of a second or two on Flink and Spark. Beam has no option for
the period: the StateSampler constructor's default is replaced, which every
bundle processor created after this module's import takes. Imported by the
pipeline's graph (the local runner's bundle processors) and as a Beam
plugin by each SDK worker at start (pipeline/cli.py, pipeline/join.py).
"""
from apache_beam.runners.worker import statesampler

SAMPLING_PERIOD_MS = 20  # a sample costs a few microseconds: 50 a second


def _sample_more_often() -> None:
  init = statesampler.StateSampler.__init__
  # Only the signature this was written for (Beam 2.77): another Beam's
  # sampler is left as it is.
  if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
    init.__defaults__ = (SAMPLING_PERIOD_MS,)


_sample_more_often()
