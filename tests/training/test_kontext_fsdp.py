"""The Kontext trainers sharded by FSDP2: the same run as data-parallel DDP, exact resume with
the sharded EMA, the export gathered from the shards; the pieces by hand.

accelerate refuses FSDP on CPUs, so the launches go through ``fsdp_cpu_entry.py`` (see its
docstring): accelerate's own FSDP2 code runs on two gloo processes. The reference is the same
command under DDP: both are data-parallel over the same per-process batches and noise, so
the losses and the trained adapter must agree to float rounding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from instantportrait.training.logger import read_metrics
from launching import launch, settings

ROOT = Path(__file__).resolve().parents[2]
ENTRY = Path(__file__).with_name("fsdp_cpu_entry.py")


# ---------------------------------------------------------------- the pieces, in one process


def test_fuse_lora_matches_peft_merge():
    """W + (alpha/r) B A against PEFT's own merge of the same adapter (alpha != r)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    from instantportrait.training.kontext_model import fuse_lora_

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    base = {k: v.clone() for k, v in net.state_dict().items()}
    peft = get_peft_model(net, LoraConfig(r=2, lora_alpha=6, target_modules=["0", "2"]))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # B = 0 at init would merge nothing
    lora = {
        k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(peft).items()
    }
    merged = peft.merge_and_unload().state_dict()
    ours = {k: v.clone() for k, v in base.items()}
    assert fuse_lora_(ours, lora, scale=6 / 2) == 2
    for k in merged:
        torch.testing.assert_close(ours[k], merged[k])
    assert not torch.equal(ours["0.weight"], base["0.weight"])


def test_fsdp1_is_refused_in_one_line_and_whole_unit_is_a_no_op_without_fsdp():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from instantportrait.errors import InputError
    from instantportrait.training.sharding import check_fsdp_version, whole_unit

    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False)
    with pytest.raises(InputError) as err:
        check_fsdp_version(fsdp1, "model.backbone=kontext")
    assert "fsdp_version: 2" in str(err.value) and "\n" not in str(err.value)
    check_fsdp_version(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), "x")
    check_fsdp_version(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), "x")
    plain = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None), is_fsdp2=False)
    with whole_unit(plain):
        pass


# ---------------------------------------------------------------- two processes


