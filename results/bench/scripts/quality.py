import json, sys, torch
from diffuse_edu.config import Scale, default_device
from diffuse_edu.course.bench import bench_quality
from diffuse_edu.training.recipes import DDPM_FULL
q = bench_quality(DDPM_FULL, Scale.FULL, default_device(), train_seconds=float(sys.argv[2]), n=2000,
                  seeds=3, batch_size=2000)
q["device"] = torch.cuda.get_device_name(0)
print(json.dumps(q, indent=2))
json.dump(q, open(sys.argv[1], "w"), indent=2)
