"""Workloads: real tasks from the papers gadei implements, each with a small generated variant.

Each is a task in the sense of `gadei.task` (build_model, batches, loss, evaluate), registered
under the `gadei.tasks` entry-point group in setup.py; `gadei tasks` lists them. Options select
"real" data (from `data_dir`, else $GADEI_DATA) or the small "generated" variant (`data`).

    text_classification/   qc (TREC) and nlc (CLINC150)
    answer_selection/      qa (InsuranceQA)
    speech/                asr (FSDD connected digits)
    listops/               lra (ListOps at long range)
    common.py              data directories, caches, whole-file writes, damaged-file errors, option checks
    plain.py               one task in one process with torch's Adam: the reference loop
"""