def _config(tmp: Path, fsdp: bool, shipped: str = "fsdp_kontext.yaml") -> Path:
    """The shipped FSDP config on 2 CPU processes in fp32 (or the same as plain DDP)."""
    if fsdp:
        cfg = yaml.safe_load((ROOT / "examples/accelerate" / shipped).read_text())
        cfg.update(num_processes=2, mixed_precision="no")
    else:
        cfg = {"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "no"}
    cfg.update(num_machines=1, machine_rank=0, use_cpu=True, rdzv_backend="static")
    path = tmp / ("fsdp.yaml" if fsdp else "ddp.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


RUN = settings(
    data__resolution=64,
    data__detect_faces="false",
    training__batch_size=1,
    training__max_steps=3,
    training__checkpoint_every=1,
    training__tensorboard="false",
    training__num_workers=0,
    training__mixed_precision="no",
    training__gradient_checkpointing="true",
    training__ema="true",
    training__ema_decay=0.9,
    training__validate_every=2,
    validation__count=2,
    validation__resolution=64,
    optim__lr=1e-3,
    optim__warmup_steps=0,
)


def _launch(config: Path, fsdp: bool, args: list) -> None:
    launch(["train", *args], config=config, entry=ENTRY if fsdp else None)


def _idenet(base, data, out) -> list:
    return [
        "idenet",
        *RUN,
        *settings(
            model__backbone="kontext",
            model__pretrained=base,
            model__lora_rank=4,
            model__max_sequence_length=32,
            data__path=data,
            loss__lambda_aid=0.7,
            training__output_dir=out,
        ),
    ]


def _same_files(a: Path, b: Path, exact: bool) -> None:
    for name in ("ide_lora.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for k in x:
            if exact:
                assert torch.equal(x[k], y[k]), (name, k)
            else:
                torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)


def _losses(run: Path) -> list[list[float]]:
    return [[r[k] for k in ("loss", "l_dm", "l_cid")] for r in read_metrics(run)]


@pytest.mark.multiprocess
def test_fsdp2_idenet_equals_ddp_and_resumes_exactly(kontext_dir, pair_dir, tmp_path):
    fsdp_cfg, ddp_cfg = _config(tmp_path, True), _config(tmp_path, False)
    sharded, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    _launch(fsdp_cfg, True, _idenet(kontext_dir, pair_dir, sharded))
    _launch(ddp_cfg, False, _idenet(kontext_dir, pair_dir, ddp))
    # the sharded path really ran: accelerate's sharded model files and our sharded EMA
    ckpt = sharded / "checkpoints" / "step-000001"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "ema_sharded").is_dir()
    # ... holding the adapter only: the LoRA weights the DDP run's checkpoint names, no base
    saved = _checkpointed(ckpt / "pytorch_model_fsdp_0")
    ddp_file = ddp / "checkpoints" / "step-000001" / "adapters.safetensors"
    lora = {f"model.{k}" for k in load_file(str(ddp_file))}
    assert len(lora) > 0 and saved == lora, sorted(saved ^ lora)[:4]
    assert not (ddp / "checkpoints" / "step-000001" / "ema_sharded").exists()
    torch.testing.assert_close(_losses(sharded), _losses(ddp), rtol=1e-5, atol=1e-7)
    # validation ran on both processes (a sharded forward is collective) and was recorded
    assert (sharded / "validation" / "step-000002.png").is_file()
    _same_files(sharded / "final", ddp / "final", exact=False)
    lora = load_file(str(sharded / "final" / "ide_lora.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())

    # resume the sharded run from step 1: the same trajectory, the same EMA export
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "final")
    for later in ("step-000002", "step-000003"):
        shutil.rmtree(resumed / "checkpoints" / later)
    _launch(fsdp_cfg, True, [*_idenet(kontext_dir, pair_dir, resumed), "--resume", "latest"])
    assert _losses(resumed) == _losses(sharded)
    _same_files(resumed / "final", sharded / "final", exact=True)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_ipnet_equals_ddp(kontext_dir, pair_dir, tmp_path):
    """IPNet sharded: the teacher's adapter switched on the shards, the discriminator as one
    FSDP unit with its heads frozen for the generator's term."""
    fsdp_cfg, ddp_cfg = _config(tmp_path, True), _config(tmp_path, False)
    _launch(ddp_cfg, False, _idenet(kontext_dir, pair_dir, tmp_path / "ide"))

    def ipnet(out):
        return [
            "ipnet",
            "--teacher",
            tmp_path / "ide" / "final",
            "--stage",
            "low",
            *RUN,
            *settings(
                data__path=pair_dir,
                discriminator__backbone="tiny",
                triplet__dino="tiny",
                training__output_dir=out,
            ),
        ]

    _launch(fsdp_cfg, True, ipnet(tmp_path / "ip_fsdp"))
    _launch(ddp_cfg, False, ipnet(tmp_path / "ip_ddp"))
    keys = ("loss_g", "l_adv", "l_distill", "loss_d")
    got = [[r[k] for k in keys] for r in read_metrics(tmp_path / "ip_fsdp")]
    want = [[r[k] for k in keys] for r in read_metrics(tmp_path / "ip_ddp")]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    name = "student_lora.safetensors"
    x = load_file(str(tmp_path / "ip_fsdp" / "final" / name))
    y = load_file(str(tmp_path / "ip_ddp" / "final" / name))
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)

    # the sharded checkpoints hold what trains: both adapters, the discriminator's heads
    ckpt, ddp_ckpt = (
        tmp_path / run / "checkpoints" / "step-000001" for run in ("ip_fsdp", "ip_ddp")
    )
    lora = {f"model.{k}" for k in load_file(str(ddp_ckpt / "adapters.safetensors"))}
    assert any(".ide." in k for k in lora) and any(".student." in k for k in lora)
    assert _checkpointed(ckpt / "pytorch_model_fsdp_0") == lora
    # (under DDP the transformer's entry is adapters.safetensors: the discriminator is model)
    heads = {f"model.{k}" for k in load_file(str(ddp_ckpt / "model.safetensors"))}
    heads = {k for k in heads if k.startswith("model.heads.")}
    assert heads and _checkpointed(ckpt / "pytorch_model_fsdp_1") == heads
    # ... and resume exactly from them (the base and DINO are the pretrained ones)
    resumed = tmp_path / "ip_resumed"
    shutil.copytree(tmp_path / "ip_fsdp", resumed)
    shutil.rmtree(resumed / "final")
    for later in ("step-000002", "step-000003"):
        shutil.rmtree(resumed / "checkpoints" / later)
    _launch(fsdp_cfg, True, [*ipnet(resumed), "--resume", "latest"])
    assert [[r[k] for k in keys] for r in read_metrics(resumed)] == got
    again = load_file(str(resumed / "final" / name))
    assert all(torch.equal(again[k], x[k]) for k in x)


def _checkpointed(folder: Path) -> set[str]:
    """The keys of a ``torch.distributed.checkpoint`` folder."""
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(folder).read_metadata().state_dict_metadata)
