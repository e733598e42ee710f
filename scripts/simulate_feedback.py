"""Proof that the router learns from feedback: replay a labelled domain, rate, retrain, reload, measure.

1. Starts the Gemini stand-in and ``route-llm serve`` (the real CLI; ``feedback.store_prompts: true``, an
   admin key) on the current model.
2. Scores the domain's held-out prompts through ``POST /v1/route`` (the "before" APGR).
3. Replays the domain's other prompts as chat requests through the OpenAI SDK; for each answer, a simulated
   user rates it from the data set's labels: an answer from the weak tier is "good" when the weak model got
   that prompt right (its score >= 0.5), one from the strong tier when the strong model did.
4. ``route-llm feedback export``, then ``route-llm retrain`` (fast mode) on the exported rows.
5. Points the config at the new model directory and calls ``POST /admin/reload``.
6. Scores the held-out prompts again through ``/v1/route`` (the "after" APGR), and the whole base validation
   set with the old and the new model (both share one encoder, so one embedding pass, cached, serves both).

Held-out = the domain's rows in the base validation split (:func:`training.data.assign_split`), so neither
the retrain nor the base training ever saw them; traffic = the domain's other rows.

    python scripts/simulate_feedback.py --data-dir ../shared/data/router --domain mbpp --work-dir runs/simulate
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.standin import StandInServer, free_port  # noqa: E402
from router import Router  # noqa: E402
from router.head import Head  # noqa: E402
from training import data, encoder, evaluate  # noqa: E402
from training.metrics import summarize  # noqa: E402
from training.pipeline import sigmoid  # noqa: E402
from training.retrain import RetrainConfig, sample_rows  # noqa: E402

ADMIN = "simulate-admin"
ROUTE_LLM = Path(sys.executable).with_name("route-llm")


def write_config(path: Path, work: Path, model_dir: Path, standin: str) -> None:
    models = {tier: {"name": f"gemini-1.5-{name}", "model": f"gemini/gemini-1.5-{name}", "api_base": standin,
                     "api_key": "simulated", "timeout": 30} for tier, name in (("weak", "flash"), ("strong", "pro"))}
    config = {"models": models, "router": {"model_dir": str(model_dir), "strong_share": 0.3},
              "aliases": {"auto": {}}, "server": {"admin_keys": [ADMIN], "limit_requests_per_minute": None},
              "documents": {"storage_dir": str(work / "files")},
              "feedback": {"store_prompts": True}, "upstream": {"warmup": False}}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def route_scores(http: httpx.Client, prompts: list[str]) -> tuple[np.ndarray, str]:
    """Scores from the serving proxy (POST /v1/route), and the router version it reports."""
    scores, version = [], ""
    for prompt in prompts:
        r = http.post("/v1/route", json={"model": "auto", "prompt": prompt})
        r.raise_for_status()
        scores.append(r.json()["score"])
        version = r.headers["x-route-llm-router-version"]
    return np.array(scores), version


def replay(base_url: str, rows: list[data.Row], workers: int) -> dict[str, int]:
    """Chat requests for the traffic prompts, each rated from the labels as a user would rate the answer."""
    import openai

    counts: dict[str, int] = {}

    def one(row: data.Row) -> str:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=2)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": row.prompt}])
        raw.parse()
        tier = raw.headers["x-route-llm-tier"]
        outcome = row.weak if tier == "weak" else row.strong
        rating = "good" if (outcome or 0.0) >= 0.5 else "bad"
        r = httpx.post(base_url + "/v1/feedback", json={"request_id": raw.headers["x-request-id"], "rating": rating},
                       timeout=30)
        r.raise_for_status()
        return f"{tier}/{rating}"

    with ThreadPoolExecutor(workers) as pool:
        for case in pool.map(one, rows):
            counts[case] = counts.get(case, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--domain", default="mbpp", choices=[s for s in data.LABELLED])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "router" / "model", help="the current model")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "simulate")
    parser.add_argument("--workers", type=int, default=4, help="concurrent simulated users")
    parser.add_argument("--retrain-args", default="", help="extra arguments for route-llm retrain")
    args = parser.parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    rows = data.load(args.data_dir)
    data.assign_split(rows)
    domain = [r for r in rows if r.source == args.domain]
    held = [r for r in domain if r.val]
    traffic = [r for r in domain if not r.val]
    print(f"domain {args.domain}: {len(traffic)} prompts replayed as traffic, {len(held)} held out", flush=True)

    standin = StandInServer().start()
    config = work / "config.yaml"
    write_config(config, work, args.model_dir.resolve(), standin.base_url)
    store = work / "files"
    if store.exists():
        import shutil

        shutil.rmtree(store)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(work / "serve.log", "wb") as log:
        server = subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(config), "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        http = httpx.Client(base_url=base_url, timeout=60)
        deadline = time.time() + 300
        while True:
            try:
                if http.get("/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"route-llm serve did not start; see {work / 'serve.log'}")
            time.sleep(0.5)

        before, version_before = route_scores(http, [r.prompt for r in held])
        cases = replay(base_url, traffic, args.workers)
        print(f"replayed and rated {len(traffic)} requests: {cases} ({time.time() - t0:.0f}s)", flush=True)

        exported = work / "feedback.jsonl"
        subprocess.run([str(ROUTE_LLM), "feedback", "export", "--store", str(store), "--out", str(exported)],
                       check=True, env=env)
        models = work / "models"
        retrain = subprocess.run([str(ROUTE_LLM), "retrain", "--feedback", str(exported), "--data-dir",
                                  str(args.data_dir), "--model-dir", str(args.model_dir), "--out-dir", str(models),
                                  "--work-dir", str(work / "retrain"), *args.retrain_args.split()],
                                 env=env, capture_output=True, text=True)
        print(retrain.stdout, flush=True)
        print(retrain.stderr.strip().splitlines()[-1] if retrain.stderr.strip() else "", flush=True)
        if retrain.returncode != 0:
            raise SystemExit(f"retrain did not produce a model (exit {retrain.returncode})")
        new_dir = max((p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)

        write_config(config, work, new_dir, standin.base_url)
        reloaded = http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
        print(f"reload: {reloaded.status_code} {reloaded.json()}", flush=True)
        reloaded.raise_for_status()
        after, version_after = route_scores(http, [r.prompt for r in held])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    # The base validation set, scored by the old and the new head on one (cached) embedding pass.
    old, new = Router.load(args.model_dir), Router.load(new_dir)
    # The same validation sample retrain judges by (up to 600 rows per source), so its embeddings are cached.
    val = sample_rows([r for r in rows if r.val], RetrainConfig().val_per_source, RetrainConfig().seed)
    x = encoder.cached_inputs(old.classifier, [r.prompt for r in val], work / "retrain" / "cache", old.path)
    assert old.meta.head_file is not None and new.meta.head_file is not None
    prompts = [r.prompt for r in val]
    base_before = evaluate.per_source(
        val, sigmoid(Head.load(old.path / old.meta.head_file).logits(x, prompts)).tolist()
    )
    base_after = evaluate.per_source(
        val, sigmoid(Head.load(new.path / new.meta.head_file).logits(x, prompts)).tolist()
    )

    weak, strong = [r.weak for r in held], [r.strong for r in held]
    domain_before = summarize(before.tolist(), weak, strong)  # type: ignore[arg-type]
    domain_after = summarize(after.tolist(), weak, strong)  # type: ignore[arg-type]
    lines = [f"| set | n | APGR before ({version_before}) | APGR after ({version_after}) | change |",
             "|---|---|---|---|---|",
             f"| {args.domain}, held out (new domain) | {len(held)} | {domain_before['apgr']:.3f} | "
             f"{domain_after['apgr']:.3f} | {domain_after['apgr'] - domain_before['apgr']:+.3f} |"]
    worst = 0.0
    for source in data.LABELLED:
        if source in base_before:
            change = base_after[source]["apgr"] - base_before[source]["apgr"]
            worst = min(worst, change)
            b, a = base_before[source], base_after[source]
            lines.append(f"| base validation: {source} | {b['n']} | {b['apgr']:.3f} | {a['apgr']:.3f} "
                         f"| {change:+.3f} |")
    gain = domain_after["apgr"] - domain_before["apgr"]
    verdict = (f"new-domain APGR {gain:+.3f} (target >= +0.05: {'met' if gain >= 0.05 else 'NOT met'}); largest base "
               f"drop {max(0.0, -worst):.3f} (target <= 0.01: {'met' if worst >= -0.01 else 'NOT met'})")
    print("\n".join(lines))
    print(verdict)
    print(f"total {time.time() - t0:.0f}s")
    (work / "simulation.json").write_text(json.dumps({
        "domain": args.domain, "cases": cases, "versions": [version_before, version_after], "model_dir": str(new_dir),
        "domain_before": domain_before, "domain_after": domain_after, "base_before": base_before,
        "base_after": base_after, "table": lines, "verdict": verdict, "seconds": round(time.time() - t0)},
        indent=1, default=str))


if __name__ == "__main__":
    main()
