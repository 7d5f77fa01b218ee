"""Jobs side by side: the same results as one after another, and randomness that cannot leak between
jobs."""

import pytest
import torch

from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.loop import TrainConfig, train
from diffuse_edu.training.parallel import (
    SharedRandomnessError,
    run_side_by_side,
    side_by_side_workers,
)

CONFIG = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)


def _trainings(seeds, workers):
    data = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    objective = DiffusionObjective(cosine_schedule(100), Target.V)
    nets = {}
    for s in seeds:  # built before the jobs: torch.manual_seed is global
        torch.manual_seed(s)
        nets[s] = UNet(CONFIG)

    def job(seed):
        return train(nets[seed], data, objective,
                     TrainConfig(steps=6, batch_size=16, warmup_steps=2),
                     generator=torch.Generator().manual_seed(seed), show_progress=False).losses

    return run_side_by_side(job, seeds, device="cpu", workers=workers)


def test_side_by_side_gives_what_one_after_another_gives_in_order():
    one, two = _trainings([0, 1, 2], workers=1), _trainings([0, 1, 2], workers=2)
    assert one == two
    assert one[0] != one[1]  # the seeds differ, and come back in the order asked


def test_a_job_that_draws_from_the_global_generator_is_refused():
    with pytest.raises(SharedRandomnessError, match="its own torch.Generator"):
        run_side_by_side(lambda _: torch.randn(3), range(2), device="cpu", workers=2)


def test_threads_come_back_and_errors_pass_through():
    threads = torch.get_num_threads()
    with pytest.raises(ZeroDivisionError):
        run_side_by_side(lambda x: 1 / x, [1, 0], device="cpu", workers=2)
    assert torch.get_num_threads() == threads
    assert (run_side_by_side(lambda x: torch.get_num_threads(), [0, 1], device="cpu", workers=2)
            == [1, 1])


def test_workers_follow_the_threads_on_a_cpu_and_are_one_on_a_gpu():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert side_by_side_workers("cpu", 9) == 2 and side_by_side_workers("cpu", 1) == 1
        torch.set_num_threads(1)
        assert side_by_side_workers("cpu", 9) == 1
        assert side_by_side_workers("cuda", 9) == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="at least 1"):
        run_side_by_side(lambda x: x, [1], device="cpu", workers=-1)


def test_prepare_runs_first_in_order_and_may_seed_the_global_generator():
    def prepare(seed):
        torch.manual_seed(seed)
        return torch.randn(2)

    got = run_side_by_side(lambda seed, noise: (seed, noise), [3, 4], device="cpu", prepare=prepare,
                           workers=2)
    assert [s for s, _ in got] == [3, 4]
    assert torch.equal(got[0][1], torch.manual_seed(3) and torch.randn(2))
