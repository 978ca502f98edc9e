"""The config actor's side of a shared config store (`--store postgresql://...`): following
the change log that every instance writes (`follow_others`), and publishing on the change feed,
in version order, each change any instance commits, this instance's own included
(`catch_up_after_write`). The config actor (`sopy.actors.config_store`) creates one only when
its store is PostgreSQL, so a gateway on the SQLite file never loads the PostgreSQL client.
"""

import logging
import time

import psycopg
import trio

from sopy.config import secret_box
from sopy.config.postgres_store import RECHECK_SECONDS, Listener, PostgresConfigDatabase
from sopy.messages import ConfigChanged
from sopy.runtime.change_feed import ChangeFeed

log = logging.getLogger(__name__)

# Waits between attempts to reach a shared store that went away.
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0)


class ConfigFollower:
    """`database_calls` is the config actor's limiter (one call on its connection at a time)."""

    def __init__(
        self, db: PostgresConfigDatabase, feed: ChangeFeed, database_calls: trio.CapacityLimiter
    ) -> None:
        self._db = db
        self._feed = feed
        self._database_calls = database_calls
        # Catching up and publishing what it found, one at a time, so that changes are
        # published in version order.
        self._publishing = trio.Lock()

    async def catch_up_after_write(self) -> None:
        """Publish the change just committed (and any before it) before the reply; if the
        store went away right after the commit, the follower publishes it once it is back."""
        try:
            await self._catch_up()
        except psycopg.Error as exc:
            log.warning(
                "a change was committed, but reading it back from %s failed (%s); it is "
                "published once the store answers again",
                self._db.describe(),
                " ".join(str(exc).split()),
            )

    async def _catch_up(self) -> None:
        """Publish, in order, every change committed since the version published last."""
        async with self._publishing:
            try:
                caught = await trio.to_thread.run_sync(
                    self._db.catch_up, limiter=self._database_calls
                )
            except secret_box.WrongSecretKey as exc:
                log.error(
                    "a credential in %s no longer opens with this instance's secret key (%s): "
                    "was it rotated on another instance? Restart this one with the new key; "
                    "it serves version %d until then",
                    self._db.describe(),
                    exc,
                    self._db.version,
                )
                return
            if caught is None:
                return
            snapshot = caught.snapshot
            if caught.changes is None:
                self._feed.publish(ConfigChanged(snapshot.version, time.time(), None, snapshot))
                return
            # The snapshot is the one after the last change: the front serves it from the
            # first of them on, and event subscribers get each change in order.
            for entry in caught.changes:
                self._feed.publish(ConfigChanged(entry.version, entry.at, entry.change, snapshot))
            if not caught.changes or caught.changes[-1].version != snapshot.version:
                self._feed.publish(ConfigChanged(snapshot.version, time.time(), None, snapshot))

    async def follow_others(self) -> None:
        """Forever: listen for the versions other instances commit and catch up with the change
        log on each, on every (re)connect and every `RECHECK_SECONDS`; reconnect when the
        store goes away, however long it stays away."""
        failures = 0
        while True:
            try:
                listener = await trio.to_thread.run_sync(self._db.open_listener)
            except psycopg.Error as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "cannot follow the config store %s (%s); serving the configuration at "
                        "version %d until it answers again",
                        self._db.describe(),
                        " ".join(str(exc).split()),
                        self._db.version,
                    )
                await trio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
                continue
            if failures:
                log.info("following the config store %s again", self._db.describe())
            failures = 0
            try:
                await self._listen(listener)
            except psycopg.Error as exc:
                log.warning(
                    "lost the config store %s while following it (%s); reconnecting",
                    self._db.describe(),
                    " ".join(str(exc).split()),
                )
            finally:
                listener.close()

    async def _listen(self, listener: Listener) -> None:
        await self._catch_up()
        while True:
            with trio.move_on_after(RECHECK_SECONDS):
                await trio.lowlevel.wait_readable(listener.fileno())
            arrived = listener.arrived()
            if not arrived or max(arrived) > self._db.version:
                await self._catch_up()
