import re
import time

import pytest
import torch

from diffuse_edu import data
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.ema import EMA
from diffuse_edu.training.loop import TrainConfig, adamw, learning_rate, train

SMALL = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)


def test_ema_update_and_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): forgets the start fast
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.9)  # 0 + (1 - 0.1) * (1 - 0)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9  # the warm-up reaches the final decay
    assert ema.model.weight.item() == pytest.approx(1.0, abs=1e-6)
    assert not ema.model.weight.requires_grad


def test_ema_is_a_moving_average_of_a_changing_weight():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5)
    ema.updates = 1000  # past the warm-up
    values = [1.0, 2.0, 3.0]
    expected = ema.model.weight.item()
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update(model)
        expected = 0.5 * expected + 0.5 * v
    assert ema.model.weight.item() == pytest.approx(expected)


def test_learning_rate_warmup():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [learning_rate(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_config_needs_a_budget():
    with pytest.raises(ValueError, match="needs a budget"):
        TrainConfig(steps=None, seconds=None)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a whole number of at least 1"),
    ("steps", -1, "steps must be a whole number of at least 1"),
    ("steps", 2.5, "steps must be a whole number of at least 1"),
    ("seconds", 0.0, "seconds must be positive"),
    ("seconds", float("inf"), "seconds must be positive and finite"),  # a budget that never ends
    ("seconds", float("nan"), "seconds must be positive and finite"),
    ("batch_size", 0, "batch_size must be a whole number of at least 1"),
    ("lr", 0.0, "lr must be positive"),
    ("warmup_steps", -5, "warmup_steps must be 0 or more"),
    ("grad_clip", 0.0, "grad_clip must be positive"),
    ("ema_decay", 1.0, "ema_decay must lie in [0, 1)"),
    ("cond_dropout", 1.0, "cond_dropout is a probability below 1"),
    ("loss_buckets", 0, "loss_buckets must be at least 1"),
    ("snapshots", -1, "snapshots must be 0 or more"),
])
def test_bad_training_settings_are_refused_with_the_fix(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{field: value})


def test_a_model_trains_in_training_mode_and_comes_back_in_its_own_mode():
    """A loaded model arrives in eval mode; fine-tuning it must still train with dropout on."""
    cfg = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2, dropout=0.5)
    modes = []

    class Spy(DiffusionObjective):
        def __call__(self, model, x0, **kw):
            modes.append(model.training)
            return super().__call__(model, x0, **kw)

    for came_in in (False, True):
        model = UNet(cfg).train(came_in)
        train(model, _digits(64), Spy(cosine_schedule(100)), TrainConfig(steps=3, batch_size=8),
              show_progress=False)
        assert model.training is came_in  # given back as it came
    assert modes == [True] * 6
    assert model.predicts == "eps"  # what it learned to predict, for samplers and checkpoints


def test_under_ddp_cuda_graphs_give_way_to_plain_compilation(capsys):
    from diffuse_edu.training.loop import compile_mode
    assert compile_mode("reduce-overhead", ddp=False) == "reduce-overhead"
    assert compile_mode(True, ddp=False) is None and compile_mode(True, ddp=True) is None
    assert compile_mode("reduce-overhead", ddp=True) is None
    assert "without CUDA graphs" in capsys.readouterr().out
    assert compile_mode("max-autotune-no-cudagraphs", ddp=True) == "max-autotune-no-cudagraphs"


