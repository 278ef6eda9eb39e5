"""Answer selection: `qa`, InsuranceQA V2 with shared-weight CNN towers (Feng et al. 2015).

    insuranceqa.py   the published files, read and cached (and a generated corpus)
    word2vec.py      word vectors trained on the corpus, cached
    model.py         similarities, the ranking loss, the tower and the scorer
    pools.py         top-1 over candidate pools, and the bag-of-words baseline
    qa.py            the task
"""
