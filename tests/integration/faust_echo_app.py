"""A Faust worker built by stream.faust_app.create_app, used by test_faust_app.

Run as `python faust_echo_app.py worker`; it echoes IN_TOPIC to OUT_TOPIC tagged with
the worker's time of the first record, so the test can see the group joined and worked.
"""

from __future__ import annotations

import os

from recstream.stream.faust_app import create_app
from recstream.stream.settings import load_settings

app = create_app(f"echo-{os.environ['OUT_TOPIC']}", load_settings())
source = app.topic(os.environ["IN_TOPIC"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["OUT_TOPIC"], value_serializer="raw", key_serializer="raw")


@app.agent(source)
async def echo(stream):
    async for key, value in stream.items():
        await sink.send(key=key, value=b"echo:" + value)


if __name__ == "__main__":
    app.main()
