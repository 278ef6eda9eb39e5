"""`gadei inspect`: what running jobs are doing, read straight from their arenas."""
from __future__ import annotations

from gadei import arena as A
from gadei import ledger as L
from gadei import proc, shm


def describe(name: str) -> dict:
    a = A.Arena.attach(name)
    try:
        now = A.now_ns()
        v, ledger = a.published_ledger()
        cfg = a.meta.get("config", {})
        owner = a.job.owner_pid
        pins = a.pins()
        learners = []
        for i in range(a.layout.learners):
            lw = a.learner(i)
            slots = []
            for s in range(a.layout.slots):
                h = a.slot_header(i, s)
                c = h.ctrl
                slots.append({"state": A.STATE_NAMES[A.ctrl_state(c)], "seq": A.ctrl_seq(c),
                              "kind": A.KIND_NAMES.get(h.kind, "?"), "version": h.version})
            learners.append({"learner": i, "pid": lw.pid, "incarnation": lw.incarnation,
                             "alive": proc.alive(lw.pid, lw.start),
                             "heartbeat_age_s": round((now - lw.beat) / 1e9, 2),
                             "step": lw.step, "next_seq": lw.next_seq,
                             "pulled_version": lw.pulled, "pinned_buffer": pins[i], "done": bool(lw.done),
                             "loss": A.bits_f64(lw.loss), "slots": slots,
                             "applied_count": ledger.get(i, L.N_APPLIED),
                             "rejected_count": ledger.get(i, L.N_REJECTED),
                             "last_rejected": ledger.rejected(i)})
        return {"arena": name, "job": a.meta.get("job"), "task": cfg.get("task"),
                "optimizer": cfg.get("optimizer"), "owner_pid": owner,
                "owner_alive": proc.alive(owner, a.job.owner_start),
                "version": v, "updates": ledger.updates, "rejected": ledger.total("rejects"),
                # each weight buffer's mark: the version it holds, or None (REUSE: being rewritten or free)
                "weight_buffers": [None if (m := a.mark(b)) == A.REUSE else m
                                   for b in range(a.layout.weight_buffers)],
                "zero_copy": a.layout.zero_copy,
                "ps": {"pid": a.job.ps_pid, "incarnation": a.job.ps_incarnation,
                       "alive": proc.alive(a.job.ps_pid, a.job.ps_start),
                       "heartbeat_age_s": round((now - a.job.ps_beat) / 1e9, 2)},
                "learners": learners}
    finally:
        a.close()


def describe_all(job: str | None = None) -> list[dict]:
    out = []
    for name in shm.segments(job):
        try:
            out.append(describe(name))
        except (FileNotFoundError, ValueError) as e:
            out.append({"arena": name, "error": str(e)})
    return out


def render(jobs: list[dict]) -> str:
    if not jobs:
        return "no running gadei jobs"
    lines = []
    for j in jobs:
        if "error" in j:
            lines.append(f"{j['arena']}: {j['error']}")
            continue
        ps = j["ps"]
        lines.append(f"job {j['job']}  task {j['task']}  optimizer {j['optimizer']}  version {j['version']}  "
                     f"updates {j['updates']}  rejected {j['rejected']}  supervisor pid {j['owner_pid']}"
                     f"{'' if j['owner_alive'] else ' (DEAD)'}")
        lines.append(f"  PS pid {ps['pid']} incarnation {ps['incarnation']} {'alive' if ps['alive'] else 'DEAD'} "
                     f"heartbeat {ps['heartbeat_age_s']} s ago")
        marks = " ".join(f"{b}:{'REUSE' if m is None else m}" for b, m in enumerate(j["weight_buffers"]))
        lines.append(f"  weight buffers (buffer:version) {marks}{'  (zero-copy pull)' if j['zero_copy'] else ''}")
        lines.append("  learner  pid      inc  alive  beat_s  step    next_seq  pulled  pin  loss       slots")
        for l in j["learners"]:
            slots = " ".join(f"{s['state']}:{s['seq']}" for s in l["slots"])
            lines.append(f"  {l['learner']:<8} {l['pid']:<8} {l['incarnation']:<4} {str(l['alive']):<6} "
                         f"{l['heartbeat_age_s']:<7} {l['step']:<7} {l['next_seq']:<9} "
                         f"{l['pulled_version']:<7} {'-' if l['pinned_buffer'] is None else l['pinned_buffer']:<4} "
                         f"{l['loss']:<10.4g} {slots}")
    return "\n".join(lines)
