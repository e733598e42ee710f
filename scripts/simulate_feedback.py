"""Proof that the router learns from feedback: replay a labelled domain, rate, retrain over several splits, reload.

1. Starts the Gemini stand-in and ``route-llm serve`` (the real CLI; ``feedback.store_prompts: true``, an
   admin key) on the current model.
2. Scores the domain's held-out prompts through ``POST /v1/route`` (the "before" APGR).
3. Replays the domain's other prompts as chat requests through the OpenAI SDK; for each answer, a simulated
   user rates it from the data set's labels: an answer from the weak tier is "good" when the weak model got
   that prompt right (its score >= 0.5), one from the strong tier when the strong model did.
4. ``route-llm feedback export``, then retrain (fast mode, the base rows shipped beside the model unless
   ``--retrain-data-dir``) once per ``--seeds`` hold-out split of the feedback (``--holdout-seed``): one split is
   one draw, and the spread over the splits is what to quote.
5. Points the config at the first kept candidate and calls ``POST /admin/reload``, then scores the held-out
   prompts again through ``/v1/route`` (the "after" APGR of the live proxy).

Held-out = the domain's rows in the base validation split (:func:`training.data.assign_split`), so neither
the retrain nor the base training ever saw them; traffic = the domain's other rows. Every split's candidate,
kept or refused, is scored on them and on every base validation source.

    python scripts/simulate_feedback.py --data-dir ../shared/data/router --domain mbpp --work-dir runs/simulate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from proxy.demo.standin import StandInServer, free_port  # noqa: E402
from router import Router  # noqa: E402
from router.head import Head  # noqa: E402
from training import data, encoder  # noqa: E402
from training.metrics import summarize  # noqa: E402
from training.pipeline import sigmoid  # noqa: E402
from training.retrain import RetrainConfig, retrain  # noqa: E402

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


def spread(values: list[float]) -> str:
    """Median and range of a few draws, as quoted in the docs."""
    return f"median {np.median(values):+.3f}, range {min(values):+.3f} to {max(values):+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="the labelled data the domain is taken from")
    parser.add_argument("--domain", default="mbpp", choices=[s for s in data.LABELLED])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "router" / "model", help="the current model")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "simulate")
    parser.add_argument("--workers", type=int, default=4, help="concurrent simulated users")
    parser.add_argument("--seeds", type=int, default=5, help="hold-out splits of the feedback to retrain on")
    parser.add_argument("--retrain-data-dir", type=Path, default=None,
                        help="retrain on a sample of this data instead of the base rows shipped with the model")
    parser.add_argument("--accept", action="store_true", help="retrain --accept (held-out feedback too small)")
    args = parser.parse_args()
    if not 1 <= args.seeds <= 50 or not 1 <= args.workers <= 64:
        parser.error("--seeds must be 1-50 and --workers 1-64")
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
        shutil.rmtree(store)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(work / "serve.log", "wb") as log:
        server = subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(config), "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    runs: list[dict[str, object]] = []
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
        if models.exists():
            shutil.rmtree(models)
        current = Router.load(args.model_dir)
        assert current.meta.head_file is not None
        head_before = Head.load(current.path / current.meta.head_file)
        held_inputs = encoder.cached_inputs(current.classifier, [r.prompt for r in held], work / "retrain" / "cache",
                                            current.path)
        weak, strong = [r.weak for r in held], [r.strong for r in held]
        prompts = [r.prompt for r in held]
        domain_before = summarize(sigmoid(head_before.logits(held_inputs, prompts)).tolist(), weak, strong)  # type: ignore[arg-type]
        kept = None
        for seed in range(args.seeds):
            result = retrain(args.retrain_data_dir, [exported], current_dir=args.model_dir, out_dir=models,
                             work_dir=work / "retrain", config=RetrainConfig(holdout_seed=seed, accept=args.accept))
            assert result.candidate is not None
            after = summarize(sigmoid(result.candidate.logits(held_inputs, prompts)).tolist(), weak, strong)  # type: ignore[arg-type]
            checks = {c["name"]: c for c in result.comparison["checks"]}
            fb = checks["feedback (held out)"]
            base_changes = {name[5:]: c["change"] for name, c in checks.items() if name.startswith("base ")}
            runs.append({"seed": seed, "accepted": result.accepted, "verdict": result.verdict,
                         "feedback": fb, "domain_change": after["apgr"] - domain_before["apgr"],
                         "base_changes": base_changes, "path": str(result.path) if result.path else None})
            print(f"split {seed}: {'kept' if result.accepted else 'refused'}; held-out feedback n={fb['n']} change "
                  f"{fb['change']:+.3f} [{fb['low']:+.3f}, {fb['high']:+.3f}]; held-out {args.domain} "
                  f"{after['apgr'] - domain_before['apgr']:+.3f}; {result.verdict}", flush=True)
            if result.accepted and kept is None:
                kept = result.path

        if kept is not None:
            write_config(config, work, kept, standin.base_url)
            reloaded = http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
            print(f"reload: {reloaded.status_code} {reloaded.json()}", flush=True)
            reloaded.raise_for_status()
            after_live, version_after = route_scores(http, prompts)
            live = summarize(after_live.tolist(), weak, strong)  # type: ignore[arg-type]
            live_before = summarize(before.tolist(), weak, strong)  # type: ignore[arg-type]
            print(f"live proxy, held-out {args.domain} through /v1/route: APGR {live_before['apgr']:.3f} "
                  f"({version_before}) -> {live['apgr']:.3f} ({version_after})", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    fb_changes = [float(r["feedback"]["change"]) for r in runs]  # type: ignore[index]
    domain_changes = [float(r["domain_change"]) for r in runs]  # type: ignore[arg-type]
    worst = [min(r["base_changes"].values()) for r in runs]  # type: ignore[attr-defined]
    lines = [f"feedback: {cases}; {len(runs)} hold-out splits, {sum(bool(r['accepted']) for r in runs)} kept",
             f"held-out feedback APGR change: {spread(fb_changes)}",
             f"held-out {args.domain} ({len(held)} prompts) APGR change: {spread(domain_changes)} "
             f"(before {domain_before['apgr']:.3f})",
             f"largest base-source fall: {spread(worst)}",
             f"total {time.time() - t0:.0f}s"]
    print("\n".join(lines))
    (work / "simulation.json").write_text(json.dumps({
        "domain": args.domain, "cases": cases, "domain_before": domain_before, "runs": runs, "summary": lines,
        "seconds": round(time.time() - t0)}, indent=1, default=str))


if __name__ == "__main__":
    main()
