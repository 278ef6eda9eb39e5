"""Direct learners (ASGD, SYNC): backward writes the gradient straight into a claimed slot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import algorithms
from gadei import arena as A
from gadei import ledger as L
from gadei.ledger import published_empty
from gadei.server import Server
from gadei.supervisor import discard_writing
from gadei.worker import Worker

pytestmark = pytest.mark.timeout(120)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3, sparse=True)    # its .grad replaces the slot view
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(self.emb(x)).square().sum()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Net()
    layout = A.Layout(params=tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
                      state=(), rule="sgd", hyper=(("lr", 0.1),), learners=1, slots=2)
    arena = A.Arena.create("test-direct", layout, {"config": {}})
    arena.write_ledger(0, published_empty(1))
    reference = Net()
    reference.load_state_dict(model.state_dict())
    worker = Worker(arena, 0, model, direct=True)
    np.copyto(arena.weights(0), worker.flat.numpy())     # version 0 = the model's weights
    yield arena, model, reference, worker
    arena.unlink()
    arena.close()


def flat_grad(model):
    return torch.cat([p.grad.to_dense().reshape(-1) for p in model.parameters()])


def test_gradient_is_computed_in_the_slot_and_applied_once(setup):
    arena, model, reference, worker = setup
    ps = Server(arena, algorithms.get("sgd", lr=0.1), warn=lambda m: None)
    x = torch.tensor([1, 3, 3])
    for step in range(3):
        worker.pull()
        for s in range(2):
            arena.slot(0, s)[:] = 7.0                        # stale: the slot is never zeroed
        worker.zero_grad()                                   # L1 + L2 here
        s = worker._held
        assert A.ctrl_state(arena.slot_header(0, s).ctrl) == A.WRITING
        slot = arena.slot(0, s)
        assert all(p.grad is None for p in model.parameters())
        model(x).backward()
        # backward's first write went into the slot, and autograd kept the slot as .grad
        assert model.lin.weight.grad.data_ptr() == torch.from_numpy(slot).data_ptr() + 4 * 15
        assert model.lin.bias.grad.data_ptr() == model.lin.weight.grad.data_ptr() + 4 * 6
        assert model.emb.weight.grad.is_sparse                # gathered into the slot by the push
        k = worker.push_gradient(samples=3)
        assert k == step
        assert all(p.grad is None for p in model.parameters())   # the slot is the PS's now
        reference.zero_grad()
        reference(x).backward()
        np.testing.assert_allclose(slot, flat_grad(reference).numpy(), rtol=1e-5, atol=1e-7)
        assert A.ctrl(A.READY, k) == arena.slot_header(0, s).ctrl
        assert ps.step() and not ps.step()                   # applied exactly once
        with torch.no_grad():
            for p in reference.parameters():
                p.sub_(0.1 * p.grad.to_dense())
        worker.pull()
        expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
        np.testing.assert_allclose(worker.flat.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    pub = arena.published_ledger()[1]
    assert pub.amax(0) == 2 and pub.get(0, L.N_APPLIED) == 3 and pub.get(0, L.N_REJECTED) == 0


def test_push_without_zero_grad_is_refused(setup):
    _, model, _, worker = setup
    with pytest.raises(RuntimeError, match="zero_grad"):
        worker.push_gradient()


def test_learner_dead_while_computing_discards_its_claim(setup):
    arena, model, _, worker = setup
    worker.zero_grad()
    model(torch.tensor([0])).backward()                      # dies before the push
    assert discard_writing(arena, 0) == [0]
    again = Worker(arena, 0, Net(), direct=True)
    assert again.next_seq == 1
    again.zero_grad()
    assert again._held is not None


def test_two_backward_passes_accumulate_in_the_slot(setup):
    """The first gradient of a step is copied into the slot, later ones accumulate there, and no
    stale number left in the slot survives."""
    arena, model, reference, worker = setup
    for s in range(2):
        arena.slot(0, s)[:] = 7.0
    worker.zero_grad()
    slot = arena.slot(0, worker._held)
    x = torch.tensor([1, 3, 3])
    model(x).backward()
    (2 * model.lin(model.lin.weight).sum()).backward()     # lin.weight used twice in one graph
    worker.gradient()
    reference.zero_grad()
    reference(x).backward()
    (2 * reference.lin(reference.lin.weight).sum()).backward()
    np.testing.assert_allclose(slot, flat_grad(reference).numpy(), rtol=1e-5, atol=1e-6)
