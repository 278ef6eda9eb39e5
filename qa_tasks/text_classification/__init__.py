"""Text classification: `qc` (TREC questions) and `nlc` (CLINC150 intents with out-of-scope queries).

    text.py            tokenizer, vocabulary, padding and sharding (shared by both tasks)
    sentence_task.py   what both tasks share: data encoded once, batches, a split's logits
    trec.py            TREC files (and a generated variant)
    clinc.py           CLINC150 file (and a generated variant)
    kim_cnn.py         Kim's (2014) CNN: qc's model, nlc's baseline
    self_attentive.py  Lin et al.'s (2017) self-attentive sentence embedding: nlc's model
    qc.py, nlc.py      the tasks
    attention.py       heat maps of a trained nlc model's attention (a command line tool)
"""
