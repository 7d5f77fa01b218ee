"""Training (lesson 05 on): the loop for every objective (``loop``), the EMA of the weights
(``ema``), several GPUs through torchrun (``distributed``), checkpoints with their portable
safetensors copies and the one load-or-train helper (``checkpoints``), the settings of the
course's trained models as data (``recipes``) and the functions that load or train them
(``pretrained``), the mini-CLIP's contrastive training (``contrastive``), and fine-tuning
(``finetune``: prior preservation, the decoder alone; lesson 13)."""
