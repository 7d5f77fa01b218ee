import torch

from diffuse_edu.metrics import high_frequency_energy


def test_flat_images_have_no_high_frequencies():
    assert high_frequency_energy(torch.full((2, 1, 8, 8), 0.3)).abs().max() < 1e-10


def test_checkerboard_is_all_high_frequency_and_blur_removes_it():
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2 - 1).float()[None, None]
    energy = high_frequency_energy(board)
    total = (board - board.mean()).pow(2).sum()
    torch.testing.assert_close(energy[0], total)  # Parseval: all energy sits at the Nyquist frequency
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(board, (1, 1, 1, 1), mode="circular"), 3, 1)
    assert high_frequency_energy(blurred) < 0.2 * energy
