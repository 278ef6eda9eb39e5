/*
 * gadei shared-memory parameter-server protocol: a Promela model for SPIN.
 * docs/protocol-model.md says what is modelled, the properties and the measured results.
 *
 * BOUNDS (defaults; override with spin -DNAME=value):
 *   NL     = 2  learners (2 or 3)
 *   S      = 2  slots per learner (fixed)
 *   NSEQ   = 2  sequence numbers per learner, 0 .. NSEQ-1 (a restart skips discarded ones)
 *   LCRASH = 2  learner crashes in total (any learner; before each of its steps that changes
 *               shared state; -DIDLE_CRASH adds crashes while it waits in L1 / computes)
 *   PCRASH = 2  PS crashes in total (before each of its steps; -DIDLE_CRASH adds idle ones)
 *   K      = 3  header (ledger) buffers: version v's header lives in buffer v % 3
 *   KW     = 3, or PINS + 2 with -DPINS=n: weight buffers; the PS picks any one that is not
 *                the published one and not pinned (the implementation: the oldest)
 *   -DREADER    adds one puller that makes NPULL (= 1) consistent copies (the fallback pull
 *               and the checkpoint's pull)
 *   -DPINS=n    learners 0 .. n-1 pull zero-copy: before each claim such a learner pins the
 *               published weight buffer (hazard pointer) and computes on it until its next
 *               pull; the others push without pulling (they drive the PS meanwhile)
 *
 * CONFIGURATIONS CHECKED (tests/test_protocol_model.py; results in docs/protocol-model.md):
 *   main      (defaults)                                   exactly-once, no invalid end state
 *   three     -DNL=3 -DNSEQ=1                              the same with three learners
 *   pull      -DREADER -DLCRASH=0 -DPCRASH=1               + a pull is never torn
 *   idle      -DIDLE_CRASH -DLCRASH=1 -DPCRASH=1           + crashes while idle/waiting
 *   pins      -DPINS -DLCRASH=1 -DPCRASH=1                 + no torn read of a pinned buffer
 *   bugs      -DBUG_PUBLISH_FIRST, -DSCAN_ONCE, -DPINS -DBUG_SCAN_FIRST   must report an
 *             assertion violation
 *
 * VARIANTS (planted bugs; each must FAIL verification):
 *   -DBUG_PUBLISH_FIRST  the PS publishes (P3) before it writes the applied table into the new
 *                        buffer's header; a crash between the two makes the next PS apply the
 *                        same slot again.
 *   -DSCAN_ONCE          the PS picks learner i's next slot with ONE pass over the slot words
 *                        (each an atomic load).  The learner can commit k into a slot the pass
 *                        has already read and k+1 into one it reads next: the PS applies k+1,
 *                        then takes k (seq <= A[i]) for applied already, and k is lost.  The
 *                        default scans a second time once the first found a candidate.
 *   -DBUG_SCAN_FIRST     (with -DPINS) the PS scans the pins before it marks the buffer it is
 *                        about to reuse: a learner that loaded an old PUB pins that buffer and
 *                        validates it between the scan and the mark, and the PS then writes
 *                        into a buffer a learner computes on (the no-torn-read assertion).
 *
 * ABSTRACTIONS
 * - Weights are ghost counters: buf[b].cnt[i*NSEQ+k] = how many times seq k of learner i is
 *   contained in buffer b's weights.  Applying copies the counters of the published buffer and
 *   adds one, as W' = rule(W, g) adds g to the history W carries.  The payload of a slot is the
 *   seq it was written for (sdata); the PS applies what the payload says.
 * - Each atomic control word (PUB, a slot's (state, seq), NEXT_SEQ) is read or written by its
 *   own Promela step.  A multi-word region written by one process while nobody may read it as
 *   valid (a new buffer's weights, its header, a WRITING slot's payload) is one step.  A reader
 *   copies a buffer in two steps (weights, then header): enough to see a concurrent write.
 * - Steps that touch only words no other live process reads or writes are merged with the
 *   step next to them (documented where it happens); this removes interleavings that no
 *   other process can tell apart, and crash points that equal a neighbouring one.
 * - Sequential consistency (SPIN's semantics): the implementation must use acquire/release
 *   atomics on the control words and PUB for the result to carry over.
 * - A buffer two versions behind the published one (version v-1 while PUB = v+1) is dead: the
 *   PS overwrites it next, a reader that loaded v-1 rejects its copy (PUB > v), so its content
 *   is reset to "garbage" (-1 / 0 / NEVER) when PUB moves on; this keeps old histories from
 *   multiplying the state space.  The one reader of it that does not check PUB again, a
 *   learner's restart, takes a max with larger terms (see the ledger asserts at the end).
 */

