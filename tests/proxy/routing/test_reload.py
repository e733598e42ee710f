"""Hot reload: POST /admin/reload and SIGHUP swap the router without failing a request; a bad model is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from proxy.routing.reload import model_version
from proxy.settings import load_settings
from router import Router
from tests.conftest import LOOPBACK_TLS, RunningProxy, base_config, start_proxy, stop_proxy, until_upstream_has
from tests.helpers import point_at_standin as _on_standin
from tests.helpers import serve_on_free_port as _serve
from tests.helpers import wait_for_workers as _wait_for_workers
from tests.router.conftest import SHIPPED_MODEL_DIR
from tests.standin import StandInServer, free_port

pytestmark = pytest.mark.slow  # each test serves a proxy and loads router models again

ADMIN = "admin-secret"
IN_FLIGHT = 32
ROUTE_LLM = Path(sys.executable).with_name("route-llm")


def _model_copy(tmp: Path, name: str, *, version: str | None = None) -> Path:
    """The shipped model under another directory; a new router.json version makes it another version."""
    directory = tmp / name
    shutil.copytree(SHIPPED_MODEL_DIR, directory)
    if version is not None:
        meta = json.loads((directory / "router.json").read_text())
        meta["version"] = version
        (directory / "router.json").write_text(json.dumps(meta))
    return directory


def _write_config(tmp: Path, model_dir: Path, **sections: dict[str, Any]) -> Path:
    sections["server"] = {"admin_keys": [ADMIN], **sections.get("server", {})}
    cfg = base_config(tmp, **sections)
    cfg["router"]["model_dir"] = str(model_dir)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _reload(proxy: RunningProxy, key: str | None = ADMIN) -> httpx.Response:
    with proxy.http() as http:
        return http.post("/admin/reload", headers={"authorization": f"Bearer {key}"} if key else {})


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("route_llm_reloads_total", {"result": result}) or 0.0


@pytest.fixture()
def reloadable(tmp_path: Path, router: Router) -> Any:
    """A proxy started from a config file whose model_dir is a copy of the shipped model ("version A")."""
    model_a = _model_copy(tmp_path, "model-a")
    config = _write_config(tmp_path, model_a)
    proxy = start_proxy(load_settings(config), Router.load(model_a))
    yield proxy, config, model_a
    stop_proxy(proxy)


def _client(proxy: RunningProxy) -> Any:
    """A generous timeout: on a loaded two-core machine a connect can take longer than the SDK's default 5 s.

    A plain number, not an `httpx.Timeout`: the SDK's own HTTP types are its business (openai 3.x rejects httpx's).
    """
    import openai

    return openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key="unused", max_retries=0, timeout=120,
                              http_client=openai.DefaultAsyncHttpxClient(verify=LOOPBACK_TLS))


async def _one(client: Any, i: int) -> str:
    """A routed request, streaming every other time; returns the router version it reports."""
    messages: Any = [{"role": "user", "content": f"question {i}: why is the sky blue?"}]
    if i % 2:
        async with client.chat.completions.with_streaming_response.create(model="auto", messages=messages,
                                                                           stream=True) as raw:
            chunks = [chunk async for chunk in await raw.parse()]
            assert chunks and raw.status_code == 200
            return str(raw.headers["x-route-llm-router-version"])
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.parse().choices[0].message.content
    return str(raw.headers["x-route-llm-router-version"])


def test_reload_under_load_fails_no_request_and_changes_the_version(reloadable: Any, tmp_path: Path,
                                                                    standin: StandInServer) -> None:
    proxy, config, model_a = reloadable
    version_a = model_version(model_a)
    model_b = _model_copy(tmp_path, "model-b", version="retrained-b")
    version_b = model_version(model_b)
    assert version_a != version_b

    async def scenario() -> tuple[list[list[str]], dict[str, Any]]:
        # 32 clients send back to back (half of them streaming) before, during and after the reload; each stops
        # once it has been answered after the reload returned.
        reloaded: dict[str, Any] = {}
        done = asyncio.Event()

        async def client(i: int) -> list[str]:
            seen: list[str] = []
            finished_after = False
            async with _client(proxy) as sdk:
                while not finished_after:
                    after = done.is_set()
                    seen.append(await _one(sdk, i))
                    finished_after = after
            return seen

        clients = [asyncio.create_task(client(i)) for i in range(IN_FLIGHT)]
        await asyncio.sleep(0)
        await until_upstream_has(standin, IN_FLIGHT, clients)
        _write_config(tmp_path, model_b)
        async with httpx.AsyncClient(base_url=proxy.base_url, timeout=120) as http:
            r = await http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        reloaded.update(r.json())
        done.set()
        return list(await asyncio.gather(*clients)), reloaded

    ok_before = _count("ok")
    seen, report = asyncio.run(scenario())  # any failed request raises here
    assert (report["result"], report["previous_version"], report["version"]) == ("ok", version_a, version_b)
    assert all(versions[0] == version_a and versions[-1] == version_b for versions in seen)
    assert all(set(versions) <= {version_a, version_b} for versions in seen)
    assert _count("ok") == ok_before + 1
    text = httpx.get(proxy.base_url + "/metrics").text
    assert f'route_llm_router_info{{version="{version_b}"}} 1.0' in text
    assert f'route_llm_router_info{{version="{version_a}"}} 0.0' in text


def test_a_corrupt_model_directory_is_refused_and_the_old_version_keeps_serving(
        reloadable: Any, tmp_path: Path, standin: StandInServer) -> None:
    proxy, config, model_a = reloadable
    broken = _model_copy(tmp_path, "model-broken")
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:4096])  # a truncated download
    _write_config(tmp_path, broken)
    failed_before = _count("failed")
    r = _reload(proxy)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "reload_failed" and str(broken / "model.onnx") in error["message"]
    assert model_version(model_a) in error["message"]
    assert _count("failed") == failed_before + 1
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "still there?"}])
    assert raw.headers["x-route-llm-router-version"] == model_version(model_a)
    # Reloading the good config again is a no-op, not a second load.
    _write_config(tmp_path, model_a)
    assert _reload(proxy).json()["result"] == "unchanged"


def test_a_model_whose_max_length_exceeds_the_encoder_is_refused_and_the_old_version_keeps_serving(
        reloadable: Any, tmp_path: Path, standin: StandInServer) -> None:
    """Such a model loads and then fails every long prompt; the reload must refuse it before it serves."""
    proxy, config, model_a = reloadable
    oversized = _model_copy(tmp_path, "model-oversized", version="oversized")
    meta = json.loads((oversized / "router.json").read_text())
    (oversized / "router.json").write_text(json.dumps(meta | {"max_length": 100000}))
    _write_config(tmp_path, oversized)
    r = _reload(proxy)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "reload_failed" and "'max_length'" in error["message"]
    assert str(oversized / "router.json") in error["message"]
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "long " * 3000}])
    assert raw.headers["x-route-llm-router-version"] == model_version(model_a)


def test_a_bad_config_is_refused_with_the_key_named(reloadable: Any, tmp_path: Path) -> None:
    proxy, config, model_a = reloadable
    config.write_text(config.read_text() + "\nrouter_typo: {}\n")
    r = _reload(proxy)
    assert r.status_code == 500 and "router_typo" in r.json()["error"]["message"]


def test_a_reload_takes_new_thresholds_and_aliases_and_names_what_needs_a_restart(
        reloadable: Any, tmp_path: Path, standin: StandInServer) -> None:
    proxy, config, model_a = reloadable
    _write_config(tmp_path, model_a, aliases={"auto-new": {"threshold": 0.0}}, server={"limit_messages": 7})
    body = _reload(proxy).json()
    assert body["result"] == "ok" and body["ignored"] == ["server.limit_messages"]
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto-new", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-route-llm-tier"] == "strong" and raw.headers["x-route-llm-threshold"] == "0.0000"
    assert "auto-new" in [m.id for m in proxy.client().models.list()]


def test_a_port_edit_is_listed_as_needing_a_restart_until_then(reloadable: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The running port may come from --port, not the file: the edit is judged against the file as started."""
    proxy, config, model_a = reloadable
    _write_config(tmp_path, model_a, server={"port": 9321}, upstream={"retries": 3})
    with caplog.at_level("INFO", logger="route_llm"):
        first = _reload(proxy).json()
    assert first["result"] == "unchanged" and first["ignored"] == ["server.port", "upstream.retries"]
    assert "changes to server.port, upstream.retries need a restart" in caplog.text
    _write_config(tmp_path, model_a, server={"port": 9321}, upstream={"retries": 3}, router={"threshold": 0.3})
    second = _reload(proxy).json()
    assert second["result"] == "ok" and second["ignored"] == ["server.port", "upstream.retries"]  # still pending
    _write_config(tmp_path, model_a, router={"threshold": 0.3})  # the file as started, but for the threshold
    assert _reload(proxy).json()["ignored"] == []