def test_compile_loss_puts_the_objective_in_the_compiled_graph_and_trains_the_same(monkeypatch):
    """compile_loss compiles objective(model, ...) as one function, not the model alone, and the run
    follows the uncompiled one (torch.compile stood in by its tracing backend, fast on a CPU)."""
    from diffuse_edu.diffusion.prediction import Target
    from diffuse_edu.models.conditioning import Cond

    compiled, real = [], torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, mode=None: compiled.append(fn) or real(fn, backend="aot_eager"))
    images, labels = _digits(64), torch.arange(64) % 10
    objective = DiffusionObjective(cosine_schedule(100), Target.V)
    config = TrainConfig(steps=4, batch_size=8, ema_decay=0.9, warmup_steps=0, cond_dropout=0.25,
                         channels_last=False)

    def run(**how):
        torch.manual_seed(0)
        model = UNet(UNetConfig(channels=(8, 16), attention_levels=(), groups=4, num_classes=10))
        return train(model, images, objective, TrainConfig(**{**config.__dict__, **how}),
                     cond=Cond(labels=labels), null_cond=Cond(labels=torch.tensor(10)),
                     generator=torch.Generator().manual_seed(1), show_progress=False)

    plain = run()
    from torch._dynamo.utils import counters
    counters.clear()
    fused = run(compile=True, compile_loss=True)
    assert not counters["graph_break"], ("the compiled loss breaks its graph: "
                                         f"{dict(counters['graph_break'])}")
    # the loss, not the model
    assert len(compiled) == 1 and not isinstance(compiled[0], torch.nn.Module)
    assert fused.losses == pytest.approx(plain.losses, rel=1e-4)
    for a, b in zip(fused.ema.parameters(), plain.ema.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert fused.model.predicts == "v"
    run(compile=True)
    # without compile_loss: the model
    assert len(compiled) == 2 and isinstance(compiled[1], torch.nn.Module)
    run(compile_loss=True)  # compile_loss needs compile: nothing compiled
    assert len(compiled) == 2


def _digits(n=256):
    return data.load_digits().images[:n, :, ::2, ::2].contiguous()  # 8x8 for speed


def test_training_lowers_the_loss_records_buckets_and_snapshots():
    torch.manual_seed(0)
    cfg = TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5, snapshots=3, loss_buckets=5)
    result = train(UNet(SMALL), _digits(), DiffusionObjective(cosine_schedule(100)), cfg,
                   generator=torch.Generator().manual_seed(0))
    assert result.steps == 60 and len(result.losses) == 60
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    assert result.bucket_edges.tolist() == [0, 20, 40, 60, 80, 100]
    assert result.loss_by_bucket.shape == (5,) and (result.loss_by_bucket > 0).all()
    assert [s["step"] for s in result.snapshots] == [20, 40, 60]
    assert result.images_per_second > 0


def _warm_model():
    """A model that has run once, so that one-off set-up costs do not land inside the budget."""
    torch.manual_seed(0)
    model = UNet(SMALL)
    model(_digits(16), torch.ones(16, dtype=torch.long)).mean().backward()
    model.zero_grad()
    torch.optim.AdamW(model.parameters())  # the first optimiser of a process imports torch._dynamo
    return model


@pytest.mark.parametrize("budget", [2.0, 4.0])
def test_wall_clock_budget_is_honoured(budget):
    """The loop checks the clock before every step, so it overshoots by less than one step."""
    cfg = TrainConfig(steps=None, seconds=budget, batch_size=16, warmup_steps=1)
    model, images, objective = _warm_model(), _digits(), DiffusionObjective(cosine_schedule(100))
    start = time.perf_counter()
    result = train(model, images, objective, cfg)
    wall = time.perf_counter() - start
    step_time = result.seconds / result.steps
    assert budget <= result.seconds <= budget * 1.03 + 2 * step_time
    assert wall <= result.seconds * 1.10 + 1.0  # set-up and tear-down are small


def test_callback_time_does_not_count():
    cfg = TrainConfig(steps=None, seconds=1.5, batch_size=16, warmup_steps=1)
    calls = []
    result = train(_warm_model(), _digits(), DiffusionObjective(cosine_schedule(100)), cfg,
                   callback=lambda step, secs, ema: (calls.append(step), time.sleep(0.2)),
                   callback_every=10)
    assert calls and len(calls) == result.steps // 10
    # the sleeps are not counted
    assert result.seconds <= 1.5 * 1.03 + 2 * result.seconds / result.steps


