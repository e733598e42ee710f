"""Measure conversation-aware routing: two-turn conversations under `router.context: last_user` and `conversation`.

Two sets are built from the router data: a hard first turn (Arena-Hard) followed by a terse follow-up ("now add
TTL expiry"), and an easy first turn (AlpacaEval prompts the weak model handled, under 200 characters) followed by
an easy follow-up. For each conversation the first turn is routed alone, the follow-up under both modes, with the
configured operating point; reported per set: the share of follow-ups on the top tier, and tier consistency (the
follow-up lands on the first turn's tier). With ``--bench``, the decider's time for a 4-turn conversation against a
single turn (p50 over repeats): earlier turns cached (a follow-up on the worker that saw the conversation) and cold.

    python scripts/eval_context.py --data-dir ../shared/data/router [--config config.yaml] [--n 100] [--bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from proxy.routing.decider import Decider
from proxy.settings import load_settings
from router import Router
from router.policy import conversation_score

HARD_FOLLOW_UPS = [
    "now add TTL expiry", "make it thread-safe", "add unit tests", "can you make it faster?", "now do it in Go",
    "explain the second step", "what about edge cases?", "shorter please", "add type hints", "why?",
    "handle errors too", "now make it async", "ok, and the complexity?", "refactor it into a class",
    "use a heap instead", "give an example", "continue", "fix the bug you just introduced", "and in Rust?",
    "add logging",
]
EASY_FOLLOW_UPS = [
    "thanks!", "and what about Germany?", "can you say that more simply?", "thank you, that helps", "one more?",
    "ok", "great, and a second example?", "in one sentence please", "nice", "what does that word mean?",
    "cool, anything else?", "and for kids?", "shorter", "got it", "and in French?",
]
ANSWER = "Sure - here is my answer to that. (The assistant turn is not scored by the router.)"


def _read(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:  # not splitlines(): prompts may hold U+2028 and friends
        return [json.loads(line) for line in handle if line.strip()]


def conversations(data_dir: Path, n: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    hard = [r["prompt"] for r in _read(data_dir / "aux_hard.jsonl")]
    easy = [r["prompt"] for r in _read(data_dir / "chat_alpacaeval.jsonl") if r.get("weak_ok") == 1
            and len(r["prompt"]) < 200]
    return {"hard + terse follow-up": [(p, rng.choice(HARD_FOLLOW_UPS)) for p in rng.sample(hard, n)],
            "easy + easy follow-up": [(p, rng.choice(EASY_FOLLOW_UPS)) for p in rng.sample(easy, n)]}


def measure(decider: Decider, router: Router, sets: dict[str, list[tuple[str, str]]],
            decays: list[float]) -> dict[str, Any]:
    texts = sorted({t for convs in sets.values() for conv in convs for t in conv})
    score = dict(zip(texts, router.score(texts)))
    policy, top = decider.default_policy, len(decider.tiers) - 1
    quantiles = router.meta.quantiles
    out: dict[str, Any] = {"cuts": [round(c, 4) for c in policy.cuts]}
    for name, convs in sets.items():
        first = [policy.tier_index(score[a]) for a, _ in convs]
        modes = {"last_user": [policy.tier_index(score[b]) for _, b in convs]}
        for decay in decays:
            modes[f"conversation decay={decay}"] = [
                policy.tier_index(conversation_score([score[a], score[b]], decay, quantiles)) for a, b in convs]
        out[name] = {"n": len(convs), "first_turn_top_share": round(sum(t == top for t in first) / len(convs), 3)}
        for mode, second in modes.items():
            out[name][mode] = {
                "follow_up_top_share": round(sum(t == top for t in second) / len(convs), 3),
                "tier_consistency": round(sum(a == b for a, b in zip(first, second)) / len(convs), 3),
            }
    return out


async def bench(decider: Decider, texts: list[str], repeats: int) -> dict[str, float]:
    target = decider.resolve(next(iter(decider.settings.aliases)))
    four = texts[:4]

    async def p50(make: Any) -> float:
        times = []
        for i in range(repeats):
            batch = make(i)
            start = time.perf_counter()
            await decider.decide(target, batch)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    one = await p50(lambda i: [four[-1]])
    decider.conversation = True
    warm = await p50(lambda i: four)  # after the first repeat, the three earlier turns come from the cache
    cold = await p50(lambda i: [f"{t} ({i})" for t in four[:-1]] + [four[-1]])  # new history every time
    return {"single_turn_ms_p50": round(one, 3), "four_turns_cached_ms_p50": round(warm, 3),
            "four_turns_cold_ms_p50": round(cold, 3), "added_cached_ms": round(warm - one, 3),
            "added_cold_ms": round(cold - one, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--n", type=int, default=100, help="conversations per set (the easy set has 104 candidates)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--decay", type=float, nargs="+", default=None, help="decays to compare (default: the config's)")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    settings = load_settings(args.config)
    router = Router.load(settings.router.model_dir, threads=settings.router.threads)
    decider = Decider(settings, router)
    sets = conversations(args.data_dir, args.n, args.seed)
    result = measure(decider, router, sets, args.decay or [settings.router.context_decay])
    result["router_model"] = router.version
    if args.bench:
        a, b = sets["hard + terse follow-up"][0]
        c, d = sets["hard + terse follow-up"][1]
        result["bench"] = asyncio.run(bench(decider, [a, b, c, d], args.repeats))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
