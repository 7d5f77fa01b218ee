"""Lesson 11's editing: SDEdit, inpainting by replacement and RePaint, the forward jump, seams."""

import pytest
import torch

from diffuse_edu.diffusion.editing import inpaint, sdedit
from diffuse_edu.diffusion.forward_process import q_forward, q_sample
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.evaluation.probes import seam_jump
from diffuse_edu.models.unet import UNet, UNetConfig

SCHEDULE = cosine_schedule(1000)


def oracle_for(target: torch.Tensor):
    """An eps-model that knows the clean image: eps_hat = (x_t - sqrt(ab) target) / sqrt(1 - ab)."""
    def model(x, t, cond=None):
        ab = SCHEDULE.alpha_bar[t.long().cpu()].to(x.dtype).reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()
    return model


def test_q_forward_composes_with_q_sample():
    x0, e1, e2 = (torch.randn(2, 1, 4, 4, dtype=torch.float64) for _ in range(3))
    x_s = q_sample(x0, 300, SCHEDULE, e1)
    ratio = (SCHEDULE.alpha_bar[700] / SCHEDULE.alpha_bar[300]).item()
    torch.testing.assert_close(q_forward(x_s, 300, 700, SCHEDULE, torch.zeros_like(x_s)),
                               ratio**0.5 * x_s)
    # the two noises add up to q(x_700 | x_0)'s: sqrt(ab_700) x0 plus variance 1 - ab_700
    combined = q_forward(x_s, 300, 700, SCHEDULE, e2) - SCHEDULE.alpha_bar[700].sqrt().item() * x0
    var = ratio * (1 - SCHEDULE.alpha_bar[300].item()) + (1 - ratio)
    assert var == pytest.approx(1 - SCHEDULE.alpha_bar[700].item())
    assert combined.shape == x0.shape
    with pytest.raises(ValueError, match="s <= t"):
        q_forward(x_s, 700, 300, SCHEDULE, e2)


@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_keeps_the_known_region_exactly_and_recovers_the_rest_with_an_oracle(resample):
    g = torch.Generator().manual_seed(0)
    full = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # the left half is known
    known = full * mask + 5.0 * (1 - mask)  # the unknown half holds nonsense: it must not leak
    out = inpaint(oracle_for(full), known, mask, SCHEDULE, steps=10, resample=resample, eta=0.0,
                  generator=g)
    assert torch.equal(out[..., :, :4], known[..., :, :4])
    torch.testing.assert_close(out[..., :, 4:], full[..., :, 4:], atol=1e-4, rtol=1e-4)


def test_repaint_runs_the_last_step_once_as_lugmayr_et_al_algorithm_1():
    """Steps with a step to jump back to are tried ``resample`` times, the last (to t = 0) once: a
    repeat there would denoise the finished image as if it were x_t (the bug this test catches)."""
    calls = []

    def spy(x, t, cond=None):
        calls.append((int(t[0]), x.clone()))
        return torch.zeros_like(x)
    known, mask = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    mask[..., 2:] = 0
    inpaint(spy, known, mask, SCHEDULE, steps=4, resample=3,
            generator=torch.Generator().manual_seed(0))
    ts = [t for t, _ in calls]
    # (steps - 1) * resample + 1 evaluations
    assert ts == [1000] * 3 + [750] * 3 + [500] * 3 + [250]


def gaussian_prior_model(centre: torch.Tensor, tau: float):
    """The exact eps-model for data x0 ~ N(centre, tau^2 I): x0_hat is the posterior mean."""
    def model(x, t, cond=None):
        ab = SCHEDULE.alpha_bar[t.long().cpu()].to(x.dtype).reshape(-1, 1, 1, 1)
        x0_hat = centre + tau**2 * ab.sqrt() * (x - ab.sqrt() * centre) / (ab * tau**2 + 1 - ab)
        return (x - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    return model


def test_sdedit_strength_moves_from_the_guide_to_the_model():
    g = torch.Generator().manual_seed(1)
    guide, centre = torch.rand(64, 1, 8, 8, generator=g), -torch.ones(64, 1, 8, 8)
    model = gaussian_prior_model(centre, tau=0.1)  # a "model" of images near -1 everywhere
    dist = {}
    for strength in (0.05, 0.5, 1.0):
        out = sdedit(model, guide, SCHEDULE, strength=strength, steps=50, generator=g)
        dist[strength] = ((out - guide).abs().mean().item(), (out - centre).abs().mean().item())
    # the stronger, the further from the guide ...
    assert dist[0.05][0] < dist[0.5][0] < dist[1.0][0]
    assert dist[0.05][1] > dist[0.5][1] > dist[1.0][1]  # ... and the closer to what the model knows
    assert dist[0.05][0] < 0.5 * dist[1.0][0] and dist[1.0][1] < 0.15
    with pytest.raises(ValueError, match="strength"):
        sdedit(model, guide, SCHEDULE, strength=0.0, steps=10)
    with pytest.raises(ValueError, match="got none: pass the model's schedule"):
        # was an AttributeError
        sdedit(lambda x, t, cond=None: x, guide, None, strength=0.5, steps=10)


def test_sdedit_takes_the_schedule_a_denoiser_carries():
    from diffuse_edu.diffusion.denoisers import Denoiser
    from diffuse_edu.diffusion.prediction import Target

    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)).eval()
    guide = torch.rand(2, 1, 8, 8)
    denoiser = Denoiser(net, SCHEDULE, Target.EPS)
    with torch.no_grad():
        given, carried = (sdedit(denoiser, guide, s, strength=0.5, steps=6,
                                 generator=torch.Generator().manual_seed(0))
                          for s in (SCHEDULE, None))
    torch.testing.assert_close(given, carried)


def test_seam_jump_sees_a_pasted_border():
    smooth = torch.linspace(-1, 1, 8).repeat(1, 1, 8, 1)  # a gentle ramp along W
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1
    pasted = smooth * mask + (smooth + 1.0) * (1 - mask)  # the right half shifted: a seam
    assert seam_jump(pasted, mask).item() == pytest.approx(seam_jump(smooth, mask).item() + 1.0)
    with pytest.raises(ValueError, match="no border"):
        seam_jump(smooth, torch.ones(1, 1, 8, 8))


def test_inpaint_runs_a_learners_repaint_step_and_ddim_inversion_is_invert_ddim():
    from diffuse_edu.diffusion.editing import repaint_step
    from diffuse_edu.diffusion.samplers import ddim_inversion, invert_ddim

    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(), groups=4)).eval()
    schedule = cosine_schedule(100)
    known = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    calls = []

    def mine(*args, **kw):
        calls.append(args[2:4])
        return repaint_step(*args, **kw)

    a = inpaint(net, known, mask, schedule, steps=5, resample=3,
                generator=torch.Generator().manual_seed(1), repaint=mine)
    b = inpaint(net, known, mask, schedule, steps=5, resample=3,
                generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len(calls) == 5 and calls[-1][1] == 0
    from diffuse_edu.diffusion.denoisers import as_denoiser
    with torch.no_grad():
        torch.testing.assert_close(ddim_inversion(as_denoiser(net, schedule), known, schedule, 10,
                                                  80),
                                   invert_ddim(net, known, schedule, steps=10, t_max=80))
