"""DIIR (FPGA §4): DDIM-inversion identity restoration, in named parts.

* :mod:`.fusion`: AdaIN and the mask-guided face fusion (MGFF, Algorithm 1 lines 6 and 8).
* :mod:`.attention`: the self-attention processor that captures (inversion) and fuses
  (regeneration) the UNet's ``attn1`` output features.
* :mod:`.inversion`: deterministic DDIM inversion caching latents and self-attention features.
* :mod:`.paste`: the face crop geometry and the paste-back through the smoothed face mask.
* :mod:`.restorer`: :class:`FaceRestorer`, which finds the faces to restore and runs them all.
* :mod:`.codeformer`: CodeFormer on the restored crops before the paste-back (the paper's
  Table 4), as ``FaceRestorer(enhancer=...)``.
"""
