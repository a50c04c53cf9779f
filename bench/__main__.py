"""`python -m bench` (make bench): run every benchmark in turn."""

from bench import ingest, prequential, produce, request_broker, retrain, scorer, serving
from bench.common import setup_logging

setup_logging()
for benchmark in (produce, ingest, retrain, prequential, serving, request_broker, scorer):
    benchmark.main()
