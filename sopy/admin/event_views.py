"""What the outside world may see of the configuration and its changes: the JSON messages of the
live change stream (`/admin/events`), with every secret masked or left out.

Used by the admin socket's event stream and understood by `sopy events`.
"""

from typing import Any

from sopy import keys
from sopy.codec import converter
from sopy.messages import ConfigEvent, ConfigSnapshot
from sopy.provider_backends import group_by_provider


def snapshot_message(version: int, at: float, snapshot: ConfigSnapshot) -> dict[str, Any]:
    return {"type": "snapshot", "version": version, "at": at, "snapshot": masked(snapshot)}


def event_message(version: int, at: float, change: ConfigEvent) -> dict[str, Any]:
    """Events carry no secrets by construction: credentials and keys are not event fields."""
    return {
        "type": "event",
        "version": version,
        "kind": change.kind,
        "at": at,
        "entity": converter.unstructure(change),
    }


def masked(snapshot: ConfigSnapshot) -> dict[str, Any]:
    return {
        "admin_auth": [
            {
                "name": c.provider,
                "credentials": keys.mask_credential(c.credential),
                "kind": c.kind,
            }
            for c in snapshot.credentials
        ],
        "user_api_keys": [
            {
                "id": k.id,
                "prefix": k.prefix,
                "description": k.description,
                "active": k.active,
                "created_at": k.created_at,
                **converter.unstructure(k.limits),
            }
            for k in snapshot.user_api_keys
        ],
        "backends": [
            {"provider": group.provider, "urls": list(group.urls)}
            for group in group_by_provider(snapshot.backends)
        ],
        "model_mappings": converter.unstructure(snapshot.model_mappings),
    }
