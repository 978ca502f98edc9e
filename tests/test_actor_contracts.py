"""The actors' contracts as specs: messages are data, every actor is described in one place,
and each side of the upstream relay decides the headers of its own peer."""

import inspect
import typing
from typing import Any

import attrs
import pytest
import trio

import sopy.actors
from sopy import messages
from sopy.actors import admin_socket, config_store, http_front, upstream_pool
from sopy.routing.forwarded_headers import client_response_headers, upstream_request_headers

# A reply channel is how an actor answers; anything else live would tie two actors' lifetimes.
_LIVE_TYPES = (trio.CancelScope, trio.Event, trio.Nursery, trio.Lock, trio.CapacityLimiter)


def _types_in(annotation: Any) -> list[Any]:
    found = [annotation]
    for argument in typing.get_args(annotation):
        found += _types_in(argument)
    return found


def _message_classes() -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(messages, inspect.isclass)
        if attrs.has(cls) and cls.__module__ == messages.__name__
    ]


@pytest.mark.parametrize("message", _message_classes(), ids=lambda cls: cls.__name__)
def test_messages_hold_data_not_live_objects(message: type) -> None:
    attrs.resolve_types(message, globalns=vars(messages))
    for field in attrs.fields(message):
        for kind in _types_in(field.type):
            assert not (isinstance(kind, type) and issubclass(kind, _LIVE_TYPES)), (
                f"{message.__name__}.{field.name} holds a {kind.__name__}"
            )


def test_every_actor_is_in_the_contracts_page_with_what_it_owns_receives_and_sends() -> None:
    page = sopy.actors.__doc__ or ""
    for module in (config_store, admin_socket, upstream_pool, http_front):
        actors = [
            name
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and hasattr(cls, "run") and name[0] != "_"
        ]
        assert actors, module.__name__
        for name in actors:
            assert name in page, f"{name} is missing from sopy/actors/__init__.py"
    for word in ("owns:", "receives:", "sends:"):
        assert page.count(word) == 4, word


def test_the_pool_decides_what_the_backend_sees_including_the_credential() -> None:
    client = [
        (b"authorization", b"Bearer sk-user-key"),
        (b"x-api-key", b"sk-user-key"),
        (b"connection", b"keep-alive"),
        (b"content-length", b"12"),
        (b"x-custom", b"1"),
    ]
    sent = upstream_request_headers(client, "sk-provider-credential")
    assert (b"authorization", b"Bearer sk-provider-credential") in sent
    assert b"sk-user-key" not in repr(sent).encode()
    assert (b"x-custom", b"1") in sent
    assert (b"accept-encoding", b"identity") in sent
    assert not any(name in (b"connection", b"content-length") for name, _ in sent)


def test_the_front_decides_what_the_client_sees() -> None:
    # Names arrive in lower case, as the protocol layer parses them.
    backend = ((b"content-type", b"application/json"), (b"server", b"nginx"), (b"x-id", b"7"))
    assert client_response_headers(backend) == [
        (b"content-type", b"application/json"),
        (b"x-id", b"7"),
    ]
