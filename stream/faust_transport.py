"""Faust's aiokafka transport with the fetch wait as a setting (KAFKA_FETCH_MAX_WAIT_MS).

Faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500` for worker consumers. Against a
broker that completes a fetch as soon as records arrive (Apache Kafka) that only bounds idle
polling; the embedded broker (Tansu 0.6) holds every fetch until the wait runs out, so the
wait is added to every hop. This driver is registered under the URL scheme `recstream://`
through Faust's own `faust.transports` entry point (pyproject.toml), so no site-packages
edit is needed; `stream.faust_app.create_app` uses it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "recstream"
KAFKA_DEFAULT_WAIT_MS = 500  # Kafka's own fetch.max.wait.ms, for an app that did not set one


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka passes this attribute to its Fetcher at start(); the consumer is not started yet.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", KAFKA_DEFAULT_WAIT_MS)
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
