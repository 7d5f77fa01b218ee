import json

from diffuse_edu.course import cli


def test_bench_runs_on_the_cpu_and_writes_its_numbers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "3", "--samples", "8", "--sample-batch", "8",
                     "--samplers", "ddim-50", "dpmpp_2m-20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "TFLOP/s" in printed and "s per 10,000 samples" in printed
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and report["training"]["images_per_second"] > 0
    assert set(report["sampling"]) == {"ddim-50", "dpmpp_2m-20"}
    assert all(r["finite"] and r["seconds_per_10k"] > 0 for r in report["sampling"].values())


def test_an_unknown_sampler_is_named_with_the_choices(capsys):
    assert cli.main(["bench", "--scale", "quick", "--train-steps", "2", "--samplers", "nope"]) == 2
    assert "Unknown sampler(s) nope; choose from ddim-50" in capsys.readouterr().err
