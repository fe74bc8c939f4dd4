"""Parses a Prometheus text exposition (stdin) with the official Python client's parser and
prints every sample as JSON lines: {"name", "labels", "value"}. Exits non-zero if it does not
parse, so a malformed scrape fails the test that feeds it."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