def test_same_seed_same_weights():
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        r = train(UNet(SMALL), _digits(), DiffusionObjective(cosine_schedule(100)),
                  TrainConfig(steps=5, batch_size=8), generator=torch.Generator().manual_seed(3))
        states.append(r.ema.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_trainable_filter_is_respected_by_optimiser_clipping_and_ema():
    torch.manual_seed(0)
    model = UNet(SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    only_out = lambda name: name.startswith("out.")
    cfg = TrainConfig(steps=5, batch_size=8, warmup_steps=1, weight_decay=0.1)
    result = train(model, _digits(), DiffusionObjective(cosine_schedule(100)), cfg,
                   trainable=only_out, generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == only_out(name), name
    ema = dict(result.ema.named_parameters())
    assert all(torch.equal(ema[n], before[n]) for n in before if not only_out(n))
    assert any(not torch.equal(ema[n], before[n]) for n in before if only_out(n))
    with pytest.raises(ValueError, match="leaves no parameter"):
        train(UNet(SMALL), _digits(), DiffusionObjective(cosine_schedule(100)), cfg,
              trainable=lambda n: False)


def test_condition_dropout_trains_with_the_null_label_for_that_share():
    from diffuse_edu.models.conditioning import Cond

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2,
                                       num_classes=10))

        def forward(self, x, t, cond=None):
            seen.append(cond.labels.clone())
            return self.net(x, t, cond)

    images = _digits()
    labels = data.load_digits().labels[: len(images)]
    cfg = TrainConfig(steps=20, batch_size=64, cond_dropout=0.3)
    train(Spy(), images, DiffusionObjective(cosine_schedule(100)), cfg, cond=Cond(labels=labels),
          null_cond=Cond(labels=torch.tensor(10)), generator=torch.Generator().manual_seed(0))
    share = (torch.cat(seen) == 10).double().mean().item()
    assert 0.22 < share < 0.38  # 0.3 of 1,280 labels, within sampling noise
    with pytest.raises(ValueError, match="null condition"):
        train(Spy(), images, DiffusionObjective(cosine_schedule(100)), cfg,
              cond=Cond(labels=labels))


def test_flow_matching_trains_with_the_same_loop():
    from diffuse_edu.diffusion.objectives import FlowMatching

    torch.manual_seed(0)
    cfg = TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup_steps=5, loss_buckets=4)
    result = train(UNet(SMALL), _digits(), FlowMatching(), cfg,
                   generator=torch.Generator().manual_seed(0))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    torch.testing.assert_close(result.bucket_edges, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_gradient_norms_are_recorded_before_clipping():
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.schedules import cosine_schedule
    from diffuse_edu.models.mlp import MLPConfig, MLPDenoiser
    from diffuse_edu.training.loop import TrainConfig, train

    torch.manual_seed(0)
    points = torch.randn(256, 2)
    config = TrainConfig(steps=12, batch_size=32, grad_clip=1e-3, ema_decay=None, loss_buckets=1)
    result = train(MLPDenoiser(MLPConfig()), points, DiffusionObjective(cosine_schedule(100)),
                   config, generator=torch.Generator().manual_seed(0), show_progress=False)
    assert len(result.grad_norms) == result.steps == 12
    assert min(result.grad_norms) > 1e-3  # the norm before the clip, not after it
    unclipped = train(MLPDenoiser(MLPConfig()), points, DiffusionObjective(cosine_schedule(100)),
                      TrainConfig(steps=3, batch_size=32, grad_clip=None, ema_decay=None,
                                  loss_buckets=1),
                      generator=torch.Generator().manual_seed(0), show_progress=False)
    assert len(unclipped.grad_norms) == 3 and all(n > 0 for n in unclipped.grad_norms)


def test_a_learners_training_step_and_ema_drive_the_loop_exactly_like_the_library():
    from diffuse_edu.diffusion.prediction import Target
    from diffuse_edu.training.ema import ema_update
    from diffuse_edu.training.loop import as_step_fn, training_step

    images = torch.rand(32, 1, 8, 8) * 2 - 1
    schedule = cosine_schedule(100)
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                         grad_clip=0.5)
    calls = []

    def my_ema(ema, current, updates, decay):
        calls.append(updates)
        ema_update(ema, current, updates, decay)

    runs = []
    for kw in ({}, dict(step_fn=as_step_fn(training_step), ema_fn=my_ema)):
        torch.manual_seed(0)
        model = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4))
        runs.append(train(model, images, DiffusionObjective(schedule, Target.V), config,
                          generator=torch.Generator().manual_seed(1), show_progress=False, **kw))
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-5)
    assert runs[0].grad_norms == pytest.approx(runs[1].grad_norms, rel=1e-5)
    assert calls == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="v-prediction"):
        train(UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4)), images,
              DiffusionObjective(schedule), config, step_fn=as_step_fn(training_step),
              show_progress=False)


def test_train_denoiser_runs_a_lesson_02_loss_function_like_the_library_objective():
    from diffuse_edu.diffusion.objectives import eps_loss
    from diffuse_edu.training.loop import train_denoiser

    points = torch.randn(256, 2)
    schedule = cosine_schedule(100)
    runs = []
    for loss_fn in (None, eps_loss):
        torch.manual_seed(0)
        from diffuse_edu.models.mlp import MLPConfig, MLPDenoiser
        model = MLPDenoiser(MLPConfig())
        runs.append(train_denoiser(model, points, schedule, steps=5, batch_size=32,
                                   generator=torch.Generator().manual_seed(1), show_progress=False,
                                   loss_fn=loss_fn))
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_fid_runs_a_learners_matrix_square_root():
    from diffuse_edu.evaluation.fid import fid, sqrtm_psd

    a, b = torch.randn(300, 4), torch.randn(300, 4) + 0.5
    calls = []

    def mine(m):
        calls.append(m.shape)
        return sqrtm_psd(m)

    assert fid(a, b, sqrtm=mine) == pytest.approx(fid(a, b)) and len(calls) == 2


def test_the_optimiser_is_fused_where_pytorch_has_the_kernel():
    weight = torch.nn.Parameter(torch.zeros(3))
    opt = adamw([weight], lr=0.1)
    assert opt.defaults["fused"] is True  # CPU (and CUDA): one kernel for all parameters
    weight.grad = torch.ones(3)
    opt.step()
    # Adam's first step moves by lr
    assert torch.allclose(weight.detach(), torch.full((3,), -0.1), atol=1e-5)
