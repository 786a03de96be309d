"""``python fsdp_cpu_entry.py ARGS`` = ``instantportrait ARGS`` with accelerate's FSDP on CPU
processes: a test harness, used only by ``test_kontext_fsdp.py``.

accelerate turns FSDP on only for GPU-like distributed types (on CPUs it stays ``MULTI_CPU``),
although torch's FSDP2 runs on CPU processes over gloo. Launched by ``accelerate launch`` with an
FSDP config and ``ACCELERATE_USE_CPU=1``, this entry point builds each trainer's
``Accelerator`` as usual and then switches accelerate's shared state from ``MULTI_CPU`` to
``FSDP`` with the plugin the launcher configured, so the CPU tests run accelerate's own FSDP2
code: ``prepare`` (``fully_shard`` per block), sharded ``save_state``/``load_state``,
``clip_grad_norm_``. The library has no such switch; on GPUs none is needed.
"""

from __future__ import annotations

import sys


def build_accelerator_on_cpu_fsdp(build):
    def build_accelerator(cfg, precision=None):
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        accelerator = build(cfg, precision)
        if accelerator.distributed_type == DistributedType.MULTI_CPU:
            plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
            for state in (PartialState._shared_state, AcceleratorState._shared_state):
                state["distributed_type"] = DistributedType.FSDP
            AcceleratorState._shared_state["fsdp_plugin"] = plugin
        return accelerator

    return build_accelerator


def main(argv: list[str]) -> int:
    from instantportrait.cli import main as cli
    from instantportrait.training import loop

    loop.build_accelerator = build_accelerator_on_cpu_fsdp(loop.build_accelerator)
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
