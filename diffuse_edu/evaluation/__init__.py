"""Measuring models and samples (lessons 02-07): ``features`` (the feature networks), ``fid``,
``probes`` (detail, loss by t, precision and recall, nearest neighbours), ``profiling`` (shapes,
parameters, FLOPs), and the baselines ``toy_gan`` (02) and ``baseline`` (diffusers, 05)."""
