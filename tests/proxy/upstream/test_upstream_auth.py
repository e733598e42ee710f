"""An upstream that refuses the proxy's credentials is the proxy's problem, not the client's."""

from __future__ import annotations

import openai
import pytest
from prometheus_client import REGISTRY

from tests.conftest import RunningProxy
from tests.standin import Fault, StandInServer

MSG = [{"role": "user", "content": "hi"}]


def _auth_errors(model: str) -> float:
    return REGISTRY.get_sample_value("route_llm_upstream_errors_total",
                                     {"routed_model": model, "reason": "auth"}) or 0.0


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth_failure_falls_back_to_the_other_tier(proxy: RunningProxy, standin: StandInServer,
                                                            status: int) -> None:
    standin.state.faults.append(Fault("status", status=status, model="gemini-1.5-flash"))
    before = _auth_errors("gemini-1.5-flash")
    raw = proxy.client().chat.completions.with_raw_response.create(model="gemini-1.5-flash", messages=MSG)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-route-llm-fallback"] == "weak->strong"
    assert raw.parse().model == "gemini-1.5-pro"
    assert standin.state.models_called() == ["gemini-1.5-flash", "gemini-1.5-pro"]  # not retried on flash
    assert _auth_errors("gemini-1.5-flash") == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_403_everywhere_is_a_502_upstream_error_not_a_400(proxy: RunningProxy, standin: StandInServer,
                                                                   stream: bool) -> None:
    standin.state.faults.extend([Fault("status", status=403)] * 2)
    with pytest.raises(openai.APIStatusError) as info:
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG, stream=stream)
    assert info.value.status_code == 502
    error = info.value.response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "auth"
    assert "refused this proxy's credentials" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
