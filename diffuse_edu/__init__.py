"""diffuse-edu: the helper library of a course that builds image diffusion from scratch.

The package is grouped by role, one level deep, one concept per module. Dependencies run one way:
``course`` (the tooling) may import anything; ``exercises`` (the checkers) the library; ``training``
imports ``evaluation``, ``models``, ``diffusion`` and ``data``; ``evaluation`` imports ``models``,
``diffusion`` and ``data``; ``models`` and ``diffusion`` import only torch and einops (a test keeps
it so). ``config`` and ``progress`` are leaves every group may use.

The syllabus, lesson by lesson:

====================  =========================================================================
lesson                modules
====================  =========================================================================
00 welcome            ``config``, ``data.images``, ``data.staged``, ``course.doctor``
01 forward process    ``diffusion.schedules``, ``diffusion.forward_process``
02 reverse process    ``diffusion.reverse_process``, ``diffusion.objectives``,
                      ``diffusion.prediction``, ``models.mlp``, ``data.toy2d``,
                      ``evaluation.toy_gan``
03 U-Net              ``models.unet`` (``residual_block``, ``unet_forward``, ``use_pieces``),
                      ``models.attention`` (``attention_block``), ``evaluation.profiling``,
                      ``evaluation.probes``
04 time embeddings    ``models.time_embedding`` (``scale_shift``), ``evaluation.probes`` (loss by t)
05 training a DDPM    ``training.loop`` (``training_step``), ``training.ema``,
                      ``training.checkpoints``, ``training.recipes``, ``training.pretrained``,
                      ``evaluation.baseline``
06 FID                ``evaluation.fid``, ``evaluation.features``, ``models.classifier``,
                      ``evaluation.probes``
07 samplers           ``diffusion.samplers``, ``diffusion.denoisers``, ``diffusion.prediction``
08 guidance           ``models.conditioning`` (``drop_labels``), ``diffusion.guidance``
                      (``guided_forward``), ``training.recipes`` (class-conditional models)
09 text conditioning  ``data.captioned``, ``models.text``, ``models.clip`` (``contrastive_loss``),
                      ``models.attention`` (``cross_attention_block``), ``training.contrastive``,
                      ``evaluation.adherence``
10 latent diffusion   ``models.vae`` (``reparameterise``, ``kl_diagonal_gaussian``, ``vae_loss``,
                      ``encode_latents``, ``decode_latents``, ``VAE``, ``VAEObjective``,
                      ``latent_scale``), ``evaluation.probes``, ``course.report``
                      (``paired_verdict``)
11 editing            ``diffusion.editing`` (``repaint_step``), ``diffusion.samplers``
                      (``ddim_inversion``), ``evaluation.probes`` (``seam_jump``)
12 beyond the U-Net   ``models.dit`` (``patchify``, ``dit_block``), ``diffusion.objectives``
                      (``flow_matching_loss``, ``FlowMatching``), ``diffusion.samplers``
                      (``sample_flow_euler``), ``diffusion.schedules`` (``shift_snr``),
                      ``data.canvas``, ``evaluation.probes``
13 fine-tuning        ``models.lora`` (``lora_forward``, ``lora_delta``), ``models.unet``
                      (``add_class``), ``training.finetune`` (``prior_preservation_loss``),
                      ``data.subject``, ``evaluation.probes``
14 distillation       ``diffusion.distillation`` (``distillation_target``), ``training.distill``
                      (``distillation_step``, ``distill``)
15 scores and SDEs    ``diffusion.score`` (``dsm_loss``, ``langevin_step``, ``annealed_langevin``,
                      ``reverse_sde_step``, ``hutchinson_divergence``, ``ode_log_likelihood``),
                      ``evaluation.sample_sets`` (``energy_distance``)
16 consistency       ``diffusion.consistency`` (``edm_preconditioning``,
                      ``consistency_function``, ``consistency_sampler``, ``cd_loss``),
                      ``training.consistency`` (``train_consistency``)
17 discrete diffusion ``diffusion.discrete`` (``mask_tokens``, ``masked_diffusion_loss``,
                      ``unmask_step``, ``sample_masked``, ``TokenTransformer``, ``ar_bits``)
18 control: guidance  ``diffusion.classifier_guidance`` (``noisy_classifier_loss``,
                      ``classifier_guided_eps``, ``bracketing_scales``,
                      ``negative_guided_forward``), ``evaluation.fid`` (``paired_fid_contrast``),
                      ``models.noisy_classifier``, ``training.noisy_classifier``
19 control: adapters  ``models.control_adapter`` (``adapter_forward``, ``mask_iou``),
                      ``models.attention_control`` (``injected_cross_attention``),
                      ``training.control_adapter``
every lesson          ``exercises`` (checkers), ``course.plotting``, ``course.report``,
                      ``course.runner``, ``course.cli``, ``course.bench``
a classroom           ``course.workshop``, ``course.grade``, ``training.distributed`` (torchrun),
                      ``course.results``
====================  =========================================================================
"""

from diffuse_edu import config
from diffuse_edu.config import Scale, by_scale, get_scale, set_data_dir, set_scale

__version__ = "0.1.0"

__all__ = ["Scale", "by_scale", "config", "get_scale", "set_data_dir", "set_scale"]
