"""The benchmark suite: ideal-ratio arithmetic, timing helpers, options, the bench command,
and the pipeline fast paths the benchmark led to."""

from __future__ import annotations

import json

import pytest
import torch

from instantportrait import benchmark as bm
from instantportrait.cli import main
from instantportrait.errors import InputError

C = bm.ComponentTimes(
    text_encode=0.1,
    text_encode_guided=0.15,
    vae_encode=0.5,
    unet_step=1.0,
    unet_guided_step=2.5,
    vae_decode=0.75,
)


# ---------------------------------------------------------------- arithmetic, by hand


def test_ideal_seconds_by_hand():
    # one step: 0.1 + (0.5 + 1.0 + 0.75)
    assert bm.ideal_seconds(C, steps=1, iterations=1, guided=False) == pytest.approx(2.35)
    # style boost: 0.1 + 2 * 2.25
    assert bm.ideal_seconds(C, steps=1, iterations=2, guided=False) == pytest.approx(4.6)
    # IDE-Net, 20 guided steps: 0.15 + (0.5 + 20 * 2.5 + 0.75)
    assert bm.ideal_seconds(C, steps=20, iterations=1, guided=True) == pytest.approx(51.4)
    # MagicBrush-style, 50: 0.15 + 1.25 + 125
    assert bm.ideal_seconds(C, steps=50, iterations=1, guided=True) == pytest.approx(126.4)


def test_efficiency_and_ratios_by_hand():
    assert bm.efficiency(2.35, 2.5) == pytest.approx(0.94)
    assert bm.efficiency(3.0, 3.0) == 1.0  # no overhead beyond the components
    assert bm.speed_ratio(51.4, 2.35) == pytest.approx(21.872340, rel=1e-6)
    # 4 of 20 steps took 11.4 s with 1.4 s fixed: 2.5 s a step -> 1.4 + 20 * 2.5
    assert bm.extrapolate_steps(11.4, 1.4, 4, 20) == pytest.approx(51.4)
    assert bm.extrapolate_steps(5.0, 1.0, 4, 4) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        bm.efficiency(1.0, 0.0)
    with pytest.raises(ValueError):
        bm.speed_ratio(1.0, 0.0)
    with pytest.raises(ValueError):
        bm.extrapolate_steps(1.0, 0.5, 5, 4)


def test_steps_to_run_caps_multi_step_modes_only():
    assert bm.steps_to_run(bm.EDIT_MODES["ipnet"], 4) == 1
    assert bm.steps_to_run(bm.EDIT_MODES["magicbrush"], 4) == 4
    assert bm.steps_to_run(bm.EDIT_MODES["magicbrush"], None) == 50
    assert [m.branches for m in bm.EDIT_MODES.values()] == [1, 1, 3, 3, 3]


def test_timing_statistics_by_hand():
    t = bm.Timing((3.0, 1.0, 2.0, 10.0, 4.0))
    assert (t.median, t.min, t.max, t.mean) == (3.0, 1.0, 10.0, 4.0)
    assert t.spread == pytest.approx(3.0)  # (10 - 1) / 3
    d = t.as_dict()
    assert d["repeats"] == 5 and d["samples"] == [3.0, 1.0, 2.0, 10.0, 4.0]


def test_time_call_warms_up_then_times():
    calls, marks = [], []
    timing = bm.time_call(
        lambda: calls.append(1), warmup=2, repeats=3, after_warmup=lambda: marks.append(len(calls))
    )
    assert len(calls) == 5 and marks == [2] and len(timing.samples) == 3


def test_peak_memory_on_cpu():
    with bm.PeakMemory("cpu") as mem:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert mem.kind.startswith("cpu_peak_rss") and mem.peak_gb > 0


