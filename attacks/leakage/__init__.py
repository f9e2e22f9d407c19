"""Gradient leakage: reconstruct training images from shared gradients (pure torch, no Flower).

:mod:`attacks.leakage.inversion` holds the attacks - DLG (Zhu et al. 2019),
iDLG (Zhao et al. 2020) and Inverting Gradients (Geiping et al. 2020) - and
:func:`reconstruct`, which dispatches on their names;
:mod:`attacks.leakage.quality` scores a reconstruction against the originals
(MSE, PSNR, SSIM, best match in a pool).
"""

from attacks.leakage.inversion import (
    METHODS,
    Reconstruction,
    dlg,
    gradients_of,
    identity,
    idlg,
    idlg_label,
    infer_labels,
    inverting_gradients,
    output_weight_index,
    reconstruct,
    total_variation,
)
from attacks.leakage.quality import best_match, mse, psnr, ssim

__all__ = [
    "METHODS",
    "Reconstruction",
    "best_match",
    "dlg",
    "gradients_of",
    "identity",
    "idlg",
    "idlg_label",
    "infer_labels",
    "inverting_gradients",
    "mse",
    "output_weight_index",
    "psnr",
    "reconstruct",
    "ssim",
    "total_variation",
]
