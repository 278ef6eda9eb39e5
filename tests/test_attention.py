"""qa_tasks/text_classification/attention.py: attention heat maps, from Python and from a checkpoint."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qa_tasks.text_classification.attention import attention_weights, render_attention
from qa_tasks.text_classification.kim_cnn import KimCNN
from qa_tasks.text_classification.nlc import NLC
from tests.helpers import run_gadei

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_render_attention_writes_png(tmp_path):
    task = NLC(data="generated", embed_dim=16, hidden=8, attention_dim=8, hops=2, mlp_hidden=16)
    torch.manual_seed(0)
    model = task.build_model()
    rows = attention_weights(task, model, ["what is my balance", "set an alarm for seven please"], hop=1)
    assert [len(t) for t, _, _ in rows] == [4, 6]
    assert all(abs(float(w.sum()) - 1.0) < 1e-5 for _, w, _ in rows)
    path = render_attention(task, model, ["what is my balance", "zzz unknown words"], tmp_path / "a" / "att.png")
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(TypeError, match="no attention"):
        render_attention(NLC(data="generated", model="cnn"), KimCNN(5, 2), ["x"], tmp_path / "b.png")
    with pytest.raises(ValueError, match="hop must be"):
        attention_weights(task, model, ["x"], hop=5)


def attention_tool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qa_tasks.text_classification.attention", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
def test_attention_tool_draws_a_trained_nlc_checkpoint(tmp_path):
    out = tmp_path / "nlc"
    r = run_gadei("train", "--task", "nlc", "--data", "generated", "--learners", 2, "--steps", 20,
                  "--optimizer", "adam", "--lr", "1e-3", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    png = tmp_path / "att.png"
    r = attention_tool("--checkpoint", out, "--out", png, "--sentence", "set an alarm please")
    assert r.returncode == 0, r.stderr
    assert "attention of 1 sentences written" in r.stdout
    assert png.read_bytes()[:8] == PNG


@pytest.mark.timeout(300)
def test_attention_tool_says_why_a_model_without_attention_cannot_be_drawn(tmp_path):
    out = tmp_path / "cnn"
    r = run_gadei("train", "--task", "nlc", "--data", "generated", "--model", "cnn", "--learners", 1,
                  "--steps", 2, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = attention_tool("--checkpoint", out, "--out", tmp_path / "att.png")
    assert r.returncode == 2
    assert "has no attention to draw" in r.stderr and "--model selfattn" in r.stderr
    assert not (tmp_path / "att.png").exists()