#ifndef NL
#define NL 2
#endif
#define S 2
#ifndef NSEQ
#define NSEQ 2
#endif
#ifndef LCRASH
#define LCRASH 2
#endif
#ifndef PCRASH
#define PCRASH 2
#endif
#ifndef NPULL
#define NPULL 1
#endif
#define K 3
#ifndef KW
#ifdef PINS
#define KW (PINS+2)
#else
#define KW 3
#endif
#endif
#define REUSE  254      /* a weight buffer's mark: being reused (or holds nothing valid) */
#define NOPIN  255      /* a learner's PIN word: no pin */
#define NS (NL*S)
#define NC (NL*NSEQ)

#define FREE    0
#define WRITING 1
#define READY   2
#define NEVER   255     /* ghost buffer version: garbage */

typedef Buffer {
  short A[NL];          /* header: applied table, highest seq of learner i applied (-1: none) */
  byte  hver            /* ghost: version whose header this buffer holds  */
};
typedef WBuf {
  byte  cnt[NC];        /* ghost "weights": applications of (i, k) contained in this buffer */
  byte  wver            /* ghost: version whose weights this buffer holds */
};

Buffer buf[K];          /* headers (the ledger; the optimizer state goes with it): v % 3 */
WBuf  wb[KW];           /* weight buffers */
byte  bv[KW];           /* each weight buffer's mark: the version it holds, or REUSE */
byte  wmap[K];          /* wmap[v % 3]: the weight buffer of version v (written before PUB) */
byte  pin[NL];          /* learner i's PIN word: the weight buffer it computes on, or NOPIN */
byte  lt[NL];           /* ghost: the version learner i loaded from PUB in U1, until U4 */
bool  pinned[NL];       /* ghost: learner i validated its pin and computes on that buffer */
byte  pub = 0;          /* PUB: the published version */

/* slot i*S+j of learner i: the control word (state, seq), and the payload */
byte  sstate[NS];
short sseq[NS];         /* kept when the slot goes back to FREE (-1: never used) */
short sdata[NS];        /* payload: the seq whose gradient the slot holds */
short next_seq[NL];     /* learner word NEXT_SEQ */

/* ghosts */
bool  begun[NC];        /* seq claimed (WRITING) at least once */
bool  committed[NC];    /* seq reached READY */
bool  discarded[NC];    /* seq recorded as discarded by the supervisor */
byte  nready = 0;       /* READY slots (only for the PS's idle wait and the end of the job) */
bool  ldn[NL];          /* learner i has pushed all its seqs */
byte  ldone = 0;        /* how many have */
byte  lcrash = LCRASH;  /* crash budgets */
byte  pcrash = PCRASH;

#define NB ((v + 1) % K)

/* weight buffer b is read by no pin, and by no pull that might still validate it */
#if NL > 2
#define DEAD(b) (pin[0] != (b) && pin[1] != (b) && pin[2] != (b) && \
                 lt[0] != bv[b] && lt[1] != bv[b] && lt[2] != bv[b])
#else
#define DEAD(b) (pin[0] != (b) && pin[1] != (b) && lt[0] != bv[b] && lt[1] != bv[b])
#endif

inline reset_buffer(b) {
  for (c : 0 .. NL-1) { buf[b].A[c] = -1 }
  buf[b].hver = NEVER;
  c = 0
}

/* ============================== the PS ============================== */

