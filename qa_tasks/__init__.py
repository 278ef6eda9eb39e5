"""Workloads: real tasks from the papers gadei implements, each with a small generated variant.

Each is a task in the sense of `gadei.task` (build_model, batches, loss, evaluate), registered
under the `gadei.tasks` entry-point group in setup.py; `gadei tasks` lists them. Options select
"real" data (from `data_dir`, else $GADEI_DATA) or the small "generated" variant (`data`).
"""
