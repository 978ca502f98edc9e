"""Micro-benchmark of the request path's HTTP work, per request: parsing the client's request,
parsing the upstream's response, and choosing the headers forwarded each way, on the messages
the benchmark itself exchanges (wrk's POST, nginx's canned answer).

    .venv/bin/python bench/micro_protocol.py                    # this checkout
    .venv/bin/python bench/micro_protocol.py --compare OTHER    # interleaved A/B with another

OTHER is the root of another Sopy checkout (e.g. `git archive main sopy | tar -x -C /tmp/ref`);
each round runs this checkout and OTHER in turn, in fresh interpreters, and the best of the
rounds is reported, so machine noise hits both alike. Checkouts from before `sopy.protocol`
(the `sopy.http_wire` layout) are measured through the same three steps.
"""

import argparse
import json
import os
import subprocess
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

_REQUEST_BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Hello, bench!"}]}'
_RESPONSE_BODY = b'{"id":"chatcmpl-bench","object":"chat.completion","choices":[]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\n"
    b"Authorization: Bearer sk-sopy-0123456789abcdef0123456789abcdef\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s"
) % (len(_REQUEST_BODY), _REQUEST_BODY)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 01 Dec 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n%s"
) % (len(_RESPONSE_BODY), _RESPONSE_BODY)
CASES = ("request parse", "response parse", "header forwarding")


def _steps() -> dict[str, Callable[[], object]]:
    """One callable per case, doing that case's work for one request, from the checkout at the
    head of PYTHONPATH (asserted: an editable install's import hook would otherwise lend a
    checkout the modules it lacks)."""
    import sopy

    checkout = Path(sopy.__file__).parent
    assert checkout == Path(os.environ["PYTHONPATH"]) / "sopy", checkout
    if (checkout / "protocol").is_dir():
        return _protocol_steps()
    return _http_wire_steps()


def _protocol_steps() -> dict[str, Callable[[], object]]:
    from sopy.protocol.parser import HeadLimits, RequestParser, ResponseParser
    from sopy.routing.forwarded_headers import client_response_headers, upstream_request_headers

    requests = RequestParser(HeadLimits())
    responses = ResponseParser(HeadLimits())

    def parse_request() -> object:
        requests.feed(REQUEST)
        events = requests.events
        head = events.popleft()
        events.clear()
        return head

    def parse_response() -> object:
        responses.feed(RESPONSE)
        events = responses.events
        head = events.popleft()
        events.clear()
        return head

    request_headers = parse_request().headers  # type: ignore[attr-defined]
    response_headers = parse_response().headers  # type: ignore[attr-defined]

    def forward_headers() -> object:
        upstream_request_headers(request_headers, "sk-provider")
        return client_response_headers(response_headers)

    return {
        "request parse": parse_request,
        "response parse": parse_response,
        "header forwarding": forward_headers,
    }


def _http_wire_steps() -> dict[str, Callable[[], object]]:
    """The layout before `sopy.protocol` (commit a73540e and earlier)."""
    from sopy.http_headers import (  # type: ignore[import-not-found]
        client_response_headers,
        upstream_request_headers,
    )
    from sopy.http_wire import RequestParser  # type: ignore[import-not-found]
    from sopy.upstream_http import _ResponseEvents  # type: ignore[import-not-found]

    requests = RequestParser(32 * 1024)
    responses = _ResponseEvents()

    def parse_request() -> object:
        requests.feed(REQUEST)
        return requests.ready.popleft()

    def parse_response() -> object:
        responses.next_response()
        responses.parser.feed_data(RESPONSE)
        return responses.headers

    request_headers = parse_request().headers  # type: ignore[attr-defined]
    response_headers = list(parse_response())  # type: ignore[call-overload]

    def forward_headers() -> object:
        kept = list(upstream_request_headers(request_headers))
        kept.append((b"authorization", b"Bearer sk-provider"))
        return client_response_headers(response_headers)

    return {
        "request parse": parse_request,
        "response parse": parse_response,
        "header forwarding": forward_headers,
    }


def _measure(number: int) -> dict[str, float]:
    """Microseconds per call of each case, best of 5 repeats."""
    return {
        case: min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6
        for case, step in _steps().items()
    }


def _run_in(root: Path, number: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root.resolve())}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--number", str(number)],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="root of another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args.number)))
        return
    here = Path(__file__).resolve().parent.parent
    roots = {"this": here} if args.compare is None else {"this": here, "other": args.compare}
    best: dict[str, dict[str, float]] = {name: {} for name in roots}
    for _ in range(args.rounds):
        for name, root in roots.items():
            for case, micros in _run_in(root, args.number).items():
                best[name][case] = min(micros, best[name].get(case, micros))
    print(f"{'us per request (best of rounds)':<34}" + "".join(f"{n:>10}" for n in roots))
    for case in CASES:
        row = "".join(f"{best[name][case]:>10.2f}" for name in roots)
        ratio = (
            f"   this/other {best['this'][case] / best['other'][case]:.2f}" if args.compare else ""
        )
        print(f"{case:<34}{row}{ratio}")


if __name__ == "__main__":
    main()
