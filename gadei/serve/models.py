"""Trained classifiers in memory: loaded once from their checkpoint, kept in a bounded LRU cache.

A model is built the way `gadei eval` builds one: the job configuration saved in the checkpoint
names the task by its spec and options, gadei's loader builds that task (reading the classifier's
training CSV for the vocabulary and the class names) and its model, and the weights are copied
in. The service itself never imports the task's module.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

MAX_CLASSES_SHOWN = 10


class Loaded:
    """One classifier ready to classify: its task (tokenizer, vocabulary, class names) and model."""

    def __init__(self, folder: Path):
        from gadei.evaluate import Evaluator, job_of
        # the CSV beside the checkpoint, wherever the state folder lives now
        cfg, weights = job_of(folder, path=str(folder / "training.csv"), test_path="")
        evaluator = Evaluator(cfg)
        self.task = evaluator.task
        self.model = evaluator.load(weights).eval()
        self.classes = list(self.task.label_names)

    @torch.no_grad()
    def classify(self, texts: list[str]) -> list[list[dict]]:
        """For each text, its classes by decreasing confidence (softmax), at most 10."""
        tokens, lengths = self.task.encode_texts(texts)
        probs = torch.softmax(self.model(tokens, lengths), dim=1)
        k = min(MAX_CLASSES_SHOWN, probs.shape[1])
        top, idx = probs.topk(k, dim=1)
        return [[{"class_name": self.classes[j], "confidence": float(p)} for p, j in zip(ps.tolist(), js.tolist())]
                for ps, js in zip(top, idx)]


class ModelCache:
    """At most `size` loaded classifiers, least recently used evicted first. A classifier is
    loaded by one thread while others asking for it wait; other classifiers are served meanwhile."""

    def __init__(self, size: int = 16):
        if size < 1:
            raise ValueError(f"the model cache must hold at least 1 model, not {size}")
        self.size = size
        self.models: OrderedDict[str, Loaded] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def get(self, cid: str, folder: Path) -> Loaded:
        with self.lock:
            if cid in self.models:
                self.models.move_to_end(cid)
                return self.models[cid]
            gate = self.loading.setdefault(cid, threading.Lock())
        with gate:
            with self.lock:
                if cid in self.models:
                    return self.models[cid]
            loaded = Loaded(folder)
            with self.lock:
                self.models[cid] = loaded
                self.loading.pop(cid, None)
                while len(self.models) > self.size:
                    self.models.popitem(last=False)
            return loaded

    def drop(self, cid: str) -> None:
        with self.lock:
            self.models.pop(cid, None)
