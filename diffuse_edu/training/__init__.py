"""Training (lesson 05 on): the loop for every objective (``loop``), the EMA of the weights
(``ema``), several GPUs through torchrun (``distributed``), checkpoints with their portable
safetensors copies and the one load-or-train helper (``checkpoints``), and the settings of the
course's trained models (``recipes``)."""
