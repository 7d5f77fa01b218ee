import json

from diffuse_edu.course import cli


def test_bench_runs_on_the_cpu_and_writes_its_numbers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "3", "--samples", "8",
                     "--sample-batch", "8", "--samplers", "ddim-50", "dpmpp_2m-20", "--out",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "TFLOP/s" in printed and "s per 10,000 samples" in printed
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and report["training"]["images_per_second"] > 0
    assert set(report["sampling"]) == {"ddim-50", "dpmpp_2m-20"}
    assert all(r["finite"] and r["seconds_per_10k"] > 0 for r in report["sampling"].values())


def test_an_unknown_sampler_is_named_with_the_choices(capsys):
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "2", "--samplers", "nope"]) == 2
    assert "Unknown sampler(s) nope; choose from ddim-50" in capsys.readouterr().err


def test_the_profile_says_where_a_step_goes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "2", "--samplers", "none",
                     "--profile", "--train-batch", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "profile   a step:" in printed and "sampling" not in printed
    report = json.loads(out.read_text())
    training = report["training"]
    assert training["batch_size"] == 32 and report["sampling"] == {}
    profile = training["profile"]
    assert (profile["step_ms_busy"] > 0 and profile["top"]
            and sum(profile["by_kind_ms"].values()) > 0)


def test_kernels_are_sorted_by_what_they_do():
    from diffuse_edu.course.bench import kernel_kind

    assert (kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc")
            == "convolution")
    assert kernel_kind("sm90_xmma_wgrad_indexed_implicit_gemm_bf16") == "convolution"
    assert (kernel_kind("triton_poi_fused_native_group_norm_silu_3")
            == "fused elementwise / GroupNorm (Triton)")
    assert (kernel_kind("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>")
            == "optimiser, clipping, EMA")
    assert kernel_kind("pytorch_flash::flash_fwd_kernel") == "attention"
    assert kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32") == "matrix products"
    assert kernel_kind("void at::native::elementwise_kernel<128, 4>") == "other"


def test_the_objective_compiled_in_is_measured_beside_the_model_compiled_alone(tmp_path, capsys,
                                                                               monkeypatch):
    """With compilation on, bench also times training with the objective compiled around the model
    (the next lever on a GPU); a failure of that arm is a row, not a dead benchmark."""
    import torch

    from diffuse_edu.course import bench

    real = torch.compile
    # dynamo alone, without a compiler behind it: the path through bench is the same, and fast on a
    # CPU
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: real(fn, backend="eager"))
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "2", "--samplers", "none",
                     "--compile", "--train-batch", "16", "--out", str(out)]) == 0
    assert "with the objective compiled in (x" in capsys.readouterr().out
    arm = json.loads(out.read_text())["training_compile_loss"]
    assert (arm["compile_loss"] is True and arm["batch_size"] == 16
            and arm["speedup_over_model_only"] > 0)

    plain = bench.bench_training

    def failing(*args, compile_loss=False, **kwargs):
        if compile_loss:
            raise RuntimeError("inductor could not lower this graph")
        return plain(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_training", failing)
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "2", "--samplers", "none",
                     "--compile", "--train-batch", "16", "--out", str(out)]) == 0
    assert ("objective compiled in: failed (RuntimeError: inductor could not lower"
            in capsys.readouterr().out)
    assert json.loads(out.read_text())["training_compile_loss"] == {
        "error": "RuntimeError: inductor could not lower this graph"}


def test_the_sampling_levers_are_measured_one_at_a_time_and_a_failure_is_a_row(monkeypatch):
    """DDIM-50 with the weights in channels_last layout and with batches twice as large, beside the
    plain row (on a GPU; the function itself runs anywhere); the model sampled is left as it was."""
    import torch

    from diffuse_edu.course import bench
    from diffuse_edu.models.unet import UNet
    from diffuse_edu.training.recipes import ddpm_recipe

    recipe = ddpm_recipe("quick")
    model = UNet(recipe.model)
    rows = bench.sampling_levers(model, recipe, torch.device("cpu"), n=4, batch_size=2)
    assert set(rows) == {"ddim-50 channels_last weights", "ddim-50 batch 4"}
    assert all(row["nfe"] == 50 and row["finite"] and row["seconds_per_10k"] > 0
               for row in rows.values())
    assert rows["ddim-50 batch 4"]["batch_size"] == 4
    assert all(p.is_contiguous() for p in model.parameters())  # the arm converts a copy

    plain = bench.bench_sampling

    def out_of_memory(model, recipe, device, *, batch_size, **kwargs):
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return plain(model, recipe, device, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(bench, "bench_sampling", out_of_memory)
    rows = bench.sampling_levers(model, recipe, torch.device("cpu"), n=4, batch_size=2)
    assert rows["ddim-50 batch 4"] == {"batch_size": 4,
                                       "error": "OutOfMemoryError: CUDA out of memory. "
                                                                  "Tried to allocate 9.00 GiB"}
    assert rows["ddim-50 channels_last weights"]["finite"]
