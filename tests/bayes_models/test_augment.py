"""Image augmentation against exact pixel moves (``torch.roll``, ``torch.rot90``), its random draws' bounds, and
where it is switched on."""

import pytest
import torch

from bayes_models.architectures import gal_cnn, mlp
from bayes_models.augment import MAX_SHIFT, random_shift_rotate, shift_rotate
from bayes_models.training import train_map
from learner.candidates import CandidateSpec, EvidenceOptions, ModelOptions, build_model


def _interior_images(batch: int, size: int = 12) -> torch.Tensor:
    """Random images with a blank margin of 3 pixels, so moves of up to 3 pixels lose nothing off the edge."""
    images = torch.zeros(batch, 2, size, size)
    images[:, :, 3:-3, 3:-3] = torch.rand(batch, 2, size - 6, size - 6, generator=torch.Generator().manual_seed(0))
    return images


def test_whole_pixel_shifts_and_quarter_turns_move_pixels_exactly():
    """Bilinear sampling at whole-pixel shifts and at multiples of 90° (square images) lands on pixel centres: the
    result is ``torch.roll`` / ``torch.rot90`` (clockwise) to float32 rounding (< 1e-5)."""
    images = _interior_images(4)
    shifts = torch.tensor([[1.0, 0.0], [-2.0, 3.0], [0.0, -3.0], [3.0, 2.0]])
    moved = shift_rotate(images, shifts, torch.zeros(4))
    for image, (dx, dy), out in zip(images, shifts.long().tolist(), moved, strict=True):
        torch.testing.assert_close(out, torch.roll(image, (dy, dx), dims=(1, 2)), atol=1e-5, rtol=0)
    for quarter in (1, 2, 3):
        turned = shift_rotate(images, torch.zeros(4, 2), torch.full((4,), 90.0 * quarter))
        torch.testing.assert_close(turned, torch.rot90(images, -quarter, dims=(2, 3)), atol=1e-5, rtol=0)
    both = shift_rotate(images, shifts, torch.full((4,), 90.0))  # turned about the centre first, then shifted
    for image, (dx, dy), out in zip(images, shifts.long().tolist(), both, strict=True):
        expected = torch.roll(torch.rot90(image, -1, dims=(1, 2)), (dy, dx), dims=(1, 2))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift_rotate(images, torch.zeros(4, 2), torch.zeros(4)), images, atol=1e-6, rtol=0)


def test_random_moves_stay_within_the_bounds_and_repeat_with_the_seed():
    """A centred blob's centre of mass moves only with the shift (a rotation about the centre keeps it): within
    ``MAX_SHIFT`` of the size per axis over 400 draws, and using most of that range; the same seed, the same images."""
    size = 28
    images = torch.zeros(400, 1, size, size)
    images[:, :, 12:16, 12:16] = 1.0
    moved = random_shift_rotate(images, torch.Generator().manual_seed(3))
    grid = torch.arange(size, dtype=torch.float32)
    mass = moved.sum((1, 2, 3))
    centre_x = (moved.sum((1, 2)) * grid).sum(1) / mass - 13.5
    centre_y = (moved.sum((1, 3)) * grid).sum(1) / mass - 13.5
    bound = MAX_SHIFT * size
    assert centre_x.abs().max() <= bound + 0.05 and centre_y.abs().max() <= bound + 0.05
    assert centre_x.abs().max() > 0.8 * bound and centre_y.abs().max() > 0.8 * bound
    torch.testing.assert_close(mass, torch.full((400,), 16.0), atol=0.05, rtol=0)  # nothing lost off the edge
    torch.testing.assert_close(moved, random_shift_rotate(images, torch.Generator().manual_seed(3)))


def test_augmented_training_is_repeatable_and_not_the_plain_fit():
    x = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 3

    def fit(augment: bool) -> list[float]:
        torch.manual_seed(0)
        net = gal_cnn(1, (12, 12), 3, hidden=16)
        return train_map(
            net, x, y, steps=8, batch_size=16, lr=1e-3, weight_decay=0.0,
            generator=torch.Generator().manual_seed(1), augment=augment,
        )  # fmt: skip

    assert fit(True) == fit(True)
    assert fit(True) != fit(False)
    with pytest.raises(ValueError, match=r"augment needs image features \(C, H, W\), got feature shape \(5,\)"):
        train_map(
            mlp(5, 3), torch.rand(10, 5), torch.arange(10) % 3, steps=1, batch_size=4, lr=1e-3,
            weight_decay=0.0, generator=torch.Generator(), augment=True,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("augment", "feature_shape", "expected"),
    [("auto", (1, 12, 12), True), ("auto", (20,), False), ("none", (1, 12, 12), False)],
)
def test_auto_augments_images_only(augment, feature_shape, expected):
    spec = CandidateSpec("c", ModelOptions(augment=augment, hidden=8, device="cpu"))
    model = build_model(spec, feature_shape, 3, 0, EvidenceOptions())
    assert model.config.augment is expected


def test_augmenting_needs_a_family_trained_on_minibatches_of_images():
    with pytest.raises(ValueError, match="augment: shift_rotate needs family mc_dropout or ensemble, got 'laplace'"):
        ModelOptions(family="laplace", augment="shift_rotate")
