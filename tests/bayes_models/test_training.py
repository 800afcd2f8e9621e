"""MAP training against torch's reference Adam: the fused optimiser is a speed-up, not another algorithm."""

import torch
from torch import nn

from bayes_models.architectures import mlp
from bayes_models.training import minibatches, train_map


def test_train_map_follows_torchs_for_loop_adam_with_an_l2_prior():
    """``train_map`` (fused Adam) against a plain loop over the same minibatches with torch's for-loop Adam
    (``foreach=False, fused=False``, its reference implementation) and the L2 term in the gradient (Adam, not
    AdamW): the same weights after 60 steps up to float32 rounding (max abs difference < 1e-4; the weights are
    of order 0.1–1) and the same losses to 1e-5."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g)
    y = x[:, :3].argmax(1)  # learnable: the loss must fall
    torch.manual_seed(0)
    net = mlp(6, 3, hidden=16, depth=2, dropout=0.0)  # no dropout: both runs see the same networks
    reference = mlp(6, 3, hidden=16, depth=2, dropout=0.0)
    reference.load_state_dict(net.state_dict())
    hyper = {"lr": 1e-2, "weight_decay": 1e-2}

    losses = train_map(net, x, y, steps=60, batch_size=32, generator=torch.Generator().manual_seed(1), **hyper)

    optimizer = torch.optim.Adam(reference.parameters(), foreach=False, fused=False, **hyper)
    expected = []
    for index in minibatches(100, 32, 60, torch.Generator().manual_seed(1), x.device):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(reference(x[index]), y[index])
        loss.backward()
        optimizer.step()
        expected.append(loss.item())
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), atol=1e-5, rtol=0)
    for (name, trained), wanted in zip(net.named_parameters(), reference.parameters(), strict=True):
        assert (trained - wanted).abs().max() < 1e-4, name
    assert losses[-1] < losses[0] - 0.3  # it did train


def test_fused_adam_takes_torchs_fused_adam_steps_exactly():
    """``FusedAdam`` against ``torch.optim.Adam(fused=True)`` (the kernel and state it reuses), 25 steps with an L2
    term, one parameter left without a gradient for a step (both skip it): the same weights and moment estimates,
    bit for bit."""
    from bayes_models.training import FusedAdam

    torch.manual_seed(0)
    net = mlp(6, 3, hidden=16, depth=2, dropout=0.0)
    reference = mlp(6, 3, hidden=16, depth=2, dropout=0.0)
    reference.load_state_dict(net.state_dict())
    ours = FusedAdam(net.parameters(), lr=3e-2, weight_decay=1e-2)
    theirs = torch.optim.Adam(reference.parameters(), lr=3e-2, weight_decay=1e-2, fused=True)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
        for model, optimizer in ((net, ours), (reference, theirs)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 7:
                next(model.parameters()).grad = None
            optimizer.step()
    for ours_p, theirs_p, m, v in zip(
        net.parameters(), reference.parameters(), ours.exp_avgs, ours.exp_avg_sqs, strict=True
    ):
        assert torch.equal(ours_p, theirs_p)
        assert torch.equal(m, theirs.state[theirs_p]["exp_avg"])
        assert torch.equal(v, theirs.state[theirs_p]["exp_avg_sq"])
    assert float(ours.steps[0]) == 24 and float(ours.steps[1]) == 25


def test_training_does_not_import_torch_dynamo(fresh_python):
    """MAP training in a fresh interpreter leaves ``torch._dynamo`` unimported (1.5 s and ~50 MiB a process), which
    building a ``torch.optim`` optimiser would import."""
    code = (
        "import sys, torch\n"
        "from bayes_models.architectures import mlp\n"
        "from bayes_models.training import train_map\n"
        "x = torch.randn(40, 5); y = x[:, :2].argmax(1)\n"
        "train_map(mlp(5, 2, hidden=8), x, y, steps=5, batch_size=16, lr=1e-2, weight_decay=0.0,"
        " generator=torch.Generator().manual_seed(0))\n"
        "print('torch._dynamo' in sys.modules)\n"
        "torch.optim.Adam(mlp(5, 2).parameters())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    assert fresh_python(code).split() == ["False", "True"]