def test_parse_options_and_resolutions():
    names = [o.name for o in bm.parse_option("tiny-vae+fp16+channels_last")]
    assert names == ["fp16", "channels-last", "tiny-vae"]  # dtype first
    with pytest.raises(InputError, match="unknown option nope"):
        bm.parse_option("fp16+nope")
    assert bm.parse_resolution("512") == (512, 512)
    assert bm.parse_resolution("1024x576") == (1024, 576)
    with pytest.raises(InputError, match="multiples of 8"):
        bm.parse_resolution("100")


def test_component_clock_counts_calls(tiny_pipe, astronaut_path):
    with bm.ComponentClock(bm.pipeline_modules(tiny_pipe), "cpu") as clock:
        tiny_pipe(
            "a hat",
            astronaut_path,
            num_inference_steps=1,
            guidance_scale=1.0,
            image_guidance_scale=1.0,
            resolution=64,
        )
    assert clock.calls == {"text_encode": 1, "vae_encode": 1, "unet": 1, "vae_decode": 1}
    assert all(v > 0 for v in clock.totals().values())


def test_cuda_graph_wrapper_reads_through(tiny_pipe):
    wrapped = bm.CUDAGraphModule(tiny_pipe.unet)
    assert wrapped.config is tiny_pipe.unet.config and wrapped.dtype == torch.float32
    assert sum(p.numel() for p in wrapped.parameters()) == sum(
        p.numel() for p in tiny_pipe.unet.parameters()
    )


# ---------------------------------------------------------------- the suite


REQUIRED_TOP = {
    "schema",
    "date",
    "machine",
    "versions",
    "settings",
    "model",
    "components",
    "cases",
    "options",
    "targets",
    "total_s",
}
REQUIRED_CASE = {
    "case",
    "option",
    "resolution",
    "width",
    "height",
    "batch_size",
    "dtype",
    "status",
    "steps",
    "steps_run",
    "iterations",
    "guidance_scale",
    "image_guidance_scale",
    "branches",
    "unet_calls",
    "unet_calls_run",
    "unet_images",
    "latency_s",
    "images_per_s",
    "split_s",
    "peak_memory_gb",
    "peak_memory_kind",
    "ideal_s",
    "efficiency",
    "full_length_s",
    "extrapolated",
    "ideal_full_length_s",
    "ratio_to_one_step",
    "ideal_ratio_to_one_step",
    "efficiency_min",
    "ideal_components_s",
}
REQUIRED_COMPONENT = {
    "text_encode",
    "text_encode_guided",
    "vae_encode",
    "unet_step",
    "unet_guided_step",
    "vae_decode",
    "timings",
}


