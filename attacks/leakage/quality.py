"""Image-quality metrics for gradient-inversion results, per image, pure torch.

All functions take ``(k, C, H, W)`` batches of the same shape with pixel
values in ``[0, data_range]`` (``[0, 1]`` by default) and return one value per
image, computed in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["best_match", "mse", "psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (k, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per image: ``mean over (C, H, W) of (a - b)^2``, shape ``(k,)``."""
    a, b = _pair(a, b)
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / mse)`` in dB.

    Identical images give ``inf`` (not capped, so a perfect reconstruction is
    visible as such; cap or filter before averaging over images).
    """
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    return 10.0 * torch.log10(data_range**2 / mse(a, b))


def _gaussian_window(channels: int) -> Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004).

    Local statistics under an 11x11 Gaussian window (sigma 1.5), population
    (weighted) variances, ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2`` with
    ``L = data_range``; the SSIM map is computed on the valid region (no
    padding), averaged over it and over the channels. Images must be at least
    11x11. Symmetric in ``a`` and ``b``; 1 for identical images.
    """
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    window = _gaussian_window(a.shape[1])

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


def _as_unit(x: Tensor) -> Tensor:
    """float32 in [0, 1]: ``uint8`` images are divided by 255, floating ones are taken as they are."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x.to(torch.float32)


def best_match(recon: Tensor, candidates: Tensor, *, max_elements: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Pair each reconstruction with the candidate image of lowest MSE.

    Used to score an attack against a pool of originals (e.g. a client's whole
    shard) when the batch order is unknown. The pool is scanned in chunks of
    at most ``max_elements`` difference values (64 MiB of float32 by
    default), so 60,000 MNIST images never sit in memory as floats at once.

    Parameters
    ----------
    recon : Tensor
        ``(k, C, H, W)`` reconstructions in [0, 1].
    candidates : Tensor
        ``(N, C, H, W)`` pool, float in [0, 1] or ``uint8`` (divided by 255).
    max_elements : int
        Upper bound on the size of one chunk's ``(k, chunk, C*H*W)`` difference.

    Returns
    -------
    indices : Tensor
        ``(k,)`` long, the index in ``candidates`` of each reconstruction's
        match (the first one on ties). Several reconstructions may share one.
    mse : Tensor
        ``(k,)`` float64, the MSE of each pair.
    """
    if recon.ndim != 4 or candidates.ndim != 4 or recon.shape[1:] != candidates.shape[1:] or len(candidates) == 0:
        raise ValueError(
            f"expected (k, C, H, W) reconstructions and a non-empty (N, C, H, W) pool of the same image shape, "
            f"got {tuple(recon.shape)} and {tuple(candidates.shape)}"
        )
    flat = _as_unit(recon.detach()).flatten(1).to(candidates.device)
    chunk = max(1, max_elements // (flat.shape[0] * flat.shape[1]))
    best_mse = torch.full((flat.shape[0],), math.inf, dtype=torch.float64)
    best_idx = torch.zeros(flat.shape[0], dtype=torch.long)
    for start in range(0, len(candidates), chunk):
        pool = _as_unit(candidates[start : start + chunk]).flatten(1)
        errors = (flat[:, None, :] - pool[None, :, :]).pow(2).mean(dim=2).to("cpu", torch.float64)
        value, index = errors.min(dim=1)
        better = value < best_mse
        best_mse = torch.where(better, value, best_mse)
        best_idx = torch.where(better, index + start, best_idx)
    return best_idx, best_mse
