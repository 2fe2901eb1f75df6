"""Editing real images with the models the project trains, nothing new trained (ddpm/editing/):

    sdedit      SDEdit (Meng et al. 2022): noise an image to strength s, denoise it under any condition
    repaint     inpainting, RePaint (Lugmayr et al. 2022): naive replacement (r = 1) and resampling (jumps)
    inversion   DDIM inversion (Song et al. 2021): the noise that decodes into an image; edits, interpolation
    masks       named and PNG masks, and a mask on a latent's coarser grid
    runs        the same three on a loaded run: pixels or a latent model's latents (encode, edit, decode)

Each method is a start point or a known region given to the ordinary samplers (SamplerOptions' t_start, t_stop
and known): no sampler is copied. ``python -m ddpm edit`` is the command; notebook 12_editing the lesson.
"""

from ddpm.editing.inversion import ddim_invert, ddim_invert_progressive, ddim_reconstruct, slerp
from ddpm.editing.masks import MASK_NAMES, check_mask, named_mask, read_mask, to_grid
from ddpm.editing.repaint import jump_schedule, network_calls, repaint
from ddpm.editing.sdedit import sdedit, strength_index

__all__ = ["sdedit", "strength_index", "repaint", "jump_schedule", "network_calls", "ddim_invert",
           "ddim_invert_progressive", "ddim_reconstruct", "slerp", "MASK_NAMES", "named_mask", "read_mask",
           "check_mask", "to_grid"]
