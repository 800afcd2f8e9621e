"""Small random shifts and rotations of images: the standard augmentation of a CNN trained on a few labels.

Each training minibatch is drawn afresh through a random affine map — a shift of up to ``MAX_SHIFT`` of the image's
height and width and a rotation of up to ``MAX_DEGREES`` — sampled bilinearly, the border's pixels extending
outwards (an image's edge is its background). Measured on MNIST pixels (``benchmarks/augmentation.py``), it is most
of what a CNN on a few hundred labels lacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_SHIFT = 2 / 28
"""Largest shift, as a fraction of the image's height and width (2 pixels of an MNIST digit)."""
MAX_DEGREES = 10.0


def shift_rotate(images: torch.Tensor, shifts: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """``images[B, C, H, W]`` each turned by ``degrees[B]`` (clockwise on screen) about its centre, then moved by
    ``shifts[B, 2]`` pixels (x right, y down)."""
    _, _, height, width = images.shape
    angle = torch.deg2rad(degrees.to(images))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps each output pixel to where it samples the input, in [-1, 1] coordinates: turned back by the
    # rotation R and shifted back by R · shift (the image is turned about its centre, then moved by the shift)
    sx, sy = 2 * shifts[:, 0].to(images) / width, 2 * shifts[:, 1].to(images) / height
    tx, ty = -(cos * sx + sin * sy), -(cos * sy - sin * sx)
    theta = torch.stack([torch.stack([cos, sin, tx], 1), torch.stack([-sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_shift_rotate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` each shifted and rotated by amounts drawn uniformly within ``MAX_SHIFT`` and ``MAX_DEGREES``."""
    batch, _, height, width = images.shape
    where = generator.device
    extent = torch.tensor([width, height], device=where) * MAX_SHIFT
    shifts = (torch.rand(batch, 2, generator=generator, device=where) * 2 - 1) * extent
    degrees = (torch.rand(batch, generator=generator, device=where) * 2 - 1) * MAX_DEGREES
    return shift_rotate(images, shifts.to(images.device), degrees.to(images.device))


def check_images(feature_shape: tuple[int, ...]) -> None:
    """Augmentation moves pixels: refuse features that are not images ``(C, H, W)``."""
    if len(feature_shape) != 3:
        raise ValueError(f"augment needs image features (C, H, W), got feature shape {tuple(feature_shape)}")
