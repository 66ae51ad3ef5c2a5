"""No HTTP redirect is followed by delivery: a 307 from the events URL to another plain-http host was
followed and that host got the whole body, routing key included. Now a redirect is a failed attempt with a
clear error, retried by the usual rules, and the other host receives nothing."""

from __future__ import annotations

from typing import Any

import pytest

from agentproc import KEY_A, send_many, trigger
from standin import StandIn


@pytest.mark.integration
def test_a_redirect_is_a_failed_attempt_and_the_other_host_gets_nothing(make_agent: Any, standin: StandIn) -> None:
    status = 307  # every 3xx takes the same path (delivery.redirected)
    with StandIn() as elsewhere:
        standin.add_fault(status=status, count=2, location=elsewhere.endpoint("v2"))
        agent = make_agent()
        event_id = send_many(agent, [trigger(KEY_A, "redirected twice", "r1")])[0]["id"]
        assert standin.wait_for(1, timeout=15), agent.log()  # retried, then delivered where it belongs
        assert elsewhere.request_count == 0 and elsewhere.connection_count == 0
        assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 1)  # its result recorded
        attempts = agent.request({"op": "show", "id": event_id})["event"]["attempts_log"]
        assert [a["http_status"] for a in attempts] == [status, status, 202]
        assert f"answered HTTP {status}, a redirect to {elsewhere.endpoint('v2')}; redirects are not followed" \
            in attempts[0]["error"]
        assert KEY_A not in agent.log()
