import pytest
import torch

pytest.importorskip("diffusers")

from diffuse_edu.evaluation.baseline import diffusers_unet, sample_diffusers, train_diffusers


def test_diffusers_baseline_trains_for_its_budget_and_samples():
    torch.manual_seed(0)
    unet = diffusers_unet(8, 1, (32, 32), 1)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    out = train_diffusers(unet, images, seconds=1.0, batch_size=4,
                          generator=torch.Generator().manual_seed(0))
    assert out["steps"] >= 1 and out["seconds"] >= 1.0 and out["images_per_second"] > 0
    x = sample_diffusers(unet.eval(), 3, (1, 8, 8), steps=3,
                         generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_the_baseline_autocasts_where_the_shared_check_says_bf16_is_fast(monkeypatch, fast_bf16):
    """One bfloat16 check for the course (diffusion.denoisers.bf16_supported): the baseline had its
    own (any CUDA device), which autocast on a GPU without fast bfloat16 (a T4)."""
    from diffuse_edu.evaluation import baseline

    monkeypatch.setattr(baseline, "bf16_supported", lambda device: fast_bf16)
    torch.manual_seed(0)
    unet = diffusers_unet(8, 1, (32, 32), 1)
    seen = []
    unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = train_diffusers(unet, torch.rand(8, 1, 8, 8) * 2 - 1, seconds=0.1, batch_size=4)
    assert out["precision"] == ("bfloat16 autocast" if fast_bf16 else "float32")
    assert set(seen) == {torch.bfloat16 if fast_bf16 else torch.float32}


def test_the_comparison_lesson_05_runs_at_full_scale_scores_both_models():
    """Lesson 05 calls this at full scale only: run it here on a tiny stand-in of the recipe."""
    from types import SimpleNamespace

    from diffuse_edu.evaluation.baseline import compare_with_diffusers
    from diffuse_edu.models.classifier import Classifier, ClassifierConfig
    from diffuse_edu.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    # diffusers' GroupNorm takes 32 groups
    config = UNetConfig(channels=(32, 32), attention_levels=(), groups=4)
    recipe = SimpleNamespace(model=config, train=SimpleNamespace(batch_size=8))
    result = SimpleNamespace(ema=UNet(config).eval(), seconds=0.5, images_per_second=100.0)
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    classifier = Classifier(ClassifierConfig(in_channels=1, num_classes=10, widths=(8, 16))).eval()
    out = compare_with_diffusers(result, images[:24], images, recipe, classifier=classifier,
                                 reference=images[8:], device=torch.device("cpu"))
    assert (out["train_seconds_diffusers"] >= 0.5 and out["fid_ours"] >= 0
            and out["fid_diffusers"] >= 0)
    assert out["gflops_per_image_ours"] > 0 and out["gflops_per_image_diffusers"] > 0
    assert out["precision_diffusers"] == "float32"  # a CPU
    assert out["fid_ratio_diffusers_over_ours"] == out["fid_diffusers"] / out["fid_ours"]
