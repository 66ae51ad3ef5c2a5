"""One HTTP attempt to the Events API and its classification; retry timing belongs to the scheduler.

The requests.Session lives here: keep-alive, a timeout on every request, proxies from the environment
(HTTPS_PROXY in a unit drop-in), certificates always verified, and requests' exceptions turned into ours.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

import requests
from urllib3.exceptions import ProtocolError

from pdagent_sd import __version__
from pdagent_sd.events import Api

logger = logging.getLogger(__name__)

MAX_ERROR_TEXT = 2000
DELTA_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?", re.ASCII)


class Outcome(str, Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # try again after a backoff
    FAILED = "failed"  # PagerDuty will never accept this event as it is: dead letter


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    http_status: Optional[int] = None
    error: str = ""
    retry_after: Optional[float] = None  # seconds the API asked us to wait
    throttled: bool = False  # the API said slow down: the whole routing key backs off
    # The request went out and no answer says what became of it (a read timeout, the connection reset or closed
    # after sending, a gateway timeout): PagerDuty may still process it later, after events sent since.
    unknown: bool = False


def classify(api: Api, status: int, text: str, retry_after_header: Optional[str],
             now: Optional[float] = None) -> Result:
    """The delivery rules table of DESIGN.md, for one HTTP answer."""
    if 200 <= status < 300:
        return Result(Outcome.DELIVERED, status)
    error = error_text(text)
    if status in (429, 408) or (api is Api.V1 and status == 403):
        return Result(Outcome.RETRY, status, error or "throttled", parse_retry_after(retry_after_header, now),
                      throttled=True)
    if status >= 500:
        # 504: a gateway gave up waiting for PagerDuty, which may still take the event it was handed.
        return Result(Outcome.RETRY, status, error, parse_retry_after(retry_after_header, now),
                      unknown=status == 504)
    return Result(Outcome.FAILED, status, error or f"HTTP {status}")


MAX_LOCATION_TEXT = 200


def redirected(url: str, status: int, location: Optional[str]) -> Result:
    """A redirect is a failed attempt, retried by the usual rules (a proxy or portal may be passing), and never
    followed: the event goes to events_url or nowhere."""
    where = f" to {location[:MAX_LOCATION_TEXT]}" if location else ""
    return Result(Outcome.RETRY, status, f"{url} answered HTTP {status}, a redirect{where}; redirects are not "
                                         "followed (events go only to events_url): check events_url and any proxy")


def error_text(text: str) -> str:
    """PagerDuty's own words about a refused event: its message and its list of errors."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text.strip()[:MAX_ERROR_TEXT]
    if not isinstance(answer, dict):
        return text.strip()[:MAX_ERROR_TEXT]
    parts = [str(answer.get("message", ""))] + [str(error) for error in answer.get("errors") or []]
    return "; ".join(part for part in parts if part)[:MAX_ERROR_TEXT]


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds: either delta-seconds or an HTTP date. A decimal ("5.0", which RFC 9110 does not
    allow but proxies send) is read as its seconds rather than ignored, which would back off from scratch."""
    if not value:
        return None
    value = value.strip()
    if DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Deliverer:
    """One keep-alive session to the Events API; a worker thread owns one."""

    def __init__(self, events_url: str, *, connect_timeout: float = 5.0, read_timeout: float = 15.0,
                 ca_bundle: str = "", session: Optional[requests.Session] = None) -> None:
        self.events_url = events_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        self.session.headers.update({"Content-Type": "application/json",
                                     "User-Agent": f"pdagent-sd/{__version__}"})
        # requests re-reads the proxy and CA environment (and ~/.netrc) on every request when trust_env is
        # set: a third of its time here. The unit's environment cannot change under a running daemon, so it
        # is read once, with the same precedence requests applies.
        self.session.trust_env = False
        self.session.proxies = requests.utils.get_environ_proxies(self.events_url)
        verify = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if verify:
            self.session.verify = verify
        # One prepared request per endpoint (URL parsing, headers merged); each attempt copies it and sets
        # the body, sparing requests' per-call preparation.
        self.templates = {api: self.session.prepare_request(requests.Request("POST", self.events_url + api.path))
                          for api in Api}

    def attempt(self, api: Api, body: str) -> Result:
        url = self.events_url + api.path
        prepared = self.templates[api].copy()
        prepared.prepare_body(body.encode(), None)
        try:
            # Never follow a redirect: it would hand the whole body, routing key included, to whatever host the
            # answer names (plain http too), around the https-or-loopback rule for events_url.
            response = self.session.send(prepared, timeout=self.timeout, allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            return Result(Outcome.RETRY, None, f"TLS error talking to {url}: {_reason(exc)}")
        except requests.exceptions.ProxyError as exc:
            return Result(Outcome.RETRY, None, f"proxy error: {_reason(exc)}")
        except requests.exceptions.ConnectTimeout:  # before Timeout, which it is too: nothing was sent
            return Result(Outcome.RETRY, None, f"timed out connecting to {url}")
        except requests.exceptions.Timeout:  # a read timeout: the request went out, its fate is unknown
            return Result(Outcome.RETRY, None, f"timed out waiting for {url} to answer", unknown=True)
        except requests.exceptions.ConnectionError as exc:
            if _after_sending(exc):
                return Result(Outcome.RETRY, None, f"connection to {url} lost before its answer: {_reason(exc)}",
                              unknown=True)
            return Result(Outcome.RETRY, None, f"cannot connect to {url}: {_reason(exc)}")
        except requests.exceptions.RequestException as exc:
            return Result(Outcome.RETRY, None, f"request to {url} failed: {_reason(exc)}", unknown=True)
        if response.is_redirect or 300 <= response.status_code < 400:
            return redirected(url, response.status_code, response.headers.get("Location"))
        return classify(api, response.status_code, response.text, response.headers.get("Retry-After"))

    def close(self) -> None:
        self.session.close()


def _after_sending(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection broke once the request was on its way: urllib3 reports a connection it could not
    open as a MaxRetryError around a NewConnectionError, and one that broke while sending or reading (reset,
    closed without an answer) as a ProtocolError, which requests passes on as it is."""
    return bool(exc.args) and isinstance(exc.args[0], ProtocolError)


def _reason(exc: Any) -> str:
    """The innermost cause of a requests exception, without urllib3's object reprs."""
    while exc.args and isinstance(exc.args[0], Exception):
        exc = exc.args[0]
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc)
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return errno_text.group(1) if errno_text else text
