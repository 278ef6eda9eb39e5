"""`gadei inspect`: what running jobs are doing, read straight from their arenas."""
from __future__ import annotations

from gadei import arena as A
from gadei import proc, shm


def describe(name: str) -> dict:
    a = A.Arena.attach(name)
    try:
        ctl, now = a.ctl, A.now_ns()
        v, ledger = a.published_ledger()
        cfg = a.meta.get("config", {})
        owner = ctl.load(A.OWNER_PID)
        learners = []
        for i in range(a.layout.learners):
            w = lambda k: ctl.load(a.lw(i, k))  # noqa: E731
            slots = []
            for s in range(a.layout.slots):
                c = ctl.load(a.sw(i, s, A.S_CTRL))
                slots.append({"state": A.STATE_NAMES[A.ctrl_state(c)], "seq": A.ctrl_seq(c),
                              "kind": A.KIND_NAMES.get(ctl.load(a.sw(i, s, A.S_KIND)), "?"),
                              "version": ctl.load(a.sw(i, s, A.S_VERSION))})
            learners.append({"learner": i, "pid": w(A.L_PID), "incarnation": w(A.L_INCARNATION),
                             "alive": proc.alive(w(A.L_PID), w(A.L_START)),
                             "heartbeat_age_s": round((now - w(A.L_BEAT)) / 1e9, 2),
                             "step": w(A.L_STEP), "next_seq": w(A.L_NEXT_SEQ),
                             "pulled_version": w(A.L_PULLED), "done": bool(w(A.L_DONE)),
                             "loss": A.bits_f64(w(A.L_LOSS)), "slots": slots,
                             "applied": ledger["applied"][i], "rejected": ledger["rejected"][i]})
        return {"arena": name, "job": a.meta.get("job"), "task": cfg.get("task"),
                "optimizer": cfg.get("optimizer"), "owner_pid": owner,
                "owner_alive": proc.alive(owner, ctl.load(A.OWNER_START)),
                "version": v, "updates": ledger["updates"], "rejected": ledger["rejects"],
                "ps": {"pid": ctl.load(A.PS_PID), "epoch": ctl.load(A.EPOCH),
                       "alive": proc.alive(ctl.load(A.PS_PID), ctl.load(A.PS_START)),
                       "heartbeat_age_s": round((now - ctl.load(A.PS_BEAT)) / 1e9, 2)},
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
        lines.append(f"  PS pid {ps['pid']} epoch {ps['epoch']} {'alive' if ps['alive'] else 'DEAD'} "
                     f"heartbeat {ps['heartbeat_age_s']} s ago")
        lines.append("  learner  pid      inc  alive  beat_s  step    next_seq  pulled  loss       slots")
        for l in j["learners"]:
            slots = " ".join(f"{s['state']}:{s['seq']}" for s in l["slots"])
            lines.append(f"  {l['learner']:<8} {l['pid']:<8} {l['incarnation']:<4} {str(l['alive']):<6} "
                         f"{l['heartbeat_age_s']:<7} {l['step']:<7} {l['next_seq']:<9} "
                         f"{l['pulled_version']:<7} {l['loss']:<10.4g} {slots}")
    return "\n".join(lines)