def test_reload_needs_an_admin_key(reloadable: Any, make_proxy: Any) -> None:
    proxy, _, _ = reloadable
    assert _reload(proxy, key=None).status_code == 401
    assert _reload(proxy, key="unused").json()["error"]["code"] == "invalid_api_key"
    no_admin = make_proxy()
    r = _reload(no_admin)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def _versions(base_url: str, n: int) -> set[str]:
    seen = set()
    for i in range(n):
        with httpx.Client(base_url=base_url, timeout=30, verify=LOOPBACK_TLS) as http:  # new connection: any worker
            r = http.post("/v1/chat/completions", json={"model": "auto",
                                                        "messages": [{"role": "user", "content": f"q {i}"}]})
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-route-llm-router-version"])
    return seen


def test_sighup_and_admin_reload_swap_every_worker(tmp_path: Path, standin: StandInServer) -> None:
    model_a = _model_copy(tmp_path, "model-a")
    model_b = _model_copy(tmp_path, "model-b", version="retrained-b")
    config = _write_config(tmp_path, model_a, upstream={"warmup": False})
    cfg = _on_standin(config, standin)
    proc, port, log = _serve(tmp_path, config, workers=2)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_workers(proc, log, 2)
        assert _versions(base_url, 6) == {model_version(model_a)}

        cfg["router"]["model_dir"] = str(model_b)
        config.write_text(yaml.safe_dump(cfg))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("router reload (SIGHUP): ok") < 2:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        assert _versions(base_url, 6) == {model_version(model_b)}

        cfg["router"]["model_dir"] = str(model_a)
        config.write_text(yaml.safe_dump(cfg))
        r = httpx.post(base_url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}, timeout=120)
        assert r.status_code == 200 and r.json()["workers"] == "all signalled", r.text
        while log.read_text(errors="replace").count("router reload (SIGHUP): ok") < 3:  # the other worker
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        assert _versions(base_url, 6) == {model_version(model_a)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _starting_up(pid: int) -> bool:
    """The slow part of start-up is under way: this process is importing LiteLLM (one worker, seconds before it
    serves) or has a child (``--workers N`` checks the model in a subprocess before it starts any worker)."""
    proc = Path("/proc") / str(pid)
    try:
        return "/litellm/" in (proc / "maps").read_text() or bool((proc / "task" / str(pid) / "children").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_during_start_up_is_ignored_and_the_server_comes_up(tmp_path: Path, standin: StandInServer,
                                                                   workers: int) -> None:
    config = _write_config(tmp_path, SHIPPED_MODEL_DIR, upstream={"warmup": False})
    _on_standin(config, standin)
    proc, port, log = _serve(tmp_path, config, workers=workers)
    try:
        deadline = time.monotonic() + 120
        while not _starting_up(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGHUP)
        if workers > 1:
            _wait_for_workers(proc, log, workers)
        else:
            while "route-llm ready at" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
        assert _versions(f"http://127.0.0.1:{port}", 2) == {model_version(SHIPPED_MODEL_DIR)}
        assert "SIGHUP during start-up ignored" in log.read_text(errors="replace")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
