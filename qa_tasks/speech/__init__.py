"""Speech: `asr`, connected digits from FSDD with CTC blank-triggered layer skipping.

    fsdd.py       FSDD recordings, joined into connected-digit utterances; log-mel features
    ctc_skip.py   the encoder with an intermediate CTC head whose blanks skip the top layers
    asr.py        the task
"""
