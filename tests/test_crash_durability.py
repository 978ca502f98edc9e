"""An acknowledged admin write survives the process being killed right after the reply."""

from pathlib import Path

import orjson

from tests.admin_connection import AdminConnection
from tests.serve_process import ServeProcess

WRITES = 150
KILL_AFTER_ACK = 100


async def test_sigkill_right_after_acknowledged_writes_loses_nothing(workdir: Path) -> None:
    server = await ServeProcess.start(workdir)
    acknowledged: list[str] = []
    async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
        await admin.send_raw(
            b"".join(
                orjson.dumps({"command": "add_backend", "provider": "p", "url": f"http://host{i}"})
                + b"\n"
                for i in range(WRITES)
            )
        )
        while len(acknowledged) < KILL_AFTER_ACK:
            reply = await admin.read_reply()
            assert reply["ok"], reply
            acknowledged.append(reply["result"]["urls"][-1])
        server.kill()
    await server.process.wait()

    restarted = await ServeProcess.start(workdir)
    try:
        async with await AdminConnection.open(workdir / "sopy-admin.sock") as admin:
            stored = (await admin.ok("get_backend", provider="p"))["urls"]
        assert set(acknowledged) <= set(stored)
        assert stored == [f"http://host{i}" for i in range(len(stored))]
    finally:
        assert await restarted.terminate() == 0
