"""Old loop (203234e, as old_edu) against the new loop in one process, alternating, 400 steps
each."""
import json, sys, time
from dataclasses import replace
import torch
import old_edu.training as old
from old_edu.unet import UNet as OldUNet
import diffuse_edu.training.loop as new
from diffuse_edu.models.unet import UNet
from diffuse_edu.training.recipes import DDPM_FULL as R

dev = torch.device("cuda")
images = torch.rand(4096, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
sched = R.schedule()
out = {"device": torch.cuda.get_device_name(0), "runs": []}
torch.manual_seed(0)
m_old, m_new = OldUNet(R.model).to(dev), UNet(R.model).to(dev)
for rnd in range(2):
    for label in ("old", "new"):
        steps = 20 if rnd == 0 else 400
        if label == "old":
            cfg = old.TrainConfig(**{**R.train.__dict__, "steps": steps, "seconds": None,
                                     "snapshots": 0, **{k: None for k in ()}} if False else dict(
                steps=steps, seconds=None, batch_size=256, lr=1e-3, warmup_steps=200,
                ema_decay=0.9995, compile=True))
            r = old.train(m_old, images, sched, cfg)
        else:
            r = new.train(m_new, images, R.objective(sched),
                          replace(R.train, steps=steps, seconds=None, snapshots=0),
                          show_progress=False)
        if rnd:
            out["runs"].append((label, round(r.images_per_second, 1)))
            print(label, round(r.images_per_second, 1), flush=True)
for label in ("old", "new"):
    if label == "old":
        r = old.train(m_old, images, sched,
                      old.TrainConfig(steps=400, seconds=None, batch_size=256, lr=1e-3,
                                      warmup_steps=200, ema_decay=0.9995, compile=True))
    else:
        r = new.train(m_new, images, R.objective(sched),
                      replace(R.train, steps=400, seconds=None, snapshots=0), show_progress=False)
    out["runs"].append((label, round(r.images_per_second, 1)))
    print(label, round(r.images_per_second, 1), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
