"""Rate answers from a running route-llm the way a user would, so the learning loop can be walked without users.

Sends ``--count`` chat requests (default 90) to a running ``route-llm serve`` (``--demo`` is enough: the answers
are a stand-in's fixed text, the routing is real) over plain HTTP, then rates each answer with ``POST
/v1/feedback``. The simulated user knows which prompts are hard (proofs, derivations, designs, algorithms with
bounds) and which are everyday (greetings, haiku, short translations, look-ups):

* an answer from the cheapest tier is **bad** for a hard prompt and **good** for an everyday one;
* an answer from a dearer tier is **good** (it could answer anything);
* ``--noise`` flips that share of ratings at random (seeded), as real users disagree.

Only the base dependencies are needed (httpx), so it runs from a fresh ``pip install route-llm``:

    route-llm serve --demo --config walkthrough.yaml     # with feedback.store_prompts: true
    python scripts/rate_demo.py --base-url http://127.0.0.1:8000

See docs/learning-loop.md for the whole walk: store prompts, rate, export, retrain, reload.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

EVERYDAY = [
    "Say good morning to {x} in a friendly way.",
    "Write a haiku about {x}.",
    "Translate 'thank you very much' into {lang}.",
    "Give me a synonym for '{word}'.",
    "What is the capital of {country}?",
    "Suggest a name for a cat that likes {x}.",
    "Write a two-line birthday wish for my friend who loves {x}.",
    "Is {x} spelled correctly? Answer yes or no.",
]
HARD = [
    "Prove that there are infinitely many primes p with p = {k} mod {m} where the residue is coprime to the "
    "modulus, step by step.",
    "Derive the closed form of the sum of i^{k} for i from 1 to n and prove it by induction.",
    "Design a fault-tolerant distributed {system} for {scale} users: partitioning, replication, consistency "
    "model, failure handling, and how each choice fails.",
    "Write a function that finds the {k}th smallest element in the union of {m} sorted arrays in O(k log m) time, "
    "and prove the bound.",
    "Compare leader-based replication and quorum writes for a {system}, and give an execution where each one "
    "loses an acknowledged write.",
    "Solve the recurrence T(n) = {k}T(n/{m}) + n log n exactly and explain which master theorem case applies.",
]
FILL = {
    "x": ["the sea", "autumn leaves", "my neighbour", "coffee", "rainy days", "mountains", "old books", "jazz",
          "the moon", "bicycles"],
    "lang": ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch"],
    "word": ["happy", "quick", "bright", "calm", "tired", "large"],
    "country": ["France", "Japan", "Kenya", "Peru", "Canada", "Norway", "Vietnam"],
    "system": ["key-value store", "message queue", "lock service", "metrics pipeline", "chat backend"],
    "scale": ["ten million", "a billion", "fifty thousand"],
}


def prompts(count: int, seed: int) -> list[tuple[str, bool]]:
    """``count`` distinct (prompt, hard) pairs, about 45% hard, in a seeded order."""
    rng = random.Random(seed)
    chosen: dict[str, bool] = {}
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > 1000 * count:
            raise ValueError(f"cannot make {count} distinct prompts")
        hard = rng.random() < 0.45
        template = rng.choice(HARD if hard else EVERYDAY)
        values: dict[str, object] = {name: rng.choice(options) for name, options in FILL.items()}
        values |= {"k": rng.randint(2, 9), "m": rng.randint(3, 12)}
        chosen.setdefault(template.format(**values), hard)
    return list(chosen.items())


def rate(tier: str, hard: bool, cheapest: str) -> str:
    """The simulated user's verdict on an answer from ``tier``."""
    return "bad" if hard and tier == cheapest else "good"


def run(base_url: str, count: int, *, api_key: str | None, cheapest: str, noise: float, seed: int,
        model: str, wait: float) -> Counter[str]:
    """Send, rate, and count the (tier, rating) pairs."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    http = httpx.Client(base_url=base_url, headers=headers, timeout=60)
    deadline = time.monotonic() + wait
    while True:
        try:
            if http.get("/health/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} did not answer /health/ready within {wait:.0f} s: is route-llm serve "
                               "running there?")
        time.sleep(0.5)
    rng = random.Random(seed + 1)
    counts: Counter[str] = Counter()
    for prompt, hard in prompts(count, seed):
        answer = http.post("/v1/chat/completions",
                           json={"model": model, "messages": [{"role": "user", "content": prompt}]})
        if answer.status_code != 200:
            raise RuntimeError(f"chat request answered {answer.status_code}: {answer.text[:300]}")
        tier = answer.headers.get("x-route-llm-tier", "")
        rating = rate(tier, hard, cheapest)
        if rng.random() < noise:
            rating = "good" if rating == "bad" else "bad"
        sent = http.post("/v1/feedback", json={"request_id": answer.headers["x-request-id"], "rating": rating})
        if sent.status_code != 200:
            raise RuntimeError(f"POST /v1/feedback answered {sent.status_code}: {sent.text[:300]}")
        counts[f"{tier}/{rating}"] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the running route-llm (no /v1)")
    p.add_argument("--count", type=int, default=90, help="requests to send and rate (1-300)")
    p.add_argument("--api-key", default=None, help="a proxy key, if the server has server.api_keys")
    p.add_argument("--model", default="auto", help="the routed model name to ask for")
    p.add_argument("--cheapest", default="weak", help="the cheapest tier's name, as x-route-llm-tier reports it")
    p.add_argument("--noise", type=float, default=0.0, help="share of ratings flipped at random (0-0.5)")
    p.add_argument("--seed", type=int, default=0, help="which prompts, in which order, and which ratings flip")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server to be ready")
    args = p.parse_args(argv)
    url = urlparse(args.base_url)
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
        p.error(f"--base-url must be http(s)://HOST:PORT without a path, got {args.base_url!r}")
    if not 1 <= args.count <= 300:
        p.error(f"--count must be between 1 and 300 (the distinct prompts it can make), got {args.count}")
    if not 0.0 <= args.noise <= 0.5:
        p.error(f"--noise must be between 0 and 0.5, got {args.noise}")
    if not args.wait >= 0:
        p.error(f"--wait cannot be negative, got {args.wait}")
    if not args.cheapest or not args.model:
        p.error("--cheapest and --model cannot be empty")
    try:
        counts = run(args.base_url.rstrip("/"), args.count, api_key=args.api_key, cheapest=args.cheapest,
                     noise=args.noise, seed=args.seed, model=args.model, wait=args.wait)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"rate_demo: {exc}", file=sys.stderr)
        sys.exit(1)
    summary = ", ".join(f"{case}: {n}" for case, n in sorted(counts.items()))
    print(f"rated {sum(counts.values())} answers ({summary})")
    print("next: route-llm feedback export --config <your config.yaml> --out feedback.jsonl")


if __name__ == "__main__":
    main()