/* `stmt`, or instead of it a crash: the PS is killed and reaped, a new PS starts (ps_start).
   NB: `stmt` must not begin with an if/do that has an `else` option: SPIN would read that
   `else` against the crash option too, and block it while a crash is possible. */
#define PS_(stmt)  if :: atomic { pcrash > 0 -> pcrash-- }; goto ps_start :: stmt fi

/* P1, one slot: one atomic load of learner i's slot j's control word.  A READY slot whose seq
   is <= A[i] was applied by a PS killed before P4: release it (server.py ready()).  Otherwise
   keep the smallest READY seq > A[i]. */
#define STALE(j)  (sstate[i*S+j] == READY && sseq[i*S+j] <= buf[v%K].A[i])
#define BETTER(j) (sstate[i*S+j] == READY && sseq[i*S+j] > buf[v%K].A[i] && (!found || sseq[i*S+j] < k))
#define SCAN_SLOT(j) \
    if \
    :: STALE(j) -> sstate[i*S+j] = FREE; nready-- \
    :: BETTER(j) -> found = true; k = sseq[i*S+j]; bs = i*S+j \
    :: !STALE(j) && !BETTER(j) -> skip \
    fi

#define BUSY(l) (sstate[(l)*S] == READY || sstate[(l)*S+1] == READY || \
                 sstate[(l)*S] == WRITING || sstate[(l)*S+1] == WRITING)

/* version v+1: weights (ghost counters) into weight buffer nb, then the applied table into
   header NB.  NO TORN READ: no learner computes on (has validated a pin of) buffer nb. */
#define WRITE_WEIGHTS \
    for (c : 0 .. NL-1) { assert(!(pinned[c] && pin[c] == nb)) } \
    for (c : 0 .. NC-1) { wb[nb].cnt[c] = wb[cur].cnt[c] } \
    wb[nb].cnt[i*NSEQ + sdata[bs]]++; \
    wb[nb].wver = v + 1; \
    bv[nb] = v + 1
#define WRITE_HEADER \
    for (c : 0 .. NL-1) { buf[NB].A[c] = buf[v%K].A[c] } \
    buf[NB].A[i] = k; \
    buf[NB].hver = v + 1

