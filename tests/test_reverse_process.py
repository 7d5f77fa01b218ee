import torch

from diffuse_edu import data
from diffuse_edu.diffusion.forward_process import q_posterior, q_sample
from diffuse_edu.diffusion.objectives import DiffusionObjective, FlowMatching, eps_loss
from diffuse_edu.diffusion.prediction import Target, predict_x0, score
from diffuse_edu.diffusion.reverse_process import ddpm_step
from diffuse_edu.diffusion.samplers import sample_ddpm
from diffuse_edu.diffusion.schedules import cosine_schedule, linear_schedule
from diffuse_edu.evaluation.probes import loss_by_t
from diffuse_edu.models.mlp import MLPDenoiser
from diffuse_edu.training.loop import train_denoiser

SCHEDULE = cosine_schedule(50)


def test_eps_loss_is_the_mean_squared_noise_error():
    x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([1, 10, 30, 50])
    loss = eps_loss(lambda x, tt, c=None: torch.zeros_like(x), x0, t, eps, SCHEDULE)
    torch.testing.assert_close(loss, (eps**2).mean())


def test_predict_x0_inverts_q_sample():
    x0, eps, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([1, 25, 49])
    torch.testing.assert_close(predict_x0(q_sample(x0, t, SCHEDULE, eps), eps, t, SCHEDULE), x0,
                               rtol=1e-4, atol=1e-4)


def test_ddpm_step_is_the_posterior_given_the_true_noise():
    """With eps_hat = eps, the step's mean and variance are those of q(x_{t-1} | x_t, x_0) (Ho et
    al. Eq. 7)."""
    s = linear_schedule(1000)
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for t in (2, 100, 999):
        x_t = q_sample(x0, t, s, eps)
        mean, var = q_posterior(x0, x_t, t, s)
        torch.testing.assert_close(ddpm_step(x_t, eps, t, s, torch.zeros_like(x_t)), mean)
        noise = torch.ones_like(x_t)
        torch.testing.assert_close(ddpm_step(x_t, eps, t, s, noise) - mean,
                                   var.sqrt().expand_as(x_t))


def test_sampling_with_the_oracle_denoiser_recovers_a_point_mass():
    target = torch.tensor([[0.7, -1.2]])
    s = SCHEDULE

    def oracle(x, t, cond=None):
        ab = s.at(s.alpha_bar, t, x)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()
    out = sample_ddpm(oracle, torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), s,
                           generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target.expand(6, 2), rtol=1e-4, atol=1e-4)


def test_score_of_standard_normal_data():
    """For x_0 ~ N(0, I) every x_t is N(0, I) too: the optimal eps_hat = sqrt(1 - ab) x_t, score
    = -x_t."""
    x, t = torch.randn(4, 2), torch.tensor([3, 10, 20, 40])
    eps_hat = (1 - SCHEDULE.at(SCHEDULE.alpha_bar, t, x)).sqrt() * x
    torch.testing.assert_close(score(eps_hat, t, SCHEDULE), -x)


def test_training_lowers_the_loss_and_is_seeded():
    points = data.moons(2000, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLPDenoiser()
        losses = train_denoiser(model, points, SCHEDULE, steps=150, batch_size=128, lr=2e-3,
                                generator=torch.Generator().manual_seed(1), show_progress=False)
        runs.append(losses)
    assert sum(runs[0][-20:]) / 20 < 0.7 * sum(runs[0][:20]) / 20
    assert runs[0] == runs[1]


def test_loss_by_t_buckets():
    edges, losses = loss_by_t(lambda x, t, c=None: torch.zeros_like(x), torch.randn(64, 2),
                              DiffusionObjective(SCHEDULE), buckets=5,
                              generator=torch.Generator().manual_seed(0))
    assert edges.tolist() == [0, 10, 20, 30, 40, 50] and losses.shape == (5,)
    torch.testing.assert_close(losses, torch.ones(5), rtol=0.25, atol=0)  # E||eps||^2 / dim = 1


def test_loss_by_t_judges_a_model_by_its_own_target():
    """A perfect v-model has zero loss under the v objective (an eps reading would call it bad)."""
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))

    def perfect_v(x_t, t, c=None):  # knows x0: v = sqrt(ab) eps - sqrt(1 - ab) x0, from x_t and x0
        ab = SCHEDULE.alpha_bar[t][:, None].float()
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    _, v_losses = loss_by_t(perfect_v, x0, DiffusionObjective(SCHEDULE, Target.V), buckets=5,
                            generator=torch.Generator().manual_seed(0), batch_size=64)
    assert v_losses.max() < 1e-8
    _, eps_losses = loss_by_t(perfect_v, x0, DiffusionObjective(SCHEDULE), buckets=5,
                              generator=torch.Generator().manual_seed(0), batch_size=64)
    assert eps_losses.min() > 0.01
    flow_edges, flow_losses = loss_by_t(lambda x, t, c=None: torch.zeros_like(x), x0,
                                        FlowMatching(), buckets=4,
                                        generator=torch.Generator().manual_seed(0))
    assert flow_edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and flow_losses.shape == (4,)
