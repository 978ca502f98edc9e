"""The bounded change journal behind `?since=`: exact replays, and None when it is too short."""

from pathlib import Path

from sopy.config.database import ConfigDatabase
from sopy.messages import AddBackend, BackendAdded


def test_journal_replays_what_it_still_holds_and_refuses_what_it_dropped(
    workdir: Path,
) -> None:
    db = ConfigDatabase.open(workdir / "journal.db", journal_length=10)
    for i in range(30):
        db.apply(AddBackend(provider="p", url=f"http://h{i}/v1"), now=1000.0 + i)

    recent = db.journal_since(25)
    assert recent is not None
    assert [entry.version for entry in recent] == [26, 27, 28, 29, 30]
    assert recent[0].change == BackendAdded("p", "http://h25/v1")
    assert recent[0].at == 1025.0

    assert db.journal_since(19) is None
    assert db.journal_since(20) is not None
    assert db.journal_since(30) == ()
    assert db.journal_since(31) is None
    db.close()


def test_journal_and_version_survive_reopening(workdir: Path) -> None:
    db = ConfigDatabase.open(workdir / "journal.db")
    db.apply(AddBackend(provider="p", url="http://h/v1"), now=1.0)
    db.close()

    reopened = ConfigDatabase.open(workdir / "journal.db")
    assert reopened.version == 1
    replay = reopened.journal_since(0)
    assert replay is not None
    assert [e.change for e in replay] == [BackendAdded("p", "http://h/v1")]
    reopened.close()
