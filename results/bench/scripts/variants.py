"""Which part of the new training loop costs time on the GPU: the same recipe, 400 timed steps
each."""
import functools, json, sys, time
from dataclasses import replace
import torch
import diffuse_edu.training.loop as loop
from diffuse_edu.models.unet import UNet
from diffuse_edu.training.recipes import DDPM_FULL as R

dev = torch.device("cuda")
images = torch.rand(4096, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
AdamW = torch.optim.AdamW
out = {"device": torch.cuda.get_device_name(0)}


def run(label, steps=400, fused=True, **cfg):
    loop.torch.optim.AdamW = functools.partial(AdamW, fused=fused) if not fused else AdamW
    if not fused:
        loop.torch.optim.AdamW = lambda p, fused=None, **kw: AdamW(p, fused=False, foreach=True,
                                                                   **kw)
    torch.manual_seed(0)
    model = UNet(R.model).to(dev)
    c = replace(R.train, steps=20, seconds=None, snapshots=0, **cfg)
    loop.train(model, images, R.objective(R.schedule()), c, show_progress=False)  # compile (cached)
    r = loop.train(model, images, R.objective(R.schedule()), replace(c, steps=steps),
                   show_progress=False)
    out[label] = round(r.images_per_second, 1)
    print(label, out[label], flush=True)
    loop.torch.optim.AdamW = AdamW


run("new loop")
run("new loop, foreach AdamW", fused=False)
run("new loop, no EMA", ema_decay=None)
run("new loop, batch 512", batch_size=512)
run("new loop again")
json.dump(out, open(sys.argv[1], "w"), indent=2)
