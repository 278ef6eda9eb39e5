"""Accuracy of a `gadei serve` classifier on a `text,class` CSV, through classify_collection
(30 texts a request), as a client sees it:

    python -m bench.serve_eval --url http://127.0.0.1:8080 --key KEY --classifier ID --csv trec_test.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import urllib.request


def classify_collection(url: str, key: str, cid: str, texts: list[str]) -> list[str]:
    """The top class of each text, 30 texts a request."""
    out = []
    for i in range(0, len(texts), 30):
        body = json.dumps({"collection": [{"text": t} for t in texts[i:i + 30]]}).encode()
        req = urllib.request.Request(f"{url}/v1/classifiers/{cid}/classify_collection", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            out += [c["top_class"] for c in json.load(r)["collection"]]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--csv", required=True)
    a = p.parse_args(argv)
    with open(a.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    predicted = classify_collection(a.url, a.key, a.classifier, [t for t, _ in rows])
    correct = sum(p == c for p, (_, c) in zip(predicted, rows))
    print(json.dumps({"rows": len(rows), "correct": correct, "accuracy": round(correct / len(rows), 4)}))


if __name__ == "__main__":
    main()
