"""`python -m bench` (make bench): run every benchmark in turn."""

import logging

from bench import ingest, produce

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)
for benchmark in (produce, ingest):
    benchmark.main()