proctype PS() {
  byte v, i, s, c, bs, cur, nb;
  short k;
  bool found;

ps_start:   /* a new PS: the old one was killed and reaped, its locals are gone */
  /* P0: adopt the published version and its weight buffer (two loads: only a PS writes
     wmap, and the last one is dead) ... */
  atomic { v = pub; cur = wmap[v%K]; nb = 0; i = 0; s = 0; c = 0; bs = 0; k = 0; found = false };
  /* ... clear the marks of every other weight buffer (a dead PS's mark, or the version it
     wrote and never published: neither is read as valid, this keeps the marks tidy) ... */
  PS_( atomic {
         c = 0;
         do
         :: c < KW -> if :: c != cur -> bv[c] = REUSE :: c == cur fi; c++
         :: c == KW -> c = 0; break
         od } );
  /* ... and release READY slots that it contains already (one atomic load + store each) */
  do
  :: s < NS ->
     PS_( atomic {
            if
            :: sstate[s] == READY && sseq[s] <= buf[v%K].A[s/S] -> sstate[s] = FREE; nready--
            :: !(sstate[s] == READY && sseq[s] <= buf[v%K].A[s/S])
            fi;
            s++ } )
  :: else -> break
  od;

ps_loop:
  /* The PS serves the learners round robin and never waits for one; with nothing to do it
     polls.  The model lets it take up any learner (a superset of round robin) that has a
     READY slot, or a WRITING one (a commit may land while it scans; reading a FREE slot and
     reading a WRITING one are alike to the PS, so scans that start earlier add nothing).
     Otherwise it waits; when every learner is done and no slot is READY the job is over. */
  if
#ifdef IDLE_CRASH
  :: atomic { pcrash > 0 -> pcrash-- }; goto ps_start   /* idle: nothing pending */
#endif
  :: atomic { ldone == NL && nready == 0 } -> goto ps_exit
  :: atomic { BUSY(0) -> i = 0; found = false }
  :: atomic { BUSY(1) -> i = 1; found = false }
#if NL > 2
  :: atomic { BUSY(2) -> i = 2; found = false }
#endif
  fi;
  /* P1: learner i's READY slot with the smallest seq > A[i], one word at a time */
  PS_( atomic { SCAN_SLOT(0) } );
  PS_( atomic { SCAN_SLOT(1) } );
#ifndef SCAN_ONCE
  /* Once a candidate k was found, scan again: the candidate's slot stays READY (only the PS
     frees a READY slot) and a slot committed during the second scan holds a seq > k (a
     learner commits its seqs one at a time, in order), so the second scan sees every READY
     seq < k.  The minimum it finds is the right one. */
  if
  :: found ->
     PS_( atomic { found = false; SCAN_SLOT(0) } );
     PS_( atomic { SCAN_SLOT(1) } )
  :: else
  fi;
#endif
  if
  :: !found -> goto ps_loop
  :: else
  fi;

  /* R: a weight buffer for version v+1: any one but the published one (the model leaves the
     choice free, a superset of the implementation's oldest-first).  R1 marks it REUSE, R2
     loads every learner's PIN, one word per step; a pinned buffer is given up (its mark
     stays: nobody asks for an unpublished buffer's version) and another one tried.  R1 and
     R2 are seq_cst on both sides, with the learner's pin store and its validation load:
     either the learner sees the mark, or the PS sees the pin. */
ps_choose:
#ifdef PINS
  atomic { select (nb : 0 .. KW-1); c = 0 };
  if
  :: nb == cur -> goto ps_choose
  :: else
  fi;
#else
  /* no pins: the implementation's choice, the oldest other buffer (REUSE first) */
  atomic {
    c = (cur + 1) % KW; nb = (cur + 2) % KW;
    if
    :: bv[c] == REUSE || (bv[nb] != REUSE && bv[c] < bv[nb]) -> nb = c
    :: else
    fi;
    c = 0 };
#endif
#ifdef BUG_SCAN_FIRST
  do
  :: c < PINS -> PS_( atomic { if :: pin[c] == nb -> c = 0; goto ps_choose :: pin[c] != nb -> c++ fi } )
  :: else -> c = 0; break
  od;
  PS_( atomic { bv[nb] = REUSE } );                           /* R1, too late */
#else
  PS_( atomic { bv[nb] = REUSE } );                           /* R1: mark */
#ifdef PINS
  do                                                          /* R2: scan the pins */
  :: c < PINS -> PS_( atomic { if :: pin[c] == nb -> c = 0; goto ps_choose :: pin[c] != nb -> c++ fi } )
  :: else -> c = 0; break
  od;
#else
  PS_( skip );     /* R2: every PIN is NOPIN; one step for the loads: the crash after R1 */
#endif
#endif

  /* P2: version v+1: the weights into buffer nb (and its mark v+1), the applied table into
     header NB, wmap[(v+1) % 3] = nb.  One step: nobody reads nb or NB as valid before P3
     (a learner compares nb's mark with a version <= PUB, and a stale reader that loads
     wmap[(v+1) % 3] for version v-2 finds a mark that is not v-2), and a crash between the
     writes leaves them as unusable as a crash before them (the next PS rewrites them). */
  PS_( d_step {
         assert(sdata[bs] == k);          /* the payload is the committed one, untouched */
         WRITE_WEIGHTS;
         wmap[(v+1) % K] = nb;
#ifndef BUG_PUBLISH_FIRST
         WRITE_HEADER;
#endif
         c = 0 } );
  /* P3: publish: the commit point */
  PS_( atomic {
         pub = v + 1;
         assert(committed[i*NSEQ + k]);        /* only committed seqs are applied */
         assert(!discarded[i*NSEQ + k]);       /* never a discarded one */
         assert(wb[nb].cnt[i*NSEQ + k] == 1);  /* never twice */
         reset_buffer((v + 2) % K);            /* header of version v-1 is dead now (see the top) */
         /* and so are the weights in every buffer nobody may read any more: not the new or
            the published one, holding a version < v (a copy of it fails its PUB check) or
            none, that no pin names and no pulling learner has loaded the version of */
         for (c : 0 .. KW-1) {
           if
           :: c != nb && c != cur && wb[c].wver != NEVER && (bv[c] == REUSE || bv[c] < v)
              && DEAD(c) ->
              for (s : 0 .. NC-1) { wb[c].cnt[s] = 0 }
              wb[c].wver = NEVER
           :: else
           fi
         }
         c = 0; s = 0;
         skip } );
#ifdef BUG_PUBLISH_FIRST
  PS_( d_step { WRITE_HEADER; c = 0 } );
#endif
  /* P4: release the slot (its seq stays in the control word) */
  PS_( atomic { sstate[bs] = FREE; nready--; v++; cur = nb; nb = 0; i = 0; found = false; k = 0; bs = 0 } );
  goto ps_loop;

ps_exit:
  /* the end of the job: exactly-once, and what the ledger derives, committed =
     [0, NEXT_SEQ) minus discarded (gadei/ledger.py committed()) */
  atomic {
    for (c : 0 .. NC-1) {
      if
      :: committed[c] -> assert(wb[wmap[pub%K]].cnt[c] == 1 && !discarded[c])
      :: else         -> assert(wb[wmap[pub%K]].cnt[c] == 0)
      fi;
      assert(committed[c] == ((c % NSEQ) < next_seq[c / NSEQ] && !discarded[c]))
    }
    for (c : 0 .. NL-1) { assert(buf[pub%K].A[c] < next_seq[c]) }
    c = 0
  }
}

