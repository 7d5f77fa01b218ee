"""Training (lesson 05 on): the loop for every objective (``loop``), the EMA of the weights
(``ema``), checkpoints and the one load-or-train helper (``checkpoints``), and the settings of the
course's trained models (``recipes``)."""
