"""Parse Prometheus text exposition from stdin with the reference parser
(the `prometheus_client` package) and print every sample as JSON:
{"name{label=value,...}": value}. Used by tests/observability.rs, so the
broker's /metrics is checked by a real parser, not by our own reading."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
json.dump(out, sys.stdout)