/* ======================= learners and the supervisor ======================= */

/* `stmt`, or instead of it a crash: the supervisor kills and reaps learner i (l_crashed) */
#define L_(stmt)  if :: atomic { lcrash > 0 -> lcrash-- }; goto l_crashed :: stmt fi

/* L2, first store: slot j = (WRITING, k) */
#define CLAIM \
    assert(!begun[i*NSEQ + k]);           /* a seq is never handed out twice */ \
    begun[i*NSEQ + k] = true; \
    sstate[i*S+j] = WRITING; sseq[i*S+j] = k

proctype Learner(byte i) {
  byte j, v, c;
  short k = 0, t;

l_loop:
#ifdef PINS
  /* U: the zero-copy pull (Worker.pull, Arena.pin), before each claim.  U1 loads PUB, U2 the
     weight buffer of that version, U3 stores PIN = that buffer (seq_cst; it replaces, so
     releases, the previous pin: the learner computes on nothing during a pull), U4 loads the
     buffer's mark (seq_cst) and accepts the pin iff it still says that version, else
     retries.  From U4 to its next U3 the learner computes on the buffer: pinned[i]. */
  if
  :: i < PINS && k < NSEQ ->
l_pull:
     atomic { t = pub; lt[i] = t };                        /* U1 */
     atomic { j = wmap[t % K] };                           /* U2 */
     L_( atomic { pinned[i] = false; pin[i] = j } );       /* U3: pin */
     atomic {                                              /* U4: validate */
       if
       :: bv[j] == t -> pinned[i] = true; assert(wb[j].wver == t); t = 0; j = 0; lt[i] = NEVER
       :: else -> t = 0; j = 0; lt[i] = NEVER; goto l_pull
       fi }
  :: else
  fi;
#endif
  /* L1: wait for a FREE slot of its own (only the PS frees one).  L1's load and L2's first
     store are one step: nobody else changes a FREE slot of a live learner, so a crash between
     them equals a crash before the load.  A crash here (waiting, or computing the next
     gradient) leaves no WRITING slot and NEXT_SEQ = k, so the restart resumes at the same k:
     only -DIDLE_CRASH spends crash budget on it. */
  if
  :: atomic { k >= NSEQ -> ldn[i] = true; ldone++ }; goto l_end
#ifdef IDLE_CRASH
  :: atomic { k < NSEQ && lcrash > 0 -> lcrash-- }; goto l_crashed
#endif
  :: atomic { k < NSEQ && sstate[i*S+0] == FREE -> j = 0; CLAIM }
  :: atomic { k < NSEQ && sstate[i*S+1] == FREE -> j = 1; CLAIM }
  fi;
  /* L2, second store: NEXT_SEQ = k+1.  L3: the payload and meta, in the same step: nobody
     reads a WRITING slot's payload, so a crash before or after it has the same effect. */
  L_( atomic { next_seq[i] = k + 1; sdata[i*S+j] = k } );
  /* L4: slot = (READY, k): the learner's commit point; then on with k+1 */
  L_( atomic { sstate[i*S+j] = READY; committed[i*NSEQ + k] = true; nready++; k++; j = 0 } );
  goto l_loop;

l_crashed:
  /* The supervisor has killed and reaped learner i; it discards the WRITING slots.  The new
     incarnation starts at max(NEXT_SEQ, 1 + max seq in its slots, A_published[i] + 1)
     (worker.py restart_seq()).  Nobody else writes those slot words and NEXT_SEQ now, so one
     step reads them; PUB and then the published header are read apart.  The supervisor
     also clears the dead learner's PIN (nothing computes on that buffer any more). */
  atomic {
    pin[i] = NOPIN; pinned[i] = false; lt[i] = NEVER;
    for (c : 0 .. S-1) {
      if
      :: sstate[i*S+c] == WRITING -> discarded[i*NSEQ + sseq[i*S+c]] = true; sstate[i*S+c] = FREE
      :: else
      fi
    }
    k = next_seq[i];
    for (c : 0 .. S-1) {
      if :: sseq[i*S+c] + 1 > k -> k = sseq[i*S+c] + 1 :: else fi
    }
    c = 0; j = 0;
    v = pub
  };
  atomic {
    t = buf[v%K].A[i] + 1;
    assert(t <= k);        /* the published-ledger term never decides: NEXT_SEQ and the slots do */
    if :: t > k -> k = t :: else fi;
    t = 0; v = 0 };
  goto l_loop;

l_end:
  atomic { pin[i] = NOPIN; pinned[i] = false }    /* done: the supervisor clears its pin */
}

