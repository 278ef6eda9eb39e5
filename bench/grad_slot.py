"""The gradient into the slot: which way moves the fewest bytes (issue #19, item 3).

    python -m bench.grad_slot --params 1000000,16000000 --reps 30 --json F

A learner's backward must leave the step's gradient in its slot (shared memory). Ways, each
timed as zero_grad() + backward on one parameter of P float32 whose backward hands autograd a
precomputed gradient ``g``, as bench.ps_throughput's learners do (a real layer's backward
makes a new ``g`` each step: that allocation is the same whichever way follows, and on a
shared machine its page faults drown the differences, so it is left out):

    zero+accumulate  zero the slot, ``.grad`` a view of it, autograd adds g into it: write 4·P,
                     then read 8·P + write 4·P (what gadei did before)
    hook-copy        ``.grad`` None, a tensor hook copies g into the slot and hands autograd an
                     alias of it, which autograd keeps as ``.grad`` (no copy): read 4·P + write
                     4·P (what gadei does: gadei/worker.py ``_first_write``)
    steal+copy       ``.grad`` None, autograd keeps g (or a copy of it, if something else holds
                     g), then g is copied into the slot: at least read 4·P + write 4·P, plus the
                     copy when g is held elsewhere

Every way is checked exact (the slot equals g). One torch thread; medians over ``--reps``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


class _Grad(torch.autograd.Function):
    """loss = 0 with d loss / d w = g."""

    @staticmethod
    def forward(ctx, w, g):
        ctx.g = g
        return w.new_zeros(())

    @staticmethod
    def backward(ctx, grad_out):
        return ctx.g, None


def ways(P: int) -> dict:
    slot, g = torch.empty(P), torch.ones(P)
    w = torch.nn.Parameter(torch.zeros(P))
    mode = {"hook": False}

    def hook(grad):
        if not mode["hook"] or w.grad is not None:
            return grad
        slot.copy_(grad)
        return slot.detach()
    w.register_hook(hook)

    def zero_accumulate():
        mode["hook"] = False
        slot.zero_()
        w.grad = slot
        _Grad.apply(w, g).backward()

    def hook_copy():
        mode["hook"] = True
        w.grad = None
        _Grad.apply(w, g).backward()

    def steal_copy():
        mode["hook"] = False
        w.grad = None
        _Grad.apply(w, g).backward()
        slot.copy_(w.grad)

    return {"zero+accumulate": zero_accumulate, "hook-copy": hook_copy, "steal+copy": steal_copy}, slot, g


def measure(P: int, reps: int) -> dict:
    fns, slot, g = ways(P)
    out = {}
    for name, fn in fns.items():
        slot.fill_(7.0)
        fn()
        if not torch.equal(slot, g):
            raise AssertionError(f"{name} left a wrong gradient in the slot")
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="1000000,16000000", help="comma-separated P")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for P in (int(p) for p in args.params.split(",")):
        ms = measure(P, args.reps)
        rows.append({"params": P, "ms": ms})
        print(f"P={P:>11,}  " + "  ".join(f"{k} {v:7.2f} ms" for k, v in ms.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
