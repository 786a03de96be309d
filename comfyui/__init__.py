"""InstantPortrait nodes for ComfyUI: one-step identity-preserving portrait edits,
FastFace and FPGA generation, DIIR face restoration.

Install: put (or symlink) this folder in ``ComfyUI/custom_nodes/`` and ``pip install
instantportrait`` into ComfyUI's Python. The nodes call the library; models load from any
folder or Hub id you type in, not from a fixed folder layout.
"""

from . import method_nodes, nodes

NODE_CLASS_MAPPINGS = {**nodes.NODE_CLASS_MAPPINGS, **method_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {
    **nodes.NODE_DISPLAY_NAME_MAPPINGS,
    **method_nodes.NODE_DISPLAY_NAME_MAPPINGS,
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
