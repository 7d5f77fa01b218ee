"""The library as it was before the rework (commit 203234e), timed the way `bench` times the new
one."""
import json, sys, time
import torch
from diffuse_edu import recipes
from diffuse_edu.samplers import sample_ddim
from diffuse_edu.training import train
from diffuse_edu.unet import UNet
from dataclasses import replace
import diffuse_edu
assert ".before" in diffuse_edu.__file__, diffuse_edu.__file__
out = {"code": "before (203234e)", "device": torch.cuda.get_device_name(0)}
dev = torch.device("cuda")
recipe = recipes.DDPM_FULL
images = torch.rand(4096, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
torch.manual_seed(0)
model = UNet(recipe.model).to(dev)
sched = recipe.schedule()
t0 = time.perf_counter()
train(model, images, sched, replace(recipe.train, steps=20, seconds=None, snapshots=0),
      generator=torch.Generator(dev).manual_seed(0))
out["warmup_20_steps_seconds"] = time.perf_counter() - t0
r = train(model, images, sched, replace(recipe.train, steps=300, seconds=None, snapshots=0),
          generator=torch.Generator(dev).manual_seed(1))
out["train_images_per_second"] = r.images_per_second
print(json.dumps(out), flush=True)
m = UNet(recipe.model).to(dev).eval()
g = torch.Generator(dev).manual_seed(0)
x = torch.randn(1000, 1, 32, 32, device=dev, generator=g)
sample_ddim(m, x[:100], sched, steps=50, clip=1.0)
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(2):
    sample_ddim(m, torch.randn(1000, 1, 32, 32, device=dev, generator=g), sched, steps=50, clip=1.0)
torch.cuda.synchronize()
out["ddim50_seconds_per_10k_fp32_eager_batch1000"] = (time.perf_counter() - t0) * 5
print(json.dumps(out), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
