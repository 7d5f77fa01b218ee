"""Several processes through torchrun (gloo on the CPU): the same train() call follows the
one-process trajectory of the same global batch, and rank 0 alone writes the checkpoint."""

import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import sys, torch
    from diffuse_edu import data
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.schedules import cosine_schedule
    from diffuse_edu.models.conditioning import Cond
    from diffuse_edu.models.unet import UNet, UNetConfig
    from diffuse_edu.training import distributed
    from diffuse_edu.training.checkpoints import save_checkpoint
    from diffuse_edu.training.loop import TrainConfig, train

    def run(folder):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        digits = data.load_digits()
        images = digits.images[:256, :, ::2, ::2].contiguous()
        model = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2, num_classes=10))
        cfg = TrainConfig(steps=12, batch_size=16, lr=3e-3, warmup_steps=2, cond_dropout=0.2, snapshots=2)
        result = train(model, images, DiffusionObjective(cosine_schedule(100)), cfg,
                       cond=Cond(labels=digits.labels[:256]), null_cond=Cond(labels=torch.tensor(10)),
                       generator=torch.Generator().manual_seed(1), show_progress=False)
        save_checkpoint(f"{folder}/model.pt", model=result.model, ema=result.ema, schedule=None)
        timed = train(UNet(model.config), images, DiffusionObjective(cosine_schedule(100)),
                      TrainConfig(steps=None, seconds=1.5, batch_size=16),
                      generator=torch.Generator().manual_seed(2), show_progress=False)
        torch.save(dict(losses=result.losses, weights=result.model.state_dict(), snapshots=len(result.snapshots),
                        budget_steps=timed.steps), f"{folder}/rank{distributed.rank()}.pt")

    if __name__ == "__main__":
        distributed.init_from_env()
        run(sys.argv[1])
''')


def test_two_ranks_follow_one_process_and_rank_0_writes(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    subprocess.run([sys.executable, str(script), str(one)], check=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(two)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, rank0, rank1 = (torch.load(p, weights_only=True)
                            for p in (one / "rank0.pt", two / "rank0.pt",
                                                                          two / "rank1.pt"))
    # the global loss, on both
    assert len(rank0["losses"]) == 12 and rank0["losses"] == rank1["losses"]
    torch.testing.assert_close(torch.tensor(rank0["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-4, atol=1e-5)
    for k, w in single["weights"].items():
        torch.testing.assert_close(rank0["weights"][k], w, rtol=1e-3, atol=1e-5)
        assert torch.equal(rank0["weights"][k], rank1["weights"][k])  # DDP keeps the ranks equal
    assert rank0["snapshots"] == 2 and rank1["snapshots"] == 0  # EMA and snapshots on rank 0
    # one clock (rank 0's) ends both at one step
    assert rank0["budget_steps"] == rank1["budget_steps"] >= 25
    written = sorted(p.name for p in two.iterdir())
    assert written == ["model.json", "model.pt", "model.safetensors", "rank0.pt", "rank1.pt"]
