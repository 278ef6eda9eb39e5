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
        # zero-copy (1 learner, 3 weight buffers): the model computes on the published buffer
        assert model.lin.weight.data_ptr() == arena.readonly_weights(arena.buffer_of(worker.version)).ctypes.data + 4 * 15
        assert worker.flat is None                           # and holds no private copy
        expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
        got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
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


def test_too_few_weight_buffers_fall_back_to_copying():
    """2 learners, 3 weight buffers (< N + 2): a direct learner copies the published weights
    into its own flat tensor (no pin), and the PS still never tears the copy."""
    torch.manual_seed(0)
    model = Net()
    layout = A.Layout(params=tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
                      state=(), rule="sgd", hyper=(("lr", 0.1),), learners=2, slots=2, weight_buffers=3)
    arena = A.Arena.create("test-fallback", layout, {"config": {}})
    try:
        arena.write_ledger(0, published_empty(2))
        worker = Worker(arena, 0, model, direct=True)
        assert not worker.zero_copy
        np.copyto(arena.weights(0), worker.flat.numpy())
        ps = Server(arena, algorithms.get("sgd", lr=0.1), warn=lambda m: None)
        for step in range(4):                   # the PS writes every buffer in turn
            worker.pull()
            assert model.lin.weight.data_ptr() == worker.flat.data_ptr() + 4 * 15     # its own copy
            np.testing.assert_array_equal(worker.flat.numpy(), arena.published_weights())
            assert arena.pins() == [None, None]
            worker.zero_grad()
            model(torch.tensor([1, 3, 3])).backward()
            worker.push_gradient(samples=3)
            assert ps.step()
    finally:
        arena.unlink()
        arena.close()


def test_pinned_weights_are_read_only(setup):
    """A zero-copy learner's parameters are views of a read-only mapping: torch cannot write them."""
    arena, model, _, worker = setup
    worker.pull()
    assert arena.pins() == [arena.buffer_of(worker.version)]
    assert not arena.readonly_weights(0).flags.writeable
    discard_writing(arena, 0)                     # the supervisor, after reaping it: unpinned
    assert arena.pins() == [None]