def test_bench_quick_writes_every_field(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--model",
        str(tiny_model_dir),
        "--quick",
        "--max-steps",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--options",
        "channels-last",
        "fp16",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ipnet | 64x64 |" in printed and "not measured: no GPU" in printed
    results = json.loads(out.read_text())
    assert results.keys() >= REQUIRED_TOP and results["schema"] == bm.SCHEMA
    assert {"torch", "diffusers", "device"} <= results["versions"].keys()
    assert results["settings"]["resolutions"] == ["64x64"]
    assert results["machine"]["device"] == "cpu" and results["machine"]["cpu_count"] >= 1
    assert not list(tmp_path.glob(".bench.json.*"))  # written atomically, no temp left

    (component,) = [c for c in results["components"] if c["option"] == "plain"]
    assert component.keys() >= REQUIRED_COMPONENT
    measured = [r for r in results["cases"] if r["status"] == "measured"]
    assert {(r["option"], r["case"]) for r in measured} == {
        (o, m) for o in ("plain", "channels-last") for m in bm.EDIT_MODES
    }
    for r in measured:
        assert r.keys() >= REQUIRED_CASE, REQUIRED_CASE - r.keys()
        assert r["unet_calls_run"] == r["steps_run"] * r["iterations"]
        assert set(r["split_s"]) == {"text_encode", "vae_encode", "unet", "vae_decode", "other"}
        assert r["latency_s"]["repeats"] == 2 and r["ideal_s"] > 0
        # tiny components: the ratios are withheld and labelled, never printed as figures
        assert r["efficiency"] is None and r["efficiency_min"] is None
    assert results["ratios_meaningful"] is False and "mean nothing" in results["ratios_note"]
    assert "n/a †" in printed and "† achieved/ideal and ideal x 1-step are not" in printed
    by_case = {r["case"]: r for r in measured if r["option"] == "plain"}
    assert by_case["ipnet"]["ratio_to_one_step"] == 1.0
    assert by_case["magicbrush"]["extrapolated"] and by_case["magicbrush"]["steps_run"] == 2
    assert by_case["magicbrush"]["unet_images"] == 150
    assert all("speedup_vs_plain" in r for r in measured if r["option"] != "plain")

    skipped = [r for r in results["cases"] if r["status"] == "skipped"]
    assert {r["option"] for r in skipped} == {"fp16"} and len(skipped) == len(bm.EDIT_MODES)
    assert all("no GPU" in r["reason"] for r in skipped)
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert statuses["one-step images/s at 512x512, fp16/bf16, GPU"] == "not measured: no GPU"
    assert statuses["CPU achieved/ideal, every mode"].startswith("not measured: small test")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resolutions", "100"], "--resolutions"),
        (["--options", "nope"], "--options"),
        (["--modes", "nope"], "--modes"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bench_bad_settings_are_one_line(argv, message, capsys):
    assert main(["bench", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_list_and_dry_run(capsys):
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "magicbrush" in listed and "cuda-graphs" in listed and "[GPU only]" in listed
    assert main(["bench", "--size", "real", "--quick", "--dry-run"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["resolutions"] == ["128x128"] and settings["max_steps"] == bm.QUICK_MAX_STEPS


def test_registered_case_and_tiny_vae_option(tiny_pipe, tmp_path, monkeypatch):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(
        encoder_block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4,
        num_encoder_blocks=(1,) * 4,
        num_decoder_blocks=(1,) * 4,
    ).save_pretrained(tmp_path / "taesd")
    seen = []

    def toy(ctx: bm.BenchContext) -> dict:
        seen.append((ctx.option, ctx.width, ctx.batch_size, ctx.pipe.decode_latents.__name__))
        return {"latency_s": ctx.time(lambda: None).as_dict(), "custom": 1}

    monkeypatch.setitem(bm.CASES, "toy", bm.BenchCase("toy", "a registered case", toy))
    settings = bm.BenchSettings(
        modes=["ipnet", "toy"],
        resolutions=[(64, 64)],
        repeats=1,
        warmup=0,
        options=["tiny-vae"],
        tiny_vae=str(tmp_path / "taesd"),
    )
    results = bm.run_benchmark(settings, pipe=tiny_pipe, progress=False)
    assert [s[0] for s in seen] == ["plain", "tiny-vae"]
    toy_rows = [r for r in results["cases"] if r["case"] == "toy"]
    assert all(r["custom"] == 1 and r["status"] == "measured" for r in toy_rows)
    tiny_vae_row = next(
        r for r in results["cases"] if r["case"] == "ipnet" and r["option"] == "tiny-vae"
    )
    assert tiny_vae_row["split_s"]["vae_decode"] > 0 and "speedup_vs_plain" in tiny_vae_row
    assert getattr(tiny_pipe, "_latent_decoder", None) is None  # the option was undone
    table = bm.format_tables(results)
    assert "| toy | plain | 64x64 | 1 | latency_s=" in table and "| tiny-vae | ipnet |" in table


# ---------------------------------------------------------------- pipeline fast paths


def _count_text_rows(pipe):
    rows = []
    handle = pipe.text_encoder.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    return rows, handle


def test_one_step_encodes_only_the_prompt_once(tiny_pipe, astronaut_path):
    rows, handle = _count_text_rows(tiny_pipe)
    try:
        kw = dict(
            num_inference_steps=1,
            guidance_scale=1.0,
            image_guidance_scale=1.0,
            resolution=64,
            output_type="pt",
        )
        tiny_pipe("a hat", [astronaut_path] * 3, **kw)  # one prompt for three images
        tiny_pipe("a hat", astronaut_path, num_inference_steps=2, resolution=64)  # guided
    finally:
        handle.remove()
    assert rows == [1, 2]  # no unconditional text without guidance; duplicates run once


def test_latent_decoder_hook_and_placement_cache(tiny_components, astronaut_path):
    from diffusers import AutoencoderTiny

    from instantportrait.pipelines import InstantPortraitPipeline

    pipe = InstantPortraitPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    first = pipe._placement()
    assert pipe._placement() is first  # reused while nothing moved
    pipe.text_encoder.to(torch.float64)
    assert pipe._placement() is not first  # moving a model resolves again
    pipe.text_encoder.to(torch.float32)

    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4,
        num_encoder_blocks=(1,) * 4,
        num_decoder_blocks=(1,) * 4,
    )
    calls = []
    handle = tiny.decoder.register_forward_hook(lambda m, i, o: calls.append(1))
    pipe.set_latent_decoder(tiny)
    try:
        out = pipe(
            "a hat", astronaut_path, num_inference_steps=1, resolution=64, output_type="pt"
        ).images
    finally:
        handle.remove()
        pipe.set_latent_decoder(None)
    assert calls == [1] and out.shape == (1, 3, 64, 64)


def _fake_results(unet_parameters: int) -> dict:
    row = {"case": "ipnet", "option": "plain", "resolution": "128x128", "batch_size": 1,
           "dtype": "float32",
           "status": "measured", "steps": 1, "steps_run": 1, "unet_calls": 1, "branches": 1,
           "latency_s": {"median": 2.0, "min": 1.9, "max": 2.1}, "images_per_s": 0.5,
           "split_s": dict.fromkeys(("text_encode", "vae_encode", "unet", "vae_decode",
                                     "other"), 0.4),
           "peak_memory_gb": 4.3, "ratio_to_one_step": 1.0, "ideal_s": 1.9,
           "ideal_ratio_to_one_step": 1.0, "efficiency": 0.95, "efficiency_min": 0.96}  # fmt: skip
    return {
        "model": {"name": "m", "unet_parameters": unet_parameters},
        "machine": {"device": "cpu"},
        "settings": {"dtype": "float32", "repeats": 3, "warmup": 1},
        "cases": [row],
    }


def test_ratios_are_reported_at_real_size_and_withheld_below_it():
    from instantportrait.benchmark.run import withhold_small_model_ratios

    real = _fake_results(859_520_964)  # SD1.5-InstructPix2Pix's UNet
    withhold_small_model_ratios(real)
    real["targets"] = bm.gpu_targets(real)
    assert real["ratios_meaningful"] and real["cases"][0]["efficiency"] == 0.95
    table = bm.format_tables(real)
    assert "| 0.950 |" in table and "n/a" not in table and "†" not in table
    cpu = {t["target"]: t for t in real["targets"]}["CPU achieved/ideal, every mode"]
    assert cpu["value"] == 0.95 and cpu["status"] == "met"

    tiny = _fake_results(1_000_000)
    withhold_small_model_ratios(tiny)
    tiny["targets"] = bm.gpu_targets(tiny)
    row = tiny["cases"][0]
    assert row["efficiency"] is None and row["ideal_ratio_to_one_step"] is None
    assert row["ideal_s"] == 1.9 and row["ratio_to_one_step"] == 1.0  # raw timings stay
    table = bm.format_tables(tiny)
    assert "0.950" not in table and table.count("n/a †") == 2 and "--size real" in table
    cpu = {t["target"]: t for t in tiny["targets"]}["CPU achieved/ideal, every mode"]
    assert cpu["value"] is None and "small test components" in cpu["status"]