/* ============================== a puller ============================== */

/* A copy (Arena.pull): load PUB, its weight buffer b, b's mark (it must say v, else retry),
   copy b's weights, copy header v % 3; accept iff b's mark still says v (the PS marks a
   buffer before it writes into it) and PUB <= v + 1 (the header of v is rewritten for v + 3
   only, after v + 2 is published). */
proctype Reader() {
  byte v, b, w, h, n = 0;
  do
  :: n < NPULL ->
     v = pub;
     b = wmap[v%K];
     if
     :: bv[b] == v ->
        w = wb[b].wver;              /* copy the weights ... */
        h = buf[v%K].hver;           /* ... and the header   */
        if
        :: bv[b] == v ->
           atomic {
             if
             :: pub <= v + 1 -> assert(w == v && h == v); n++   /* accepted: never torn */
             :: else                                             /* retried */
             fi }
        :: else                                                  /* retried */
        fi
     :: else                                                     /* retried */
     fi;
     atomic { v = 0; b = 0; w = 0; h = 0 }
  :: else -> break
  od
}

init {
  byte c;
  atomic {
    for (c : 0 .. NL-1) { buf[0].A[c] = -1; pin[c] = NOPIN; lt[c] = NEVER }
    reset_buffer(1);
    reset_buffer(2);
    buf[0].hver = 0;
    for (c : 0 .. KW-1) { bv[c] = REUSE; wb[c].wver = NEVER }
    bv[0] = 0; wb[0].wver = 0; wmap[0] = 0;
    for (c : 0 .. NS-1) { sseq[c] = -1; sdata[c] = -1 }
    run PS();
    for (c : 0 .. NL-1) { run Learner(c) }
#ifdef READER
    run Reader();
#endif
    c = 0
  }
}
