"""FaceA-Net generation options: the context model's defaults."""


def test_context_defaults_follow_the_few_step_family():
    from instantportrait.pipelines.faceanet_context import context_defaults

    # Hyper-SD: 4 steps, no CFG, 1024 px; SDXL-Turbo: 512 px; a plain SDXL folder: 30 / 5.
    assert context_defaults("hyper") == {"steps": 4, "guidance_scale": 1.0, "size": 1024}
    assert context_defaults("turbo")["size"] == 512
    plain = {"steps": 30, "guidance_scale": 5.0, "size": 1024}
    assert context_defaults("some/sdxl-folder") == plain
