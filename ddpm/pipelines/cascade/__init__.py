"""A cascade (Ho et al. 2021; Saharia et al. 2022, Imagen) in miniature: a base model of 14x14 digits (an ordinary
"ddpm" run with DataConfig.image_size 14) and a super-resolution DDPM 14 -> 28 with noise conditioning augmentation.

    stage.py     its config section (SuperResConfig), the kind "super-res", augmentation, the Refiner
    evaluate.py  the SR model on real digits shrunk (PSNR, accuracy, Frechet, speckle) against bicubic; the cascade's
                 quality per augmentation level
    bench.py     the cascade against the single-stage model of the same budget
    cli.py       python -m ddpm cascade
"""

from ddpm.pipelines.cascade.stage import SuperResKind

KINDS = {"super-res": SuperResKind()}
