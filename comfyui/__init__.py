"""InstantPortrait nodes for ComfyUI: one-step identity-preserving portrait edits.

Install: put (or symlink) this folder in ``ComfyUI/custom_nodes/`` and ``pip install
instantportrait`` into ComfyUI's Python. The nodes call the library; models load from any
folder or Hub id you type in, not from a fixed folder layout.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
